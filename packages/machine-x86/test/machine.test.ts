import { describe, expect, it } from "vitest";
import {
  AccelerationError,
  accelerationProbe,
  createMachine,
  type Machine,
  type MachineExit,
} from "../src/index.js";
import {
  ECHO_GUEST,
  HELLO_GUEST,
  makeTinyBzImage,
  PCI_GUEST,
  RESET_GUEST,
  SMP_GUEST,
  SPIN_GUEST,
  TRIPLE_FAULT_GUEST,
} from "./helpers/tiny-guest.js";

async function run(
  m: Machine,
  o: { timeoutMs?: number; afterStart?: () => void } = {},
): Promise<{ exit: MachineExit; output: string }> {
  const chunks: Buffer[] = [];
  m.console.output.on("data", (c: Buffer) => chunks.push(c));
  const ended = new Promise<void>((r) => m.console.output.on("end", r));
  await m.start();
  o.afterStart?.();
  const timer = setTimeout(() => void m.stop(), o.timeoutMs ?? 20_000);
  const exit = await m.exited;
  clearTimeout(timer);
  await ended;
  return { exit, output: Buffer.concat(chunks).toString("latin1") };
}

const tiny = (code: Uint8Array, extra: { cpus?: number; cmdline?: string } = {}) =>
  createMachine({ kernel: makeTinyBzImage(code), memMiB: 16, allowEmulated: true, ...extra });

describe("tiny guests on /dev/kvm", () => {
  it("boots a long-mode guest that says hello and finds its command line", async () => {
    const m = tiny(HELLO_GUEST, { cmdline: "tiny=1" });
    const { exit, output } = await run(m);
    expect(output).toBe(`hello\n${m.layout.cmdline}\n`);
    expect(m.layout.cmdline.endsWith("tiny=1")).toBe(true);
    expect(exit.reason).toBe("poweroff");
    expect(exit.detail).toMatch(/halted with interrupts disabled/);
  });

  it("ends with 'reboot' when the guest pulses the i8042 reset line", async () => {
    const { exit } = await run(tiny(RESET_GUEST));
    expect(exit.reason).toBe("reboot");
    expect(exit.detail).toMatch(/i8042 reset/);
  });

  it("ends with 'triple-fault' when the guest faults with no IDT", async () => {
    const { exit } = await run(tiny(TRIPLE_FAULT_GUEST));
    expect(exit.reason).toBe("triple-fault");
    expect(exit.detail).toMatch(/rip=0x100200/);
  });

  it("runs two vCPUs in two workers that share the UART", async () => {
    const { exit, output } = await run(tiny(SMP_GUEST, { cpus: 2 }));
    expect(output).toBe("ABC\n");
    expect(exit.reason).toBe("poweroff");
    expect(exit.vcpus.map((v) => v.id).sort()).toEqual([0, 1]);
    // The AP's "B" went through its own worker's port-I/O bus.
    for (const v of exit.vcpus) expect(v.exits).toBeGreaterThan(0);
  });

  it("feeds console input to the guest through the UART", async () => {
    const m = tiny(ECHO_GUEST);
    const { exit, output } = await run(m, { afterStart: () => m.console.input.write("hello, tskvm\n") });
    expect(output).toBe("HELLO, TSKVM\n");
    expect(exit.reason).toBe("poweroff");
  });

  it("takes more input than the receive FIFO holds", async () => {
    const m = tiny(ECHO_GUEST);
    const text = `${"abcdefghij".repeat(40)}\n`;
    const { output } = await run(m, { afterStart: () => m.console.input.end(text) });
    expect(output).toBe(text.toUpperCase());
  });

  it("serves a PCI device's BAR from a module in the vCPU worker", async () => {
    const shared = new SharedArrayBuffer(32);
    const m = createMachine({
      kernel: makeTinyBzImage(PCI_GUEST),
      memMiB: 16,
      allowEmulated: true,
      devices: [
        {
          vendorId: 0x1234,
          deviceId: 0x0001,
          classCode: 0xff0000,
          bars: [{ index: 0, size: 0x1000, kind: "mmio32" }],
          handler: { module: new URL("./fixtures/pci-test-device.mjs", import.meta.url), data: { shared } },
        },
      ],
    });
    expect(m.pci.devices[0]!.info.bars[0]!.address).toBe(0xc0000000);
    const { exit, output } = await run(m);
    expect(output).toBe("PCI!\n");
    expect(Array.from(new Int32Array(shared).subarray(0, 5))).toEqual([0, 4, 0x0a4b4f, 1, 1]);
    expect(exit.reason).toBe("poweroff");
  });

  it("stops a guest that never ends", async () => {
    const m = tiny(SPIN_GUEST);
    await m.start();
    await new Promise((r) => setTimeout(r, 300));
    const exit = await m.stop();
    expect(exit.reason).toBe("stopped");
    expect(await m.exited).toBe(exit);
    await expect(m.start()).rejects.toThrow(/already run/);
  });

  it("stops cleanly when stopped while starting", async () => {
    const m = tiny(SPIN_GUEST, { cpus: 2 });
    const started = m.start();
    const exit = await m.stop();
    await started;
    expect(exit.reason).toBe("stopped");
    expect(exit.vcpus.map((v) => v.id).sort()).toEqual([0, 1]);
  });

  it("ends 'stopped' when stopped before it started", async () => {
    const m = tiny(SPIN_GUEST);
    expect((await m.stop()).reason).toBe("stopped");
  });
});

describe("createMachine", () => {
  it("refuses an emulating KVM unless allowed", () => {
    const probe = accelerationProbe();
    const make = () => createMachine({ kernel: makeTinyBzImage(SPIN_GUEST), memMiB: 16 });
    if (probe.hardwareSpeed) expect(make).not.toThrow();
    else {
      expect(make).toThrow(AccelerationError);
      expect(make).toThrow(/KVM emulates guest code .*Linux will not boot; run in the sandbox/);
    }
  });

  it("checks its options and the kernel before touching KVM", () => {
    expect(() => tiny(SPIN_GUEST, { cpus: 0 })).toThrow(/cpus must be/);
    expect(() => createMachine({ kernel: new Uint8Array(10), allowEmulated: true })).toThrow(
      /not a Linux bzImage/,
    );
    expect(() => createMachine({ kernel: "/nonexistent/bzImage", allowEmulated: true })).toThrow(
      /cannot read the kernel/,
    );
    expect(() =>
      createMachine({
        kernel: makeTinyBzImage(SPIN_GUEST),
        memMiB: 16,
        initrd: new Uint8Array(15 << 20),
        allowEmulated: true,
      }),
    ).toThrow(/not enough memory/);
  });

  it("lays out memory as the boot protocol wants", () => {
    const m = createMachine({
      kernel: makeTinyBzImage(SPIN_GUEST),
      initrd: new Uint8Array(100_000),
      memMiB: 16,
      allowEmulated: true,
    });
    expect(m.layout.kernelAddress).toBe(0x100000);
    expect(m.layout.entry).toBe(0x100200);
    expect(m.layout.initrd).toEqual({ address: 16 * 1024 * 1024 - 102_400, size: 100_000 });
    expect(m.layout.cmdline).toMatch(/^console=ttyS0 /);
  });
});
