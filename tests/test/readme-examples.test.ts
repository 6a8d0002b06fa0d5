// Every `ts` block in packages/*/README.md is a complete program (the convention: see
// ../src/readme-examples.ts). Each is type-checked against the built packages (tsc, the
// @tskvm packages resolved from the workspace, so an undefined name fails), then run with
// node from a directory where the @tskvm packages resolve, expecting exit 0 in bounded time.
// needs=kvm programs run here when /dev/kvm opens, else in the sandbox; needs=linux ones
// where Linux boots (e2eTarget: here on hardware KVM, else the sandbox). All that go to the
// sandbox share one sandbox boot (plus one fresh run for a Linux example that failed, which
// may be the sandbox's lost boot).
import { spawn } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { buildGuestKit } from "@tskvm/guest-kit";
import { accelerationProbe } from "@tskvm/machine-x86";
import { parseJsonLines, prepareSandboxImage } from "@tskvm/sandbox";
import { beforeAll, describe, expect, it } from "vitest";
import { e2eTarget, runOnTarget, runOnTargetBudgetMs } from "../src/index.js";
import { type ReadmeExample, scanReadme } from "../src/readme-examples.js";

const root = fileURLToPath(new URL("../../", import.meta.url));
const driver = fileURLToPath(new URL("../fixtures/readme-examples.mjs", import.meta.url));
// Under node_modules: ignored by git and biome, visible (read-only) in the sandbox.
const work = fileURLToPath(new URL("../node_modules/.cache/readme-examples/", import.meta.url));

/**
 * Bounds per example run, from the start of node to its exit. A Linux example takes ~25 s in
 * the sandbox; its bound is also what a stalled sandbox costs before the retry (the bounds
 * add up to the sandbox run's), so it stays a few times that, not more.
 */
const TIMEOUT_MS = { none: 60_000, kvm: 120_000, linux: 150_000 } as const;

const packageDirs = readdirSync(join(root, "packages")).filter((d) =>
  existsSync(join(root, "packages", d, "package.json")),
);
// TSKVM_README_EXAMPLES=virtio,kvm-core: only those packages' examples (while editing a README).
const only = process.env.TSKVM_README_EXAMPLES?.split(",").filter(Boolean);
const scans = packageDirs
  .filter((d) => existsSync(join(root, "packages", d, "README.md")))
  .map((d) => scanReadme(join(root, "packages", d, "README.md"), d));
const examples = scans
  .flatMap((s) => s.examples)
  .filter((e) => !only || only.some((p) => e.name.startsWith(`${p}.L`)));
const problems = scans
  .flatMap((s) => s.problems)
  .filter((p) => !only || only.some((d) => p.includes(`/packages/${d}/`)));

const forced = process.env.TSKVM_E2E_TARGET;
const kvmHere = forced === "host" || (forced !== "sandbox" && accelerationProbe().kvm === "present");
const target = e2eTarget();
/** Where each example runs: "here" directly, or "target" through runOnTarget (host or sandbox). */
const placement = (e: ReadmeExample): "here" | "target" =>
  e.needs === "none" || (e.needs === "kvm" && kvmHere) ? "here" : "target";
const whereLabel = (e: ReadmeExample) => (placement(e) === "here" ? "host" : target.kind);

interface Result {
  name: string;
  ok: boolean;
  status: number | null;
  signal: string | null;
  timedOut: boolean;
  ms: number;
  output: string;
  lostBoot?: unknown;
  firstAttempt?: unknown;
}

const results = new Map<string, Result>();
const typeErrors = new Map<string, string[]>();
let log = "";

function runNode(args: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { cwd: work, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (d) => {
      out += d;
    });
    child.stderr.setEncoding("utf8").on("data", (d) => {
      out += d;
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve(`${out}\n(exit ${code})`);
    });
  });
}

function writeManifest(file: string, list: ReadmeExample[]): string {
  const path = join(work, file);
  const entries = list.map((e) => ({
    name: e.name,
    needs: e.needs,
    file: join(work, "dist", `${e.name}.js`),
    timeoutMs: TIMEOUT_MS[e.needs],
  }));
  writeFileSync(path, JSON.stringify({ examples: entries }, null, 2));
  return path;
}

