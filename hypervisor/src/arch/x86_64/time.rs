//! Time on the host: the TSC, the reference clocks it is calibrated against (the
//! ACPI PM timer, else PIT channel 2) and TSC-based delays and deadlines.

use crate::platform::clock::{self, PIT_HZ, PM_TIMER_HZ};
use crate::platform::PmTimer;
use core::sync::atomic::{AtomicU64, Ordering};
use x86_64::instructions::port::Port;

/// The TSC's rate once calibrated; 0 before.
static TSC_HZ: AtomicU64 = AtomicU64::new(0);
/// Assumed before calibration: fast enough that delays are never too short.
const TSC_HZ_UNCALIBRATED: u64 = 10_000_000_000;
/// Reference-clock polls before a dead clock is given up on.
const MAX_POLLS: u32 = 50_000_000;

/// The time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter (CR4.TSD is clear in
    // ring 0 anyway).
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The calibrated TSC rate in Hz (0 before `set_tsc_hz`).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

pub(super) fn set_tsc_hz(hz: u64) {
    TSC_HZ.store(hz, Ordering::Relaxed);
}

fn tsc_hz_or_guess() -> u64 {
    match tsc_hz() {
        0 => TSC_HZ_UNCALIBRATED,
        hz => hz,
    }
}

/// A point in time some microseconds ahead, measured on the TSC.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(u64);

impl Deadline {
    pub fn after_us(us: u64) -> Self {
        Self(rdtsc().saturating_add(clock::ticks_for_us(us, tsc_hz_or_guess())))
    }

    pub fn passed(self) -> bool {
        rdtsc() >= self.0
    }
}

/// Spins for at least `us` microseconds.
pub fn delay_us(us: u64) {
    let d = Deadline::after_us(us);
    while !d.passed() {
        core::hint::spin_loop();
    }
}

/// A clock of known rate to measure others against.
#[derive(Clone, Copy, Debug)]
pub enum RefClock {
    Pm(PmTimer),
    /// PIT channel 2, gated through port 0x61 (the PC speaker gate, speaker off).
    Pit,
}

/// Ports of the 8254 PIT and the system control port B.
mod pit {
    pub const CHANNEL2: u16 = 0x42;
    pub const COMMAND: u16 = 0x43;
    /// Command: channel 2 (bits 7:6 = 10), lobyte/hibyte access (5:4 = 11),
    /// mode 0, interrupt on terminal count (3:1 = 000), binary (0 = 0).
    pub const CH2_ONESHOT: u8 = 0b1011_0000;
    pub const PORT_B: u16 = 0x61;
    /// Port B bit 0: channel 2 gate; bit 1: speaker data (kept off).
    pub const GATE2: u8 = 1 << 0;
    pub const SPEAKER: u8 = 1 << 1;
    /// Port B bit 5: channel 2 output.
    pub const OUT2: u8 = 1 << 5;
}

impl RefClock {
    pub fn name(&self) -> &'static str {
        match self {
            RefClock::Pm(_) => "ACPI PM timer",
            RefClock::Pit => "PIT",
        }
    }

    fn read_pm(t: PmTimer) -> u32 {
        match t {
            // SAFETY: the FADT names this port as the PM timer; reading it has no
            // side effects.
            PmTimer::Port { port, .. } => unsafe { Port::<u32>::new(port).read() },
            // SAFETY: as above, for a PM timer in (identity-mapped) MMIO.
            PmTimer::Mmio { address, .. } => unsafe { core::ptr::read_volatile(address as *const u32) },
        }
    }

    /// Calls `start`, lets about `us` microseconds of this clock pass (at most
    /// 50 ms), calls `stop`, and returns how many reference ticks passed and
    /// the reference rate; `None` if the clock does not run.
    pub fn measure(&self, us: u64, start: impl FnOnce(), stop: impl FnOnce()) -> Option<(u64, u64)> {
        match *self {
            RefClock::Pm(timer) => {
                let bits32 = matches!(timer, PmTimer::Port { bits32: true, .. } | PmTimer::Mmio { bits32: true, .. });
                let want = clock::ticks_for_us(us.min(50_000), PM_TIMER_HZ) as u32;
                // Start on a tick edge so the first partial tick is not counted.
                let first = Self::read_pm(timer);
                let mut polls = 0;
                let mut t0 = Self::read_pm(timer);
                while t0 == first {
                    polls += 1;
                    if polls > MAX_POLLS {
                        return None;
                    }
                    t0 = Self::read_pm(timer);
                }
                start();
                loop {
                    let d = clock::pm_timer_delta(t0, Self::read_pm(timer), bits32);
                    if d >= want {
                        stop();
                        return Some((u64::from(d), PM_TIMER_HZ));
                    }
                    polls += 1;
                    if polls > MAX_POLLS {
                        return None;
                    }
                }
            }
            RefClock::Pit => {
                let count = clock::pit_count_for_us(us.min(50_000))?;
                // SAFETY: the PIT and port B are standard PC hardware the
                // hypervisor owns at boot; channel 2 only drives the (gated-off)
                // speaker.
                unsafe {
                    let mut port_b = Port::<u8>::new(pit::PORT_B);
                    let b = port_b.read();
                    port_b.write((b & !pit::SPEAKER) | pit::GATE2);
                    Port::<u8>::new(pit::COMMAND).write(pit::CH2_ONESHOT);
                    let mut ch2 = Port::<u8>::new(pit::CHANNEL2);
                    ch2.write(count as u8);
                    ch2.write((count >> 8) as u8);
                    start();
                    let mut polls = 0;
                    while port_b.read() & pit::OUT2 == 0 {
                        polls += 1;
                        if polls > MAX_POLLS {
                            return None;
                        }
                    }
                    stop();
                    port_b.write(b & !pit::SPEAKER);
                }
                Some((u64::from(count), PIT_HZ))
            }
        }
    }
}

/// Nanoseconds since boot, from the TSC: the hypervisor's one clock (the
/// scheduler, the virtual devices' timers and the logs all read it).
pub fn now_ns() -> u64 {
    tsc_to_ns(rdtsc())
}

/// A TSC value as nanoseconds since TSC 0.
pub fn tsc_to_ns(tsc: u64) -> u64 {
    let hz = tsc_hz().max(1);
    (u128::from(tsc) * 1_000_000_000 / u128::from(hz)) as u64
}

/// The TSC value `ns` nanoseconds after boot.
pub fn ns_to_tsc(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(tsc_hz()) / 1_000_000_000) as u64
}
