// EventFd's allocation-free calls (consume, write) and PollSet, a device loop's wait.
import { Worker } from "node:worker_threads";
import { describe, expect, it } from "vitest";
import { EventFd, KvmError, PollSet } from "../dist/index.js";

describe("EventFd.consume", () => {
  it("reads and resets the counter: true when it was non-zero, false when zero (non-blocking)", () => {
    const e = EventFd.create({ nonBlocking: true });
    try {
      expect(e.consume()).toBe(false);
      e.write(3);
      e.write(2n);
      expect(e.consume()).toBe(true);
      expect(e.consume()).toBe(false);
      expect(e.read()).toBeNull();
    } finally {
      e.close();
    }
  });

  it("a blocking eventfd with a count is consumed without waiting", () => {
    const e = EventFd.create({ initial: 1 });
    try {
      expect(e.consume()).toBe(true);
    } finally {
      e.close();
    }
  });

  it("after close: a KvmError, no read of a reused descriptor", () => {
    const e = EventFd.create({ nonBlocking: true });
    e.close();
    expect(() => e.consume()).toThrow(KvmError);
    expect(() => e.write(1)).toThrow(/used after close/);
  });

  it("a descriptor that is not an eventfd: the read's errno as a KvmError", () => {
    // fd 0 of a test worker is not readable as an eventfd counter without blocking; use a
    // closed-looking high descriptor instead: EBADF.
    const e = EventFd.fromFd(1_000_000, true);
    const err = (() => {
      try {
        e.consume();
      } catch (x) {
        return x;
      }
    })();
    expect(err).toBeInstanceOf(KvmError);
    expect((err as KvmError).code).toBe("EBADF");
    expect((err as KvmError).operation).toBe("eventfd read");
  });
});

describe("PollSet", () => {
  it("an empty set: a look finds nothing, and no index is readable", () => {
    const p = new PollSet();
    expect(p.length).toBe(0);
    expect(p.wait(0)).toBe(0);
    expect(p.readable(0)).toBe(false);
    expect(p.readable(-1)).toBe(false);
  });

  it("says which descriptors are readable, wait after wait, with nothing left over from the last", () => {
    const a = EventFd.create({ nonBlocking: true });
    const b = EventFd.create({ nonBlocking: true });
    const c = EventFd.create({ nonBlocking: true });
    try {
      const p = new PollSet([a.fd, b.fd, c.fd]);
      expect(p.length).toBe(3);
      expect(p.fd(1)).toBe(b.fd);
      expect(p.wait(0)).toBe(0);
      b.write(1);
      c.write(1);
      expect(p.wait(0)).toBe(2);
      expect([p.readable(0), p.readable(1), p.readable(2), p.readable(3)]).toEqual([
        false,
        true,
        true,
        false,
      ]);
      expect(b.consume()).toBe(true);
      expect(p.wait(0)).toBe(1);
      expect([p.readable(0), p.readable(1), p.readable(2)]).toEqual([false, false, true]);
      c.consume();
      // A timed wait with nothing readable returns after its timeout.
      const t0 = performance.now();
      expect(p.wait(20)).toBe(0);
      expect(performance.now() - t0).toBeGreaterThanOrEqual(15);
      expect(p.readable(2)).toBe(false);
    } finally {
      for (const e of [a, b, c]) e.close();
    }
  });

  it("setFds changes the set (readability cleared); matches compares it", () => {
    const a = EventFd.create({ nonBlocking: true, initial: 1 });
    const b = EventFd.create({ nonBlocking: true });
    try {
      const p = new PollSet([a.fd]);
      expect(p.wait(0)).toBe(1);
      expect(p.matches([a.fd])).toBe(true);
      expect(p.matches([b.fd])).toBe(false);
      expect(p.matches([a.fd, b.fd])).toBe(false);
      p.setFds([b.fd, a.fd]);
      expect(p.readable(0)).toBe(false);
      expect(p.readable(1)).toBe(false);
      expect(p.matches([b.fd, a.fd])).toBe(true);
      expect(p.wait(0)).toBe(1);
      expect(p.readable(1)).toBe(true);
      // Same count, other fds: the same buffers, new contents.
      p.setFds([a.fd, b.fd]);
      expect(p.wait(0)).toBe(1);
      expect(p.readable(0)).toBe(true);
      p.setFds([]);
      expect(p.wait(0)).toBe(0);
    } finally {
      a.close();
      b.close();
    }
  });

  it("refuses descriptors that cannot be ones (negative, fractional, NaN, 2^53, 2^64−1), and indexes outside the set", () => {
    for (const fd of [-1, 1.5, Number.NaN, 2 ** 53, 2 ** 64 - 1])
      expect(() => new PollSet([fd]), String(fd)).toThrow(/bad descriptor/);
    const p = new PollSet([0]);
    expect(() => p.fd(1)).toThrow(/no descriptor at index 1/);
    expect(() => p.fd(-1)).toThrow(KvmError);
  });

  it("a closed descriptor in the set is reported readable (POLLNVAL), not a hang", () => {
    const a = EventFd.create({ nonBlocking: true });
    const fd = a.fd;
    a.close();
    const p = new PollSet([fd]);
    // The number may have been reused by now; either way the wait returns at once.
    expect(p.wait(0)).toBeGreaterThanOrEqual(0);
  });

  it("a signal that interrupts a wait (EINTR) counts as nothing readable yet", async () => {
    const e = EventFd.create({ nonBlocking: true });
    const index = new URL("../dist/index.js", import.meta.url).href;
    const nativeModule = new URL("../dist/native.js", import.meta.url).href;
    const w = new Worker(
      `const { parentPort, workerData } = require("node:worker_threads");
       Promise.all([import(${JSON.stringify(index)}), import(${JSON.stringify(nativeModule)})]).then(([m, n]) => {
         n.native().installKickSignal();
         const p = new m.PollSet([workerData.fd]);
         parentPort.postMessage(m.currentThreadId());
         const t0 = performance.now();
         const ready = p.wait(10_000);
         parentPort.postMessage({ ready, readable: p.readable(0), ms: performance.now() - t0 });
       });`,
      { eval: true, workerData: { fd: e.fd } },
    );
    try {
      const messages: unknown[] = [];
      const next = () =>
        new Promise<unknown>((resolve, reject) => {
          if (messages.length) return resolve(messages.shift());
          w.once("message", resolve);
          w.once("error", reject);
        });
      const tid = (await next()) as number;
      const { native } = (await import(nativeModule)) as { native: () => { kickThread(tid: number): void } };
      // Kick until the wait returns (the first signal may come before the worker is in poll).
      let result: { ready: number; readable: boolean; ms: number } | undefined;
      const answer = next().then((r) => {
        result = r as typeof result;
      });
      for (let i = 0; i < 200 && !result; i++) {
        native().kickThread(tid);
        await new Promise((r) => setTimeout(r, 25));
      }
      await answer;
      expect(result).toMatchObject({ ready: 0, readable: false });
      expect(result!.ms).toBeLessThan(9_000);
    } finally {
      await w.terminate();
      e.close();
    }
  });
});
