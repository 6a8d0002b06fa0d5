import type { DescriptorChain } from "./chain.js";
import { VirtqueueError } from "./errors.js";
import type { Queue } from "./queue.js";

export interface ProcessResult {
  /** Chains handed to the handler and returned to the driver. */
  completed: number;
  /** Malformed chains (or requests the handler rejected with a non-fatal VirtqueueError), returned with length 0. */
  failed: VirtqueueError[];
  /** The error that broke the queue, if any: mark the device DEVICE_NEEDS_RESET. */
  fatal: VirtqueueError | undefined;
  /** Whether the driver asked for a used-buffer notification (already sent when `signal` was given). */
  notified: boolean;
}

/**
 * The usual device loop over one queue: takes every available chain with
 * {@link Queue.popOrEnableNotification} (notifications suppressed while it
 * works, re-enabled and the ring re-checked once it is empty, so no chain is
 * left behind without a notification), gives each to `handle` (which returns
 * the number of bytes written into the chain), puts it in the used ring, and
 * finally asks {@link Queue.needsNotification} and calls `signal` if needed.
 * Malformed chains are failed (used length 0); a fatal error stops the loop
 * and is returned. Other exceptions from `handle` propagate (they are device
 * bugs, not guest mistakes).
 */
export function processQueue(
  queue: Queue,
  handle: (chain: DescriptorChain) => number,
  signal?: () => void,
): ProcessResult {
  const result: ProcessResult = { completed: 0, failed: [], fatal: undefined, notified: false };
  for (;;) {
    let chain: DescriptorChain | null;
    try {
      chain = queue.popOrEnableNotification();
    } catch (e) {
      if (!(e instanceof VirtqueueError)) throw e;
      if (e.fatal || e.head === undefined) {
        result.fatal = e;
        break;
      }
      result.failed.push(e);
      queue.addUsed(e.head, 0);
      continue;
    }
    if (!chain) break;
    let len: number;
    try {
      len = handle(chain);
    } catch (e) {
      if (!(e instanceof VirtqueueError) || e.fatal) {
        // A device bug: do not leave the driver silenced on the way out.
        try {
          queue.enableNotification();
        } catch {
          // the queue is broken; the original error says more
        }
        throw e;
      }
      result.failed.push(e);
      queue.addUsed(chain.head, 0);
      continue;
    }
    queue.addUsed(chain.head, len);
    result.completed++;
  }
  if (queue.needsNotification()) {
    result.notified = true;
    signal?.();
  }
  return result;
}
