import { truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { createQcow2, DiskImageError, type DiskIoBatch, openDiskImage, openRaw } from "../src/index.js";
import { native } from "../src/native.js";
import { Rng, readWhole, tempDir } from "./helpers.js";

const dir = tempDir();
let n = 0;
function rawFile(size: number, fill?: (i: number) => number): string {
  const p = join(dir, `batch-${n++}.img`);
  const b = new Uint8Array(size);
  if (fill) for (let i = 0; i < size; i++) b[i] = fill(i);
  writeFileSync(p, b);
  return p;
}

interface Op {
  offset: number;
  buffers: Uint8Array[];
}

function batchOf(ops: readonly Op[]): DiskIoBatch {
  const offsets = new Float64Array(ops.length);
  const iovCounts = new Int32Array(ops.length);
  const buffers: Uint8Array[] = [];
  ops.forEach((op, i) => {
    offsets[i] = op.offset;
    iovCounts[i] = op.buffers.length;
    buffers.push(...op.buffers);
  });
  return { count: ops.length, offsets, iovCounts, buffers, errors: [] };
}

/** Byte equality without vitest's per-element diff (fast for big buffers). */
function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(
    Buffer.from(b.buffer, b.byteOffset, b.byteLength),
  );
}

function concat(buffers: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(buffers.reduce((a, b) => a + b.byteLength, 0));
  let at = 0;
  for (const b of buffers) {
    out.set(b, at);
    at += b.byteLength;
  }
  return out;
}

/** `count` ops with 1..maxIov buffers (some empty) inside a disk of `size` bytes. */
function randomOps(rng: Rng, size: number, count: number, maxIov: number): Op[] {
  return Array.from({ length: count }, () => {
    const iov = 1 + rng.int(maxIov);
    const lens = Array.from({ length: iov }, () => (rng.int(8) === 0 ? 0 : rng.int(3000)));
    const total = lens.reduce((a, b) => a + b, 0);
    const offset = rng.int(size - total + 1);
    return { offset, buffers: lens.map((l) => new Uint8Array(l)) };
  });
}

afterEach(() => {
  vi.restoreAllMocks();
});

