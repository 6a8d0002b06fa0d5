/** An optional limit on the entropy a guest may take. */
export interface RngRateLimit {
  /** Sustained rate, in bytes per second (a positive finite number). */
  bytesPerSecond: number;
  /**
   * Bucket size: the most bytes served at once after an idle period (≥ 1;
   * default: one second's worth, `bytesPerSecond`). The bucket starts full.
   */
  burst?: number;
}

/**
 * A token bucket over an injected millisecond clock: pure arithmetic, no
 * timers. {@link refill} at `now`, {@link available} whole bytes, {@link take}
 * what was served, and {@link waitMs} says when `bytes` will be there.
 */
export class TokenBucket {
  readonly bytesPerSecond: number;
  readonly burst: number;
  #tokens: number;
  #at: number | undefined;

  constructor(limit: RngRateLimit) {
    const rate = limit.bytesPerSecond;
    const burst = limit.burst ?? rate;
    if (typeof rate !== "number" || !Number.isFinite(rate) || rate <= 0)
      throw new RangeError(`rate limit: bytesPerSecond must be a positive finite number, not ${rate}`);
    if (typeof burst !== "number" || !Number.isFinite(burst) || burst < 1)
      throw new RangeError(`rate limit: burst must be a finite number ≥ 1, not ${burst}`);
    this.bytesPerSecond = rate;
    this.burst = Math.floor(burst);
    this.#tokens = this.burst;
  }

  /** Adds what accrued since the last refill (a clock that goes back adds nothing). */
  refill(now: number): void {
    if (this.#at !== undefined && Number.isFinite(now)) {
      const elapsed = now - this.#at;
      if (elapsed > 0)
        this.#tokens = Math.min(this.burst, this.#tokens + (elapsed * this.bytesPerSecond) / 1000);
    }
    if (Number.isFinite(now) && (this.#at === undefined || now > this.#at)) this.#at = now;
  }

  /** Whole bytes that may be served now. */
  get available(): number {
    return Math.floor(this.#tokens);
  }

  take(bytes: number): void {
    this.#tokens = Math.max(0, this.#tokens - bytes);
  }

  /** Milliseconds (≥ 1) until `bytes` (capped at the burst) are available, from the last refill. */
  waitMs(bytes: number): number {
    const want = Math.min(Math.max(1, bytes), this.burst);
    const missing = want - this.#tokens;
    if (missing <= 0) return 1;
    return Math.max(1, Math.ceil((missing * 1000) / this.bytesPerSecond));
  }
}
