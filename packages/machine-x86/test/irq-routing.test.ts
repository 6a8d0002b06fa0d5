import type { GsiRoute } from "@tskvm/kvm-core";
import { describe, expect, it } from "vitest";
import { defaultIrqchipRoutes, FIRST_MSI_GSI, GsiRouter } from "../src/index.js";

describe("GSI routing", () => {
  it("mirrors KVM's default table: IOAPIC pins 0-23, PIC pins for 0-15", () => {
    const r = defaultIrqchipRoutes();
    expect(r.filter((x) => x.type === "irqchip" && x.chip === "ioapic")).toHaveLength(24);
    expect(r).toContainEqual({ gsi: 0, type: "irqchip", chip: "pic-master", pin: 0 });
    expect(r).toContainEqual({ gsi: 9, type: "irqchip", chip: "pic-slave", pin: 1 });
    expect(r).toContainEqual({ gsi: 20, type: "irqchip", chip: "ioapic", pin: 20 });
    expect(r.some((x) => x.gsi === 20 && x.type === "irqchip" && x.chip !== "ioapic")).toBe(false);
  });

  it("sends the whole table on every MSI change, and nothing before a GSI is allocated", () => {
    const sent: GsiRoute[][] = [];
    const router = new GsiRouter();
    router.attach((routes) => sent.push([...routes]));
    expect(sent).toHaveLength(0);
    const a = router.allocate();
    const b = router.allocate();
    expect([a, b]).toEqual([FIRST_MSI_GSI, FIRST_MSI_GSI + 1]);
    router.setMsi(b, { address: 0xfee00000, data: 0x4041 });
    const last = sent.at(-1)!;
    expect(last.slice(0, defaultIrqchipRoutes().length)).toEqual(defaultIrqchipRoutes());
    expect(last.filter((x) => x.type === "msi")).toEqual([
      { gsi: b, type: "msi", address: 0xfee00000, data: 0x4041 },
    ]);
    const n = sent.length;
    router.setMsi(b, { address: 0xfee00000, data: 0x4041 });
    expect(sent).toHaveLength(n); // unchanged: not re-sent
    router.setMsi(b, null);
    expect(sent.at(-1)!.some((x) => x.type === "msi")).toBe(false);
    router.release(a);
    expect(router.allocate()).toBe(a);
  });

  it("refuses a GSI it did not hand out", () => {
    expect(() => new GsiRouter().setMsi(30, null)).toThrow(/not allocated/);
  });
});
