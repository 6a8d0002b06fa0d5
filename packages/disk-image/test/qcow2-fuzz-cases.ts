import fs, { fstatSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import { join } from "node:path";
import { type DiskImage, DiskImageError, imageInfo, openDiskImage } from "../src/index.js";
import { qemuImg, Rng, run } from "./helpers.js";

/*
 * The qcow2 fuzzer, shared by `qcow2-fuzz.test.ts` (CI: 1% of the cases, a
 * fixed seed) and `pnpm fuzz` (all of them, a fresh seed unless one is given):
 * mutated headers and tables of images made by qemu-img, each opened and read
 * (most) or written (some). Every case must end in a DiskImageError or
 * success — any other exception is a crash — and quickly; no system call may
 * read past the end of the file it reads; memory must stay bounded; and writes
 * to a mutated image must never touch clusters that were free in the original.
 * Each case has its own generator (seed, case number), so one case replays
 * alone: TSKVM_FUZZ_SEED=<seed> TSKVM_FUZZ_CASE=<n>.
 */

export interface Base {
  name: string;
  bytes: Uint8Array;
  clusterSize: number;
  l1Offset: number;
  l1Size: number;
  reftableOffset: number;
  reftableClusters: number;
  l2Offsets: number[];
  refblockOffsets: number[];
  /** Clusters with refcount 0 in the original (below its end). */
  freeClusters: number[];
}

function u64(b: Uint8Array, at: number): number {
  return Number(new DataView(b.buffer, b.byteOffset).getBigUint64(at));
}
function u32(b: Uint8Array, at: number): number {
  return new DataView(b.buffer, b.byteOffset).getUint32(at);
}

/** A tiny independent parser of the original (valid, 16-bit refcount) image's layout. */
function describeBase(name: string, path: string): Base {
  const bytes = new Uint8Array(readFileSync(path));
  const clusterSize = 2 ** u32(bytes, 20);
  const l1Size = u32(bytes, 36);
  const l1Offset = u64(bytes, 40);
  const reftableOffset = u64(bytes, 48);
  const reftableClusters = u32(bytes, 56);
  const l2Offsets: number[] = [];
  for (let i = 0; i < l1Size; i++) {
    const e = u64(bytes, l1Offset + i * 8) % 2 ** 56;
    if (e) l2Offsets.push(e - (e % 512));
  }
  const refblockOffsets: number[] = [];
  const perBlock = clusterSize / 2;
  const refcount = new Map<number, number>();
  for (let k = 0; k < (reftableClusters * clusterSize) / 8; k++) {
    const off = u64(bytes, reftableOffset + k * 8);
    if (!off) continue;
    refblockOffsets.push(off);
    for (let i = 0; i < perBlock; i++)
      refcount.set(k * perBlock + i, (bytes[off + i * 2]! << 8) | bytes[off + i * 2 + 1]!);
  }
  const freeClusters: number[] = [];
  for (let c = 0; c < Math.floor(bytes.byteLength / clusterSize); c++)
    if (!refcount.get(c)) freeClusters.push(c);
  return {
    name,
    bytes,
    clusterSize,
    l1Offset,
    l1Size,
    reftableOffset,
    reftableClusters,
    l2Offsets,
    refblockOffsets,
    freeClusters,
  };
}

/** The valid images every mutation starts from (made by qemu-img in `dir`). */
export function makeBases(dir: string): Base[] {
  const rng = new Rng(2024);
  const src = new Uint8Array(1 << 20);
  for (let i = 0; i < 12; i++) {
    const len = 1 + rng.int(60_000);
    src.set(rng.bytes(len), rng.int(src.byteLength - len));
  }
  src.fill(7, 500_000, 600_000);
  const raw = join(dir, "src.raw");
  writeFileSync(raw, src);
  const out: Base[] = [];
  const a = join(dir, "a.qcow2");
  qemuImg("convert", "-O", "qcow2", "-o", "cluster_size=4096", raw, a);
  // free clusters inside the file (discard=unmap punches them: they read as zeros)
  run("qemu-io", ["-d", "unmap", "-c", "discard 8192 16384", "-c", "discard 520000 40000", a]);
  out.push(describeBase("v3 4K with free clusters", a));
  const b = join(dir, "b.qcow2");
  qemuImg("convert", "-O", "qcow2", "-o", "cluster_size=512,compat=0.10", raw, b);
  run("qemu-io", ["-d", "unmap", "-c", "discard 1024 2048", b]);
  out.push(describeBase("v2 512B", b));
  const c = join(dir, "c.qcow2");
  qemuImg("convert", "-c", "-O", "qcow2", "-o", "cluster_size=65536", raw, c);
  out.push(describeBase("v3 64K compressed", c));
  const base = join(dir, "base.raw");
  writeFileSync(base, src.subarray(0, 700_000));
  const d = join(dir, "d.qcow2");
  qemuImg("create", "-f", "qcow2", "-o", "cluster_size=16384", "-b", "base.raw", "-F", "raw", d, "1M");
  run("qemu-io", ["-c", "write -P 3 100000 200000", "-c", "write -z 400000 50000", d]);
  out.push(describeBase("v3 16K with raw backing", d));
  for (const x of out) if (x.bytes[0] !== 0x51) throw new Error(`${x.name}: not a qcow2 image`);
  return out;
}

const FIELDS: [number, number][] = [
  [4, 4],
  [8, 8],
  [16, 4],
  [20, 4],
  [24, 8],
  [32, 4],
  [36, 4],
  [40, 8],
  [48, 8],
  [56, 4],
  [60, 4],
  [64, 8],
  [72, 8],
  [80, 8],
  [88, 8],
  [96, 4],
  [100, 4],
];

function interesting(rng: Rng, base: Base): bigint {
  const cs = base.clusterSize;
  const len = base.bytes.byteLength;
  const choices: bigint[] = [
    0n,
    1n,
    8n,
    511n,
    512n,
    BigInt(cs),
    BigInt(cs - 1),
    BigInt(len),
    BigInt(len - 8),
    BigInt(len + cs),
    1n << 31n,
    1n << 32n,
    (1n << 32n) - 1n,
    1n << 53n,
    1n << 56n,
    1n << 62n,
    1n << 63n,
    (1n << 64n) - 1n,
    BigInt(base.l1Offset),
    BigInt(base.reftableOffset),
    BigInt(rng.int(len)),
    BigInt(rng.int(len / cs) * cs),
    BigInt(rng.next()) * BigInt(rng.next()),
  ];
  return rng.pick(choices);
}

function setU64(m: Uint8Array, at: number, v: bigint): void {
  if (at + 8 <= m.byteLength) new DataView(m.buffer, m.byteOffset).setBigUint64(at, BigInt.asUintN(64, v));
}

/** An L2/L1 entry: flags over an interesting offset. */
function entry(rng: Rng, base: Base): bigint {
  const off = interesting(rng, base) & ((1n << 56n) - 1n);
  const flags = [0n, 1n << 63n, 1n << 62n, (1n << 63n) | 1n, 1n, 1n << 57n, 2n, rng.int(2) ? 1n << 63n : 0n];
  return off | rng.pick(flags);
}

const KINDS = [
  "header-bits",
  "header-field",
  "l1",
  "reftable",
  "l2",
  "refblock",
  "truncate",
  "extensions",
  "multi",
] as const;

export function mutate(rng: Rng, base: Base): { bytes: Uint8Array; kind: string } {
  let m = base.bytes.slice();
  const kind = rng.pick(KINDS);
  const one = (k: string) => {
    switch (k) {
      case "header-bits":
        for (let i = 0, n = 1 + rng.int(3); i < n; i++) {
          const bit = rng.int(112 * 8);
          m[bit >> 3] = m[bit >> 3]! ^ (1 << (bit & 7));
        }
        break;
      case "header-field": {
        const [at, size] = rng.pick(FIELDS);
        const v = interesting(rng, base);
        if (size === 8) setU64(m, at, v);
        else new DataView(m.buffer).setUint32(at, Number(v & 0xffffffffn));
        break;
      }
      case "l1":
        if (base.l1Size) setU64(m, base.l1Offset + rng.int(base.l1Size) * 8, entry(rng, base));
        break;
      case "reftable":
        setU64(
          m,
          base.reftableOffset + rng.int(Math.max(1, base.refblockOffsets.length + 2)) * 8,
          interesting(rng, base),
        );
        break;
      case "l2": {
        if (!base.l2Offsets.length) break;
        const t = rng.pick(base.l2Offsets);
        for (let i = 0, n = 1 + rng.int(4); i < n; i++)
          setU64(m, t + rng.int(base.clusterSize / 8) * 8, entry(rng, base));
        break;
      }
      case "refblock": {
        const b = rng.pick(base.refblockOffsets);
        for (let i = 0, n = 1 + rng.int(4); i < n; i++) {
          const at = b + rng.int(base.clusterSize / 2) * 2;
          m[at] = rng.int(3) === 0 ? 0 : rng.int(256);
          m[at + 1] = rng.int(256);
        }
        break;
      }
      case "truncate":
        m = m.slice(0, rng.int(m.byteLength));
        break;
      case "extensions":
        for (let i = 0, n = 1 + rng.int(8); i < n; i++)
          m[72 + rng.int(Math.min(1024, base.clusterSize) - 72)] = rng.int(256);
        break;
    }
  };
  if (kind === "multi") for (let i = 0; i < 3; i++) one(rng.pick(KINDS.slice(0, 6)));
  else one(kind);
  return { bytes: m, kind };
}

// ------------------------------------------------------------ read tracking

/** A system call read that reached past the end of its file. */
export interface OutsideRead {
  syscall: string;
  position: number;
  length: number;
  fileSize: number;
}

/**
 * Watches every positional `readSync` / `readvSync` (what this package's reads
 * are made of) while `f` runs, and reports those that reach past `limit` of
 * the file they read: by default its end; `limitOf` may allow more. (A qcow2
 * image's last cluster may end past the end of the file, as compressed images
 * and truncated ones do: its missing tail reads as zeros, as in QEMU.) Node's
 * builtin ESM exports are live, so the package's named imports see the
 * wrappers after syncBuiltinESMExports().
 */
export async function watchReads<T>(
  f: (outside: OutsideRead[]) => Promise<T>,
  limitOf: (file: { size: number; ino: number }) => number = (file) => file.size,
): Promise<T> {
  const outside: OutsideRead[] = [];
  const readvSync = fs.readvSync;
  const readSync = fs.readSync;
  const check = (syscall: string, fd: number, position: unknown, length: number) => {
    if (typeof position !== "number" || length === 0) return;
    const st = fstatSync(fd);
    if (position + length > limitOf(st)) outside.push({ syscall, position, length, fileSize: st.size });
  };
  const wrappedReadv = (fd: number, buffers: readonly NodeJS.ArrayBufferView[], position?: number | null) => {
    let length = 0;
    for (const b of buffers) length += b.byteLength;
    check("readv", fd, position, length);
    return readvSync(fd, buffers, position ?? undefined);
  };
  const wrappedRead = (...args: unknown[]) => {
    const [fd, , offsetOrOptions, length, position] = args as [number, unknown, unknown, unknown, unknown];
    if (typeof offsetOrOptions === "number" && typeof length === "number")
      check("read", fd, position, length);
    return (readSync as (...a: unknown[]) => number)(...args);
  };
  fs.readvSync = wrappedReadv as typeof fs.readvSync;
  fs.readSync = wrappedRead as typeof fs.readSync;
  syncBuiltinESMExports();
  try {
    return await f(outside);
  } finally {
    fs.readvSync = readvSync;
    fs.readSync = readSync;
    syncBuiltinESMExports();
  }
}

// ------------------------------------------------------------ cases

function exerciseReads(d: DiskImage, rng: Rng): void {
  const size = d.size;
  const head = new Uint8Array(Math.min(size, 1 << 20));
  d.read(0, head);
  for (let i = 0; i < 6 && size > 0; i++) {
    const len = Math.min(size, 1 + rng.int(70_000));
    d.read(rng.int(size - len + 1), new Uint8Array(len));
  }
}

function exerciseWrites(d: DiskImage, rng: Rng): void {
  const span = Math.min(d.size, 1 << 20);
  for (let i = 0; i < 8 && span > 0; i++) {
    const len = Math.min(span, 1 + rng.int(20_000));
    const off = rng.int(span - len + 1);
    const op = rng.int(4);
    if (op === 0) d.discard(off, len);
    else if (op === 1) d.writeZeroes(off, len, { mayUnmap: rng.int(2) === 0 });
    else d.write(off, new Uint8Array(len).fill(0xa5));
    if (rng.int(3) === 0) d.flush();
  }
}

/** A case's outcome: `ok` or the DiskImageError code; anything else is rethrown (a crash). */
function outcomeOf(e: unknown): string {
  if (e instanceof DiskImageError) return e.code;
  throw e;
}

export interface FuzzOptions {
  dir: string;
  bases: readonly Base[];
  seed: number;
  /** Cases opened read-only (imageInfo, then reads). */
  readCases: number;
  /** Cases opened writable (writes, write-zeroes, discards, flushes). */
  writeCases: number;
  /** Run only this case number (replay). */
  only?: number | undefined;
}

export interface FuzzReport {
  seed: number;
  images: number;
  /** `read|write kind:outcome` → count. */
  outcomes: Record<string, number>;
  /** Outcome (DiskImageError code or ok) → count, over every case. */
  byCode: Record<string, number>;
  /** Cases that ended in anything but a DiskImageError or success. */
  crashes: string[];
  /** Reads past the end of a file, with their case. */
  outsideReads: string[];
  /** Writable cases that wrote into a cluster free in the original. */
  freeClusterWrites: string[];
  slowestMs: number;
  peakRssMiB: number;
  ms: number;
}

/** Case n's own generator: replaying one case needs no other. */
function caseRng(seed: number, n: number): Rng {
  return new Rng((seed ^ Math.imul(n + 1, 0x9e3779b1)) >>> 0);
}

/**
 * Runs the cases. Async only to yield to the event loop now and then: a long
 * run would otherwise starve vitest's worker RPC.
 */
export async function runQcow2Fuzz(o: FuzzOptions): Promise<FuzzReport> {
  const report: FuzzReport = {
    seed: o.seed,
    images: 0,
    outcomes: {},
    byCode: {},
    crashes: [],
    outsideReads: [],
    freeClusterWrites: [],
    slowestMs: 0,
    peakRssMiB: 0,
    ms: 0,
  };
  const t0 = performance.now();
  const writable = o.bases.filter((b) => !b.name.includes("backing"));
  const total = o.readCases + o.writeCases;
  const path = join(o.dir, "mut.qcow2");
  // The mutated image may end anywhere: it owns whole clusters of the size its header claims.
  let mutated = { ino: -1, clusterSize: 512 };
  const limitOf = (file: { size: number; ino: number }): number => {
    if (file.ino !== mutated.ino) return file.size;
    const cs = mutated.clusterSize;
    return Math.ceil(file.size / cs) * cs;
  };
  await watchReads(async (outside) => {
    for (let n = 0; n < total; n++) {
      if (n % 256 === 255) await new Promise((resolve) => setImmediate(resolve));
      if (o.only !== undefined && n !== o.only) continue;
      const write = n >= o.readCases;
      const rng = caseRng(o.seed, n);
      const pool = write ? writable : o.bases;
      const base = pool[n % pool.length]!;
      const { bytes, kind } = mutate(rng, base);
      writeFileSync(path, bytes);
      const bits = bytes.byteLength >= 24 ? u32(bytes, 20) : 9;
      mutated = { ino: statSync(path).ino, clusterSize: 2 ** (bits >= 9 && bits <= 21 ? bits : 9) };
      const label = `case ${n} (seed ${o.seed}, ${write ? "write" : "read"}, ${base.name}, ${kind})`;
      outside.length = 0;
      const c0 = performance.now();
      let result = "ok";
      try {
        result = write ? writeCase(path, rng) : readCase(path, rng);
      } catch (e) {
        report.crashes.push(`${label}: ${(e as Error)?.stack ?? String(e)}`);
        result = "CRASH";
      }
      report.slowestMs = Math.max(report.slowestMs, performance.now() - c0);
      for (const r of outside)
        report.outsideReads.push(
          `${label}: ${r.syscall} of ${r.length} bytes at ${r.position} in a ${r.fileSize}-byte file`,
        );
      if (write) {
        const after = new Uint8Array(readFileSync(path));
        const cs = base.clusterSize;
        for (const c of base.freeClusters) {
          const a = c * cs;
          const b = Math.min(a + cs, bytes.byteLength);
          if (a >= b) continue;
          if (!Buffer.from(bytes.subarray(a, b)).equals(Buffer.from(after.subarray(a, b))))
            report.freeClusterWrites.push(`${label}: free cluster ${c} (offset ${a}) was written`);
        }
      }
      report.images++;
      const key = `${write ? "write" : "read"} ${kind}:${result}`;
      report.outcomes[key] = (report.outcomes[key] ?? 0) + 1;
      report.byCode[result] = (report.byCode[result] ?? 0) + 1;
      if (n % 64 === 0) report.peakRssMiB = Math.max(report.peakRssMiB, process.memoryUsage.rss() / 2 ** 20);
    }
  }, limitOf);
  report.peakRssMiB = Math.round(Math.max(report.peakRssMiB, process.memoryUsage.rss() / 2 ** 20));
  report.slowestMs = Math.round(report.slowestMs * 10) / 10;
  report.ms = Math.round(performance.now() - t0);
  return report;
}

function readCase(path: string, rng: Rng): string {
  try {
    imageInfo(path, { format: "qcow2", backingChain: false });
  } catch (e) {
    outcomeOf(e);
  }
  try {
    const d = openDiskImage(path, { readOnly: true, format: "qcow2" });
    try {
      exerciseReads(d, rng);
    } finally {
      d.close();
    }
    return "ok";
  } catch (e) {
    return outcomeOf(e);
  }
}

function writeCase(path: string, rng: Rng): string {
  let d: DiskImage | undefined;
  try {
    d = openDiskImage(path, { format: "qcow2" });
    exerciseWrites(d, rng);
    d.close();
    return "ok";
  } catch (e) {
    const result = outcomeOf(e);
    if (d && !d.closed) {
      try {
        d.close();
      } catch (e2) {
        outcomeOf(e2);
      }
    }
    return result;
  }
}

/** The fuzz run's size and seed from the environment (see the package README). */
export function fuzzSettings(): { scale: number; seed: number; only: number | undefined } {
  const scale = Number(process.env.TSKVM_FUZZ_SCALE ?? 1);
  if (!Number.isFinite(scale) || scale <= 0)
    throw new Error(`TSKVM_FUZZ_SCALE=${process.env.TSKVM_FUZZ_SCALE}`);
  const given = process.env.TSKVM_FUZZ_SEED;
  // CI (scale 1) is reproducible run to run; a full run explores a fresh seed unless told.
  const seed =
    given !== undefined
      ? Number.parseInt(given, 10) >>> 0
      : scale === 1
        ? 0xc0ffee
        : (Math.random() * 2 ** 32) >>> 0;
  const only = process.env.TSKVM_FUZZ_CASE;
  return { scale, seed, only: only === undefined ? undefined : Number.parseInt(only, 10) };
}
