import {
  type ActivateContext,
  type DescriptorChain,
  feature,
  processQueue,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  type VirtioDevice,
  type VirtqueueError,
} from "../src/index.js";

/** A device type id no real device uses. */
export const ECHO_DEVICE_TYPE = 42;
/** Device-specific feature 0: queue 1 reverses the bytes. */
export const ECHO_F_REVERSE = feature(0);

/**
 * A tiny example device, written against the public API only, the way a
 * device package would be: queue 0 echoes each request's readable bytes into
 * its writable part; queue 1 does the same reversed (if ECHO_F_REVERSE was
 * negotiated). Config space: u32 requests completed (read-only), u32 scratch
 * (read-write).
 */
export class EchoDevice implements VirtioDevice {
  readonly deviceType = ECHO_DEVICE_TYPE;
  readonly queueMaxSizes: readonly number[];
  readonly features = VIRTIO_F_EVENT_IDX | VIRTIO_F_INDIRECT_DESC | ECHO_F_REVERSE;
  readonly configSize = 8;
  readonly #config = new DataView(new ArrayBuffer(8));
  ctx: ActivateContext | undefined;
  activations = 0;
  resets = 0;
  readonly failed: VirtqueueError[] = [];
  fatal: VirtqueueError | undefined;

  constructor(queueMaxSizes: readonly number[] = [256, 64]) {
    this.queueMaxSizes = queueMaxSizes;
  }

  readConfig(offset: number, data: Uint8Array): void {
    data.set(new Uint8Array(this.#config.buffer, offset, data.length));
  }

  writeConfig(offset: number, data: Uint8Array): void {
    // Only the scratch word (bytes 4..7) is writable.
    for (let i = 0; i < data.length; i++) if (offset + i >= 4) this.#config.setUint8(offset + i, data[i]!);
  }

  activate(ctx: ActivateContext): void {
    this.ctx = ctx;
    this.activations++;
  }

  reset(): void {
    this.ctx = undefined;
    this.resets++;
    this.#config.setUint32(0, 0, true);
  }

  /** A device-side config change (e.g. a resize), announced to the driver. */
  setScratch(v: number): void {
    this.#config.setUint32(4, v, true);
    this.ctx?.interrupt.signalConfig();
  }

  get completed(): number {
    return this.#config.getUint32(0, true);
  }

  queueNotify(index: number): void {
    const ctx = this.ctx;
    const active = ctx?.queues.find((q) => q.index === index);
    if (!ctx || !active) return;
    const reverse = index === 1 && (ctx.driverFeatures & ECHO_F_REVERSE) !== 0n;
    const r = processQueue(
      active.queue,
      (chain) => this.#echo(chain, reverse),
      () => ctx.interrupt.signalQueue(index),
    );
    this.failed.push(...r.failed);
    this.#config.setUint32(0, this.completed + r.completed, true);
    if (r.fatal) {
      this.fatal = r.fatal;
      ctx.needsReset(r.fatal);
    }
  }

  #echo(chain: DescriptorChain, reverse: boolean): number {
    const reader = chain.reader();
    const writer = chain.writer();
    const n = Math.min(reader.remaining, writer.remaining);
    const data = reader.read(n);
    if (reverse) data.reverse();
    writer.write(data);
    return writer.bytesWritten;
  }
}
