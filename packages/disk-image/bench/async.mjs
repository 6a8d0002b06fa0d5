// `node bench/async.mjs` (part of `pnpm bench`): 4 KiB random reads, 32 in
// flight, on a 256 MiB file — through an asynchronous queue on io_uring, the
// same queue on its synchronous engine, readvBatch (32 reads per native
// rwBatch call) and a plain fs.readvSync loop (one at a time). Twice: on a
// file in $TMPDIR through the page cache (per-request cost), and on a file in
// /var/tmp opened O_DIRECT (the disk itself; skipped where O_DIRECT is
// refused). With `fio` installed, fio's io_uring engine runs the same
// workload on the same file beside them. A few seconds per row.
//
// The queue loops keep 32 requests in flight: reap what completed, queue as
// many new ones, submit. They spin on reap() instead of polling completionFd
// (Node cannot poll an fd synchronously), so with O_DIRECT they burn a core
// while waiting for the disk, as the one-at-a-time loops do in the kernel.
import { spawnSync } from "node:child_process";
import {
  closeSync,
  fdatasyncSync,
  constants as fsc,
  mkdtempSync,
  openSync,
  readSync,
  readvSync,
  rmSync,
  writeSync,
} from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { ioUringSupport, openRaw } from "../dist/index.js";

const SIZE = 256 << 20;
const MiB = 1 << 20;
const BS = 4096;
const DEPTH = 32;
const SECONDS = Number(process.env.TSKVM_BENCH_SECONDS ?? 2);

let seed = 12345;
const rand = (n) => {
  seed = (seed * 1103515245 + 12345) >>> 0;
  return seed % n;
};
const randomOffset = () => rand(SIZE / BS) * BS;

function fill(path) {
  const fd = openSync(path, "w");
  const chunk = new Uint8Array(MiB);
  for (let i = 0; i < SIZE / MiB; i++) {
    for (let j = 0; j < MiB; j += BS) chunk[j] = (i + j) & 0xff;
    writeSync(fd, chunk, 0, MiB, i * MiB);
  }
  fdatasyncSync(fd);
  closeSync(fd);
}

/** `count` views of BS bytes whose memory O_DIRECT accepts, found by trying reads through `fd`. */
function alignedViews(fd, count) {
  const ab = new ArrayBuffer(count * BS + 8192);
  for (let k = 0; k < 8192; k += 16) {
    try {
      readSync(fd, new Uint8Array(ab, k, BS), 0, BS, 0);
      return Array.from({ length: count }, (_, i) => new Uint8Array(ab, k + i * BS, BS));
    } catch {
      // EINVAL: not aligned enough
    }
  }
  throw new Error("no O_DIRECT-aligned memory found");
}

/** Runs `step()` (which returns how many reads it finished) for SECONDS; returns reads per second. */
function rate(step) {
  const limit = BigInt(Math.round(SECONDS * 1e9));
  const t0 = process.hrtime.bigint();
  let reads = 0;
  let elapsed = 0n;
  while (elapsed < limit) {
    for (let k = 0; k < 16; k++) reads += step();
    elapsed = process.hrtime.bigint() - t0;
  }
  return (reads * 1e9) / Number(elapsed);
}

function readvLoop(path, direct, views) {
  const fd = openSync(path, direct ? fsc.O_RDONLY | fsc.O_DIRECT : "r");
  const bufs = [views[0]];
  try {
    return rate(() => {
      readvSync(fd, bufs, randomOffset());
      return 1;
    });
  } finally {
    closeSync(fd);
  }
}

function batchLoop(path, direct, views) {
  const img = openRaw(path, { readOnly: true, direct, lock: false });
  const batch = {
    count: DEPTH,
    offsets: new Float64Array(DEPTH),
    iovCounts: new Int32Array(DEPTH).fill(1),
    buffers: views,
    errors: [],
  };
  try {
    return rate(() => {
      for (let i = 0; i < DEPTH; i++) batch.offsets[i] = randomOffset();
      if (img.readvBatch(batch) !== 0) throw new Error("read failed");
      return DEPTH;
    });
  } finally {
    img.close();
  }
}

function queueLoop(path, direct, views, engine) {
  const img = openRaw(path, { readOnly: true, direct, lock: false });
  const q = img.openAsyncQueue({ depth: DEPTH, engine });
  const tags = new Uint32Array(DEPTH);
  const results = new Int32Array(DEPTH);
  const lists = views.map((v) => [v]);
  try {
    for (let i = 0; i < DEPTH; i++) q.readv(i, randomOffset(), lists[i]);
    q.submit();
    const iops = rate(() => {
      const n = q.reap(tags, results);
      for (let i = 0; i < n; i++) {
        if (results[i] !== BS) throw new Error(`read failed: ${results[i]}`);
        const t = tags[i];
        q.readv(t, randomOffset(), lists[t]);
      }
      if (n > 0) q.submit();
      return n;
    });
    return { iops, engine: q.engine };
  } finally {
    q.close();
    img.close();
  }
}

