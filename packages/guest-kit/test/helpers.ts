import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, expect } from "vitest";
import { INIT_SCRIPT_PATH } from "../src/index.js";

const dir = mkdtempSync(join(tmpdir(), "tskvm-init-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
/**
 * Runs the real /init with the host's sh (not as PID 1, so it only parses the command line
 * from $TSKVM_CMDLINE_FILE and prints the command it would run).
 */
export function parseWithInit(
  cmdline: string,
  shell: string[] = ["sh"],
  script: string = INIT_SCRIPT_PATH,
  env: Record<string, string> = {},
): { status: number; command: string } {
  const file = join(dir, `cmdline-${n++}`);
  writeFileSync(file, `${cmdline}\n`); // /proc/cmdline ends with a newline
  const r = spawnSync(shell[0]!, [...shell.slice(1), script], {
    env: { ...process.env, ...env, TSKVM_CMDLINE_FILE: file },
    encoding: "utf8",
  });
  if (r.error) throw r.error;
  expect(r.stderr).toBe("");
  return { status: r.status ?? -1, command: r.stdout.replace(/\n$/, "") };
}

/** Command-line cases shared with the busybox run in build.test.ts: [cmdline, status, command]. */
export const CMDLINE_CASES: Array<[string, number, string]> = [
  ['console=ttyS0 tskvm.cmd="uname -a; ls /dev/vd*" quiet', 0, "uname -a; ls /dev/vd*"],
  ["tskvm.cmd=true", 0, "true"],
  ["root=/dev/vda tskvm.cmd=echo\tpanic=-1", 0, "echo"],
  ['"tskvm.cmd=echo whole quoted" ro', 0, "echo whole quoted"],
  ["tskvm.cmd=\"echo 'single quotes' a=b\"", 0, "echo 'single quotes' a=b"],
  ['tskvm.cmd="first" tskvm.cmd="second wins"', 0, "second wins"],
  ['tskvm.cmd=""', 0, ""],
  ['tskvm.cmdx="not it" xtskvm.cmd=no', 1, ""],
  ['init=/init -- tskvm.cmd="after -- is for init"', 1, ""],
  ["console=ttyS0", 1, ""],
  ["", 1, ""],
  [
    `tskvm.cmd64=${Buffer.from('echo "hi there"\nexit 3').toString("base64")} tskvm.cmd=ignored`,
    0,
    'echo "hi there"\nexit 3',
  ],
  ["tskvm.cmd64=!!notbase64!!", 2, ""],
];
