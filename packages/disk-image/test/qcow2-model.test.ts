import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { createQcow2, type DiskImage, openDiskImage } from "../src/index.js";
import { qemuCheck, qemuImg, Rng, seedFor, tempDir } from "./helpers.js";

/*
 * Thousands of random reads, writes, discards, write-zeroes, flushes and
 * reopens against qcow2 and a plain in-memory model; the contents must always
 * be equal, and at the end qemu-img must find the image clean and read the
 * same bytes. Replay a failure with TSKVM_SEED=<seed printed below>.
 */

const dir = tempDir("tskvm-model-");

interface Config {
  name: string;
  version: 2 | 3;
  clusterSize: number;
  size: number;
  backing?: "raw" | "qcow2";
  backingSize?: number;
  /** Start from an image qemu-img compressed. */
  compressed?: boolean;
  refcountBits?: number;
  ops: number;
  /** Tiny caches force write-back on eviction. */
  l2CacheSize?: number;
  refcountCacheSize?: number;
}

const configs: Config[] = [
  {
    name: "v3, 4 KiB clusters, tiny caches",
    version: 3,
    clusterSize: 4096,
    size: 8 << 20,
    ops: 3000,
    l2CacheSize: 4 * 4096,
    refcountCacheSize: 4 * 4096,
  },
  {
    name: "v3, 64 KiB clusters, raw backing (shorter)",
    version: 3,
    clusterSize: 65536,
    size: 8 << 20,
    backing: "raw",
    backingSize: (5 << 20) + 1536,
    ops: 2500,
  },
  {
    name: "v2, 512 B clusters, qcow2 backing",
    version: 2,
    clusterSize: 512,
    size: 4 << 20,
    backing: "qcow2",
    backingSize: 4 << 20,
    ops: 2500,
    l2CacheSize: 16 * 512,
  },
  { name: "v2, 64 KiB clusters, no backing", version: 2, clusterSize: 65536, size: 8 << 20, ops: 1500 },
  { name: "v3, 2 MiB clusters", version: 3, clusterSize: 2 << 20, size: 12 << 20, ops: 600 },
  {
    name: "v3, 512 B clusters, 64-bit refcounts (the refcount table grows)",
    version: 3,
    clusterSize: 512,
    size: 3 << 20,
    refcountBits: 64,
    ops: 1500,
    refcountCacheSize: 8 * 512,
  },
  {
    name: "v3, compressed start, 16 KiB clusters",
    version: 3,
    clusterSize: 16384,
    size: 6 << 20,
    compressed: true,
    ops: 2000,
  },
];

function randomContent(rng: Rng, size: number): Uint8Array {
  const data = new Uint8Array(size);
  for (let i = 0; i < 30; i++) {
    const len = 1 + rng.int(Math.min(size, 300_000));
    const off = rng.int(size - len + 1);
    if (rng.int(3) === 0) data.fill(1 + rng.int(255), off, off + len);
    else data.set(rng.bytes(len), off);
  }
  return data;
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(
    Buffer.from(b.buffer, b.byteOffset, b.byteLength),
  );
}

/** Splits `length` bytes into 1–4 buffers (some empty), as views of one allocation. */
function scatter(rng: Rng, length: number): Uint8Array[] {
  const mem = new Uint8Array(length + 64);
  const parts = 1 + rng.int(4);
  const cuts = Array.from({ length: parts - 1 }, () => rng.int(length + 1)).sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let prev = 0;
  let gap = 0;
  for (const c of [...cuts, length]) {
    out.push(mem.subarray(prev + gap, c + gap));
    prev = c;
    gap += rng.int(2) * 8; // views need not be adjacent
  }
  return out;
}

