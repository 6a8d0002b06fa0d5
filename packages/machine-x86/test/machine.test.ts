import { describe, expect, it } from "vitest";
import { createMachine, type Machine, type MachineExit } from "../src/index.js";
import { HELLO_GUEST, makeTinyBzImage, RESET_GUEST, SMP_GUEST, TRIPLE_FAULT_GUEST } from "./helpers/tiny-guest.js";

async function run(m: Machine, timeoutMs = 20_000): Promise<{ exit: MachineExit; output: string }> {
  const chunks: Buffer[] = [];
  m.console.output.on("data", (c: Buffer) => chunks.push(c));
  const ended = new Promise<void>((r) => m.console.output.on("end", r));
  await m.start();
  const timer = setTimeout(() => void m.stop(), timeoutMs);
  const exit = await m.exited;
  clearTimeout(timer);
  await ended;
  return { exit, output: Buffer.concat(chunks).toString("latin1") };
}

describe("tiny guests on /dev/kvm", () => {
  it("boots a long-mode guest that says hello and finds its command line", async () => {
    const m = createMachine({ kernel: makeTinyBzImage(HELLO_GUEST), memMiB: 16, cmdline: "tiny=1", allowEmulated: true });
    const { exit, output } = await run(m);
    expect(output).toBe(`hello\n${m.layout.cmdline}\n`);
    expect(m.layout.cmdline.endsWith("tiny=1")).toBe(true);
    expect(exit.reason).toBe("poweroff");
  });

  it("ends with 'reboot' when the guest pulses the i8042 reset line", async () => {
    const m = createMachine({ kernel: makeTinyBzImage(RESET_GUEST), memMiB: 16, allowEmulated: true });
    const { exit } = await run(m);
    expect(exit.reason).toBe("reboot");
    expect(exit.detail).toMatch(/i8042/);
  });

  it("ends with 'triple-fault' when the guest faults with no IDT", async () => {
    const m = createMachine({ kernel: makeTinyBzImage(TRIPLE_FAULT_GUEST), memMiB: 16, allowEmulated: true });
    const { exit } = await run(m);
    expect(exit.reason).toBe("triple-fault");
  });

  it("runs two vCPUs in two workers that share the UART", async () => {
    const m = createMachine({ kernel: makeTinyBzImage(SMP_GUEST), memMiB: 16, cpus: 2, allowEmulated: true });
    const { exit, output } = await run(m);
    expect(output).toBe("ABC\n");
    expect(exit.reason).toBe("poweroff");
    expect(exit.vcpus.map((v) => v.id).sort()).toEqual([0, 1]);
    for (const v of exit.vcpus) expect(v.exits).toBeGreaterThan(0);
  });
});
