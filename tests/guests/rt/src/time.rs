//! Time from the TSC, calibrated once against the hypervisor's own clock (a
//! 10 ms `BLOCK`), so the guests' intervals are the hypervisor's milliseconds
//! whatever the emulator makes of the TSC.

use crate::cpu::rdtsc;
use core::sync::atomic::{AtomicU64, Ordering};

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);

/// Used when BLOCK does not sleep (it returned at once three times): 1 GHz.
const FALLBACK_KHZ: u64 = 1_000_000;
const CALIBRATION_MS: u64 = 10;

/// TSC ticks per millisecond (calibrated on first use; prints the result).
pub fn tsc_khz() -> u64 {
    match TSC_KHZ.load(Ordering::Relaxed) {
        0 => {
            let khz = calibrate();
            TSC_KHZ.store(khz, Ordering::Relaxed);
            khz
        }
        khz => khz,
    }
}

fn calibrate() -> u64 {
    let mut best = 0;
    // The longest of three: a BLOCK cut short (a control request arriving) only
    // makes one measurement short.
    for _ in 0..3 {
        let t0 = rdtsc();
        crate::hypercall::block(CALIBRATION_MS * 1_000_000);
        best = best.max(rdtsc().wrapping_sub(t0) / CALIBRATION_MS);
    }
    // Less than 1 MHz means BLOCK did not wait at all.
    if best < 1_000 {
        crate::println!("{}: BLOCK does not sleep; assuming a {} MHz TSC", crate::name(), FALLBACK_KHZ / 1000);
        return FALLBACK_KHZ;
    }
    crate::println!("{}: TSC runs at {} kHz (measured against a {CALIBRATION_MS} ms BLOCK)", crate::name(), best);
    best
}

/// TSC ticks in `ms` milliseconds.
pub fn ms_to_ticks(ms: u64) -> u64 {
    ms.saturating_mul(tsc_khz())
}

/// Milliseconds in `ticks` TSC ticks.
pub fn ticks_to_ms(ticks: u64) -> u64 {
    ticks / tsc_khz()
}

/// Nanoseconds in `ticks` TSC ticks (saturating).
pub fn ticks_to_ns(ticks: u64) -> u64 {
    (u128::from(ticks) * 1_000_000 / u128::from(tsc_khz())).min(u128::from(u64::MAX)) as u64
}
