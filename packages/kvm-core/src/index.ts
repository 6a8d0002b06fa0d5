export { type DeviceAccess, DeviceChannel, type DeviceChannelDescriptor } from "./device-channel.js";
export { errnoName, KvmError } from "./errors.js";
export { EventFd, pollReadable } from "./eventfd.js";
export {
  Cap,
  ExitReason,
  Ioctl,
  type IoctlName,
  KVM_API_VERSION,
} from "./ioctls.js";
export { Kvm } from "./kvm.js";
export {
  GuestMemory,
  type GuestMemoryDescriptor,
  GuestMemoryError,
  GuestRegion,
  type GuestRegionDescriptor,
  PAGE_SIZE,
  WINDOW_SIZE,
} from "./memory.js";
export { PollSet } from "./poll-set.js";
export {
  type AccelerationProbe,
  HARDWARE_SPEED_THRESHOLD,
  type ProbeOptions,
  probeAcceleration,
} from "./probe.js";
export { type KvmStatDescriptor, KvmStatsReader, StatsType, StatsUnit } from "./stats.js";
export {
  type ClockData,
  ClockFlag,
  CPUID_FLAG_SIGNIFICANT_INDEX,
  type CpuidEntry,
  type DescriptorTable,
  type Fpu,
  MpState,
  type MsrEntry,
  type Regs,
  type Segment,
  type Sregs,
} from "./structs.js";
export {
  currentThreadId,
  decodeIoPriority,
  encodeIoPriority,
  getThreadIoPriority,
  getThreadNice,
  type IoPriority,
  setCurrentThreadName,
  setThreadIoPriority,
  setThreadNice,
  THREAD_NAME_MAX,
  type ThreadIoPriority,
} from "./thread.js";
export { Vcpu, type VcpuDescriptor, type VcpuExit } from "./vcpu.js";
export {
  EXIT_COUNTER_NAMES,
  type ExitAction,
  type ExitHandler,
  type ExitHandlerFactory,
  PreparedVcpuThread,
  VcpuThread,
  type VcpuThreadOptions,
  type VcpuThreadResult,
  type VcpuWorkerContext,
} from "./vcpu-thread.js";
export { type GsiRoute, type IoeventfdOptions, type MemoryRegionOptions, type MsiMessage, Vm } from "./vm.js";
