// virtio-console's device module for @tskvm/virtio-worker: the device built
// from plain options and a ConsoleLink's SharedArrayBuffer. Output goes into
// the link's output ring (served only as far as the ring has room); input is
// taken from the link's input ring when the receive queue is served; a resize
// is picked up on any serve. The host wakes the worker through a queue's
// notify eventfd (ConsoleLink.wake).
import { defineDeviceModule } from "@tskvm/virtio-worker";
import {
  CONSOLE_RECEIVEQ,
  CONSOLE_TRANSMITQ,
  type ConsoleStats,
  VirtioConsoleDevice,
  type VirtioConsoleDeviceOptions,
} from "./device.js";
import { type ConsoleLinkData, ConsoleLinkWorkerSide } from "./link.js";

/** What the console module is built from (plain data). */
export type ConsoleModuleData = ConsoleLinkData &
  Pick<VirtioConsoleDeviceOptions, "queueSize" | "eventIdx" | "indirect" | "size" | "maxChainsPerCall">;

export default defineDeviceModule<ConsoleModuleData, Record<string, never>, ConsoleStats>({
  create(data) {
    const link = new ConsoleLinkWorkerSide(data.link);
    const { link: _, ...options } = data;
    const device = new VirtioConsoleDevice({
      ...options,
      ...link.size(),
      onOutput: (b) => link.output.write(b),
    });
    // Out of room: flag it for the host's next read, which wakes the transmit queue (ConsoleLink.wake →
    // its notify eventfd), then look again — the host may have read everything just before the flag
    // went up. Returning false (not a retry time) leaves the queue open to that wake-up: the runtime
    // ignores notifications of a queue waiting for its retry time. Without a wake, the worker's poll
    // timeout looks at the queue again.
    const blocked = (): boolean => {
      link.outputBlocked = true;
      if (link.output.space === 0) return false;
      link.outputBlocked = false;
      return true;
    };
    const pull = (): void => {
      const size = link.takeResize();
      if (size) device.resize(size.cols, size.rows);
      if (link.input.used > 0 && device.inputSpace > 0) device.write(link.input.read(device.inputSpace));
    };
    return {
      device,
      serveQueue(index, budget) {
        pull();
        if (index === CONSOLE_TRANSMITQ) {
          const room = link.output.space;
          if (room === 0) return blocked();
          const r = device.serveQueue(index, { ...budget, bytes: Math.min(budget.bytes, room) });
          if (r.more && link.output.space === 0) return blocked();
          return r.more;
        }
        if (index !== CONSOLE_RECEIVEQ) return false;
        let more = false;
        // Deliver, refill from the ring, deliver again, while the guest has buffers and the budget allows.
        for (let round = 0; round < 4; round++) {
          const r = device.serveQueue(index, budget);
          more = r.more;
          if (r.more || device.inputBuffered > 0 || link.input.used === 0) break;
          pull();
        }
        return more;
      },
      get served() {
        const s = device.stats;
        return s.txChains + s.txFailed + s.rxChains + s.rxFailed;
      },
      info: () => ({}),
      stats: () => device.stats,
      close: () => {},
    };
  },
});
