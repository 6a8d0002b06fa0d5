// `tskvm run` pieces that need no KVM, and `tskvm image` against qemu-img.
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { parseSize } from "../src/commands/image.js";
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
  it("parses sizes like qemu-img", () => {
    expect(parseSize("10G")).toBe(10 * 2 ** 30);
    expect(parseSize("512M")).toBe(512 * 2 ** 20);
    expect(parseSize("1048576")).toBe(1048576);
    expect(() => parseSize("12x")).toThrow(/bad size/);
    expect(() => parseSize("100")).toThrow(/multiple of 512/);
  });

  it("creates qcow2 images qemu-img accepts, with and without a backing file", () => {
    const base = join(dir, "base.raw");
    writeFileSync(base, Buffer.alloc(8 << 20, 0xab));
    expect(tskvm("image", "create", join(dir, "a.qcow2"), "1G").status).toBe(0);
    expect(
      tskvm("image", "create", join(dir, "b.qcow2"), "-", "--backing", "base.raw", "-F", "raw").status,
    ).toBe(0);
    for (const f of ["a.qcow2", "b.qcow2"]) execFileSync("qemu-img", ["check", join(dir, f)]);
    const q = JSON.parse(
      execFileSync("qemu-img", ["info", "--output=json", join(dir, "b.qcow2")], { encoding: "utf8" }),
    );
    expect(q["virtual-size"]).toBe(8 << 20);
    expect(q["backing-filename"]).toBe("base.raw");
    const ours = JSON.parse(tskvm("image", "info", "--json", join(dir, "b.qcow2")).stdout);
    expect(ours.format).toBe("qcow2");
    expect(ours.virtualSize).toBe(8 << 20);
    expect(ours.backingChain[0].format).toBe("raw");
    expect(tskvm("image", "info", join(dir, "b.qcow2")).stdout).toMatch(/backing file: base.raw/);
  });

  it("gives clear errors and exit codes", () => {
    const missing = tskvm("image", "info", join(dir, "nope.qcow2"));
    expect(missing.status).toBe(1);
    expect(missing.stderr).toMatch(/ENOENT/);
    expect(tskvm("image", "create", join(dir, "c.qcow2")).status).toBe(2);
    expect(tskvm("image", "create", join(dir, "c.qcow2"), "-").status).toBe(2);
    const exists = tskvm("image", "create", join(dir, "a.qcow2"), "1G"); // exists, no --force
    expect(exists.status).toBe(1);
    expect(exists.stderr).toMatch(/the file exists\n {2}hint: .*--force/);
  });
});
