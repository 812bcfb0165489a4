//! `multiboot`: a Multiboot (v1) kernel of Oxen's own. Its 32-bit entry takes
//! what the loader hands over (Multiboot Specification 0.6.96 §3.2: EAX the
//! magic, EBX the information structure), notes the CPU state it was entered
//! in, builds page tables for the first 4 GiB, enters long mode and calls Rust
//! code that prints what it was given, then powers off:
//!
//! ```text
//! multiboot: entered with eax 0x2badb002, ebx 0x8000
//! multiboot: entry state cr0 0x.. eflags 0x.. cs 0x8 ds 0x10 ss 0x10: protected, paging off, interrupts off: ok
//! multiboot: flags 0x...
//! multiboot: mem_lower 640 KiB, mem_upper N KiB
//! multiboot: cmdline '...'
//! multiboot: boot loader 'Oxen'
//! multiboot: mods_count N
//! multiboot: module I: start 0x.. end 0x.. len N string '...' sha256 HEX
//! multiboot: mmap base 0x.. len 0x.. type T
//! multiboot: mmap: N entries, available up to 0x..
//! multiboot: checks: K failed
//! ```
//!
//! The lines dom0 checks against the domain's config (dom0-bootstrap/tests/
//! multiboot.sh); `checks` counts what the guest can judge alone (the magic,
//! the entry state, modules inside available memory and clear of itself, the
//! memory map agreeing with `mem_upper`), each failure printed as `WRONG: ...`.
//!
//! The image is linked by `multiboot.ld` as one piece at 1 MiB, with the
//! header's address fields (flag 16) saying where: a Multiboot loader needs
//! nothing of the ELF64 file around it (`grub-file --is-x86-multiboot` accepts it).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(any(test, target_os = "none"))]
mod sha256;

#[cfg(target_os = "none")]
mod guest {
    use crate::sha256;
    use oxen_abi::ShutdownReason;
    use oxen_guest_rt::{hypercall, println, trap};

    /// Multiboot header flags: page-aligned modules (0), memory information
    /// (1), address fields (16).
    const HEADER_FLAGS: u32 = (1 << 0) | (1 << 1) | (1 << 16);
    /// EAX from a Multiboot loader (§3.2).
    const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
    /// Information flags (§3.3).
    const INFO_MEMORY: u32 = 1 << 0;
    const INFO_CMDLINE: u32 = 1 << 2;
    const INFO_MODS: u32 = 1 << 3;
    const INFO_MMAP: u32 = 1 << 6;
    const INFO_BOOT_LOADER_NAME: u32 = 1 << 9;
    const MMAP_AVAILABLE: u32 = 1;

