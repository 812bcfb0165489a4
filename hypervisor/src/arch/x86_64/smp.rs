//! Starting the application processors (APs) and giving them work.
//!
//! Bring-up, one AP at a time (Intel SDM Vol. 3A §9.4.4.1 "Typical BSP
//! Initialization Sequence"): the boot CPU copies the real-mode
//! trampoline (`trampoline.rs`) to `paging::TRAMPOLINE_PAGE`, writes the AP's
//! CR3, stack, CPU number and entry point to the boot-data page `AP_BOOT_DATA`,
//! then sends INIT, waits 10 ms, and sends START-UP twice, 200 us apart. The AP
//! climbs from real mode to long mode on the hypervisor's own page tables and
//! calls `ap_main`, which sets up its per-CPU state, turns on VMX/SVM and goes
//! idle. An AP that does not reach `ap_main` within a second is sent INIT again
//! (parking it in wait-for-SIPI) and reported; its CPU number goes to the next.
//!
//! Work: `run_on(cpu, f)` puts `f` in that CPU's mailbox, wakes it with an IPI
//! and sleeps (`sti; hlt`) until the AP has run `f` and sent an IPI back. Idle
//! APs sleep in `hlt` too, so they cost an emulator nothing. Each side waits
//! until it has actually *taken* the IPI meant for it, so no wake-up IPI is
//! ever left pending: with host interrupts masked, a pending interrupt would
//! make every later VM entry exit at once.

use super::apic::{self, WAKE_VECTOR};
use super::paging::{self, TRAMPOLINE_PAGE};
use super::time::{delay_us, Deadline};
use super::trampoline::{self, ApBootData};
use crate::mem::{self, PAGE_SIZE};
use crate::platform::lapic::Ipi;
use crate::platform::{select_cpus, Platform, MAX_CPUS};
use core::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};
use log::{info, warn};
use x86_64::instructions::interrupts;

/// Each AP's stack: 64 KiB, as the boot CPU's, from the frame allocator (the
/// 8 MiB heap could not hold 63 of them beside everything else).
const AP_STACK_PAGES: usize = 16;
/// INIT to first START-UP, and START-UP to START-UP (SDM §9.4.4.1).
const INIT_DELAY_US: u64 = 10_000;
const SIPI_DELAY_US: u64 = 200;
/// From the START-UPs to the AP reaching Rust, and from there to online.
const START_TIMEOUT_US: u64 = 1_000_000;
const ONLINE_TIMEOUT_US: u64 = 5_000_000;

/// Where a CPU is in its life.
mod state {
    pub const OFFLINE: u8 = 0;
    /// Reached `ap_main`: done with the boot-data page and the trampoline.
    pub const STARTED: u8 = 1;
    /// Set up and idle, ready for `run_on`.
    pub const ONLINE: u8 = 2;
}

/// One CPU's slot, indexed by dense CPU number.
struct Slot {
    apic_id: AtomicU32,
    state: AtomicU8,
    /// The `fn()` to run, as an address; 0 when the mailbox is empty.
    work: AtomicUsize,
    /// APIC ID of the CPU waiting for `work` to finish.
    caller_apic: AtomicU32,
    /// Held by a caller for the whole of a `run_on` on this CPU.
    busy: spin::Mutex<()>,
    /// Given a job for good (`start_on`): no more `run_on`.
    detached: core::sync::atomic::AtomicBool,
}

static CPUS: [Slot; MAX_CPUS] = [const {
    Slot {
        apic_id: AtomicU32::new(0),
        state: AtomicU8::new(state::OFFLINE),
        work: AtomicUsize::new(0),
        caller_apic: AtomicU32::new(0),
        busy: spin::Mutex::new(()),
        detached: core::sync::atomic::AtomicBool::new(false),
    }
}; MAX_CPUS];

/// CPUs online; they are numbered 0..ONLINE (0 is the boot CPU).
static ONLINE: AtomicU32 = AtomicU32::new(1);

/// How many CPUs are online: `run_on` takes 0..cpu_count().
pub fn cpu_count() -> u32 {
    ONLINE.load(Ordering::Acquire)
}

/// The APIC ID of CPU `cpu` (0..cpu_count()).
pub fn apic_id(cpu: u32) -> u32 {
    CPUS[cpu as usize].apic_id.load(Ordering::Relaxed)
}

/// Sets up the boot CPU's local APIC and timers, then starts every enabled CPU
/// of the MADT (at most `MAX_CPUS`) and logs how many came up.
pub fn init(platform: &Platform) {
    apic::init_bsp(platform);
    let bsp_apic = apic::id();
    let cpus = select_cpus(platform.madt_cpus.iter().copied(), bsp_apic, apic::max_apic_id());
    // Without a MADT (already reported) the list is just the boot CPU.
    if !platform.madt_cpus.is_empty() {
        for note in &cpus.notes {
            warn!("smp: {note}");
        }
    }
    CPUS[0].apic_id.store(bsp_apic, Ordering::Relaxed);
    CPUS[0].state.store(state::ONLINE, Ordering::Release);
    info!("smp: cpu0 online (apic id {bsp_apic})");
    let total = cpus.apic_ids.len();
    if total > 1 {
        start_aps(&cpus.apic_ids[1..]);
    }
    info!("smp: {}/{total} cpus online", cpu_count());
}

