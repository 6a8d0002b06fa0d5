// virtio-rng's device module for @tskvm/virtio-worker: the device built from
// plain options, its queue served by `processQueue`, a rate-limited queue
// called again when the bucket has refilled (the worker's poll timeout is the
// timer: the device keeps none).
import { defineDeviceModule } from "@tskvm/virtio-worker";
import { type RngStats, VirtioRngDevice, type VirtioRngDeviceOptions } from "./device.js";

/** What the rng module is built from (plain data: no `now`, `fill` or `onBacklog`). */
export type RngModuleData = Pick<
  VirtioRngDeviceOptions,
  "queueSize" | "eventIdx" | "indirect" | "rateLimit" | "maxBytesPerCall" | "maxChainsPerCall"
>;

export default defineDeviceModule<RngModuleData, Record<string, never>, RngStats>({
  create(data) {
    const device = new VirtioRngDevice(data);
    return {
      device,
      // The device bounds its own work per call (maxBytesPerCall, maxChainsPerCall).
      serveQueue(index) {
        const r = device.processQueue(index);
        if (r.retryAfterMs === undefined) return false;
        return r.retryAfterMs > 0 ? r.retryAfterMs : true;
      },
      get served() {
        const s = device.stats;
        return s.completed + s.failed;
      },
      info: () => ({}),
      stats: () => device.stats,
      close: () => {},
    };
  },
});
