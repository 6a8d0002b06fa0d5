// The control protocol: one JSON object per line each way over a VM's unix socket
// (control-protocol.schema.json in this package says the same for other languages).
// Requests are checked here by hand, field by field, so an error says which field is
// wrong and what was expected; nothing a client sends reaches the VM unchecked.
import type { DeviceTuning, IoPriority, MachineState, MachineStats, RateLimit } from "@tskvm/machine-x86";

/** A request's `id`: any JSON scalar, echoed in the response. */
export type RequestId = string | number | boolean | null;

export const CONTROL_COMMANDS = ["info", "stats", "pause", "resume", "stop", "tune"] as const;
export type ControlCommand = (typeof CONTROL_COMMANDS)[number];

export type ControlRequest =
  | { id?: RequestId; cmd: "info" | "stats" | "pause" | "resume" }
  | { id?: RequestId; cmd: "stop"; timeoutMs?: number }
  | { id?: RequestId; cmd: "tune"; device: string; tuning: DeviceTuning };

/** What went wrong with a request (`error.code` of a response). */
export const CONTROL_ERROR_CODES = [
  "bad-request",
  "unknown-command",
  "unknown-device",
  "too-large",
  "failed",
  "bad-state",
] as const;
export type ControlErrorCode = (typeof CONTROL_ERROR_CODES)[number];

export type ControlResponse<R = unknown> =
  | { id: RequestId; ok: true; result: R }
  | { id: RequestId; ok: false; error: { code: ControlErrorCode; message: string } };

/** A device the VM lets a controller tune (`tune`'s `device`). */
export interface VmDeviceInfo {
  /** E.g. "disk0". */
  id: string;
  /** E.g. "virtio-blk". */
  kind: string;
  description: string;
}

export interface VmDiskInfo {
  /** The device id, "disk0" for the first `-d`. */
  id: string;
  path: string;
  readOnly: boolean;
  snapshot?: boolean;
  format?: string;
  /** Virtqueues (multiqueue), when more than one. */
  queues?: number;
  /** The tuning given on the command line or set since. */
  tuning?: DeviceTuning;
}

/** `info`'s result: what `tskvm list` shows. */
export interface VmInfo {
  name: string;
  pid: number;
  state: MachineState;
  cpus: number;
  memMiB: number;
  disks: VmDiskInfo[];
  /** Every device `tune` accepts. */
  devices: VmDeviceInfo[];
  /** ISO 8601. */
  startedAt: string;
  uptimeMs: number;
}

export type StopResult = { forced: boolean };

/** What each command answers. */
export interface ControlResults {
  info: VmInfo;
  stats: MachineStats;
  pause: null;
  resume: null;
  stop: StopResult;
  tune: DeviceTuning;
}

/** A line longer than this (bytes, without the newline) gets `too-large` and the connection is closed. */
export const MAX_LINE_BYTES = 64 * 1024;
/** Connections at once; more get a `failed` error and are closed. */
export const MAX_CONNECTIONS = 16;
/** A connection that sends nothing for this long is closed. */
export const IDLE_TIMEOUT_MS = 60_000;
/** `stop` without `timeoutMs`: how long the guest has to power off before it is forced. */
export const DEFAULT_STOP_TIMEOUT_MS = 10_000;
export const MAX_STOP_TIMEOUT_MS = 3_600_000;

/**
 * An error of the control plane with a code: a response's error code, or the client's and
 * the socket's own ("no-such-vm", "timeout", "name-taken", "unsafe-dir", "bad-name",
 * "connection"). A {@link ControlTarget} may throw one with a response code ("bad-state",
 * "unknown-device") to answer with it instead of "failed".
 */
export class ControlError extends Error {
  override name = "ControlError";
  constructor(
    readonly code:
      | ControlErrorCode
      | "no-such-vm"
      | "timeout"
      | "name-taken"
      | "unsafe-dir"
      | "bad-name"
      | "connection",
    message: string,
  ) {
    super(message);
  }
}

export function isControlErrorCode(code: unknown): code is ControlErrorCode {
  return (CONTROL_ERROR_CODES as readonly unknown[]).includes(code);
}

type Parsed =
  | { ok: true; request: ControlRequest }
  | { ok: false; id: RequestId; code: ControlErrorCode; message: string };

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

const describe = (v: unknown): string => {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "string") return `the string ${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v)}`;
  if (typeof v === "object") return "an object";
  return `${typeof v} ${String(v)}`;
};

class Bad extends Error {
  constructor(
    readonly code: ControlErrorCode,
    message: string,
  ) {
    super(message);
  }
}

function onlyKeys(o: Record<string, unknown>, allowed: readonly string[], where: string): void {
  for (const k of Object.keys(o))
    if (!allowed.includes(k))
      throw new Bad(
        "bad-request",
        `${where}: unknown field ${JSON.stringify(k)} (allowed: ${allowed.join(", ")})`,
      );
}

function rateLimit(v: unknown, where: string): RateLimit | null {
  if (v === null) return null;
  if (!isObject(v))
    throw new Bad("bad-request", `${where}: expected {"rate": N, "burst"?: N} or null, got ${describe(v)}`);
  onlyKeys(v, ["rate", "burst"], where);
  const positive = (x: unknown, field: string): number => {
    if (typeof x !== "number" || !Number.isFinite(x) || x <= 0 || x > Number.MAX_SAFE_INTEGER)
      throw new Bad("bad-request", `${where}.${field}: expected a number > 0, got ${describe(x)}`);
    return x;
  };
  const rate = positive(v.rate, "rate");
  return v.burst === undefined ? { rate } : { rate, burst: positive(v.burst, "burst") };
}

