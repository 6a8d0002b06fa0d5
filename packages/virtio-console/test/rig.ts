// Test rig: the console device behind virtio-pci or virtio-mmio, driven by the
// virtio driver simulator, with the output collected.
import {
  createTestMemory,
  type GuestMemoryAccess,
  VirtioMmioTransport,
  VirtioPciTransport,
} from "@tskvm/virtio";
import {
  InterruptRecorder,
  MmioDriverTransport,
  PciDriverTransport,
  VirtioDriverSimulator,
} from "@tskvm/virtio/testing";
import { VirtioConsoleDevice, type VirtioConsoleDeviceOptions } from "../src/index.js";

export interface ConsoleRig {
  device: VirtioConsoleDevice;
  sim: VirtioDriverSimulator;
  irq: InterruptRecorder;
  memory: GuestMemoryAccess;
  /** Every chunk given to onOutput, in order. */
  chunks: Uint8Array[];
  /** All output so far, concatenated. */
  output(): Uint8Array;
  /** Needs-reset reasons seen (device status bit). */
  needsReset(): boolean;
}

export function consoleRig(
  options: VirtioConsoleDeviceOptions & {
    transport?: "pci" | "mmio";
    features?: bigint;
    memorySize?: number;
  } = {},
): ConsoleRig {
  const memory = createTestMemory(options.memorySize ?? 8 << 20);
  const chunks: Uint8Array[] = [];
  const device = new VirtioConsoleDevice({ ...options, onOutput: (b) => chunks.push(b) });
  const irq = new InterruptRecorder();
  const transport =
    (options.transport ?? "pci") === "pci"
      ? new PciDriverTransport(new VirtioPciTransport({ device, memory, msix: irq, intx: irq }))
      : new MmioDriverTransport(new VirtioMmioTransport({ device, memory, base: 0, irq }));
  const sim = new VirtioDriverSimulator({
    transport,
    memory,
    heap: { address: 0x10000, size: (8 << 20) - 0x20000 },
  });
  sim.init(options.features !== undefined ? { features: options.features } : {});
  return {
    device,
    sim,
    irq,
    memory,
    chunks,
    output() {
      const total = chunks.reduce((n, c) => n + c.length, 0);
      const out = new Uint8Array(total);
      let at = 0;
      for (const c of chunks) {
        out.set(c, at);
        at += c.length;
      }
      return out;
    },
    needsReset: () => (sim.status & 0x40) !== 0,
  };
}

export function bytes(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}

export function text(b: Uint8Array): string {
  return new TextDecoder().decode(b);
}
