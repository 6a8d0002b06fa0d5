import { readFileSync } from "node:fs";
import { constants } from "node:os";
import {
  AccelerationError,
  createMachine,
  type Machine,
  type MachineExit,
  parseBzImage,
} from "@tskvm/machine-x86";
import { virtioBlkPciDevice } from "@tskvm/virtio-blk";
import { VirtioConsolePci } from "@tskvm/virtio-console";
import { virtioRngPciDevice } from "@tskvm/virtio-rng";
import { SharedDeviceWorker } from "@tskvm/virtio-worker";
import {
  type Command,
  CommandError,
  ExitCode,
  errorText,
  type Io,
  type OptionSpecs,
  parseCommandArgs,
  UsageError,
} from "../command.js";
import { parseConsoleKind, terminalSize } from "../console.js";
import { MachineControlTarget } from "../control/machine-target.js";
import { checkVmName, generateVmName } from "../control/paths.js";
import { ControlServer } from "../control/server.js";
import { checkDisks, type DiskSpec, diskDeviceOptions, parseDiskSpec } from "../disk.js";
import { exitCodesHelp } from "../exit-codes.js";
import { buildGuestKitWithProgress } from "../progress.js";
import { parseSize } from "../size.js";
import { ConsoleTerminal } from "../terminal.js";

export const RUN_HELP = `Usage: tskvm run [OPTIONS] [KERNEL]

Boots a Linux guest with its console on this terminal. Without a kernel it
boots the default guest (see 'tskvm guest build'): a Debian kernel and a busybox
initramfs that gives a shell, or runs the command given with
-p 'tskvm.cmd="COMMAND"' and powers off.

Options (as kvmtool's lkvm run; the kernel may also come last, as there):
  -k, --kernel FILE   the kernel, a bzImage (default: the default guest's)
  -i, --initrd FILE   an initramfs (default: the default guest's, if no kernel)
  -p, --params STR    kernel parameters, appended to the defaults
                      (console=ttyS0 reboot=k panic=1 pci=conf1 acpi=off ...)
  -m, --mem SIZE      guest RAM: MiB, or with a K, M, G or T suffix (powers of
                      1024): 512, 1.5G (default 256)
  -c, --cpus N        number of vCPUs (default 1)
  -d, --disk SPEC     a virtio-blk disk; repeat for more (/dev/vda, vdb, ...).
                      SPEC is PATH[,ro][,snapshot][,direct][,format=raw|qcow2]
                      [,serial=ID][,thread=own|shared][,aio=io_uring|sync]
                      [,poll=US]:
                      a raw or qcow2 image (probed unless format= is given);
                      ro: read-only; snapshot: writes go to a temporary
                      overlay and the image is left untouched; direct:
                      O_DIRECT (raw images); thread: its own worker (default)
                      or the thread shared with the console and rng; aio:
                      requests handed to the kernel in batches and completed
                      as they finish (io_uring: the default for raw images
                      with direct) or one after another (sync: the default
                      through the page cache);
                      poll: after serving requests its worker watches the
                      ring for up to US µs before sleeping, a window that
                      adapts to the guest (default 100; 0: off)
                      Also [,queues=N][,iops=N[:BURST]][,bw=SIZE[:BURST]]
                      [,ioprio=CLASS[:LEVEL]][,nice=N]: queues: virtqueues
                      (multiqueue), 1 to 16 (default 1); iops, bw: token
                      bucket limits, requests or bytes (K, M, G) a second,
                      BURST at once after an idle spell (default one
                      second's worth), requests wait, never fail; ioprio
                      (rt:0-7, be:0-7, idle) and nice (-20 to 19) of the
                      disk's worker thread; 'tskvm set' changes them later
      --snapshot      every disk as ,snapshot
      --rng           a virtio-rng device (/dev/hwrng) fed by the host's CSPRNG
      --console TYPE  serial (default) or virtio: the terminal is the guest's
                      hvc0, a virtio console (console=hvc0 is added after
                      console=ttyS0; the serial port still shows early boot)
      --name NAME     the VM's name for 'tskvm list/stat/stop/...': 1 to 64
                      letters, digits, '.', '_', '-' (default: vm-XXXX,
                      printed on start); its control socket is
                      $XDG_RUNTIME_DIR/tskvm/NAME.sock (or ~/.tskvm/)
  -h, --help          show this help

Console: the terminal is in raw mode while the guest runs, so Ctrl-C goes to
the guest. Press Ctrl-A then x to quit; Ctrl-A Ctrl-A sends a Ctrl-A.
Standard input and output may be pipes too (no raw mode, no escape key).

${exitCodesHelp()}
On a VMM error the VM is stopped, its disks flushed and closed and the terminal
restored before tskvm exits 1. A stop that takes longer than 4 s, or a second
signal while stopping, ends tskvm at once: the terminal is restored and it dies
of that signal.
`;