describe("raw: batched reads and writes", () => {
  it("readvBatch reads exactly what readv reads, op by op", () => {
    const size = 1 << 20;
    const p = rawFile(size, (i) => (i * 13 + (i >> 9)) & 0xff);
    const img = openRaw(p);
    expect(img.readvBatch).toBeTypeOf("function");
    const rng = new Rng(7);
    for (let round = 0; round < 50; round++) {
      const ops = randomOps(rng, size, 1 + rng.int(40), 6);
      for (const op of ops) for (const b of op.buffers) b.fill(0xee);
      const b = batchOf(ops);
      expect(img.readvBatch!(b)).toBe(0);
      for (const [i, op] of ops.entries()) {
        expect(b.errors[i]).toBeUndefined();
        const want = op.buffers.map((x) => new Uint8Array(x.byteLength));
        img.readv(op.offset, want);
        expect(same(concat(op.buffers), concat(want))).toBe(true);
      }
    }
    img.close();
  });

  it("writevBatch writes what writev writes, in order (later ops win where they overlap)", () => {
    const size = 256 << 10;
    const a = rawFile(size, (i) => i & 0xff);
    const b = rawFile(size, (i) => i & 0xff);
    const batched = openRaw(a);
    const single = openRaw(b);
    const rng = new Rng(11);
    for (let round = 0; round < 40; round++) {
      const ops = randomOps(rng, size, 1 + rng.int(30), 5);
      for (const op of ops)
        for (const x of op.buffers) for (let k = 0; k < x.length; k++) x[k] = rng.int(256);
      expect(batched.writevBatch!(batchOf(ops))).toBe(0);
      for (const op of ops) single.writev(op.offset, op.buffers);
    }
    batched.close();
    single.close();
    expect(same(readWhole(a, size), readWhole(b, size))).toBe(true);
  });

  it("an op with more iovecs than IOV_MAX (and empty ones) is done whole", () => {
    const size = 4 << 20;
    const p = rawFile(size, (i) => (i * 31) & 0xff);
    const img = openRaw(p);
    const model = readWhole(p, size);
    const lens = Array.from({ length: 2500 }, (_, i) => (i % 7 === 0 ? 0 : 1 + ((i * 37) % 700)));
    const small: Op = { offset: 5, buffers: [new Uint8Array(10)] };
    const many: Op = { offset: 12345, buffers: lens.map((l) => new Uint8Array(l)) };
    const b = batchOf([small, many, { offset: 0, buffers: [new Uint8Array(3)] }]);
    expect(img.readvBatch!(b)).toBe(0);
    const total = lens.reduce((x, y) => x + y, 0);
    expect(same(concat(many.buffers), model.subarray(12345, 12345 + total))).toBe(true);
    expect(small.buffers[0]).toEqual(model.subarray(5, 15));
    // Write it back shifted, with the same many-iovec op.
    const w = batchOf([{ offset: 1 << 20, buffers: many.buffers }]);
    expect(img.writevBatch!(w)).toBe(0);
    const check = new Uint8Array(total);
    img.read(1 << 20, check);
    expect(same(check, model.subarray(12345, 12345 + total))).toBe(true);
    img.close();
  });

  it("reads past the end of a file that shrank under it are zeros, in the middle of a batch", () => {
    const size = 64 << 10;
    const p = rawFile(size, () => 0x77);
    const img = openRaw(p);
    truncateSync(p, 40 << 10);
    const ops: Op[] = [
      { offset: 0, buffers: [new Uint8Array(4096).fill(1)] },
      { offset: (40 << 10) - 1000, buffers: [new Uint8Array(600).fill(1), new Uint8Array(3496).fill(1)] },
      { offset: 48 << 10, buffers: [new Uint8Array(4096).fill(1)] },
      { offset: 8192, buffers: [new Uint8Array(512).fill(1)] },
    ];
    const b = batchOf(ops);
    expect(img.readvBatch!(b)).toBe(0);
    expect(ops[0]!.buffers[0]!.every((x) => x === 0x77)).toBe(true);
    const straddle = concat(ops[1]!.buffers);
    expect(straddle.subarray(0, 1000).every((x) => x === 0x77)).toBe(true);
    expect(straddle.subarray(1000).every((x) => x === 0)).toBe(true);
    expect(ops[2]!.buffers[0]!.every((x) => x === 0)).toBe(true);
    expect(ops[3]!.buffers[0]!.every((x) => x === 0x77)).toBe(true);
    img.close();
  });

  it("a bad range fails only its own op, like readv / writev would", () => {
    const size = 64 << 10;
    const p = rawFile(size, (i) => i & 0xff);
    const img = openRaw(p);
    const ops: Op[] = [
      { offset: 0, buffers: [new Uint8Array(16)] },
      { offset: size - 8, buffers: [new Uint8Array(16)] },
      { offset: 100, buffers: [new Uint8Array(16)] },
    ];
    const b = batchOf(ops);
    expect(img.readvBatch!(b)).toBe(1);
    expect(b.errors[0]).toBeUndefined();
    expect(b.errors[1]).toBeInstanceOf(DiskImageError);
    expect(b.errors[1]!.code).toBe("RANGE");
    expect(b.errors[2]).toBeUndefined();
    expect(ops[2]!.buffers[0]![0]).toBe(100);
    const w = batchOf([
      { offset: 0, buffers: [new Uint8Array(4).fill(9)] },
      { offset: -1, buffers: [new Uint8Array(4).fill(9)] },
      { offset: 8, buffers: [new Uint8Array(4).fill(9)] },
    ]);
    expect(img.writevBatch!(w)).toBe(1);
    expect(w.errors.map((e) => e?.code)).toEqual([undefined, "RANGE", undefined]);
    img.close();
    const f = readWhole(p, 16);
    expect([...f]).toEqual([9, 9, 9, 9, 4, 5, 6, 7, 9, 9, 9, 9, 12, 13, 14, 15]);
  });

  it("a system call error fails only its own op; the ops after it still run", () => {
    const p = rawFile(8192, () => 1);
    const img = openRaw(p);
    // pwritev far beyond what the filesystem allows: EFBIG (or EINVAL), from the kernel.
    const offsets = new Float64Array([0, 2 ** 53 - 4096, 4096]);
    const iovCounts = new Int32Array([1, 1, 1]);
    const results = new Float64Array(3);
    const bufs = [new Uint8Array(10).fill(2), new Uint8Array(10).fill(2), new Uint8Array(10).fill(3)];
    native().rwBatch(img.fileDescriptor, true, 3, offsets, iovCounts, bufs, results);
    expect(results[0]).toBe(10);
    expect(results[1]).toBeLessThan(0);
    expect(results[2]).toBe(10);
    const f = readWhole(p, 8192);
    expect(f[0]).toBe(2);
    expect(f[4096]).toBe(3);

    // Through the image: the errno becomes that op's DiskImageError.
    const binding = native();
    const real = binding.rwBatch.bind(binding);
    vi.spyOn(binding, "rwBatch").mockImplementation((fd, write, count, o, c, b, r) => {
      real(fd, write, count, o, c, b, r);
      r[1] = -5; // EIO
    });
    const ops: Op[] = [0, 512, 1024].map((offset) => ({ offset, buffers: [new Uint8Array(8)] }));
    const batch = batchOf(ops);
    expect(img.readvBatch!(batch)).toBe(1);
    expect(batch.errors[0]).toBeUndefined();
    expect(batch.errors[1]?.code).toBe("EIO");
    expect(batch.errors[1]?.errno).toBe(5);
    expect(batch.errors[2]).toBeUndefined();
    expect(ops[2]!.buffers[0]![0]).toBe(1);
    img.close();
  });

  it("bad arguments to the native call throw before any I/O", () => {
    const p = rawFile(4096, () => 1);
    const img = openRaw(p);
    const r = new Float64Array(2);
    const call = (bufs: unknown[], counts = new Int32Array([1, 1])) =>
      native().rwBatch(
        img.fileDescriptor,
        true,
        2,
        new Float64Array([0, 16]),
        counts,
        bufs as Uint8Array[],
        r,
      );
    expect(() => call([new Uint8Array(4).fill(9), "x"])).toThrow(TypeError);
    expect(() => call([new Uint8Array(4).fill(9)])).toThrow(TypeError);
    expect(() => call([new Uint8Array(4), new Uint8Array(4)], new Int32Array([1, -1]))).toThrow(TypeError);
    expect(readWhole(p, 4)[0]).toBe(1);
    img.close();
  });

  it("read-only and closed images refuse the whole batch; qcow2 has no batch methods", () => {
    const p = rawFile(4096);
    const ro = openRaw(p, { readOnly: true });
    const b = batchOf([{ offset: 0, buffers: [new Uint8Array(4)] }]);
    expect(() => ro.writevBatch!(b)).toThrow(expect.objectContaining({ code: "READ_ONLY" }));
    expect(ro.readvBatch!(b)).toBe(0);
    ro.close();
    expect(() => ro.readvBatch!(b)).toThrow(expect.objectContaining({ code: "CLOSED" }));
    const q = join(dir, "batch.qcow2");
    createQcow2(q, 1 << 20);
    const img = openDiskImage(q);
    expect(img.readvBatch).toBeUndefined();
    expect(img.writevBatch).toBeUndefined();
    img.close();
  });
});
