/**
 * `@tskvm/virtio/testing`: test-only tools for devices built on this package,
 * kept out of the main entry (what rust-vmm's virtio-queue has in `mock.rs`
 * behind its `test-utils` feature).
 *
 * - The driver simulator: {@link VirtioDriverSimulator} over a
 *   {@link PciDriverTransport} or {@link MmioDriverTransport} drives a device
 *   the way a guest driver does, with no KVM; {@link SimQueue} gives raw ring
 *   access for malformed input, {@link mockSplitQueue} a driver-side queue
 *   without a transport, {@link InterruptRecorder} stands in for the VMM's
 *   interrupt sinks.
 * - The fuzz kit: a seeded PRNG ({@link FuzzRng}), hostile guest addresses
 *   ({@link hostileAddresses}), audited guest memory ({@link AuditedMemory}),
 *   guarded memory ({@link MemoryGuard}) and malformed chains
 *   ({@link writeMalformedChain}).
 *
 * Register access (`PciFunction`, `MmioWindow`) stays in the main entry: a
 * VMM's own channels implement it.
 */
export * from "./driver/simulator.js";
export * from "./driver/transport.js";
export * from "./testing/fuzz.js";
