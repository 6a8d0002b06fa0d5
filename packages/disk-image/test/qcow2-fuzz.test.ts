import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { type DiskImage, DiskImageError, imageInfo, openDiskImage } from "../src/index.js";
import { qemuImg, Rng, run, tempDir } from "./helpers.js";

/*
 * Corrupt images: mutated headers and tables (fixed seeds) must give a clear
 * DiskImageError — never another exception, a crash or a hang — and writes to
 * a mutated image must never touch clusters that were free in the original.
 */

const dir = tempDir("tskvm-fuzz-");

interface Base {
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

function makeBases(): Base[] {
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
  for (const x of out) expect(x.bytes[0]).toBe(0x51);
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

function mutate(rng: Rng, base: Base): { bytes: Uint8Array; kind: string } {
  let m = base.bytes.slice();
  const kinds = [
    "header-bits",
    "header-field",
    "l1",
    "reftable",
    "l2",
    "refblock",
    "truncate",
    "extensions",
    "multi",
  ];
  const kind = rng.pick(kinds);
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
  if (kind === "multi") for (let i = 0; i < 3; i++) one(rng.pick(kinds.slice(0, 6)));
  else one(kind);
  return { bytes: m, kind };
}

function exercise(d: DiskImage, rng: Rng): void {
  const size = d.size;
  const head = new Uint8Array(Math.min(size, 1 << 20));
  d.read(0, head);
  for (let i = 0; i < 6 && size > 0; i++) {
    const len = Math.min(size, 1 + rng.int(70_000));
    d.read(rng.int(size - len + 1), new Uint8Array(len));
  }
}

function outcome(e: unknown): string {
  if (e instanceof DiskImageError) {
    if (process.env.FUZZ_DEBUG && e.code === "EIO") console.log(e.message, e.cause);
    return e.code;
  }
  throw e;
}

describe("qcow2: corrupt images", () => {
  const bases = makeBases();

  it("1200 mutated images opened read-only: a DiskImageError or consistent reads, quickly", () => {
    const rng = new Rng(Number(process.env.TSKVM_FUZZ_SEED ?? 0xc0ffee));
    const path = join(dir, "mut.qcow2");
    const tally: Record<string, number> = {};
    let slowest = 0;
    for (let n = 0; n < 1200; n++) {
      const base = bases[n % bases.length]!;
      const { bytes, kind } = mutate(rng, base);
      writeFileSync(path, bytes);
      const t0 = performance.now();
      let result = "ok";
      try {
        imageInfo(path, { format: "qcow2", backingChain: false });
      } catch (e) {
        outcome(e);
      }
      try {
        const d = openDiskImage(path, { readOnly: true, format: "qcow2" });
        try {
          exercise(d, rng);
        } finally {
          d.close();
        }
      } catch (e) {
        try {
          result = outcome(e);
        } catch (bad) {
          throw new Error(`case ${n} (${base.name}, ${kind}): ${String(bad)}\n${(bad as Error).stack}`);
        }
      }
      slowest = Math.max(slowest, performance.now() - t0);
      tally[`${kind}:${result}`] = (tally[`${kind}:${result}`] ?? 0) + 1;
    }
    console.log("read-only fuzz outcomes:", JSON.stringify(tally));
    console.log(`slowest case: ${slowest.toFixed(1)} ms`);
    expect(slowest).toBeLessThan(5000);
  });

  it("300 mutated images written to: errors are DiskImageErrors and free clusters stay untouched", () => {
    const rng = new Rng(Number(process.env.TSKVM_FUZZ_SEED ?? 0xbadc0de) + 1);
    const path = join(dir, "wmut.qcow2");
    const tally: Record<string, number> = {};
    const writable = bases.filter((b) => !b.name.includes("backing"));
    for (let n = 0; n < 300; n++) {
      const base = writable[n % writable.length]!;
      const { bytes, kind } = mutate(rng, base);
      writeFileSync(path, bytes);
      let result = "ok";
      let d: DiskImage | undefined;
      try {
        d = openDiskImage(path, { format: "qcow2" });
        const size = d.size;
        const span = Math.min(size, 1 << 20);
        for (let i = 0; i < 8 && span > 0; i++) {
          const len = Math.min(span, 1 + rng.int(20_000));
          const off = rng.int(span - len + 1);
          const op = rng.int(4);
          if (op === 0) d.discard(off, len);
          else if (op === 1) d.writeZeroes(off, len, { mayUnmap: rng.int(2) === 0 });
          else d.write(off, new Uint8Array(len).fill(0xa5));
          if (rng.int(3) === 0) d.flush();
        }
        d.close();
      } catch (e) {
        try {
          result = outcome(e);
        } catch (bad) {
          throw new Error(`write case ${n} (${base.name}, ${kind}): ${String(bad)}\n${(bad as Error).stack}`);
        }
        if (d && !d.closed) {
          try {
            d.close();
          } catch (e2) {
            outcome(e2);
          }
        }
      }
      tally[`${kind}:${result}`] = (tally[`${kind}:${result}`] ?? 0) + 1;
      const after = new Uint8Array(readFileSync(path));
      const cs = base.clusterSize;
      for (const c of base.freeClusters) {
        const a = c * cs;
        const b = Math.min(a + cs, bytes.byteLength);
        if (a >= b) continue;
        const before = bytes.subarray(a, b);
        const now = after.subarray(a, b);
        if (!Buffer.from(before).equals(Buffer.from(now)))
          throw new Error(
            `write case ${n} (${base.name}, ${kind}): free cluster ${c} (offset ${a}) was written`,
          );
      }
    }
    console.log("write fuzz outcomes:", JSON.stringify(tally));
  });
});
