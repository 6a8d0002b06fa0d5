import { spawn } from "node:child_process";
import {
  closeSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  statSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  createQcow2,
  type DiskImage,
  DiskImageError,
  imageInfo,
  openDiskImage,
  openQcow2,
  type Qcow2DiskImage,
} from "../src/index.js";
import { qemuCheck, qemuImg, Rng, run, spawnFixture, tempDir } from "./helpers.js";

const dir = tempDir("tskvm-qcow2-");
let seq = 0;
const p = (name: string) => join(dir, `${seq++}-${name}`);

/** A raw source disk: random data in some 64 KiB-ish extents, zeros elsewhere, a few odd-sized bits. */
function makeSource(size: number, seed: number): { path: string; data: Uint8Array } {
  const rng = new Rng(seed);
  const data = new Uint8Array(size);
  for (let i = 0; i < 40; i++) {
    const len = 1 + rng.int(200_000);
    const off = rng.int(size - len);
    data.set(rng.bytes(len), off);
  }
  // a compressible extent
  data.fill(0x5a, size / 2, size / 2 + 300_000);
  const path = p("src.raw");
  writeFileSync(path, data);
  return { path, data };
}

/** Reads the whole disk through odd-sized vectored requests. */
function readAll(img: DiskImage, rng = new Rng(7)): Uint8Array {
  const out = new Uint8Array(img.size);
  let pos = 0;
  while (pos < img.size) {
    const n = Math.min(img.size - pos, 1 + rng.int(300_000));
    const a = rng.int(n + 1);
    img.readv(pos, [out.subarray(pos, pos + a), out.subarray(pos + a, pos + n)]);
    pos += n;
  }
  return out;
}

function toRaw(image: string): Uint8Array {
  const out = p("ref.raw");
  qemuImg("convert", "-O", "raw", image, out);
  return new Uint8Array(readFileSync(out));
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return (
    a.byteLength === b.byteLength &&
    Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(
      Buffer.from(b.buffer, b.byteOffset, b.byteLength),
    )
  );
}

function expectClean(image: string): void {
  const c = qemuCheck(image);
  expect(c.json.corruptions ?? 0, c.text).toBe(0);
  expect(c.json.leaks ?? 0, c.text).toBe(0);
  expect(c.json["check-errors"] ?? 0, c.text).toBe(0);
  expect(c.status, c.text).toBe(0);
}

function qemuIoRead(image: string, checks: [number, number, number][]): void {
  const args = checks.flatMap(([pat, off, len]) => ["-c", `read -P 0x${pat.toString(16)} ${off} ${len}`]);
  const r = run("qemu-io", ["-r", ...args, image]);
  expect(r.stdout).not.toMatch(/Pattern verification failed|error/i);
  expect(r.status).toBe(0);
  expect((r.stdout.match(/^read /gm) ?? []).length).toBe(checks.length);
}

function expectCode(f: () => unknown, code: string): DiskImageError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(DiskImageError);
    expect((e as DiskImageError).code, (e as Error).message).toBe(code);
    return e as DiskImageError;
  }
  throw new Error(`expected DiskImageError ${code}`);
}

const SIZE = 6 * 1024 * 1024 + 512 * 3;

