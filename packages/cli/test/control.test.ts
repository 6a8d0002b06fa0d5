import { execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
} from "node:fs";
import { createConnection, createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  CONTROL_COMMANDS,
  CONTROL_ERROR_CODES,
  ControlClient,
  ControlError,
  ControlServer,
  type ControlTarget,
  controlDir,
  ensureControlDir,
  generateVmName,
  listVms,
  MAX_LINE_BYTES,
  parseRequest,
  socketPath,
} from "../src/index.js";
import { fakeInfo, fakeTarget } from "./fixtures/fake-target.mjs";

const pkgDir = fileURLToPath(new URL("..", import.meta.url));
const root = mkdtempSync(join(tmpdir(), "tskvm-ctl-"));
let dirN = 0;
/** A fresh control directory (not made yet). */
const freshDir = () => join(root, `d${dirN++}`, "tskvm");
afterAll(() => rmSync(root, { recursive: true, force: true }));

const servers: ControlServer[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.close();
});

async function serve(name = "vm-test", target: ControlTarget = fakeTarget(name), options = {}) {
  const dir = freshDir();
  const server = await ControlServer.listen(name, target, { dir, ...options });
  servers.push(server);
  return { dir, server, target };
}

/** A raw connection: send text, read response lines. */
class Raw {
  readonly socket: Socket;
  #text = "";
  #closed = false;
  #waiters: Array<() => void> = [];
  constructor(path: string) {
    this.socket = createConnection(path);
    this.socket.setEncoding("utf8");
    this.socket.on("data", (d: string) => {
      this.#text += d;
      this.#wake();
    });
    this.socket.on("error", () => {});
    this.socket.on("close", () => {
      this.#closed = true;
      this.#wake();
    });
  }
  #wake() {
    for (const w of this.#waiters.splice(0)) w();
  }
  get closed() {
    return this.#closed;
  }
  send(text: string | Uint8Array) {
    this.socket.write(text);
  }
  /** The next `n` response lines, parsed. */
  async lines(n: number, timeoutMs = 5000): Promise<Array<Record<string, unknown>>> {
    const deadline = Date.now() + timeoutMs;
    while (this.#text.split("\n").length - 1 < n) {
      if (this.#closed) throw new Error(`closed after ${this.#text.split("\n").length - 1} of ${n} lines`);
      if (Date.now() > deadline)
        throw new Error(`timed out waiting for ${n} lines: ${this.#text.slice(-300)}`);
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        setTimeout(r, 50);
      });
    }
    const all = this.#text.split("\n");
    this.#text = all.slice(n).join("\n");
    return all.slice(0, n).map((l) => JSON.parse(l) as Record<string, unknown>);
  }
  async waitClosed(timeoutMs = 5000) {
    const deadline = Date.now() + timeoutMs;
    while (!this.#closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return this.#closed;
  }
  close() {
    this.socket.destroy();
  }
}

async function ask(path: string, line: string) {
  const raw = new Raw(path);
  raw.send(`${line}\n`);
  const [r] = await raw.lines(1);
  raw.close();
  return r!;
}

