// `tskvm stat`: rates over the last interval from two stats snapshots, and the table.
import type { DeviceStatsReport, MachineStats } from "@tskvm/machine-x86";
import {
  type BlkDeviceStats,
  histogramDelta,
  type LatencyHistogram,
  latencyPercentiles,
} from "@tskvm/virtio-blk";

export interface VcpuRates {
  id: number;
  /** Exits in the interval by reason, a second. */
  exitsPerSec: Record<string, number>;
  /** All exits a second. */
  totalExitsPerSec: number;
  /** Share of the interval the vCPU was halted, 0-100; null where KVM does not say. */
  haltedPct: number | null;
}

export interface DiskRates {
  id: string;
  /** Requests completed a second (every type). */
  iops: number;
  readIops: number;
  writeIops: number;
  /** MiB a second. */
  readMiBps: number;
  writeMiBps: number;
  /** Requests taken and not answered yet, now. */
  inFlight: number;
  /** Latency percentiles of the interval's requests, µs (bucket upper bounds); null with no request. */
  p50Us: number | null;
  p99Us: number | null;
  /** Error answers (IOERR, UNSUPP, malformed) in the interval, and since the start. */
  errors: number;
  errorsTotal: number;
  /** The disk's worker thread CPU, % of one core. */
  workerCpuPct: number;
}

export interface ThreadRates {
  tid: number;
  /** Ids of the devices it serves. */
  devices: string[];
  cpuPct: number;
  wakeupsPerSec: number;
  /** ms requests waited for a rate limit in the interval. */
  throttledMs: number;
  held: boolean;
}

export interface StatRates {
  /** The interval the rates are over, ms (from the machine's own uptime). */
  intervalMs: number;
  vcpus: VcpuRates[];
  disks: DiskRates[];
  threads: ThreadRates[];
}

const isBlk = (d: DeviceStatsReport): boolean => d.kind === "virtio-blk";
const blk = (d: DeviceStatsReport | undefined): Partial<BlkDeviceStats> =>
  (d?.device ?? {}) as Partial<BlkDeviceStats>;

function isHistogram(h: unknown): h is LatencyHistogram {
  return typeof h === "object" && h !== null && Array.isArray((h as LatencyHistogram).counts);
}

const errorSum = (s: Partial<BlkDeviceStats>): number =>
  (s.errors?.ioerr ?? 0) + (s.errors?.unsupp ?? 0) + (s.errors?.malformed ?? 0);

/**
 * Rates between two snapshots of the same VM (`earlier` taken first). The interval is the
 * difference of the machine's uptimes, or `fallbackMs` (the caller's clock) if that is not
 * positive. A device or vCPU that is only in `later` counts from zero.
 */
export function statRates(earlier: MachineStats, later: MachineStats, fallbackMs = 1000): StatRates {
  const up = later.uptimeMs - earlier.uptimeMs;
  const intervalMs = up > 0 ? up : fallbackMs;
  const perSec = (n: number) => (n * 1000) / intervalMs;
  const pct = (ms: number) => (ms * 100) / intervalMs;

  const vcpus = later.vcpus.map((v): VcpuRates => {
    const before = earlier.vcpus.find((e) => e.id === v.id);
    const exitsPerSec: Record<string, number> = {};
    let total = 0;
    for (const [reason, n] of Object.entries(v.exits)) {
      const d = Math.max(0, n - (before?.exits[reason] ?? 0));
      if (d > 0) exitsPerSec[reason] = perSec(d);
      total += d;
    }
    const haltedPct =
      v.haltedMs === undefined ? null : Math.min(100, Math.max(0, pct(v.haltedMs - (before?.haltedMs ?? 0))));
    return { id: v.id, exitsPerSec, totalExitsPerSec: perSec(total), haltedPct };
  });

  const disks = later.devices.filter(isBlk).map((d): DiskRates => {
    const before = earlier.devices.find((e) => e.id === d.id);
    const now = blk(d);
    const then = blk(before);
    const delta = (f: (s: Partial<BlkDeviceStats>) => number | undefined) =>
      Math.max(0, (f(now) ?? 0) - (f(then) ?? 0));
    const reads = delta((s) => s.reads);
    const writes = delta((s) => s.writes);
    let p50Us: number | null = null;
    let p99Us: number | null = null;
    if (isHistogram(now.latency)) {
      let h = now.latency;
      try {
        if (isHistogram(then.latency)) h = histogramDelta(now.latency, then.latency);
      } catch {
        // not an earlier snapshot of the same histogram: the whole of the later one
      }
      [p50Us = null, p99Us = null] = latencyPercentiles(h, [0.5, 0.99]);
    }
    return {
      id: d.id,
      iops: perSec(delta((s) => s.completed)),
      readIops: perSec(reads),
      writeIops: perSec(writes),
      readMiBps: perSec(delta((s) => s.bytesRead)) / 2 ** 20,
      writeMiBps: perSec(delta((s) => s.bytesWritten)) / 2 ** 20,
      inFlight: now.inFlight ?? 0,
      p50Us,
      p99Us,
      errors: delta(errorSum),
      errorsTotal: errorSum(now),
      workerCpuPct: pct(Math.max(0, d.thread.cpuMs - (before?.thread.cpuMs ?? 0))),
    };
  });

  // Devices on one shared worker report the same thread: one row for it.
  const threads = new Map<number, ThreadRates>();
  for (const d of later.devices) {
    const t = threads.get(d.thread.tid);
    if (t) {
      t.devices.push(d.id);
      continue;
    }
    const before = earlier.devices.find((e) => e.id === d.id)?.thread;
    threads.set(d.thread.tid, {
      tid: d.thread.tid,
      devices: [d.id],
      cpuPct: pct(Math.max(0, d.thread.cpuMs - (before?.cpuMs ?? 0))),
      wakeupsPerSec: perSec(Math.max(0, d.thread.wakeups - (before?.wakeups ?? 0))),
      throttledMs: Math.max(0, d.thread.throttledMs - (before?.throttledMs ?? 0)),
      held: d.thread.held,
    });
  }
  return { intervalMs, vcpus, disks, threads: [...threads.values()] };
}

