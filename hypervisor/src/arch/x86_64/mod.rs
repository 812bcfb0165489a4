//! x86-64: boot, descriptor tables, interrupt controllers, SMP and the two
//! hardware-virtualization backends. Target only, but for the pure VMX exit
//! decoding (`vmx::decode`), which the host tests compile alone.
#[cfg(target_os = "none")]
pub mod apic;
#[cfg(target_os = "none")]
pub mod boot;
#[cfg(target_os = "none")]
pub mod cpu;
#[cfg(target_os = "none")]
pub mod gdt;
#[cfg(target_os = "none")]
pub mod idt;
#[cfg(target_os = "none")]
pub mod irq;
#[cfg(target_os = "none")]
pub mod paging;
#[cfg(target_os = "none")]
pub mod percpu;
#[cfg(target_os = "none")]
pub mod smp;
#[cfg(target_os = "none")]
pub mod svm;
#[cfg(target_os = "none")]
pub mod time;
#[cfg(target_os = "none")]
pub mod wallclock;
#[cfg(target_os = "none")]
pub mod xstate;
#[cfg(target_os = "none")]
mod trampoline;
#[cfg(target_os = "none")]
pub mod vmx;
/// On the host (tests), only the pure VMX exit decoding.
#[cfg(not(target_os = "none"))]
pub mod vmx {
    pub mod decode;
}

#[cfg(target_os = "none")]
pub use cpu::{cpuid, rdmsr, wrmsr, CpuidResult};
#[cfg(target_os = "none")]
pub use percpu::cpu_id;

#[cfg(target_os = "none")]
use crate::start::BootInfo;

/// Sets up the boot CPU: its own page tables (W^X), descriptor tables and
/// per-CPU data.
#[cfg(target_os = "none")]
pub fn init_bsp(boot: &BootInfo) {
    paging::init(boot.ram_end);
    percpu::init_bsp();
    idt::init();
}

/// Halts this CPU for good, with interrupts off.
#[cfg(target_os = "none")]
pub fn halt_forever() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
}
