import { describe, expect, it } from "vitest";
import {
  createTestMemory,
  needEvent,
  PlainGuestMemory,
  Queue,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
} from "../src/index.js";
import { mockSplitQueue } from "../src/testing.js";

const bytes = (...v: number[]): Uint8Array => Uint8Array.from(v);
const text = (s: string): Uint8Array => new TextEncoder().encode(s);

function setup(size = 16, eventIdx = false, memory = createTestMemory(0x100000)) {
  const m = mockSplitQueue(memory, { size, heap: { address: 0x1000, size: 0xf0000 }, eventIdx });
  const queue = new Queue(memory, m.config);
  return { memory, driver: m.driver, queue };
}

describe("Queue: pop and add_used", () => {
  it("pops a chain with readable then writable buffers and returns it through the used ring", () => {
    const { driver, queue } = setup();
    const head = driver.submit({ readable: [text("hello "), text("world")], writable: [4, 8] });
    expect(queue.pending()).toBe(1);
    const chain = queue.pop()!;
    expect(chain.head).toBe(head);
    expect(chain.count).toBe(4);
    expect(chain.writableStart).toBe(2);
    expect(chain.readableLength).toBe(11);
    expect(chain.writableLength).toBe(12);
    expect(chain.indirect).toBe(false);
    const r = chain.reader();
    expect(new TextDecoder().decode(r.read(r.remaining))).toBe("hello world");
    const w = chain.writer();
    w.write(text("0123456789"));
    expect(w.bytesWritten).toBe(10);
    queue.addUsed(chain.head, w.bytesWritten);
    expect(queue.pop()).toBeNull();
    const used = driver.pollUsed();
    expect(used).toHaveLength(1);
    expect(used[0]!.id).toBe(head);
    expect(used[0]!.len).toBe(10);
    expect(new TextDecoder().decode(used[0]!.written)).toBe("0123456789");
    expect(driver.freeDescriptors).toBe(16);
  });

  it("gathers and scatters with views aliasing guest memory (zero copy)", () => {
    const { memory, driver, queue } = setup();
    driver.submit({ readable: [bytes(1, 2, 3), bytes(4, 5)], writable: [3, 3] });
    const chain = queue.pop()!;
    const views = chain.reader().readAllViews();
    expect(views.map((v) => Array.from(v))).toEqual([
      [1, 2, 3],
      [4, 5],
    ]);
    // Views alias guest RAM: a write through the view is visible in memory.
    views[0]![0] = 99;
    expect(memory.readU8(chain.addresses[0]!)).toBe(99);
    const w = chain.writer();
    const out = w.writeViews(5);
    expect(out.map((v) => v.length)).toEqual([3, 2]);
    out[0]!.set([7, 8, 9]);
    out[1]!.set([10, 11]);
    expect(Array.from(memory.read(chain.addresses[2]!, 3))).toEqual([7, 8, 9]);
    expect(w.bytesWritten).toBe(5);
    expect(w.remaining).toBe(1);
  });

  it("reads and writes scalars across buffer boundaries", () => {
    const { driver, queue } = setup();
    driver.submit({
      readable: [bytes(0x01, 0x02), bytes(0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a)],
      writable: [3, 9],
    });
    const chain = queue.pop()!;
    const r = chain.reader();
    expect(r.readU32()).toBe(0x04030201);
    expect(r.readU16()).toBe(0x0605);
    expect(r.readU8()).toBe(7);
    expect(() => r.readU32()).toThrow(/needed 4 readable bytes, chain has 3 left/);
    const w = chain.writer();
    w.writeU16(0xbeef);
    w.writeU64(0x1122334455667788n);
    w.writeU8(0x42);
    queue.addUsed(chain.head, w.bytesWritten);
    const [u] = driver.pollUsed();
    expect(Array.from(u!.written)).toEqual([
      0xef, 0xbe, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x42,
    ]);
  });

  it("splits a writer to reserve a trailing status byte (virtio-blk style)", () => {
    const { driver, queue } = setup();
    driver.submit({ readable: [new Uint8Array(16)], writable: [512, 1] });
    const chain = queue.pop()!;
    const data = chain.writer();
    const status = data.splitAt(data.remaining - 1);
    expect(data.remaining).toBe(512);
    expect(status.remaining).toBe(1);
    data.writeViews(512).forEach((v) => {
      v.fill(0xaa);
    });
    status.writeU8(0);
    queue.addUsed(chain.head, data.bytesWritten + status.bytesWritten);
    const [u] = driver.pollUsed();
    expect(u!.len).toBe(513);
    expect(u!.written[511]).toBe(0xaa);
    expect(u!.written[512]).toBe(0);
    expect(() => data.splitAt(10_000)).toThrow(/split at 10000/);
  });

  it("wraps the 16-bit indices at 65535 → 0", () => {
    const { memory, driver, queue } = setup(8);
    driver.setIndices(65530, 65530);
    queue.nextAvail = 65530;
    queue.nextUsed = 65530;
    memory.writeU16(queue.usedRing + 2, 65530);
    const seen: number[] = [];
    for (let i = 0; i < 20; i++) {
      const head = driver.submit({ readable: [bytes(i)], writable: [1] });
      const chain = queue.pop()!;
      expect(chain.head).toBe(head);
      const v = chain.reader().readU8();
      chain.writer().writeU8(v + 100);
      queue.addUsed(chain.head, 1);
      const [u] = driver.pollUsed();
      seen.push(u!.written[0]!);
    }
    expect(seen).toEqual(Array.from({ length: 20 }, (_, i) => i + 100));
    expect(queue.nextAvail).toBe((65530 + 20) & 0xffff);
    expect(queue.usedIdx()).toBe((65530 + 20) & 0xffff);
    expect(driver.availIdx).toBe(14);
  });

  it("handles a full ring of outstanding requests across the wrap", () => {
    const { driver, queue } = setup(4);
    driver.setIndices(65534, 65534);
    queue.nextAvail = 65534;
    queue.nextUsed = 65534;
    for (let round = 0; round < 5; round++) {
      const heads = [0, 1, 2, 3].map((i) => driver.submit({ readable: [bytes(round, i)] }));
      expect(queue.pending()).toBe(4);
      const chains = [0, 1, 2, 3].map(() => queue.pop()!);
      expect(chains.map((c) => c.head)).toEqual(heads);
      // Complete out of order.
      for (const c of [...chains].reverse()) queue.addUsed(c.head, 0);
      expect(
        driver
          .pollUsed()
          .map((u) => u.id)
          .reverse(),
      ).toEqual(heads);
    }
  });

  it("pops indirect chains", () => {
    const { driver, queue } = setup();
    const head = driver.submit({ readable: [text("in"), text("direct")], writable: [2, 6], indirect: true });
    expect(driver.freeDescriptors).toBe(15); // one ring descriptor for the whole chain
    const chain = queue.pop()!;
    expect(chain.head).toBe(head);
    expect(chain.indirect).toBe(true);
    expect(chain.count).toBe(4);
    expect(new TextDecoder().decode(chain.reader().read(8))).toBe("indirect");
    chain.writer().write(text("tcerid"));
    queue.addUsed(head, 6);
    const [u] = driver.pollUsed();
    expect(new TextDecoder().decode(u!.written)).toBe("tcerid");
  });

  it("follows direct descriptors into a trailing indirect table", () => {
    const { memory, driver, queue } = setup();
    const table = 0x80000;
    memory.writeU64(table, 0x90000n);
    memory.writeU32(table + 8, 4);
    memory.writeU16(table + 12, VIRTQ_DESC_F_WRITE);
    driver.writeDescriptor(0, { address: 0x91000, length: 2, flags: VIRTQ_DESC_F_NEXT, next: 5 });
    driver.writeDescriptor(5, { address: table, length: 16, flags: 4 /* INDIRECT */, next: 0 });
    driver.publish(0);
    const chain = queue.pop()!;
    expect(chain.buffers()).toEqual([
      { address: 0x91000, length: 2, writable: false },
      { address: 0x90000, length: 4, writable: true },
    ]);
  });

  it("returns the state as plain data and rebuilds it over another view of the same memory", () => {
    const shared = createTestMemory(0x100000, 0, { shared: true });
    const { driver, queue } = setup(16, true, shared);
    driver.submit({ readable: [bytes(1)] });
    driver.submit({ readable: [bytes(2)] });
    const first = queue.pop()!;
    queue.addUsed(first.head, 0);
    const state = structuredClone(queue.state());
    expect(state).toEqual({
      size: 16,
      descTable: queue.descTable,
      availRing: queue.availRing,
      usedRing: queue.usedRing,
      nextAvail: 1,
      nextUsed: 1,
      eventIdx: true,
      maxSize: 32768,
    });
    // What a worker does: its own memory object over the same buffers, then fromState.
    const workerMemory = PlainGuestMemory.fromDescriptor(structuredClone(shared.describe()));
    const q2 = Queue.fromState(state, workerMemory);
    const second = q2.pop()!;
    expect(second.reader().readU8()).toBe(2);
    q2.addUsed(second.head, 0);
    expect(driver.pollUsed().map((u) => u.id)).toEqual([first.head, second.head]);
  });

  it("works when rings straddle a host-view boundary (non-contiguous slow path)", () => {
    const mem = new PlainGuestMemory(
      [
        { address: 0, size: 0x1000 },
        { address: 0x1000, size: 0x100000 },
      ],
      { windowSize: 0x40 },
    );
    const m = mockSplitQueue(mem, { size: 16, heap: { address: 0xff0, size: 0x80000 } });
    const q = new Queue(mem, m.config);
    for (let i = 0; i < 40; i++) {
      m.driver.submit({ readable: [new Uint8Array(100).fill(i)], writable: [100] });
      const c = q.pop()!;
      const data = c.reader().read(100);
      expect(data.every((b) => b === i)).toBe(true);
      c.writer().write(data);
      q.addUsed(c.head, 100);
      expect(m.driver.pollUsed()[0]!.written.every((b) => b === i)).toBe(true);
    }
  });

  it("undoPop makes the chain available again", () => {
    const { driver, queue } = setup();
    const head = driver.submit({ readable: [bytes(1)] });
    expect(queue.pop()!.head).toBe(head);
    queue.undoPop();
    expect(queue.pop()!.head).toBe(head);
  });

  it("checks the direction a device expects", () => {
    const { driver, queue } = setup();
    driver.submit({ readable: [bytes(1)], writable: [1] });
    const c = queue.pop()!;
    expect(() => c.expectReadableOnly()).toThrow(
      expect.objectContaining({ kind: "UnexpectedDescriptorDirection" }),
    );
    expect(() => c.expectWritableOnly()).toThrow(
      expect.objectContaining({ kind: "UnexpectedDescriptorDirection" }),
    );
    driver.submit({ writable: [1] });
    const d = queue.pop()!;
    expect(() => d.expectWritableOnly()).not.toThrow();
    expect(() => d.reader().readU8()).toThrow(
      expect.objectContaining({ kind: "BufferTooShort", direction: "readable" }),
    );
  });
});

