import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { once } from "node:events";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { createGzip } from "node:zlib";
import { type CpioEntry, writeCpioNewc } from "./cpio.js";
import {
  DebianFetchError,
  type DebianPackage,
  defaultCacheDir,
  downloadDebianPackageAsync,
  formatBytes,
  type GuestKitProgress,
  progressReporter,
  resolveDebianPackage,
  unpackDebianPackageAsync,
} from "./debian.js";
import { initScript } from "./init.js";
import { formatModulesDep, KernelModuleTree, type ModuleInfo, readModuleImage } from "./modules.js";

/**
 * Bump when the builder's output changes for the same inputs; part of the cache key.
 * (The init script is hashed separately.)
 */
export const GUEST_KIT_BUILDER_VERSION = 1;

/** Debian package of the kernel (a metapackage, followed to the versioned image). */
export const GUEST_KERNEL_PACKAGE = "linux-image-amd64";
/** Debian package providing a static `bin/busybox`. */
export const GUEST_BUSYBOX_PACKAGE = "busybox-static";

/**
 * Modules loaded by `/init` (with their dependencies): virtio PCI and MMIO transports,
 * virtio-blk, virtio-rng (`/dev/hwrng` with `tskvm run --rng`), virtio-console
 * (`hvc0` with `tskvm run --console virtio`), ext4.
 */
export const DEFAULT_GUEST_MODULES: readonly string[] = [
  "virtio_ring",
  "virtio",
  "virtio_pci_legacy_dev",
  "virtio_pci_modern_dev",
  "virtio_pci",
  "virtio_mmio",
  "virtio_blk",
  "virtio_rng",
  "virtio_console",
  "ext4",
];

export interface GuestKitOptions {
  /** Cache root; the kit lives under `CACHE/guest-kit/`. Default {@link defaultCacheDir}. */
  cacheDir?: string;
  /** Progress lines (downloads, unpacking, writing). */
  log?: (line: string) => void;
  /**
   * Bytes done in the long steps (downloading and unpacking each `.deb`, compressing the
   * initramfs), reported while each runs and once at its end; nothing on a cache hit.
   */
  progress?: (p: GuestKitProgress) => void;
  /** Download and build again even when a cached kit matches. */
  force?: boolean;
  /** Kernel modules to bundle and load at boot (default {@link DEFAULT_GUEST_MODULES}). */
  modules?: readonly string[];
}

export interface GuestKit {
  /** The kernel image (bzImage). */
  kernel: string;
  /** The gzip-compressed cpio initramfs. */
  initrd: string;
  /** `uname -r` of the kernel, e.g. `6.1.0-56-amd64`. */
  kernelVersion: string;
  /** Modules the init loads, in load order (names). */
  modules: string[];
  /** The exact Debian packages the kit was built from. */
  packages: { kernel: DebianPackage; busybox: DebianPackage };
  /** Whether this call found the kit in the cache. */
  cached: boolean;
}

interface KitManifest extends Omit<GuestKit, "kernel" | "initrd" | "cached"> {
  key: string;
  builderVersion: number;
  initrdBytes: number;
}

const KERNEL_FILE = "vmlinuz";
const INITRD_FILE = "initrd.img";
const MANIFEST_FILE = "kit.json";

function sha256(data: string | Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}

function seconds(since: number): string {
  return `${((Date.now() - since) / 1000).toFixed(1)} s`;
}

/** `writeInitramfs` without blocking the event loop, reporting the bytes fed to gzip. */
async function gzipInitramfs(
  cpio: Buffer,
  progress: ((p: GuestKitProgress) => void) | undefined,
): Promise<Buffer> {
  const report = progressReporter(progress, "pack", "initramfs", cpio.length);
  report(0);
  const gzip = createGzip({ level: 6 });
  const out: Buffer[] = [];
  gzip.on("data", (chunk: Buffer) => out.push(chunk));
  const ended = once(gzip, "end");
  const step = 1 << 20;
  for (let at = 0; at < cpio.length; at += step) {
    const chunk = cpio.subarray(at, at + step);
    if (!gzip.write(chunk)) await once(gzip, "drain");
    report(at + chunk.length);
  }
  gzip.end();
  await ended;
  report(cpio.length, true);
  return Buffer.concat(out);
}

