// MachineControlTarget: what the control socket does with a `tskvm run` machine, over a
// stand-in Machine (the real one needs a Linux guest: tests/test/control.test.ts).
import type { DeviceTuning, Machine, MachineDeviceControl, MachineExit } from "@tskvm/machine-x86";
import { describe, expect, it } from "vitest";
import { MachineControlTarget } from "../src/control/machine-target.js";
import type { DiskSpec } from "../src/disk.js";

const disk = (path: string, more: Partial<DiskSpec> = {}): DiskSpec => ({
  path,
  readOnly: false,
  snapshot: false,
  direct: false,
  thread: "own",
  ...more,
});

function fakeMachine(exitReason: MachineExit["reason"] = "poweroff") {
  const calls: string[] = [];
  const tuned: DeviceTuning[] = [];
  const device: MachineDeviceControl = {
    id: "disk0",
    kind: "virtio-blk",
    description: "/img/a.raw",
    stats: async () => ({ id: "disk0", kind: "virtio-blk", thread: {} as never, device: {} }),
    pause: async () => {},
    resume: async () => {},
    tune: async (t) => {
      tuned.push(t);
      return { iops: { rate: 500, burst: 50 } };
    },
  };
  const m = {
    state: "running" as string,
    cpus: 2,
    memMiB: 512,
    startedAt: Date.now() - 5000,
    devices: [device],
    pause: async () => {
      calls.push("pause");
      m.state = "paused";
    },
    resume: async () => {
      calls.push("resume");
      m.state = "running";
    },
    powerOff: async (o: { timeoutMs: number }) => {
      calls.push(`powerOff ${o.timeoutMs}`);
      m.state = "exited";
      return { reason: exitReason, vcpus: [], unhandledIo: [] } satisfies MachineExit;
    },
    stats: async () => ({ state: m.state, uptimeMs: 1, pausedMs: 0, vcpus: [], devices: [] }),
  };
  return { m, calls, tuned, machine: m as unknown as Machine };
}

describe("MachineControlTarget", () => {
  it("info before the machine exists, then from it: disks with their ids and tuning, devices, uptime", () => {
    const t = new MachineControlTarget("web", [
      disk("/img/a.raw", { tuning: { nice: 5 } }),
      disk("/img/b.qcow2", { readOnly: true, format: "qcow2", queues: 2 }),
    ]);
    expect(t.info()).toMatchObject({
      name: "web",
      pid: process.pid,
      state: "created",
      devices: [],
      uptimeMs: 0,
    });
    const { machine } = fakeMachine();
    t.attach(machine);
    const info = t.info();
    expect(info).toMatchObject({ state: "running", cpus: 2, memMiB: 512 });
    expect(info.disks).toEqual([
      { id: "disk0", path: "/img/a.raw", readOnly: false, tuning: { nice: 5 } },
      { id: "disk1", path: "/img/b.qcow2", readOnly: true, format: "qcow2", queues: 2, tuning: {} },
    ]);
    expect(info.devices).toEqual([{ id: "disk0", kind: "virtio-blk", description: "/img/a.raw" }]);
    expect(info.uptimeMs).toBeGreaterThanOrEqual(4900);
    expect(Date.parse(info.startedAt)).toBeLessThanOrEqual(Date.now() - 4900);
  });

  it("pause and resume only from the state they change; nothing before the machine exists", async () => {
    const t = new MachineControlTarget("web", []);
    await expect(t.pause()).rejects.toMatchObject({
      code: "bad-state",
      message: "cannot pause: the VM is created",
    });
    const { m, calls, machine } = fakeMachine();
    t.attach(machine);
    await expect(t.resume()).rejects.toMatchObject({
      code: "bad-state",
      message: "cannot resume: the VM is running",
    });
    await t.pause();
    await expect(t.pause()).rejects.toMatchObject({
      code: "bad-state",
      message: "cannot pause: the VM is paused",
    });
    await t.resume();
    expect(calls).toEqual(["pause", "resume"]);
    expect(m.state).toBe("running");
  });

  it("tune reaches the device by id and the info keeps what is in force; an unknown id is refused", async () => {
    const t = new MachineControlTarget("web", [disk("/img/a.raw")]);
    const { tuned, machine } = fakeMachine();
    t.attach(machine);
    expect(await t.tune("disk0", { iops: { rate: 500 } })).toEqual({ iops: { rate: 500, burst: 50 } });
    expect(tuned).toEqual([{ iops: { rate: 500 } }]);
    expect(t.info().disks[0]?.tuning).toEqual({ iops: { rate: 500, burst: 50 } });
    await expect(t.tune("disk9", { nice: 1 })).rejects.toMatchObject({ code: "unknown-device" });
  });

  it("stop powers off with the timeout, says whether it was forced, and marks the stop as requested", async () => {
    for (const [reason, forced] of [
      ["poweroff", false],
      ["stopped", true],
    ] as const) {
      const t = new MachineControlTarget("web", []);
      const { calls, machine } = fakeMachine(reason);
      t.attach(machine);
      expect(t.stopRequested).toBe(false);
      expect(await t.stop(2500)).toEqual({ forced });
      expect(calls).toEqual(["powerOff 2500"]);
      expect(t.stopRequested).toBe(true);
      await expect(t.stop(1)).rejects.toMatchObject({
        code: "bad-state",
        message: "cannot stop: the VM is exited",
      });
    }
  });
});
