import { isAbsolute } from "node:path";
import { createQcow2, type ImageInfo, imageInfo, isDiskImageError } from "@tskvm/disk-image";
import {
  type Command,
  CommandError,
  type CommandGroup,
  ExitCode,
  type OptionSpecs,
  parseCommandArgs,
  UsageError,
} from "../command.js";
import { exitCodesHelp } from "../exit-codes.js";
import { formatSize, parseSize } from "../size.js";

const CREATE_OPTIONS = {
  format: { type: "string", short: "f" },
  backing: { type: "string", short: "b" },
  "backing-format": { type: "string", short: "F" },
  "cluster-size": { type: "string" },
  compat: { type: "string" },
  force: { type: "boolean" },
} as const satisfies OptionSpecs;

const create: Command = {
  kind: "command",
  summary: "create a qcow2 image (optionally over a backing file)",
  help: `Usage: tskvm image create [-f qcow2] [-b FILE [-F FMT]] [OPTIONS] PATH [SIZE]

Creates a qcow2 image of SIZE, like 'qemu-img create -f qcow2'. SIZE is bytes or
a number with a K, M, G or T suffix (powers of 1024): 10G, 512M, 1.5G. With a
backing file, SIZE may be left out (or '-') to take the backing file's size;
reads of unwritten clusters then come from the backing file.

Options:
  -f, --format FMT          qcow2, the only format it creates (as qemu-img's -f)
  -b, --backing FILE        backing file (relative names resolve against PATH's folder)
  -F, --backing-format FMT  raw or qcow2 (default: probed)
      --cluster-size SIZE   512 to 2M, a power of two (default 64K)
      --compat VER          0.10 (qcow2 v2) or 1.1 (v3, default)
      --force               overwrite an existing file
  -h, --help                show this help

${exitCodesHelp(["ok", "error", "usage"])}`,
  options: CREATE_OPTIONS,
  async run(args, io) {
    const { values, positionals } = parseCommandArgs(args, CREATE_OPTIONS, 2);
    const [path, sizeArg] = positionals;
    const backing = values.backing;
    if (!path) throw new UsageError("PATH is required");
    if (values.format !== undefined && values.format !== "qcow2")
      throw new UsageError(`-f/--format: only qcow2 images are created, not '${values.format}'`);
    if ((sizeArg === undefined || sizeArg === "-") && backing === undefined)
      throw new UsageError(
        "SIZE is required without a backing file (-b), e.g. 'tskvm image create disk.qcow2 10G'",
      );
    const size =
      sizeArg === undefined || sizeArg === "-"
        ? undefined
        : parseSize(sizeArg, { name: "SIZE", unit: "B", example: "'tskvm image create disk.qcow2 10G'" });
    if (size !== undefined && size % 512 !== 0)
      throw new UsageError(`SIZE must be a multiple of 512 bytes, not ${size}`);
    const fmt = values["backing-format"];
    if (fmt !== undefined && fmt !== "raw" && fmt !== "qcow2")
      throw new UsageError(`-F/--backing-format must be raw or qcow2, not '${fmt}'`);
    const compat = values.compat;
    if (compat !== undefined && compat !== "0.10" && compat !== "1.1")
      throw new UsageError(`--compat must be 0.10 or 1.1, not '${compat}'`);
    const cluster =
      values["cluster-size"] === undefined
        ? undefined
        : parseSize(values["cluster-size"], {
            name: "--cluster-size",
            unit: "B",
            example: "--cluster-size 2M",
          });
    try {
      createQcow2(path, size, {
        ...(backing !== undefined ? { backing } : {}),
        ...(fmt !== undefined ? { backingFormat: fmt } : {}),
        ...(cluster !== undefined ? { clusterSize: cluster } : {}),
        ...(compat !== undefined ? { version: compat === "0.10" ? 2 : 3 } : {}),
        overwrite: values.force ?? false,
      });
    } catch (e) {
      // The library's hint speaks of asking to overwrite; here that is a flag.
      if (isDiskImageError(e, "EEXIST"))
        throw new CommandError(`${path}: the file exists`, {
          hint: "choose another name, or add --force to overwrite it.",
        });
      throw e;
    }
    // The line qemu-img prints, for the options this image has.
    const i = imageInfo(path, { format: "qcow2", backingChain: false });
    const q = i.qcow2!;
    const fields = [
      "fmt=qcow2",
      `cluster_size=${i.clusterSize}`,
      `extended_l2=${q.extendedL2 ? "on" : "off"}`,
      `compression_type=${q.compressionType}`,
      `size=${i.virtualSize}`,
      ...(i.backingFile !== undefined ? [`backing_file=${i.backingFile}`] : []),
      ...(i.backingFormat !== undefined ? [`backing_fmt=${i.backingFormat}`] : []),
      ...(compat !== undefined ? [`compat=${compat}`] : []),
      `lazy_refcounts=${q.lazyRefcounts ? "on" : "off"}`,
      `refcount_bits=${q.refcountBits}`,
    ];
    io.stdout(`Formatting '${path}', ${fields.join(" ")}\n`);
    return ExitCode.ok;
  },
};