function readManifest(dir: string): KitManifest | undefined {
  try {
    const m = JSON.parse(readFileSync(join(dir, MANIFEST_FILE), "utf8")) as KitManifest;
    if (!existsSync(join(dir, KERNEL_FILE))) return undefined;
    if (statSync(join(dir, INITRD_FILE)).size !== m.initrdBytes) return undefined;
    return m;
  } catch {
    return undefined;
  }
}

/** Applet paths (`usr/bin/awk`, `sbin/insmod`, ...) of a busybox binary, by running `busybox --list-full`. */
export function busyboxApplets(busybox: string): string[] {
  const r = spawnSync(busybox, ["--list-full"], { encoding: "utf8" });
  if (r.error || r.status !== 0) {
    const why = r.error ? r.error.message : r.stderr.trim();
    throw new Error(
      `cannot run ${busybox} --list-full (${why}); building the guest kit needs an x86-64 Linux host`,
    );
  }
  return r.stdout
    .split("\n")
    .map((l) => l.trim().replace(/^\/+/, ""))
    .filter((l) => l !== "" && !l.includes(".."));
}

/**
 * A fingerprint of apt's package lists and configuration: when it is unchanged, apt would
 * resolve the same versions, so a warm start need not run `apt-cache` (about 0.5 s a call).
 */
function aptStamp(): string | undefined {
  const lists = "/var/lib/apt/lists";
  if (!existsSync(lists)) return undefined;
  const parts: string[] = [];
  const add = (path: string) => {
    try {
      const st = statSync(path);
      parts.push(`${path}:${st.size}:${st.mtimeMs}`);
    } catch {
      // vanished while listing: the stamp simply differs next time
    }
  };
  for (const dir of [lists, "/etc/apt/sources.list.d", "/etc/apt/preferences.d"]) {
    if (!existsSync(dir)) continue;
    for (const f of readdirSync(dir).sort()) add(join(dir, f));
  }
  add("/etc/apt/sources.list");
  add("/etc/apt/preferences");
  return sha256(parts.join("\n"));
}

interface ResolvedPackages {
  stamp: string;
  kernel: DebianPackage;
  busybox: DebianPackage;
}

function resolvePackages(root: string, force: boolean): { kernel: DebianPackage; busybox: DebianPackage } {
  const memo = join(root, "resolved.json");
  const stamp = aptStamp();
  if (!force && stamp) {
    try {
      const r = JSON.parse(readFileSync(memo, "utf8")) as ResolvedPackages;
      if (r.stamp === stamp && r.kernel?.version && r.busybox?.version) return r;
    } catch {
      // no memo yet
    }
  }
  const kernel = resolveDebianPackage(GUEST_KERNEL_PACKAGE, true);
  const busybox = resolveDebianPackage(GUEST_BUSYBOX_PACKAGE);
  const after = aptStamp(); // resolving may have run `apt-get update`
  if (after) {
    mkdirSync(root, { recursive: true });
    const tmp = `${memo}.${process.pid}`;
    writeFileSync(tmp, JSON.stringify({ stamp: after, kernel, busybox } satisfies ResolvedPackages));
    renameSync(tmp, memo);
  }
  return { kernel, busybox };
}

interface InitramfsInputs {
  busybox: Uint8Array;
  applets: readonly string[];
  init: string;
  kernelVersion: string;
  modules: readonly ModuleInfo[];
  readModule: (path: string) => Uint8Array;
}

