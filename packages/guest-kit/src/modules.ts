import { spawnSync } from "node:child_process";
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync } from "node:fs";
import { join, relative } from "node:path";
import { gunzipSync } from "node:zlib";

/** One loadable kernel module and what must be loaded before it. */
export interface ModuleInfo {
  /** Canonical module name (`-` folded to `_`), e.g. `virtio_pci`. */
  name: string;
  /** Path relative to `lib/modules/VERSION/`, e.g. `kernel/drivers/virtio/virtio_pci.ko`. */
  path: string;
  /** Hard dependencies (module names), from `modules.dep` or the module's `depends=`. */
  depends: string[];
  /** Optional modules to load first (`softdep=pre:`), already resolved to module names. */
  softPre: string[];
}

const MODULE_SUFFIX = /\.ko(\.(xz|zst|gz))?$/;

/** `kernel/fs/ext4/ext4.ko.xz` → `ext4`; `crc32c-intel` → `crc32c_intel`. */
export function moduleName(pathOrName: string): string {
  const base = pathOrName.slice(pathOrName.lastIndexOf("/") + 1).replace(MODULE_SUFFIX, "");
  return base.replace(/-/g, "_");
}

/**
 * Parses a depmod `modules.dep` (`path: dep-path dep-path ...` per line) into a graph
 * keyed by module name. Soft dependencies are not part of that file and stay empty.
 */
export function parseModulesDep(text: string): Map<string, ModuleInfo> {
  const graph = new Map<string, ModuleInfo>();
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const colon = line.indexOf(":");
    if (colon <= 0) throw new Error(`modules.dep: malformed line ${JSON.stringify(raw)}`);
    const path = line.slice(0, colon).trim();
    const deps = line
      .slice(colon + 1)
      .trim()
      .split(/\s+/)
      .filter((d) => d !== "");
    graph.set(moduleName(path), { name: moduleName(path), path, depends: deps.map(moduleName), softPre: [] });
  }
  return graph;
}

/**
 * Orders the modules needed for `wanted` so that every module comes after everything it
 * depends on (soft `pre:` dependencies included when present in the graph). Modules in
 * `builtin` are skipped, since they are part of the kernel image. Throws on a module that
 * is neither in the graph nor built in, and on dependency cycles.
 */
export function resolveModuleOrder(
  graph: ReadonlyMap<string, ModuleInfo>,
  wanted: readonly string[],
  builtin: ReadonlySet<string> = new Set(),
): ModuleInfo[] {
  const order: ModuleInfo[] = [];
  const state = new Map<string, "visiting" | "done">();
  const visit = (rawName: string, chain: string[], optional: boolean): void => {
    const name = moduleName(rawName);
    if (state.get(name) === "done" || builtin.has(name)) return;
    if (state.get(name) === "visiting") {
      throw new Error(`kernel modules: dependency cycle ${[...chain, name].join(" -> ")}`);
    }
    const info = graph.get(name);
    if (!info) {
      if (optional) return;
      const by = chain.length > 0 ? ` (needed by ${chain[chain.length - 1]})` : "";
      throw new Error(`kernel module ${name} not found in the kernel tree${by}`);
    }
    state.set(name, "visiting");
    for (const dep of info.softPre) visit(dep, [...chain, name], true);
    for (const dep of info.depends) visit(dep, [...chain, name], false);
    state.set(name, "done");
    order.push(info);
  };
  for (const w of wanted) visit(w, [], false);
  return order;
}

/** Renders a graph subset back in `modules.dep` format (what busybox `modprobe` reads). */
export function formatModulesDep(modules: readonly ModuleInfo[]): string {
  const byName = new Map(modules.map((m) => [m.name, m]));
  const lines = modules.map((m) => {
    const deps: string[] = [];
    const seen = new Set<string>();
    const add = (n: string) => {
      for (const d of byName.get(n)?.depends ?? []) {
        if (seen.has(d) || !byName.has(d)) continue;
        seen.add(d);
        deps.push(byName.get(d)!.path);
        add(d);
      }
    };
    add(m.name);
    return `${m.path}:${deps.map((d) => ` ${d}`).join("")}`;
  });
  return `${lines.join("\n")}\n`;
}

/** Splits a `.modinfo` section (NUL-separated `key=value` strings) into pairs. */
export function parseModinfo(section: Uint8Array): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const s of Buffer.from(section.buffer, section.byteOffset, section.length)
    .toString("utf8")
    .split("\0")) {
    const eq = s.indexOf("=");
    if (eq > 0) out.push([s.slice(0, eq), s.slice(eq + 1)]);
  }
  return out;
}

