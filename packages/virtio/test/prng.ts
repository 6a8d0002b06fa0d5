/** mulberry32: small, fast, reproducible. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class Rng {
  readonly next: () => number;
  constructor(seed: number) {
    this.next = prng(seed);
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  u32(): number {
    return (this.int(0x10000) * 0x10000 + this.int(0x10000)) >>> 0;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
}

/** The seed for a fuzz suite: VIRTIO_FUZZ_SEED if set, else a fixed default. Printed so a failure can be replayed. */
export function fuzzSeed(name: string, fallback: number): number {
  const env = process.env.VIRTIO_FUZZ_SEED;
  const seed = env !== undefined && env !== "" ? Number(env) >>> 0 : fallback;
  console.log(`[${name}] seed ${seed} (replay with VIRTIO_FUZZ_SEED=${seed})`);
  return seed;
}
