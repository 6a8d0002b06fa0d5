// Builds the addon with node-gyp, against the headers of the running Node when
// they are installed beside it (no network needed), else node-gyp fetches them.
//
//   node scripts/build-native.mjs prebuild   the package build: prebuildify --napi --strip writes
//                                            prebuilds/<platform>-<arch>/<name>.napi.node, one N-API
//                                            binary for every Node >= 20 (shipped in the tarball)
//   node scripts/build-native.mjs install    the install script: nothing when a binary loads (the
//                                            prebuilt one, or an earlier build), else node-gyp rebuild
//   node scripts/build-native.mjs ARGS...    node-gyp ARGS (e.g. rebuild)
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { arch, platform } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const packageRoot = join(dirname(fileURLToPath(import.meta.url)), "..");
const prefix = dirname(dirname(process.execPath));
const localHeaders = existsSync(join(prefix, "include", "node", "node.h"));

/** Runs node-gyp (directly, or through prebuildify) with the local headers and two jobs. */
function run(args) {
  const env = { npm_config_loglevel: "warn", ...process.env, JOBS: "2" };
  if (localHeaders) env.npm_config_nodedir = prefix;
  const r = spawnSync(process.execPath, args, {
    cwd: packageRoot,
    env,
    stdio: ["ignore", "ignore", "inherit"],
  });
  return r.status ?? 1;
}

const nodeGyp = () => require.resolve("node-gyp/bin/node-gyp.js");
const [command, ...rest] = process.argv.slice(2);

if (command === "prebuild") {
  const prebuildify = require.resolve("prebuildify/bin.js");
  process.exit(run([prebuildify, "--napi", "--strip", `--node-gyp=${nodeGyp()}`, ...rest]));
} else if (command === "install") {
  try {
    require("node-gyp-build")(packageRoot);
    process.exit(0);
  } catch {
    // No binary for this platform (or it does not load here): compile one.
    console.error(
      `no prebuilt binary of the addon loads on ${platform()}-${arch()}: compiling it (needs a C++ compiler, make and python3)`,
    );
    process.exit(run([nodeGyp(), "rebuild"]));
  }
} else {
  process.exit(run([nodeGyp(), ...process.argv.slice(2)]));
}
