import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { Worker } from "node:worker_threads";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestMemory, mockSplitQueue, Queue, type QueueState } from "../src/index.js";

// The worker runs plain JS, so compile the package to a temporary directory first
// (independent of dist/, so the test needs no prior build).
let out = "";
beforeAll(() => {
  out = mkdtempSync(join(tmpdir(), "virtio-worker-"));
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  const flags = [
    "--outDir",
    out,
    "--declaration",
    "false",
    "--declarationMap",
    "false",
    "--sourceMap",
    "false",
  ];
  execFileSync(process.execPath, [tsc, "-p", "tsconfig.json", ...flags], {
    cwd: fileURLToPath(new URL("..", import.meta.url)),
  });
}, 60_000);
afterAll(() => {
  if (out) rmSync(out, { recursive: true, force: true });
});

describe("a queue rebuilt in a worker from plain data", () => {
  it("serves requests the main thread keeps submitting, over shared memory", async () => {
    const memory = createTestMemory(0x400000, 0, { shared: true });
    const m = mockSplitQueue(memory, { size: 64, heap: { address: 0x1000, size: 0x3f0000 }, eventIdx: true });
    const device = new Queue(memory, m.config);
    const isr = new SharedArrayBuffer(4);
    const count = 3000;
    const worker = new Worker(new URL("./fixtures/queue-worker.mjs", import.meta.url), {
      workerData: {
        lib: pathToFileURL(join(out, "index.js")).href,
        memory: memory.describe(),
        state: device.state(),
        count,
        isr,
      },
    });
    const done = new Promise<{ served: number; interrupts: number; state: QueueState }>((resolve, reject) => {
      worker.once("message", resolve);
      worker.once("error", reject);
    });
    const q = m.driver;
    let sent = 0;
    let received = 0;
    while (sent < count) {
      const batch = Math.min(1 + (sent % 13), count - sent, q.freeDescriptors);
      for (let i = 0; i < batch; i++) {
        const n = sent + i;
        q.submit({ readable: [Uint8Array.of(n & 0xff, n >> 8)], writable: [2], indirect: n % 3 === 0 });
      }
      sent += batch;
      const used = await q.waitUsed(batch, 10_000);
      for (const u of used) {
        expect(u.len).toBe(2);
        const n = received++;
        expect(Array.from(u.written)).toEqual([n >> 8, n & 0xff]);
      }
    }
    const result = await done;
    await worker.terminate();
    expect(result.served).toBe(count);
    expect(result.interrupts).toBeGreaterThan(0);
    expect(Atomics.load(new Int32Array(isr), 0)).toBe(1);
    // The worker's final state continues where the main thread's queue would.
    expect(result.state).toMatchObject({
      nextAvail: count & 0xffff,
      nextUsed: count & 0xffff,
      size: 64,
      eventIdx: true,
    });
    expect(q.inFlight).toBe(0);
  }, 60_000);
});
