// What a user outside the monorepo gets (issue #15): every public package, packed
// as it is published (`pnpm pack`: workspace:* become versions), is installed from
// its tarball — with the sibling tarballs it depends on, never from the registry —
// into an empty project whose PATH has node, npm and sh but no C compiler, and its
// smoke program (test/publish/<dir>.smoke.cjs) runs from ESM (import) and from
// CommonJS (require). Third-party dependencies come from the registry, through one
// npm cache for the whole file.
import { spawn } from "node:child_process";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const root = fileURLToPath(new URL("../../", import.meta.url));
const fixtures = fileURLToPath(new URL("./publish/", import.meta.url));

/** Every public package (its directory under packages/) and the entries its smoke program loads. */
const SMOKE: Record<string, string[]> = {
  virtio: ["@tskvm/virtio", "@tskvm/virtio/testing"],
  "disk-image": ["@tskvm/disk-image"],
  "kvm-core": ["@tskvm/kvm-core"],
  "virtio-blk": ["@tskvm/virtio-blk", "@tskvm/disk-image", "@tskvm/virtio", "@tskvm/virtio/testing"],
  "virtio-worker": ["@tskvm/virtio-worker", "@tskvm/virtio-worker/pci-handler"],
  "virtio-console": ["@tskvm/virtio-console"],
  "virtio-rng": ["@tskvm/virtio-rng"],
  "machine-x86": ["@tskvm/machine-x86"],
  "guest-kit": ["@tskvm/guest-kit"],
  cli: ["@tskvm/cli"],
};
/** Packages with a C++ addon: their tarball must carry the prebuilt binary. */
const NATIVE = ["kvm-core", "disk-image"];
const COMPILERS = ["cc", "gcc", "g++", "c++", "clang", "make"];

interface Manifest {
  name: string;
  version: string;
  private?: boolean;
  license?: string;
  engines?: { node?: string };
  repository?: { type?: string; url?: string; directory?: string };
  homepage?: string;
  keywords?: string[];
  dependencies?: Record<string, string>;
  exports?: Record<string, Record<string, string> | string>;
}

const readManifest = (path: string): Manifest => JSON.parse(readFileSync(path, "utf8")) as Manifest;
const manifests = new Map(
  readdirSync(join(root, "packages")).map((dir) => [
    dir,
    readManifest(join(root, "packages", dir, "package.json")),
  ]),
);
const dirOf = new Map([...manifests].map(([dir, m]) => [m.name, dir]));

/** The package's directory and those of every @tskvm package it needs at run time, transitively. */
function closure(dir: string, seen = new Set<string>()): Set<string> {
  if (seen.has(dir)) return seen;
  seen.add(dir);
  for (const dep of Object.keys(manifests.get(dir)?.dependencies ?? {})) {
    const d = dirOf.get(dep);
    if (d) closure(d, seen);
  }
  return seen;
}

interface Run {
  code: number | null;
  output: string;
}

function run(
  command: string,
  args: string[],
  options: { cwd: string; env: NodeJS.ProcessEnv },
): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { ...options, stdio: ["ignore", "pipe", "pipe"], timeout: 150_000 });
    let output = "";
    child.stdout.on("data", (d: Buffer) => {
      output += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      output += d.toString();
    });
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, output }));
  });
}

async function ok(command: string, args: string[], options: { cwd: string; env: NodeJS.ProcessEnv }) {
  const r = await run(command, args, options);
  if (r.code !== 0)
    throw new Error(`${command} ${args.join(" ")} exited ${r.code}:\n${r.output.slice(-4000)}`);
  return r.output;
}

/** npm as installed beside node (the first on PATH), resolved to its script. */
function findNpm(): string {
  const dirs = [...(process.env.PATH ?? "").split(delimiter), dirname(process.execPath)];
  for (const d of dirs) {
    const p = join(d, "npm");
    if (d && existsSync(p)) return realpathSync(p);
  }
  throw new Error("npm not found on PATH");
}

