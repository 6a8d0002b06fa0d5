import { fileURLToPath } from "node:url";
import { buildGuestKit } from "@tskvm/guest-kit";
import { e2eTarget, runOnTarget } from "../dist/index.js";
import { kvmtool, median } from "./tools.mjs";

const runs = Number(process.env.TSKVM_BENCH_RUNS ?? 3);
const target = e2eTarget();
const kit = await buildGuestKit();
const script = fileURLToPath(new URL("./boot-in-guest.mjs", import.meta.url));
const peer = kvmtool();
if (peer.missing) console.error(`kvmtool: ${peer.missing}`);
const { results: rows } = await runOnTarget(
  script,
  [kit.kernel, kit.initrd, String(runs), peer.lkvm ?? "-"],
  {
    timeoutMs: 30 * 60_000,
  },
);
console.log(`\nboot to init (${target.kind}: ${target.reason})`);
console.log(`default guest kit, 1 vCPU, 256 MiB, median of ${runs}\n`);
console.log("| VMM | launch → init (s) | launch → exit (s) | runs ok |");
console.log("|---|---:|---:|---:|");
for (const vmm of ["tskvm", ...(peer.lkvm ? ["kvmtool"] : []), "qemu+kvm"]) {
  const rs = rows.filter((r) => r.vmm === vmm);
  const ok = rs.filter((r) => r.code === 0 && r.initMs !== undefined).length;
  console.log(
    `| ${vmm} | ${(median(rs.map((r) => r.initMs)) / 1000).toFixed(1)} | ${(median(rs.map((r) => r.totalMs)) / 1000).toFixed(1)} | ${ok}/${rs.length} |`,
  );
}
