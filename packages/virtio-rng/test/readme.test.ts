// The README's example program is examples/read-random.ts, verbatim; this runs it.
import { readFileSync } from "node:fs";
import { describe, expect, it, vi } from "vitest";

const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
const example = readFileSync(new URL("../examples/read-random.ts", import.meta.url), "utf8");

/** The fenced ts block that follows `<!-- example: examples/read-random.ts -->`. */
function readmeExample(): string {
  const m = /<!-- example: examples\/read-random\.ts -->\s*```ts\n([\s\S]*?)```/.exec(readme);
  if (!m) throw new Error("README has no example block");
  return m[1]!;
}

describe("README", () => {
  it("shows examples/read-random.ts verbatim", () => {
    expect(readmeExample()).toBe(example);
  });

  it("the example program runs and prints 64 random bytes", async () => {
    const lines: string[] = [];
    const spy = vi.spyOn(console, "log").mockImplementation((...args: unknown[]) => {
      lines.push(args.join(" "));
    });
    try {
      await import("../examples/read-random.js");
    } finally {
      spy.mockRestore();
    }
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^64 random bytes: [0-9a-f]{128}$/);
    expect(lines[0]).not.toMatch(/: (00)+$/);
    expect(lines[1]).toBe("interrupts on vector 1: 1");
  });
});
