import { describe, expect, it } from "vitest";
import { Cmos, CmosReg, fromBcd, toBcd } from "../src/index.js";

// 2026-11-25 13:07:59 UTC, a Wednesday.
const T = Date.UTC(2026, 10, 25, 13, 7, 59);

function rtc(now = () => T) {
  const c = new Cmos(Cmos.createState(), now);
  const reg = (i: number) => {
    c.write(0, i);
    return c.read(1);
  };
  const set = (i: number, v: number) => {
    c.write(0, i);
    c.write(1, v);
  };
  return { c, reg, set };
}

describe("CMOS RTC", () => {
  it("converts BCD", () => {
    expect(toBcd(59)).toBe(0x59);
    expect(fromBcd(0x26)).toBe(26);
  });

  it("reads the host's UTC time in BCD, 24-hour mode", () => {
    const { reg } = rtc();
    expect(reg(CmosReg.SECONDS)).toBe(0x59);
    expect(reg(CmosReg.MINUTES)).toBe(0x07);
    expect(reg(CmosReg.HOURS)).toBe(0x13);
    expect(reg(CmosReg.DAY_OF_WEEK)).toBe(4);
    expect(reg(CmosReg.DAY_OF_MONTH)).toBe(0x25);
    expect(reg(CmosReg.MONTH)).toBe(0x11);
    expect(reg(CmosReg.YEAR)).toBe(0x26);
    expect(reg(CmosReg.CENTURY)).toBe(0x20);
  });

  it("has status registers that never show an update in progress", () => {
    const { reg, set } = rtc();
    expect(reg(CmosReg.STATUS_A) & 0x80).toBe(0);
    expect(reg(CmosReg.STATUS_B)).toBe(0x02);
    expect(reg(CmosReg.STATUS_D)).toBe(0x80);
    set(CmosReg.STATUS_C, 0xff);
    expect(reg(CmosReg.STATUS_C)).toBe(0);
  });

  it("follows status B: binary and 12-hour formats", () => {
    const { reg, set } = rtc();
    set(CmosReg.STATUS_B, 0x02 | 0x04);
    expect(reg(CmosReg.SECONDS)).toBe(59);
    expect(reg(CmosReg.HOURS)).toBe(13);
    set(CmosReg.STATUS_B, 0x00);
    expect(reg(CmosReg.HOURS)).toBe(0x80 | 0x01); // 1 PM
  });

  it("lets the guest set its clock without touching the host's", () => {
    let now = T;
    const { reg, set } = rtc(() => now);
    set(CmosReg.YEAR, 0x30);
    set(CmosReg.HOURS, 0x08);
    expect(reg(CmosReg.YEAR)).toBe(0x30);
    expect(reg(CmosReg.HOURS)).toBe(0x08);
    now += 61_000;
    expect(reg(CmosReg.MINUTES)).toBe(0x09);
    expect(reg(CmosReg.SECONDS)).toBe(0x00);
  });

  it("stores CMOS RAM and masks the NMI bit out of the index", () => {
    const { c, reg, set } = rtc();
    set(0x40, 0x5a);
    expect(reg(0x40)).toBe(0x5a);
    c.write(0, 0x80 | 0x40);
    expect(c.read(1)).toBe(0x5a);
    expect(c.read(0)).toBe(0xff);
  });
});
