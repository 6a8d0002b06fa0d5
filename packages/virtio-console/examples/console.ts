// A virtio console as a guest driver sees it: the virtio driver simulator
// (from @tskvm/virtio/testing) brings the device up over virtio-pci in plain
// memory (no KVM), writes a line to the host through transmitq0, reads the
// host's reply from receiveq0, and sees the console resized.
import { createTestMemory, VirtioPciTransport } from "@tskvm/virtio";
import { InterruptRecorder, PciDriverTransport, VirtioDriverSimulator } from "@tskvm/virtio/testing";
import { CONSOLE_RECEIVEQ, CONSOLE_TRANSMITQ, VirtioConsoleDevice } from "@tskvm/virtio-console";

const memory = createTestMemory(1 << 20); // 1 MiB of "guest RAM" at address 0
const device = new VirtioConsoleDevice({
  cols: 80,
  rows: 25,
  onOutput: (bytes) => process.stdout.write(`host got: ${Buffer.from(bytes).toString()}`),
});
const irq = new InterruptRecorder(); // stands in for MSI-X / INTx
const pci = new VirtioPciTransport({ device, memory, msix: irq, intx: irq });
const sim = new VirtioDriverSimulator({
  transport: new PciDriverTransport(pci),
  memory,
  heap: { address: 0x10000, size: 0x80000 },
});
sim.init(); // reset, ACKNOWLEDGE, DRIVER, features (VIRTIO_CONSOLE_F_SIZE), queues, DRIVER_OK

// Guest → host: one chain of two device-readable buffers on transmitq0.
const tx = sim.queue(CONSOLE_TRANSMITQ);
tx.submit({ readable: [Buffer.from("hello from "), Buffer.from("the guest\n")] });
tx.kick(); // the transport calls device.queueNotify(1): onOutput gets the bytes

// Host → guest: the guest posts a receive buffer; the host's bytes fill it when served.
const rx = sim.queue(CONSOLE_RECEIVEQ);
rx.submit({ writable: [64] });
rx.kick(); // nothing to deliver yet: the buffer waits
const accepted = device.write(Buffer.from("hello from the host\n")); // ≤ 64 KiB buffered: backpressure
device.serveQueue(CONSOLE_RECEIVEQ); // (in a worker: the runtime calls it)
const [used] = rx.pollUsed();
console.log(
  `guest got ${used?.len} of ${accepted} bytes: ${Buffer.from(used?.written ?? [])
    .toString()
    .trim()}`,
);

// The host terminal changed size: config space updated, config interrupt (vector 0), generation bumped.
device.resize(132, 43);
const cfg = sim.readConfig(0, 4);
console.log(
  `console is ${cfg[0]! | (cfg[1]! << 8)}x${cfg[2]! | (cfg[3]! << 8)}, config interrupts: ${irq.count(0)}`,
);
