import type { DeviceChannel } from "@tskvm/kvm-core";
import type { MmioWindow, PciFunction } from "@tskvm/virtio";

/** DeviceChannel `space` for PCI configuration space; BARs use their index (0-5). */
export const PCI_CONFIG_SPACE = 255;
/** DeviceChannel `space` for the virtio-mmio register window. */
export const MMIO_SPACE = 0;
/** Most bytes one DeviceChannel access carries. */
const CHUNK = 8;

function forward(
  channel: DeviceChannel,
  write: boolean,
  space: number,
  offset: number,
  data: Uint8Array,
  timeoutMs: number,
): void {
  for (let at = 0; at < data.length; at += CHUNK) {
    const part = data.subarray(at, Math.min(data.length, at + CHUNK));
    channel.call({ write, space, offset: offset + at, data: part }, timeoutMs);
  }
}

/**
 * A PCI function whose registers live in another thread (the device worker
 * that owns the virtio-pci transport): every config-space and BAR access is
 * forwarded through a {@link DeviceChannel} and blocks until served. What a
 * vCPU worker's BAR handler uses; also a `PciFunction` for the virtio driver
 * simulator's `PciDriverTransport`. Accesses over 8 bytes are split.
 */
export class ChannelPciFunction implements PciFunction {
  readonly channel: DeviceChannel;
  readonly timeoutMs: number;

  constructor(channel: DeviceChannel, timeoutMs = 5000) {
    this.channel = channel;
    this.timeoutMs = timeoutMs;
  }

  readConfig(offset: number, data: Uint8Array): void {
    forward(this.channel, false, PCI_CONFIG_SPACE, offset, data, this.timeoutMs);
  }
  writeConfig(offset: number, data: Uint8Array): void {
    forward(this.channel, true, PCI_CONFIG_SPACE, offset, data, this.timeoutMs);
  }
  readBar(bar: number, offset: number, data: Uint8Array): void {
    forward(this.channel, false, bar, offset, data, this.timeoutMs);
  }
  writeBar(bar: number, offset: number, data: Uint8Array): void {
    forward(this.channel, true, bar, offset, data, this.timeoutMs);
  }
  /** machine-x86's PciDeviceHandler shape: BAR reads. */
  read(bar: number, offset: number, data: Uint8Array): void {
    this.readBar(bar, offset, data);
  }
  /** machine-x86's PciDeviceHandler shape: BAR writes. */
  write(bar: number, offset: number, data: Uint8Array): void {
    this.writeBar(bar, offset, data);
  }
}

/** A virtio-mmio register window served by another thread through a {@link DeviceChannel}. */
export class ChannelMmioWindow implements MmioWindow {
  readonly channel: DeviceChannel;
  readonly timeoutMs: number;

  constructor(channel: DeviceChannel, timeoutMs = 5000) {
    this.channel = channel;
    this.timeoutMs = timeoutMs;
  }

  read(offset: number, data: Uint8Array): void {
    forward(this.channel, false, MMIO_SPACE, offset, data, this.timeoutMs);
  }
  write(offset: number, data: Uint8Array): void {
    forward(this.channel, true, MMIO_SPACE, offset, data, this.timeoutMs);
  }
}
