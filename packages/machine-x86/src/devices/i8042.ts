// A stub i8042 keyboard controller (ports 0x60/0x64): enough controller commands for
// Linux's i8042 driver to find it quickly, a keyboard that acknowledges commands, and
// the CPU reset line that `reboot=k` pulls (command 0xfe).

import { SharedMutex } from "./shared.js";

export const I8042_DATA_PORT = 0x60;
export const I8042_COMMAND_PORT = 0x64;
export const I8042_KBD_IRQ = 1;
export const I8042_AUX_IRQ = 12;

/** Status bits; KEYLOCK set means the keyboard is *not* inhibited by the key lock. */
export const I8042Status = {
  OBF: 0x01,
  IBF: 0x02,
  SYS: 0x04,
  CMD: 0x08,
  KEYLOCK: 0x10,
  AUXDATA: 0x20,
} as const;
export const I8042Ctr = {
  KBDINT: 0x01,
  AUXINT: 0x02,
  SYS: 0x04,
  KBDDIS: 0x10,
  AUXDIS: 0x20,
  XLATE: 0x40,
} as const;
export const I8042Cmd = {
  READ_CTR: 0x20,
  WRITE_CTR: 0x60,
  AUX_DISABLE: 0xa7,
  AUX_ENABLE: 0xa8,
  AUX_TEST: 0xa9,
  SELF_TEST: 0xaa,
  KBD_TEST: 0xab,
  KBD_DISABLE: 0xad,
  KBD_ENABLE: 0xae,
  READ_INPUT: 0xc0,
  READ_OUTPUT: 0xd0,
  WRITE_OUTPUT: 0xd1,
  WRITE_KBD_OUTBUF: 0xd2,
  WRITE_AUX_OUTBUF: 0xd3,
  WRITE_AUX: 0xd4,
  PULSE_RESET: 0xfe,
} as const;
export const SELF_TEST_OK = 0x55;
const KBD_ACK = 0xfa;
/** Output port: bit 0 is the CPU reset line (active low), bit 1 the A20 gate. */
const OUTPUT_PORT_DEFAULT = 0x03;
const CTR_DEFAULT = I8042Ctr.KBDINT | I8042Ctr.SYS | I8042Ctr.XLATE;

/**
 * Ctrl-Alt-Del pressed and released, in scancode set 1 (what the guest reads while the
 * controller translates, CTR XLATE: Linux's default) and set 2 (untranslated).
 */
export const CTRL_ALT_DEL_SET1: readonly number[] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
export const CTRL_ALT_DEL_SET2: readonly number[] = [
  0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];

const S = { LOCK: 0, CTR: 1, OUTPORT: 2, PENDING: 3, LAST_CMD: 4, HEAD: 5, COUNT: 6, LAST_READ: 7 } as const;
const QUEUE = 16;
const QBASE = 8;

export interface I8042State {
  buffer: SharedArrayBuffer;
}

export interface I8042Options {
  /** Raises IRQ 1 (`aux` false) or IRQ 12 (`aux` true): a byte is waiting with its interrupt enabled. */
  interrupt: (aux: boolean) => void;
  /** The guest pulled the CPU reset line. */
  reset: (why: string) => void;
}

/** The controller, shared by all vCPU threads like the UART. */
export class I8042 {
  readonly #r: Int32Array;
  readonly #lock: SharedMutex;
  readonly #o: I8042Options;

  static createState(): I8042State {
    const buffer = new SharedArrayBuffer((QBASE + QUEUE) * 4);
    const r = new Int32Array(buffer);
    r[S.CTR] = CTR_DEFAULT;
    r[S.OUTPORT] = OUTPUT_PORT_DEFAULT;
    return { buffer };
  }

  constructor(state: I8042State, options: I8042Options) {
    this.#r = new Int32Array(state.buffer);
    this.#lock = new SharedMutex(this.#r, S.LOCK);
    this.#o = options;
  }

  #g(slot: number): number {
    return Atomics.load(this.#r, slot);
  }

  #s(slot: number, v: number): void {
    Atomics.store(this.#r, slot, v);
  }

