// Guests on virtio-blk disks (`tskvm run -d`), checked from both sides: what the
// guest read and wrote, and what the host's own tools find in the image files.
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { appendInitrd, buildGuestKit, buildToolsArchive } from "@tskvm/guest-kit";
import { beforeAll, describe, expect, it } from "vitest";
import { e2eTarget, runOnTarget, runOnTargetBudgetMs } from "../src/index.js";

const here = fileURLToPath(new URL(".", import.meta.url));
const fixture = join(here, "../fixtures/disk-scenarios.mjs");
const target = e2eTarget();
const RUN_MS = 15 * 60_000;

// biome-ignore lint/suspicious/noExplicitAny: scenario results are JSON from the guest run
type Result = Record<string, any> & { name: string; error?: string };

describe(`tskvm run with disks (${target.kind})`, () => {
  const results = new Map<string, Result>();
  let log = "";
  const get = (name: string): Result => {
    const r = results.get(name);
    expect(r, `no result for "${name}"; output:\n${log.slice(-4000)}`).toBeDefined();
    expect(r?.error, r?.error).toBeUndefined();
    return r!;
  };
  const guestOk = (r: Result, run = r.run) => {
    expect(run.code, `tskvm exit; stderr:\n${run.stderr}\nstdout:\n${run.stdout}`).toBe(0);
    expect(run.guestStatus, `guest command; stdout:\n${run.stdout}`).toBe(0);
  };

  beforeAll(async () => {
    // The default kit plus the host's mkfs.ext4, appended as a second initramfs.
    const kit = await buildGuestKit();
    const dir = join(here, "../.cache");
    mkdirSync(dir, { recursive: true });
    const initrd = appendInitrd(
      kit.initrd,
      buildToolsArchive({ tools: ["mkfs.ext4"] }),
      join(dir, "disk-test-initrd.gz"),
    );
    // ~5 min in the sandbox; the hook allows a stalled sandbox's retry and a fresh run for lost boots.
    const run = await runOnTarget<Result>(fixture, [kit.kernel, initrd], { timeoutMs: RUN_MS });
    log = run.log;
    for (const r of run.results) results.set(r.name, r);
  }, runOnTargetBudgetMs(RUN_MS));

  it("three disks: O_DIRECT patterns, a read-only disk, a serial", () => {
    const r = get("three disks: O_DIRECT patterns, a read-only disk, a serial");
    guestOk(r);
    const s = r.said;
    expect(s.SIZES).toBe(`${32 * 2048} ${16 * 2048} ${8 * 2048}`);
    expect(s.RO).toBe("0 1 0");
    expect(s.SERIAL).toBe("tskvm-disk-c");
    for (const n of [0, 257, 8191]) {
      expect(s[`W${n}`], `guest write of block ${n}`).toBe("0");
      expect(s[`R${n}`], `guest read-back of block ${n}`).toBe("same");
      expect(r.host.blocks[n], `host sees block ${n}`).toBe(true);
    }
    expect(s.BIGW).toBe("0");
    expect(s.BIGREAD).toBe(s.BIGSUM);
    expect(s.BIGSUM).toContain(r.host.bigMd5);
    // The read-only disk: readable, and writes refused, also after `blockdev --setrw`
    // (the read-only flag is the device's VIRTIO_BLK_F_RO).
    expect(s.BREAD).toBe("B-3");
    expect(s.ROWRITE).toMatch(/^[1-9]/);
    expect(s.ROWRITE2).toMatch(/^[1-9]/);
    expect(r.host.bUnchanged).toBe(true);
    expect(s.CW).toBe("0");
    expect(r.host.cSector1).toBe("hello-vdc");
    // vdc (thread=shared) and the rng on one thread: both work.
    expect(s.RNG).toBe("virtio_rng.0 4096");
  });

  it("multiqueue: queues=2 on 2 vCPUs — Linux sees 2 hardware queues, each answers on its own vector, the data lands", () => {
    const r = get("multiqueue: queues=2 on 2 vCPUs, each CPU's writes through its own queue");
    guestOk(r);
    const s = r.said;
    expect(s.MQ).toBe("2");
    expect(s.W0).toBe("0");
    expect(s.W1).toBe("0");
    expect(s.R0).toBe("same");
    // e.g. "virtio0-req.0=17 virtio0-req.1=21": both queues raised interrupts.
    const irqs = Object.fromEntries(
      (s.IRQ as string)
        .trim()
        .split(/\s+/)
        .map((kv) => kv.split("=")),
    );
    expect(
      Object.keys(irqs)
        .map((k) => k.replace(/^virtio\d+-/, ""))
        .sort(),
      s.IRQ,
    ).toEqual(["req.0", "req.1"]);
    for (const [q, n] of Object.entries(irqs)) expect(Number(n), q).toBeGreaterThan(0);
    expect(r.host.first).toBe(true);
    expect(r.host.second).toBe(true);
  });

  it("ext4 on a raw disk: the host's e2fsck -fn is clean and finds the files", () => {
    const r = get(
      "ext4 on a raw disk: mkfs, mount, write, sync; the host's e2fsck is clean and finds the files",
    );
    guestOk(r);
    expect(r.said.MKFS).toBe("0");
    expect(r.said.MOUNT).toBe("0");
    expect(r.said.UMOUNT).toBe("0");
    expect(r.host.fsckCode, r.host.fsck).toBe(0);
    expect(r.host.hello).toBe("hello-ext4");
    expect(r.said.SUM).toContain(r.host.randMd5);
    expect(r.host.randMd5).toMatch(/^[0-9a-f]{32}$/);
  });

  it("qcow2 over a backing file: ext4 in the guest, qemu-img check clean, backing unchanged", () => {
    const r = get("qcow2 over a backing file: ext4 in the guest; qemu-img check clean, backing unchanged");
    guestOk(r);
    expect(r.host.create).toBe(0);
    expect(r.said.BACKING).toBe("BACKING-DATA");
    expect(r.said.MKFS).toBe("0");
    expect(r.said.UMOUNT).toBe("0");
    expect(r.host.checkCode, r.host.check).toBe(0);
    expect(r.host.convert).toBe(0);
    expect(r.host.fsckCode, r.host.fsck).toBe(0);
    expect(r.host.hello).toBe("hello-qcow2");
    expect(r.said.SUM).toContain(r.host.randMd5);
    expect(r.host.backingUnchanged).toBe(true);
  });

  it("snapshot disks (,snapshot and --snapshot): the guest sees its writes, the images are untouched", () => {
    const r = get("snapshot disks: the guest sees its writes, the images are untouched");
    guestOk(r, r.run);
    guestOk(r, r.run2);
    expect(r.host.qemuIo).toBe(0);
    for (const said of [r.said, r.said2]) {
      expect(said.QW).toBe("0");
      expect(said.RW).toBe("0");
      expect(said.QREAD).toBe("same");
      expect(said.RREAD).toBe("same");
    }
    // Both boots start from the same untouched image: the first one's writes are gone.
    expect(r.said2.QBEFORE).toBe(r.said.QBEFORE);
    expect(r.host.untouched1).toBe(true);
    expect(r.host.untouched2).toBe(true);
    expect(r.host.checkCode).toBe(0);
  });

  it("a probed raw disk refuses a guest-written qcow2 header naming a host file; the next boot cannot read the file", () => {
    const r = get(
      "probed raw disk: a guest-written qcow2 header naming a host file is refused; the next boot cannot read the file",
    );
    guestOk(r, r.run);
    guestOk(r, r.run2);
    expect(r.host.create).toBe(0);
    expect(r.host.evilHead).toBe("QFI\xfb");
    // Boot 1: the write of sector 0 fails in the guest with an I/O error; the rest is just data.
    expect(r.said.HEADER).toMatch(/^[1-9]\d* .*(I\/O error|Input\/output error)/);
    expect(r.said.REST).toBe("0");
    expect(r.said.SECTOR0).toBe("RAW-SECTOR-ZERO!");
    expect(r.host.sector0UnchangedAfterFirst).toBe(true);
    // A disk given as format=raw takes the same write.
    expect(r.said.GIVEN).toBe("0");
    expect(r.host.givenHead).toBe("QFI\xfb");
    // Boot 2: still raw; none of the host file's bytes reach the guest.
    expect(r.said2.SECTOR0).toBe("RAW-SECTOR-ZERO!");
    expect(r.said2.AT4K ?? "").not.toContain("HOST-SECRET");
    expect(r.said2.SECRETS).toBe("0");
    expect(r.host.sector0Unchanged).toBe(true);
    expect(r.host.probes).toBe("raw");
  });

  it("disk errors are clear, exit 1, and boot nothing", () => {
    const r = get("disk errors: missing, locked, corrupt, directory");
    for (const k of ["missing", "locked", "lockedRo", "corrupt", "dir"]) {
      expect(r[k].code, `${k}: ${r[k].stderr}`).toBe(1);
      expect(r[k].stderr, k).not.toMatch(/Linux version|at .*\.js:\d+/);
    }
    expect(r.missing.stderr).toMatch(/nope\.img.*(no such file|ENOENT|does not exist)/i);
    expect(r.locked.stderr).toMatch(/held\.img.*lock/i);
    expect(r.lockedRo.stderr).toMatch(/held\.img.*lock/i);
    expect(r.corrupt.stderr).toMatch(/corrupt\.qcow2.*qcow2/i);
    expect(r.dir.stderr).toMatch(/disk-scenarios/);
    // Checked before anything else, the path named once, hints in -d flags.
    expect(r.locked.stderr.split("held.img").length - 1, r.locked.stderr).toBe(1);
    expect(r.missing.stderr.split("nope.img").length - 1, r.missing.stderr).toBe(1);
    // A writer holds held.img: ,ro and ,snapshot would be refused too, so nothing suggests them.
    for (const k of ["locked", "lockedRo"]) {
      expect(r[k].stderr).toMatch(/stop it first/);
      expect(r[k].stderr).not.toMatch(/\{|snapshot: true|overwrite|add ,ro|add ,snapshot/);
    }
  });
});
