//! Each CPU's local APIC: x2APIC mode (MSRs) when the CPU has it, else xAPIC
//! (MMIO at the APIC base), chosen once on the boot CPU for all. Provides EOI,
//! IPIs, the wake-up interrupt that `smp` uses, and the timer, calibrated with
//! the TSC against the ACPI PM timer (or the PIT) on the boot CPU.
//!
//! Register layout and ICR encoding: `platform::lapic` (SDM Vol. 3A ch. 11).

use super::cpu::{msr, rdmsr, wrmsr};
use super::time::{self, Deadline, RefClock};
use crate::platform::clock::{self, Mhz};
use crate::platform::lapic::{self, base, reg, Ipi, LVT_MASKED, LVT_TIMER_ONESHOT, SVR_APIC_ENABLE, TIMER_DIVIDE_BY_1};
use crate::platform::{Platform, MAX_CPUS};
use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use log::{info, warn};
use spin::Once;
use x86_64::instructions::port::Port;

/// The vector `smp` sends to wake an idle CPU (and to tell a waiting CPU that
/// its job is done). Its handler only counts it and signals EOI.
pub const WAKE_VECTOR: u8 = 0xf0;
/// The hypervisor's one-shot timer: its only job is to make the CPU leave a
/// guest (or a `hlt`) when a deadline passes; the handler just signals EOI.
pub const TIMER_VECTOR: u8 = 0xef;
/// The spurious-interrupt vector (SDM §11.9): its low four bits must be 1s on
/// old CPUs; it needs no EOI.
pub const SPURIOUS_VECTOR: u8 = 0xff;

/// CPUID.01H:ECX bit 21: x2APIC (SDM §11.12.1).
const CPUID_1_ECX_X2APIC: u32 = 1 << 21;
/// The highest APIC ID an xAPIC-mode ICR can name (255 is broadcast).
const XAPIC_MAX_ID: u32 = 0xfe;
/// How long an xAPIC may take to accept an IPI before we give up on it.
const IPI_ACCEPT_TIMEOUT_US: u64 = 100_000;
/// One calibration run; three are made and the median taken.
const CALIBRATION_US: u64 = 20_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Registers in the 4 KiB MMIO page at `base` (identity mapped, uncached).
    XApic { base: u64 },
    /// Registers are MSRs 0x800..0x8ff.
    X2Apic,
}

static MODE: Once<Mode> = Once::new();
static TIMER_HZ: AtomicU64 = AtomicU64::new(0);
/// Whether `arm_timer` has set this CPU's timer divide and LVT (per CPU).
static TIMER_CONFIGURED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// Host interrupts taken, per CPU (see `take_pending`).
static TAKEN: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
/// Wake interrupts taken, per CPU (see `wakes_taken`).
static WAKES: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

fn mode() -> Mode {
    *MODE.get().expect("local APIC not initialised")
}

fn read(r: u32) -> u32 {
    match mode() {
        // SAFETY: `r` is an architectural register offset inside the APIC page,
        // which is identity mapped uncached; 32-bit aligned reads are the
        // required access size (SDM §11.4.1).
        Mode::XApic { base } => unsafe { core::ptr::read_volatile((base + u64::from(r)) as *const u32) },
        // SAFETY: x2APIC mode is on (set in `init_cpu` before any access), so
        // this register's MSR exists.
        Mode::X2Apic => unsafe { rdmsr(lapic::x2apic_msr(r)) as u32 },
    }
}

fn write(r: u32, value: u32) {
    match mode() {
        // SAFETY: as in `read`; writes to these registers only affect this
        // CPU's interrupt delivery.
        Mode::XApic { base } => unsafe { core::ptr::write_volatile((base + u64::from(r)) as *mut u32, value) },
        // SAFETY: as in `read`.
        Mode::X2Apic => unsafe { wrmsr(lapic::x2apic_msr(r), u64::from(value)) },
    }
}