describe("Queue: notification suppression", () => {
  it("needEvent matches the spec formula on the 16-bit circle", () => {
    // (u16)(new - event - 1) < (u16)(new - old)
    const ref = (e: number, n: number, o: number): boolean => ((n - e - 1) & 0xffff) < ((n - o) & 0xffff);
    let seed = 12345;
    const rnd = (): number => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed & 0xffff;
    };
    for (let i = 0; i < 10000; i++) {
      const o = rnd();
      const n = (o + (rnd() % 64)) & 0xffff;
      const e = i % 3 === 0 ? (o + (rnd() % 70) - 3) & 0xffff : rnd();
      expect(needEvent(e, n, o)).toBe(ref(e, n, o));
    }
    expect(needEvent(5, 6, 5)).toBe(true); // event == old: crossed
    expect(needEvent(6, 6, 5)).toBe(false); // event == new: not yet
    expect(needEvent(65535, 1, 65534)).toBe(true); // across the wrap
    expect(needEvent(0, 65535, 65530)).toBe(false);
  });

  it("without EVENT_IDX honours VIRTQ_AVAIL_F_NO_INTERRUPT", () => {
    const { driver, queue } = setup();
    expect(queue.needsNotification()).toBe(false); // nothing added
    driver.submit({ readable: [bytes(1)] });
    queue.addUsed(queue.pop()!.head, 0);
    expect(queue.needsNotification()).toBe(true);
    driver.setAvailFlags(VIRTQ_AVAIL_F_NO_INTERRUPT);
    driver.submit({ readable: [bytes(1)] });
    queue.addUsed(queue.pop()!.head, 0);
    expect(queue.needsNotification()).toBe(false);
  });

  it("with EVENT_IDX notifies exactly when used_event is crossed", () => {
    const { driver, queue } = setup(16, true);
    const complete = (n: number): void => {
      for (let i = 0; i < n; i++) driver.submit({ readable: [bytes(i)] });
      for (let i = 0; i < n; i++) queue.addUsed(queue.pop()!.head, 0);
    };
    driver.setUsedEvent(0); // interrupt when used idx goes past 0
    complete(1); // used idx 0 → 1
    expect(queue.needsNotification()).toBe(true);
    driver.setUsedEvent(4); // not before entry 4 is used
    complete(2); // 1 → 3
    expect(queue.needsNotification()).toBe(false);
    complete(3); // 3 → 6 crosses 4
    expect(queue.needsNotification()).toBe(true);
    driver.setAvailFlags(VIRTQ_AVAIL_F_NO_INTERRUPT); // ignored with EVENT_IDX
    driver.setUsedEvent(6);
    complete(1);
    expect(queue.needsNotification()).toBe(true);
    driver.pollUsed();
  });

  it("with EVENT_IDX agrees with vring_need_event around the wrap", () => {
    const { driver, queue, memory } = setup(8, true);
    driver.setIndices(65533, 65533);
    queue.nextAvail = 65533;
    queue.nextUsed = 65533;
    memory.writeU16(queue.usedRing + 2, 65533);
    for (let step = 0; step < 12; step++) {
      const old = queue.nextUsed;
      const ev = (old + (step % 3)) & 0xffff;
      driver.setUsedEvent(ev);
      const n = 1 + (step % 2);
      for (let i = 0; i < n; i++) driver.submit({ readable: [bytes(i)] });
      for (let i = 0; i < n; i++) queue.addUsed(queue.pop()!.head, 0);
      expect(queue.needsNotification()).toBe(needEvent(ev, queue.nextUsed, old));
      driver.pollUsed();
    }
  });

  it("publishes avail_event on pop with EVENT_IDX and NO_NOTIFY without it", () => {
    const ev = setup(16, true);
    ev.driver.submit({ readable: [bytes(1)] });
    expect(ev.driver.kickIfNeeded()).toBe(true); // avail_event 0 is in [0, 1)
    ev.queue.pop();
    expect(ev.queue.availEvent()).toBe(1);
    ev.queue.disableNotification();
    expect(ev.queue.availEvent()).toBe(0); // just behind nextAvail
    ev.driver.submit({ readable: [bytes(2)] });
    expect(ev.driver.kickIfNeeded()).toBe(false); // 0 is not in [1, 2)
    ev.queue.pop();
    expect(ev.queue.availEvent()).toBe(0); // not moved while disabled
    ev.driver.submit({ readable: [bytes(3)] });
    expect(ev.driver.kickIfNeeded()).toBe(false); // 0 is not in [2, 3)
    expect(ev.queue.enableNotification()).toBe(true); // work pending: the device must look again
    expect(ev.queue.availEvent()).toBe(2);
    ev.queue.pop();
    ev.driver.submit({ readable: [bytes(4)] });
    expect(ev.driver.kickIfNeeded()).toBe(true); // asked again: 3 is in [3, 4)

    // Behind index 0 is 65535: silenced across the wrap as well.
    const fresh = setup(16, true);
    fresh.queue.disableNotification();
    expect(fresh.queue.availEvent()).toBe(65535);
    for (let i = 0; i < 16; i++) fresh.driver.submit({ readable: [bytes(i)] });
    expect(fresh.driver.kickIfNeeded()).toBe(false);

    const plain = setup();
    plain.queue.disableNotification();
    expect(plain.queue.usedFlags() & VIRTQ_USED_F_NO_NOTIFY).toBe(1);
    plain.driver.submit({ readable: [bytes(1)] });
    expect(plain.driver.kickIfNeeded()).toBe(false);
    expect(plain.queue.enableNotification()).toBe(true);
    expect(plain.queue.usedFlags() & VIRTQ_USED_F_NO_NOTIFY).toBe(0);
    plain.driver.submit({ readable: [bytes(2)] });
    expect(plain.driver.kickIfNeeded()).toBe(true);
  });
});
