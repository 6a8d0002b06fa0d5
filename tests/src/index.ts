import { type AccelerationProbe, probeAcceleration } from "@tskvm/kvm-core";

/** Where an end-to-end case that boots Linux runs. */
export interface E2eTarget {
  /** `host`: the host's KVM runs guest code at hardware speed; `sandbox`: nested KVM in QEMU. */
  kind: "host" | "sandbox";
  probe: AccelerationProbe;
  reason: string;
}

let cached: E2eTarget | undefined;

/**
 * Host KVM at hardware speed → run directly; emulated (PVM) or absent → the sandbox.
 * `TSKVM_E2E_TARGET=sandbox|host` forces one.
 */
export function e2eTarget(): E2eTarget {
  if (cached) return cached;
  const probe = probeAcceleration();
  const forced = process.env.TSKVM_E2E_TARGET;
  const kind = forced === "host" || forced === "sandbox" ? forced : probe.hardwareSpeed ? "host" : "sandbox";
  const reason = forced ? `forced by TSKVM_E2E_TARGET=${forced}` : probe.summary;
  cached = { kind, probe, reason };
  return cached;
}
