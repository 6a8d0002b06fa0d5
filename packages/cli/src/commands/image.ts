import { createQcow2, type ImageInfo, imageInfo, isDiskImageError } from "@tskvm/disk-image";
import {
  type Command,
  type CommandGroup,
  ExitCode,
  type Io,
  parseCommandArgs,
  UsageError,
} from "../command.js";

const UNITS: Record<string, number> = { "": 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 };

/** `10G`, `512M`, `1048576` → bytes (qemu-img's suffixes, powers of 1024). */
export function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)([bkmgt]?)(?:i?b)?$/i.exec(s.trim());
  if (!m) throw new UsageError(`bad size '${s}': use bytes or a K, M, G or T suffix (e.g. 10G)`);
  const bytes = Math.round(Number(m[1]) * (UNITS[m[2]!.toLowerCase()] ?? 1));
  if (bytes <= 0 || bytes % 512 !== 0)
    throw new UsageError(`size must be a positive multiple of 512 bytes, not ${bytes}`);
  return bytes;
}

function human(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${u === 0 ? v : v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}

function failed(io: Io, e: unknown): number {
  if (isDiskImageError(e)) {
    io.stderr(`tskvm: ${e.message}\n`);
    return ExitCode.error;
  }
  throw e;
}

const create: Command = {
  kind: "command",
  summary: "create a qcow2 image (optionally over a backing file)",
  help: `Usage: tskvm image create PATH SIZE [--backing FILE] [--backing-format raw|qcow2]
       [--cluster-size BYTES] [--compat 0.10|1.1] [--force]

Creates a qcow2 image of SIZE bytes (suffixes K, M, G, T), like
'qemu-img create -f qcow2'. With --backing, SIZE may be '-' to take the backing
file's size; reads of unwritten clusters then come from the backing file.

Options:
  --backing FILE         backing file (relative names resolve against PATH's folder)
  --backing-format FMT   raw or qcow2 (default: probed)
  --cluster-size BYTES   512 to 2M, a power of two (default 64K)
  --compat VER           0.10 (qcow2 v2) or 1.1 (v3, default)
  --force                overwrite an existing file
  -h, --help             show this help
`,
  async run(args, io) {
    const { values, positionals } = parseCommandArgs(
      args,
      {
        backing: { type: "string", short: "b" },
        "backing-format": { type: "string", short: "F" },
        "cluster-size": { type: "string" },
        compat: { type: "string" },
        force: { type: "boolean" },
      },
      2,
    );
    const [path, sizeArg] = positionals;
    if (!path || !sizeArg) throw new UsageError("PATH and SIZE are required");
    if (sizeArg === "-" && !values.backing) throw new UsageError("SIZE '-' needs --backing");
    const size = sizeArg === "-" ? undefined : parseSize(sizeArg);
    const fmt = values["backing-format"];
    if (fmt !== undefined && fmt !== "raw" && fmt !== "qcow2")
      throw new UsageError(`--backing-format must be raw or qcow2, not '${fmt}'`);
    const compat = values.compat;
    if (compat !== undefined && compat !== "0.10" && compat !== "1.1")
      throw new UsageError(`--compat must be 0.10 or 1.1, not '${compat}'`);
    const cluster = values["cluster-size"] === undefined ? undefined : parseSize(values["cluster-size"]);
    try {
      createQcow2(path, size, {
        ...(values.backing !== undefined ? { backing: values.backing } : {}),
        ...(fmt !== undefined ? { backingFormat: fmt } : {}),
        ...(cluster !== undefined ? { clusterSize: cluster } : {}),
        ...(compat !== undefined ? { version: compat === "0.10" ? 2 : 3 } : {}),
        overwrite: values.force ?? false,
      });
    } catch (e) {
      // The library's hint speaks of asking to overwrite; here that is a flag.
      if (isDiskImageError(e, "EEXIST")) {
        io.stderr(
          `tskvm: ${path}: the file exists\n  hint: choose another name, or add --force to overwrite it.\n`,
        );
        return ExitCode.error;
      }
      return failed(io, e);
    }
    const info = imageInfo(path, { backingChain: false });
    io.stdout(
      `Formatting '${path}', fmt=qcow2 size=${info.virtualSize}${values.backing ? ` backing_file=${values.backing}` : ""}\n`,
    );
    return ExitCode.ok;
  },
};

function describe(i: ImageInfo, indent = ""): string {
  const lines = [
    `image: ${i.path}`,
    `file format: ${i.format}`,
    `virtual size: ${human(i.virtualSize)} (${i.virtualSize} bytes)`,
    `disk size: ${human(i.actualSize)}`,
  ];
  if (i.clusterSize !== undefined) lines.push(`cluster_size: ${i.clusterSize}`);
  if (i.qcow2) lines.push(`compat: ${i.qcow2.version === 2 ? "0.10" : "1.1"}`);
  if (i.backingFile !== undefined)
    lines.push(
      `backing file: ${i.backingFile}${i.backingPath && i.backingPath !== i.backingFile ? ` (actual path: ${i.backingPath})` : ""}`,
    );
  if (i.backingFormat !== undefined) lines.push(`backing file format: ${i.backingFormat}`);
  if (i.format === "qcow2") lines.push(`dirty: ${i.dirty}`);
  return lines.map((l) => indent + l).join("\n");
}

const info: Command = {
  kind: "command",
  summary: "describe an image and its backing chain",
  help: `Usage: tskvm image info PATH [--json] [--no-backing-chain]

Prints an image's format, sizes, cluster size, backing file and dirty state,
then the same for each backing file, like 'qemu-img info --backing-chain'. Takes
no lock, so it works on images in use.

Options:
  --json              print JSON (the ImageInfo of @tskvm/disk-image)
  --no-backing-chain  describe only PATH
  -h, --help          show this help
`,
  async run(args, io) {
    const { values, positionals } = parseCommandArgs(
      args,
      { json: { type: "boolean" }, "no-backing-chain": { type: "boolean" } },
      1,
    );
    const [path] = positionals;
    if (!path) throw new UsageError("PATH is required");
    let i: ImageInfo;
    try {
      i = imageInfo(path, { backingChain: !values["no-backing-chain"] });
    } catch (e) {
      return failed(io, e);
    }
    if (values.json) {
      io.stdout(`${JSON.stringify(i, null, 2)}\n`);
      return ExitCode.ok;
    }
    io.stdout(`${[i, ...i.backingChain].map((x, n) => describe(x, n ? "" : "")).join("\n\n")}\n`);
    return ExitCode.ok;
  },
};

export const image: CommandGroup = {
  kind: "group",
  summary: "create and inspect disk images (a small subset of qemu-img)",
  commands: { create, info },
};
