import { KvmError, sys, usageError } from "./errors.js";
import { ExitReason, Ioctl, RunOffset } from "./ioctls.js";
import { native } from "./native.js";
import { KvmStatsReader } from "./stats.js";
import {
  type CpuidEntry,
  decodeCpuid2,
  decodeFpu,
  decodeMsrs,
  decodeRegs,
  decodeSregs,
  encodeCpuid2,
  encodeFpu,
  encodeMsrs,
  encodeRegs,
  encodeSregs,
  FPU_SIZE,
  type Fpu,
  LAPIC_SIZE,
  type MsrEntry,
  REGS_SIZE,
  type Regs,
  SREGS_SIZE,
  type Sregs,
} from "./structs.js";

/** What a thread needs to drive a vCPU created in another thread. */
export interface VcpuDescriptor {
  id: number;
  fd: number;
  runMappingId: number;
  runSize: number;
}

/**
 * Why KVM_RUN returned. `data` views alias the shared `kvm_run` page: fill them
 * for `in` / MMIO reads before the next {@link Vcpu.run}.
 */
export type VcpuExit =
  | { reason: "io"; direction: "in" | "out"; port: number; size: number; count: number; data: Uint8Array }
  | { reason: "mmio"; address: number; isWrite: boolean; data: Uint8Array }
  | { reason: "hlt" }
  | { reason: "shutdown" }
  | { reason: "failEntry"; hardwareReason: bigint; cpu: number }
  | { reason: "internalError"; suberror: number; data: bigint[] }
  | { reason: "systemEvent"; type: "shutdown" | "reset" | "crash" | "other"; code: number; data: bigint[] }
  | { reason: "interrupted" }
  | { reason: "irqWindowOpen" }
  | { reason: "debug" }
  | { reason: "other"; exitReason: number };

const EINTR = 4;
const EAGAIN = 11;
const SYSTEM_EVENTS = { 1: "shutdown", 2: "reset", 3: "crash" } as const;

/** A virtual CPU (kvm-ioctls' `VcpuFd`). Usable from any thread through {@link Vcpu.fromDescriptor}. */
export class Vcpu {
  readonly id: number;
  #fd: number;
  readonly runMappingId: number;
  readonly runSize: number;
  #run: Uint8Array | undefined;
  #runDv: DataView | undefined;
  readonly #ioViews = new Map<number, Uint8Array>();

  /** @internal use {@link Vm.createVcpu} or {@link Vcpu.fromDescriptor}. */
  constructor(d: VcpuDescriptor) {
    this.id = d.id;
    this.#fd = d.fd;
    this.runMappingId = d.runMappingId;
    this.runSize = d.runSize;
  }

  /** The same vCPU in another thread (the descriptor is plain data for postMessage). */
  static fromDescriptor(d: VcpuDescriptor): Vcpu {
    return new Vcpu(d);
  }

  describe(): VcpuDescriptor {
    return { id: this.id, fd: this.fd, runMappingId: this.runMappingId, runSize: this.runSize };
  }

