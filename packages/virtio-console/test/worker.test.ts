// The console's device module served by @tskvm/virtio-worker in a worker
// thread, a driver on this thread (through the register channel, as vCPUs
// would), and the host side through a ConsoleLink: output, input, resize,
// and output bigger than the link's ring (the worker waits for the host); and a
// terminal the worker serves itself (a FIFO for its input, a file for its output).
import { execFileSync } from "node:child_process";
import {
  closeSync,
  constants,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DeviceChannel, GuestMemory, GuestRegion } from "@tskvm/kvm-core";
import { PciDriverTransport, VirtioDriverSimulator } from "@tskvm/virtio/testing";
import { ChannelPciFunction, type DeviceWorkerHandle, startDeviceWorker } from "@tskvm/virtio-worker";
import { afterAll, describe, expect, it } from "vitest";
import {
  CONSOLE_QUEUES,
  CONSOLE_RECEIVEQ,
  CONSOLE_TRANSMITQ,
  ConsoleLink,
  type ConsoleStats,
} from "../src/index.js";

const MODULE = new URL("../dist/entry.js", import.meta.url).href;
const region = GuestRegion.allocate(0, 8 << 20);
const memory = new GuestMemory([region]);
afterAll(() => region.release());

async function until(what: string, f: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

async function start(
  link: ConsoleLink,
  extra: Record<string, unknown> = {},
): Promise<{
  handle: DeviceWorkerHandle<Record<string, never>, ConsoleStats>;
  sim: VirtioDriverSimulator;
  channel: DeviceChannel;
}> {
  const channel = DeviceChannel.create();
  const handle = startDeviceWorker<Record<string, never>, ConsoleStats>({
    module: MODULE,
    data: { ...link.data, queueSize: 64, ...extra },
    queues: CONSOLE_QUEUES,
    name: "console",
    memory: memory.describe(),
    transport: "pci",
    channel: channel.describe(),
  });
  link.wake = (q) => handle.notify(q);
  await handle.ready;
  const transport = new PciDriverTransport(new ChannelPciFunction(channel));
  transport.notify = (q) => handle.notifyEventFds[q]?.write(1);
  const sim = new VirtioDriverSimulator({ transport, memory, heap: { address: 0x10000, size: 6 << 20 } });
  sim.init();
  return { handle, sim, channel };
}

describe("the console device module in a worker", () => {
  it("output, input and resize through a ConsoleLink", async () => {
    const link = new ConsoleLink({ cols: 100, rows: 30 });
    const { handle, sim, channel } = await start(link);
    try {
      const cfg = sim.readConfig(0, 4);
      expect([cfg[0]! | (cfg[1]! << 8), cfg[2]! | (cfg[3]! << 8)]).toEqual([100, 30]);

      const tx = sim.queue(CONSOLE_TRANSMITQ);
      tx.submit({ readable: [Buffer.from("hello "), Buffer.from("host\n")] });
      tx.kick();
      let got = "";
      while (got.length < 11) {
        await link.waitOutput();
        got += Buffer.from(link.read()).toString();
      }
      expect(got).toBe("hello host\n");

      const rx = sim.queue(CONSOLE_RECEIVEQ);
      rx.submit({ writable: [4] });
      rx.submit({ writable: [64] });
      rx.kick();
      expect(link.write(Buffer.from("typed input"))).toBe(11);
      const used = await rx.waitUsed(2);
      expect(used.map((u) => Buffer.from(u.written).toString())).toEqual(["type", "d input"]);

      const gen = sim.transport.configGeneration();
      link.resize(132, 43);
      await until("the resize", () => sim.transport.configGeneration() !== gen);
      const c2 = sim.readConfig(0, 4);
      expect([c2[0]! | (c2[1]! << 8), c2[2]! | (c2[3]! << 8)]).toEqual([132, 43]);
    } finally {
      const exit = await handle.stop();
      channel.close();
      expect(exit.stats?.rxChains).toBe(2);
    }
  });

  it("output bigger than the link's ring arrives whole and in order", async () => {
    const link = new ConsoleLink({ outputCapacity: 4096 });
    const { handle, sim, channel } = await start(link);
    const received: Uint8Array[] = [];
    let total = 0;
    const stop = link.onOutput((b) => {
      received.push(b);
      total += b.length;
    });
    try {
      const all = new Uint8Array(300_000);
      for (let i = 0; i < all.length; i++) all[i] = (i * 31 + (i >> 8)) & 0xff;
      const tx = sim.queue(CONSOLE_TRANSMITQ);
      for (let at = 0; at < all.length; at += 10_000) {
        tx.submit({ readable: [all.subarray(at, at + 6000), all.subarray(at + 6000, at + 10_000)] });
        tx.kick();
      }
      await until("all output", () => total >= all.length, 10_000);
      expect(Buffer.concat(received)).toEqual(Buffer.from(all));
      await tx.waitUsed(30);
    } finally {
      stop();
      await handle.stop();
      channel.close();
    }
  });

  it("a terminal served by the worker itself: input read when readable, Ctrl-A x flagged, output written", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tskvm-console-term-"));
    const fifo = join(dir, "in");
    execFileSync("mkfifo", [fifo]);
    // O_RDWR: the FIFO opens without a writer on the other side; non-blocking like a libuv-owned tty.
    const inFd = openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK);
    const outPath = join(dir, "out");
    const outFd = openSync(outPath, "w");
    const link = new ConsoleLink();
    const { handle, sim, channel } = await start(link, { terminal: { inFd, outFd, escape: true } });
    let quit = 0;
    const stopQuit = link.onQuit(() => quit++);
    try {
      const rx = sim.queue(CONSOLE_RECEIVEQ);
      rx.submit({ writable: [64] });
      rx.kick();
      // Ctrl-A Ctrl-A is one Ctrl-A for the guest; Ctrl-A x is taken out and flagged.
      writeSync(inFd, Buffer.from("typed\x01\x01!\x01x"));
      const [used] = await rx.waitUsed(1);
      expect(Buffer.from(used!.written)).toEqual(Buffer.from("typed\x01!"));
      await until("the quit flag", () => quit === 1);

      const tx = sim.queue(CONSOLE_TRANSMITQ);
      tx.submit({ readable: [Buffer.from("to the "), Buffer.from("terminal\n")] });
      tx.kick();
      await tx.waitUsed(1);
      await until("the output in the file", () => readFileSync(outPath, "utf8") === "to the terminal\n");
      expect(link.outputAvailable).toBe(0); // nothing went through the link's ring
    } finally {
      stopQuit();
      await handle.stop();
      channel.close();
      closeSync(inFd);
      closeSync(outFd);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a terminal that does not take output at once (a full pipe: EAGAIN) gets all of it, in order", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tskvm-console-term-"));
    const fifo = join(dir, "out");
    execFileSync("mkfifo", [fifo]);
    const outFd = openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK);
    const link = new ConsoleLink();
    const { handle, sim, channel } = await start(link, { terminal: { outFd } });
    try {
      const all = new Uint8Array(400_000); // several times a pipe's 64 KiB
      for (let i = 0; i < all.length; i++) all[i] = (i * 7 + (i >> 9)) & 0xff;
      const tx = sim.queue(CONSOLE_TRANSMITQ);
      for (let at = 0; at < all.length; at += 20_000)
        tx.submit({ readable: [all.subarray(at, at + 20_000)] });
      tx.kick();
      const got: Buffer[] = [];
      let total = 0;
      const chunk = Buffer.alloc(65536);
      const end = Date.now() + 15_000;
      while (total < all.length && Date.now() < end) {
        let n = 0;
        try {
          n = readSync(outFd, chunk, 0, chunk.length, null);
        } catch (e) {
          if ((e as { code?: string }).code !== "EAGAIN") throw e;
        }
        if (n > 0) {
          got.push(Buffer.from(chunk.subarray(0, n)));
          total += n;
        } else await new Promise((r) => setTimeout(r, 2));
      }
      expect(Buffer.concat(got)).toEqual(Buffer.from(all));
      await tx.waitUsed(20);
    } finally {
      await handle.stop();
      channel.close();
      closeSync(outFd);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a guest that reads nothing holds the terminal back: at most the device's input buffer is taken", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tskvm-console-term-"));
    const fifo = join(dir, "in");
    execFileSync("mkfifo", [fifo]);
    const inFd = openSync(fifo, constants.O_RDWR | constants.O_NONBLOCK);
    const link = new ConsoleLink();
    const { handle, sim, channel } = await start(link, { terminal: { inFd }, inputCapacity: 4096 });
    try {
      const all = Buffer.alloc(40_000);
      for (let i = 0; i < all.length; i++) all[i] = 0x20 + (i % 90);
      expect(writeSync(inFd, all)).toBe(all.length); // fits the FIFO's 64 KiB
      // No receive buffers: the worker takes at most the device's input buffer (4 KiB here)
      // and stops polling the terminal, so the rest stays in the FIFO. Read it out to count
      // it, then put it back in order (the worker does not read while the device is full).
      await new Promise((r) => setTimeout(r, 200));
      const left = Buffer.alloc(all.length);
      const n = readSync(inFd, left, 0, left.length, null);
      expect(n).toBeGreaterThanOrEqual(all.length - 4096);
      expect(writeSync(inFd, left.subarray(0, n))).toBe(n);
      const rx = sim.queue(CONSOLE_RECEIVEQ);
      const got: Buffer[] = [];
      let total = 0;
      while (total < all.length) {
        rx.submit({ writable: [1000] });
        rx.kick();
        const [used] = await rx.waitUsed(1);
        got.push(Buffer.from(used!.written));
        total += used!.written.length;
      }
      expect(Buffer.concat(got)).toEqual(all);
    } finally {
      await handle.stop();
      channel.close();
      closeSync(inFd);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
