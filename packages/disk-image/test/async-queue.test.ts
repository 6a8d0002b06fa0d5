import {
  closeSync,
  existsSync,
  constants as fsc,
  openSync,
  readFileSync,
  readSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { platform, release } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { type AsyncQueueHost, openAsyncQueue } from "../src/async-queue.js";
import {
  type AsyncEngineKind,
  type DiskAsyncQueue,
  DiskImageError,
  ioUringSupport,
  openRaw,
  type RawDiskImage,
} from "../src/index.js";
import { native } from "../src/native.js";
import { Rng, readWhole, seedFor, tempDir } from "./helpers.js";

const dir = tempDir("tskvm-async-");
let n = 0;
function rawFile(size: number, fill?: (i: number) => number): string {
  const p = join(dir, `async-${n++}.img`);
  const b = new Uint8Array(size);
  if (fill) for (let i = 0; i < size; i++) b[i] = fill(i);
  writeFileSync(p, b);
  return p;
}

function expectCode(f: () => unknown, code: string): DiskImageError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(DiskImageError);
    expect((e as DiskImageError).code).toBe(code);
    return e as DiskImageError;
  }
  throw new Error(`expected DiskImageError ${code}, nothing thrown`);
}

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

interface Completion {
  tag: number;
  result: number;
}

/** Everything ready now, in completion order. */
function reapNow(q: DiskAsyncQueue, max = 64): Completion[] {
  const tags = new Uint32Array(max);
  const results = new Int32Array(max);
  const out: Completion[] = [];
  for (;;) {
    const k = q.reap(tags, results);
    for (let i = 0; i < k; i++) out.push({ tag: tags[i]!, result: results[i]! });
    if (k < max) return out;
  }
}

/** drain(), then everything. */
function finish(q: DiskAsyncQueue): Completion[] {
  q.submit();
  q.drain();
  return reapNow(q);
}

/** Whether the eventfd is readable (reads it: clears it). */
function takeReadiness(q: DiskAsyncQueue): boolean {
  return native().eventfdRead(q.completionFd) > 0;
}

// --- which engines run here ---

const support = ioUringSupport();
const [major = 0, minor = 0] = release()
  .split(".")
  .map((x) => Number.parseInt(x, 10));
const disabledPath = "/proc/sys/kernel/io_uring_disabled";
const disabled = existsSync(disabledPath) ? readFileSync(disabledPath, "utf8").trim() : undefined;
const seccomp = existsSync("/proc/self/status")
  ? /^Seccomp:\s*(\d+)/m.exec(readFileSync("/proc/self/status", "utf8"))?.[1]
  : undefined;
console.log(
  `[async-queue] io_uring: ${support.available ? "available" : `NOT available (${support.code}: ${support.message})`}; ` +
    `kernel ${release()}, kernel.io_uring_disabled=${disabled ?? "(absent)"}, Seccomp=${seccomp ?? "?"}, ` +
    `TSKVM_NO_IO_URING=${process.env.TSKVM_NO_IO_URING ?? "(unset)"}`,
);
const engines: AsyncEngineKind[] = support.available ? ["sync", "io_uring"] : ["sync"];

describe("io_uring availability", () => {
  it("io_uring works on Linux >= 5.6 unless kernel.io_uring_disabled is set (no silent skip of its tests)", () => {
    const linuxNew = platform() === "linux" && (major > 5 || (major === 5 && minor >= 6));
    const allowed = (disabled === undefined || disabled === "0") && process.env.TSKVM_NO_IO_URING !== "1";
    if (linuxNew && allowed)
      expect(support, "set TSKVM_NO_IO_URING=1 where io_uring is blocked on purpose").toEqual({
        available: true,
      });
    // "auto" picks what is there, and says why when it falls back.
    const img = openRaw(rawFile(4096));
    const q = img.openAsyncQueue({ depth: 4 });
    expect(q.engine).toBe(support.available ? "io_uring" : "sync");
    if (!support.available) expect(q.fallbackReason).toContain(support.code);
    else expect(q.fallbackReason).toBeUndefined();
    img.close();
    if (!support.available) {
      const again = openRaw(rawFile(4096));
      const e = expectCode(() => again.openAsyncQueue({ depth: 4, engine: "io_uring" }), "UNSUPPORTED");
      expect(e.hint).toBeTruthy();
      again.close();
    }
  });
});

