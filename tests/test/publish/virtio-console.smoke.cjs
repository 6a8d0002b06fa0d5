// @tskvm/virtio-console: the device class is exported and its worker module ships.
const assert = require("node:assert/strict");
const { existsSync } = require("node:fs");
const { fileURLToPath } = require("node:url");

module.exports = async function smoke(load) {
  const { CONSOLE_DEVICE_MODULE, VirtioConsoleDevice } = load["@tskvm/virtio-console"];
  assert.equal(typeof VirtioConsoleDevice, "function");
  assert.ok(existsSync(fileURLToPath(CONSOLE_DEVICE_MODULE)), CONSOLE_DEVICE_MODULE);
  return "VirtioConsoleDevice and its device module are there";
};
