// Sizes as qemu-img and lkvm read and print them: one parser for every flag that takes a
// size (`-m`, `image create SIZE`, `--cluster-size`), one formatter for every size shown.
import { UsageError } from "./command.js";

/** Powers of 1024, as qemu-img (`qemu_strtosz`) and lkvm read K, M, G, T, P, E. */
const SHIFT: Record<string, number> = { b: 0, k: 10, m: 20, g: 30, t: 40, p: 50, e: 60 };

export interface SizeSyntax {
  /** How the error names what was given, e.g. `-m/--mem` or `SIZE`. */
  name: string;
  /** The unit of a number without a suffix: bytes (qemu-img) or MiB (lkvm's `-m`). */
  unit: "B" | "M";
  /** A valid command line or value to show in the error, e.g. `-m 1.5G`. */
  example: string;
}

/**
 * `10G`, `512M`, `1.5G`, `0x1000`, `4096` → bytes. Suffixes K, M, G, T, P, E (any case,
 * optionally followed by `B` or `iB`) are powers of 1024; a number without one is in
 * `syntax.unit`. As qemu-img: a fraction needs a suffix and is cut to whole bytes.
 * Throws a {@link UsageError} that names the flag and shows an example.
 */
export function parseSize(text: string, syntax: SizeSyntax): number {
  const m = /^(?:(0x[0-9a-f]+)|(\d+(?:\.\d*)?))(?:([kmgtpe])(?:i?b)?|(b))?$/i.exec(text.trim());
  const bad = (why: string) =>
    new UsageError(
      `${syntax.name}: '${text}' ${why}; use a number with an optional K, M, G or T suffix (powers of 1024${
        syntax.unit === "M" ? ", MiB without one" : ", bytes without one"
      }), e.g. ${syntax.example}`,
    );
  if (!m) throw bad("is not a size");
  const [, hex, dec, suffix, bytesSuffix] = m;
  const unit = suffix ?? bytesSuffix ?? (syntax.unit === "M" ? "m" : "b");
  const shift = SHIFT[unit.toLowerCase()]!;
  if (dec?.includes(".") && shift === 0) throw bad("has a fraction of a byte");
  const value = hex !== undefined ? Number.parseInt(hex, 16) : Number(dec);
  const bytes = Math.floor(value * 2 ** shift);
  if (!Number.isSafeInteger(bytes)) throw bad("is too large");
  return bytes;
}

const SUFFIXES = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

/**
 * Bytes as qemu-img prints them (`size_to_str`): three significant digits, `%g`-style, in
 * the binary unit that keeps the number below 1000 — `196 KiB`, `1.5 GiB`, `0.977 KiB`.
 */
export function formatSize(bytes: number): string {
  if (!Number.isInteger(bytes) || bytes < 0) return `${bytes} B`;
  // C's frexp: the exponent e with x = f·2^e, 0.5 ≤ f < 1; the 1000/1024 correction
  // moves 1000..1023 of a unit up to 0.977.. of the next.
  const x = bytes / (1000 / 1024);
  const e = x > 0 ? Math.floor(Math.log2(x)) + 1 : 0;
  const i = Math.min(SUFFIXES.length - 1, Math.max(0, Math.trunc((e - 1) / 10)));
  return `${threeDigits(BigInt(bytes), 10 * i)} ${SUFFIXES[i]}B`;
}

/** `%0.3g` of n / 2^shift, exactly (ties to even, as glibc prints a double that is exact). */
function threeDigits(n: bigint, shift: number): string {
  if (n === 0n) return "0";
  const den = 1n << BigInt(shift);
  // X: the decimal exponent of the value (then of the rounded value, which may be one more).
  let x = (n / den).toString().length - 1;
  if (n < den) {
    x = -1;
    while ((n * 10n ** BigInt(-x)) / den === 0n) x--;
  }
  const round = (k: number): bigint => {
    const num = k >= 0 ? n * 10n ** BigInt(k) : n;
    const d = k >= 0 ? den : den * 10n ** BigInt(-k);
    let q = num / d;
    const r2 = (num % d) * 2n;
    if (r2 > d || (r2 === d && q % 2n === 1n)) q++;
    return q;
  };
  let q = round(2 - x);
  if (q === 1000n) {
    x++;
    q = 100n;
  }
  if (x < -4 || x >= 3) {
    const mantissa = `${q / 100n}.${(q % 100n).toString().padStart(2, "0")}`.replace(/\.?0+$/, "");
    return `${mantissa}e${x < 0 ? "-" : "+"}${String(Math.abs(x)).padStart(2, "0")}`;
  }
  const k = 2 - x;
  if (k <= 0) return (q * 10n ** BigInt(-k)).toString();
  const digits = q.toString().padStart(k + 1, "0");
  return `${digits.slice(0, -k)}.${digits.slice(-k)}`.replace(/\.?0+$/, "");
}

/** A transfer rate for progress lines, e.g. `12.3 MiB/s`. */
export function formatRate(bytes: number, ms: number): string {
  return ms > 0 ? `${formatSize(Math.round((bytes * 1000) / ms))}/s` : "";
}
