// The glue between a device worker and @tskvm/machine-x86: a machine device
// factory that starts the worker over the VM's memory and, once the device is
// built, hands the machine the PCI function the worker describes. The vCPUs'
// register accesses reach the worker through a DeviceChannel; queue
// notifications (ioeventfds) and interrupts (irqfds) go straight between KVM
// and the worker.
import { DeviceChannel, EventFd, type Vm } from "@tskvm/kvm-core";
import type {
  DeviceStatsReport,
  DeviceTuning,
  MachineDeviceContext,
  MachineDeviceControl,
  MachinePciDevice,
  MachinePciDeviceFactory,
} from "@tskvm/machine-x86";
import { ChannelPciFunction } from "./channel.js";
import { DeviceWorkerHandle, type StartDeviceWorkerOptions } from "./host.js";

/** URL of the machine-x86 PCI handler module that forwards BAR accesses to a device worker. */
export const DEVICE_PCI_HANDLER_MODULE: string = new URL("./pci-handler.js", import.meta.url).href;

export interface WorkerPciDeviceOptions<Data>
  extends Pick<
    StartDeviceWorkerOptions<Data>,
    "module" | "data" | "queues" | "pci" | "budget" | "byteBudget" | "spinUs"
  > {
  /** How messages name the device, e.g. "disk /srv/a.qcow2" or "rng". */
  name: string;
  /** The device's id in the machine's controls, unique in the machine (e.g. "disk0"). Default: `name`. */
  id?: string;
  /** What the device is, for the controls (e.g. "virtio-blk"). Default "virtio". */
  kind?: string;
  /** A short description for listings (e.g. the image path). Default: `name`. */
  description?: string;
  /**
   * Limits and priorities from the start (see `DeviceWorkerHandle.tune`; changed later through
   * the device's `control.tune`). One the worker cannot apply fails the start.
   */
  tuning?: DeviceTuning;
  /** The device's start failure as the user reads it (default: `${name}: ${message}`). */
  startError?: (message: string) => string;
  /** Where the device runs (default: a worker of its own); e.g. a `SharedDeviceWorker`. */
  thread?: StartDeviceWorkerOptions<Data>["thread"];
  /**
   * Called once the device is built, with `wake(queue)`: writes the queue's notify
   * eventfd so the worker serves that queue now (e.g. host input for a console)
   * instead of at its poll timeout. After the device is detached `wake` does nothing.
   */
  onStart?: (wake: (queue: number) => void) => void;
}

/** A device's counters as the report's record (a device whose stats are not an object: `{ value }`). */
function plainRecord(stats: unknown): Record<string, unknown> {
  return typeof stats === "object" && stats !== null && !Array.isArray(stats)
    ? (stats as Record<string, unknown>)
    : { value: stats };
}

const dword = (v: number): Uint8Array => {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, v >>> 0, true);
  return bytes;
};

/**
 * A `createMachine` device: `devices: [workerPciDevice({ module, data, name })]`.
 * The machine owns the VM, the PCI bus and GSI routing; the worker owns the
 * device, its virtio-pci transport and queues. A start failure (the module's
 * `create` threw) fails the machine's start; the worker ending on its own
 * later fails the machine.
 */
export function workerPciDevice<Data>(options: WorkerPciDeviceOptions<Data>): MachinePciDeviceFactory {
  const { name } = options;
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
        const line = `tskvm: ${name}: cannot ${what}: ${(e as Error).message}`;
        if (warned.size < 16 && !warned.has(line)) {
          warned.add(line);
          process.stderr.write(`${line}\n`);
        }
      }
    };
    const handle = new DeviceWorkerHandle({
      module: options.module,
      data: options.data,
      name,
      memory: vm.memory.describe(),
      transport: "pci",
      channel: channel.describe(),
      intxFd: intx.fd,
      resampleFd: resample.fd,
      ...(options.queues !== undefined ? { queues: options.queues } : {}),
      ...(options.pci !== undefined ? { pci: options.pci } : {}),
      ...(options.budget !== undefined ? { budget: options.budget } : {}),
      ...(options.byteBudget !== undefined ? { byteBudget: options.byteBudget } : {}),
      ...(options.spinUs !== undefined ? { spinUs: options.spinUs } : {}),
      ...(options.thread !== undefined ? { thread: options.thread } : {}),
      ...(options.tuning !== undefined ? { tuning: options.tuning } : {}),
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
          if (!ending) fail(`${name}: ${message}`);
        },
      },
    });
    const release = (): void => {
      for (const g of gsis.splice(0)) irq.release(g);
      channel.close();
      intx.close();
      resample.close();
    };
    let pci: NonNullable<Awaited<typeof handle.ready>["pci"]> | undefined;
    try {
      pci = (await handle.ready).pci;
    } catch (e) {
      await handle.stop();
      release();
      const message = (e as Error).message;
      throw new Error(options.startError ? options.startError(message) : `${name}: ${message}`);
    }
    if (!pci) throw new Error(`${name}: the device worker built no PCI transport`);
    for (const efd of handle.irqEventFds) {
      const gsi = irq.allocate();
      gsis.push(gsi);
      vm.registerIrqfd(efd, gsi);
    }
    options.onStart?.((queue) => {
      if (!ending) handle.notify(queue);
    });
    void handle.exited.then((exit) => {
      if (!ending) fail(`${name}: its worker ended${exit.error ? `: ${exit.error.message}` : ""}`);
    });
    const { capabilityPointer, ...fn } = pci.function;
    const id = options.id ?? name;
    const kind = options.kind ?? "virtio";
    const control: MachineDeviceControl = {
      id,
      kind,
      description: options.description ?? name,
      stats: async (): Promise<DeviceStatsReport> => {
        const { thread, device } = await handle.statsAsync();
        return { id, kind, thread, device: plainRecord(device) };
      },
      pause: () => handle.pause(),
      resume: () => handle.resume(),
      tune: (t) => handle.tune(t),
    };
    return {
      ...fn,
      control,
      configFromHandler: capabilityPointer,
      handler: { module: DEVICE_PCI_HANDLER_MODULE, data: { channel: channel.describe() } },
      attach: (v: Vm, info) => {
        if (info.gsi !== undefined) v.registerIrqfd(intx, info.gsi, { resample });
        // No firmware assigns BARs: tell the device where the machine put them.
        const regs = new ChannelPciFunction(channel);
        for (const b of info.bars) {
          regs.writeConfig(0x10 + 4 * b.index, dword(b.address));
          if (b.kind === "mmio64")
            regs.writeConfig(0x14 + 4 * b.index, dword(Math.floor(b.address / 2 ** 32)));
        }
      },
      detach: async () => {
        ending = true;
        const exit = await handle.stop();
        release();
        if (exit.error) throw new Error(`${name}: ${exit.error.message}`);
      },
    };
  };
}
