// What the guest benches share: a cache for built artefacts (CACHE/bench, CACHE = guest-kit's
// defaultCacheDir(), ~/.cache/tskvm — not /tmp: the sandbox mounts its own /tmp), static
// guest programs compiled from the C files here, an initrd that is the default guest kit plus
// those programs, and the kvmtool peer built from ../shared/peers.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { appendInitrd, defaultCacheDir, writeInitramfs } from "@tskvm/guest-kit";

const here = dirname(fileURLToPath(import.meta.url));
export const cacheDir = join(defaultCacheDir(), "bench");
mkdirSync(cacheDir, { recursive: true });

export const hash = (...parts) => {
  const h = createHash("sha256");
  for (const p of parts) h.update(p);
  return h.digest("hex").slice(0, 16);
};

/** Writes `CACHE/bench/PREFIX+KEY` atomically with `make(tmp)` unless it exists; drops older `prefix*` files. */
export function cached(prefix, key, make) {
  const path = join(cacheDir, `${prefix}${key}`);
  if (existsSync(path)) return path;
  for (const f of readdirSync(cacheDir)) if (f.startsWith(prefix)) rmSync(join(cacheDir, f), { force: true });
  const tmp = `${path}.${process.pid}.tmp`;
  make(tmp);
  renameSync(tmp, path);
  return path;
}

/** `gcc -O2 -static` of `name.c` (beside this file), cached by its source. */
export function staticProgram(name) {
  const source = readFileSync(join(here, `${name}.c`));
  return cached(`${name}-`, hash(source), (out) => {
    const r = spawnSync("gcc", ["-O2", "-Wall", "-static", "-o", out, join(here, `${name}.c`)], {
      encoding: "utf8",
    });
    if (r.status !== 0)
      throw new Error(`gcc ${name}.c failed (exit ${r.status}):\n${r.stderr}${r.error ?? ""}`);
  });
}

/** The kit's initrd plus `programs` (names of the C files here) at the root, as a second archive. */
export function initrdWith(kit, programs, prefix) {
  const files = programs.map((p) => ({ name: p, data: readFileSync(staticProgram(p)) }));
  const kitInitrd = readFileSync(kit.initrd);
  // Linux unpacks an initramfs made of several gzip'd cpio archives one after another.
  return cached(prefix, hash(kitInitrd, ...files.map((f) => f.data)), (out) =>
    appendInitrd(
      kit.initrd,
      writeInitramfs(files.map((f) => ({ type: "file", path: f.name, data: f.data, mode: 0o755 }))),
      out,
    ),
  );
}

/**
 * kvmtool (lkvm, with libaio) built by ../shared/peers/build-kvmtool.sh into the cache, or
 * undefined with the reason when the peers directory is not there.
 */
export function kvmtool() {
  const script = join(here, "../../../shared/peers/build-kvmtool.sh");
  if (!existsSync(script)) return { missing: `${script} not found` };
  const out = join(cacheDir, "kvmtool-b48735e");
  const r = spawnSync("sh", [script, out], { encoding: "utf8" });
  if (r.status !== 0)
    return { missing: `build-kvmtool.sh failed (exit ${r.status}): ${r.stdout}${r.stderr}` };
  return { lkvm: join(out, "lkvm") };
}

/** The median of the numbers among `xs` (the mean of the middle two for an even count), or undefined. */
export function median(xs) {
  const s = xs.filter((x) => typeof x === "number" && Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return undefined;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** `x` with `digits` decimals, or "—" when it is not a finite number (a table cell). */
export const fmt = (x, digits) => (typeof x === "number" && Number.isFinite(x) ? x.toFixed(digits) : "—");

/**
 * Writes a bench's rows as JSON to $envVar, or bench/results/NAME-DATE.json, and says where.
 * `date` is the ISO date of the run.
 */
export function saveRows(name, envVar, date, payload) {
  const path =
    process.env[envVar] ?? join(here, "results", `${name}-${date.slice(0, 19).replaceAll(":", "")}.json`);
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, `${JSON.stringify({ date, ...payload }, null, 2)}\n`);
  console.log(`\nrows: ${path}`);
}
