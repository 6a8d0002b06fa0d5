/** Device status bits (virtio 1.2 §2.1). */
export const DeviceStatus = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  DEVICE_NEEDS_RESET: 64,
  FAILED: 128,
} as const;

/** Reserved feature bits (virtio 1.2 §6), as bit numbers. */
export const FeatureBit = {
  INDIRECT_DESC: 28,
  EVENT_IDX: 29,
  VERSION_1: 32,
  ACCESS_PLATFORM: 33,
  RING_PACKED: 34,
  IN_ORDER: 35,
  ORDER_PLATFORM: 36,
  SR_IOV: 37,
  NOTIFICATION_DATA: 38,
  NOTIF_CONFIG_DATA: 39,
  RING_RESET: 40,
} as const;

/** The feature mask for bit number `bit`. */
export function feature(bit: number): bigint {
  return 1n << BigInt(bit);
}

export const VIRTIO_F_INDIRECT_DESC = feature(FeatureBit.INDIRECT_DESC);
export const VIRTIO_F_EVENT_IDX = feature(FeatureBit.EVENT_IDX);
export const VIRTIO_F_VERSION_1 = feature(FeatureBit.VERSION_1);

/** Split virtqueue descriptor flags (§2.7.5). */
export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
/** Available ring flag: the driver does not want used-buffer notifications (§2.7.7). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** Used ring flag: the device does not want available-buffer notifications (§2.7.10). */
export const VIRTQ_USED_F_NO_NOTIFY = 1;

/** Largest split virtqueue size (§2.7). */
export const MAX_QUEUE_SIZE = 32768;
/** "No MSI-X vector" (§4.1.4.3, §4.1.5.1.2). */
export const NO_VECTOR = 0xffff;

/** ISR / InterruptStatus bits (§4.1.4.5, §4.2.2). */
export const INTERRUPT_QUEUE = 1;
export const INTERRUPT_CONFIG = 2;

/** Device IDs (§5). */
export const VirtioDeviceId = {
  NET: 1,
  BLOCK: 2,
  CONSOLE: 3,
  ENTROPY: 4,
  BALLOON: 5,
  SCSI: 8,
  P9: 9,
  GPU: 16,
  INPUT: 18,
  VSOCK: 19,
  CRYPTO: 20,
  FS: 26,
} as const;
