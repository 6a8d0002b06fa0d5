// Loaded into `tskvm run` with `node --import` by the boot bench: prints when Node was
// ready and each step of the machine's start (machine-x86's startup diagnostics channel)
// as `@@BOOT {"phase","at"}` lines on stderr, `at` in ms since the process started.
import { subscribe } from "node:diagnostics_channel";
import { performance } from "node:perf_hooks";
import { isMainThread } from "node:worker_threads";

const print = (phase, at) => process.stderr.write(`@@BOOT ${JSON.stringify({ phase, at })}\n`);
// `--import` runs in every worker thread too (each vCPU, each device): the main thread's only.
if (isMainThread) {
  print("node-bootstrapped", performance.nodeTiming.bootstrapComplete);
  print("preload", performance.now());
  subscribe("tskvm:machine:startup", (e) => print(e.phase, e.at));
}
