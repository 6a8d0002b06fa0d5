// Builds struct boot_params (the "zero page") for the 64-bit boot protocol.

import { type BzImage, Hdr, LoadFlags } from "./bzimage.js";
import { E820_MAX_ENTRIES, type E820Entry } from "./e820.js";
import { FOUR_GIB, lowRamEnd } from "./layout.js";

export const BOOT_PARAMS_SIZE = 4096;

/** Offsets in struct boot_params outside the setup header (arch/x86/include/uapi/asm/bootparam.h). */
export const BootParams = {
  EXT_RAMDISK_IMAGE: 0x0c0,
  EXT_RAMDISK_SIZE: 0x0c4,
  EXT_CMD_LINE_PTR: 0x0c8,
  E820_ENTRIES: 0x1e8,
  /** Must stay 0, or the kernel assumes a loader that did not clear boot_params and wipes fields. */
  SENTINEL: 0x1ef,
  E820_TABLE: 0x2d0,
} as const;

/** "Undefined" boot loader: we have no assigned loader id. */
export const TYPE_OF_LOADER_UNDEFINED = 0xff;

export class BootError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BootError";
  }
}

export interface InitrdPlacement {
  address: number;
  size: number;
}

export interface BootParamsOptions {
  image: BzImage;
  /** Where the protected-mode kernel was loaded (reported back in code32_start). */
  loadAddress: number;
  cmdlineAddress: number;
  e820: readonly E820Entry[];
  initrd?: InitrdPlacement;
}

/**
 * A zeroed boot_params with the image's setup header copied in and the loader's
 * fields filled: type_of_loader, cmd_line_ptr, ramdisk_image/size and the e820 map.
 * The ext_* fields stay 0 because everything sits below 4 GiB.
 */
export function buildBootParams(o: BootParamsOptions): Uint8Array {
  const zp = new Uint8Array(BOOT_PARAMS_SIZE);
  const dv = new DataView(zp.buffer);
  zp.set(o.image.header, Hdr.SETUP_SECTS);
  zp[Hdr.TYPE_OF_LOADER] = TYPE_OF_LOADER_UNDEFINED;
  // No real-mode setup runs, so the heap and segment flags mean nothing; keep LOADED_HIGH.
  zp[Hdr.LOADFLAGS] =
    (o.image.loadFlags | LoadFlags.LOADED_HIGH) & ~(LoadFlags.CAN_USE_HEAP | LoadFlags.QUIET);
  dv.setUint32(Hdr.CODE32_START, o.loadAddress, true);
  if (o.cmdlineAddress >= FOUR_GIB) throw new BootError("the command line must be below 4 GiB");
  dv.setUint32(Hdr.CMD_LINE_PTR, o.cmdlineAddress, true);
  if (o.initrd) {
    if (o.initrd.address + o.initrd.size > FOUR_GIB) throw new BootError("the initrd must be below 4 GiB");
    dv.setUint32(Hdr.RAMDISK_IMAGE, o.initrd.address, true);
    dv.setUint32(Hdr.RAMDISK_SIZE, o.initrd.size, true);
  } else {
    dv.setUint32(Hdr.RAMDISK_IMAGE, 0, true);
    dv.setUint32(Hdr.RAMDISK_SIZE, 0, true);
  }
  if (o.e820.length > E820_MAX_ENTRIES)
    throw new BootError(`${o.e820.length} e820 entries; boot_params holds ${E820_MAX_ENTRIES}`);
  zp[BootParams.E820_ENTRIES] = o.e820.length;
  o.e820.forEach((e, i) => {
    const off = BootParams.E820_TABLE + i * 20;
    dv.setBigUint64(off, BigInt(e.address), true);
    dv.setBigUint64(off + 8, BigInt(e.size), true);
    dv.setUint32(off + 16, e.type, true);
  });
  return zp;
}

/** Decodes the e820 table of a boot_params (for tests and diagnostics). */
export function readE820(zp: Uint8Array): E820Entry[] {
  const dv = new DataView(zp.buffer, zp.byteOffset, zp.byteLength);
  const n = zp[BootParams.E820_ENTRIES] ?? 0;
  return Array.from({ length: n }, (_, i) => {
    const off = BootParams.E820_TABLE + i * 20;
    return {
      address: Number(dv.getBigUint64(off, true)),
      size: Number(dv.getBigUint64(off + 8, true)),
      type: dv.getUint32(off + 16, true) as E820Entry["type"],
    };
  });
}

/**
 * The command line as the kernel wants it: bytes plus a NUL, at most `cmdline_size`
 * bytes before the NUL.
 */
export function encodeCmdline(cmdline: string, image: BzImage): Uint8Array {
  const bytes = new TextEncoder().encode(cmdline);
  if (bytes.includes(0)) throw new BootError("the kernel command line contains a NUL byte");
  const max = Math.min(image.cmdlineSize, 0xffff);
  if (bytes.length > max)
    throw new BootError(
      `the kernel command line is ${bytes.length} bytes; this kernel accepts at most ${max}`,
    );
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/**
 * The end of the memory the kernel uses while it decompresses and runs, if loaded at
 * `loadAddress`: the decompressor (arch/x86/boot/compressed/head_64.S) moves the
 * output to the load address rounded up to kernel_alignment, but never below
 * pref_address (LOAD_PHYSICAL_ADDR), and needs init_size bytes from there.
 */
export function kernelEnd(image: BzImage, loadAddress: number): number {
  const pref = Number(image.prefAddress);
  let out = pref;
  if (image.relocatable) out = Math.max(alignUp(loadAddress, image.kernelAlignment), pref);
  return Math.max(loadAddress + image.kernel.length, out + image.initSize);
}

/**
 * Places an initrd of `size` bytes as high as the protocol allows: page aligned,
 * ending at or below initrd_addr_max, below the end of RAM and below 4 GiB, and
 * above the kernel's footprint.
 */
export function placeInitrd(
  image: BzImage,
  memBytes: number,
  size: number,
  kernelFootprintEnd: number,
): InitrdPlacement {
  if (size <= 0) throw new BootError("the initrd is empty");
  const top = Math.min(lowRamEnd(memBytes), image.initrdAddrMax + 1, FOUR_GIB);
  const address = Math.floor((top - size) / 4096) * 4096;
  if (address < kernelFootprintEnd) {
    const needMiB = Math.ceil((kernelFootprintEnd + alignUp(size, 4096)) / (1024 * 1024));
    throw new BootError(
      `not enough memory: the kernel needs up to 0x${kernelFootprintEnd.toString(16)} and the ${size}-byte initrd must sit above it, below 0x${top.toString(16)}; give the machine at least ${needMiB} MiB`,
    );
  }
  return { address, size };
}
