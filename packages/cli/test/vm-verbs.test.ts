import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { MachineStats } from "@tskvm/machine-x86";
import { LATENCY_BUCKETS } from "@tskvm/virtio-blk";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { ControlServer, type Io, main, statRates } from "../src/index.js";
import { fakeInfo, fakeTarget } from "./fixtures/fake-target.mjs";

const runtime = mkdtempSync(join(tmpdir(), "tskvm-verbs-"));
const savedXdg = process.env.XDG_RUNTIME_DIR;
beforeAll(() => {
  process.env.XDG_RUNTIME_DIR = runtime;
});
afterAll(() => {
  if (savedXdg === undefined) delete process.env.XDG_RUNTIME_DIR;
  else process.env.XDG_RUNTIME_DIR = savedXdg;
  rmSync(runtime, { recursive: true, force: true });
});
const servers: ControlServer[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.close();
});

async function tskvm(args: string[], extra: Partial<Io> = {}) {
  let stdout = "";
  let stderr = "";
  const status = await main(args, { stdout: (t) => (stdout += t), stderr: (t) => (stderr += t), ...extra });
  return { status, stdout, stderr };
}

function histogram(buckets: Record<number, number>) {
  const counts = new Array<number>(LATENCY_BUCKETS).fill(0);
  let count = 0;
  for (const [i, n] of Object.entries(buckets)) {
    counts[Number(i)] = n;
    count += n;
  }
  return { counts, count, sumUs: 0 };
}

const thread = (tid: number, cpuMs: number, wakeups: number, throttledMs = 0) => ({
  tid,
  cpuMs,
  wakeups,
  throttledMs,
  held: false,
  tuning: {},
});

const blk = (o: {
  completed: number;
  reads: number;
  writes: number;
  bytesRead: number;
  bytesWritten: number;
  ioerr: number;
  inFlight: number;
  latency: ReturnType<typeof histogram>;
}) => ({
  ...o,
  flushes: 0,
  discards: 0,
  writeZeroes: 0,
  getIds: 0,
  ioErrors: o.ioerr,
  rejected: 0,
  failed: 0,
  batches: 0,
  interrupts: 0,
  serviceMs: 0,
  queues: 1,
  requests: {
    read: o.reads,
    write: o.writes,
    flush: 0,
    getId: 0,
    discard: 0,
    writeZeroes: 0,
    unsupported: 0,
    invalid: 0,
  },
  errors: { ioerr: o.ioerr, unsupp: 0, malformed: 0 },
});

const MiB = 2 ** 20;
const STATS: MachineStats[] = [
  {
    state: "running",
    uptimeMs: 10_000,
    pausedMs: 0,
    vcpus: [
      { id: 0, exits: { io: 100, hlt: 50 }, haltedMs: 1000 },
      { id: 1, exits: { mmio: 10 } },
    ],
    devices: [
      {
        id: "disk0",
        kind: "virtio-blk",
        thread: thread(111, 50, 100),
        device: blk({
          completed: 1000,
          reads: 500,
          writes: 500,
          bytesRead: 0,
          bytesWritten: 0,
          ioerr: 0,
          inFlight: 3,
          latency: histogram({ 40: 7 }),
        }),
      },
      { id: "rng0", kind: "virtio-rng", thread: thread(222, 10, 5), device: {} },
      { id: "console0", kind: "virtio-console", thread: thread(222, 10, 5), device: {} },
    ],
  },
  {
    state: "running",
    uptimeMs: 12_000,
    pausedMs: 0,
    vcpus: [
      { id: 0, exits: { io: 300, hlt: 150 }, haltedMs: 2500 },
      { id: 1, exits: { mmio: 30 } },
    ],
    devices: [
      {
        id: "disk0",
        kind: "virtio-blk",
        thread: thread(111, 250, 2100, 300),
        device: blk({
          completed: 3000,
          reads: 1500,
          writes: 1500,
          bytesRead: 8 * MiB,
          bytesWritten: 2 * MiB,
          ioerr: 2,
          inFlight: 7,
          // the interval: 100 requests under 1024 µs, 2 under 32768 µs
          latency: histogram({ 40: 107, 60: 2 }),
        }),
      },
      { id: "rng0", kind: "virtio-rng", thread: thread(222, 30, 25), device: {} },
      { id: "console0", kind: "virtio-console", thread: thread(222, 30, 25), device: {} },
    ],
  },
];

