//! The multiboot2 header and the 32-bit entry point GRUB jumps to.
//!
//! GRUB enters `_start` in 32-bit protected mode with paging off, EAX = the
//! multiboot2 magic and EBX = the physical address of the boot information
//! (Multiboot2 spec §3.3). We clear .bss, identity-map the first 4 GiB with 2 MiB
//! pages, enable long mode (Intel SDM Vol. 3 §10.8.5, AMD APM Vol. 2 §14.6) and call
//! `kmain(magic, mbi)`; Rust then replaces these boot tables with W^X ones.

use core::arch::global_asm;

/// Size of the boot CPU's stack; each AP gets its own from the heap.
pub const BOOT_STACK_SIZE: usize = 64 * 1024;

global_asm!(
    r#"
    .section .multiboot2, "a"
    .balign 8
mb2_header:
    .long 0xe85250d6                    /* magic */
    .long 0                             /* architecture: i386 protected mode */
    .long mb2_header_end - mb2_header
    .long -(0xe85250d6 + (mb2_header_end - mb2_header))
    .balign 8
    .short 0, 0                         /* end tag */
    .long 8
mb2_header_end:

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:  .skip 4096
boot_pdpt:  .skip 4096
boot_pd:    .skip 4096 * 4
    .global boot_stack_bottom
boot_stack_bottom:
    .skip {stack_size}
boot_stack_top:

    .section .rodata.boot, "a"
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff            /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff            /* 0x10: data */
boot_gdt_end:
boot_gdt_ptr:
    .short boot_gdt_end - boot_gdt - 1
    .long boot_gdt
no_lm_msg:
    .asciz "Oxen: this CPU cannot run 64-bit code; halting.\r\n"

    .section .text.boot, "ax"
    .code32
    .global _start
_start:
    cli
    cld
    mov %eax, %ebp                      /* multiboot2 magic */
    mov %ebx, %esi                      /* boot information (physical) */

    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb
    mov $boot_stack_top, %esp

    mov $0x80000000, %eax
    cpuid
    cmp $0x80000001, %eax
    jb 9f
    mov $0x80000001, %eax
    cpuid
    bt $29, %edx                        /* CPUID.80000001H:EDX.LM */
    jnc 9f

    mov $boot_pdpt, %eax
    or $3, %eax
    mov %eax, boot_pml4
    mov $boot_pdpt, %edi
    mov $boot_pd, %eax
    or $3, %eax
    mov $4, %ecx
1:  mov %eax, (%edi)
    add $4096, %eax
    add $8, %edi
    loop 1b
    mov $boot_pd, %edi
    mov $0x83, %eax                     /* present, writable, 2 MiB */
    mov $2048, %ecx
2:  mov %eax, (%edi)
    add $0x200000, %eax
    add $8, %edi
    loop 2b

    mov $boot_pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $(1 << 5), %eax                  /* PAE */
    mov %eax, %cr4
    mov $0xc0000080, %ecx               /* IA32_EFER */
    rdmsr
    or $((1 << 8) | (1 << 11)), %eax    /* LME, NXE */
    wrmsr
    mov %cr0, %eax
    and $~((1 << 30) | (1 << 29)), %eax /* CD, NW: caches on (firmware may leave them off) */
    or $((1 << 31) | (1 << 16) | 1), %eax /* PG, WP, PE */
    mov %eax, %cr0
    lgdt boot_gdt_ptr
    ljmp $0x08, $3f

9:  mov $no_lm_msg, %esi
4:  lodsb
    test %al, %al
    jz 5f
    mov $0x3f8, %dx
    out %al, %dx
    jmp 4b
5:  hlt
    jmp 5b

    .code64
3:  mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    mov $boot_stack_top, %rsp
    mov %ebp, %edi
    mov %esi, %esi
    xor %ebp, %ebp
    call kmain
6:  hlt
    jmp 6b
    "#,
    stack_size = const BOOT_STACK_SIZE,
    options(att_syntax)
);
