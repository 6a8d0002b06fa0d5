import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  type CpioEntry,
  type DebianPackage,
  defaultCacheDir,
  fetchDebianPackage,
  resolveDebianPackage,
  writeInitramfs,
} from "@tskvm/guest-kit";
import { INIT_SCRIPT, RUNNER_SCRIPT } from "./init.js";
import { resolveModules } from "./modules.js";

/** Modules the sandbox cannot work without (virtio PCI and the 9p host root), in any order. */
export const REQUIRED_MODULES: readonly string[] = [
  "virtio_ring",
  "virtio",
  "virtio_pci_legacy_dev",
  "virtio_pci_modern_dev",
  "virtio_pci",
  "netfs",
  "fscache",
  "9pnet",
  "9pnet_virtio",
  "9p",
];

/** Modules that give the sandbox a real `/dev/kvm` (kvm-amd on TCG's emulated SVM). A failure is a warning. */
export const KVM_MODULES: readonly string[] = ["irqbypass", "ccp", "kvm", "kvm_amd"];

/** Bump when the layout of the cached initramfs changes in a way its inputs do not show. */
const IMAGE_FORMAT = 1;

/** Everything a sandbox boot needs from the host, built once and cached. */
export interface SandboxImage {
  /** The Debian kernel (`vmlinuz-*`), also usable for nested guests. */
  kernelPath: string;
  /** `uname -r` of that kernel, e.g. `6.1.0-56-amd64`. */
  kernelRelease: string;
  /** The exact Debian kernel package. */
  kernelPackage: DebianPackage;
  /** `lib/modules/RELEASE` of the unpacked kernel package. */
  modulesDir: string;
  /** Static busybox (from Debian's `busybox-static`), also usable for nested test initramfs. */
  busyboxPath: string;
  /** The cached base initramfs (gzip'd cpio newc, padded to 4 bytes). */
  initramfsPath: string;
  /** Modules loaded at boot, in load order. */
  modules: string[];
}

/** Options of {@link prepareSandboxImage}. */
export interface PrepareImageOptions {
  /** Root of the download and image cache; default `defaultCacheDir()` of guest-kit (`~/.cache/tskvm`). */
  cacheDir?: string;
  /** Progress lines (downloads, builds). */
  log?: (line: string) => void;
}

const memo = new Map<string, SandboxImage>();

/** The directory under which sandbox images are cached: `CACHE/sandbox`. */
export function sandboxCacheDir(cacheDir = defaultCacheDir()): string {
  return join(cacheDir, "sandbox");
}

/**
 * Fetches Debian's kernel (`linux-image-amd64`, followed to the real package) and
 * `busybox-static`, and builds the sandbox initramfs (busybox, the modules in
 * {@link REQUIRED_MODULES} and {@link KVM_MODULES} with their dependencies, `/init`).
 * The result is cached under `CACHE/sandbox/KEY/`, KEY being a hash of every input, so it is
 * rebuilt when the kernel, busybox, module list or init script changes. Memoised per process.
 *
 * @throws DebianFetchError (from guest-kit) when apt cannot provide the packages.
 */
