// The exit handler each vCPU worker runs (VcpuThread's handler module): its own
// port-I/O and MMIO buses over device state shared with the other vCPUs.

import {
  EventFd,
  type ExitAction,
  type ExitHandler,
  type GuestMemory,
  type VcpuExit,
  type VcpuWorkerContext,
} from "@tskvm/kvm-core";
import { classifyHalt, isResetState } from "./arch/halt.js";
import { RFLAGS_IF } from "./boot/long-mode.js";
import { Ctl, HaltStatus, ProbeSlot, probeSlot, type WorkerMessage } from "./control.js";
import { Bus, type BusDevice, getLe, setLe } from "./devices/bus.js";
import { CMOS_PORT, Cmos, type CmosState } from "./devices/cmos.js";
import { I8042, I8042_COMMAND_PORT, I8042_DATA_PORT, type I8042State } from "./devices/i8042.js";
import {
  liveBars,
  PCI_CONFIG_ADDRESS_PORT,
  type PciBarAssignment,
  PciConfigPorts,
  PciConfigSpaces,
  type PciDeviceInfo,
  type PciState,
} from "./devices/pci.js";
import { Serial, type SerialState } from "./devices/serial.js";
import { ByteRing } from "./devices/shared.js";

/** Everything a worker needs, as structured-cloneable data (SharedArrayBuffers stay shared). */
export interface VcpuHandlerData {
  cpus: number;
  control: SharedArrayBuffer;
  serial: { port: number; state: SerialState; irqFd: number; txRing: SharedArrayBuffer };
  i8042: { state: I8042State; kbdIrqFd: number; auxIrqFd: number };
  cmos: CmosState;
  pci: {
    state: PciState;
    devices: {
      info: PciDeviceInfo;
      handler?: { module: string; data: unknown };
      configFromHandler?: number;
    }[];
  };
}

/** What a PCI device module's `createPciDevice` receives, in each vCPU worker. */
export interface PciDeviceWorkerContext {
  vcpuId: number;
  memory: GuestMemory;
  info: PciDeviceInfo;
  data: unknown;
  config: PciConfigSpaces;
}

/**
 * Serves guest accesses to one device's BARs (`bar` is the BAR index, `offset`
 * relative to it), and its configuration space from `configFromHandler` up when
 * the device asked for that.
 */
export interface PciDeviceHandler {
  read(bar: number, offset: number, data: Uint8Array): void;
  write(bar: number, offset: number, data: Uint8Array): void;
  readConfig?(offset: number, data: Uint8Array): void;
  writeConfig?(offset: number, data: Uint8Array): void;
}

export type CreatePciDevice = (ctx: PciDeviceWorkerContext) => PciDeviceHandler | Promise<PciDeviceHandler>;

/** Ports Linux probes that are not there on this machine; they read as 0xff without a trace. */
const ABSENT_PORTS: readonly [number, number, string][] = [
  [0x00, 0x20, "dma1"],
  [0x2e, 2, "superio-cfg1"],
  [0x4e, 2, "superio-cfg2"],
  [0x80, 0x10, "post+dma-page"],
  [0x92, 1, "port-a"],
  [0xc0, 0x20, "dma2"],
  [0xed, 1, "io-delay"],
  [0xf0, 0x10, "fpu-error"],
  [0x170, 8, "ide2"],
  [0x1f0, 8, "ide1"],
  [0x278, 8, "lpt2"],
  [0x2e8, 8, "com4"],
  [0x2f8, 8, "com2"],
  [0x376, 1, "ide2-ctl"],
  [0x378, 8, "lpt1"],
  [0x3b0, 0x30, "vga"],
  [0x3e8, 8, "com3"],
  [0x3f0, 6, "floppy"],
  [0x3f6, 2, "ide1-ctl"],
  [0x510, 0x0c, "fw-cfg"],
];

const absent: BusDevice = {
  read: (_o, data) => data.fill(0xff),
  write: () => {},
};

