// A VM's control socket: `<dir>/<name>.sock`, one JSON request per line in, one response
// per line out (protocol.ts). Whatever a client sends, the server answers with an error at
// worst and never throws out: a bad request must not stop the VM.
//
// Access: Node has no SO_PEERCRED, so the check is the file system's — the socket is made
// inside a 0700 directory owned by this user (ensureControlDir), so it is never reachable by
// others even before its own chmod 0600, which follows the listen.
import { chmodSync, lstatSync, unlinkSync } from "node:fs";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import type { DeviceTuning, MachineStats } from "@tskvm/machine-x86";
import { ensureControlDir, socketPath } from "./paths.js";
import {
  ControlError,
  type ControlRequest,
  type ControlResponse,
  DEFAULT_STOP_TIMEOUT_MS,
  encodeResponse,
  IDLE_TIMEOUT_MS,
  isControlErrorCode,
  MAX_CONNECTIONS,
  MAX_LINE_BYTES,
  parseRequest,
  type RequestId,
  type VmInfo,
} from "./protocol.js";

/** What the control socket drives: the running VM (run.ts implements it over the Machine). */
export interface ControlTarget {
  info(): VmInfo;
  stats(): Promise<MachineStats>;
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** Orderly power-off; forced after `timeoutMs`. */
  stop(timeoutMs: number): Promise<{ forced: boolean }>;
  /**
   * The server checks `deviceId` against `info().devices` first. Any method may throw an
   * error whose `code` is a response code (e.g. `new ControlError("bad-state", ...)` for
   * pausing a paused VM) to answer with that code; other errors answer "failed".
   */
  tune(deviceId: string, tuning: DeviceTuning): Promise<DeviceTuning>;
}

export interface ControlServerOptions {
  /** Default: `controlDir()`. */
  dir?: string;
  /** Default {@link MAX_CONNECTIONS}. */
  maxConnections?: number;
  /** Default {@link IDLE_TIMEOUT_MS}. */
  idleTimeoutMs?: number;
}

/** How long the stale check waits for an existing socket to answer. */
const PROBE_MS = 2000;

/** Whether something listens at `path`: "live" (with its info if it answered), or "stale". */
export function probeSocket(
  path: string,
  timeoutMs = PROBE_MS,
): Promise<{ live: false } | { live: true; info?: VmInfo }> {
  return new Promise((resolve, reject) => {
    const s = createConnection(path);
    let buf = "";
    const done = (r: { live: false } | { live: true; info?: VmInfo }) => {
      clearTimeout(timer);
      s.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => done({ live: true }), timeoutMs);
    s.on("connect", () => s.write('{"id":"probe","cmd":"info"}\n'));
    s.on("data", (d) => {
      buf += d.toString();
      const nl = buf.indexOf("\n");
      if (nl < 0) return;
      try {
        const r = JSON.parse(buf.slice(0, nl)) as ControlResponse<VmInfo>;
        done(r.ok ? { live: true, info: r.result } : { live: true });
      } catch {
        done({ live: true });
      }
    });
    s.on("close", () => done({ live: true }));
    s.on("error", (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      s.destroy();
      if (e.code === "ECONNREFUSED" || e.code === "ENOENT") resolve({ live: false });
      else reject(e);
    });
  });
}

/** Removes `path` if it is a socket nobody listens on; true if it was removed (or is gone). */
export async function removeIfStale(path: string): Promise<boolean> {
  try {
    if (!lstatSync(path).isSocket()) return false;
  } catch {
    return true;
  }
  const r = await probeSocket(path);
  if (r.live) return false;
  try {
    unlinkSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
  }
  return true;
}

export class ControlServer {
  readonly name: string;
  /** The socket's path. */
  readonly path: string;
  readonly #server: Server;
  readonly #target: ControlTarget;
  readonly #sockets = new Set<Socket>();
  /** Connections with a request being answered. */
  readonly #busy = new Set<Socket>();
  readonly #maxConnections: number;
  readonly #idleMs: number;
  #inode: { dev: number; ino: number } | undefined;
  #closed = false;
  readonly #onExit = () => this.#unlink();

