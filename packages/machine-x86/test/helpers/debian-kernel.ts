// The real Debian bzImage, fetched (once, into the tskvm cache) through guest-kit.
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { defaultCacheDir, fetchDebianPackage, resolveDebianPackage } from "@tskvm/guest-kit";

let cached: { path: string; bytes: Uint8Array } | undefined;

export function debianBzImage(): { path: string; bytes: Uint8Array } {
  if (cached) return cached;
  const pkg = resolveDebianPackage("linux-image-amd64", true);
  const root = fetchDebianPackage(pkg, defaultCacheDir(), (l) => console.log(`debian: ${l}`));
  const name = readdirSync(join(root, "boot")).find((f) => f.startsWith("vmlinuz-"));
  if (!name) throw new Error(`no boot/vmlinuz-* in ${root}`);
  const path = join(root, "boot", name);
  cached = { path, bytes: new Uint8Array(readFileSync(path)) };
  return cached;
}
