//! Every CPU's loop (target only), driven by the credit scheduler
//! (`sched::credit`): the scheduler decides which vCPU each CPU runs and until
//! when; this file owns the vCPUs and runs them.
//!
//! A vCPU not running sits in `VCPUS`, with whether it is blocked and which CPU
//! watches it. Each CPU, on every turn: polls the blocked vCPUs it watches
//! (a woken one goes to `CreditScheduler::wake`), asks `schedule` what to run,
//! takes that vCPU out of `VCPUS`, moves it here if it ran elsewhere
//! (`Runnable::adopt`), runs it until the decision's deadline (the host's
//! one-shot APIC timer makes the guest exit) or until it blocks, polls it once
//! more (blocked → `block`, gone → removed), lets go of it (`release`) and puts
//! it back. With nothing to run the CPU halts until its timer or a kick.
//!
//! Locks: `VCPUS` and `SCHED` are never held while a guest runs or while a
//! `Runnable` is called; code holding the domain table's lock never calls in
//! here (domain control drops it first).

use super::credit::{CpuMask, CreditScheduler, Params, VcpuId, VcpuState};
use crate::arch::x86_64::{apic, cpu_id, irq, smp, time};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use log::warn;
use spin::Mutex;
use x86_64::instructions::interrupts;

/// Whether a vCPU can run now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    Run,
    /// Not now; look again at this time (`None`: only when kicked).
    Sleep(Option<u64>),
    /// Its domain is gone: drop it.
    Gone,
}

/// A vCPU as the loop sees it.
pub trait Runnable: Send {
    /// Whether it can run: called while it is blocked (each turn of the CPU
    /// watching it), and after each run. May do housekeeping (deliver
    /// interrupts, poll the console, restart its domain).
    fn poll(&mut self, now: u64) -> Poll;
    /// Runs the guest until `until` (nanoseconds since boot), until it blocks
    /// or until a physical interrupt (the timer, a kick) makes it exit.
    fn run(&mut self, until: u64);
    /// Before running on the calling CPU when another CPU ran it last.
    fn adopt(&mut self) {}
    /// After a run, when the vCPU may run on another CPU next.
    fn release(&mut self) {}
}

struct Entry {
    v: Box<dyn Runnable>,
    /// When a poll found it ready after blocking (for the wake-up latency).
    woken_at: Option<u64>,
    /// Blocked in the scheduler: polled by `watcher` each turn.
    blocked: bool,
    /// The CPU that ran it last (and polls it while blocked).
    watcher: u32,
    /// Whether it may run on more than one CPU (then released after each run).
    movable: bool,
    /// Unpaused in the scheduler (new vCPUs start paused there).
    started: bool,
    /// When its last poll asked to be polled again (`Poll::Sleep(Some(t))`),
    /// for `watchdog`.
    wake_at: Option<u64>,
}

/// How soon `poll_blocked` looks again at a due vCPU it found out of `VCPUS`.
const RETRY_NS: u64 = 1_000_000;

/// vCPUs not running right now.
static VCPUS: Mutex<BTreeMap<VcpuId, Entry>> = Mutex::new(BTreeMap::new());
/// When each CPU polls which blocked vCPUs: (watcher, time, vCPU), time 0 for
/// "next turn" (new, just blocked, or nudged). A CPU's turn polls only the
/// vCPUs due, and sleeps until its first key, both O(log n): with hundreds
/// of blocked domUs a turn does not poll them all. A key may be stale (the
/// vCPU ran, moved or went since): the poll checks and skips it. Taken after
/// `VCPUS` or alone.
static DUE: Mutex<BTreeSet<(u32, u64, VcpuId)>> = Mutex::new(BTreeSet::new());
static SCHED: Mutex<Option<CreditScheduler>> = Mutex::new(None);
/// Per CPU: the vCPU it runs now, for `vcpu_list` (`u64::MAX`: none).
static RUNNING: [core::sync::atomic::AtomicU64; crate::platform::MAX_CPUS] =
    [const { core::sync::atomic::AtomicU64::new(u64::MAX) }; crate::platform::MAX_CPUS];

fn key(id: VcpuId) -> u64 {
    (u64::from(id.dom) << 32) | u64::from(id.vcpu)
}

