// `./dev.sh run` on a machine whose KVM cannot boot Linux (absent, or a PVM
// backend that emulates guest code): runs `tskvm run ARGS` inside the nested-KVM
// sandbox instead, streaming its console. There is no terminal in there, so
// without -p it runs a short demo command in the guest and powers off.
import { fileURLToPath } from "node:url";
import { runInSandbox } from "@tskvm/sandbox";

const root = fileURLToPath(new URL("..", import.meta.url));
const args = process.argv.slice(2);
const quote = (s) => `'${s.replaceAll("'", `'\\''`)}'`;
if (!args.some((a) => a === "-p" || a.startsWith("--params"))) {
  const demo =
    "echo; echo Hello from a Linux guest of tskvm; uname -a; echo cpus: $(nproc); head -1 /proc/meminfo";
  args.push("-p", `tskvm.cmd64=${Buffer.from(demo).toString("base64")}`);
}
const cmd = ["node", `${root}packages/cli/dist/main.js`, "run", ...args].map(quote).join(" ");
process.stderr.write(`dev.sh: running in the sandbox: tskvm run ${args.join(" ")}\n`);
const r = await runInSandbox(cmd, {
  cwd: root,
  timeoutMs: 15 * 60_000,
  onOutput: (c) => process.stdout.write(c),
});
process.stderr.write(
  `dev.sh: sandbox ${r.timedOut ? "timed out" : `exited with ${r.exitCode}`} (boot ${r.bootMs} ms, run ${r.runMs} ms)\n`,
);
process.exit(r.timedOut ? 1 : r.exitCode);
