import { spawn } from "node:child_process";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { createQcow2, openDiskImage } from "../src/index.js";
import { packageRoot, qemuCheck, Rng, run, seedFor, tempDir } from "./helpers.js";

/*
 * Crash consistency: a child process writes with flushes and is killed with
 * SIGKILL at a random moment. Afterwards `qemu-img check` must find no
 * corruption (leaked clusters are allowed), and every sector must hold either
 * what the last acknowledged flush made durable or something written after it.
 */

const dir = tempDir("tskvm-crash-");
const SECTOR = 512;

interface Op {
  kind: "W" | "Z" | "D";
  seq: number;
  off: number;
  len: number;
  pat: number;
}

async function runAndKill(img: string, seed: number, afterMs: number, cache?: number): Promise<string> {
  const args = [join(packageRoot, "test", "fixtures", "crash-writer.mjs"), img, String(seed)];
  if (cache) args.push(String(cache));
  const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => {
    out += d;
  });
  child.stderr.setEncoding("utf8").on("data", (d: string) => {
    err += d;
  });
  await new Promise<void>((resolve, reject) => {
    const onData = () => {
      if (out.includes("ready")) {
        child.stdout.off("data", onData);
        resolve();
      }
    };
    child.stdout.on("data", onData);
    child.once("exit", (code) => reject(new Error(`writer exited early (${code}): ${err}`)));
  });
  await new Promise((r) => setTimeout(r, afterMs));
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  child.kill("SIGKILL");
  await exited;
  expect(err).toBe("");
  return out;
}

function verify(
  img: string,
  log: string,
  clusterSize: number,
  initial: (sector: number) => number,
): { ops: number; flushed: number } {
  const ops: Op[] = [];
  let flushedSeq = 0;
  for (const line of log.split("\n")) {
    const f = line.split(" ");
    if (f[0] === "F") flushedSeq = Number(f[1]);
    else if (f[0] === "W" || f[0] === "Z" || f[0] === "D")
      ops.push({
        kind: f[0],
        seq: Number(f[1]),
        off: Number(f[2]),
        len: Number(f[3]),
        pat: Number(f[4] ?? 0),
      });
  }
  const d = openDiskImage(img, { readOnly: true, format: "qcow2" });
  const data = new Uint8Array(d.size);
  d.read(0, data);
  d.close();
  const sectors = d.size / SECTOR;
  // Per sector: the value durable at the last flush, and the values any later op may have left.
  const durable = new Int16Array(sectors);
  for (let s = 0; s < sectors; s++) durable[s] = initial(s);
  const later: Set<number>[] = Array.from({ length: sectors }, () => new Set<number>());
  for (const op of ops) {
    let a = op.off;
    let b = op.off + op.len;
    if (op.kind === "D") {
      // discard drops whole clusters only (and reads zeros without a backing file)
      a = Math.ceil(a / clusterSize) * clusterSize;
      b = Math.floor(b / clusterSize) * clusterSize;
    }
    const value = op.kind === "W" ? op.pat : 0;
    for (let s = a / SECTOR; s < b / SECTOR; s++) {
      if (op.seq <= flushedSeq) durable[s] = value;
      else later[s]!.add(value);
    }
  }
  for (let s = 0; s < sectors; s++) {
    const v = data[s * SECTOR]!;
    const sector = data.subarray(s * SECTOR, (s + 1) * SECTOR);
    if (!sector.every((x) => x === v)) throw new Error(`sector ${s} is torn`);
    if (v !== durable[s] && !later[s]!.has(v))
      throw new Error(
        `sector ${s} holds ${v}; durable value ${durable[s]}, later values ${[...later[s]!].join(",")} (flushed up to seq ${flushedSeq})`,
      );
  }
  return { ops: ops.length, flushed: flushedSeq };
}

describe("qcow2: crash consistency (SIGKILL)", () => {
  const seed = seedFor("qcow2-crash");
  const configs = [
    { version: 3 as const, clusterSize: 4096 },
    { version: 3 as const, clusterSize: 65536 },
    { version: 2 as const, clusterSize: 4096 },
    { version: 3 as const, clusterSize: 16384, cache: 4 * 16384 },
  ];
  configs.forEach((cfg, i) => {
    it(`v${cfg.version}, ${cfg.clusterSize}-byte clusters${cfg.cache ? ", tiny caches" : ""}: 3 kills in a row`, async () => {
      const rng = new Rng(seed + i);
      const img = join(dir, `crash-${i}.qcow2`);
      const size = 16 << 20;
      createQcow2(img, size, { clusterSize: cfg.clusterSize, version: cfg.version });
      // some existing data, so in-place overwrites are exercised too
      run("qemu-io", ["-c", "write -P 0xee 0 2M", img]);
      let initial = (s: number): number => (s * SECTOR < 2 << 20 ? 0xee : 0);
      for (let round = 0; round < 3; round++) {
        const log = await runAndKill(img, rng.next(), 60 + rng.int(400), cfg.cache);
        const c = qemuCheck(img);
        expect(c.json.corruptions ?? 0, c.text).toBe(0);
        expect(c.json["check-errors"] ?? 0, c.text).toBe(0);
        const r = verify(img, log, cfg.clusterSize, initial);
        expect(r.ops).toBeGreaterThan(0);
        // the next round starts from whatever is there now
        const d = openDiskImage(img, { readOnly: true, format: "qcow2" });
        const now = new Uint8Array(size);
        d.read(0, now);
        d.close();
        initial = (s: number) => now[s * SECTOR]!;
        console.log(
          `v${cfg.version}/${cfg.clusterSize} round ${round}: ${r.ops} ops, flushed through ${r.flushed}, leaks ${c.json.leaks ?? 0}`,
        );
      }
    });
  });
});
