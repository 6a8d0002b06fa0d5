// The verbs that talk to running VMs over their control sockets: list, stat, pause,
// resume, stop, set. Each is a thin layer over ControlClient (the same API from Node).
import { setTimeout as sleep } from "node:timers/promises";
import type { DeviceTuning, MachineStats } from "@tskvm/machine-x86";
import {
  type Command,
  CommandError,
  ExitCode,
  type Io,
  type OptionSpecs,
  parseCommandArgs,
  UsageError,
} from "../command.js";
import { ControlClient, listVms } from "../control/client.js";
import { checkVmName, controlDir } from "../control/paths.js";
import { ControlError, MAX_STOP_TIMEOUT_MS, type VmInfo } from "../control/protocol.js";
import { duration, formatStat, statRates, table } from "../control/stat-view.js";
import { exitCodesHelp } from "../exit-codes.js";
import { formatSize } from "../size.js";
import { formatTuning, isTuningKey, parseTuningOption, TUNING_KEYS, TUNING_SYNTAX } from "../tuning.js";

const EXITS = exitCodesHelp(["ok", "error", "usage"]);

const SOCKETS = `The VMs are found by their control sockets in ${"$"}XDG_RUNTIME_DIR/tskvm/ (or
~/.tskvm/ where XDG_RUNTIME_DIR is unset): only their owner may connect.`;

