import { constants } from "node:os";
import { isNativeErrnoError } from "./native.js";

const errnoNames = new Map<number, string>(
  Object.entries(constants.errno).map(([name, value]) => [value, name] as [number, string]),
);

/** The errno's symbolic name (`EINVAL`), or `E<number>` for one Node does not know. */
export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `E${errno}`;
}

/**
 * A KVM call failed. `operation` names the ioctl or syscall (e.g. `KVM_CREATE_VM`),
 * `code` the errno (`EEXIST`), and `hint` what a person can do about it.
 */
export class KvmError extends Error {
  readonly operation: string;
  readonly errno: number;
  readonly code: string;
  readonly hint: string | undefined;

  constructor(operation: string, errno: number, detail?: string, hint?: string) {
    const code = errno ? errnoName(errno) : "";
    const what = detail ? `${operation}: ${detail}` : `${operation} failed${code ? ` with ${code}` : ""}`;
    super(hint ? `${what}\n  hint: ${hint}` : what);
    this.name = "KvmError";
    this.operation = operation;
    this.errno = errno;
    this.code = code;
    this.hint = hint;
  }
}

const E = constants.errno;

/** Hints for errors a person can act on, by operation and errno. */
function hintFor(operation: string, errno: number, path?: string): string | undefined {
  if (operation === "open") {
    if (errno === E.ENOENT)
      return `${path ?? "/dev/kvm"} does not exist: this machine has no KVM. Enable virtualization (kvm_intel/kvm_amd), or run in the tskvm sandbox (see the README).`;
    if (errno === E.EACCES || errno === E.EPERM)
      return `no permission to open ${path ?? "/dev/kvm"}: add your user to the 'kvm' group (then log in again) or run as root.`;
    if (errno === E.ENXIO || errno === E.ENODEV)
      return "the KVM module is loaded but has no usable backend (is virtualization enabled in firmware?).";
  }
  if (operation === "KVM_SET_USER_MEMORY_REGION" && errno === E.EEXIST)
    return "the region overlaps one already registered.";
  if (errno === E.EBADF) return "the file descriptor is closed: the object was used after close().";
  if (errno === E.ENOMEM) return "the host is out of memory, or a per-VM limit was hit.";
  if (operation === "KVM_CREATE_VCPU" && errno === E.EEXIST) return "a vCPU with this id already exists.";
  if (operation === "KVM_CREATE_VCPU" && errno === E.EINVAL)
    return "the vCPU id is above the host's KVM_CAP_MAX_VCPU_ID.";
  if (operation === "KVM_CREATE_IRQCHIP" && errno === E.EEXIST)
    return "the VM already has an in-kernel irqchip.";
  return undefined;
}

/** Runs one native call and turns its errno into a {@link KvmError} named after `operation`. */
export function sys<T>(operation: string, call: () => T, path?: string): T {
  // A KVM ioctl other than KVM_RUN that a signal interrupted (e.g. a profiler's SIGPROF during
  // KVM_CREATE_VM) did nothing: make it again. KVM_RUN's EINTR is the vCPU kick, and a close,
  // poll or read keeps its own meaning of EINTR.
  const restart = operation.startsWith("KVM_") && operation !== "KVM_RUN";
  for (let attempt = 1; ; attempt++) {
    try {
      return call();
    } catch (e) {
      if (restart && attempt < MAX_EINTR_RESTARTS && isNativeErrnoError(e) && e.errno === E.EINTR) continue;
      throw describeSysError(operation, e, path);
    }
  }
}

/** How often a KVM ioctl interrupted by signals is made again before its EINTR is reported. */
const MAX_EINTR_RESTARTS = 1000;

/**
 * A native call's failure as the {@link KvmError} named after `operation` (other errors as they
 * are): what {@link sys} throws, for a hot path that calls the addon without a closure.
 */
export function describeSysError(operation: string, e: unknown, path: string | undefined): unknown {
  if (e instanceof KvmError) return e;
  if (isNativeErrnoError(e))
    return new KvmError(operation, e.errno, undefined, hintFor(operation, e.errno, path));
  if (e instanceof TypeError) return new KvmError(operation, 0, e.message);
  return e;
}

/** For use-after-close and argument errors detected in TypeScript. */
export function usageError(operation: string, detail: string, hint?: string): KvmError {
  return new KvmError(operation, 0, detail, hint);
}
