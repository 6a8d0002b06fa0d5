// An x86-64 machine that boots a bzImage: memory, boot structures, irqchip, vCPU
// workers, shared legacy devices, and the bookkeeping of how the guest ended.

import { channel } from "node:diagnostics_channel";
import { existsSync, readFileSync } from "node:fs";
import { Readable, Writable } from "node:stream";
import { fileURLToPath, pathToFileURL } from "node:url";
import {
  Cap,
  type CpuidEntry,
  EventFd,
  Kvm,
  type KvmStatsReader,
  type PreparedVcpuThread,
  type Vcpu,
  VcpuThread,
  type VcpuThreadResult,
  type Vm,
} from "@tskvm/kvm-core";
import { checkAcceleration } from "./accel.js";
import { buildCpuid, findCpuid } from "./arch/cpuid.js";
import { setupVcpu } from "./arch/vcpu-setup.js";
import {
  BootError,
  buildBootParams,
  encodeCmdline,
  type InitrdPlacement,
  kernelEnd,
  placeInitrd,
} from "./boot/boot-params.js";
import { type BzImage, parseBzImage, STARTUP_64_OFFSET } from "./boot/bzimage.js";
import { buildCmdline } from "./boot/cmdline.js";
import { buildE820 } from "./boot/e820.js";
import {
  Addr,
  KVM_IDENTITY_MAP_ADDRESS,
  KVM_TSS_ADDRESS,
  MiB,
  PCI_HOLE_START,
  ramRanges,
} from "./boot/layout.js";
import { bootRegs, buildGdt, longModeSregs } from "./boot/long-mode.js";
import { buildMpTable, MP_MAX_CPUS } from "./boot/mptable.js";
import { buildIdentityPageTables } from "./boot/page-tables.js";
import { ConsoleWatch } from "./console.js";
import {
  allHalted,
  Ctl,
  controlBlock,
  HaltStatus,
  haltStatusName,
  ProbeSlot,
  probeSlot,
  type WorkerMessage,
} from "./control.js";
import { Cmos } from "./devices/cmos.js";
import { I8042, I8042_AUX_IRQ, I8042_KBD_IRQ } from "./devices/i8042.js";
import { PciBus, type PciDeviceInfo, type PciDeviceSpec } from "./devices/pci.js";
import { COM1, Serial } from "./devices/serial.js";
import { ByteRing } from "./devices/shared.js";
import { GsiRouter } from "./irq-routing.js";
import type {
  DeviceStatsReport,
  MachineDeviceControl,
  MachineState,
  MachineStats,
  VcpuStats,
} from "./run-control.js";
import type { VcpuHandlerData } from "./vcpu-handler.js";

export interface MachineOptions {
  /** A bzImage: a path or its bytes. */
  kernel: string | Uint8Array;
  /** An initramfs: a path or its bytes. */
  initrd?: string | Uint8Array;
  /** Kernel parameters, appended to the defaults ({@link DEFAULT_CMDLINE}). */
  cmdline?: string;
  /** Prepend the default parameters (default true). */
  defaultCmdline?: boolean;
  /** RAM in MiB (default 256). */
  memMiB?: number;
  /** vCPUs (default 1). */
  cpus?: number;
  /** Run even when KVM only emulates guest code (PVM); fine for hand-made guests, hopeless for Linux. */
  allowEmulated?: boolean;
  /** How often to look for all vCPUs halted with interrupts off (the end of a `poweroff`), in ms. Default 250. */
  haltProbeMs?: number;
  /**
   * PCI devices to put on bus 0: ready specs, or factories the machine calls once
   * the VM and guest RAM exist (a device whose I/O thread works on guest memory).
   */
  devices?: readonly (MachinePciDevice | MachinePciDeviceFactory)[];
}

/** A PCI device plus hooks run in the main thread. */
export interface MachinePciDevice extends PciDeviceSpec {
  /** Once the VM exists and the device has its slot, BARs and GSI, before any vCPU runs. */
  attach?: (vm: Vm, info: PciDeviceInfo) => void;
  /** When the machine ends, after the vCPUs stopped and before the VM closes (stop I/O threads here). */
  detach?: () => void | Promise<void>;
  /** Run-time control (stats, pause, limits): what `machine.devices` and its controllers reach. */
  control?: MachineDeviceControl;
}

/** What a device factory gets: the VM (its memory for I/O threads) and the machine's interrupt routing. */
export interface MachineDeviceContext {
  vm: Vm;
  /** The machine's GSI routing table: allocate a GSI per MSI vector and point it at messages. */
  irq: GsiRouter;
  /** Ends the machine with reason "error" (e.g. the device's I/O thread died). */
  fail(detail: string): void;
}

export type MachinePciDeviceFactory = (
  ctx: MachineDeviceContext,
) => MachinePciDevice | Promise<MachinePciDevice>;

export type MachineExitReason = "poweroff" | "reboot" | "triple-fault" | "crash" | "stopped" | "error";

