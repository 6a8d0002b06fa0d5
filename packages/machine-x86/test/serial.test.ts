import { describe, expect, it } from "vitest";
import { Serial, UartReg } from "../src/index.js";

const IER_RDI = 0x01;
const IER_THRI = 0x02;
const LSR_DR = 0x01;
const LSR_OE = 0x02;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;

function uart(rx = 64) {
  const state = Serial.createState(rx);
  const out: number[] = [];
  let irqs = 0;
  let drained = 0;
  const s = new Serial(state, {
    interrupt: () => irqs++,
    output: (b) => out.push(b),
    rxDrained: () => drained++,
  });
  return { s, state, out, irqs: () => irqs, drained: () => drained };
}

describe("16550A UART", () => {
  it("transmits THR writes at once and always reports an empty transmitter", () => {
    const { s, out } = uart();
    for (const c of Buffer.from("hi\n")) s.write(UartReg.DATA, c);
    expect(Buffer.from(out).toString()).toBe("hi\n");
    expect(s.read(UartReg.LSR) & (LSR_THRE | LSR_TEMT)).toBe(LSR_THRE | LSR_TEMT);
  });

  it("has the reset values Linux expects", () => {
    const { s } = uart();
    expect(s.read(UartReg.IER)).toBe(0);
    expect(s.read(UartReg.IIR)).toBe(0x01); // no interrupt, FIFOs off
    expect(s.read(UartReg.LCR)).toBe(0x03);
    expect(s.read(UartReg.MCR)).toBe(0x08); // OUT2
    expect(s.read(UartReg.MSR)).toBe(0xb0); // DCD, DSR, CTS
  });

  it("keeps the divisor latch behind LCR.DLAB", () => {
    const { s } = uart();
    s.write(UartReg.LCR, 0x83);
    s.write(UartReg.DATA, 0x01);
    s.write(UartReg.IER, 0x00);
    expect(s.read(UartReg.DATA)).toBe(0x01);
    expect(s.read(UartReg.IER)).toBe(0x00);
    s.write(UartReg.LCR, 0x03);
    expect(s.read(UartReg.IER)).toBe(0);
  });

  it("reports a 16550A after FCR enables the FIFOs", () => {
    const { s } = uart();
    s.write(UartReg.FCR, 0x01);
    expect(s.read(UartReg.IIR) & 0xc0).toBe(0xc0);
    s.write(UartReg.FCR, 0x00);
    expect(s.read(UartReg.IIR) & 0xc0).toBe(0);
  });

  it("keeps only the 16550's four IER bits and the scratch register", () => {
    const { s } = uart();
    s.write(UartReg.IER, 0xff);
    expect(s.read(UartReg.IER)).toBe(0x0f);
    s.write(UartReg.SCR, 0xa5);
    expect(s.read(UartReg.SCR)).toBe(0xa5);
  });

  it("raises THRE when IER.THRI is enabled, and again after IIR acknowledges it and IER is toggled", () => {
    const u = uart();
    const { s } = u;
    s.write(UartReg.IER, IER_THRI);
    expect(u.irqs()).toBe(1);
    expect(s.read(UartReg.IIR) & 0x0f).toBe(0x02);
    expect(s.read(UartReg.IIR) & 0x0f).toBe(0x01); // reading IIR acknowledged THRE
    s.write(UartReg.IER, 0);
    s.write(UartReg.IER, IER_THRI);
    expect(s.read(UartReg.IIR) & 0x0f).toBe(0x02); // Linux's UART_BUG_THRE test passes
    expect(u.irqs()).toBe(2);
  });

  it("raises THRE after every transmitted byte while THRI is on", () => {
    const u = uart();
    u.s.write(UartReg.IER, IER_THRI);
    u.s.read(UartReg.IIR);
    u.s.write(UartReg.DATA, 0x41);
    expect(u.irqs()).toBe(2);
    expect(u.s.read(UartReg.IIR) & 0x0f).toBe(0x02);
  });

  it("delivers host input through RBR with data-ready and RDA interrupts", () => {
    const u = uart();
    const { s } = u;
    s.write(UartReg.IER, IER_RDI);
    expect(s.enqueue(Buffer.from("ok"))).toBe(2);
    expect(u.irqs()).toBe(1);
    expect(s.read(UartReg.LSR) & LSR_DR).toBe(LSR_DR);
    expect(s.read(UartReg.IIR) & 0x0f).toBe(0x04);
    expect(s.read(UartReg.DATA)).toBe(0x6f);
    expect(u.drained()).toBe(0);
    expect(s.read(UartReg.DATA)).toBe(0x6b);
    expect(u.drained()).toBe(1);
    expect(s.read(UartReg.LSR) & LSR_DR).toBe(0);
    expect(s.read(UartReg.IIR) & 0x0f).toBe(0x01);
    // A new byte is a new edge.
    s.enqueue(Buffer.from("!"));
    expect(u.irqs()).toBe(2);
  });

  it("gives RDA priority over THRE", () => {
    const { s } = uart();
    s.write(UartReg.IER, IER_RDI | IER_THRI);
    s.enqueue(Buffer.from("x"));
    expect(s.read(UartReg.IIR) & 0x0f).toBe(0x04);
    s.read(UartReg.DATA);
    expect(s.read(UartReg.IIR) & 0x0f).toBe(0x02);
  });

  it("accepts only what fits in the receive FIFO", () => {
    const { s } = uart(16);
    expect(s.enqueue(new Uint8Array(20))).toBe(16);
    expect(s.rxFree).toBe(0);
    expect(s.enqueue(new Uint8Array(1))).toBe(0);
    s.write(UartReg.FCR, 0x03); // enable + clear the receive FIFO
    expect(s.rxFree).toBe(16);
    expect(s.tryEnqueue(new Uint8Array(3))).toBe(3);
  });

  it("loops transmitted bytes back in loopback mode, with the modem lines crossed", () => {
    const u = uart();
    const { s } = u;
    s.write(UartReg.MCR, 0x10 | 0x01 | 0x02); // LOOP, DTR, RTS
    expect(s.read(UartReg.MSR) & 0xf0).toBe(0x30); // DSR, CTS
    s.write(UartReg.DATA, 0x55);
    expect(u.out).toEqual([]);
    expect(s.read(UartReg.LSR) & LSR_DR).toBe(LSR_DR);
    expect(s.read(UartReg.DATA)).toBe(0x55);
    expect(s.enqueue(Buffer.from("lost"))).toBe(4); // the line is disconnected
    expect(s.read(UartReg.LSR) & LSR_DR).toBe(0);
  });

  it("reports an overrun once in LSR", () => {
    const { s } = uart(4);
    s.write(UartReg.MCR, 0x10);
    for (let i = 0; i < 5; i++) s.write(UartReg.DATA, i);
    expect(s.read(UartReg.LSR) & LSR_OE).toBe(LSR_OE);
    expect(s.read(UartReg.LSR) & LSR_OE).toBe(0);
  });

  it("is one device for every thread attached to its state", () => {
    const a = uart();
    const b = new Serial(a.state, { interrupt: () => {}, output: () => {} });
    b.write(UartReg.SCR, 0x42);
    a.s.enqueue(Buffer.from("z"));
    expect(a.s.read(UartReg.SCR)).toBe(0x42);
    expect(b.read(UartReg.DATA)).toBe(0x7a);
  });
});