/** `format-specific` of qemu-img's JSON for a qcow2 image (QAPI `ImageInfoSpecificQCow2`). */
export interface QemuQcow2Specific {
  compat: "0.10" | "1.1";
  "data-file"?: string;
  "lazy-refcounts"?: boolean;
  corrupt?: boolean;
  "extended-l2"?: boolean;
  "refcount-bits": number;
  "compression-type": string;
}

/** One image as `qemu-img info --output=json` describes it (QAPI `ImageInfo`, the fields tskvm knows). */
export interface QemuImageInfo {
  filename: string;
  format: string;
  "dirty-flag": boolean;
  "actual-size": number;
  "virtual-size": number;
  "cluster-size"?: number;
  encrypted?: boolean;
  "backing-filename"?: string;
  "full-backing-filename"?: string;
  "backing-filename-format"?: string;
  "format-specific"?: { type: "qcow2"; data: QemuQcow2Specific };
}

/** Where qemu-img says a backing file is: relative names against the image's folder, as given. */
function fullBackingName(filename: string, backing: string): string {
  if (isAbsolute(backing)) return backing;
  const slash = filename.lastIndexOf("/");
  return slash < 0 ? backing : `${filename.slice(0, slash + 1)}${backing}`;
}

/** disk-image's `ImageInfo` in qemu-img's JSON schema; `filename` as the user (or the parent image) named it. */
export function qemuImageInfo(i: ImageInfo, filename = i.path): QemuImageInfo {
  const out: QemuImageInfo = {
    filename,
    format: i.format,
    "dirty-flag": i.dirty,
    "actual-size": i.actualSize,
    "virtual-size": i.virtualSize,
  };
  if (i.clusterSize !== undefined) out["cluster-size"] = i.clusterSize;
  if (i.qcow2?.encrypted) out.encrypted = true;
  if (i.backingFile !== undefined) {
    out["backing-filename"] = i.backingFile;
    out["full-backing-filename"] = fullBackingName(filename, i.backingFile);
    if (i.backingFormat !== undefined) out["backing-filename-format"] = i.backingFormat;
  }
  const q = i.qcow2;
  if (q) {
    const data: QemuQcow2Specific =
      q.version === 2
        ? { compat: "0.10", "compression-type": q.compressionType, "refcount-bits": q.refcountBits }
        : {
            compat: "1.1",
            ...(q.externalDataFile !== undefined ? { "data-file": q.externalDataFile } : {}),
            "compression-type": q.compressionType,
            "lazy-refcounts": q.lazyRefcounts,
            "refcount-bits": q.refcountBits,
            corrupt: q.corrupt,
            "extended-l2": q.extendedL2,
          };
    out["format-specific"] = { type: "qcow2", data };
  }
  return out;
}

