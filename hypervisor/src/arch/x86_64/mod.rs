//! x86-64: boot, descriptor tables, interrupt controllers, SMP and the two
//! hardware-virtualization backends.
pub mod apic;
pub mod boot;
pub mod cpu;
pub mod gdt;
pub mod idt;
pub mod irq;
pub mod paging;
pub mod percpu;
pub mod smp;
pub mod svm;
pub mod time;
mod trampoline;
pub mod vmx;
pub mod wallclock;
pub mod xstate;

pub use cpu::{cpuid, rdmsr, wrmsr, CpuidResult};
pub use percpu::cpu_id;

use crate::start::BootInfo;

/// Sets up the boot CPU: its own page tables (W^X), descriptor tables and
/// per-CPU data.
pub fn init_bsp(boot: &BootInfo) {
    paging::init(boot.ram_end);
    percpu::init_bsp();
    idt::init();
}

/// Halts this CPU for good, with interrupts off.
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
