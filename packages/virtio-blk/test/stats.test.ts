// The disk's counters as a controller reads them: requests by type, bytes, error answers,
// and the latency histogram with its percentile and interval helpers.
import { afterEach, describe, expect, it } from "vitest";
import {
  emptyLatencyHistogram,
  histogramDelta,
  LATENCY_BUCKETS,
  type LatencyHistogram,
  latencyBucket,
  latencyBucketBound,
  latencyPercentiles,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES,
} from "../src/index.js";
import { blkRig, header, pattern, segments } from "./driver.js";

const rigs: ReturnType<typeof blkRig>[] = [];
afterEach(() => {
  for (const r of rigs.splice(0)) r.close();
});

/** A histogram with `n` requests in each bucket given as [bucket, n]. */
function histogram(entries: [number, number][]): LatencyHistogram {
  const h = emptyLatencyHistogram();
  for (const [b, n] of entries) {
    h.counts[b] = (h.counts[b] ?? 0) + n;
    h.count += n;
  }
  return h;
}

describe("device counters", () => {
  it("count a known sequence by type, bytes and error answers; every answered request is in the histogram", () => {
    const r = blkRig({ diskSize: 1 << 20 });
    rigs.push(r);
    const status = { length: 1, writable: true };
    const ok = (c: { status: number | undefined }) => expect(c.status).toBe(VIRTIO_BLK_S_OK);
    for (let i = 0; i < 3; i++)
      ok(r.run([{ data: header(VIRTIO_BLK_T_OUT, i * 8) }, { data: pattern(4096, i) }, status]));
    for (let i = 0; i < 2; i++)
      ok(r.run([{ data: header(VIRTIO_BLK_T_IN, i * 16) }, { length: 8192 }, status]));
    ok(r.run([{ data: header(VIRTIO_BLK_T_FLUSH) }, status]));
    ok(r.run([{ data: header(VIRTIO_BLK_T_GET_ID) }, { length: 20 }, status]));
    ok(r.run([{ data: header(VIRTIO_BLK_T_DISCARD) }, { data: segments([{ sector: 64, num: 8 }]) }, status]));
    ok(
      r.run([
        { data: header(VIRTIO_BLK_T_WRITE_ZEROES) },
        { data: segments([{ sector: 80, num: 8 }]) },
        status,
      ]),
    );
    // The driver's mistakes: an unknown type (UNSUPP), a read past the end (IOERR), no status byte.
    expect(r.run([{ data: header(99) }, status]).status).toBe(VIRTIO_BLK_S_UNSUPP);
    expect(r.run([{ data: header(VIRTIO_BLK_T_IN, 2048) }, { length: 512 }, status]).status).toBe(
      VIRTIO_BLK_S_IOERR,
    );
    expect(r.run([{ data: header(VIRTIO_BLK_T_IN, 0) }]).len).toBe(0);

    const s = r.device.stats;
    expect(s.requests).toEqual({
      read: 2,
      write: 3,
      flush: 1,
      getId: 1,
      discard: 1,
      writeZeroes: 1,
      unsupported: 1,
      invalid: 1,
    });
    expect(s.errors).toEqual({ ioerr: 1, unsupp: 1, malformed: 1 });
    expect(s).toMatchObject({
      bytesRead: 2 * 8192,
      bytesWritten: 3 * 4096,
      reads: 2,
      writes: 3,
      completed: 11,
      rejected: 2,
      failed: 1,
      ioErrors: 0,
      inFlight: 0,
      queues: 1,
    });
    expect(r.device.bytesServed).toBe(2 * 8192 + 3 * 4096); // what a bandwidth limit charges
    const sum = Object.values(s.requests).reduce((a, b) => a + b, 0);
    expect(sum).toBe(s.completed);
    expect(s.latency.count).toBe(s.completed);
    expect(s.latency.counts).toHaveLength(LATENCY_BUCKETS);
    expect(s.latency.counts.reduce((a, b) => a + b, 0)).toBe(s.completed);
    expect(s.latency.sumUs).toBeGreaterThan(0);
    // Plain JSON: what crosses the control socket is what the device holds.
    expect(JSON.parse(JSON.stringify(s))).toEqual(s);
    // A snapshot is a copy: later requests do not change it.
    const before = r.device.stats;
    ok(r.run([{ data: header(VIRTIO_BLK_T_IN, 0) }, { length: 512 }, status]));
    expect(before.requests.read).toBe(2);
    const delta = histogramDelta(r.device.stats.latency, before.latency);
    expect(delta.count).toBe(1);
    expect(latencyPercentiles(delta, [0.5])[0]).toBeGreaterThan(0);
  });

  it("a disk error is a read in `requests` and an IOERR in `errors`", () => {
    const r = blkRig({
      wrapImage: (image) =>
        new Proxy(image, {
          get: (t, k) =>
            k === "readv"
              ? () => {
                  throw new Error("EIO");
                }
              : k === "readvBatch"
                ? undefined
                : typeof Reflect.get(t, k, t) === "function"
                  ? (Reflect.get(t, k, t) as (...a: unknown[]) => unknown).bind(t)
                  : Reflect.get(t, k, t),
        }),
    });
    rigs.push(r);
    expect(r.run([{ data: header(VIRTIO_BLK_T_IN, 0) }, { length: 512 }, { length: 1 }]).status).toBe(
      VIRTIO_BLK_S_IOERR,
    );
    expect(r.device.stats).toMatchObject({
      ioErrors: 1,
      reads: 0,
      requests: { read: 1, invalid: 0 },
      errors: { ioerr: 1, unsupp: 0, malformed: 0 },
      latency: { count: 1 },
    });
  });
});