function runConfig(cfg: Config, seed: number): void {
  const rng = new Rng(seed);
  const cs = cfg.clusterSize;
  const img = join(dir, `${seed}-${cfg.clusterSize}-${cfg.version}.qcow2`);
  const model = new Uint8Array(cfg.size);
  let backingData: Uint8Array | undefined;
  const compat = cfg.version === 2 ? "0.10" : "1.1";
  if (cfg.backing) {
    const bsize = cfg.backingSize ?? cfg.size;
    backingData = randomContent(rng, bsize);
    const raw = join(dir, `${seed}-base.raw`);
    writeFileSync(raw, backingData);
    let base = raw;
    if (cfg.backing === "qcow2") {
      base = join(dir, `${seed}-base.qcow2`);
      qemuImg("convert", "-O", "qcow2", "-o", "cluster_size=4096", raw, base);
    }
    qemuImg(
      "create",
      "-f",
      "qcow2",
      "-o",
      `cluster_size=${cs},compat=${compat}`,
      "-b",
      base,
      "-F",
      cfg.backing,
      img,
      String(cfg.size),
    );
    model.set(backingData.subarray(0, Math.min(bsize, cfg.size)));
  } else if (cfg.compressed) {
    const start = randomContent(rng, cfg.size);
    const raw = join(dir, `${seed}-start.raw`);
    writeFileSync(raw, start);
    qemuImg("convert", "-c", "-O", "qcow2", "-o", `cluster_size=${cs},compat=${compat}`, raw, img);
    model.set(start);
  } else {
    createQcow2(img, cfg.size, { clusterSize: cs, version: cfg.version, refcountBits: cfg.refcountBits });
  }
  const open = () =>
    openDiskImage(img, { l2CacheSize: cfg.l2CacheSize, refcountCacheSize: cfg.refcountCacheSize });
  let d: DiskImage = open();
  const size = cfg.size;
  const maxLen = Math.min(size, 3 * cs + 5000);
  const counts: Record<string, number> = {};
  const count = (k: string) => {
    counts[k] = (counts[k] ?? 0) + 1;
  };
  const randomRange = (): [number, number] => {
    const len = rng.int(4) === 0 ? 1 + rng.int(1024) : 1 + rng.int(maxLen);
    const aligned = rng.int(3) === 0;
    let off = rng.int(size - len + 1);
    if (aligned) off -= off % 512;
    return [off, len];
  };
  const discardModel = (off: number, len: number) => {
    const first = Math.ceil(off / cs);
    const last = off + len === size ? Math.ceil(size / cs) - 1 : Math.floor((off + len) / cs) - 1;
    for (let ci = first; ci <= last; ci++) {
      const a = ci * cs;
      const b = Math.min(a + cs, size);
      if (cfg.version === 2 && backingData) {
        model.fill(0, a, b);
        model.set(
          backingData.subarray(Math.min(a, backingData.byteLength), Math.min(b, backingData.byteLength)),
          a,
        );
      } else model.fill(0, a, b);
    }
  };

  for (let op = 0; op < cfg.ops; op++) {
    const r = rng.int(100);
    const where = () => `seed ${seed}, op ${op}`;
    if (r < 40) {
      const [off, len] = randomRange();
      const bufs = scatter(rng, len);
      let o = off;
      for (const b of bufs) {
        b.set(rng.int(3) === 0 ? new Uint8Array(b.byteLength).fill(rng.int(256)) : rng.bytes(b.byteLength));
        model.set(b, o);
        o += b.byteLength;
      }
      d.writev(off, bufs);
      count("write");
    } else if (r < 72) {
      const [off, len] = randomRange();
      const bufs = scatter(rng, len);
      d.readv(off, bufs);
      let o = off;
      for (const b of bufs) {
        if (!same(b, model.subarray(o, o + b.byteLength))) {
          let i = 0;
          while (b[i] === model[o + i]) i++;
          throw new Error(
            `${where()}: read [${off}, +${len}) differs at ${o + i}: got ${b[i]}, model ${model[o + i]}`,
          );
        }
        o += b.byteLength;
      }
      count("read");
    } else if (r < 80) {
      const [off, len] = rng.int(2) ? randomRange() : [rng.int(size / cs) * cs, cs * (1 + rng.int(4))];
      const l = Math.min(len, size - off);
      d.discard(off, l);
      discardModel(off, l);
      count("discard");
    } else if (r < 88) {
      const [off, len] = rng.int(2) ? randomRange() : [rng.int(size / cs) * cs, cs * (1 + rng.int(4))];
      const l = Math.min(len, size - off);
      d.writeZeroes(off, l, { mayUnmap: rng.int(2) === 0 });
      model.fill(0, off, off + l);
      count("writeZeroes");
    } else if (r < 96) {
      d.flush();
      count("flush");
    } else if (r < 98) {
      d.close();
      d = open();
      count("reopen");
    } else {
      const all = new Uint8Array(size);
      d.read(0, all);
      expect(same(all, model), `${where()}: whole-disk compare`).toBe(true);
      count("full read");
    }
  }
  const all = new Uint8Array(size);
  d.read(0, all);
  expect(same(all, model), `seed ${seed}: final compare`).toBe(true);
  d.close();
  const c = qemuCheck(img);
  expect(c.json.corruptions ?? 0, `seed ${seed}: ${c.text}`).toBe(0);
  expect(c.json.leaks ?? 0, `seed ${seed}: ${c.text}`).toBe(0);
  expect(c.status, `seed ${seed}: ${c.text}`).toBe(0);
  const out = join(dir, `${seed}-out.raw`);
  qemuImg("convert", "-O", "raw", img, out);
  expect(
    same(new Uint8Array(readFileSync(out)), model),
    `seed ${seed}: qemu-img convert output differs from the model`,
  ).toBe(true);
  console.log(`[${cfg.name}] seed=${seed} ${JSON.stringify(counts)}`);
}

describe("qcow2 against an in-memory model", () => {
  const base = seedFor("qcow2-model");
  configs.forEach((cfg, i) => {
    it(cfg.name, () => {
      runConfig(cfg, (base + i * 0x9e3779b9) >>> 0);
    });
  });
});
