// `-d/--disk PATH[,ro][,snapshot][,direct][,format=F][,serial=S]`: a virtio-blk PCI
// device on the x86 machine, served by its own I/O worker (@tskvm/virtio-blk).
// This is the wiring only: the machine owns the VM, the PCI bus and GSI routing;
// the worker owns the disk, the virtio-pci transport and the queues.

import { DeviceChannel, EventFd, type Vm } from "@tskvm/kvm-core";
import type { MachineDeviceContext, MachinePciDevice, MachinePciDeviceFactory } from "@tskvm/machine-x86";
import { BLK_PCI_HANDLER_MODULE, ChannelPciFunction, startBlkWorker } from "@tskvm/virtio-blk";
import { UsageError } from "./command.js";

export interface DiskSpec {
  path: string;
  readOnly: boolean;
  /** Writes go to a throwaway overlay; the image is left untouched. */
  snapshot: boolean;
  /** O_DIRECT (raw images). */
  direct: boolean;
  /** Skip probing. */
  format?: "raw" | "qcow2";
  /** What the guest reads as the disk's id (/sys/block/vdX/serial). */
  serial?: string;
}

const FLAGS = ["ro", "snapshot", "direct"] as const;

/** Parses kvmtool's `PATH[,ro]` and tskvm's other options. */
export function parseDiskSpec(text: string): DiskSpec {
  const [path, ...opts] = text.split(",");
  if (!path) throw new UsageError(`--disk needs a file: '${text}'`);
  const spec: DiskSpec = { path, readOnly: false, snapshot: false, direct: false };
  for (const o of opts) {
    const [key, value] = o.split("=", 2) as [string, string | undefined];
    if (value === undefined && (FLAGS as readonly string[]).includes(key)) {
      if (key === "ro") spec.readOnly = true;
      else if (key === "snapshot") spec.snapshot = true;
      else spec.direct = true;
    } else if (key === "format" && (value === "raw" || value === "qcow2")) spec.format = value;
    else if (
      key === "serial" &&
      value !== undefined &&
      /^[\x20-\x7e]{0,20}$/.test(value) &&
      !value.includes(",")
    )
      spec.serial = value;
    else
      throw new UsageError(
        `--disk ${text}: unknown option '${o}' (options: ro, snapshot, direct, format=raw|qcow2, serial=ID of up to 20 characters)`,
      );
  }
  return spec;
}

const u16 = (c: Uint8Array, o: number): number => c[o]! | (c[o + 1]! << 8);

/**
 * A machine device factory for one disk: starts the blk I/O worker over the
 * VM's memory, and once it has opened the disk describes the PCI function for
 * the machine. The vCPUs' register accesses reach the worker through a
 * DeviceChannel; queue notifications through ioeventfds and interrupts through
 * irqfds go straight between KVM and the worker.
 */
export function blkPciDevice(disk: DiskSpec): MachinePciDeviceFactory {
  return async ({ vm, irq, fail }: MachineDeviceContext): Promise<MachinePciDevice> => {
    const channel = DeviceChannel.create();
    const intx = EventFd.create({ nonBlocking: true });
    const resample = EventFd.create({ nonBlocking: true });
    const gsis: number[] = [];
    let ending = false;
    // The guest chooses BAR addresses and MSI messages: when KVM refuses one (e.g. a
    // doorbell placed over another device's), say so and carry on — a doorbell without
    // an ioeventfd still traps and reaches the worker, only slower.
    const warned = new Set<string>();
    const guard = (what: string, f: () => void): void => {
      try {
        f();
      } catch (e) {
        const line = `tskvm: disk ${disk.path}: cannot ${what}: ${(e as Error).message}`;
        if (warned.size < 16 && !warned.has(line)) {
          warned.add(line);
          process.stderr.write(`${line}\n`);
        }
      }
    };
    const handle = startBlkWorker({
      image: {
        path: disk.path,
        readOnly: disk.readOnly,
        snapshot: disk.snapshot,
        direct: disk.direct,
        ...(disk.format ? { format: disk.format } : {}),
      },
      device: disk.serial !== undefined ? { serial: disk.serial } : {},
      memory: vm.memory.describe(),
      transport: "pci",
      channel: channel.describe(),
      intxFd: intx.fd,
      resampleFd: resample.fd,
      hooks: {
        ioeventfd: (e) =>
          guard(`${e.action} the queue ${e.queue} doorbell`, () => {
            const { space, address, length, datamatch } = e.region;
            const at = { space, address, length, ...(datamatch !== undefined ? { datamatch } : {}) };
            if (e.action === "register") vm.registerIoeventfd(e.eventFd, at);
            else vm.unregisterIoeventfd(e.eventFd, at);
          }),
        msix: (e) => {
          const gsi = gsis[e.vector];
          if (gsi !== undefined) guard(`route MSI-X vector ${e.vector}`, () => irq.setMsi(gsi, e.message));
        },
        error: (message) => {
          if (!ending) fail(`disk ${disk.path}: ${message}`);
        },
      },
    });
    const release = (): void => {
      for (const g of gsis.splice(0)) irq.release(g);
      channel.close();
      intx.close();
      resample.close();
    };
    let ready: Awaited<typeof handle.ready>;
    try {
      ready = await handle.ready;
    } catch (e) {
      await handle.stop();
      release();
      throw new Error(`disk ${disk.path}: ${(e as Error).message}`);
    }
    const pci = ready.pci;
    if (!pci) throw new Error("the blk worker built no PCI transport");
    for (const efd of handle.irqEventFds) {
      const gsi = irq.allocate();
      gsis.push(gsi);
      vm.registerIrqfd(efd, gsi);
    }
    void handle.exited.then((exit) => {
      if (!ending)
        fail(`disk ${disk.path}: its I/O worker ended${exit.error ? `: ${exit.error.message}` : ""}`);
    });
    const c = pci.config;
    return {
      vendorId: u16(c, 0x00),
      deviceId: u16(c, 0x02),
      revision: c[0x08]!,
      classCode: c[0x09]! | (c[0x0a]! << 8) | (c[0x0b]! << 16),
      subsystemVendorId: u16(c, 0x2c),
      subsystemId: u16(c, 0x2e),
      interruptPin: c[0x3d]!,
      bars: pci.bars.map((b) => ({
        index: b.index,
        size: b.size,
        kind: b.is64 ? ("mmio64" as const) : ("mmio32" as const),
        prefetchable: b.prefetchable,
      })),
      configFromHandler: c[0x34]!,
      handler: { module: BLK_PCI_HANDLER_MODULE, data: { channel: channel.describe() } },
      attach: (v: Vm, info) => {
        if (info.gsi !== undefined) v.registerIrqfd(intx, info.gsi, { resample });
        // No firmware assigns BARs: tell the device where the machine put them.
        const fn = new ChannelPciFunction(channel);
        const dword = (v: number): Uint8Array => {
          const bytes = new Uint8Array(4);
          new DataView(bytes.buffer).setUint32(0, v >>> 0, true);
          return bytes;
        };
        for (const b of info.bars) {
          fn.writeConfig(0x10 + 4 * b.index, dword(b.address));
          if (b.kind === "mmio64") fn.writeConfig(0x14 + 4 * b.index, dword(Math.floor(b.address / 2 ** 32)));
        }
      },
      detach: async () => {
        ending = true;
        const exit = await handle.stop();
        release();
        if (exit.error) throw new Error(`disk ${disk.path}: ${exit.error.message}`);
      },
    };
  };
}