const MIB = 1024 * 1024;

/** `--name NAME`: a valid VM name, or a usage error. */
export function vmNameArg(name: string): string {
  try {
    return checkVmName(name);
  } catch (e) {
    throw new UsageError(`--name: ${(e as Error).message}`);
  }
}

function positiveInt(name: string, v: string | undefined, def: number, max: number): number {
  if (v === undefined) return def;
  if (!/^\d+$/.test(v))
    throw new UsageError(`${name} must be a whole number, e.g. ${name.split("/")[0]} 2, not '${v}'`);
  const n = Number(v);
  if (n < 1 || n > max) throw new UsageError(`${name} must be from 1 to ${max}, not ${n}`);
  return n;
}

/** `-m` as lkvm reads it: MiB, or a size with a suffix; whole MiB, 32 MiB to 1 TiB. */
function memMiB(v: string | undefined): number {
  if (v === undefined) return 256;
  const bytes = parseSize(v, { name: "-m/--mem", unit: "M", example: "-m 512 or -m 1.5G" });
  if (bytes % MIB !== 0) throw new UsageError(`-m/--mem must be a whole number of MiB, not '${v}'`);
  const n = bytes / MIB;
  if (n < 32 || n > 1024 * 1024) throw new UsageError(`-m/--mem must be from 32M to 1T, not '${v}'`);
  return n;
}

function readInput(what: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why =
      code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : (e as Error).message;
    throw new CommandError(`cannot read the ${what} ${path}: ${why}`);
  }
}

/** Maps how the machine ended to the documented exit code. */
export function exitCodeFor(exit: MachineExit, signal?: NodeJS.Signals): number {
  if (signal) return 128 + (constants.signals[signal] ?? 0);
  switch (exit.reason) {
    case "poweroff":
    case "reboot":
      return ExitCode.ok;
    case "crash":
    case "triple-fault":
      return ExitCode.guestCrash;
    case "stopped":
      return ExitCode.sigint;
    default:
      return ExitCode.error;
  }
}

const DESCRIBE: Record<MachineExit["reason"], string> = {
  poweroff: "the guest powered off",
  reboot: "the guest rebooted",
  "triple-fault": "the guest crashed (triple fault)",
  crash: "the guest crashed",
  stopped: "stopped",
  error: "VMM error",
};

/**
 * How long the orderly stop (vCPUs out, disks flushed and closed) may take after a
 * signal or a VMM error before the process exits hard.
 */
export const STOP_GRACE_MS = 4000;

const SIGNALS: readonly NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP"];

/** How `tskvm run` names itself in its errors. */
const ME = "tskvm run";

const errorMessage = (e: unknown): string => (e instanceof Error ? e.message : String(e));

