import { describe, expect, it } from "vitest";
import { tempDir } from "./helpers.js";
import { fuzzSettings, makeBases, runQcow2Fuzz } from "./qcow2-fuzz-cases.js";

/*
 * Corrupt images (the machinery is in qcow2-fuzz-cases.ts): mutated headers
 * and tables must give a clear DiskImageError — never another exception, a
 * crash, a hang or a read past the end of the file — and writes to a mutated
 * image must never touch clusters that were free in the original.
 *
 * CI runs 1% of the full count with a fixed seed; `pnpm fuzz` sets
 * TSKVM_FUZZ_SCALE=100 (120,000 read-only and 30,000 writable images) and a
 * fresh seed. Replay: TSKVM_FUZZ_SEED=<seed> [TSKVM_FUZZ_SCALE=100] [TSKVM_FUZZ_CASE=<n>].
 */

const READ_CASES = 1200;
const WRITE_CASES = 300;

describe("qcow2: corrupt images", () => {
  const dir = tempDir("tskvm-fuzz-");
  const { scale, seed, only } = fuzzSettings();
  const readCases = Math.round(READ_CASES * scale);
  const writeCases = Math.round(WRITE_CASES * scale);

  it(
    `${readCases} mutated images read, ${writeCases} written: only DiskImageErrors, no read past the end of a file, free clusters untouched, bounded time and memory`,
    async () => {
      console.log(
        `[qcow2 fuzz] seed=${seed} scale=${scale} (replay with TSKVM_FUZZ_SEED=${seed} TSKVM_FUZZ_SCALE=${scale}, one case with TSKVM_FUZZ_CASE=<n>)`,
      );
      const r = await runQcow2Fuzz({ dir, bases: makeBases(dir), seed, readCases, writeCases, only });
      console.log(`[qcow2 fuzz] outcomes: ${JSON.stringify(r.outcomes)}`);
      console.log(
        `[qcow2 fuzz] ${r.images} images in ${(r.ms / 1000).toFixed(1)} s; by outcome ${JSON.stringify(r.byCode)}; crashes ${r.crashes.length}; reads past the end ${r.outsideReads.length}; slowest case ${r.slowestMs} ms; peak RSS ${r.peakRssMiB} MiB`,
      );
      expect(r.crashes.slice(0, 3), "crashes").toEqual([]);
      if (r.outsideReads.length) console.log(r.outsideReads.slice(0, 20).join("\n"));
      expect(r.outsideReads.slice(0, 5), "reads past the end of a file").toEqual([]);
      expect(r.freeClusterWrites.slice(0, 5), "writes into free clusters").toEqual([]);
      expect(r.images).toBe(only === undefined ? readCases + writeCases : 1);
      expect(r.slowestMs).toBeLessThan(5000);
      // Per image at most a 32 MiB L1 table, an 8 MiB refcount table and the default caches.
      expect(r.peakRssMiB).toBeLessThan(1024);
    },
    3 * 60 * 60_000,
  );
});
