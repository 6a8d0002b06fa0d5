// A CommonJS TypeScript consumer (module nodenext): every public entry's types
// resolve through require() — strict mode fails on a module without types.
import cli = require("@tskvm/cli");
import diskImage = require("@tskvm/disk-image");
import guestKit = require("@tskvm/guest-kit");
import kvmCore = require("@tskvm/kvm-core");
import machine = require("@tskvm/machine-x86");
import virtio = require("@tskvm/virtio");
import testing = require("@tskvm/virtio/testing");
import blk = require("@tskvm/virtio-blk");
import virtioConsole = require("@tskvm/virtio-console");
import rng = require("@tskvm/virtio-rng");
import worker = require("@tskvm/virtio-worker");
import pciHandler = require("@tskvm/virtio-worker/pci-handler");

const open: (path?: string) => kvmCore.Kvm = kvmCore.Kvm.open;
const image: diskImage.DiskImage | undefined = undefined;

export const used = [
  open,
  image,
  cli.main,
  guestKit.writeCpioNewc,
  machine.buildCmdline,
  virtio.VirtioPciTransport,
  testing.VirtioDriverSimulator,
  blk.VirtioBlkDevice,
  virtioConsole.VirtioConsoleDevice,
  rng.VirtioRngDevice,
  worker.startDeviceWorker,
  pciHandler.createPciDevice,
];