function fio(path, direct) {
  const r = spawnSync(
    "fio",
    [
      "--name=randread",
      `--filename=${path}`,
      "--ioengine=io_uring",
      `--direct=${direct ? 1 : 0}`,
      "--invalidate=0", // keep the page cache warm, as for the other rows
      "--rw=randread",
      `--bs=${BS}`,
      `--iodepth=${DEPTH}`,
      `--size=${SIZE}`,
      `--runtime=${Math.max(1, Math.round(SECONDS))}`,
      "--time_based",
      "--output-format=json",
    ],
    { encoding: "utf8" },
  );
  if (r.error || r.status !== 0) return undefined;
  try {
    return JSON.parse(r.stdout).jobs[0].read.iops;
  } catch {
    return undefined;
  }
}

function hasFio() {
  return spawnSync("fio", ["--version"], { encoding: "utf8" }).status === 0;
}

function directOk(path) {
  try {
    closeSync(openSync(path, fsc.O_RDONLY | fsc.O_DIRECT));
    return true;
  } catch {
    return false;
  }
}

const dirs = [];
const load = loadavg();
try {
  const uring = ioUringSupport();
  console.log(
    `io_uring: ${uring.available ? "available" : `not available (${uring.code}): its rows are skipped`}`,
  );
  const cached = mkdtempSync(join(process.env.TMPDIR || tmpdir(), "tskvm-async-bench-"));
  dirs.push(cached);
  const cases = [{ label: `$TMPDIR (${cached}), page cache`, path: join(cached, "disk.raw"), direct: false }];
  let diskDir;
  try {
    diskDir = mkdtempSync("/var/tmp/tskvm-async-bench-");
    dirs.push(diskDir);
  } catch {
    console.log("/var/tmp is not writable: the O_DIRECT rows are skipped");
  }
  if (diskDir) cases.push({ label: `/var/tmp, O_DIRECT`, path: join(diskDir, "disk.raw"), direct: true });
  const withFio = hasFio();
  if (!withFio) console.log("fio is not installed: its rows are skipped (Debian: apt-get install fio)");

  const rows = [];
  for (const c of cases) {
    console.log(`preparing ${SIZE / MiB} MiB in ${c.path} ...`);
    fill(c.path);
    if (c.direct && !directOk(c.path)) {
      console.log(`${c.path}: the filesystem refuses O_DIRECT; skipped`);
      continue;
    }
    let views;
    if (c.direct) {
      const fd = openSync(c.path, fsc.O_RDONLY | fsc.O_DIRECT);
      views = alignedViews(fd, DEPTH);
      closeSync(fd);
    } else views = Array.from({ length: DEPTH }, () => new Uint8Array(BS));
    const add = (what, iops) => rows.push({ file: c.label, what, iops });
    add("fs.readvSync loop (depth 1)", readvLoop(c.path, c.direct, views));
    add("readvBatch, 32 per rwBatch call", batchLoop(c.path, c.direct, views));
    add("async queue, engine sync, depth 32", queueLoop(c.path, c.direct, views, "sync").iops);
    if (uring.available)
      add("async queue, io_uring, depth 32", queueLoop(c.path, c.direct, views, "io_uring").iops);
    if (withFio) add(`fio io_uring --direct=${c.direct ? 1 : 0} --iodepth=32`, fio(c.path, c.direct));
  }

  const fw = Math.max(...rows.map((r) => r.file.length), 4);
  const ww = Math.max(...rows.map((r) => r.what.length));
  console.log(`\n${"file".padEnd(fw)}  ${"".padEnd(ww)}  ${"4K rand read IOPS".padStart(17)}`);
  for (const r of rows)
    console.log(
      `${r.file.padEnd(fw)}  ${r.what.padEnd(ww)}  ${(r.iops === undefined ? "failed" : r.iops.toFixed(0)).padStart(17)}`,
    );
  console.log(
    `\n(${SECONDS} s per row, TSKVM_BENCH_SECONDS to change; one JS thread; the queue rows spin on reap();` +
      ` load average before: ${load.map((x) => x.toFixed(2)).join(" ")})`,
  );
} finally {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
}
