import { spawnSync } from "node:child_process";
import {
  accessSync,
  closeSync,
  constants,
  openSync,
  readFileSync,
  readSync,
  realpathSync,
  renameSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { delimiter, isAbsolute, posix, resolve } from "node:path";
import { type CpioEntry, writeInitramfs } from "./cpio.js";

/**
 * Directories searched for a tool name after `$PATH` (sbin first: the tools tests want,
 * `mkfs.ext4`, `e2fsck`, `blkid`, live there and are often missing from a user's PATH).
 */
export const TOOL_SEARCH_DIRS: readonly string[] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/**
 * The directories of the default guest's PATH (`/init` sets `PATH=/usr/sbin:/usr/bin:/sbin:/bin`).
 * Every tool name asked for (and its binary's real name: `mkfs.ext4` and `mke2fs`) is put in
 * each of them, so the host tool wins over a busybox applet of the same name whatever the
 * PATH order and wherever busybox put its applet.
 */
export const GUEST_PATH_DIRS: readonly string[] = ["usr/sbin", "usr/bin", "sbin", "bin"];

/** A file to add to the archive as is (e.g. `etc/mke2fs.conf`). */
export interface ToolsArchiveFile {
  /** Path in the guest (a leading `/` is optional). */
  path: string;
  data: Uint8Array;
  /** Permission bits; default 0o644. */
  mode?: number;
}

export interface ToolsArchiveOptions {
  /**
   * Host programs: a name looked up in `$PATH` and then {@link TOOL_SEARCH_DIRS}
   * (e.g. `mkfs.ext4`), or a path (absolute, or relative to the working directory).
   */
  tools: readonly string[];
  /** Extra files, written after the tools (so they win on the same path). */
  files?: readonly ToolsArchiveFile[];
}

/** Modes of directories that the kit creates with other than 0755 (a later archive's entry re-chmods them). */
const DIR_MODES: Readonly<Record<string, number>> = { tmp: 0o1777, root: 0o700 };

/** Finds a tool on the host: its absolute path (not resolved), or an Error naming it. */
export function findHostTool(tool: string): string {
  if (tool === "") throw new Error("tool name is empty");
  const isExecutableFile = (path: string) => {
    try {
      if (!statSync(path).isFile()) return false;
      accessSync(path, constants.X_OK);
      return true;
    } catch {
      return false;
    }
  };
  if (tool.includes("/")) {
    const path = resolve(tool);
    if (!isExecutableFile(path)) throw new Error(`tool ${tool}: ${path} is not an executable file`);
    return path;
  }
  const dirs = [...(process.env.PATH ?? "").split(delimiter), ...TOOL_SEARCH_DIRS].filter((d) =>
    isAbsolute(d),
  );
  for (const dir of new Set(dirs)) {
    const path = posix.join(dir, tool);
    if (isExecutableFile(path)) return path;
  }
  throw new Error(`tool ${tool} not found in PATH or ${TOOL_SEARCH_DIRS.join(":")}`);
}

function readHead(path: string, bytes: number): Buffer {
  const fd = openSync(path, "r");
  try {
    const buf = Buffer.alloc(bytes);
    return buf.subarray(0, readSync(fd, buf, 0, bytes, 0));
  } finally {
    closeSync(fd);
  }
}

/** The ELF interpreter (`PT_INTERP`, e.g. `/lib64/ld-linux-x86-64.so.2`) of an ELF file, if it has one. */
export function elfInterpreter(image: Uint8Array): string | undefined {
  const b = Buffer.from(image.buffer, image.byteOffset, image.length);
  if (b.length < 52 || b.readUInt32BE(0) !== 0x7f454c46) throw new Error("not an ELF file");
  const is64 = b[4] === 2;
  const le = b[5] === 1;
  const u16 = (o: number) => (le ? b.readUInt16LE(o) : b.readUInt16BE(o));
  const u32 = (o: number) => (le ? b.readUInt32LE(o) : b.readUInt32BE(o));
  const uword = (o: number) => (is64 ? Number(le ? b.readBigUInt64LE(o) : b.readBigUInt64BE(o)) : u32(o));
  const phoff = uword(is64 ? 0x20 : 0x1c);
  const phentsize = u16(is64 ? 0x36 : 0x2a);
  const phnum = u16(is64 ? 0x38 : 0x2c);
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    if (ph + (is64 ? 56 : 32) > b.length) throw new Error("truncated ELF program header table");
    if (u32(ph) !== 3) continue; // PT_INTERP
    const off = uword(is64 ? ph + 8 : ph + 4);
    const size = uword(is64 ? ph + 32 : ph + 16);
    if (off + size > b.length) throw new Error("truncated ELF interpreter");
    return b.toString("latin1", off, off + size).replace(/\0.*$/s, "");
  }
  return undefined;
}