async function runMachine(
  m: Machine,
  io: Io,
  hvc: VirtioConsolePci | undefined,
  control: { target: MachineControlTarget; server: ControlServer | undefined },
): Promise<number> {
  const term = new ConsoleTerminal(process.stdin);
  let signal: NodeJS.Signals | undefined;
  let failed = false;
  let hardExitTimer: NodeJS.Timeout | undefined;
  const restore = () => term.restore();
  // The virtio console's size follows the terminal's (stdout's 'resize' comes from SIGWINCH).
  const onResize = () => {
    const { cols, rows } = terminalSize(process.stdout);
    hvc?.link.resize(cols, rows);
  };

  // The last resort when the orderly stop does not end in time, or a second signal
  // insists: terminal restored, signals back to their default action (so nothing can
  // keep this process alive any more), then gone — by the signal itself if one asked.
  const hardExit = (by: NodeJS.Signals | undefined, why: string): never => {
    restore();
    removeHandlers();
    io.stderr(`${ME}: error: ${why}: exiting without a clean stop (disks may not be flushed)\n`);
    if (by) process.kill(process.pid, by);
    // Still here (someone else handles that signal): exit; Node waits for worker
    // threads then, so first get the vCPUs out of KVM_RUN.
    m.emergencyStop();
    process.exit(by ? 128 + (constants.signals[by] ?? 0) : ExitCode.error);
  };
  const stopWithin = (ms: number) => {
    restore();
    void m.stop();
    hardExitTimer ??= setTimeout(() => hardExit(signal, `the VM did not stop within ${ms / 1000} s`), ms);
  };
  const onSignal = (s: NodeJS.Signals) => {
    if (signal || failed) hardExit(s, `${s} while stopping`);
    signal = s;
    stopWithin(STOP_GRACE_MS);
  };
  // An exception or rejection nobody caught, anywhere in the VMM: the VM cannot be
  // trusted to go on, but its disks still get flushed and closed and the terminal back.
  const onFatal = (e: unknown) => {
    if (failed) {
      io.stderr(errorText(ME, new Error(`another VMM error while stopping: ${errorMessage(e)}`)));
      return;
    }
    failed = true;
    restore();
    io.stderr(`\n${errorText(ME, e)}`);
    stopWithin(STOP_GRACE_MS);
  };
  const removeHandlers = () => {
    for (const s of SIGNALS) process.off(s, onSignal);
    process.off("uncaughtException", onFatal);
    process.off("unhandledRejection", onFatal);
    process.off("exit", restore);
    process.stdout.off("resize", onResize);
  };
  for (const s of SIGNALS) process.on(s, onSignal);
  process.on("uncaughtException", onFatal);
  process.on("unhandledRejection", onFatal);
  process.on("exit", restore);
  if (hvc) process.stdout.on("resize", onResize);
  try {
    m.console.output.on("data", (b: Buffer) => process.stdout.write(b));
    // A device that cannot start (e.g. a disk's worker) fails here: the dispatcher reports it.
    await m.start();
    const onQuit = () => {
      if (signal || failed) return;
      signal = "SIGINT";
      stopWithin(STOP_GRACE_MS);
    };
    // The virtio console's worker reads and writes the terminal itself (and sees Ctrl-A x);
    // the serial console's input goes through this thread.
    if (!failed && !signal) {
      if (hvc) {
        term.rawOnly();
        hvc.watchQuit(onQuit);
      } else term.attach(m.console.input, onQuit);
    }
    const exit = await m.exited;
    restore();
    if (failed) {
      io.stderr(`${ME}: the VM was stopped after the error above\n`);
      return ExitCode.error;
    }
    const detail = exit.detail ? `: ${exit.detail}` : "";
    // `tskvm stop NAME`: asked for, so a success whether the guest powered off or was forced.
    const byControl = !signal && control.target.stopRequested;
    io.stderr(
      `\ntskvm: ${signal ? `stopped by ${signal === "SIGINT" && !detail ? "Ctrl-A x / SIGINT" : signal}` : byControl ? "stopped by 'tskvm stop'" : DESCRIBE[exit.reason]}${detail}\n`,
    );
    return byControl && exit.reason === "stopped" ? ExitCode.ok : exitCodeFor(exit, signal);
  } finally {
    if (hardExitTimer) clearTimeout(hardExitTimer);
    restore();
    removeHandlers();
    hvc?.stop();
    // After the machine ended, so the `stop` that ended it still gets its answer.
    await control.server?.close();
  }
}

const RUN_OPTIONS = {
  kernel: { type: "string", short: "k" },
  initrd: { type: "string", short: "i" },
  params: { type: "string", short: "p" },
  mem: { type: "string", short: "m" },
  cpus: { type: "string", short: "c" },
  disk: { type: "string", short: "d", multiple: true },
  snapshot: { type: "boolean" },
  rng: { type: "boolean" },
  console: { type: "string" },
  name: { type: "string" },
} as const satisfies OptionSpecs;

