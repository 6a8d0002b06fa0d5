import { sys, usageError } from "./errors.js";
import type { EventFd } from "./eventfd.js";
import {
  Ioctl,
  IoeventfdFlag,
  IrqChip,
  IrqfdFlag,
  IrqRoutingType,
  MAP_SHARED,
  MemFlag,
  PitFlag,
  PROT_READ,
  PROT_WRITE,
} from "./ioctls.js";
import { GuestMemory, GuestRegion, PAGE_SIZE } from "./memory.js";
import { native } from "./native.js";
import { KvmStatsReader } from "./stats.js";
import { CLOCK_DATA_SIZE, type ClockData, decodeClockData, encodeClockData } from "./structs.js";
import { Vcpu } from "./vcpu.js";

export interface MemoryRegionOptions {
  /** Guest physical address, page aligned. */
  guestAddress: number;
  /** Bytes, a multiple of the page size. */
  size: number;
  /** Guest writes exit to userspace as MMIO (KVM_MEM_READONLY), e.g. for ROM. */
  readOnly?: boolean;
  /** Track dirty pages for {@link Vm.dirtyLog}. */
  logDirty?: boolean;
}

/** Where an ioeventfd listens: a port or a guest-physical MMIO address. */
export interface IoeventfdOptions {
  space: "pio" | "mmio";
  address: number;
  /** Access width in bytes; 0 (MMIO only) matches any width. */
  length: 0 | 1 | 2 | 4 | 8;
  /** Signal only when the written value equals this. */
  datamatch?: number | bigint;
}

export type GsiRoute =
  | { gsi: number; type: "irqchip"; chip: "pic-master" | "pic-slave" | "ioapic"; pin: number }
  | { gsi: number; type: "msi"; address: number | bigint; data: number };

export interface MsiMessage {
  address: number | bigint;
  data: number;
}

const CHIPS = {
  "pic-master": IrqChip.PIC_MASTER,
  "pic-slave": IrqChip.PIC_SLAVE,
  ioapic: IrqChip.IOAPIC,
} as const;

/** A virtual machine (kvm-ioctls' `VmFd`): memory, interrupt controllers, eventfds, vCPUs. */
export class Vm {
  #fd: number;
  readonly vcpuMmapSize: number;
  #regions: { slot: number; region: GuestRegion; logDirty: boolean }[] = [];
  #memory = new GuestMemory([]);
  readonly #vcpus: Vcpu[] = [];

  /** @internal use {@link Kvm.createVm}. */
  constructor(fd: number, vcpuMmapSize: number) {
    this.#fd = fd;
    this.vcpuMmapSize = vcpuMmapSize;
  }

  get fd(): number {
    if (this.#fd < 0) throw usageError("vm", "used after close()");
    return this.#fd;
  }

  /** All guest RAM registered so far. */
  get memory(): GuestMemory {
    return this.#memory;
  }

  /**
   * Maps fresh zeroed host memory and registers it at `guestAddress`
   * (KVM_SET_USER_MEMORY_REGION). Overlaps are refused before the kernel sees them.
   */
  addMemory(options: MemoryRegionOptions): GuestRegion {
    const { guestAddress, size } = options;
    for (const { region } of this.#regions) {
      if (guestAddress < region.end && region.guestAddress < guestAddress + size)
        throw usageError(
          "KVM_SET_USER_MEMORY_REGION",
          `0x${guestAddress.toString(16)}+0x${size.toString(16)} overlaps the region at 0x${region.guestAddress.toString(16)}+0x${region.size.toString(16)}`,
        );
    }
    this.fd;
    const region = GuestRegion.allocate(guestAddress, size, options.readOnly ?? false);
    const slot = this.#regions.reduce((m, r) => Math.max(m, r.slot + 1), 0);
    const flags =
      (options.readOnly ? MemFlag.READONLY : 0) | (options.logDirty ? MemFlag.LOG_DIRTY_PAGES : 0);
    const b = new Uint8Array(32);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, slot, true);
    dv.setUint32(4, flags, true);
    dv.setBigUint64(8, BigInt(guestAddress), true);
    dv.setBigUint64(16, BigInt(size), true);
    dv.setBigUint64(24, region.hostAddress, true);
    try {
      sys("KVM_SET_USER_MEMORY_REGION", () => native().ioctl(this.fd, Ioctl.KVM_SET_USER_MEMORY_REGION, b));
    } catch (e) {
      region.release();
      throw e;
    }
    this.#regions.push({ slot, region, logDirty: options.logDirty ?? false });
    this.#memory = new GuestMemory(this.#regions.map((r) => r.region));
    return region;
  }

