import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
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
  const target = join(dir, `${pkg.name}_${safeVersion(pkg.version)}.deb`);
  if (!force && existsSync(target)) return target;
  mkdirSync(dir, { recursive: true });
  const work = join(dir, `.download-${process.pid}-${Math.random().toString(36).slice(2)}`);
  mkdirSync(work);
  try {
    const size = pkg.size ? ` (${formatBytes(pkg.size)})` : "";
    log?.(`downloading ${pkg.name} ${pkg.version}${size}`);
    const started = Date.now();
    const dl = spawnSync("apt-get", ["download", "-q", `${pkg.name}=${pkg.version}`], {
      cwd: work,
      encoding: "utf8",
    });
    const deb = readdirSync(work).find((f) => f.endsWith(".deb"));
    if (dl.error || dl.status !== 0 || !deb) {
      const why = dl.error ? dl.error.message : (dl.stderr || "").trim();
      throw new DebianFetchError(
        `apt-get download ${pkg.name}=${pkg.version} failed: ${why}`,
        "check that the Debian mirror is reachable (or run 'apt-get update'), or provide --kernel/--initrd of your own",
      );
    }
    const bytes = statSync(join(work, deb)).size;
    log?.(
      `downloaded ${pkg.name} (${formatBytes(bytes)}) in ${((Date.now() - started) / 1000).toFixed(1)} s`,
    );
    renameSync(join(work, deb), target); // atomic: a concurrent download of the same file is identical
    return target;
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
