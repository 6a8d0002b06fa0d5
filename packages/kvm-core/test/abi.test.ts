// The ioctl numbers and struct layouts in src/ioctls.ts and src/structs.ts,
// checked against the kernel's own <linux/kvm.h> by compiling a tiny C program.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { Ioctl } from "../dist/ioctls.js";
import { CPUID_ENTRY_SIZE, FPU_SIZE, LAPIC_SIZE, REGS_SIZE, SREGS_SIZE } from "../dist/structs.js";

function fromHeaders(): Map<string, number> {
  const dir = mkdtempSync(join(tmpdir(), "kvm-abi-"));
  try {
    const lines = Object.keys(Ioctl).map((n) => `printf("${n} %lu\\n", (unsigned long)${n});`);
    const sizes = ["kvm_regs", "kvm_sregs", "kvm_fpu", "kvm_lapic_state", "kvm_cpuid_entry2"].map(
      (s) => `printf("sizeof_${s} %zu\\n", sizeof(struct ${s}));`,
    );
    writeFileSync(
      join(dir, "abi.c"),
      `#include <linux/kvm.h>\n#include <stdio.h>\nint main(void){${[...lines, ...sizes].join("\n")}return 0;}\n`,
    );
    execFileSync("cc", ["-o", join(dir, "abi"), join(dir, "abi.c")]);
    const out = execFileSync(join(dir, "abi"), { encoding: "utf8" });
    return new Map(
      out
        .trim()
        .split("\n")
        .map((l) => l.split(" ") as [string, string])
        .map(([k, v]) => [k, Number(v)]),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe("KVM ABI", () => {
  const h = fromHeaders();
  it.each(Object.entries(Ioctl))("%s matches <linux/kvm.h>", (name, value) => {
    expect(value).toBe(h.get(name));
  });
  it("struct sizes match", () => {
    expect(REGS_SIZE).toBe(h.get("sizeof_kvm_regs"));
    expect(SREGS_SIZE).toBe(h.get("sizeof_kvm_sregs"));
    expect(FPU_SIZE).toBe(h.get("sizeof_kvm_fpu"));
    expect(LAPIC_SIZE).toBe(h.get("sizeof_kvm_lapic_state"));
    expect(CPUID_ENTRY_SIZE).toBe(h.get("sizeof_kvm_cpuid_entry2"));
  });
});
