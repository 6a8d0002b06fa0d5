// DeviceChannel: synchronous register accesses from several threads to the one
// thread that owns a device. Needs no /dev/kvm (eventfds and shared memory only).
import { Worker } from "node:worker_threads";
import { describe, expect, it } from "vitest";
import { DeviceChannel, KvmError } from "../dist/index.js";

const once = (w: Worker, ev: string) => new Promise<unknown>((r) => w.once(ev, r));

describe("DeviceChannel", () => {
  it("serves reads and writes from three client threads and the main thread, each seeing its own register", async () => {
    const ch = DeviceChannel.create();
    const owner = new Worker(new URL("./fixtures/channel-owner.mjs", import.meta.url), {
      workerData: { channel: ch.describe() },
    });
    await once(owner, "message");
    const clients = [1, 2, 3].map(
      (reg) =>
        new Worker(new URL("./fixtures/channel-client.mjs", import.meta.url), {
          workerData: { channel: ch.describe(), reg, count: 300 },
        }),
    );
    // The main thread is a client too (Atomics.wait is allowed in Node's main thread).
    const d = new Uint8Array(8);
    new DataView(d.buffer).setBigUint64(0, 41n, true);
    ch.call({ write: true, space: 0, offset: 0, data: d });
    ch.call({ write: false, space: 0, offset: 0, data: d });
    expect(new DataView(d.buffer).getBigUint64(0, true)).toBe(42n);
    const results = (await Promise.all(clients.map((c) => once(c, "message")))) as { bad: number }[];
    expect(results).toEqual([{ bad: 0 }, { bad: 0 }, { bad: 0 }]);
    // An access the owner's handler rejects fails that call only.
    expect(() => ch.call({ write: false, space: 9, offset: 0, data: new Uint8Array(4) })).toThrow(KvmError);
    expect(() => ch.call({ write: false, space: 0, offset: 0, data: new Uint8Array(0) })).toThrow(/1-8/);
    ch.call({ write: true, space: 0, offset: 56, data: Uint8Array.of(0xff, 0, 0, 0) });
    await once(owner, "exit");
    // Nobody serves now: the caller gets an error after its timeout instead of hanging.
    expect(() => ch.call({ write: false, space: 0, offset: 0, data: new Uint8Array(4) }, 200)).toThrow(
      /did not answer/,
    );
    ch.close();
  });
});
