// Request latency as a fixed histogram: cheap to keep (one add per request, nothing
// allocated), plain JSON to report, and two snapshots give the last interval's
// percentiles (histogramDelta, then latencyPercentiles).

/**
 * Buckets per doubling of the latency. Four (a factor of 2^¼ ≈ 1.19 between bounds) puts a
 * percentile within 19% of the true value; powers of two alone (a factor 2) cannot tell
 * 600 µs from 1 ms, which is the difference a controller watching p99 is after.
 */
export const LATENCY_BUCKETS_PER_OCTAVE = 4;
/** Doublings above 1 µs covered: up to 2^24 µs ≈ 16.8 s; slower requests share the last bucket. */
export const LATENCY_OCTAVES = 24;
/** Buckets: one under 1 µs, 96 from 1 µs to 2^24 µs, one above. */
export const LATENCY_BUCKETS = 2 + LATENCY_OCTAVES * LATENCY_BUCKETS_PER_OCTAVE;

/**
 * Request latencies since the device started: from when the device took the request off
 * the ring to when it put the answer in the used ring (queueing in the guest and the
 * interrupt are not in it). Counts only grow; {@link histogramDelta} gives an interval.
 */
export interface LatencyHistogram {
  /**
   * `counts[i]`: requests whose latency fell in bucket i — below {@link latencyBucketBound}(i)
   * µs and at or above the previous bucket's bound. Bucket 0 is under 1 µs; the last one
   * (from 2^24 µs) has no upper bound. {@link LATENCY_BUCKETS} entries.
   */
  counts: number[];
  /** Requests counted (the sum of `counts`). */
  count: number;
  /** Sum of their latencies, µs (mean = sumUs / count). */
  sumUs: number;
}

/** Upper bound of bucket `i` in µs (exclusive); Infinity for the last bucket. */
export function latencyBucketBound(i: number): number {
  if (i >= LATENCY_BUCKETS - 1) return Number.POSITIVE_INFINITY;
  return 2 ** (i / LATENCY_BUCKETS_PER_OCTAVE);
}

/** The bucket a latency of `us` µs falls in. */
export function latencyBucket(us: number): number {
  if (!(us >= 1)) return 0; // also NaN and negative (a clock that went backwards)
  const i = 1 + Math.floor(Math.log2(us) * LATENCY_BUCKETS_PER_OCTAVE);
  return Math.min(i, LATENCY_BUCKETS - 1);
}

/** An empty histogram. */
export function emptyLatencyHistogram(): LatencyHistogram {
  return { counts: new Array<number>(LATENCY_BUCKETS).fill(0), count: 0, sumUs: 0 };
}

/**
 * The latency below which fraction `q` of the requests fell, for each `q` in `quantiles`
 * (0 to 1: 0.5 the median, 0.99 the p99), in µs: the upper bound of the bucket that holds
 * the request of rank ⌈q·count⌉ (at least the first), so an estimate at most one bucket
 * (19%) above the truth, never below it. A request in the last bucket reports its lower
 * bound, 2^24 µs (≈ 16.8 s, "at least"). null for every `q` when the histogram is empty.
 */
export function latencyPercentiles(
  histogram: LatencyHistogram,
  quantiles: readonly number[],
): (number | null)[] {
  for (const q of quantiles) if (!(q >= 0 && q <= 1)) throw new RangeError(`quantile ${q} is not in 0..1`);
  const { counts } = histogram;
  let total = 0;
  for (const c of counts) total += c;
  return quantiles.map((q) => {
    if (total === 0) return null;
    const rank = Math.max(1, Math.ceil(q * total));
    let seen = 0;
    for (let i = 0; i < counts.length; i++) {
      seen += counts[i]!;
      if (seen >= rank)
        return i >= LATENCY_BUCKETS - 1 ? latencyBucketBound(LATENCY_BUCKETS - 2) : latencyBucketBound(i);
    }
    return null; // not reached: seen ends at total ≥ rank
  });
}

/**
 * What happened between two snapshots of the same device's histogram (`earlier` taken
 * first): the requests completed in between. Throws when `earlier` is not an earlier
 * snapshot (a bucket shrank, or the shapes differ).
 */
export function histogramDelta(later: LatencyHistogram, earlier: LatencyHistogram): LatencyHistogram {
  if (later.counts.length !== earlier.counts.length)
    throw new RangeError(
      `histograms of ${later.counts.length} and ${earlier.counts.length} buckets cannot be compared`,
    );
  const counts = later.counts.map((c, i) => {
    const d = c - earlier.counts[i]!;
    if (d < 0)
      throw new RangeError(`bucket ${i} went from ${earlier.counts[i]} to ${c}: not an earlier snapshot`);
    return d;
  });
  return { counts, count: later.count - earlier.count, sumUs: later.sumUs - earlier.sumUs };
}

/** The device's side: counts in a typed array, one add per request; {@link snapshot} copies out. */
export class LatencyRecorder {
  readonly #counts = new Float64Array(LATENCY_BUCKETS);
  #count = 0;
  #sumUs = 0;

  /** One request that took `ms` (performance.now() units). */
  add(ms: number): void {
    const us = ms * 1000;
    this.#counts[latencyBucket(us)]!++;
    this.#count++;
    if (us > 0) this.#sumUs += us;
  }

  snapshot(): LatencyHistogram {
    return { counts: Array.from(this.#counts), count: this.#count, sumUs: this.#sumUs };
  }
}
