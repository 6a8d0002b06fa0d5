// `tskvm run` pieces that need no KVM, and `tskvm image` against qemu-img.
import { execFileSync, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { exitCodeFor } from "../src/commands/run.js";
import { EscapeFilter } from "../src/terminal.js";

const mainJs = fileURLToPath(new URL("../dist/main.js", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "tskvm-image-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const tskvm = (...args: string[]) => spawnSync(process.execPath, [mainJs, ...args], { encoding: "utf8" });

describe("console escape", () => {
  it("Ctrl-A x quits, Ctrl-A Ctrl-A sends one Ctrl-A, other bytes pass (Ctrl-C included)", () => {
    const f = new EscapeFilter();
    expect(f.push(Uint8Array.of(0x61, 0x03, 0x01, 0x01, 0x62))).toEqual({
      forward: Uint8Array.of(0x61, 0x03, 0x01, 0x62),
      quit: false,
    });
    expect(f.push(Uint8Array.of(0x63, 0x01))).toEqual({ forward: Uint8Array.of(0x63), quit: false });
    expect(f.push(Uint8Array.of(0x78, 0x64))).toEqual({ forward: Uint8Array.of(), quit: true });
  });
  it("maps machine exits to the documented codes", () => {
    const base = { vcpus: [], unhandledIo: [] };
    expect(exitCodeFor({ ...base, reason: "poweroff" })).toBe(0);
    expect(exitCodeFor({ ...base, reason: "reboot" })).toBe(0);
    expect(exitCodeFor({ ...base, reason: "crash" })).toBe(3);
    expect(exitCodeFor({ ...base, reason: "triple-fault" })).toBe(3);
    expect(exitCodeFor({ ...base, reason: "error" })).toBe(1);
    expect(exitCodeFor({ ...base, reason: "stopped" }, "SIGTERM")).toBe(143);
  });
});

describe("tskvm image", () => {
  const q = (...args: string[]) => execFileSync("qemu-img", args, { encoding: "utf8", cwd: dir });
  const ours = (...args: string[]) => {
    const r = spawnSync(process.execPath, [mainJs, ...args], { encoding: "utf8", cwd: dir });
    expect(r.status, r.stderr).toBe(0);
    return r.stdout;
  };

  it("creates qcow2 images qemu-img accepts, with and without a backing file", () => {
    const base = join(dir, "base.raw");
    writeFileSync(base, Buffer.alloc(8 << 20, 0xab));
    expect(ours("image", "create", "a.qcow2", "1G")).toBe(
      "Formatting 'a.qcow2', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib size=1073741824 lazy_refcounts=off refcount_bits=16\n",
    );
    // qemu-img's flags: -f qcow2, -b FILE -F FMT, and no SIZE with a backing file
    expect(ours("image", "create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", "b.qcow2")).toMatch(
      /size=8388608 backing_file=base\.raw backing_fmt=raw /,
    );
    expect(ours("image", "create", "c.qcow2", "-", "--backing", "b.qcow2")).toMatch(/backing_fmt=qcow2/);
    expect(ours("image", "create", "--compat", "0.10", "--cluster-size", "4K", "v2.qcow2", "1.5G")).toMatch(
      /cluster_size=4096 .* size=1610612736 compat=0\.10 /,
    );
    for (const f of ["a.qcow2", "b.qcow2", "c.qcow2", "v2.qcow2"]) q("check", f);
    expect(JSON.parse(q("info", "--output=json", "b.qcow2"))["virtual-size"]).toBe(8 << 20);
  }, 60_000);

  it("describes images as qemu-img info does: the same text, the same JSON", { timeout: 120_000 }, () => {
    mkdirSync(join(dir, "sub"), { recursive: true });
    q("create", "-q", "-f", "qcow2", "-b", "../b.qcow2", "-F", "qcow2", "sub/d.qcow2");
    q("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on,cluster_size=2M", "lazy.qcow2", "3G");
    const images = ["a.qcow2", "b.qcow2", "c.qcow2", "v2.qcow2", "base.raw", "sub/d.qcow2", "lazy.qcow2"];
    for (const image of images) {
      for (const chain of [[], ["--backing-chain"]]) {
        expect(ours("image", "info", ...chain, image), `${image} ${chain}`).toBe(q("info", ...chain, image));
        const theirs = JSON.parse(q("info", "--output=json", ...chain, image)) as object | object[];
        const mine = JSON.parse(ours("image", "info", "--output", "json", ...chain, image)) as
          | object
          | object[];
        // Newer qemu-img adds fields tskvm does not know ("children", ...): compare the ones it writes, and
        // that it leaves out none of qemu-img 7's.
        const known = (x: object) =>
          Object.fromEntries(Object.entries(x).filter(([k]) => !["children", "snapshots"].includes(k)));
        expect(Array.isArray(mine)).toBe(Array.isArray(theirs));
        expect([mine].flat().map(known), `${image} ${chain}`).toEqual([theirs].flat().map(known));
      }
    }
    // --json is --output json
    expect(ours("image", "info", "--json", "a.qcow2")).toBe(
      ours("image", "info", "--output", "json", "a.qcow2"),
    );
  });

  it("gives clear errors and exit codes", { timeout: 60_000 }, () => {
    const missing = tskvm("image", "info", join(dir, "nope.qcow2"));
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/^tskvm image info: error: .*nope\.qcow2.*ENOENT|no such file/);
    expect(tskvm("image", "create", join(dir, "c.qcow2")).status).toBe(2);
    expect(tskvm("image", "create", join(dir, "c.qcow2"), "-").status).toBe(2);
    expect(tskvm("image", "create", "-f", "raw", join(dir, "r.img"), "1G").stderr).toMatch(
      /^tskvm image create: error: -f\/--format: only qcow2 images are created, not 'raw'/,
    );
    expect(tskvm("image", "create", join(dir, "odd.qcow2"), "1000").stderr).toMatch(
      /^tskvm image create: error: SIZE must be a multiple of 512 bytes, not 1000\n/,
    );
    const exists = tskvm("image", "create", join(dir, "a.qcow2"), "1G"); // exists, no --force
    expect(exists.status).toBe(1);
    expect(exists.stderr).toBe(
      `tskvm image create: error: ${join(dir, "a.qcow2")}: the file exists\n  hint: choose another name, or add --force to overwrite it.\n`,
    );
  });
});
