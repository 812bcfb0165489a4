//! The AP start-up trampoline: real mode -> protected mode -> long mode.
//!
//! A START-UP IPI with vector 0x08 starts an AP in real mode at CS:IP =
//! 0x0800:0000, i.e. at `paging::TRAMPOLINE_PAGE` (SDM Vol. 3A §9.4.4.2). The
//! code below is assembled into the image and copied there; it only uses
//! absolute addresses inside that page and in the boot-data page `AP_BOOT_DATA`,
//! which the boot CPU fills for each AP in turn. Long mode is entered as in SDM
//! Vol. 3A §10.8.5: PAE, then CR3 (the hypervisor's PML4, below 4 GiB), then
//! EFER.LME (and NXE: the tables use NX), then CR0.PG.
//!
//! In the hypervisor's tables the trampoline page is mapped read+execute and the
//! boot-data page read+write, never executable.

use super::paging::TRAMPOLINE_PAGE;
use core::arch::global_asm;

/// Physical (= virtual) address of the per-AP boot data, below the trampoline.
pub const AP_BOOT_DATA: u64 = 0x7000;

/// What the trampoline needs to reach Rust; written by the boot CPU at
/// `AP_BOOT_DATA` before each AP's START-UP IPIs.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct ApBootData {
    pub cr3: u64,
    /// Top of the AP's stack, 16-byte aligned.
    pub stack_top: u64,
    /// `extern "C" fn(cpu: u32) -> !`
    pub entry: u64,
    pub cpu: u32,
}

// The assembly reads these fields by offset.
const _: () = {
    assert!(core::mem::offset_of!(ApBootData, cr3) == 0);
    assert!(core::mem::offset_of!(ApBootData, stack_top) == 8);
    assert!(core::mem::offset_of!(ApBootData, entry) == 16);
    assert!(core::mem::offset_of!(ApBootData, cpu) == 24);
    assert!(AP_BOOT_DATA + core::mem::size_of::<ApBootData>() as u64 <= TRAMPOLINE_PAGE);
    // The START-UP vector is the page number.
    assert!(TRAMPOLINE_PAGE.is_multiple_of(4096) && TRAMPOLINE_PAGE < 0x10_0000);
};

/// CR0 for the AP: paging, write-protect, native x87 errors, ET, protection;
/// caching enabled (CD and NW are set after INIT and must be cleared).
const AP_CR0: u32 = (1 << 31) | (1 << 16) | (1 << 5) | (1 << 4) | 1;
const CR4_PAE: u32 = 1 << 5;
const EFER_LME_NXE: u32 = (1 << 8) | (1 << 11);

global_asm!(
    r#"
    .pushsection .rodata.ap_trampoline, "a"
    .balign 16
    .global ap_trampoline_start
ap_trampoline_start:
    .code16
    cli
    cld
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl ap_gdt_ptr - ap_trampoline_start + {page}
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $(ap_pm32 - ap_trampoline_start + {page})

    .code32
ap_pm32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl ${cr4_pae}, %eax
    movl %eax, %cr4
    movl {data} + 0, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl ${efer}, %eax
    wrmsr
    movl ${cr0}, %eax
    movl %eax, %cr0
    ljmpl $0x18, $(ap_lm64 - ap_trampoline_start + {page})

    .code64
ap_lm64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorl %eax, %eax
    movw %ax, %fs
    movw %ax, %gs
    movq {data} + 8, %rsp
    movl {data} + 24, %edi
    movq {data} + 16, %rax
    xorl %ebp, %ebp
    callq *%rax
1:  cli
    hlt
    jmp 1b

    .balign 8
ap_gdt:
    /* Accessed bits preset: the CPU would otherwise set them, writing to this
       page, which is read-only once paging is on. */
    .quad 0
    .quad 0x00cf9b000000ffff            /* 0x08: 32-bit code */
    .quad 0x00cf93000000ffff            /* 0x10: data */
    .quad 0x00af9b000000ffff            /* 0x18: 64-bit code */
ap_gdt_end:
ap_gdt_ptr:
    .short ap_gdt_end - ap_gdt - 1
    .long ap_gdt - ap_trampoline_start + {page}
    .global ap_trampoline_end
ap_trampoline_end:
    .popsection
    "#,
    page = const TRAMPOLINE_PAGE,
    data = const AP_BOOT_DATA,
    cr4_pae = const CR4_PAE,
    efer = const EFER_LME_NXE,
    cr0 = const AP_CR0,
    options(att_syntax)
);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

/// Copies the trampoline to `TRAMPOLINE_PAGE`. Boot CPU only, before any AP
/// is started.
pub fn install() {
    // SAFETY: linker symbols around the trampoline bytes in .rodata.
    let (start, end) = unsafe { (&ap_trampoline_start as *const u8, &ap_trampoline_end as *const u8) };
    let len = end as usize - start as usize;
    assert!(len <= 4096, "AP trampoline is {len} bytes");
    // The page is mapped read+execute (W^X). Clearing CR0.WP lets ring 0 write
    // it once, here, with interrupts off and no other CPU running (SDM Vol. 3A
    // §5.6.1), instead of giving it a writable mapping for good.
    interrupts_off(|| {
        // SAFETY: only the boot CPU runs; WP is restored right after. The page
        // is reserved for the trampoline (the first MiB never reaches the
        // frame allocator) and no AP executes it yet.
        unsafe {
            let cr0 = x86_64::registers::control::Cr0::read_raw();
            x86_64::registers::control::Cr0::write_raw(cr0 & !CR0_WP);
            core::ptr::copy_nonoverlapping(start, TRAMPOLINE_PAGE as *mut u8, len);
            x86_64::registers::control::Cr0::write_raw(cr0);
        }
    });
}

const CR0_WP: u64 = 1 << 16;

fn interrupts_off(f: impl FnOnce()) {
    x86_64::instructions::interrupts::without_interrupts(f)
}

/// Writes the boot data for the next AP.
pub fn set_boot_data(data: ApBootData) {
    // SAFETY: `AP_BOOT_DATA` is in the reserved first MiB, mapped read+write,
    // and read only by an AP the caller is about to start (none runs the
    // trampoline now: the previous one has reached Rust or been sent INIT).
    unsafe { core::ptr::write_volatile(AP_BOOT_DATA as *mut ApBootData, data) };
}
