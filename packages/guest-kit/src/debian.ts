import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";

/** A Debian binary package resolved to one exact version. */
export interface DebianPackage {
  name: string;
  version: string;
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

export function hasApt(): boolean {
  return spawnSync("apt-get", ["--version"], { stdio: "ignore" }).status === 0 &&
    spawnSync("dpkg-deb", ["--version"], { stdio: "ignore" }).status === 0;
}

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
      "pass a kernel and initrd of your own (--kernel/--initrd), or run on Debian or Ubuntu",
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
      "run 'apt-get update' (as root) and try again",
    );
  }
  if (followMeta) {
    const dep = fields.get("Depends")?.split(",")[0]?.trim().split(/\s+/)[0];
    if (dep && dep !== name && /^linux-image-\d/.test(dep)) return resolveDebianPackage(dep, false);
  }
  return { name, version };
}

/**
 * Downloads a package with `apt-get download` and unpacks it with `dpkg-deb -x`
 * under `cacheDir/NAME_VERSION/`, once; later calls return the cached tree.
 */
export function fetchDebianPackage(pkg: DebianPackage, cacheDir: string, log?: (line: string) => void): string {
  const safeVersion = pkg.version.replace(/[^A-Za-z0-9.+~-]/g, "_");
  const root = join(cacheDir, `${pkg.name}_${safeVersion}`);
  if (existsSync(join(root, ".complete"))) return root;
  mkdirSync(cacheDir, { recursive: true });
  const work = `${root}.tmp-${process.pid}`;
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  try {
    log?.(`downloading ${pkg.name} ${pkg.version}`);
    const dl = spawnSync("apt-get", ["download", "-q", `${pkg.name}=${pkg.version}`], { cwd: work, encoding: "utf8" });
    const deb = readdirSync(work).find((f) => f.endsWith(".deb"));
    if (dl.status !== 0 || !deb) {
      throw new DebianFetchError(
        `apt-get download ${pkg.name}=${pkg.version} failed: ${(dl.stderr || "").trim()}`,
        "check that the Debian mirror is reachable, or provide --kernel/--initrd of your own",
      );
    }
    log?.(`unpacking ${deb}`);
    execFileSync("dpkg-deb", ["-x", join(work, deb), join(work, "tree")]);
    rmSync(join(work, deb));
    execFileSync("touch", [join(work, "tree", ".complete")]);
    rmSync(root, { recursive: true, force: true });
    renameSync(join(work, "tree"), root);
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
