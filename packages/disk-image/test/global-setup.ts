import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

function run(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { cwd: root, stdio: ["ignore", "inherit", "inherit"] });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.status})`);
}

/** Child processes in the tests import dist/, so it must match src/. */
export default function setup(): void {
  if (!existsSync(join(root, "build", "Release", "disk_image_native.node")))
    run(process.execPath, ["scripts/build-native.mjs", "configure", "build"]);
  run(process.execPath, [
    createRequire(import.meta.url).resolve("typescript/bin/tsc"),
    "-p",
    "tsconfig.json",
  ]);
}
