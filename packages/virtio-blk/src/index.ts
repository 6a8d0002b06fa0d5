/** URL of the machine-x86 PCI handler module that forwards BAR accesses to the blk worker. */
export {
  ChannelMmioWindow,
  ChannelPciFunction,
  DEVICE_PCI_HANDLER_MODULE as BLK_PCI_HANDLER_MODULE,
  MMIO_SPACE,
  PCI_CONFIG_SPACE,
} from "@tskvm/virtio-worker";
export * from "./config.js";
export * from "./constants.js";
export * from "./device.js";
export * from "./engine.js";
export type { BlkImageSpec, BlkModuleData, BlkModuleInfo } from "./entry.js";
export * from "./host.js";
export * from "./pci-device.js";
export type { BlkPciOptions, BlkTransportKind, BlkWorkerExit, BlkWorkerReady } from "./protocol.js";
export * from "./request.js";
export * from "./stats.js";