const RATES = {
  intervalMs: 2000,
  vcpus: [
    { id: 0, exitsPerSec: { io: 100, hlt: 50 }, totalExitsPerSec: 150, haltedPct: 75 },
    { id: 1, exitsPerSec: { mmio: 10 }, totalExitsPerSec: 10, haltedPct: null },
  ],
  disks: [
    {
      id: "disk0",
      iops: 1000,
      readIops: 500,
      writeIops: 500,
      readMiBps: 4,
      writeMiBps: 1,
      inFlight: 7,
      p50Us: 1024,
      p99Us: 32768,
      errors: 2,
      errorsTotal: 2,
      workerCpuPct: 10,
    },
  ],
  threads: [
    { tid: 111, devices: ["disk0"], cpuPct: 10, wakeupsPerSec: 1000, throttledMs: 300, held: false },
    { tid: 222, devices: ["rng0", "console0"], cpuPct: 1, wakeupsPerSec: 10, throttledMs: 0, held: false },
  ],
};

async function vm(name = "vm-verb", stats: MachineStats[] = STATS) {
  const target = fakeTarget(name, stats);
  servers.push(await ControlServer.listen(name, target));
  return target;
}

describe("stat rates", () => {
  it("are the differences over the machine's own interval", () => {
    expect(statRates(STATS[0]!, STATS[1]!)).toEqual(RATES);
  });

  it("use the caller's interval when uptime did not move, and count new devices from zero", () => {
    const later = { ...STATS[1]!, uptimeMs: STATS[0]!.uptimeMs };
    const r = statRates({ ...STATS[0]!, devices: [] }, later, 4000);
    expect(r.intervalMs).toBe(4000);
    expect(r.disks[0]).toMatchObject({ iops: 750, readMiBps: 2, p50Us: 1024, p99Us: 32768, errors: 2 });
  });
});

describe("tskvm list", () => {
  it("prints the VMs as JSON and as a table; nothing running is not an error", async () => {
    const empty = await tskvm(["list"]);
    expect(empty).toMatchObject({ status: 0, stdout: "" });
    expect(empty.stderr).toMatch(/^tskvm: no VM is running \(sockets in .*\/tskvm\)\n$/);
    expect((await tskvm(["list", "--json"])).stdout).toBe("[]\n");
    await vm("vm-b");
    await vm("vm-a");
    const json = await tskvm(["list", "--json"]);
    expect(json.status).toBe(0);
    expect(JSON.parse(json.stdout)).toEqual([fakeInfo("vm-a"), fakeInfo("vm-b")]);
    const human = await tskvm(["list"]);
    expect(human.stdout.split("\n")).toEqual([
      expect.stringMatching(/^NAME +PID +STATE +CPUS +MEMORY +DISKS +UPTIME$/),
      expect.stringMatching(
        new RegExp(`^vm-a +${process.pid} +running +2 +256 MiB +disk0=/img/a\\.qcow2 +1m01s$`),
      ),
      expect.stringMatching(/^vm-b /),
      "",
    ]);
  });
});

