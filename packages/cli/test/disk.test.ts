import { spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createQcow2, type DiskImage, DiskImageError, openDiskImage } from "@tskvm/disk-image";
import type { SharedDeviceWorker } from "@tskvm/virtio-worker";
import { afterAll, describe, expect, it } from "vitest";
import { checkDisks, diskDeviceOptions, main, parseDiskSpec, UsageError } from "../src/index.js";

const cli = fileURLToPath(new URL("../dist/main.js", import.meta.url));

describe("--disk specs", () => {
  it("parses kvmtool's PATH[,ro] and tskvm's options", () => {
    expect(parseDiskSpec("/img/a.raw")).toEqual({
      path: "/img/a.raw",
      readOnly: false,
      snapshot: false,
      direct: false,
      thread: "own",
    });
    expect(parseDiskSpec("a.img,ro")).toMatchObject({ path: "a.img", readOnly: true });
    expect(parseDiskSpec("a.qcow2,snapshot,format=qcow2,serial=disk-1")).toMatchObject({
      snapshot: true,
      format: "qcow2",
      serial: "disk-1",
    });
    expect(parseDiskSpec("a.img,direct")).toMatchObject({ direct: true });
    expect(parseDiskSpec("a.img,thread=shared")).toMatchObject({ thread: "shared" });
    expect(parseDiskSpec("a.img,thread=own")).toMatchObject({ thread: "own" });
    expect(parseDiskSpec("a.img,aio=sync")).toMatchObject({ aio: "sync" });
    expect(parseDiskSpec("a.img,aio=io_uring")).toMatchObject({ aio: "io_uring" });
    expect(parseDiskSpec("a.img").aio).toBeUndefined();
    expect(parseDiskSpec("a.img,poll=50")).toMatchObject({ pollUs: 50 });
  });

  it("parses queues and the limits and priorities (iops, bw, ioprio, nice)", () => {
    expect(parseDiskSpec("a.img,queues=4")).toMatchObject({ queues: 4 });
    expect(parseDiskSpec("a.img").tuning).toBeUndefined();
    expect(parseDiskSpec("a.img,iops=500,bw=10M,ioprio=be:3,nice=-5").tuning).toEqual({
      iops: { rate: 500 },
      bandwidth: { rate: 10 * 2 ** 20 },
      ioPriority: { class: "be", level: 3 },
      nice: -5,
    });
    expect(parseDiskSpec("a.img,iops=500:2000,bw=1.5M:64M").tuning).toEqual({
      iops: { rate: 500, burst: 2000 },
      bandwidth: { rate: 1.5 * 2 ** 20, burst: 64 * 2 ** 20 },
    });
    expect(parseDiskSpec("a.img,bw=4096").tuning).toEqual({ bandwidth: { rate: 4096 } });
    expect(parseDiskSpec("a.img,ioprio=rt").tuning).toEqual({ ioPriority: { class: "rt" } });
    expect(parseDiskSpec("a.img,ioprio=rt:0").tuning).toEqual({ ioPriority: { class: "rt", level: 0 } });
    expect(parseDiskSpec("a.img,ioprio=idle").tuning).toEqual({ ioPriority: { class: "idle" } });
    expect(parseDiskSpec("a.img,nice=19").tuning).toEqual({ nice: 19 });
    expect(parseDiskSpec("a.img,nice=+3").tuning).toEqual({ nice: 3 });
  });

  it("refuses bad queues, limits and priorities with what is expected", () => {
    const cases: Array<[string, RegExp]> = [
      ["a.img,queues=0", /queues=0 must be a whole number from 1 to 16/],
      ["a.img,queues=17", /queues=17 must be a whole number from 1 to 16/],
      ["a.img,queues=x", /queues=x must be/],
      ["a.img,iops=0", /--disk a\.img,iops=0: iops=0: the rate must be more than 0; use iops=N\[:BURST\]/],
      ["a.img,iops=1.5", /iops=1\.5: the rate '1\.5' is not a whole number/],
      ["a.img,iops=-1", /is not a whole number/],
      ["a.img,iops=5:0", /the burst must be more than 0/],
      ["a.img,iops=5:6:7", /has more than one ':'/],
      ["a.img,iops=", /iops= needs a value/],
      ["a.img,iops=none", /is not a whole number/],
      ["a.img,bw=10X", /bw: '10X' is not a size/],
      ["a.img,bw=0", /bw=0: the rate must be more than 0/],
      ["a.img,ioprio=high", /ioprio=high is not an I\/O priority; use ioprio=rt\[:0-7\]\|be\[:0-7\]\|idle/],
      ["a.img,ioprio=be:8", /the level must be 0 \(highest\) to 7/],
      ["a.img,ioprio=idle:1", /the idle class has no level/],
      ["a.img,nice=20", /nice=20 must be a whole number from -20 to 19/],
      ["a.img,nice=-21", /nice=-21 must be/],
      ["a.img,nice=1.5", /nice=1\.5 must be/],
      ["a.img,iops", /unknown option 'iops'/],
    ];
    for (const [bad, message] of cases) expect(() => parseDiskSpec(bad), bad).toThrow(message);
    for (const [bad] of cases) expect(() => parseDiskSpec(bad), bad).toThrow(UsageError);
  });

  it("hands the id, queues and tuning to virtio-blk", () => {
    const shared = {} as SharedDeviceWorker;
    const opts = diskDeviceOptions(parseDiskSpec("a.img,queues=4,iops=100,nice=2"), shared, 1);
    expect(opts).toMatchObject({ id: "disk1", queues: 4, tuning: { iops: { rate: 100 }, nice: 2 } });
    expect(diskDeviceOptions(parseDiskSpec("a.img"), shared, 0)).toEqual({
      id: "disk0",
      path: "a.img",
      readOnly: false,
      snapshot: false,
      direct: false,
    });
    // poll=0 turns the device's default polling off: it must reach the device, not vanish.
    expect(diskDeviceOptions(parseDiskSpec("a.img,poll=0"), shared, 0)).toMatchObject({ pollUs: 0 });
    expect(diskDeviceOptions(parseDiskSpec("a.img,poll=250"), shared, 0)).toMatchObject({ pollUs: 250 });
  });

  it("refuses unknown options, bad values and an empty path", () => {
    for (const bad of [
      "",
      ",ro",
      "a.img,rw",
      "a.img,format=vmdk",
      "a.img,serial=012345678901234567890",
      "a,ro=1",
      "a.img,thread=main",
      "a.img,thread",
      "a.img,aio=native",
      "a.img,poll=-1",
      "a.img,poll=1e3",
      "a.img,poll=2000000",
      "a.img,aio",
    ])
      expect(() => parseDiskSpec(bad)).toThrow(UsageError);
    expect(() => parseDiskSpec("a.img,frob")).toThrow(/unknown option 'frob'/);
  });

  it("a bad --disk is a usage error (exit 2) before anything boots", async () => {
    let stderr = "";
    const status = await main(["run", "-k", "/nonexistent", "-d", "x.img,bogus"], {
      stdout: () => {},
      stderr: (t) => (stderr += t),
    });
    expect(status).toBe(2);
    expect(stderr).toMatch(/unknown option 'bogus'/);
  });

  it("tskvm run reports a missing disk (exit 1) before it looks at the kernel or KVM", async () => {
    let stderr = "";
    const missing = join(tmpdir(), `tskvm-no-such-disk-${process.pid}.img`);
    const status = await main(["run", "-k", "/nonexistent-kernel", "-d", missing], {
      stdout: () => {},
      stderr: (t) => (stderr += t),
    });
    expect(status).toBe(1);
    expect(stderr).toContain(`${missing}: no such file`);
    expect(stderr.split(missing).length - 1, stderr).toBe(1); // the path named once
    expect(stderr).not.toMatch(/KVM|kernel/);
  });
});

