// `pnpm lint`: every public package whose published files changed since the last release
// has a pending changeset naming it.
//
// The last release is the newest commit that changed a package's CHANGELOG.md or the
// "version" of a package.json (what `changeset version` does); with no release yet, the
// repository's first commit. Published files are what a package's `files` lists, with
// `dist` read as `src` (dist is built from it, and not committed), plus what npm always
// packs (package.json outside devDependencies and scripts, README, LICENSE). Changes in
// the working tree count too, committed or not, so the check says the same before and
// after a commit. Private packages are never checked.
//
// usage: node scripts/changeset-check.mjs [repository root]   (exit 1: changesets missing)
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(process.argv[2] ?? join(fileURLToPath(import.meta.url), "../.."));
const git = (...args) =>
  execFileSync("git", args, { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }).trim();
const fail = (message) => {
  console.error(`changeset-check: ${message}`);
  process.exit(1);
};

try {
  git("rev-parse", "--git-dir");
} catch {
  fail(`${root} is not a git checkout: cannot tell what changed since the last release`);
}
// A shallow clone has no history to find the last release in: say so rather than pass.
if (git("rev-parse", "--is-shallow-repository") === "true")
  fail("this is a shallow clone; run `git fetch --unshallow` so the last release can be found");

/** Workspace packages: the `packages:` globs of pnpm-workspace.yaml ("dir/*" or "dir"). */
function workspacePackages() {
  const yaml = readFileSync(join(root, "pnpm-workspace.yaml"), "utf8");
  const block = /^packages:\s*\n((?:\s+-.*\n?)*)/m.exec(yaml)?.[1] ?? "";
  const globs = [...block.matchAll(/-\s*["']?([^"'\n]+?)["']?\s*$/gm)].map((m) => m[1]);
  const dirs = globs.flatMap((g) =>
    g.endsWith("/*")
      ? existsSync(join(root, g.slice(0, -2)))
        ? readdirSync(join(root, g.slice(0, -2)), { withFileTypes: true })
            .filter((d) => d.isDirectory())
            .map((d) => `${g.slice(0, -2)}/${d.name}`)
        : []
      : [g],
  );
  return dirs
    .filter((dir) => existsSync(join(root, dir, "package.json")))
    .map((dir) => ({ dir, manifest: JSON.parse(readFileSync(join(root, dir, "package.json"), "utf8")) }));
}

/** The commit of the last `changeset version`, or the first commit when there was none. */
function lastRelease(packages) {
  const changelogs = packages.map((p) => `${p.dir}/CHANGELOG.md`);
  const manifests = packages.map((p) => `${p.dir}/package.json`);
  const candidates = [
    git("log", "-1", "--format=%H", "--", ...changelogs),
    // A "version" line added or removed in an existing package.json (not the file's creation).
    git("log", "-1", "--format=%H", "--diff-filter=M", '-G"version"[[:space:]]*:', "--", ...manifests),
  ].filter(Boolean);
  if (candidates.length === 0) {
    const first = git("rev-list", "--max-parents=0", "HEAD").split("\n").at(-1);
    return { commit: first, what: `the repository's first commit (${first.slice(0, 7)}; no release yet)` };
  }
  let newest = candidates[0];
  for (const c of candidates.slice(1)) {
    const isAncestor = (() => {
      try {
        git("merge-base", "--is-ancestor", newest, c);
        return true;
      } catch {
        return false;
      }
    })();
    if (isAncestor) newest = c;
  }
  return { commit: newest, what: `the last release (${newest.slice(0, 7)})` };
}

/** Whether `file` (relative to the package) is in the published package. */
function published(manifest, file) {
  if (/^(package\.json|README(\.[^/]*)?|LICEN[CS]E(\.[^/]*)?)$/i.test(file)) return true;
  return (manifest.files ?? []).some((entry) => {
    const e = entry.replace(/^\.\//, "").replace(/\/$/, "");
    const source = e === "dist" || e.startsWith("dist/") ? `src${e.slice(4)}` : e;
    return file === source || file.startsWith(`${source}/`);
  });
}

/** package.json as npm publishes it, minus what does not reach users. */
function publishedManifest(text) {
  try {
    const { devDependencies, scripts, version, ...rest } = JSON.parse(text);
    return JSON.stringify(rest);
  } catch {
    return text;
  }
}

/** Package names each pending changeset names (its front matter). */
function pendingChangesets() {
  const dir = join(root, ".changeset");
  const named = new Map(); // package → changeset files
  if (!existsSync(dir)) return named;
  for (const f of readdirSync(dir)) {
    if (!f.endsWith(".md") || f === "README.md") continue;
    const text = readFileSync(join(dir, f), "utf8");
    const front = /^---\r?\n([\s\S]*?)\r?\n---/.exec(text)?.[1] ?? "";
    for (const m of front.matchAll(/^\s*["']?([^"':\s]+)["']?\s*:\s*(major|minor|patch|none)\s*$/gm)) {
      named.set(m[1], [...(named.get(m[1]) ?? []), f]);
    }
  }
  return named;
}

const packages = workspacePackages();
const release = lastRelease(packages);
const changed = [
  ...git("diff", "--name-only", release.commit, "--").split("\n"),
  ...git("ls-files", "--others", "--exclude-standard").split("\n"),
].filter(Boolean);
const named = pendingChangesets();

const missing = [];
for (const { dir, manifest } of packages) {
  if (manifest.private) continue;
  const files = changed
    .filter((f) => f.startsWith(`${dir}/`))
    .map((f) => f.slice(dir.length + 1))
    .filter((f) => published(manifest, f))
    .filter((f) => {
      if (f !== "package.json") return true;
      let before = "";
      try {
        before = git("show", `${release.commit}:${dir}/package.json`);
      } catch {
        return true; // the package is new since then
      }
      return publishedManifest(before) !== publishedManifest(readFileSync(join(root, dir, f), "utf8"));
    });
  if (files.length > 0 && !named.has(manifest.name)) missing.push({ name: manifest.name, dir, files });
}

if (missing.length > 0) {
  for (const m of missing) {
    const shown =
      m.files.slice(0, 5).join(", ") + (m.files.length > 5 ? `, … (${m.files.length} files)` : "");
    console.error(
      `changeset-check: ${m.name} has no pending changeset, but its published files changed since ${release.what}: ${shown} (in ${m.dir})`,
    );
  }
  console.error(
    "changeset-check: add one per package with `pnpm changeset` (one package each, what changed for its users)",
  );
  process.exit(1);
}
const checked = packages.filter((p) => !p.manifest.private).length;
console.log(
  `changeset-check: ${checked} public packages, every one changed since ${release.what} has a pending changeset (${relative(process.cwd(), join(root, ".changeset")) || "."})`,
);