describe.each(engines)("async queue (%s)", (engine) => {
  const open = (img: RawDiskImage, depth = 32): DiskAsyncQueue => {
    const q = img.openAsyncQueue({ depth, engine });
    expect(q.engine).toBe(engine);
    return q;
  };

  it("reads and writes scatter lists; the completion fd is readable exactly while completions wait", () => {
    const size = 1 << 20;
    const p = rawFile(size, (i) => (i * 7) & 0xff);
    const img = openRaw(p);
    const q = open(img);
    expect(q.completionFd).toBeGreaterThanOrEqual(0);
    const a = [new Uint8Array(100), new Uint8Array(0), new Uint8Array(4000)];
    expect(q.readv(1, 1000, a)).toBe(true);
    const w = [new Uint8Array(3).fill(0xaa), new Uint8Array(5000).fill(0xbb)];
    expect(q.writev(2, 200_000, w)).toBe(true);
    expect(q.inFlight).toBe(2);
    q.submit();
    q.drain();
    expect(q.inFlight).toBe(2); // completed, not reaped
    expect(takeReadiness(q)).toBe(true);
    const got = reapNow(q);
    expect(got.sort((x, y) => x.tag - y.tag)).toEqual([
      { tag: 1, result: 4100 },
      { tag: 2, result: 5003 },
    ]);
    expect(q.inFlight).toBe(0);
    expect(takeReadiness(q)).toBe(false);
    const model = new Uint8Array(size).map((_, i) => (i * 7) & 0xff);
    expect(same(concat(a), model.subarray(1000, 5100))).toBe(true);
    // reap with nothing there: 0, and the fd stays clear
    expect(q.reap(new Uint32Array(4), new Int32Array(4))).toBe(0);
    expect(takeReadiness(q)).toBe(false);
    // readiness returns with the next completion; a zero-length reap leaves it
    q.readv(3, 0, [new Uint8Array(10)]);
    q.submit();
    q.drain();
    expect(q.reap(new Uint32Array(0), new Int32Array(0))).toBe(0);
    expect(reapNow(q)).toEqual([{ tag: 3, result: 10 }]);
    q.close();
    img.close();
    const f = readWhole(p, size);
    expect(f.subarray(200_000, 200_003).every((x) => x === 0xaa)).toBe(true);
    expect(f.subarray(200_003, 205_003).every((x) => x === 0xbb)).toBe(true);
    expect(f[205_003]).toBe(model[205_003]);
  });

  it("1,000 random reads, writes and flushes at depth 32 match a model, whatever the completion order", () => {
    const size = 4 << 20;
    const seed = seedFor(`async-model-${engine}`);
    const rng = new Rng(seed);
    const model = rng.bytes(size);
    const p = join(dir, `model-${engine}-${n++}.img`);
    writeFileSync(p, model);
    const img = openRaw(p);
    const q = open(img, 32);
    interface Pending {
      kind: "r" | "w" | "f";
      offset: number;
      length: number;
      buffers: Uint8Array[];
      expected?: Uint8Array;
    }
    const pending = new Map<number, Pending>();
    let tag = 0;
    let done = 0;
    const overlaps = (o: number, l: number, write: boolean): boolean => {
      for (const x of pending.values())
        if ((write || x.kind === "w") && x.kind !== "f" && o < x.offset + x.length && x.offset < o + l)
          return true;
      return false;
    };
    const check = (c: Completion): void => {
      const x = pending.get(c.tag);
      expect(x, `tag ${c.tag} completed twice or never queued`).toBeDefined();
      pending.delete(c.tag);
      expect(c.result).toBe(x!.length);
      if (x!.kind === "r") expect(same(concat(x!.buffers), x!.expected!)).toBe(true);
      done++;
    };
    const total = 1000;
    while (tag < total) {
      const burst = 1 + rng.int(12);
      for (let k = 0; k < burst && tag < total; k++) {
        const r = rng.int(20);
        if (r === 0) {
          if (!q.flush(tag)) break;
          pending.set(tag++, { kind: "f", offset: 0, length: 0, buffers: [] });
          continue;
        }
        const write = r < 9;
        const iov = 1 + rng.int(rng.int(10) === 0 ? 1500 : 4);
        const lens = Array.from({ length: iov }, () => (rng.int(6) === 0 ? 0 : rng.int(iov > 4 ? 64 : 9000)));
        const length = lens.reduce((a, b) => a + b, 0);
        const offset = rng.int(size - length + 1);
        if (overlaps(offset, length, write)) continue;
        const buffers = lens.map((l) => (write ? rng.bytes(l) : new Uint8Array(l).fill(0xee)));
        const ok = write ? q.writev(tag, offset, buffers) : q.readv(tag, offset, buffers);
        if (!ok) {
          expect(q.inFlight).toBe(32);
          break;
        }
        if (write) model.set(concat(buffers), offset);
        pending.set(tag++, {
          kind: write ? "w" : "r",
          offset,
          length,
          buffers,
          expected: write ? undefined : model.slice(offset, offset + length),
        });
      }
      q.submit();
      if (rng.int(3) === 0 || q.inFlight === 32) q.drain();
      for (const c of reapNow(q, 1 + rng.int(8))) check(c);
    }
    for (const c of finish(q)) check(c);
    expect(pending.size).toBe(0);
    expect(done).toBe(total);
    q.close();
    img.close();
    expect(same(readWhole(p, size), model)).toBe(true);
  });

  it("a flush completes after every write queued before it (its completion comes after theirs)", () => {
    const p = rawFile(1 << 20);
    const img = openRaw(p);
    const q = open(img, 64);
    for (let round = 0; round < 20; round++) {
      let t = 0;
      for (let i = 0; i < 10; i++) q.writev(t++, i * 8192, [new Uint8Array(8192).fill(round)]);
      // one write in 2000 pieces: its later chunks are submitted after the flush's SQE
      const pieces = Array.from({ length: 2000 }, () => new Uint8Array(16).fill(round + 1));
      q.writev(t++, 200_000, pieces);
      const flushTag = t++;
      q.flush(flushTag);
      q.writev(t++, 500_000, [new Uint8Array(512).fill(round)]);
      const order = finish(q);
      expect(order.length).toBe(t);
      for (const c of order)
        expect(c.result).toBe(c.tag === flushTag ? 0 : c.tag === 10 ? 32_000 : c.tag === 12 ? 512 : 8192);
      const at = order.findIndex((c) => c.tag === flushTag);
      for (let w = 0; w <= 10; w++) expect(order.findIndex((c) => c.tag === w)).toBeLessThan(at);
    }
    q.close();
    img.close();
    const f = readWhole(p, 1 << 20);
    expect(f[200_000 + 31_999]).toBe(20);

    // O_DIRECT writes complete from the device, later than an fdatasync with nothing dirty would:
    // without the barrier the flush would overtake them.
    const pd = rawFile(16 << 20);
    let probe: number;
    try {
      probe = openSync(pd, fsc.O_RDONLY | fsc.O_DIRECT);
    } catch {
      console.log(`[async-queue] ${dir} refuses O_DIRECT: direct flush case skipped`);
      return;
    }
    const view = alignedView(probe, 1 << 20);
    closeSync(probe);
    if (!view) return;
    const direct = openRaw(pd, { direct: true });
    const qd = open(direct, 64);
    for (let round = 0; round < 10; round++) {
      for (let i = 0; i < 16; i++) qd.writev(i, i << 20, [view]);
      qd.flush(100);
      const order = finish(qd);
      expect(order.length).toBe(17);
      expect(order[16]).toEqual({ tag: 100, result: 0 });
    }
    expect(direct.directFallbacks).toBe(0);
    qd.close();
    direct.close();
    // Read-only: the flush syncs nothing (io_uring: a NOP, done at once) and still waits for the reads.
    const ro = openRaw(pd, { direct: true, readOnly: true });
    const qr = open(ro, 64);
    const probeRo = openSync(pd, fsc.O_RDONLY | fsc.O_DIRECT);
    const views = Array.from({ length: 16 }, () => alignedView(probeRo, 1 << 20));
    closeSync(probeRo);
    for (let round = 0; round < 10; round++) {
      for (const [i, v] of views.entries()) expect(qr.readv(i, i << 20, [v ?? view])).toBe(true);
      qr.flush(100);
      const order = finish(qr);
      expect(order.length).toBe(17);
      expect(order[16]).toEqual({ tag: 100, result: 0 });
    }
    qr.close();
    ro.close();
  });

  it("completes requests out of order where they finish out of order (io_uring), in order (sync)", () => {
    const size = 8 << 20;
    const p = rawFile(size, (i) => i & 0xff);
    const img = openRaw(p);
    const q = open(img);
    // Tag 1: 3000 iovecs, so three READVs one after another; tag 2: one small read queued after it.
    const big = Array.from({ length: 3000 }, () => new Uint8Array(512));
    q.readv(1, 0, big);
    const small = new Uint8Array(512);
    q.readv(2, 4096, [small]);
    q.submit();
    const order: number[] = [];
    for (let spins = 0; order.length < 2 && spins < 1_000_000; spins++)
      for (const c of reapNow(q)) {
        order.push(c.tag);
        expect(c.result).toBe(c.tag === 1 ? 3000 * 512 : 512);
      }
    expect(order).toEqual(engine === "io_uring" ? [2, 1] : [1, 2]);
    const all = concat(big);
    expect(all.every((x, i) => x === (i & 0xff))).toBe(true);
    expect(small[0]).toBe(0);
    q.close();
    img.close();
  });

  it("depth: readv, writev and flush return false at depth; reaping makes room", () => {
    const img = openRaw(rawFile(65536));
    const q = open(img, 4);
    for (let i = 0; i < 4; i++) expect(q.readv(i, i * 512, [new Uint8Array(512)])).toBe(true);
    expect(q.readv(9, 0, [new Uint8Array(512)])).toBe(false);
    expect(q.writev(9, 0, [new Uint8Array(512)])).toBe(false);
    expect(q.flush(9)).toBe(false);
    expect(q.inFlight).toBe(4);
    q.submit();
    q.drain();
    expect(q.inFlight).toBe(4); // completed but not reaped: still counted
    expect(q.readv(9, 0, [new Uint8Array(512)])).toBe(false);
    const first = new Uint32Array(1);
    expect(q.reap(first, new Int32Array(1))).toBe(1);
    expect(q.inFlight).toBe(3);
    expect(q.flush(4)).toBe(true);
    const rest = finish(q).map((c) => c.tag);
    expect([first[0]!, ...rest].sort()).toEqual([0, 1, 2, 3, 4]);
    expect(rest[rest.length - 1]).toBe(4);
    // invalid options
    expectCode(() => img.openAsyncQueue({ depth: 0, engine }), "INVALID");
    expectCode(() => img.openAsyncQueue({ depth: 4097, engine }), "INVALID");
    expectCode(() => img.openAsyncQueue({ depth: 1.5, engine }), "INVALID");
    expectCode(() => img.openAsyncQueue({ depth: 4, engine: "aio" as unknown as "sync" }), "INVALID");
    q.close();
    img.close();
  });

  it("drain and close with requests in flight; image close closes its queues", () => {
    const size = 4 << 20;
    const p = rawFile(size, (i) => (i >> 12) & 0xff);
    const img = openRaw(p);
    const q = open(img, 64);
    const bufs: Uint8Array[] = [];
    for (let i = 0; i < 64; i++) {
      const b = new Uint8Array(65536);
      bufs.push(b);
      q.readv(i, i * 65536, [b]);
    }
    q.submit();
    q.close(); // drains first
    for (const [i, b] of bufs.entries()) expect(b[0]).toBe(((i * 65536) >> 12) & 0xff);
    expectCode(() => q.readv(0, 0, [new Uint8Array(1)]), "CLOSED");
    expectCode(() => q.reap(new Uint32Array(1), new Int32Array(1)), "CLOSED");
    expectCode(() => q.submit(), "CLOSED");
    q.close(); // twice is fine
    q.drain();

    const q2 = open(img, 16);
    const w = new Uint8Array(4096).fill(0x5a);
    for (let i = 0; i < 16; i++) q2.writev(i, i * 4096, [w]);
    q2.submit();
    img.close(); // closes q2 (drained) and flushes
    expectCode(() => q2.writev(0, 0, [w]), "CLOSED");
    expectCode(() => img.openAsyncQueue({ depth: 1, engine }), "CLOSED");
    expect(readWhole(p, 65536).every((x) => x === 0x5a)).toBe(true);
  });

  it("a read past the end of a file that shrank is zero-filled; a write there extends it", () => {
    const p = rawFile(65536, () => 7);
    const img = openRaw(p);
    const q = open(img);
    truncateSync(p, 10_000);
    const a = new Uint8Array(8192).fill(0xee);
    const b = new Uint8Array(4000).fill(0xee);
    q.readv(1, 8000, [a, b]); // 2000 bytes of file, then zeros
    const c = new Uint8Array(512).fill(0xee);
    q.readv(2, 60_000, [c]); // wholly past the end
    expect(finish(q).sort((x, y) => x.tag - y.tag)).toEqual([
      { tag: 1, result: 12192 },
      { tag: 2, result: 512 },
    ]);
    expect(a.subarray(0, 2000).every((x) => x === 7)).toBe(true);
    expect(a.subarray(2000).every((x) => x === 0)).toBe(true);
    expect(b.every((x) => x === 0)).toBe(true);
    expect(c.every((x) => x === 0)).toBe(true);
    q.close();
    img.close();
  });

  it("errors: RANGE, INVALID, READ_ONLY and CLOSED are thrown at queue time with nothing queued", () => {
    const p = rawFile(8192, () => 3);
    const ro = openRaw(p, { readOnly: true });
    const q = open(ro, 8);
    expectCode(() => q.writev(1, 0, [new Uint8Array(1)]), "READ_ONLY");
    expectCode(() => q.readv(1, 8000, [new Uint8Array(193)]), "RANGE");
    expectCode(() => q.readv(1, -1, [new Uint8Array(1)]), "RANGE");
    expectCode(() => q.readv(-1, 0, [new Uint8Array(1)]), "INVALID");
    expectCode(() => q.readv(2 ** 32, 0, [new Uint8Array(1)]), "INVALID");
    expectCode(() => q.flush(0.5), "INVALID");
    expect(q.inFlight).toBe(0);
    // a flush on a read-only image is a barrier that syncs nothing
    q.readv(1, 0, [new Uint8Array(10)]);
    q.flush(2);
    expect(finish(q).sort((x, y) => x.tag - y.tag)).toEqual([
      { tag: 1, result: 10 },
      { tag: 2, result: 0 },
    ]);
    q.close();
    ro.close();
    expectCode(() => q.flush(1), "CLOSED");
  });

  it("errno failures land in their own request's result (EBADF, EFBIG, EISDIR from the kernel)", () => {
    const p = rawFile(16384, () => 1);
    // A host whose descriptor is read-only although the image claims to be writable: the
    // kernel answers the write with EBADF. Its size claims 2^53 bytes so that an offset
    // near that passes the range check and reaches the kernel (EFBIG or EINVAL).
    const fd = openSync(p, "r");
    const dirFd = openSync(dir, "r");
    const host = (hostFd: number): AsyncQueueHost => ({
      path: p,
      size: 2 ** 53,
      readOnly: false,
      checkUsable: () => {},
      fd: hostFd,
      directAlignment: 0,
      bufferedFd: () => hostFd,
      noteDirectFallback: () => {},
      needsGuard: () => false,
      writeGuarded: () => {},
      detach: () => {},
    });
    const q = openAsyncQueue(host(fd), { depth: 8, engine });
    const r0 = new Uint8Array(100);
    q.readv(0, 0, [r0]);
    q.writev(1, 0, [new Uint8Array(100)]);
    q.readv(2, 2 ** 53 - 4096, [new Uint8Array(10)]);
    q.readv(3, 4096, [new Uint8Array(100)]);
    const got = finish(q).sort((x, y) => x.tag - y.tag);
    expect(got[0]).toEqual({ tag: 0, result: 100 });
    expect(got[1]).toEqual({ tag: 1, result: -9 }); // EBADF
    // a read far past the end of the file: zeros (or EINVAL/EFBIG from the filesystem)
    expect(got[2]!.result === 10 || got[2]!.result < 0).toBe(true);
    expect(got[3]).toEqual({ tag: 3, result: 100 });
    expect(r0.every((x) => x === 1)).toBe(true);
    q.close();
    closeSync(fd);

    const wfd = openSync(p, "r+");
    const qw = openAsyncQueue(host(wfd), { depth: 8, engine });
    qw.writev(0, 0, [new Uint8Array(10).fill(2)]);
    qw.writev(1, 2 ** 53 - 4096, [new Uint8Array(10).fill(2)]);
    qw.writev(2, 4096, [new Uint8Array(10).fill(3)]);
    const w = finish(qw).sort((x, y) => x.tag - y.tag);
    expect(w[0]).toEqual({ tag: 0, result: 10 });
    expect(w[1]!.result).toBeLessThan(0); // EFBIG (or EINVAL)
    expect([-27, -22]).toContain(w[1]!.result);
    expect(w[2]).toEqual({ tag: 2, result: 10 });
    qw.close();
    closeSync(wfd);

    const qd = openAsyncQueue(host(dirFd), { depth: 2, engine });
    qd.readv(0, 0, [new Uint8Array(10)]);
    const d = finish(qd);
    expect(d.length).toBe(1);
    expect([-21, -22]).toContain(d[0]!.result); // EISDIR from preadv, EINVAL from io_uring (no read_iter)
    qd.close();
    closeSync(dirFd);
    const f = readWhole(p, 8192);
    expect(f[0]).toBe(2);
    expect(f[4096]).toBe(3);
  });

  it("a probed raw image's first sector: the probe guard refuses a qcow2 header (-EPERM), takes the rest", () => {
    const p = rawFile(65536, () => 0);
    const img = openRaw(p, { probed: true });
    const q = open(img, 8);
    q.writev(9, 4096, [new Uint8Array(512).fill(1)]); // in flight while the guarded write comes
    q.submit();
    const header = new Uint8Array(512);
    header.set([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]);
    expect(q.writev(1, 0, [header])).toBe(true);
    expect(q.writev(2, 0, [new Uint8Array(512).fill(0x11)])).toBe(true);
    expect(q.writev(3, 2, [new Uint8Array([0x49, 0xfb])])).toBe(true); // would finish a magic only with 0x51 0x46 before
    const got = finish(q).sort((x, y) => x.tag - y.tag);
    expect(got).toEqual([
      { tag: 1, result: -1 }, // EPERM
      { tag: 2, result: 512 },
      { tag: 3, result: 2 },
      { tag: 9, result: 512 },
    ]);
    q.close();
    img.close();
    const f = readWhole(p, 8192);
    expect([...f.subarray(0, 4)]).toEqual([0x11, 0x11, 0x49, 0xfb]);
    expect(f[4096]).toBe(1);
  });

  it("O_DIRECT: aligned requests go direct, others (or misaligned memory) through the buffered descriptor", () => {
    const p = rawFile(1 << 20, (i) => (i * 3) & 0xff);
    let probe: number;
    try {
      probe = openSync(p, fsc.O_RDONLY | fsc.O_DIRECT);
    } catch {
      console.log(`[async-queue] ${dir} refuses O_DIRECT: direct test skipped`);
      return;
    }
    const view = alignedView(probe, 64 * 1024);
    // whether O_DIRECT refuses memory 8 bytes off (the device's DMA alignment decides)
    let refusesOff8 = false;
    if (view)
      try {
        readSync(probe, new Uint8Array(view.buffer, view.byteOffset + 8, 4096), 0, 4096, 0);
      } catch {
        refusesOff8 = true;
      }
    closeSync(probe);
    const img = openRaw(p, { direct: true });
    const q = open(img);
    const model = new Uint8Array(1 << 20).map((_, i) => (i * 3) & 0xff);
    if (view) {
      view.fill(0xab);
      q.writev(1, 65536, [view]);
      expect(finish(q)).toEqual([{ tag: 1, result: 65536 }]);
      expect(img.directFallbacks).toBe(0);
      view.fill(0);
      q.readv(2, 65536, [view.subarray(0, 4096), view.subarray(4096)]);
      expect(finish(q)).toEqual([{ tag: 2, result: 65536 }]);
      expect(img.directFallbacks).toBe(0);
      expect(view.every((x) => x === 0xab)).toBe(true);
      model.fill(0xab, 65536, 131072);
      // aligned lengths and offset, but memory 8 bytes off: the kernel says EINVAL, the buffered fd takes it
      const off = new Uint8Array(view.buffer, view.byteOffset + 8, 4096);
      q.readv(3, 0, [off]);
      expect(finish(q)).toEqual([{ tag: 3, result: 4096 }]);
      expect(img.directFallbacks).toBe(refusesOff8 ? 1 : 0);
      expect(same(off, model.subarray(0, 4096))).toBe(true);
    } else console.log("[async-queue] found no O_DIRECT-aligned memory: aligned cases skipped");
    const before = img.directFallbacks;
    q.writev(4, 1001, [new Uint8Array(777).fill(0xcd)]);
    expect(finish(q)).toEqual([{ tag: 4, result: 777 }]);
    model.fill(0xcd, 1001, 1778);
    const b = new Uint8Array(3000);
    q.readv(5, 1000, [b]);
    expect(finish(q)).toEqual([{ tag: 5, result: 3000 }]);
    expect(same(b, model.subarray(1000, 4000))).toBe(true);
    expect(img.directFallbacks).toBe(before + 2);
    q.flush(6);
    expect(finish(q)).toEqual([{ tag: 6, result: 0 }]);
    q.close();
    img.close();
    expect(same(readWhole(p, 1 << 20), model)).toBe(true);
  });

  it("hostile offsets, lengths, tags and buffers: a clear error or a correct result, never a crash", () => {
    const size = 1 << 16;
    const p = rawFile(size, (i) => i & 0xff);
    const img = openRaw(p);
    const q = open(img, 16);
    const seed = seedFor(`async-hostile-${engine}`);
    const rng = new Rng(seed);
    const offsets = [
      0,
      1,
      511,
      size - 1,
      size,
      size + 1,
      -1,
      -0,
      0.5,
      Number.NaN,
      Infinity,
      -Infinity,
      2 ** 31,
      2 ** 32,
      2 ** 53,
      2 ** 53 + 2,
      2 ** 64 - 1,
      Number.MAX_VALUE,
      Number.MIN_VALUE,
    ];
    const lengths = [0, 1, 511, 512, 4096, size, size + 1];
    const tagsOf = [0, 1, 2 ** 32 - 1, 2 ** 32, -1, 0.5, Number.NaN, Infinity];
    const oddBuffers: unknown[] = [
      null,
      undefined,
      5,
      "x",
      new DataView(new ArrayBuffer(4)),
      new Uint16Array(4),
      [new Uint8Array(1)],
      {},
    ];
    const model = readWhole(p, size);
    const expected = new Map<number, number>();
    const reads = new Map<number, { offset: number; buffers: Uint8Array[] }>();
    let okCount = 0;
    let errCount = 0;
    for (let k = 0; k < 600; k++) {
      const offset = rng.int(2) === 0 ? rng.int(size) : rng.pick(offsets);
      const tag = rng.int(4) === 0 ? rng.pick(tagsOf) : 100 + k;
      let buffers: Uint8Array[];
      const shape = rng.int(6);
      if (shape === 0) buffers = [];
      else if (shape === 1)
        buffers = Array.from({ length: 1 + rng.int(3000) }, () => new Uint8Array(rng.int(3)));
      else if (shape === 2) buffers = [new Uint8Array(rng.pick(lengths)), new Uint8Array(0)];
      else if (shape === 3) buffers = [new Uint8Array(1), rng.pick(oddBuffers) as Uint8Array];
      else buffers = [new Uint8Array(rng.pick(lengths))];
      const length = buffers.reduce((a, b) => a + (b instanceof Uint8Array ? b.byteLength : 0), 0);
      const valid =
        Number.isSafeInteger(offset) &&
        offset >= 0 &&
        offset + length <= size &&
        tag >>> 0 === tag &&
        buffers.every((b) => b instanceof Uint8Array);
      const write = rng.int(3) === 0;
      if (write) for (const b of buffers) if (b instanceof Uint8Array) b.fill(0x77);
      try {
        const ok = write ? q.writev(tag, offset, buffers) : q.readv(tag, offset, buffers);
        expect(valid, `accepted offset ${offset} tag ${tag}`).toBe(true);
        expect(ok).toBe(true);
        okCount++;
        // tags may repeat (the hostile ones): keep one request per tag in flight
        expected.set(tag, length);
        if (write) {
          let at = offset;
          for (const b of buffers) {
            model.set(b, at);
            at += b.byteLength;
          }
        } else reads.set(tag, { offset, buffers });
        for (const c of finish(q)) {
          expect(c.result).toBe(expected.get(c.tag));
          const r = reads.get(c.tag);
          if (r) expect(same(concat(r.buffers), model.subarray(r.offset, r.offset + c.result))).toBe(true);
        }
        expected.clear();
        reads.clear();
      } catch (e) {
        expect(e, String(e)).toBeInstanceOf(DiskImageError);
        expect(["RANGE", "INVALID"]).toContain((e as DiskImageError).code);
        expect(valid, `refused offset ${offset} tag ${tag}: ${String(e)}`).toBe(false);
        errCount++;
      }
      expect(q.inFlight).toBe(0);
    }
    expect(okCount).toBeGreaterThan(150);
    expect(errCount).toBeGreaterThan(150);
    if (engine === "sync") {
      // a buffer detached (transferred) between queueing and submit: a wrong result, no crash
      const ab = new ArrayBuffer(4096);
      q.readv(7, 0, [new Uint8Array(ab)]);
      structuredClone(ab, { transfer: [ab] });
      const [c] = finish(q);
      expect(c!.tag).toBe(7);
      expect(c!.result).toBeLessThanOrEqual(0);
    }
    // not an array, not typed arrays for reap
    expectCode(() => q.readv(1, 0, "abc" as unknown as Uint8Array[]), "INVALID");
    expectCode(() => q.reap(new Int32Array(1) as unknown as Uint32Array, new Int32Array(1)), "INVALID");
    q.close();
    img.close();
    // longer than an int32 result can say: refused before anything (one 64 MiB buffer, 33 times)
    truncateSync(p, 4 * 2 ** 30);
    const big = openRaw(p);
    const qb = open(big, 2);
    const chunk = new Uint8Array(64 << 20);
    expectCode(
      () =>
        qb.readv(
          1,
          0,
          Array.from({ length: 33 }, () => chunk),
        ),
      "RANGE",
    );
    qb.readv(2, 2 ** 32 - 10, [new Uint8Array(10)]);
    expect(finish(qb)).toEqual([{ tag: 2, result: 10 }]);
    qb.close();
    big.close();
  });
});

