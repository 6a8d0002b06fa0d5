import { KvmError, sys, usageError } from "./errors.js";
import { Cap, Ioctl, KVM_API_VERSION, O_RDWR } from "./ioctls.js";
import { native } from "./native.js";
import { type CpuidEntry, decodeCpuid2, encodeCpuid2 } from "./structs.js";
import { Vm } from "./vm.js";

const E2BIG = 7;

/** The KVM system: an open `/dev/kvm` (kvm-ioctls' `Kvm`). */
export class Kvm {
  #fd: number;
  readonly path: string;

  private constructor(fd: number, path: string) {
    this.#fd = fd;
    this.path = path;
  }

  /**
   * Opens `/dev/kvm` and checks the API version. Fails with a {@link KvmError}
   * whose hint says what to do when the device is missing or not permitted.
   */
  static open(path = "/dev/kvm"): Kvm {
    const fd = sys("open", () => native().open(path, O_RDWR), path);
    const kvm = new Kvm(fd, path);
    const v = kvm.apiVersion();
    if (v !== KVM_API_VERSION) {
      kvm.close();
      throw new KvmError(
        "KVM_GET_API_VERSION",
        0,
        `the kernel reports KVM API version ${v}, tskvm needs ${KVM_API_VERSION}`,
        "this kernel's KVM is not the stable API; use a mainline Linux kernel",
      );
    }
    return kvm;
  }

  get fd(): number {
    if (this.#fd < 0) throw usageError("kvm", "used after close()");
    return this.#fd;
  }

  apiVersion(): number {
    return sys("KVM_GET_API_VERSION", () => native().ioctl(this.fd, Ioctl.KVM_GET_API_VERSION));
  }

  /** KVM_CHECK_EXTENSION: 0 when unsupported, else a capability-specific value. */
  checkExtension(cap: number): number {
    return sys("KVM_CHECK_EXTENSION", () => native().ioctl(this.fd, Ioctl.KVM_CHECK_EXTENSION, cap));
  }

  /** Size of the shared `struct kvm_run` mapping of each vCPU. */
  vcpuMmapSize(): number {
    return sys("KVM_GET_VCPU_MMAP_SIZE", () => native().ioctl(this.fd, Ioctl.KVM_GET_VCPU_MMAP_SIZE));
  }

  /** The host's recommended and maximum vCPUs per VM. */
  vcpuLimits(): { recommended: number; max: number; maxId: number } {
    const recommended = this.checkExtension(Cap.NR_VCPUS) || 4;
    const max = this.checkExtension(Cap.MAX_VCPUS) || recommended;
    const maxId = this.checkExtension(Cap.MAX_VCPU_ID) || max;
    return { recommended, max, maxId };
  }

  /** KVM_GET_SUPPORTED_CPUID: every leaf KVM can expose to a guest. */
  supportedCpuid(): CpuidEntry[] {
    for (let cap = 128; cap <= 4096; cap *= 2) {
      const buf = encodeCpuid2([], cap);
      try {
        native().ioctl(this.fd, Ioctl.KVM_GET_SUPPORTED_CPUID, buf);
        return decodeCpuid2(buf);
      } catch (e) {
        if ((e as { errno?: number }).errno === E2BIG) continue;
        return sys("KVM_GET_SUPPORTED_CPUID", () => {
          throw e;
        });
      }
    }
    throw new KvmError("KVM_GET_SUPPORTED_CPUID", E2BIG, "more than 4096 CPUID entries");
  }

  /** KVM_GET_MSR_INDEX_LIST: the MSRs a VMM saves and restores. */
  msrIndexList(): number[] {
    let n = 64;
    for (let tries = 0; tries < 8; tries++) {
      const buf = new Uint8Array(4 + n * 4);
      const dv = new DataView(buf.buffer);
      dv.setUint32(0, n, true);
      try {
        native().ioctl(this.fd, Ioctl.KVM_GET_MSR_INDEX_LIST, buf);
        const count = dv.getUint32(0, true);
        return Array.from({ length: count }, (_, i) => dv.getUint32(4 + i * 4, true));
      } catch (e) {
        if ((e as { errno?: number }).errno !== E2BIG) {
          return sys("KVM_GET_MSR_INDEX_LIST", () => {
            throw e;
          });
        }
        n = Math.max(dv.getUint32(0, true), n * 2);
      }
    }
    throw new KvmError("KVM_GET_MSR_INDEX_LIST", E2BIG, "the MSR list keeps growing");
  }

  createVm(): Vm {
    const vmFd = sys("KVM_CREATE_VM", () => native().ioctl(this.fd, Ioctl.KVM_CREATE_VM, 0));
    return new Vm(vmFd, this.vcpuMmapSize());
  }

  close(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    sys("close", () => native().close(fd));
  }
}