/// Chooses the APIC mode, masks the legacy PICs, enables the boot CPU's APIC
/// and calibrates the timer and the TSC.
pub fn init_bsp(platform: &Platform) {
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU.
    let apic_base = unsafe { rdmsr(msr::IA32_APIC_BASE) };
    let x2apic = super::cpuid(1, 0).ecx & CPUID_1_ECX_X2APIC != 0;
    let mmio = apic_base & base::ADDR_MASK;
    if let Some(madt) = platform.local_apic_address.filter(|&a| a != mmio) {
        warn!("apic: MADT says the local APIC is at {madt:#x}, IA32_APIC_BASE says {mmio:#x}; using the MSR");
    }
    MODE.call_once(|| if x2apic { Mode::X2Apic } else { Mode::XApic { base: mmio } });
    mask_legacy_pics();
    init_cpu();
    match mode() {
        Mode::X2Apic => info!("apic: x2APIC mode, boot CPU APIC id {}", id()),
        Mode::XApic { base } => info!("apic: xAPIC mode at {base:#x}, boot CPU APIC id {}", id()),
    }
    calibrate(platform);
}

/// The largest APIC ID IPIs can reach in the chosen mode.
pub fn max_apic_id() -> u32 {
    match mode() {
        Mode::XApic { .. } => XAPIC_MAX_ID,
        Mode::X2Apic => u32::MAX - 1,
    }
}

/// The 8259 PICs stay masked: the hypervisor takes no legacy interrupts, and
/// the BIOS routes the PIT's IRQ 0 to vector 8 (#DF's) through LINT0.
fn mask_legacy_pics() {
    const PIC1_DATA: u16 = 0x21;
    const PIC2_DATA: u16 = 0xa1;
    // SAFETY: writing the interrupt mask registers of the standard PC PICs only
    // masks their inputs.
    unsafe {
        Port::<u8>::new(PIC1_DATA).write(0xff);
        Port::<u8>::new(PIC2_DATA).write(0xff);
    }
}

/// Enables the calling CPU's local APIC in the chosen mode, with the timer and
/// LINT0 masked, the spurious vector set and all priorities accepted.
pub fn init_cpu() {
    // SAFETY: IA32_APIC_BASE exists; setting the global enable (and EXTD, when
    // the CPU has x2APIC) keeps the base address and only changes how this CPU's
    // APIC registers are reached (xAPIC -> x2APIC is a legal transition, SDM
    // §11.12.5).
    unsafe {
        let b = rdmsr(msr::IA32_APIC_BASE);
        let want = match mode() {
            Mode::X2Apic => b | base::ENABLE | base::X2APIC_ENABLE,
            Mode::XApic { .. } => b | base::ENABLE,
        };
        if want != b {
            // EXTD may only be set together with, or after, EN.
            wrmsr(msr::IA32_APIC_BASE, want & !base::X2APIC_ENABLE);
            wrmsr(msr::IA32_APIC_BASE, want);
        }
    }
    write(reg::TPR, 0);
    write(reg::LVT_TIMER, LVT_MASKED);
    write(reg::LVT_LINT0, LVT_MASKED);
    write(reg::LVT_ERROR, LVT_MASKED);
    write(reg::SVR, SVR_APIC_ENABLE | u32::from(SPURIOUS_VECTOR));
    // Clear errors latched so far; ESR is write-then-read (SDM §11.5.3).
    write(reg::ESR, 0);
    write(reg::ESR, 0);
}

/// The calling CPU's APIC ID.
pub fn id() -> u32 {
    lapic::apic_id_from_reg(read(reg::ID), mode() == Mode::X2Apic)
}

/// Signals the end of the interrupt being handled (SDM §11.8.5). Every host
/// interrupt handler ends here, so it also counts them for `take_pending`.
pub fn eoi() {
    TAKEN[super::cpu_id() as usize % MAX_CPUS].fetch_add(1, Ordering::Relaxed);
    write(reg::EOI, 0);
}

/// Lets a host interrupt that is pending (the hypervisor runs with interrupts
/// off) be taken in a one-instruction window, and says whether one was: a
/// kick, the timer, or a device's interrupt for dom0.
pub fn take_pending() -> bool {
    let taken = &TAKEN[super::cpu_id() as usize % MAX_CPUS];
    let before = taken.load(Ordering::Relaxed);
    // SAFETY: the hypervisor's IDT handles every vector the host APIC raises;
    // interrupts are off again right after (STI's shadow covers the NOP, so
    // a pending interrupt is taken between NOP and CLI).
    unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
    taken.load(Ordering::Relaxed) != before
}

