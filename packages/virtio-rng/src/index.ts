export * from "./device.js";
export type { RngModuleData } from "./entry.js";
export * from "./rate-limit.js";

/** URL of virtio-rng's device module (for `@tskvm/virtio-worker`'s `startDeviceWorker` / `workerPciDevice`). */
export const RNG_DEVICE_MODULE: string = new URL("./entry.js", import.meta.url).href;
