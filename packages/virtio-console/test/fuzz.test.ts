// Random and malformed chains on both queues of the console device, behind
// virtio-pci and virtio-mmio. Each outcome is checked against an independent
// reading of the spec: transmit chains (device-readable only, well-formed, in
// RAM) reach onOutput in order and byte for byte, and anything else gets used
// length 0 with no output; receive chains (device-writable only) get the next
// input bytes exactly, the rest of their buffers untouched, and anything else
// gets used length 0. Buffers sit at hostile addresses (the fuzz kit's
// `hostileAddresses` from @tskvm/virtio/testing: 0, 1, 2^32, 2^52, 2^53 − 1,
// 2^53, 2^60, 2^63, 2^64 − 4096, 2^64 − 1, the first and last byte of each RAM
// region, the hole between them; zero-length or not, lengths up to 2^32 − 1,
// either direction), chains are longer than the queue; the kit's malformed
// chains loop, point outside the table, nest indirect tables, put a buffer
// outside RAM or a readable one after a writable one; now and then the ring
// breaks (the device must be DEVICE_NEEDS_RESET, then a driver reset brings
// it back) or the driver resets in the middle of a chain. Guest
// memory is audited: any device access outside RAM, or a device write through
// the memory API anywhere but a used ring, fails the run; memory outside the
// driver's area must be unchanged (receive buffers at hostile in-RAM
// addresses are checked, then restored).
//
// `pnpm test` runs 3,000 chains per configuration; `pnpm fuzz` 300,000
// (VIRTIO_CONSOLE_FUZZ_CHAINS). Replay with VIRTIO_CONSOLE_FUZZ_SEED=<seed>.
import {
  DeviceStatus,
  PlainGuestMemory,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_VERSION_1,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VirtioMmioTransport,
  VirtioPciTransport,
} from "@tskvm/virtio";
import {
  AuditedMemory,
  FuzzRng,
  fuzzCount,
  fuzzSeed,
  HOSTILE_LENGTHS,
  hostileAddresses,
  InterruptRecorder,
  inRam,
  MALFORMED_CHAIN_KINDS,
  MALFORMED_CHAIN_MAX_SLOTS,
  MemoryGuard,
  MmioDriverTransport,
  PciDriverTransport,
  type SimQueue,
  VirtioDriverSimulator,
  writeDescriptor,
  writeMalformedChain,
} from "@tskvm/virtio/testing";
import { describe, expect, it } from "vitest";
import {
  CONSOLE_RECEIVEQ,
  CONSOLE_TRANSMITQ,
  VIRTIO_CONSOLE_F_SIZE,
  VirtioConsoleDevice,
  type VirtioConsoleDeviceOptions,
} from "../src/index.js";

const SEED = fuzzSeed("VIRTIO_CONSOLE_FUZZ_SEED", 20261207);
const CHAINS = fuzzCount("VIRTIO_CONSOLE_FUZZ_CHAINS", 3000);
console.log(
  `[virtio-console fuzz] seed ${SEED}, ${CHAINS} chains per configuration (replay with VIRTIO_CONSOLE_FUZZ_SEED=${SEED} VIRTIO_CONSOLE_FUZZ_CHAINS=${CHAINS})`,
);

// Guest RAM: [0, 8 MiB) — the simulator's heap [64 KiB, 2 MiB), the fuzz's buffers [2 MiB, 8 MiB − 64 KiB) —,
// a hole, and [9 MiB, 12 MiB), a canary region transmit buffers may point at.
const REGIONS = [
  { address: 0, size: 8 << 20 },
  { address: 9 << 20, size: 3 << 20 },
];
const SIM_HEAP = { address: 0x10000, size: (2 << 20) - 0x10000 };
const AREA = { address: 2 << 20, size: (6 << 20) - 0x10000 };
const DRIVER_END = AREA.address + AREA.size;
/** Where hostile buffers point: every edge of RAM, its hole, and far beyond. */
const HOSTILE = hostileAddresses(REGIONS);
/** The hostile addresses outside RAM (for malformed chains). */
const OUTSIDE = HOSTILE.filter((a) => !ram(a, 0));
/** In RAM, outside the driver's area: where a hostile receive buffer may be written. */
const SCRATCH: readonly number[] = [0, 0x100, DRIVER_END, (8 << 20) - 1];

