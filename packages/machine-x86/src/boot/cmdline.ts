// The kernel command line the machine passes unless told otherwise.

/**
 * What Linux needs on this machine, each for a reason:
 * - `console=ttyS0`, `earlyprintk=serial`: the only console is the 8250 at 0x3f8.
 * - `reboot=k`: reboot through the i8042 reset line, which ends the VM (there is no ACPI).
 * - `panic=1`: a panic reboots after a second instead of hanging; the machine reports it as a crash.
 * - `pci=conf1`: configuration mechanism 1 (0xcf8/0xcfc) without BIOS probing.
 * - `acpi=off`: there are no ACPI tables (the MP table describes the CPUs and IOAPIC);
 *   saves the RSDP scan and its "A valid RSDP was not found" error.
 * - `i8042.*`: the i8042 is a stub; don't look for an AUX port, a multiplexer or PnP
 *   entries, and don't talk to the keyboard (no probe timeouts).
 */
export const DEFAULT_CMDLINE_PARAMS: readonly string[] = [
  "console=ttyS0",
  "earlyprintk=serial",
  "reboot=k",
  "panic=1",
  "pci=conf1",
  "acpi=off",
  "i8042.noaux",
  "i8042.nomux",
  "i8042.nopnp",
  "i8042.dumbkbd",
];

export const DEFAULT_CMDLINE = DEFAULT_CMDLINE_PARAMS.join(" ");

/** The defaults (unless `defaults` is false) followed by the user's parameters, which win where the kernel lets later ones override. */
export function buildCmdline(user: string | undefined, defaults = true): string {
  const parts: string[] = [];
  if (defaults) parts.push(DEFAULT_CMDLINE);
  const u = user?.trim();
  if (u) parts.push(u);
  return parts.join(" ");
}
