//! The few instructions the guests need, as small wrappers.

use core::arch::asm;

/// CPUID(`leaf`, 0): (EAX, EBX, ECX, EDX).
pub fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// The CPU vendor string of CPUID leaf 0 ("GenuineIntel", "AuthenticAMD", ...).
pub fn vendor() -> [u8; 12] {
    let (_, b, c, d) = cpuid(0);
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&b.to_le_bytes());
    v[4..8].copy_from_slice(&d.to_le_bytes());
    v[8..].copy_from_slice(&c.to_le_bytes());
    v
}

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter; CR4.TSD is clear in the boot state.
    unsafe { core::arch::x86_64::_rdtsc() }
}

pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effects; the guest runs at CPL 0.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effects; the guest runs at CPL 0.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Reloads CR3 with its own value: flushes the non-global TLB entries after
/// page-table edits.
pub fn flush_tlb() {
    // SAFETY: writing CR3 back unchanged keeps the same address space.
    unsafe { asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack, preserves_flags)) };
}

/// The current code segment selector.
pub fn cs() -> u16 {
    let v: u16;
    // SAFETY: reading a segment register has no side effects.
    unsafe { asm!("mov {0:x}, cs", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

pub fn disable_interrupts() {
    // SAFETY: the guest runs at CPL 0; masking interrupts affects only this vCPU.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

pub fn enable_interrupts() {
    // SAFETY: every vector has a gate once `trap::install` ran (it runs before
    // any guest code), so an interrupt finds a handler.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// A descriptor-table register operand (LGDT/LIDT).
#[repr(C, packed)]
pub struct TablePointer {
    pub limit: u16,
    pub base: u64,
}

/// Loads IDTR.
///
/// # Safety
/// `p` must describe a valid IDT that lives as long as it is loaded (or a
/// limit of 0, on purpose: every exception then ends in a triple fault).
pub unsafe fn lidt(p: &TablePointer) {
    // SAFETY: the caller vouches for the table.
    unsafe { asm!("lidt [{}]", in(reg) p, options(readonly, nostack, preserves_flags)) };
}

/// Loads GDTR.
///
/// # Safety
/// `p` must describe a valid GDT that lives as long as it is loaded and keeps
/// the descriptors of the selectors in use (CS, SS, DS, ES, FS, GS).
pub unsafe fn lgdt(p: &TablePointer) {
    // SAFETY: the caller vouches for the table.
    unsafe { asm!("lgdt [{}]", in(reg) p, options(readonly, nostack, preserves_flags)) };
}

/// Stops until the next interrupt (forever with interrupts off).
pub fn halt() {
    // SAFETY: HLT only waits; the hypervisor sees it as an idle vCPU.
    unsafe { asm!("hlt", options(nomem, nostack, preserves_flags)) };
}

/// WRMSR.
///
/// # Safety
/// `msr` must be one the caller knows the hypervisor offers, and `value`
/// must not break what the guest relies on.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller's.
    unsafe { asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags)) };
}
