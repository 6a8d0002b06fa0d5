/**
 * Extracts the JSON values printed by a sandbox script as lines `PREFIX {json}`, in order.
 *
 * A script that runs many scenarios in one boot prints one line per result, e.g.
 * `console.log("@@RESULT " + JSON.stringify({ name, ok, ms }))`, and the host reads them back
 * with `parseJsonLines(result.output, "@@RESULT")`. The prefix must start its line (leading
 * blanks and a trailing `\r` are tolerated); other lines are ignored.
 *
 * @param output The script's output ({@link SandboxResult.output}).
 * @param prefix The marker before the JSON, default `@@RESULT`.
 * @throws SyntaxError naming the line when the text after a prefix is not valid JSON.
 */
export function parseJsonLines<T = unknown>(output: string, prefix = "@@RESULT"): T[] {
  const out: T[] = [];
  const lines = output.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] ?? "").replace(/\r$/, "").trimStart();
    if (!line.startsWith(prefix)) continue;
    const rest = line.slice(prefix.length);
    if (rest !== "" && !/^\s/.test(rest)) continue; // another marker that merely starts with the prefix
    try {
      out.push(JSON.parse(rest) as T);
    } catch (e) {
      throw new SyntaxError(`line ${i + 1}: bad JSON after ${prefix}: ${(e as Error).message}\n  ${line}`);
    }
  }
  return out;
}
