import { spawn, spawnSync } from "node:child_process";
import {
  chmodSync,
  closeSync,
  constants as fsc,
  openSync,
  readSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { describe, expect, it, vi } from "vitest";
import { DiskImageError, openDiskImage, openRaw, type RawDiskImage } from "../src/index.js";
import { packageRoot, Rng, readWhole, spawnFixture, tempDir } from "./helpers.js";

const dir = tempDir();
let n = 0;
function rawFile(size: number, fill?: (i: number) => number, base = dir): string {
  const p = join(base, `raw-${n++}.img`);
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

describe("raw: vectored I/O", () => {
  it("reads and writes scatter lists at odd offsets", () => {
    const size = 1 << 20;
    const p = rawFile(size, (i) => (i * 7) & 0xff);
    const img = openRaw(p);
    expect(img.size).toBe(size);
    expect(img.format).toBe("raw");
    expect(img.sectorSize).toBe(512);
    const model = readWhole(p, size);
    const rng = new Rng(1);
    for (let k = 0; k < 300; k++) {
      const count = 1 + rng.int(5);
      const lens = Array.from({ length: count }, () => rng.int(5000));
      const total = lens.reduce((a, b) => a + b, 0);
      const off = rng.int(size - total);
      if (rng.int(2) === 0) {
        const bufs = lens.map((l) => rng.bytes(l));
        img.writev(off, bufs);
        let o = off;
        for (const b of bufs) {
          model.set(b, o);
          o += b.byteLength;
        }
      } else {
        const bufs = lens.map((l) => new Uint8Array(l).fill(0xee));
        img.readv(off, bufs);
        let o = off;
        for (const b of bufs) {
          expect(Buffer.from(b).equals(Buffer.from(model.subarray(o, o + b.byteLength)))).toBe(true);
          o += b.byteLength;
        }
      }
    }
    // views into one larger buffer (as guest memory would be)
    const mem = new Uint8Array(8192);
    img.readv(12345, [mem.subarray(3, 100), mem.subarray(4000, 4001), mem.subarray(5000, 8192)]);
    expect(Buffer.from(mem.subarray(3, 100)).equals(Buffer.from(model.subarray(12345, 12442)))).toBe(true);
    img.flush();
    img.close();
    expect(Buffer.from(readWhole(p, size)).equals(Buffer.from(model))).toBe(true);
  });

  it("splits requests with more iovecs than IOV_MAX", () => {
    const p = rawFile(1 << 20);
    const img = openRaw(p);
    const bufs = Array.from({ length: 3000 }, (_, i) => new Uint8Array(100).fill(i & 0xff));
    img.writev(77, bufs);
    const back = Array.from({ length: 3000 }, () => new Uint8Array(100));
    img.readv(77, back);
    for (let i = 0; i < 3000; i++) expect(back[i]![0]).toBe(i & 0xff);
    img.close();
  });

  it("reads zeros past the end of a file that shrank under it", () => {
    const p = rawFile(8192, () => 0xaa);
    const img = openRaw(p, { readOnly: true });
    writeFileSync(p, new Uint8Array(4096).fill(0xbb));
    const b = new Uint8Array(8192).fill(0xcc);
    img.read(0, b);
    expect(b[0]).toBe(0xbb);
    expect(b[4095]).toBe(0xbb);
    expect(b[4096]).toBe(0);
    expect(b[8191]).toBe(0);
    img.close();
  });
});

describe("raw: validation", () => {
  it("rejects bad ranges with RANGE and writes nothing", () => {
    const size = 64 * 1024;
    const p = rawFile(size, () => 0x11);
    const img = openRaw(p);
    const data = new Uint8Array(1024).fill(0x99);
    const e = expectCode(() => img.write(size - 512, data), "RANGE");
    expect(e.message).toContain("beyond the end");
    expectCode(() => img.writev(size - 1000, [new Uint8Array(500), new Uint8Array(501)]), "RANGE");
    expectCode(() => img.write(-1, data), "RANGE");
    expectCode(() => img.write(1.5, data), "RANGE");
    expectCode(() => img.write(Number.NaN, data), "RANGE");
    expectCode(() => img.write(2 ** 60, data), "RANGE");
    expectCode(() => img.read(size, new Uint8Array(1)), "RANGE");
    expectCode(() => img.discard(size - 10, 11), "RANGE");
    expectCode(() => img.discard(0, -1), "RANGE");
    expectCode(() => img.writeZeroes(size, 1), "RANGE");
    expectCode(() => img.writeZeroes(0, 0.5), "RANGE");
    expectCode(() => img.writev(0, [data, "x" as unknown as Uint8Array]), "INVALID");
    // zero-length at the very end is fine
    img.read(size, new Uint8Array(0));
    img.write(size - 1024, data);
    img.close();
    const after = readWhole(p, size);
    expect(after.subarray(0, size - 1024).every((b) => b === 0x11)).toBe(true);
    expect(after.subarray(size - 1024).every((b) => b === 0x99)).toBe(true);
    expectCode(() => img.read(0, data), "CLOSED");
    img.close(); // idempotent
  });

  it("gives clear errors for missing files, directories and no permission", () => {
    const e = expectCode(() => openRaw(join(dir, "nope.img")), "ENOENT");
    expect(e.path).toBe(join(dir, "nope.img"));
    expect(e.hint).toBeTruthy();
    expectCode(() => openRaw(dir), "EISDIR");
    expectCode(() => openDiskImage(join(dir, "nope.img")), "ENOENT");
    expectCode(() => openDiskImage(rawFile(512), { format: "vmdk" as "raw" }), "INVALID");
    if (process.getuid?.() === 0) {
      // root ignores file modes: drop to nobody in a child to see EACCES
      const p = rawFile(4096);
      const r = spawnSyncAs(65534, p);
      expect(r).toContain("error EACCES");
    } else {
      const p = rawFile(4096);
      chmodSync(p, 0o400);
      expectCode(() => openRaw(p), "EACCES");
    }
  });

  it("refuses writes on read-only opens", () => {
    const p = rawFile(4096, () => 3);
    const img = openRaw(p, { readOnly: true });
    expect(img.readOnly).toBe(true);
    expect(img.supportsDiscard).toBe(false);
    expectCode(() => img.write(0, new Uint8Array(1)), "READ_ONLY");
    expectCode(() => img.discard(0, 512), "READ_ONLY");
    expectCode(() => img.writeZeroes(0, 512), "READ_ONLY");
    img.flush(); // harmless
    img.close();
    expect(readWhole(p, 4096).every((b) => b === 3)).toBe(true);
  });
});

function spawnSyncAs(uid: number, path: string): string {
  const r = spawnSync(process.execPath, [join(packageRoot, "test", "fixtures", "hold.mjs"), path, "{}"], {
    uid,
    gid: uid,
    encoding: "utf8",
    input: "",
  });
  return r.stdout + r.stderr;
}

describe("raw: flush, discard, write-zeroes", () => {
  it("flush is fdatasync", () => {
    const p = rawFile(4096);
    const img = openRaw(p);
    img.write(0, new Uint8Array(4096).fill(5));
    img.flush();
    img.close();
    expect(readWhole(p, 4096)[100]).toBe(5);
  });

  it("discard punches holes (st_blocks drops) and reads zeros", () => {
    const size = 4 << 20;
    const p = rawFile(size, () => 0x5a);
    const img = openRaw(p);
    img.flush();
    const before = statSync(p).blocks;
    expect(before).toBeGreaterThanOrEqual(size / 512);
    expect(img.supportsDiscard).toBe(true);
    img.discard(1 << 20, 2 << 20);
    img.flush();
    const after = statSync(p).blocks;
    expect(before - after).toBeGreaterThanOrEqual((2 << 20) / 512 - 16);
    const b = new Uint8Array(size);
    img.read(0, b);
    expect(b.subarray(1 << 20, 3 << 20).every((x) => x === 0)).toBe(true);
    expect(b[(1 << 20) - 1]).toBe(0x5a);
    expect(b[3 << 20]).toBe(0x5a);
    expect(statSync(p).size).toBe(size);
    img.close();
  });

  it("write-zeroes zeroes unaligned ranges, with and without unmap", () => {
    const size = 1 << 20;
    const p = rawFile(size, () => 0x77);
    const img = openRaw(p);
    img.writeZeroes(1000, 5000);
    img.writeZeroes(300000, 200000, { mayUnmap: true });
    const b = new Uint8Array(size);
    img.read(0, b);
    expect(b[999]).toBe(0x77);
    expect(b.subarray(1000, 6000).every((x) => x === 0)).toBe(true);
    expect(b[6000]).toBe(0x77);
    expect(b.subarray(300000, 500000).every((x) => x === 0)).toBe(true);
    expect(b[500000]).toBe(0x77);
    expect(b[299999]).toBe(0x77);
    img.close();
    expect(statSync(p).size).toBe(size);
  });

  it("falls back to writing zeros where fallocate is unsupported", async () => {
    const native = await import("../src/native.js");
    const real = native.native();
    const spy = vi.spyOn(real, "fallocate").mockImplementation(() => {
      throw Object.assign(new Error("fallocate: Operation not supported"), {
        errno: 95,
        syscall: "fallocate",
      });
    });
    try {
      const p = rawFile(65536, () => 0x42);
      const img = openRaw(p);
      img.discard(0, 4096); // a hint: nothing happens
      expect(img.supportsDiscard).toBe(false);
      img.writeZeroes(4096, 8192, { mayUnmap: true });
      expect(img.supportsWriteZeroes).toBe(false);
      const b = new Uint8Array(65536);
      img.read(0, b);
      expect(b[0]).toBe(0x42);
      expect(b.subarray(4096, 12288).every((x) => x === 0)).toBe(true);
      expect(b[12288]).toBe(0x42);
      img.close();
    } finally {
      spy.mockRestore();
    }
  });
});

describe("raw: locking", () => {
  it("two writable opens in one process conflict; read-only opens share", () => {
    const p = rawFile(4096);
    const a = openRaw(p);
    const e = expectCode(() => openRaw(p), "LOCKED");
    expect(e.hint).toBeTruthy();
    expectCode(() => openRaw(p, { readOnly: true }), "LOCKED");
    a.close();
    const r1 = openRaw(p, { readOnly: true });
    const r2 = openRaw(p, { readOnly: true });
    const byReaders = expectCode(() => openRaw(p), "LOCKED");
    r1.close();
    expectCode(() => openRaw(p), "LOCKED");
    r2.close();
    const w = openRaw(p);
    w.close();
    // The message says who holds it, and only suggests what would work: while a
    // writer holds it, read-only and snapshot opens are refused as well.
    expect(e.message).toMatch(/image is locked: another VM or tool is writing to it/);
    expect(e.hint).toMatch(/stop it first/);
    expect(e.hint).toMatch(/cannot be opened at all, not even read-only or as a snapshot/);
    expect(byReaders.message).toMatch(/has it open read-only/);
    expect(byReaders.hint).toMatch(/open this image read-only too, or as a snapshot disk/);
    for (const x of [e, byReaders]) {
      expect(x.message.split(p).length, "the path once").toBe(2);
      expect(`${x.message}`).not.toMatch(/\{|readOnly|snapshot: true|lock: false/);
    }
    // lock: false opts out
    const x = openRaw(p);
    const y = openRaw(p, { lock: false });
    y.close();
    x.close();
  });

  it("conflicts across processes, and releases when the holder dies", async () => {
    const p = rawFile(4096);
    const holder = await spawnFixture("hold.mjs", [p, JSON.stringify({ format: "raw" })]);
    expectCode(() => openRaw(p), "LOCKED");
    expectCode(() => openRaw(p, { readOnly: true }), "LOCKED");
    await holder.kill();
    openRaw(p).close();

    const reader = await spawnFixture("hold.mjs", [p, JSON.stringify({ format: "raw", readOnly: true })]);
    const r = openRaw(p, { readOnly: true });
    expectCode(() => openRaw(p), "LOCKED");
    r.close();
    await reader.kill();

    const mine = openRaw(p);
    const child = await new Promise<string>((resolve) => {
      const c = spawn(process.execPath, [
        join(packageRoot, "test", "fixtures", "hold.mjs"),
        p,
        '{"format":"raw"}',
      ]);
      let out = "";
      c.stdout.on("data", (d) => {
        out += String(d);
      });
      c.on("exit", () => resolve(out));
      c.stdin.end();
    });
    expect(child).toContain("error LOCKED");
    mine.close();
  });

  it("sees QEMU's locks and QEMU sees ours", async () => {
    const p = rawFile(1 << 20);
    // qemu-io holding the image writable
    const q = spawn("qemu-io", ["-f", "raw", "-c", "sleep 20000", p]);
    await new Promise((r) => setTimeout(r, 400));
    try {
      expectCode(() => openRaw(p), "LOCKED");
      expectCode(() => openRaw(p, { readOnly: true }), "LOCKED");
    } finally {
      q.kill("SIGKILL");
      await new Promise((r) => q.once("exit", r));
    }
    const img = openRaw(p);
    const r = spawnSync("qemu-io", ["-f", "raw", "-c", "read 0 512", p], { encoding: "utf8" });
    expect(r.status).not.toBe(0);
    expect(r.stderr + r.stdout).toMatch(/lock/i);
    img.close();
  });
});

/** Finds a view of `size` bytes whose memory O_DIRECT accepts (we cannot see addresses from JS). */
function alignedView(fd: number, size: number): Uint8Array | undefined {
  const ab = new ArrayBuffer(size + 8192);
  for (let k = 0; k < 8192; k += 16) {
    try {
      // (small reads can succeed where larger ones do not: probe with a page)
      readSync(fd, new Uint8Array(ab, k, 4096), 0, 4096, 0);
      return new Uint8Array(ab, k, size);
    } catch {
      // EINVAL: not aligned enough
    }
  }
  return undefined;
}

describe("raw: O_DIRECT", () => {
  const candidates = ["/dev/shm", dir, packageRoot];
  for (const base of candidates) {
    it(`direct I/O on ${base}`, () => {
      let probeFd: number;
      const p = join(base, `.direct-${process.pid}-${n++}.img`);
      writeFileSync(p, new Uint8Array(1 << 20).fill(1));
      try {
        try {
          probeFd = openSync(p, fsc.O_RDONLY | fsc.O_DIRECT);
        } catch {
          // this filesystem refuses O_DIRECT: the open must say so clearly
          const e = expectCode(() => openRaw(p, { direct: true }), "UNSUPPORTED");
          expect(e.message).toContain("O_DIRECT");
          return;
        }
        const img: RawDiskImage = openRaw(p, { direct: true });
        expect(img.requestAlignment).toBe(512);
        const view = alignedView(probeFd, 64 * 1024);
        closeSync(probeFd);
        if (view) {
          view.fill(0xab);
          img.write(4096, view);
          expect(img.directFallbacks).toBe(0);
          view.fill(0);
          img.read(4096, view);
          expect(view.every((x) => x === 0xab)).toBe(true);
          expect(img.directFallbacks).toBe(0);
        }
        // unaligned requests are still correct (through the buffered descriptor)
        const before = img.directFallbacks;
        img.write(1001, new Uint8Array(777).fill(0xcd));
        const b = new Uint8Array(3000);
        img.read(1000, b);
        expect(b[0]).toBe(1);
        expect(b[1]).toBe(0xcd);
        expect(b[777]).toBe(0xcd);
        expect(b[778]).toBe(1);
        expect(img.directFallbacks).toBeGreaterThan(before);
        img.writeZeroes(1001, 10);
        img.flush();
        img.close();
        const whole = readWhole(p, 1 << 20);
        expect(whole[1001]).toBe(0);
        expect(whole[1011]).toBe(0xcd);
        if (view) expect(whole[4096]).toBe(0xab);
      } finally {
        rmSync(p, { force: true });
      }
    });
  }

  it("a filesystem that refuses O_DIRECT gives UNSUPPORTED", async () => {
    vi.resetModules();
    vi.doMock("node:fs", async (orig) => {
      const real = await orig<typeof import("node:fs")>();
      return {
        ...real,
        openSync: (path: string, flags: number, ...rest: unknown[]) => {
          if (typeof flags === "number" && flags & real.constants.O_DIRECT)
            throw Object.assign(new Error("EINVAL: invalid argument, open"), {
              code: "EINVAL",
              errno: -22,
              syscall: "open",
            });
          return (real.openSync as (...a: unknown[]) => number)(path, flags, ...rest);
        },
      };
    });
    try {
      const mod = await import("../src/index.js");
      const p = rawFile(4096);
      try {
        mod.openRaw(p, { direct: true });
        throw new Error("no error");
      } catch (e) {
        expect((e as DiskImageError).code).toBe("UNSUPPORTED");
        expect((e as DiskImageError).message).toContain("O_DIRECT");
      }
      mod.openRaw(p).close();
    } finally {
      vi.doUnmock("node:fs");
      vi.resetModules();
    }
  });
});

describe("raw: worker threads", () => {
  it("opens and does I/O from a worker (the blk device's I/O thread)", async () => {
    const { Worker } = await import("node:worker_threads");
    const p = rawFile(65536);
    const url = new URL("../dist/index.js", import.meta.url).href;
    const w = new Worker(
      `const { workerData, parentPort } = require("node:worker_threads");
       import(workerData.url).then((m) => {
         const img = m.openRaw(workerData.p);
         img.write(512, new Uint8Array(512).fill(9));
         img.discard(4096, 4096);
         img.close();
         parentPort.postMessage("done");
       }).catch((e) => parentPort.postMessage(String(e)));`,
      { eval: true, workerData: { url, p } },
    );
    const msg = await new Promise((r) => w.once("message", r));
    await w.terminate();
    expect(msg).toBe("done");
    expect(readWhole(p, 1024)[600]).toBe(9);
  });
});
