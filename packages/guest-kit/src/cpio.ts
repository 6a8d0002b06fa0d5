import { gzipSync } from "node:zlib";

/** One member of a cpio archive. Directories and symlinks carry no data of their own. */
export type CpioEntry =
  | { type: "file"; path: string; data: Uint8Array; mode?: number }
  | { type: "directory"; path: string; mode?: number }
  | { type: "symlink"; path: string; target: string }
  | { type: "chardev"; path: string; major: number; minor: number; mode?: number };

const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const TRAILER = "TRAILER!!!";

function hex8(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new RangeError(`cpio field out of range: ${n}`);
  return n.toString(16).padStart(8, "0");
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

function normalise(path: string): string {
  const p = path.replace(/^\/+/, "").replace(/\/+$/, "");
  if (
    p === "" ||
    p === TRAILER ||
    p.split("/").some((part) => part === ".." || part === "." || part === "")
  ) {
    throw new Error(`cpio: bad member path ${JSON.stringify(path)}`);
  }
  return p;
}

/**
 * Writes a cpio "newc" archive (the format the Linux kernel unpacks as an initramfs).
 * Inode numbers are assigned in order; every member is owned by root.
 */
export function writeCpioNewc(entries: readonly CpioEntry[]): Buffer {
  const chunks: Buffer[] = [];
  let ino = 1;
  const member = (name: string, mode: number, data: Uint8Array, rdev: [number, number], nlink: number) => {
    const nameBytes = Buffer.from(`${name}\0`, "utf8");
    const header =
      "070701" +
      hex8(name === TRAILER ? 0 : ino++) +
      hex8(mode) +
      hex8(0) + // uid
      hex8(0) + // gid
      hex8(nlink) +
      hex8(0) + // mtime: fixed, so archives are reproducible
      hex8(data.length) +
      hex8(0) + // dev major
      hex8(0) + // dev minor
      hex8(rdev[0]) +
      hex8(rdev[1]) +
      hex8(nameBytes.length) +
      hex8(0); // check
    chunks.push(Buffer.from(header, "ascii"), nameBytes, Buffer.alloc(pad4(110 + nameBytes.length)));
    if (data.length > 0)
      chunks.push(Buffer.from(data.buffer, data.byteOffset, data.length), Buffer.alloc(pad4(data.length)));
  };
  for (const e of entries) {
    const name = normalise(e.path);
    switch (e.type) {
      case "file":
        member(name, S_IFREG | ((e.mode ?? 0o644) & 0o7777), e.data, [0, 0], 1);
        break;
      case "directory":
        member(name, S_IFDIR | ((e.mode ?? 0o755) & 0o7777), new Uint8Array(0), [0, 0], 2);
        break;
      case "symlink":
        member(name, S_IFLNK | 0o777, Buffer.from(e.target, "utf8"), [0, 0], 1);
        break;
      case "chardev":
        member(name, S_IFCHR | ((e.mode ?? 0o600) & 0o7777), new Uint8Array(0), [e.major, e.minor], 1);
        break;
    }
  }
  member(TRAILER, 0, new Uint8Array(0), [0, 0], 1);
  return Buffer.concat(chunks);
}

/** A gzip-compressed newc archive, as `initrd=` wants it. */
export function writeInitramfs(entries: readonly CpioEntry[]): Buffer {
  return gzipSync(writeCpioNewc(entries), { level: 6 });
}

/** A member read back from an archive by {@link readCpioNewc}. */
export interface CpioMember {
  path: string;
  mode: number;
  data: Buffer;
  rdevMajor: number;
  rdevMinor: number;
}

/** Parses a newc archive (for tests and `guest build` checks); stops at the trailer. */
export function readCpioNewc(archive: Uint8Array): CpioMember[] {
  const buf = Buffer.from(archive.buffer, archive.byteOffset, archive.length);
  const out: CpioMember[] = [];
  let off = 0;
  for (;;) {
    if (off + 110 > buf.length) throw new Error("cpio: truncated header");
    const magic = buf.toString("ascii", off, off + 6);
    if (magic !== "070701" && magic !== "070702") throw new Error(`cpio: bad magic at ${off}`);
    const field = (i: number) => {
      const s = buf.toString("ascii", off + 6 + i * 8, off + 14 + i * 8);
      if (!/^[0-9a-fA-F]{8}$/.test(s)) throw new Error(`cpio: bad header field at ${off}`);
      return Number.parseInt(s, 16);
    };
    const mode = field(1);
    const size = field(6);
    const rdevMajor = field(9);
    const rdevMinor = field(10);
    const nameSize = field(11);
    const nameStart = off + 110;
    if (nameSize < 1 || nameStart + nameSize > buf.length) throw new Error("cpio: truncated name");
    const path = buf.toString("utf8", nameStart, nameStart + nameSize - 1);
    const dataStart = nameStart + nameSize + pad4(110 + nameSize);
    if (dataStart + size > buf.length) throw new Error("cpio: truncated data");
    if (path === TRAILER) return out;
    out.push({ path, mode, data: buf.subarray(dataStart, dataStart + size), rdevMajor, rdevMinor });
    off = dataStart + size + pad4(size);
  }
}
