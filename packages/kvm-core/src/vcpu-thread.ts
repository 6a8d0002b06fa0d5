import { Worker } from "node:worker_threads";
import { sys } from "./errors.js";
import type { GuestMemory, GuestMemoryDescriptor } from "./memory.js";
import { native } from "./native.js";
import type { Vcpu, VcpuDescriptor, VcpuExit } from "./vcpu.js";

/** What an exit handler tells the loop: keep running (nothing, or "continue"), or stop with a reason. */
export type ExitAction = undefined | "continue" | { stop: string; detail?: unknown };

/** Handles one exit, synchronously, inside the vCPU's worker. */
export type ExitHandler = (exit: VcpuExit) => ExitAction | undefined;

/** What a handler module's `createExitHandler` receives, in the worker. */
export interface VcpuWorkerContext<D = unknown> {
  vcpu: Vcpu;
  memory: GuestMemory;
  /** The `data` given to {@link VcpuThread.start} (structured-cloned). */
  data: D;
  /** Sends a message to the thread that started the vCPU ({@link VcpuThreadOptions.onMessage}). */
  post(message: unknown): void;
  /** True once {@link VcpuThread.stop} was called. */
  stopRequested(): boolean;
}

/**
 * The shape of a handler module: `export function createExitHandler(ctx)`.
 * It runs in the worker, so it must be a JavaScript module the worker can import.
 */
export type ExitHandlerFactory<D = unknown> = (
  ctx: VcpuWorkerContext<D>,
) => ExitHandler | Promise<ExitHandler>;

export interface VcpuThreadOptions<D = unknown> {
  vcpu: Vcpu;
  memory: GuestMemory;
  /** URL or absolute path of the handler module. */
  handlerModule: string | URL;
  data?: D;
  /** Messages the handler posts with `ctx.post`. */
  onMessage?: (message: unknown) => void;
  /** A worker started ahead with {@link VcpuThread.prepare} for the same handler module. */
  prepared?: PreparedVcpuThread;
}

/** Why a vCPU thread ended. */
export type VcpuThreadResult =
  | { vcpuId: number; reason: "stopped"; exits: number }
  | { vcpuId: number; reason: "handler"; stop: string; detail?: unknown; exits: number }
  | { vcpuId: number; reason: "error"; error: string; exits: number };

/** Layout of the control block shared with the worker (Int32 slots). */
export const Control = { TID: 0, STOP: 1, STATE: 2, PAUSE: 3 } as const;
/** PARKED: the loop waits outside KVM_RUN until resumed ({@link VcpuThread.pause}). */
export const ThreadState = { STARTING: 0, RUNNING: 1, EXITED: 2, PARKED: 3 } as const;

/**
 * The exit counters each worker keeps, one slot per reason, named as KVM_EXIT_* in lower
 * case. "intr" counts both KVM_EXIT_INTR and a KVM_RUN that a kick or signal interrupted.
 */
export const EXIT_COUNTER_NAMES: Readonly<Record<VcpuExit["reason"], string>> = {
  io: "io",
  mmio: "mmio",
  hlt: "hlt",
  shutdown: "shutdown",
  failEntry: "fail_entry",
  internalError: "internal_error",
  systemEvent: "system_event",
  interrupted: "intr",
  irqWindowOpen: "irq_window_open",
  debug: "debug",
  other: "other",
};

/** Slot of each exit reason in the counter block. */
export const EXIT_COUNTER_SLOTS = Object.fromEntries(
  Object.keys(EXIT_COUNTER_NAMES).map((r, i) => [r, i]),
) as Readonly<Record<VcpuExit["reason"], number>>;

/** Data a worker started by {@link VcpuThread.prepare} begins with; the rest comes in a message. */
export interface PreparedVcpuWorkerData {
  handlerModule: string;
}

/** Data the worker is started with. */
export interface VcpuWorkerData {
  vcpu: VcpuDescriptor;
  memory: GuestMemoryDescriptor;
  handlerModule: string;
  data: unknown;
  control: SharedArrayBuffer;
  /** Float64 exit counters, {@link EXIT_COUNTER_SLOTS}; written by the worker only. */
  exitCounters: SharedArrayBuffer;
}

