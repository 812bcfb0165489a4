//! Every CPU's loop (target only): a run queue of vCPUs, served round robin,
//! each for at most one time slice, with the CPU halted when none can run.
//!
//! A queue owns its vCPUs (`Box<dyn Runnable>`); a vCPU being run is out of the
//! queue, so nothing is locked while a guest runs. Other CPUs add vCPUs with
//! `enqueue` and make a CPU look again with `smp::kick` (a wake IPI: it leaves
//! `hlt`, or its guest exits).

use crate::arch::x86_64::{apic, cpu_id, smp, time};
use crate::platform::MAX_CPUS;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use spin::Mutex;
use x86_64::instructions::interrupts;

/// Longest a vCPU runs before the next one in the queue gets the CPU.
pub const SLICE_NS: u64 = 10_000_000;

/// Whether a vCPU can run now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    Run,
    /// Not now; look again at this time (`None`: only when kicked).
    Sleep(Option<u64>),
    /// Its domain is gone: drop it (on this CPU, which owns its VMCS/VMCB).
    Gone,
}

/// A vCPU as a run queue sees it.
pub trait Runnable: Send {
    /// Called before each turn; may do housekeeping (deliver interrupts, poll
    /// the console, restart its domain).
    fn poll(&mut self, now: u64) -> Poll;
    /// Runs the guest until `until` (nanoseconds since boot) or until it blocks.
    fn run(&mut self, until: u64);
}

static QUEUES: [Mutex<VecDeque<Box<dyn Runnable>>>; MAX_CPUS] = [const { Mutex::new(VecDeque::new()) }; MAX_CPUS];

/// Nanoseconds since boot, from the TSC.
pub fn now_ns() -> u64 {
    let hz = time::tsc_hz().max(1);
    (u128::from(time::rdtsc()) * 1_000_000_000 / u128::from(hz)) as u64
}

pub fn ns_to_tsc(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(time::tsc_hz()) / 1_000_000_000) as u64
}

/// Gives `v` to CPU `cpu`'s queue and wakes that CPU.
pub fn enqueue(cpu: u32, v: Box<dyn Runnable>) {
    QUEUES[cpu as usize].lock().push_back(v);
    smp::kick(cpu);
}

/// How many vCPUs CPU `cpu` holds (the one running included only while queued).
pub fn queued(cpu: u32) -> usize {
    QUEUES[cpu as usize].lock().len()
}

/// The CPU a new domU vCPU goes to: the least loaded, preferring the APs so
/// dom0's CPU stays responsive.
pub fn pick_cpu() -> u32 {
    let n = smp::cpu_count();
    let first = if n > 1 { 1 } else { 0 };
    (first..n).min_by_key(|&c| queued(c)).unwrap_or(0)
}

/// Work a CPU does between turns (dom0's CPU: overdue shutdown requests).
static HOUSEKEEPING: Mutex<Option<fn(u64)>> = Mutex::new(None);

pub fn set_housekeeping(f: fn(u64)) {
    *HOUSEKEEPING.lock() = Some(f);
}

/// This CPU's scheduler loop, for good. Interrupts stay off except in `hlt`.
pub fn cpu_loop() -> ! {
    interrupts::disable();
    let cpu = cpu_id();
    let queue = &QUEUES[cpu as usize];
    let housekeeping = if cpu == 0 { *HOUSEKEEPING.lock() } else { None };
    loop {
        let now = now_ns();
        if let Some(f) = housekeeping {
            f(now);
        }
        let mut wake: Option<u64> = None;
        let mut ran = false;
        // One pass over the queue: run the first vCPU that can, put it last.
        let n = queue.lock().len();
        for _ in 0..n {
            let Some(mut v) = queue.lock().pop_front() else { break };
            match v.poll(now) {
                Poll::Gone => drop(v),
                Poll::Sleep(at) => {
                    wake = match (wake, at) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    queue.lock().push_back(v);
                }
                Poll::Run => {
                    v.run(now + SLICE_NS);
                    queue.lock().push_back(v);
                    ran = true;
                    break;
                }
            }
        }
        if ran {
            continue;
        }
        // Nothing to run: sleep until the earliest wake-up or a kick.
        if wake.is_none_or(|t| t > now_ns()) {
            apic::arm_timer(wake.map(ns_to_tsc));
            // SAFETY: STI's one-instruction shadow makes STI; HLT atomic, so a
            // timer or kick arriving after the checks above wakes the HLT.
            unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
        }
    }
}
