import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

/**
 * The worker tests start dist/worker.js (and import dist/), and the README test
 * runs dist/examples/: both must match their sources.
 */
export default function setup(): void {
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  for (const project of ["tsconfig.json", "tsconfig.examples.json"]) {
    const r = spawnSync(process.execPath, [tsc, "-p", project], {
      cwd: root,
      stdio: ["ignore", "inherit", "inherit"],
    });
    if (r.status !== 0) throw new Error(`tsc -p ${project} failed (${r.status})`);
  }
}
