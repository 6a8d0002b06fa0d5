// An ESM TypeScript consumer (module nodenext): every public entry's types resolve
// through import — strict mode fails on a module without types.
import { main } from "@tskvm/cli";
import type { DiskImage } from "@tskvm/disk-image";
import { writeCpioNewc } from "@tskvm/guest-kit";
import { Kvm } from "@tskvm/kvm-core";
import { buildCmdline } from "@tskvm/machine-x86";
import { VirtioPciTransport } from "@tskvm/virtio";
import { VirtioDriverSimulator } from "@tskvm/virtio/testing";
import { VirtioBlkDevice } from "@tskvm/virtio-blk";
import { VirtioConsoleDevice } from "@tskvm/virtio-console";
import { VirtioRngDevice } from "@tskvm/virtio-rng";
import { startDeviceWorker } from "@tskvm/virtio-worker";
import { createPciDevice } from "@tskvm/virtio-worker/pci-handler";

const open: (path?: string) => Kvm = Kvm.open;
const image: DiskImage | undefined = undefined;

export const used = [
  open,
  image,
  main,
  writeCpioNewc,
  buildCmdline,
  VirtioPciTransport,
  VirtioDriverSimulator,
  VirtioBlkDevice,
  VirtioConsoleDevice,
  VirtioRngDevice,
  startDeviceWorker,
  createPciDevice,
];