describe("control paths", () => {
  it("puts sockets in $XDG_RUNTIME_DIR/tskvm, else ~/.tskvm", () => {
    expect(controlDir({ XDG_RUNTIME_DIR: "/run/user/1000", HOME: "/home/u" })).toBe("/run/user/1000/tskvm");
    expect(controlDir({ HOME: "/home/u" })).toBe("/home/u/.tskvm");
    expect(controlDir({ XDG_RUNTIME_DIR: "", HOME: "/home/u" })).toBe("/home/u/.tskvm");
    expect(controlDir({ XDG_RUNTIME_DIR: "relative/dir", HOME: "/home/u" })).toBe("/home/u/.tskvm");
  });

  it("makes the directory 0700, tightens a readable one, refuses a writable one or a symlink", () => {
    const dir = freshDir();
    ensureControlDir(dir);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    chmodSync(dir, 0o755);
    ensureControlDir(dir);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    chmodSync(dir, 0o770);
    expect(() => ensureControlDir(dir)).toThrow(/is writable by others \(mode 770\); chmod 700 it/);
    chmodSync(dir, 0o707);
    expect(() => ensureControlDir(dir)).toThrow(ControlError);
    chmodSync(dir, 0o700);
    const link = join(root, `link${dirN++}`);
    symlinkSync(dir, link);
    expect(() => ensureControlDir(link)).toThrow(/is a symlink/);
  });

  it("accepts names of 1-64 letters, digits, . _ - and refuses others", () => {
    for (const good of ["a", "vm-1a2b", "Web.server_2", "x".repeat(64), "0"])
      expect(socketPath(good, "/d")).toBe(`/d/${good}.sock`);
    for (const bad of ["", "-a", ".a", "a/b", "a b", "x".repeat(65), "é", "a\n", "../x"])
      expect(() => socketPath(bad, "/d"), JSON.stringify(bad)).toThrow(/is not a VM name/);
    expect(() => socketPath("x".repeat(64), `/${"d".repeat(60)}`)).toThrow(
      /longer than a unix socket allows/,
    );
  });

  it("generates short readable names not in use", () => {
    const dir = freshDir();
    ensureControlDir(dir);
    const names = new Set(Array.from({ length: 50 }, () => generateVmName(dir)));
    for (const n of names) expect(n).toMatch(/^vm-[0-9a-f]{4}$/);
    expect(names.size).toBeGreaterThan(40);
  });
});

