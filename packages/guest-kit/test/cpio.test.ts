import { gunzipSync } from "node:zlib";
import { describe, expect, it } from "vitest";
import { type CpioEntry, readCpioNewc, writeCpioNewc, writeInitramfs } from "../src/index.js";

const S_IFMT = 0o170000;

/** Offsets of every header in a newc archive, walking it independently of readCpioNewc. */
function headerOffsets(archive: Buffer): number[] {
  const offsets: number[] = [];
  let off = 0;
  for (;;) {
    offsets.push(off);
    const field = (i: number) =>
      Number.parseInt(archive.toString("ascii", off + 6 + i * 8, off + 14 + i * 8), 16);
    const size = field(6);
    const nameSize = field(11);
    const name = archive.toString("utf8", off + 110, off + 110 + nameSize - 1);
    const dataStart = Math.ceil((off + 110 + nameSize) / 4) * 4;
    expect(dataStart % 4).toBe(0);
    if (name === "TRAILER!!!") return offsets;
    off = Math.ceil((dataStart + size) / 4) * 4;
  }
}

const sample: CpioEntry[] = [
  { type: "directory", path: "bin" },
  { type: "directory", path: "tmp", mode: 0o1777 },
  { type: "file", path: "bin/busybox", data: Buffer.from("\x7fELF pretend"), mode: 0o755 },
  { type: "symlink", path: "bin/sh", target: "/bin/busybox" },
  { type: "directory", path: "dev" },
  { type: "chardev", path: "dev/console", major: 5, minor: 1 },
  { type: "chardev", path: "dev/null", major: 1, minor: 3, mode: 0o666 },
  { type: "file", path: "empty", data: new Uint8Array(0) },
  // names of every length mod 4, data of every length mod 4
  { type: "file", path: "a", data: Buffer.from("1") },
  { type: "file", path: "ab", data: Buffer.from("12") },
  { type: "file", path: "abc", data: Buffer.from("123") },
  { type: "file", path: "abcd", data: Buffer.from("1234") },
  { type: "file", path: "abcde", data: Buffer.from("12345") },
  { type: "file", path: "/leading/slash", data: Buffer.from("x") },
  { type: "file", path: "unicode-é", data: Buffer.from("é") },
];

describe("cpio newc", () => {
  it("reads back what it wrote", () => {
    const archive = writeCpioNewc(sample);
    expect(archive.toString("ascii", 0, 6)).toBe("070701");
    const members = readCpioNewc(archive);
    expect(members.map((m) => m.path)).toEqual(sample.map((e) => e.path.replace(/^\/+/, "")));
    const byPath = new Map(members.map((m) => [m.path, m]));

    const busybox = byPath.get("bin/busybox")!;
    expect(busybox.mode).toBe(0o100755);
    expect(busybox.data.toString()).toBe("\x7fELF pretend");

    expect(byPath.get("bin")!.mode).toBe(0o040755);
    expect(byPath.get("tmp")!.mode).toBe(0o041777);

    const sh = byPath.get("bin/sh")!;
    expect(sh.mode & S_IFMT).toBe(0o120000);
    expect(sh.data.toString()).toBe("/bin/busybox");

    const console = byPath.get("dev/console")!;
    expect(console.mode).toBe(0o020600);
    expect([console.rdevMajor, console.rdevMinor]).toEqual([5, 1]);
    expect(byPath.get("dev/null")!.mode).toBe(0o020666);

    expect(byPath.get("empty")!.data.length).toBe(0);
    expect(byPath.get("empty")!.mode).toBe(0o100644);
    for (const name of ["a", "ab", "abc", "abcd", "abcde"]) {
      expect(byPath.get(name)!.data.toString()).toBe("12345".slice(0, name.length));
    }
    expect(byPath.get("leading/slash")!.data.toString()).toBe("x");
    expect(byPath.get("unicode-é")!.data.toString()).toBe("é");
  });

  it("aligns every header and data block to 4 bytes and ends with the trailer", () => {
    const archive = writeCpioNewc(sample);
    const offsets = headerOffsets(archive);
    expect(offsets.length).toBe(sample.length + 1);
    for (const off of offsets) {
      expect(off % 4).toBe(0);
      expect(archive.toString("ascii", off, off + 6)).toBe("070701");
    }
    expect(archive.length % 4).toBe(0);
    // every header field is 8 hex digits
    expect(archive.toString("ascii", 0, 110)).toMatch(/^070701[0-9a-f]{104}$/);
  });

  it("is reproducible (fixed mtimes and inode numbers)", () => {
    expect(writeCpioNewc(sample).equals(writeCpioNewc(sample))).toBe(true);
  });

  it("rejects bad member paths", () => {
    for (const path of ["", "/", "../etc/passwd", "a/../../b", "a//b", "./a", "TRAILER!!!"]) {
      expect(() => writeCpioNewc([{ type: "file", path, data: new Uint8Array(0) }]), path).toThrow(
        /bad member path/,
      );
    }
  });

  it("rejects garbage and truncated archives", () => {
    expect(() =>
      readCpioNewc(Buffer.from("not a cpio archive at all, not even close to one".repeat(3))),
    ).toThrow(/bad magic/);
    const archive = writeCpioNewc(sample);
    expect(() => readCpioNewc(archive.subarray(0, archive.length - 200))).toThrow(/truncated/);
  });

  it("gzips for the kernel and round-trips", () => {
    const gz = writeInitramfs(sample);
    expect([gz[0], gz[1]]).toEqual([0x1f, 0x8b]);
    const raw = gunzipSync(gz);
    expect(raw.equals(writeCpioNewc(sample))).toBe(true);
    expect(readCpioNewc(raw).length).toBe(sample.length);
  });
});
