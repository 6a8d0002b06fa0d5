import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { Worker } from "node:worker_threads";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestMemory, Queue, type QueueState } from "../src/index.js";
import { mockSplitQueue } from "../src/testing.js";

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

// A smoke test with real threads: the window between the device's last look and its enable is
// a few instructions wide, so this rarely meets the race itself (notify.test.ts stages it).
describe("a device woken only by kicks, the driver on another thread", () => {
  it.each([false, true])(
    "serves every request and never sleeps with one in the ring (EVENT_IDX %s)",
    async (eventIdx) => {
      const memory = createTestMemory(0x400000, 0, { shared: true });
      const m = mockSplitQueue(memory, { size: 64, heap: { address: 0x1000, size: 0x3f0000 }, eventIdx });
      const device = new Queue(memory, m.config);
      const kick = new SharedArrayBuffer(4);
      const kicks = new Int32Array(kick);
      const fence = new Int32Array(new SharedArrayBuffer(4));
      const count = 4000;
      const worker = new Worker(new URL("./fixtures/kick-worker.mjs", import.meta.url), {
        workerData: {
          lib: pathToFileURL(join(out, "index.js")).href,
          memory: memory.describe(),
          state: device.state(),
          count,
          kick,
        },
      });
      const done = new Promise<{ served: number; sleeps: number; lost: number }>((resolve, reject) => {
        worker.once("message", resolve);
        worker.once("error", reject);
      });
      const q = m.driver;
      let sent = 0;
      let received = 0;
      let kicked = 0;
      const deadline = Date.now() + 30_000;
      // Keep requests in flight while the device works, so adds race with its drain-and-sleep.
      while (received < count && Date.now() < deadline) {
        const batch = Math.min(1 + ((sent * 7) % 5), count - sent, q.freeDescriptors >> 1);
        if (batch > 0) {
          for (let i = 0; i < batch; i++)
            q.submit({
              readable: [Uint8Array.of((sent + i) & 0xff, ((sent + i) >> 8) & 0xff)],
              writable: [2],
            });
          sent += batch;
          Atomics.add(fence, 0, 0); // the driver's virtio_mb() between avail.idx and reading the device's wish
          if (q.kickIfNeeded()) {
            kicked++;
            Atomics.add(kicks, 0, 1);
            Atomics.notify(kicks, 0);
          }
        }
        const used = q.pollUsed();
        received += used.length;
        for (const u of used) expect(u.len).toBe(2);
        if (used.length === 0) await new Promise((r) => setImmediate(r));
      }
      const result = await done;
      await worker.terminate();
      expect(result.lost).toBe(-1);
      expect(result.served).toBe(count);
      expect(received).toBe(count);
      // Suppression did its job: fewer kicks than batches, and the device did sleep in between.
      expect(kicked).toBeGreaterThan(0);
      expect(result.sleeps).toBeGreaterThan(0);
      console.log(
        `[kick-driven ${eventIdx ? "event-idx" : "flags"}] ${count} requests, ${kicked} kicks, ${result.sleeps} sleeps`,
      );
    },
    60_000,
  );
});
