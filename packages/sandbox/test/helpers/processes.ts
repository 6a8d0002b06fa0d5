import { readdirSync, readFileSync } from "node:fs";

/** PIDs of this process's live children whose command line mentions `needle` (e.g. a QEMU). */
export function childProcessesMatching(needle: string, parent = process.pid): number[] {
  const out: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      // pid (comm) state ppid ...: comm may hold spaces, so parse after the last ')'.
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(fields[1]) !== parent || fields[0] === "Z") continue;
      const cmdline = readFileSync(`/proc/${name}/cmdline`, "utf8").replace(/\0/g, " ");
      if (cmdline.includes(needle)) out.push(Number(name));
    } catch {
      // it ended while we looked
    }
  }
  return out;
}
