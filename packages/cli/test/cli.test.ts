import { execFileSync, spawnSync } from "node:child_process";
import { accessSync, constants, existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type Command,
  type CommandNode,
  EXIT_CODES,
  ExitCode,
  exitCodesHelp,
  main,
  rootCommand,
} from "../src/index.js";

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

  it("says what each exit code means once, for every code", () => {
    expect(EXIT_CODES.map((c) => c.code).sort((a, b) => a - b)).toEqual(
      Object.values(ExitCode).sort((a, b) => a - b),
    );
    for (const c of EXIT_CODES) expect(ExitCode[c.name], c.name).toBe(c.code);
  });

  it("lists the exit codes in tskvm --help, tskvm run --help and the README as exit-codes.ts has them", async () => {
    const all = exitCodesHelp();
    for (const c of EXIT_CODES) expect(all).toMatch(new RegExp(`^  ${c.code} +\\S`, "m"));
    expect((await inProcess(["--help"])).stdout).toContain(`\n${all}`);
    expect((await inProcess(["run", "--help"])).stdout).toContain(`\n${all}`);
    for (const cmd of [
      ["guest", "build"],
      ["image", "create"],
      ["image", "info"],
      ["list"],
      ["stat"],
      ["pause"],
      ["resume"],
      ["stop"],
      ["set"],
    ])
      expect((await inProcess([...cmd, "--help"])).stdout, cmd.join(" ")).toContain(
        `\n${exitCodesHelp(["ok", "error", "usage"])}`,
      );
    // The README's table: | code | `ExitCode.name` | meaning |, the same rows in the same order.
    const readme = readFileSync(join(pkgDir, "README.md"), "utf8");
    const table = readme.slice(readme.indexOf("## Exit codes"));
    const rows = [...table.matchAll(/^\| (\d+) +\| `ExitCode\.(\w+)` +\| (.+?) +\|$/gm)].map((m) => ({
      code: Number(m[1]),
      name: m[2],
      meaning: m[3],
    }));
    expect(rows).toEqual(EXIT_CODES);
  });

  it("lists every option of every command in its --help", () => {
    const commands: Array<[string, Command]> = [];
    const walk = (path: string, node: CommandNode) => {
      if (node.kind === "command") commands.push([path, node]);
      else for (const [name, child] of Object.entries(node.commands)) walk(`${path} ${name}`, child);
    };
    walk("tskvm", rootCommand);
    expect(commands.map(([p]) => p).sort()).toEqual([
      "tskvm guest build",
      "tskvm image create",
      "tskvm image info",
      "tskvm list",
      "tskvm pause",
      "tskvm resume",
      "tskvm run",
      "tskvm set",
      "tskvm stat",
      "tskvm stop",
    ]);
    for (const [path, command] of commands) {
      // An option's line in the Options section: "  -b, --backing FILE" or "      --force".
      const options = command.help.slice(command.help.indexOf("\nOptions"));
      for (const [long, spec] of Object.entries(command.options)) {
        const at = spec.short ? `  -${spec.short}, --${long}` : `  --${long}`;
        expect(options, `${path} --help lists ${at.trim()}`).toMatch(
          new RegExp(`^ *${at.trim().replace(/[-,]/g, "\\$&")}(?![\\w-])`, "m"),
        );
      }
      expect(options, path).toMatch(/^ {2}-h, --help +show this help$/m);
    }
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

  it("exits 2 with a message on stderr for usage errors", { timeout: 60_000 }, () => {
    const cases: Array<[string[], RegExp]> = [
      [[], /^Usage: tskvm COMMAND/],
      [["frobnicate"], /^tskvm: error: unknown command 'frobnicate'\nRun 'tskvm --help' for usage\.\n$/],
      [["--bogus"], /^tskvm: error: unknown option '--bogus'/],
      [["guest"], /^Usage: tskvm guest COMMAND/],
      [["guest", "nope"], /^tskvm guest: error: unknown command 'nope'/],
      [
        ["guest", "build", "--bogus"],
        /^tskvm guest build: error: unknown option '--bogus'\nRun 'tskvm guest build --help' for usage\.\n$/,
      ],
      [["guest", "build", "extra"], /^tskvm guest build: error: unexpected argument 'extra'/],
      [["guest", "build", "--cache-dir"], /^tskvm guest build: error: --cache-dir needs a value\n/],
      [["guest", "build", "--json=yes"], /^tskvm guest build: error: --json takes no value\n/],
      [["run", "--console", "tty"], /^tskvm run: error: --console must be serial or virtio, not 'tty'/],
      [["run", "-c"], /^tskvm run: error: -c\/--cpus needs a value\n/],
      [
        ["run", "-m", "12x"],
        /^tskvm run: error: -m\/--mem: '12x' is not a size; .* e\.g\. -m 512 or -m 1\.5G\n/,
      ],
      [["run", "-m", "1.3G"], /^tskvm run: error: -m\/--mem must be a whole number of MiB, not '1\.3G'/],
      [["run", "-m", "16M"], /^tskvm run: error: -m\/--mem must be from 32M to 1T, not '16M'/],
      [["run", "kernel", "extra"], /^tskvm run: error: unexpected argument 'extra'/],
      [["run", "--name", "a b"], /^tskvm run: error: --name: 'a b' is not a VM name: use 1 to 64 letters/],
      [["run", "-k", "a", "b"], /^tskvm run: error: the kernel is given twice \('a' and 'b'\)/],
      [
        ["image", "create", "d.qcow2", "10X"],
        /^tskvm image create: error: SIZE: '10X' is not a size; .* e\.g\. 'tskvm image create disk\.qcow2 10G'\n/,
      ],
      [
        ["image", "create", "d.qcow2"],
        /^tskvm image create: error: SIZE is required without a backing file \(-b\)/,
      ],
      [
        ["image", "info", "--output", "yaml", "d.qcow2"],
        /^tskvm image info: error: --output must be human or json/,
      ],
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
    // stderr is a pipe here: whole lines only, no progress redrawn in place.
    expect(r.stderr).not.toContain("\r");
    expect(r.stderr).not.toContain("\x1b");

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

  it("on a terminal, shows bytes and rate on one line redrawn in place, cleared before each message", async () => {
    let stdout = "";
    let stderr = "";
    const columns = 120;
    const status = await main(["guest", "build", "--json", "--force", "--cache-dir", cacheDir], {
      stdout: (t) => (stdout += t),
      stderr: (t) => (stderr += t),
      stderrTerminal: { columns },
    });
    expect(status, stderr).toBe(ExitCode.ok);
    expect(Object.keys(JSON.parse(stdout) as object)).toEqual(["kernel", "initrd"]);
    const redraw = "\r\x1b[K";
    // A draw is what follows a redraw up to the next one; a message after a clear ends with "\n".
    const draws = stderr
      .split(redraw)
      .slice(1)
      .filter((d) => d !== "" && !d.includes("\n"));
    // e.g. "tskvm: unpacking linux-image-6.1.0-57-amd64_6.1.192-3.deb  12.5 MiB / 67.3 MiB  25.1 MiB/s"
    const line =
      /^tskvm: (downloading|unpacking|packing) \S+ {2}[\d.]+ (B|KiB|MiB) \/ [\d.]+ (KiB|MiB)( {2}[\d.]+ (B|KiB|MiB|GiB)\/s)?$/;
    for (const d of draws) {
      expect(d.length, d).toBeLessThan(columns);
      expect(d).toMatch(line);
    }
    expect(draws.some((d) => /^tskvm: downloading linux-image-/.test(d))).toBe(true);
    expect(draws.some((d) => /^tskvm: unpacking linux-image-.*\/s$/.test(d))).toBe(true);
    // What stays on the screen: the messages, each on a line of its own, and no progress left over.
    const screen = stderr
      .split("\n")
      .map((l) => (l.includes(redraw) ? l.slice(l.lastIndexOf(redraw) + redraw.length) : l));
    expect(screen.at(-1)).toBe("");
    for (const l of screen.slice(0, -1)) expect(l).toMatch(/^tskvm: /);
    expect(screen).toContainEqual(expect.stringMatching(/^tskvm: guest kit ready/));
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
