import {
  createTestMemory,
  type MsiMessage,
  type PlainGuestMemory,
  type QueueNotifyRegion,
  type VirtioDevice,
  VirtioMmioTransport,
  type VirtioPciOptions,
  VirtioPciTransport,
} from "../src/index.js";
import {
  InterruptRecorder,
  MmioDriverTransport,
  PciDriverTransport,
  VirtioDriverSimulator,
} from "../src/testing.js";
import { EchoDevice } from "./echo-device.js";

export const RAM = 0x400000;
export const HEAP = { address: 0x10000, size: RAM - 0x10000 };

/** What the VMM-side hooks saw. */
export class HookLog {
  readonly live = new Map<number, QueueNotifyRegion>();
  readonly events: string[] = [];
  readonly routes = new Map<number, MsiMessage | null>();
  readonly bars: [number, number][] = [];

  notifyHooks() {
    return {
      queueNotifyEnabled: (r: QueueNotifyRegion) => {
        if (this.live.has(r.queue)) throw new Error(`queue ${r.queue} registered twice`);
        this.live.set(r.queue, r);
        this.events.push(`on ${r.queue} 0x${r.address.toString(16)}`);
      },
      queueNotifyDisabled: (r: QueueNotifyRegion) => {
        if (this.live.get(r.queue)?.address !== r.address)
          throw new Error(`queue ${r.queue} unregistered unknown region`);
        this.live.delete(r.queue);
        this.events.push(`off ${r.queue} 0x${r.address.toString(16)}`);
      },
    };
  }
}

export interface Rig<T> {
  memory: PlainGuestMemory;
  device: EchoDevice;
  irq: InterruptRecorder;
  hooks: HookLog;
  transport: T;
  sim: VirtioDriverSimulator;
}

export function pciRig(
  options: Partial<VirtioPciOptions> & { useMsix?: boolean; device?: VirtioDevice } = {},
): Rig<VirtioPciTransport> & { driver: PciDriverTransport } {
  const memory = createTestMemory(RAM);
  const device = (options.device as EchoDevice | undefined) ?? new EchoDevice();
  const irq = new InterruptRecorder();
  const hooks = new HookLog();
  const transport = new VirtioPciTransport({
    memory,
    msix: irq,
    intx: irq,
    ...options,
    device,
    hooks: {
      ...hooks.notifyHooks(),
      msixVectorChanged: (v, m) => {
        hooks.routes.set(v, m);
      },
      barChanged: (i, a) => {
        hooks.bars.push([i, a]);
      },
    },
  });
  const driver = new PciDriverTransport(transport, { useMsix: options.useMsix ?? true });
  const sim = new VirtioDriverSimulator({ transport: driver, memory, heap: HEAP });
  return { memory, device, irq, hooks, transport, driver, sim };
}

export function mmioRig(
  options: { device?: VirtioDevice; base?: number } = {},
): Rig<VirtioMmioTransport> & { driver: MmioDriverTransport } {
  const memory = createTestMemory(RAM);
  const device = (options.device as EchoDevice | undefined) ?? new EchoDevice();
  const irq = new InterruptRecorder();
  const hooks = new HookLog();
  const transport = new VirtioMmioTransport({
    device,
    memory,
    irq,
    base: options.base ?? 0xd000_0000,
    hooks: hooks.notifyHooks(),
  });
  const driver = new MmioDriverTransport(transport);
  const sim = new VirtioDriverSimulator({ transport: driver, memory, heap: HEAP });
  return { memory, device, irq, hooks, transport, driver, sim };
}

export const text = (s: string): Uint8Array => new TextEncoder().encode(s);
export const str = (b: Uint8Array): string => new TextDecoder().decode(b);
