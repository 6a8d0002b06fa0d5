// The README's example program is examples/console.ts, verbatim; this runs it.
import { readFileSync } from "node:fs";
import { describe, expect, it, vi } from "vitest";

const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
const example = readFileSync(new URL("../examples/console.ts", import.meta.url), "utf8");

/** The fenced ts block that follows `<!-- example: examples/console.ts -->`. */
function readmeExample(): string {
  const m = /<!-- example: examples\/console\.ts -->\s*```ts\n([\s\S]*?)```/.exec(readme);
  if (!m) throw new Error("README has no example block");
  return m[1]!;
}

describe("README", () => {
  it("shows examples/console.ts verbatim", () => {
    expect(readmeExample()).toBe(example);
  });

  it("the example program runs and prints what the README says", async () => {
    const lines: string[] = [];
    const log = vi.spyOn(console, "log").mockImplementation((...args: unknown[]) => {
      lines.push(args.join(" "));
    });
    const out = vi.spyOn(process.stdout, "write").mockImplementation((chunk: string | Uint8Array) => {
      lines.push(String(chunk).replace(/\n$/, ""));
      return true;
    });
    try {
      await import("../examples/console.js");
    } finally {
      log.mockRestore();
      out.mockRestore();
    }
    const printed = /<!-- example: examples\/console\.ts -->[\s\S]*?```\n\n```\n([\s\S]*?)```/.exec(
      readme,
    )?.[1];
    expect(lines).toEqual(printed?.trimEnd().split("\n"));
  });
});
