// ioctl numbers and constants from <linux/kvm.h> (x86-64), checked against the
// kernel headers by test/abi.test.ts.
const KVMIO = 0xae;
const io = (nr: number) => (KVMIO << 8) | nr;
const iow = (nr: number, size: number) => ((1 << 30) | (size << 16) | (KVMIO << 8) | nr) >>> 0;
const ior = (nr: number, size: number) => ((2 << 30) | (size << 16) | (KVMIO << 8) | nr) >>> 0;
const iowr = (nr: number, size: number) => ((3 << 30) | (size << 16) | (KVMIO << 8) | nr) >>> 0;

export const KVM_API_VERSION = 12;

/** ioctl name → number; the names appear in errors. */
export const Ioctl = {
  KVM_GET_API_VERSION: io(0x00),
  KVM_CREATE_VM: io(0x01),
  KVM_GET_MSR_INDEX_LIST: iowr(0x02, 4),
  KVM_CHECK_EXTENSION: io(0x03),
  KVM_GET_VCPU_MMAP_SIZE: io(0x04),
  KVM_GET_SUPPORTED_CPUID: iowr(0x05, 8),
  KVM_CREATE_VCPU: io(0x41),
  KVM_GET_DIRTY_LOG: iow(0x42, 16),
  KVM_SET_USER_MEMORY_REGION: iow(0x46, 32),
  KVM_SET_TSS_ADDR: io(0x47),
  KVM_SET_IDENTITY_MAP_ADDR: iow(0x48, 8),
  KVM_CREATE_IRQCHIP: io(0x60),
  KVM_IRQ_LINE: iow(0x61, 8),
  KVM_SET_GSI_ROUTING: iow(0x6a, 8),
  KVM_IRQFD: iow(0x76, 32),
  KVM_CREATE_PIT2: iow(0x77, 64),
  KVM_IOEVENTFD: iow(0x79, 64),
  KVM_SET_CLOCK: iow(0x7b, 48),
  KVM_GET_CLOCK: ior(0x7c, 48),
  KVM_SIGNAL_MSI: iow(0xa5, 32),
  KVM_GET_STATS_FD: io(0xce),
  KVM_RUN: io(0x80),
  KVM_GET_REGS: ior(0x81, 144),
  KVM_SET_REGS: iow(0x82, 144),
  KVM_GET_SREGS: ior(0x83, 312),
  KVM_SET_SREGS: iow(0x84, 312),
  KVM_GET_MSRS: iowr(0x88, 8),
  KVM_SET_MSRS: iow(0x89, 8),
  KVM_GET_FPU: ior(0x8c, 416),
  KVM_SET_FPU: iow(0x8d, 416),
  KVM_GET_LAPIC: ior(0x8e, 1024),
  KVM_SET_LAPIC: iow(0x8f, 1024),
  KVM_SET_CPUID2: iow(0x90, 8),
  KVM_GET_CPUID2: iowr(0x91, 8),
  KVM_GET_MP_STATE: ior(0x98, 4),
  KVM_SET_MP_STATE: iow(0x99, 4),
} as const;

export type IoctlName = keyof typeof Ioctl;

/** KVM_CAP_* numbers for {@link Kvm.checkExtension}. */
export const Cap = {
  IRQCHIP: 0,
  HLT: 1,
  USER_MEMORY: 3,
  SET_TSS_ADDR: 4,
  EXT_CPUID: 7,
  NR_VCPUS: 9,
  NR_MEMSLOTS: 10,
  PIT: 11,
  MP_STATE: 14,
  IRQ_ROUTING: 25,
  IRQFD: 32,
  PIT2: 33,
  IOEVENTFD: 36,
  SET_IDENTITY_MAP_ADDR: 37,
  MAX_VCPUS: 66,
  TSC_DEADLINE_TIMER: 72,
  SIGNAL_MSI: 77,
  READONLY_MEM: 81,
  IOEVENTFD_ANY_LENGTH: 122,
  MAX_VCPU_ID: 128,
  IMMEDIATE_EXIT: 136,
} as const;

export const ExitReason = {
  UNKNOWN: 0,
  EXCEPTION: 1,
  IO: 2,
  HYPERCALL: 3,
  DEBUG: 4,
  HLT: 5,
  MMIO: 6,
  IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8,
  FAIL_ENTRY: 9,
  INTR: 10,
  INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24,
} as const;

export const MemFlag = { LOG_DIRTY_PAGES: 1, READONLY: 2 } as const;
export const IoeventfdFlag = { DATAMATCH: 1, PIO: 2, DEASSIGN: 4 } as const;
export const IrqfdFlag = { DEASSIGN: 1, RESAMPLE: 2 } as const;
export const IrqRoutingType = { IRQCHIP: 1, MSI: 2 } as const;
export const IrqChip = { PIC_MASTER: 0, PIC_SLAVE: 1, IOAPIC: 2 } as const;
export const PitFlag = { SPEAKER_DUMMY: 1 } as const;

/** Offsets inside `struct kvm_run`. */
export const RunOffset = {
  immediateExit: 1,
  exitReason: 8,
  union: 32,
  ioDirection: 32,
  ioSize: 33,
  ioPort: 34,
  ioCount: 36,
  ioDataOffset: 40,
  mmioPhysAddr: 32,
  mmioData: 40,
  mmioLen: 48,
  mmioIsWrite: 52,
  failEntryReason: 32,
  failEntryCpu: 40,
  internalSuberror: 32,
  internalNdata: 36,
  internalData: 40,
  systemEventType: 32,
  systemEventNdata: 36,
  systemEventData: 40,
} as const;

// mmap / open / eventfd constants (Linux x86-64).
export const O_RDWR = 2;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 1;
export const MAP_PRIVATE = 2;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MADV_DONTFORK = 10;
export const MADV_HUGEPAGE = 14;
export const EFD_NONBLOCK = 0o4000;
export const POLLIN = 1;
