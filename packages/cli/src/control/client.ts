// The Node side of a VM's control socket: what `tskvm list/stat/pause/resume/stop/set` use.
import { readdirSync } from "node:fs";
import { createConnection, type Socket } from "node:net";
import type { DeviceTuning, MachineStats } from "@tskvm/machine-x86";
import { checkControlDir, controlDir, nameOfSocketFile, socketPath } from "./paths.js";
import {
  type ControlCommand,
  ControlError,
  type ControlResponse,
  type ControlResults,
  isControlErrorCode,
  type StopResult,
  type VmInfo,
} from "./protocol.js";
import { removeIfStale } from "./server.js";

export interface ControlClientOptions {
  /** Default: `controlDir()`. */
  dir?: string;
  /** How long connecting and each answer may take, ms (default 5000; `stop` adds its own timeout). */
  timeoutMs?: number;
}

const DEFAULT_TIMEOUT_MS = 5000;

interface Pending {
  resolve(v: unknown): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

/**
 * A connection to one VM's control socket. Requests may overlap; the server answers them in
 * order. A request that times out closes the connection (connect again).
 */
export class ControlClient {
  readonly name: string;
  readonly #socket: Socket;
  readonly #timeoutMs: number;
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;
  #buffer = "";
  #closed: Error | undefined;

  private constructor(name: string, socket: Socket, timeoutMs: number) {
    this.name = name;
    this.#socket = socket;
    this.#timeoutMs = timeoutMs;
    socket.setEncoding("utf8");
    socket.on("data", (d: string) => this.#data(d));
    socket.on("error", (e) => this.#fail(new ControlError("connection", `VM ${name}: ${e.message}`)));
    socket.on("close", () =>
      this.#fail(new ControlError("connection", `VM ${name} closed the control connection`)),
    );
  }

  /**
   * Connects to the VM called `name`. No such VM (no socket, or a stale one — which is then
   * removed) is a {@link ControlError} "no-such-vm".
   */
  static async connect(name: string, options: ControlClientOptions = {}): Promise<ControlClient> {
    const dir = options.dir ?? controlDir();
    const path = socketPath(name, dir);
    checkControlDir(dir);
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = createConnection(path);
      const timer = setTimeout(() => {
        s.destroy();
        reject(new ControlError("timeout", `VM ${name}: no answer from ${path} within ${timeoutMs} ms`));
      }, timeoutMs);
      s.once("connect", () => {
        clearTimeout(timer);
        s.removeAllListeners("error");
        resolve(s);
      });
      s.once("error", (e: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        s.destroy();
        if (e.code === "ENOENT")
          reject(new ControlError("no-such-vm", `no VM named ${name} is running (no ${path})`));
        else if (e.code === "ECONNREFUSED")
          // A VM that was killed left its socket: remove it (if it is still stale) first.
          void removeIfStale(path)
            .catch(() => false)
            .then(() =>
              reject(
                new ControlError(
                  "no-such-vm",
                  `no VM named ${name} is running (its socket ${path} was stale: removed)`,
                ),
              ),
            );
        else if (e.code === "EACCES")
          reject(
            new ControlError(
              "connection",
              `cannot connect to ${path}: permission denied (the VM belongs to another user)`,
            ),
          );
        else reject(new ControlError("connection", `cannot connect to ${path}: ${e.message}`));
      });
    });
    return new ControlClient(name, socket, timeoutMs);
  }

