import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  createQcow2,
  type DiskImage,
  DiskImageError,
  type DiskIoBatch,
  openDiskImage,
  openRaw,
} from "../src/index.js";
import { readWhole, tempDir } from "./helpers.js";

/*
 * QEMU's CVE-2008-2004 class: a raw image opened without a format is probed on
 * every open, so a guest that writes a qcow2 header (naming a host file as its
 * backing file) into sector 0 would read that file on the next boot. A probed
 * raw image must refuse every write that would leave sector 0 probing as
 * anything but raw.
 */

const dir = tempDir("tskvm-probe-");
let n = 0;
const SIZE = 1 << 20;
const SECRET = Buffer.from("HOST-SECRET-0123".repeat(4096)); // 64 KiB of known bytes
const secretPath = join(dir, "secret.bin");
writeFileSync(secretPath, SECRET);

/** A raw disk whose sector 0 holds `RAW-SECTOR-0` and the rest zeros. */
function rawDisk(): string {
  const p = join(dir, `disk-${n++}.raw`);
  const b = Buffer.alloc(SIZE);
  b.write("RAW-SECTOR-0", 0);
  writeFileSync(p, b);
  return p;
}

/** What a hostile guest would write: a valid qcow2 image whose backing file is the host's secret. */
function evilQcow2(): Uint8Array {
  const p = join(dir, `evil-${n++}.qcow2`);
  createQcow2(p, SIZE, { backing: secretPath, backingFormat: "raw", clusterSize: 4096 });
  return new Uint8Array(readFileSync(p));
}

const MAGIC = Uint8Array.of(0x51, 0x46, 0x49, 0xfb);

function guardError(f: () => unknown): DiskImageError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(DiskImageError);
    expect((e as DiskImageError).code).toBe("PROBE_GUARD");
    return e as DiskImageError;
  }
  throw new Error("expected PROBE_GUARD, nothing thrown");
}

function sector0(p: string): string {
  return Buffer.from(readWhole(p, 512)).toString("latin1");
}

