// The binary-stats reader on a file laid out as KVM_GET_STATS_FD's (no /dev/kvm needed;
// the machine-x86 scenarios read a live vCPU's), and the kvm_clock_data layout.
import { mkdtempSync, openSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { KvmStatsReader, StatsType, StatsUnit } from "../dist/stats.js";
import { CLOCK_DATA_SIZE, decodeClockData, encodeClockData } from "../dist/structs.js";

const NAME_SIZE = 48;

/** A stats file: header, id, descriptors (name_size bytes of name each), data block. */
function statsFile(stats: { name: string; flags: number; exponent: number; values: bigint[] }[]): Buffer {
  const idOffset = 24;
  const descOffset = idOffset + NAME_SIZE;
  const stride = 16 + NAME_SIZE;
  const dataOffset = descOffset + stride * stats.length + 8; // KVM leaves no gap; a reader must not assume it
  const dataSize = stats.reduce((n, s) => n + s.values.length * 8, 0);
  const b = Buffer.alloc(dataOffset + dataSize);
  b.writeUInt32LE(0, 0);
  b.writeUInt32LE(NAME_SIZE, 4);
  b.writeUInt32LE(stats.length, 8);
  b.writeUInt32LE(idOffset, 12);
  b.writeUInt32LE(descOffset, 16);
  b.writeUInt32LE(dataOffset, 20);
  b.write("kvm-42/vcpu-0", idOffset, "latin1");
  let offset = 0;
  stats.forEach((s, i) => {
    const o = descOffset + i * stride;
    b.writeUInt32LE(s.flags, o);
    b.writeInt16LE(s.exponent, o + 4);
    b.writeUInt16LE(s.values.length, o + 6);
    b.writeUInt32LE(offset, o + 8);
    b.write(s.name, o + 16, "latin1");
    s.values.forEach((v, j) => {
      b.writeBigUInt64LE(v, dataOffset + offset + j * 8);
    });
    offset += s.values.length * 8;
  });
  return b;
}

describe("KvmStatsReader", () => {
  const dir = mkdtempSync(join(tmpdir(), "kvm-stats-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, "stats");

  it("reads the id, the descriptors and the single-valued counters, leaving histograms out", () => {
    writeFileSync(
      path,
      statsFile([
        { name: "exits", flags: StatsType.CUMULATIVE, exponent: 0, values: [1234n] },
        {
          name: "halt_wait_ns",
          flags: StatsType.CUMULATIVE | StatsUnit.SECONDS,
          exponent: -9,
          values: [5_000_000_000n],
        },
        {
          name: "halt_wait_hist",
          flags: StatsType.LOG_HIST | StatsUnit.SECONDS,
          exponent: -9,
          values: [1n, 2n],
        },
        { name: "guest_mode", flags: StatsType.INSTANT | StatsUnit.BOOLEAN, exponent: 0, values: [1n] },
      ]),
    );
    const r = new KvmStatsReader(openSync(path, "r"));
    try {
      expect(r.id).toBe("kvm-42/vcpu-0");
      expect(r.descriptors.map((d) => [d.name, d.type, d.unit, d.exponent, d.size])).toEqual([
        ["exits", StatsType.CUMULATIVE, StatsUnit.NONE, 0, 1],
        ["halt_wait_ns", StatsType.CUMULATIVE, StatsUnit.SECONDS, -9, 1],
        ["halt_wait_hist", StatsType.LOG_HIST, StatsUnit.SECONDS, -9, 2],
        ["guest_mode", StatsType.INSTANT, StatsUnit.BOOLEAN, 0, 1],
      ]);
      expect(r.read()).toEqual({ exits: 1234, halt_wait_ns: 5_000_000_000, guest_mode: 1 });
    } finally {
      r.close();
    }
    expect(r.closed).toBe(true);
    expect(() => r.read()).toThrow(/after close/);
  });

  it("sees new values on each read", () => {
    const stats = [{ name: "io_exits", flags: 0, exponent: 0, values: [1n] }];
    writeFileSync(path, statsFile(stats));
    const r = new KvmStatsReader(openSync(path, "r+"));
    try {
      expect(r.read()).toEqual({ io_exits: 1 });
      stats[0]!.values = [77n];
      writeFileSync(path, statsFile(stats));
      expect(r.read()).toEqual({ io_exits: 77 });
    } finally {
      r.close();
    }
  });

  it("refuses a truncated file", () => {
    writeFileSync(path, statsFile([{ name: "exits", flags: 0, exponent: 0, values: [1n] }]).subarray(0, 60));
    expect(() => new KvmStatsReader(openSync(path, "r"))).toThrow(/short read/);
  });
});

describe("kvm_clock_data", () => {
  it("round-trips clock, flags, realtime and host_tsc at their offsets", () => {
    const b = encodeClockData({ clock: 123n, flags: 4, realtime: 1n << 60n, hostTsc: 7n });
    expect(b.length).toBe(CLOCK_DATA_SIZE);
    const dv = new DataView(b.buffer);
    expect(dv.getBigUint64(0, true)).toBe(123n);
    expect(dv.getUint32(8, true)).toBe(4);
    expect(dv.getBigUint64(16, true)).toBe(1n << 60n);
    expect(dv.getBigUint64(24, true)).toBe(7n);
    expect(decodeClockData(b)).toEqual({ clock: 123n, flags: 4, realtime: 1n << 60n, hostTsc: 7n });
  });
});
