// @tskvm/disk-image: create a qcow2, write, flush, reopen and read it back
// (opening takes OFD locks through the native helper).
const assert = require("node:assert/strict");
const { mkdtempSync, rmSync } = require("node:fs");
const { tmpdir } = require("node:os");
const { join } = require("node:path");

module.exports = async function smoke(load) {
  const { createQcow2, imageInfo, openDiskImage } = load["@tskvm/disk-image"];
  const dir = mkdtempSync(join(tmpdir(), "tskvm-smoke-"));
  try {
    const path = join(dir, "disk.qcow2");
    createQcow2(path, 4 << 20);
    const data = Buffer.alloc(4096, "tskvm");
    const disk = openDiskImage(path);
    assert.equal(disk.format, "qcow2");
    disk.write(64 << 10, data);
    disk.flush();
    disk.close();
    const again = openDiskImage(path, { readOnly: true });
    const back = new Uint8Array(4096);
    again.read(64 << 10, back);
    again.close();
    assert.deepEqual(Buffer.from(back), data);
    const info = imageInfo(path);
    assert.equal(info.format, "qcow2");
    assert.equal(info.virtualSize, 4 << 20);
    return "a qcow2 was created, written and read back";
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
};