pub use crate::arch::x86_64::time::{now_ns, ns_to_tsc};

/// Makes the scheduler for the online CPUs, with a time slice of `slice_ms`.
pub fn init(slice_ms: Option<u64>) {
    let mut params = Params::default();
    if let Some(ms) = slice_ms {
        params.slice_ns = ms.clamp(1, 1000) * 1_000_000;
    }
    match CreditScheduler::new(smp::cpu_count(), params, now_ns()) {
        Ok(s) => {
            log::info!("sched: credit scheduler on {} CPUs, {} ms slices", smp::cpu_count(), params.slice_ns / 1_000_000);
            *SCHED.lock() = Some(s);
        }
        Err(e) => crate::console::fatal(format_args!("sched: {e:?}")),
    }
}

fn kick_all(mask: CpuMask) {
    let me = cpu_id();
    for cpu in mask.iter().filter(|&c| c != me) {
        smp::kick(cpu);
    }
}

fn with_sched<T>(f: impl FnOnce(&mut CreditScheduler, u64) -> T) -> Option<T> {
    let now = now_ns();
    SCHED.lock().as_mut().map(|s| f(s, now))
}

/// The online CPUs as a mask.
pub fn all_cpus() -> CpuMask {
    CpuMask::first(smp::cpu_count())
}

/// Adds a domain to the scheduler.
pub fn add_domain(dom: u32, weight: u32, cap: u32) -> Result<(), oxen_abi::Error> {
    let weight = u16::try_from(weight).map_err(|_| oxen_abi::Error::Inval)?;
    with_sched(|s, _| s.add_domain(dom, weight, cap)).map_or(Err(oxen_abi::Error::Inval), |r| r.map_err(|_| oxen_abi::Error::Inval))
}

/// Sets a domain's weight and cap.
pub fn set_params(dom: u32, weight: u32, cap: u32) -> Result<(), oxen_abi::Error> {
    let weight = u16::try_from(weight).map_err(|_| oxen_abi::Error::Inval)?;
    let kicks = with_sched(|s, now| s.set_params(dom, weight, cap, now)).ok_or(oxen_abi::Error::Inval)?.map_err(|_| oxen_abi::Error::Inval)?;
    kick_all(kicks);
    Ok(())
}

/// Adds vCPU `id` allowed on `affinity`, first watched by `first_cpu`, and
/// lets it run. A `movable` vCPU is released after every run, so any CPU of
/// its affinity can adopt it; one that is not stays on `first_cpu`.
pub fn add_vcpu(id: VcpuId, affinity: CpuMask, first_cpu: u32, movable: bool, v: Box<dyn Runnable>) -> Result<(), oxen_abi::Error> {
    let added = with_sched(|s, _| s.add_vcpu(id, affinity)).ok_or(oxen_abi::Error::Inval)?;
    if added.is_err() {
        return Err(oxen_abi::Error::Inval);
    }
    // New vCPUs start paused in the scheduler; the watcher's first poll that
    // finds it ready unpauses it.
    VCPUS.lock().insert(id, Entry { v, woken_at: None, blocked: true, watcher: first_cpu, movable, started: false, wake_at: None });
    DUE.lock().insert((first_cpu, 0, id));
    smp::kick(first_cpu);
    Ok(())
}

/// dom0's vCPU `cpu`, pinned to that CPU.
pub fn enqueue(cpu: u32, v: Box<dyn Runnable>) {
    let id = VcpuId { dom: 0, vcpu: cpu };
    if let Err(e) = add_vcpu(id, CpuMask::one(cpu), cpu, false, v) {
        crate::console::fatal(format_args!("sched: cannot add dom0's vCPU {cpu}: {e:?}"));
    }
}

/// Pins a vCPU to `cpus` (which must name an online CPU).
/// (Callers refuse it for dom0, whose vCPU i is bound to CPU i.)
pub fn set_affinity(id: VcpuId, cpus: CpuMask) -> Result<(), oxen_abi::Error> {
    if cpus.and(all_cpus()).is_empty() {
        return Err(oxen_abi::Error::Inval);
    }
    let kicks = with_sched(|s, now| s.set_affinity(id, cpus.and(all_cpus()), now))
        .ok_or(oxen_abi::Error::Inval)?
        .map_err(|_| oxen_abi::Error::NoEnt)?;
    kick_all(kicks);
    Ok(())
}

