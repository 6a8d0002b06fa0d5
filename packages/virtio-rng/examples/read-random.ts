// Reads 64 random bytes from a virtio-rng device, as a guest driver would:
// the virtio driver simulator (from @tskvm/virtio/testing) brings the device
// up over virtio-pci in plain memory (no KVM) and posts one 64-byte
// device-writable buffer.
import { createTestMemory, VirtioPciTransport } from "@tskvm/virtio";
import { InterruptRecorder, PciDriverTransport, VirtioDriverSimulator } from "@tskvm/virtio/testing";
import { VirtioRngDevice } from "@tskvm/virtio-rng";

const memory = createTestMemory(1 << 20); // 1 MiB of "guest RAM" at address 0
const device = new VirtioRngDevice(); // optionally { rateLimit: { bytesPerSecond: 4096, burst: 1024 } }
const irq = new InterruptRecorder(); // stands in for MSI-X / INTx
const pci = new VirtioPciTransport({ device, memory, msix: irq, intx: irq });
const sim = new VirtioDriverSimulator({
  transport: new PciDriverTransport(pci),
  memory,
  heap: { address: 0x10000, size: 0x80000 },
});

sim.init(); // reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queue 0, DRIVER_OK
const queue = sim.queue(0);
queue.submit({ writable: [64] }); // one device-writable buffer of 64 bytes
queue.kick(); // the doorbell: the transport calls device.queueNotify(0)

const [used] = queue.pollUsed();
if (used?.len !== 64) throw new Error("the device did not fill the buffer");
console.log(`${used.len} random bytes: ${Buffer.from(used.written).toString("hex")}`);
console.log(`interrupts on vector ${queue.vector}: ${irq.count(queue.vector)}`);
