// The host side of `--console virtio` without a guest: option parsing, the size
// reported, and input into the ConsoleLink's ring with backpressure.
import { PassThrough, Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { parseConsoleKind, terminalSize, VirtioConsole } from "../src/console.js";
import { ConsoleTerminal } from "../src/terminal.js";

describe("--console", () => {
  it("parses serial (the default) and virtio", () => {
    expect(parseConsoleKind(undefined)).toBe("serial");
    expect(parseConsoleKind("serial")).toBe("serial");
    expect(parseConsoleKind("virtio")).toBe("virtio");
    expect(() => parseConsoleKind("hvc")).toThrow(/serial or virtio/);
  });

  it("reports the terminal's size, 80x25 when stdout is no terminal", () => {
    expect(terminalSize({ isTTY: true, columns: 132, rows: 43 })).toEqual({ cols: 132, rows: 43 });
    expect(terminalSize({ isTTY: false, columns: 132, rows: 43 })).toEqual({ cols: 80, rows: 25 });
    expect(terminalSize({})).toEqual({ cols: 80, rows: 25 });
  });

  it("input() fills the link's input ring, a write completing only once all of it is in", async () => {
    const hvc = new VirtioConsole();
    const input = hvc.input();
    const big = Buffer.alloc(100 << 10, 0x61); // more than the 64 KiB ring
    let done = false;
    input.write(big, () => {
      done = true;
    });
    await new Promise((r) => setTimeout(r, 20));
    expect(done).toBe(false);
    expect(hvc.link.inputSpace).toBe(0);
    hvc.stop(); // drops what still waits for room
    await new Promise((r) => setTimeout(r, 20));
    expect(done).toBe(true);
  });

  it("the terminal holds a piped stdin back while the guest input is full", async () => {
    const stdin = new PassThrough();
    let release: (() => void) | undefined;
    const sink = new Writable({
      highWaterMark: 4,
      write: (_chunk, _enc, cb) => {
        release = cb;
      },
    });
    const term = new ConsoleTerminal(stdin);
    term.attach(sink, () => {}, { backpressure: true });
    stdin.write("0123456789");
    await new Promise((r) => setTimeout(r, 10));
    expect(stdin.isPaused()).toBe(true);
    release?.();
    await new Promise((r) => setTimeout(r, 10));
    expect(stdin.isPaused()).toBe(false);
    term.restore();
  });
});