describe("qcow2: images made by qemu-img read byte-identical", () => {
  const src = makeSource(SIZE, 42);
  const clusterSizes = [512, 4096, 65536, 2 << 20];
  for (const compat of ["0.10", "1.1"]) {
    for (const cs of clusterSizes) {
      it(`convert, cluster ${cs}, compat ${compat}; then writes stay qemu-clean`, () => {
        const img = p(`c${cs}-${compat}.qcow2`);
        qemuImg("convert", "-O", "qcow2", "-o", `cluster_size=${cs},compat=${compat}`, src.path, img);
        const ref = toRaw(img);
        expect(same(ref, src.data)).toBe(true);
        const d = openDiskImage(img) as Qcow2DiskImage;
        expect(d.format).toBe("qcow2");
        expect(d.clusterSize).toBe(cs);
        expect(d.size).toBe(SIZE);
        expect(same(readAll(d), ref)).toBe(true);
        // writes: in place, fresh clusters, partial clusters, across L2 tables
        const rng = new Rng(cs);
        const checks: [number, number, number][] = [];
        const model = src.data.slice();
        for (let i = 0; i < 25; i++) {
          const len = 1 + rng.int(150_000);
          const off = rng.int(SIZE - len);
          const pat = 1 + rng.int(254);
          d.write(off, new Uint8Array(len).fill(pat));
          model.fill(pat, off, off + len);
          checks.push([pat, off, len]);
        }
        d.flush();
        d.writeZeroes(4096, 3 * 65536 + 100);
        model.fill(0, 4096, 4096 + 3 * 65536 + 100);
        d.close();
        expectClean(img);
        // later writes may overlap earlier ones: check what is still there
        const still = checks.filter(([pat, off, len]) =>
          model.subarray(off, off + len).every((b) => b === pat),
        );
        qemuIoRead(img, still.slice(-8));
        expect(same(toRaw(img), model)).toBe(true);
      });
    }
  }

  for (const cs of [4096, 65536, 2 << 20]) {
    it(`compressed (convert -c), cluster ${cs}: reads, and copy-on-write out of compressed clusters`, () => {
      const img = p(`z${cs}.qcow2`);
      qemuImg("convert", "-c", "-O", "qcow2", "-o", `cluster_size=${cs}`, src.path, img);
      const info = run("qemu-img", ["check", img]).stdout;
      expect(info).toMatch(/[1-9][0-9.]*% compressed clusters/);
      const ref = toRaw(img);
      const d = openDiskImage(img);
      expect(same(readAll(d), ref)).toBe(true);
      expect(same(ref, src.data)).toBe(true);
      const model = src.data.slice();
      d.write(SIZE / 2 + 1000, new Uint8Array(5000).fill(0x77));
      model.fill(0x77, SIZE / 2 + 1000, SIZE / 2 + 6000);
      const at = Math.ceil(SIZE / 2 / cs) * cs; // drop some compressed clusters
      const len = Math.min(4 * cs, Math.floor((SIZE - at) / cs) * cs);
      d.discard(at, len);
      model.fill(0, at, at + len);
      d.close();
      expectClean(img);
      expect(same(toRaw(img), model)).toBe(true);
    });
  }

  it("refcount widths 1, 8 and 64 bits: writes keep qemu-img check clean", () => {
    for (const bits of [1, 2, 8, 32, 64]) {
      const img = p(`r${bits}.qcow2`);
      qemuImg("convert", "-O", "qcow2", "-o", `refcount_bits=${bits},cluster_size=4096`, src.path, img);
      const d = openDiskImage(img);
      d.write(100_000, new Uint8Array(700_000).fill(9));
      d.discard(2_000_000, 500_000);
      d.close();
      expectClean(img);
      qemuIoRead(img, [[9, 100_000, 700_000]]);
    }
  });

  it("zero clusters written by qemu-io (write -z, with and without -u) read as zeros", () => {
    const img = p("zero.qcow2");
    qemuImg("convert", "-O", "qcow2", src.path, img);
    run("qemu-io", ["-c", "write -z 0 1M", "-c", "write -z -u 2M 1M", img]);
    const d = openDiskImage(img);
    const b = new Uint8Array(3 << 20);
    d.read(0, b);
    expect(b.subarray(0, 1 << 20).every((x) => x === 0)).toBe(true);
    expect(b.subarray(2 << 20, 3 << 20).every((x) => x === 0)).toBe(true);
    expect(same(b.subarray(1 << 20, 2 << 20), src.data.subarray(1 << 20, 2 << 20))).toBe(true);
    // writing into preallocated zero clusters
    d.write((1 << 20) - 10, new Uint8Array(20).fill(0xee));
    d.write(100, new Uint8Array(10).fill(0xef));
    d.close();
    expectClean(img);
    qemuIoRead(img, [
      [0xee, (1 << 20) - 10, 20],
      [0xef, 100, 10],
      [0, 0, 100],
      [0, 110, 65536],
    ]);
  });
});

