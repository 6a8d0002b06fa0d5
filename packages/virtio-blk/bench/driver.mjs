// The bench's guest driver, in its own worker: brings the device up through
// the DeviceChannel, then keeps `depth` reads in flight with preallocated
// buffers and descriptors (no per-request allocation or copy on this side, as
// a real driver), notifying through the notify eventfd and sleeping on the
// irqfd. Reports IOPS and MB/s.
import { parentPort, workerData } from "node:worker_threads";
import { DeviceChannel, EventFd, GuestMemory, pollReadable } from "@tskvm/kvm-core";

/** poll(2) on one fd; a signal (EINTR) counts as a timeout. */
function readable(fd, ms) {
  try {
    return pollReadable([fd], ms)[0];
  } catch (e) {
    if (e?.code === "EINTR") return false;
    throw e;
  }
}

import {
  PciDriverTransport,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VirtioDriverSimulator,
} from "@tskvm/virtio";
import { ChannelPciFunction } from "../dist/index.js";

const d = workerData;
const memory = GuestMemory.fromDescriptor(d.memory);
const notify = EventFd.fromFd(d.notifyFd, true);
const irq = EventFd.fromFd(d.irqfd, true);
const FENCE = new Int32Array(new SharedArrayBuffer(4));
const fence = () => Atomics.add(FENCE, 0, 0);

const transport = new PciDriverTransport(new ChannelPciFunction(DeviceChannel.fromDescriptor(d.channel)));
const sim = new VirtioDriverSimulator({ transport, memory, heap: d.heap });
sim.init({ queueSize: 128 });
transport.notify = () => notify.write(1);
const q = sim.queue(0);
const capacity = Number(new DataView(sim.readConfig(0, 8).buffer).getBigUint64(0, true));

function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

let lostWakeups = 0;
function run({ depth, size, ms, sequential }) {
  const rnd = rng(99);
  const sectors = size / 512;
  // One slot per request in flight: header, data, status, three chained descriptors.
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
    slots.push({ head: a, hdr, data, status });
  }
  const byHead = new Map(slots.map((s) => [s.head, s]));
  let next = 0;
  const submit = (s) => {
    let sector;
    if (sequential) {
      sector = next;
      next = (next + sectors) % (capacity - sectors + 1);
    } else sector = Math.floor(rnd() * (capacity / sectors)) * sectors;
    memory.writeU64(s.hdr + 8, BigInt(sector));
    memory.writeU8(s.status, 0xff);
    q.publish(s.head);
  };
  let done = 0;
  let bad = 0;
  let inflight = 0;
  const t0 = performance.now();
  const end = t0 + ms;
  for (const s of slots) {
    submit(s);
    inflight++;
  }
  fence();
  q.kickIfNeeded();
  while (inflight > 0) {
    let used = q.pollUsed();
    if (used.length === 0) {
      fence();
      used = q.pollUsed();
    }
    if (used.length === 0) {
      if (readable(irq.fd, 100)) irq.read();
      else lostWakeups++;
      continue;
    }
    const more = performance.now() < end;
    for (const u of used) {
      const s = byHead.get(u.id);
      if (u.len !== size + 1 || memory.readU8(s.status) !== 0) bad++;
      done++;
      if (more) submit(s);
      else inflight--;
    }
    fence();
    q.kickIfNeeded();
  }
  const secs = (performance.now() - t0) / 1000;
  for (const s of slots) {
    sim.allocator.free(s.hdr);
    sim.allocator.free(s.data);
    sim.allocator.free(s.status);
  }
  return { ops: done, bad, iops: done / secs, mbps: (done * size) / secs / 1e6 };
}

const results = d.runs.map(run);
parentPort.postMessage({ results, lostWakeups });
