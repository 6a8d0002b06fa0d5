// createMachine's checks, which need no KVM. The tiny guests that run on /dev/kvm are
// in fixtures/kvm-scenarios.mjs (kvm.test.ts).
import { describe, expect, it } from "vitest";
import { AccelerationError, accelerationProbe, createMachine } from "../src/index.js";
import { makeTinyBzImage, SPIN_GUEST } from "./fixtures/tiny-guests.mjs";

describe("createMachine", () => {
  it("refuses to make a machine that cannot run here, saying why", () => {
    const probe = accelerationProbe();
    const make = () => createMachine({ kernel: makeTinyBzImage(SPIN_GUEST), memMiB: 16 });
    if (probe.hardwareSpeed) expect(make).not.toThrow();
    else if (probe.kvm === "present") {
      expect(make).toThrow(AccelerationError);
      expect(make).toThrow(/KVM emulates guest code .*Linux will not boot; run in the sandbox/);
    } else {
      expect(make).toThrow(AccelerationError);
      expect(make).toThrow(/cannot run a VM: \/dev\/kvm/);
      // allowEmulated does not help when there is no KVM at all.
      expect(() =>
        createMachine({ kernel: makeTinyBzImage(SPIN_GUEST), memMiB: 16, allowEmulated: true }),
      ).toThrow(AccelerationError);
    }
  });

  it("checks its options and the kernel before touching KVM", () => {
    const spin = makeTinyBzImage(SPIN_GUEST);
    expect(() => createMachine({ kernel: spin, cpus: 0 })).toThrow(/cpus must be/);
    expect(() => createMachine({ kernel: spin, memMiB: 1.5 })).toThrow(/memMiB must be/);
    expect(() => createMachine({ kernel: new Uint8Array(10) })).toThrow(/not a Linux bzImage/);
    expect(() => createMachine({ kernel: "/nonexistent/bzImage" })).toThrow(/cannot read the kernel/);
    expect(() => createMachine({ kernel: spin, memMiB: 16, initrd: new Uint8Array(15 << 20) })).toThrow(
      /not enough memory/,
    );
  });
});
