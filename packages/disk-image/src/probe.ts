import type { DiskImageFormat } from "./disk-image.js";
import { QCOW2_MAGIC } from "./qcow2/format.js";

/** How many leading bytes format probing looks at (QEMU's BLOCK_PROBE_BUF_SIZE): the first sector. */
export const PROBE_BYTES = 512;

/**
 * The format an image whose first bytes are `head` probes as: the qcow2 magic
 * → `qcow2`, anything else → `raw`. The one probe function: {@link probeFormat}
 * uses it on files, and probed raw images use it to vet writes to their first
 * sector.
 */
export function probeHead(head: Uint8Array): DiskImageFormat {
  if (head.byteLength >= 4) {
    const magic = ((head[0]! << 24) | (head[1]! << 16) | (head[2]! << 8) | head[3]!) >>> 0;
    if (magic === QCOW2_MAGIC) return "qcow2";
  }
  return "raw";
}
