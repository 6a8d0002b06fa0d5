// kvm-core benchmark: VM exits handled in a vCPU worker, and the
// ioeventfd → I/O worker → irqfd round trip, beside the same guest code run by a
// tiny C program built here. Needs /dev/kvm (on a host without it, run it in the
// sandbox: see the README). Prints a table; exit code 0.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { EventFd, Kvm, probeAcceleration, VcpuThread } from "../dist/index.js";
import { enterRealMode, notifyRoundTripGuest, outLoopGuest } from "../test/fixtures/guests.mjs";

const quick = process.argv.includes("--quick");
const probe = probeAcceleration();
if (probe.kvm !== "present") {
  console.error(`kvm-core bench needs /dev/kvm: ${probe.summary}`);
  process.exit(1);
}
// Emulating backends are slow: scale the work so each run takes about a second.
const fast = probe.hardwareSpeed;
const EXITS = quick ? 20_000 : fast ? 500_000 : 100_000;
const ROUNDS = quick ? 2_000 : fast ? 50_000 : 20_000;
const REPEAT = 3;

const dir = mkdtempSync(join(tmpdir(), "kvm-bench-"));
const cBin = join(dir, "kvm_bench");
execFileSync("cc", ["-O2", "-pthread", "-o", cBin, new URL("./kvm_bench.c", import.meta.url).pathname]);

function runC(mode, code) {
  const file = join(dir, `${mode}.bin`);
  writeFileSync(file, code);
  const out = execFileSync(cBin, [mode, file], { encoding: "utf8" }).trim().split(" ").map(Number);
  return mode === "exits" ? { exits: out[0], ms: out[1] / 1e6 } : { ms: out[0] / 1e6 };
}

async function runTs(mode, code) {
  const kvm = Kvm.open();
  const vm = kvm.createVm();
  const workers = [];
  try {
    if (mode === "roundtrip") vm.createIrqchip();
    vm.addMemory({ guestAddress: 0, size: 0x10000 });
    vm.memory.write(0x1000, code);
    let notify;
    let irq;
    const control = new SharedArrayBuffer(4);
    if (mode === "roundtrip") {
      notify = EventFd.create();
      irq = EventFd.create();
      vm.registerIoeventfd(notify, { space: "pio", address: 0x40, length: 1 });
      vm.registerIrqfd(irq, 5);
      const w = new Worker(new URL("../test/fixtures/eventfd-worker.mjs", import.meta.url), {
        workerData: { fd: notify.fd, irqFd: irq.fd, control },
      });
      await new Promise((r) => w.once("message", r));
      workers.push(w);
    }
    const vcpu = vm.createVcpu(0);
    enterRealMode(vcpu, 0x1000);
    const t = await VcpuThread.start({
      vcpu,
      memory: vm.memory,
      handlerModule: new URL("./bench-handlers.mjs", import.meta.url),
      data: { mode },
    });
    const r = await t.exited;
    if (r.reason !== "handler" || r.stop !== "done")
      throw new Error(`bench guest ended with ${JSON.stringify(r)}`);
    if (notify) {
      Atomics.store(new Int32Array(control), 0, 1);
      notify.write(1);
      await Promise.all(workers.map((w) => new Promise((res) => w.once("exit", res))));
      notify.close();
      irq.close();
    }
    return r.detail;
  } finally {
    vm.close();
    kvm.close();
  }
}

const best = async (fn) => {
  let b;
  for (let i = 0; i < REPEAT; i++) {
    const r = await fn();
    if (!b || r.ms < b.ms) b = r;
  }
  return b;
};

const exitsCode = outLoopGuest(0x10, EXITS);
const rtCode = notifyRoundTripGuest(0x40, ROUNDS);
const tsExits = await best(() => runTs("exits", exitsCode));
const cExits = await best(() => Promise.resolve(runC("exits", exitsCode)));
const tsRt = await best(() => runTs("roundtrip", rtCode));
const cRt = await best(() => Promise.resolve(runC("roundtrip", rtCode)));
rmSync(dir, { recursive: true, force: true });

const rate = (r) => r.exits / (r.ms / 1000);
const rows = [
  ["port-I/O exits/s (in-worker handler)", rate(tsExits), rate(cExits), "higher is better"],
  [
    "ioeventfd→worker→irqfd round trip µs",
    (tsRt.ms * 1000) / ROUNDS,
    (cRt.ms * 1000) / ROUNDS,
    "lower is better",
  ],
];
console.log(`\nkvm-core bench — ${probe.summary}`);
console.log(`node ${process.version}, best of ${REPEAT}, ${EXITS} exits, ${ROUNDS} round trips\n`);
const fmt = (v) => (v >= 1000 ? Math.round(v).toLocaleString("en-US") : v.toFixed(1));
console.log(`| metric | tskvm (TS) | C (raw ioctls) | TS / C | |`);
console.log(`|---|---:|---:|---:|---|`);
for (const [name, ts, c, note] of rows)
  console.log(`| ${name} | ${fmt(ts)} | ${fmt(c)} | ${(ts / c).toFixed(2)} | ${note} |`);