fn start_aps(apic_ids: &[u32]) {
    let cr3 = paging::root();
    if cr3 >= 1 << 32 {
        // The trampoline loads CR3 in 32-bit mode.
        warn!("smp: page tables at {cr3:#x} are above 4 GiB; not starting the other CPUs");
        return;
    }
    trampoline::install();
    for (i, &apic_id) in apic_ids.iter().enumerate() {
        let cpu = cpu_count();
        match start_ap(cpu, apic_id, cr3) {
            Ok(()) => {
                ONLINE.store(cpu + 1, Ordering::Release);
            }
            Err(Failure::NotStarted(why)) => warn!("smp: cpu{cpu} (apic id {apic_id}) did not start ({why})"),
            Err(Failure::NotOnline) => {
                // It may still be using its CPU number and stack: numbers must
                // stay dense, so stop here.
                warn!(
                    "smp: cpu{cpu} (apic id {apic_id}) started but did not come online; not starting the other {} CPU(s)",
                    apic_ids.len() - i - 1
                );
                return;
            }
        }
    }
}

enum Failure {
    NotStarted(&'static str),
    NotOnline,
}

/// INIT-SIPI-SIPI for one AP, which becomes CPU `cpu`.
fn start_ap(cpu: u32, apic_id: u32, cr3: u64) -> Result<(), Failure> {
    let slot = &CPUS[cpu as usize];
    let stack = mem::alloc_frames(AP_STACK_PAGES, 1).ok_or(Failure::NotStarted("out of memory for its stack"))?;
    slot.apic_id.store(apic_id, Ordering::Relaxed);
    slot.state.store(state::OFFLINE, Ordering::Release);
    trampoline::set_boot_data(ApBootData {
        cr3,
        stack_top: stack.as_u64() + AP_STACK_PAGES as u64 * PAGE_SIZE,
        entry: ap_main as *const () as u64,
        cpu,
    });
    let sent = (|| {
        apic::send(Ipi::init(apic_id))?;
        delay_us(INIT_DELAY_US);
        for _ in 0..2 {
            apic::send(Ipi::startup(apic_id, (TRAMPOLINE_PAGE >> 12) as u8))?;
            delay_us(SIPI_DELAY_US);
        }
        Ok(())
    })();
    let started = sent.and_then(|()| {
        wait_state(slot, state::STARTED, START_TIMEOUT_US).then_some(()).ok_or("no response to START-UP")
    });
    if let Err(why) = started {
        // Park it in wait-for-SIPI so it cannot run the trampoline later with
        // the next AP's boot data.
        let _ = apic::send(Ipi::init(apic_id));
        delay_us(INIT_DELAY_US);
        mem::free_frames(stack, AP_STACK_PAGES);
        return Err(Failure::NotStarted(why));
    }
    if wait_state(slot, state::ONLINE, ONLINE_TIMEOUT_US) {
        Ok(())
    } else {
        Err(Failure::NotOnline)
    }
}

fn wait_state(slot: &Slot, want: u8, timeout_us: u64) -> bool {
    let deadline = Deadline::after_us(timeout_us);
    while slot.state.load(Ordering::Acquire) < want {
        if deadline.passed() {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// The Rust entry of an AP, called by the trampoline on the AP's own stack with
/// interrupts off and the hypervisor's page tables loaded.
extern "C" fn ap_main(cpu: u32) -> ! {
    let slot = &CPUS[cpu as usize];
    slot.state.store(state::STARTED, Ordering::Release);
    let apic_id = slot.apic_id.load(Ordering::Relaxed);
    super::percpu::init_cpu(cpu, apic_id);
    super::idt::init();
    apic::init_cpu();
    if apic::id() != apic_id {
        warn!("smp: cpu{cpu} has APIC id {}, expected {apic_id}", apic::id());
    }
    crate::virt::init_cpu();
    info!("smp: cpu{cpu} online (apic id {apic_id})");
    slot.state.store(state::ONLINE, Ordering::Release);
    idle(slot)
}

/// An AP's life once online: sleep until a job comes, run it, say so. Jobs run
/// with interrupts off, as everything in the hypervisor does.
fn idle(slot: &Slot) -> ! {
    interrupts::disable();
    // Wake IPIs taken up to the end of the last job. Each job comes with one
    // IPI, sent after the job is posted; the job runs only once that IPI has
    // been taken (in the `hlt` below), so it never stays pending.
    let mut seen = apic::wakes_taken();
    loop {
        let work = slot.work.load(Ordering::Acquire);
        if work == 0 || apic::wakes_taken() == seen {
            // STI's one-instruction shadow makes `sti; hlt` atomic: an IPI that
            // arrived since the check wakes the HLT instead of being missed.
            interrupts::enable_and_hlt();
            interrupts::disable();
            continue;
        }
        // SAFETY: `run_on` stores only `fn()` pointers in `work`, `start_on` only
        // `fn() -> !` ones: the same call, which then never returns.
        let f: fn() = unsafe { core::mem::transmute::<usize, fn()>(work) };
        f();
        interrupts::disable();
        // Before emptying the mailbox: the next job's IPI comes after that.
        seen = apic::wakes_taken();
        let caller = slot.caller_apic.load(Ordering::Relaxed);
        slot.work.store(0, Ordering::Release);
        if let Err(why) = apic::send(Ipi::fixed(caller, WAKE_VECTOR)) {
            warn!("smp: cpu{}: cannot wake APIC id {caller}: {why}", super::cpu_id());
        }
    }
}

/// With interrupts off, sleeps until `done()` holds and this CPU has taken a
/// wake IPI since `wakes_taken()` returned `seen`. Returns with interrupts off.
fn sleep_until(seen: u32, done: impl Fn() -> bool) {
    loop {
        interrupts::disable();
        if apic::wakes_taken() != seen && done() {
            return;
        }
        interrupts::enable_and_hlt(); // atomic, as in `idle`
    }
}

/// Runs `f` on CPU `cpu` (0..cpu_count(); 0 is the boot CPU) and returns when
/// it has returned. On the calling CPU itself, just calls `f`.
///
/// Panics if `cpu` is not online. If `f` never returns (or faults, which halts
/// that CPU), neither does `run_on`.
pub fn run_on(cpu: u32, f: fn()) {
    if cpu == super::cpu_id() {
        f();
        return;
    }
    assert!(cpu < cpu_count(), "smp::run_on: cpu{cpu} is not online ({} cpus)", cpu_count());
    let slot = &CPUS[cpu as usize];
    assert!(!slot.detached.load(Ordering::Acquire), "smp::run_on: cpu{cpu} runs its scheduler for good");
    let _busy = slot.busy.lock();
    let was_enabled = interrupts::are_enabled();
    interrupts::disable();
    let seen = apic::wakes_taken();
    slot.caller_apic.store(CPUS[super::cpu_id() as usize].apic_id.load(Ordering::Relaxed), Ordering::Relaxed);
    slot.work.store(f as usize, Ordering::Release);
    let target = slot.apic_id.load(Ordering::Relaxed);
    if let Err(why) = apic::send(Ipi::fixed(target, WAKE_VECTOR)) {
        panic!("smp::run_on: cannot wake cpu{cpu} (apic id {target}): {why}");
    }
    sleep_until(seen, || slot.work.load(Ordering::Acquire) == 0);
    if was_enabled {
        interrupts::enable();
    }
}

/// Gives AP `cpu` a job it keeps for good (its scheduler loop) and returns at
/// once; `run_on` that CPU is refused from then on.
pub fn start_on(cpu: u32, f: fn() -> !) {
    assert!(cpu != 0 && cpu < cpu_count(), "smp::start_on: cpu{cpu} is not an online AP");
    let slot = &CPUS[cpu as usize];
    let _busy = slot.busy.lock();
    assert!(!slot.detached.swap(true, Ordering::AcqRel), "smp::start_on: cpu{cpu} already started");
    slot.caller_apic.store(CPUS[super::cpu_id() as usize].apic_id.load(Ordering::Relaxed), Ordering::Relaxed);
    slot.work.store(f as usize, Ordering::Release);
    kick(cpu);
}

/// Sends CPU `cpu` a wake IPI: it leaves `hlt`, or its guest exits, and it
/// looks at its run queue again.
/// Sends a physical NMI to every other online CPU (the hypervisor console's
/// `n` key, as Xen's debug key: checks that an NMI arriving while a guest runs
/// is the host's, counted and dismissed). Returns how many were sent.
pub fn nmi_others() -> u32 {
    let mut sent = 0;
    for cpu in (0..cpu_count()).filter(|&c| c != super::cpu_id()) {
        let target = CPUS[cpu as usize].apic_id.load(Ordering::Relaxed);
        match apic::send(Ipi::nmi(target)) {
            Ok(()) => sent += 1,
            Err(why) => warn!("smp: cannot send an NMI to cpu{cpu} (apic id {target}): {why}"),
        }
    }
    sent
}

pub fn kick(cpu: u32) {
    if cpu == super::cpu_id() || cpu >= cpu_count() {
        return;
    }
    let target = CPUS[cpu as usize].apic_id.load(Ordering::Relaxed);
    if let Err(why) = apic::send(Ipi::fixed(target, WAKE_VECTOR)) {
        warn!("smp: cannot kick cpu{cpu} (apic id {target}): {why}");
    }
}