export interface MachineExit {
  reason: MachineExitReason;
  /** What ended it, e.g. "i8042 reset (command 0xfe to port 0x64)" or the kernel's panic line. */
  detail?: string;
  /**
   * VM exits each vCPU handled, and its state and rip when the halt probe last looked
   * (a few times a second): where a hung guest was.
   */
  vcpus: { id: number; exits: number; state?: string; rip?: string }[];
  /** Ports and MMIO addresses the guest touched that nothing answers (first few). */
  unhandledIo: string[];
}

export interface PowerOffOptions {
  /** How long the guest has to end after Ctrl-Alt-Del before it is stopped (default 5000). */
  timeoutMs?: number;
}

export interface MachineConsole {
  /** Everything the guest writes to the serial port (COM1). Buffered without limit if nobody reads. */
  output: Readable;
  /** Bytes for the guest's serial port; a write completes once the bytes are in the UART's FIFO. */
  input: Writable;
}

/** Where things went in guest memory (known once the machine is created). */
export interface BootLayout {
  kernelAddress: number;
  entry: number;
  bootParams: number;
  cmdline: string;
  cmdlineAddress: number;
  initrd: InitrdPlacement | undefined;
  /** End of the memory the kernel may use while it decompresses. */
  kernelEnd: number;
  mpTable: number;
  pageTables: number;
}

const DEFAULT_MEM_MIB = 256;
const DEFAULT_HALT_PROBE_MS = 250;
/** Consecutive halt-probe rounds that must see every vCPU halted with IF=0. */
const HALT_ROUNDS = 2;
const TX_RING_BYTES = 1 << 16;
/** How long console output may sit in the ring before the main thread looks again. */
const TX_BATCH_MS = 4;
/** How long {@link Machine.emergencyStop} blocks waiting for the vCPU loops to end. */
const EMERGENCY_STOP_WAIT_MS = 2000;
const DEFAULT_POWER_OFF_TIMEOUT_MS = 5000;

/** The report of a device whose stats() failed: zeroed, with the error. */
function failedDeviceStats(c: MachineDeviceControl, e: unknown): DeviceStatsReport {
  return {
    id: c.id,
    kind: c.kind,
    thread: { tid: 0, wakeups: 0, cpuMs: 0, throttledMs: 0, held: false, tuning: {} },
    device: {},
    error: e instanceof Error ? e.message : String(e),
  };
}

function load(what: string, v: string | Uint8Array): Uint8Array {
  if (typeof v !== "string") return v;
  try {
    return readFileSync(v);
  } catch (e) {
    throw new Error(`cannot read the ${what} ${v}: ${(e as Error).message}`);
  }
}

/** The compiled handler module; from the sources (tests) fall back to the build in dist/. */
function handlerModuleUrl(): URL {
  const here = new URL("./vcpu-handler.js", import.meta.url);
  if (existsSync(fileURLToPath(here))) return here;
  const built = new URL("../dist/vcpu-handler.js", import.meta.url);
  if (existsSync(fileURLToPath(built))) return built;
  throw new Error("@tskvm/machine-x86 is not built: run `npx tsc -p tsconfig.json` in packages/machine-x86");
}

function moduleHref(m: string | URL): string {
  if (m instanceof URL) return m.href;
  return /^[a-z]+:/i.test(m) ? m : pathToFileURL(m).href;
}

/**
 * Creates (but does not start) a machine: reads and checks the kernel, lays out
 * memory, and refuses when KVM only emulates guest code unless `allowEmulated`.
 */
export function createMachine(options: MachineOptions): Machine {
  return new Machine(options);
}

/**
 * The `node:diagnostics_channel` on which machines publish how their start went:
 * `{ phase, at }` with `at` in ms on `performance.now()`'s clock (from process start), for
 * each {@link MachineStartupPhase} in order. Nothing is built when nobody subscribes.
 */
export const MACHINE_STARTUP_CHANNEL = "tskvm:machine:startup";

/**
 * The start of a machine, step by step: the constructor's checks, the KVM acceleration
 * probe, the VM with its RAM, the devices (workers started, in order), the kernel, initrd
 * and tables written, the vCPUs set up, their threads in KVM_RUN, the guest's first byte
 * on the serial console.
 */
export type MachineStartupPhase =
  | "options-checked"
  | "acceleration-probed"
  | "vm-created"
  | "devices-started"
  | "guest-loaded"
  | "vcpus-created"
  | "vcpu-threads-running"
  | "first-console-output";

export interface MachineStartupEvent {
  phase: MachineStartupPhase;
  at: number;
}

const startupChannel = channel(MACHINE_STARTUP_CHANNEL);

function startupPhase(phase: MachineStartupPhase): void {
  if (startupChannel.hasSubscribers)
    startupChannel.publish({ phase, at: performance.now() } satisfies MachineStartupEvent);
}

export class Machine {
  readonly cpus: number;
  readonly memMiB: number;
  readonly kernel: BzImage;
  readonly layout: BootLayout;
  readonly pci = new PciBus();
  /** GSI routes: KVM's irqchip defaults plus the MSI routes devices set. */
  readonly irq = new GsiRouter();
  readonly console: MachineConsole;
  readonly exited: Promise<MachineExit>;

