// @tskvm/guest-kit: a cpio archive written and read back.
const assert = require("node:assert/strict");

module.exports = async function smoke(load) {
  const { readCpioNewc, writeCpioNewc } = load["@tskvm/guest-kit"];
  const archive = writeCpioNewc([
    { type: "directory", path: "etc" },
    { type: "file", path: "etc/hostname", data: Buffer.from("tskvm\n") },
  ]);
  const members = readCpioNewc(archive);
  assert.deepEqual(
    members.map((m) => [m.path, m.data.toString()]),
    [
      ["etc", ""],
      ["etc/hostname", "tskvm\n"],
    ],
  );
  return "a cpio archive round trip";
};
