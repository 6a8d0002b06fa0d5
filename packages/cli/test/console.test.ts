// The host side of `--console virtio` without a guest: option parsing and the size
// reported. (The terminal's input and output, with backpressure, are the device's
// worker's: tested in @tskvm/virtio-console's worker.test.ts.)
import { describe, expect, it } from "vitest";
import { parseConsoleKind, terminalSize } from "../src/console.js";

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
});
