// Worker entry of a VcpuThread: builds the exit handler and runs the KVM_RUN loop here.
import { parentPort, workerData } from "node:worker_threads";
import { GuestMemory } from "./memory.js";
import { native } from "./native.js";
import { setCurrentThreadName } from "./thread.js";
import { Vcpu } from "./vcpu.js";
import {
  Control,
  EXIT_COUNTER_SLOTS,
  type ExitHandlerFactory,
  type PreparedVcpuWorkerData,
  ThreadState,
  type VcpuThreadResult,
  type VcpuWorkerContext,
  type VcpuWorkerData,
} from "./vcpu-thread.js";

const port = parentPort!;
const early = workerData as PreparedVcpuWorkerData;
// Started ahead of its vCPU (VcpuThread.prepare): load the handler module now, while the
// VMM builds the VM, then wait for the vCPU.
const loading = import(early.handlerModule).then(
  (m: { createExitHandler?: ExitHandlerFactory }) => m,
  (e: unknown) => ({ error: e }),
);
const wd: VcpuWorkerData =
  "vcpu" in early
    ? (early as VcpuWorkerData)
    : await new Promise((resolve) => port.once("message", (m: VcpuWorkerData) => resolve(m)));
const control = new Int32Array(wd.control);
const vcpu = Vcpu.fromDescriptor(wd.vcpu);
const memory = GuestMemory.fromDescriptor(wd.memory);
const stopRequested = () => Atomics.load(control, Control.STOP) !== 0;
const counters = new Float64Array(wd.exitCounters);
const pauseRequested = () => Atomics.load(control, Control.PAUSE) === 1 && !stopRequested();

/**
 * Waits outside KVM_RUN while paused. It says PARKED before waiting and RUNNING after, and
 * looks at the flag again after RUNNING: a pause that saw PARKED just as the loop left
 * finds it parked again before it re-enters KVM_RUN.
 */
function park(): void {
  while (pauseRequested()) {
    Atomics.store(control, Control.STATE, ThreadState.PARKED);
    while (pauseRequested()) Atomics.wait(control, Control.PAUSE, 1);
    Atomics.store(control, Control.STATE, ThreadState.RUNNING);
  }
}

native().installKickSignal();
Atomics.store(control, Control.TID, native().gettid());
// Named as kvmtool names its vCPU threads, so `top -H` and `perf` tell it from Node's others.
setCurrentThreadName(`kvm-vcpu-${vcpu.id}`);

let exits = 0;
let started = false;
let result: VcpuThreadResult;
try {
  const mod = await loading;
  if ("error" in mod) throw mod.error;
  if (typeof mod.createExitHandler !== "function")
    throw new Error(`${wd.handlerModule} does not export createExitHandler(ctx)`);
  const ctx: VcpuWorkerContext = {
    vcpu,
    memory,
    data: wd.data,
    post: (message) => port.postMessage({ type: "message", message }),
    stopRequested,
  };
  const handle = await mod.createExitHandler(ctx);
  Atomics.store(control, Control.STATE, ThreadState.RUNNING);
  port.postMessage({ type: "ready" });
  started = true;
  result = { vcpuId: vcpu.id, reason: "stopped", exits: 0 };
  for (;;) {
    if (pauseRequested()) park();
    if (stopRequested()) break;
    const exit = vcpu.run();
    exits++;
    // Plain increments: this thread is the only writer, a reader may see a value one behind.
    const slot = EXIT_COUNTER_SLOTS[exit.reason];
    counters[slot] = counters[slot]! + 1;
    if (exit.reason === "interrupted") {
      // Clear before looking at the stop flag so a kick that lands now is not lost.
      vcpu.immediateExit = false;
      if (stopRequested()) break;
    }
    const action = handle(exit);
    if (action && action !== "continue") {
      result = { vcpuId: vcpu.id, reason: "handler", stop: action.stop, detail: action.detail, exits };
      break;
    }
  }
  if (result.reason === "stopped") result = { ...result, exits };
} catch (e) {
  const error = e instanceof Error ? (e.stack ?? e.message) : String(e);
  result = { vcpuId: vcpu.id, reason: "error", error, exits };
  if (!started) port.postMessage({ type: "failed", error });
}
Atomics.store(control, Control.STATE, ThreadState.EXITED);
port.postMessage({ type: "result", result });