describe("qcow2: backing files", () => {
  it("chains (raw base, relative names, another directory) read like qemu-img convert", () => {
    const base = makeSource(4 << 20, 5);
    const sub = join(dir, "chain");
    mkdirSync(join(sub, "deeper"), { recursive: true });
    writeFileSync(join(sub, "base.raw"), base.data);
    qemuImg(
      "create",
      "-f",
      "qcow2",
      "-b",
      "../base.raw",
      "-F",
      "raw",
      "-o",
      "cluster_size=4096",
      join(sub, "deeper", "mid.qcow2"),
    );
    run("qemu-io", [
      "-c",
      "write -P 0x11 100000 300000",
      "-c",
      "write -z 1M 64k",
      join(sub, "deeper", "mid.qcow2"),
    ]);
    qemuImg("create", "-f", "qcow2", "-b", "deeper/mid.qcow2", "-F", "qcow2", join(sub, "top.qcow2"), "6M");
    run("qemu-io", [
      "-c",
      "write -P 0x22 250000 10000",
      "-c",
      "write -P 0x33 5M 4096",
      join(sub, "top.qcow2"),
    ]);
    const top = join(sub, "top.qcow2");
    const ref = toRaw(top); // before we open it: qemu-img respects our lock
    const d = openDiskImage(top) as Qcow2DiskImage;
    expect(d.size).toBe(6 << 20);
    expect(same(readAll(d), ref)).toBe(true);
    // copy-on-write from the backing chain: partial writes keep the rest of the cluster
    d.write(1_500_000 + 7, new Uint8Array(3).fill(0x44));
    d.write((4 << 20) - 2, new Uint8Array(4).fill(0x45)); // straddles the end of the base
    d.close();
    expectClean(top);
    const info = imageInfo(top);
    expect(info.backingFile).toBe("deeper/mid.qcow2");
    expect(info.backingChain.map((i) => i.format)).toEqual(["qcow2", "raw"]);
    expect(info.backingChain[1]!.path).toBe(join(sub, "deeper", "../base.raw"));
    const raw = toRaw(top);
    expect(raw[1_500_000 + 6]).toBe(base.data[1_500_000 + 6]);
    expect(raw[1_500_000 + 7]).toBe(0x44);
    expect(raw[1_500_000 + 10]).toBe(base.data[1_500_000 + 10]);
    const d2 = openDiskImage(top);
    expect(same(readAll(d2), raw)).toBe(true);
    d2.close();
  });

  it("discard and write-zeroes hide the backing file (v3) or show it (v2 discard)", () => {
    const base = makeSource(2 << 20, 9);
    writeFileSync(join(dir, "b9.raw"), base.data);
    for (const compat of ["1.1", "0.10"]) {
      const top = p(`t9-${compat}.qcow2`);
      qemuImg("create", "-f", "qcow2", "-o", `compat=${compat}`, "-b", join(dir, "b9.raw"), "-F", "raw", top);
      const d = openDiskImage(top);
      d.writeZeroes(65536, 65536 * 2);
      d.discard(65536 * 8, 65536 * 2);
      d.writeZeroes(65536 * 12, 65536, { mayUnmap: true });
      d.close();
      expectClean(top);
      const raw = toRaw(top);
      expect(raw.subarray(65536, 65536 * 3).every((x) => x === 0)).toBe(true);
      expect(raw.subarray(65536 * 12, 65536 * 13).every((x) => x === 0)).toBe(true);
      const discarded = raw.subarray(65536 * 8, 65536 * 10);
      if (compat === "1.1") expect(discarded.every((x) => x === 0)).toBe(true);
      else expect(same(discarded, base.data.subarray(65536 * 8, 65536 * 10))).toBe(true);
    }
  });

  it("a missing backing file and backing loops give clear errors", () => {
    const b = p("gone.raw");
    writeFileSync(b, new Uint8Array(65536));
    const top = p("orphan.qcow2");
    qemuImg("create", "-f", "qcow2", "-b", b, "-F", "raw", top);
    run("rm", [b]);
    const e = expectCode(() => openDiskImage(top), "ENOENT");
    expect(e.message).toContain("backing file");
    expect(e.hint).toContain("qemu-img rebase");
    // a loop: a -> b -> a (qemu-img refuses to make one, so patch the name in)
    const a = join(dir, "loopA.qcow2");
    const bb = join(dir, "loopB.qcow2");
    qemuImg("create", "-f", "qcow2", a, "1M");
    qemuImg("create", "-f", "qcow2", "-b", a, "-F", "qcow2", bb);
    qemuImg("rebase", "-u", "-b", bb, "-F", "qcow2", a);
    expectCode(() => openDiskImage(bb), "CORRUPT");
    expectCode(() => imageInfo(bb), "CORRUPT");
  });

  it("backing files are locked shared: writers of a backing file are kept out, readers are not", async () => {
    const base = p("shared.raw");
    writeFileSync(base, new Uint8Array(1 << 20));
    const t1 = p("t1.qcow2");
    const t2 = p("t2.qcow2");
    createQcow2(t1, undefined, { backing: base, backingFormat: "raw" });
    createQcow2(t2, undefined, { backing: base, backingFormat: "raw" });
    const a = openDiskImage(t1);
    const b = openDiskImage(t2); // two overlays of one base
    expectCode(() => openDiskImage(base, { format: "raw" }), "LOCKED");
    openDiskImage(base, { format: "raw", readOnly: true }).close();
    expectCode(() => openDiskImage(t1), "LOCKED");
    a.close();
    b.close();
    // a process writing the base keeps overlays from opening
    const holder = await spawnFixture("hold.mjs", [base, '{"format":"raw"}']);
    expectCode(() => openDiskImage(t1), "LOCKED");
    await holder.kill();
    openDiskImage(t1).close();
  });
});