describe("checkDisks: every -d checked before anything looks at KVM", () => {
  const dir = mkdtempSync(join(tmpdir(), "tskvm-cli-disk-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  let n = 0;
  const raw = (): string => {
    const p = join(dir, `d${n++}.raw`);
    writeFileSync(p, Buffer.alloc(1 << 20));
    return p;
  };
  const fails = (specs: string[]): DiskImageError => {
    try {
      checkDisks(specs.map(parseDiskSpec));
    } catch (e) {
      expect(e).toBeInstanceOf(DiskImageError);
      return e as DiskImageError;
    }
    throw new Error(`checkDisks(${specs.join(" ")}) passed`);
  };
  /** The message names `path` exactly once and names no API options. */
  const plain = (e: DiskImageError, path: string): void => {
    expect(e.message.split(path).length - 1, e.message).toBe(1);
    expect(e.message).not.toMatch(/\{|readOnly|snapshot: true|lock: false/);
  };
  const holding = (path: string, readOnly: boolean, f: () => void): void => {
    const holder: DiskImage = openDiskImage(path, { format: "raw", readOnly });
    try {
      f();
    } finally {
      holder.close();
    }
  };

  it("a missing file or a directory: said plainly, the path once", () => {
    const missing = join(dir, "missing.img");
    const e = fails([missing]);
    expect(e.code).toBe("ENOENT");
    expect(e.message).toMatch(/missing\.img: no such file/);
    expect(e.hint).toMatch(/tskvm image create/);
    plain(e, missing);
    const d = fails([dir]);
    expect(d.code).toBe("EISDIR");
    plain(d, dir);
  });

  it("a writer holds the image: only stopping it helps — ,ro and ,snapshot are refused too", () => {
    const p = raw();
    holding(p, false, () => {
      for (const spec of [p, `${p},ro`, `${p},snapshot`]) {
        const e = fails([spec]);
        expect(e.code).toBe("LOCKED");
        expect(e.message).toMatch(/the image is locked: another VM or tool is writing to it/);
        expect(e.hint).toMatch(/stop it first/);
        expect(e.hint).toMatch(/,ro and ,snapshot are refused too/);
        plain(e, p);
      }
    });
  });

  it("readers hold the image: a writable disk is refused, and the ,ro / ,snapshot the hint suggests work", () => {
    const p = raw();
    holding(p, true, () => {
      const e = fails([p]);
      expect(e.code).toBe("LOCKED");
      expect(e.message).toMatch(/reads it, or has it as a backing file/);
      expect(e.hint).toMatch(/add ,ro .* or ,snapshot/);
      plain(e, p);
      expect(checkDisks([parseDiskSpec(`${p},ro`)])).toEqual([]);
      expect(checkDisks([parseDiskSpec(`${p},snapshot`)])).toEqual([]);
    });
  });

  it("a backing file held by a writer is named once, after the disk", () => {
    const base = raw();
    const top = join(dir, "top.qcow2");
    createQcow2(top, undefined, { backing: base, backingFormat: "raw" });
    holding(base, false, () => {
      const e = fails([top]);
      expect(e.code).toBe("LOCKED");
      expect(e.message).toMatch(
        /top\.qcow2: backing file .*d\d+\.raw: the image is locked: another VM or tool is writing/,
      );
      plain(e, top);
      plain(e, base);
    });
  });

  it("the same writable image twice is refused; read-only twice is fine", () => {
    const p = raw();
    const e = fails([p, `${p},format=raw`]);
    expect(e.message).toMatch(/given twice/);
    expect(e.hint).toMatch(/,ro or ,snapshot/);
    expect(checkDisks([`${p},ro`, `${p},snapshot`].map(parseDiskSpec))).toEqual([]);
  });

  it("warns once per writable disk whose format was probed as raw", () => {
    const p = raw();
    const q = raw();
    const warnings = checkDisks(
      [p, `${q},format=raw`, `${raw()},ro`, `${raw()},snapshot`].map(parseDiskSpec),
    );
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain(p);
    expect(warnings[0]).toMatch(/format=raw/);
    const qc = join(dir, "plain.qcow2");
    createQcow2(qc, 1 << 20);
    expect(checkDisks([parseDiskSpec(qc)])).toEqual([]);
  });

  it("a broken qcow2 header: the reason, said to be about qcow2, the path once", () => {
    const p = join(dir, "broken.qcow2");
    const junk = Buffer.alloc(4096);
    Buffer.from("QFI\xfb", "latin1").copy(junk, 0);
    junk.writeUInt32BE(3, 4);
    junk.writeUInt32BE(200, 20); // cluster_bits
    writeFileSync(p, junk);
    const e = fails([p]);
    expect(e.message).toMatch(/broken\.qcow2: cannot use it as a qcow2 image: cluster size/);
    plain(e, p);
  });

  it("format problems keep disk-image's reason, with hints in -d flags", () => {
    const p = raw();
    const e = fails([`${p},format=qcow2`]);
    expect(e.hint).toMatch(/format=raw/);
    plain(e, p);
    const snap = join(dir, "snap.qcow2");
    createQcow2(snap, 1 << 20);
    const r = spawnSync("qemu-img", ["snapshot", "-c", "s1", snap], { encoding: "utf8" });
    expect(r.status, r.stderr).toBe(0);
    const s = fails([snap]);
    expect(s.code).toBe("UNSUPPORTED");
    expect(s.hint).toMatch(/open it read-only \(,ro\) or as a snapshot disk \(,snapshot\)/);
    plain(s, snap);
    expect(checkDisks([parseDiskSpec(`${snap},snapshot`)])).toEqual([]);
  });

  it("no permission to write: ,ro or ,snapshot (as an unprivileged user)", () => {
    const p = raw();
    chmodSync(p, 0o444);
    chmodSync(dir, 0o755);
    // Root may write any file: run the CLI as nobody then, so the check meets a real EACCES.
    const asNobody = process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : {};
    const run = (spec: string) =>
      spawnSync(process.execPath, [cli, "run", "-k", "/nonexistent-kernel", "-d", spec], {
        encoding: "utf8",
        timeout: 60_000,
        ...asNobody,
      });
    const refused = run(p);
    expect(refused.status, refused.stderr).toBe(1);
    expect(refused.stderr).toContain(`${p}: no permission to write the disk image`);
    expect(refused.stderr).toMatch(/hint: add ,ro .*,snapshot/);
    expect(refused.stderr.split(p).length - 1, refused.stderr).toBe(1);
    // With ,ro the disk passes its check and the run goes on to the (missing) kernel.
    const ro = run(`${p},ro`);
    expect(ro.status, ro.stderr).toBe(1);
    expect(ro.stderr).not.toContain("permission");
    expect(ro.stderr).toMatch(/kernel/);
  });

  it("leaves every image closed: the VM can open them afterwards", () => {
    const p = raw();
    checkDisks([parseDiskSpec(p)]);
    openDiskImage(p, { format: "raw" }).close();
  });
});
