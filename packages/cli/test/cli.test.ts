import { execFileSync, spawnSync } from "node:child_process";
import { accessSync, constants, existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ExitCode, main } from "../src/index.js";

const pkgDir = join(dirname(fileURLToPath(import.meta.url)), "..");
const mainJs = join(pkgDir, "dist", "main.js");
const cacheDir = mkdtempSync(join(tmpdir(), "tskvm-cli-cache-"));
afterAll(() => rmSync(cacheDir, { recursive: true, force: true }));

beforeAll(() => {
  // Test what users run: build guest-kit and the CLI, then run dist/main.js.
  for (const pkg of ["../guest-kit", "."]) {
    execFileSync("pnpm", ["run", "build"], { cwd: join(pkgDir, pkg), stdio: "pipe" });
  }
}, 120_000);

function tskvm(args: string[], env: NodeJS.ProcessEnv = process.env) {
  const r = spawnSync(process.execPath, [mainJs, ...args], { encoding: "utf8", env });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

async function inProcess(args: string[]) {
  let stdout = "";
  let stderr = "";
  const status = await main(args, { stdout: (t) => (stdout += t), stderr: (t) => (stderr += t) });
  return { status, stdout, stderr };
}

describe("tskvm dispatcher", () => {
  it("has one table of exit codes", () => {
    expect(ExitCode).toEqual({
      ok: 0,
      error: 1,
      usage: 2,
      guestCrash: 3,
      sigint: 130,
      sigterm: 143,
      sighup: 129,
    });
  });

  it("is an executable node script", () => {
    expect(readFileSync(mainJs, "utf8").startsWith("#!/usr/bin/env node\n")).toBe(true);
    accessSync(mainJs, constants.X_OK);
    const r = spawnSync(mainJs, ["--version"], { encoding: "utf8" });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^tskvm \d+\.\d+\.\d+/);
  });

  it("lists the commands with --help and exits 0", () => {
    const r = tskvm(["--help"]);
    expect(r.status).toBe(ExitCode.ok);
    expect(r.stdout).toMatch(/^Usage: tskvm COMMAND/);
    expect(r.stdout).toMatch(/\n {2}guest +the default Linux guest/);
    expect(r.stderr).toBe("");
  });

  it("prints help for groups and commands (--help, -h, help CMD)", async () => {
    expect((await inProcess(["guest", "--help"])).stdout).toMatch(/\n {2}build +build/);
    for (const args of [
      ["guest", "build", "--help"],
      ["guest", "build", "-h"],
      ["help", "guest", "build"],
    ]) {
      const r = await inProcess(args);
      expect(r.status, args.join(" ")).toBe(ExitCode.ok);
      expect(r.stdout, args.join(" ")).toMatch(
        /^Usage: tskvm guest build \[--json\] \[--force\] \[--cache-dir DIR\]/,
      );
    }
    // help wins over other flags, even bad ones
    expect((await inProcess(["guest", "build", "--bogus", "--help"])).status).toBe(ExitCode.ok);
  });

  it("exits 2 with a message on stderr for usage errors", () => {
    const cases: Array<[string[], RegExp]> = [
      [[], /^Usage: tskvm COMMAND/],
      [["frobnicate"], /^tskvm: unknown command 'frobnicate'/],
      [["--bogus"], /^tskvm: unknown option '--bogus'/],
      [["guest"], /^Usage: tskvm guest COMMAND/],
      [["guest", "nope"], /^tskvm guest: unknown command 'nope'/],
      [
        ["guest", "build", "--bogus"],
        /^tskvm guest build: unknown option '--bogus'\nRun 'tskvm guest build --help'/,
      ],
      [["guest", "build", "extra"], /^tskvm guest build: unexpected argument 'extra'/],
      [["guest", "build", "--cache-dir"], /^tskvm guest build: .*--cache-dir/],
      [["guest", "build", "--json=yes"], /^tskvm guest build: .*--json/],
      [["run", "--console", "tty"], /^tskvm run: --console must be serial or virtio, not 'tty'/],
    ];
    for (const [args, message] of cases) {
      const r = tskvm(args);
      expect(r.status, args.join(" ")).toBe(ExitCode.usage);
      expect(r.stdout, args.join(" ")).toBe("");
      expect(r.stderr, args.join(" ")).toMatch(message);
    }
  });
});

describe("tskvm guest build", () => {
  it("--json prints exactly the kernel and initrd paths on stdout, progress on stderr", () => {
    const r = tskvm(["guest", "build", "--json", "--cache-dir", cacheDir]);
    expect(r.status, r.stderr).toBe(ExitCode.ok);
    expect(r.stdout.endsWith("\n")).toBe(true);
    expect(r.stdout.trim().split("\n")).toHaveLength(1);
    const out = JSON.parse(r.stdout) as Record<string, string>;
    expect(Object.keys(out)).toEqual(["kernel", "initrd"]);
    expect(existsSync(out.kernel!)).toBe(true);
    expect(existsSync(out.initrd!)).toBe(true);
    expect(out.kernel!.startsWith(join(cacheDir, "guest-kit"))).toBe(true);
    expect(r.stderr).toMatch(/^tskvm: downloading linux-image-/m);
    expect(r.stderr).toMatch(/^tskvm: guest kit ready/m);

    // second run: from the cache, same answer
    const again = tskvm(["guest", "build", "--json", "--cache-dir", cacheDir]);
    expect(again.status).toBe(ExitCode.ok);
    expect(again.stdout).toBe(r.stdout);
    expect(again.stderr).toMatch(/up to date/);
    expect(again.stderr).not.toMatch(/downloading/);

    // without --json: human-readable
    const human = tskvm(["guest", "build", "--cache-dir", cacheDir]);
    expect(human.status).toBe(ExitCode.ok);
    expect(human.stdout).toContain(`kernel  ${out.kernel}\ninitrd  ${out.initrd}\n`);
    expect(human.stdout).toContain('tskvm.cmd="COMMAND"');
  }, 300_000);

  it("uses $XDG_CACHE_HOME/tskvm by default", () => {
    const xdg = mkdtempSync(join(tmpdir(), "tskvm-xdg-"));
    try {
      symlinkSync(cacheDir, join(xdg, "tskvm")); // the kit built above, seen through XDG
      const r = tskvm(["guest", "build", "--json"], { ...process.env, XDG_CACHE_HOME: xdg });
      expect(r.status, r.stderr).toBe(ExitCode.ok);
      const out = JSON.parse(r.stdout) as Record<string, string>;
      expect(out.kernel!.startsWith(join(xdg, "tskvm", "guest-kit", "kits"))).toBe(true);
      expect(r.stderr).toMatch(/up to date/);
    } finally {
      rmSync(xdg, { recursive: true, force: true });
    }
  });

  it("exits 1 with a hint when apt is not available", () => {
    const empty = mkdtempSync(join(tmpdir(), "tskvm-noapt-"));
    try {
      const r = tskvm(["guest", "build", "--json", "--cache-dir", empty], {
        ...process.env,
        PATH: "/nonexistent",
      });
      expect(r.status).toBe(ExitCode.error);
      expect(r.stdout).toBe("");
      expect(r.stderr).toMatch(/^tskvm guest build: error: cannot fetch Debian package linux-image-amd64/);
      expect(r.stderr).toContain("hint: pass a kernel and initrd of your own (--kernel/--initrd)");
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });
});
