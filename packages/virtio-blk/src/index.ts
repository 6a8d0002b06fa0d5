export * from "./channel.js";
export * from "./config.js";
export * from "./constants.js";
export * from "./device.js";
export * from "./engine.js";
export * from "./host.js";
export type {
  BlkImageSpec,
  BlkPciOptions,
  BlkTransportKind,
  BlkWorkerExit,
  BlkWorkerReady,
} from "./protocol.js";
export * from "./request.js";

/** URL of the machine-x86 PCI handler module that forwards BAR accesses to the blk worker (`pci-handler.js`). */
export const BLK_PCI_HANDLER_MODULE: string = new URL("./pci-handler.js", import.meta.url).href;