  readonly #options: MachineOptions;
  readonly #initrd: Uint8Array | undefined;
  readonly #cmdlineBytes: Uint8Array;
  readonly #attach: { attach: NonNullable<MachinePciDevice["attach"]>; info: PciDeviceInfo }[] = [];
  readonly #factories: MachinePciDeviceFactory[] = [];
  readonly #detach: NonNullable<MachinePciDevice["detach"]>[] = [];
  readonly #control: Int32Array;
  readonly #tx = ByteRing.create(TX_RING_BYTES);
  readonly #serialState = Serial.createState();
  readonly #i8042State = I8042.createState();
  readonly #cmosState = Cmos.createState();
  readonly #watch = new ConsoleWatch();
  readonly #unhandled: string[] = [];
  readonly #input: { bytes: Uint8Array; done: (e?: Error | null) => void }[] = [];
  #resolveExit!: (e: MachineExit) => void;
  #state: "created" | "starting" | "running" | "paused" | "ending" | "ended" = "created";
  readonly #deviceControls: MachineDeviceControl[] = [];
  /** KVM's binary stats per vCPU (undefined where the kernel lacks them), open while it runs. */
  #kvmStats: (KvmStatsReader | undefined)[] = [];
  /** The main thread's view of the keyboard controller (Ctrl-Alt-Del goes in through it). */
  #i8042: I8042 | undefined;
  /** Pause, resume and power-off run one at a time, in call order. */
  #controlOps: Promise<unknown> = Promise.resolve();
  /** kvmclock when paused (KVM_GET_CLOCK), set back on resume. */
  #pausedClock: bigint | undefined;
  #devicesPaused = false;
  #powerOffRequested = false;
  #startedAt: number | undefined;
  #endedAt: number | undefined;
  #pausedAt: number | undefined;
  #pausedMs = 0;
  #kvm: Kvm | undefined;
  #vm: Vm | undefined;
  #threads: VcpuThread[] = [];
  #results: VcpuThreadResult[] = [];
  #eventFds: EventFd[] = [];
  #serial: Serial | undefined;
  #probeTimer: NodeJS.Timeout | undefined;
  #inputTimer: NodeJS.Timeout | undefined;
  #txTimer: NodeJS.Timeout | undefined;
  #haltRounds = 0;
  #firstOutput = false;
  #haltRips = "";
  #vcpus: Vcpu[] = [];
  #prepared: PreparedVcpuThread[] = [];
  /** The vCPU workers' handler module, found once (the prepared workers are loading it). */
  readonly #handlerModule: URL;
  #handlerData: VcpuHandlerData | undefined;
  #ending: Promise<MachineExit> | undefined;
  #starting: Promise<void> | undefined;

  constructor(options: MachineOptions) {
    this.#options = options;
    const cpus = options.cpus ?? 1;
    const memMiB = options.memMiB ?? DEFAULT_MEM_MIB;
    if (!Number.isInteger(cpus) || cpus < 1 || cpus > MP_MAX_CPUS)
      throw new RangeError(`cpus must be 1-${MP_MAX_CPUS}, not ${cpus}`);
    if (!Number.isInteger(memMiB) || memMiB < 2 || memMiB > 1024 * 1024)
      throw new RangeError(`memMiB must be a whole number of MiB from 2, not ${memMiB}`);
    this.cpus = cpus;
    this.memMiB = memMiB;

    this.kernel = parseBzImage(load("kernel", options.kernel));
    this.#initrd = options.initrd === undefined ? undefined : load("initrd", options.initrd);
    const cmdline = buildCmdline(options.cmdline, options.defaultCmdline ?? true);
    this.#cmdlineBytes = encodeCmdline(cmdline, this.kernel);
    const memBytes = memMiB * MiB;
    const end = kernelEnd(this.kernel, Addr.KERNEL);
    const ramTop = Math.min(memBytes, PCI_HOLE_START);
    if (end > ramTop)
      throw new BootError(
        `not enough memory: the kernel needs memory up to 0x${end.toString(16)} (init_size ${Math.ceil(this.kernel.initSize / MiB)} MiB); give the machine at least ${Math.ceil(end / MiB) + 16} MiB`,
      );
    const initrd = this.#initrd ? placeInitrd(this.kernel, memBytes, this.#initrd.length, end) : undefined;
    this.layout = {
      kernelAddress: Addr.KERNEL,
      entry: Addr.KERNEL + STARTUP_64_OFFSET,
      bootParams: Addr.ZERO_PAGE,
      cmdline,
      cmdlineAddress: Addr.CMDLINE,
      initrd,
      kernelEnd: end,
      mpTable: 0,
      pageTables: Addr.PAGE_TABLES,
    };
    for (const dev of options.devices ?? []) {
      if (typeof dev === "function") this.#factories.push(dev);
      else this.#addDevice(dev);
    }
    // Last, so that a bad option or kernel is reported even on a machine without KVM.
    startupPhase("options-checked");
    checkAcceleration(options.allowEmulated ?? false);
    startupPhase("acceleration-probed");
    // Each vCPU's worker boots (a new isolate) and loads the exit handlers while the VM is built.
    const handlerModule = handlerModuleUrl();
    this.#handlerModule = handlerModule;
    this.#prepared = Array.from({ length: cpus }, () => VcpuThread.prepare(handlerModule));
    this.#control = controlBlock(cpus);

    this.exited = new Promise((resolve) => {
      this.#resolveExit = resolve;
    });
    this.console = {
      output: new Readable({ read() {} }),
      input: new Writable({
        write: (chunk: Buffer, _enc, done) => {
          this.#input.push({ bytes: new Uint8Array(chunk), done });
          this.#pumpInput();
        },
      }),
    };
  }