/** Columns padded to their widest cell, two spaces apart; numbers right-aligned. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const numeric = header.map(
    (_, i) => i > 0 && rows.every((r) => /^[-\d.]/.test(r[i] ?? "") || r[i] === "-"),
  );
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (numeric[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd();
  return `${[line(header), ...rows.map(line)].join("\n")}\n`;
}

/** 0.123 → "0.12", 12.34 → "12.3", 1234.5 → "1235", whole numbers as they are. */
export function num(n: number): string {
  if (Number.isInteger(n)) return String(n);
  if (Math.abs(n) >= 100) return String(Math.round(n));
  if (Math.abs(n) >= 10) return n.toFixed(1);
  return n.toFixed(2);
}

/** µs → "850 µs", "1.2 ms", "3.4 s"; "-" for null. */
export function latency(us: number | null): string {
  if (us === null) return "-";
  if (us < 1000) return `${num(us)} µs`;
  if (us < 1_000_000) return `${num(us / 1000)} ms`;
  return `${num(us / 1_000_000)} s`;
}

/** ms → "45s", "3m05s", "1h02m", "2d03h". */
export function duration(ms: number): string {
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, "0")}s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(h / 24)}d${String(h % 24).padStart(2, "0")}h`;
}

/** The most frequent exit reasons get a column each; the rest add up in "other". */
const EXIT_COLUMNS = 5;

/** The human `tskvm stat` block for one interval. */
export function formatStat(name: string, stats: MachineStats, r: StatRates): string {
  const out: string[] = [];
  out.push(
    `VM ${name}  ${stats.state}  up ${duration(stats.uptimeMs)}${stats.pausedMs > 0 ? ` (paused ${duration(stats.pausedMs)})` : ""}  interval ${(r.intervalMs / 1000).toFixed(2)} s\n`,
  );
  const totals = new Map<string, number>();
  for (const v of r.vcpus)
    for (const [reason, n] of Object.entries(v.exitsPerSec))
      totals.set(reason, (totals.get(reason) ?? 0) + n);
  const reasons = [...totals.entries()]
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .map(([k]) => k);
  const shown = reasons.slice(0, EXIT_COLUMNS);
  const hasOther = reasons.length > EXIT_COLUMNS;
  out.push(
    `\n${table(
      ["VCPU", "EXITS/S", "HALTED", ...shown.map((x) => x.toUpperCase()), ...(hasOther ? ["OTHER"] : [])],
      r.vcpus.map((v) => [
        String(v.id),
        num(v.totalExitsPerSec),
        v.haltedPct === null ? "-" : `${v.haltedPct.toFixed(1)}%`,
        ...shown.map((x) => num(v.exitsPerSec[x] ?? 0)),
        ...(hasOther
          ? [num(reasons.slice(EXIT_COLUMNS).reduce((sum, x) => sum + (v.exitsPerSec[x] ?? 0), 0))]
          : []),
      ]),
    )}`,
  );
  if (r.disks.length > 0)
    out.push(
      `\n${table(
        [
          "DISK",
          "IOPS",
          "READ/S",
          "WRITE/S",
          "READ MiB/S",
          "WRITE MiB/S",
          "IN-FLIGHT",
          "P50",
          "P99",
          "ERRORS",
          "CPU",
        ],
        r.disks.map((d) => [
          d.id,
          num(d.iops),
          num(d.readIops),
          num(d.writeIops),
          num(d.readMiBps),
          num(d.writeMiBps),
          String(d.inFlight),
          latency(d.p50Us),
          latency(d.p99Us),
          d.errors > 0 ? `${d.errors} (${d.errorsTotal})` : String(d.errorsTotal),
          `${d.workerCpuPct.toFixed(1)}%`,
        ]),
      )}`,
    );
  if (r.threads.length > 0)
    out.push(
      `\n${table(
        ["THREAD", "DEVICES", "CPU", "WAKEUPS/S", "THROTTLED", "STATE"],
        r.threads.map((t) => [
          String(t.tid),
          t.devices.join(","),
          `${t.cpuPct.toFixed(1)}%`,
          num(t.wakeupsPerSec),
          `${Math.round(t.throttledMs)} ms`,
          t.held ? "held" : "serving",
        ]),
      )}`,
    );
  return out.join("");
}
