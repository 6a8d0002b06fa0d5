// @tskvm/virtio: a small device (it answers each request with its bytes reversed)
// driven through the driver simulator of @tskvm/virtio/testing over virtio-pci.
const assert = require("node:assert/strict");

module.exports = async function smoke(load) {
  const { createTestMemory, processQueue, VirtioPciTransport } = load["@tskvm/virtio"];
  const { InterruptRecorder, PciDriverTransport, VirtioDriverSimulator } = load["@tskvm/virtio/testing"];

  class Reverser {
    deviceType = 42;
    queueMaxSizes = [16];
    features = 0n;
    configSize = 0;
    ctx = undefined;
    readConfig() {}
    writeConfig() {}
    activate(ctx) {
      this.ctx = ctx;
    }
    reset() {
      this.ctx = undefined;
    }
    queueNotify(index) {
      const { queue } = this.ctx.queues.find((q) => q.index === index);
      processQueue(
        queue,
        (chain) => {
          const reader = chain.reader();
          const bytes = reader.read(reader.remaining).reverse();
          chain.writer().write(bytes);
          return bytes.length;
        },
        () => this.ctx.interrupt.signalQueue(index),
      );
    }
  }

  const memory = createTestMemory(1 << 20);
  const irq = new InterruptRecorder();
  const transport = new VirtioPciTransport({ device: new Reverser(), memory, msix: irq, intx: irq });
  const sim = new VirtioDriverSimulator({
    transport: new PciDriverTransport(transport),
    memory,
    heap: { address: 0x10000, size: 0xf0000 },
  });
  sim.init();
  const q = sim.queue(0);
  q.submit({ readable: [Buffer.from("tskvm")], writable: [5] });
  q.kick();
  const [used] = await q.waitUsed(1);
  assert.equal(Buffer.from(used.written).toString(), "mvkst");
  assert.equal(irq.count(q.vector), 1);
  return "a request through the driver simulator came back reversed, with its interrupt";
};