/**
 * The shared libraries `ldd` lists for a dynamic executable (absolute paths as the loader
 * finds them, the interpreter included); `[]` for a static one. Throws when a library is
 * not found.
 */
export function lddLibraries(binary: string): string[] {
  const r = spawnSync("ldd", [binary], { encoding: "utf8", env: { ...process.env, LC_ALL: "C" } });
  if (r.error) throw new Error(`cannot run ldd ${binary}: ${r.error.message}`);
  const text = `${r.stdout}\n${r.stderr}`;
  if (/not a dynamic executable|statically linked/.test(text)) return [];
  if (r.status !== 0) throw new Error(`ldd ${binary} failed: ${r.stderr.trim() || `status ${r.status}`}`);
  const libs: string[] = [];
  for (const raw of r.stdout.split("\n")) {
    const line = raw.trim();
    if (line === "") continue;
    const arrow = /^(\S+) => (.*?)(?: \(0x[0-9a-f]+\))?$/.exec(line);
    if (arrow) {
      const [, soname, where] = arrow;
      if (where === "not found") throw new Error(`${binary} needs ${soname}, which ldd cannot find`);
      if (where?.startsWith("/")) libs.push(where);
      continue;
    }
    // `/lib64/ld-linux-x86-64.so.2 (0x...)` is the interpreter; `linux-vdso.so.1 (0x...)` is the kernel's.
    const bare = /^(\/\S+)(?: \(0x[0-9a-f]+\))?$/.exec(line);
    if (bare?.[1]) libs.push(bare[1]);
  }
  return libs;
}

/** The members of {@link buildToolsArchive}'s archive (directories first in each path, no duplicates). */
export function toolsArchiveEntries(options: ToolsArchiveOptions): CpioEntry[] {
  const entries: CpioEntry[] = [];
  const dirs = new Set<string>();
  // guest path -> [what is there (the real host file, or a link's target), who put it there]
  const taken = new Map<string, [string, string]>();
  const strip = (p: string) => posix.normalize(p).replace(/^\/+/, "");
  const dir = (path: string) => {
    const parts = path.split("/");
    for (let i = 1; i <= parts.length; i++) {
      const p = parts.slice(0, i).join("/");
      if (p === "" || dirs.has(p)) continue;
      dirs.add(p);
      entries.push({ type: "directory", path: p, mode: DIR_MODES[p] ?? 0o755 });
    }
  };
  /** Whether guest path `p` is still free for `what`; false if it already holds the same thing. */
  const claim = (p: string, what: string, why: string): boolean => {
    const before = taken.get(p);
    if (before === undefined) {
      taken.set(p, [what, why]);
      const d = posix.dirname(p);
      if (d !== ".") dir(d);
      return true;
    }
    if (before[0] === what) return false;
    throw new Error(`${why} and ${before[1]} both want /${p} in the guest`);
  };
  /** The host file `source` (symlinks followed) stored at guest path `at`. */
  const file = (at: string, source: string, why: string) => {
    const p = strip(at);
    const real = realpathSync(source);
    if (!claim(p, `file ${real}`, why)) return;
    const st = statSync(real);
    entries.push({ type: "file", path: p, data: readFileSync(real), mode: st.mode & 0o7777 });
  };
  /** A relative symlink at guest path `at` to the file stored at guest path `target`. */
  const link = (at: string, target: string, why: string) => {
    const p = strip(at);
    const t = strip(target);
    if (p === t || !claim(p, `file ${posix.join("/", t)}`, why)) return;
    entries.push({ type: "symlink", path: p, target: posix.relative(posix.dirname(p), t) });
  };

  for (const tool of options.tools) {
    const found = findHostTool(tool);
    const real = realpathSync(found);
    const why = `tool ${tool}`;
    const head = readHead(real, 4);
    const isElf = head.length === 4 && head.readUInt32BE(0) === 0x7f454c46;
    if (!isElf && head.subarray(0, 2).toString("latin1") !== "#!") {
      throw new Error(`tool ${tool}: ${real} is neither an ELF executable nor a script`);
    }
    // The binary at its real path (directory symlinks resolved, so it never replaces a
    // guest directory with a symlink, e.g. on merged-/usr hosts where /sbin -> usr/sbin).
    file(real, real, why);
    // Where it was found, e.g. /usr/sbin/mkfs.ext4 -> mke2fs, so argv[0] keeps the name.
    link(found, real, why);
    // The name asked for and the real binary's (mkfs.ext4 and mke2fs) in every PATH directory.
    const names = new Set([posix.basename(tool.includes("/") ? found : tool), posix.basename(real)]);
    for (const name of names) for (const d of GUEST_PATH_DIRS) link(`${d}/${name}`, real, why);
    if (!isElf) continue; // a script's interpreter is the guest's (busybox sh, say)
    // The loader looks a library up by the name ldd shows (e.g. /lib/x86_64-linux-gnu/libc.so.6,
    // a symlink to libc.so.6's real file on the host): store the real file's data there.
    const interp = elfInterpreter(readHead(real, 64 * 1024));
    if (interp) file(interp, interp, `interpreter of ${tool}`);
    for (const lib of lddLibraries(real)) file(lib, lib, `library of ${tool}`);
  }
  for (const f of options.files ?? []) {
    const p = strip(f.path);
    if (p === "" || p === "." || p.startsWith("../"))
      throw new Error(`bad file path ${JSON.stringify(f.path)}`);
    const d = posix.dirname(p);
    if (d !== ".") dir(d);
    entries.push({ type: "file", path: p, data: f.data, mode: f.mode ?? 0o644 });
  }
  return entries;
}

