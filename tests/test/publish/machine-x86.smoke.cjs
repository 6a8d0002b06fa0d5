// @tskvm/machine-x86: the kernel command line builder works.
const assert = require("node:assert/strict");

module.exports = async function smoke(load) {
  const { buildCmdline, DEFAULT_CMDLINE } = load["@tskvm/machine-x86"];
  assert.equal(buildCmdline("quiet"), `${DEFAULT_CMDLINE} quiet`);
  return "buildCmdline works";
};
