// The control socket's view of a `tskvm run` machine: what `ControlServer` drives, over
// machine-x86's Machine (state, pause/resume, Ctrl-Alt-Del power-off, stats) and its
// devices' controls (tune). The server listens before the machine exists — so a name
// clash is found before anything boots — and the machine is attached once created.
import type { DeviceTuning, Machine, MachineStats } from "@tskvm/machine-x86";
import { type DiskSpec, diskId } from "../disk.js";
import { ControlError, type VmInfo } from "./protocol.js";
import type { ControlTarget } from "./server.js";

export class MachineControlTarget implements ControlTarget {
  readonly #name: string;
  readonly #disks: readonly DiskSpec[];
  readonly #tunings = new Map<string, DeviceTuning>();
  readonly #createdAt = Date.now();
  #machine: Machine | undefined;
  #stopRequested = false;

  constructor(name: string, disks: readonly DiskSpec[]) {
    this.#name = name;
    this.#disks = disks;
    disks.forEach((d, i) => {
      this.#tunings.set(diskId(i), d.tuning ?? {});
    });
  }

  /** The machine the verbs act on, once created. */
  attach(machine: Machine): void {
    this.#machine = machine;
  }

  /** True once a `stop` came through the socket (the run then exits 0 however the guest ended). */
  get stopRequested(): boolean {
    return this.#stopRequested;
  }

  info(): VmInfo {
    const m = this.#machine;
    const started = m?.startedAt;
    return {
      name: this.#name,
      pid: process.pid,
      state: m?.state ?? "created",
      cpus: m?.cpus ?? 0,
      memMiB: m?.memMiB ?? 0,
      disks: this.#disks.map((d, i) => {
        const id = diskId(i);
        return {
          id,
          path: d.path,
          readOnly: d.readOnly,
          ...(d.snapshot ? { snapshot: true } : {}),
          ...(d.format ? { format: d.format } : {}),
          ...(d.queues !== undefined && d.queues > 1 ? { queues: d.queues } : {}),
          tuning: this.#tunings.get(id) ?? {},
        };
      }),
      devices: (m?.devices ?? []).map((c) => ({ id: c.id, kind: c.kind, description: c.description })),
      startedAt: new Date(Math.round(started ?? this.#createdAt)).toISOString(),
      uptimeMs: started === undefined ? 0 : Math.max(0, Math.round(Date.now() - started)),
    };
  }

  /** The machine, if it is in one of `states`; else the "bad-state" error naming what it is. */
  #machineIn(verb: string, ...states: string[]): Machine {
    const m = this.#machine;
    const state = m?.state ?? "created";
    if (!m || !states.includes(state))
      throw new ControlError("bad-state", `cannot ${verb}: the VM is ${state}`);
    return m;
  }

  stats(): Promise<MachineStats> {
    return this.#machineIn("read its counters", "running", "paused", "starting").stats();
  }

  async pause(): Promise<void> {
    await this.#machineIn("pause", "running").pause();
  }

  async resume(): Promise<void> {
    await this.#machineIn("resume", "paused").resume();
  }

  async stop(timeoutMs: number): Promise<{ forced: boolean }> {
    const m = this.#machineIn("stop", "running", "paused");
    this.#stopRequested = true;
    const exit = await m.powerOff({ timeoutMs });
    return { forced: exit.reason === "stopped" };
  }

  async tune(deviceId: string, tuning: DeviceTuning): Promise<DeviceTuning> {
    const m = this.#machineIn("tune a device", "running", "paused");
    const device = m.devices.find((d) => d.id === deviceId);
    if (!device) throw new ControlError("unknown-device", `no device ${deviceId}`);
    const now = await device.tune(tuning);
    this.#tunings.set(deviceId, now);
    return now;
  }
}
