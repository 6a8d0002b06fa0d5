// `pnpm bench`: 4 KiB random-read IOPS and 1 MiB sequential read/write MB/s
// through the raw and qcow2 backends, beside plain fs.readSync / preadv on the
// same 256 MiB file in $TMPDIR. The file is fresh, so reads come from the page
// cache: this measures the cost of each layer, not the disk. Writes end with a
// flush (fdatasync), which is included in their time.
import { spawnSync } from "node:child_process";
import {
  closeSync,
  fdatasyncSync,
  mkdtempSync,
  openSync,
  readSync,
  readvSync,
  rmSync,
  writeSync,
  writevSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createQcow2, openDiskImage } from "../dist/index.js";

const SIZE = 256 << 20;
const MiB = 1 << 20;
const dir = mkdtempSync(join(process.env.TMPDIR || tmpdir(), "tskvm-bench-"));
const rawPath = join(dir, "disk.raw");
const qcowPath = join(dir, "disk.qcow2");
const freshPath = join(dir, "fresh.qcow2");

function fill(path) {
  const fd = openSync(path, "w");
  const chunk = new Uint8Array(MiB);
  for (let i = 0; i < SIZE / MiB; i++) {
    for (let j = 0; j < MiB; j += 4096) chunk[j] = (i + j) & 0xff;
    writeSync(fd, chunk, 0, MiB, i * MiB);
  }
  fdatasyncSync(fd);
  closeSync(fd);
}

/** Runs `op(i)` repeatedly for about `ms` milliseconds; returns operations per second. */
function rate(ms, op) {
  let n = 0;
  const t0 = process.hrtime.bigint();
  const limit = BigInt(ms) * 1_000_000n;
  let elapsed = 0n;
  while (elapsed < limit) {
    for (let k = 0; k < 64; k++) op(n++);
    elapsed = process.hrtime.bigint() - t0;
  }
  return (n * 1e9) / Number(elapsed);
}

/** The best of `n` tries: a shared, busy machine only ever makes a run slower. */
function best(n, f) {
  let b = 0;
  for (let i = 0; i < n; i++) b = Math.max(b, f());
  return b;
}

/** Flushes everything dirty (untimed) so a row does not pay for the previous one's writeback. */
function settle() {
  spawnSync("sync");
}

function timed(op) {
  const t0 = process.hrtime.bigint();
  op();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

let seed = 12345;
const rand = (n) => {
  seed = (seed * 1103515245 + 12345) >>> 0;
  return seed % n;
};

const buf4k = new Uint8Array(4096);
const bufs4k = [buf4k];
const buf1m = new Uint8Array(MiB).fill(0x3c);
const randomOffset = () => rand(SIZE / 4096) * 4096;

/** Reads a file once so the row that follows reads from the page cache. */
function warm(path) {
  const fd = openSync(path, "r");
  for (let o = 0; readSync(fd, buf1m, 0, MiB, o) > 0; o += MiB);
  closeSync(fd);
}

function benchFd(label, read, write) {
  warm(rawPath);
  const fd = openSync(rawPath, "r+");
  const iops = best(3, () => rate(500, () => read(fd, [buf4k], randomOffset())));
  const rd = best(
    2,
    () =>
      SIZE /
      MiB /
      timed(() => {
        for (let o = 0; o < SIZE; o += MiB) read(fd, [buf1m], o);
      }),
  );
  settle();
  const wr = timed(() => {
    for (let o = 0; o < SIZE; o += MiB) write(fd, [buf1m], o);
    fdatasyncSync(fd);
  });
  closeSync(fd);
  return { label, iops, read: rd, write: SIZE / MiB / wr };
}

function benchImage(label, path, format, writePath) {
  warm(path);
  const img = openDiskImage(path, { format });
  const iops = best(3, () => rate(500, () => img.readv(randomOffset(), bufs4k)));
  const rd = best(
    2,
    () =>
      SIZE /
      MiB /
      timed(() => {
        for (let o = 0; o < SIZE; o += MiB) img.read(o, buf1m);
      }),
  );
  let target = img;
  if (writePath) {
    img.close();
    target = openDiskImage(writePath, { format });
  }
  settle();
  const wr = timed(() => {
    for (let o = 0; o < SIZE; o += MiB) target.write(o, buf1m);
    target.flush();
  });
  target.close();
  return { label, iops, read: rd, write: SIZE / MiB / wr };
}

try {
  console.log(`preparing a ${SIZE / MiB} MiB image in ${dir} ...`);
  fill(rawPath);
  const r = spawnSync("qemu-img", ["convert", "-O", "qcow2", rawPath, qcowPath]);
  if (r.status !== 0) throw new Error(`qemu-img convert failed: ${r.stderr}`);
  createQcow2(freshPath, SIZE);

  const rows = [
    benchFd(
      "fs.readSync / fs.writeSync",
      (fd, [b], pos) => readSync(fd, b, 0, b.byteLength, pos),
      (fd, [b], pos) => writeSync(fd, b, 0, b.byteLength, pos),
    ),
    benchFd(
      "fs.readvSync / fs.writevSync (preadv)",
      (fd, bs, pos) => readvSync(fd, bs, pos),
      (fd, bs, pos) => writevSync(fd, bs, pos),
    ),
    benchImage("raw backend (openRaw)", rawPath, "raw"),
    benchImage("qcow2, 64 KiB clusters (qemu-img convert), in place", qcowPath, "qcow2"),
    benchImage("qcow2: reads as above, writes to a new image (allocating)", qcowPath, "qcow2", freshPath),
  ];
  const w = Math.max(...rows.map((x) => x.label.length));
  const fmt = (n) => n.toFixed(0).padStart(10);
  console.log(
    `\n${"".padEnd(w)}  ${"4K rand IOPS".padStart(12)}  ${"1M seq rd MB/s".padStart(14)}  ${"1M seq wr MB/s".padStart(14)}`,
  );
  for (const x of rows)
    console.log(
      `${x.label.padEnd(w)}  ${fmt(x.iops).padStart(12)}  ${fmt(x.read).padStart(14)}  ${fmt(x.write).padStart(14)}`,
    );
  console.log(
    "\n(reads come from the page cache, best of 3 (IOPS) / 2 (MB/s) tries: the numbers compare per-request overhead;\n writes are one pass ending with fdatasync, so they depend on the disk)",
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
