// Token buckets for a device's requests and bytes, as Firecracker's rate
// limiter: refilled continuously at `rate` a second up to `burst`. The worker
// asks before serving a queue and charges what the device served after; a
// request may leave a bucket in debt (the device takes at least one), so one
// larger than the whole bucket is never starved: the next ones wait the debt off.
import type { DeviceTuning, RateLimit } from "@tskvm/machine-x86";

/** Throws unless `limit` is a usable token bucket (`what` names it in the message). */
export function checkRateLimit(what: string, limit: RateLimit): void {
  const { rate, burst } = limit;
  if (typeof rate !== "number" || !Number.isFinite(rate) || rate <= 0)
    throw new RangeError(`${what}: rate must be a number > 0, not ${String(rate)}`);
  if (burst !== undefined && (typeof burst !== "number" || !Number.isFinite(burst) || burst <= 0))
    throw new RangeError(`${what}: burst must be a number > 0, not ${String(burst)}`);
}

/**
 * The bucket size when none is given: 100 ms worth of the rate. A full second's worth would let
 * a fresh limit pass twice its rate in its first second (the bucket starts full); this keeps
 * any 5 s window within ~2% of the rate while still absorbing a short burst.
 */
export function defaultBurst(rate: number): number {
  return rate / 10;
}

/** One bucket. Times are ms (performance.now() in the worker; any clock in tests). */
export class TokenBucket {
  readonly rate: number;
  readonly burst: number;
  #tokens: number;
  #last: number;

  /** A full bucket, or one holding `tokens` (capped at the burst). */
  constructor(limit: RateLimit, now: number, tokens?: number) {
    checkRateLimit("rate limit", limit);
    this.rate = limit.rate;
    this.burst = limit.burst ?? defaultBurst(limit.rate);
    this.#tokens = Math.min(this.burst, tokens ?? this.burst);
    this.#last = now;
  }

  /** Tokens now (negative: in debt). */
  tokens(now: number): number {
    if (now > this.#last) {
      this.#tokens = Math.min(this.burst, this.#tokens + ((now - this.#last) * this.rate) / 1000);
      this.#last = now;
    }
    return this.#tokens;
  }

  /** What a serve needs before it starts: one token (or the whole bucket, when smaller). */
  get #need(): number {
    return Math.min(1, this.burst);
  }

  /** ms until a serve may start (0: now). */
  waitMs(now: number): number {
    const short = this.#need - this.tokens(now);
    return short <= 0 ? 0 : (short * 1000) / this.rate;
  }

  /** Takes `n` tokens (the bucket may go into debt). */
  take(n: number): void {
    this.#tokens -= n;
  }
}

/** A device's limits: requests (`iops`) and bytes (`bandwidth`), each optional. */
export class DeviceRateLimiter {
  #ops: TokenBucket | undefined;
  #bytes: TokenBucket | undefined;

  /** Applies `iops` / `bandwidth` from `t`: left out is unchanged, null removes the limit. */
  set(t: Pick<DeviceTuning, "iops" | "bandwidth">, now: number): void {
    if (t.iops) checkRateLimit("iops", t.iops);
    if (t.bandwidth) checkRateLimit("bandwidth", t.bandwidth);
    // A changed limit keeps what was saved (up to its new burst); a new one starts full.
    const next = (old: TokenBucket | undefined, l: RateLimit | null | undefined) =>
      l === undefined ? old : l === null ? undefined : new TokenBucket(l, now, old?.tokens(now));
    this.#ops = next(this.#ops, t.iops);
    this.#bytes = next(this.#bytes, t.bandwidth);
  }

  get limited(): boolean {
    return this.#ops !== undefined || this.#bytes !== undefined;
  }

  /** ms until a queue may be served (0: now). */
  waitMs(now: number): number {
    return Math.max(this.#ops?.waitMs(now) ?? 0, this.#bytes?.waitMs(now) ?? 0);
  }

  /** The serve budget within what the buckets hold (at least one request, as the device serves). */
  budget(requests: number, bytes: number, now: number): { requests: number; bytes: number } {
    const cap = (limit: number, b: TokenBucket | undefined) =>
      b ? Math.max(1, Math.min(limit, Math.floor(b.tokens(now)))) : limit;
    return { requests: cap(requests, this.#ops), bytes: cap(bytes, this.#bytes) };
  }

  /** Charges what the device served. */
  charge(requests: number, bytes: number): void {
    if (requests > 0) this.#ops?.take(requests);
    if (bytes > 0) this.#bytes?.take(bytes);
  }
}