  /**
   * KVM_GET_DIRTY_LOG for a region registered with `logDirty`: one bit per page
   * written since the last call (bit i of byte i/8 = page i).
   */
  dirtyLog(region: GuestRegion): Uint8Array {
    const r = this.#regions.find((x) => x.region === region);
    if (!r) throw usageError("KVM_GET_DIRTY_LOG", "the region does not belong to this VM");
    if (!r.logDirty) throw usageError("KVM_GET_DIRTY_LOG", "the region was added without logDirty");
    const pages = region.size / PAGE_SIZE;
    const bitmap = new Uint8Array(Math.ceil(pages / 64) * 8);
    const st = new Uint8Array(16);
    new DataView(st.buffer).setUint32(0, r.slot, true);
    sys("KVM_GET_DIRTY_LOG", () =>
      native().ioctlWithPointer(this.fd, Ioctl.KVM_GET_DIRTY_LOG, st, 8, bitmap),
    );
    return bitmap;
  }

  /** In-kernel PIC, IOAPIC and local APICs (KVM_CREATE_IRQCHIP). Before creating vCPUs. */
  createIrqchip(): void {
    sys("KVM_CREATE_IRQCHIP", () => native().ioctl(this.fd, Ioctl.KVM_CREATE_IRQCHIP, 0));
  }

  /** In-kernel i8254 PIT (KVM_CREATE_PIT2); `speakerDummy` makes port 0x61 reads work without a speaker. */
  createPit2(options: { speakerDummy?: boolean } = {}): void {
    const b = new Uint8Array(64);
    new DataView(b.buffer).setUint32(0, options.speakerDummy ? PitFlag.SPEAKER_DUMMY : 0, true);
    sys("KVM_CREATE_PIT2", () => native().ioctl(this.fd, Ioctl.KVM_CREATE_PIT2, b));
  }

  /** Three pages of guest physical space KVM needs for the TSS on Intel (KVM_SET_TSS_ADDR). */
  setTssAddress(address: number): void {
    sys("KVM_SET_TSS_ADDR", () => native().ioctl(this.fd, Ioctl.KVM_SET_TSS_ADDR, address));
  }

