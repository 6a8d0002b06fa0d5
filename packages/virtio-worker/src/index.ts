export * from "./board.js";
export * from "./channel.js";
export * from "./host.js";
export * from "./machine.js";
export * from "./module.js";
export type {
  DevicePciOptions,
  DevicePciReady,
  DeviceTransportKind,
  DeviceWorkerExit,
  DeviceWorkerReady,
  DeviceWorkerStats,
} from "./protocol.js";
export * from "./rate-limit.js";
