import { DiskImageError, errnoCodeOf, wrapSystemError } from "./errors.js";
import { native } from "./native.js";

/*
 * Image locking: open-file-description (OFD) byte-range locks, on the same
 * bytes and with the same meaning as QEMU's file-posix driver, so that tskvm
 * and QEMU (qemu-system-*, qemu-img, qemu-io) see each other's locks.
 *
 * Why OFD locks and not flock(2):
 * - like flock, an OFD lock belongs to the open file description, so two opens
 *   of one image in the same process conflict (classic POSIX fcntl locks would
 *   not), closing some other descriptor of the file does not drop it, and it
 *   dies with the process (no stale lock files after SIGKILL);
 * - unlike flock, they are what QEMU uses: one byte per permission. A holder of
 *   permission P takes a shared lock on byte 100+P; a holder that does not let
 *   others have P takes a shared lock on byte 200+P. Opening checks (F_OFD_GETLK
 *   for a would-be exclusive lock) that nobody denies what it wants and nobody
 *   holds what it denies. All locks are shared, so two openers racing both see
 *   the conflict rather than both winning.
 * - they work on NFS (as byte-range locks), where flock is emulated anyway.
 *
 * Permissions (QEMU's BLK_PERM_* bit numbers): 0 consistent read, 1 write,
 * 2 write-unchanged, 3 resize.
 *   writer: holds read+write (+resize for qcow2, which grows its file), denies write and resize;
 *   reader (read-only opens, backing files): holds read, denies write and resize.
 * So: any number of readers, or exactly one writer and no readers.
 */

const PERM_BASE = 100;
const SHARED_BASE = 200;

export const PERM_CONSISTENT_READ = 0;
export const PERM_WRITE = 1;
export const PERM_WRITE_UNCHANGED = 2;
export const PERM_RESIZE = 3;

export interface LockRequest {
  /** Permission bit numbers this open uses. */
  held: readonly number[];
  /** Permission bit numbers this open does not let anyone else use. */
  denied: readonly number[];
}

export function lockRequestFor(write: boolean, resize: boolean): LockRequest {
  const held = [PERM_CONSISTENT_READ];
  if (write) held.push(PERM_WRITE);
  if (write && resize) held.push(PERM_RESIZE);
  return { held, denied: [PERM_WRITE, PERM_RESIZE] };
}

function isWouldBlock(e: unknown): boolean {
  const c = errnoCodeOf(e);
  return c === "EAGAIN" || c === "EACCES" || c === "EWOULDBLOCK";
}

/**
 * The LOCKED error, worded by who holds the image: while a writer has it, no
 * other open works (read-only and snapshot opens deny writers too, as in QEMU),
 * so only stopping the writer helps; when only readers have it, a writer can
 * step back to a read-only or snapshot open, which share it.
 */
function lockedError(path: string, write: boolean, writerHolds: boolean): DiskImageError {
  if (writerHolds)
    return new DiskImageError("LOCKED", "image is locked: another VM or tool is writing to it", {
      path,
      hint: "stop it first; while it writes, the image cannot be opened at all, not even read-only or as a snapshot (qemu-img info -U can still inspect it).",
    });
  if (write)
    return new DiskImageError(
      "LOCKED",
      "image is locked: another VM or tool has it open read-only (or as a backing file)",
      {
        path,
        hint: "stop it first, or open this image read-only too, or as a snapshot disk (writes go to a throwaway overlay): those share the image with other readers.",
      },
    );
  return new DiskImageError("LOCKED", "image is locked: another VM or tool does not share it", {
    path,
    hint: "stop the other VM or tool first.",
  });
}

/**
 * Takes QEMU-compatible image locks on `fd`, or throws `LOCKED`. The locks are
 * released when the descriptor is closed. `fd` must be open for reading.
 */
export function lockImage(fd: number, path: string, request: LockRequest): void {
  const n = native();
  const c = n.constants;
  const write = request.held.includes(PERM_WRITE);
  const conflicts = (byte: number): boolean => {
    try {
      return n.ofdLock(fd, c.F_OFD_GETLK, c.F_WRLCK, byte, 1) !== c.F_UNLCK;
    } catch (e) {
      throw wrapSystemError(e, "lock", path);
    }
  };
  const locked = () => lockedError(path, write, conflicts(PERM_BASE + PERM_WRITE));
  const set = (byte: number) => {
    try {
      n.ofdLock(fd, c.F_OFD_SETLK, c.F_RDLCK, byte, 1);
    } catch (e) {
      if (isWouldBlock(e)) throw locked();
      if (errnoCodeOf(e) === "ENOLCK")
        throw wrapSystemError(
          e,
          "lock",
          path,
          "the filesystem does not support locks; open without locking only if you are sure nobody else uses the image.",
        );
      throw wrapSystemError(e, "lock", path);
    }
  };
  for (const p of request.held) set(PERM_BASE + p);
  for (const p of request.denied) set(SHARED_BASE + p);
  for (const p of request.held) if (conflicts(SHARED_BASE + p)) throw locked();
  for (const p of request.denied) if (conflicts(PERM_BASE + p)) throw locked();
}
