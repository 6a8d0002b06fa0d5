// The release process: scripts/changeset-check.mjs (run by `pnpm lint`) on throwaway git
// repositories, and `changeset version` on a copy of this repository's manifests and
// pending changesets — per-package CHANGELOGs, no versions for private packages.
import { execFileSync, spawnSync } from "node:child_process";
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";

const root = fileURLToPath(new URL("../../", import.meta.url));
const checkScript = join(root, "scripts/changeset-check.mjs");
const changesetBin = join(root, "node_modules/@changesets/cli/bin.js");
const temps: string[] = [];
afterAll(() => {
  for (const t of temps) rmSync(t, { recursive: true, force: true });
});

const gitEnv = {
  ...process.env,
  GIT_AUTHOR_NAME: "t",
  GIT_AUTHOR_EMAIL: "t@example.com",
  GIT_COMMITTER_NAME: "t",
  GIT_COMMITTER_EMAIL: "t@example.com",
};
const git = (cwd: string, ...args: string[]) =>
  execFileSync("git", args, { cwd, env: gitEnv, encoding: "utf8" });
const write = (dir: string, file: string, text: string) => {
  mkdirSync(dirname(join(dir, file)), { recursive: true });
  writeFileSync(join(dir, file), text);
};
const commitAll = (dir: string, message: string) => {
  git(dir, "add", "-A");
  git(dir, "commit", "-q", "-m", message);
};
const check = (dir: string) => {
  const r = spawnSync(process.execPath, [checkScript, dir], { encoding: "utf8", timeout: 30_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
};
const changeset = (dir: string, pkg: string, file: string) =>
  write(dir, `.changeset/${file}.md`, `---\n"${pkg}": patch\n---\n\nWhat changed in ${pkg}.\n`);

/** A workspace like this one: two public packages and a private one. */
function fixtureRepo(): string {
  const dir = mkdtempSync(join(tmpdir(), "tskvm-changesets-"));
  temps.push(dir);
  const manifest = (name: string, extra: object = {}) =>
    `${JSON.stringify({ name, version: "0.0.0", type: "module", files: ["dist", "README.md"], ...extra }, null, 2)}\n`;
  write(dir, "package.json", `${JSON.stringify({ name: "root", private: true })}\n`);
  write(dir, "pnpm-workspace.yaml", 'packages:\n  - "packages/*"\n');
  cpSync(join(root, ".changeset/config.json"), join(dir, ".changeset/config.json"));
  write(dir, ".changeset/README.md", "# Changesets\n");
  for (const p of ["a", "b"]) {
    write(dir, `packages/${p}/package.json`, manifest(`@t/${p}`, { devDependencies: { x: "1.0.0" } }));
    write(dir, `packages/${p}/src/index.ts`, "export const x = 1;\n");
    write(dir, `packages/${p}/test/x.test.ts`, "// test\n");
    write(dir, `packages/${p}/README.md`, `# @t/${p}\n`);
  }
  write(dir, "packages/c/package.json", manifest("@t/c", { private: true }));
  write(dir, "packages/c/src/index.ts", "export const x = 1;\n");
  git(dir, "init", "-q", "-b", "main");
  commitAll(dir, "first");
  return dir;
}

describe("changeset-check (pnpm lint)", () => {
  it("fails naming a public package whose source changed with no changeset, and passes once one names it", () => {
    const dir = fixtureRepo();
    expect(check(dir).status).toBe(0);

    write(dir, "packages/a/src/index.ts", "export const x = 2;\n");
    let r = check(dir); // uncommitted counts
    expect(r.status, r.out).toBe(1);
    expect(r.out).toMatch(/@t\/a has no pending changeset.*src\/index\.ts/);
    expect(r.out).not.toContain("@t/b");
    commitAll(dir, "a: change");
    r = check(dir);
    expect(r.status, r.out).toBe(1);
    expect(r.out).toContain("@t/a");

    changeset(dir, "@t/a", "a-change");
    r = check(dir);
    expect(r.status, r.out).toBe(0);
    commitAll(dir, "a: changeset");
    expect(check(dir).status).toBe(0);

    // A changeset naming another package does not count for this one.
    write(dir, "packages/b/README.md", "# @t/b\n\nNow documented.\n");
    r = check(dir);
    expect(r.status, r.out).toBe(1);
    expect(r.out).toMatch(/@t\/b has no pending changeset.*README\.md/);
    expect(r.out).not.toContain("@t/a has");
  });

  it("ignores private packages, unpublished files and devDependencies; a dependency change counts", () => {
    const dir = fixtureRepo();
    write(dir, "packages/c/src/index.ts", "export const x = 3;\n"); // private
    write(dir, "packages/b/test/x.test.ts", "// another test\n"); // not in `files`
    const b = JSON.parse(readFileSync(join(dir, "packages/b/package.json"), "utf8"));
    b.devDependencies = { x: "2.0.0" };
    b.scripts = { test: "vitest run" };
    write(dir, "packages/b/package.json", JSON.stringify(b));
    commitAll(dir, "private, tests, dev tools");
    let r = check(dir);
    expect(r.status, r.out).toBe(0);

    b.dependencies = { y: "1.0.0" };
    write(dir, "packages/b/package.json", JSON.stringify(b));
    r = check(dir);
    expect(r.status, r.out).toBe(1);
    expect(r.out).toMatch(/@t\/b has no pending changeset.*package\.json/);
  });

  it("counts from the last `changeset version`: released changes need no new changeset, later ones do", () => {
    const dir = fixtureRepo();
    write(dir, "packages/a/src/index.ts", "export const x = 2;\n");
    changeset(dir, "@t/a", "a-change");
    commitAll(dir, "a: change");
    const v = spawnSync(process.execPath, [changesetBin, "version"], {
      cwd: dir,
      encoding: "utf8",
      timeout: 60_000,
    });
    expect(v.status, `${v.stdout}${v.stderr}`).toBe(0);
    expect(readFileSync(join(dir, "packages/a/CHANGELOG.md"), "utf8")).toContain("What changed in @t/a.");
    commitAll(dir, "release");
    expect(readdirSync(join(dir, ".changeset")).sort()).toEqual(["README.md", "config.json"]);
    let r = check(dir);
    expect(r.status, r.out).toBe(0);
    expect(r.out).toContain("since the last release");

    write(dir, "packages/a/src/index.ts", "export const x = 4;\n");
    commitAll(dir, "a: after the release");
    r = check(dir);
    expect(r.status, r.out).toBe(1);
    expect(r.out).toMatch(/@t\/a has no pending changeset.*since the last release/);
  });
});

describe("changeset version on this repository", () => {
  it("writes each changeset into its package's CHANGELOG only, and versions no private package", () => {
    // The manifests and pending changesets are all `changeset version` reads and writes.
    const dir = mkdtempSync(join(tmpdir(), "tskvm-version-"));
    temps.push(dir);
    const workspaceDirs = [
      ...readdirSync(join(root, "packages")).map((p) => `packages/${p}`),
      "tests",
    ].filter((d) => existsSync(join(root, d, "package.json")));
    for (const f of [
      "package.json",
      "pnpm-workspace.yaml",
      ".changeset",
      ...workspaceDirs.map((d) => `${d}/package.json`),
    ])
      cpSync(join(root, f), join(dir, f), { recursive: true });
    git(dir, "init", "-q", "-b", "main");
    commitAll(dir, "copy");

    const pending = readdirSync(join(dir, ".changeset"))
      .filter((f) => f.endsWith(".md") && f !== "README.md")
      .map((f) => {
        const text = readFileSync(join(dir, ".changeset", f), "utf8");
        const [, front = "", body = ""] = /^---\n([\s\S]*?)\n---\n([\s\S]*)$/.exec(text) ?? [];
        const names = [...front.matchAll(/"([^"]+)":\s*(?:major|minor|patch)/g)].map((m) => m[1]!);
        return { f, names, summary: body.trim().split("\n")[0]! };
      });
    expect(pending.length).toBeGreaterThan(0);
    for (const c of pending) expect(c.names, `${c.f} names one package`).toHaveLength(1);

    const v = spawnSync(process.execPath, [changesetBin, "version"], {
      cwd: dir,
      encoding: "utf8",
      timeout: 60_000,
    });
    expect(v.status, `${v.stdout}${v.stderr}`).toBe(0);

    const manifests = new Map(
      workspaceDirs.map((d) => [d, JSON.parse(readFileSync(join(dir, d, "package.json"), "utf8"))] as const),
    );
    const changelog = (d: string) =>
      existsSync(join(dir, d, "CHANGELOG.md")) ? readFileSync(join(dir, d, "CHANGELOG.md"), "utf8") : "";
    for (const c of pending) {
      const owner = [...manifests].find(([, m]) => m.name === c.names[0]);
      expect(owner, `${c.f} names a workspace package`).toBeDefined();
      for (const [d, m] of manifests) {
        const found = changelog(d).includes(c.summary);
        expect(found, `${c.f} in ${m.name}'s CHANGELOG`).toBe(d === owner![0]);
      }
    }
    for (const [d, m] of manifests) {
      if (!m.private) continue;
      expect(m.version, `${m.name} keeps its version`).toBe("0.0.0");
      expect(existsSync(join(dir, d, "CHANGELOG.md")), `${m.name} has no CHANGELOG`).toBe(false);
    }
    expect(git(dir, "status", "--porcelain", "--", "packages/sandbox", "tests")).toBe("");
  });
});