describe("qcow2: createQcow2 and imageInfo", () => {
  for (const [cs, version, bits] of [
    [65536, 3, 16],
    [512, 3, 16],
    [4096, 2, 16],
    [2 << 20, 3, 64],
    [65536, 3, 1],
  ] as const) {
    it(`creates images qemu-img accepts (cluster ${cs}, v${version}, ${bits}-bit refcounts)`, () => {
      const img = p("new.qcow2");
      createQcow2(img, 100 << 20, { clusterSize: cs, version, refcountBits: bits });
      expectClean(img);
      const q = JSON.parse(qemuImg("info", "--output=json", img)) as Record<string, unknown>;
      expect(q["virtual-size"]).toBe(100 << 20);
      expect(q["cluster-size"]).toBe(cs);
      const d = openDiskImage(img);
      d.write(12345, new Uint8Array(200_000).fill(0x61));
      d.close();
      expectClean(img);
      qemuIoRead(img, [[0x61, 12345, 200_000]]);
      const info = imageInfo(img);
      expect(info.qcow2?.version).toBe(version);
      expect(info.qcow2?.refcountBits).toBe(bits);
      expect(info.clusterSize).toBe(cs);
      expect(info.virtualSize).toBe(100 << 20);
    });
  }

  it("records the backing file (relative) and its probed format", () => {
    const base = p("cb.qcow2");
    createQcow2(base, 8 << 20);
    const top = join(dir, "ctop.qcow2");
    createQcow2(top, undefined, { backing: base.slice(dir.length + 1) });
    const q = JSON.parse(qemuImg("info", "--output=json", top)) as Record<string, unknown>;
    expect(q["backing-filename"]).toBe(base.slice(dir.length + 1));
    expect(q["backing-filename-format"]).toBe("qcow2");
    expect(q["virtual-size"]).toBe(8 << 20);
    expectClean(top);
    expect(run("qemu-img", ["info", "--backing-chain", top]).stdout).toContain("cb.qcow2");
    const info = imageInfo(top);
    expect(info.backingChain).toHaveLength(1);
    expect(info.backingChain[0]!.format).toBe("qcow2");
    expect(info.actualSize).toBeGreaterThan(0);
    expect(info.fileSize).toBe(statSync(top).size);
    expectCode(() => createQcow2(top, 1 << 20), "EEXIST");
    createQcow2(top, 1 << 20, { overwrite: true });
    expect(imageInfo(top).virtualSize).toBe(1 << 20);
    expectCode(() => createQcow2(p("x.qcow2"), 1000), "INVALID");
    expectCode(() => createQcow2(p("x.qcow2"), 1 << 20, { clusterSize: 3000 }), "INVALID");
    expectCode(() => createQcow2(p("x.qcow2"), undefined), "INVALID");
    expectCode(() => createQcow2(p("x.qcow2"), 1 << 20, { backing: "nope.raw" }), "ENOENT");
  });

  it("reuses clusters freed earlier in the session instead of growing the file", () => {
    const img = p("reuse.qcow2");
    createQcow2(img, 64 << 20);
    const d = openDiskImage(img) as Qcow2DiskImage;
    const data = new Uint8Array(8 << 20).fill(0x42);
    d.write(0, data);
    d.flush();
    const end = d.allocatedEnd;
    d.discard(0, 8 << 20);
    d.flush(); // the frees become durable here
    d.write(32 << 20, data.fill(0x43));
    d.flush();
    expect(d.allocatedEnd).toBe(end);
    d.close();
    expectClean(img);
    qemuIoRead(img, [
      [0, 0, 8 << 20],
      [0x43, 32 << 20, 8 << 20],
    ]);
  });

  it("grows the refcount table and blocks (512-byte clusters, 40 MiB of writes)", () => {
    const img = p("grow.qcow2");
    createQcow2(img, 64 << 20, { clusterSize: 512 });
    const d = openDiskImage(img) as Qcow2DiskImage;
    const chunk = new Uint8Array(1 << 20);
    for (let i = 0; i < 40; i++) {
      chunk.fill(i + 1);
      d.write(i * (1 << 20) + 512 * (i % 3), chunk);
      if (i % 8 === 0) d.flush();
    }
    d.close();
    expectClean(img);
    qemuIoRead(img, [
      [1, 0, 1 << 20],
      [40, 39 * (1 << 20) + 512 * 0, 1 << 20],
    ]);
    const before = imageInfo(img);
    expect(before.fileSize).toBeGreaterThan(40 << 20);
  });
});

