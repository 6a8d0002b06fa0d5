import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, posix } from "node:path";
import { performance } from "node:perf_hooks";
import type { Readable } from "node:stream";
import { StringDecoder } from "node:string_decoder";
import { fileURLToPath } from "node:url";
import { type CpioEntry, writeInitramfs } from "@tskvm/guest-kit";
import { prepareSandboxImage, type SandboxImage } from "./image.js";
import { HOSTROOT_TAG, SANDBOX_RUN_DIR, SANDBOX_WORK } from "./init.js";

/** A file for {@link SandboxOptions.extraFiles}: its contents, or contents and a mode (default 0644). */
export type SandboxFile = string | Uint8Array | { data: string | Uint8Array; mode?: number };

/** Options of {@link runInSandbox}. Every field is optional. */
export interface SandboxOptions {
  /**
   * Bound on one attempt (boot + script + power-off), in ms. Default: `TSKVM_SANDBOX_TIMEOUT`
   * (seconds) if set, else 10 minutes. When it runs out QEMU is killed (and the run retried once,
   * see {@link retryOnHang}).
   */
  timeoutMs?: number;
  /**
   * Bound on the boot alone (QEMU start until the script starts), in ms; a boot that takes longer
   * is a hang. Default: `TSKVM_SANDBOX_BOOT_TIMEOUT` (seconds) if set, else 120 s (a normal boot
   * takes about 5 s); never more than {@link timeoutMs}.
   */
  bootTimeoutMs?: number;
  /**
   * Whether a timed-out attempt is retried once (the sandbox itself hangs about one boot in 30).
   * Default true. A second hang is returned as `timedOut: true`: that is a bug, not bad luck.
   */
  retryOnHang?: boolean;
  /** Guest memory in MiB. Default 4096 (only what the guest touches is allocated on the host). */
  memMiB?: number;
  /** Guest vCPUs (each one is a host thread under `-accel tcg,thread=multi`). Default 2. */
  cpus?: number;
  /**
   * Environment of the script. The script gets nothing from the host's environment: only
   * `PATH` (the host node's directory, then the usual system dirs), `HOME` (the host's, read-only),
   * `SANDBOX=1`, `SANDBOX_WORK`, and these, which override those.
   */
  env?: Record<string, string>;
  /** Working directory of the script, a path inside the sandbox. Default `$SANDBOX_WORK`. */
  cwd?: string;
  /** Host folders under /tmp or /run to keep visible (read-only); the cwd and this checkout always are. */
  keepHostPaths?: readonly string[];
  /**
   * Files to put in `$SANDBOX_WORK` before the script starts, by relative path (subdirectories
   * are created). They travel in the initramfs, so keep them to a few tens of MiB.
   */
  extraFiles?: Record<string, SandboxFile>;
  /** Receives the script's output (stdout and stderr, interleaved as written) while it runs. */
  onOutput?: (chunk: string) => void;
  /** Receives the guest's console (kernel messages and the sandbox init's log) while it runs. */
  onConsole?: (chunk: string) => void;
  /** Appended to the kernel command line. */
  append?: string;
  /** Aborts the run: QEMU is killed and the promise rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Progress lines (downloads, image builds, hangs). Default: written to stderr. */
  log?: (line: string) => void;
  /** Root of the download and image cache. Default guest-kit's `defaultCacheDir()`. */
  cacheDir?: string;
  /** The QEMU binary. Default `TSKVM_SANDBOX_QEMU`, else `qemu-system-x86_64` from PATH. */
  qemu?: string;
}

/** One attempt that ran out of time and was killed. */
export interface SandboxHang {
  /** 1-based attempt number. */
  attempt: number;
  /** `boot`: the script never started; `run`: it started but did not finish. */
  phase: "boot" | "run";
  /** How long the attempt ran before it was killed, in ms. */
  elapsedMs: number;
  /** The last lines of the guest console, for the bug report. */
  consoleTail: string;
}

