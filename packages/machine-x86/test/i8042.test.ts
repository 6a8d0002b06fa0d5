import { describe, expect, it } from "vitest";
import { I8042, I8042Cmd } from "../src/index.js";

function kbc() {
  const resets: string[] = [];
  const irqs: boolean[] = [];
  const k = new I8042(I8042.createState(), {
    interrupt: (aux) => irqs.push(aux),
    reset: (w) => resets.push(w),
  });
  const cmd = (c: number) => k.write(0x64, c);
  const status = () => k.read(0x64);
  const data = () => k.read(0x60);
  return { k, cmd, status, data, resets, irqs };
}

describe("i8042 stub", () => {
  it("passes the controller self test and interface tests", () => {
    const { cmd, status, data } = kbc();
    expect(status() & 0x01).toBe(0);
    expect(status() & 0x10).toBe(0x10); // not inhibited: no "Keylock active" warning
    cmd(I8042Cmd.SELF_TEST);
    expect(status() & 0x01).toBe(1);
    expect(data()).toBe(0x55);
    expect(status() & 0x01).toBe(0);
    cmd(I8042Cmd.KBD_TEST);
    expect(data()).toBe(0x00);
  });

  it("reads and writes the command byte", () => {
    const { k, cmd, data } = kbc();
    cmd(I8042Cmd.READ_CTR);
    expect(data()).toBe(0x45);
    cmd(I8042Cmd.WRITE_CTR);
    k.write(0x60, 0x30);
    cmd(I8042Cmd.READ_CTR);
    expect(data()).toBe(0x30);
  });

  it("resets the machine on 0xfe and on output-port bit 0 cleared", () => {
    const a = kbc();
    a.cmd(I8042Cmd.PULSE_RESET);
    expect(a.resets).toHaveLength(1);
    expect(a.resets[0]).toMatch(/0xfe/);
    const b = kbc();
    b.cmd(I8042Cmd.WRITE_OUTPUT);
    b.k.write(0x60, 0x02);
    expect(b.resets).toHaveLength(1);
    const c = kbc();
    c.cmd(0xff); // pulses no line
    expect(c.resets).toHaveLength(0);
  });

  it("acknowledges keyboard commands and interrupts only when enabled", () => {
    const { k, cmd, data, irqs } = kbc();
    k.write(0x60, 0xf2);
    expect([data(), data(), data()]).toEqual([0xfa, 0xab, 0x83]);
    expect(irqs).toEqual([false, false, false]);
    cmd(I8042Cmd.WRITE_CTR);
    k.write(0x60, 0x44); // KBDINT off
    k.write(0x60, 0xed);
    expect(data()).toBe(0xfa);
    expect(irqs).toHaveLength(3);
  });

  it("answers AUX writes with 'resend' on the AUX side", () => {
    const { k, cmd, status, data } = kbc();
    cmd(I8042Cmd.WRITE_AUX);
    k.write(0x60, 0xff);
    expect(status() & 0x20).toBe(0x20);
    expect(data()).toBe(0xfe);
  });
});