/**
 * A vCPU running its KVM_RUN loop in a worker of its own, with the exit handlers
 * in that worker (forwarding exits to the main thread costs ~7×). Any thread can
 * {@link kick} it out of KVM_RUN; {@link stop} ends the loop promptly even when the
 * guest never exits on its own.
 */
export class VcpuThread {
  readonly vcpu: Vcpu;
  readonly worker: Worker;
  readonly exited: Promise<VcpuThreadResult>;
  readonly #control: Int32Array;
  readonly #counters: Float64Array;

  private constructor(
    vcpu: Vcpu,
    worker: Worker,
    control: Int32Array,
    counters: Float64Array,
    exited: Promise<VcpuThreadResult>,
  ) {
    this.vcpu = vcpu;
    this.worker = worker;
    this.#control = control;
    this.#counters = counters;
    this.exited = exited;
  }

  /**
   * Starts the vCPU's worker (or takes `options.prepared`); resolves once the handler is
   * built and the loop is about to run.
   */
  static async start<D>(options: VcpuThreadOptions<D>): Promise<VcpuThread> {
    const prepared = options.prepared ?? VcpuThread.prepare(options.handlerModule);
    const worker = prepared.take(options.handlerModule);
    const control = new Int32Array(new SharedArrayBuffer(16));
    const counters = new Float64Array(
      new SharedArrayBuffer(Object.keys(EXIT_COUNTER_NAMES).length * Float64Array.BYTES_PER_ELEMENT),
    );
    const workerData: VcpuWorkerData = {
      vcpu: options.vcpu.describe(),
      memory: options.memory.describe(),
      handlerModule: prepared.handlerModule,
      data: options.data,
      control: control.buffer as SharedArrayBuffer,
      exitCounters: counters.buffer as SharedArrayBuffer,
    };
    worker.ref();
    worker.postMessage(workerData);
    let ready!: () => void;
    let failed!: (e: Error) => void;
    const started = new Promise<void>((res, rej) => {
      ready = res;
      failed = rej;
    });
    const exited = new Promise<VcpuThreadResult>((resolve) => {
      let result: VcpuThreadResult | undefined;
      worker.on(
        "message",
        (m: { type: string; result?: VcpuThreadResult; message?: unknown; error?: string }) => {
          if (m.type === "ready") ready();
          else if (m.type === "failed")
            failed(new Error(`vCPU ${options.vcpu.id} handler failed to start: ${m.error}`));
          else if (m.type === "result") result = m.result;
          else if (m.type === "message") options.onMessage?.(m.message);
        },
      );
      worker.on("error", (e) => {
        result ??= { vcpuId: options.vcpu.id, reason: "error", error: e.message, exits: 0 };
        failed(e);
      });
      worker.on("exit", () => {
        failed(new Error(`vCPU ${options.vcpu.id} worker exited before it started`));
        resolve(
          result ?? {
            vcpuId: options.vcpu.id,
            reason: "error",
            error: "worker exited without a result",
            exits: 0,
          },
        );
      });
    });
    await started;
    return new VcpuThread(options.vcpu, worker, control, counters, exited);
  }

  /**
   * Starts a vCPU worker ahead of its vCPU: the thread boots and loads `handlerModule`
   * while the caller builds the VM (both take a while: a worker is a new isolate). It
   * does not keep the process alive until started: pass it to {@link start} as
   * `prepared` (same handler module), or {@link PreparedVcpuThread.dispose} it.
   */
  static prepare(handlerModule: string | URL): PreparedVcpuThread {
    const href = moduleHref(handlerModule);
    const workerData: PreparedVcpuWorkerData = { handlerModule: href };
    const worker = new Worker(new URL("./vcpu-worker.js", import.meta.url), { workerData });
    worker.unref();
    return new PreparedVcpuThread(worker, href);
  }