  /** One page for the identity map on Intel (KVM_SET_IDENTITY_MAP_ADDR). */
  setIdentityMapAddress(address: number): void {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(address), true);
    sys("KVM_SET_IDENTITY_MAP_ADDR", () => native().ioctl(this.fd, Ioctl.KVM_SET_IDENTITY_MAP_ADDR, b));
  }

  #ioeventfd(eventFd: EventFd, o: IoeventfdOptions, deassign: boolean): void {
    if (![0, 1, 2, 4, 8].includes(o.length) || (o.length === 0 && o.space === "pio"))
      throw usageError("KVM_IOEVENTFD", `bad access length ${o.length} for ${o.space}`);
    const b = new Uint8Array(64);
    const dv = new DataView(b.buffer);
    let flags = o.space === "pio" ? IoeventfdFlag.PIO : 0;
    if (o.datamatch !== undefined) {
      flags |= IoeventfdFlag.DATAMATCH;
      dv.setBigUint64(0, BigInt.asUintN(64, BigInt(o.datamatch)), true);
    }
    if (deassign) flags |= IoeventfdFlag.DEASSIGN;
    dv.setBigUint64(8, BigInt(o.address), true);
    dv.setUint32(16, o.length, true);
    dv.setInt32(20, eventFd.fd, true);
    dv.setUint32(24, flags, true);
    sys("KVM_IOEVENTFD", () => native().ioctl(this.fd, Ioctl.KVM_IOEVENTFD, b));
  }

  /** Guest writes matching `options` signal `eventFd` inside the kernel, without a VM exit to userspace. */
  registerIoeventfd(eventFd: EventFd, options: IoeventfdOptions): void {
    this.#ioeventfd(eventFd, options, false);
  }

  unregisterIoeventfd(eventFd: EventFd, options: IoeventfdOptions): void {
    this.#ioeventfd(eventFd, options, true);
  }

  #irqfd(eventFd: EventFd, gsi: number, flags: number, resample?: EventFd): void {
    const b = new Uint8Array(32);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, eventFd.fd, true);
    dv.setUint32(4, gsi, true);
    dv.setUint32(8, flags, true);
    if (resample) dv.setUint32(12, resample.fd, true);
    sys("KVM_IRQFD", () => native().ioctl(this.fd, Ioctl.KVM_IRQFD, b));
  }

  /**
   * A write to `eventFd` raises `gsi` (KVM_IRQFD). With `resample`, the line is
   * level-triggered and `resample` is signalled when the guest acknowledges it.
   */
  registerIrqfd(eventFd: EventFd, gsi: number, options: { resample?: EventFd } = {}): void {
    this.#irqfd(eventFd, gsi, options.resample ? IrqfdFlag.RESAMPLE : 0, options.resample);
  }

  unregisterIrqfd(eventFd: EventFd, gsi: number): void {
    this.#irqfd(eventFd, gsi, IrqfdFlag.DEASSIGN);
  }

  /** Replaces the whole GSI routing table (KVM_SET_GSI_ROUTING), irqchip pins and MSI routes. */
  setGsiRouting(routes: readonly GsiRoute[]): void {
    const b = new Uint8Array(8 + routes.length * 48);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, routes.length, true);
    routes.forEach((r, i) => {
      const o = 8 + i * 48;
      dv.setUint32(o, r.gsi, true);
      if (r.type === "irqchip") {
        const chip = CHIPS[r.chip];
        if (chip === undefined) throw usageError("KVM_SET_GSI_ROUTING", `unknown irqchip ${String(r.chip)}`);
        dv.setUint32(o + 4, IrqRoutingType.IRQCHIP, true);
        dv.setUint32(o + 16, chip, true);
        dv.setUint32(o + 20, r.pin, true);
      } else {
        const a = BigInt(r.address);
        dv.setUint32(o + 4, IrqRoutingType.MSI, true);
        dv.setUint32(o + 16, Number(a & 0xffffffffn), true);
        dv.setUint32(o + 20, Number((a >> 32n) & 0xffffffffn), true);
        dv.setUint32(o + 24, r.data >>> 0, true);
      }
    });
    sys("KVM_SET_GSI_ROUTING", () => native().ioctl(this.fd, Ioctl.KVM_SET_GSI_ROUTING, b));
  }

  /** Injects one MSI (KVM_SIGNAL_MSI). Returns > 0 if delivered, 0 if the guest blocked it. */
  signalMsi(msg: MsiMessage): number {
    const b = new Uint8Array(32);
    const dv = new DataView(b.buffer);
    const a = BigInt(msg.address);
    dv.setUint32(0, Number(a & 0xffffffffn), true);
    dv.setUint32(4, Number((a >> 32n) & 0xffffffffn), true);
    dv.setUint32(8, msg.data >>> 0, true);
    return sys("KVM_SIGNAL_MSI", () => native().ioctl(this.fd, Ioctl.KVM_SIGNAL_MSI, b));
  }

  /** Drives an interrupt line of the in-kernel irqchip (KVM_IRQ_LINE). */
  setIrqLine(irq: number, level: boolean): void {
    const b = new Uint8Array(8);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, irq, true);
    dv.setUint32(4, level ? 1 : 0, true);
    sys("KVM_IRQ_LINE", () => native().ioctl(this.fd, Ioctl.KVM_IRQ_LINE, b));
  }

  /** The guest's kvmclock now (KVM_GET_CLOCK). */
  getClock(): ClockData {
    const b = new Uint8Array(CLOCK_DATA_SIZE);
    sys("KVM_GET_CLOCK", () => native().ioctl(this.fd, Ioctl.KVM_GET_CLOCK, b));
    return decodeClockData(b);
  }

  /**
   * Sets the guest's kvmclock (KVM_SET_CLOCK). Only `clock` (and `realtime` with
   * ClockFlag.REALTIME) is used: QEMU's stop/cont sets back the value read at the stop,
   * so the guest does not see the time it was stopped.
   */
  setClock(clock: Partial<ClockData> & { clock: bigint }): void {
    sys("KVM_SET_CLOCK", () => native().ioctl(this.fd, Ioctl.KVM_SET_CLOCK, encodeClockData(clock)));
  }

  /** The VM's binary stats (KVM_GET_STATS_FD), or undefined before Linux 5.14. */
  statsReader(): KvmStatsReader | undefined {
    return KvmStatsReader.open(this.fd);
  }

  /** Creates vCPU `id` and maps its `struct kvm_run`. */
  createVcpu(id: number): Vcpu {
    if (!Number.isInteger(id) || id < 0) throw usageError("KVM_CREATE_VCPU", `bad vCPU id ${id}`);
    const fd = sys("KVM_CREATE_VCPU", () => native().ioctl(this.fd, Ioctl.KVM_CREATE_VCPU, id));
    const runMappingId = sys("mmap", () =>
      native().mmap(this.vcpuMmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0),
    );
    const vcpu = new Vcpu({ id, fd, runMappingId, runSize: this.vcpuMmapSize });
    this.#vcpus.push(vcpu);
    return vcpu;
  }

  /**
   * Closes the vCPUs and the VM and gives guest RAM back. Stop vCPU threads first:
   * a thread still running gets EBADF errors (and zeroed memory), never a crash.
   */
  close(): void {
    if (this.#fd < 0) return;
    for (const v of this.#vcpus) v.close();
    const fd = this.#fd;
    this.#fd = -1;
    sys("close", () => native().close(fd));
    for (const { region } of this.#regions) region.release();
    this.#regions = [];
    this.#memory = new GuestMemory([]);
  }
}