/** The image and its backing chain, each named as qemu-img names it (a backing file by its parent's full name). */
export function qemuBackingChain(i: ImageInfo, filename = i.path): QemuImageInfo[] {
  const chain = [qemuImageInfo(i, filename)];
  for (const below of i.backingChain) {
    const parent = chain[chain.length - 1]!;
    chain.push(qemuImageInfo(below, parent["full-backing-filename"] ?? below.path));
  }
  return chain;
}

/** `qemu-img info`'s human layout of one image. */
export function qemuInfoText(q: QemuImageInfo): string {
  const lines = [
    `image: ${q.filename}`,
    `file format: ${q.format}`,
    `virtual size: ${formatSize(q["virtual-size"])} (${q["virtual-size"]} bytes)`,
    `disk size: ${formatSize(q["actual-size"])}`,
  ];
  if (q.encrypted) lines.push("encrypted: yes");
  if (q["cluster-size"] !== undefined) lines.push(`cluster_size: ${q["cluster-size"]}`);
  if (q["dirty-flag"]) lines.push("cleanly shut down: no");
  const backing = q["backing-filename"];
  if (backing !== undefined) {
    const full = q["full-backing-filename"];
    lines.push(
      `backing file: ${backing}${full !== undefined && full !== backing ? ` (actual path: ${full})` : ""}`,
    );
    if (q["backing-filename-format"] !== undefined)
      lines.push(`backing file format: ${q["backing-filename-format"]}`);
  }
  const specific = q["format-specific"];
  if (specific) {
    lines.push("Format specific information:");
    for (const [key, value] of Object.entries(specific.data))
      lines.push(`    ${key.replaceAll("-", " ")}: ${String(value)}`);
  }
  return `${lines.join("\n")}\n`;
}

const INFO_OPTIONS = {
  format: { type: "string", short: "f" },
  output: { type: "string" },
  json: { type: "boolean" },
  "backing-chain": { type: "boolean" },
  "force-share": { type: "boolean", short: "U" },
} as const satisfies OptionSpecs;

const info: Command = {
  kind: "command",
  summary: "describe an image (and its backing chain), as qemu-img info does",
  help: `Usage: tskvm image info [-f FMT] [--output human|json] [--backing-chain] PATH

Prints an image's format, sizes, cluster size, backing file and qcow2 details in
qemu-img info's layout, or as its JSON (the same field names). Takes no lock, so
it works on images in use.

Options:
  -f, --format FMT    raw or qcow2 (default: probed)
      --output FMT    human (default) or json: qemu-img's JSON schema
      --json          same as --output json
      --backing-chain describe every backing file too (JSON: an array)
  -U, --force-share   accepted as qemu-img takes it: info never locks
  -h, --help          show this help

${exitCodesHelp(["ok", "error", "usage"])}`,
  options: INFO_OPTIONS,
  async run(args, io) {
    const { values, positionals } = parseCommandArgs(args, INFO_OPTIONS, 1);
    const [path] = positionals;
    if (!path) throw new UsageError("PATH is required");
    const output = values.json ? "json" : (values.output ?? "human");
    if (output !== "human" && output !== "json")
      throw new UsageError(`--output must be human or json, not '${output}'`);
    const format = values.format;
    if (format !== undefined && format !== "raw" && format !== "qcow2")
      throw new UsageError(`-f/--format must be raw or qcow2, not '${format}'`);
    const i = imageInfo(path, {
      ...(format !== undefined ? { format } : {}),
      backingChain: values["backing-chain"] ?? false,
    });
    const chain = qemuBackingChain(i, path);
    if (output === "json") {
      const doc = values["backing-chain"] ? chain : chain[0];
      io.stdout(`${JSON.stringify(doc, null, 4)}\n`);
    } else io.stdout(chain.map(qemuInfoText).join("\n"));
    return ExitCode.ok;
  },
};

export const image: CommandGroup = {
  kind: "group",
  summary: "create and inspect disk images (a small subset of qemu-img)",
  commands: { create, info },
};
