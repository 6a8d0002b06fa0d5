// A 16550A UART (8250 family), as vm-superio's serial.rs but with the register state in
// shared memory so every vCPU thread and the main thread drive the same device.

import { ByteRing, SharedMutex } from "./shared.js";

/** Register offsets from the base port; DLL/DLM replace RBR/IER while LCR.DLAB is set. */
export const UartReg = { DATA: 0, IER: 1, IIR: 2, FCR: 2, LCR: 3, MCR: 4, LSR: 5, MSR: 6, SCR: 7 } as const;

export const Ier = { RDI: 0x01, THRI: 0x02, RLSI: 0x04, MSI: 0x08 } as const;
export const Iir = {
  NO_INT: 0x01,
  MSI: 0x00,
  THRI: 0x02,
  RDI: 0x04,
  RLSI: 0x06,
  FIFO_ENABLED: 0xc0,
} as const;
export const Fcr = { ENABLE_FIFO: 0x01, CLEAR_RCVR: 0x02, CLEAR_XMIT: 0x04 } as const;
export const Lcr = { DLAB: 0x80 } as const;
export const Mcr = { DTR: 0x01, RTS: 0x02, OUT1: 0x04, OUT2: 0x08, LOOP: 0x10 } as const;
export const Lsr = { DR: 0x01, OE: 0x02, THRE: 0x20, TEMT: 0x40 } as const;
export const Msr = { CTS: 0x10, DSR: 0x20, RI: 0x40, DCD: 0x80 } as const;

/** COM1. */
export const COM1 = { port: 0x3f8, irq: 4 } as const;
/** Receive FIFO depth (vm-superio's; a real 16550A has 16, deeper costs nothing here). */
export const RX_FIFO_SIZE = 64;

// Slots of the Int32 register file.
const S = {
  LOCK: 0,
  IER: 1,
  LCR: 2,
  MCR: 3,
  SCR: 4,
  DLL: 5,
  DLM: 6,
  FCR: 7,
  THR_PENDING: 8,
  LINE: 9,
  OVERRUN: 10,
} as const;
const SLOTS = 16;

/** Plain data (two SharedArrayBuffers) that attaches a {@link Serial} to the same device in any thread. */
export interface SerialState {
  regs: SharedArrayBuffer;
  rx: SharedArrayBuffer;
}

export interface SerialOptions {
  /** Raises the UART's interrupt (an edge: called when the line goes from idle to pending). */
  interrupt: () => void;
  /** A byte the guest transmitted. Called with the device lock held, in guest order. */
  output: (byte: number) => void;
  /** The guest emptied the receive FIFO (so queued input can be pushed). */
  rxDrained?: () => void;
}

/**
 * One UART shared by all threads: each register access takes the device's lock,
 * updates the shared registers and, when the interrupt line rises, calls `interrupt`.
 * Transmission is instant (THR is always empty again), input goes through a receive FIFO.
 */
export class Serial {
  readonly #r: Int32Array;
  readonly #rx: ByteRing;
  readonly #lock: SharedMutex;
  readonly #o: SerialOptions;

  static createState(rxCapacity = RX_FIFO_SIZE): SerialState {
    const regs = new SharedArrayBuffer(SLOTS * 4);
    const r = new Int32Array(regs);
    r[S.LCR] = 0x03; // 8N1
    r[S.MCR] = Mcr.OUT2;
    r[S.DLL] = 0x0c; // 9600 baud
    return { regs, rx: ByteRing.create(rxCapacity).buffer };
  }

  constructor(state: SerialState, options: SerialOptions) {
    this.#r = new Int32Array(state.regs);
    this.#rx = new ByteRing(state.rx);
    this.#lock = new SharedMutex(this.#r, S.LOCK);
    this.#o = options;
  }

  #get(slot: number): number {
    return Atomics.load(this.#r, slot);
  }

  #set(slot: number, v: number): void {
    Atomics.store(this.#r, slot, v);
  }

  #dlab(): boolean {
    return (this.#get(S.LCR) & Lcr.DLAB) !== 0;
  }

  /** The interrupt identification, by 16550 priority. */
  #pending(): number {
    const ier = this.#get(S.IER);
    if (ier & Ier.RLSI && this.#get(S.OVERRUN)) return Iir.RLSI;
    if (ier & Ier.RDI && this.#rx.length > 0) return Iir.RDI;
    if (ier & Ier.THRI && this.#get(S.THR_PENDING)) return Iir.THRI;
    return Iir.NO_INT;
  }

  #update(): void {
    const level = this.#pending() !== Iir.NO_INT ? 1 : 0;
    const was = this.#get(S.LINE);
    this.#set(S.LINE, level);
    if (level && !was) this.#o.interrupt();
  }

  #receive(bytes: Uint8Array | readonly number[]): number {
    const n = this.#rx.push(bytes);
    if (n < bytes.length) this.#set(S.OVERRUN, 1);
    return n;
  }