function ioPriority(v: unknown, where: string): IoPriority | null {
  if (v === null) return null;
  if (!isObject(v))
    throw new Bad(
      "bad-request",
      `${where}: expected {"class": "rt"|"be"|"idle", "level"?: 0-7} or null, got ${describe(v)}`,
    );
  onlyKeys(v, ["class", "level"], where);
  if (v.class !== "rt" && v.class !== "be" && v.class !== "idle")
    throw new Bad("bad-request", `${where}.class: expected "rt", "be" or "idle", got ${describe(v.class)}`);
  if (v.level === undefined) return { class: v.class };
  if (v.class === "idle") throw new Bad("bad-request", `${where}.level: the idle class has no level`);
  if (typeof v.level !== "number" || !Number.isInteger(v.level) || v.level < 0 || v.level > 7)
    throw new Bad("bad-request", `${where}.level: expected a whole number 0-7, got ${describe(v.level)}`);
  return { class: v.class, level: v.level };
}

/** Checks a {@link DeviceTuning} from outside (a request, a file); throws with the field's path. */
export function checkTuning(v: unknown, where = "tuning"): DeviceTuning {
  if (!isObject(v)) throw new Bad("bad-request", `${where}: expected an object, got ${describe(v)}`);
  onlyKeys(v, ["iops", "bandwidth", "ioPriority", "nice"], where);
  const t: DeviceTuning = {};
  if (v.iops !== undefined) t.iops = rateLimit(v.iops, `${where}.iops`);
  if (v.bandwidth !== undefined) t.bandwidth = rateLimit(v.bandwidth, `${where}.bandwidth`);
  if (v.ioPriority !== undefined) t.ioPriority = ioPriority(v.ioPriority, `${where}.ioPriority`);
  if (v.nice !== undefined) {
    if (
      v.nice !== null &&
      (typeof v.nice !== "number" || !Number.isInteger(v.nice) || v.nice < -20 || v.nice > 19)
    )
      throw new Bad(
        "bad-request",
        `${where}.nice: expected a whole number -20 to 19 or null, got ${describe(v.nice)}`,
      );
    t.nice = v.nice;
  }
  if (Object.keys(t).length === 0)
    throw new Bad("bad-request", `${where}: expected at least one of iops, bandwidth, ioPriority, nice`);
  return t;
}

/** Parses and checks one request line (without its newline). */
export function parseRequest(line: string): Parsed {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (e) {
    return { ok: false, id: null, code: "bad-request", message: `not JSON: ${(e as Error).message}` };
  }
  if (!isObject(value))
    return {
      ok: false,
      id: null,
      code: "bad-request",
      message: `expected a JSON object, got ${describe(value)}`,
    };
  const rawId = value.id;
  const idOk =
    rawId === undefined || rawId === null || ["string", "number", "boolean"].includes(typeof rawId);
  const id: RequestId = idOk && rawId !== undefined ? (rawId as RequestId) : null;
  try {
    if (!idOk)
      throw new Bad("bad-request", `id: expected a string, number, boolean or null, got ${describe(rawId)}`);
    const cmd = value.cmd;
    if (cmd === undefined)
      throw new Bad("bad-request", `cmd: missing (one of ${CONTROL_COMMANDS.join(", ")})`);
    if (typeof cmd !== "string") throw new Bad("bad-request", `cmd: expected a string, got ${describe(cmd)}`);
    if (!(CONTROL_COMMANDS as readonly string[]).includes(cmd))
      throw new Bad(
        "unknown-command",
        `unknown command ${JSON.stringify(cmd.slice(0, 40))} (commands: ${CONTROL_COMMANDS.join(", ")})`,
      );
    const base = rawId === undefined ? {} : { id };
    switch (cmd as ControlCommand) {
      case "info":
      case "stats":
      case "pause":
      case "resume":
        onlyKeys(value, ["id", "cmd"], cmd);
        return { ok: true, request: { ...base, cmd: cmd as "info" } };
      case "stop": {
        onlyKeys(value, ["id", "cmd", "timeoutMs"], cmd);
        const t = value.timeoutMs;
        if (t === undefined) return { ok: true, request: { ...base, cmd: "stop" } };
        if (typeof t !== "number" || !Number.isInteger(t) || t < 0 || t > MAX_STOP_TIMEOUT_MS)
          throw new Bad(
            "bad-request",
            `timeoutMs: expected a whole number of ms, 0 to ${MAX_STOP_TIMEOUT_MS}, got ${describe(t)}`,
          );
        return { ok: true, request: { ...base, cmd: "stop", timeoutMs: t } };
      }
      case "tune": {
        onlyKeys(value, ["id", "cmd", "device", "tuning"], cmd);
        if (typeof value.device !== "string" || value.device === "")
          throw new Bad(
            "bad-request",
            `device: expected a device id such as "disk0", got ${describe(value.device)}`,
          );
        if (value.tuning === undefined) throw new Bad("bad-request", "tuning: missing");
        return {
          ok: true,
          request: { ...base, cmd: "tune", device: value.device, tuning: checkTuning(value.tuning) },
        };
      }
    }
  } catch (e) {
    if (e instanceof Bad) return { ok: false, id, code: e.code, message: e.message };
    throw e;
  }
}

/** A response line (with its newline). */
export function encodeResponse(r: ControlResponse): string {
  return `${JSON.stringify(r)}\n`;
}
