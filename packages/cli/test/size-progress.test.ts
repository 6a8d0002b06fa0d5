// One size grammar for every flag, qemu-img's way of printing sizes, and the progress line.
import type { GuestKitProgress } from "@tskvm/guest-kit";
import { describe, expect, it } from "vitest";
import { ProgressLine, progressText } from "../src/progress.js";
import { formatRate, formatSize, parseSize } from "../src/size.js";

const bytes = { name: "SIZE", unit: "B", example: "'tskvm image create disk.qcow2 10G'" } as const;
const mib = { name: "-m/--mem", unit: "M", example: "-m 512 or -m 1.5G" } as const;

describe("parseSize", () => {
  it("reads what qemu-img reads: K, M, G, T, P, E as powers of 1024, bytes without a suffix", () => {
    expect(parseSize("10G", bytes)).toBe(10 * 2 ** 30);
    expect(parseSize("512M", bytes)).toBe(512 * 2 ** 20);
    expect(parseSize("512m", bytes)).toBe(512 * 2 ** 20);
    expect(parseSize("1.5G", bytes)).toBe(1.5 * 2 ** 30);
    expect(parseSize("1.M", bytes)).toBe(2 ** 20);
    expect(parseSize("1048576", bytes)).toBe(1048576);
    expect(parseSize("0x1000", bytes)).toBe(4096);
    expect(parseSize(" 4096", bytes)).toBe(4096);
    expect(parseSize("1t", bytes)).toBe(2 ** 40);
    expect(parseSize("1P", bytes)).toBe(2 ** 50);
    expect(parseSize("2b", bytes)).toBe(2);
    // qemu-img cuts a fraction of a byte: 0.1k is 102
    expect(parseSize("0.1k", bytes)).toBe(102);
    // and lkvm's spellings with a B: 1GB, 1GiB
    expect(parseSize("1GB", bytes)).toBe(2 ** 30);
    expect(parseSize("1GiB", bytes)).toBe(2 ** 30);
  });

  it("reads a number without a suffix as MiB for -m, as lkvm does", () => {
    expect(parseSize("512", mib)).toBe(512 * 2 ** 20);
    expect(parseSize("1.5G", mib)).toBe(1536 * 2 ** 20);
    expect(parseSize("2048K", mib)).toBe(2 * 2 ** 20);
  });

  it("refuses what qemu-img refuses, naming the flag and showing an example", () => {
    for (const bad of ["", "12x", "1 G", "1e3", "-1", ".5M", "G", "1KK", "1bb"])
      expect(() => parseSize(bad, bytes), bad).toThrow(
        /^SIZE: '.*' is not a size; use a number with an optional K, M, G or T suffix \(powers of 1024, bytes without one\), e\.g\. 'tskvm image create disk\.qcow2 10G'$/,
      );
    expect(() => parseSize("1.5", bytes)).toThrow(/^SIZE: '1\.5' has a fraction of a byte; .* e\.g\./);
    expect(() => parseSize("16E", bytes)).toThrow(/is too large/);
    expect(() => parseSize("12x", mib)).toThrow(
      /^-m\/--mem: '12x' is not a size; .*MiB without one.* e\.g\. -m 512 or -m 1\.5G$/,
    );
  });
});

describe("formatSize", () => {
  it("prints as qemu-img's size_to_str: %0.3g in the unit that keeps it below 1000", () => {
    expect(formatSize(0)).toBe("0 B");
    expect(formatSize(999)).toBe("999 B");
    expect(formatSize(1000)).toBe("0.977 KiB");
    expect(formatSize(1024)).toBe("1 KiB");
    expect(formatSize(200704)).toBe("196 KiB");
    expect(formatSize(8 << 20)).toBe("8 MiB");
    expect(formatSize(1.5 * 2 ** 30)).toBe("1.5 GiB");
    expect(formatSize(10 * 2 ** 30)).toBe("10 GiB");
    expect(formatSize(123456789)).toBe("118 MiB");
    // an exact tie rounds to even, as glibc prints it: 1.125 KiB and 1.375 KiB
    expect(formatSize(1152)).toBe("1.12 KiB");
    expect(formatSize(1408)).toBe("1.38 KiB");
    // 999.5 KiB and more is still KiB (below 1000 × 1024 bytes), printed as %g does: 1e+03
    expect(formatSize(1023487)).toBe("999 KiB");
    expect(formatSize(1023488)).toBe("1e+03 KiB");
    expect(formatSize(1023999)).toBe("1e+03 KiB");
    expect(formatSize(1024000)).toBe("0.977 MiB");
    expect(formatSize(1048064)).toBe("1 MiB");
    expect(formatSize(1048576)).toBe("1 MiB");
    expect(formatSize(2 ** 60)).toBe("1 EiB");
  });

  it("gives rates per second", () => {
    expect(formatRate(3 << 20, 2000)).toBe("1.5 MiB/s");
    expect(formatRate(100, 0)).toBe("");
  });
});

const report = (over: Partial<GuestKitProgress>): GuestKitProgress => ({
  step: "download",
  name: "linux-image-6.1.0-57-amd64",
  bytes: 12 << 20,
  total: 70591024,
  elapsedMs: 2000,
  done: false,
  ...over,
});

describe("progress line", () => {
  it("says the step, bytes of the whole and the rate", () => {
    expect(progressText(report({}))).toBe(
      "tskvm: downloading linux-image-6.1.0-57-amd64  12 MiB / 67.3 MiB  6 MiB/s",
    );
    expect(progressText(report({ step: "pack", name: "initramfs", bytes: 0, elapsedMs: 0 }))).toBe(
      "tskvm: packing initramfs  0 B / 67.3 MiB",
    );
    const { total: _, ...noTotal } = report({ step: "unpack" });
    expect(progressText(noTotal)).toBe("tskvm: unpacking linux-image-6.1.0-57-amd64  12 MiB  6 MiB/s");
  });

  it("draws on a terminal only: redrawn in place, cut to its width, cleared at the end and before a message", () => {
    let out = "";
    const line = new ProgressLine({
      stdout: () => {},
      stderr: (t) => (out += t),
      stderrTerminal: { columns: 40 },
    });
    line.update(report({}));
    line.update(report({ bytes: 24 << 20 }));
    expect(out).toBe(
      `\r\x1b[K${"tskvm: downloading linux-image-6.1.0-57-amd64".slice(0, 39)}\r\x1b[K${"tskvm: downloading linux-image-6.1.0-57-amd64".slice(0, 39)}`,
    );
    out = "";
    line.log("downloaded it");
    expect(out).toBe("\r\x1b[Ktskvm: downloaded it\n");
    out = "";
    line.update(report({}));
    line.update(report({ done: true }));
    expect(out.endsWith("\r\x1b[K")).toBe(true);
    out = "";
    line.clear(); // nothing drawn: nothing to clear
    expect(out).toBe("");

    let piped = "";
    const quiet = new ProgressLine({ stdout: () => {}, stderr: (t) => (piped += t) });
    quiet.update(report({}));
    quiet.update(report({ done: true }));
    quiet.clear();
    expect(piped).toBe("");
    quiet.log("a message");
    expect(piped).toBe("tskvm: a message\n");
  });
});