/** The members of the default guest's initramfs. */
export function initramfsEntries(inputs: InitramfsInputs): CpioEntry[] {
  const entries: CpioEntry[] = [];
  const dirs = new Set<string>();
  const dir = (path: string, mode = 0o755) => {
    const parts = path.split("/");
    for (let i = 1; i <= parts.length; i++) {
      const p = parts.slice(0, i).join("/");
      if (dirs.has(p)) continue;
      dirs.add(p);
      entries.push({ type: "directory", path: p, mode: p === path ? mode : 0o755 });
    }
  };
  for (const d of [
    "bin",
    "sbin",
    "usr/bin",
    "usr/sbin",
    "etc/tskvm",
    "proc",
    "sys",
    "dev",
    "run",
    "mnt",
    "var",
  ]) {
    dir(d);
  }
  dir("root", 0o700);
  dir("tmp", 0o1777);
  // The kernel opens /dev/console for init before anything is mounted.
  entries.push({ type: "chardev", path: "dev/console", major: 5, minor: 1, mode: 0o600 });
  entries.push({ type: "chardev", path: "dev/null", major: 1, minor: 3, mode: 0o666 });
  entries.push({ type: "file", path: "init", data: Buffer.from(inputs.init, "utf8"), mode: 0o755 });
  entries.push({ type: "file", path: "bin/busybox", data: inputs.busybox, mode: 0o755 });
  for (const applet of inputs.applets) {
    // /init is ours; busybox's init (sbin/init, linuxrc) would need an inittab.
    if (applet === "bin/busybox" || applet === "sbin/init" || applet === "linuxrc") continue;
    const slash = applet.lastIndexOf("/");
    if (slash > 0) dir(applet.slice(0, slash));
    entries.push({ type: "symlink", path: applet, target: "/bin/busybox" });
  }
  entries.push({ type: "file", path: "etc/passwd", data: Buffer.from("root:x:0:0:root:/root:/bin/sh\n") });
  entries.push({ type: "file", path: "etc/group", data: Buffer.from("root:x:0:\n") });
  entries.push({
    type: "file",
    path: "etc/tskvm/kernel-version",
    data: Buffer.from(`${inputs.kernelVersion}\n`),
  });
  const modRoot = `lib/modules/${inputs.kernelVersion}`;
  dir(modRoot);
  for (const m of inputs.modules) {
    const slash = m.path.lastIndexOf("/");
    if (slash > 0) dir(`${modRoot}/${m.path.slice(0, slash)}`);
    // Stored uncompressed under a plain .ko name, which insmod and the kernel take as is.
    const path = m.path.replace(/\.ko\.(xz|zst|gz)$/, ".ko");
    entries.push({ type: "file", path: `${modRoot}/${path}`, data: inputs.readModule(m.path) });
  }
  const plain = inputs.modules.map((m) => ({ ...m, path: m.path.replace(/\.ko\.(xz|zst|gz)$/, ".ko") }));
  entries.push({ type: "file", path: `${modRoot}/modules.dep`, data: Buffer.from(formatModulesDep(plain)) });
  entries.push({
    type: "file",
    path: "etc/tskvm/modules",
    data: Buffer.from(plain.map((m) => `${m.path}\n`).join("")),
  });
  return entries;
}

/**
 * Builds (or finds in the cache) the default guest: a Debian x86-64 kernel and a busybox
 * initramfs whose `/init` runs the command given as `tskvm.cmd="..."` on the kernel command
 * line, prints its output between markers on the console and powers off.
 *
 * The kit is cached under `CACHE/guest-kit/kits/KEY/`, where KEY hashes the package
 * versions apt resolves, the init script, the module list and the builder version; the
 * `.deb` files are kept under `CACHE/guest-kit/debs/`. Throws {@link DebianFetchError}
 * (with a hint) when apt is not available.
 */