describe("qcow2: features, flags and refusals", () => {
  function patchHeader(img: string, at: number, bytes: number[]): void {
    const fd = openSync(img, "r+");
    writeSync(fd, new Uint8Array(bytes), 0, bytes.length, at);
    closeSync(fd);
  }

  it("dirty images open read-only but not for writing", () => {
    const img = p("dirty.qcow2");
    createQcow2(img, 1 << 20);
    patchHeader(img, 72 + 7, [1]); // incompatible bit 0
    expect(imageInfo(img).dirty).toBe(true);
    const e = expectCode(() => openDiskImage(img), "DIRTY");
    expect(e.hint).toContain("qemu-img check -r all");
    openDiskImage(img, { readOnly: true }).close();
  });

  it("corrupt-flagged images open read-only only", () => {
    const img = p("corruptbit.qcow2");
    createQcow2(img, 1 << 20);
    patchHeader(img, 72 + 7, [2]);
    expectCode(() => openDiskImage(img), "CORRUPT");
    openDiskImage(img, { readOnly: true }).close();
  });

  it("unknown incompatible features are refused by name; unknown autoclear bits are cleared by writers", () => {
    const img = p("future.qcow2");
    createQcow2(img, 1 << 20);
    patchHeader(img, 72 + 7, [0x40]); // bit 6: unknown
    const e = expectCode(() => openDiskImage(img, { readOnly: true }), "UNSUPPORTED");
    expect(e.message).toContain("bit 6");
    expect(imageInfo(img).qcow2?.unknownIncompatibleFeatures).toEqual(["bit 6"]);
    // the feature name table names known bits
    patchHeader(img, 72 + 7, [0x10]);
    expect(expectCode(() => openDiskImage(img), "UNSUPPORTED").message).toContain("extended L2");
    patchHeader(img, 72 + 7, [0]);
    patchHeader(img, 88 + 7, [0x84]); // unknown autoclear bits
    openDiskImage(img, { readOnly: true }).close();
    const ro = readFileSync(img);
    expect(ro[95]).toBe(0x84);
    openDiskImage(img).close();
    expect(readFileSync(img)[95]).toBe(0);
    expectClean(img);
  });

  it("refuses zstd, extended L2, encryption and external data files clearly", () => {
    const z = p("zstd.qcow2");
    qemuImg("create", "-f", "qcow2", "-o", "compression_type=zstd", z, "1M");
    expect(expectCode(() => openDiskImage(z), "UNSUPPORTED").message).toContain("zstd");
    expect(imageInfo(z).qcow2?.compressionType).toBe("zstd");
    const e = p("extl2.qcow2");
    qemuImg("create", "-f", "qcow2", "-o", "extended_l2=on", e, "1M");
    expectCode(() => openDiskImage(e), "UNSUPPORTED");
    expect(imageInfo(e).qcow2?.extendedL2).toBe(true);
    const df = p("data.qcow2");
    qemuImg("create", "-f", "qcow2", "-o", `data_file=${p("data.raw")}`, df, "1M");
    expect(expectCode(() => openDiskImage(df), "UNSUPPORTED").message).toContain("external data file");
    const enc = p("enc.qcow2");
    const r = run("qemu-img", [
      "create",
      "-f",
      "qcow2",
      "--object",
      "secret,id=s0,data=pw",
      "-o",
      "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
      enc,
      "1M",
    ]);
    if (r.status === 0) {
      expectCode(() => openDiskImage(enc), "UNSUPPORTED");
      expect(imageInfo(enc).qcow2?.encrypted).toBe(true);
    }
  });

  it("internal snapshots: readable, not writable", () => {
    const img = p("snap.qcow2");
    createQcow2(img, 1 << 20);
    run("qemu-io", ["-c", "write -P 0x12 0 64k", img]);
    qemuImg("snapshot", "-c", "s1", img);
    run("qemu-io", ["-c", "write -P 0x13 0 4k", img]);
    const d = openDiskImage(img, { readOnly: true });
    const b = new Uint8Array(65536);
    d.read(0, b);
    expect(b[0]).toBe(0x13);
    expect(b[5000]).toBe(0x12);
    d.close();
    expect(expectCode(() => openDiskImage(img), "UNSUPPORTED").message).toContain("snapshots");
    expect(imageInfo(img).qcow2?.snapshots).toBe(1);
    // a snapshot disk works
    const s = openDiskImage(img, { snapshot: true });
    s.write(0, new Uint8Array(10));
    s.close();
  });

  it("an L2 table not marked as owned (no COPIED in L1) is copied before it is changed", () => {
    const img = p("l2cow.qcow2");
    createQcow2(img, 8 << 20, { clusterSize: 4096 });
    run("qemu-io", ["-c", "write -P 0x21 0 64k", img]);
    const bytes = readFileSync(img);
    const l1 = Number(bytes.readBigUInt64BE(40));
    bytes[l1] = bytes[l1]! & 0x7f; // clear COPIED on L1 entry 0
    writeFileSync(img, bytes);
    const d = openDiskImage(img, { l2CacheSize: 4096 * 4 });
    d.write(100, new Uint8Array(10).fill(0x22)); // in place: the data cluster is still ours alone
    d.write(64 << 10, new Uint8Array(4096).fill(0x23)); // needs an L2 entry: the table is copied first
    d.flush(); // the old table is freed here ...
    d.write(4 << 20, new Uint8Array(4096 * 3).fill(0x24)); // ... and its cluster reused
    d.close();
    expectClean(img);
    qemuIoRead(img, [
      [0x21, 0, 100],
      [0x22, 100, 10],
      [0x21, 110, (64 << 10) - 110],
      [0x23, 64 << 10, 4096],
      [0x24, 4 << 20, 4096 * 3],
    ]);
  });

  it("qcow version 1 and other versions are refused", () => {
    const img = p("v1.qcow");
    qemuImg("create", "-f", "qcow", img, "1M");
    expect(expectCode(() => openDiskImage(img), "UNSUPPORTED").message).toContain("version 1");
  });

  it("read-only opens refuse writes; flush and close are fine", () => {
    const img = p("ro.qcow2");
    createQcow2(img, 1 << 20);
    const d = openQcow2(img, { readOnly: true });
    expectCode(() => d.write(0, new Uint8Array(1)), "READ_ONLY");
    expectCode(() => d.read(1 << 20, new Uint8Array(1)), "RANGE");
    d.flush();
    d.close();
    expectCode(() => d.flush(), "CLOSED");
  });
});

