// @tskvm/virtio-blk: an inline VirtioBlkDevice over a raw image, driven through
// the driver simulator: a write request, then a read request that finds its bytes.
const assert = require("node:assert/strict");
const { mkdtempSync, readFileSync, rmSync, writeFileSync } = require("node:fs");
const { tmpdir } = require("node:os");
const { join } = require("node:path");

function header(type, sector) {
  const b = Buffer.alloc(16);
  b.writeUInt32LE(type, 0);
  b.writeBigUInt64LE(BigInt(sector), 8);
  return b;
}

module.exports = async function smoke(load) {
  const { openDiskImage } = load["@tskvm/disk-image"];
  const { createTestMemory, VirtioPciTransport } = load["@tskvm/virtio"];
  const { InterruptRecorder, PciDriverTransport, VirtioDriverSimulator } = load["@tskvm/virtio/testing"];
  const { VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VirtioBlkDevice } = load["@tskvm/virtio-blk"];
  const dir = mkdtempSync(join(tmpdir(), "tskvm-smoke-"));
  try {
    const path = join(dir, "disk.raw");
    writeFileSync(path, Buffer.alloc(1 << 20));
    const image = openDiskImage(path, { format: "raw" });
    const memory = createTestMemory(4 << 20);
    const irq = new InterruptRecorder();
    const device = new VirtioBlkDevice({ image });
    const transport = new VirtioPciTransport({ device, memory, msix: irq, intx: irq });
    const sim = new VirtioDriverSimulator({
      transport: new PciDriverTransport(transport),
      memory,
      heap: { address: 0x10000, size: (4 << 20) - 0x10000 },
    });
    sim.init();
    const q = sim.queue(0);
    const data = Buffer.alloc(512, "virtio-blk ");

    q.submit({ readable: [header(VIRTIO_BLK_T_OUT, 2), data], writable: [1] });
    q.kick();
    const [written] = await q.waitUsed(1);
    assert.equal(written.written[0], VIRTIO_BLK_S_OK);

    q.submit({ readable: [header(VIRTIO_BLK_T_IN, 2)], writable: [512, 1] });
    q.kick();
    const [read] = await q.waitUsed(1);
    assert.equal(read.len, 513);
    assert.equal(read.written[512], VIRTIO_BLK_S_OK);
    assert.deepEqual(Buffer.from(read.written.subarray(0, 512)), data);

    sim.reset();
    image.close();
    assert.deepEqual(readFileSync(path).subarray(1024, 1536), data);
    return "a write and a read-back through the simulator (raw image, inline device)";
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
};
