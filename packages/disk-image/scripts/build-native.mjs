// Builds the addon with node-gyp against the headers of the running Node when
// they are installed beside it (no network needed), else lets node-gyp fetch them.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

const require = createRequire(import.meta.url);
const prefix = dirname(dirname(process.execPath));
const args = [require.resolve("node-gyp/bin/node-gyp.js"), ...process.argv.slice(2), "-j", "2"];
if (existsSync(join(prefix, "include", "node", "node.h"))) args.push(`--nodedir=${prefix}`);
const r = spawnSync(process.execPath, args, { stdio: ["ignore", "ignore", "inherit"] });
process.exit(r.status ?? 1);