/** Reads `length` bytes at `position` from whatever source backs an ELF file. */
type ReadAt = (position: number, length: number) => Buffer;

function elfSection(read: ReadAt, wanted: string, what: string): Buffer | undefined {
  const ident = read(0, 64);
  if (ident.length < 52 || ident.readUInt32BE(0) !== 0x7f454c46) throw new Error(`${what}: not an ELF file`);
  const is64 = ident[4] === 2;
  if (ident[5] !== 1) throw new Error(`${what}: big-endian ELF is not supported`);
  const shoff = is64 ? Number(ident.readBigUInt64LE(0x28)) : ident.readUInt32LE(0x20);
  const shentsize = ident.readUInt16LE(is64 ? 0x3a : 0x2e);
  const shnum = ident.readUInt16LE(is64 ? 0x3c : 0x30);
  const shstrndx = ident.readUInt16LE(is64 ? 0x3e : 0x32);
  if (shoff === 0 || shnum === 0 || shstrndx >= shnum) return undefined;
  const table = read(shoff, shentsize * shnum);
  const header = (i: number) => {
    const o = i * shentsize;
    return is64
      ? {
          name: table.readUInt32LE(o),
          offset: Number(table.readBigUInt64LE(o + 24)),
          size: Number(table.readBigUInt64LE(o + 32)),
        }
      : { name: table.readUInt32LE(o), offset: table.readUInt32LE(o + 16), size: table.readUInt32LE(o + 20) };
  };
  const strtab = header(shstrndx);
  const names = read(strtab.offset, strtab.size);
  for (let i = 0; i < shnum; i++) {
    const h = header(i);
    const end = names.indexOf(0, h.name);
    if (names.toString("latin1", h.name, end < 0 ? undefined : end) === wanted) return read(h.offset, h.size);
  }
  return undefined;
}

/** The `.modinfo` section of an ELF module image held in memory. */
export function modinfoOfImage(image: Uint8Array, what = "module"): Array<[string, string]> {
  const buf = Buffer.from(image.buffer, image.byteOffset, image.length);
  const section = elfSection((pos, len) => buf.subarray(pos, pos + len), ".modinfo", what);
  return section ? parseModinfo(section) : [];
}

function runDecompressor(tool: string, file: string): Buffer {
  const r = spawnSync(tool, ["-dc", file], { maxBuffer: 1 << 30 });
  if (r.error || r.status !== 0) {
    const why = r.error ? r.error.message : (r.stderr?.toString() ?? "").trim();
    throw new Error(`cannot decompress ${file} with ${tool}: ${why} (install ${tool})`);
  }
  return r.stdout;
}

/** The module as the kernel wants it: `.ko.xz`/`.ko.zst`/`.ko.gz` are decompressed. */
export function readModuleImage(file: string): Buffer {
  if (file.endsWith(".ko.gz")) return gunzipSync(readFileSync(file));
  if (file.endsWith(".ko.xz")) return runDecompressor("xz", file);
  if (file.endsWith(".ko.zst")) return runDecompressor("zstd", file);
  return readFileSync(file);
}

/** Reads a module's `.modinfo` with a few small reads (plain `.ko`) or after decompressing. */
export function readModinfo(file: string): Array<[string, string]> {
  if (!file.endsWith(".ko")) return modinfoOfImage(readModuleImage(file), file);
  const fd = openSync(file, "r");
  try {
    const read: ReadAt = (position, length) => {
      const b = Buffer.alloc(length);
      const n = readSync(fd, b, 0, length, position);
      return b.subarray(0, n);
    };
    const section = elfSection(read, ".modinfo", file);
    return section ? parseModinfo(section) : [];
  } finally {
    closeSync(fd);
  }
}

function globToRegExp(glob: string): RegExp {
  let re = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === "*") re += ".*";
    else if (c === "?") re += ".";
    else if (c === "[") {
      const close = glob.indexOf("]", i + 1);
      if (close < 0) re += "\\[";
      else {
        re += `[${glob.slice(i + 1, close).replace(/\\/g, "\\\\")}]`;
        i = close;
      }
    } else re += c.replace(/[.+^${}()|\\]/g, "\\$&");
  }
  return new RegExp(`^${re}$`);
}

