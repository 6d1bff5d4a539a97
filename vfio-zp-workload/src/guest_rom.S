# The lab VM's whole guest: a 64 KiB firmware image QEMU runs instead of
# SeaBIOS (`-bios`, libvirt's <loader type='rom'>) on `-M pc`. It does the
# two things a guest OS does for a VMM's lifecycle, and nothing else:
#  - PCI hot-unplug: it acks QEMU's ACPI eject request (PIIX4 PCI hotplug,
#    slots pending removal at 0xae04, ejected by writing them to 0xae08),
#    so `device_del` and `virsh detach-device` complete;
#  - ACPI shutdown: on the power button (`system_powerdown`, `virsh
#    shutdown`) it enters S5, and QEMU exits as after a guest's poweroff.
# It sleeps in `hlt` between the PIT's ticks (18.2 Hz) so an idle VM costs
# the lab guest almost nothing. Built by `as --32` and `ld --oformat binary`.
.code16
.text
.globl _start
_start:
  cli
  ljmp $0xf000, $go             # the ROM's copy below 1 MiB: CS base 0xf0000

tick:                           # every interrupt: EOI to the master PIC
  pushw %ax
  movb $0x20, %al
  outb %al, $0x20
  popw %ax
  iret

go:
  xorw %ax, %ax
  movw %ax, %ds
  movw %ax, %ss
  movw $0x7000, %sp
  xorw %bx, %bx                 # all 256 real-mode vectors -> tick
1:
  movw $tick, (%bx)
  movw $0xf000, 2(%bx)
  addw $4, %bx
  cmpw $0x400, %bx
  jne 1b

  # Unreal mode (FS with a 4 GiB limit) to reach the local APIC, whose
  # LINT0 QEMU resets masked (firmware sets it to ExtINT): without that
  # the PIC's interrupts never reach the CPU.
  lgdtl %cs:gdtr
  movl %cr0, %eax
  orb $1, %al
  movl %eax, %cr0
  movw $8, %bx
  movw %bx, %fs
  andb $0xfe, %al
  movl %eax, %cr0
  movl $0xfee000f0, %ebx        # spurious vector: APIC software-enabled
  movl $0x1ff, %eax
  addr32 movl %eax, %fs:(%ebx)
  movl $0xfee00350, %ebx        # LVT LINT0: ExtINT, unmasked
  movl $0x700, %eax
  addr32 movl %eax, %fs:(%ebx)

  # The PICs: vectors 0x08 and 0x70, only IRQ0 (the PIT) unmasked.
  movb $0x11, %al
  outb %al, $0x20
  outb %al, $0xa0
  movb $0x08, %al
  outb %al, $0x21
  movb $0x70, %al
  outb %al, $0xa1
  movb $0x04, %al
  outb %al, $0x21
  movb $0x02, %al
  outb %al, $0xa1
  movb $0x01, %al
  outb %al, $0x21
  outb %al, $0xa1
  movb $0xfe, %al
  outb %al, $0x21
  movb $0xff, %al
  outb %al, $0xa1

  # PIIX4 PM (00:01.3): its registers at 0xb000 (PMBA at 0x40, enabled by
  # PMREGMISC at 0x80), then PM1_EN's power button enable.
  movl $0x80000b40, %eax
  movw $0xcf8, %dx
  outl %eax, %dx
  movl $0xb001, %eax
  movw $0xcfc, %dx
  outl %eax, %dx
  movl $0x80000b80, %eax
  movw $0xcf8, %dx
  outl %eax, %dx
  movw $0xcfc, %dx
  movb $1, %al
  outb %al, %dx
  movw $0xb002, %dx
  movw $0x0100, %ax
  outw %ax, %dx

poll:
  movw $0xae04, %dx             # PCI_DOWN: slots QEMU asks to eject
  inl %dx, %eax
  testl %eax, %eax
  jz 2f
  movw $0xae08, %dx             # PCI_EJ: eject them
  outl %eax, %dx
2:
  movw $0xb000, %dx             # PM1_STS: power button pressed?
  inw %dx, %ax
  testw $0x0100, %ax
  jz 3f
  movw $0xb004, %dx             # PM1_CNT: SLP_EN with SLP_TYP 0, S5
  movw $0x2000, %ax
  outw %ax, %dx
3:
  sti
  hlt
  cli
  jmp poll

.align 8
gdt:
  .quad 0
  .quad 0x00cf92000000ffff      # flat data, 4 GiB
gdtr:
  .word 15
  .long 0xf0000 + gdt

.org 0xfff0                     # the reset vector
  ljmp $0xf000, $_start
.org 0x10000
