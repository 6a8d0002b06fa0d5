import { Worker } from "node:worker_threads";
import { describe, expect, it } from "vitest";
import { ByteRing, SharedMutex } from "../src/index.js";

const distShared = new URL("../dist/devices/shared.js", import.meta.url).href;

describe("SharedMutex", () => {
  it("serialises read-modify-write across threads", async () => {
    const sab = new SharedArrayBuffer(8);
    const n = 20_000;
    const code = `
      import { workerData } from "node:worker_threads";
      const { SharedMutex } = await import(${JSON.stringify(distShared)});
      const a = new Int32Array(workerData.sab);
      const m = new SharedMutex(a, 0);
      for (let i = 0; i < ${n}; i++) {
        m.lock();
        const v = a[1]; // a plain, non-atomic read-modify-write
        a[1] = v + 1;
        m.unlock();
      }
    `;
    const workers = [0, 1, 2].map(
      () => new Worker(new URL(`data:text/javascript,${encodeURIComponent(code)}`), { workerData: { sab } }),
    );
    const m = new SharedMutex(new Int32Array(sab), 0);
    for (let i = 0; i < n; i++) m.with(() => (new Int32Array(sab)[1] = new Int32Array(sab)[1]! + 1));
    await Promise.all(workers.map((w) => new Promise((r) => w.on("exit", r))));
    expect(new Int32Array(sab)[1]).toBe(4 * n);
  });

  it("tryLock fails while held", () => {
    const m = new SharedMutex(new Int32Array(new SharedArrayBuffer(4)), 0);
    expect(m.tryLock()).toBe(true);
    expect(m.tryLock()).toBe(false);
    m.unlock();
    expect(m.tryLock()).toBe(true);
  });
});

describe("ByteRing", () => {
  it("wraps, fills and empties", () => {
    const r = ByteRing.create(8);
    expect(r.push([1, 2, 3, 4, 5, 6])).toBe(6);
    expect(Array.from(r.pop(4))).toEqual([1, 2, 3, 4]);
    expect(r.push([7, 8, 9, 10, 11])).toBe(5);
    expect(r.free).toBe(1);
    expect(r.push([12, 13])).toBe(1);
    expect(Array.from(r.pop())).toEqual([5, 6, 7, 8, 9, 10, 11, 12]);
    expect(r.popByte()).toBeUndefined();
    expect(() => ByteRing.create(6)).toThrow(/power of two/);
  });

  it("is shared through its buffer", () => {
    const a = ByteRing.create(16);
    const b = new ByteRing(a.buffer);
    a.push(Buffer.from("xy"));
    expect(Buffer.from(b.pop()).toString()).toBe("xy");
    expect(a.length).toBe(0);
  });
});
