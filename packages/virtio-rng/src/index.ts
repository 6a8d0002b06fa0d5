export * from "./device.js";
export type { RngModuleData } from "./entry.js";
export * from "./pci-device.js";
export * from "./rate-limit.js";
