import { describe, expect, it } from "vitest";
import {
  BootParams,
  buildBootParams,
  buildCmdline,
  buildE820,
  DEFAULT_CMDLINE,
  E820Type,
  encodeCmdline,
  Hdr,
  kernelEnd,
  Layout,
  parseBzImage,
  placeInitrd,
  readE820,
  TYPE_OF_LOADER_UNDEFINED,
} from "../src/index.js";
import { makeTinyBzImage, RESET_GUEST } from "./fixtures/tiny-guests.mjs";
import { debianBzImage } from "./helpers/debian-kernel.js";

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

describe("e820", () => {
  it("maps a 256 MiB PC: conventional RAM, the reserved EBDA/ROM hole, RAM from 1 MiB", () => {
    expect(buildE820(256 * MiB)).toEqual([
      { address: 0, size: 0x9fc00, type: E820Type.RAM },
      { address: 0x9fc00, size: 0x100000 - 0x9fc00, type: E820Type.RESERVED },
      { address: 0x100000, size: 255 * MiB, type: E820Type.RAM },
    ]);
  });

  it("moves what does not fit below the PCI hole above 4 GiB", () => {
    const map = buildE820(5 * GiB);
    expect(map[2]).toEqual({ address: MiB, size: 3 * GiB - MiB, type: E820Type.RAM });
    expect(map[3]).toEqual({ address: 4 * GiB, size: 2 * GiB, type: E820Type.RAM });
    const total = map.filter((e) => e.type === E820Type.RAM).reduce((s, e) => s + e.size, 0);
    expect(total).toBe(5 * GiB - (MiB - 0x9fc00));
  });

  it("refuses a machine with 1 MiB or less", () => {
    expect(() => buildE820(MiB)).toThrow(/more than 1 MiB/);
  });
});

describe("command line", () => {
  it("puts the defaults first and the user's parameters after", () => {
    expect(buildCmdline("quiet init=/bin/sh")).toBe(`${DEFAULT_CMDLINE} quiet init=/bin/sh`);
    expect(buildCmdline(undefined)).toBe(DEFAULT_CMDLINE);
    expect(buildCmdline("  root=/dev/vda ", false)).toBe("root=/dev/vda");
    expect(DEFAULT_CMDLINE).toMatch(/console=ttyS0/);
    expect(DEFAULT_CMDLINE).toMatch(/reboot=k/);
  });

  it("is NUL-terminated and bounded by cmdline_size", () => {
    const bz = parseBzImage(makeTinyBzImage(RESET_GUEST));
    const b = encodeCmdline("console=ttyS0", bz);
    expect(Buffer.from(b).toString("latin1")).toBe("console=ttyS0\0");
    expect(() => encodeCmdline("x".repeat(2048), bz)).toThrow(/2048 bytes; this kernel accepts at most 2047/);
    expect(encodeCmdline("x".repeat(2047), bz).length).toBe(2048);
    expect(() => encodeCmdline("a\0b", bz)).toThrow(/NUL/);
  });
});

