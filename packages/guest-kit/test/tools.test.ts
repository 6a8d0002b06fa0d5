import { spawnSync } from "node:child_process";
import {
  chmodSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, posix } from "node:path";
import { gunzipSync } from "node:zlib";
import { afterAll, describe, expect, it } from "vitest";
import {
  appendInitrd,
  buildToolsArchive,
  type CpioMember,
  GUEST_PATH_DIRS,
  readCpioNewc,
  writeInitramfs,
} from "../src/index.js";
import { elfInterpreter, findHostTool, lddLibraries } from "../src/tools.js";

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const INTERP = "lib64/ld-linux-x86-64.so.2";

const tmp = mkdtempSync(join(tmpdir(), "tskvm-tools-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** A 132-byte static x86-64 ELF executable that does exit(42): no libraries, no interpreter. */
const EXIT42_ELF = Buffer.from(
  "7f454c4602010100000000000000000002003e00010000007800400000000000" +
    "4000000000000000000000000000000000000000400038000100000000000000" +
    "0100000005000000000000000000000000004000000000000000400000000000" +
    "840000000000000084000000000000000010000000000000bf2a000000b83c00" +
    "00000f05",
  "hex",
);

function members(archive: Uint8Array): Map<string, CpioMember> {
  expect([archive[0], archive[1]]).toEqual([0x1f, 0x8b]);
  const list = readCpioNewc(gunzipSync(archive));
  const byPath = new Map<string, CpioMember>();
  for (const m of list) {
    expect(byPath.has(m.path), `duplicate ${m.path}`).toBe(false);
    // every member's directory comes before it (the kernel does not create parents)
    const dir = posix.dirname(m.path);
    if (dir !== ".") expect((byPath.get(dir)?.mode ?? 0) & S_IFMT, `directory of ${m.path}`).toBe(S_IFDIR);
    byPath.set(m.path, m);
  }
  return byPath;
}

/** Follows symlinks inside the archive (relative or absolute targets) to a regular file's path. */
function resolveIn(byPath: Map<string, CpioMember>, path: string): string {
  let p = path;
  for (let hops = 0; hops < 10; hops++) {
    const m = byPath.get(p);
    if (!m) throw new Error(`${p} is not in the archive`);
    if ((m.mode & S_IFMT) !== S_IFLNK) return p;
    const target = m.data.toString();
    p = posix.normalize(target.startsWith("/") ? target.slice(1) : posix.join(posix.dirname(p), target));
  }
  throw new Error(`symlink loop at ${path}`);
}

function extract(archive: Uint8Array, dest: string): void {
  for (const m of readCpioNewc(gunzipSync(archive))) {
    const path = join(dest, m.path);
    switch (m.mode & S_IFMT) {
      case S_IFDIR:
        mkdirSync(path, { recursive: true, mode: m.mode & 0o7777 });
        break;
      case S_IFREG:
        writeFileSync(path, m.data);
        chmodSync(path, m.mode & 0o7777);
        break;
      case S_IFLNK:
        symlinkSync(m.data.toString(), path);
        break;
      default:
        throw new Error(`unexpected member ${m.path} mode ${m.mode.toString(8)}`);
    }
  }
}

const strip = (p: string) => p.replace(/^\/+/, "");

describe("buildToolsArchive", () => {
  const archive = buildToolsArchive({ tools: ["mkfs.ext4", "e2fsck", "blkid"] });
  const byPath = members(archive);
  const mke2fs = realpathSync(findHostTool("mke2fs"));

  it("has each binary at its real path with its mode", () => {
    for (const tool of ["mke2fs", "e2fsck", "blkid"]) {
      const real = realpathSync(findHostTool(tool));
      const m = byPath.get(strip(real));
      expect(m?.mode, real).toBe(S_IFREG | 0o755);
      expect(m?.data.equals(readFileSync(real)), real).toBe(true);
    }
  });

  it("puts every name asked for in each guest PATH directory, linked to the real binary", () => {
    for (const tool of ["mkfs.ext4", "mke2fs", "e2fsck", "blkid"]) {
      const real = strip(realpathSync(findHostTool(tool)));
      for (const dir of GUEST_PATH_DIRS) {
        const at = `${dir}/${tool}`;
        expect(resolveIn(byPath, at), at).toBe(real);
        // links, not copies, so argv[0] is the name (mke2fs makes ext4 when called mkfs.ext4)
        if (at !== real) expect(byPath.get(at)!.mode & S_IFMT, at).toBe(S_IFLNK);
      }
    }
    // relative targets, so the tree also works extracted anywhere
    expect(byPath.get("sbin/mkfs.ext4")!.data.toString()).not.toMatch(/^\//);
    // a name not asked for is not added (busybox keeps its mkfs.ext2)
    expect(byPath.has("sbin/mkfs.ext2")).toBe(false);
    expect(resolveIn(byPath, "sbin/mkfs.ext4")).toBe(strip(mke2fs));
  });

  it("has every library ldd lists and the ELF interpreter, with the real files' contents", () => {
    const libs = lddLibraries(mke2fs);
    expect(libs.some((l) => /\/libext2fs\.so\.2$/.test(l))).toBe(true);
    expect(libs.some((l) => /\/libc\.so\.6$/.test(l))).toBe(true);
    expect(elfInterpreter(readFileSync(mke2fs))).toBe(`/${INTERP}`);
    for (const lib of [...libs, `/${INTERP}`]) {
      const m = byPath.get(strip(lib));
      expect(m && m.mode & S_IFMT, lib).toBe(S_IFREG);
      expect(m!.data.equals(readFileSync(lib)), lib).toBe(true);
    }
    expect(byPath.get(INTERP)!.mode & 0o111).not.toBe(0);
  });

  it("runs from the extracted archive through the bundled loader and libraries only", () => {
    const dir = join(tmp, "root");
    extract(archive, dir);
    const libPath = [`${dir}/lib/x86_64-linux-gnu`, `${dir}/usr/lib/x86_64-linux-gnu`].join(":");
    const run = (args: string[]) =>
      spawnSync(join(dir, INTERP), ["--library-path", libPath, ...args], { encoding: "utf8" });

    const version = run([join(dir, "sbin/mke2fs"), "-V"]);
    expect(version.status, version.stderr).toBe(0);
    expect(version.stderr).toMatch(/^mke2fs \d/);

    // every library resolves inside the extracted tree, none from the host
    const list = run(["--list", join(dir, strip(mke2fs))]);
    expect(list.status, list.stderr).toBe(0);
    const resolved = [...list.stdout.matchAll(/=> (\S+)/g)].map((m) => m[1]!);
    expect(resolved.length).toBeGreaterThan(3);
    for (const lib of resolved) expect(lib.startsWith(`${dir}/`), lib).toBe(true);

    // called by the symlinked name, mke2fs makes ext4 (extents: incompat feature 0x40)
    const image = join(tmp, "fs.img");
    const mkfs = run([join(dir, "usr/bin/mkfs.ext4"), "-F", "-q", image, "4M"]);
    expect(mkfs.status, mkfs.stderr).toBe(0);
    expect(readFileSync(image).readUInt32LE(1024 + 0x60) & 0x40).toBe(0x40);
    const fsck = run([join(dir, "sbin/e2fsck"), "-f", "-n", image]);
    expect(fsck.status, fsck.stdout + fsck.stderr).toBe(0);
    const blkid = run([join(dir, "bin/blkid"), "-p", "-o", "value", "-s", "TYPE", image]);
    expect(blkid.stdout.trim(), blkid.stderr).toBe("ext4");
  });

  it("names a tool that does not exist", () => {
    expect(() => buildToolsArchive({ tools: ["mke2fs", "no-such-tool-tskvm"] })).toThrow(
      /tool no-such-tool-tskvm not found in PATH or \/usr\/sbin:\/sbin:\/usr\/bin:\/bin/,
    );
    expect(() => buildToolsArchive({ tools: ["/nonexistent/tskvm-tool"] })).toThrow(
      /tool \/nonexistent\/tskvm-tool: .* is not an executable file/,
    );
    const plain = join(tmp, "not-executable");
    writeFileSync(plain, "data", { mode: 0o644 });
    expect(() => buildToolsArchive({ tools: [plain] })).toThrow(/is not an executable file/);
  });

  it("takes a static binary alone", () => {
    const dir = join(tmp, "static");
    mkdirSync(dir);
    const exe = join(dir, "exit42");
    writeFileSync(exe, EXIT42_ELF, { mode: 0o755 });
    expect(spawnSync(exe).status).toBe(42);
    expect(lddLibraries(exe)).toEqual([]);
    expect(elfInterpreter(EXIT42_ELF)).toBeUndefined();

    const byPath = members(buildToolsArchive({ tools: [exe] }));
    const real = strip(realpathSync(exe));
    expect(byPath.get(real)?.data.equals(EXIT42_ELF)).toBe(true);
    for (const d of GUEST_PATH_DIRS) expect(resolveIn(byPath, `${d}/exit42`)).toBe(real);
    const files = [...byPath.values()].filter((m) => (m.mode & S_IFMT) !== S_IFDIR).map((m) => m.path);
    expect(files.sort()).toEqual([real, ...GUEST_PATH_DIRS.map((d) => `${d}/exit42`)].sort());

    // a symlink to it, given by path: its name and the binary's own name both land on PATH
    const alias = join(dir, "quit");
    symlinkSync("exit42", alias);
    const aliased = members(buildToolsArchive({ tools: [alias] }));
    expect(resolveIn(aliased, strip(alias))).toBe(real);
    for (const d of GUEST_PATH_DIRS) {
      expect(resolveIn(aliased, `${d}/quit`)).toBe(real);
      expect(resolveIn(aliased, `${d}/exit42`)).toBe(real);
    }

    // two different programs of the same name cannot both be on PATH
    const other = join(tmp, "other");
    mkdirSync(other);
    writeFileSync(join(other, "exit42"), EXIT42_ELF, { mode: 0o755 });
    expect(() => buildToolsArchive({ tools: [exe, join(other, "exit42")] })).toThrow(
      /both want \/usr\/sbin\/exit42/,
    );
  });

  it("adds files, and keeps the kit's modes of /tmp and /root", () => {
    const byPath = members(
      buildToolsArchive({
        tools: [],
        files: [
          { path: "/etc/mke2fs.conf", data: Buffer.from("[defaults]\n") },
          { path: "usr/local/bin/hello", data: Buffer.from("#!/bin/sh\necho hi\n"), mode: 0o755 },
        ],
      }),
    );
    expect(byPath.get("etc/mke2fs.conf")?.mode).toBe(S_IFREG | 0o644);
    expect(byPath.get("usr/local/bin/hello")?.mode).toBe(S_IFREG | 0o755);
    const special = readCpioNewc(
      gunzipSync(
        buildToolsArchive({
          tools: [],
          files: [
            { path: "tmp/x", data: Buffer.from("x") },
            { path: "root/.profile", data: Buffer.from("") },
          ],
        }),
      ),
    );
    expect(special.find((m) => m.path === "tmp")?.mode).toBe(S_IFDIR | 0o1777);
    expect(special.find((m) => m.path === "root")?.mode).toBe(S_IFDIR | 0o700);
    expect(() => buildToolsArchive({ tools: [], files: [{ path: "../x", data: Buffer.from("") }] })).toThrow(
      /bad file path/,
    );
  });
});

describe("appendInitrd", () => {
  it("writes the kit's initrd followed by the extra archive", () => {
    const kit = writeInitramfs([
      { type: "file", path: "init", data: Buffer.from("#!/bin/sh\n"), mode: 0o755 },
    ]);
    const extra = buildToolsArchive({ tools: [], files: [{ path: "etc/hello", data: Buffer.from("hi") }] });
    const kitPath = join(tmp, "kit.img");
    writeFileSync(kitPath, kit);
    const out = join(tmp, "with-tools.img");
    expect(appendInitrd(kitPath, extra, out)).toBe(out);
    const both = readFileSync(out);
    expect(both.equals(Buffer.concat([kit, extra]))).toBe(true);
    // two gzip members, each a complete cpio archive
    expect(readCpioNewc(gunzipSync(both.subarray(0, kit.length)))[0]?.path).toBe("init");
    expect(readCpioNewc(gunzipSync(both.subarray(kit.length))).map((m) => m.path)).toEqual([
      "etc",
      "etc/hello",
    ]);
  });

  it("refuses what is not gzip", () => {
    const raw = join(tmp, "raw.img");
    writeFileSync(raw, "070701...");
    const extra = buildToolsArchive({ tools: [] });
    expect(() => appendInitrd(raw, extra, join(tmp, "x.img"))).toThrow(/not a gzip-compressed initrd/);
    const gz = join(tmp, "gz.img");
    writeFileSync(gz, extra);
    expect(() => appendInitrd(gz, Buffer.from("070701"), join(tmp, "y.img"))).toThrow(/not gzip-compressed/);
  });
});
