// Exit 0 when this host's KVM runs guest code fast enough to boot Linux; says what it found.
import { probeAcceleration } from "@tskvm/kvm-core";

const p = probeAcceleration();
process.stderr.write(`dev.sh: ${p.summary}\n`);
process.exit(p.hardwareSpeed ? 0 : 1);
