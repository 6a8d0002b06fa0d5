import { spawnSync } from "node:child_process";
import { type AccelerationProbe, probeAcceleration } from "@tskvm/kvm-core";
import { parseJsonLines, runInSandbox } from "@tskvm/sandbox";

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

/** What {@link runOnTarget} brings back: the `@@RESULT` lines, and the raw output for failure messages. */
export interface TargetRun<T> {
  results: T[];
  log: string;
}

/**
 * Runs `node script ...args` where Linux can boot ({@link e2eTarget}): directly on a
 * host with hardware KVM, else in one sandbox boot. Returns the script's
 * `@@RESULT {json}` lines. Bounded by `timeoutMs` either way.
 */
export async function runOnTarget<T>(
  script: string,
  args: readonly string[] = [],
  options: { timeoutMs?: number; cwd?: string } = {},
): Promise<TargetRun<T>> {
  const timeoutMs = options.timeoutMs ?? 10 * 60_000;
  const target = e2eTarget();
  let log: string;
  if (target.kind === "host") {
    const r = spawnSync(process.execPath, [script, ...args], {
      encoding: "utf8",
      timeout: timeoutMs,
      ...(options.cwd ? { cwd: options.cwd } : {}),
    });
    log = r.stdout + r.stderr;
  } else {
    const quote = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;
    const r = await runInSandbox(["node", script, ...args].map(quote).join(" "), {
      timeoutMs,
      ...(options.cwd ? { cwd: options.cwd } : {}),
    });
    log = `${r.output}\n(exit ${r.exitCode}, boot ${r.bootMs} ms, run ${r.runMs} ms)`;
  }
  return { results: parseJsonLines<T>(log, "@@RESULT"), log };
}
