// The machine's GSI routing table. KVM_SET_GSI_ROUTING replaces the whole table,
// so one owner keeps it: KVM's default irqchip routes (what a VM has before anyone
// sets a table) plus the MSI routes devices ask for, one GSI per MSI-X vector.

import type { GsiRoute, MsiMessage } from "@tskvm/kvm-core";

/** GSIs 0-23 are the IOAPIC's pins (0-15 also the PICs'); MSI routes start above. */
export const FIRST_MSI_GSI = 24;
/** KVM's limit on routing entries (KVM_MAX_IRQ_ROUTES is 4096 on x86). */
const MAX_ROUTES = 4096;
const IOAPIC_PINS = 24;

/**
 * KVM's default routes for a VM with an in-kernel irqchip (virt/kvm/irqchip.c,
 * arch/x86/kvm/irq_comm.c `default_routing`): GSI n → IOAPIC pin n, and for
 * n < 16 also PIC pin n % 8 of the master (n < 8) or the slave.
 */
export function defaultIrqchipRoutes(): GsiRoute[] {
  const routes: GsiRoute[] = [];
  for (let gsi = 0; gsi < IOAPIC_PINS; gsi++) {
    routes.push({ gsi, type: "irqchip", chip: "ioapic", pin: gsi });
    if (gsi < 16)
      routes.push({ gsi, type: "irqchip", chip: gsi < 8 ? "pic-master" : "pic-slave", pin: gsi % 8 });
  }
  return routes;
}

/** Where the table goes: `Vm.setGsiRouting` (a function so tests need no KVM). */
export type GsiRoutingSink = (routes: readonly GsiRoute[]) => void;

/**
 * Hands out GSIs for MSI vectors and keeps KVM's table in step: each change
 * re-sends the whole table once a sink is attached (the VM exists).
 */
export class GsiRouter {
  readonly #msi = new Map<number, MsiMessage | null>();
  #next = FIRST_MSI_GSI;
  readonly #free: number[] = [];
  #sink: GsiRoutingSink | undefined;

  /** A GSI for one MSI vector, routed nowhere until {@link setMsi}. */
  allocate(): number {
    const gsi = this.#free.pop() ?? this.#next++;
    if (gsi >= MAX_ROUTES) throw new RangeError(`out of GSIs: KVM routes at most ${MAX_ROUTES}`);
    this.#msi.set(gsi, null);
    return gsi;
  }

  /** Gives the GSI back (its route is removed). */
  release(gsi: number): void {
    if (!this.#msi.delete(gsi)) return;
    this.#free.push(gsi);
    this.#commit();
  }

  /** Points an allocated GSI at an MSI message, or removes its route (null: masked, MSI-X off). */
  setMsi(gsi: number, message: MsiMessage | null): void {
    if (!this.#msi.has(gsi)) throw new RangeError(`GSI ${gsi} was not allocated by this router`);
    const old = this.#msi.get(gsi);
    if (old === message || (old && message && old.address === message.address && old.data === message.data))
      return;
    this.#msi.set(gsi, message);
    this.#commit();
  }

  /** The whole table as KVM gets it. */
  routes(): GsiRoute[] {
    const routes = defaultIrqchipRoutes();
    for (const [gsi, m] of [...this.#msi].sort((a, b) => a[0] - b[0]))
      if (m) routes.push({ gsi, type: "msi", address: m.address, data: m.data });
    return routes;
  }

  /** Starts sending the table to KVM (now, and after every change); undefined stops. */
  attach(sink: GsiRoutingSink | undefined): void {
    this.#sink = sink;
    this.#commit();
  }

  #commit(): void {
    // Until a device asks for a GSI, KVM's own default table is the same: leave it alone.
    if (this.#next === FIRST_MSI_GSI) return;
    this.#sink?.(this.routes());
  }
}
