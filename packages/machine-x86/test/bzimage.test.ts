import { describe, expect, it } from "vitest";
import { BzImageError, Hdr, parseBzImage, STARTUP_64_OFFSET, XLoadFlags } from "../src/index.js";
import { makeTinyBzImage, RESET_GUEST } from "./fixtures/tiny-guests.mjs";
import { debianBzImage } from "./helpers/debian-kernel.js";

function patched(image: Uint8Array, edit: (dv: DataView, b: Uint8Array) => void): Uint8Array {
  const b = image.slice();
  edit(new DataView(b.buffer), b);
  return b;
}

describe("parseBzImage on Debian's kernel", () => {
  const { bytes } = debianBzImage();
  const bz = parseBzImage(bytes);

  it("reads the protocol version, entry and alignment", () => {
    expect(bz.protocolVersion).toBeGreaterThanOrEqual(0x020c);
    expect(bz.protocolString).toMatch(/^2\.\d\d$/);
    expect(bz.kernelVersion).toMatch(/^\d+\.\d+\.\d+-\d+-amd64 /);
    expect(bz.xloadFlags & XLoadFlags.KERNEL_64).toBe(XLoadFlags.KERNEL_64);
    expect(bz.relocatable).toBe(true);
    expect(bz.kernelAlignment).toBe(0x200000);
    expect(bz.prefAddress).toBe(0x1000000n); // CONFIG_PHYSICAL_START
    expect(bz.initrdAddrMax).toBe(0x7fffffff);
    expect(bz.cmdlineSize).toBe(2047);
    expect(STARTUP_64_OFFSET).toBe(0x200);
  });

  it("locates the protected-mode kernel after the setup sectors", () => {
    expect(bz.setupSects).toBe(bytes[0x1f1]);
    expect(bz.kernelOffset).toBe((bz.setupSects + 1) * 512);
    expect(bz.kernel.length).toBe(bytes.length - bz.kernelOffset);
    expect(bz.kernel[0]).toBe(bytes[bz.kernelOffset]);
    // init_size covers the decompressed kernel, far more than the compressed file.
    expect(bz.initSize).toBeGreaterThan(bz.kernel.length);
    expect(bz.headerEnd).toBe(0x202 + bytes[0x201]!);
    expect(bz.header.length).toBe(bz.headerEnd - 0x1f1);
  });

  it("refuses a truncated copy", () => {
    expect(() => parseBzImage(bytes.subarray(0, bytes.length >> 1))).toThrow(/truncated bzImage/);
    expect(() => parseBzImage(bytes.subarray(0, 0x1000))).toThrow(/truncated bzImage/);
  });
});

describe("parseBzImage on malformed input", () => {
  const good = makeTinyBzImage(RESET_GUEST);

  it("accepts the minimal image the tests boot", () => {
    expect(parseBzImage(good).protocolString).toBe("2.15");
  });

  it("says a short file is too short", () => {
    expect(() => parseBzImage(new Uint8Array(0))).toThrow(/too short for a setup header/);
    expect(() => parseBzImage(good.subarray(0, 0x100))).toThrow(BzImageError);
  });

  it("says what a file without HdrS is", () => {
    const elf = new Uint8Array(4096);
    elf.set([0x7f, 0x45, 0x4c, 0x46]);
    expect(() => parseBzImage(elf)).toThrow(/no "HdrS" magic.*ELF file/s);
    const gz = new Uint8Array(4096);
    gz.set([0x1f, 0x8b]);
    expect(() => parseBzImage(gz)).toThrow(/gzip/);
    expect(() => parseBzImage(new Uint8Array(4096))).toThrow(/not a Linux bzImage/);
  });

  it("refuses protocols older than 2.12", () => {
    const old = patched(good, (dv) => dv.setUint16(Hdr.VERSION, 0x020b, true));
    expect(() => parseBzImage(old)).toThrow(/2\.11 is too old/);
  });

  it("refuses a zImage and a kernel without a 64-bit entry", () => {
    expect(() => parseBzImage(patched(good, (_dv, b) => (b[Hdr.LOADFLAGS] = 0)))).toThrow(/zImage/);
    expect(() => parseBzImage(patched(good, (dv) => dv.setUint16(Hdr.XLOADFLAGS, 0, true)))).toThrow(
      /no 64-bit entry point/,
    );
  });

  it("checks boot_flag, kernel_alignment and init_size", () => {
    expect(() => parseBzImage(patched(good, (dv) => dv.setUint16(Hdr.BOOT_FLAG, 0, true)))).toThrow(
      /boot_flag/,
    );
    expect(() =>
      parseBzImage(patched(good, (dv) => dv.setUint32(Hdr.KERNEL_ALIGNMENT, 0x30000, true))),
    ).toThrow(/power of two/);
    expect(() => parseBzImage(patched(good, (dv) => dv.setUint32(Hdr.INIT_SIZE, 0, true)))).toThrow(
      /init_size/,
    );
  });

  it("treats setup_sects 0 as 4", () => {
    const b = patched(good, (_dv, x) => (x[Hdr.SETUP_SECTS] = 0));
    const big = new Uint8Array(5 * 512 + 0x300);
    big.set(b.subarray(0, 1024));
    new DataView(big.buffer).setUint32(Hdr.SYSSIZE, 0x300 / 16, true);
    expect(parseBzImage(big).kernelOffset).toBe(5 * 512);
  });
});
