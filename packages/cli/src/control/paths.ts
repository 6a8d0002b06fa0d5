// Where the control sockets live and what a VM may be called. The directory is the access
// check: Node has no SO_PEERCRED, so only the owner may enter it (0700) and only the owner
// may connect to a socket in it (0600) — the kernel refuses everyone else at connect().
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, lstatSync, mkdirSync } from "node:fs";
import { homedir } from "node:os";
import { isAbsolute, join } from "node:path";
import { ControlError } from "./protocol.js";

/** A VM name: a letter or digit, then up to 63 letters, digits, `.`, `_` or `-`. */
export const VM_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** sun_path is 108 bytes with its terminating NUL. */
const MAX_SOCKET_PATH = 107;

/**
 * The directory of the control sockets: `$XDG_RUNTIME_DIR/tskvm` (a relative or empty
 * `XDG_RUNTIME_DIR` is ignored, as the XDG spec says), else `~/.tskvm`.
 */
export function controlDir(env: NodeJS.ProcessEnv = process.env): string {
  const runtime = env.XDG_RUNTIME_DIR;
  if (runtime && isAbsolute(runtime)) return join(runtime, "tskvm");
  return join(env.HOME && isAbsolute(env.HOME) ? env.HOME : homedir(), ".tskvm");
}

/**
 * Makes `dir` (mode 0700) if it is missing and checks that it is safe to put sockets in:
 * a real directory (not a symlink) owned by this user and writable by nobody else. A
 * directory of ours that others may only read or enter is tightened to 0700. Returns `dir`.
 */
export function ensureControlDir(dir: string = controlDir()): string {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    throw new ControlError("unsafe-dir", `cannot make the control directory ${dir}: ${(e as Error).message}`);
  }
  const st = lstatSync(dir);
  if (!st.isDirectory())
    throw new ControlError(
      "unsafe-dir",
      `the control directory ${dir} is ${st.isSymbolicLink() ? "a symlink" : "not a directory"}; remove it or set XDG_RUNTIME_DIR`,
    );
  const uid = process.getuid?.();
  if (uid !== undefined && st.uid !== uid)
    throw new ControlError(
      "unsafe-dir",
      `the control directory ${dir} belongs to uid ${st.uid}, not to you (uid ${uid}); remove it or set XDG_RUNTIME_DIR`,
    );
  if ((st.mode & 0o022) !== 0)
    throw new ControlError(
      "unsafe-dir",
      `the control directory ${dir} is writable by others (mode ${(st.mode & 0o777).toString(8)}); chmod 700 it`,
    );
  if ((st.mode & 0o077) !== 0) chmodSync(dir, 0o700);
  return dir;
}

/**
 * A client's check before it talks to a socket in `dir`: where the directory exists, it must
 * be safe as {@link ensureControlDir} wants it (else someone else could have put a socket
 * there). Nothing is made or changed.
 */
export function checkControlDir(dir: string): void {
  let st: ReturnType<typeof lstatSync>;
  try {
    st = lstatSync(dir);
  } catch {
    return;
  }
  const uid = process.getuid?.();
  if (!st.isDirectory() || (uid !== undefined && st.uid !== uid) || (st.mode & 0o022) !== 0)
    throw new ControlError(
      "unsafe-dir",
      `the control directory ${dir} is not a directory of yours that only you may write to; not trusting its sockets`,
    );
}

/** Throws a {@link ControlError} ("bad-name") unless `name` is a valid VM name. */
export function checkVmName(name: string): string {
  if (!VM_NAME.test(name))
    throw new ControlError(
      "bad-name",
      `'${name}' is not a VM name: use 1 to 64 letters, digits, '.', '_' or '-', beginning with a letter or digit`,
    );
  return name;
}

/** `<dir>/<name>.sock`; throws when the name is bad or the path too long for a unix socket. */
export function socketPath(name: string, dir: string = controlDir()): string {
  checkVmName(name);
  const path = join(dir, `${name}.sock`);
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH)
    throw new ControlError(
      "bad-name",
      `the control socket path ${path} is longer than a unix socket allows (${MAX_SOCKET_PATH} bytes); use a shorter name or XDG_RUNTIME_DIR`,
    );
  return path;
}

/** The name in a socket file name (`vm-1a2b.sock` → `vm-1a2b`), or undefined for other files. */
export function nameOfSocketFile(file: string): string | undefined {
  if (!file.endsWith(".sock")) return undefined;
  const name = file.slice(0, -".sock".length);
  return VM_NAME.test(name) ? name : undefined;
}

/**
 * A fresh default name, `vm-` and 4 hex digits, whose socket does not exist in `dir`
 * (a stale one is fine too, but a fresh one avoids the question).
 */
export function generateVmName(dir: string = controlDir()): string {
  for (let i = 0; i < 1000; i++) {
    const name = `vm-${randomBytes(2).toString("hex")}`;
    if (!existsSync(join(dir, `${name}.sock`))) return name;
  }
  return `vm-${randomBytes(6).toString("hex")}`;
}