  /** Sends one request and waits for its answer (a failure is a {@link ControlError} with the server's code). */
  request<C extends ControlCommand>(
    cmd: C,
    args: Record<string, unknown> = {},
    timeoutMs = this.#timeoutMs,
  ): Promise<ControlResults[C]> {
    if (this.#closed) return Promise.reject(this.#closed);
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        // The server answers in order: a late answer would hold up every later one, so the
        // connection is given up (the requests behind it fail with the same error).
        this.#fail(
          new ControlError("timeout", `VM ${this.name}: no answer to '${cmd}' within ${timeoutMs} ms`),
        );
        this.#socket.destroy();
      }, timeoutMs);
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject, timer });
      this.#socket.write(`${JSON.stringify({ ...args, id, cmd })}\n`);
    });
  }

  info(): Promise<VmInfo> {
    return this.request("info");
  }
  stats(): Promise<MachineStats> {
    return this.request("stats");
  }
  async pause(): Promise<void> {
    await this.request("pause");
  }
  async resume(): Promise<void> {
    await this.request("resume");
  }
  /** Orderly power-off (Ctrl-Alt-Del), forced after `timeoutMs` (server default 10 s). */
  stop(timeoutMs?: number): Promise<StopResult> {
    return this.request(
      "stop",
      timeoutMs === undefined ? {} : { timeoutMs },
      (timeoutMs ?? 10_000) + this.#timeoutMs,
    );
  }
  /** Changes a device's limits and priorities (`null` removes one); resolves with the tuning in force. */
  tune(device: string, tuning: DeviceTuning): Promise<DeviceTuning> {
    return this.request("tune", { device, tuning });
  }

  close(): void {
    this.#fail(new ControlError("connection", "the control connection was closed"));
    this.#socket.destroy();
  }

  #data(d: string): void {
    this.#buffer += d;
    let nl = this.#buffer.indexOf("\n");
    while (nl >= 0) {
      const line = this.#buffer.slice(0, nl);
      this.#buffer = this.#buffer.slice(nl + 1);
      nl = this.#buffer.indexOf("\n");
      let r: ControlResponse;
      try {
        r = JSON.parse(line) as ControlResponse;
      } catch {
        continue;
      }
      const p = typeof r.id === "number" ? this.#pending.get(r.id) : undefined;
      if (!p) {
        // An error about the connection (too many, too large) has no id: it is for everyone.
        if (!r.ok && r.id === null)
          this.#fail(new ControlError(r.error.code, `VM ${this.name}: ${r.error.message}`));
        continue;
      }
      this.#pending.delete(r.id as number);
      clearTimeout(p.timer);
      if (r.ok) p.resolve(r.result);
      else
        p.reject(
          new ControlError(
            isControlErrorCode(r.error.code) ? r.error.code : "failed",
            `VM ${this.name}: ${r.error.message}`,
          ),
        );
    }
  }

  #fail(e: Error): void {
    this.#closed ??= e;
    for (const [id, p] of this.#pending) {
      clearTimeout(p.timer);
      this.#pending.delete(id);
      p.reject(e);
    }
  }
}

/** Connects to `name`, runs `fn`, closes. */
export async function withVm<T>(
  name: string,
  fn: (c: ControlClient) => Promise<T>,
  options?: ControlClientOptions,
): Promise<T> {
  const c = await ControlClient.connect(name, options);
  try {
    return await fn(c);
  } finally {
    c.close();
  }
}

/**
 * Every running VM of this user, by name: each socket in the control directory is asked for
 * its `info`; a stale one (its VM was killed) is removed, one that does not answer in time
 * is left out.
 */
export async function listVms(options: ControlClientOptions = {}): Promise<VmInfo[]> {
  const dir = options.dir ?? controlDir();
  let files: string[];
  try {
    files = readdirSync(dir);
  } catch {
    return [];
  }
  checkControlDir(dir);
  const names = files.map(nameOfSocketFile).filter((n): n is string => n !== undefined);
  const infos = await Promise.all(
    names.map(async (name) => {
      try {
        // connect() removes a stale socket before it says there is no such VM.
        return await withVm(name, (c) => c.info(), { ...options, dir, timeoutMs: options.timeoutMs ?? 2000 });
      } catch {
        return undefined;
      }
    }),
  );
  return infos.filter((i): i is VmInfo => i !== undefined).sort((a, b) => a.name.localeCompare(b.name));
}