/** What {@link runInSandbox} returns. Times are of the last attempt. */
export interface SandboxResult {
  /** The script's exit status (0–255; 128+N when killed by signal N). -1 when it timed out. */
  exitCode: number;
  /**
   * Everything the script wrote to stdout and stderr, exactly (no `\r`, no kernel messages), of
   * the last attempt. On a timeout: what it wrote until it was killed.
   */
  output: string;
  /** The last attempt ran out of time ({@link SandboxOptions.timeoutMs} or `bootTimeoutMs`). */
  timedOut: boolean;
  /** How many times the sandbox was booted: 1, or 2 after a hang. */
  attempts: number;
  /** An attempt hung and was retried (it is also logged to stderr and listed in {@link hangs}). */
  retriedAfterHang: boolean;
  /** The attempts that hung. */
  hangs: SandboxHang[];
  /** From QEMU start until the script started, in ms (-1 if it never started). */
  bootMs: number;
  /** From the script's start until it exited, in ms (-1 if it did not finish). */
  runMs: number;
  /** Problems the sandbox noticed that did not stop the run, e.g. `/dev/kvm is missing`. */
  warnings: string[];
  /** The tail (up to 256 KiB) of the guest console: kernel messages and the init's log. */
  console: string;
}

/** The sandbox itself failed (not the script): QEMU could not start, the guest crashed, etc. */
export class SandboxError extends Error {
  constructor(
    message: string,
    /** The tail of the guest console, when there was one. */
    readonly consoleTail = "",
    /** What a person can do about it. */
    readonly hint = "",
  ) {
    super(
      message +
        (hint ? `\n  hint: ${hint}` : "") +
        (consoleTail ? `\n--- guest console (tail) ---\n${consoleTail}` : ""),
    );
    this.name = "SandboxError";
  }
}

const DEFAULT_TIMEOUT_MS = 10 * 60_000;
const DEFAULT_BOOT_TIMEOUT_MS = 120_000;
/** After the script's exit, how long the guest may take to power off before it is killed. */
const POWEROFF_GRACE_MS = 20_000;
const CONSOLE_KEEP = 256 * 1024;
/** Linux's MAX_ARG_STRLEN: the script is passed as one argument of `sh -c`. */
const MAX_SCRIPT_BYTES = 128 * 1024 - 1;

function envSeconds(name: string): number | undefined {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === "") return undefined;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0)
    throw new RangeError(`${name}=${raw} is not a positive number of seconds`);
  return Math.round(n * 1000);
}

/** The QEMU binary the sandbox uses. */
export function qemuBinary(options: { qemu?: string } = {}): string {
  return options.qemu ?? process.env.TSKVM_SANDBOX_QEMU ?? "qemu-system-x86_64";
}

// ---------------------------------------------------------------------------------------------
// Cleanup of QEMU processes: on normal completion (finally), on process exit, on SIGINT/SIGTERM/
// SIGHUP, and, where util-linux's setpriv exists, by the kernel when this thread dies (pdeathsig).

const live = new Set<ChildProcess>();
const liveDirs = new Set<string>();
let exitHookInstalled = false;
const SIGNALS: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];