describe("tskvm stat", () => {
  it("--json prints the interval's rates and the raw counters", async () => {
    await vm();
    const r = await tskvm(["stat", "vm-verb", "--json", "--interval", "0.1"]);
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({
      name: "vm-verb",
      intervalMs: 2000,
      rates: RATES,
      stats: STATS[1],
    });
  });

  it("prints a table per vCPU, disk and device thread", async () => {
    await vm();
    const r = await tskvm(["stat", "vm-verb", "-n", "0.1"]);
    expect(r.status, r.stderr).toBe(0);
    const lines = r.stdout.split("\n");
    expect(lines[0]).toBe("VM vm-verb  running  up 12s  interval 2.00 s");
    expect(lines).toContainEqual(expect.stringMatching(/^VCPU +EXITS\/S +HALTED +IO +HLT +MMIO$/));
    expect(lines).toContainEqual(expect.stringMatching(/^0 +150 +75\.0% +100 +50 +0$/));
    expect(lines).toContainEqual(expect.stringMatching(/^1 +10 +- +0 +0 +10$/));
    expect(lines).toContainEqual(
      expect.stringMatching(
        /^DISK +IOPS +READ\/S +WRITE\/S +READ MiB\/S +WRITE MiB\/S +IN-FLIGHT +P50 +P99 +ERRORS +CPU$/,
      ),
    );
    expect(lines).toContainEqual(
      expect.stringMatching(/^disk0 +1000 +500 +500 +4 +1 +7 +1\.02 ms +32\.8 ms +2 \(2\) +10\.0%$/),
    );
    expect(lines).toContainEqual(expect.stringMatching(/^111 +disk0 +10\.0% +1000 +300 ms +serving$/));
    expect(lines).toContainEqual(expect.stringMatching(/^222 +rng0,console0 +1\.0% +10 +0 ms +serving$/));
  });

  it("--watch prints a block per interval, redrawn in place on a terminal", async () => {
    await vm();
    const plain = await tskvm(["stat", "vm-verb", "--watch", "--count", "3", "-n", "0.1"]);
    expect(plain.status, plain.stderr).toBe(0);
    expect(plain.stdout.match(/^VM vm-verb/gm)).toHaveLength(3);
    expect(plain.stdout).not.toContain("\x1b");
    const json = await tskvm(["stat", "vm-verb", "-w", "--count", "2", "-n", "0.1", "--json"]);
    expect(
      json.stdout
        .trim()
        .split("\n")
        .map((l) => (JSON.parse(l) as { name: string }).name),
    ).toEqual(["vm-verb", "vm-verb"]);
    const tty = await tskvm(["stat", "vm-verb", "-w", "--count", "2", "-n", "0.1"], {
      stdoutTerminal: { columns: 120, rows: 40 },
    });
    expect(tty.stdout.split("\x1b[H\x1b[2J")).toHaveLength(3);
  });

  it("says which VM is missing, and refuses bad command lines", async () => {
    const none = await tskvm(["stat", "vm-nope", "-n", "0.1"]);
    expect(none.status).toBe(1);
    expect(none.stderr).toMatch(
      /^tskvm stat: error: no VM named vm-nope is running \(no .*vm-nope\.sock\)\n {2}hint: 'tskvm list' shows the running VMs\.\n$/,
    );
    for (const [args, message] of [
      [["stat"], /NAME is required: tskvm stat NAME/],
      [["stat", "a/b"], /'a\/b' is not a VM name/],
      [["stat", "vm", "-n", "0"], /--interval must be a number of seconds from 0\.1 to 3600, not '0'/],
      [["stat", "vm", "--count", "2"], /--count goes with --watch/],
      [["stat", "vm", "-w", "--count", "0"], /--count must be a whole number from 1/],
    ] as Array<[string[], RegExp]>) {
      const r = await tskvm(args);
      expect(r.status, args.join(" ")).toBe(2);
      expect(r.stderr, args.join(" ")).toMatch(message);
    }
  });
});

