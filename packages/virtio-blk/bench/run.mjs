// `pnpm bench`: 4 KiB random and 1 MiB sequential reads through the blk device
// beside plain fs.readvSync (preadv) on the same file, apples to apples:
//
// - the same fresh 256 MiB file in $TMPDIR, read once in full before anything
//   is measured (so every read, raw or device, comes from the page cache: this
//   measures the device's cost, not the disk's);
// - the same number of requests at the same byte offsets (one precomputed list
//   per workload), into the same kind of memory (kvm-core guest RAM), the raw
//   loop rotating over as many buffers as the device has requests in flight;
// - raw and device runs interleaved, TRIES times each, medians reported (the
//   host is shared: a neighbour's burst hits both sides alike).
//
// Figures, per workload (requests ÷ time):
// - "preadv CPU" / "blk worker CPU": ÷ the CPU time of the thread doing the
//   work (Linux schedstat: on-CPU time, so a neighbour's load that takes the
//   CPU away does not count, and what the thread burns in poll wake-ups,
//   eventfd reads and irqfd writes does). For the worker that is its whole
//   loop over the run; the ratio is the device's own cost beside preadv's,
//   the figure the 0.8× target is about.
// - "service (wall)": ÷ the wall time the worker spent in processQueue
//   (`stats.serviceMs`: pop, parse, preadv into guest RAM, used ring, irqfd
//   write; not its sleeps in poll), against preadv's wall time.
// - "end to end": ÷ the wall time as the driver worker sees it (notify
//   eventfd → worker poll → … → irqfd → driver wake-up → reap and refill).
//   The driver is interrupt-driven: the device answers in batches of 4 and
//   interrupts when the driver asks; the driver reaps, refills, kicks once.
//   Thread wake-ups dominate at depth 1.
// The inline row serves the queue on this thread (no eventfds, no thread
// hops), driven by a few ring writes per request; its CPU figure is this
// thread's CPU over the loop (driver writes included), its service figure the
// time in processQueue. Set BENCH_TRIES (default 5) and BENCH_ONLY (a part of
// a workload name) to shorten a run.
import {
  closeSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  readvSync,
  rmSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { openDiskImage } from "@tskvm/disk-image";
import { DeviceChannel, GuestMemory, GuestRegion } from "@tskvm/kvm-core";
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VirtioPciTransport } from "@tskvm/virtio";
import { InterruptRecorder, PciDriverTransport, VirtioDriverSimulator } from "@tskvm/virtio/testing";
import { startBlkWorker, VirtioBlkDevice } from "../dist/index.js";

const SIZE = 256 << 20;
const MiB = 1 << 20;
const TRIES = Number(process.env.BENCH_TRIES ?? 5);
const QUEUE_SIZE = 128;
const dir = mkdtempSync(join(process.env.TMPDIR || tmpdir(), "tskvm-blk-bench-"));
const path = join(dir, "disk.raw");

{
  const fd = openSync(path, "w");
  const chunk = new Uint8Array(MiB);
  for (let i = 0; i < SIZE / MiB; i++) {
    for (let j = 0; j < MiB; j += 512) chunk[j] = (i + j) & 0xff;
    writeSync(fd, chunk, 0, MiB, i * MiB);
  }
  closeSync(fd);
}
/** Reads the whole file once: every page in the page cache before any run. */
function warmPageCache() {
  const fd = openSync(path, "r");
  const chunk = new Uint8Array(MiB);
  for (let i = 0; i < SIZE / MiB; i++) readSync(fd, chunk, 0, MiB, i * MiB);
  closeSync(fd);
}

/** This thread's CPU time in ms (Linux schedstat: on-CPU time, not time spent waiting for a CPU). */
const threadCpuMs = () => Number(readFileSync("/proc/thread-self/schedstat", "utf8").split(" ")[0]) / 1e6;

const region = GuestRegion.allocate(0, 64 << 20);
const memory = new GuestMemory([region]);

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

/** The byte offsets of a workload's requests, the same list for preadv and the device. */
function offsetsFor({ size, sequential, count }) {
  const slots = SIZE / size;
  const rnd = rng(99);
  const out = new Float64Array(count);
  for (let n = 0; n < count; n++) out[n] = (sequential ? n % slots : Math.floor(rnd() * slots)) * size;
  return out;
}

/** Plain preadv (fs.readvSync) of every offset into guest RAM, rotating over `depth` buffers. */
function raw({ size, depth }, offsets) {
  const fd = openSync(path, "r");
  const views = Array.from({ length: depth }, (_, i) => memory.view((32 << 20) + i * size, size));
  const c0 = threadCpuMs();
  const t0 = performance.now();
  for (let n = 0; n < offsets.length; n++) readvSync(fd, [views[n % depth]], offsets[n]);
  const secs = (performance.now() - t0) / 1000;
  const cpuSecs = (threadCpuMs() - c0) / 1000;
  closeSync(fd);
  const n = offsets.length;
  return {
    iops: n / secs,
    mbps: (n * size) / secs / 1e6,
    cpuIops: n / cpuSecs,
    cpuMbps: (n * size) / cpuSecs / 1e6,
  };
}

