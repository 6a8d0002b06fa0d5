export * from "./device.js";
export type { ConsoleModuleData, ConsoleTerminalData } from "./entry.js";
export * from "./escape.js";
export * from "./link.js";
export * from "./pci-device.js";
