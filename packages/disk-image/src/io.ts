import { readvSync, writevSync } from "node:fs";
import { wrapSystemError } from "./errors.js";

/** Most iovecs one preadv/pwritev takes (Linux IOV_MAX). */
const IOV_MAX = 1024;

function advance(buffers: readonly Uint8Array[], index: number, skip: number): Uint8Array[] {
  const rest: Uint8Array[] = [];
  for (let i = index; i < buffers.length; i++) {
    const b = buffers[i]!;
    if (skip >= b.byteLength) {
      skip -= b.byteLength;
      continue;
    }
    rest.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return rest;
}

function nonEmpty(buffers: readonly Uint8Array[]): readonly Uint8Array[] {
  for (const b of buffers) if (b.byteLength === 0) return buffers.filter((x) => x.byteLength > 0);
  return buffers;
}

function readv(fd: number, buffers: readonly Uint8Array[], position: number, path: string): number {
  try {
    return readvSync(fd, buffers as Uint8Array[], position);
  } catch (e) {
    throw wrapSystemError(e, "read", path);
  }
}

function writev(fd: number, buffers: readonly Uint8Array[], position: number, path: string): number {
  try {
    return writevSync(fd, buffers as Uint8Array[], position);
  } catch (e) {
    throw wrapSystemError(e, "write", path);
  }
}

/**
 * preadv until every buffer is full; bytes past the end of the file read as
 * zeros (as with QEMU's file driver), so a short file never leaves stale data.
 * `total` is the buffers' length when the caller knows it.
 */
export function preadvFull(
  fd: number,
  buffers: readonly Uint8Array[],
  position: number,
  path: string,
  total?: number,
): void {
  // The common case: one preadv does it all.
  if (buffers.length <= IOV_MAX) {
    const got = readv(fd, buffers, position, path);
    if (got === (total ?? totalLength(buffers))) return;
    if (got === 0) {
      for (const b of buffers) b.fill(0);
      return;
    }
    position += got;
    buffers = advance(buffers, 0, got);
  }
  let list: readonly Uint8Array[] = nonEmpty(buffers);
  for (;;) {
    if (list.length === 0) return;
    const batch = list.length > IOV_MAX ? list.slice(0, IOV_MAX) : list;
    let want = 0;
    for (const b of batch) want += b.byteLength;
    const got = readv(fd, batch, position, path);
    if (got === want && batch.length === list.length) return;
    if (got === 0) {
      for (const b of list) b.fill(0);
      return;
    }
    position += got;
    list = advance(list, 0, got);
  }
}

/** pwritev until every byte is written. */
export function pwritevFull(
  fd: number,
  buffers: readonly Uint8Array[],
  position: number,
  path: string,
  total?: number,
): void {
  if (buffers.length <= IOV_MAX) {
    const put = writev(fd, buffers, position, path);
    if (put === (total ?? totalLength(buffers))) return;
    position += put;
    buffers = advance(buffers, 0, put);
  }
  let list: readonly Uint8Array[] = nonEmpty(buffers);
  for (;;) {
    if (list.length === 0) return;
    const batch = list.length > IOV_MAX ? list.slice(0, IOV_MAX) : list;
    let want = 0;
    for (const b of batch) want += b.byteLength;
    const put = writev(fd, batch, position, path);
    if (put === want && batch.length === list.length) return;
    position += put;
    list = advance(list, 0, put);
  }
}

/**
 * Walks a scatter list: `take(n)` returns views of the next `n` bytes of the
 * buffers (no copies), `skip(n)` steps over them.
 */
export class IovCursor {
  private index = 0;
  private offset = 0;

  constructor(private readonly buffers: readonly Uint8Array[]) {}

  take(length: number, out: Uint8Array[] = []): Uint8Array[] {
    while (length > 0) {
      const b = this.buffers[this.index];
      if (b === undefined) throw new Error("IovCursor: past the end");
      const avail = b.byteLength - this.offset;
      if (avail === 0) {
        this.index++;
        this.offset = 0;
        continue;
      }
      const n = Math.min(avail, length);
      out.push(n === b.byteLength ? b : b.subarray(this.offset, this.offset + n));
      this.offset += n;
      length -= n;
      if (this.offset === b.byteLength) {
        this.index++;
        this.offset = 0;
      }
    }
    return out;
  }

  skip(length: number): void {
    while (length > 0) {
      const b = this.buffers[this.index];
      if (b === undefined) throw new Error("IovCursor: past the end");
      const n = Math.min(b.byteLength - this.offset, length);
      this.offset += n;
      length -= n;
      if (this.offset === b.byteLength) {
        this.index++;
        this.offset = 0;
      }
    }
  }

  /** Copies the next `length` bytes into `dest` at `destOffset`. */
  copyTo(dest: Uint8Array, destOffset: number, length: number): void {
    for (const v of this.take(length)) {
      dest.set(v, destOffset);
      destOffset += v.byteLength;
    }
  }
}

export function totalLength(buffers: readonly Uint8Array[]): number {
  let n = 0;
  for (const b of buffers) n += b.byteLength;
  return n;
}

/** A shared zero buffer for writing zeros where the filesystem cannot. */
let zeros: Uint8Array | undefined;
export function zeroBuffer(length: number): Uint8Array {
  if (!zeros || zeros.byteLength < length) zeros = new Uint8Array(Math.max(length, 1 << 20));
  return zeros.subarray(0, length);
}
