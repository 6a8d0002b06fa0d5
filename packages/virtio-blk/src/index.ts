export * from "./config.js";
export * from "./constants.js";
export * from "./device.js";
export * from "./engine.js";
export * from "./request.js";
