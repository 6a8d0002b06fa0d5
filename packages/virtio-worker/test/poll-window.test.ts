// The adaptive polling window on its own: how it grows, holds and shrinks with the gaps
// between a device's answers and the next request.
import { describe, expect, it } from "vitest";
import { PollWindow } from "../dist/poll-window.js";

describe("PollWindow", () => {
  it("starts closed and opens only after a gap it could have caught", () => {
    const w = new PollWindow(0.1); // 100 µs
    expect(w.ms).toBe(0);
    expect(w.open(1, 1)).toBe(false);
    w.observe(Number.POSITIVE_INFINITY); // the first request ever: nothing to learn
    expect(w.ms).toBe(0);
    w.observe(5); // 5 ms: beyond the maximum, still closed
    expect(w.ms).toBe(0);
    w.observe(0.05); // 50 µs: within the maximum, grows from 4 µs
    expect(w.ms).toBeCloseTo(0.004);
  });

  it("doubles up to the maximum while gaps fall between window and maximum, holds when it catches them", () => {
    const w = new PollWindow(0.1);
    const seen: number[] = [];
    for (let i = 0; i < 8; i++) {
      w.observe(0.09);
      seen.push(Math.round(w.ms * 1000));
    }
    expect(seen).toEqual([4, 8, 16, 32, 64, 100, 100, 100]);
    w.observe(0.01); // caught: no change
    expect(w.ms).toBe(0.1);
    expect(w.open(10.05, 10)).toBe(true);
    expect(w.open(10.2, 10)).toBe(false); // the window is [lastWork, lastWork + ms)
  });

  it("halves on a gap beyond the maximum, and closes below the first step", () => {
    const w = new PollWindow(0.1);
    for (let i = 0; i < 6; i++) w.observe(0.09);
    const seen: number[] = [];
    for (let i = 0; i < 7; i++) {
      w.observe(1);
      seen.push(Math.round(w.ms * 1000));
    }
    expect(seen).toEqual([50, 25, 13, 6, 0, 0, 0]);
  });

  it("a maximum of 0 never polls, whatever the gaps", () => {
    const w = new PollWindow(0);
    for (const gap of [0, 0.001, 0.05, 1, Number.NaN]) w.observe(gap);
    expect(w.ms).toBe(0);
    expect(w.open(0, 0)).toBe(false);
  });

  it("ignores gaps that are not numbers or not positive", () => {
    const w = new PollWindow(0.1);
    w.observe(Number.NaN);
    w.observe(0);
    w.observe(-1);
    expect(w.ms).toBe(0);
  });
});
