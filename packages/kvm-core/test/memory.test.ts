// Guest RAM allocation, which needs no KVM: plain anonymous mappings.
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { GuestRegion } from "../dist/index.js";

/** The VmFlags of the mapping that starts at `address`, from /proc/self/smaps. */
function vmFlags(address: bigint): string[] {
  const smaps = readFileSync("/proc/self/smaps", "utf8").split("\n");
  const start = address.toString(16);
  const i = smaps.findIndex((l) => l.startsWith(`${start}-`));
  if (i < 0) throw new Error(`no mapping at 0x${start}`);
  for (let j = i + 1; j < smaps.length; j++) {
    const l = smaps[j] ?? "";
    if (l.startsWith("VmFlags:")) return l.slice(8).trim().split(/\s+/);
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(l)) break;
  }
  throw new Error("no VmFlags");
}

describe("GuestRegion.allocate", () => {
  it("maps RAM 2 MiB aligned, advised for huge pages and not copied into child processes", () => {
    const region = GuestRegion.allocate(0, 64 * 2 ** 20);
    try {
      expect(region.hostAddress % BigInt(2 ** 21)).toBe(0n);
      const flags = vmFlags(region.hostAddress);
      expect(flags).toContain("dc"); // MADV_DONTFORK
      const thp = readFileSync("/sys/kernel/mm/transparent_hugepage/enabled", "utf8");
      if (!thp.includes("[never]")) expect(flags).toContain("hg"); // MADV_HUGEPAGE
      // The whole range is usable, first and last byte.
      const w = region.window(0);
      w[0] = 1;
      w[w.length - 1] = 2;
      expect(w[0]! + w[w.length - 1]!).toBe(3);
    } finally {
      region.release();
    }
  });

  it("leaves small regions page aligned", () => {
    const region = GuestRegion.allocate(0, 0x10000);
    try {
      expect(region.hostAddress % 4096n).toBe(0n);
      expect(region.window(0).length).toBe(0x10000);
    } finally {
      region.release();
    }
  });
});
