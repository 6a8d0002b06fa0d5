// @tskvm/virtio-rng: the device class is exported and its worker module ships.
const assert = require("node:assert/strict");
const { existsSync } = require("node:fs");
const { fileURLToPath } = require("node:url");

module.exports = async function smoke(load) {
  const { RNG_DEVICE_MODULE, VirtioRngDevice } = load["@tskvm/virtio-rng"];
  assert.equal(typeof VirtioRngDevice, "function");
  assert.ok(existsSync(fileURLToPath(RNG_DEVICE_MODULE)), RNG_DEVICE_MODULE);
  return "VirtioRngDevice and its device module are there";
};
