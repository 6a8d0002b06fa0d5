import { spawn, spawnSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll } from "vitest";

export const packageRoot = join(dirname(fileURLToPath(import.meta.url)), "..");

/** A fresh temporary directory, removed after the test file. */
export function tempDir(prefix = "tskvm-disk-", base = tmpdir()): string {
  const dir = mkdtempSync(join(base, prefix));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A small, fast, seedable PRNG (xorshift128+ on 32-bit halves would do; this is sfc32). */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;
  constructor(readonly seed: number) {
    this.a = 0x9e3779b9;
    this.b = 0x243f6a88;
    this.c = 0xb7e15162;
    this.d = seed >>> 0;
    for (let i = 0; i < 15; i++) this.next();
  }
  next(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor((this.next() / 4294967296) * n);
  }
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i += 4) {
      const v = this.next();
      out[i] = v;
      if (i + 1 < n) out[i + 1] = v >>> 8;
      if (i + 2 < n) out[i + 2] = v >>> 16;
      if (i + 3 < n) out[i + 3] = v >>> 24;
    }
    return out;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
}

/** Seed from TSKVM_SEED or a random one; always printed so a failure can be replayed. */
export function seedFor(name: string): number {
  const env = process.env.TSKVM_SEED;
  const seed = env ? Number.parseInt(env, 10) >>> 0 : (Math.random() * 2 ** 32) >>> 0;
  console.log(`[${name}] seed=${seed} (replay with TSKVM_SEED=${seed})`);
  return seed;
}

export interface RunResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

export function run(cmd: string, args: string[], opts: { cwd?: string } = {}): RunResult {
  const r = spawnSync(cmd, args, { encoding: "utf8", cwd: opts.cwd, maxBuffer: 64 << 20 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Runs a command and throws with its output unless it exits 0. */
export function must(cmd: string, args: string[], opts: { cwd?: string } = {}): string {
  const r = run(cmd, args, opts);
  if (r.status !== 0)
    throw new Error(`${cmd} ${args.join(" ")} exited ${r.status}\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

export function qemuImg(...args: string[]): string {
  return must("qemu-img", args);
}

/** `qemu-img check` as JSON, without failing on a non-zero exit (leaks exit 3, corruption 2). */
export function qemuCheck(path: string): { status: number | null; json: QemuCheck; text: string } {
  const r = run("qemu-img", ["check", "--output=json", path]);
  let json: QemuCheck = {};
  try {
    json = JSON.parse(r.stdout) as QemuCheck;
  } catch {
    json = {};
  }
  return { status: r.status, json, text: r.stdout + r.stderr };
}

export interface QemuCheck {
  corruptions?: number;
  leaks?: number;
  "check-errors"?: number;
  "image-end-offset"?: number;
}

export function readWhole(path: string, length: number): Uint8Array {
  const fd = openSync(path, "r");
  try {
    const b = new Uint8Array(length);
    readSync(fd, b, 0, length, 0);
    return b;
  } finally {
    closeSync(fd);
  }
}

/** Spawns a node child running `script` (an .mjs under test/fixtures) and resolves once it prints `ready`. */
export function spawnFixture(
  script: string,
  args: string[],
): Promise<{ kill: () => Promise<void>; output: () => string }> {
  const child = spawn(process.execPath, [join(packageRoot, "test", "fixtures", script), ...args], {
    stdio: ["pipe", "pipe", "pipe"],
  });
  let out = "";
  child.stdout.setEncoding("utf8");
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (d: string) => {
    out += d;
  });
  return new Promise((resolve, reject) => {
    child.stdout.on("data", (d: string) => {
      out += d;
      if (out.includes("ready"))
        resolve({
          kill: () =>
            new Promise<void>((res) => {
              if (child.exitCode !== null) return res();
              child.once("exit", () => res());
              child.kill("SIGKILL");
            }),
          output: () => out,
        });
    });
    child.once("exit", (code) => reject(new Error(`${script} exited ${code} before ready:\n${out}`)));
  });
}