/** One run through the blk I/O worker, driven by bench/driver.mjs in another worker. */
async function device(c, offsets) {
  const channel = DeviceChannel.create();
  const handle = startBlkWorker({
    image: { path, format: "raw", readOnly: true },
    memory: memory.describe(),
    transport: "pci",
    channel: channel.describe(),
    device: { queueSize: QUEUE_SIZE },
  });
  await handle.ready;
  const cpu0 = handle.stats().cpuMs ?? Number.NaN;
  const driver = new Worker(new URL("./driver.mjs", import.meta.url), {
    workerData: {
      memory: memory.describe(),
      channel: channel.describe(),
      notifyFd: handle.notifyEventFds[0].fd,
      irqfd: handle.irqEventFds[1].fd,
      heap: { address: MiB, size: 30 << 20 },
      queueSize: QUEUE_SIZE,
      run: { depth: c.depth, size: c.size },
      offsets,
    },
  });
  const report = await new Promise((resolve, reject) => {
    driver.once("message", resolve);
    driver.once("error", reject);
  });
  await driver.terminate();
  const exit = await handle.stop();
  channel.close();
  const s = exit.stats;
  if (s.completed !== offsets.length) throw new Error(`device completed ${s.completed}/${offsets.length}`);
  const serviceSecs = s.serviceMs / 1000;
  const cpuSecs = ((s.cpuMs ?? Number.NaN) - cpu0) / 1000;
  return {
    ...report,
    cpuIops: s.completed / cpuSecs,
    cpuMbps: (s.completed * c.size) / cpuSecs / 1e6,
    serviceIops: s.completed / serviceSecs,
    serviceMbps: (s.completed * c.size) / serviceSecs / 1e6,
    batches: s.batches,
    interrupts: s.interrupts,
  };
}

