import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

/**
 * The worker tests start @tskvm/virtio-worker's dist/worker.js, which loads this
 * package's dist/entry.js: both dists must match their src/.
 */
export default function setup(): void {
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  for (const cwd of [join(root, "../virtio-worker"), root]) {
    const r = spawnSync(process.execPath, [tsc, "-p", "tsconfig.json"], {
      cwd,
      stdio: ["ignore", "inherit", "inherit"],
    });
    if (r.status !== 0) throw new Error(`tsc -p tsconfig.json in ${cwd} failed (${r.status})`);
  }
}