describe("control server and client", () => {
  it("answers every command, through the client", async () => {
    const target = fakeTarget("vm-a", [
      { state: "running", uptimeMs: 5000, pausedMs: 0, vcpus: [{ id: 0, exits: { io: 3 } }], devices: [] },
    ]);
    const { dir } = await serve("vm-a", target);
    const c = await ControlClient.connect("vm-a", { dir });
    try {
      expect(await c.info()).toEqual(fakeInfo("vm-a"));
      expect(await c.stats()).toMatchObject({ uptimeMs: 5000, vcpus: [{ id: 0, exits: { io: 3 } }] });
      await c.pause();
      expect((await c.info()).state).toBe("paused");
      await c.resume();
      expect(await c.stop(2500)).toEqual({ forced: false });
      expect(await c.stop(0)).toEqual({ forced: true });
      expect(await c.stop()).toEqual({ forced: false });
      expect(await c.tune("disk0", { bandwidth: { rate: 1024, burst: 4096 }, nice: null })).toEqual({
        iops: { rate: 500 },
        bandwidth: { rate: 1024, burst: 4096 },
        nice: null,
      });
    } finally {
      c.close();
    }
    expect(target.calls.filter((x: unknown[]) => x[0] !== "info")).toEqual([
      ["stats"],
      ["pause"],
      ["resume"],
      ["stop", 2500],
      ["stop", 0],
      ["stop", 10_000],
      ["tune", "disk0", { bandwidth: { rate: 1024, burst: 4096 }, nice: null }],
    ]);
  });

  it("echoes any scalar id, and null without one", async () => {
    const { server } = await serve();
    for (const id of ["x", 7, 1.5, true, null])
      expect(await ask(server.path, JSON.stringify({ id, cmd: "resume" }))).toEqual({
        id,
        ok: true,
        result: null,
      });
    expect(await ask(server.path, '{"cmd":"resume"}')).toEqual({ id: null, ok: true, result: null });
  });

  it("answers each malformed request with an error that names the field", async () => {
    const { server } = await serve();
    const cases: Array<[string, string, RegExp]> = [
      ["not json", "bad-request", /^not JSON: /],
      ["[1,2]", "bad-request", /expected a JSON object, got an array/],
      ['"info"', "bad-request", /expected a JSON object, got the string "info"/],
      ["42", "bad-request", /got number 42/],
      ["null", "bad-request", /got null/],
      ["{}", "bad-request", /^cmd: missing \(one of info, stats, pause, resume, stop, tune\)/],
      ['{"cmd":5}', "bad-request", /^cmd: expected a string, got number 5/],
      ['{"cmd":"reboot"}', "unknown-command", /^unknown command "reboot" \(commands: info, /],
      [
        '{"cmd":"info","id":{"a":1}}',
        "bad-request",
        /^id: expected a string, number, boolean or null, got an object/,
      ],
      ['{"cmd":"info","id":[1]}', "bad-request", /^id: .* got an array/],
      ['{"cmd":"info","extra":1}', "bad-request", /^info: unknown field "extra" \(allowed: id, cmd\)/],
      [
        '{"cmd":"stop","timeout":5}',
        "bad-request",
        /^stop: unknown field "timeout" \(allowed: id, cmd, timeoutMs\)/,
      ],
      [
        '{"cmd":"stop","timeoutMs":-1}',
        "bad-request",
        /^timeoutMs: expected a whole number of ms, 0 to 3600000, got number -1/,
      ],
      ['{"cmd":"stop","timeoutMs":"5"}', "bad-request", /^timeoutMs: .* got the string "5"/],
      ['{"cmd":"stop","timeoutMs":1.5}', "bad-request", /^timeoutMs: /],
      [
        '{"cmd":"tune","tuning":{"nice":1}}',
        "bad-request",
        /^device: expected a device id such as "disk0", got undefined/,
      ],
      ['{"cmd":"tune","device":"","tuning":{"nice":1}}', "bad-request", /^device: /],
      ['{"cmd":"tune","device":"disk0"}', "bad-request", /^tuning: missing/],
      [
        '{"cmd":"tune","device":"disk0","tuning":7}',
        "bad-request",
        /^tuning: expected an object, got number 7/,
      ],
      [
        '{"cmd":"tune","device":"disk0","tuning":{}}',
        "bad-request",
        /^tuning: expected at least one of iops, bandwidth, ioPriority, nice/,
      ],
      ['{"cmd":"tune","device":"disk0","tuning":{"iopz":1}}', "bad-request", /^tuning: unknown field "iopz"/],
      [
        '{"cmd":"tune","device":"disk0","tuning":{"iops":500}}',
        "bad-request",
        /^tuning\.iops: expected \{"rate": N, "burst"\?: N\} or null, got number 500/,
      ],
      [
        '{"cmd":"tune","device":"disk0","tuning":{"iops":{"rate":0}}}',
        "bad-request",
        /^tuning\.iops\.rate: expected a number > 0, got number 0/,
      ],
      [
        '{"cmd":"tune","device":"disk0","tuning":{"iops":{"rate":1,"burst":-5}}}',
        "bad-request",
        /^tuning\.iops\.burst: /,
      ],
      [
        '{"cmd":"tune","device":"disk0","tuning":{"bandwidth":{"rate":1e400}}}',
        "bad-request",
        /^tuning\.bandwidth\.rate: .* got number Infinity/,
      ],
      [
        '{"cmd":"tune","device":"disk0","tuning":{"bandwidth":{"rate":1,"x":2}}}',
        "bad-request",
        /^tuning\.bandwidth: unknown field "x"/,
      ],
      [
        '{"cmd":"tune","device":"disk0","tuning":{"ioPriority":{"class":"high"}}}',
        "bad-request",
        /^tuning\.ioPriority\.class: expected "rt", "be" or "idle", got the string "high"/,
      ],
      [
        '{"cmd":"tune","device":"disk0","tuning":{"ioPriority":{"class":"be","level":8}}}',
        "bad-request",
        /^tuning\.ioPriority\.level: expected a whole number 0-7, got number 8/,
      ],
      [
        '{"cmd":"tune","device":"disk0","tuning":{"ioPriority":{"class":"idle","level":1}}}',
        "bad-request",
        /^tuning\.ioPriority\.level: the idle class has no level/,
      ],
      [
        '{"cmd":"tune","device":"disk0","tuning":{"nice":20}}',
        "bad-request",
        /^tuning\.nice: expected a whole number -20 to 19 or null, got number 20/,
      ],
      ['{"cmd":"tune","device":"disk0","tuning":{"nice":"5"}}', "bad-request", /^tuning\.nice: /],
      [
        '{"cmd":"tune","device":"disk9","tuning":{"nice":5}}',
        "unknown-device",
        /^no device "disk9" \(devices: disk0, rng0\)/,
      ],
    ];
    const raw = new Raw(server.path);
    raw.send(
      `${cases
        .map(([line], i) => line.replace(/^\{/, `{"id":${i},`).replace(/^\{"id":\d+,\}/, `{"id":${i}}`))
        .join("\n")}\n`,
    );
    const answers = await raw.lines(cases.length);
    raw.close();
    answers.forEach((a, i) => {
      const [line, code, message] = cases[i]!;
      expect(a.ok, line).toBe(false);
      const error = a.error as { code: string; message: string };
      expect(error.code, line).toBe(code);
      expect(error.message, line).toMatch(message);
      // The id is echoed whenever the line was an object with a scalar id.
      if (line.startsWith("{") && !line.includes('"id"')) expect(a.id, line).toBe(i);
    });
  });

  it("answers a target's failure with failed (or the code it gives), and stays up", async () => {
    const base = fakeTarget("vm-f");
    const target: ControlTarget = {
      ...base,
      info: () => ({ ...fakeInfo("vm-f"), uptimeMs: 10n as unknown as number }),
      stats: async () => {
        throw new Error("the stats fd is gone");
      },
      pause: () => Promise.reject(new ControlError("bad-state", "the VM is stopping")),
      resume: () => {
        throw "not even an Error";
      },
      stop: () => Promise.reject(Object.assign(new Error("odd"), { code: "ENOENT" })),
      tune: base.tune,
    };
    const { server } = await serve("vm-f", target);
    const err = async (cmd: string) => (await ask(server.path, JSON.stringify({ id: cmd, cmd }))).error;
    expect(await err("stats")).toEqual({ code: "failed", message: "the stats fd is gone" });
    expect(await err("pause")).toEqual({ code: "bad-state", message: "the VM is stopping" });
    expect(await err("resume")).toEqual({ code: "failed", message: "not even an Error" });
    expect(await err("stop")).toEqual({ code: "failed", message: "odd" });
    // an answer that cannot be JSON (a BigInt)
    expect((await err("info")) as { code: string }).toMatchObject({ code: "failed" });
  });

  it("closes the connection after a line over the limit, and answers the next connection", async () => {
    const { server } = await serve();
    const raw = new Raw(server.path);
    raw.send('{"id":1,"cmd":"info"}\n');
    expect((await raw.lines(1))[0]).toMatchObject({ id: 1, ok: true });
    raw.send(`{"cmd":"info","pad":"${"x".repeat(MAX_LINE_BYTES)}"}\n`);
    expect((await raw.lines(1))[0]).toEqual({
      id: null,
      ok: false,
      error: { code: "too-large", message: `a request line is longer than ${MAX_LINE_BYTES} bytes` },
    });
    expect(await raw.waitClosed()).toBe(true);
    // the same without a newline ever coming
    const slow = new Raw(server.path);
    for (let i = 0; i < 10; i++) slow.send("x".repeat(MAX_LINE_BYTES / 8));
    expect((await slow.lines(1))[0]).toMatchObject({ error: { code: "too-large" } });
    expect(await slow.waitClosed()).toBe(true);
    // a line just under the limit is a request like any other
    const edge = JSON.stringify({ id: "edge", cmd: "info" }).padEnd(MAX_LINE_BYTES, " ");
    expect(await ask(server.path, edge)).toMatchObject({ id: "edge", ok: true });
    expect(await ask(server.path, '{"id":2,"cmd":"info"}')).toMatchObject({ id: 2, ok: true });
  });

  it("reads lines split across writes, several lines in one write, CRLF, a last line without newline", async () => {
    const { server } = await serve();
    const raw = new Raw(server.path);
    const text = '{"id":1,"cmd":"info"}\n\n{"id":2,"cmd":"resume"}\r\n{"id":3,"cmd":"info"}';
    for (const ch of text) {
      raw.send(ch);
      if (ch === ":") await new Promise((r) => setTimeout(r, 1));
    }
    expect((await raw.lines(2)).map((r) => r.id)).toEqual([1, 2]);
    raw.socket.end(); // half-close: the last line still counts
    expect((await raw.lines(1))[0]).toMatchObject({ id: 3, ok: true });
    expect(await raw.waitClosed()).toBe(true);
  });

  it("limits connections and closes idle ones", async () => {
    const { server } = await serve("vm-l", undefined, { maxConnections: 3, idleTimeoutMs: 300 });
    const open = [new Raw(server.path), new Raw(server.path), new Raw(server.path)];
    for (const r of open) {
      r.send('{"cmd":"info"}\n');
      await r.lines(1);
    }
    const extra = new Raw(server.path);
    expect((await extra.lines(1))[0]).toMatchObject({
      ok: false,
      error: { code: "failed", message: "too many connections (at most 3)" },
    });
    expect(await extra.waitClosed()).toBe(true);
    // idle ones go after the timeout; then there is room again
    for (const r of open) expect(await r.waitClosed(3000)).toBe(true);
    expect(server.connections).toBe(0);
    expect(await ask(server.path, '{"id":9,"cmd":"info"}')).toMatchObject({ id: 9, ok: true });
  });

  it("survives fuzzing: random bytes, random JSON, wrong types, huge and partial lines, many connections", async () => {
    const target = fakeTarget("vm-z");
    const { server } = await serve("vm-z", target);
    let seed = 12345;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const scalars = [null, true, false, 0, -1, 1.5, 1e308, "", "info", "tune", "disk0", "x".repeat(100)];
    const keys = ["id", "cmd", "device", "tuning", "timeoutMs", "iops", "rate", "class", "nice", "__proto__"];
    const value = (depth: number): unknown => {
      const k = rand(depth > 2 ? 1 : 4);
      if (k === 0) return scalars[rand(scalars.length)];
      if (k === 1) return Array.from({ length: rand(4) }, () => value(depth + 1));
      return Object.fromEntries(
        Array.from({ length: rand(5) }, () => [keys[rand(keys.length)]!, value(depth + 1)]),
      );
    };
    const lines: string[] = [];
    for (let i = 0; i < 300; i++) {
      const kind = rand(4);
      if (kind === 0)
        lines.push(
          randomBytes(1 + rand(200))
            .toString("latin1")
            .replace(/\n/g, ""),
        );
      else if (kind === 1) lines.push(JSON.stringify(value(0)));
      else if (kind === 2) {
        const v = value(1);
        lines.push(
          JSON.stringify({
            cmd: ["tune", "stop", "info", "pause"][rand(4)],
            device: "disk0",
            tuning: v,
            timeoutMs: v,
          }),
        );
      } else lines.push(JSON.stringify(value(0)).slice(0, 1 + rand(20)));
    }
    // Valid or not: the client side of the same parser says which lines are requests.
    const expectOk = lines.filter((l) => l.trim() !== "" && parseRequest(l.replace(/\r$/, "")).ok).length;
    // Many connections at once, each sending its share in odd-sized pieces.
    const conns = Array.from({ length: 8 }, () => new Raw(server.path));
    const mine = conns.map((_, c) => lines.filter((_, i) => i % conns.length === c));
    await Promise.all(
      conns.map(async (raw, c) => {
        const text = Buffer.from(`${mine[c]!.join("\n")}\n`, "latin1");
        for (let at = 0; at < text.length; ) {
          const n = 1 + rand(700);
          raw.send(text.subarray(at, at + n));
          at += n;
        }
      }),
    );
    let ok = 0;
    for (const [c, raw] of conns.entries()) {
      const expected = mine[c]!.filter((l) => l.trim() !== "").length;
      const answers = await raw.lines(expected, 20_000);
      for (const a of answers) {
        expect(typeof a.ok).toBe("boolean");
        if (a.ok) ok++;
        else expect(CONTROL_ERROR_CODES).toContain((a.error as { code: string }).code);
      }
      raw.close();
    }
    expect(ok).toBe(expectOk);
    // Huge garbage without newlines on some connections, then the server still answers.
    const big = Array.from({ length: 4 }, () => new Raw(server.path));
    for (const b of big) b.send(randomBytes(200_000).map((x) => (x === 10 ? 32 : x)));
    for (const b of big) expect(await b.waitClosed()).toBe(true);
    expect(await ask(server.path, '{"id":"after","cmd":"info"}')).toMatchObject({ id: "after", ok: true });
  }, 60_000);
});

describe("the socket file", () => {
  it("is 0600 in a 0700 directory, and gone after close()", async () => {
    const { dir, server } = await serve("vm-m");
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(statSync(server.path).mode & 0o777).toBe(0o600);
    expect(statSync(server.path).isSocket()).toBe(true);
    await server.close();
    expect(existsSync(server.path)).toBe(false);
  });

  it("refuses a name a live VM has, with its pid", async () => {
    const { dir } = await serve("vm-dup");
    await expect(ControlServer.listen("vm-dup", fakeTarget("vm-dup"), { dir })).rejects.toThrow(
      `a VM named vm-dup is already running (pid ${process.pid}); choose another --name`,
    );
  });

  it("refuses a file of that name that is not a socket", async () => {
    const dir = freshDir();
    ensureControlDir(dir);
    mkdirSync(join(dir, "vm-x.sock"));
    await expect(ControlServer.listen("vm-x", fakeTarget("vm-x"), { dir })).rejects.toThrow(
      /exists and is not a socket/,
    );
  });

  it("clients do not trust a directory others may write to", async () => {
    const { dir } = await serve("vm-w");
    chmodSync(dir, 0o777);
    try {
      await expect(ControlClient.connect("vm-w", { dir })).rejects.toMatchObject({ code: "unsafe-dir" });
      await expect(listVms({ dir })).rejects.toThrow(/only you may write to; not trusting its sockets/);
    } finally {
      chmodSync(dir, 0o700);
    }
    expect((await listVms({ dir })).map((v) => v.name)).toEqual(["vm-w"]);
  });

  it("close() lets a request being answered finish, then closes", async () => {
    let release: () => void = () => {};
    const target = {
      ...fakeTarget("vm-c"),
      stop: () => new Promise<{ forced: boolean }>((r) => (release = () => r({ forced: false }))),
    };
    const { server } = await serve("vm-c", target as unknown as ControlTarget);
    const busy = new Raw(server.path);
    const idle = new Raw(server.path);
    idle.send('{"cmd":"info"}\n');
    await idle.lines(1);
    busy.send('{"id":"s","cmd":"stop"}\n');
    await new Promise((r) => setTimeout(r, 50));
    const closing = server.close();
    expect(existsSync(server.path)).toBe(false);
    expect(await idle.waitClosed(500)).toBe(true);
    release();
    expect((await busy.lines(1))[0]).toEqual({ id: "s", ok: true, result: { forced: false } });
    await closing;
    expect(await busy.waitClosed()).toBe(true);
  });

  it("connecting to a missing VM says so", async () => {
    const dir = freshDir();
    await expect(ControlClient.connect("vm-none", { dir })).rejects.toMatchObject({
      code: "no-such-vm",
      message: expect.stringMatching(/^no VM named vm-none is running/),
    });
  });

  it("a request the VM does not answer in time is a timeout error", async () => {
    const target = { ...fakeTarget("vm-slow"), stats: () => new Promise<never>(() => {}) };
    const { dir } = await serve("vm-slow", target as unknown as ControlTarget);
    const c = await ControlClient.connect("vm-slow", { dir, timeoutMs: 200 });
    await expect(c.stats()).rejects.toThrow("VM vm-slow: no answer to 'stats' within 200 ms");
    // Answers come in order, so that connection is closed; another one works.
    await expect(c.info()).rejects.toThrow(/no answer to 'stats'/);
    const c2 = await ControlClient.connect("vm-slow", { dir, timeoutMs: 200 });
    expect((await c2.info()).name).toBe("vm-slow");
    c2.close();
  });
});

describe("the socket when the process ends", () => {
  beforeAll(() => {
    execFileSync("pnpm", ["run", "build"], { cwd: pkgDir, stdio: "pipe" });
  }, 120_000);

  /** Runs the child fixture; resolves once it listens, with its process. */
  function child(dir: string, name: string, how: string) {
    const p = spawn(process.execPath, [join(pkgDir, "test/fixtures/control-child.mjs"), dir, name, how], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    const listening = new Promise<void>((resolve, reject) => {
      let out = "";
      p.stdout.on("data", (d) => {
        out += d;
        if (out.includes("listening")) resolve();
      });
      p.on("exit", (code) =>
        out.includes("listening") ? undefined : reject(new Error(`child exited ${code}`)),
      );
    });
    const exited = new Promise<number | null>((r) => p.on("exit", (code) => r(code)));
    return { p, listening, exited };
  }

  it("is removed when the process exits, normally or by an uncaught exception", async () => {
    for (const how of ["exit", "throw"]) {
      const dir = freshDir();
      const c = child(dir, `vm-${how}`, how);
      await c.listening;
      await c.exited;
      expect(existsSync(join(dir, `vm-${how}.sock`)), how).toBe(false);
    }
  });

  it("after SIGKILL is left stale: listVms removes it, a new VM may take the name", async () => {
    const dir = freshDir();
    const c = child(dir, "vm-killed", "wait");
    await c.listening;
    // alive: listed
    expect((await listVms({ dir })).map((v) => v.name)).toEqual(["vm-killed"]);
    await expect(ControlServer.listen("vm-killed", fakeTarget("vm-killed"), { dir })).rejects.toThrow(
      `a VM named vm-killed is already running (pid ${c.p.pid})`,
    );
    c.p.kill("SIGKILL");
    await c.exited;
    const sock = join(dir, "vm-killed.sock");
    expect(existsSync(sock)).toBe(true);
    expect(await listVms({ dir })).toEqual([]);
    expect(existsSync(sock)).toBe(false);
    // and a stale socket does not keep a new VM from the name
    const c2 = child(dir, "vm-killed", "wait");
    await c2.listening;
    c2.p.kill("SIGKILL");
    await c2.exited;
    const server = await ControlServer.listen("vm-killed", fakeTarget("vm-killed"), { dir });
    servers.push(server);
    expect(
      await ControlClient.connect("vm-killed", { dir }).then(async (cl) => {
        const i = await cl.info();
        cl.close();
        return i.pid;
      }),
    ).toBe(process.pid);
  }, 30_000);

  it("lists several VMs by name and leaves non-socket files alone", async () => {
    const dir = freshDir();
    for (const n of ["vm-b", "vm-a"]) servers.push(await ControlServer.listen(n, fakeTarget(n), { dir }));
    // a plain server that is not a VM does not break the listing (it never answers)
    const other = createServer(() => {});
    await new Promise<void>((r) => other.listen(join(dir, "odd.sock"), r));
    try {
      const vms = await listVms({ dir, timeoutMs: 300 });
      expect(vms.map((v) => v.name)).toEqual(["vm-a", "vm-b"]);
    } finally {
      other.close();
    }
  });
});

describe("control-protocol.schema.json", () => {
  it("names the commands, error codes and tuning fields the server takes", () => {
    const schema = JSON.parse(readFileSync(join(pkgDir, "control-protocol.schema.json"), "utf8")) as {
      description: string;
      $defs: Record<string, Record<string, unknown>>;
    };
    const text = JSON.stringify(schema);
    const requests = (
      schema.$defs.request!.oneOf as Array<{ properties: { cmd: { enum?: string[]; const?: string } } }>
    ).flatMap((r) => r.properties.cmd.enum ?? [r.properties.cmd.const!]);
    expect(requests.sort()).toEqual([...CONTROL_COMMANDS].sort());
    expect(text).toContain(JSON.stringify([...CONTROL_ERROR_CODES]));
    expect(Object.keys((schema.$defs.tuningFields!.properties as object) ?? {})).toEqual([
      "iops",
      "bandwidth",
      "ioPriority",
      "nice",
    ]);
    expect(schema.$defs.vmInfo!.required).toEqual(Object.keys(fakeInfo("x")));
    expect(schema.description).toContain(`A line longer than ${MAX_LINE_BYTES} bytes gets a too-large error`);
  });
});