export const run: Command = {
  kind: "command",
  summary: "boot a Linux guest (the default guest unless a kernel is given)",
  help: RUN_HELP,
  options: RUN_OPTIONS,
  async run(args, io) {
    const { values, positionals } = parseCommandArgs(args, RUN_OPTIONS, 1);
    if (values.kernel !== undefined && positionals[0] !== undefined)
      throw new UsageError(
        `the kernel is given twice ('${values.kernel}' and '${positionals[0]}'): use -k/--kernel or the KERNEL argument`,
      );
    const consoleKind = parseConsoleKind(values.console);
    const givenName = values.name === undefined ? undefined : vmNameArg(values.name);
    const disks = (values.disk ?? []).map(parseDiskSpec);
    if (values.snapshot) for (const d of disks) d.snapshot = true;
    const mem = memMiB(values.mem);
    const cpus = positiveInt("-c/--cpus", values.cpus, 1, 254);
    // Every disk is checked (exists, format, locks) before the guest kit or KVM is looked at.
    for (const warning of checkDisks(disks)) io.stderr(`${ME}: warning: ${warning}\n`);
    let kernel = values.kernel ?? positionals[0];
    let initrd = values.initrd;
    if (kernel === undefined) {
      const kit = await buildGuestKitWithProgress(io);
      kernel = kit.kernel;
      initrd ??= kit.initrd;
    }
    const slowDevices = new SharedDeviceWorker({ name: "tskvm-slow-devices" });
    const hvc =
      consoleKind === "virtio"
        ? new VirtioConsolePci({
            thread: slowDevices,
            size: terminalSize(process.stdout),
            // Its worker reads stdin and writes stdout itself; Ctrl-A x only from a terminal.
            terminal: { inFd: 0, outFd: 1, escape: process.stdin.isTTY === true },
          })
        : undefined;
    // The last console= is /dev/console: hvc0 after the default console=ttyS0.
    const cmdline = [hvc ? "console=hvc0" : undefined, values.params]
      .filter((p) => p !== undefined)
      .join(" ");
    // Check the files first: a bad kernel is reported as such, whatever the host's KVM.
    parseBzImage(readInput("kernel", kernel));
    if (initrd !== undefined) readInput("initrd", initrd);
    // Then the control socket: a name another VM has is refused before anything boots.
    const control = await listenForControl(givenName, disks, io);
    let machine: Machine;
    try {
      machine = createMachine({
        kernel,
        ...(initrd !== undefined ? { initrd } : {}),
        ...(cmdline !== "" ? { cmdline } : {}),
        memMiB: mem,
        cpus,
        // Each disk on a worker of its own (unless thread=shared); the rng and the console on
        // the thread shared by slow devices.
        devices: [
          ...disks.map((d, i) => virtioBlkPciDevice(diskDeviceOptions(d, slowDevices, i))),
          ...(values.rng ? [virtioRngPciDevice({ thread: slowDevices })] : []),
          ...(hvc ? [hvc.device] : []),
        ],
      });
    } catch (e) {
      await control.server?.close();
      if (e instanceof AccelerationError)
        throw new CommandError(e.message, {
          hint: "the project's tests boot Linux inside a nested-KVM sandbox on such machines (see the README).",
        });
      throw e;
    }
    control.target.attach(machine);
    return runMachine(machine, io, hvc, control);
  },
};

/**
 * The VM's control socket (`tskvm list/stat/pause/resume/stop/set NAME`). With --name, a
 * socket that cannot be made is an error; with the generated name only a warning — the VM
 * still runs, just without the socket.
 */
async function listenForControl(
  givenName: string | undefined,
  disks: readonly DiskSpec[],
  io: Io,
): Promise<{ target: MachineControlTarget; server: ControlServer | undefined }> {
  let name = givenName;
  try {
    name ??= generateVmName();
    const target = new MachineControlTarget(name, disks);
    const server = await ControlServer.listen(name, target);
    io.stderr(`tskvm: VM ${name} (tskvm stat|pause|resume|stop ${name})\n`);
    return { target, server };
  } catch (e) {
    if (givenName !== undefined) throw new CommandError(errorMessage(e));
    io.stderr(`${ME}: warning: no control socket: ${errorMessage(e)}\n`);
    return { target: new MachineControlTarget(name ?? "-", disks), server: undefined };
  }
}
