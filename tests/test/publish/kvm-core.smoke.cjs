// @tskvm/kvm-core: an eventfd through the addon; with /dev/kvm, a VM that runs
// three real-mode instructions (out 0x10 then hlt); without it, the clear KvmError.
const assert = require("node:assert/strict");
const { existsSync } = require("node:fs");

module.exports = async function smoke(load) {
  const { EventFd, Kvm, KvmError } = load["@tskvm/kvm-core"];
  const efd = EventFd.create({ nonBlocking: true });
  efd.write(5);
  assert.equal(efd.read(), 5n);
  efd.close();

  if (!existsSync("/dev/kvm")) {
    assert.throws(
      () => Kvm.open(),
      (e) => e instanceof KvmError && e.code === "ENOENT" && /no KVM/.test(e.hint),
    );
    return "no /dev/kvm here: Kvm.open() throws KvmError ENOENT with its hint";
  }
  const kvm = Kvm.open();
  assert.equal(kvm.apiVersion(), 12);
  const vm = kvm.createVm();
  vm.addMemory({ guestAddress: 0, size: 1 << 20 });
  // mov al, 0x42; out 0x10, al; hlt
  vm.memory.write(0x1000, Uint8Array.of(0xb0, 0x42, 0xe6, 0x10, 0xf4));
  const vcpu = vm.createVcpu(0);
  const sregs = vcpu.getSregs();
  vcpu.setSregs({ ...sregs, cs: { ...sregs.cs, base: 0n, selector: 0 } });
  vcpu.setRegs({ ...vcpu.getRegs(), rip: 0x1000n, rflags: 2n });
  const exit = vcpu.run();
  assert.equal(exit.reason, "io");
  assert.equal(exit.port, 0x10);
  assert.equal(exit.data[0], 0x42);
  assert.equal(vcpu.run().reason, "hlt");
  vm.close();
  kvm.close();
  return "/dev/kvm opened; a guest wrote 0x42 to port 0x10 and halted";
};