/**
 * A gzip-compressed cpio (newc) archive with host programs, their shared libraries and ELF
 * interpreter, and `options.files`, to be loaded by Linux as an extra initramfs after the
 * kit's initrd (see {@link appendInitrd}).
 *
 * - each tool's binary is stored at its real path (all symlinks resolved, e.g. `/usr/sbin/mke2fs`);
 * - where the tool was found (`/usr/sbin/mkfs.ext4`), and `/usr/sbin/NAME`, `/usr/bin/NAME`,
 *   `/sbin/NAME`, `/bin/NAME` ({@link GUEST_PATH_DIRS}) for NAME the name given and the
 *   binary's own name (`mkfs.ext4`, `mke2fs`), are relative symlinks to it (unless it is
 *   there itself), so the program runs under the name given (multi-call binaries like mke2fs
 *   look at argv[0]) and replaces any busybox applet of that name, whatever the PATH order:
 *   entries of a later archive replace those of an earlier one (init/initramfs.c
 *   `clean_path()` unlinks an existing member of another type first). Other busybox applets
 *   stay. One exception: the kit's busybox is built to prefer its applets (its `sh`, `env`,
 *   `xargs` run an applet for an applet's name without looking at PATH), so in a guest
 *   command `mke2fs` (an applet) is busybox's while `/usr/sbin/mke2fs` and `mkfs.ext4` (not
 *   an applet) are the host's: call a tool whose name is an applet by path; `/usr/sbin/NAME`
 *   is always there. Programs that exec by name through libc (execvp) do use PATH;
 * - every library `ldd` lists and the `PT_INTERP` interpreter are stored at the path the
 *   loader opens (`/lib/x86_64-linux-gnu/libc.so.6`, `/lib64/ld-linux-x86-64.so.2`) with
 *   the content of the file it resolves to. The guest has no `/etc/ld.so.cache`, so libraries
 *   must be in the loader's default directories (`/lib/x86_64-linux-gnu`, `/usr/lib/...`),
 *   as distribution libraries are; libraries loaded with `dlopen` are not found by ldd and
 *   must be added as tools or files.
 *
 * Static binaries (ldd: "not a dynamic executable") are stored alone; scripts (`#!`) too,
 * run by whatever interpreter the guest has. A tool that is not found throws an Error
 * naming it.
 */
export function buildToolsArchive(options: ToolsArchiveOptions): Buffer {
  return writeInitramfs(toolsArchiveEntries(options));
}

/**
 * Writes `kitInitrd` followed by `extra` to `outPath` (through a temporary file and a
 * rename) and returns `outPath`. The kit's initrd is a gzip-compressed cpio; Linux accepts
 * an initramfs that is several archives, each compressed on its own, one after another
 * (Documentation/driver-api/early-userspace/buffer-format.rst: `initramfs := ("\0" |
 * cpio_archive | cpio_compressed_archive)*`; init/initramfs.c `unpack_to_rootfs()` goes on
 * after each compressed stream ends). The archives are unpacked in order into the same
 * rootfs, so members of `extra` replace the kit's members at the same path. (Checked: the
 * kit's Debian kernel boots such an initrd under QEMU and runs the host's mkfs.ext4 and e2fsck.)
 */
export function appendInitrd(kitInitrd: string, extra: Uint8Array, outPath: string): string {
  const base = readFileSync(kitInitrd);
  if (base.length < 2 || base[0] !== 0x1f || base[1] !== 0x8b) {
    throw new Error(`${kitInitrd} is not a gzip-compressed initrd`);
  }
  if (extra.length < 2 || extra[0] !== 0x1f || extra[1] !== 0x8b) {
    throw new Error("the extra archive is not gzip-compressed (use buildToolsArchive or writeInitramfs)");
  }
  const tmp = `${outPath}.${process.pid}.tmp`;
  writeFileSync(tmp, Buffer.concat([base, extra]));
  renameSync(tmp, outPath);
  return outPath;
}
