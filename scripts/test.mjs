// `pnpm test`: builds, runs every package's tests one package at a time (KVM and
// sandbox tests want the machine to themselves), then prints one closing line
// `Tests: N passed, N failed` summed over all packages' vitest JSON reports.
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";

const root = new URL("..", import.meta.url).pathname;
const dirs = ["packages", "tests"].flatMap((d) =>
  d === "tests" ? [join(root, "tests")] : readdirSync(join(root, d)).map((p) => join(root, d, p)),
);
const reports = dirs.map((d) => join(d, "test-results.json"));
for (const r of reports) rmSync(r, { force: true });

const filter = process.argv.slice(2);
const turbo = spawnSync(
  "pnpm",
  ["exec", "turbo", "run", "test", "--concurrency=1", "--continue", ...filter],
  {
    stdio: "inherit",
    cwd: root,
  },
);

let passed = 0;
let failed = 0;
let skipped = 0;
const missing = [];
for (const [i, r] of reports.entries()) {
  if (!existsSync(r)) {
    // A package whose tests never wrote their report (killed, crashed before the end) has
    // not passed: with every package run, that fails the whole run, whatever turbo says.
    const manifest = join(dirs[i], "package.json");
    const hasTests = existsSync(manifest) && JSON.parse(readFileSync(manifest, "utf8")).scripts?.test;
    if (hasTests && filter.length === 0) missing.push(dirs[i].slice(root.length));
    continue;
  }
  const j = JSON.parse(readFileSync(r, "utf8"));
  passed += j.numPassedTests ?? 0;
  failed += j.numFailedTests ?? 0;
  skipped += (j.numPendingTests ?? 0) + (j.numTodoTests ?? 0);
}
console.log(`\nTests: ${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ""}`);
if (missing.length) console.log(`No test report from: ${missing.join(", ")} (their tests did not finish)`);
process.exit(missing.length ? 1 : (turbo.status ?? 1));
