import { closeSync } from "node:fs";
import { dirname, isAbsolute, resolve } from "node:path";
import type { DiskImage } from "../disk-image.js";
import { DiskImageError } from "../errors.js";
import { openImageFile } from "../raw.js";
import { checkFeatures, corrupt, parseHeader, unsupported } from "./format.js";
import { checkWritable, type Qcow2CacheOptions, Qcow2DiskImage, readHead } from "./image.js";

export interface Qcow2OpenOptions extends Qcow2CacheOptions {
  readOnly?: boolean;
  /** Take image locks (shared ones on backing files). Default true. */
  lock?: boolean;
}

/** How the opener gets at backing files (supplied by openDiskImage, which knows every format). */
export interface BackingOpener {
  /** Opens a backing file read-only; `format` is the image's backing format extension, if any. */
  open(path: string, format: string | undefined, depth: number): DiskImage;
}

export interface Qcow2OpenContext {
  backingOpener?: BackingOpener;
  /** Use this (already open) image as the backing file instead of the one the header names. */
  backing?: DiskImage;
  /** No fdatasync: for throwaway overlays. */
  unsafe?: boolean;
  /** Depth in a backing chain (0 for the top image). */
  depth?: number;
  /** The path the image reports (snapshot overlays report their base). */
  displayPath?: string;
  /** The format was probed rather than given (what `probed` reports). */
  probed?: boolean;
}

/**
 * Where a backing file name points: absolute names as they are, relative ones
 * against the directory of the image that names them (as QEMU does).
 */
export function resolveBackingPath(imagePath: string, name: string): string {
  if (name.includes("\0")) throw corrupt(imagePath, "the backing file name contains a NUL byte");
  if (name.startsWith("json:"))
    throw unsupported(
      imagePath,
      `backing file ${JSON.stringify(name)} is a QEMU json: description, which is not supported`,
    );
  let file = name;
  if (file.startsWith("file:")) file = file.slice(5);
  else if (/^[a-z][a-z0-9+.-]*:\/\//i.test(file))
    throw unsupported(
      imagePath,
      `backing file ${JSON.stringify(name)} uses a network protocol, which is not supported`,
    );
  return isAbsolute(file) ? file : resolve(dirname(imagePath), file);
}

export function openQcow2Image(
  path: string,
  options: Qcow2OpenOptions = {},
  ctx: Qcow2OpenContext = {},
): Qcow2DiskImage {
  const readOnly = options.readOnly === true;
  const file = openImageFile(path, { readOnly, lock: options.lock !== false, resize: true });
  let backing: DiskImage | undefined;
  let image: Qcow2DiskImage | undefined;
  try {
    const head = readHead(file.fd, file.size, path);
    const header = parseHeader(head, file.size, path);
    checkFeatures(header, path);
    if (!readOnly) checkWritable(header, path);
    if (ctx.backing) backing = ctx.backing;
    else if (header.backingFile !== undefined) {
      const opener = ctx.backingOpener;
      if (!opener) throw new DiskImageError("UNSUPPORTED", "no way to open the backing file", { path });
      const target = resolveBackingPath(path, header.backingFile);
      try {
        backing = opener.open(target, header.backingFormat, (ctx.depth ?? 0) + 1);
      } catch (e) {
        if (e instanceof DiskImageError && (e.code === "ENOENT" || e.code === "EACCES"))
          throw new DiskImageError(e.code, `cannot open its backing file ${target}: ${e.message}`, {
            path,
            hint: `the image names ${JSON.stringify(header.backingFile)} as its backing file; restore that file or rebase: qemu-img rebase -u -b <new> ${path}`,
            cause: e,
          });
        throw e;
      }
    }
    image = new Qcow2DiskImage(ctx.displayPath ?? path, {
      file,
      header,
      head,
      readOnly,
      backing,
      unsafe: ctx.unsafe === true,
      probed: ctx.probed === true,
      cache: options,
    });
    image.prepareForWriting();
    return image;
  } catch (e) {
    if (image) {
      try {
        image.close();
      } catch {
        // the original error matters more
      }
    } else {
      closeSync(file.fd);
      if (backing && backing !== ctx.backing) backing.close();
    }
    throw e;
  }
}