export async function buildGuestKit(options: GuestKitOptions = {}): Promise<GuestKit> {
  const log = options.log ?? (() => {});
  const root = join(options.cacheDir ?? defaultCacheDir(), "guest-kit");
  const wanted = [...(options.modules ?? DEFAULT_GUEST_MODULES)];
  const { kernel: kernelPkg, busybox: busyboxPkg } = resolvePackages(root, options.force ?? false);
  const init = initScript();
  const key = sha256(
    JSON.stringify({
      builder: GUEST_KIT_BUILDER_VERSION,
      kernel: [kernelPkg.name, kernelPkg.version],
      busybox: [busyboxPkg.name, busyboxPkg.version],
      init: sha256(init),
      modules: wanted,
    }),
  ).slice(0, 16);
  const kitDir = join(root, "kits", key);
  const result = (m: KitManifest, cached: boolean): GuestKit => ({
    kernel: join(kitDir, KERNEL_FILE),
    initrd: join(kitDir, INITRD_FILE),
    kernelVersion: m.kernelVersion,
    modules: m.modules,
    packages: m.packages,
    cached,
  });

  if (!options.force) {
    const m = readManifest(kitDir);
    if (m) {
      log(`guest kit up to date: ${kitDir}`);
      return result(m, true);
    }
  }

  const started = Date.now();
  log(`building guest kit: ${kernelPkg.name} ${kernelPkg.version}, ${busyboxPkg.name} ${busyboxPkg.version}`);
  const debs = join(root, "debs");
  const fetchOptions = {
    log,
    force: options.force ?? false,
    ...(options.progress ? { progress: options.progress } : {}),
  };
  const kernelDeb = await downloadDebianPackageAsync(kernelPkg, debs, fetchOptions);
  const busyboxDeb = await downloadDebianPackageAsync(busyboxPkg, debs, fetchOptions);

  mkdirSync(join(root, "kits"), { recursive: true });
  const work = join(root, `.build-${process.pid}-${Math.random().toString(36).slice(2)}`);
  try {
    const t = Date.now();
    await unpackDebianPackageAsync(kernelDeb, join(work, "kernel"), fetchOptions);
    await unpackDebianPackageAsync(busyboxDeb, join(work, "busybox"), fetchOptions);
    log(`unpacked in ${seconds(t)}`);

    const bootDir = join(work, "kernel", "boot");
    const vmlinuz = existsSync(bootDir)
      ? readdirSync(bootDir).find((f) => f.startsWith("vmlinuz-"))
      : undefined;
    if (!vmlinuz) {
      throw new DebianFetchError(`${kernelPkg.name} has no boot/vmlinuz-*`, "report this as a bug");
    }
    const kernelVersion = vmlinuz.slice("vmlinuz-".length);
    const modulesDir = join(work, "kernel", "lib", "modules", kernelVersion);

    const busyboxPath = join(work, "busybox", "bin", "busybox");
    if (!existsSync(busyboxPath)) {
      throw new DebianFetchError(`${busyboxPkg.name} has no bin/busybox`, "report this as a bug");
    }
    const applets = busyboxApplets(busyboxPath);

    log(`resolving kernel modules: ${wanted.join(" ")}`);
    const tree = new KernelModuleTree(modulesDir);
    const modules = tree.resolve(wanted);
    log(`modules in load order: ${modules.map((m) => m.name).join(" ")}`);

    const entries = initramfsEntries({
      busybox: readFileSync(busyboxPath),
      applets,
      init,
      kernelVersion,
      modules,
      readModule: (p) => readModuleImage(join(modulesDir, p)),
    });
    log(`writing initramfs (${entries.length} members, ${applets.length} busybox applets)`);
    const initrd = await gzipInitramfs(writeCpioNewc(entries), options.progress);

    const out = join(work, "kit");
    mkdirSync(out);
    writeFileSync(join(out, INITRD_FILE), initrd);
    copyFileSync(join(bootDir, vmlinuz), join(out, KERNEL_FILE));
    const manifest: KitManifest = {
      key,
      builderVersion: GUEST_KIT_BUILDER_VERSION,
      kernelVersion,
      modules: modules.map((m) => m.name),
      packages: { kernel: kernelPkg, busybox: busyboxPkg },
      initrdBytes: initrd.length,
    };
    writeFileSync(join(out, MANIFEST_FILE), `${JSON.stringify(manifest, null, 2)}\n`);

    if (options.force) rmSync(kitDir, { recursive: true, force: true });
    try {
      renameSync(out, kitDir);
    } catch (e) {
      // A concurrent build of the same key won; its files are the same as ours.
      if (!readManifest(kitDir)) throw e;
    }
    // Packages of earlier versions are no longer needed to rebuild; kits stay until removed.
    for (const f of readdirSync(debs)) {
      const path = join(debs, f);
      if (f.endsWith(".deb") && path !== kernelDeb && path !== busyboxDeb) rmSync(path, { force: true });
    }
    log(
      `guest kit ready in ${seconds(started)}: kernel ${kernelVersion}, initrd ${formatBytes(initrd.length)} (${kitDir})`,
    );
    return result(manifest, false);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
