// `pnpm docs`: the API reference of every public package, with TypeDoc, in docs/api/<dir>/
// (entry points: the package's `exports`, read from src; front page: its README). A link to
// another package's symbol goes to that package's pages. `pnpm docs --check` (run by
// `pnpm lint`) writes nothing and fails on any TypeDoc warning, e.g. a {@link} that names
// nothing or a symbol no package documents.
// usage: node scripts/docs.mjs [--check] [package dir...]
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Application, KindRouter, LogLevel, ReflectionKind } from "typedoc";

const root = fileURLToPath(new URL("..", import.meta.url));
const check = process.argv.includes("--check");
const only = process.argv.slice(2).filter((a) => !a.startsWith("--"));
const REPO_URL = "https://github.com/tskvm/tskvm";

const all = readdirSync(join(root, "packages"))
  .filter((dir) => existsSync(join(root, "packages", dir, "package.json")))
  .map((dir) => ({
    dir,
    manifest: JSON.parse(readFileSync(join(root, "packages", dir, "package.json"), "utf8")),
  }))
  .filter((p) => !p.manifest.private);

// Dependencies first: a package's doc comments link to its dependencies' symbols, whose
// pages must be known by then.
const ordered = [];
const visit = (p, seen = new Set()) => {
  if (ordered.includes(p) || seen.has(p)) return;
  seen.add(p);
  const deps = { ...p.manifest.dependencies, ...p.manifest.devDependencies, ...p.manifest.peerDependencies };
  for (const q of all) if (q.manifest.name in deps) visit(q, seen);
  ordered.push(p);
};
for (const p of all) visit(p);

/** The source file behind each `exports` entry: ./dist/x.d.ts → src/x.ts. */
function entryPoints({ dir, manifest }) {
  const exportsField = manifest.exports ?? { ".": { types: manifest.types } };
  // Data files a package exports (e.g. a JSON Schema) have no API to document.
  const code = Object.values(exportsField).filter((e) => typeof e !== "string" || !e.endsWith(".json"));
  return code.map((e) => {
    const types = typeof e === "string" ? e : e.types;
    const src = join(root, "packages", dir, types.replace(/^\.\/dist\//, "src/").replace(/\.d\.ts$/, ".ts"));
    if (!existsSync(src)) throw new Error(`${manifest.name}: no source ${src} for export ${types}`);
    return src;
  });
}

/**
 * The README as the front page (a copy elsewhere), its relative links pointing at the
 * repository: what they name is not part of the API reference.
 */
function frontPage({ dir }, tmp) {
  const readme = join(root, "packages", dir, "README.md");
  const text = readFileSync(readme, "utf8").replace(
    /\]\(((?!https?:|#|mailto:)[^)\s#]+)(#[^)\s]*)?\)/g,
    (m, target, hash) => {
      const path = resolve(dirname(readme), target);
      if (!existsSync(path)) return m; // left for TypeDoc to report
      const kind = statSync(path).isDirectory() ? "tree" : "blob";
      return `](${REPO_URL}/${kind}/main/${relative(root, path)}${hash ?? ""})`;
    },
  );
  const copy = join(tmp, `${dir}.md`);
  writeFileSync(copy, text);
  return copy;
}

/** Every documented symbol of a converted project → its page, relative to docs/api/. */
function symbolPages(app, project, dir) {
  const router = new KindRouter(app);
  router.buildPages(project);
  const pages = {};
  for (const refl of Object.values(project.reflections)) {
    if (refl.kindOf(ReflectionKind.Module) || refl.kindOf(ReflectionKind.Project) || !router.hasUrl(refl))
      continue;
    // The symbol's name as TypeScript qualifies it (its module, if several, left out).
    const names = [];
    for (let r = refl; r && !r.kindOf(ReflectionKind.Module | ReflectionKind.Project); r = r.parent)
      names.unshift(r.name);
    pages[names.join(".")] ??= `${OTHER_PACKAGE}${dir}/${router.getFullUrl(refl)}`;
  }
  return pages;
}

/**
 * Links into another package's pages are written with a marker (TypeDoc takes external
 * URLs as they are), made relative to each page here: docs/api/<dir>/… is the layout.
 */
const OTHER_PACKAGE = "tskvm-api:";
function relinkOtherPackages(out) {
  for (const entry of readdirSync(out, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile() || !entry.name.endsWith(".html")) continue;
    const file = join(entry.parentPath ?? entry.path, entry.name);
    const html = readFileSync(file, "utf8");
    if (!html.includes(OTHER_PACKAGE)) continue;
    const up = "../".repeat(relative(out, file).split("/").length);
    writeFileSync(file, html.replaceAll(`href="${OTHER_PACKAGE}`, `href="${up}`));
  }
}

const tmp = mkdtempSync(join(tmpdir(), "tskvm-docs-"));
const mappings = {};
let problems = 0;
const t0 = Date.now();
if (!check && only.length === 0) rmSync(join(root, "docs/api"), { recursive: true, force: true });
try {
  for (const pkg of ordered) {
    const { dir, manifest } = pkg;
    const out = join(root, "docs/api", dir);
    const app = await Application.bootstrapWithPlugins({
      name: manifest.name,
      entryPoints: entryPoints(pkg),
      tsconfig: join(root, "packages", dir, "tsconfig.json"),
      readme: frontPage(pkg, tmp),
      out,
      excludePrivate: true,
      excludeInternal: true,
      excludeExternals: true,
      externalSymbolLinkMappings: mappings,
      validation: { invalidLink: true, rewrittenLink: true, notExported: false, notDocumented: false },
      treatWarningsAsErrors: check,
      logLevel: LogLevel.Warn,
      disableSources: true,
      skipErrorChecking: true, // `pnpm lint` type-checks; this is about the doc comments
    });
    const project = await app.convert();
    if (!project) {
      problems++;
      continue;
    }
    app.validate(project);
    mappings[manifest.name] = symbolPages(app, project, dir);
    if (app.logger.hasErrors() || app.logger.hasWarnings()) {
      console.error(`docs: ${manifest.name}: the warnings above`);
      problems++;
      continue;
    }
    // Rendered in check mode too (into a temp dir): some links are only checked there.
    const to = check ? join(tmp, "out", dir) : out;
    if (check || only.length === 0 || only.includes(dir)) {
      await app.generateDocs(project, to);
      if (app.logger.hasErrors() || app.logger.hasWarnings()) {
        console.error(`docs: ${manifest.name}: the warnings above`);
        problems++;
        continue;
      }
      relinkOtherPackages(to);
    }
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
if (problems > 0) {
  console.error(`docs: ${problems} of ${ordered.length} packages have TypeDoc warnings or errors`);
  process.exit(1);
}
const what = check ? "doc comments and links checked" : "written to docs/api/";
console.log(`docs: ${ordered.length} packages, ${what} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