    // The header (§3.1): magic, flags, checksum, then the address fields from
    // the linker script. The entry (§3.2's state: protected mode, paging off,
    // ESP undefined) takes a stack, saves EAX/EBX and the state it came in,
    // identity maps 4 GiB with 2 MiB pages, turns on PAE, EFER.LME and paging,
    // loads a GDT with a 64-bit code segment and far-jumps to it.
    core::arch::global_asm!(
        ".pushsection .multiboot, \"a\"",
        ".p2align 2",
        "mb_header:",
        ".long 0x1badb002",
        ".long {flags}",
        ".long -(0x1badb002 + {flags})",
        ".long mb_header",
        ".long __mb_load_start",
        ".long __mb_load_end",
        ".long __mb_bss_end",
        ".long mb_entry",
        ".popsection",
        "",
        ".pushsection .text.mb_entry, \"ax\"",
        ".code32",
        ".global mb_entry",
        "mb_entry:",
        "movl %eax, mb_entry_eax",
        "movl %ebx, mb_entry_ebx",
        "movl $mb_stack_top, %esp",
        "movl %cr0, %eax",
        "movl %eax, mb_entry_cr0",
        "pushfl",
        "popl mb_entry_eflags",
        "movw %cs, mb_entry_cs",
        "movw %ds, mb_entry_ds",
        "movw %ss, mb_entry_ss",
        // PML4[0] -> PDPT; PDPT[0..4] -> the four PDs; PD entries: 2 MiB pages.
        "movl $mb_pdpt + 3, mb_pml4",
        "movl $mb_pd + 3, %eax",
        "xorl %ecx, %ecx",
        "1:",
        "movl %eax, mb_pdpt(,%ecx,8)",
        "addl $0x1000, %eax",
        "incl %ecx",
        "cmpl $4, %ecx",
        "jb 1b",
        "xorl %ecx, %ecx",
        "2:",
        "movl %ecx, %eax",
        "shll $21, %eax",
        "orl $0x83, %eax",
        "movl %eax, mb_pd(,%ecx,8)",
        "movl %ecx, %edx",
        "shrl $11, %edx",
        "movl %edx, mb_pd+4(,%ecx,8)",
        "incl %ecx",
        "cmpl $2048, %ecx",
        "jb 2b",
        "movl %cr4, %eax",
        "orl $0x20, %eax",
        "movl %eax, %cr4",
        "movl $mb_pml4, %eax",
        "movl %eax, %cr3",
        "movl $0xc0000080, %ecx",
        "rdmsr",
        "orl $0x100, %eax",
        "wrmsr",
        "movl %cr0, %eax",
        "orl $0x80000001, %eax",
        "movl %eax, %cr0",
        "lgdt mb_gdt_ptr",
        "ljmp $0x08, $3f",
        ".code64",
        "3:",
        "movw $0x10, %ax",
        "movw %ax, %ds",
        "movw %ax, %es",
        "movw %ax, %ss",
        "movw %ax, %fs",
        "movw %ax, %gs",
        "movq $mb_stack_top, %rsp",
        "xorl %ebp, %ebp",
        "call multiboot_main",
        "ud2",
        ".popsection",
        "",
        ".pushsection .rodata.mb_gdt, \"a\"",
        ".p2align 3",
        "mb_gdt:",
        ".quad 0",
        ".quad 0x00af9a000000ffff",
        ".quad 0x00cf92000000ffff",
        "mb_gdt_ptr:",
        ".word mb_gdt_ptr - mb_gdt - 1",
        ".long mb_gdt",
        ".popsection",
        "",
        ".pushsection .data.mb_entry_state, \"aw\"",
        ".p2align 2",
        ".global mb_entry_eax, mb_entry_ebx, mb_entry_cr0, mb_entry_eflags, mb_entry_cs, mb_entry_ds, mb_entry_ss",
        "mb_entry_eax: .long 0",
        "mb_entry_ebx: .long 0",
        "mb_entry_cr0: .long 0",
        "mb_entry_eflags: .long 0",
        "mb_entry_cs: .word 0",
        "mb_entry_ds: .word 0",
        "mb_entry_ss: .word 0",
        ".popsection",
        "",
        ".pushsection .bss.mb_tables, \"aw\", @nobits",
        ".p2align 12",
        "mb_pml4: .skip 4096",
        "mb_pdpt: .skip 4096",
        "mb_pd: .skip 4 * 4096",
        "mb_stack: .skip 65536",
        "mb_stack_top:",
        ".popsection",
        flags = const HEADER_FLAGS,
        options(att_syntax),
    );

    unsafe extern "C" {
        static mb_entry_eax: u32;
        static mb_entry_ebx: u32;
        static mb_entry_cr0: u32;
        static mb_entry_eflags: u32;
        static mb_entry_cs: u16;
        static mb_entry_ds: u16;
        static mb_entry_ss: u16;
        static __mb_load_start: u8;
        static __mb_bss_end: u8;
    }

    /// Counts what the guest finds wrong on its own, each printed.
    struct Checks(u32);

    impl Checks {
        fn expect(&mut self, ok: bool, what: core::fmt::Arguments<'_>) {
            if !ok {
                self.0 += 1;
                println!("multiboot: WRONG: {what}");
            }
        }
    }

