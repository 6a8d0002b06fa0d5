// Refuses to start a machine that could not boot Linux in useful time.

import { type AccelerationProbe, probeAcceleration } from "@tskvm/kvm-core";

let cached: AccelerationProbe | undefined;

/** probeAcceleration(), measured once per process (it runs a small guest). */
export function accelerationProbe(): AccelerationProbe {
  cached ??= probeAcceleration();
  return cached;
}

/** The machine cannot run here; `probe` says what was found. */
export class AccelerationError extends Error {
  readonly probe: AccelerationProbe;
  constructor(message: string, probe: AccelerationProbe) {
    super(message);
    this.name = "AccelerationError";
    this.probe = probe;
  }
}

/**
 * Throws unless KVM is usable and runs guest code at hardware speed. With
 * `allowEmulated`, an emulating KVM (PVM) is accepted: hand-made guests run, Linux does not.
 */
export function checkAcceleration(allowEmulated: boolean): AccelerationProbe {
  const probe = accelerationProbe();
  if (probe.kvm !== "present") throw new AccelerationError(`cannot run a VM: ${probe.summary}`, probe);
  if (!probe.hardwareSpeed && !allowEmulated) {
    const mips = (probe.instructionsPerSecond / 1e6).toFixed(1);
    throw new AccelerationError(
      `this machine's KVM emulates guest code (${probe.backend === "kvm_pvm" ? "PVM" : (probe.backend ?? "unknown backend")}, ~${mips} M instructions/s): Linux will not boot; run in the sandbox`,
      probe,
    );
  }
  return probe;
}
