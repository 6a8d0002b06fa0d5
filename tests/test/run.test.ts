// `tskvm run`: a stock Linux kernel (the default guest kit) boots to its init on
// the serial console with 1 and 2 vCPUs and the command exits cleanly; the terminal
// is restored on every way out; bad input gets clear errors and documented codes.
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseGuestCommandOutput } from "@tskvm/guest-kit";
import { beforeAll, describe, expect, it } from "vitest";
import { e2eTarget, runOnTarget, runOnTargetBudgetMs } from "../src/index.js";

const root = fileURLToPath(new URL("../../", import.meta.url));
const cli = join(root, "packages/cli/dist/main.js");
const script = fileURLToPath(new URL("../fixtures/run-scenarios.mjs", import.meta.url));
const target = e2eTarget();
const RUN_MS = 15 * 60_000;

type R = Record<string, unknown> & { name: string; code?: number; stdout?: string; stderr?: string };

describe("tskvm run on this host", () => {
  it(
    target.kind === "sandbox" ? "says plainly that this host's KVM cannot boot Linux" : "finds usable KVM",
    () => {
      const r = spawnSync(process.execPath, [cli, "run", "-p", 'tskvm.cmd="true"'], {
        encoding: "utf8",
        timeout: 300_000,
      });
      if (target.kind === "sandbox") {
        expect(r.status).toBe(1);
        expect(r.stderr).toMatch(/KVM|kvm/);
        expect(r.stderr).toMatch(/will not boot|not available|does not exist|may not open/);
      } else {
        expect(r.status).toBe(0);
      }
    },
  );
});

