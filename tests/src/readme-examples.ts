// The README example convention (root README, "Working on it"): in packages/*/README.md a
// fenced block whose info string is exactly `ts` is a complete program that CI type-checks
// and runs; TypeScript that is not a program (types, shapes, signatures) is `ts fragment`.
// A program may be preceded by `<!-- example: needs=kvm -->` (an openable /dev/kvm) or
// `<!-- example: needs=linux -->` (a KVM that boots Linux); other words in that comment
// (e.g. the path of a file the package's own test compares the block with) are ignored.
import { readFileSync } from "node:fs";

/** What an example needs from the machine it runs on. */
export type ExampleNeeds = "none" | "kvm" | "linux";

export interface ReadmeExample {
  /** `<package dir>.L<line>`: where the block's opening fence is. */
  name: string;
  readme: string;
  /** 1-based line of the opening fence. */
  line: number;
  needs: ExampleNeeds;
  code: string;
}

export interface ReadmeScan {
  examples: ReadmeExample[];
  /** Blocks that break the convention, as `README:line: what`. */
  problems: string[];
}

const OPEN = /^( *)(`{3,}|~{3,})(.*)$/;
const COMMENT = /^\s*<!--\s*example:(.*?)-->\s*$/;

/** The `ts` programs of one README, and what breaks the convention in it. */
export function scanReadme(path: string, packageDir: string): ReadmeScan {
  const lines = readFileSync(path, "utf8").split("\n");
  const examples: ReadmeExample[] = [];
  const problems: string[] = [];
  const where = (line: number) => `${path}:${line}`;
  for (let i = 0; i < lines.length; i++) {
    const open = OPEN.exec(lines[i]!);
    if (!open) continue;
    const [, indent = "", fence = "", rest = ""] = open;
    const info = rest.trim();
    const body: string[] = [];
    let j = i + 1;
    for (; j < lines.length; j++) {
      const l = lines[j]!;
      const close = /^ *(`{3,}|~{3,})\s*$/.exec(l);
      if (close && close[1]![0] === fence[0] && close[1]!.length >= fence.length) break;
      body.push(l.startsWith(indent) ? l.slice(indent.length) : l.trimStart());
    }
    let k = i - 1;
    while (k >= 0 && lines[k]!.trim() === "") k--;
    const comment = k >= 0 ? COMMENT.exec(lines[k]!) : null;
    const words = comment ? comment[1]!.trim().split(/\s+/) : [];
    const needsWords = words.filter((w) => w.startsWith("needs="));
    const line = i + 1;
    if (info === "ts") {
      const needs = needsWords.length === 0 ? "none" : needsWords[0]!.slice("needs=".length);
      if (needsWords.length > 1 || !["none", "kvm", "linux"].includes(needs))
        problems.push(`${where(line)}: "${words.join(" ")}": needs is one of needs=kvm, needs=linux`);
      const code = `${body.join("\n")}\n`;
      if (!/^\s*import\s/m.test(code))
        problems.push(`${where(line)}: a \`ts\` block is a complete program and imports what it uses`);
      examples.push({
        name: `${packageDir}.L${line}`,
        readme: path,
        line,
        needs: needs as ExampleNeeds,
        code,
      });
    } else {
      if (/^(ts|typescript|tsx|mts)\b/i.test(info) && info !== "ts fragment")
        problems.push(`${where(line)}: info string "${info}": use \`ts\` (a program) or \`ts fragment\``);
      if (needsWords.length > 0) problems.push(`${where(line)}: needs= on a block that is not \`ts\``);
    }
    i = j;
  }
  return { examples, problems };
}