    /// `len` bytes of guest-physical memory at `addr`, if below 4 GiB.
    fn phys(addr: u64, len: u64) -> &'static [u8] {
        if addr.checked_add(len).is_none_or(|end| end > 1 << 32) {
            oxen_guest_rt::crash(format_args!("multiboot: {addr:#x}+{len:#x} is past the 4 GiB mapped"));
        }
        // SAFETY: the first 4 GiB are identity mapped (the entry's tables), and
        // addresses come from the loader's structure: memory of this domain,
        // read only. A wrong one faults into the runtime's trap report.
        unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) }
    }

    fn u32_at(addr: u64) -> u32 {
        u32::from_le_bytes(phys(addr, 4).try_into().unwrap())
    }

    fn u64_at(addr: u64) -> u64 {
        u64::from_le_bytes(phys(addr, 8).try_into().unwrap())
    }

    /// The NUL-terminated string at `addr` (at most 4 KiB), as text.
    fn c_str(addr: u32) -> &'static str {
        let bytes = phys(addr.into(), 4096);
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        core::str::from_utf8(&bytes[..end]).unwrap_or("<not UTF-8>")
    }

    #[unsafe(no_mangle)]
    extern "C" fn multiboot_main() -> ! {
        trap::install();
        // SAFETY: written once by the entry code before it called us.
        let (eax, ebx, cr0, eflags, cs, ds, ss) = unsafe {
            (mb_entry_eax, mb_entry_ebx, mb_entry_cr0, mb_entry_eflags, mb_entry_cs, mb_entry_ds, mb_entry_ss)
        };
        let mut checks = Checks(0);
        println!("multiboot: entered with eax {eax:#x}, ebx {ebx:#x}");
        checks.expect(eax == BOOTLOADER_MAGIC, format_args!("eax is not the loader magic {BOOTLOADER_MAGIC:#x}"));
        // §3.2: CR0.PE set, PG clear; EFLAGS.IF and VM clear.
        let (pe, pg, interrupts, v86) = (cr0 & 1 != 0, cr0 >> 31 != 0, eflags & (1 << 9) != 0, eflags & (1 << 17) != 0);
        let state_ok = pe && !pg && !interrupts && !v86;
        println!(
            "multiboot: entry state cr0 {cr0:#x} eflags {eflags:#x} cs {cs:#x} ds {ds:#x} ss {ss:#x}: protected, paging off, interrupts off: {}",
            if state_ok { "ok" } else { "WRONG" }
        );
        checks.expect(state_ok, format_args!("entry state"));

        let info = u64::from(ebx);
        let flags = u32_at(info);
        println!("multiboot: flags {flags:#x}");
        let need = INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_BOOT_LOADER_NAME;
        checks.expect(flags & need == need, format_args!("flags {flags:#x} lack some of {need:#x}"));
        let (mem_lower, mem_upper) = (u32_at(info + 4), u32_at(info + 8));
        println!("multiboot: mem_lower {mem_lower} KiB, mem_upper {mem_upper} KiB");
        if flags & INFO_CMDLINE != 0 {
            println!("multiboot: cmdline '{}'", c_str(u32_at(info + 16)));
        }
        if flags & INFO_BOOT_LOADER_NAME != 0 {
            println!("multiboot: boot loader '{}'", c_str(u32_at(info + 64)));
        }

        // The memory map (§3.3: `size` counts the bytes after itself).
        let mut available: [(u64, u64); 8] = [(0, 0); 8];
        let mut entries = 0;
        let mut top = 0;
        if flags & INFO_MMAP != 0 {
            let (mut e, end) = (u64::from(u32_at(info + 48)), u64::from(u32_at(info + 48)) + u64::from(u32_at(info + 44)));
            while e < end && entries < 64 {
                let (base, len, kind) = (u64_at(e + 4), u64_at(e + 12), u32_at(e + 20));
                println!("multiboot: mmap base {base:#x} len {len:#x} type {kind}");
                if kind == MMAP_AVAILABLE && entries < available.len() {
                    available[entries] = (base, base + len);
                    top = top.max(base + len);
                }
                entries += 1;
                e += 4 + u64::from(u32_at(e));
            }
            println!("multiboot: mmap: {entries} entries, available up to {top:#x}");
            // mem_upper: KiB from 1 MiB to the first hole, here the end of RAM.
            checks.expect(
                top == (1 << 20) + u64::from(mem_upper) * 1024,
                format_args!("mem_upper {mem_upper} KiB does not end where the map's RAM does ({top:#x})"),
            );
        }
        let in_available = |r: core::ops::Range<u64>| available.iter().any(|&(lo, hi)| lo <= r.start && r.end <= hi);

        // Linker-script symbols: only their addresses are used.
        let me = (&raw const __mb_load_start) as u64..(&raw const __mb_bss_end) as u64;
        let count = if flags & INFO_MODS != 0 { u32_at(info + 20) } else { 0 };
        println!("multiboot: mods_count {count}");
        let mods = u64::from(u32_at(info + 24));
        for i in 0..u64::from(count.min(16)) {
            let m = mods + 16 * i;
            let (start, end, string) = (u32_at(m), u32_at(m + 4), u32_at(m + 8));
            let len = u64::from(end.saturating_sub(start));
            let digest = sha256::Hex(sha256::digest(phys(start.into(), len)));
            println!(
                "multiboot: module {i}: start {start:#x} end {end:#x} len {len} string '{}' sha256 {digest}",
                c_str(string)
            );
            let r = u64::from(start)..u64::from(end);
            checks.expect(start <= end && in_available(r.clone()), format_args!("module {i} not in available memory"));
            checks.expect(r.end <= me.start || me.end <= r.start, format_args!("module {i} over the kernel {me:#x?}"));
            checks.expect(start % 4096 == 0, format_args!("module {i} not page aligned (header flag 0)"));
        }
        println!("multiboot: checks: {} failed", checks.0);
        hypercall::shutdown(ShutdownReason::Poweroff)
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("multiboot is an Oxen domU kernel: `cargo xtask` builds it for x86_64-unknown-none");
    std::process::exit(1);
}
