import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { afterAll, describe, expect, it } from "vitest";
import {
  formatModulesDep,
  KernelModuleTree,
  modinfoOfImage,
  moduleName,
  parseModulesDep,
  readModinfo,
  resolveModuleOrder,
} from "../src/index.js";

// A slice of a real Debian 6.1 modules.dep (depmod lists all transitive deps).
const MODULES_DEP = `kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/crypto/crc32c_generic.ko.xz:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
`;

function before(order: string[], a: string, b: string) {
  expect(order.indexOf(a), `${a} in ${order.join(" ")}`).toBeGreaterThanOrEqual(0);
  expect(order.indexOf(a), `${a} before ${b} in ${order.join(" ")}`).toBeLessThan(order.indexOf(b));
}

/** A minimal little-endian ELF64 relocatable with a .modinfo section, like a .ko. */
function fakeModule(modinfo: string[]): Buffer {
  const info = Buffer.from(`${modinfo.join("\0")}\0`);
  const shstrtab = Buffer.from("\0.modinfo\0.shstrtab\0");
  const infoOff = 64;
  const strOff = infoOff + info.length;
  const shoff = Math.ceil((strOff + shstrtab.length) / 8) * 8;
  const buf = Buffer.alloc(shoff + 3 * 64);
  buf.writeUInt32BE(0x7f454c46, 0);
  buf[4] = 2; // ELFCLASS64
  buf[5] = 1; // little-endian
  buf[6] = 1;
  buf.writeUInt16LE(1, 16); // ET_REL
  buf.writeUInt16LE(62, 18); // x86-64
  buf.writeBigUInt64LE(BigInt(shoff), 0x28);
  buf.writeUInt16LE(64, 0x34);
  buf.writeUInt16LE(64, 0x3a);
  buf.writeUInt16LE(3, 0x3c);
  buf.writeUInt16LE(2, 0x3e);
  info.copy(buf, infoOff);
  shstrtab.copy(buf, strOff);
  const section = (i: number, name: number, type: number, off: number, size: number) => {
    const o = shoff + i * 64;
    buf.writeUInt32LE(name, o);
    buf.writeUInt32LE(type, o + 4);
    buf.writeBigUInt64LE(BigInt(off), o + 24);
    buf.writeBigUInt64LE(BigInt(size), o + 32);
  };
  section(1, 1, 1, infoOff, info.length); // .modinfo, PROGBITS
  section(2, 10, 3, strOff, shstrtab.length); // .shstrtab, STRTAB
  return buf;
}

const temps: string[] = [];
afterAll(() => {
  for (const t of temps) rmSync(t, { recursive: true, force: true });
});

describe("module names", () => {
  it("strips directories and suffixes and folds dashes", () => {
    expect(moduleName("kernel/fs/ext4/ext4.ko")).toBe("ext4");
    expect(moduleName("kernel/arch/x86/crypto/crc32c-intel.ko.xz")).toBe("crc32c_intel");
    expect(moduleName("virtio-pci.ko.zst")).toBe("virtio_pci");
    expect(moduleName("virtio_blk")).toBe("virtio_blk");
  });
});