/** The NAME argument: required, a valid VM name. */
function vmName(positionals: string[], usage: string): string {
  const name = positionals[0];
  if (name === undefined) throw new UsageError(`NAME is required: ${usage}`);
  try {
    return checkVmName(name);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

/** A control-plane failure in the CLI's words (exit 1), with a hint where one helps. */
function commandError(e: unknown): unknown {
  if (!(e instanceof ControlError)) return e;
  const hint =
    e.code === "no-such-vm"
      ? "'tskvm list' shows the running VMs."
      : e.code === "unknown-device"
        ? "'tskvm stat NAME' shows the devices (disks are disk0, disk1, ... in -d order)."
        : undefined;
  return new CommandError(e.message, hint ? { hint } : {});
}

async function withClient<T>(
  name: string,
  fn: (c: ControlClient) => Promise<T>,
  timeoutMs?: number,
): Promise<T> {
  let c: ControlClient | undefined;
  try {
    c = await ControlClient.connect(name, timeoutMs !== undefined ? { timeoutMs } : {});
    return await fn(c);
  } catch (e) {
    throw commandError(e);
  } finally {
    c?.close();
  }
}

const LIST_OPTIONS = { json: { type: "boolean" } } as const satisfies OptionSpecs;

function memory(mib: number): string {
  return formatSize(mib * 2 ** 20);
}

export function formatList(vms: readonly VmInfo[]): string {
  return table(
    ["NAME", "PID", "STATE", "CPUS", "MEMORY", "DISKS", "UPTIME"],
    vms.map((v) => [
      v.name,
      String(v.pid),
      v.state,
      String(v.cpus),
      memory(v.memMiB),
      v.disks.length === 0
        ? "-"
        : v.disks.map((d) => `${d.id}=${d.path}${d.readOnly ? ",ro" : ""}`).join(" "),
      duration(v.uptimeMs),
    ]),
  );
}

export const list: Command = {
  kind: "command",
  summary: "list the running VMs (name, pid, state, vCPUs, memory, disks, uptime)",
  help: `Usage: tskvm list [--json]

Lists this user's running VMs: name, pid, state, vCPUs, memory, disks (id=path)
and uptime. Sockets left by VMs that were killed are removed on the way.
${SOCKETS}

Options:
  --json      print a JSON array of the VMs' info (as the control socket's
              'info' answers it: name, pid, state, cpus, memMiB, disks,
              devices, startedAt, uptimeMs)
  -h, --help  show this help

${EXITS}`,
  options: LIST_OPTIONS,
  async run(args, io) {
    const { values } = parseCommandArgs(args, LIST_OPTIONS);
    const vms = await listVms();
    if (values.json) io.stdout(`${JSON.stringify(vms)}\n`);
    else if (vms.length === 0) io.stderr(`tskvm: no VM is running (sockets in ${controlDir()})\n`);
    else io.stdout(formatList(vms));
    return ExitCode.ok;
  },
};

const STAT_OPTIONS = {
  json: { type: "boolean" },
  watch: { type: "boolean", short: "w" },
  interval: { type: "string", short: "n" },
  count: { type: "string" },
} as const satisfies OptionSpecs;

/** Seconds from the command line (`--interval 0.5`), as ms within [min, max] s. */
function seconds(name: string, v: string | undefined, def: number, min: number, max: number): number {
  if (v === undefined) return def * 1000;
  if (!/^\d+(\.\d+)?$/.test(v) || Number(v) < min || Number(v) > max)
    throw new UsageError(`${name} must be a number of seconds from ${min} to ${max}, not '${v}'`);
  return Math.round(Number(v) * 1000);
}

/** Waits for Ctrl-C or q (on a terminal) / SIGINT, SIGTERM; `stop()` to release. */
function quitSignal(io: Io): { signal: AbortSignal; stop(): void } {
  const ac = new AbortController();
  const onSignal = () => ac.abort();
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  const stdin = process.stdin;
  const keys = io.stdoutTerminal !== undefined && stdin.isTTY === true;
  const onKey = (b: Buffer) => {
    if (b.includes(0x71) || b.includes(0x51) || b.includes(0x03)) ac.abort(); // q, Q, Ctrl-C
  };
  if (keys) {
    stdin.setRawMode(true);
    stdin.on("data", onKey);
    stdin.resume();
  }
  return {
    signal: ac.signal,
    stop() {
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
      if (keys) {
        stdin.off("data", onKey);
        stdin.setRawMode(false);
        stdin.pause();
      }
    },
  };
}

export const stat: Command = {
  kind: "command",
  summary: "a running VM's counters: vCPU exits, disk IOPS and MiB/s, latency, threads",
  help: `Usage: tskvm stat NAME [--json] [--watch] [--interval S] [--count N]

Shows what VM NAME is doing over an interval (two snapshots --interval apart):
  per vCPU:   exits a second, in total and by reason (the most frequent
              ones), and the share of the time it was halted (waiting for an
              interrupt; from KVM's halt_wait_ns where the kernel has it)
  per disk:   IOPS (all, reads, writes), MiB/s read and written, requests in
              flight now, latency p50/p99 (ring to used ring, the interval's
              requests; to within 19%), error answers in the interval (and
              since the start), its worker thread's CPU (% of one core)
  per device thread: the devices it serves, CPU, wake-ups a second, time
              requests waited for a rate limit, and whether it holds (paused)
${SOCKETS}

Options:
  --json              print {"name", "intervalMs", "rates", "stats"}: the rates
                      above and the VM's raw counters (MachineStats); with
                      --watch one such line per interval
  -w, --watch         redraw every interval like top until Ctrl-C or q (not on
                      a terminal: one block per interval)
  -n, --interval S    seconds between snapshots, 0.1 to 3600 (default 1)
      --count N       with --watch: stop after N updates
  -h, --help          show this help

${EXITS}`,
  options: STAT_OPTIONS,
  async run(args, io) {
    const { values, positionals } = parseCommandArgs(args, STAT_OPTIONS, 1);
    const name = vmName(positionals, "tskvm stat NAME");
    const intervalMs = seconds("--interval", values.interval, 1, 0.1, 3600);
    let count: number | undefined;
    if (values.count !== undefined) {
      if (!values.watch) throw new UsageError("--count goes with --watch");
      if (!/^\d{1,9}$/.test(values.count) || Number(values.count) < 1)
        throw new UsageError(`--count must be a whole number from 1, not '${values.count}'`);
      count = Number(values.count);
    }
    const show = (before: MachineStats, after: MachineStats, ms: number) => {
      const rates = statRates(before, after, ms);
      return values.json
        ? `${JSON.stringify({ name, intervalMs: rates.intervalMs, rates, stats: after })}\n`
        : formatStat(name, after, rates);
    };
    return withClient(name, async (c) => {
      let before = await c.stats();
      let at = performance.now();
      if (!values.watch) {
        await sleep(intervalMs);
        const after = await c.stats();
        io.stdout(show(before, after, performance.now() - at));
        return ExitCode.ok;
      }
      const quit = quitSignal(io);
      const redraw = io.stdoutTerminal !== undefined && !values.json;
      try {
        for (let n = 0; count === undefined || n < count; n++) {
          try {
            await sleep(intervalMs, undefined, { signal: quit.signal });
          } catch {
            break; // Ctrl-C, q
          }
          const after = await c.stats();
          const now = performance.now();
          const text = show(before, after, now - at);
          // Home, clear, draw: one screen that changes in place, as top does.
          if (redraw) io.stdout(`\x1b[H\x1b[2J${text}`);
          else io.stdout(n === 0 || values.json ? text : `\n${text}`);
          before = after;
          at = now;
        }
      } finally {
        quit.stop();
      }
      return ExitCode.ok;
    });
  },
};

const NO_OPTIONS = {} as const satisfies OptionSpecs;

/** `tskvm pause|resume NAME`: one request, then a line saying it was done. */
function stateVerb(
  verb: "pause" | "resume",
  summary: string,
  text: string,
  act: (c: ControlClient) => Promise<void>,
): Command {
  return {
    kind: "command",
    summary,
    help: `Usage: tskvm ${verb} NAME

${text}
${SOCKETS}

Options:
  -h, --help  show this help

${EXITS}`,
    options: NO_OPTIONS,
    async run(args, io) {
      const { positionals } = parseCommandArgs(args, NO_OPTIONS, 1);
      const name = vmName(positionals, `tskvm ${verb} NAME`);
      await withClient(name, act);
      io.stderr(`tskvm: ${name} ${verb}d\n`);
      return ExitCode.ok;
    },
  };
}

export const pause: Command = stateVerb(
  "pause",
  "pause a running VM: its vCPUs stop, its devices finish what is in flight and hold",
  `Pauses VM NAME: its vCPUs stop, and its device workers finish the requests in
flight and take no new ones. The guest's clock stops as on QEMU's 'stop' and
goes on from where it was on 'tskvm resume'. Pausing a paused VM is an error.`,
  (c) => c.pause(),
);

export const resume: Command = stateVerb(
  "resume",
  "resume a paused VM",
  `Resumes VM NAME after 'tskvm pause': its devices serve again and its vCPUs run.
Resuming a VM that is not paused is an error.`,
  (c) => c.resume(),
);

const STOP_OPTIONS = { timeout: { type: "string", short: "t" } } as const satisfies OptionSpecs;

export const stop: Command = {
  kind: "command",
  summary: "power a VM off in order (Ctrl-Alt-Del, then forced after a timeout)",
  help: `Usage: tskvm stop NAME [--timeout S]

Stops VM NAME in order: the guest is asked to power off (Ctrl-Alt-Del through
the keyboard controller, as a reset button); if it has not within the timeout,
it is stopped by force. Either way its disks are flushed and unlocked and its
'tskvm run' exits. Waits until the VM has stopped.
${SOCKETS}

Options:
  -t, --timeout S  seconds the guest has to power off, 0 to 3600 (default 10;
                   0: at once by force)
  -h, --help       show this help

${EXITS}`,
  options: STOP_OPTIONS,
  async run(args, io) {
    const { values, positionals } = parseCommandArgs(args, STOP_OPTIONS, 1);
    const name = vmName(positionals, "tskvm stop NAME");
    const timeoutMs = seconds("-t/--timeout", values.timeout, 10, 0, MAX_STOP_TIMEOUT_MS / 1000);
    const { forced } = await withClient(name, (c) => c.stop(timeoutMs));
    io.stderr(
      forced
        ? `tskvm: ${name} did not power off within ${timeoutMs / 1000} s: stopped by force\n`
        : `tskvm: ${name} powered off\n`,
    );
    return ExitCode.ok;
  },
};

const SET_OPTIONS = { json: { type: "boolean" } } as const satisfies OptionSpecs;

/** `KEY=VALUE...` of `tskvm set` → the tuning to send. */
export function parseSetArgs(pairs: readonly string[]): DeviceTuning {
  if (pairs.length === 0)
    throw new UsageError(`give at least one KEY=VALUE (keys: ${TUNING_KEYS.join(", ")}), e.g. iops=500`);
  const tuning: DeviceTuning = {};
  for (const pair of pairs) {
    const eq = pair.indexOf("=");
    const key = eq < 0 ? pair : pair.slice(0, eq);
    if (eq < 0 || !isTuningKey(key))
      throw new UsageError(
        `'${pair}' is not KEY=VALUE with a key of ${TUNING_KEYS.join(", ")} (${Object.values(TUNING_SYNTAX).join("; ")}; VALUE none removes one)`,
      );
    parseTuningOption(tuning, key, pair.slice(eq + 1), `'${pair}'`, true);
  }
  return tuning;
}

export const set: Command = {
  kind: "command",
  summary: "change a running VM's disk limits and priorities (iops, bw, ioprio, nice)",
  help: `Usage: tskvm set NAME DEVICE KEY=VALUE...

Changes the limits and priorities of device DEVICE (disk0, disk1, ... in -d
order) of VM NAME while it runs; they take effect within a second. Keys, as in
'tskvm run -d PATH,KEY=VALUE' (a key left out is unchanged; VALUE none removes
a limit or a priority, back to the default):
  iops=N[:BURST]      at most N requests a second, BURST at once after an idle
                      spell (a token bucket; default burst N); requests wait,
                      never fail
  bw=SIZE[:BURST]     at most SIZE bytes a second (K, M, G: powers of 1024),
                      e.g. bw=10M
  ioprio=CLASS[:L]    the I/O priority of the device's thread: rt, be (level L
                      0-7, highest 0, default 4) or idle
  nice=N              the nice value of the device's thread, -20 to 19
Prints the tuning now in force.
${SOCKETS}

Options:
  --json      print the tuning in force as JSON (DeviceTuning)
  -h, --help  show this help

${EXITS}`,
  options: SET_OPTIONS,
  async run(args, io) {
    const { values, positionals } = parseCommandArgs(args, SET_OPTIONS, Number.MAX_SAFE_INTEGER);
    const name = vmName(positionals, "tskvm set NAME DEVICE KEY=VALUE...");
    const device = positionals[1];
    if (device === undefined) throw new UsageError("DEVICE is required: tskvm set NAME DEVICE KEY=VALUE...");
    const tuning = parseSetArgs(positionals.slice(2));
    const now = await withClient(name, (c) => c.tune(device, tuning));
    io.stdout(values.json ? `${JSON.stringify(now)}\n` : `${device}: ${formatTuning(now) || "no limits"}\n`);
    return ExitCode.ok;
  },
};
