// Device-side hot path: pop a 3-buffer chain (blk-like: 16-byte header, 4 KiB data, 1-byte status),
// read the header, hand out the data views, write the status, add_used, needsNotification.
// Run after `pnpm build`: node bench/queue.mjs
import { createTestMemory, Queue, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from "../dist/index.js";
import { writeDescriptor } from "../dist/testing.js";

const SIZE = 256;
const mem = createTestMemory(64 << 20);
const desc = 0x1000,
  avail = 0x2000 + SIZE * 16,
  used = avail + 0x1000;
for (let h = 0; h < SIZE; h += 4) {
  // chains of 3 descriptors at h, h+1, h+2
  writeDescriptor(mem, desc, h, {
    address: 0x100000 + h * 0x2000,
    length: 16,
    flags: VIRTQ_DESC_F_NEXT,
    next: h + 1,
  });
  writeDescriptor(mem, desc, h + 1, {
    address: 0x100000 + h * 0x2000 + 0x100,
    length: 4096,
    flags: VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
    next: h + 2,
  });
  writeDescriptor(mem, desc, h + 2, {
    address: 0x100000 + h * 0x2000 + 0x1200,
    length: 1,
    flags: VIRTQ_DESC_F_WRITE,
    next: 0,
  });
}
const q = new Queue(mem, { size: SIZE, descTable: desc, availRing: avail, usedRing: used, eventIdx: true });
let availIdx = 0;
const N = 2_000_000;
let sink = 0;
const t0 = process.hrtime.bigint();
for (let i = 0; i < N; i++) {
  // driver: publish one chain
  mem.writeU16(avail + 4 + 2 * (availIdx % SIZE), (i * 4) % SIZE);
  availIdx = (availIdx + 1) & 0xffff;
  mem.writeU16(avail + 2, availIdx);
  // device
  const c = q.pop();
  const r = c.reader();
  sink += r.readU32();
  const data = c.writer();
  const status = data.splitAt(data.remaining - 1);
  sink += data.writeViews(4096).length;
  status.writeU8(0);
  q.addUsed(c.head, 4097);
  if (q.needsNotification()) sink++;
}
const ns = Number(process.hrtime.bigint() - t0);
console.log(
  `${(ns / N).toFixed(0)} ns per request (pop + header read + data views + status + add_used + needsNotification), sink ${sink}`,
);