/// Sends `ipi`; in xAPIC mode waits until the APIC has accepted it.
pub fn send(ipi: Ipi) -> Result<(), &'static str> {
    match mode() {
        Mode::X2Apic => {
            // WRMSR to the x2APIC ICR is not serializing (SDM §11.12.3): fence so
            // memory written for the target (an `smp` mailbox) is visible before
            // the interrupt can arrive.
            // SAFETY: MFENCE/LFENCE only order memory accesses.
            unsafe { core::arch::asm!("mfence", "lfence", options(nostack, preserves_flags)) };
            // SAFETY: x2APIC mode is on; the ICR MSR exists. The IPI's target
            // was chosen by the caller.
            unsafe { wrmsr(lapic::x2apic_msr(reg::ICR_LOW), ipi.x2apic()) };
            Ok(())
        }
        Mode::XApic { .. } => {
            wait_icr_idle()?;
            write(reg::ICR_HIGH, ipi.xapic_high());
            write(reg::ICR_LOW, ipi.low); // the write of the low half sends it
            wait_icr_idle()
        }
    }
}

fn wait_icr_idle() -> Result<(), &'static str> {
    let deadline = Deadline::after_us(IPI_ACCEPT_TIMEOUT_US);
    while read(reg::ICR_LOW) & lapic::icr::SEND_PENDING != 0 {
        if deadline.passed() {
            return Err("the local APIC did not accept the IPI");
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// The local APIC timer's input rate (divide-by-1), 0 if not calibrated.
pub fn timer_hz() -> u64 {
    TIMER_HZ.load(Ordering::Relaxed)
}

/// How many wake interrupts the calling CPU has taken; `smp` waits for this
/// to move so that no wake IPI is ever left pending (a pending interrupt with
/// host IF clear would make every VMRUN/VMLAUNCH exit at once).
pub fn wakes_taken() -> u32 {
    WAKES[super::cpu_id() as usize].load(Ordering::Acquire)
}

/// How many wake interrupts CPU `cpu` has taken (`mem::foreign`'s TLB
/// shootdown waits for another CPU's count to move).
pub fn wakes_taken_by(cpu: u32) -> u32 {
    WAKES[cpu as usize % MAX_CPUS].load(Ordering::Acquire)
}

/// Sends the calling CPU a wake IPI and returns once it is pending in the
/// IRR (SDM §11.8.4): with interrupts off it stays there, so the vCPU run
/// loop's `take_pending` takes it before the next guest entry and ends the
/// slice.
pub fn wake_self() -> Result<(), &'static str> {
    send(Ipi::fixed(id(), WAKE_VECTOR))?;
    let word = crate::devices::lapic::reg::IRR + 0x10 * u32::from(WAKE_VECTOR / 32);
    let bit = 1u32 << (WAKE_VECTOR % 32);
    for _ in 0..1_000_000 {
        if read(word) & bit != 0 {
            return Ok(());
        }
        core::hint::spin_loop();
    }
    Err("the wake IPI to itself never became pending")
}

/// Measures the APIC timer and the TSC against the PM timer (else the PIT):
/// three 20 ms runs, median of each.
fn calibrate(platform: &Platform) {
    let clocks = [platform.pm_timer.map(RefClock::Pm), Some(RefClock::Pit)];
    write(reg::TIMER_DIVIDE, TIMER_DIVIDE_BY_1);
    write(reg::LVT_TIMER, LVT_MASKED | LVT_TIMER_ONESHOT);
    for refclock in clocks.into_iter().flatten() {
        let mut apic = [0; 3];
        let mut tsc = [0; 3];
        let mut ok = true;
        for run in 0..3 {
            let (mut tsc0, mut tsc1, mut left) = (0, 0, 0);
            let measured = refclock.measure(
                CALIBRATION_US,
                || {
                    tsc0 = time::rdtsc();
                    write(reg::TIMER_INITIAL_COUNT, u32::MAX);
                },
                // Each clock read right after the reference, in the same order
                // at both ends: a read between them (an MMIO access, slow
                // under an emulator) would count in one interval and not the
                // other (TSC +0.03..0.07 % under QEMU when the APIC was read
                // first).
                || {
                    tsc1 = time::rdtsc();
                    left = read(reg::TIMER_CURRENT_COUNT);
                },
            );
            let rates = measured.and_then(|(ticks, hz)| {
                Some((clock::rate_hz(u64::from(u32::MAX - left), ticks, hz)?, clock::rate_hz(tsc1 - tsc0, ticks, hz)?))
            });
            match rates {
                Some((a, t)) if a > 0 && t > 0 && left > 0 => (apic[run], tsc[run]) = (a, t),
                _ => ok = false,
            }
        }
        write(reg::TIMER_INITIAL_COUNT, 0);
        if !ok {
            warn!("apic: calibration against the {} failed", refclock.name());
            continue;
        }
        let (apic_hz, tsc_hz) = (clock::median3(apic), clock::median3(tsc));
        TIMER_HZ.store(apic_hz, Ordering::Relaxed);
        time::set_tsc_hz(tsc_hz);
        info!(
            "apic: timer {}, TSC {} (calibrated against the {}, median of 3 x {} ms)",
            Mhz(apic_hz),
            Mhz(tsc_hz),
            refclock.name(),
            CALIBRATION_US / 1000
        );
        return;
    }
    warn!("apic: could not calibrate the timer or the TSC; delays will be long");
}

/// Arms this CPU's one-shot timer to fire when the TSC reaches `deadline_tsc`
/// (at once if it has passed), or stops it (`None`).
pub fn arm_timer(deadline_tsc: Option<u64>) {
    let Some(deadline) = deadline_tsc else {
        write(reg::TIMER_INITIAL_COUNT, 0);
        return;
    };
    let (tsc_hz, timer_hz) = (time::tsc_hz(), timer_hz());
    let ticks = deadline.saturating_sub(time::rdtsc());
    let count = if tsc_hz == 0 || timer_hz == 0 {
        u32::MAX
    } else {
        (u128::from(ticks) * u128::from(timer_hz) / u128::from(tsc_hz)).clamp(1, u128::from(u32::MAX)) as u32
    };
    // Divide and LVT only once per CPU: this runs before every guest entry.
    let configured = &TIMER_CONFIGURED[super::cpu_id() as usize];
    if !configured.swap(true, Ordering::Relaxed) {
        write(reg::TIMER_DIVIDE, TIMER_DIVIDE_BY_1);
        write(reg::LVT_TIMER, u32::from(TIMER_VECTOR) | LVT_TIMER_ONESHOT);
    }
    write(reg::TIMER_INITIAL_COUNT, count);
}

extern "C" fn timer_interrupt() {
    eoi();
}

extern "C" fn wake_interrupt() {
    WAKES[super::cpu_id() as usize].fetch_add(1, Ordering::AcqRel);
    eoi();
}

// Entry stubs for the APIC vectors (one macro for the wake and timer vectors). The CPU pushes 5 words onto a 16-byte
// aligned stack; 9 more keep the call aligned. Caller-saved registers only: the
// handler is an `extern "C"` function.
global_asm!(
    ".pushsection .text.apic_entry, \"ax\"",
    ".macro apic_entry name, handler",
    ".global \\name",
    "\\name:",
    "push rax", "push rcx", "push rdx", "push rsi", "push rdi",
    "push r8", "push r9", "push r10", "push r11",
    "cld",
    "call \\handler",
    "pop r11", "pop r10", "pop r9", "pop r8",
    "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rax",
    "iretq",
    ".endm",
    "apic_entry apic_wake_entry, {wake}",
    "apic_entry apic_timer_entry, {timer}",
    ".global apic_spurious_entry",
    "apic_spurious_entry:",
    "iretq",
    ".popsection",
    wake = sym wake_interrupt,
    timer = sym timer_interrupt,
);

extern "C" {
    fn apic_wake_entry();
    fn apic_timer_entry();
    fn apic_spurious_entry();
}

/// IDT entries for the APIC's vectors: (vector, handler address).
pub fn idt_entries() -> [(u8, u64); 3] {
    [
        (WAKE_VECTOR, apic_wake_entry as *const () as u64),
        (TIMER_VECTOR, apic_timer_entry as *const () as u64),
        (SPURIOUS_VECTOR, apic_spurious_entry as *const () as u64),
    ]
}
