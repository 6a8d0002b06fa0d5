// @tskvm/cli: the entry exports main(), and the installed `tskvm --help` runs.
const assert = require("node:assert/strict");
const { execFileSync } = require("node:child_process");
const { join } = require("node:path");

module.exports = async function smoke(load) {
  const { main } = load["@tskvm/cli"];
  assert.equal(typeof main, "function");
  const help = execFileSync(join(process.cwd(), "node_modules", ".bin", "tskvm"), ["--help"], {
    encoding: "utf8",
  });
  assert.match(help, /^Usage: tskvm /m);
  return "main() is exported and `tskvm --help` runs";
};
