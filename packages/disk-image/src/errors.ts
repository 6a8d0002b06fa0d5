import { constants } from "node:os";

/**
 * What went wrong, as a stable string a program can switch on:
 *
 * - `ENOENT`, `EACCES`, `EPERM`, `EISDIR`, `EROFS`, `ENOSPC`, `EIO`, `EEXIST`, … — a system
 *   call failed with that errno (`errno` and `syscall` say which);
 * - `LOCKED` — another process (or another open in this one) holds the image;
 * - `CORRUPT` — the image's metadata is inconsistent or points outside the file;
 * - `DIRTY` — a qcow2 image was left dirty (lazy refcounts) and must be repaired before writing;
 * - `UNSUPPORTED` — a valid image or request uses something this package does not implement;
 * - `RANGE` — an offset or length is negative, not an integer or beyond the end of the disk;
 * - `READ_ONLY` — a write to an image opened read-only;
 * - `PROBE_GUARD` — a write to the first sector of a raw image whose format was probed would
 *   make it probe as another format (see `DiskImage.probed`); nothing was written;
 * - `CLOSED` — the image was used after `close()`;
 * - `INVALID` — a bad argument that is not a range (wrong type, bad option).
 */
export type DiskImageErrorCode =
  | "LOCKED"
  | "CORRUPT"
  | "DIRTY"
  | "UNSUPPORTED"
  | "RANGE"
  | "READ_ONLY"
  | "PROBE_GUARD"
  | "CLOSED"
  | "INVALID"
  | "ENOENT"
  | "EACCES"
  | "EPERM"
  | "EISDIR"
  | "EROFS"
  | "ENOSPC"
  | "EIO"
  | "EEXIST"
  | (string & {});

export interface DiskImageErrorDetails {
  /** The file the error is about. */
  path?: string | undefined;
  /** What a person can do about it. */
  hint?: string | undefined;
  /** The errno, when a system call failed. */
  errno?: number | undefined;
  /** The system call that failed. */
  syscall?: string | undefined;
  cause?: unknown;
}

/** Every error this package throws on purpose is a `DiskImageError`. */
export class DiskImageError extends Error {
  readonly code: DiskImageErrorCode;
  readonly path: string | undefined;
  readonly hint: string | undefined;
  readonly errno: number | undefined;
  readonly syscall: string | undefined;

  constructor(code: DiskImageErrorCode, message: string, details: DiskImageErrorDetails = {}) {
    const where = details.path !== undefined ? `${details.path}: ` : "";
    const text = `${where}${message}${details.hint ? `\n  hint: ${details.hint}` : ""}`;
    super(text, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "DiskImageError";
    this.code = code;
    this.path = details.path;
    this.hint = details.hint;
    this.errno = details.errno;
    this.syscall = details.syscall;
  }
}

export function isDiskImageError(e: unknown, code?: DiskImageErrorCode): e is DiskImageError {
  return e instanceof DiskImageError && (code === undefined || e.code === code);
}

const errnoNames = new Map<number, string>(
  Object.entries(constants.errno).map(([name, value]) => [value, name] as [number, string]),
);

/** The errno's symbolic name (`EINVAL`), or `E<number>` for one Node does not know. */
export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `E${errno}`;
}

interface ErrnoLike {
  code?: unknown;
  errno?: unknown;
  syscall?: unknown;
  message?: unknown;
}

/** The errno name of a Node fs error or a native addon error, if it is one. */
export function errnoCodeOf(e: unknown): string | undefined {
  if (typeof e !== "object" || e === null) return undefined;
  const x = e as ErrnoLike;
  if (typeof x.code === "string" && /^E[A-Z0-9]+$/.test(x.code)) return x.code;
  if (typeof x.errno === "number") return errnoName(Math.abs(x.errno));
  return undefined;
}

function hintFor(code: string, operation: string): string | undefined {
  switch (code) {
    case "ENOENT":
      return "check the path; relative backing file names are resolved against the directory of the image that names them.";
    case "EACCES":
    case "EPERM":
      return operation === "open"
        ? "no permission: fix the file's mode/owner, run as a user who may access it, or open it read-only."
        : "the filesystem refused the operation.";
    case "EROFS":
      return "the filesystem is mounted read-only: open the image read-only (or use a snapshot overlay).";
    case "ENOSPC":
      return "the filesystem is full.";
    case "EISDIR":
      return "the path is a directory, not an image file.";
    case "EIO":
      return "the storage below the image reported an I/O error.";
    case "EMFILE":
    case "ENFILE":
      return "too many open files.";
    default:
      return undefined;
  }
}

/**
 * Wraps an errno-style failure (a Node fs error or a native addon error) in a
 * {@link DiskImageError}; passes a DiskImageError through unchanged.
 */
export function wrapSystemError(e: unknown, operation: string, path: string, hint?: string): DiskImageError {
  if (e instanceof DiskImageError) return e;
  const code = errnoCodeOf(e);
  if (code === undefined) {
    const message = e instanceof Error ? e.message : String(e);
    // Node refused the arguments (e.g. a path with a NUL byte) before any system call.
    const invalid =
      e instanceof TypeError || (e instanceof Error && String((e as ErrnoLike).code).startsWith("ERR_"));
    return new DiskImageError(invalid ? "INVALID" : "EIO", `${operation} failed: ${message}`, {
      path,
      hint,
      cause: e,
    });
  }
  const x = e as ErrnoLike;
  const errno =
    typeof x.errno === "number" ? Math.abs(x.errno) : constants.errno[code as keyof typeof constants.errno];
  const syscall = typeof x.syscall === "string" ? x.syscall : operation;
  return new DiskImageError(code, `${operation} failed with ${code}`, {
    path,
    hint: hint ?? hintFor(code, operation),
    errno,
    syscall,
    cause: e,
  });
}

/** Runs `call`, turning any errno failure into a {@link DiskImageError}. */
export function sys<T>(operation: string, path: string, call: () => T): T {
  try {
    return call();
  } catch (e) {
    throw wrapSystemError(e, operation, path);
  }
}
