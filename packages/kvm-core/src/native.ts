import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** The C++ addon: system calls only. Every layout and policy is in TypeScript. */
export interface NativeBinding {
  open(path: string, flags: number): number;
  close(fd: number): void;
  ioctl(fd: number, request: number, arg?: number | bigint | ArrayBufferView): number;
  ioctlWithPointer(
    fd: number,
    request: number,
    struct: ArrayBufferView,
    pointerOffset: number,
    target: ArrayBufferView,
  ): number;
  mmap(length: number, prot: number, flags: number, fd: number, offset: number, alignment?: number): number;
  mappingAddress(id: number): bigint;
  mappingView(id: number, offset: number, length: number): ArrayBuffer;
  unmap(id: number): void;
  madvise(id: number, offset: number, length: number, advice: number): void;
  eventfd(initval: number, flags: number): number;
  eventfdRead(fd: number): bigint;
  eventfdWrite(fd: number, value: number | bigint): void;
  eventfdConsume(fd: number): boolean;
  poll(fds: Int32Array, events: Int16Array, revents: Int16Array, timeoutMs: number): number;
  gettid(): number;
  getpid(): number;
  ioprioSet(which: number, who: number, ioprio: number): void;
  ioprioGet(which: number, who: number): number;
  installKickSignal(): number;
  kickThread(tid: number): void;
}

/** The error shape the addon throws for a failing system call. */
export interface NativeErrnoError extends Error {
  errno: number;
  syscall: string;
}

export function isNativeErrnoError(e: unknown): e is NativeErrnoError {
  return e instanceof Error && typeof (e as Partial<NativeErrnoError>).errno === "number";
}

const require = createRequire(import.meta.url);
const packageRoot = join(dirname(fileURLToPath(import.meta.url)), "..");

let binding: NativeBinding | undefined;

/** Loads the addon once per thread (node-gyp-build also finds prebuilt binaries). */
export function native(): NativeBinding {
  if (!binding) {
    const load = require("node-gyp-build") as (dir: string) => NativeBinding;
    binding = load(packageRoot);
  }
  return binding;
}