function byteDevice(
  read: (offset: number) => number,
  write: (offset: number, value: number) => void,
): BusDevice {
  return {
    read: (offset, data) => {
      for (let i = 0; i < data.length; i++) data[i] = read(offset + i);
    },
    write: (offset, data) => {
      for (let i = 0; i < data.length; i++) write(offset + i, data[i]!);
    },
  };
}

function hex(n: number | bigint): string {
  return `0x${n.toString(16)}`;
}

/** Builds the handler; the device objects attach to the shared state in this worker. */
export async function createExitHandler(ctx: VcpuWorkerContext<VcpuHandlerData>): Promise<ExitHandler> {
  const d = ctx.data;
  const vcpu = ctx.vcpu;
  const control = new Int32Array(d.control);
  const post = (m: WorkerMessage) => ctx.post(m);
  let stopAction: ExitAction;
  const reset = (why: string) => {
    stopAction ??= { stop: "reboot", detail: why };
  };

  // UART: output goes into a ring the main thread drains; it is told once per batch.
  const txRing = new ByteRing(d.serial.txRing);
  const serialIrq = EventFd.fromFd(d.serial.irqFd);
  const serial = new Serial(d.serial.state, {
    interrupt: () => serialIrq.write(1),
    output: (byte) => {
      for (
        let waited = 0;
        txRing.free === 0 && waited < 5000 && !Atomics.load(control, Ctl.ENDING);
        waited += 50
      )
        txRing.waitForSpace(50);
      txRing.pushByte(byte); // dropped only if the console was not drained for 5 s
      if (Atomics.compareExchange(control, Ctl.TX_NOTIFY, 0, 1) === 0) post({ type: "tx" });
    },
    rxDrained: () => {
      if (Atomics.load(control, Ctl.INPUT_WAITING)) post({ type: "rx" });
    },
  });
  const kbdIrq = EventFd.fromFd(d.i8042.kbdIrqFd);
  const auxIrq = EventFd.fromFd(d.i8042.auxIrqFd);
  const i8042 = new I8042(d.i8042.state, {
    interrupt: (aux) => (aux ? auxIrq : kbdIrq).write(1),
    reset,
  });
  const cmos = new Cmos(d.cmos);
  const pciSpaces = new PciConfigSpaces(d.pci.state);
  const pciPorts = new PciConfigPorts(pciSpaces, reset);

  const pio = new Bus();
  pio.insert(
    d.serial.port,
    8,
    byteDevice(
      (o) => serial.read(o),
      (o, v) => serial.write(o, v),
    ),
    "serial",
  );
  pio.insert(
    I8042_DATA_PORT,
    1,
    byteDevice(
      () => i8042.read(I8042_DATA_PORT),
      (_o, v) => i8042.write(I8042_DATA_PORT, v),
    ),
    "i8042-data",
  );
  pio.insert(
    I8042_COMMAND_PORT,
    1,
    byteDevice(
      () => i8042.read(I8042_COMMAND_PORT),
      (_o, v) => i8042.write(I8042_COMMAND_PORT, v),
    ),
    "i8042-command",
  );
  pio.insert(
    CMOS_PORT,
    2,
    byteDevice(
      (o) => cmos.read(o),
      (o, v) => cmos.write(o, v),
    ),
    "cmos",
  );
  pio.insert(
    PCI_CONFIG_ADDRESS_PORT,
    8,
    {
      read: (o, data) => setLe(data, pciPorts.read(PCI_CONFIG_ADDRESS_PORT + o, data.length)),
      write: (o, data) => pciPorts.write(PCI_CONFIG_ADDRESS_PORT + o, data.length, getLe(data)),
    },
    "pci-config",
  );
  for (const [base, len, name] of ABSENT_PORTS) pio.insert(base, len, absent, `absent:${name}`);

  // PCI devices with handlers get their BARs on the buses wherever the guest puts them.
  const mmio = new Bus();
  const pciDevices: { info: PciDeviceInfo; bars: readonly PciBarAssignment[]; handler: PciDeviceHandler }[] =
    [];
  for (const dev of d.pci.devices) {
    if (!dev.handler) continue;
    const mod = (await import(dev.handler.module)) as { createPciDevice?: CreatePciDevice };
    if (typeof mod.createPciDevice !== "function")
      throw new Error(`${dev.handler.module} does not export createPciDevice(ctx)`);
    const handler = await mod.createPciDevice({
      vcpuId: vcpu.id,
      memory: ctx.memory,
      info: dev.info,
      data: dev.handler.data,
      config: pciSpaces,
    });
    pciDevices.push({ info: dev.info, bars: dev.info.bars, handler });
    if (dev.configFromHandler !== undefined) {
      const { readConfig, writeConfig } = handler;
      if (typeof readConfig !== "function" || typeof writeConfig !== "function")
        throw new Error(
          `${dev.handler.module}: the device serves its configuration space, but its handler has no readConfig/writeConfig`,
        );
      pciPorts.delegate(dev.info.slot, dev.configFromHandler, {
        readConfig: (o, data) => readConfig.call(handler, o, data),
        writeConfig: (o, data) => writeConfig.call(handler, o, data),
      });
    }
  }
  let barGeneration = -1;
  const refreshBars = () => {
    const g = pciSpaces.generation;
    if (g === barGeneration) return;
    barGeneration = g;
    pio.removeByPrefix("bar:");
    mmio.removeByPrefix("bar:");
    const live = pciSpaces.lock.with(() =>
      liveBars(
        pciSpaces,
        pciDevices.map((p) => p.info),
      ),
    );
    for (const b of live) {
      const dev = pciDevices.find((p) => p.info.slot === b.slot)!;
      const device: BusDevice = {
        read: (o, data) => dev.handler.read(b.index, o, data),
        write: (o, data) => dev.handler.write(b.index, o, data),
      };
      try {
        (b.kind === "io" ? pio : mmio).insert(b.address, b.size, device, `bar:${b.slot}.${b.index}`);
      } catch {
        // The guest placed a BAR over something else; real hardware would conflict too.
      }
    }
  };

  const reported = new Set<string>();
  const unhandled = (space: "pio" | "mmio", direction: "in" | "out", address: number, size: number) => {
    const key = `${space}:${direction}:${address}`;
    if (reported.size >= 64 || reported.has(key)) return;
    reported.add(key);
    post({ type: "unhandled", space, direction, address, size });
  };

  // The BSP runs from the start; an AP once KVM has taken it out of its reset state (SIPI).
  let started = vcpu.id === 0;
  const probeHalt = () => {
    const regs = vcpu.getRegs();
    started ||= !isResetState(regs, vcpu.getSregs());
    // Only here, in the vCPU's own thread right after KVM_RUN returned, and never for an
    // AP that may have INIT/SIPI pending (see arch/halt.ts).
    const status = started ? classifyHalt(vcpu.getMpState(), regs.rflags) : HaltStatus.WAITING_SIPI;
    Atomics.store(control, probeSlot(vcpu.id, ProbeSlot.RIP_LO), Number(regs.rip & 0xffffffffn) | 0);
    Atomics.store(control, probeSlot(vcpu.id, ProbeSlot.RIP_HI), Number(regs.rip >> 32n) | 0);
    Atomics.store(control, probeSlot(vcpu.id, ProbeSlot.LAST_STATUS), status);
    Atomics.store(control, probeSlot(vcpu.id, ProbeSlot.STATUS), status);
  };

  const where = () => {
    try {
      const r = vcpu.getRegs();
      const s = vcpu.getSregs();
      return `vCPU ${vcpu.id} rip=${hex(r.rip)} rsp=${hex(r.rsp)} cr0=${hex(s.cr0)} cr3=${hex(s.cr3)} cr4=${hex(s.cr4)} efer=${hex(s.efer)}`;
    } catch {
      return `vCPU ${vcpu.id}`;
    }
  };

  // The last port or MMIO access, kept as numbers (formatted only when a vCPU dies).
  let lastKind: "" | "io" | "mmio" = "";
  let lastWrite = false;
  let lastAddress = 0;
  const lastAccess = () =>
    lastKind === ""
      ? "no port or MMIO exit before it"
      : `its last exit was an ${lastKind} ${lastWrite ? "write to" : "read from"} ${hex(lastAddress)}`;

  // AMD SVM leaves the VMCB undefined after a shutdown intercept, so KVM resets the vCPU
  // (rip 0xfff0, cr0 0x10) before the exit: the registers no longer say where it faulted.
  const shutdownNote = () => {
    try {
      const r = vcpu.getRegs();
      const s = vcpu.getSregs();
      const reset = r.rip === 0xfff0n && s.cs.base === 0xffff0000n && (s.cr0 & 1n) === 0n;
      return reset ? ` (KVM reset its registers on the shutdown; ${lastAccess()})` : `; ${lastAccess()}`;
    } catch {
      return `; ${lastAccess()}`;
    }
  };

  const io = (e: Extract<VcpuExit, { reason: "io" }>) => {
    lastKind = "io";
    lastWrite = e.direction === "out";
    lastAddress = e.port;
    if (pciDevices.length) refreshBars();
    for (let i = 0; i < e.count; i++) {
      // One access (all but rep ins/outs): the exit's own view, no new one per exit.
      const data = e.count === 1 ? e.data : e.data.subarray(i * e.size, (i + 1) * e.size);
      if (e.direction === "in") {
        if (!pio.read(e.port, data)) {
          data.fill(0xff);
          unhandled("pio", "in", e.port, e.size);
        }
      } else if (!pio.write(e.port, data)) unhandled("pio", "out", e.port, e.size);
    }
  };

  const mmioExit = (e: Extract<VcpuExit, { reason: "mmio" }>) => {
    lastKind = "mmio";
    lastWrite = e.isWrite;
    lastAddress = e.address;
    if (pciDevices.length) refreshBars();
    if (e.isWrite) {
      if (!mmio.write(e.address, e.data)) unhandled("mmio", "out", e.address, e.data.length);
    } else if (!mmio.read(e.address, e.data)) {
      e.data.fill(0xff);
      unhandled("mmio", "in", e.address, e.data.length);
    }
  };

  return (exit: VcpuExit): ExitAction => {
    switch (exit.reason) {
      case "io":
        io(exit);
        break;
      case "mmio":
        mmioExit(exit);
        break;
      case "interrupted":
        probeHalt();
        break;
      case "hlt":
        // KVM's own word that the guest executed hlt; only without an in-kernel LAPIC (the
        // machine always makes one, so the probe decides): on a uniprocessor nothing but an
        // NMI, which this machine never sends, would end a halt with interrupts off.
        if (d.cpus === 1 && (vcpu.getRegs().rflags & RFLAGS_IF) === 0n)
          return { stop: "poweroff", detail: `${where()} halted with interrupts disabled` };
        break;
      case "shutdown":
        return { stop: "triple-fault", detail: `triple fault on ${where()}${shutdownNote()}` };
      case "systemEvent":
        if (exit.type === "shutdown") return { stop: "poweroff", detail: "KVM system event: shutdown" };
        if (exit.type === "reset") return { stop: "reboot", detail: "KVM system event: reset" };
        if (exit.type === "crash") return { stop: "crash", detail: "KVM system event: crash" };
        return { stop: "error", detail: `KVM system event ${exit.code}` };
      case "failEntry":
        return {
          stop: "error",
          detail: `KVM_EXIT_FAIL_ENTRY (hardware reason ${hex(exit.hardwareReason)}) on ${where()}`,
        };
      case "internalError":
        return {
          stop: "error",
          detail: `KVM internal error ${exit.suberror} [${exit.data.map(hex).join(" ")}] on ${where()}`,
        };
      case "other":
        return { stop: "error", detail: `unexpected KVM exit ${exit.exitReason} on ${where()}` };
      default:
        break;
    }
    return stopAction;
  };
}
