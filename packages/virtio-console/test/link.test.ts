// The ConsoleLink's rings without a worker: both sides on this thread.
import { describe, expect, it } from "vitest";
import { ConsoleLink, ConsoleLinkWorkerSide } from "../src/index.js";

describe("ConsoleLink", () => {
  it("input: bounded, in order across many wraps, with wake-ups and waitInputSpace", async () => {
    const link = new ConsoleLink({ inputCapacity: 100 });
    const wakes: number[] = [];
    link.wake = (q) => wakes.push(q);
    const worker = new ConsoleLinkWorkerSide(link.buffer);
    const all = Uint8Array.from({ length: 5000 }, (_, i) => (i * 7) & 0xff);
    const got: number[] = [];
    let sent = 0;
    while (got.length < all.length) {
      sent += link.write(all.subarray(sent, sent + 37 + (sent % 50)));
      expect(link.inputSpace).toBe(100 - worker.input.used);
      got.push(...worker.input.read(1 + (got.length % 61)));
    }
    expect(Uint8Array.from(got)).toEqual(all);
    expect(wakes.every((q) => q === 0)).toBe(true);
    expect(link.write(new Uint8Array(150))).toBe(100);
    const room = link.waitInputSpace(10);
    worker.input.read(10);
    await room;
  });

  it("output: the worker's ring, read by the host; a full ring flags and a read wakes the transmit queue", async () => {
    const link = new ConsoleLink({ outputCapacity: 64 });
    const wakes: number[] = [];
    link.wake = (q) => wakes.push(q);
    const worker = new ConsoleLinkWorkerSide(link.buffer);
    const waiting = link.waitOutput();
    expect(worker.output.write(new Uint8Array(100).fill(1))).toBe(64);
    await waiting;
    worker.outputBlocked = true;
    expect(link.outputAvailable).toBe(64);
    expect(link.read().length).toBe(64);
    expect(wakes).toEqual([1]);
    expect(link.read().length).toBe(0);
    expect(wakes).toEqual([1]);
    const seen: number[] = [];
    const stop = link.onOutput((b) => seen.push(...b));
    worker.output.write(Uint8Array.of(1, 2, 3));
    await new Promise((r) => setTimeout(r, 20));
    stop();
    expect(seen).toEqual([1, 2, 3]);
  });

  it("resize: the worker sees each new size once; bad sizes are refused", () => {
    const link = new ConsoleLink({ cols: 90, rows: 20 });
    const worker = new ConsoleLinkWorkerSide(link.buffer);
    expect(worker.size()).toEqual({ cols: 90, rows: 20 });
    expect(worker.takeResize()).toBeUndefined();
    link.resize(100, 40);
    expect(worker.takeResize()).toEqual({ cols: 100, rows: 40 });
    expect(worker.takeResize()).toBeUndefined();
    expect(() => link.resize(1 << 16, 1)).toThrow(RangeError);
    expect(() => new ConsoleLink({ outputCapacity: 0 })).toThrow(RangeError);
  });
});