export function prepareSandboxImage(options: PrepareImageOptions = {}): SandboxImage {
  const cacheDir = options.cacheDir ?? defaultCacheDir();
  const cached = memo.get(cacheDir);
  if (cached) return cached;
  const log = options.log;

  const kernelPackage = resolveDebianPackage("linux-image-amd64", true);
  const busyboxPackage = resolveDebianPackage("busybox-static");
  const kernelTree = fetchDebianPackage(kernelPackage, cacheDir, log);
  const busyboxTree = fetchDebianPackage(busyboxPackage, cacheDir, log);

  const bootDir = join(kernelTree, "boot");
  const vmlinuz = readdirSync(bootDir).find((f) => f.startsWith("vmlinuz-"));
  if (!vmlinuz) throw new Error(`no vmlinuz-* in ${bootDir}`);
  const kernelRelease = vmlinuz.slice("vmlinuz-".length);
  const modulesDir = join(kernelTree, "lib", "modules", kernelRelease);
  const busyboxPath = join(busyboxTree, "bin", "busybox");
  if (!existsSync(busyboxPath)) throw new Error(`no bin/busybox in ${busyboxTree}`);

  const key = createHash("sha256")
    .update(
      JSON.stringify({
        IMAGE_FORMAT,
        kernel: kernelPackage,
        busybox: busyboxPackage,
        REQUIRED_MODULES,
        KVM_MODULES,
        INIT_SCRIPT,
        RUNNER_SCRIPT,
      }),
    )
    .digest("hex")
    .slice(0, 16);
  const dir = join(sandboxCacheDir(cacheDir), `${kernelRelease}-${key}`);
  const initramfsPath = join(dir, "initramfs.cpio.gz");
  const manifestPath = join(dir, "manifest.json");

  let modules: string[];
  if (existsSync(manifestPath) && existsSync(initramfsPath)) {
    modules = (JSON.parse(readFileSync(manifestPath, "utf8")) as { modules: string[] }).modules;
  } else {
    log?.(`building the sandbox initramfs in ${dir}`);
    const built = buildBaseInitramfs(modulesDir, busyboxPath);
    modules = built.modules;
    const tmp = `${dir}.tmp-${process.pid}`;
    rmSync(tmp, { recursive: true, force: true });
    mkdirSync(tmp, { recursive: true });
    writeFileSync(join(tmp, "initramfs.cpio.gz"), built.initramfs);
    writeFileSync(
      join(tmp, "manifest.json"),
      `${JSON.stringify({ kernel: kernelPackage, busybox: busyboxPackage, modules }, null, 2)}\n`,
    );
    rmSync(dir, { recursive: true, force: true });
    try {
      renameSync(tmp, dir);
    } catch (e) {
      // Another process built it at the same time: theirs is as good as ours.
      rmSync(tmp, { recursive: true, force: true });
      if (!existsSync(initramfsPath)) throw e;
    }
  }

  const image: SandboxImage = {
    kernelPath: join(bootDir, vmlinuz),
    kernelRelease,
    kernelPackage,
    modulesDir,
    busyboxPath,
    initramfsPath,
    modules,
  };
  memo.set(cacheDir, image);
  return image;
}

/** Pads a gzip member with NULs to 4 bytes, so that a further cpio archive can follow it. */
export function pad4(buf: Buffer): Buffer {
  const pad = (4 - (buf.length % 4)) % 4;
  return pad === 0 ? buf : Buffer.concat([buf, Buffer.alloc(pad)]);
}

function buildBaseInitramfs(
  modulesDir: string,
  busyboxPath: string,
): { initramfs: Buffer; modules: string[] } {
  const required = resolveModules(modulesDir, REQUIRED_MODULES);
  const requiredNames = new Set(required.map((m) => m.name));
  const kvm = resolveModules(modulesDir, KVM_MODULES).filter((m) => !requiredNames.has(m.name));
  const all = [...required, ...kvm];
  const entries: CpioEntry[] = [
    { type: "directory", path: "bin" },
    { type: "directory", path: "dev" },
    { type: "chardev", path: "dev/console", major: 5, minor: 1, mode: 0o600 },
    { type: "directory", path: "etc" },
    { type: "directory", path: "etc/sandbox" },
    { type: "directory", path: "lib" },
    { type: "directory", path: "lib/modules" },
    { type: "directory", path: "newroot" },
    { type: "directory", path: "proc" },
    { type: "directory", path: "sys" },
    { type: "directory", path: "tmp", mode: 0o1777 },
    { type: "file", path: "bin/busybox", data: readFileSync(busyboxPath), mode: 0o755 },
    { type: "symlink", path: "bin/sh", target: "busybox" },
    { type: "file", path: "init", data: Buffer.from(INIT_SCRIPT), mode: 0o755 },
    { type: "file", path: "etc/sandbox/runner.sh", data: Buffer.from(RUNNER_SCRIPT), mode: 0o644 },
    {
      type: "file",
      path: "etc/sandbox/modules",
      data: Buffer.from(
        all.map((m) => `${m.name} ${requiredNames.has(m.name) ? "required" : "optional"}\n`).join(""),
      ),
    },
    ...all.map((m): CpioEntry => ({ type: "file", path: `lib/modules/${m.name}.ko`, data: m.data })),
  ];
  return { initramfs: pad4(writeInitramfs(entries)), modules: all.map((m) => m.name) };
}