describe("boot_params", () => {
  const { bytes } = debianBzImage();
  const bz = parseBzImage(bytes);
  const e820 = buildE820(256 * MiB);
  const initrd = { address: 0xfe58000, size: 0x1a8000 };
  const zp = buildBootParams({ image: bz, loadAddress: 0x100000, cmdlineAddress: 0x20000, e820, initrd });
  const dv = new DataView(zp.buffer);

  it("copies the setup header and fills the loader's fields", () => {
    expect(zp.length).toBe(4096);
    expect(dv.getUint32(Hdr.HEADER, true)).toBe(0x53726448);
    expect(dv.getUint16(Hdr.VERSION, true)).toBe(bz.protocolVersion);
    expect(dv.getUint32(Hdr.INIT_SIZE, true)).toBe(bz.initSize);
    expect(dv.getUint32(Hdr.KERNEL_ALIGNMENT, true)).toBe(0x200000);
    expect(zp[Hdr.TYPE_OF_LOADER]).toBe(TYPE_OF_LOADER_UNDEFINED);
    expect(zp[Hdr.LOADFLAGS]! & 0x01).toBe(1);
    expect(dv.getUint32(Hdr.CMD_LINE_PTR, true)).toBe(0x20000);
    expect(dv.getUint32(Hdr.CODE32_START, true)).toBe(0x100000);
    expect(dv.getUint32(Hdr.RAMDISK_IMAGE, true)).toBe(initrd.address);
    expect(dv.getUint32(Hdr.RAMDISK_SIZE, true)).toBe(initrd.size);
    // Bytes of the header the loader does not own are the kernel's, unchanged.
    for (let off: number = Hdr.SETUP_SECTS; off < bz.headerEnd; off++) {
      const owned =
        off === Hdr.TYPE_OF_LOADER ||
        off === Hdr.LOADFLAGS ||
        (off >= Hdr.CODE32_START && off < Hdr.CODE32_START + 4) ||
        (off >= Hdr.RAMDISK_IMAGE && off < Hdr.RAMDISK_SIZE + 4) ||
        (off >= Hdr.CMD_LINE_PTR && off < Hdr.CMD_LINE_PTR + 4);
      if (!owned) expect(zp[off], `offset 0x${off.toString(16)}`).toBe(bytes[off]);
    }
  });

  it("leaves the ext_* fields and the sentinel zero", () => {
    expect(dv.getUint32(BootParams.EXT_RAMDISK_IMAGE, true)).toBe(0);
    expect(dv.getUint32(BootParams.EXT_RAMDISK_SIZE, true)).toBe(0);
    expect(dv.getUint32(BootParams.EXT_CMD_LINE_PTR, true)).toBe(0);
    expect(zp[BootParams.SENTINEL]).toBe(0);
  });

  it("holds the e820 map", () => {
    expect(zp[BootParams.E820_ENTRIES]).toBe(3);
    expect(readE820(zp)).toEqual(e820);
  });

  it("has no ramdisk fields without an initrd", () => {
    const z = buildBootParams({ image: bz, loadAddress: 0x100000, cmdlineAddress: 0x20000, e820 });
    expect(new DataView(z.buffer).getUint32(Hdr.RAMDISK_IMAGE, true)).toBe(0);
    expect(new DataView(z.buffer).getUint32(Hdr.RAMDISK_SIZE, true)).toBe(0);
  });
});

describe("kernel footprint and initrd placement", () => {
  const bz = parseBzImage(debianBzImage().bytes);

  it("puts the decompressed kernel at pref_address when loaded at 1 MiB", () => {
    expect(kernelEnd(bz, 0x100000)).toBe(0x1000000 + bz.initSize);
    // Loaded high and aligned, a relocatable kernel decompresses in place.
    expect(kernelEnd(bz, 0x4000000)).toBe(0x4000000 + bz.initSize);
    expect(kernelEnd(bz, 0x4100000)).toBe(0x4200000 + bz.initSize);
  });

  it("places the initrd page-aligned at the top of RAM", () => {
    const end = kernelEnd(bz, 0x100000);
    const p = placeInitrd(bz, 256 * MiB, 1_736_000, end);
    expect(p.address % 4096).toBe(0);
    expect(p.address + p.size).toBeLessThanOrEqual(256 * MiB);
    expect(256 * MiB - (p.address + p.size)).toBeLessThan(4096);
  });

  it("stays below initrd_addr_max and 4 GiB", () => {
    const lowMax = { ...bz, initrdAddrMax: 0x37ffffff };
    const p = placeInitrd(lowMax, 2 * GiB, 10 * MiB, kernelEnd(bz, 0x100000));
    expect(p.address + p.size - 1).toBeLessThanOrEqual(0x37ffffff);
    expect(0x38000000 - (p.address + p.size)).toBeLessThan(4096);
    const big = placeInitrd(bz, 8 * GiB, 10 * MiB, kernelEnd(bz, 0x100000));
    expect(big.address + big.size).toBeLessThanOrEqual(0x80000000);
  });

  it("refuses when the initrd would overlap the kernel", () => {
    expect(() => placeInitrd(bz, 96 * MiB, 40 * MiB, kernelEnd(bz, 0x100000))).toThrow(
      /not enough memory.*at least \d+ MiB/,
    );
  });

  it("splits RAM around the PCI hole", () => {
    expect(Layout.ramRanges(256 * MiB)).toEqual([{ address: 0, size: 256 * MiB }]);
    expect(Layout.ramRanges(4 * GiB)).toEqual([
      { address: 0, size: 3 * GiB },
      { address: 4 * GiB, size: GiB },
    ]);
  });
});
