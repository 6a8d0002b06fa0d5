// Hand-made guests, wrapped as minimal bzImages so they boot through the same loader
// and long-mode entry as Linux. Assembled with GNU as; sources in the comments.

/** Bytes from a hex string. */
function hex(s: string): Uint8Array {
  return Uint8Array.from(Buffer.from(s.replace(/\s+/g, ""), "hex"));
}

/**
 * A bzImage (protocol 2.15, 64-bit entry, relocatable) whose protected-mode part is
 * 0x200 bytes of hlt followed by `code64` at startup_64.
 */
export function makeTinyBzImage(
  code64: Uint8Array,
  o: { initSize?: number; prefAddress?: number } = {},
): Uint8Array {
  const setupSects = 1;
  const kernelOffset = (setupSects + 1) * 512;
  const kernel = new Uint8Array(0x200 + code64.length).fill(0xf4);
  kernel.set(code64, 0x200);
  const syssize = Math.ceil(kernel.length / 16);
  const img = new Uint8Array(kernelOffset + syssize * 16);
  img.set(kernel, kernelOffset);
  const dv = new DataView(img.buffer);
  img[0x1f1] = setupSects;
  dv.setUint32(0x1f4, syssize, true);
  dv.setUint16(0x1fe, 0xaa55, true);
  img[0x200] = 0xeb; // jmp over the header, whose end this byte also marks
  img[0x201] = 0x6a;
  dv.setUint32(0x202, 0x53726448, true); // "HdrS"
  dv.setUint16(0x206, 0x020f, true);
  img[0x211] = 0x01; // LOADED_HIGH
  dv.setUint32(0x214, 0x100000, true);
  dv.setUint32(0x22c, 0x7fffffff, true);
  dv.setUint32(0x230, 0x200000, true);
  img[0x234] = 1; // relocatable
  dv.setUint16(0x236, 0x1, true); // XLF_KERNEL_64
  dv.setUint32(0x238, 2047, true);
  dv.setBigUint64(0x258, BigInt(o.prefAddress ?? 0x200000), true);
  dv.setUint32(0x260, o.initSize ?? 0x100000, true);
  return img;
}

/**
 * Prints "hello\n", then the command line it finds through boot_params (rsi), then
 * "\n", and halts with interrupts off (what Linux's poweroff does without ACPI).
 *
 *   mov $0x3f8, %dx; lea msg(%rip), %rbx
 * 1: movb (%rbx), %al; test %al, %al; jz 2f; out %al, %dx; inc %rbx; jmp 1b
 * 2: mov 0x228(%rsi), %ebx          # boot_params.hdr.cmd_line_ptr
 * 3: movb (%rbx), %al; test %al, %al; jz 4f; out %al, %dx; inc %rbx; jmp 3b
 * 4: mov $0x0a, %al; out %al, %dx; cli
 * 5: hlt; jmp 5b
 * msg: .asciz "hello\n"
 */
export const HELLO_GUEST = hex(
  "66baf803488d1d250000008a0384c07406ee48ffc3ebf48b9e280200008a0384c07406ee48ffc3ebf4b00aeefaf4ebfd68656c6c6f0a00",
);

/** `mov $0xfe, %al; out %al, $0x64` (pulse the i8042 reset line), then hlt forever. */
export const RESET_GUEST = hex("b0fee664f4ebfd");

/** `ud2` with an empty IDT: #UD, #GP, #DF, triple fault. */
export const TRIPLE_FAULT_GUEST = hex("0f0b");

/**
 * BSP: prints "A", copies a real-mode trampoline to 0x3000, enables its LAPIC and
 * sends INIT + SIPI (vector 3) to APIC id 1, waits for the AP's flag at 0x3100,
 * prints "C\n" and halts with interrupts off. AP (real mode, CS:IP = 0x300:0):
 * prints "B", sets the flag, halts with interrupts off.
 *
 *   mov $0x3f8, %dx; mov $'A', %al; out %al, %dx
 *   lea tramp(%rip), %rsi; mov $0x3000, %edi; mov $(tramp_end - tramp), %ecx; rep movsb
 *   mov $0xfee00000, %ebx
 *   movl $0x1ff, 0xf0(%rbx); movl $0x01000000, 0x310(%rbx)
 *   movl $0x4500, 0x300(%rbx); movl $0x4603, 0x300(%rbx)
 * 1: pause; cmpb $1, 0x3100; jne 1b
 *   mov $'C', %al; out %al, %dx; mov $0x0a, %al; out %al, %dx; cli
 * 2: hlt; jmp 2b
 * .code16
 * tramp: mov $0x3f8, %dx; mov $'B', %al; out %al, %dx; movb $1, 0x3100; cli
 * 3: hlt; jmp 3b
 * tramp_end:
 */
export const SMP_GUEST = hex(
  "66baf803b041ee488d354f000000bf00300000b90f000000f3a4bb0000e0fec783f0000000ff010000c7831003000000000001c7830003000000450000c7830003000003460000f390803c25003100000175f4b043eeb00aeefaf4ebfdbaf803b042eec606003101faf4ebfd",
);

/**
 * Echoes what it receives on the UART (polling LSR), upper-casing letters, until a
 * newline, which it echoes before halting with interrupts off.
 *
 *   mov $0x3f8, %dx
 * 1: add $5, %dx; in %dx, %al; sub $5, %dx; test $1, %al; jz 1b    # wait for LSR.DR
 *   in %dx, %al; cmp $0x0a, %al; je 2f
 *   cmp $'a', %al; jb 3f; cmp $'z', %al; ja 3f; sub $0x20, %al
 * 3: out %al, %dx; jmp 1b
 * 2: out %al, %dx; cli
 * 4: hlt; jmp 4b
 */
export const ECHO_GUEST = hex(
  "66baf8036683c205ec6683ea05a80174f3ec3c0a740d3c6172063c7a77022c20eeebe1eefaf4ebfd",
);

/**
 * Enables memory decoding of PCI 00:01.0 through 0xcf8/0xcfc, reads 4 bytes from its
 * BAR 0 (0xc0000000) and prints them, writes 0x000a4b4f at BAR 0 + 4, prints "\n"
 * and halts with interrupts off.
 *
 *   mov $0xcf8, %dx; mov $0x80000804, %eax; out %eax, %dx
 *   mov $0xcfc, %dx; mov $0x0002, %ax; out %ax, %dx
 *   mov $0xc0000000, %ebx; mov (%rbx), %eax
 *   mov $0x3f8, %dx; out %al, %dx; (shr $8, %eax; out %al, %dx) x3
 *   movl $0x0a4b4f, 4(%rbx)
 *   mov $0x0a, %al; out %al, %dx; cli
 * 1: hlt; jmp 1b
 */
export const PCI_GUEST = hex(
  "66baf80cb804080080ef66bafc0c66b8020066efbb000000c08b0366baf803eec1e808eec1e808eec1e808eec743044f4b0a00b00aeefaf4ebfd",
);

/** `1: pause; jmp 1b`: runs until stopped. */
export const SPIN_GUEST = hex("f390ebfc");