describe("qcow2: snapshot disks", () => {
  for (const fmt of ["raw", "qcow2"] as const) {
    it(`writes go to a throwaway overlay; the ${fmt} image is untouched`, () => {
      const src = makeSource(2 << 20, 3);
      const img = p(`snapbase.${fmt}`);
      if (fmt === "raw") writeFileSync(img, src.data);
      else qemuImg("convert", "-O", "qcow2", src.path, img);
      const before = readFileSync(img);
      const tmp = join(dir, `tmp-${fmt}`);
      mkdirSync(tmp);
      const oldTmp = process.env.TMPDIR;
      process.env.TMPDIR = tmp;
      let d: DiskImage;
      try {
        d = openDiskImage(img, { snapshot: true });
      } finally {
        process.env.TMPDIR = oldTmp;
      }
      expect(readdirSync(tmp)).toEqual([]); // unlinked at once
      expect(d.readOnly).toBe(false);
      expect(d.path).toBe(img);
      expect(d.size).toBe(src.data.byteLength);
      const model = src.data.slice();
      d.write(1000, new Uint8Array(100_000).fill(0x99));
      model.fill(0x99, 1000, 101_000);
      d.discard(0, 1 << 20);
      d.write(1 << 20, new Uint8Array(10).fill(1));
      model.fill(1, 1 << 20, (1 << 20) + 10);
      d.flush();
      const got = readAll(d);
      // discard of the overlay's clusters makes them read as zeros (v3 zero flag over the base)
      expect(got.subarray(0, 1 << 20).every((x) => x === 0)).toBe(true);
      expect(same(got.subarray(1 << 20), model.subarray(1 << 20))).toBe(true);
      // the base is only locked shared: others may read it meanwhile
      openDiskImage(img, { readOnly: true }).close();
      expectCode(() => openDiskImage(img), "LOCKED");
      d.close();
      expect(same(readFileSync(img), before)).toBe(true);
      expect(readdirSync(tmp)).toEqual([]);
      openDiskImage(img).close();
    });
  }
});

describe("qcow2: QEMU sees our locks", () => {
  it("qemu-io cannot open an image we write; we cannot open one qemu-io writes", async () => {
    const img = p("ql.qcow2");
    createQcow2(img, 1 << 20);
    const d = openDiskImage(img);
    const r = run("qemu-io", ["-c", "read 0 512", img]);
    expect(r.status).not.toBe(0);
    expect(r.stderr + r.stdout).toMatch(/lock/i);
    // -U (force share) reads anyway, like imageInfo
    expect(run("qemu-img", ["info", "-U", img]).status).toBe(0);
    expect(imageInfo(img).format).toBe("qcow2");
    d.close();
    const q = spawn("qemu-io", ["-c", "sleep 20000", img]);
    await new Promise((r2) => setTimeout(r2, 400));
    try {
      expectCode(() => openDiskImage(img), "LOCKED");
      expectCode(() => openDiskImage(img, { readOnly: true }), "LOCKED");
    } finally {
      q.kill("SIGKILL");
      await new Promise((r2) => q.once("exit", r2));
    }
  });
});