describe("tskvm pause, resume, stop", () => {
  it("drive the VM and report its errors", async () => {
    const target = await vm();
    expect(await tskvm(["pause", "vm-verb"])).toEqual({
      status: 0,
      stdout: "",
      stderr: "tskvm: vm-verb paused\n",
    });
    expect(await tskvm(["pause", "vm-verb"])).toEqual({
      status: 1,
      stdout: "",
      stderr: "tskvm pause: error: VM vm-verb: the VM is paused already\n",
    });
    expect((await tskvm(["resume", "vm-verb"])).stderr).toBe("tskvm: vm-verb resumed\n");
    expect((await tskvm(["stop", "vm-verb"])).stderr).toBe("tskvm: vm-verb powered off\n");
    expect((await tskvm(["stop", "vm-verb", "-t", "0"])).stderr).toBe(
      "tskvm: vm-verb did not power off within 0 s: stopped by force\n",
    );
    expect((await tskvm(["stop", "vm-verb", "--timeout", "2.5"])).status).toBe(0);
    expect(target.calls.filter((c: unknown[]) => c[0] !== "info")).toEqual([
      ["pause"],
      ["pause"],
      ["resume"],
      ["stop", 10_000],
      ["stop", 0],
      ["stop", 2500],
    ]);
    expect((await tskvm(["stop", "vm-verb", "-t", "x"])).stderr).toMatch(
      /-t\/--timeout must be a number of seconds from 0 to 3600/,
    );
    expect((await tskvm(["resume"])).status).toBe(2);
    expect((await tskvm(["pause", "vm-verb", "extra"])).status).toBe(2);
  });
});

describe("tskvm set", () => {
  it("sends the tuning and prints what is in force", async () => {
    const target = await vm();
    const r = await tskvm(["set", "vm-verb", "disk0", "iops=400:1000", "bw=10M", "ioprio=be:2", "nice=none"]);
    expect(r, r.stderr).toEqual({
      status: 0,
      stdout: "disk0: iops=400:1000 bw=10M ioprio=be:2\n",
      stderr: "",
    });
    expect(target.calls.at(-1)).toEqual([
      "tune",
      "disk0",
      {
        iops: { rate: 400, burst: 1000 },
        bandwidth: { rate: 10 * MiB },
        ioPriority: { class: "be", level: 2 },
        nice: null,
      },
    ]);
    const json = await tskvm(["set", "vm-verb", "disk0", "--json", "ioprio=idle", "iops=none"]);
    expect(JSON.parse(json.stdout)).toEqual({ iops: null, ioPriority: { class: "idle" } });
  });

  it("refuses unknown devices and bad keys or values", async () => {
    await vm();
    const dev = await tskvm(["set", "vm-verb", "disk7", "iops=5"]);
    expect(dev.status).toBe(1);
    expect(dev.stderr).toBe(
      "tskvm set: error: VM vm-verb: no device \"disk7\" (devices: disk0, rng0)\n  hint: 'tskvm stat NAME' shows the devices (disks are disk0, disk1, ... in -d order).\n",
    );
    for (const [args, message] of [
      [["set", "vm-verb"], /DEVICE is required/],
      [["set", "vm-verb", "disk0"], /give at least one KEY=VALUE \(keys: iops, bw, ioprio, nice\)/],
      [
        ["set", "vm-verb", "disk0", "speed=5"],
        /'speed=5' is not KEY=VALUE with a key of iops, bw, ioprio, nice/,
      ],
      [["set", "vm-verb", "disk0", "iops"], /'iops' is not KEY=VALUE/],
      [["set", "vm-verb", "disk0", "iops=0"], /'iops=0': iops=0: the rate must be more than 0/],
      [["set", "vm-verb", "disk0", "bw=fast"], /bw: 'fast' is not a size/],
      [["set", "vm-verb", "disk0", "ioprio=rt:9"], /the level must be 0 \(highest\) to 7/],
      [["set", "vm-verb", "disk0", "nice=20"], /nice=20 must be a whole number from -20 to 19/],
    ] as Array<[string[], RegExp]>) {
      const r = await tskvm(args);
      expect(r.status, args.join(" ")).toBe(2);
      expect(r.stderr, args.join(" ")).toMatch(message);
    }
  });
});
