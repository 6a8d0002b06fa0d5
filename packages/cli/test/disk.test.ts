import { describe, expect, it } from "vitest";
import { main, parseDiskSpec, UsageError } from "../src/index.js";

describe("--disk specs", () => {
  it("parses kvmtool's PATH[,ro] and tskvm's options", () => {
    expect(parseDiskSpec("/img/a.raw")).toEqual({
      path: "/img/a.raw",
      readOnly: false,
      snapshot: false,
      direct: false,
    });
    expect(parseDiskSpec("a.img,ro")).toMatchObject({ path: "a.img", readOnly: true });
    expect(parseDiskSpec("a.qcow2,snapshot,format=qcow2,serial=disk-1")).toMatchObject({
      snapshot: true,
      format: "qcow2",
      serial: "disk-1",
    });
    expect(parseDiskSpec("a.img,direct")).toMatchObject({ direct: true });
  });

  it("refuses unknown options, bad values and an empty path", () => {
    for (const bad of [
      "",
      ",ro",
      "a.img,rw",
      "a.img,format=vmdk",
      "a.img,serial=012345678901234567890",
      "a,ro=1",
    ])
      expect(() => parseDiskSpec(bad)).toThrow(UsageError);
    expect(() => parseDiskSpec("a.img,frob")).toThrow(/unknown option 'frob'/);
  });

  it("a bad --disk is a usage error (exit 2) before anything boots", async () => {
    let stderr = "";
    const status = await main(["run", "-k", "/nonexistent", "-d", "x.img,bogus"], {
      stdout: () => {},
      stderr: (t) => (stderr += t),
    });
    expect(status).toBe(2);
    expect(stderr).toMatch(/unknown option 'bogus'/);
  });
});