describe("latency histogram", () => {
  it("buckets: under 1 µs, four per doubling, one past 2^24 µs", () => {
    expect(latencyBucket(0)).toBe(0);
    expect(latencyBucket(0.999)).toBe(0);
    expect(latencyBucket(-5)).toBe(0);
    expect(latencyBucket(Number.NaN)).toBe(0);
    expect(latencyBucket(1)).toBe(1);
    expect(latencyBucket(2)).toBe(5);
    expect(latencyBucket(1000)).toBe(1 + Math.floor(Math.log2(1000) * 4)); // 40
    expect(latencyBucket(2 ** 24 - 1)).toBe(LATENCY_BUCKETS - 2);
    expect(latencyBucket(2 ** 24)).toBe(LATENCY_BUCKETS - 1);
    expect(latencyBucket(Number.POSITIVE_INFINITY)).toBe(LATENCY_BUCKETS - 1);
    // Every latency is below its bucket's bound and at or above the previous one's.
    for (const us of [0.5, 1, 1.3, 7, 100, 999, 1000, 65_536, 3e6, 1.6e7]) {
      const b = latencyBucket(us);
      expect(us).toBeLessThan(latencyBucketBound(b));
      if (b > 0) expect(us).toBeGreaterThanOrEqual(latencyBucketBound(b - 1));
    }
    expect(latencyBucketBound(LATENCY_BUCKETS - 1)).toBe(Number.POSITIVE_INFINITY);
  });

  it("percentiles of known histograms: the bound of the bucket holding the rank", () => {
    const b100 = latencyBucket(100);
    const b1000 = latencyBucket(1000);
    // 98 requests near 100 µs, 2 near 1 ms: p50 and p98 in the first bucket, p99 and p100 in the second.
    const h = histogram([
      [b100, 98],
      [b1000, 2],
    ]);
    expect(latencyPercentiles(h, [0.5, 0.98, 0.99, 1])).toEqual([
      latencyBucketBound(b100),
      latencyBucketBound(b100),
      latencyBucketBound(b1000),
      latencyBucketBound(b1000),
    ]);
    // Within one bucket (19%) above the truth, never below.
    const [p50, p99] = latencyPercentiles(h, [0.5, 0.99]) as number[];
    expect(p50).toBeGreaterThan(100);
    expect(p50).toBeLessThan(100 * 2 ** 0.25);
    expect(p99).toBeGreaterThan(1000);
    expect(p99).toBeLessThan(1000 * 2 ** 0.25);
  });

  it("empty histograms give null; the extremes: q 0 and 1, one request, the first and last buckets", () => {
    expect(latencyPercentiles(emptyLatencyHistogram(), [0.5, 0.99])).toEqual([null, null]);
    expect(latencyPercentiles(emptyLatencyHistogram(), [])).toEqual([]);
    const one = histogram([[latencyBucket(300), 1]]);
    const bound = latencyBucketBound(latencyBucket(300));
    expect(latencyPercentiles(one, [0, 0.5, 0.99, 1])).toEqual([bound, bound, bound, bound]);
    // Sub-µs requests report 1 µs; the slowest bucket its lower bound 2^24 µs (≈ 16.8 s: "at least").
    const ends = histogram([
      [0, 1],
      [LATENCY_BUCKETS - 1, 1],
    ]);
    expect(latencyPercentiles(ends, [0, 0.5, 1])).toEqual([1, 1, 2 ** 24]);
    expect(() => latencyPercentiles(one, [1.5])).toThrow(RangeError);
    expect(() => latencyPercentiles(one, [-0.1])).toThrow(RangeError);
    expect(() => latencyPercentiles(one, [Number.NaN])).toThrow(RangeError);
  });

  it("histogramDelta: what two snapshots have between them; refuses a later one given as earlier", () => {
    const earlier = histogram([[10, 5]]);
    earlier.sumUs = 50;
    const later = histogram([
      [10, 7],
      [40, 3],
    ]);
    later.sumUs = 3100;
    const d = histogramDelta(later, earlier);
    expect(d.count).toBe(5);
    expect(d.sumUs).toBe(3050);
    expect(d.counts[10]).toBe(2);
    expect(d.counts[40]).toBe(3);
    expect(d.counts.reduce((a, b) => a + b, 0)).toBe(5);
    expect(histogramDelta(later, later).count).toBe(0);
    expect(latencyPercentiles(histogramDelta(later, later), [0.5])).toEqual([null]);
    // p99 over the interval is the slow requests', though over all time it is not.
    expect(latencyPercentiles(d, [0.99])[0]).toBe(latencyBucketBound(40));
    expect(() => histogramDelta(earlier, later)).toThrow(/not an earlier snapshot/);
    expect(() => histogramDelta(later, { counts: [1], count: 1, sumUs: 1 })).toThrow(RangeError);
  });
});
