// Parses the setup header of a Linux x86 bzImage (Documentation/arch/x86/boot.rst).

/** Offsets of setup header fields, relative to the start of the image (and of boot_params). */
export const Hdr = {
  SETUP_SECTS: 0x1f1,
  SYSSIZE: 0x1f4,
  BOOT_FLAG: 0x1fe,
  JUMP: 0x200,
  HEADER: 0x202,
  VERSION: 0x206,
  KERNEL_VERSION: 0x20e,
  TYPE_OF_LOADER: 0x210,
  LOADFLAGS: 0x211,
  CODE32_START: 0x214,
  RAMDISK_IMAGE: 0x218,
  RAMDISK_SIZE: 0x21c,
  CMD_LINE_PTR: 0x228,
  INITRD_ADDR_MAX: 0x22c,
  KERNEL_ALIGNMENT: 0x230,
  RELOCATABLE_KERNEL: 0x234,
  MIN_ALIGNMENT: 0x235,
  XLOADFLAGS: 0x236,
  CMDLINE_SIZE: 0x238,
  HARDWARE_SUBARCH: 0x23c,
  PAYLOAD_OFFSET: 0x248,
  PAYLOAD_LENGTH: 0x24c,
  SETUP_DATA: 0x250,
  PREF_ADDRESS: 0x258,
  INIT_SIZE: 0x260,
  HANDOVER_OFFSET: 0x264,
} as const;

/** "HdrS", little-endian. */
export const HDRS_MAGIC = 0x53726448;
export const BOOT_FLAG_MAGIC = 0xaa55;
/** xloadflags appeared in 2.12 (Linux 3.8); without it we cannot know there is a 64-bit entry. */
export const MIN_BOOT_PROTOCOL = 0x020c;

export const LoadFlags = {
  LOADED_HIGH: 0x01,
  KASLR: 0x02,
  QUIET: 0x20,
  KEEP_SEGMENTS: 0x40,
  CAN_USE_HEAP: 0x80,
} as const;
export const XLoadFlags = {
  KERNEL_64: 0x01,
  CAN_BE_LOADED_ABOVE_4G: 0x02,
  EFI_HANDOVER_32: 0x04,
  EFI_HANDOVER_64: 0x08,
  EFI_KEXEC: 0x10,
} as const;

/** The 64-bit entry point is 0x200 bytes into the protected-mode kernel (startup_64). */
export const STARTUP_64_OFFSET = 0x200;

/** A file that is not a bootable bzImage, with a reason a person can act on. */
export class BzImageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BzImageError";
  }
}

/** What a boot loader needs from a bzImage's setup header. */
export interface BzImage {
  /** Boot protocol version, e.g. 0x020f for 2.15. */
  protocolVersion: number;
  /** "2.15". */
  protocolString: string;
  /** The kernel's version string from the real-mode part, when present. */
  kernelVersion: string | undefined;
  /** 512-byte sectors of real-mode setup code after the boot sector. */
  setupSects: number;
  loadFlags: number;
  xloadFlags: number;
  relocatable: boolean;
  /** Alignment a relocatable kernel wants for its decompressed image. */
  kernelAlignment: number;
  /** Address the kernel would like to be decompressed at (LOAD_PHYSICAL_ADDR). */
  prefAddress: bigint;
  /** Bytes of memory the kernel needs from its load address while it decompresses and runs. */
  initSize: number;
  /** Highest byte address an initrd may occupy. */
  initrdAddrMax: number;
  /** Longest command line, without the terminating NUL. */
  cmdlineSize: number;
  /** Offset in the file of the setup header's end (0x202 + the jump byte). */
  headerEnd: number;
  /** Offset in the file of the protected-mode kernel. */
  kernelOffset: number;
  /** The protected-mode kernel, to be loaded at the load address (a view into the file). */
  kernel: Uint8Array;
  /** The whole setup header, bytes 0x1f1..headerEnd (a view into the file). */
  header: Uint8Array;
}

function hex(n: number | bigint): string {
  return `0x${n.toString(16)}`;
}

function sniff(b: Uint8Array): string {
  if (b[0] === 0x7f && b[1] === 0x45 && b[2] === 0x4c && b[3] === 0x46)
    return " It is an ELF file (an uncompressed vmlinux?); pass arch/x86/boot/bzImage instead.";
  if (b[0] === 0x1f && b[1] === 0x8b)
    return " It is gzip-compressed; a bzImage is not (decompress it first?).";
  if (b[0] === 0x30 && b[1] === 0x37 && b[2] === 0x30 && b[3] === 0x37)
    return " It is a cpio archive (an initramfs?).";
  return "";
}