const here = examples.filter((e) => placement(e) === "here");
const onTarget = examples.filter((e) => placement(e) === "target");
const targetTimeoutMs = onTarget.reduce((sum, e) => sum + TIMEOUT_MS[e.needs], 60_000);

describe("README examples", () => {
  beforeAll(
    async () => {
      // A directory from which the @tskvm packages resolve as they would for a user.
      rmSync(work, { recursive: true, force: true });
      mkdirSync(join(work, "src"), { recursive: true });
      mkdirSync(join(work, "node_modules/@tskvm"), { recursive: true });
      for (const d of packageDirs) {
        const { name } = JSON.parse(readFileSync(join(root, "packages", d, "package.json"), "utf8"));
        symlinkSync(join(root, "packages", d), join(work, "node_modules", name));
      }
      writeFileSync(join(work, "package.json"), '{ "private": true, "type": "module" }\n');
      for (const e of examples) writeFileSync(join(work, "src", `${e.name}.ts`), e.code);
      writeFileSync(
        join(work, "tsconfig.json"),
        JSON.stringify({
          extends: join(root, "tsconfig.base.json"),
          compilerOptions: {
            rootDir: "src",
            outDir: "dist",
            declaration: false,
            declarationMap: false,
            sourceMap: false,
          },
          files: examples.map((e) => `src/${e.name}.ts`),
        }),
      );
      const tsc = await runNode(
        [join(root, "node_modules/typescript/bin/tsc"), "-p", work, "--pretty", "false"],
        180_000,
      );
      for (const line of tsc.split("\n")) {
        const m = /^src\/(.+)\.ts\((\d+),(\d+)\): (.*)$/.exec(line);
        const e = m && examples.find((x) => x.name === m[1]);
        if (!m || !e) continue;
        const at = `${e.readme}:${e.line + Number(m[2])}:${m[3]}`;
        typeErrors.set(e.name, [...(typeErrors.get(e.name) ?? []), `${at}: ${m[4]}`]);
      }
      if (typeErrors.size === 0 && !/\(exit 0\)\s*$/.test(tsc)) throw new Error(`tsc failed:\n${tsc}`);

      // What examples fetch or build on first use, done here once: the bounds are for the
      // examples, and the sandbox has no network.
      if (examples.some((e) => e.needs === "linux" || e.code.includes("buildGuestKit(")))
        await buildGuestKit();
      if (examples.some((e) => e.code.includes("runInSandbox("))) prepareSandboxImage();

      if (here.length > 0) {
        const out = await runNode(
          [driver, writeManifest("here.json", here)],
          here.reduce((s, e) => s + TIMEOUT_MS[e.needs], 30_000),
        );
        log += out;
        for (const r of parseJsonLines<Result>(out, "@@RESULT")) results.set(r.name, r);
      }
      if (onTarget.length > 0) {
        console.log(
          `README examples on ${target.kind} — ${target.reason}: ${onTarget.map((e) => e.name).join(", ")}`,
        );
        const run = await runOnTarget<Result>(driver, [writeManifest("target.json", onTarget)], {
          timeoutMs: targetTimeoutMs,
        });
        log += run.log;
        for (const r of run.results) results.set(r.name, r);
      }
      for (const r of results.values())
        console.log(
          `${r.name}: ${r.ok ? "ok" : "FAILED"} in ${r.ms} ms${r.firstAttempt ? " (RETRIED)" : ""}`,
        );
    },
    runOnTargetBudgetMs(targetTimeoutMs) + 5 * 60_000,
  );

  it("follow the convention: `ts` blocks are programs, needs= is kvm or linux, other TypeScript is `ts fragment`", () => {
    expect(problems).toEqual([]);
    if (!only) expect(examples.length).toBeGreaterThan(10);
  });

  for (const e of examples) {
    it(`${e.readme.slice(root.length)}:${e.line} type-checks and runs${e.needs === "none" ? "" : ` (needs=${e.needs}, ${whereLabel(e)})`}`, () => {
      expect(typeErrors.get(e.name) ?? [], "type errors").toEqual([]);
      const r = results.get(e.name);
      expect(r, `no result; output:\n${log.slice(-3000)}`).toBeDefined();
      const why = r!.timedOut
        ? `timed out after ${TIMEOUT_MS[e.needs]} ms`
        : `exit ${r!.status ?? r!.signal}`;
      expect(r!.ok, `${why}; output:\n${r!.output}`).toBe(true);
    });
  }
});
