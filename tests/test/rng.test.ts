// `tskvm run --rng` on real KVM: a tiny hand-made guest (../fixtures/hostile/guest.mjs)
// drives the virtio-pci rng device as the CLI wires it (on the shared worker for slow
// devices) and reads random bytes from it (../fixtures/rng/scenarios.mjs). Host or
// sandbox: see ../src/tiny-guest-suite.ts.
import { scenarios } from "../fixtures/rng/scenarios.mjs";
import { tinyGuestSuite } from "../src/tiny-guest-suite.js";

tinyGuestSuite(
  "tskvm run --rng: a tiny guest reads the virtio-rng device",
  new URL("../fixtures/rng/scenarios.mjs", import.meta.url),
  Object.keys(scenarios),
);