/** Module files and metadata of one unpacked kernel: `ROOT/lib/modules/VERSION/`. */
export class KernelModuleTree {
  /** Module name → path relative to the version directory. */
  readonly files = new Map<string, string>();
  /** Names of modules compiled into the kernel image (`modules.builtin`). */
  readonly builtin = new Set<string>();
  private readonly depFile: Map<string, ModuleInfo> | undefined;
  private readonly infoCache = new Map<string, Array<[string, string]>>();
  private aliases: Array<[RegExp, string]> | undefined;

  constructor(readonly dir: string) {
    if (!existsSync(dir)) throw new Error(`no kernel module directory at ${dir}`);
    const walk = (d: string) => {
      for (const e of readdirSync(d, { withFileTypes: true })) {
        const full = join(d, e.name);
        if (e.isDirectory()) walk(full);
        else if (MODULE_SUFFIX.test(e.name)) {
          const name = moduleName(e.name);
          const rel = relative(dir, full);
          // Keep the first in sorted order so the choice is reproducible.
          const prev = this.files.get(name);
          if (prev === undefined || rel < prev) this.files.set(name, rel);
        }
      }
    };
    walk(dir);
    const builtinFile = join(dir, "modules.builtin");
    if (existsSync(builtinFile)) {
      for (const line of readFileSync(builtinFile, "utf8").split("\n")) {
        if (line.trim()) this.builtin.add(moduleName(line.trim()));
      }
    }
    const depPath = join(dir, "modules.dep");
    this.depFile = existsSync(depPath) ? parseModulesDep(readFileSync(depPath, "utf8")) : undefined;
  }

  private modinfo(name: string): Array<[string, string]> {
    let info = this.infoCache.get(name);
    if (!info) {
      info = readModinfo(join(this.dir, this.files.get(name)!));
      this.infoCache.set(name, info);
    }
    return info;
  }

  /**
   * Resolves a name used in a soft dependency: a module name, or else an alias
   * (e.g. `crypto-crc32c`). Among several providers a `*_generic` one is preferred,
   * because it works on every CPU.
   */
  resolveName(nameOrAlias: string): string | undefined {
    const direct = moduleName(nameOrAlias);
    if (this.files.has(direct) || this.builtin.has(direct)) return direct;
    if (!this.aliases) {
      this.aliases = [];
      const aliasFile = join(this.dir, "modules.alias");
      if (existsSync(aliasFile)) {
        for (const line of readFileSync(aliasFile, "utf8").split("\n")) {
          const m = /^alias\s+(\S+)\s+(\S+)/.exec(line);
          if (m) this.aliases.push([globToRegExp(m[1]!), moduleName(m[2]!)]);
        }
      } else {
        for (const name of [...this.files.keys()].sort()) {
          for (const [k, v] of this.modinfo(name))
            if (k === "alias") this.aliases.push([globToRegExp(v), name]);
        }
      }
    }
    const providers = [
      ...new Set(this.aliases.filter(([re]) => re.test(nameOrAlias)).map(([, n]) => n)),
    ].sort();
    return providers.find((n) => n.endsWith("_generic")) ?? providers[0];
  }

  /** Dependency information for one module, from `modules.dep` when present, else from `.modinfo`. */
  info(name: string): ModuleInfo | undefined {
    const path = this.files.get(name);
    if (path === undefined) return undefined;
    const fields = this.modinfo(name);
    const softPre: string[] = [];
    for (const [k, v] of fields) {
      if (k !== "softdep") continue;
      // "pre: a b post: c" — only pre: matters for loading order.
      let inPre = false;
      for (const word of v.split(/\s+/)) {
        if (word === "pre:") inPre = true;
        else if (word.endsWith(":")) inPre = false;
        else if (inPre && word) {
          const resolved = this.resolveName(word);
          if (resolved) softPre.push(resolved);
        }
      }
    }
    const fromDep = this.depFile?.get(name);
    const depends = fromDep
      ? fromDep.depends
      : fields
          .filter(([k]) => k === "depends")
          .flatMap(([, v]) => v.split(","))
          .filter((d) => d !== "")
          .map(moduleName);
    return { name, path, depends, softPre };
  }

  /** The load order for `wanted`, with all their (soft and hard) dependencies. */
  resolve(wanted: readonly string[]): ModuleInfo[] {
    const graph = new Map<string, ModuleInfo>();
    const pending = wanted.map(moduleName);
    while (pending.length > 0) {
      const name = pending.pop()!;
      if (graph.has(name) || this.builtin.has(name)) continue;
      const info = this.info(name);
      if (!info) continue; // resolveModuleOrder reports it with context
      graph.set(name, info);
      pending.push(...info.depends, ...info.softPre);
    }
    return resolveModuleOrder(graph, wanted, this.builtin);
  }
}
