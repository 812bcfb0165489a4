//! Physical device interrupts forwarded to dom0. The hypervisor owns the I/O
//! APIC: dom0 programs a virtual one, and `route` mirrors each pin dom0 enables
//! onto the physical I/O APIC, delivering to this CPU on vector
//! `GSI_VECTOR_BASE + pin`. The handler only records the pin (and masks a
//! level-triggered one until dom0 has handled it); dom0's run loop raises it on
//! the virtual I/O APIC.
//!
//! Assumes one I/O APIC at GSI base 0 (every PC chipset QEMU and Bochs model).
//!
//! Any of dom0's CPUs may reprogram a pin (an SMP dom0 writes its virtual I/O
//! APIC from every vCPU), while the handler masks level pins on the CPU the
//! pins are routed to: `REGS` keeps each select/data pair whole. The handler
//! cannot find the lock held by its own CPU: the hypervisor takes it with
//! interrupts off only.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU32, Ordering};

/// Pins forwarded, and the first host vector they use.
pub const PINS: u8 = 24;
pub const GSI_VECTOR_BASE: u8 = 0x30;

/// I/O APIC register window (82093AA datasheet §3.1).
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const REDIR_BASE: u32 = 0x10;
/// Redirection-entry bits.
const RTE_ACTIVE_LOW: u64 = 1 << 13;
const RTE_LEVEL: u64 = 1 << 15;
const RTE_MASKED: u64 = 1 << 16;

/// The physical I/O APIC's base (identity mapped, uncached).
static BASE: AtomicU32 = AtomicU32::new(0xfec0_0000);
/// Pins whose interrupt arrived and is not yet taken by `take_pending`.
static PENDING: AtomicU32 = AtomicU32::new(0);
/// Pins routed level-triggered (masked by the handler until dom0's EOI).
static LEVEL: AtomicU32 = AtomicU32::new(0);
/// Held across each redirection-entry write (see the module documentation).
static REGS: spin::Mutex<()> = spin::Mutex::new(());

/// # Safety
/// The caller holds `REGS`.
unsafe fn write_reg(reg: u32, value: u32) {
    let base = u64::from(BASE.load(Ordering::Relaxed));
    // SAFETY: the I/O APIC's registers are identity mapped uncached; the
    // caller holds `REGS`, so a select/data pair is never interleaved.
    unsafe {
        core::ptr::write_volatile((base + IOREGSEL) as *mut u32, reg);
        core::ptr::write_volatile((base + IOWIN) as *mut u32, value);
    }
}

fn write_entry(pin: u8, entry: u64) {
    let reg = REDIR_BASE + 2 * u32::from(pin);
    let _regs = REGS.lock();
    // High half first: the destination must be in place before unmasking.
    // SAFETY: `REGS` is held.
    unsafe {
        write_reg(reg + 1, (entry >> 32) as u32);
        write_reg(reg, entry as u32);
    }
}

/// Masks every pin (at boot: firmware may have left some enabled).
pub fn init(base: u64) {
    BASE.store(base as u32, Ordering::Relaxed);
    for pin in 0..PINS {
        write_entry(pin, RTE_MASKED);
    }
}

/// Routes physical `pin` to the CPU with APIC id `dest` (dom0's boot CPU, which
/// takes `take_pending`) with the guest's trigger mode and polarity, or masks it.
pub fn route(pin: u8, enabled: bool, level: bool, active_low: bool, dest: u32) {
    if pin >= PINS {
        return;
    }
    let bit = 1u32 << pin;
    if level {
        LEVEL.fetch_or(bit, Ordering::Relaxed);
    } else {
        LEVEL.fetch_and(!bit, Ordering::Relaxed);
    }
    let mut entry = u64::from(GSI_VECTOR_BASE + pin) | (u64::from(dest & 0xff) << 56);
    if level {
        entry |= RTE_LEVEL;
    }
    if active_low {
        entry |= RTE_ACTIVE_LOW;
    }
    if !enabled {
        entry |= RTE_MASKED;
    }
    write_entry(pin, entry);
}

/// Unmasks a level-triggered pin again after dom0 handled it.
pub fn unmask_level(pin: u8, active_low: bool, dest: u32) {
    route(pin, true, true, active_low, dest);
}

/// Whether an interrupt waits for dom0 (without taking it).
pub fn any_pending() -> bool {
    PENDING.load(Ordering::Acquire) != 0
}

/// Pins whose interrupt arrived since the last call.
pub fn take_pending() -> u32 {
    PENDING.swap(0, Ordering::AcqRel)
}

extern "C" fn gsi_interrupt(pin: u64) {
    let pin = pin as u8;
    PENDING.fetch_or(1 << pin, Ordering::AcqRel);
    if LEVEL.load(Ordering::Relaxed) & (1 << pin) != 0 {
        // Keep a level line quiet until dom0 has serviced its device.
        write_entry(pin, RTE_MASKED | RTE_LEVEL | u64::from(GSI_VECTOR_BASE + pin));
    }
    super::apic::eoi();
}

global_asm!(
    ".pushsection .text.gsi_entry, \"ax\"",
    ".irp pin, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23",
    "gsi_entry_\\pin:",
    "push rdi",
    "mov edi, \\pin",
    "jmp gsi_common",
    ".endr",
    "gsi_common:",
    "push rax", "push rcx", "push rdx", "push rsi",
    "push r8", "push r9", "push r10", "push r11",
    "cld",
    "call {handler}",
    "pop r11", "pop r10", "pop r9", "pop r8",
    "pop rsi", "pop rdx", "pop rcx", "pop rax",
    "pop rdi",
    "iretq",
    ".popsection",
    ".pushsection .rodata.gsi_table, \"a\"",
    ".balign 8",
    "gsi_entry_table:",
    ".irp pin, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23",
    ".quad gsi_entry_\\pin",
    ".endr",
    ".popsection",
    handler = sym gsi_interrupt,
);

extern "C" {
    static gsi_entry_table: [u64; PINS as usize];
}

/// IDT entries for the forwarded pins: (vector, handler address).
pub fn idt_entries() -> impl Iterator<Item = (u8, u64)> {
    // SAFETY: the table is built by the assembler and never written.
    let table = unsafe { &gsi_entry_table };
    (0..PINS).map(move |pin| (GSI_VECTOR_BASE + pin, table[usize::from(pin)]))
}