describe("modules.dep resolution", () => {
  const graph = parseModulesDep(MODULES_DEP);

  it("parses paths and dependency names", () => {
    expect(graph.get("ext4")).toEqual({
      name: "ext4",
      path: "kernel/fs/ext4/ext4.ko",
      depends: ["crc16", "mbcache", "jbd2"],
      softPre: [],
    });
    expect(graph.get("crc32c_intel")?.path).toBe("kernel/arch/x86/crypto/crc32c-intel.ko");
    expect(graph.get("crc32c_generic")?.path).toBe("kernel/crypto/crc32c_generic.ko.xz");
    expect(graph.get("jbd2")?.depends).toEqual([]);
  });

  it("orders every module after its dependencies, each once", () => {
    const o = resolveModuleOrder(graph, ["virtio_blk", "virtio_pci", "ext4"]).map((m) => m.name);
    expect(new Set(o).size).toBe(o.length);
    expect([...o].sort()).toEqual(
      [
        "virtio_ring",
        "virtio",
        "virtio_blk",
        "virtio_pci_legacy_dev",
        "virtio_pci_modern_dev",
        "virtio_pci",
        "crc16",
        "mbcache",
        "jbd2",
        "ext4",
      ].sort(),
    );
    before(o, "virtio_ring", "virtio");
    before(o, "virtio", "virtio_blk");
    before(o, "virtio", "virtio_pci");
    before(o, "virtio_pci_legacy_dev", "virtio_pci");
    before(o, "virtio_pci_modern_dev", "virtio_pci");
    before(o, "jbd2", "ext4");
    before(o, "mbcache", "ext4");
    before(o, "crc16", "ext4");
  });

  it("accepts dashed names and skips built-in modules", () => {
    const order = resolveModuleOrder(graph, ["virtio-blk"], new Set(["virtio_ring"])).map((m) => m.name);
    expect(order).toEqual(["virtio", "virtio_blk"]);
  });

  it("loads soft pre-dependencies first, and ignores missing ones", () => {
    const g = new Map(graph);
    g.set("ext4", { ...g.get("ext4")!, softPre: ["crc32c_generic", "not_there"] });
    const order = resolveModuleOrder(g, ["ext4"]).map((m) => m.name);
    before(order, "crc32c_generic", "ext4");
    expect(order).not.toContain("not_there");
  });

  it("reports missing modules with who needs them, and cycles", () => {
    expect(() => resolveModuleOrder(graph, ["no_such_module"])).toThrow(/no_such_module not found/);
    expect(() => resolveModuleOrder(graph, ["virtio_net"])).toThrow(
      /net_failover not found.*needed by virtio_net/,
    );
    const cyclic = parseModulesDep("a.ko: b.ko\nb.ko: c.ko\nc.ko: a.ko\n");
    expect(() => resolveModuleOrder(cyclic, ["a"])).toThrow(/cycle a -> b -> c -> a/);
  });

  it("rejects malformed lines", () => {
    expect(() => parseModulesDep("no colon here\n")).toThrow(/malformed/);
  });

  it("writes a modules.dep back that parses to the same graph", () => {
    const order = resolveModuleOrder(graph, ["virtio_pci", "ext4"]);
    const text = formatModulesDep(order);
    const again = parseModulesDep(text);
    for (const m of order) expect(new Set(again.get(m.name)!.depends)).toEqual(new Set(m.depends));
    expect(text).toContain("kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n");
  });
});

describe(".modinfo and kernel trees", () => {
  it("reads depends, softdep and aliases out of an ELF module", () => {
    const image = fakeModule([
      "license=GPL",
      "softdep=pre: crypto-crc32c",
      "depends=jbd2,mbcache",
      "name=ext4",
    ]);
    expect(modinfoOfImage(image)).toEqual([
      ["license", "GPL"],
      ["softdep", "pre: crypto-crc32c"],
      ["depends", "jbd2,mbcache"],
      ["name", "ext4"],
    ]);
    expect(() => modinfoOfImage(Buffer.from("not an elf file at all, definitely not".repeat(2)))).toThrow(
      /not an ELF/,
    );
  });

  it("resolves a tree without modules.dep from .modinfo, soft deps through aliases", () => {
    const root = mkdtempSync(join(tmpdir(), "tskvm-modtree-"));
    temps.push(root);
    const put = (rel: string, modinfo: string[], gz = false) => {
      mkdirSync(join(root, rel, ".."), { recursive: true });
      const image = fakeModule(modinfo);
      writeFileSync(join(root, rel), gz ? gzipSync(image) : image);
    };
    put("kernel/fs/ext4/ext4.ko", ["softdep=pre: crypto-crc32c", "depends=jbd2,crc16", "name=ext4"]);
    put("kernel/fs/jbd2/jbd2.ko", ["softdep=pre: crypto-crc32c", "depends=", "name=jbd2"]);
    put("kernel/lib/crc16.ko.gz", ["depends=", "name=crc16"], true);
    put("kernel/crypto/crc32c_generic.ko", [
      "alias=crypto-crc32c",
      "alias=crc32c",
      "depends=",
      "name=crc32c_generic",
    ]);
    put("kernel/arch/x86/crypto/crc32c-intel.ko", ["alias=crypto-crc32c", "depends=", "name=crc32c_intel"]);
    writeFileSync(join(root, "modules.builtin"), "kernel/drivers/virtio/virtio.ko\n");

    expect(readModinfo(join(root, "kernel/lib/crc16.ko.gz"))).toEqual([
      ["depends", ""],
      ["name", "crc16"],
    ]);
    const tree = new KernelModuleTree(root);
    expect(tree.files.get("crc32c_intel")).toBe("kernel/arch/x86/crypto/crc32c-intel.ko");
    expect(tree.resolveName("crypto-crc32c")).toBe("crc32c_generic");
    const order = tree.resolve(["ext4", "virtio"]).map((m) => m.name);
    expect(order).toEqual(["crc32c_generic", "jbd2", "crc16", "ext4"]);
    expect(() => tree.resolve(["virtio_blk"])).toThrow(/virtio_blk not found/);
  });
});
