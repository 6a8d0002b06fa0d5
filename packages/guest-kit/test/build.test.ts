import {
  chmodSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  buildGuestKit,
  type CpioMember,
  DEFAULT_GUEST_MODULES,
  type GuestKit,
  type GuestKitProgress,
  PROGRESS_INTERVAL_MS,
  readCpioNewc,
} from "../src/index.js";
import { CMDLINE_CASES, parseWithInit } from "./helpers.js";

// A real build: downloads linux-image-amd64 (~70 MB) and busybox-static with apt into a
// fresh cache directory.
const cacheDir = mkdtempSync(join(tmpdir(), "tskvm-guest-kit-cache-"));
afterAll(() => rmSync(cacheDir, { recursive: true, force: true }));

let kit: GuestKit;
let members: Map<string, CpioMember>;
const log: string[] = [];
const progress: GuestKitProgress[] = [];
let coldMs = 0;

beforeAll(async () => {
  const t = Date.now();
  kit = await buildGuestKit({ cacheDir, log: (l) => log.push(l), progress: (p) => progress.push(p) });
  coldMs = Date.now() - t;
  members = new Map(readCpioNewc(gunzipSync(readFileSync(kit.initrd))).map((m) => [m.path, m]));
}, 300_000);

describe("buildGuestKit (real Debian packages)", () => {
  it("builds a kernel and an initrd in the cache, reporting progress", () => {
    expect(kit.cached).toBe(false);
    expect(kit.kernel.startsWith(join(cacheDir, "guest-kit", "kits"))).toBe(true);
    expect(kit.initrd.startsWith(join(cacheDir, "guest-kit", "kits"))).toBe(true);
    expect(kit.kernelVersion).toMatch(/^\d+\.\d+\.\d+-\d+-amd64$/);
    expect(kit.packages.kernel.name).toBe(`linux-image-${kit.kernelVersion}`);
    expect(kit.packages.busybox.name).toBe("busybox-static");
    expect(log.some((l) => l.startsWith("downloading linux-image-"))).toBe(true);
    expect(log.some((l) => l.startsWith("unpacking"))).toBe(true);
    expect(log.some((l) => l.startsWith("writing initramfs"))).toBe(true);
    console.log(`cold build ${coldMs} ms, initrd ${statSync(kit.initrd).size} bytes`);
  });

  it("reports bytes while it downloads, unpacks and packs, each step ending with done", () => {
    const steps = new Map<string, GuestKitProgress[]>();
    for (const p of progress)
      steps.set(`${p.step} ${p.name}`, [...(steps.get(`${p.step} ${p.name}`) ?? []), p]);
    const keys = [...steps.keys()];
    expect(keys.map((k) => k.split(" ")[0])).toEqual(["download", "download", "unpack", "unpack", "pack"]);
    expect(keys[0]).toBe(`download ${kit.packages.kernel.name}`);
    expect(keys[1]).toBe("download busybox-static");
    expect(keys[2]).toMatch(new RegExp(`^unpack ${kit.packages.kernel.name}_.*\\.deb$`));
    expect(keys[3]).toMatch(/^unpack busybox-static_.*\.deb$/);
    expect(keys[4]).toBe("pack initramfs");
    for (const [key, reports] of steps) {
      const last = reports.at(-1)!;
      expect(last.done, key).toBe(true);
      expect(
        reports.filter((r) => r.done),
        key,
      ).toHaveLength(1);
      expect(reports[0]!.bytes, key).toBe(0);
      // Never backwards; the end is the whole: apt's size of the .deb, the .deb read, the cpio fed to gzip.
      for (let i = 1; i < reports.length; i++)
        expect(reports[i]!.bytes).toBeGreaterThanOrEqual(reports[i - 1]!.bytes);
      expect(last.bytes, key).toBe(last.total);
      expect(last.elapsedMs).toBeGreaterThanOrEqual(0);
    }
    // The kernel's .deb is read in many chunks: reports in between, at most one per PROGRESS_INTERVAL_MS.
    const unpack = steps.get(keys[2]!)!;
    expect(unpack.length).toBeGreaterThan(2);
    for (let i = 1; i < unpack.length - 1; i++)
      expect(unpack[i]!.elapsedMs - unpack[i - 1]!.elapsedMs).toBeGreaterThanOrEqual(
        PROGRESS_INTERVAL_MS - 5,
      );
  });

  it("has a bzImage kernel", () => {
    const k = readFileSync(kit.kernel);
    expect(k.toString("latin1", 0x202, 0x206)).toBe("HdrS"); // x86 boot protocol header
    expect(k.length).toBeGreaterThan(1_000_000);
  });

  it("puts /init, busybox with its applets, and device nodes in the initramfs", () => {
    const init = members.get("init")!;
    expect(init.mode).toBe(0o100755);
    expect(init.data.toString()).toContain("tskvm: command begin");

    const busybox = members.get("bin/busybox")!;
    expect(busybox.mode).toBe(0o100755);
    expect(busybox.data.toString("latin1", 0, 4)).toBe("\x7fELF");
    for (const applet of [
      "bin/sh",
      "sbin/insmod",
      "sbin/poweroff",
      "bin/mount",
      "usr/bin/awk",
      "bin/base64",
    ]) {
      const m = members.get(applet);
      expect(m, applet).toBeDefined();
      expect(m!.mode & 0o170000, applet).toBe(0o120000);
      expect(m!.data.toString(), applet).toBe("/bin/busybox");
    }
    expect(members.has("sbin/init")).toBe(false); // /init is ours
    const symlinks = [...members.values()].filter((m) => (m.mode & 0o170000) === 0o120000);
    expect(symlinks.length).toBeGreaterThan(200);

    const console = members.get("dev/console")!;
    expect(console.mode & 0o170000).toBe(0o020000);
    expect([console.rdevMajor, console.rdevMinor]).toEqual([5, 1]);
    for (const d of ["proc", "sys", "dev", "tmp", "root"])
      expect(members.get(d)?.mode ?? 0, d).toBeGreaterThan(0o040000);
  });

  it("bundles the modules (uncompressed ELF) and a load order with dependencies first", () => {
    for (const name of DEFAULT_GUEST_MODULES) expect(kit.modules).toContain(name);
    for (const dep of ["jbd2", "mbcache", "crc16"])
      expect(kit.modules.indexOf(dep)).toBeLessThan(kit.modules.indexOf("ext4"));
    expect(kit.modules.indexOf("virtio_ring")).toBeLessThan(kit.modules.indexOf("virtio"));
    expect(kit.modules.indexOf("virtio")).toBeLessThan(kit.modules.indexOf("virtio_blk"));
    expect(kit.modules.indexOf("virtio_pci_modern_dev")).toBeLessThan(kit.modules.indexOf("virtio_pci"));
    expect(kit.modules.indexOf("crc32c_generic")).toBeLessThan(kit.modules.indexOf("ext4")); // ext4's softdep

    const list = members.get("etc/tskvm/modules")!.data.toString().trim().split("\n");
    // File names may spell "_" as "-" (virtio-rng.ko); module names use "_".
    expect(
      list.map((p) =>
        p
          .slice(p.lastIndexOf("/") + 1)
          .replace(/\.ko$/, "")
          .replace(/-/g, "_"),
      ),
    ).toEqual(kit.modules);
    for (const rel of list) {
      const m = members.get(`lib/modules/${kit.kernelVersion}/${rel}`);
      expect(m, rel).toBeDefined();
      expect(m!.data.toString("latin1", 0, 4), rel).toBe("\x7fELF");
    }
    const dep = members.get(`lib/modules/${kit.kernelVersion}/modules.dep`)!.data.toString();
    expect(dep).toMatch(/kernel\/fs\/ext4\/ext4\.ko:.*jbd2\.ko/);
    expect(members.get("etc/tskvm/kernel-version")!.data.toString()).toBe(`${kit.kernelVersion}\n`);
  });

  it("parses the command line with the bundled busybox as it will in the guest", () => {
    const root = join(cacheDir, "bb-run");
    mkdirSync(join(root, "bin"), { recursive: true });
    const busybox = join(root, "bin", "busybox");
    writeFileSync(busybox, members.get("bin/busybox")!.data);
    chmodSync(busybox, 0o755);
    writeFileSync(join(root, "init"), members.get("init")!.data);
    for (const applet of ["awk", "base64", "sh"]) symlinkSync("busybox", join(root, "bin", applet));
    const env = { PATH: join(root, "bin") }; // nothing of the host's
    for (const [cmdline, status, command] of CMDLINE_CASES) {
      expect(parseWithInit(cmdline, [busybox, "sh"], join(root, "init"), env), cmdline).toEqual({
        status,
        command,
      });
    }
  });

  it("is a cache hit the second time: fast and the same paths", async () => {
    const t = Date.now();
    const again = await buildGuestKit({ cacheDir });
    const warmMs = Date.now() - t;
    console.log(`warm build ${warmMs} ms`);
    expect(again.cached).toBe(true);
    expect(again.kernel).toBe(kit.kernel);
    expect(again.initrd).toBe(kit.initrd);
    expect(again.modules).toEqual(kit.modules);
    expect(warmMs).toBeLessThan(2000);
  });

  it("builds a separate kit when the inputs change (module list)", async () => {
    const t = Date.now();
    const other = await buildGuestKit({ cacheDir, modules: ["virtio_blk"] });
    console.log(`rebuild with other modules (debs cached) ${Date.now() - t} ms`);
    expect(other.cached).toBe(false);
    expect(other.initrd).not.toBe(kit.initrd);
    expect(other.modules).toEqual(["virtio_ring", "virtio", "virtio_blk"]);
    expect(readFileSync(kit.initrd).length).toBeGreaterThan(0); // the first kit is still there
  }, 120_000);
});
