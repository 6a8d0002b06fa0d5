// The bench's guest driver, in its own worker: brings the device up through
// the DeviceChannel (the virtio driver simulator), then drives the queue the
// way a guest driver does — with its rings and per-request structures mapped
// once (DataViews over guest RAM, built here before the clock starts), not
// through the simulator's general-purpose bookkeeping: one slot per request in
// flight (header, data, status, three chained descriptors written once), the
// header's sector and the avail ring written per request, used entries reaped
// from the used ring, used_event set before sleeping on the irqfd (an
// interrupt-driven driver), the doorbell (notify eventfd) rung only when
// avail_event asks for it. Runs exactly `offsets.length` reads, at the byte
// offsets given, `depth` in flight, and reports what it saw.
import { parentPort, workerData } from "node:worker_threads";
import { DeviceChannel, EventFd, GuestMemory, pollReadable } from "@tskvm/kvm-core";
import { needEvent, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from "@tskvm/virtio";
import { PciDriverTransport, VirtioDriverSimulator } from "@tskvm/virtio/testing";
import { ChannelPciFunction } from "../dist/index.js";

/** poll(2) on one fd; a signal (EINTR) counts as a timeout. */
function readable(fd, ms) {
  try {
    return pollReadable([fd], ms)[0];
  } catch (e) {
    if (e?.code === "EINTR") return false;
    throw e;
  }
}

const d = workerData;
const memory = GuestMemory.fromDescriptor(d.memory);
const notify = EventFd.fromFd(d.notifyFd, true);
const irq = EventFd.fromFd(d.irqfd, true);
const FENCE = new Int32Array(new SharedArrayBuffer(4));
const fence = () => Atomics.add(FENCE, 0, 0);
const dataView = (address, length) => {
  const v = memory.view(address, length);
  return new DataView(v.buffer, v.byteOffset, length);
};

const QSIZE = d.queueSize;
const transport = new PciDriverTransport(new ChannelPciFunction(DeviceChannel.fromDescriptor(d.channel)));
const sim = new VirtioDriverSimulator({ transport, memory, heap: d.heap });
sim.init({ queueSize: QSIZE });
const q = sim.queue(0);
const avail = dataView(q.availRing, 6 + 2 * QSIZE);
const used = dataView(q.usedRing, 6 + 8 * QSIZE);
const USED_EVENT = 4 + 2 * QSIZE;
const AVAIL_EVENT = 4 + 8 * QSIZE;

const { depth, size } = d.run;
const offsets = d.offsets; // Float64Array of byte offsets, one per request
const sectors = size / 512;
const slots = [];
for (let i = 0; i < depth; i++) {
  const hdr = sim.allocator.alloc(16, 16);
  const data = sim.allocator.alloc(size, 4096);
  const status = sim.allocator.alloc(1, 1);
  memory.fill(hdr, 16, 0); // type 0: IN
  const [a, b, c] = [3 * i, 3 * i + 1, 3 * i + 2];
  q.writeDescriptor(a, { address: hdr, length: 16, flags: VIRTQ_DESC_F_NEXT, next: b });
  q.writeDescriptor(b, {
    address: data,
    length: size,
    flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
    next: c,
  });
  q.writeDescriptor(c, { address: status, length: 1, flags: VIRTQ_DESC_F_WRITE, next: 0 });
  slots.push({ head: a, hdr: dataView(hdr, 16), status: memory.view(status, 1) });
}
const byHead = new Array(3 * depth);
for (const s of slots) byHead[s.head] = s;

let availIdx = 0;
let kickedAt = 0;
let lastUsed = 0;
let submitted = 0;
const submit = (s) => {
  const sector = offsets[submitted++] / 512;
  s.hdr.setUint32(8, sector >>> 0, true);
  s.hdr.setUint32(12, Math.floor(sector / 0x1_0000_0000), true);
  s.status[0] = 0xff;
  avail.setUint16(4 + 2 * (availIdx % QSIZE), s.head, true);
  availIdx = (availIdx + 1) & 0xffff;
};
const publishAndKick = () => {
  fence(); // descriptors and slots before avail.idx (free on x86; as virtio_wmb)
  avail.setUint16(2, availIdx, true);
  fence(); // avail.idx before reading avail_event (virtio_mb)
  if (needEvent(used.getUint16(AVAIL_EVENT, true), availIdx, kickedAt)) notify.write(1);
  kickedAt = availIdx;
};

let done = 0;
let bad = 0;
let inflight = 0;
let wakeups = 0;
let lostWakeups = 0;
const total = offsets.length;
const t0 = performance.now();
for (const s of slots) {
  if (submitted === total) break;
  submit(s);
  inflight++;
}
publishAndKick();
while (inflight > 0) {
  let idx = used.getUint16(2, true);
  if (idx === lastUsed) {
    // Ask for an interrupt at the next used entry, then look once more before sleeping.
    avail.setUint16(USED_EVENT, lastUsed, true);
    fence();
    idx = used.getUint16(2, true);
    if (idx === lastUsed) {
      wakeups++;
      if (readable(irq.fd, 100)) irq.read();
      else lostWakeups++;
      continue;
    }
  }
  while (lastUsed !== idx) {
    const o = 4 + 8 * (lastUsed % QSIZE);
    const id = used.getUint32(o, true);
    const len = used.getUint32(o + 4, true);
    lastUsed = (lastUsed + 1) & 0xffff;
    const s = byHead[id];
    if (s === undefined || len !== size + 1 || s.status[0] !== 0) bad++;
    done++;
    if (s !== undefined && submitted < total) submit(s);
    else inflight--;
  }
  publishAndKick();
}
const secs = (performance.now() - t0) / 1000;
parentPort.postMessage({
  ops: done,
  bad,
  secs,
  iops: done / secs,
  mbps: (done * size) / secs / 1e6,
  sectors,
  wakeups,
  lostWakeups,
});
