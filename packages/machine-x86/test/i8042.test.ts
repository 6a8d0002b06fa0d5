import { describe, expect, it } from "vitest";
import { CTRL_ALT_DEL_SET1, CTRL_ALT_DEL_SET2, I8042, I8042Cmd, SharedMutex } from "../src/index.js";

function kbc() {
  const resets: string[] = [];
  const irqs: boolean[] = [];
  const state = I8042.createState();
  const k = new I8042(state, {
    interrupt: (aux) => irqs.push(aux),
    reset: (w) => resets.push(w),
  });
  const cmd = (c: number) => k.write(0x64, c);
  const status = () => k.read(0x64);
  const data = () => k.read(0x60);
  return { k, state, cmd, status, data, resets, irqs };
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

  it("takes Ctrl-Alt-Del from another thread's view of its state: set 1 while translating, one byte per OBF and interrupt", () => {
    const guest = kbc();
    const mainIrqs: boolean[] = [];
    // The main thread's controller over the same shared state, as the machine makes it.
    const main = new I8042(guest.state, { interrupt: (aux) => mainIrqs.push(aux), reset: () => {} });
    expect(main.tryInjectKeys("ctrlAltDel")).toBe(true);
    expect(mainIrqs).toEqual([false]); // IRQ 1 for the first byte
    const got: number[] = [];
    while (guest.status() & 0x01) {
      expect(guest.status() & 0x20).toBe(0); // keyboard data, not AUX
      got.push(guest.data());
    }
    expect(got).toEqual(CTRL_ALT_DEL_SET1);
    expect(got).toEqual([0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]);
    // Each read raised IRQ 1 again while bytes were left: one interrupt per byte.
    expect(guest.irqs).toEqual(Array(CTRL_ALT_DEL_SET1.length - 1).fill(false));
  });

  it("sends set 2 when the guest turned translation off, and refuses what does not fit or a busy lock", () => {
    const { k, state, cmd, data, status } = kbc();
    cmd(I8042Cmd.WRITE_CTR);
    k.write(0x60, 0x05); // KBDINT | SYS, XLATE off
    expect(k.tryInjectKeys("ctrlAltDel")).toBe(true);
    const got: number[] = [];
    while (status() & 0x01) got.push(data());
    expect(got).toEqual(CTRL_ALT_DEL_SET2);
    expect(k.tryInjectKeys(Array(16).fill(0x1e))).toBe(true);
    expect(k.tryInjectKeys([0x9e])).toBe(false); // the 16-byte queue is full: nothing taken
    for (let i = 0; i < 16; i++) expect(data()).toBe(0x1e);
    expect(status() & 0x01).toBe(0);
    // A vCPU thread holding the lock (slot 0): the main thread does not wait, it tries again later.
    const lock = new SharedMutex(new Int32Array(state.buffer), 0);
    lock.lock();
    expect(k.tryInjectKeys([0x1e])).toBe(false);
    lock.unlock();
    expect(k.tryInjectKeys([0x1e])).toBe(true);
    expect(data()).toBe(0x1e);
  });
});