/// Makes the CPU watching `id` poll it soon (its domain changed state).
pub fn nudge(id: VcpuId) {
    let watcher = VCPUS.lock().get(&id).map(|e| e.watcher);
    match watcher {
        Some(cpu) => {
            DUE.lock().insert((cpu, 0, id));
            smp::kick(cpu);
        }
        // Running, or out of `VCPUS` for a moment (being polled, or between
        // its run and its return): every CPU looks at it on its next turn,
        // and the one running it exits, so the change is never missed.
        None => {
            for cpu in 0..smp::cpu_count() {
                DUE.lock().insert((cpu, 0, id));
                smp::kick(cpu);
            }
        }
    }
}

/// One vCPU for `VCPU_LIST`.
pub fn vcpu_info(id: VcpuId) -> Option<(u32, u32, u64, u64)> {
    let info = with_sched(|s, now| s.vcpu_info(id, now))?.ok()?;
    let state = match info.state {
        VcpuState::Running { .. } => oxen_abi::vcpu_state::RUNNING,
        VcpuState::Queued { .. } => oxen_abi::vcpu_state::RUNNABLE,
        VcpuState::Blocked => oxen_abi::vcpu_state::BLOCKED,
        VcpuState::Paused | VcpuState::Parked => oxen_abi::vcpu_state::PAUSED,
    };
    Some((info.cpu, state, info.affinity.0, info.cpu_time_ns))
}