describe("native io_uring: bad arguments throw, never crash", () => {
  it("a ring size out of range is refused; where a ring opens, prepRw / prepFsync / prepNop / reap check every argument", () => {
    const Ring = native().IoUring;
    if (Ring === undefined) {
      // Built without <linux/io_uring.h>: the probe says so, and there is no ring to check.
      expect(support).toMatchObject({ available: false, code: "ENOSYS" });
      return;
    }
    // Checked before io_uring_setup: refused the same where io_uring is missing.
    expect(() => new Ring(0)).toThrow(TypeError);
    expect(() => new Ring(4097)).toThrow(TypeError);
    let ring: InstanceType<typeof Ring>;
    try {
      ring = new Ring(4);
    } catch (e) {
      // No ring: then the probe said so too (it asks the same system call), and the failure is
      // the kernel's answer, not an argument check.
      expect(support.available, String(e)).toBe(false);
      expect(e).not.toBeInstanceOf(TypeError);
      return;
    }
    expect(ring.sqEntries).toBe(4);
    expect(ring.cqEntries).toBe(8);
    const b = [new Uint8Array(8)];
    const bad: (() => unknown)[] = [
      () => ring.prepRw(false, -1, 0, b, 0, 1, 0, 0, false),
      () => ring.prepRw(false, 0, -1, b, 0, 1, 0, 0, false),
      () => ring.prepRw(false, 0, 2 ** 53, b, 0, 1, 0, 0, false),
      () => ring.prepRw(false, 0, 0, b, 0, 0, 0, 0, false),
      () => ring.prepRw(false, 0, 0, b, 0, 1025, 0, 0, false),
      () => ring.prepRw(false, 0, 0, b, 1, 1, 0, 0, false),
      () => ring.prepRw(false, 0, 0, b, 0, 1, 9, 0, false),
      () => ring.prepRw(false, 0, 0, b, 0, 1, 0, 8, false),
      () => ring.prepRw(false, 0, 0, b, 0, 1, 0, -1, false),
      () => ring.prepRw(false, 0, 0, [new Uint16Array(4) as unknown as Uint8Array], 0, 1, 0, 0, false),
      () => ring.prepRw(false, 0, 0, "x" as unknown as Uint8Array[], 0, 1, 0, 0, false),
      () => ring.prepFsync(0, true, 99, false),
      () => ring.prepNop(Number.NaN, false),
      () => ring.reap(new Int32Array(1) as unknown as Uint32Array, new Int32Array(1)),
      () => ring.submit(-1),
    ];
    for (const f of bad) expect(f).toThrow(TypeError);
    // the SQ fills up: false, not an overflow
    for (let i = 0; i < 4; i++) expect(ring.prepNop(i, false)).toBe(true);
    expect(ring.prepNop(0, false)).toBe(false);
    expect(ring.submit(4)).toBe(0);
    const ud = new Uint32Array(8);
    const res = new Int32Array(8);
    expect(ring.reap(ud, res)).toBe(4);
    expect([...ud.subarray(0, 4)].sort()).toEqual([0, 1, 2, 3]);
    ring.close();
    ring.close();
    expect(() => ring.prepNop(0, false)).toThrow();
  });
});

/** Finds a view of `size` bytes whose memory O_DIRECT accepts (we cannot see addresses from JS). */
function alignedView(fd: number, size: number): Uint8Array | undefined {
  const ab = new ArrayBuffer(size + 8192);
  for (let k = 0; k < 8192; k += 16) {
    try {
      readSync(fd, new Uint8Array(ab, k, 4096), 0, 4096, 0);
      return new Uint8Array(ab, k, size);
    } catch {
      // EINVAL: not aligned enough
    }
  }
  return undefined;
}
