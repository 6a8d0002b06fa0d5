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
 * A scenario result as the fixtures print it. A fixture does not retry a Linux boot that
 * ended the wrong way itself: it reports `lostBoot` (what that boot said), and
 * {@link runOnTarget} runs the scenario once more in a fresh target run.
 */
export interface ScenarioResult {
  name: string;
  lostBoot?: unknown;
  /** Set by {@link runOnTarget} on a scenario it ran twice: the first attempt's `lostBoot`. */
  firstAttempt?: unknown;
}

/**
 * Runs `node script ...args` where Linux can boot ({@link e2eTarget}): directly on a
 * host with hardware KVM, else in one sandbox boot. Returns the script's
 * `@@RESULT {json}` lines. Bounded by `timeoutMs` either way.
 *
 * Scenarios whose result has `lostBoot` are run once more, by name (the fixture takes
 * scenario names after `args`), in a *fresh* sandbox: the nested sandbox's rare lost boots
 * come in runs within one sandbox boot (machine-x86's README), so a retry in the same one
 * is not an independent second try. A scenario lost twice keeps its `lostBoot` and fails.
 */
/**
 * The longest {@link runOnTarget} may take with `timeoutMs` per target run: a sandbox run
 * that stalls is retried once by the sandbox, and lost boots get one fresh run. A test hook
 * around it needs at least this (the sandbox itself adds its boot, bounded separately).
 */
export function runOnTargetBudgetMs(timeoutMs: number): number {
  return 3 * timeoutMs + 2 * 60_000;
}

export async function runOnTarget<T extends ScenarioResult>(
  script: string,
  args: readonly string[] = [],
  options: { timeoutMs?: number; cwd?: string } = {},
): Promise<TargetRun<T>> {
  const first = await runOnce<T>(script, args, options);
  const lost = first.results.filter((r) => r.lostBoot !== undefined);
  if (lost.length === 0) return first;
  for (const r of lost)
    console.log(`RETRIED in a fresh ${e2eTarget().kind} run: ${r.name}: ${JSON.stringify(r.lostBoot)}`);
  const again = await runOnce<T>(script, [...args, ...lost.map((r) => r.name)], options);
  const byName = new Map(again.results.map((r) => [r.name, r]));
  const results = first.results.map((r) => {
    const second = r.lostBoot === undefined ? undefined : byName.get(r.name);
    return second ? { ...second, firstAttempt: r.lostBoot } : r;
  });
  return {
    results,
    log: `${first.log}
--- fresh run for lost boots ---
${again.log}`,
  };
}

async function runOnce<T>(
  script: string,
  args: readonly string[],
  options: { timeoutMs?: number; cwd?: string },
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
