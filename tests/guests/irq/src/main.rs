//! `irq`: a domU that takes the interrupt line of the first device dom0
//! declared for it (`domctl DEVICE_ADD`: GSI `DEVICE_GSI_FIRST`, 16) and counts
//! what arrives, so a system test sees `domctl IRQ_LINE` reach a guest. It
//! maps the IOAPIC and its local APIC (the boot page tables map only RAM),
//! enables the local APIC, routes the pin to vector `VECTOR` on itself, and
//! prints `irq: N interrupts` whenever the count changed (every 100 ms at most).
//!
//! Command line: `trigger=level` (default; what the DSDT says for a
//! virtio-mmio device) or `trigger=edge`.
//! - level: the handler masks the pin (as an OS that acknowledges the device
//!   later does) and EOIs; the main loop unmasks it after printing, so a line
//!   dom0 holds up is taken again about every 100 ms, and a lowered one is not.
//! - edge: one interrupt per rising edge; the handler EOIs.
//!
//! dom0's power-off and reboot requests are honoured.
#![cfg_attr(target_os = "none", no_std, no_main)]

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use oxen_abi::{request, ShutdownReason, StartInfo, DEVICE_GSI_FIRST};
use oxen_guest_rt::{cmdline, cpu, hypercall, println, trap};

oxen_guest_rt::entry!("irq", guest_main);

/// The vector the pin is routed to.
const VECTOR: u64 = 0x40;
const IOAPIC: u64 = 0xfec0_0000;
const LAPIC: u64 = 0xfee0_0000;
/// Local APIC registers (SDM Vol. 3A §11.4.1, Table 11-1).
const LAPIC_TPR: u64 = 0x80;
const LAPIC_EOI: u64 = 0xb0;
const LAPIC_SVR: u64 = 0xf0;
/// SVR: APIC software enable (bit 8), spurious vector 0xFF.
const SVR_ENABLE: u32 = 0x1ff;
/// IOAPIC redirection entry bits (82093AA §3.2.4).
const RTE_LEVEL: u32 = 1 << 15;
const RTE_MASKED: u32 = 1 << 16;

static COUNT: AtomicU64 = AtomicU64::new(0);
static LEVEL: AtomicBool = AtomicBool::new(true);

/// One page directory for GiB 3, where the APICs are.
#[repr(C, align(4096))]
struct Pd([u64; 512]);
static mut APIC_PD: Pd = Pd([0; 512]);

fn mmio_write(addr: u64, v: u32) {
    // SAFETY: `map_apics` mapped the APIC pages (uncached); the hypervisor
    // emulates them. A 32-bit aligned access, as both devices require.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

fn ioapic_write(index: u32, v: u32) {
    mmio_write(IOAPIC, index);
    mmio_write(IOAPIC + 0x10, v);
}

fn pin_entry(masked: bool) -> u32 {
    let trigger = if LEVEL.load(Ordering::Relaxed) { RTE_LEVEL } else { 0 };
    VECTOR as u32 | trigger | if masked { RTE_MASKED } else { 0 }
}

/// Redirection entry `DEVICE_GSI_FIRST`: low dword at 0x10 + 2 * pin.
fn set_pin(masked: bool) {
    ioapic_write(0x10 + 2 * DEVICE_GSI_FIRST, pin_entry(masked));
}

/// Maps `[3 GiB, 4 GiB)`'s two APIC 2 MiB pages, identity and uncached
/// (PCD | PWT), through a page directory of its own.
fn map_apics() {
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    let pml4 = cpu::read_cr3() & ADDR;
    // SAFETY: the boot tables are in our RAM, identity mapped (docs/hypercalls.md
    // "Page tables"); PML4 entry 0 is the PDPT's. APIC_PD is ours, identity mapped.
    unsafe {
        let pdpt = (*(pml4 as *const u64)) & ADDR;
        let slot = (pdpt as *mut u64).add(3);
        if *slot & 1 != 0 {
            oxen_guest_rt::crash(format_args!("GiB 3 is already mapped (RAM there?): no room for the APICs"));
        }
        let pd = &raw mut APIC_PD;
        for addr in [IOAPIC, LAPIC] {
            let i = ((addr - (3 << 30)) >> 21) as usize;
            // Present, writable, PWT, PCD, 2 MiB page.
            (*pd).0[i] = (addr & !0x1f_ffff) | 0x9b;
        }
        *slot = pd as u64 | 0x3;
    }
    cpu::flush_tlb();
}

fn on_trap(frame: &mut trap::TrapFrame) -> bool {
    if frame.vector != VECTOR {
        return false;
    }
    COUNT.fetch_add(1, Ordering::Relaxed);
    if LEVEL.load(Ordering::Relaxed) {
        set_pin(true);
    }
    mmio_write(LAPIC + LAPIC_EOI, 0);
    true
}

fn guest_main(_info: &'static StartInfo) -> ! {
    for opt in cmdline::options(oxen_guest_rt::cmdline()) {
        match (opt.key, opt.value) {
            ("trigger", Some("level")) => LEVEL.store(true, Ordering::Relaxed),
            ("trigger", Some("edge")) => LEVEL.store(false, Ordering::Relaxed),
            _ => println!("irq: warning: unknown option '{}'", opt.text),
        }
    }
    map_apics();
    trap::set_hook(on_trap);
    mmio_write(LAPIC + LAPIC_TPR, 0);
    mmio_write(LAPIC + LAPIC_SVR, SVR_ENABLE);
    // Destination: APIC ID 0 (ours), physical mode.
    ioapic_write(0x11 + 2 * DEVICE_GSI_FIRST, 0);
    set_pin(false);
    cpu::enable_interrupts();
    let trigger = if LEVEL.load(Ordering::Relaxed) { "level" } else { "edge" };
    println!("irq: domain {} ready: GSI {DEVICE_GSI_FIRST} ({trigger}) -> vector {VECTOR:#x}", hypercall::Rax(hypercall::domain_id()));
    let mut shown = 0;
    loop {
        hypercall::block(100_000_000);
        let n = COUNT.load(Ordering::Relaxed);
        if n != shown {
            shown = n;
            println!("irq: {n} interrupts");
            if LEVEL.load(Ordering::Relaxed) {
                // Taken again at once if the line is still up.
                set_pin(false);
            }
        }
        match hypercall::control_request() {
            request::POWEROFF => hypercall::shutdown(ShutdownReason::Poweroff),
            request::REBOOT => hypercall::shutdown(ShutdownReason::Reboot),
            _ => {}
        }
    }
}