describe(`tskvm run boots Linux (${target.kind})`, () => {
  const results = new Map<string, R>();
  let log = "";
  beforeAll(async () => {
    console.log(`e2e target: ${target.kind} — ${target.reason}`);
    // ~7 min in the sandbox; the hook allows a stalled sandbox's retry and a fresh run for lost boots.
    const run = await runOnTarget<R>(script, [], { timeoutMs: RUN_MS, cwd: root });
    log = run.log;
    for (const res of run.results) results.set(res.name, res);
  }, runOnTargetBudgetMs(RUN_MS));
  const get = (name: string): R => {
    const r = results.get(name);
    expect(r, `no result for ${name}; output:\n${log.slice(-3000)}`).toBeDefined();
    if (r && "error" in r) throw new Error(String(r.error));
    return r as R;
  };

  it.each([
    ["boots the default kit with 1 vCPU and runs a command", 1],
    ["boots the default kit with 2 vCPUs; the guest sees 2 CPUs", 2],
  ])("%s", (name, cpus) => {
    const r = get(name);
    expect(r.code, `${r.stderr}\n${r.stdout}`).toBe(0);
    const out = parseGuestCommandOutput(String(r.stdout));
    expect(out, String(r.stdout)).toBeDefined();
    expect(out?.status).toBe(0);
    expect(out?.output).toContain(`CPUS=${cpus}`);
    expect(r.stderr).toMatch(/powered off/);
    console.log(`${name}: ${r.ms} ms from start to power-off`);
  });

  it("--rng: the guest's /dev/hwrng is virtio_rng and 1 MiB of it does not compress", () => {
    const r = get("--rng: the guest's /dev/hwrng is virtio_rng and 1 MiB of it does not compress");
    expect(r.code, `${r.stderr}\n${r.stdout}`).toBe(0);
    const out = parseGuestCommandOutput(String(r.stdout));
    expect(out?.status, String(r.stdout)).toBe(0);
    expect(out?.output).toMatch(/RNG=virtio_rng/);
    expect(out?.output).toContain("BYTES=1048576");
    const gzipped = Number(/GZIP=(\d+)/.exec(out?.output ?? "")?.[1]);
    expect(gzipped).toBeGreaterThanOrEqual(1048576); // random bytes do not compress
    console.log(`--rng: 1 MiB of /dev/hwrng, boot to power-off ${r.ms} ms`);
  });

  it("--console virtio --rng -d: hvc0 echoes host input; /dev/hwrng and the disk work in the same boot", () => {
    const r = get(
      "--console virtio --rng -d: the command runs on hvc0, echoes a line the host sends through stdin, reads /dev/hwrng and the disk",
    );
    expect(r.code, `${r.stderr}\n${r.stdout}`).toBe(0);
    expect(r.stdout).toContain("console=ttyS0"); // the serial port still shows the boot
    const out = parseGuestCommandOutput(String(r.stdout));
    expect(out?.status, String(r.stdout)).toBe(0);
    expect(out?.output).toMatch(/HVC0=.*\bhvc0\b/); // hvc0 is among the active consoles
    expect(out?.output).toContain("STDIN=/dev/hvc0 STDOUT=/dev/hvc0");
    expect(out?.output).toContain("READY-FOR-INPUT");
    expect(out?.output).toMatch(/^GOT=hello-from-host$/m); // sent through tskvm's stdin (a pipe)
    expect(out?.output).toMatch(/^RNG=virtio_rng\.0$/m);
    expect(out?.output).toMatch(/^BYTES=1048576$/m);
    expect(Number(/^GZIP=(\d+)$/m.exec(String(out?.output))?.[1])).toBeGreaterThanOrEqual(1048576);
    expect(out?.output).toMatch(/^DISK5=host-block-5$/m);
    expect(out?.output).toMatch(/^DISKW=0$/m);
    expect(r.block3).toBe("guest-block-3");
    expect(r.stderr).toMatch(/powered off/);
    console.log(`--console virtio: a line through hvc0 and back, boot to power-off ${r.ms} ms`);
  });

  it("reports the guest's power-off as 0 whatever the command's status", () => {
    const r = get("a guest exit status does not change tskvm's (the guest powered off)");
    expect(parseGuestCommandOutput(String(r.stdout))?.status).toBe(7);
    expect(r.code).toBe(0);
  });

  it("a missing kernel is a VMM error (1) that names the file", () => {
    const r = get("a missing kernel");
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cannot read the kernel \/nonexistent\/bzImage: no such file/);
  });

  it.each(["a corrupt kernel", "a truncated kernel"])("%s is refused clearly (1)", (name) => {
    const r = get(name);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/bzImage|too short|HdrS/);
  });

  it("bad flags are usage errors (2)", () => {
    const r = get("bad flags") as R & { codes: number[]; stderr: string[] };
    expect(r.codes).toEqual([2, 2, 2, 2, 2]);
    for (const e of r.stderr) expect(e).toMatch(/^tskvm run: error: .+\nRun 'tskvm run --help' for usage\.$/);
  });

  it.each([
    ["SIGTERM", 143],
    ["SIGINT", 130],
    ["SIGHUP", 129],
    ["escape", 130],
    ["escape (--console virtio)", 130],
  ])("the terminal is raw while the guest runs and restored after %s (exit %i)", (how, code) => {
    const r = get(`terminal restored after ${how}`) as R & {
      seen: boolean;
      rawWhileRunning: boolean;
      restored: boolean;
      exitCode: number;
      tail: string;
    };
    expect(r.seen, r.tail).toBe(true);
    expect(r.rawWhileRunning).toBe(true);
    expect(r.restored).toBe(true);
    expect(r.exitCode).toBe(code);
  });

  type FaultRun = R & {
    seen: boolean;
    ended: boolean;
    restored: boolean;
    exitCode: number;
    msToEnd: number | null;
    tail: string;
    imageCheck: string;
    unlocked: true | string;
  };
  // What a VMM fault must leave: a process that ended in time, the terminal as it was,
  // the image closed cleanly (qemu-img check) and unlocked.
  const expectCleanEnd = (r: FaultRun, exitCode: number, withinMs: number, closedCleanly = true) => {
    expect(r.seen, r.tail).toBe(true);
    expect(r.ended, `still running; killed\n${r.tail}`).toBe(true);
    expect(r.exitCode, r.tail).toBe(exitCode);
    expect(r.msToEnd, r.tail).toBeLessThan(withinMs);
    expect(r.restored).toBe(true);
    if (closedCleanly) expect(r.imageCheck).toBe("clean");
    expect(r.unlocked).toBe(true);
  };

  it.each([
    ["an uncaught exception", /tskvm run: error: injected exception/],
    ["an unhandled rejection", /tskvm run: error: injected rejection/],
  ])("%s in the VMM while the guest spins stops the VM and exits 1 within 5 s", (what, message) => {
    const r = get(`VMM fault: ${what} while the guest spins`) as FaultRun;
    // The fault fires 200 ms after the guest's SPIN-START.
    expectCleanEnd(r, 1, 5200);
    expect(r.tail).toMatch(message);
    expect(r.tail).toMatch(/the VM was stopped after the error above/);
  });

  it("SIGTERM ends tskvm even when the orderly stop hangs (dies of SIGTERM after the grace period)", () => {
    const r = get("VMM fault: SIGTERM while the orderly stop hangs") as FaultRun;
    // Killed by SIGTERM (a shell says 143) after STOP_GRACE_MS (4 s); the hung stop never
    // closed the image, but the process is gone, and so is its lock.
    expectCleanEnd(r, -15, 9000, false);
    console.log(`image after the hard exit: ${r.imageCheck}`);
    expect(r.msToEnd).toBeGreaterThanOrEqual(3900);
    expect(r.tail).toMatch(/did not stop within 4 s: exiting without a clean stop/);
  });
});
