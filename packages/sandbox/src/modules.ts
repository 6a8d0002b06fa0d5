import { spawnSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";

/** One kernel module, decompressed and ready to `insmod`. */
export interface KernelModule {
  /** Canonical name (dashes turned into underscores), e.g. `kvm_amd`. */
  name: string;
  /** Where it was found in the kernel package tree. */
  path: string;
  /** Raw ELF object (decompressed when the package ships `.ko.xz`, `.ko.zst` or `.ko.gz`). */
  data: Buffer;
  /** Canonical names of the modules it needs, from its `.modinfo` `depends=` entry. */
  depends: string[];
}

const MODULE_FILE = /\.ko(\.xz|\.zst|\.gz)?$/;

/** `kvm-amd` and `kvm_amd` are the same module to the kernel. */
export function canonicalModuleName(name: string): string {
  return name.replace(/\.ko(\.xz|\.zst|\.gz)?$/, "").replace(/-/g, "_");
}

/** Maps every module under `modulesDir` (`lib/modules/VERSION`) to its file path. */
export function indexModules(modulesDir: string): Map<string, string> {
  const index = new Map<string, string>();
  const walk = (dir: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, entry.name);
      if (entry.isDirectory()) walk(p);
      else if (MODULE_FILE.test(entry.name)) index.set(canonicalModuleName(entry.name), p);
    }
  };
  walk(join(modulesDir, "kernel"));
  return index;
}

function decompressWith(tool: string, path: string, pkg: string): Buffer {
  const r = spawnSync(tool, ["-dc", path], { maxBuffer: 256 * 1024 * 1024 });
  if (r.error || r.status !== 0) {
    const why = r.error ? r.error.message : r.stderr.toString().trim();
    throw new Error(`cannot decompress ${path} with ${tool}: ${why}\n  hint: apt-get install ${pkg}`);
  }
  return r.stdout;
}

/** Reads a module file, decompressing `.ko.xz` (with `xz`), `.ko.zst` (with `zstd`) or `.ko.gz`. */
export function readModuleFile(path: string): Buffer {
  if (path.endsWith(".ko.xz")) return decompressWith("xz", path, "xz-utils");
  if (path.endsWith(".ko.zst")) return decompressWith("zstd", path, "zstd");
  if (path.endsWith(".ko.gz")) return gunzipSync(readFileSync(path));
  return readFileSync(path);
}

/**
 * The `depends=` entry of a module's `.modinfo` section. The section is a run of
 * NUL-terminated `key=value` strings, so the entry is found as `\0depends=...\0`.
 */
export function moduleDepends(ko: Buffer): string[] {
  const key = Buffer.from("\0depends=", "latin1");
  const at = ko.indexOf(key);
  if (at < 0) return [];
  const start = at + key.length;
  const end = ko.indexOf(0, start);
  const value = ko.toString("latin1", start, end < 0 ? ko.length : end);
  return value
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)
    .map(canonicalModuleName);
}

/**
 * Resolves `wanted` and everything they depend on (the kernel package ships no
 * `modules.dep`; `depmod` runs only when it is installed) into load order: every module
 * comes after the modules it depends on.
 */
export function resolveModules(modulesDir: string, wanted: readonly string[]): KernelModule[] {
  const index = indexModules(modulesDir);
  const ordered: KernelModule[] = [];
  const done = new Set<string>();
  const visiting = new Set<string>();
  const visit = (raw: string, from?: string) => {
    const name = canonicalModuleName(raw);
    if (done.has(name)) return;
    if (visiting.has(name)) throw new Error(`kernel module dependency cycle through ${name}`);
    const path = index.get(name);
    if (!path) {
      throw new Error(
        `kernel module ${name}${from ? ` (needed by ${from})` : ""} is not in ${modulesDir}` +
          " (built in, or a kernel without it?)",
      );
    }
    visiting.add(name);
    const data = readModuleFile(path);
    const depends = moduleDepends(data);
    for (const dep of depends) visit(dep, name);
    visiting.delete(name);
    done.add(name);
    ordered.push({ name, path, data, depends });
  };
  for (const w of wanted) visit(w);
  return ordered;
}
