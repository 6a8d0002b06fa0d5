// A PCI device handler module for @tskvm/machine-x86 (its `handler.module`):
// each vCPU worker loads it and forwards the guest's BAR accesses to the device
// worker that owns the virtio-pci transport, through a DeviceChannel.
// `handler.data` must be `{ channel: DeviceChannelDescriptor }`.
import { DeviceChannel, type DeviceChannelDescriptor } from "@tskvm/kvm-core";
import { ChannelPciFunction } from "./channel.js";

/** What machine-x86 hands `createPciDevice` (only `data` is used). */
export interface PciHandlerContext {
  data: unknown;
}

export function createPciDevice(ctx: PciHandlerContext): ChannelPciFunction {
  const d = ctx.data as { channel?: DeviceChannelDescriptor } | undefined;
  if (!d?.channel) throw new Error("device pci handler: data.channel (a DeviceChannelDescriptor) is missing");
  return new ChannelPciFunction(DeviceChannel.fromDescriptor(d.channel));
}
