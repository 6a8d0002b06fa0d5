// The README's device author's guide shows examples/tiny-rng.ts verbatim; this
// runs it (compiled by the global setup: its worker loads the compiled file).
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
const example = readFileSync(new URL("../examples/tiny-rng.ts", import.meta.url), "utf8");

/** The fenced ts block that follows `<!-- example: examples/tiny-rng.ts -->`. */
function readmeExample(): string {
  const m = /<!-- example: examples\/tiny-rng\.ts -->\s*```ts\n([\s\S]*?)```/.exec(readme);
  if (!m) throw new Error("README has no example block");
  return m[1]!;
}

describe("README device author's guide", () => {
  it("shows examples/tiny-rng.ts verbatim, and it is a package's worth (≤ 150 lines)", () => {
    expect(readmeExample()).toBe(example);
    expect(example.split("\n").length).toBeLessThanOrEqual(150);
  });

  it("the example program serves its device from a worker and reads 64 random bytes", () => {
    const program = fileURLToPath(new URL("../dist/examples/tiny-rng.js", import.meta.url));
    const r = spawnSync(process.execPath, [program], { encoding: "utf8", timeout: 30_000 });
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    const lines = r.stdout.trim().split("\n");
    expect(lines[0]).toBe("PCI function 1af4:1044");
    expect(lines[1]).toMatch(/^64 random bytes: [0-9a-f]{128}$/);
    expect(lines[1]).not.toMatch(/: (00)+$/);
    expect(lines[2]).toBe("served 1");
  });
});
