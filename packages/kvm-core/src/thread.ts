// Scheduling of one thread: its I/O priority (ioprio_set / ioprio_get, ioprio(7)) and
// its nice value (setpriority / getpriority, which on Linux act on the one thread
// whose id is given). For device threads a VMM tunes (a disk's worker).
import { writeFileSync } from "node:fs";
import { constants, getPriority, setPriority } from "node:os";
import { KvmError, sys } from "./errors.js";
import { native } from "./native.js";

/** An I/O scheduling class and level (ioprio(7)); structurally machine-x86's `IoPriority`. */
export interface IoPriority {
  class: "rt" | "be" | "idle";
  /** 0 (highest) to 7; not used by `idle`. Default 4. */
  level?: number;
}

/** What {@link getThreadIoPriority} reads: a class set with ioprio_set, or "none" (derived from nice). */
export type ThreadIoPriority = Required<IoPriority> | { class: "none"; level: number };

// From linux/ioprio.h.
const IOPRIO_WHO_PROCESS = 1;
const IOPRIO_CLASS_SHIFT = 13;
const IOPRIO_LEVEL_MASK = 7;
const CLASSES = ["none", "rt", "be", "idle"] as const;

/** A value the kernel would refuse with EINVAL, refused before the call (code "EINVAL"). */
const invalid = (operation: string, detail: string): KvmError =>
  new KvmError(operation, constants.errno.EINVAL, detail);

/**
 * The ioprio value (class << 13 | level) for `p`; throws on a class or level ioprio(7) does not have.
 * Class "none" (level 0) is the default: the I/O priority follows the nice value again.
 */
export function encodeIoPriority(p: IoPriority | { class: "none"; level?: number }): number {
  const cls = CLASSES.indexOf(p.class);
  if (cls < 0) throw invalid("ioprio_set", `unknown I/O priority class ${JSON.stringify(p.class)}`);
  const level = p.class === "idle" ? 0 : (p.level ?? (p.class === "none" ? 0 : 4));
  if (!Number.isInteger(level) || level < 0 || level > 7 || (p.class === "none" && level !== 0))
    throw invalid("ioprio_set", `I/O priority level ${level} is not an integer from 0 to 7`);
  return (cls << IOPRIO_CLASS_SHIFT) | level;
}

/** The class and level an ioprio value holds (the hint bits of newer kernels are ignored). */
export function decodeIoPriority(value: number): ThreadIoPriority {
  const cls = CLASSES[(value >> IOPRIO_CLASS_SHIFT) & 7] ?? "none";
  return { class: cls, level: value & IOPRIO_LEVEL_MASK };
}

function checkTid(operation: string, tid: number): void {
  if (!Number.isInteger(tid) || tid < 0) throw invalid(operation, `bad thread id ${tid}`);
}

/**
 * Sets thread `tid`'s I/O priority (ioprio_set(IOPRIO_WHO_PROCESS, tid)); 0 is the calling thread.
 * "rt" needs CAP_SYS_ADMIN or CAP_SYS_NICE (EPERM otherwise); class "none" goes back to the default.
 */
export function setThreadIoPriority(tid: number, priority: IoPriority | { class: "none" }): void {
  checkTid("ioprio_set", tid);
  const value = encodeIoPriority(priority);
  sys("ioprio_set", () => native().ioprioSet(IOPRIO_WHO_PROCESS, tid, value));
}

/** Thread `tid`'s I/O priority (0: the calling thread); class "none" when it was never set. */
export function getThreadIoPriority(tid: number): ThreadIoPriority {
  checkTid("ioprio_get", tid);
  return decodeIoPriority(sys("ioprio_get", () => native().ioprioGet(IOPRIO_WHO_PROCESS, tid)));
}

/** Node's SystemError (from libuv) carries the errno negated in `info.errno`. */
function uvErrno(e: unknown): number | undefined {
  const info = (e as { info?: { errno?: unknown } }).info;
  return typeof info?.errno === "number" ? Math.abs(info.errno) : undefined;
}

function priorityCall<T>(operation: string, call: () => T): T {
  try {
    return call();
  } catch (e) {
    const errno = uvErrno(e);
    if (errno !== undefined) throw new KvmError(operation, errno);
    throw e;
  }
}

/** Sets thread `tid`'s nice value (-20 to 19; 0 is the calling thread). Lowering it needs CAP_SYS_NICE. */
export function setThreadNice(tid: number, nice: number): void {
  checkTid("setpriority", tid);
  if (!Number.isInteger(nice) || nice < -20 || nice > 19)
    throw invalid("setpriority", `nice ${nice} is not an integer from -20 to 19`);
  priorityCall("setpriority", () => setPriority(tid, nice));
}

/** Thread `tid`'s nice value (0: the calling thread). */
export function getThreadNice(tid: number): number {
  checkTid("getpriority", tid);
  return priorityCall("getpriority", () => getPriority(tid));
}

/** The calling thread's Linux thread id (gettid). */
export function currentThreadId(): number {
  return native().gettid();
}

/** Longest thread name Linux keeps (TASK_COMM_LEN 16, with its NUL). */
export const THREAD_NAME_MAX = 15;

/**
 * Names the calling thread (its `comm`, as `top -H`, `ps -L` and `perf` show it), e.g. a vCPU
 * or device worker, which Node leaves named "node". Longer names are cut to
 * {@link THREAD_NAME_MAX} bytes. Returns false where the name cannot be set (no /proc): a name
 * is a help, never a reason to fail.
 */
export function setCurrentThreadName(name: string): boolean {
  const bytes = Buffer.from(name, "utf8").subarray(0, THREAD_NAME_MAX);
  try {
    writeFileSync(`/proc/self/task/${currentThreadId()}/comm`, bytes);
    return true;
  } catch {
    return false;
  }
}