function batchOf(ops: readonly { offset: number; buffers: Uint8Array[] }[]): DiskIoBatch {
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

function withDisk(p: string, options: Parameters<typeof openDiskImage>[1], f: (d: DiskImage) => void): void {
  const d = openDiskImage(p, options);
  try {
    f(d);
  } finally {
    d.close();
  }
}

describe("probed raw images: the first sector must keep probing as raw", () => {
  it("says whether the format was probed", () => {
    const p = rawDisk();
    withDisk(p, {}, (d) => expect([d.format, d.probed]).toEqual(["raw", true]));
    withDisk(p, { format: "raw" }, (d) => expect(d.probed).toBe(false));
    withDisk(p, { snapshot: true }, (d) => expect(d.probed).toBe(true));
    const q = join(dir, "plain.qcow2");
    createQcow2(q, SIZE);
    withDisk(q, {}, (d) => expect([d.format, d.probed]).toEqual(["qcow2", true]));
    withDisk(q, { format: "qcow2" }, (d) => expect(d.probed).toBe(false));
    const r = openRaw(p);
    expect(r.probed).toBe(false);
    r.close();
  });

  it("the attack: a guest writes a qcow2 image naming a host file as its backing file; the next open is still raw and never reads it", () => {
    const p = rawDisk();
    const before = readFileSync(p);
    const evil = evilQcow2();
    withDisk(p, {}, (d) => {
      const e = guardError(() => d.write(0, evil));
      expect(e.path).toBe(p);
      expect(e.message).toMatch(/first sector.*qcow2/);
      // Sector by sector, as a guest writes: only sector 0 is refused.
      guardError(() => d.write(0, evil.subarray(0, 512)));
      d.write(512, evil.subarray(512));
    });
    expect(sector0(p)).toBe(before.subarray(0, 512).toString("latin1"));
    withDisk(p, {}, (d) => {
      expect(d.format).toBe("raw");
      const all = new Uint8Array(SIZE);
      d.read(0, all);
      expect(Buffer.from(all).includes("HOST-SECRET")).toBe(false);
    });
  });

  it("judges the whole sector a write leaves behind: partial, unaligned and scattered writes", () => {
    const p = rawDisk();
    withDisk(p, {}, (d) => {
      d.write(0, MAGIC.subarray(0, 2)); // "QF" then the rest of "RAW-SECTOR-0": still raw
      guardError(() => d.write(2, MAGIC.subarray(2))); // would complete the magic
      guardError(() => d.writev(0, [MAGIC.subarray(0, 1), MAGIC.subarray(1, 3), MAGIC.subarray(3)]));
      guardError(() => d.writev(0, [new Uint8Array(0), MAGIC, new Uint8Array(5000)]));
      // A write that starts in sector 0 and runs on: refused whole, nothing written.
      const long = new Uint8Array(10_000).fill(0xee);
      long.set(MAGIC, 0);
      guardError(() => d.write(0, long));
      expect(
        readWhole(p, 10_000)
          .subarray(512, 10_000)
          .every((b) => b === 0),
      ).toBe(true);
      d.write(1, Uint8Array.of(0x41)); // harmless bytes anywhere in sector 0 are fine
      d.write(0, new Uint8Array(512).fill(0x51)); // 'QQQQ...' is not the magic
      d.write(4, MAGIC); // the magic elsewhere in sector 0 is not a qcow2 header
      // Sector 0 now begins "QQQQ": one byte at a time cannot build the magic either.
      d.write(1, Uint8Array.of(0x46));
      d.write(2, Uint8Array.of(0x49));
      guardError(() => d.write(3, Uint8Array.of(0xfb)));
    });
    const head = readWhole(p, 8);
    expect(Array.from(head)).toEqual([0x51, 0x46, 0x49, 0x51, 0x51, 0x46, 0x49, 0xfb]);
  });

  it("writevBatch: only the operation that would plant the header fails, in order with the others", () => {
    const p = rawDisk();
    withDisk(p, {}, (d) => {
      expect(d.writevBatch).toBeDefined();
      const ok = new Uint8Array(512).fill(0x11);
      const b1 = batchOf([
        { offset: 4096, buffers: [ok] },
        { offset: 0, buffers: [MAGIC, new Uint8Array(508)] },
        { offset: 8192, buffers: [ok] },
      ]);
      expect(d.writevBatch!(b1)).toBe(1);
      expect(b1.errors[0]).toBeUndefined();
      expect(b1.errors[1]?.code).toBe("PROBE_GUARD");
      expect(b1.errors[2]).toBeUndefined();
      // Two operations that build the magic together: the second one sees the first on disk.
      const b2 = batchOf([
        { offset: 0, buffers: [MAGIC.subarray(0, 2)] },
        { offset: 2, buffers: [MAGIC.subarray(2)] },
      ]);
      expect(d.writevBatch!(b2)).toBe(1);
      expect(b2.errors[0]).toBeUndefined();
      expect(b2.errors[1]?.code).toBe("PROBE_GUARD");
    });
    const img = readWhole(p, 8704);
    expect(img[4096]).toBe(0x11);
    expect(img[8192]).toBe(0x11);
    expect(Buffer.from(img.subarray(0, 4)).toString("latin1")).toBe("QFW-");
  });

  it("O_DIRECT probed images are guarded too; write-zeroes and discard of sector 0 are allowed", () => {
    const p = rawDisk();
    withDisk(p, { direct: true }, (d) => {
      const s = new Uint8Array(512);
      s.set(MAGIC);
      guardError(() => d.write(0, s));
      d.writeZeroes(0, 4096);
      d.discard(0, 4096);
      d.writeZeroes(0, 512, { mayUnmap: true });
    });
    expect(readWhole(p, 512).every((b) => b === 0)).toBe(true);
  });

  it("a tiny image (shorter than a sector) is judged on what it has", () => {
    const p = join(dir, "tiny.raw");
    writeFileSync(p, Buffer.from("tiny raw image"));
    withDisk(p, {}, (d) => {
      guardError(() => d.write(0, MAGIC));
      d.write(0, MAGIC.subarray(0, 3));
    });
  });

  it("a given format lifts the guard; snapshot and read-only probed disks never write the image", () => {
    const p = rawDisk();
    const s = new Uint8Array(512);
    s.set(MAGIC);
    withDisk(p, { snapshot: true }, (d) => {
      d.write(0, s); // into the overlay: the guest sees its own bytes, nothing probes them
      const back = new Uint8Array(4);
      d.read(0, back);
      expect(Array.from(back)).toEqual(Array.from(MAGIC));
    });
    expect(sector0(p).startsWith("RAW-SECTOR-0")).toBe(true);
    withDisk(p, { format: "raw" }, (d) => d.write(0, s));
    expect(Array.from(readWhole(p, 4))).toEqual(Array.from(MAGIC));
  });
});
