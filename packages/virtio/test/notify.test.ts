import { describe, expect, it } from "vitest";
import {
  createTestMemory,
  type GuestMemoryAccess,
  needEvent,
  processQueue,
  Queue,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_USED_F_NO_NOTIFY,
} from "../src/index.js";
import { mockSplitQueue } from "../src/testing.js";

/**
 * The device's view of the memory, with a hook on its reads of `avail.idx`:
 * the available ring is never handed out as a view (so the queue falls back to
 * `readU16` for it), and `onAvailIdx(value)` runs right after each such read —
 * the place to play a driver that acts between the device's look at the ring
 * and what the device does next.
 */
function hooked(memory: GuestMemoryAccess, availRing: number, availLength: number) {
  const idxAt = availRing + 2;
  const hook: { onAvailIdx: ((value: number) => void) | null } = { onAvailIdx: null };
  const device = new Proxy(memory, {
    get(target, prop) {
      if (prop === "view")
        return (address: number, length: number) => {
          if (address < availRing + availLength && availRing < address + length)
            throw new RangeError("no view over the available ring");
          return target.view(address, length);
        };
      if (prop === "readU16")
        return (address: number) => {
          const v = target.readU16(address);
          if (address === idxAt && hook.onAvailIdx) hook.onAvailIdx(v);
          return v;
        };
      const v = Reflect.get(target, prop, target);
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
  return { device, hook };
}

function setup(eventIdx: boolean, size = 16) {
  const memory = createTestMemory(0x100000);
  const m = mockSplitQueue(memory, { size, heap: { address: 0x1000, size: 0xf0000 }, eventIdx });
  const { device, hook } = hooked(memory, m.config.availRing, 6 + 2 * size);
  const queue = new Queue(device, m.config);
  return { memory, driver: m.driver, kicks: m.notifications, queue, hook };
}

const one = (n: number) => ({ readable: [Uint8Array.of(n)], writable: [1] });

/**
 * Once, when the device next reads `avail.idx` and finds the ring empty, the
 * driver adds a chain and notifies only if the device asks for it (what a
 * driver on another CPU does at the worst moment). Returns what it saw.
 */
function raceOnEmpty(s: ReturnType<typeof setup>): { fired: boolean; kicked: boolean | undefined } {
  const seen: { fired: boolean; kicked: boolean | undefined } = { fired: false, kicked: undefined };
  s.hook.onAvailIdx = (v) => {
    if (v !== s.queue.nextAvail) return;
    s.hook.onAvailIdx = null;
    s.driver.submit(one(0xee));
    seen.fired = true;
    seen.kicked = s.driver.kickIfNeeded();
  };
  return seen;
}

describe.each([false, true])("notification protocol in Queue (EVENT_IDX %s)", (eventIdx) => {
  it("a chain added between the device's last empty pop and its enable is found by the re-check, without a kick", () => {
    const s = setup(eventIdx);
    s.driver.submit(one(1));
    expect(s.driver.kickIfNeeded()).toBe(true);
    const a = s.queue.popOrEnableNotification()!;
    expect(a).not.toBeNull();
    expect(s.queue.notificationsEnabled).toBe(false); // silenced while it works
    s.queue.addUsed(a.head, 0);

    // The hazard: pop() says "empty", and meanwhile the driver added a chain and did not
    // notify (notifications were off). A device that now only turned notifications on would
    // sleep with a request in the ring.
    const race = raceOnEmpty(s);
    expect(s.queue.pop()).toBeNull();
    expect(race).toEqual({ fired: true, kicked: false });
    expect(s.kicks).toEqual([0]);
    // enableNotification looks again behind its fence and says so.
    expect(s.queue.enableNotification()).toBe(true);
    expect(s.queue.pop()).not.toBeNull();
  });

  it("popOrEnableNotification serves the racing chain itself, then leaves notifications on", () => {
    const s = setup(eventIdx);
    s.driver.submit(one(1));
    expect(s.driver.kickIfNeeded()).toBe(true);
    const a = s.queue.popOrEnableNotification()!;
    s.queue.addUsed(a.head, 1);
    const race = raceOnEmpty(s);
    const b = s.queue.popOrEnableNotification();
    expect(race).toEqual({ fired: true, kicked: false });
    expect(b).not.toBeNull(); // served without a new kick
    expect(s.queue.notificationsEnabled).toBe(false); // it went back to work silenced
    s.queue.addUsed(b!.head, 1);
    expect(s.queue.popOrEnableNotification()).toBeNull();
    expect(s.queue.notificationsEnabled).toBe(true);
    if (eventIdx) expect(s.queue.availEvent()).toBe(s.queue.nextAvail);
    else expect(s.queue.usedFlags() & VIRTQ_USED_F_NO_NOTIFY).toBe(0);
    expect(s.kicks).toEqual([0]);
    expect(s.driver.pollUsed().map((u) => u.len)).toEqual([1, 1]);
    // Asleep now: the next chain is notified.
    s.driver.submit(one(2));
    expect(s.driver.kickIfNeeded()).toBe(true);
    expect(s.queue.popOrEnableNotification()).not.toBeNull();
  });

  it("processQueue (the generic loop) serves the racing chain in the same call", () => {
    const s = setup(eventIdx);
    s.driver.submit(one(1));
    s.driver.kickIfNeeded();
    const race = raceOnEmpty(s);
    let signals = 0;
    const r = processQueue(
      s.queue,
      (chain) => {
        chain.writer().writeU8(7);
        return 1;
      },
      () => signals++,
    );
    expect(race).toEqual({ fired: true, kicked: false });
    expect(r.completed).toBe(2);
    expect(r.fatal).toBeUndefined();
    expect(signals).toBe(1);
    expect(s.kicks).toEqual([0]);
    expect(s.queue.pending()).toBe(0);
    expect(s.queue.notificationsEnabled).toBe(true);
    expect(s.driver.pollUsed().map((u) => Array.from(u.written))).toEqual([[7], [7]]);
  });

  it("suppresses kicks while draining and asks for them again once the ring is empty", () => {
    const s = setup(eventIdx);
    for (let i = 0; i < 3; i++) s.driver.submit(one(i));
    expect(s.driver.kickIfNeeded()).toBe(true);
    const chain = s.queue.popOrEnableNotification()!;
    s.queue.addUsed(chain.head, 0);
    // The device is busy: more chains need no kick.
    s.driver.submit(one(3));
    expect(s.driver.kickIfNeeded()).toBe(false);
    let n = 1;
    for (let c = s.queue.popOrEnableNotification(); c; c = s.queue.popOrEnableNotification()) {
      s.queue.addUsed(c.head, 0);
      n++;
    }
    expect(n).toBe(4);
    // Empty and armed: asking again is cheap and changes nothing.
    expect(s.queue.popOrEnableNotification()).toBeNull();
    expect(s.queue.enableNotification()).toBe(false);
    s.driver.submit(one(4));
    expect(s.driver.kickIfNeeded()).toBe(true);
    // Armed, and the ring has a chain: it is popped (and the device silenced again).
    expect(s.queue.enableNotification()).toBe(true);
    expect(s.queue.popOrEnableNotification()).not.toBeNull();
    expect(s.queue.notificationsEnabled).toBe(false);
    s.driver.submit(one(5));
    expect(s.driver.kickIfNeeded()).toBe(false);
  });

  it("a device that stops early turns notifications on and learns that work is left", () => {
    const s = setup(eventIdx);
    for (let i = 0; i < 3; i++) s.driver.submit(one(i));
    s.driver.kickIfNeeded();
    s.queue.addUsed(s.queue.popOrEnableNotification()!.head, 0); // budget: one request
    expect(s.queue.enableNotification()).toBe(true);
    expect(s.queue.notificationsEnabled).toBe(true);
    if (eventIdx) expect(s.queue.availEvent()).toBe(1);
    else expect(s.queue.usedFlags() & VIRTQ_USED_F_NO_NOTIFY).toBe(0);
    // Come back: the rest is there, no kick needed.
    let n = 0;
    for (let c = s.queue.popOrEnableNotification(); c; c = s.queue.popOrEnableNotification()) {
      s.queue.addUsed(c.head, 0);
      n++;
    }
    expect(n).toBe(2);
    expect(s.queue.enableNotification()).toBe(false);
  });

  it("works across the 16-bit wrap of the available index", () => {
    const s = setup(eventIdx, 8);
    s.driver.setIndices(65534, 65534);
    s.queue.nextAvail = 65534;
    s.queue.nextUsed = 65534;
    s.memory.writeU16(s.queue.usedRing + 2, 65534);
    s.queue.enableNotification();
    for (let i = 0; i < 3; i++) s.driver.submit(one(i));
    expect(s.driver.kickIfNeeded()).toBe(true);
    s.queue.addUsed(s.queue.popOrEnableNotification()!.head, 0);
    const race = raceOnEmpty(s);
    let n = 1;
    for (let c = s.queue.popOrEnableNotification(); c; c = s.queue.popOrEnableNotification()) {
      s.queue.addUsed(c.head, 0);
      n++;
    }
    expect(race).toEqual({ fired: true, kicked: false });
    expect(n).toBe(4);
    expect(s.queue.nextAvail).toBe(2);
    if (eventIdx) expect(s.queue.availEvent()).toBe(2);
    expect(s.kicks).toEqual([0]);
  });
});

describe("needsNotification", () => {
  /** A queue whose indices start at `start`; `complete(n)` moves n chains through it. */
  function at(start: number, eventIdx: boolean) {
    const s = setup(eventIdx, 8);
    s.driver.setIndices(start, start);
    s.queue.nextAvail = start;
    s.queue.nextUsed = start;
    s.memory.writeU16(s.queue.usedRing + 2, start);
    s.driver.autoUsedEvent = false;
    const complete = (n: number): void => {
      for (let i = 0; i < n; i++) s.driver.submit(one(i));
      for (let i = 0; i < n; i++) s.queue.addUsed(s.queue.pop()!.head, 0);
      s.driver.pollUsed();
    };
    return { ...s, complete };
  }

  it("without EVENT_IDX: every batch unless VIRTQ_AVAIL_F_NO_INTERRUPT, across the wrap", () => {
    const s = at(65533, false);
    expect(s.queue.needsNotification()).toBe(false); // nothing added
    s.complete(2); // 65533 → 65535
    expect(s.queue.needsNotification()).toBe(true);
    expect(s.queue.needsNotification()).toBe(false); // the count was reset
    s.driver.setAvailFlags(VIRTQ_AVAIL_F_NO_INTERRUPT);
    s.complete(2); // 65535 → 1
    expect(s.queue.nextUsed).toBe(1);
    expect(s.queue.needsNotification()).toBe(false);
    s.driver.setAvailFlags(0);
    s.complete(1); // 1 → 2
    expect(s.queue.needsNotification()).toBe(true);
    // Other avail flag bits do not matter.
    s.driver.setAvailFlags(0xfffe);
    s.complete(1);
    expect(s.queue.needsNotification()).toBe(true);
    s.driver.setAvailFlags(0xffff);
    s.complete(1);
    expect(s.queue.needsNotification()).toBe(false);
  });

  it("with EVENT_IDX: exactly when used_event is crossed, across the wrap; NO_INTERRUPT is ignored", () => {
    const cases: [start: number, n: number, usedEvent: number, expected: boolean][] = [
      [65534, 1, 65534, true], // 65534 → 65535: entry 65534 used
      [65534, 1, 65535, false], // not yet
      [65535, 1, 65535, true], // 65535 → 0: the wrap itself
      [65535, 1, 0, false],
      [65534, 3, 0, true], // 65534 → 1 crosses 0
      [65534, 3, 65535, true],
      [65534, 3, 1, false], // event == new: not yet
      [65534, 3, 65533, false], // behind old: already passed
      [65535, 2, 65535, true], // event == old: crossed
      [0, 2, 65535, false],
    ];
    for (const [start, n, ev, expected] of cases) {
      for (const flags of [0, VIRTQ_AVAIL_F_NO_INTERRUPT]) {
        const s = at(start, true);
        s.driver.setAvailFlags(flags);
        s.driver.setUsedEvent(ev);
        s.complete(n);
        const old = start;
        expect(needEvent(ev, s.queue.nextUsed, old), `${start}+${n} event ${ev}`).toBe(expected);
        expect(s.queue.needsNotification(), `${start}+${n} event ${ev} flags ${flags}`).toBe(expected);
        expect(s.queue.needsNotification()).toBe(false);
      }
    }
  });

  it("with EVENT_IDX counts everything added since the last call, in any number of steps", () => {
    const s = at(65530, true);
    s.driver.setUsedEvent(65533);
    s.complete(2); // 65530 → 65532
    s.complete(2); // → 65534: 65533 crossed in the second step, asked only now
    expect(s.queue.needsNotification()).toBe(true);
    s.driver.setUsedEvent(1);
    s.complete(1); // → 65535
    expect(s.queue.needsNotification()).toBe(false);
    s.complete(3); // → 2 crosses 1 after the wrap
    expect(s.queue.needsNotification()).toBe(true);
  });
});
