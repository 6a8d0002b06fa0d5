// @tskvm/virtio-worker: both entries load; the PCI handler module the machine
// loads by URL is in the package.
const assert = require("node:assert/strict");
const { existsSync } = require("node:fs");
const { fileURLToPath } = require("node:url");

module.exports = async function smoke(load) {
  const { DEVICE_PCI_HANDLER_MODULE, startDeviceWorker } = load["@tskvm/virtio-worker"];
  const { createPciDevice } = load["@tskvm/virtio-worker/pci-handler"];
  assert.equal(typeof startDeviceWorker, "function");
  assert.equal(typeof createPciDevice, "function");
  assert.ok(existsSync(fileURLToPath(DEVICE_PCI_HANDLER_MODULE)), DEVICE_PCI_HANDLER_MODULE);
  return "startDeviceWorker and the pci-handler entry are there";
};