function killAll(): void {
  for (const child of live) {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
  for (const dir of liveDirs) rmSync(dir, { recursive: true, force: true });
}

function onSignal(sig: NodeJS.Signals): void {
  killAll();
  for (const s of SIGNALS) process.off(s, onSignal);
  // Without a listener of its own the process would now ignore the signal: re-raise it.
  if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
}

function track(child: ChildProcess): void {
  if (!exitHookInstalled) {
    process.on("exit", killAll);
    exitHookInstalled = true;
  }
  if (live.size === 0) for (const s of SIGNALS) process.on(s, onSignal);
  live.add(child);
}

function untrack(child: ChildProcess): void {
  live.delete(child);
  if (live.size === 0) for (const s of SIGNALS) process.off(s, onSignal);
}

let setprivOk: boolean | undefined;
function hasSetprivPdeathsig(): boolean {
  if (setprivOk === undefined) {
    const r = spawnSync("setpriv", ["--pdeathsig", "KILL", "--", "true"], { stdio: "ignore" });
    setprivOk = r.status === 0;
  }
  return setprivOk;
}

/** Number of QEMU processes started by this module that are still running. */
export function liveSandboxCount(): number {
  return live.size;
}

const RUN_DIR_PREFIX = "tskvm-sandbox-";

/** Removes run dirs (each holds one initrd) left by processes that were SIGKILLed. */
function removeStaleRunDirs(): void {
  let names: string[];
  try {
    names = readdirSync(tmpdir());
  } catch {
    return;
  }
  for (const name of names) {
    const m = new RegExp(`^${RUN_DIR_PREFIX}(\\d+)-`).exec(name);
    if (!m || Number(m[1]) === process.pid) continue;
    try {
      process.kill(Number(m[1]), 0);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ESRCH")
        rmSync(join(tmpdir(), name), { recursive: true, force: true });
    }
  }
}

// ---------------------------------------------------------------------------------------------

function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

function fileData(f: SandboxFile): { data: Uint8Array; mode: number } {
  if (typeof f === "string") return { data: Buffer.from(f), mode: 0o644 };
  if (f instanceof Uint8Array) return { data: f, mode: 0o644 };
  return { data: typeof f.data === "string" ? Buffer.from(f.data) : f.data, mode: f.mode ?? 0o644 };
}

/**
 * The per-run cpio members: `/sandbox/{script,env,cwd,work/...}` (the nonce is added per attempt).
 * Validates the script and options, so that mistakes fail before anything boots.
 */
/**
 * Host folders the sandbox's own tmpfs mounts (/tmp, /run) would hide but the run needs:
 * the caller's cwd, `options.cwd`, this checkout (CI may clone into /tmp) and `keepHostPaths`.
 */
function hiddenHostPaths(options: SandboxOptions): string[] {
  const checkout = fileURLToPath(new URL("../../../", import.meta.url)).replace(/\/$/, "");
  const wanted = [process.cwd(), options.cwd, checkout, ...(options.keepHostPaths ?? [])];
  const hidden = wanted.filter(
    (p): p is string =>
      typeof p === "string" &&
      /^\/(tmp|run)\/./.test(p) &&
      !p.includes("\n") &&
      !p.startsWith(SANDBOX_WORK) &&
      !p.startsWith(SANDBOX_RUN_DIR),
  );
  // Parents first, so a folder mounted later is not hidden by its parent.
  return [...new Set(hidden)].sort((a, b) => a.length - b.length);
}

function runEntries(script: string, options: SandboxOptions): CpioEntry[] {
  if (script.includes("\0")) throw new RangeError("the script contains a NUL byte");
  if (Buffer.byteLength(script) > MAX_SCRIPT_BYTES) {
    throw new RangeError(
      `the script is ${Buffer.byteLength(script)} bytes; at most ${MAX_SCRIPT_BYTES} fit in 'sh -c'. ` +
        "Put the bulk in extraFiles and run it from $SANDBOX_WORK.",
    );
  }
  const cwd = options.cwd ?? SANDBOX_WORK;
  if (!cwd.startsWith("/") || cwd.includes("\n"))
    throw new RangeError(`cwd must be an absolute path: ${cwd}`);
  const path = [
    ...new Set([
      dirname(process.execPath),
      "/usr/local/sbin",
      "/usr/local/bin",
      "/usr/sbin",
      "/usr/bin",
      "/sbin",
      "/bin",
    ]),
  ];
  const env: Record<string, string> = {
    PATH: path.join(":"),
    HOME: process.env.HOME ?? "/root",
    SANDBOX: "1",
    SANDBOX_WORK,
    ...options.env,
  };
  const envLines: string[] = [];
  for (const [k, v] of Object.entries(env)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new RangeError(`bad environment variable name: ${k}`);
    if (v.includes("\0")) throw new RangeError(`environment variable ${k} contains a NUL byte`);
    envLines.push(`export ${k}=${shellQuote(v)}\n`);
  }
  const entries: CpioEntry[] = [
    { type: "directory", path: "sandbox" },
    { type: "file", path: "sandbox/script", data: Buffer.from(script) },
    { type: "file", path: "sandbox/env", data: Buffer.from(envLines.join("")) },
    { type: "file", path: "sandbox/cwd", data: Buffer.from(cwd) },
    {
      type: "file",
      path: "sandbox/keep",
      data: Buffer.from(
        hiddenHostPaths(options)
          .map((p) => `${p}\n`)
          .join(""),
      ),
    },
    { type: "directory", path: "sandbox/work" },
  ];
  const dirs = new Set<string>();
  for (const [rel, f] of Object.entries(options.extraFiles ?? {})) {
    const norm = posix.normalize(rel);
    if (rel.startsWith("/") || norm.startsWith("..") || norm === "." || rel.includes("\0")) {
      throw new RangeError(
        `extraFiles: bad path ${JSON.stringify(rel)} (relative paths inside $SANDBOX_WORK only)`,
      );
    }
    const parts = norm.split("/");
    for (let i = 1; i < parts.length; i++) {
      const d = parts.slice(0, i).join("/");
      if (!dirs.has(d)) {
        dirs.add(d);
        entries.push({ type: "directory", path: `sandbox/work/${d}` });
      }
    }
    const { data, mode } = fileData(f);
    entries.push({ type: "file", path: `sandbox/work/${norm}`, data, mode });
  }
  return entries;
}

function qemuArgs(image: SandboxImage, initrd: string, nonce: string, options: SandboxOptions): string[] {
  const append = ["console=ttyS0", "panic=-1", "quiet", "rdinit=/init", options.append ?? ""]
    .join(" ")
    .trim();
  return [
    "-name",
    `tskvm-sandbox-${nonce}`,
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-machine",
    "pc",
    "-accel",
    "tcg,thread=multi",
    "-cpu",
    "max",
    "-smp",
    String(options.cpus ?? 2),
    "-m",
    String(options.memMiB ?? 4096),
    "-no-reboot",
    "-kernel",
    image.kernelPath,
    "-initrd",
    initrd,
    "-append",
    append,
    "-virtfs",
    `local,path=/,mount_tag=${HOSTROOT_TAG},security_model=none,readonly=on,multidevs=remap`,
    // ttyS0: console, ttyS1: the script's output, ttyS2: control lines (see init.ts). Each is
    // one end of a socketpair that node made as the child's fd 3, 4, 5.
    ...[3, 4, 5].flatMap((fd) => [
      "-chardev",
      `socket,id=serial${fd - 3},fd=${fd}`,
      "-serial",
      `chardev:serial${fd - 3}`,
    ]),
  ];
}

interface Attempt {
  kind: "exit" | "timeout";
  phase: "boot" | "run";
  exitCode: number;
  output: string;
  bootMs: number;
  runMs: number;
  elapsedMs: number;
  warnings: string[];
  console: string;
}

function tail(text: string, lines = 40): string {
  return text.split("\n").slice(-lines).join("\n");
}

/** Longest suffix of `text` that is a proper prefix of `marker`. */
function partialSuffix(text: string, marker: string): number {
  for (let n = Math.min(text.length, marker.length - 1); n > 0; n--) {
    if (marker.startsWith(text.slice(text.length - n))) return n;
  }
  return 0;
}

function runAttempt(
  image: SandboxImage,
  initrd: string,
  nonce: string,
  options: SandboxOptions,
  timeoutMs: number,
  bootTimeoutMs: number,
): Promise<Attempt> {
  const debug = !!process.env.TSKVM_SANDBOX_DEBUG;
  const qemu = qemuBinary(options);
  const args = qemuArgs(image, initrd, nonce, options);
  const [cmd, argv] = hasSetprivPdeathsig()
    ? ["setpriv", ["--pdeathsig", "KILL", "--", qemu, ...args]]
    : [qemu, args];

  return new Promise<Attempt>((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(cmd, argv, { stdio: ["ignore", "pipe", "pipe", "pipe", "pipe", "pipe"] });
    track(child);

    let consoleText = "";
    let qemuStderr = "";
    const outDecoder = new StringDecoder("utf8");
    let outText = "";
    let streamed = 0; // chars of outText handed to onOutput
    let endSeen = false;
    const endMarker = `\n@@SANDBOX-END ${nonce} `;
    let ctlBuf = "";
    let startAt = -1;
    let exitAt = -1;
    let exitCode: number | undefined;
    let failure: string | undefined;
    const warnings: string[] = [];
    let timedOut: "boot" | "run" | undefined;
    let settled = false;
    const timers: NodeJS.Timeout[] = [];

    const kill = () => {
      try {
        child.kill("SIGKILL");
      } catch {
        // already gone
      }
    };
    let aborted = false;
    const onAbort = () => {
      // Settled in the 'close' handler: the promise rejects once QEMU is really gone.
      aborted = true;
      kill();
    };
    const finish = (fn: () => void) => {
      if (settled) return;
      settled = true;
      for (const t of timers) clearTimeout(t);
      options.signal?.removeEventListener("abort", onAbort);
      fn();
    };
    if (options.signal?.aborted) {
      queueMicrotask(onAbort);
    } else {
      options.signal?.addEventListener("abort", onAbort, { once: true });
    }

    const streamOutput = (final: boolean) => {
      if (!options.onOutput || endSeen) return;
      let upto = outText.length;
      const at = outText.indexOf(endMarker, Math.max(0, streamed - endMarker.length));
      if (at >= 0) upto = at;
      else if (!final) upto -= partialSuffix(outText, endMarker);
      if (upto > streamed) {
        options.onOutput(outText.slice(streamed, upto));
        streamed = upto;
      }
      if (at >= 0) endSeen = true;
    };

    const stdio = child.stdio as (Readable | null)[];
    stdio[1]?.on("data", (b: Buffer) => {
      qemuStderr += b.toString();
    });
    stdio[2]?.on("data", (b: Buffer) => {
      qemuStderr += b.toString();
    });
    stdio[3]?.on("data", (b: Buffer) => {
      const s = b.toString("utf8");
      consoleText += s;
      if (consoleText.length > 2 * CONSOLE_KEEP) consoleText = consoleText.slice(-CONSOLE_KEEP);
      options.onConsole?.(s);
      if (debug) process.stderr.write(s);
    });
    stdio[4]?.on("data", (b: Buffer) => {
      outText += outDecoder.write(b);
      if (debug) process.stderr.write(b);
      streamOutput(false);
    });
    stdio[5]?.on("data", (b: Buffer) => {
      ctlBuf += b.toString("utf8");
      let nl = ctlBuf.indexOf("\n");
      while (nl >= 0) {
        const line = ctlBuf.slice(0, nl).replace(/\r$/, "");
        ctlBuf = ctlBuf.slice(nl + 1);
        nl = ctlBuf.indexOf("\n");
        const m = /^@@SANDBOX (\S+) (\S+) ?(.*)$/.exec(line);
        if (!m || m[1] !== nonce) continue;
        const [, , word, rest = ""] = m;
        if (word === "START") {
          startAt = performance.now();
        } else if (word === "EXIT") {
          exitAt = performance.now();
          exitCode = Number.parseInt(rest, 10);
          // The guest powers off now; if it does not, the result is complete anyway.
          timers.push(setTimeout(kill, POWEROFF_GRACE_MS));
        } else if (word === "WARN") {
          warnings.push(rest);
        } else if (word === "FAIL") {
          failure = rest;
        }
      }
    });

    timers.push(
      setTimeout(() => {
        if (exitCode !== undefined) return;
        timedOut = startAt < 0 ? "boot" : "run";
        kill();
      }, timeoutMs),
    );
    if (bootTimeoutMs < timeoutMs) {
      timers.push(
        setTimeout(() => {
          if (startAt >= 0 || exitCode !== undefined || failure) return;
          timedOut = "boot";
          kill();
        }, bootTimeoutMs),
      );
    }

    child.on("error", (err: NodeJS.ErrnoException) => {
      untrack(child);
      finish(() =>
        reject(
          new SandboxError(
            `cannot start ${qemu}: ${err.message}`,
            "",
            err.code === "ENOENT" ? "apt-get install qemu-system-x86 (or set TSKVM_SANDBOX_QEMU)" : "",
          ),
        ),
      );
    });

    child.on("close", (code, sig) => {
      untrack(child);
      outText += outDecoder.end();
      const elapsedMs = performance.now() - t0;
      const consoleTail = tail(consoleText);
      finish(() => {
        if (aborted) {
          reject(options.signal?.reason ?? new Error("aborted"));
          return;
        }
        if (timedOut && exitCode === undefined) {
          streamOutput(true);
          resolve({
            kind: "timeout",
            phase: timedOut,
            exitCode: -1,
            output: outText,
            bootMs: startAt < 0 ? -1 : startAt - t0,
            runMs: -1,
            elapsedMs,
            warnings,
            console: consoleText.slice(-CONSOLE_KEEP),
          });
          return;
        }
        if (failure) {
          reject(new SandboxError(`the sandbox could not start the script: ${failure}`, consoleTail));
          return;
        }
        if (exitCode === undefined || Number.isNaN(exitCode)) {
          reject(
            new SandboxError(
              `QEMU ended (${sig ?? `exit code ${code}`}) before the script finished` +
                (qemuStderr.trim() ? `\n--- QEMU stderr ---\n${qemuStderr.trim()}` : ""),
              consoleTail,
            ),
          );
          return;
        }
        // Strip the sentinel the init writes after the script's last byte.
        const at = outText.lastIndexOf(endMarker);
        let output = outText;
        if (at >= 0) output = outText.slice(0, at);
        else warnings.push("the end-of-output sentinel is missing: the output may be truncated");
        streamOutput(true);
        resolve({
          kind: "exit",
          phase: "run",
          exitCode,
          output,
          bootMs: startAt < 0 ? -1 : startAt - t0,
          runMs: startAt < 0 ? -1 : exitAt - startAt,
          elapsedMs,
          warnings,
          console: consoleText.slice(-CONSOLE_KEEP),
        });
      });
    });
  });
}

/**
 * Runs `script` with `/bin/sh -c` as root inside a throw-away QEMU machine and returns its exit
 * code and output.
 *
 * The machine: `qemu-system-x86_64 -accel tcg,thread=multi -cpu max` (pure emulation, never the
 * host's /dev/kvm), Debian's kernel, and an initramfs that loads virtio/9p and kvm-amd (so
 * `/dev/kvm` inside is real KVM on TCG's emulated SVM), mounts the host's `/` read-only over
 * 9p and chroots into it with fresh proc, sysfs, devtmpfs, devpts, and tmpfs on `/tmp`, `/run`
 * and `$SANDBOX_WORK` (`/tmp/sandbox-work`, which holds {@link SandboxOptions.extraFiles}).
 * The host's programs (node, qemu, ...) and the project tree are visible at their usual paths.
 * Nothing the script does reaches the host, except its output.
 *
 * Everything inside runs emulated: boot to script ~5 s, node starts in ~3 s, JS runs ~20× slower.
 * Send one script per boot that runs many scenarios and prints one line per result; read them
 * with {@link parseJsonLines}.
 *
 * Each attempt is bounded by `timeoutMs` (and the boot by `bootTimeoutMs`); a timed-out attempt
 * is killed, logged to stderr, recorded in `hangs`, and retried once unless `retryOnHang` is
 * false. QEMU is always killed: when the attempt ends, when this process exits or gets
 * SIGINT/SIGTERM/SIGHUP, and by the kernel if this process dies (setpriv --pdeathsig).
 *
 * @param script Shell text for `/bin/sh -c` (at most 128 KiB; put bulk in `extraFiles`).
 * @returns The script's exit code and output; `timedOut` if the last attempt ran out of time.
 * @throws SandboxError when the sandbox itself fails (QEMU missing, guest crash, 9p mount
 *   failure), DebianFetchError when the kernel cannot be fetched, RangeError for bad options,
 *   or the abort reason when `options.signal` aborts.
 */
export async function runInSandbox(script: string, options: SandboxOptions = {}): Promise<SandboxResult> {
  const log = options.log ?? ((line: string) => process.stderr.write(`[tskvm-sandbox] ${line}\n`));
  const timeoutMs = options.timeoutMs ?? envSeconds("TSKVM_SANDBOX_TIMEOUT") ?? DEFAULT_TIMEOUT_MS;
  const bootTimeoutMs = Math.min(
    timeoutMs,
    options.bootTimeoutMs ?? envSeconds("TSKVM_SANDBOX_BOOT_TIMEOUT") ?? DEFAULT_BOOT_TIMEOUT_MS,
  );
  if (!(timeoutMs > 0) || !(bootTimeoutMs > 0)) throw new RangeError("timeouts must be positive");
  const maxAttempts = options.retryOnHang === false ? 1 : 2;
  const entries = runEntries(script, options);
  const image = prepareSandboxImage({ cacheDir: options.cacheDir, log });

  const hangs: SandboxHang[] = [];
  const base = readFileSync(image.initramfsPath);
  for (let attempt = 1; ; attempt++) {
    const nonce = randomBytes(8).toString("hex");
    removeStaleRunDirs();
    const dir = mkdtempSync(join(tmpdir(), `${RUN_DIR_PREFIX}${process.pid}-`));
    liveDirs.add(dir);
    let result: Attempt;
    try {
      const initrd = join(dir, "initrd.img");
      const perRun = writeInitramfs([
        ...entries,
        { type: "file", path: "sandbox/nonce", data: Buffer.from(nonce) },
      ]);
      writeFileSync(initrd, Buffer.concat([base, perRun]));
      try {
        result = await runAttempt(image, initrd, nonce, options, timeoutMs, bootTimeoutMs);
      } catch (e) {
        // The sandbox VM itself died before the script finished (its kernel panicked: nested
        // KVM under TCG, like its hangs): retried once as a hang is; a second time is a bug.
        if (!(e instanceof SandboxError) || !e.message.startsWith("QEMU ended") || attempt >= maxAttempts)
          throw e;
        const message = `attempt ${attempt}: the sandbox VM ended before the script finished (${e.message.split("\n")[0]}); retrying once`;
        process.stderr.write(
          `[tskvm-sandbox] ${message}\n${e.consoleTail ? `${tail(e.consoleTail, 5)}\n` : ""}`,
        );
        if (options.log) options.log(message);
        hangs.push({ attempt, phase: "run", elapsedMs: -1, consoleTail: e.consoleTail ?? "" });
        continue;
      }
    } finally {
      liveDirs.delete(dir);
      rmSync(dir, { recursive: true, force: true });
    }
    if (result.kind === "timeout") {
      const hang: SandboxHang = {
        attempt,
        phase: result.phase,
        elapsedMs: Math.round(result.elapsedMs),
        consoleTail: tail(result.console),
      };
      hangs.push(hang);
      const retry = attempt < maxAttempts;
      const message =
        `attempt ${attempt} hung in the ${hang.phase} phase and was killed after ${hang.elapsedMs} ms` +
        (retry ? "; retrying once" : attempt > 1 ? "; it hung again: that is a bug, not bad luck" : "");
      process.stderr.write(`[tskvm-sandbox] ${message}\n`);
      if (options.log) options.log(message);
      if (retry) continue;
    }
    return {
      exitCode: result.exitCode,
      output: result.output,
      timedOut: result.kind === "timeout",
      attempts: attempt,
      retriedAfterHang: attempt > 1,
      hangs,
      bootMs: Math.round(result.bootMs),
      runMs: Math.round(result.runMs),
      warnings: result.warnings,
      console: result.console,
    };
  }
}