/** Independent of PlainGuestMemory: a range is RAM when one region holds it (a zero-length one: its address). */
function ram(address: number | bigint, length: number): boolean {
  return inRam(REGIONS, address, length);
}

interface Part {
  address: number | bigint;
  length: number;
  writable: boolean;
}

/** One chain as built: its parts and the used length / data the spec asks for. */
interface Built {
  head: number;
  parts: Part[];
  valid: boolean;
  kind: string;
}

interface Counts {
  chains: number;
  txData: number;
  txRefused: number;
  rxData: number;
  rxRefused: number;
  hostile: number;
  tooLong: number;
  raw: number;
  wrongDirection: number;
  outputBytes: number;
  inputBytes: number;
  ringBreaks: number;
  midResets: number;
  calls: number;
  boundedCalls: number;
}

interface Config {
  name: string;
  seed: number;
  transport: "pci" | "mmio";
  features: bigint;
  queueSize: number;
  options: VirtioConsoleDeviceOptions;
}

async function runFuzz(cfg: Config): Promise<Counts> {
  const rand = new FuzzRng(cfg.seed);
  const plain = new PlainGuestMemory(REGIONS, { windowSize: 0x10000 });
  // The device's view: any access outside RAM, or an API write outside the used rings, is a violation.
  const audit = new AuditedMemory(plain, { writable: [] });
  const out: Uint8Array[] = [];
  let outLen = 0;
  const device = new VirtioConsoleDevice({
    queueSize: cfg.queueSize,
    ...cfg.options,
    onOutput: (b) => {
      if (b.length > device.outputChunk) throw new Error(`an output chunk of ${b.length} bytes`);
      out.push(b);
      outLen += b.length;
    },
  });
  const irq = new InterruptRecorder();
  const transport =
    cfg.transport === "pci"
      ? new PciDriverTransport(new VirtioPciTransport({ device, memory: audit, msix: irq, intx: irq }))
      : new MmioDriverTransport(new VirtioMmioTransport({ device, memory: audit, base: 0, irq }));
  const sim = new VirtioDriverSimulator({ transport, memory: plain, heap: SIM_HEAP });
  const size = cfg.queueSize;
  let rx!: SimQueue;
  let tx!: SimQueue;
  const init = (): void => {
    sim.init({ features: cfg.features, queueSize: size });
    rx = sim.queue(CONSOLE_RECEIVEQ);
    tx = sim.queue(CONSOLE_TRANSMITQ);
    audit.writable = [rx, tx].map((q) => ({ address: q.usedRing, length: 6 + 8 * q.size }));
  };
  init();

  // Memory outside the driver's area holds a pattern that must survive.
  const guard = new MemoryGuard(plain, [
    { address: 0, length: SIM_HEAP.address },
    { address: DRIVER_END, length: (8 << 20) - DRIVER_END },
    { address: 9 << 20, length: 3 << 20 },
  ]);

  const c: Counts = {
    chains: 0,
    txData: 0,
    txRefused: 0,
    rxData: 0,
    rxRefused: 0,
    hostile: 0,
    tooLong: 0,
    raw: 0,
    wrongDirection: 0,
    outputBytes: 0,
    inputBytes: 0,
    ringBreaks: 0,
    midResets: 0,
    calls: 0,
    boundedCalls: 0,
  };
  let bump = AREA.address;
  let scratchUsed = false;
  const alloc = (n: number): number => {
    const a = (bump + 15) & ~15;
    if (a + n > AREA.address + AREA.size) throw new Error("fuzz area exhausted");
    bump = a + n;
    return a;
  };

  const randomPart = (writable: boolean): Part => {
    const r = rand.next();
    const length = r < 0.1 ? 0 : r < 0.5 ? 1 + rand.int(64) : r < 0.97 ? rand.int(2048) : rand.int(20000);
    if (rand.chance(0.06)) {
      // At most one receive buffer per round in RAM outside the driver's area (they could overlap).
      const pool = writable ? [...OUTSIDE, ...(scratchUsed ? [] : SCRATCH)] : HOSTILE;
      const part = { writable, length: rand.pick([...HOSTILE_LENGTHS, length]), address: rand.pick(pool) };
      if (writable && ram(part.address, part.length)) scratchUsed = true;
      return part;
    }
    const address = alloc(length);
    const fillByte = writable ? 0xee : 0;
    const b = new Uint8Array(length);
    if (writable) b.fill(fillByte);
    else for (let i = 0; i < length; i++) b[i] = rand.int(256);
    if (length > 0) plain.write(address, b);
    return { writable, length, address };
  };

  /** Writes a chain's descriptors (direct from slot `base`, or in an indirect table) and returns its head. */
  const place = (q: SimQueue, base: number, parts: Part[], indirect: boolean): number => {
    const flags = (p: Part, i: number, n: number) =>
      (p.writable ? VIRTQ_DESC_F_WRITE : 0) | (i < n - 1 ? VIRTQ_DESC_F_NEXT : 0);
    if (indirect) {
      const table = alloc(16 * Math.max(1, parts.length));
      for (const [i, p] of parts.entries())
        writeDescriptor(plain, table, i, {
          address: p.address,
          length: p.length,
          flags: flags(p, i, parts.length),
          next: i + 1,
        });
      q.writeDescriptor(base, {
        address: table,
        length: 16 * parts.length,
        flags: VIRTQ_DESC_F_INDIRECT,
        next: 0,
      });
    } else
      for (const [i, p] of parts.entries())
        q.writeDescriptor(base + i, {
          address: p.address,
          length: p.length,
          flags: flags(p, i, parts.length),
          next: base + i + 1,
        });
    return base;
  };

  /** One of the kit's malformed chains, in one or two slots from `base`. */
  const rawChain = (q: SimQueue, base: number): Built => {
    const buf = alloc(64);
    writeMalformedChain(rand.pick(MALFORMED_CHAIN_KINDS), {
      queue: q,
      memory: plain,
      slots: [base, base + 1],
      scratch: buf,
      rng: rand,
      outside: OUTSIDE,
      writable: q === rx,
    });
    return { head: base, parts: [], valid: false, kind: "raw" };
  };

  /** Builds up to `max` chains on q; every slot is free (all earlier chains were answered). */
  const build = (q: SimQueue, writable: boolean, max: number): Built[] => {
    const chains: Built[] = [];
    let slot = 0;
    while (chains.length < max && slot < size - 1) {
      if (rand.chance(0.05)) {
        chains.push(rawChain(q, slot));
        slot += MALFORMED_CHAIN_MAX_SLOTS;
        continue;
      }
      const tooLong = rand.chance(0.01);
      const count = tooLong ? size + 1 + rand.int(4) : 1 + rand.int(rand.chance(0.2) ? 8 : 3);
      const wrong = rand.chance(0.08);
      const parts = Array.from({ length: count }, (_, i) =>
        randomPart(wrong ? (rand.chance(0.5) ? !writable : i > 0) : writable),
      );
      const indirect = tooLong || count > size - 1 - slot || rand.chance(0.3);
      const head = place(q, slot, parts, indirect);
      slot += indirect ? 1 : count;
      const ordered = !parts.some((p, i) => i > 0 && !p.writable && parts[i - 1]!.writable);
      const valid = count <= size && ordered && parts.every((p) => ram(p.address, p.length));
      let kind = "ok";
      if (count > size) kind = "tooLong";
      else if (!parts.every((p) => ram(p.address, p.length))) kind = "hostile";
      else if (parts.some((p) => p.writable !== writable) || !ordered) kind = "wrongDirection";
      chains.push({ head, parts, valid, kind });
    }
    return chains;
  };

  const countKind = (b: Built): void => {
    c.chains++;
    if (b.kind === "tooLong") c.tooLong++;
    else if (b.kind === "hostile") c.hostile++;
    else if (b.kind === "raw") c.raw++;
    else if (b.kind === "wrongDirection") c.wrongDirection++;
  };

  const serve = (index: number): { more: boolean } => {
    c.calls++;
    const stop = rand.chance(0.1);
    const r = device.serveQueue(
      index,
      rand.chance(0.5)
        ? {}
        : { requests: 1 + rand.int(8), bytes: 1 + rand.int(5000), shouldStop: () => stop },
    );
    if (r.bytes > device.maxBytesPerCall) throw new Error(`a call moved ${r.bytes} bytes`);
    if (r.more) c.boundedCalls++;
    return r;
  };

  let inputSeq = 0; // the input stream: byte i is (i * 13 + 5) & 0xff
  const inputByte = (i: number): number => (i * 13 + 5) & 0xff;
  let delivered = 0;
  const breakRing = (q: SimQueue): void => {
    c.ringBreaks++;
    if (rand.chance(0.5)) {
      q.setAvailSlot(q.availIdx % q.size, size + rand.int(60000));
      q.setAvailIdx(q.availIdx + 1);
    } else q.setAvailIdx(q.availIdx + size + 1 + rand.int(1000));
    // The receive queue is looked at only when there is input for it.
    if (q === rx) inputSeq += device.write(new Uint8Array([inputByte(inputSeq)]));
    q.kick();
    expect(
      sim.status & DeviceStatus.DEVICE_NEEDS_RESET,
      `${cfg.name}: a broken ring marks NEEDS_RESET`,
    ).toBeTruthy();
    sim.reset();
    device.clearInput();
    inputSeq = delivered;
    out.length = 0;
    outLen = 0;
    init();
  };

  let yielded = 0;

  while (c.chains < CHAINS) {
    if (c.chains - yielded >= 1000) {
      yielded = c.chains;
      await new Promise((r) => setImmediate(r));
    }
    bump = AREA.address;
    scratchUsed = false;
    if (rand.chance(0.02)) {
      breakRing(rand.chance(0.5) ? rx : tx);
      continue;
    }

    // ---- transmit ----
    const txChains = build(tx, false, 1 + rand.int(6));
    const expectedOut: number[] = [];
    const want = new Map<number, number>();
    for (const b of txChains) {
      countKind(b);
      want.set(b.head, 0);
      if (b.valid && b.parts.every((p) => !p.writable)) {
        for (const p of b.parts)
          if (p.length > 0) expectedOut.push(...plain.read(p.address as number, p.length));
      }
      tx.publish(b.head);
    }
    const midReset = rand.chance(0.05);
    if (rand.chance(0.5)) tx.kick();
    for (let g = 0; g < 10_000 && (serve(CONSOLE_TRANSMITQ).more || device.inProgress); g++) {
      if (midReset && device.inProgress) break;
    }
    const got = new Uint8Array(outLen);
    let at = 0;
    for (const b of out) {
      got.set(b, at);
      at += b.length;
    }
    out.length = 0;
    outLen = 0;
    if (midReset && device.inProgress) {
      c.midResets++;
      expect(got.length <= expectedOut.length, `${cfg.name}: output beyond the chains`).toBe(true);
      expect(Array.from(got)).toEqual(expectedOut.slice(0, got.length));
      sim.reset();
      init();
      continue;
    }
    c.outputBytes += got.length;
    expect(Array.from(got), `${cfg.name}: transmit output`).toEqual(expectedOut);
    const txUsed = tx.pollUsed();
    expect(
      txUsed.map((u) => u.id),
      `${cfg.name}: every transmit chain answered, in order`,
    ).toEqual(txChains.map((b) => b.head));
    for (const u of txUsed) expect(u.len).toBe(want.get(u.id));
    for (const b of txChains) {
      if (b.valid && b.parts.every((p) => !p.writable) && b.parts.some((p) => p.length > 0)) c.txData++;
      else c.txRefused++;
    }

    // ---- receive ----
    const rxChains = build(rx, true, 1 + rand.int(6));
    for (const b of rxChains) {
      countKind(b);
      rx.publish(b.head);
    }
    if (rand.chance(0.5)) rx.kick();
    const used: { id: number; len: number }[] = [];
    for (let g = 0; used.length < rxChains.length && g < 10_000; g++) {
      if (rand.chance(0.7) || device.inputBuffered === 0) {
        const n = rand.int(rand.chance(0.2) ? 70_000 : 3000);
        const chunk = new Uint8Array(n);
        for (let i = 0; i < n; i++) chunk[i] = inputByte(inputSeq + i);
        const accepted = device.write(chunk);
        expect(accepted).toBe(Math.min(n, device.inputCapacity - (device.inputBuffered - accepted)));
        inputSeq += accepted;
      }
      serve(CONSOLE_RECEIVEQ);
      for (const u of rx.pollUsed()) used.push(u);
    }
    expect(
      used.map((u) => u.id),
      `${cfg.name}: every receive chain answered, in order`,
    ).toEqual(rxChains.map((b) => b.head));
    for (const [i, b] of rxChains.entries()) {
      const u = used[i]!;
      const ok = b.valid && b.parts.every((p) => p.writable);
      const capacity = b.parts.reduce((n, p) => n + p.length, 0);
      if (!ok || capacity === 0) {
        expect(u.len, `${cfg.name}: refused receive chain (${b.kind})`).toBe(0);
        c.rxRefused++;
        for (const p of b.parts)
          if (p.writable && ram(p.address, p.length) && p.length > 0) {
            const a = p.address as number;
            if (a >= AREA.address && a < DRIVER_END)
              expect(plain.read(a, p.length).every((x) => x === 0xee)).toBe(true);
            else guard.restore(a, p.length);
          }
        continue;
      }
      expect(u.len > 0 && u.len <= capacity).toBe(true);
      c.rxData++;
      c.inputBytes += u.len;
      let left = u.len;
      for (const p of b.parts) {
        const a = p.address as number;
        const take = Math.min(left, p.length);
        const mem = plain.read(a, p.length);
        for (let k = 0; k < take; k++)
          if (mem[k] !== inputByte(delivered + k))
            throw new Error(`${cfg.name}: input byte ${delivered + k} wrong`);
        if (a >= AREA.address && a < DRIVER_END) {
          for (let k = take; k < p.length; k++)
            if (mem[k] !== 0xee) throw new Error(`${cfg.name}: receive buffer written past its data`);
        } else guard.restore(a, p.length);
        delivered += take;
        left -= take;
      }
    }
    // Input left over stays for the next round; what the device holds plus what it gave = what it took.
    expect(delivered + device.inputBuffered).toBe(inputSeq);
    expect(audit.violations, `${cfg.name}: memory violations`).toEqual([]);
  }
  // Memory outside the driver's area is as it was.
  expect(guard.changed(), `${cfg.name}: memory outside the driver changed`).toEqual([]);
  expect(sim.status & DeviceStatus.DEVICE_NEEDS_RESET).toBe(0);
  expect(audit.violations).toEqual([]);
  return c;
}

const CONFIGS: Config[] = [
  {
    name: "pci, EVENT_IDX, 4 KiB per call",
    seed: SEED,
    transport: "pci",
    features: VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC | VIRTIO_CONSOLE_F_SIZE,
    queueSize: 64,
    options: { maxBytesPerCall: 4096, maxChainsPerCall: 5 },
  },
  {
    name: "mmio, no EVENT_IDX, 300-byte input buffer, 7-byte output chunks",
    seed: SEED + 1,
    transport: "mmio",
    features: VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC,
    queueSize: 16,
    options: { inputCapacity: 300, outputChunk: 7 },
  },
  {
    name: "pci, defaults",
    seed: SEED + 2,
    transport: "pci",
    features: VIRTIO_F_VERSION_1 | VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC | VIRTIO_CONSOLE_F_SIZE,
    queueSize: 32,
    options: {},
  },
];

describe("virtio-console fuzz", () => {
  for (const cfg of CONFIGS)
    it(cfg.name, async () => {
      const c = await runFuzz(cfg);
      console.log(`[virtio-console fuzz] ${cfg.name}: ${JSON.stringify(c)}`);
      expect(c.chains).toBeGreaterThanOrEqual(CHAINS);
    }, 600_000);
});
