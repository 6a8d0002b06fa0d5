// A hostile guest on real KVM: a tiny hand-made guest drives the virtio-pci blk device
// as `tskvm run -d` wires it with descriptors, requests and register writes that have
// killed or bloated the VMM (issue #12). Host or sandbox: see ../src/tiny-guest-suite.ts.
import { scenarios } from "../fixtures/hostile/scenarios.mjs";
import { tinyGuestSuite } from "../src/tiny-guest-suite.js";

tinyGuestSuite(
  "hostile guest against the virtio-pci blk device",
  new URL("../fixtures/hostile/scenarios.mjs", import.meta.url),
  Object.keys(scenarios),
);