describe("publish: each public package installs from its tarball with no compiler, for import and require", () => {
  let work = "";
  const tarballs = new Map<string, string>();
  /** The environment of every install and run: PATH = node, npm and sh only. */
  let env: NodeJS.ProcessEnv = {};
  /** The same with the host's PATH (compilers included). */
  let hostEnv: NodeJS.ProcessEnv = {};

  beforeAll(async () => {
    work = mkdtempSync(join(tmpdir(), "tskvm-publish-"));
    const packs = join(work, "packs");
    const bin = join(work, "bin");
    mkdirSync(packs);
    mkdirSync(bin);
    symlinkSync(process.execPath, join(bin, "node"));
    symlinkSync(findNpm(), join(bin, "npm"));
    symlinkSync("/bin/sh", join(bin, "sh"));
    // Nothing of the monorepo may leak in: pnpm's npm_* settings, the NODE_PATH of
    // its bin shims (the store's hoisted modules). Registry and proxy settings stay.
    const keep = /^npm_config_(registry|proxy|https_proxy|noproxy|cafile|strict_ssl)$/i;
    const base: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env))
      if (
        (keep.test(k) || !/^(npm|pnpm)_/i.test(k)) &&
        !["NODE_PATH", "INIT_CWD", "NODE_OPTIONS"].includes(k)
      )
        base[k] = v;
    Object.assign(base, {
      npm_config_cache: join(work, "npm-cache"),
      npm_config_update_notifier: "false",
      npm_config_fund: "false",
      npm_config_audit: "false",
    });
    env = { ...base, PATH: bin };
    hostEnv = { ...base, PATH: process.env.PATH };

    const filters = Object.keys(SMOKE).flatMap((dir) => ["--filter", manifests.get(dir)!.name]);
    await ok("pnpm", ["-r", ...filters, "pack", "--pack-destination", packs], {
      cwd: root,
      env: process.env,
    });
    for (const dir of Object.keys(SMOKE)) {
      const m = manifests.get(dir)!;
      const file = join(packs, `${m.name.replace(/^@/, "").replace("/", "-")}-${m.version}.tgz`);
      expect(existsSync(file), file).toBe(true);
      tarballs.set(dir, file);
    }
  }, 180_000);

  afterAll(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it("covers every public package, and the install PATH has no compiler", async () => {
    const publics = [...manifests].filter(([, m]) => !m.private).map(([dir]) => dir);
    expect(Object.keys(SMOKE).sort()).toEqual(publics.sort());
    for (const c of COMPILERS) {
      const r = await run("sh", ["-c", `command -v ${c}`], { cwd: work, env });
      expect(r.code, `${c} found: ${r.output}`).not.toBe(0);
    }
  });

  for (const [dir, entries] of Object.entries(SMOKE)) {
    it(`${dir}: installs alone, runs as ESM and CJS`, async () => {
      const project = join(work, `smoke-${dir}`);
      mkdirSync(project);
      writeFileSync(
        join(project, "package.json"),
        JSON.stringify({
          name: `smoke-${dir}`,
          private: true,
          // npm 11 skips dependencies' install scripts unless allowed: let ours run, as a user would.
          allowScripts: { "@tskvm/kvm-core": true, "@tskvm/disk-image": true },
        }),
      );
      const needed = [...closure(dir)].map((d) => tarballs.get(d)!);
      await ok("npm", ["install", "--prefer-offline", "--foreground-scripts", ...needed], {
        cwd: project,
        env,
      });

      const installed = join(project, "node_modules", manifests.get(dir)!.name);
      const m = readManifest(join(installed, "package.json"));
      expect(readFileSync(join(installed, "LICENSE"), "utf8")).toContain(
        "Copyright (c) 2026 the tskvm authors",
      );
      expect(m.license).toBe("MIT");
      expect(m.engines?.node).toBe(">=20.19");
      expect(m.repository).toEqual({
        type: "git",
        url: "https://github.com/tskvm/tskvm.git",
        directory: `packages/${dir}`,
      });
      expect(m.homepage).toMatch(/^https:\/\//);
      expect(m.keywords?.length).toBeGreaterThan(0);
      for (const [entry, conditions] of Object.entries(m.exports ?? {})) {
        // A data file (cli's control-protocol JSON Schema): exported as a plain path, shipped.
        if (typeof conditions === "string") {
          expect(conditions, entry).toMatch(/\.json$/);
          expect(existsSync(join(installed, conditions)), `${entry} in the tarball`).toBe(true);
          continue;
        }
        // `types` first so both import and require see it; `default` for require().
        expect(Object.keys(conditions)[0], entry).toBe("types");
        expect(conditions.default, entry).toBe(conditions.import);
      }
      for (const d of closure(dir)) {
        if (!NATIVE.includes(d)) continue;
        const native = join(project, "node_modules", manifests.get(d)!.name);
        expect(
          readdirSync(join(native, "prebuilds", "linux-x64")).filter((f) => f.endsWith(".node")),
        ).toHaveLength(1);
        expect(existsSync(join(native, "build")), `${d} was compiled at install`).toBe(false);
      }

      copyFileSync(join(fixtures, `${dir}.smoke.cjs`), join(project, "smoke-body.cjs"));
      const names = entries.map((e, i) => [e, `m${i}`] as const);
      writeFileSync(
        join(project, "smoke.mjs"),
        [
          ...names.map(([e, v]) => `import * as ${v} from ${JSON.stringify(e)};`),
          `import smoke from "./smoke-body.cjs";`,
          `console.log("ok (esm): " + (await smoke({ ${names.map(([e, v]) => `${JSON.stringify(e)}: ${v}`).join(", ")} })));`,
          "",
        ].join("\n"),
      );
      writeFileSync(
        join(project, "smoke.cjs"),
        [
          `const smoke = require("./smoke-body.cjs");`,
          `smoke({ ${names.map(([e]) => `${JSON.stringify(e)}: require(${JSON.stringify(e)})`).join(", ")} }).then(`,
          `  (what) => console.log("ok (cjs): " + what),`,
          "  (e) => {",
          "    console.error(e);",
          "    process.exitCode = 1;",
          "  },",
          ");",
          "",
        ].join("\n"),
      );
      for (const program of ["smoke.mjs", "smoke.cjs"]) {
        const out = await ok("node", [program], { cwd: project, env });
        console.log(`${dir} ${program}: ${out.trim()}`);
        expect(out).toMatch(/^ok \((esm|cjs)\): /m);
      }
    }, 150_000);
  }

  it("without a binary for the platform, the install script compiles the addon (node-gyp is a dependency)", async () => {
    for (const dir of NATIVE) {
      const project = join(work, `smoke-${dir}`);
      const installed = join(project, "node_modules", manifests.get(dir)!.name);
      rmSync(join(installed, "prebuilds"), { recursive: true });
      // Without a compiler the fallback fails…
      const blocked = await run("npm", ["rebuild", "--foreground-scripts", manifests.get(dir)!.name], {
        cwd: project,
        env,
      });
      expect(blocked.code, blocked.output).not.toBe(0);
      // …and with one it builds the addon, which then loads.
      await ok(join(work, "bin", "npm"), ["rebuild", "--foreground-scripts", manifests.get(dir)!.name], {
        cwd: project,
        env: hostEnv,
      });
      expect(
        readdirSync(join(installed, "build", "Release")).filter((f) => f.endsWith(".node")),
      ).toHaveLength(1);
      const out = await ok("node", ["smoke.cjs"], { cwd: project, env });
      expect(out).toMatch(/^ok \(cjs\): /m);
    }
  }, 300_000);

  it("types resolve for a CommonJS and an ESM TypeScript consumer (module nodenext)", async () => {
    // The cli's project has every public package installed.
    const project = join(work, "smoke-cli");
    for (const f of ["types.cts", "types.mts"]) copyFileSync(join(fixtures, f), join(project, f));
    const tsc = join(root, "node_modules", "typescript", "bin", "tsc");
    await ok(
      "node",
      [
        tsc,
        "--noEmit",
        "--strict",
        "--module",
        "nodenext",
        "--target",
        "es2022",
        "--types",
        "node",
        "--typeRoots",
        join(root, "node_modules", "@types"),
        "types.cts",
        "types.mts",
      ],
      { cwd: project, env },
    );
  }, 120_000);
});
