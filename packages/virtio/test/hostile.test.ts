import { describe, expect, it } from "vitest";
import {
  BufferTooShortError,
  ChainTooLongError,
  createTestMemory,
  DescriptorChainOverflowError,
  VIRTQ_DESC_F_INDIRECT as INDIRECT,
  IndirectWithNextError,
  InvalidAvailRingIndexError,
  InvalidDescriptorAddressError,
  InvalidDescriptorIndexError,
  InvalidHeadIndexError,
  InvalidIndirectDescriptorTableError,
  InvalidQueueSizeError,
  InvalidRingAddressError,
  InvalidRingAlignmentError,
  InvalidUsedElementError,
  VIRTQ_DESC_F_NEXT as NEXT,
  NestedIndirectDescriptorError,
  PlainGuestMemory,
  Queue,
  ReadableAfterWritableError,
  type VirtqueueError,
  VIRTQ_DESC_F_WRITE as WRITE,
} from "../src/index.js";
import { mockSplitQueue } from "../src/testing.js";

const MEM = 0x200000;

function setup(size = 8, heapSize = 0x10000) {
  // RAM: [0, 1 MiB) and [1.5 MiB, 2 MiB) with a hole between.
  const memory = new PlainGuestMemory([
    { address: 0, size: 0x100000 },
    { address: 0x180000, size: 0x80000 },
  ]);
  const m = mockSplitQueue(memory, { size, heap: { address: 0x1000, size: heapSize } });
  const queue = new Queue(memory, m.config);
  return { memory, driver: m.driver, queue, config: m.config };
}