  /** Makes KVM_RUN return `interrupted` soon: sets immediate_exit, then signals the thread. */
  kick(): void {
    this.vcpu.immediateExit = true;
    const tid = Atomics.load(this.#control, Control.TID);
    if (tid > 0 && Atomics.load(this.#control, Control.STATE) !== ThreadState.EXITED) {
      try {
        sys("tgkill", () => native().kickThread(tid));
      } catch {
        // The thread ended between the check and the signal: nothing left to kick.
      }
    }
  }

  /**
   * True once the worker's KVM_RUN loop has ended; readable synchronously (e.g. in a
   * process `exit` handler, where Node is about to terminate workers: one still inside
   * KVM_RUN would never come back, or fail there).
   */
  get loopEnded(): boolean {
    return Atomics.load(this.#control, Control.STATE) === ThreadState.EXITED;
  }

  /** Asks the loop to end (a parked one too), kicks the vCPU and waits for the worker to exit. */
  async stop(): Promise<VcpuThreadResult> {
    Atomics.store(this.#control, Control.STOP, 1);
    this.#unpark();
    this.kick();
    return this.exited;
  }

  /**
   * Takes the vCPU out of KVM_RUN and parks its loop (an Atomics.wait outside KVM_RUN, the
   * exit handler not running) until {@link resume}; resolves once it is parked, or has ended.
   * Pausing a parked thread resolves at once.
   */
  async pause(): Promise<void> {
    Atomics.store(this.#control, Control.PAUSE, 1);
    this.kick();
    // Polled: a pause is rare and a parked loop answers within a KVM_RUN exit.
    for (let wait = 0; ; wait = Math.min(wait + 1, 10)) {
      const state = Atomics.load(this.#control, Control.STATE);
      if (state === ThreadState.PARKED || state === ThreadState.EXITED) return;
      await new Promise((r) => setTimeout(r, wait));
    }
  }

  /** Lets a paused loop run the vCPU again (nothing if it was not paused). */
  resume(): void {
    this.#unpark();
  }

  #unpark(): void {
    Atomics.store(this.#control, Control.PAUSE, 0);
    Atomics.notify(this.#control, Control.PAUSE);
  }

  /** True while the loop is parked by {@link pause}. */
  get parked(): boolean {
    return Atomics.load(this.#control, Control.STATE) === ThreadState.PARKED;
  }

  /** Exits so far by reason ({@link EXIT_COUNTER_NAMES}; reasons never seen are left out). Cheap. */
  exitCounts(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [reason, slot] of Object.entries(EXIT_COUNTER_SLOTS)) {
      const n = this.#counters[slot]!;
      if (n > 0) out[EXIT_COUNTER_NAMES[reason as VcpuExit["reason"]]] = n;
    }
    return out;
  }
}

/** A vCPU worker booting ahead of its vCPU (see {@link VcpuThread.prepare}). */
export class PreparedVcpuThread {
  readonly handlerModule: string;
  readonly #worker: Worker;
  #taken = false;
  #exited = false;

  constructor(worker: Worker, handlerModule: string) {
    this.#worker = worker;
    this.handlerModule = handlerModule;
    worker.once("exit", () => {
      this.#exited = true;
    });
  }

  /** @internal The worker, for {@link VcpuThread.start}: once, for the module it loaded, while it runs. */
  take(handlerModule: string | URL): Worker {
    const href = moduleHref(handlerModule);
    if (this.#taken) throw new Error("this prepared vCPU thread was already started or disposed");
    if (href !== this.handlerModule)
      throw new Error(`the vCPU worker was prepared for ${this.handlerModule}, not ${href}`);
    if (this.#exited) throw new Error("the prepared vCPU worker exited before it was started");
    this.#taken = true;
    return this.#worker;
  }

  /** Ends the worker without running a vCPU (e.g. the VM failed to build). */
  async dispose(): Promise<void> {
    if (this.#taken) return;
    this.#taken = true;
    await this.#worker.terminate();
  }
}

function moduleHref(m: string | URL): string {
  return m instanceof URL ? m.href : new URL(m, "file:///").href;
}