  /** A guest read of register `offset` (0-7). */
  read(offset: number): number {
    return this.#lock.with(() => {
      let v = 0;
      switch (offset) {
        case UartReg.DATA:
          if (this.#dlab()) v = this.#get(S.DLL);
          else {
            v = this.#rx.popByte() ?? 0;
            if (this.#rx.length === 0) this.#o.rxDrained?.();
          }
          break;
        case UartReg.IER:
          v = this.#dlab() ? this.#get(S.DLM) : this.#get(S.IER);
          break;
        case UartReg.IIR: {
          const id = this.#pending();
          // Reading IIR while it reports THRE acknowledges that interrupt.
          if (id === Iir.THRI) this.#set(S.THR_PENDING, 0);
          v = id | (this.#get(S.FCR) & Fcr.ENABLE_FIFO ? Iir.FIFO_ENABLED : 0);
          break;
        }
        case UartReg.LCR:
          v = this.#get(S.LCR);
          break;
        case UartReg.MCR:
          v = this.#get(S.MCR);
          break;
        case UartReg.LSR:
          v = Lsr.THRE | Lsr.TEMT | (this.#rx.length > 0 ? Lsr.DR : 0) | (this.#get(S.OVERRUN) ? Lsr.OE : 0);
          this.#set(S.OVERRUN, 0);
          break;
        case UartReg.MSR: {
          const mcr = this.#get(S.MCR);
          if (mcr & Mcr.LOOP) {
            // Loopback wires the modem outputs back to the inputs.
            v = (mcr & Mcr.DTR ? Msr.DSR : 0) | (mcr & Mcr.RTS ? Msr.CTS : 0);
            v |= (mcr & Mcr.OUT1 ? Msr.RI : 0) | (mcr & Mcr.OUT2 ? Msr.DCD : 0);
          } else v = Msr.DCD | Msr.DSR | Msr.CTS;
          break;
        }
        case UartReg.SCR:
          v = this.#get(S.SCR);
          break;
      }
      this.#update();
      return v & 0xff;
    });
  }

  /** A guest write of `value` to register `offset` (0-7). */
  write(offset: number, value: number): void {
    value &= 0xff;
    this.#lock.with(() => {
      switch (offset) {
        case UartReg.DATA:
          if (this.#dlab()) this.#set(S.DLL, value);
          else {
            if (this.#get(S.MCR) & Mcr.LOOP) this.#receive([value]);
            else this.#o.output(value);
            // Sent at once: THR is empty again, which is an interrupt of its own.
            this.#set(S.THR_PENDING, 1);
          }
          break;
        case UartReg.IER:
          if (this.#dlab()) this.#set(S.DLM, value);
          else {
            const old = this.#get(S.IER);
            const ier = value & 0x0f;
            this.#set(S.IER, ier);
            // Enabling THRI with THR empty raises it (Linux tests this at startup).
            if ((old ^ ier) & Ier.THRI) this.#set(S.THR_PENDING, ier & Ier.THRI ? 1 : 0);
          }
          break;
        case UartReg.FCR: {
          const old = this.#get(S.FCR);
          if ((old ^ value) & Fcr.ENABLE_FIFO || value & Fcr.CLEAR_RCVR) this.#rx.clear();
          this.#set(S.FCR, value & Fcr.ENABLE_FIFO);
          break;
        }
        case UartReg.LCR:
          this.#set(S.LCR, value);
          break;
        case UartReg.MCR:
          this.#set(S.MCR, value & 0x1f);
          break;
        case UartReg.SCR:
          this.#set(S.SCR, value);
          break;
      }
      this.#update();
    });
  }

  /** Host input: queues what fits of `bytes` for the guest; returns how many were taken (dropped in loopback). */
  enqueue(bytes: Uint8Array): number {
    if (bytes.length === 0) return 0;
    return this.#lock.with(() => {
      // In loopback mode the line is disconnected from the outside: input is lost.
      if (this.#get(S.MCR) & Mcr.LOOP) return bytes.length;
      const n = this.#rx.push(bytes);
      this.#update();
      return n;
    });
  }

  /**
   * Like {@link enqueue} but gives up (undefined) when a vCPU holds the lock: the main
   * thread must not wait for a vCPU that may be waiting for the main thread.
   */
  tryEnqueue(bytes: Uint8Array): number | undefined {
    if (!this.#lock.tryLock()) return undefined;
    try {
      if (this.#get(S.MCR) & Mcr.LOOP) return bytes.length;
      const n = this.#rx.push(bytes);
      this.#update();
      return n;
    } finally {
      this.#lock.unlock();
    }
  }

  /** Free space in the receive FIFO. */
  get rxFree(): number {
    return this.#rx.free;
  }

  /** Whether the interrupt line is asserted now. */
  get interruptPending(): boolean {
    return this.#get(S.LINE) !== 0;
  }
}
