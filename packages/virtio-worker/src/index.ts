export * from "./board.js";
export * from "./channel.js";
export * from "./host.js";
export * from "./module.js";
export type {
  DevicePciOptions,
  DevicePciReady,
  DeviceTransportKind,
  DeviceWorkerExit,
  DeviceWorkerReady,
} from "./protocol.js";

/** URL of the machine-x86 PCI handler module that forwards BAR accesses to a device worker (`pci-handler.js`). */
export const DEVICE_PCI_HANDLER_MODULE: string = new URL("./pci-handler.js", import.meta.url).href;
