// sys(): how a native call's errno becomes a KvmError, and which calls are made again after EINTR.
import { constants } from "node:os";
import { describe, expect, it } from "vitest";
import { sys } from "../dist/errors.js";
import { KvmError } from "../dist/index.js";

const EINTR = constants.errno.EINTR;
const errno = (n: number) => Object.assign(new Error(`errno ${n}`), { errno: n });

/** A call that fails with `code` `times` times, then returns 7; counts its calls. */
function flaky(code: number, times: number) {
  const f = () => {
    f.calls++;
    if (f.calls <= times) throw errno(code);
    return 7;
  };
  f.calls = 0;
  return f;
}

describe("sys", () => {
  it("makes a KVM ioctl interrupted by a signal again (a profiler's SIGPROF during KVM_CREATE_VM)", () => {
    const call = flaky(EINTR, 3);
    expect(sys("KVM_CREATE_VM", call)).toBe(7);
    expect(call.calls).toBe(4);
  });

  it("reports EINTR of KVM_RUN (the vCPU kick), close, poll and read at once", () => {
    for (const op of ["KVM_RUN", "close", "poll", "eventfd read"]) {
      const call = flaky(EINTR, 1);
      expect(() => sys(op, call)).toThrow(KvmError);
      expect(call.calls).toBe(1);
    }
  });

  it("reports other errors at once, named after the operation", () => {
    const call = flaky(constants.errno.EBADF, 1);
    expect(() => sys("KVM_CREATE_VCPU", call)).toThrow(/KVM_CREATE_VCPU failed with EBADF/);
    expect(call.calls).toBe(1);
  });

  it("gives up on an ioctl that signals keep interrupting, and says EINTR", () => {
    const call = flaky(EINTR, Number.POSITIVE_INFINITY);
    expect(() => sys("KVM_SET_MSRS", call)).toThrow(/KVM_SET_MSRS failed with EINTR/);
    expect(call.calls).toBe(1000);
  });
});