  get fd(): number {
    if (this.#fd < 0) throw usageError("vcpu", `vCPU ${this.id} used after close()`);
    return this.#fd;
  }

  #runBytes(): Uint8Array {
    if (!this.#run) {
      this.#run = new Uint8Array(
        sys("kvm_run view", () => native().mappingView(this.runMappingId, 0, this.runSize)),
      );
      this.#runDv = new DataView(this.#run.buffer);
    }
    return this.#run;
  }

  #dv(): DataView {
    this.#runBytes();
    return this.#runDv!;
  }

  /** kvm_run.immediate_exit: while set, KVM_RUN returns at once with EINTR (closes the kick race). */
  set immediateExit(v: boolean) {
    this.#runBytes()[RunOffset.immediateExit] = v ? 1 : 0;
  }

  get immediateExit(): boolean {
    return this.#runBytes()[RunOffset.immediateExit] !== 0;
  }

  #get(name: string, req: number, size: number): Uint8Array {
    const b = new Uint8Array(size);
    sys(name, () => native().ioctl(this.fd, req, b));
    return b;
  }

  #set(name: string, req: number, b: Uint8Array): void {
    sys(name, () => native().ioctl(this.fd, req, b));
  }

  getRegs(): Regs {
    return decodeRegs(this.#get("KVM_GET_REGS", Ioctl.KVM_GET_REGS, REGS_SIZE));
  }
  setRegs(r: Regs): void {
    this.#set("KVM_SET_REGS", Ioctl.KVM_SET_REGS, encodeRegs(r));
  }
  getSregs(): Sregs {
    return decodeSregs(this.#get("KVM_GET_SREGS", Ioctl.KVM_GET_SREGS, SREGS_SIZE));
  }
  setSregs(s: Sregs): void {
    this.#set("KVM_SET_SREGS", Ioctl.KVM_SET_SREGS, encodeSregs(s));
  }
  getFpu(): Fpu {
    return decodeFpu(this.#get("KVM_GET_FPU", Ioctl.KVM_GET_FPU, FPU_SIZE));
  }
  setFpu(f: Fpu): void {
    this.#set("KVM_SET_FPU", Ioctl.KVM_SET_FPU, encodeFpu(f));
  }

  /** Reads the given MSRs; throws if KVM could not read all of them. */
  getMsrs(indices: readonly number[]): MsrEntry[] {
    const b = encodeMsrs(indices.map((index) => ({ index, data: 0n })));
    const n = sys("KVM_GET_MSRS", () => native().ioctl(this.fd, Ioctl.KVM_GET_MSRS, b));
    if (n !== indices.length)
      throw new KvmError(
        "KVM_GET_MSRS",
        0,
        `MSR 0x${indices[n]?.toString(16)} could not be read (${n} of ${indices.length})`,
      );
    return decodeMsrs(b, n);
  }

  /** Writes MSRs; throws naming the first one KVM refused. */
  setMsrs(entries: readonly MsrEntry[]): void {
    const n = sys("KVM_SET_MSRS", () => native().ioctl(this.fd, Ioctl.KVM_SET_MSRS, encodeMsrs(entries)));
    if (n !== entries.length)
      throw new KvmError(
        "KVM_SET_MSRS",
        0,
        `MSR 0x${entries[n]?.index.toString(16)} was refused (${n} of ${entries.length} set)`,
      );
  }

  setCpuid(entries: readonly CpuidEntry[]): void {
    this.#set("KVM_SET_CPUID2", Ioctl.KVM_SET_CPUID2, encodeCpuid2(entries));
  }

  /** The CPUID leaves this vCPU presents (KVM_GET_CPUID2). */
  getCpuid(): CpuidEntry[] {
    const b = encodeCpuid2([], 256);
    sys("KVM_GET_CPUID2", () => native().ioctl(this.fd, Ioctl.KVM_GET_CPUID2, b));
    return decodeCpuid2(b);
  }

  /** The local APIC's 1 KiB register page (KVM_GET_LAPIC). */
  getLapic(): Uint8Array {
    return this.#get("KVM_GET_LAPIC", Ioctl.KVM_GET_LAPIC, LAPIC_SIZE);
  }
  setLapic(state: Uint8Array): void {
    if (state.length !== LAPIC_SIZE) throw usageError("KVM_SET_LAPIC", `state must be ${LAPIC_SIZE} bytes`);
    this.#set("KVM_SET_LAPIC", Ioctl.KVM_SET_LAPIC, state);
  }

  /**
   * KVM_GET_MP_STATE; see {@link MpState}. Beware: the kernel processes a pending
   * INIT/SIPI here, outside KVM_RUN; do not poll it on a running SMP guest.
   */
  getMpState(): number {
    return new DataView(this.#get("KVM_GET_MP_STATE", Ioctl.KVM_GET_MP_STATE, 4).buffer).getUint32(0, true);
  }
  setMpState(state: number): void {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, state, true);
    this.#set("KVM_SET_MP_STATE", Ioctl.KVM_SET_MP_STATE, b);
  }

  /**
   * The vCPU's binary stats (KVM_GET_STATS_FD), or undefined before Linux 5.14. Open it
   * before the vCPU runs: the ioctl waits for the vCPU's lock, which KVM_RUN holds; reading
   * the returned file does not.
   */
  statsReader(): KvmStatsReader | undefined {
    return KvmStatsReader.open(this.fd);
  }

  /** Runs the vCPU until the next exit (KVM_RUN). A kick or signal gives `interrupted`. */
  run(): VcpuExit {
    const fd = this.fd;
    const dv = this.#dv();
    try {
      native().ioctl(fd, Ioctl.KVM_RUN, 0);
    } catch (e) {
      const errno = (e as { errno?: number }).errno;
      if (errno === EINTR || errno === EAGAIN) return { reason: "interrupted" };
      return sys("KVM_RUN", () => {
        throw e;
      });
    }
    const reason = dv.getUint32(RunOffset.exitReason, true);
    switch (reason) {
      case ExitReason.IO: {
        const size = dv.getUint8(RunOffset.ioSize);
        const count = dv.getUint32(RunOffset.ioCount, true);
        const off = Number(dv.getBigUint64(RunOffset.ioDataOffset, true));
        const len = size * count;
        if (off + len > this.runSize) return { reason: "other", exitReason: reason };
        const key = off * 65536 + len;
        let data = this.#ioViews.get(key);
        if (!data) {
          data = this.#runBytes().subarray(off, off + len);
          this.#ioViews.set(key, data);
        }
        return {
          reason: "io",
          direction: dv.getUint8(RunOffset.ioDirection) === 1 ? "out" : "in",
          port: dv.getUint16(RunOffset.ioPort, true),
          size,
          count,
          data,
        };
      }
      case ExitReason.MMIO: {
        const len = Math.min(dv.getUint32(RunOffset.mmioLen, true), 8);
        return {
          reason: "mmio",
          address: Number(dv.getBigUint64(RunOffset.mmioPhysAddr, true)),
          isWrite: dv.getUint8(RunOffset.mmioIsWrite) !== 0,
          data: this.#runBytes().subarray(RunOffset.mmioData, RunOffset.mmioData + len),
        };
      }
      case ExitReason.HLT:
        return { reason: "hlt" };
      case ExitReason.SHUTDOWN:
        return { reason: "shutdown" };
      case ExitReason.FAIL_ENTRY:
        return {
          reason: "failEntry",
          hardwareReason: dv.getBigUint64(RunOffset.failEntryReason, true),
          cpu: dv.getUint32(RunOffset.failEntryCpu, true),
        };
      case ExitReason.INTERNAL_ERROR: {
        const n = Math.min(dv.getUint32(RunOffset.internalNdata, true), 16);
        return {
          reason: "internalError",
          suberror: dv.getUint32(RunOffset.internalSuberror, true),
          data: Array.from({ length: n }, (_, i) => dv.getBigUint64(RunOffset.internalData + i * 8, true)),
        };
      }
      case ExitReason.SYSTEM_EVENT: {
        const code = dv.getUint32(RunOffset.systemEventType, true);
        const n = Math.min(dv.getUint32(RunOffset.systemEventNdata, true), 16);
        return {
          reason: "systemEvent",
          type: SYSTEM_EVENTS[code as keyof typeof SYSTEM_EVENTS] ?? "other",
          code,
          data: Array.from({ length: n }, (_, i) => dv.getBigUint64(RunOffset.systemEventData + i * 8, true)),
        };
      }
      case ExitReason.INTR:
        return { reason: "interrupted" };
      case ExitReason.IRQ_WINDOW_OPEN:
        return { reason: "irqWindowOpen" };
      case ExitReason.DEBUG:
        return { reason: "debug" };
      default:
        return { reason: "other", exitReason: reason };
    }
  }

  /** Closes the vCPU descriptor. The kvm_run mapping stays until process exit (other threads may view it). */
  close(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    sys("close", () => native().close(fd));
  }
}
