// The words for a disk's limits and priorities, the same in `-d PATH,iops=500` and
// `tskvm set NAME disk0 iops=500`: iops=N[:BURST], bw=SIZE[:BURST], ioprio=CLASS[:LEVEL],
// nice=N. In `set`, `none` removes a limit (back to the default).
import type { DeviceTuning, IoPriority, RateLimit } from "@tskvm/machine-x86";
import { UsageError } from "./command.js";
import { parseSize } from "./size.js";

export const TUNING_KEYS = ["iops", "bw", "ioprio", "nice"] as const;
export type TuningKey = (typeof TUNING_KEYS)[number];

/** The grammar of each key, for error messages and help. */
export const TUNING_SYNTAX: Record<TuningKey, string> = {
  iops: "iops=N[:BURST] (requests a second, N > 0)",
  bw: "bw=SIZE[:BURST] (bytes a second, K/M/G suffixes: bw=10M)",
  ioprio: "ioprio=rt[:0-7]|be[:0-7]|idle",
  nice: "nice=-20..19",
};

export function isTuningKey(key: string): key is TuningKey {
  return (TUNING_KEYS as readonly string[]).includes(key);
}

const MAX_RATE = Number.MAX_SAFE_INTEGER;

function rate(key: "iops" | "bw", value: string, where: string): RateLimit {
  const bad = (why: string) => new UsageError(`${where}: ${key}=${value}: ${why}; use ${TUNING_SYNTAX[key]}`);
  const parts = value.split(":");
  if (parts.length > 2) throw bad("has more than one ':'");
  const num = (text: string, what: string): number => {
    let n: number;
    if (key === "iops") {
      if (!/^\d+$/.test(text)) throw bad(`${what} '${text}' is not a whole number`);
      n = Number(text);
    } else {
      try {
        n = parseSize(text, { name: `${where}: bw`, unit: "B", example: "bw=10M" });
      } catch (e) {
        throw new UsageError((e as Error).message);
      }
    }
    if (n <= 0 || n > MAX_RATE) throw bad(`${what} must be more than 0`);
    return n;
  };
  const limit: RateLimit = { rate: num(parts[0]!, "the rate") };
  if (parts[1] !== undefined) {
    limit.burst = num(parts[1], "the burst");
  }
  return limit;
}

function ioprio(value: string, where: string): IoPriority {
  const m = /^(rt|be|idle)(?::(\d+))?$/.exec(value);
  if (!m)
    throw new UsageError(`${where}: ioprio=${value} is not an I/O priority; use ${TUNING_SYNTAX.ioprio}`);
  const cls = m[1] as IoPriority["class"];
  if (m[2] === undefined) return { class: cls };
  if (cls === "idle")
    throw new UsageError(`${where}: ioprio=${value}: the idle class has no level; use ioprio=idle`);
  const level = Number(m[2]);
  if (level > 7) throw new UsageError(`${where}: ioprio=${value}: the level must be 0 (highest) to 7`);
  return { class: cls, level };
}

function nice(value: string, where: string): number {
  if (!/^[-+]?\d+$/.test(value) || Number(value) < -20 || Number(value) > 19)
    throw new UsageError(`${where}: nice=${value} must be a whole number from -20 to 19`);
  return Number(value);
}

/**
 * Adds `key=value` to `tuning`. `allowNone`: `none` removes the limit (`null`), as `tskvm
 * set` takes it. `where` starts the error message, e.g. `--disk a.img,iops=x`.
 */
export function parseTuningOption(
  tuning: DeviceTuning,
  key: TuningKey,
  value: string,
  where: string,
  allowNone = false,
): void {
  if (value === "none" && allowNone) {
    const field = ({ iops: "iops", bw: "bandwidth", ioprio: "ioPriority", nice: "nice" } as const)[key];
    tuning[field] = null;
    return;
  }
  if (value === "") throw new UsageError(`${where}: ${key}= needs a value: ${TUNING_SYNTAX[key]}`);
  switch (key) {
    case "iops":
      tuning.iops = rate("iops", value, where);
      return;
    case "bw":
      tuning.bandwidth = rate("bw", value, where);
      return;
    case "ioprio":
      tuning.ioPriority = ioprio(value, where);
      return;
    case "nice":
      tuning.nice = nice(value, where);
      return;
  }
}

/** A tuning as the command line spells it: `iops=500:1000 bw=10 MiB ioprio=be:4 nice=5`. */
export function formatTuning(t: DeviceTuning | undefined): string {
  if (!t) return "";
  const parts: string[] = [];
  const r = (l: RateLimit, unit: (n: number) => string) =>
    `${unit(l.rate)}${l.burst !== undefined ? `:${unit(l.burst)}` : ""}`;
  if (t.iops) parts.push(`iops=${r(t.iops, String)}`);
  if (t.bandwidth) parts.push(`bw=${r(t.bandwidth, bytesShort)}`);
  if (t.ioPriority)
    parts.push(
      `ioprio=${t.ioPriority.class}${t.ioPriority.level !== undefined ? `:${t.ioPriority.level}` : ""}`,
    );
  if (t.nice !== undefined && t.nice !== null) parts.push(`nice=${t.nice}`);
  return parts.join(" ");
}

/** Bytes in the shortest exact `-d` spelling: 10485760 → 10M, 1536 → 1536. */
function bytesShort(n: number): string {
  for (const [s, shift] of [
    ["G", 30],
    ["M", 20],
    ["K", 10],
  ] as const)
    if (n >= 2 ** shift && n % 2 ** shift === 0) return `${n / 2 ** shift}${s}`;
  return String(n);
}
