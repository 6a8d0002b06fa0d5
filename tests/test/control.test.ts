// The control plane with a real Linux guest: `tskvm run --name` driven from outside by
// `tskvm list/stat/pause/resume/set/stop`, and per-disk limits measured inside the guest.
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { buildGuestKit } from "@tskvm/guest-kit";
import { beforeAll, describe, expect, it } from "vitest";
import { initrdWith } from "../bench/tools.mjs";
import { e2eTarget, runOnTarget, runOnTargetBudgetMs } from "../src/index.js";

const here = fileURLToPath(new URL(".", import.meta.url));
const fixture = join(here, "../fixtures/control-scenarios.mjs");
const target = e2eTarget();
const RUN_MS = 15 * 60_000;

// biome-ignore lint/suspicious/noExplicitAny: scenario results are JSON from the fixture
type Result = Record<string, any> & { name: string; error?: string };
// biome-ignore lint/suspicious/noExplicitAny: blkbench's JSON lines
type BenchRow = Record<string, any>;

describe(`the control plane (${target.kind})`, () => {
  const results = new Map<string, Result>();
  let log = "";
  const get = (name: string): Result => {
    const r = results.get(name);
    expect(r, `no result for "${name}"; output:\n${log.slice(-4000)}`).toBeDefined();
    expect(r?.error, r?.error).toBeUndefined();
    return r!;
  };

  beforeAll(async () => {
    const kit = await buildGuestKit();
    const initrd = initrdWith(kit, ["blkbench"], "initrd-blk-");
    const run = await runOnTarget<Result>(fixture, [kit.kernel, initrd], { timeoutMs: RUN_MS });
    log = run.log;
    for (const r of run.results) results.set(r.name, r);
  }, runOnTargetBudgetMs(RUN_MS));

  it("list, stat, pause, resume, stop; a second VM of the same name is refused", () => {
    const r = get("list, stat, pause, resume, stop; a second VM of the same name is refused");
    const ctx = `console:\n${r.console}\nstderr:\n${r.stderr}`;
    // list: the VM, as it is.
    expect(r.list.code, r.list.stderr).toBe(0);
    const vm = r.list.json.find((v: Result) => v.name === "e2e-ctl");
    expect(vm, r.list.stdout).toBeDefined();
    expect(vm).toMatchObject({ pid: r.pid, state: "running", cpus: 1, memMiB: 256 });
    expect(vm.disks).toHaveLength(1);
    expect(vm.disks[0]).toMatchObject({ id: "disk0", readOnly: false });
    expect(vm.uptimeMs).toBeGreaterThan(0);
    // stat: the counters rise while the guest reads its disk.
    for (const s of [r.stat1, r.stat2]) expect(s.code, s.stderr).toBe(0);
    const disk = (s: Result) => s.json.stats.devices.find((d: Result) => d.id === "disk0");
    expect(disk(r.stat2).device.bytesRead).toBeGreaterThan(disk(r.stat1).device.bytesRead);
    expect(disk(r.stat2).device.completed).toBeGreaterThan(disk(r.stat1).device.completed);
    const exits = (s: Result) =>
      Object.values(s.json.stats.vcpus[0].exits as Record<string, number>).reduce((a, b) => a + b, 0);
    expect(exits(r.stat2)).toBeGreaterThan(exits(r.stat1));
    expect(r.stat2.json.rates.disks[0].readMiBps).toBeGreaterThan(0);
    expect(r.stat2.json.rates.disks[0].p50Us).toBeGreaterThan(0);
    expect(r.human.code, r.human.stderr).toBe(0);
    expect(r.human.stdout).toMatch(/disk0/);
    // The same name twice: refused before it boots, saying why.
    expect(r.twin.code).toBe(1);
    expect(r.twin.stderr).toMatch(/a VM named e2e-ctl is already running \(pid \d+\)/);
    // pause: the guest's ticks stop; stat says paused; resume: they go on.
    expect(r.pause.code, r.pause.stderr).toBe(0);
    expect(r.ticksStillPaused, ctx).toBe(r.ticksPaused);
    expect(r.statPaused.json.stats.state).toBe("paused");
    expect(r.resume.code, r.resume.stderr).toBe(0);
    expect(r.resumedMs).toBeLessThan(20_000);
    // stop: an orderly power-off through Ctrl-Alt-Del, exit 0 within 5 s, the socket gone.
    expect(r.stop.code, r.stop.stderr).toBe(0);
    expect(r.stop.result).toEqual({ forced: false });
    expect(r.exit, ctx).toMatchObject({ code: 0 });
    expect(r.stopMs).toBeLessThan(5000);
    expect(r.console).toMatch(/Ctrl-Alt-Del: syncing the disks and powering off/);
    expect(r.socketLeft).toBe(false);
    expect(r.listAfter.json.find((v: Result) => v.name === "e2e-ctl")).toBeUndefined();
  });

  it("iops=500 holds the guest to 500 ± 10% IOPS, tskvm set raises it at run time; ioprio and nice are the worker thread's", () => {
    const r = get("iops=500 and a change at run time; the worker's I/O priority and nice");
    const rows = r.rows as BenchRow[];
    expect(rows, JSON.stringify(r)).toHaveLength(2);
    expect(rows[0].iops).toBeGreaterThanOrEqual(450);
    expect(rows[0].iops).toBeLessThanOrEqual(550);
    expect(rows[1].iops).toBeGreaterThanOrEqual(900);
    expect(rows[1].iops).toBeLessThanOrEqual(1100);
    expect(r.tid).toBeGreaterThan(0);
    expect(r.before).toEqual({ ioprio: { class: "be", level: 3 }, nice: 5 });
    expect(r.set.code, r.set.stderr).toBe(0);
    expect(r.after.ioprio.class).toBe("idle");
    expect(r.after.nice).toBe(10);
    expect(r.exit).toMatchObject({ code: 0 });
  });

  it("bw=10M holds sequential reads to 10 MiB/s ± 10%", () => {
    const r = get("bw=10M: sequential reads at 10 MiB/s");
    const rows = r.rows as BenchRow[];
    expect(rows, JSON.stringify(r)).toHaveLength(1);
    const bytesPerSec = rows[0].bytes / rows[0].seconds;
    expect(bytesPerSec).toBeGreaterThanOrEqual(0.9 * 10 * 2 ** 20);
    expect(bytesPerSec).toBeLessThanOrEqual(1.1 * 10 * 2 ** 20);
    expect(r.exit).toMatchObject({ code: 0 });
  });
});
