// Many KVM scenarios in one sandbox boot: the sandbox costs seconds to boot and node
// inside it seconds to start, so a test suite sends one script that runs them all and
// reports one `@@RESULT {json}` line each, which the host turns back into test cases.
import { existsSync } from "node:fs";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseJsonLines } from "./json-lines.js";
import { runInSandbox, type SandboxOptions, type SandboxResult } from "./run.js";

/** Named scenarios: plain functions that throw (e.g. `node:assert`) on failure. */
export type Scenarios = Record<string, () => unknown>;

/** The outcome of one scenario, as printed on its `@@RESULT` line. */
export interface ScenarioResult {
  name: string;
  ok: boolean;
  /** The error's stack (or message) when it failed. */
  error?: string;
  ms: number;
}

/**
 * Runs the scenarios (those whose names contain one of `filters`, or all) one after
 * another and prints a `@@RESULT {json}` line for each as it ends.
 */
export async function reportScenarios(
  scenarios: Scenarios,
  filters: readonly string[] = [],
): Promise<ScenarioResult[]> {
  const results: ScenarioResult[] = [];
  for (const [name, fn] of Object.entries(scenarios)) {
    if (filters.length && !filters.some((f) => name.includes(f))) continue;
    const t0 = performance.now();
    let result: ScenarioResult;
    try {
      await fn();
      result = { name, ok: true, ms: 0 };
    } catch (e) {
      result = { name, ok: false, error: e instanceof Error ? (e.stack ?? e.message) : String(e), ms: 0 };
    }
    result.ms = Math.round(performance.now() - t0);
    results.push(result);
    process.stdout.write(`@@RESULT ${JSON.stringify(result)}\n`);
  }
  return results;
}

/** `node SCENARIO_RUNNER MODULE [FILTER...]` runs the `scenarios` export of MODULE. */
export const SCENARIO_RUNNER = runnerPath();

function runnerPath(): string {
  const here = fileURLToPath(new URL("./scenario-runner.js", import.meta.url));
  // From src/ (vitest runs the TypeScript) the compiled runner is in dist/.
  return existsSync(here) ? here : fileURLToPath(new URL("../dist/scenario-runner.js", import.meta.url));
}

/** What {@link runScenariosInSandbox} returns. */
export interface SandboxScenarios {
  /** By scenario name; a scenario missing here never reported (the run died or hung). */
  results: Map<string, ScenarioResult>;
  sandbox: SandboxResult;
}

/**
 * Runs the `scenarios` export of a module (a file on this host, which the sandbox sees
 * through its read-only view of the host root) in one sandbox boot.
 */
export async function runScenariosInSandbox(
  module: string | URL,
  options: SandboxOptions & { filters?: readonly string[] } = {},
): Promise<SandboxScenarios> {
  const path = module instanceof URL ? fileURLToPath(module) : module;
  const args = [SCENARIO_RUNNER, path, ...(options.filters ?? [])].map(shellWord).join(" ");
  const sandbox = await runInSandbox(`node ${args}`, options);
  const results = new Map<string, ScenarioResult>();
  for (const r of parseJsonLines<ScenarioResult>(sandbox.output, "@@RESULT")) results.set(r.name, r);
  return { results, sandbox };
}

function shellWord(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`;
}

/** The URL to import a scenario module given on a command line. */
export function scenarioModuleUrl(arg: string): string {
  return /^[a-z]+:/i.test(arg) ? arg : pathToFileURL(arg).href;
}
