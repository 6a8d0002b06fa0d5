import { execFileSync, spawn, spawnSync } from "node:child_process";
import {
  createReadStream,
  existsSync,
  mkdirSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";

/** A Debian binary package resolved to one exact version. */
export interface DebianPackage {
  name: string;
  version: string;
  /** Size of the `.deb` in bytes, when apt knows it (for progress messages). */
  size?: number;
}

/** Raised when apt is missing or a package cannot be had; `hint` says what to do instead. */
export class DebianFetchError extends Error {
  constructor(
    message: string,
    readonly hint: string,
  ) {
    super(`${message}\n  hint: ${hint}`);
    this.name = "DebianFetchError";
  }
}

/**
 * Where a long step of building the guest kit is: reported while it runs (at most every
 * {@link PROGRESS_INTERVAL_MS}) and once at its end, with `done`. Enough to draw bytes and
 * a rate; whether and how to show it is the caller's business (e.g. only on a terminal).
 */
export interface GuestKitProgress {
  /** `download`: a `.deb` from the mirror; `unpack`: a `.deb` read into files; `pack`: the initramfs compressed. */
  step: "download" | "unpack" | "pack";
  /** What the step works on: a package name, or `initramfs`. */
  name: string;
  /** Bytes done: downloaded, read from the `.deb`, or fed to gzip. */
  bytes: number;
  /** Bytes in all, when known (apt's size of the `.deb`, the `.deb`'s size, the cpio archive's size). */
  total?: number;
  /** Milliseconds since the step began. */
  elapsedMs: number;
  /** The last report of this step. */
  done: boolean;
}

/** How often a running step reports at most. */
export const PROGRESS_INTERVAL_MS = 100;

/** Calls `progress` at most every PROGRESS_INTERVAL_MS, and always for the final report. */
export function progressReporter(
  progress: ((p: GuestKitProgress) => void) | undefined,
  step: GuestKitProgress["step"],
  name: string,
  total: number | undefined,
): (bytes: number, done?: boolean) => void {
  const started = Date.now();
  let last = 0;
  return (bytes, done = false) => {
    if (!progress) return;
    const now = Date.now();
    if (!done && now - last < PROGRESS_INTERVAL_MS) return;
    last = now;
    progress({
      step,
      name,
      bytes,
      ...(total !== undefined ? { total } : {}),
      elapsedMs: now - started,
      done,
    });
  };
}

/** Whether `apt-get` and `dpkg-deb` can be run on this machine. */
export function hasApt(): boolean {
  return (
    spawnSync("apt-get", ["--version"], { stdio: "ignore" }).status === 0 &&
    spawnSync("dpkg-deb", ["--version"], { stdio: "ignore" }).status === 0
  );
}

const OWN_KERNEL_HINT =
  "pass a kernel and initrd of your own (--kernel/--initrd), or run on Debian or Ubuntu with apt";

function aptShow(name: string): Map<string, string> | undefined {
  const r = spawnSync("apt-cache", ["show", "--no-all-versions", name], { encoding: "utf8" });
  if (r.status !== 0 || !r.stdout.trim()) return undefined;
  const fields = new Map<string, string>();
  let last = "";
  for (const line of r.stdout.split("\n")) {
    if (line === "") break; // first stanza only
    if (/^\s/.test(line) && last) fields.set(last, `${fields.get(last)}\n${line.trim()}`);
    else {
      const i = line.indexOf(":");
      if (i > 0) {
        last = line.slice(0, i);
        fields.set(last, line.slice(i + 1).trim());
      }
    }
  }
  return fields;
}

let aptUpdated = false;

/**
 * Resolves a package name to the version apt would install. Metapackages such as
 * `linux-image-amd64` are followed to the one package they depend on when `followMeta` is set.
 */
export function resolveDebianPackage(name: string, followMeta = false): DebianPackage {
  if (!hasApt()) {
    throw new DebianFetchError(
      `cannot fetch Debian package ${name}: apt-get and dpkg-deb are not available on this machine`,
      OWN_KERNEL_HINT,
    );
  }
  let fields = aptShow(name);
  if (!fields && !aptUpdated && process.getuid?.() === 0) {
    // A fresh machine may have empty package lists; root can refresh them once.
    spawnSync("apt-get", ["update"], { stdio: "ignore" });
    aptUpdated = true;
    fields = aptShow(name);
  }
  const version = fields?.get("Version");
  if (!fields || !version) {
    throw new DebianFetchError(
      `Debian package ${name} is not known to apt`,
      `run 'apt-get update' (as root) and try again, or ${OWN_KERNEL_HINT}`,
    );
  }
  if (followMeta) {
    const dep = fields.get("Depends")?.split(",")[0]?.trim().split(/\s+/)[0];
    if (dep && dep !== name && /^linux-image-\d/.test(dep)) return resolveDebianPackage(dep, false);
  }
  const size = Number(fields.get("Size"));
  return Number.isFinite(size) && size > 0 ? { name, version, size } : { name, version };
}

function safeVersion(version: string): string {
  return version.replace(/[^A-Za-z0-9.+~-]/g, "_");
}

/** `12345678` → `11.8 MB`. */
export function formatBytes(n: number): string {
  if (n >= 1024 * 1024) return `${(n / (1024 * 1024)).toFixed(1)} MB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} kB`;
  return `${n} B`;
}

function downloadFailed(pkg: DebianPackage, why: string): DebianFetchError {
  return new DebianFetchError(
    `apt-get download ${pkg.name}=${pkg.version} failed: ${why}`,
    "check that the Debian mirror is reachable (or run 'apt-get update'), or provide --kernel/--initrd of your own",
  );
}

function debPath(pkg: DebianPackage, dir: string): string {
  return join(dir, `${pkg.name}_${safeVersion(pkg.version)}.deb`);
}

/** A fresh folder in `dir` for apt-get to write in (it names the file itself). */
function scratchDir(dir: string): string {
  mkdirSync(dir, { recursive: true });
  const work = join(dir, `.download-${process.pid}-${Math.random().toString(36).slice(2)}`);
  mkdirSync(work);
  return work;
}

/**
 * Downloads a package's `.deb` with `apt-get download` into `dir` (as `NAME_VERSION.deb`)
 * unless it is already there, and returns its path. `force` downloads it again.
 */
export function downloadDebianPackage(
  pkg: DebianPackage,
  dir: string,
  log?: (line: string) => void,
  force = false,
): string {
  const target = debPath(pkg, dir);
  if (!force && existsSync(target)) return target;
  const work = scratchDir(dir);
  try {
    const size = pkg.size ? ` (${formatBytes(pkg.size)})` : "";
    log?.(`downloading ${pkg.name} ${pkg.version}${size}`);
    const started = Date.now();
    const dl = spawnSync("apt-get", ["download", "-q", `${pkg.name}=${pkg.version}`], {
      cwd: work,
      encoding: "utf8",
    });
    const deb = readdirSync(work).find((f) => f.endsWith(".deb"));
    if (dl.error || dl.status !== 0 || !deb)
      throw downloadFailed(pkg, dl.error ? dl.error.message : (dl.stderr || "").trim());
    return finishDownload(pkg, join(work, deb), target, started, log);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

function finishDownload(
  pkg: DebianPackage,
  deb: string,
  target: string,
  started: number,
  log: ((line: string) => void) | undefined,
): string {
  const bytes = statSync(deb).size;
  log?.(`downloaded ${pkg.name} (${formatBytes(bytes)}) in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  renameSync(deb, target); // atomic: a concurrent download of the same file is identical
  return target;
}

/** Bytes in the files of `dir` (what apt-get has written so far). */
function bytesIn(dir: string): number {
  let n = 0;
  try {
    for (const f of readdirSync(dir)) n += statSync(join(dir, f)).size;
  } catch {
    // a file renamed or removed between the listing and its stat: counted next time
  }
  return n;
}

/**
 * {@link downloadDebianPackage} without blocking the event loop, reporting `progress`
 * (the bytes apt-get has written, polled) while it runs.
 */
export async function downloadDebianPackageAsync(
  pkg: DebianPackage,
  dir: string,
  options: { log?: (line: string) => void; force?: boolean; progress?: (p: GuestKitProgress) => void } = {},
): Promise<string> {
  const target = debPath(pkg, dir);
  if (!options.force && existsSync(target)) return target;
  const work = scratchDir(dir);
  try {
    const size = pkg.size ? ` (${formatBytes(pkg.size)})` : "";
    options.log?.(`downloading ${pkg.name} ${pkg.version}${size}`);
    const started = Date.now();
    const report = progressReporter(options.progress, "download", pkg.name, pkg.size);
    report(0);
    const poll = setInterval(() => report(bytesIn(work)), PROGRESS_INTERVAL_MS);
    let stderr = "";
    const failure = await new Promise<string | undefined>((resolve) => {
      const child = spawn("apt-get", ["download", "-q", `${pkg.name}=${pkg.version}`], {
        cwd: work,
        stdio: ["ignore", "ignore", "pipe"],
      });
      child.stderr.setEncoding("utf8").on("data", (d: string) => {
        stderr += d;
      });
      child.on("error", (e) => resolve(e.message));
      child.on("close", (code, signal) =>
        resolve(code === 0 ? undefined : stderr.trim() || `exit ${code ?? signal}`),
      );
    }).finally(() => clearInterval(poll));
    const deb = readdirSync(work).find((f) => f.endsWith(".deb"));
    if (failure !== undefined || !deb) throw downloadFailed(pkg, failure ?? stderr.trim());
    report(statSync(join(work, deb)).size, true);
    return finishDownload(pkg, join(work, deb), target, started, options.log);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** Unpacks a `.deb`'s files into `dest` with `dpkg-deb -x`. */
export function unpackDebianPackage(deb: string, dest: string, log?: (line: string) => void): void {
  log?.(`unpacking ${deb.slice(deb.lastIndexOf("/") + 1)}`);
  mkdirSync(dest, { recursive: true });
  try {
    execFileSync("dpkg-deb", ["-x", deb, dest], { stdio: ["ignore", "ignore", "pipe"] });
  } catch (e) {
    const stderr = (e as { stderr?: Buffer }).stderr?.toString().trim();
    throw new DebianFetchError(
      `dpkg-deb -x ${deb} failed${stderr ? `: ${stderr}` : ""}`,
      `delete ${deb} and try again`,
    );
  }
}

/**
 * {@link unpackDebianPackage} without blocking the event loop: the `.deb` is streamed into
 * `dpkg-deb -x -` (standard input), so `progress` reports the bytes of it read so far.
 */
export async function unpackDebianPackageAsync(
  deb: string,
  dest: string,
  options: { log?: (line: string) => void; progress?: (p: GuestKitProgress) => void } = {},
): Promise<void> {
  const file = deb.slice(deb.lastIndexOf("/") + 1);
  options.log?.(`unpacking ${file}`);
  mkdirSync(dest, { recursive: true });
  const total = statSync(deb).size;
  const report = progressReporter(options.progress, "unpack", file, total);
  report(0);
  let read = 0;
  let stderr = "";
  const failure = await new Promise<string | undefined>((resolve) => {
    const child = spawn("dpkg-deb", ["-x", "-", dest], { stdio: ["pipe", "ignore", "pipe"] });
    child.stderr.setEncoding("utf8").on("data", (d: string) => {
      stderr += d;
    });
    // dpkg-deb may stop reading early (a broken archive): its exit status says why, not EPIPE.
    child.stdin.on("error", () => {});
    const input = createReadStream(deb);
    input.on("data", (chunk) => {
      read += chunk.length;
      report(read);
    });
    input.on("error", (e) => {
      child.kill();
      resolve(e.message);
    });
    input.pipe(child.stdin);
    child.on("error", (e) => resolve(e.message));
    child.on("close", (code, signal) =>
      resolve(code === 0 ? undefined : stderr.trim() || `exit ${code ?? signal}`),
    );
  });
  if (failure !== undefined)
    throw new DebianFetchError(`dpkg-deb -x ${deb} failed: ${failure}`, `delete ${deb} and try again`);
  report(read, true);
}

/**
 * Downloads a package with `apt-get download` and unpacks it with `dpkg-deb -x`
 * under `cacheDir/NAME_VERSION/`, once; later calls return the cached tree.
 */
export function fetchDebianPackage(
  pkg: DebianPackage,
  cacheDir: string,
  log?: (line: string) => void,
): string {
  const root = join(cacheDir, `${pkg.name}_${safeVersion(pkg.version)}`);
  if (existsSync(join(root, ".complete"))) return root;
  mkdirSync(cacheDir, { recursive: true });
  const work = `${root}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  try {
    const deb = downloadDebianPackage(pkg, work, log);
    unpackDebianPackage(deb, join(work, "tree"), log);
    writeFileSync(join(work, "tree", ".complete"), "");
    rmSync(root, { recursive: true, force: true });
    try {
      renameSync(join(work, "tree"), root);
    } catch (e) {
      // Another process finished the same package first; its tree is as good as ours.
      if (!existsSync(join(root, ".complete"))) throw e;
    }
    return root;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** `$XDG_CACHE_HOME/tskvm` (default `~/.cache/tskvm`). */
export function defaultCacheDir(): string {
  const base = process.env.XDG_CACHE_HOME || join(process.env.HOME || "/tmp", ".cache");
  return join(base, "tskvm");
}
