// `pnpm bench` (tests): boot-to-init time of `tskvm run` beside QEMU with KVM, same
// kernel and initrd, in the same run — in the sandbox when this host's KVM cannot
// boot Linux. Prints a table.
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { buildGuestKit } from "@tskvm/guest-kit";
import { parseJsonLines, runInSandbox } from "@tskvm/sandbox";
import { e2eTarget } from "../dist/index.js";

const runs = Number(process.env.TSKVM_BENCH_RUNS ?? 3);
const target = e2eTarget();
const kit = await buildGuestKit();
const script = fileURLToPath(new URL("./boot-in-guest.mjs", import.meta.url));
let out;
if (target.kind === "host") {
  out = spawnSync(process.execPath, [script, kit.kernel, kit.initrd, String(runs)], {
    encoding: "utf8",
  }).stdout;
} else {
  out = (await runInSandbox(`node ${script} ${kit.kernel} ${kit.initrd} ${runs}`, { timeoutMs: 30 * 60_000 }))
    .output;
}
const rows = parseJsonLines(out, "@@RESULT");
const med = (xs) => {
  const s = xs.filter((x) => typeof x === "number").sort((a, b) => a - b);
  return s.length ? s[Math.floor(s.length / 2)] : NaN;
};
console.log(`\nboot to init (${target.kind}: ${target.reason})`);
console.log(`default guest kit, 1 vCPU, 256 MiB, median of ${runs}\n`);
console.log("| VMM | launch → init (s) | launch → exit (s) | runs ok |");
console.log("|---|---:|---:|---:|");
for (const vmm of ["tskvm", "qemu+kvm"]) {
  const rs = rows.filter((r) => r.vmm === vmm);
  const ok = rs.filter((r) => r.code === 0 && r.initMs !== undefined).length;
  console.log(
    `| ${vmm} | ${(med(rs.map((r) => r.initMs)) / 1000).toFixed(1)} | ${(med(rs.map((r) => r.totalMs)) / 1000).toFixed(1)} | ${ok}/${rs.length} |`,
  );
}
