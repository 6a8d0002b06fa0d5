export * from "./device.js";
export * from "./rate-limit.js";
