export * from "./device.js";
export type { ConsoleModuleData, ConsoleTerminalData } from "./entry.js";
export * from "./escape.js";
export * from "./link.js";

/** URL of virtio-console's device module (for `@tskvm/virtio-worker`'s `startDeviceWorker` / `workerPciDevice`). */
export const CONSOLE_DEVICE_MODULE: string = new URL("./entry.js", import.meta.url).href;