/**
 * Reads and checks the setup header of a bzImage. Refuses, with a message saying why,
 * anything this loader cannot boot: not a bzImage, truncated, a protocol older than
 * 2.12, a kernel not loadable high, or one without a 64-bit entry point.
 */
export function parseBzImage(image: Uint8Array): BzImage {
  const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
  if (image.length < Hdr.HEADER + 4)
    throw new BzImageError(
      `not a Linux bzImage: the file is ${image.length} bytes, too short for a setup header.${sniff(image)}`,
    );
  const magic = dv.getUint32(Hdr.HEADER, true);
  if (magic !== HDRS_MAGIC)
    throw new BzImageError(`not a Linux bzImage: no "HdrS" magic at offset 0x202.${sniff(image)}`);
  const version = dv.getUint16(Hdr.VERSION, true);
  const protocolString = `${version >> 8}.${(version & 0xff).toString().padStart(2, "0")}`;
  if (version < MIN_BOOT_PROTOCOL)
    throw new BzImageError(
      `the kernel's boot protocol ${protocolString} is too old: tskvm needs 2.12 or later (Linux 3.8+), which says whether the kernel has a 64-bit entry point.`,
    );
  const headerEnd = Hdr.JUMP + 2 + (image[Hdr.JUMP + 1] ?? 0);
  if (headerEnd < Hdr.HANDOVER_OFFSET || image.length < headerEnd)
    throw new BzImageError(
      `not a valid bzImage: the setup header ends at ${hex(headerEnd)}, before the 2.12 fields.`,
    );
  if (dv.getUint16(Hdr.BOOT_FLAG, true) !== BOOT_FLAG_MAGIC)
    throw new BzImageError("not a valid bzImage: boot_flag at 0x1fe is not 0xaa55.");

  let setupSects = image[Hdr.SETUP_SECTS] ?? 0;
  if (setupSects === 0) setupSects = 4; // the protocol's historical default
  const kernelOffset = (setupSects + 1) * 512;
  const syssize = dv.getUint32(Hdr.SYSSIZE, true) * 16;
  if (image.length <= kernelOffset || image.length < kernelOffset + syssize)
    throw new BzImageError(
      `truncated bzImage: the header promises ${kernelOffset + syssize} bytes (setup ${kernelOffset} + kernel ${syssize}), the file has ${image.length}.`,
    );

  const loadFlags = image[Hdr.LOADFLAGS] ?? 0;
  if ((loadFlags & LoadFlags.LOADED_HIGH) === 0)
    throw new BzImageError(
      "this is a zImage (loaded at 0x10000), not a bzImage: loadflags lacks LOADED_HIGH.",
    );
  const xloadFlags = dv.getUint16(Hdr.XLOADFLAGS, true);
  if ((xloadFlags & XLoadFlags.KERNEL_64) === 0)
    throw new BzImageError(
      "the kernel has no 64-bit entry point (xloadflags lacks XLF_KERNEL_64): tskvm boots x86-64 kernels only.",
    );

  const relocatable = (image[Hdr.RELOCATABLE_KERNEL] ?? 0) !== 0;
  const kernelAlignment = dv.getUint32(Hdr.KERNEL_ALIGNMENT, true);
  if (relocatable && (kernelAlignment === 0 || (kernelAlignment & (kernelAlignment - 1)) !== 0))
    throw new BzImageError(
      `not a valid bzImage: kernel_alignment ${hex(kernelAlignment)} is not a power of two.`,
    );
  const initSize = dv.getUint32(Hdr.INIT_SIZE, true);
  if (initSize === 0) throw new BzImageError("not a valid bzImage: init_size is 0.");

  const kvOff = dv.getUint16(Hdr.KERNEL_VERSION, true);
  let kernelVersion: string | undefined;
  if (kvOff !== 0 && kvOff + 0x200 < kernelOffset) {
    const start = kvOff + 0x200;
    let end = start;
    while (end < kernelOffset && end - start < 256 && image[end] !== 0) end++;
    kernelVersion = new TextDecoder("latin1").decode(image.subarray(start, end));
  }

  return {
    protocolVersion: version,
    protocolString,
    kernelVersion,
    setupSects,
    loadFlags,
    xloadFlags,
    relocatable,
    kernelAlignment,
    prefAddress: dv.getBigUint64(Hdr.PREF_ADDRESS, true),
    initSize,
    initrdAddrMax: dv.getUint32(Hdr.INITRD_ADDR_MAX, true),
    cmdlineSize: dv.getUint32(Hdr.CMDLINE_SIZE, true),
    headerEnd,
    kernelOffset,
    kernel: image.subarray(kernelOffset),
    header: image.subarray(Hdr.SETUP_SECTS, headerEnd),
  };
}
