import { existsSync } from "node:fs";
import { KvmError } from "./errors.js";
import { Kvm } from "./kvm.js";

/** How this machine can run guests. */
export interface AccelerationProbe {
  /** `absent`: no /dev/kvm; `denied`: no permission; `error`: it failed otherwise; `present`: usable. */
  kvm: "absent" | "denied" | "error" | "present";
  /** Loaded KVM backend module, if any: `kvm_intel`, `kvm_amd`, `kvm_pvm`. */
  backend: string | undefined;
  /** True when guest instructions run on the CPU (a Linux guest boots in seconds). */
  hardwareSpeed: boolean;
  /** Measured guest instructions per second (0 when not measured: a hardware backend, see {@link ProbeOptions}). */
  instructionsPerSecond: number;
  /** One sentence for a person. */
  summary: string;
}

/** Below this a Linux kernel does not boot in reasonable time; hardware does ~1e9. */
export const HARDWARE_SPEED_THRESHOLD = 50e6;

function loadedBackend(): string | undefined {
  for (const m of ["kvm_pvm", "kvm_intel", "kvm_amd"]) if (existsSync(`/sys/module/${m}`)) return m;
  return undefined;
}

// Real mode: mov ecx, N; 1: dec ecx; jnz 1b; out 0x10, al; hlt
function loopCode(iterations: number): Uint8Array {
  const c = new Uint8Array([0x66, 0xb9, 0, 0, 0, 0, 0x66, 0x49, 0x75, 0xfc, 0xe6, 0x10, 0xf4]);
  new DataView(c.buffer).setUint32(2, iterations, true);
  return c;
}

/** Backends that run guest code on the CPU's virtualization extensions. */
const HARDWARE_BACKENDS: readonly string[] = ["kvm_intel", "kvm_amd"];

export interface ProbeOptions {
  /**
   * Time a tiny real-mode loop in a throwaway VM. Default: only when the loaded backend
   * is not kvm_intel / kvm_amd (those run guests in hardware; the loop costs ~1 s of a
   * boot in a nested sandbox), e.g. PVM, which emulates non-paravirtual code.
   */
  measure?: boolean;
}

/**
 * Tells whether KVM runs guest code at hardware speed or emulates it (as a PVM
 * backend does for non-paravirtual code): by the loaded backend module, or by
 * timing a tiny real-mode loop (see {@link ProbeOptions.measure}).
 */
export function probeAcceleration(path = "/dev/kvm", options: ProbeOptions = {}): AccelerationProbe {
  const backend = loadedBackend();
  const measure = options.measure ?? !(backend !== undefined && HARDWARE_BACKENDS.includes(backend));
  let kvm: Kvm;
  try {
    kvm = Kvm.open(path);
  } catch (e) {
    const code = e instanceof KvmError ? e.code : "";
    const state = code === "ENOENT" ? "absent" : code === "EACCES" || code === "EPERM" ? "denied" : "error";
    const summary =
      state === "absent"
        ? `${path} does not exist: KVM is not available on this machine.`
        : state === "denied"
          ? `${path} exists but this user may not open it.`
          : `${path} could not be used: ${(e as Error).message}`;
    return { kvm: state, backend, hardwareSpeed: false, instructionsPerSecond: 0, summary };
  }
  try {
    const vm = kvm.createVm();
    try {
      if (!measure)
        return {
          kvm: "present",
          backend,
          hardwareSpeed: true,
          instructionsPerSecond: 0,
          summary: `KVM (${backend}) runs guest code in hardware.`,
        };
      vm.addMemory({ guestAddress: 0, size: 0x10000 });
      const vcpu = vm.createVcpu(0);
      const timeLoop = (n: number): number => {
        vm.memory.write(0x1000, loopCode(n));
        const s = vcpu.getSregs();
        s.cs = { ...s.cs, base: 0n, selector: 0 };
        vcpu.setSregs(s);
        const r = vcpu.getRegs();
        vcpu.setRegs({ ...r, rip: 0x1000n, rflags: 2n });
        const t0 = process.hrtime.bigint();
        let exit = vcpu.run();
        // A signal for this thread (a profiler's SIGPROF, say) ends KVM_RUN early: go on.
        while (exit.reason === "interrupted") exit = vcpu.run();
        const ns = Number(process.hrtime.bigint() - t0);
        if (exit.reason !== "io" || exit.port !== 0x10)
          throw new Error(`probe guest exited with ${exit.reason}`);
        return ns;
      };
      // The first entry pays for setting up the guest's paging and, under an emulator
      // (the sandbox), for translating the loop: warm up, then take the best of two.
      timeLoop(1000);
      let ips = 0;
      for (let n = 20_000; n <= 200_000_000; n *= 10) {
        const ns = Math.min(timeLoop(n), timeLoop(n));
        ips = (2 * n) / (ns / 1e9);
        if (ns > 50e6) break; // long enough to measure
      }
      const hardwareSpeed = ips >= HARDWARE_SPEED_THRESHOLD;
      const mips = (ips / 1e6).toFixed(ips < 10e6 ? 1 : 0);
      const summary = hardwareSpeed
        ? `KVM (${backend ?? "unknown backend"}) runs guest code at hardware speed (~${mips} M instructions/s).`
        : `KVM (${backend ?? "unknown backend"}) emulates guest code (~${mips} M instructions/s): tiny guests work, a Linux kernel will not boot in useful time.`;
      return { kvm: "present", backend, hardwareSpeed, instructionsPerSecond: ips, summary };
    } finally {
      vm.close();
    }
  } catch (e) {
    return {
      kvm: "error",
      backend,
      hardwareSpeed: false,
      instructionsPerSecond: 0,
      summary: `KVM is present but a probe guest failed: ${(e as Error).message}`,
    };
  } finally {
    kvm.close();
  }
}