  /** Queues a byte for the guest; a byte that reaches the head of an empty queue may interrupt. */
  #push(byte: number, aux = false): void {
    const count = this.#g(S.COUNT);
    if (count >= QUEUE) return;
    const slot = QBASE + ((this.#g(S.HEAD) + count) % QUEUE);
    this.#s(slot, (byte & 0xff) | (aux ? 0x100 : 0));
    this.#s(S.COUNT, count + 1);
    if (count === 0) this.#raise();
  }

  #raise(): void {
    if (this.#g(S.COUNT) === 0) return;
    const aux = (this.#g(QBASE + this.#g(S.HEAD)) & 0x100) !== 0;
    const ctr = this.#g(S.CTR);
    if (aux ? ctr & I8042Ctr.AUXINT : ctr & I8042Ctr.KBDINT) this.#o.interrupt(aux);
  }

  #status(): number {
    const count = this.#g(S.COUNT);
    let st = I8042Status.KEYLOCK | (this.#g(S.CTR) & I8042Ctr.SYS ? I8042Status.SYS : 0);
    if (this.#g(S.LAST_CMD)) st |= I8042Status.CMD;
    if (count > 0) {
      st |= I8042Status.OBF;
      if (this.#g(QBASE + this.#g(S.HEAD)) & 0x100) st |= I8042Status.AUXDATA;
    }
    return st;
  }

  #readData(): number {
    const count = this.#g(S.COUNT);
    if (count === 0) return this.#g(S.LAST_READ); // reading an empty buffer repeats the last byte
    const head = this.#g(S.HEAD);
    const v = this.#g(QBASE + head) & 0xff;
    this.#s(S.HEAD, (head + 1) % QUEUE);
    this.#s(S.COUNT, count - 1);
    this.#s(S.LAST_READ, v);
    this.#raise();
    return v;
  }

  #command(cmd: number): void {
    this.#s(S.LAST_CMD, 1);
    const ctr = this.#g(S.CTR);
    switch (cmd) {
      case I8042Cmd.READ_CTR:
        this.#push(ctr);
        break;
      case I8042Cmd.WRITE_CTR:
      case I8042Cmd.WRITE_OUTPUT:
      case I8042Cmd.WRITE_KBD_OUTBUF:
      case I8042Cmd.WRITE_AUX_OUTBUF:
      case I8042Cmd.WRITE_AUX:
        this.#s(S.PENDING, cmd);
        break;
      case I8042Cmd.AUX_DISABLE:
        this.#s(S.CTR, ctr | I8042Ctr.AUXDIS);
        break;
      case I8042Cmd.AUX_ENABLE:
        this.#s(S.CTR, ctr & ~I8042Ctr.AUXDIS);
        break;
      case I8042Cmd.KBD_DISABLE:
        this.#s(S.CTR, ctr | I8042Ctr.KBDDIS);
        break;
      case I8042Cmd.KBD_ENABLE:
        this.#s(S.CTR, ctr & ~I8042Ctr.KBDDIS);
        break;
      case I8042Cmd.SELF_TEST:
        this.#push(SELF_TEST_OK);
        break;
      case I8042Cmd.KBD_TEST:
      case I8042Cmd.AUX_TEST:
        this.#push(0x00); // interface OK
        break;
      case I8042Cmd.READ_INPUT:
        this.#push(0x00);
        break;
      case I8042Cmd.READ_OUTPUT:
        this.#push(this.#g(S.OUTPORT));
        break;
      default:
        // 0xf0-0xff pulse output-port bits low for a moment; bit 0 is CPU reset.
        if (cmd >= 0xf0 && (cmd & 0x01) === 0)
          this.#o.reset(`i8042 reset (command 0x${cmd.toString(16)} to port 0x64)`);
    }
  }

  #data(value: number): void {
    this.#s(S.LAST_CMD, 0);
    const pending = this.#g(S.PENDING);
    this.#s(S.PENDING, 0);
    switch (pending) {
      case I8042Cmd.WRITE_CTR:
        this.#s(S.CTR, value);
        return;
      case I8042Cmd.WRITE_OUTPUT:
        this.#s(S.OUTPORT, value);
        if ((value & 0x01) === 0) this.#o.reset("i8042 reset (output port bit 0 cleared)");
        return;
      case I8042Cmd.WRITE_KBD_OUTBUF:
        this.#push(value);
        return;
      case I8042Cmd.WRITE_AUX_OUTBUF:
        this.#push(value, true);
        return;
      case I8042Cmd.WRITE_AUX:
        this.#push(0xfe, true); // no mouse: "resend"
        return;
    }
    // A byte for the keyboard: acknowledge, and answer the commands that expect more.
    switch (value) {
      case 0xff: // reset
        this.#push(KBD_ACK);
        this.#push(0xaa); // self-test passed
        break;
      case 0xf2: // identify: MF2 keyboard
        this.#push(KBD_ACK);
        this.#push(0xab);
        this.#push(0x83);
        break;
      case 0xee: // echo
        this.#push(0xee);
        break;
      default:
        this.#push(KBD_ACK);
    }
  }

  /**
   * Queues keyboard bytes for the guest, as keys pressed on the keyboard would: from any
   * thread (the main thread too), without waiting. All or nothing: false when the lock is
   * busy or the output queue has no room for them all (try again shortly). With
   * `ctrlAltDel`, the bytes are Ctrl-Alt-Del in the scancode set the guest reads now.
   */
  tryInjectKeys(keys: readonly number[] | "ctrlAltDel"): boolean {
    if (!this.#lock.tryLock()) return false;
    try {
      const bytes =
        keys === "ctrlAltDel"
          ? this.#g(S.CTR) & I8042Ctr.XLATE
            ? CTRL_ALT_DEL_SET1
            : CTRL_ALT_DEL_SET2
          : keys;
      if (QUEUE - this.#g(S.COUNT) < bytes.length) return false;
      // The first byte raises IRQ 1 (if the queue was empty); each read of port 0x60 raises
      // it again for the next, so the guest takes one byte per interrupt, OBF set for each.
      for (const b of bytes) this.#push(b);
      return true;
    } finally {
      this.#lock.unlock();
    }
  }

  /** A guest read of port 0x60 (`port` = 0x60) or 0x64. */
  read(port: number): number {
    return this.#lock.with(() => (port === I8042_COMMAND_PORT ? this.#status() : this.#readData()));
  }

  /** A guest write to port 0x60 or 0x64. */
  write(port: number, value: number): void {
    this.#lock.with(() =>
      port === I8042_COMMAND_PORT ? this.#command(value & 0xff) : this.#data(value & 0xff),
    );
  }
}