/** Pops and expects a non-fatal chain error of class `cls` for head `head`; checks the queue goes on. */
function expectChainError<E extends VirtqueueError>(
  q: Queue,
  cls: abstract new (...args: never[]) => E,
  head: number,
): E {
  let err: unknown;
  try {
    q.pop();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(cls);
  const e = err as E;
  expect(e.fatal).toBe(false);
  expect(e.head).toBe(head);
  // The request is failed and the queue stays usable.
  q.addUsed(head, 0);
  expect(q.broken).toBeUndefined();
  return e;
}

describe("hostile descriptor chains (request failed, queue goes on)", () => {
  it("a descriptor loop is ChainTooLong", () => {
    const { driver, queue } = setup();
    driver.writeDescriptor(0, { address: 0x20000, length: 4, flags: NEXT, next: 1 });
    driver.writeDescriptor(1, { address: 0x20000, length: 4, flags: NEXT, next: 0 });
    driver.publish(0);
    const e = expectChainError(queue, ChainTooLongError, 0);
    expect(e.kind).toBe("ChainTooLong");
    expect(e.limit).toBe(8);
  });

  it("a self-loop and a chain through every descriptor and back are ChainTooLong", () => {
    const { driver, queue } = setup();
    driver.writeDescriptor(3, { address: 0x20000, length: 1, flags: NEXT, next: 3 });
    driver.publish(3);
    expectChainError(queue, ChainTooLongError, 3);
    for (let i = 0; i < 8; i++)
      driver.writeDescriptor(i, { address: 0x20000, length: 1, flags: NEXT, next: (i + 1) % 8 });
    driver.publish(0);
    expectChainError(queue, ChainTooLongError, 0);
  });

  it("a loop inside an indirect table is ChainTooLong bounded by the table", () => {
    const { memory, driver, queue } = setup();
    const t = 0x30000;
    const put = (i: number, flags: number, next: number): void => {
      memory.writeU64(t + 16 * i, 0x20000n);
      memory.writeU32(t + 16 * i + 8, 4);
      memory.writeU16(t + 16 * i + 12, flags);
      memory.writeU16(t + 16 * i + 14, next);
    };
    put(0, NEXT, 1);
    put(1, NEXT, 2);
    put(2, NEXT, 0);
    driver.writeDescriptor(0, { address: t, length: 48, flags: INDIRECT, next: 0 });
    driver.publish(0);
    expect(expectChainError(queue, ChainTooLongError, 0).limit).toBe(3);
  });

  it("a next index outside the table is InvalidDescriptorIndex", () => {
    const { driver, queue } = setup();
    driver.writeDescriptor(2, { address: 0x20000, length: 1, flags: NEXT, next: 8 });
    driver.publish(2);
    const e = expectChainError(queue, InvalidDescriptorIndexError, 2);
    expect([e.index, e.tableSize]).toEqual([8, 8]);
  });

  it("buffers outside RAM are InvalidDescriptorAddress", () => {
    const { driver, queue } = setup();
    const cases: [number | bigint, number][] = [
      [0x100000, 1], // in the hole
      [0xffff0, 0x20], // runs from RAM into the hole
      [MEM, 1], // past the end
      [MEM - 1, 2], // straddles the end
      [0xffff_ffff_ffff_f000n, 0x1000], // 64-bit address, far beyond 2^53
      [2n ** 53n, 1], // just beyond what a JS number holds exactly
    ];
    for (const [address, length] of cases) {
      driver.writeDescriptor(1, { address, length, flags: 0, next: 0 });
      driver.publish(1);
      const e = expectChainError(queue, InvalidDescriptorAddressError, 1);
      expect(e.length).toBe(length);
    }
  });

  it("zero-length buffers outside RAM are InvalidDescriptorAddress too; inside RAM they are fine", () => {
    const { driver, queue } = setup();
    const bad: (number | bigint)[] = [
      2n ** 53n,
      2n ** 64n - 1n,
      0xffff_ffff_ffff_f000n,
      0x100000,
      0x17ffff,
      MEM,
    ];
    for (const address of bad) {
      for (const flags of [0, WRITE]) {
        driver.writeDescriptor(1, { address: 0x20000, length: 16, flags: NEXT, next: 2 });
        driver.writeDescriptor(2, { address, length: 0, flags: flags | NEXT, next: 3 });
        driver.writeDescriptor(3, { address: 0x20010, length: 1, flags: WRITE, next: 0 });
        driver.publish(1);
        const e = expectChainError(queue, InvalidDescriptorAddressError, 1);
        expect(e.length).toBe(0);
      }
    }
    // The first and last byte of each region, and address 0, hold a zero-length buffer.
    for (const address of [0, 0xfffff, 0x180000, MEM - 1]) {
      driver.writeDescriptor(1, { address: 0x20000, length: 16, flags: NEXT, next: 2 });
      driver.writeDescriptor(2, { address, length: 0, flags: WRITE | NEXT, next: 3 });
      driver.writeDescriptor(3, { address, length: 1, flags: WRITE, next: 0 });
      driver.publish(1);
      const c = queue.pop()!;
      expect(c.buffers()).toEqual([
        { address: 0x20000, length: 16, writable: false },
        { address, length: 0, writable: true },
        { address, length: 1, writable: true },
      ]);
      // What a device does with them touches RAM only.
      expect(c.writer().writeViews(1)[0]!.length).toBe(1);
      queue.addUsed(c.head, 1);
    }
  });

  it("a chain with more buffers than the queue has entries is ChainTooLong, indirect or not", () => {
    const { memory, driver, queue } = setup(8);
    const t = 0x30000;
    // An indirect table of 50,000 one-byte buffers (the shape of issue #12's attack): cut at 8.
    const n = 50000;
    for (let i = 0; i < n; i++) {
      memory.writeU64(t + 16 * i, 0x20000n);
      memory.writeU32(t + 16 * i + 8, 1);
      memory.writeU16(t + 16 * i + 12, i < n - 1 ? NEXT : WRITE);
      memory.writeU16(t + 16 * i + 14, i + 1);
    }
    driver.writeDescriptor(0, { address: t, length: n * 16, flags: INDIRECT, next: 0 });
    driver.publish(0);
    expect(expectChainError(queue, ChainTooLongError, 0).limit).toBe(8);
    // Direct buffers before the table count too: 3 + 6 > 8.
    for (let i = 0; i < 6; i++) memory.writeU16(t + 16 * i + 12, i < 5 ? NEXT : 0);
    driver.writeDescriptor(1, { address: 0x20000, length: 1, flags: NEXT, next: 2 });
    driver.writeDescriptor(2, { address: 0x20000, length: 1, flags: NEXT, next: 3 });
    driver.writeDescriptor(3, { address: 0x20000, length: 1, flags: NEXT, next: 4 });
    driver.writeDescriptor(4, { address: t, length: n * 16, flags: INDIRECT, next: 0 });
    driver.publish(1);
    expect(expectChainError(queue, ChainTooLongError, 1).limit).toBe(8);
    // Exactly the queue size is fine: 3 + 5.
    memory.writeU16(t + 16 * 4 + 12, 0);
    driver.publish(1);
    expect(queue.pop()!.count).toBe(8);
  });

  it("a chain of more than 2^32-1 bytes is DescriptorChainOverflow", () => {
    // A queue longer than the chain: a chain may not have more buffers than the queue size.
    const { memory, driver, queue } = setup(8192, 0x40000);
    // 4097 indirect entries of 1 MiB each, all pointing at valid RAM.
    const n = 4097;
    const t = 0x180000;
    for (let i = 0; i < n; i++) {
      memory.writeU64(t + 16 * i, 0n);
      memory.writeU32(t + 16 * i + 8, 0x100000);
      memory.writeU16(t + 16 * i + 12, i < n - 1 ? NEXT : 0);
      memory.writeU16(t + 16 * i + 14, i + 1);
    }
    driver.writeDescriptor(0, { address: t, length: n * 16, flags: INDIRECT, next: 0 });
    driver.publish(0);
    expectChainError(queue, DescriptorChainOverflowError, 0);
  });

  it("a readable descriptor after a writable one is ReadableAfterWritable", () => {
    const { driver, queue } = setup();
    driver.writeDescriptor(0, { address: 0x20000, length: 4, flags: WRITE | NEXT, next: 1 });
    driver.writeDescriptor(1, { address: 0x20010, length: 4, flags: 0, next: 0 });
    driver.publish(0);
    expect(expectChainError(queue, ReadableAfterWritableError, 0).index).toBe(1);
  });

  it("nested indirect tables are NestedIndirectDescriptor", () => {
    const { memory, driver, queue } = setup();
    const t = 0x30000;
    memory.writeU64(t, 0x31000n);
    memory.writeU32(t + 8, 16);
    memory.writeU16(t + 12, INDIRECT);
    driver.writeDescriptor(0, { address: t, length: 16, flags: INDIRECT, next: 0 });
    driver.publish(0);
    expectChainError(queue, NestedIndirectDescriptorError, 0);
  });

  it("INDIRECT together with NEXT is IndirectWithNext", () => {
    const { driver, queue } = setup();
    driver.writeDescriptor(0, { address: 0x30000, length: 16, flags: INDIRECT | NEXT, next: 1 });
    driver.publish(0);
    expectChainError(queue, IndirectWithNextError, 0);
  });

  it("bad indirect tables are InvalidIndirectDescriptorTable", () => {
    const { driver, queue } = setup();
    const cases: [number, number, RegExp][] = [
      [0x30000, 0, /multiple of 16/],
      [0x30000, 17, /multiple of 16/],
      [0x30000, 0x100000 * 16, /65535/],
      [0x100000, 16, /not in guest memory/], // in the hole
      [0xffff8, 16, /not in guest memory/], // straddles into the hole
    ];
    for (const [address, length, why] of cases) {
      driver.writeDescriptor(0, { address, length, flags: INDIRECT, next: 0 });
      driver.publish(0);
      expect(expectChainError(queue, InvalidIndirectDescriptorTableError, 0).reason).toMatch(why);
    }
  });

  it("a device reading or writing past its part gets BufferTooShort, never memory beyond", () => {
    const { driver, queue } = setup();
    driver.submit({ readable: [new Uint8Array(4)], writable: [2] });
    const c = queue.pop()!;
    expect(() => c.reader().read(5)).toThrow(BufferTooShortError);
    expect(() => c.writer().write(new Uint8Array(3))).toThrow(BufferTooShortError);
    expect(() => c.writer().writeU32(1)).toThrow(
      expect.objectContaining({ kind: "BufferTooShort", direction: "writable" }),
    );
  });
});

describe("hostile rings (queue broken: device needs reset)", () => {
  it("an avail idx more than the queue size ahead is InvalidAvailRingIndex, and stays broken", () => {
    const { driver, queue } = setup();
    driver.setAvailIdx(9);
    expect(() => queue.pop()).toThrow(InvalidAvailRingIndexError);
    expect(queue.broken).toBeInstanceOf(InvalidAvailRingIndexError);
    expect(queue.broken?.fatal).toBe(true);
    driver.setAvailIdx(1); // even if the driver "fixes" it, the queue needs a reset
    expect(() => queue.pop()).toThrow(InvalidAvailRingIndexError);
  });

  it("counts the jump modulo 2^16 across the wrap", () => {
    const { driver, queue } = setup();
    queue.nextAvail = 65534;
    driver.setAvailIdx(2); // 4 ahead across the wrap: fine
    for (let i = 0; i < 4; i++) driver.setAvailSlot((65534 + i) % 8, i);
    for (let i = 0; i < 4; i++) driver.writeDescriptor(i, { address: 0x20000, length: 1, flags: 0, next: 0 });
    expect(queue.pending()).toBe(4);
    for (let i = 0; i < 4; i++) expect(queue.pop()!.head).toBe(i);
    expect(queue.pop()).toBeNull();
    driver.setAvailIdx(1); // "behind" = 65535 ahead
    const e = (() => {
      try {
        queue.pop();
      } catch (err) {
        return err;
      }
      return undefined;
    })();
    expect(e).toBeInstanceOf(InvalidAvailRingIndexError);
    expect((e as InvalidAvailRingIndexError).availIdx).toBe(1);
    expect((e as InvalidAvailRingIndexError).nextAvail).toBe(2);
  });

  it("a head index outside the table is InvalidHeadIndex", () => {
    const { driver, queue } = setup();
    driver.publish(8);
    expect(() => queue.pop()).toThrow(InvalidHeadIndexError);
    expect(queue.broken?.kind).toBe("InvalidHeadIndex");
  });

  it("the device putting an impossible element in the used ring is InvalidUsedElement", () => {
    const { queue } = setup();
    expect(() => queue.addUsed(8, 0)).toThrow(InvalidUsedElementError);
    expect(() => queue.addUsed(0, -1)).toThrow(InvalidUsedElementError);
    expect(() => queue.addUsed(0, 2 ** 32)).toThrow(InvalidUsedElementError);
    expect(queue.usedIdx()).toBe(0);
  });

  it("queue sizes that are not a power of two, zero or too big are InvalidQueueSize", () => {
    const { memory, config } = setup();
    for (const size of [0, 3, 6, 100, 65536, 32768 * 2, 1.5]) {
      expect(() => new Queue(memory, { ...config, size })).toThrow(InvalidQueueSizeError);
    }
    expect(() => new Queue(memory, { ...config, size: 16, maxSize: 8 })).toThrow(InvalidQueueSizeError);
  });

  it("rings outside RAM are InvalidRingAddress and misaligned ones InvalidRingAlignment", () => {
    const { memory, config } = setup();
    const bad: [Partial<typeof config>, string][] = [
      [{ descTable: 0x100000 }, "descriptor table"],
      [{ availRing: MEM - 4 }, "available ring"],
      [{ usedRing: 0xfffc0 }, "used ring"], // starts in RAM, ends in the hole
      [{ usedRing: 2 ** 60 }, "used ring"],
      [{ descTable: -16 }, "descriptor table"],
    ];
    for (const [patch, ring] of bad) {
      expect(() => new Queue(memory, { ...config, ...patch })).toThrow(
        expect.objectContaining({ kind: "InvalidRingAddress", ring }),
      );
    }
    expect(() => new Queue(memory, { ...config, descTable: 0x20008 })).toThrow(InvalidRingAlignmentError);
    expect(() => new Queue(memory, { ...config, availRing: 0x20001 })).toThrow(InvalidRingAlignmentError);
    expect(() => new Queue(memory, { ...config, usedRing: 0x20002 })).toThrow(InvalidRingAlignmentError);
    expect(new InvalidRingAddressError("used ring", 1, 2).fatal).toBe(true);
  });

  it("never touches memory outside RAM even when the ring is at the very end of RAM", () => {
    const memory = createTestMemory(0x10000);
    // Available ring of size 8 (with used_event) ends exactly at the end of RAM.
    const availRing = 0x10000 - (6 + 2 * 8);
    const q = new Queue(memory, { size: 8, descTable: 0x1000, availRing, usedRing: 0xff00, eventIdx: true });
    memory.writeU16(availRing + 2, 1);
    memory.writeU16(availRing + 4, 0);
    memory.writeU64(0x1000, 0x3000n);
    memory.writeU32(0x1008, 1);
    const c = q.pop()!;
    q.addUsed(c.head, 0);
    expect(q.needsNotification()).toBe(true);
    expect(q.availEvent()).toBe(1);
  });
});
