// Thread scheduling: ioprio_set / ioprio_get and nice on one thread. Runs on a
// thread of its own (a worker) so the test runner's threads keep their priorities.
import { readFileSync } from "node:fs";
import { Worker } from "node:worker_threads";
import { describe, expect, it } from "vitest";
import {
  currentThreadId,
  decodeIoPriority,
  encodeIoPriority,
  getThreadIoPriority,
  getThreadNice,
  KvmError,
  setThreadIoPriority,
  setThreadNice,
} from "../dist/index.js";

/** A worker thread that only waits, reporting its tid; `end()` stops it. */
async function idleThread(): Promise<{ tid: number; end: () => Promise<number> }> {
  const w = new Worker(
    `const { parentPort } = require("node:worker_threads");
     import(${JSON.stringify(new URL("../dist/index.js", import.meta.url).href)}).then((m) => {
       parentPort.postMessage(m.currentThreadId());
       parentPort.once("message", () => process.exit(0));
     });`,
    { eval: true },
  );
  const tid = await new Promise<number>((resolve, reject) => {
    w.once("message", resolve);
    w.once("error", reject);
  });
  return {
    tid,
    end: () => {
      w.postMessage("end");
      return new Promise((r) => w.once("exit", r));
    },
  };
}

const root = process.getuid?.() === 0;

describe("thread I/O priority", () => {
  it("encodes classes and levels as ioprio(7)", () => {
    expect(encodeIoPriority({ class: "rt", level: 0 })).toBe((1 << 13) | 0);
    expect(encodeIoPriority({ class: "be", level: 7 })).toBe((2 << 13) | 7);
    expect(encodeIoPriority({ class: "be" })).toBe((2 << 13) | 4);
    expect(encodeIoPriority({ class: "idle", level: 5 })).toBe(3 << 13);
    expect(decodeIoPriority((2 << 13) | 3)).toEqual({ class: "be", level: 3 });
    expect(decodeIoPriority(0)).toEqual({ class: "none", level: 0 });
    expect(encodeIoPriority({ class: "none" })).toBe(0);
  });

  it("sets and reads back be 0..7 and idle on one thread, leaving the calling thread alone", async () => {
    const t = await idleThread();
    try {
      const mine = getThreadIoPriority(0);
      for (let level = 0; level <= 7; level++) {
        setThreadIoPriority(t.tid, { class: "be", level });
        expect(getThreadIoPriority(t.tid)).toEqual({ class: "be", level });
      }
      setThreadIoPriority(t.tid, { class: "idle" });
      expect(getThreadIoPriority(t.tid).class).toBe("idle");
      setThreadIoPriority(t.tid, { class: "none" });
      expect(getThreadIoPriority(t.tid)).toEqual({ class: "none", level: 0 });
      expect(getThreadIoPriority(0)).toEqual(mine);
      expect(getThreadIoPriority(currentThreadId())).toEqual(mine);
    } finally {
      await t.end();
    }
  });

  it("sets the rt class as root; refuses it with EPERM otherwise", async () => {
    const t = await idleThread();
    try {
      if (root) {
        setThreadIoPriority(t.tid, { class: "rt", level: 3 });
        expect(getThreadIoPriority(t.tid)).toEqual({ class: "rt", level: 3 });
      } else {
        expect(() => setThreadIoPriority(t.tid, { class: "rt", level: 3 })).toThrow(
          expect.objectContaining({ operation: "ioprio_set", code: "EPERM" }),
        );
        expect(getThreadIoPriority(t.tid).class).not.toBe("rt");
      }
    } finally {
      await t.end();
    }
  });

  it("refuses bad classes, levels and threads", () => {
    expect(() => setThreadIoPriority(0, { class: "be", level: 8 })).toThrow(/level 8/);
    expect(() => setThreadIoPriority(0, { class: "be", level: -1 })).toThrow(
      expect.objectContaining({ code: "EINVAL", operation: "ioprio_set" }),
    );
    expect(() => setThreadIoPriority(0, { class: "be", level: 1.5 })).toThrow(KvmError);
    expect(() => setThreadIoPriority(0, { class: "fast" as "be" })).toThrow(/unknown I\/O priority class/);
    expect(() => setThreadIoPriority(-1, { class: "be" })).toThrow(KvmError);
    // A thread id that does not exist: the kernel's ESRCH, named after the system call.
    let err: unknown;
    try {
      setThreadIoPriority(2 ** 30, { class: "be", level: 1 });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(KvmError);
    expect(err).toMatchObject({ operation: "ioprio_set", code: "ESRCH" });
    expect(() => getThreadIoPriority(2 ** 30)).toThrow(/ioprio_get failed with ESRCH/);
  });
});

describe("thread nice", () => {
  it("sets and reads one thread's nice value", async () => {
    const t = await idleThread();
    try {
      const mine = getThreadNice(0);
      setThreadNice(t.tid, 7);
      expect(getThreadNice(t.tid)).toBe(7);
      if (root) {
        setThreadNice(t.tid, -5);
        expect(getThreadNice(t.tid)).toBe(-5);
      }
      expect(getThreadNice(0)).toBe(mine);
    } finally {
      await t.end();
    }
  });

  it("refuses values outside -20..19 and unknown threads", () => {
    expect(() => setThreadNice(0, 20)).toThrow(/nice 20/);
    expect(() => setThreadNice(0, -21)).toThrow(expect.objectContaining({ code: "EINVAL" }));
    expect(() => setThreadNice(2 ** 30, 1)).toThrow(/setpriority failed with ESRCH/);
    expect(() => getThreadNice(2 ** 30)).toThrow(KvmError);
  });
});

describe("thread names", () => {
  it("names the calling thread (its comm), cut to 15 bytes, and leaves the others alone", async () => {
    const w = new Worker(
      `const { parentPort } = require("node:worker_threads");
       const { readFileSync } = require("node:fs");
       import(${JSON.stringify(new URL("../dist/index.js", import.meta.url).href)}).then((m) => {
         const tid = m.currentThreadId();
         const comm = () => readFileSync("/proc/self/task/" + tid + "/comm", "utf8").trim();
         const short = m.setCurrentThreadName("kvm-vcpu-3") && comm();
         const long = m.setCurrentThreadName("a-name-longer-than-fifteen") && comm();
         parentPort.postMessage({ short, long });
       });`,
      { eval: true },
    );
    const got = await new Promise((resolve, reject) => {
      w.once("message", resolve);
      w.once("error", reject);
    });
    await w.terminate();
    expect(got).toEqual({ short: "kvm-vcpu-3", long: "a-name-longer-t" });
    expect(readFileSync(`/proc/self/task/${currentThreadId()}/comm`, "utf8").trim()).not.toBe("kvm-vcpu-3");
  });
});