  private constructor(name: string, path: string, target: ControlTarget, options: ControlServerOptions) {
    this.name = name;
    this.path = path;
    this.#target = target;
    this.#maxConnections = options.maxConnections ?? MAX_CONNECTIONS;
    this.#idleMs = options.idleTimeoutMs ?? IDLE_TIMEOUT_MS;
    this.#server = createServer({ allowHalfOpen: true }, (s) => this.#accept(s));
    this.#server.on("error", () => {});
  }

  /**
   * Listens on `<dir>/<name>.sock` (mode 0600 in a 0700 directory). A socket left by a VM
   * that died is removed first; a live one is a {@link ControlError} "name-taken":
   * `a VM named NAME is already running (pid N)`. The socket is removed by {@link close}
   * and, failing that, when the process exits (not after SIGKILL: the next listen or
   * `listVms` removes that one).
   */
  static async listen(
    name: string,
    target: ControlTarget,
    options: ControlServerOptions = {},
  ): Promise<ControlServer> {
    const dir = ensureControlDir(options.dir);
    const path = socketPath(name, dir);
    const taken = (pid?: number) =>
      new ControlError(
        "name-taken",
        `a VM named ${name} is already running${pid !== undefined ? ` (pid ${pid})` : ""}; choose another --name`,
      );
    let st: ReturnType<typeof lstatSync> | undefined;
    try {
      st = lstatSync(path);
    } catch {}
    if (st) {
      if (!st.isSocket())
        throw new ControlError(
          "name-taken",
          `${path} exists and is not a socket; remove it or choose another --name`,
        );
      const r = await probeSocket(path);
      if (r.live) throw taken(r.info?.pid);
      try {
        unlinkSync(path);
      } catch {}
    }
    const server = new ControlServer(name, path, target, options);
    await new Promise<void>((resolve, reject) => {
      const onError = (e: NodeJS.ErrnoException) =>
        reject(
          e.code === "EADDRINUSE"
            ? taken()
            : new ControlError("connection", `cannot listen on ${path}: ${e.message}`),
        );
      server.#server.once("error", onError);
      server.#server.listen(path, () => {
        server.#server.off("error", onError);
        resolve();
      });
    });
    chmodSync(path, 0o600);
    const { dev, ino } = lstatSync(path);
    server.#inode = { dev, ino };
    process.on("exit", server.#onExit);
    return server;
  }

  /** Open connections now. */
  get connections(): number {
    return this.#sockets.size;
  }

  /**
   * Stops listening, removes the socket and closes every connection: at once where nothing
   * is being answered; a request being answered (e.g. the `stop` that ended the VM) gets
   * its answer first if it comes within `graceMs` (default 1000).
   */
  close(graceMs = 1000): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    this.#unlink();
    process.off("exit", this.#onExit);
    for (const s of this.#sockets) if (!this.#busy.has(s)) s.end();
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    const timer = setTimeout(() => {
      for (const s of this.#sockets) s.destroy();
    }, graceMs);
    timer.unref();
    return closed.finally(() => clearTimeout(timer));
  }

  /** Removes the socket file if it is still ours (not one a later VM of the same name made). */
  #unlink(): void {
    try {
      const st = lstatSync(this.path);
      if (this.#inode && st.dev === this.#inode.dev && st.ino === this.#inode.ino) unlinkSync(this.path);
    } catch {}
  }

  #accept(s: Socket): void {
    s.on("error", () => {});
    if (this.#sockets.size >= this.#maxConnections) {
      s.end(
        encodeResponse({
          id: null,
          ok: false,
          error: { code: "failed", message: `too many connections (at most ${this.#maxConnections})` },
        }),
      );
      s.destroySoon?.();
      return;
    }
    this.#sockets.add(s);
    s.on("close", () => this.#sockets.delete(s));
    s.setTimeout(this.#idleMs, () => s.destroy());
    let buffered: Buffer = Buffer.alloc(0);
    const lines: Buffer[] = [];
    let busy = false;
    let ended = false;
    let dead = false;
    const fail = (code: "too-large", message: string) => {
      dead = true;
      lines.length = 0;
      s.end(encodeResponse({ id: null, ok: false, error: { code, message } }));
    };
    const pump = async () => {
      if (busy) return;
      busy = true;
      this.#busy.add(s);
      s.pause();
      try {
        while (lines.length > 0 && !s.destroyed && !this.#closed) {
          const line = lines.shift()!;
          const text = line.toString("utf8").replace(/\r$/, "");
          if (text.trim() === "") continue;
          const out = await this.#answer(text);
          if (s.destroyed) return;
          // A client that does not read its answers stops being read.
          if (!s.write(out))
            await new Promise<void>((r) => {
              s.once("drain", r);
              s.once("close", r);
            });
        }
        if ((ended || this.#closed) && !dead && !s.destroyed) s.end();
      } finally {
        busy = false;
        this.#busy.delete(s);
        if (!s.destroyed && !dead) s.resume();
      }
    };
    s.on("data", (chunk: Buffer) => {
      if (dead || this.#closed) return;
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      let at = buffered.indexOf(10);
      while (at >= 0) {
        if (at > MAX_LINE_BYTES)
          return fail("too-large", `a request line is longer than ${MAX_LINE_BYTES} bytes`);
        lines.push(buffered.subarray(0, at));
        buffered = buffered.subarray(at + 1);
        at = buffered.indexOf(10);
      }
      if (buffered.length > MAX_LINE_BYTES)
        return fail("too-large", `a request line is longer than ${MAX_LINE_BYTES} bytes`);
      void pump();
    });
    s.on("end", () => {
      if (dead) return;
      ended = true;
      // A last line without its newline still counts.
      if (buffered.length > 0) lines.push(buffered);
      buffered = Buffer.alloc(0);
      void pump();
    });
  }

  /** One request line → one response line; never throws. */
  async #answer(line: string): Promise<string> {
    const parsed = parseRequest(line);
    if (!parsed.ok)
      return encodeResponse({
        id: parsed.id,
        ok: false,
        error: { code: parsed.code, message: parsed.message },
      });
    const { request } = parsed;
    const id: RequestId = request.id ?? null;
    try {
      const result = await this.#run(request);
      return encodeResponse({ id, ok: true, result });
    } catch (e) {
      // Any error whose code is a response code (a ControlError, or one of the target's own).
      const own = (e as { code?: unknown } | null)?.code;
      const code = isControlErrorCode(own) ? own : "failed";
      const message = e instanceof Error ? e.message : String(e);
      try {
        return encodeResponse({ id, ok: false, error: { code, message } });
      } catch {
        return encodeResponse({
          id: null,
          ok: false,
          error: { code: "failed", message: "the answer could not be encoded" },
        });
      }
    }
  }

  async #run(r: ControlRequest): Promise<unknown> {
    const t = this.#target;
    switch (r.cmd) {
      case "info":
        return t.info();
      case "stats":
        return await t.stats();
      case "pause":
        await t.pause();
        return null;
      case "resume":
        await t.resume();
        return null;
      case "stop":
        return await t.stop(r.timeoutMs ?? DEFAULT_STOP_TIMEOUT_MS);
      case "tune": {
        const devices = t.info().devices;
        if (!devices.some((d) => d.id === r.device))
          throw new ControlError(
            "unknown-device",
            `no device ${JSON.stringify(r.device)} (devices: ${devices.map((d) => d.id).join(", ") || "none"})`,
          );
        return await t.tune(r.device, r.tuning);
      }
    }
  }
}