/** The device inline on this thread, driven by the simulator: service time of processQueue. */
function inline({ depth, size }, offsets) {
  const image = openDiskImage(path, { format: "raw", readOnly: true });
  const dev = new VirtioBlkDevice({ image, queueSize: QUEUE_SIZE });
  const pci = new VirtioPciTransport({ device: dev, memory, msix: new InterruptRecorder() });
  const sim = new VirtioDriverSimulator({
    transport: new PciDriverTransport(pci),
    memory,
    heap: { address: MiB, size: 30 << 20 },
  });
  sim.init({ queueSize: QUEUE_SIZE });
  const q = sim.queue(0);
  const heads = [];
  for (let i = 0; i < depth; i++) {
    const hdr = sim.allocator.alloc(16, 16);
    const data = sim.allocator.alloc(size, 4096);
    const status = sim.allocator.alloc(1, 1);
    memory.fill(hdr, 16, 0);
    q.writeDescriptor(3 * i, { address: hdr, length: 16, flags: VIRTQ_DESC_F_NEXT, next: 3 * i + 1 });
    q.writeDescriptor(3 * i + 1, {
      address: data,
      length: size,
      flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
      next: 3 * i + 2,
    });
    q.writeDescriptor(3 * i + 2, { address: status, length: 1, flags: VIRTQ_DESC_F_WRITE, next: 0 });
    const v = memory.view(hdr, 16);
    heads.push({ head: 3 * i, hdr: new DataView(v.buffer, v.byteOffset, 16) });
  }
  // Publish a batch, serve it, count it: the driver side here is a few ring writes (the used
  // ring is not read back; the device's counters say what completed).
  let n = 0;
  const c0 = threadCpuMs();
  const t0 = performance.now();
  while (n < offsets.length) {
    let k = 0;
    for (const h of heads) {
      if (n + k === offsets.length) break;
      h.hdr.setUint32(8, offsets[n + k] / 512, true);
      q.publish(h.head);
      k++;
    }
    dev.processQueue(0);
    n += k;
  }
  const secs = (performance.now() - t0) / 1000;
  const cpuSecs = (threadCpuMs() - c0) / 1000;
  const s = dev.stats;
  image.close();
  if (s.completed !== n || s.rejected + s.failed !== 0) throw new Error(`inline: ${JSON.stringify(s)}`);
  const serviceSecs = s.serviceMs / 1000;
  return {
    iops: n / secs,
    cpuIops: n / cpuSecs,
    cpuMbps: (n * size) / cpuSecs / 1e6,
    serviceIops: s.completed / serviceSecs,
    mbps: (n * size) / secs / 1e6,
    serviceMbps: (s.completed * size) / serviceSecs / 1e6,
  };
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const only = process.env.BENCH_ONLY; // e.g. "depth 32": run the workloads whose name contains it
const cases = [
  { name: "4 KiB random read, depth 1", size: 4096, depth: 1, sequential: false, count: 20_000, key: "iops" },
  {
    name: "4 KiB random read, depth 32",
    size: 4096,
    depth: 32,
    sequential: false,
    count: 200_000,
    key: "iops",
  },
  {
    name: "1 MiB sequential read, depth 1",
    size: MiB,
    depth: 1,
    sequential: true,
    count: 2_000,
    key: "mbps",
  },
  {
    name: "1 MiB sequential read, depth 8",
    size: MiB,
    depth: 8,
    sequential: true,
    count: 4_000,
    key: "mbps",
  },
];

warmPageCache();
// Warm the JITs once on both sides (not measured).
raw({ size: 4096, depth: 32 }, offsetsFor({ size: 4096, sequential: false, count: 50_000 }));
inline({ size: 4096, depth: 32 }, offsetsFor({ size: 4096, sequential: false, count: 50_000 }));

const fmt = (v, key) =>
  key === "iops" ? `${Math.round(v).toLocaleString("en-US")} IOPS` : `${v.toFixed(0)} MB/s`;
const rows = [];
const notes = [];
for (const c of cases) {
  if (only && !c.name.includes(only)) continue;
  const offsets = offsetsFor(c);
  const r = [];
  const dv = [];
  for (let t = 0; t < TRIES; t++) {
    r.push(raw(c, offsets));
    dv.push(await device(c, offsets));
  }
  const k = c.key;
  const ck = k === "iops" ? "cpuIops" : "cpuMbps";
  const sk = k === "iops" ? "serviceIops" : "serviceMbps";
  const rawCpu = median(r.map((x) => x[ck]));
  const devCpu = median(dv.map((x) => x[ck]));
  const rawWall = median(r.map((x) => x[k]));
  const e2e = median(dv.map((x) => x[k]));
  const svc = median(dv.map((x) => x[sk]));
  rows.push([
    c.name,
    fmt(rawCpu, k),
    fmt(devCpu, k),
    (devCpu / rawCpu).toFixed(2),
    fmt(svc, k),
    (svc / rawWall).toFixed(2),
    fmt(rawWall, k),
    fmt(e2e, k),
    (e2e / rawWall).toFixed(2),
  ]);
  const last = dv[dv.length - 1];
  notes.push(
    `${c.name}: ${c.count} requests; last try ${last.batches} batches, ${last.interrupts} interrupts, ` +
      `${last.wakeups} driver sleeps (${last.lostWakeups} timed out), bad completions ${dv.reduce((n, x) => n + x.bad, 0)}`,
  );
}
{
  const c = { size: 4096, depth: 32, sequential: false, count: 200_000 };
  const offsets = offsetsFor(c);
  const r = [];
  const inl = [];
  for (let t = 0; t < TRIES; t++) {
    r.push(raw(c, offsets));
    inl.push(inline(c, offsets));
  }
  const rawCpu = median(r.map((x) => x.cpuIops));
  const devCpu = median(inl.map((x) => x.cpuIops));
  const rawWall = median(r.map((x) => x.iops));
  const svc = median(inl.map((x) => x.serviceIops));
  const e2e = median(inl.map((x) => x.iops));
  rows.push([
    "4 KiB random read, depth 32, inline (one thread)",
    fmt(rawCpu, "iops"),
    fmt(devCpu, "iops"),
    (devCpu / rawCpu).toFixed(2),
    fmt(svc, "iops"),
    (svc / rawWall).toFixed(2),
    fmt(rawWall, "iops"),
    fmt(e2e, "iops"),
    (e2e / rawWall).toFixed(2),
  ]);
  notes.push(
    `inline: ${(1e6 / devCpu).toFixed(2)} µs of CPU per 4 KiB request (${(1e6 / svc).toFixed(2)} µs wall in processQueue) vs ${(1e6 / rawCpu).toFixed(2)} µs per preadv`,
  );
}

const head = [
  "workload",
  "preadv CPU",
  "blk worker CPU",
  "ratio",
  "service (wall)",
  "ratio",
  "preadv wall",
  "end to end",
  "ratio",
];
const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
const line = (cells) =>
  `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(" | ")} |`;
console.log(line(head));
console.log(`| ${widths.map((w, i) => (i === 0 ? "-".repeat(w) : `${"-".repeat(w - 1)}:`)).join(" | ")} |`);
for (const r of rows) console.log(line(r));
console.log(`\n(${new Date().toISOString().slice(0, 10)}, medians of ${TRIES} interleaved tries)`);
for (const n of notes) console.log(`  ${n}`);
region.release();
rmSync(dir, { recursive: true, force: true });
