import { describe, expect, it } from "vitest";
// Type-only: checked by `tsc -p tsconfig.test.json` (the package's typecheck script), erased at run time,
// so this package never loads kvm-core.
import type { GuestMemory as KvmGuestMemory } from "../../kvm-core/src/memory.js";
import { createTestMemory, type GuestMemoryAccess, Queue } from "../src/index.js";

/** Compiles only if kvm-core's GuestMemory satisfies GuestMemoryAccess structurally. */
export function acceptsKvmMemory(m: KvmGuestMemory): GuestMemoryAccess {
  return m;
}

describe("memory interface", () => {
  it("is what Queue needs and PlainGuestMemory provides", () => {
    const m: GuestMemoryAccess = createTestMemory(0x10000);
    expect(new Queue(m, { size: 4, descTable: 0, availRing: 0x100, usedRing: 0x200 }).size).toBe(4);
    expect(typeof acceptsKvmMemory).toBe("function");
  });
});