/// The vCPUs known to the scheduler, in ID order.
pub fn vcpu_ids() -> Vec<VcpuId> {
    let mut ids: Vec<VcpuId> = VCPUS.lock().keys().copied().collect();
    for cpu in 0..smp::cpu_count() {
        let k = RUNNING[cpu as usize].load(core::sync::atomic::Ordering::Relaxed);
        if k != u64::MAX {
            ids.push(VcpuId { dom: (k >> 32) as u32, vcpu: k as u32 });
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

/// Per CPU: how many vCPUs it watches (blocked) and whether it runs one.
pub fn cpu_summary(cpu: u32) -> (usize, bool) {
    let watched = VCPUS.lock().values().filter(|e| e.watcher == cpu).count();
    (watched, RUNNING[cpu as usize].load(core::sync::atomic::Ordering::Relaxed) != u64::MAX)
}

/// The CPU a new domU vCPU is first watched by: the APs before dom0's CPU.
pub fn pick_cpu() -> u32 {
    let n = smp::cpu_count();
    let first = if n > 1 { 1 } else { 0 };
    (first..n).min_by_key(|&c| cpu_summary(c).0).unwrap_or(0)
}

/// When dom0's vCPU 0 was last polled or run (ns since boot). It is looked at
/// every 10 ms at least (its serial input), so a long gap means the loop lost
/// it: `watchdog` says so, with the loop's state.
static DOM0_V0_SEEN: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// How long dom0's vCPU 0, or an event dom0 wants, may go unattended before
/// `watchdog` reports (once per boot).
const WATCHDOG_NS: u64 = 5_000_000_000;
/// How long an idle CPU 0 sleeps at most, so that `watchdog` runs.
const WATCHDOG_PERIOD_NS: u64 = 1_000_000_000;

/// When dom0's vCPU 0 last ran (0: not yet).
static DOM0_V0_RAN: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// How long dom0's vCPU 0 may wait without running before `watchdog` reports:
/// Linux wakes an idle CPU for its timers well within this (the clocksource
/// watchdog alone every 0.5 s), so a dom0 halted this long waits for an
/// interrupt that does not come, or for a timer it was not given.
const DOM0_ASLEEP_NS: u64 = 30_000_000_000;

/// When each CPU's idle HLT is to end at the latest (the timer it armed), 0
/// while it is awake.
static ASLEEP_UNTIL: [core::sync::atomic::AtomicU64; crate::platform::MAX_CPUS] =
    [const { core::sync::atomic::AtomicU64::new(0) }; crate::platform::MAX_CPUS];
/// How long past its timer a halted CPU may sleep before the CPU before it in
/// the ring wakes it (`watch_neighbour`).
const OVERSLEPT_NS: u64 = 2_000_000_000;

/// When each CPU's vCPU run is to end at the latest (the slice's end it
/// passed to `run`), 0 while it runs none.
static RUN_UNTIL: [core::sync::atomic::AtomicU64; crate::platform::MAX_CPUS] =
    [const { core::sync::atomic::AtomicU64::new(0) }; crate::platform::MAX_CPUS];

/// Whether a CPU asleep (or in a vCPU's run) until `until` (0: neither) is
/// well past it at `now`.
fn overslept(until: u64, now: u64) -> bool {
    until != 0 && now > until.saturating_add(OVERSLEPT_NS)
}

/// Each turn of CPU `cpu`: the next CPU in the ring, if it is still halted
/// well after its timer was due, missed that interrupt (the `dom0-hvmem-svm`
/// sighting under QEMU: both CPUs in the idle HLT for minutes, CPU 0's timer
/// armed for a second). It is woken with an IPI, and the first time each CPU
/// is, the log says so. The same for a CPU still in a vCPU's run well after
/// the slice's end (a guest spinning without exits keeps its CPU until the
/// slice's timer interrupt: a lost one would keep it for good; a CI run of
/// `dom0-disk-svm` stalled with no line at all, which this would explain).
/// Every idle CPU sleeps at most `WATCHDOG_PERIOD_NS` when there are two or
/// more, so each is looked at within a few seconds.
fn watch_neighbour(cpu: u32, now: u64) {
    static REPORTED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
    let n = smp::cpu_count();
    if n < 2 {
        return;
    }
    static REPORTED_RUN: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
    let next = (cpu + 1) % n;
    let bit = 1u64 << (next % 64);
    let asleep = ASLEEP_UNTIL[next as usize].load(core::sync::atomic::Ordering::Relaxed);
    let running = RUN_UNTIL[next as usize].load(core::sync::atomic::Ordering::Relaxed);
    if overslept(asleep, now) {
        if REPORTED.fetch_or(bit, core::sync::atomic::Ordering::Relaxed) & bit == 0 {
            warn!(
                "sched: cpu{next} was still halted {} ms after its timer was due (an interrupt lost?); cpu{cpu} woke it",
                (now - asleep) / 1_000_000
            );
        }
    } else if overslept(running, now) {
        // A vCPU that makes no exits leaves its run only by the timer armed
        // for the slice's end (or a kick): a CPU still in it seconds later
        // missed that interrupt, or is in a long exit (a big hypercall under
        // Bochs); the kick ends the run at its next exit either way.
        // Kicked again at most every 100 ms while the run goes on.
        static KICKED_AT: [core::sync::atomic::AtomicU64; crate::platform::MAX_CPUS] =
            [const { core::sync::atomic::AtomicU64::new(0) }; crate::platform::MAX_CPUS];
        let last = KICKED_AT[next as usize].load(core::sync::atomic::Ordering::Relaxed);
        if now.saturating_sub(last) < 100_000_000 {
            return;
        }
        KICKED_AT[next as usize].store(now, core::sync::atomic::Ordering::Relaxed);
        if REPORTED_RUN.fetch_or(bit, core::sync::atomic::Ordering::Relaxed) & bit == 0 {
            let k = RUNNING[next as usize].load(core::sync::atomic::Ordering::Relaxed);
            warn!(
                "sched: cpu{next} was still in d{}v{}'s run {} ms after its slice ended (its timer interrupt lost, or a long exit); cpu{cpu} kicked it",
                k >> 32,
                k & 0xffff_ffff,
                (now - running) / 1_000_000
            );
        }
    } else {
        return;
    }
    smp::kick(next);
}

fn seen(id: VcpuId, now: u64, ran: bool) {
    if id == (VcpuId { dom: 0, vcpu: 0 }) {
        DOM0_V0_SEEN.store(now, core::sync::atomic::Ordering::Relaxed);
        if ran {
            DOM0_V0_RAN.store(now, core::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// CPU 0, each turn: reports (once) dom0's vCPU 0 not looked at for
/// `WATCHDOG_NS`, not run for `DOM0_ASLEEP_NS`, or an event dom0 wants pending
/// `WATCHDOG_NS` (`pending_since`: when `events_pending` was first seen true,
/// 0 if it is not).
fn watchdog(now: u64, events_pending: bool, pending_since: &mut u64) {
    static REPORTED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    *pending_since = match (events_pending, *pending_since) {
        (false, _) => 0,
        (true, 0) => now,
        (true, t) => t,
    };
    static LAST_SCAN: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
    if REPORTED.load(core::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let last = DOM0_V0_SEEN.load(core::sync::atomic::Ordering::Relaxed);
    let ran = DOM0_V0_RAN.load(core::sync::atomic::Ordering::Relaxed);
    let why = if last != 0 && now.saturating_sub(last) > WATCHDOG_NS {
        alloc::format!("dom0's vCPU 0 was neither polled nor run for {} ms", (now - last) / 1_000_000)
    } else if ran != 0 && now.saturating_sub(ran) > DOM0_ASLEEP_NS {
        alloc::format!("dom0's vCPU 0 was polled but has not run for {} ms", (now - ran) / 1_000_000)
    } else if *pending_since != 0 && now - *pending_since > WATCHDOG_NS {
        alloc::format!("an event dom0 wants has been pending (its line not taken) for {} ms", (now - *pending_since) / 1_000_000)
    } else if now.saturating_sub(LAST_SCAN.load(core::sync::atomic::Ordering::Relaxed)) >= WATCHDOG_PERIOD_NS {
        // Once a second: a waiting vCPU whose asked-for poll is long past.
        LAST_SCAN.store(now, core::sync::atomic::Ordering::Relaxed);
        let late = VCPUS
            .lock()
            .iter()
            .find(|(_, e)| e.blocked && e.wake_at.is_some_and(|t| now.saturating_sub(t) > WATCHDOG_NS))
            .map(|(id, e)| (*id, e.wake_at.unwrap_or(0)));
        match late {
            Some((id, t)) => alloc::format!("d{}v{} asked to be polled at {t} ns and was not for {} ms", id.dom, id.vcpu, (now - t) / 1_000_000),
            None => return,
        }
    } else {
        return;
    };
    if REPORTED.swap(true, core::sync::atomic::Ordering::Relaxed) {
        return;
    }
    warn!("sched: watchdog: {why}; the loop's state follows");
    dump_state(now);
}

/// The run loop's and the scheduler's view of every vCPU (console key `r`,
/// and `watchdog`).
pub fn dump_state(now: u64) {
    for cpu in 0..smp::cpu_count() {
        let k = RUNNING[cpu as usize].load(core::sync::atomic::Ordering::Relaxed);
        if k != u64::MAX {
            log::info!("sched: cpu{cpu} runs d{}v{}", k >> 32, k as u32);
        }
    }
    let entries: Vec<(VcpuId, bool, u32, bool, Option<u64>)> =
        VCPUS.lock().iter().map(|(id, e)| (*id, e.blocked, e.watcher, e.started, e.wake_at)).collect();
    let keys: Vec<(u32, u64, VcpuId)> = DUE.lock().iter().copied().collect();
    for id in vcpu_ids() {
        let entry = entries.iter().find(|e| e.0 == id);
        let mine: Vec<(u32, i64)> = keys.iter().filter(|k| k.2 == id).map(|k| (k.0, if k.1 == 0 { 0 } else { (k.1 as i64 - now as i64) / 1_000_000 })).collect();
        let info = with_sched(|s, now| s.vcpu_info(id, now).ok().map(|i| (i.state, i.cpu))).flatten();
        log::info!(
            "sched: d{}v{}: {} poll keys (cpu, ms from now) {mine:?}; scheduler {info:?}",
            id.dom,
            id.vcpu,
            match entry {
                Some((_, blocked, watcher, started, wake_at)) => alloc::format!(
                    "waiting (blocked {blocked}, watched by cpu{watcher}, started {started}, asked for a poll {:?} ms from now)",
                    wake_at.map(|t| (t as i64 - now as i64) / 1_000_000)
                ),
                None => "out of the loop's table (running or being polled)".into(),
            },
        );
    }
}

/// Work a CPU does between turns (dom0's CPU: overdue shutdown requests).
static HOUSEKEEPING: Mutex<Option<fn(u64)>> = Mutex::new(None);

pub fn set_housekeeping(f: fn(u64)) {
    *HOUSEKEEPING.lock() = Some(f);
}

/// Polls the blocked vCPUs this CPU watches: wakes the ready ones, drops the
/// gone ones, and returns the earliest time one wants to be polled again.
fn poll_blocked(cpu: u32, now: u64) -> Option<u64> {
    let min = VcpuId { dom: 0, vcpu: 0 };
    let ids: Vec<VcpuId> = {
        let mut due = DUE.lock();
        let mut ids = Vec::new();
        while let Some(&k) = due.range((cpu, 0, min)..).next() {
            if k.0 != cpu || k.1 > now {
                break;
            }
            due.remove(&k);
            ids.push(k.2);
        }
        ids
    };
    for id in ids {
        let taken = VCPUS.lock().remove(&id);
        let Some(mut e) = taken else {
            // Out of `VCPUS`: running elsewhere, being polled by another CPU
            // through a stale key of its own, or gone. In the second case this
            // may be the vCPU's only real key: dropped, it would never be
            // polled again, so it is looked at again shortly. A gone vCPU's
            // key is dropped: kept, it would come due every `RETRY_NS` for
            // good, and each domain destroyed while one of its vCPUs ran
            // (`nudge` gives every CPU a key then) would add more, each
            // cutting this CPU's guest runs to a millisecond.
            if with_sched(|s, _| s.has_vcpu(id)).unwrap_or(false) {
                DUE.lock().insert((cpu, now + RETRY_NS, id));
            }
            continue;
        };
        if !e.blocked || e.watcher != cpu {
            // A stale key: it runs, or another CPU watches it now.
            VCPUS.lock().insert(id, e);
            continue;
        }
        let polled = e.v.poll(now);
        seen(id, now, false);
        match polled {
            Poll::Run => {
                e.blocked = false;
                e.wake_at = None;
                e.woken_at = Some(now);
                let first = !core::mem::replace(&mut e.started, true);
                VCPUS.lock().insert(id, e);
                // Blocked: wake; never run yet: unpause (new vCPUs start paused).
                match with_sched(|s, now| if first { s.unpause(id, now) } else { s.wake(id, now) }) {
                    Some(Ok(kicks)) => kick_all(kicks),
                    Some(Err(err)) => warn!("sched: {id}: cannot wake it: {err:?}"),
                    None => {}
                }
            }
            Poll::Sleep(at) => {
                e.wake_at = at;
                let mut v = VCPUS.lock();
                v.insert(id, e);
                if let Some(at) = at {
                    DUE.lock().insert((cpu, at.max(1), id));
                }
            }
            Poll::Gone => remove(id, e),
        }
    }
    // The earliest poll this CPU owes.
    DUE.lock().range((cpu, 0, min)..).next().filter(|k| k.0 == cpu).map(|k| k.1)
}

/// Forgets a domain once its last vCPU is gone.
pub fn remove_domain(dom: u32) {
    if let Some(Ok(kicks)) = with_sched(|s, now| s.remove_domain(dom, now)) {
        kick_all(kicks);
    }
}

/// A domain's weight and cap.
pub fn params(dom: u32) -> Option<(u32, u32)> {
    with_sched(|s, _| s.domain_params(dom))?.ok().map(|(w, c)| (u32::from(w), c))
}

fn remove(id: VcpuId, e: Entry) {
    if let Some(Ok(kicks)) = with_sched(|s, now| s.remove_vcpu(id, now)) {
        kick_all(kicks);
    }
    drop(e);
}

/// Counters for `cargo xtask bench` and the hypervisor console: how long a
/// CPU takes from one guest's exit to another guest's entry (a vCPU switch),
/// and from a blocked vCPU found ready to its entry (wake-up latency), in TSC
/// cycles (instructions under QEMU's `-icount shift=0`).
pub struct Stats {
    pub switches: core::sync::atomic::AtomicU64,
    pub switch_cycles: core::sync::atomic::AtomicU64,
    pub wakeups: core::sync::atomic::AtomicU64,
    pub wakeup_ns: core::sync::atomic::AtomicU64,
    pub wakeup_max_ns: core::sync::atomic::AtomicU64,
    /// Scheduler decisions (a CPU's turn: polling the blocked vCPUs due,
    /// then `schedule`, accounting included when due) and their TSC cycles.
    pub decisions: core::sync::atomic::AtomicU64,
    pub decision_cycles: core::sync::atomic::AtomicU64,
}

pub static STATS: Stats = Stats {
    switches: core::sync::atomic::AtomicU64::new(0),
    switch_cycles: core::sync::atomic::AtomicU64::new(0),
    wakeups: core::sync::atomic::AtomicU64::new(0),
    wakeup_ns: core::sync::atomic::AtomicU64::new(0),
    wakeup_max_ns: core::sync::atomic::AtomicU64::new(0),
    decisions: core::sync::atomic::AtomicU64::new(0),
    decision_cycles: core::sync::atomic::AtomicU64::new(0),
};

/// Logs the counters (hypervisor console key `s`); the sums at the end let
/// `cargo xtask bench` take the difference of two readings exactly.
pub fn log_stats() {
    use core::sync::atomic::Ordering::Relaxed;
    let (n, c) = (STATS.switches.load(Relaxed), STATS.switch_cycles.load(Relaxed));
    let (w, wns, wmax) = (STATS.wakeups.load(Relaxed), STATS.wakeup_ns.load(Relaxed), STATS.wakeup_max_ns.load(Relaxed));
    let (dn, dc) = (STATS.decisions.load(Relaxed), STATS.decision_cycles.load(Relaxed));
    // Keys for vCPUs the scheduler no longer has come due at most once more.
    let keys: Vec<VcpuId> = DUE.lock().iter().map(|k| k.2).collect();
    let gone = keys.iter().filter(|&&id| !with_sched(|s, _| s.has_vcpu(id)).unwrap_or(false)).count();
    let keys = keys.len();
    log::info!(
        "sched: {n} vCPU switches, {} TSC cycles each from one guest's exit to the next one's entry; {w} wake-ups, {} us mean / {} us max from ready to running (sums: {c} TSC cycles, {wns} ns); {dn} decisions, {} TSC cycles each (sum {dc}); {keys} poll keys, {gone} of them for gone vCPUs",
        c.checked_div(n).unwrap_or(0),
        wns.checked_div(w).unwrap_or(0) / 1000,
        wmax / 1000,
        dc.checked_div(dn).unwrap_or(0)
    );
}

/// Says when capped domains lost budget because accounting came late (a
/// pCPU that did not schedule for longer than a period and a slice: under an
/// emulator, the host not running it), so a cap that measures low says why.
/// The first few, then every 100th.
fn note_late_refills((count, gap_ns): (u64, u64)) {
    static SEEN: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
    let seen = SEEN.load(core::sync::atomic::Ordering::Relaxed);
    if count > seen && SEEN.compare_exchange(seen, count, core::sync::atomic::Ordering::Relaxed, core::sync::atomic::Ordering::Relaxed).is_ok() && (count <= 5 || count % 100 == 0) {
        warn!("sched: accounting came {} ms after the last (late #{count}): capped domains got less than their cap", gap_ns / 1_000_000);
    }
}

/// This CPU's scheduler loop, for good. Interrupts stay off except in `hlt`.
pub fn cpu_loop() -> ! {
    interrupts::disable();
    let cpu = cpu_id();
    let housekeeping = if cpu == 0 { *HOUSEKEEPING.lock() } else { None };
    // The vCPU this CPU ran last and the TSC when its run returned.
    let mut last: Option<(VcpuId, u64)> = None;
    let mut events_since = 0;
    loop {
        let now = now_ns();
        if let Some(f) = housekeeping {
            f(now);
        }
        if cpu == 0 {
            watchdog(now, crate::vm::platform::dom0_events_waiting(), &mut events_since);
        }
        watch_neighbour(cpu, now);
        crate::console::flush_pending();
        crate::arch::x86_64::idt::report_nmis();
        let t0 = time::rdtsc();
        // A device interrupt forwarded to dom0 (`arch::x86_64::irq`, routed to
        // this CPU) wakes the CPU but makes no vCPU due: dom0's vCPU pinned
        // here takes it, so it is polled this turn (a stale key if dom0 has
        // no vCPU here: skipped).
        if irq::any_pending() {
            DUE.lock().insert((cpu, 0, VcpuId { dom: 0, vcpu: cpu }));
        }
        let wake = poll_blocked(cpu, now);
        let Some((d, late)) = with_sched(|s, now| (s.schedule(cpu, now), s.late_refills())) else {
            crate::console::fatal(format_args!("sched: no scheduler"));
        };
        note_late_refills(late);
        STATS.decisions.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        STATS.decision_cycles.fetch_add(time::rdtsc().saturating_sub(t0), core::sync::atomic::Ordering::Relaxed);
        kick_all(d.kick);
        let until = match (d.until_ns, wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // CPU 0 looks at the watchdog, and every CPU at its neighbour, at
        // least once a period, even idle.
        let watching = cpu == 0 || smp::cpu_count() > 1;
        let until = if watching { Some(until.unwrap_or(u64::MAX).min(now + WATCHDOG_PERIOD_NS)) } else { until };
        let Some(id) = d.run else {
            // An idle stretch is not a switch: the next run starts a new count.
            last = None;
            // Nothing to run: sleep until the earliest deadline or a kick.
            if until.is_none_or(|t| t > now_ns()) {
                apic::arm_timer(until.map(ns_to_tsc));
                let asleep = &ASLEEP_UNTIL[cpu as usize];
                asleep.store(until.unwrap_or(0), core::sync::atomic::Ordering::Relaxed);
                // SAFETY: STI's one-instruction shadow makes STI; HLT atomic, so a
                // timer or kick arriving after the checks above wakes the HLT.
                unsafe { core::arch::asm!("sti", "hlt", "cli", options(nomem, nostack)) };
                asleep.store(0, core::sync::atomic::Ordering::Relaxed);
            }
            continue;
        };
        let Some(mut e) = VCPUS.lock().remove(&id) else {
            // Not back yet from the CPU that ran it last (or just removed).
            continue;
        };
        // A released vCPU (VMCLEARed) must be loaded again even on the CPU that
        // ran it last.
        if e.movable || e.watcher != cpu {
            e.v.adopt();
        }
        RUNNING[cpu as usize].store(key(id), core::sync::atomic::Ordering::Relaxed);
        {
            use core::sync::atomic::Ordering::Relaxed;
            if let Some((prev, at)) = last {
                if prev != id {
                    STATS.switches.fetch_add(1, Relaxed);
                    STATS.switch_cycles.fetch_add(time::rdtsc().saturating_sub(at), Relaxed);
                }
            }
            if let Some(w) = e.woken_at.take() {
                let lat = now_ns().saturating_sub(w);
                STATS.wakeups.fetch_add(1, Relaxed);
                STATS.wakeup_ns.fetch_add(lat, Relaxed);
                STATS.wakeup_max_ns.fetch_max(lat, Relaxed);
            }
        }
        let run_until = until.unwrap_or(u64::MAX).max(now_ns() + 1);
        RUN_UNTIL[cpu as usize].store(if run_until == u64::MAX { 0 } else { run_until }, core::sync::atomic::Ordering::Relaxed);
        e.v.run(run_until);
        RUN_UNTIL[cpu as usize].store(0, core::sync::atomic::Ordering::Relaxed);
        seen(id, now_ns(), true);
        last = Some((id, time::rdtsc()));
        RUNNING[cpu as usize].store(u64::MAX, core::sync::atomic::Ordering::Relaxed);
        e.watcher = cpu;
        let after = now_ns();
        match e.v.poll(after) {
            Poll::Run => {}
            Poll::Sleep(_) => {
                e.blocked = true;
                if let Some(Err(err)) = with_sched(|s, now| s.block(id, now)) {
                    warn!("sched: {id}: block: {err:?}");
                }
                // Polled again on this CPU's next turn, as a vCPU just
                // blocked always was: that poll sets its wake-up time.
                DUE.lock().insert((cpu, 0, id));
            }
            Poll::Gone => {
                remove(id, e);
                continue;
            }
        }
        if e.movable {
            e.v.release();
        }
        VCPUS.lock().insert(id, e);
    }
}
