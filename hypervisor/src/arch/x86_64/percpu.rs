//! Per-CPU data, reached through GS base. Each CPU gets a `PerCpu` on the heap,
//! never freed, holding its GDT, TSS and identity.

use super::cpu::{msr, wrmsr};
use super::gdt::{Gdt, Tss, IST_DOUBLE_FAULT, IST_MACHINE_CHECK, IST_NMI, IST_STACK_SIZE};
use alloc::boxed::Box;
use alloc::vec;
use core::sync::atomic::{AtomicBool, Ordering};

#[repr(C)]
pub struct PerCpu {
    /// Points at itself, so `gs:[0]` gives the struct's address.
    this: *const PerCpu,
    /// Dense CPU index: 0 is the boot CPU.
    pub cpu_id: u32,
    /// Local APIC ID.
    pub apic_id: u32,
    pub tss: Tss,
    pub gdt: Gdt,
}

const _: () = assert!(core::mem::offset_of!(PerCpu, cpu_id) == 8);

static READY: AtomicBool = AtomicBool::new(false);

/// This CPU's dense index (0 before per-CPU data exists).
pub fn cpu_id() -> u32 {
    if !READY.load(Ordering::Relaxed) {
        return 0;
    }
    let id: u32;
    // SAFETY: once READY is set every CPU that runs Rust code has GS base pointing
    // at its PerCpu, whose cpu_id is at offset 8.
    unsafe { core::arch::asm!("mov {:e}, gs:[8]", out(reg) id, options(nostack, readonly)) };
    id
}

/// This CPU's `PerCpu`.
pub fn this() -> &'static PerCpu {
    let p: *const PerCpu;
    // SAFETY: see `cpu_id`; `this` is at offset 0.
    unsafe { core::arch::asm!("mov {}, gs:[0]", out(reg) p, options(nostack, readonly)) };
    // SAFETY: PerCpu structs are leaked and so live forever.
    unsafe { &*p }
}

/// Creates and installs the calling CPU's per-CPU data, GDT and TSS.
pub fn init_cpu(cpu_id: u32, apic_id: u32) {
    let mut tss = Tss::default();
    for ist in [IST_DOUBLE_FAULT, IST_NMI, IST_MACHINE_CHECK] {
        let stack = vec![0u8; IST_STACK_SIZE].leak();
        tss.ist[usize::from(ist) - 1] = stack.as_ptr() as u64 + IST_STACK_SIZE as u64;
    }
    tss.iomap_base = core::mem::size_of::<Tss>() as u16; // no I/O bitmap
    let pc = Box::leak(Box::new(PerCpu { this: core::ptr::null(), cpu_id, apic_id, tss, gdt: Gdt([0; 5]) }));
    pc.this = pc as *const PerCpu;
    pc.gdt = Gdt::new(&pc.tss);
    // SAFETY: `pc` is leaked, so the GDT and TSS live forever; GS base is ours.
    unsafe {
        pc.gdt.load();
        wrmsr(msr::IA32_GS_BASE, pc as *const PerCpu as u64);
    }
    READY.store(true, Ordering::Release);
}

/// Per-CPU data for the boot CPU.
pub fn init_bsp() {
    init_cpu(0, super::cpuid(1, 0).ebx >> 24);
}