  /** Builds the VM and starts one worker per vCPU; resolves once they all run. */
  start(): Promise<void> {
    if (this.#state !== "created")
      return Promise.reject(
        new Error(`the machine was already ${this.#state === "ended" ? "run" : "started"}`),
      );
    this.#state = "starting";
    // Node joins worker threads on exit, and a vCPU inside KVM_RUN never comes back on
    // its own: without this, a process ending while a guest spins would hang for good.
    process.on("exit", this.#onProcessExit);
    this.#starting = this.#start();
    return this.#starting;
  }

  readonly #onProcessExit = (): void => this.emergencyStop();

  async #start(): Promise<void> {
    try {
      await this.#build();
      await this.#startThreads();
      startupPhase("vcpu-threads-running");
    } catch (e) {
      await this.#end("error", (e as Error).message);
      throw e;
    }
    if (this.#state !== "starting") return; // it ended while starting
    this.#state = "running";
    this.#startedAt = performance.now();
    this.#pumpInput();
    const ms = this.#options.haltProbeMs ?? DEFAULT_HALT_PROBE_MS;
    this.#probeTimer = setInterval(() => this.#probeHalt(), ms);
    this.#probeTimer.unref();
  }

  /** Stops the vCPUs (if running) and resolves with how the machine ended. */
  async stop(): Promise<MachineExit> {
    // Let a start in progress finish first, so no vCPU thread is left behind.
    if (this.#starting) await this.#starting.catch(() => {});
    return this.#end("stopped");
  }

  /**
   * Stops the machine without waiting, for a process that must exit now (an uncaught
   * exception, a hard exit): every vCPU thread is told to stop and kicked out of KVM_RUN
   * synchronously, so `process.exit()` right after does not wait forever for a vCPU in
   * KVM_RUN. The orderly end ({@link stop}: devices detached, {@link exited} resolved)
   * carries on while the event loop runs. The machine also does this itself on the
   * process's `exit` event while it runs.
   */
  emergencyStop(): void {
    for (const t of this.#threads) void t.stop();
    // Wait (bounded) until each loop has left KVM_RUN: Node terminating a worker still
    // inside a KVM ioctl aborts the process instead of exiting it.
    const deadline = Date.now() + EMERGENCY_STOP_WAIT_MS;
    const nap = new Int32Array(new SharedArrayBuffer(4));
    while (this.#threads.some((t) => !t.loopEnded) && Date.now() < deadline) Atomics.wait(nap, 0, 0, 1);
    this.stop().catch(() => {});
  }

  /** The KVM VM while the machine runs (for devices that register eventfds). */
  get vm(): Vm | undefined {
    return this.#vm;
  }

  /** Where the machine is in its life: created, starting, running, paused, stopping, exited. */
  get state(): MachineState {
    if (this.#state === "ending") return "stopping";
    if (this.#state === "ended") return "exited";
    return this.#state;
  }

  /** When the machine started running (ms since the epoch), once it has. */
  get startedAt(): number | undefined {
    return this.#startedAt === undefined ? undefined : performance.timeOrigin + this.#startedAt;
  }

  /** The run-time controls of the devices that have one (factories' devices once started). */
  get devices(): readonly MachineDeviceControl[] {
    return this.#deviceControls;
  }

  /** Runs pause, resume and power-off one at a time, in call order. */
  #serially<T>(op: () => Promise<T>): Promise<T> {
    const run = this.#controlOps.then(op, op);
    this.#controlOps = run.catch(() => {});
    return run;
  }

  /** Waits for a start in progress; throws unless the machine now runs (or is paused). */
  async #controllable(verb: string): Promise<void> {
    if (this.#state === "starting") await this.#starting?.catch(() => {});
    if (this.#state === "running" || this.#state === "paused") return;
    throw new Error(
      this.#state === "created"
        ? `cannot ${verb} the machine: it was not started`
        : `cannot ${verb} the machine: it has ${this.#state === "ending" ? "begun to stop" : "exited"}`,
    );
  }

  /**
   * Stops the vCPUs (each leaves KVM_RUN and waits outside it), then holds the devices
   * (each finishes the requests in flight and takes no more). The guest's kvmclock is read
   * now and set back on {@link resume}, as QEMU's stop/cont: the guest does not see the
   * paused time pass. Nothing if already paused; an error once the machine has ended.
   */
  pause(): Promise<void> {
    return this.#serially(async () => {
      await this.#controllable("pause");
      if (this.#state === "paused") return;
      this.#state = "paused";
      this.#pausedAt = performance.now();
      this.#haltRounds = 0;
      await Promise.all(this.#threads.map((t) => t.pause()));
      if (this.#state !== "paused") return; // it ended meanwhile
      try {
        this.#pausedClock = this.#vm?.getClock().clock;
      } catch {
        this.#pausedClock = undefined; // no kvmclock to keep: the guest sees the pause
      }
      this.#devicesPaused = true;
      await settleAll(this.#deviceControls.map((c) => () => c.pause()));
    });
  }

  /** Undoes {@link pause}: devices first, then the clock, then the vCPUs. Nothing if running. */
  resume(): Promise<void> {
    return this.#serially(() => this.#resume());
  }

  async #resume(): Promise<void> {
    await this.#controllable("resume");
    if (this.#state !== "paused") return;
    let failure: unknown;
    try {
      await settleAll(this.#deviceControls.map((c) => () => c.resume()));
    } catch (e) {
      failure = e; // the vCPUs still resume: a guest stuck paused helps nobody
    }
    this.#devicesPaused = false;
    if (this.#state !== "paused") return;
    if (this.#pausedClock !== undefined) {
      try {
        this.#vm?.setClock({ clock: this.#pausedClock });
      } catch {
        // The guest then sees the paused time, as with no kvmclock at all.
      }
      this.#pausedClock = undefined;
    }
    // Answers from before the pause say nothing about now.
    for (let i = 0; i < this.cpus; i++)
      Atomics.store(this.#control, probeSlot(i, ProbeSlot.STATUS), HaltStatus.UNKNOWN);
    this.#haltRounds = 0;
    this.#haltRips = "";
    this.#pausedMs += performance.now() - (this.#pausedAt ?? performance.now());
    this.#pausedAt = undefined;
    this.#state = "running";
    for (const t of this.#threads) t.resume();
    this.#pumpInput();
    if (failure !== undefined) throw failure;
  }

  /**
   * Asks the guest to stop as a person at its keyboard would: Ctrl-Alt-Del through the
   * i8042 (Linux restarts, or with ctrl-alt-del off signals init, which powers off). The
   * machine ends "poweroff" with a detail saying it was requested; if the guest has not
   * ended within `timeoutMs` it is stopped ("stopped"). A paused machine is resumed first.
   * Resolves with how it ended.
   */
  powerOff(options: PowerOffOptions = {}): Promise<MachineExit> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_POWER_OFF_TIMEOUT_MS;
    if (!(timeoutMs >= 0)) return Promise.reject(new RangeError(`timeoutMs must be >= 0, not ${timeoutMs}`));
    return this.#serially(async () => {
      if (this.#state === "starting") await this.#starting?.catch(() => {});
      if (this.#state === "ending" || this.#state === "ended") return this.exited;
      if (this.#state === "created") return this.stop();
      if (this.#state === "paused") await this.#resume();
      this.#powerOffRequested = true;
      const deadline = Date.now() + timeoutMs;
      const ended = this.exited.then(() => true);
      // The keyboard queue may be busy or full for a moment: try again until it takes the keys.
      while (!this.#i8042?.tryInjectKeys("ctrlAltDel")) {
        if (Date.now() >= deadline || this.#ending) break;
        await Promise.race([ended, new Promise((r) => setTimeout(r, 1))]);
      }
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<false>((r) => {
        timer = setTimeout(() => r(false), Math.max(0, deadline - Date.now()));
      });
      const done = await Promise.race([ended, timedOut]);
      clearTimeout(timer);
      if (done) return this.exited;
      const s = timeoutMs / 1000;
      return this.#end("stopped", `the guest did not stop within ${s} s of Ctrl-Alt-Del`);
    });
  }

  /**
   * The machine's counters: per vCPU its exits by reason (counted in its worker) and, where
   * the kernel has binary stats (Linux ≥ 5.14), KVM's own counters and the time it spent
   * halted; per device its report (a device that fails reports its error in place).
   */
  async stats(): Promise<MachineStats> {
    const now = this.#endedAt ?? performance.now();
    const vcpus = [...this.#threads]
      .sort((a, b) => a.vcpu.id - b.vcpu.id)
      .map((t): VcpuStats => {
        const v: VcpuStats = { id: t.vcpu.id, exits: t.exitCounts() };
        const reader = this.#kvmStats[t.vcpu.id];
        if (reader && !reader.closed) {
          try {
            const kvm = reader.read();
            v.kvm = kvm;
            if (kvm.halt_wait_ns !== undefined) v.haltedMs = kvm.halt_wait_ns / 1e6;
          } catch {
            // Closed under us (the machine ended): report what the worker counted.
          }
        }
        return v;
      });
    const devices = await Promise.all(
      this.#deviceControls.map((c) =>
        Promise.resolve()
          .then(() => c.stats())
          .catch((e: unknown) => failedDeviceStats(c, e)),
      ),
    );
    return {
      state: this.state,
      uptimeMs: this.#startedAt === undefined ? 0 : now - this.#startedAt,
      pausedMs: this.#pausedMs + (this.#pausedAt !== undefined ? now - this.#pausedAt : 0),
      vcpus,
      devices,
    };
  }

  #addDevice(dev: MachinePciDevice): void {
    if (dev.control) this.#deviceControls.push(dev.control);
    if (dev.detach) this.#detach.push(dev.detach);
    const info = this.pci.register(dev);
    if (dev.attach) this.#attach.push({ attach: dev.attach, info });
  }

  async #build(): Promise<void> {
    const kvm = Kvm.open();
    this.#kvm = kvm;
    const limits = kvm.vcpuLimits();
    if (this.cpus > limits.max)
      throw new RangeError(`${this.cpus} vCPUs: this host's KVM allows ${limits.max}`);
    const vm = kvm.createVm();
    this.#vm = vm;
    // Both only matter on Intel (real-mode emulation needs a TSS and an identity map).
    vm.setTssAddress(KVM_TSS_ADDRESS);
    vm.setIdentityMapAddress(KVM_IDENTITY_MAP_ADDRESS);
    vm.createIrqchip();
    vm.createPit2({ speakerDummy: true });
    const memBytes = this.memMiB * MiB;
    for (const r of ramRanges(memBytes)) vm.addMemory({ guestAddress: r.address, size: r.size });
    startupPhase("vm-created");
    this.irq.attach((routes) => vm.setGsiRouting(routes));
    const ctx: MachineDeviceContext = {
      vm,
      irq: this.irq,
      fail: (detail) => void this.#end("error", detail),
    };
    for (const make of this.#factories) {
      this.#addDevice(await make(ctx));
      if (this.#state !== "starting")
        throw new Error("the machine was stopped while its devices were created");
    }
    startupPhase("devices-started");
    const supported = kvm.supportedCpuid();
    this.#loadGuest(vm, supported);
    startupPhase("guest-loaded");

    // ISA interrupts through irqfds: any thread raises them with an eventfd write.
    const serialIrq = EventFd.create();
    const kbdIrq = EventFd.create();
    const auxIrq = EventFd.create();
    this.#eventFds.push(serialIrq, kbdIrq, auxIrq);
    vm.registerIrqfd(serialIrq, COM1.irq);
    vm.registerIrqfd(kbdIrq, I8042_KBD_IRQ);
    vm.registerIrqfd(auxIrq, I8042_AUX_IRQ);
    this.#serial = new Serial(this.#serialState, { interrupt: () => serialIrq.write(1), output: () => {} });
    this.#i8042 = new I8042(this.#i8042State, {
      interrupt: (aux) => (aux ? auxIrq : kbdIrq).write(1),
      reset: () => {}, // only the guest's own port writes pull the reset line
    });
    this.pci.seal();
    for (const a of this.#attach) a.attach(vm, a.info);

    const msrs = kvm.msrIndexList();
    // The LAPIC is always KVM's (KVM_CREATE_IRQCHIP), so its TSC-deadline mode is there to offer.
    const tscDeadlineTimer = kvm.checkExtension(Cap.TSC_DEADLINE_TIMER) > 0;
    for (let id = 0; id < this.cpus; id++) {
      const vcpu = vm.createVcpu(id);
      this.#vcpus.push(vcpu);
      // Now, before the vCPU runs: the ioctl waits for the vCPU's lock, which KVM_RUN holds.
      try {
        this.#kvmStats[id] = vcpu.statsReader();
      } catch {
        this.#kvmStats[id] = undefined; // stats are a report, never a reason not to run
      }
      setupVcpu(vcpu, {
        cpuid: buildCpuid(supported, { vcpuId: id, cpus: this.cpus, tscDeadlineTimer }),
        supportedMsrs: msrs,
        entry:
          id === 0
            ? {
                regs: bootRegs(this.layout.entry, this.layout.bootParams, Addr.BOOT_STACK),
                sregs: (s) =>
                  longModeSregs(s, { gdtAddress: Addr.GDT, idtAddress: Addr.IDT, cr3: Addr.PAGE_TABLES }),
              }
            : undefined,
      });
    }
    startupPhase("vcpus-created");
    this.#handlerData = {
      cpus: this.cpus,
      control: this.#control.buffer as SharedArrayBuffer,
      serial: { port: COM1.port, state: this.#serialState, irqFd: serialIrq.fd, txRing: this.#tx.buffer },
      i8042: { state: this.#i8042State, kbdIrqFd: kbdIrq.fd, auxIrqFd: auxIrq.fd },
      cmos: this.#cmosState,
      pci: {
        state: this.pci.state,
        devices: this.pci.devices.map(({ info, spec }) => ({
          info,
          handler: spec.handler
            ? { module: moduleHref(spec.handler.module), data: spec.handler.data }
            : undefined,
          ...(spec.configFromHandler !== undefined ? { configFromHandler: spec.configFromHandler } : {}),
        })),
      },
    };
  }

  /** Writes everything the kernel finds at boot: itself, boot_params, command line, initrd, tables. */
  #loadGuest(vm: Vm, supportedCpuid: readonly CpuidEntry[]): void {
    const mem = vm.memory;
    const memBytes = this.memMiB * MiB;
    mem.write(Addr.KERNEL, this.kernel.kernel);
    if (this.#initrd && this.layout.initrd) mem.write(this.layout.initrd.address, this.#initrd);
    mem.write(Addr.CMDLINE, this.#cmdlineBytes);
    const zp = buildBootParams({
      image: this.kernel,
      loadAddress: Addr.KERNEL,
      cmdlineAddress: Addr.CMDLINE,
      e820: buildE820(memBytes),
      initrd: this.layout.initrd,
    });
    mem.write(Addr.ZERO_PAGE, zp);
    mem.write(Addr.GDT, buildGdt());
    mem.write(Addr.PAGE_TABLES, buildIdentityPageTables(Addr.PAGE_TABLES).bytes);
    // The BIOS data area words the kernel reads to find and reserve the EBDA.
    mem.writeU16(Addr.BDA_EBDA_SEGMENT, Addr.EBDA >> 4);
    mem.writeU16(Addr.BDA_BASE_MEMORY_KB, Addr.LOW_RAM_END >> 10);
    const leaf1 = findCpuid(supportedCpuid, 1);
    const mp = buildMpTable({
      cpus: this.cpus,
      pciIrqs: this.pci.devices
        .filter((d) => d.info.gsi !== undefined)
        .map((d) => ({ slot: d.info.slot, pin: d.info.interruptPin, gsi: d.info.gsi! })),
      cpuSignature: leaf1?.eax,
      cpuFeatures: leaf1?.edx,
    });
    mem.write(mp.address, mp.bytes);
    this.layout.mpTable = mp.address;
  }

  async #startThreads(): Promise<void> {
    const vm = this.#vm!;
    const handlerModule = this.#handlerModule;
    const started = await Promise.allSettled(
      Array.from({ length: this.cpus }, (_, id) =>
        VcpuThread.start<VcpuHandlerData>({
          ...(this.#prepared[id] ? { prepared: this.#prepared[id] } : {}),
          vcpu: this.#vcpu(id),
          memory: vm.memory,
          handlerModule,
          data: this.#handlerData!,
          onMessage: (m) => this.#onMessage(m as WorkerMessage),
        }).then((t) => {
          // Known as soon as it runs, so that an emergency stop can kick it.
          this.#threads.push(t);
          return t;
        }),
      ),
    );
    const failed = started.find((s) => s.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
    for (const t of this.#threads) void t.exited.then((r) => this.#onThreadExit(r));
  }

  #vcpu(id: number): Vcpu {
    const v = this.#vcpus[id];
    if (!v) throw new Error(`vCPU ${id} was not created`);
    return v;
  }

  #onMessage(m: WorkerMessage): void {
    switch (m.type) {
      case "tx":
        // Drain now, but leave the flag set for a few ms so that a guest printing byte
        // by byte costs its vCPU one postMessage per batch, not per byte.
        this.#drainOutput();
        this.#txTimer ??= setTimeout(() => {
          this.#txTimer = undefined;
          Atomics.store(this.#control, Ctl.TX_NOTIFY, 0);
          this.#drainOutput();
        }, TX_BATCH_MS);
        break;
      case "rx":
        this.#pumpInput();
        break;
      case "unhandled":
        if (this.#unhandled.length < 64)
          this.#unhandled.push(`${m.space} ${m.direction} 0x${m.address.toString(16)}/${m.size}`);
        break;
    }
  }

  #drainOutput(): void {
    for (;;) {
      const bytes = this.#tx.pop();
      if (bytes.length === 0) return;
      if (!this.#firstOutput) {
        this.#firstOutput = true;
        startupPhase("first-console-output");
      }
      this.#watch.feed(bytes);
      this.console.output.push(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    }
  }

  #pumpInput(): void {
    if (this.#state === "ending" || this.#state === "ended") {
      for (const q of this.#input.splice(0)) q.done();
      return;
    }
    if (this.#state !== "running" || !this.#serial) return;
    while (this.#input.length) {
      const head = this.#input[0]!;
      const n = this.#serial.tryEnqueue(head.bytes);
      if (n === undefined) {
        this.#retryInput(1);
        return;
      }
      head.bytes = head.bytes.subarray(n);
      if (head.bytes.length > 0) {
        // The FIFO is full; a worker says "rx" when the guest empties it, the timer is a backstop.
        Atomics.store(this.#control, Ctl.INPUT_WAITING, 1);
        this.#retryInput(50);
        return;
      }
      this.#input.shift();
      head.done();
    }
    Atomics.store(this.#control, Ctl.INPUT_WAITING, 0);
  }

  #retryInput(ms: number): void {
    if (this.#inputTimer) return;
    this.#inputTimer = setTimeout(() => {
      this.#inputTimer = undefined;
      this.#pumpInput();
    }, ms);
  }

  /** Reads last round's answers, then kicks every vCPU so it answers again. */
  #probeHalt(): void {
    if (this.#state !== "running") return;
    const statuses = Array.from({ length: this.cpus }, (_, i) =>
      Atomics.load(this.#control, probeSlot(i, ProbeSlot.STATUS)),
    );
    // Halted for good means halted at the same place in consecutive rounds.
    const rips = Array.from({ length: this.cpus }, (_, i) =>
      [ProbeSlot.RIP_LO, ProbeSlot.RIP_HI].map((s) => Atomics.load(this.#control, probeSlot(i, s))).join(":"),
    ).join(",");
    if (allHalted(statuses)) this.#haltRounds = rips === this.#haltRips ? this.#haltRounds + 1 : 1;
    else this.#haltRounds = 0;
    this.#haltRips = rips;
    if (this.#haltRounds >= HALT_ROUNDS) {
      void this.#end("poweroff", "every vCPU halted with interrupts disabled");
      return;
    }
    for (let i = 0; i < this.cpus; i++)
      Atomics.store(this.#control, probeSlot(i, ProbeSlot.STATUS), HaltStatus.UNKNOWN);
    for (const t of this.#threads) t.kick();
  }

  #onThreadExit(r: VcpuThreadResult): void {
    this.#results[r.vcpuId] = r;
    if (r.reason === "handler")
      void this.#end(r.stop as MachineExitReason, typeof r.detail === "string" ? r.detail : undefined);
    else if (r.reason === "error") void this.#end("error", `vCPU ${r.vcpuId}: ${r.error}`);
  }

  /** Exits handled, and what the halt probe last saw of the vCPU (for a guest that hung). */
  #vcpuReport(r: VcpuThreadResult): MachineExit["vcpus"][number] {
    const c = this.#control;
    const state = haltStatusName(Atomics.load(c, probeSlot(r.vcpuId, ProbeSlot.LAST_STATUS)));
    const rip =
      (BigInt(Atomics.load(c, probeSlot(r.vcpuId, ProbeSlot.RIP_HI)) >>> 0) << 32n) |
      BigInt(Atomics.load(c, probeSlot(r.vcpuId, ProbeSlot.RIP_LO)) >>> 0);
    return state === undefined
      ? { id: r.vcpuId, exits: r.exits }
      : { id: r.vcpuId, exits: r.exits, state, ...(rip ? { rip: `0x${rip.toString(16)}` } : {}) };
  }

  /** Ends the run once, with the first reason that came in. */
  #end(reason: MachineExitReason, detail?: string): Promise<MachineExit> {
    if (this.#ending) return this.#ending;
    if (this.#state === "ended") return this.exited;
    this.#state = "ending";
    this.#ending = this.#teardown({ reason, detail });
    return this.#ending;
  }

  async #teardown(why: { reason: MachineExitReason; detail?: string | undefined }): Promise<MachineExit> {
    Atomics.store(this.#control, Ctl.ENDING, 1);
    if (this.#probeTimer) clearInterval(this.#probeTimer);
    if (this.#inputTimer) clearTimeout(this.#inputTimer);
    if (this.#txTimer) clearTimeout(this.#txTimer);
    for (const p of this.#prepared) void p.dispose(); // those never started
    // Parked vCPUs (a paused machine) unpark and end too.
    const results = await Promise.all(this.#threads.map((t) => t.stop()));
    process.off("exit", this.#onProcessExit);
    this.#endedAt = performance.now();
    if (this.#pausedAt !== undefined) this.#pausedMs += this.#endedAt - this.#pausedAt;
    this.#pausedAt = undefined;
    for (const r of this.#kvmStats) r?.close();
    for (const r of results) this.#results[r.vcpuId] ??= r;
    this.#drainOutput();
    this.#watch.flush();
    let { reason, detail } = why;
    // panic=1 reboots a panicked kernel: say it crashed, with its last words.
    if (reason === "reboot" && this.#watch.panicLine) {
      reason = "crash";
      detail = this.#watch.panicLine;
    }
    if (reason === "poweroff" && this.#watch.rebootLine)
      detail = `${this.#watch.rebootLine} (${detail ?? "halted"})`;
    // After Ctrl-Alt-Del a restart (reboot=k: the i8042 reset) is the guest's way of stopping.
    if (this.#powerOffRequested && reason === "reboot") {
      reason = "poweroff";
      detail = `stop requested: the guest restarted on Ctrl-Alt-Del${detail ? ` (${detail})` : ""}`;
    } else if (this.#powerOffRequested && reason === "poweroff")
      detail = `stop requested: the guest powered off on Ctrl-Alt-Del${detail ? ` (${detail})` : ""}`;
    // Held devices finish what they hold before they are detached (flushes, unlocks).
    if (this.#devicesPaused) {
      this.#devicesPaused = false;
      await settleAll(this.#deviceControls.map((c) => () => c.resume())).catch(() => {});
    }
    // Devices' I/O threads use guest RAM and the VM's eventfds: stop them first.
    for (const detach of this.#detach.reverse()) {
      try {
        await detach();
      } catch (e) {
        detail ??= `a device failed to stop: ${(e as Error).message}`;
      }
    }
    this.irq.attach(undefined);
    for (const e of this.#eventFds) e.close();
    this.#vm?.close();
    this.#kvm?.close();
    this.#state = "ended";
    this.#pumpInput();
    this.console.output.push(null);
    const exit: MachineExit = {
      reason,
      ...(detail !== undefined ? { detail } : {}),
      vcpus: this.#results.filter(Boolean).map((r) => this.#vcpuReport(r)),
      unhandledIo: [...this.#unhandled],
    };
    this.#resolveExit(exit);
    return exit;
  }
}

/** Runs every call, waits for all, then throws the first failure. */
async function settleAll(calls: readonly (() => Promise<unknown>)[]): Promise<void> {
  const results = await Promise.allSettled(calls.map((c) => Promise.resolve().then(c)));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
  if (failed) throw failed.reason;
}
