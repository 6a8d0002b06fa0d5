export { AccelerationError, accelerationProbe, checkAcceleration } from "./accel.js";
export {
  bitsFor,
  buildCpuid,
  CpuidBit,
  type CpuTopology,
  type CpuVendor,
  cpuVendor,
  findCpuid,
} from "./arch/cpuid.js";
export { classifyHalt, isResetState } from "./arch/halt.js";
export { ApicDeliveryMode, ApicReg, lvtDeliveryMode, withPcLints } from "./arch/lapic.js";
export { bootMsrs, MISC_ENABLE_FAST_STRING, Msr } from "./arch/msrs.js";
export { FPU_FCW, FPU_MXCSR, setupVcpu, type VcpuBootState } from "./arch/vcpu-setup.js";
export {
  BOOT_PARAMS_SIZE,
  BootError,
  BootParams,
  type BootParamsOptions,
  buildBootParams,
  encodeCmdline,
  type InitrdPlacement,
  kernelEnd,
  placeInitrd,
  readE820,
  TYPE_OF_LOADER_UNDEFINED,
} from "./boot/boot-params.js";
export {
  type BzImage,
  BzImageError,
  Hdr,
  LoadFlags,
  MIN_BOOT_PROTOCOL,
  parseBzImage,
  STARTUP_64_OFFSET,
  XLoadFlags,
} from "./boot/bzimage.js";
export { buildCmdline, DEFAULT_CMDLINE, DEFAULT_CMDLINE_PARAMS } from "./boot/cmdline.js";
export { buildE820, E820_MAX_ENTRIES, type E820Entry, E820Type } from "./boot/e820.js";
export * as Layout from "./boot/layout.js";
export { bootRegs, buildGdt, Cr0, Cr4, Efer, gdtEntry, longModeSregs, Selector } from "./boot/long-mode.js";
export {
  buildMpTable,
  MP_MAX_CPUS,
  type MpPciIrq,
  type MpTable,
  type MpTableOptions,
  mpTableSize,
} from "./boot/mptable.js";
export { buildIdentityPageTables, type PageTables, translate } from "./boot/page-tables.js";
export { allHalted, HaltStatus } from "./control.js";
export { Bus, type BusDevice } from "./devices/bus.js";
export { Cmos, CmosReg, type CmosState, fromBcd, toBcd } from "./devices/cmos.js";
export {
  CTRL_ALT_DEL_SET1,
  CTRL_ALT_DEL_SET2,
  I8042,
  I8042Cmd,
  type I8042Options,
  type I8042State,
} from "./devices/i8042.js";
export {
  buildConfigSpace,
  liveBars,
  type PciBarAssignment,
  type PciBarKind,
  type PciBarSpec,
  PciBus,
  type PciCapabilitySpec,
  type PciConfigHandler,
  PciConfigPorts,
  PciConfigSpaces,
  type PciDeviceInfo,
  type PciDeviceModule,
  type PciDeviceSpec,
  PciReg,
} from "./devices/pci.js";
export { COM1, Serial, type SerialOptions, type SerialState, UartReg } from "./devices/serial.js";
export { ByteRing, SharedMutex } from "./devices/shared.js";
export { defaultIrqchipRoutes, FIRST_MSI_GSI, GsiRouter, type GsiRoutingSink } from "./irq-routing.js";
export {
  type BootLayout,
  createMachine,
  MACHINE_STARTUP_CHANNEL,
  Machine,
  type MachineConsole,
  type MachineDeviceContext,
  type MachineExit,
  type MachineExitReason,
  type MachineOptions,
  type MachinePciDevice,
  type MachinePciDeviceFactory,
  type MachineStartupEvent,
  type MachineStartupPhase,
  type PowerOffOptions,
} from "./machine.js";
export type {
  DeviceStatsReport,
  DeviceThreadStats,
  DeviceTuning,
  IoPriority,
  MachineDeviceControl,
  MachineState,
  MachineStats,
  RateLimit,
  VcpuStats,
} from "./run-control.js";
export type {
  CreatePciDevice,
  PciDeviceHandler,
  PciDeviceWorkerContext,
} from "./vcpu-handler.js";
