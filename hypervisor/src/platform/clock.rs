//! Clock arithmetic for calibrating the TSC and the local APIC timer against a
//! reference clock of known rate (the ACPI PM timer, or the PIT). Pure, so it
//! is tested on the host; the measuring is in `arch::x86_64::time`.

use core::fmt;

/// The ACPI PM timer's rate (ACPI 6.5 §4.8.3.3): 3.579545 MHz.
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// The 8254 PIT's input clock: 1.193182 MHz.
pub const PIT_HZ: u64 = 1_193_182;

/// PM timer ticks from `t0` to `t1`, across one wrap of a 24- or 32-bit counter.
pub const fn pm_timer_delta(t0: u32, t1: u32, bits32: bool) -> u32 {
    let mask = if bits32 { u32::MAX } else { 0x00ff_ffff };
    t1.wrapping_sub(t0) & mask
}

/// The rate of a counter that advanced `count` while a reference clock of
/// `ref_hz` advanced `ref_ticks`; `None` if the reference did not move.
pub const fn rate_hz(count: u64, ref_ticks: u64, ref_hz: u64) -> Option<u64> {
    if ref_ticks == 0 {
        return None;
    }
    let hz = count as u128 * ref_hz as u128 / ref_ticks as u128;
    if hz > u64::MAX as u128 {
        None
    } else {
        Some(hz as u64)
    }
}

/// Ticks of a `hz` clock in `us` microseconds, rounded up (never 0 for us > 0).
pub const fn ticks_for_us(us: u64, hz: u64) -> u64 {
    let t = (us as u128 * hz as u128).div_ceil(1_000_000);
    if t > u64::MAX as u128 {
        u64::MAX
    } else {
        t as u64
    }
}

/// The PIT reload value for a one-shot of `us` microseconds, or `None` if it
/// does not fit the 16-bit counter (longer than about 54.9 ms).
pub const fn pit_count_for_us(us: u64) -> Option<u16> {
    let t = ticks_for_us(us, PIT_HZ);
    if t == 0 || t > u16::MAX as u64 {
        None
    } else {
        Some(t as u16)
    }
}

/// The median of three measurements: one disturbed run (a host thread
/// descheduled under an emulator, an SMI on hardware) does not skew it.
pub fn median3(mut v: [u64; 3]) -> u64 {
    v.sort_unstable();
    v[1]
}

/// A frequency printed in MHz with three decimals: `1000.000 MHz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mhz(pub u64);

impl fmt::Display for Mhz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let khz = (self.0 + 500) / 1000;
        write!(f, "{}.{:03} MHz", khz / 1000, khz % 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn pm_timer_wraps() {
        assert_eq!(pm_timer_delta(100, 300, false), 200);
        assert_eq!(pm_timer_delta(0x00ff_fff0, 0x10, false), 0x20);
        assert_eq!(pm_timer_delta(0xffff_fff0, 0x10, true), 0x20);
        // A 24-bit timer's reads never have the top byte set, but mask anyway.
        assert_eq!(pm_timer_delta(0x00ff_fff0, 0x0000_0010, false), 0x20);
    }

    #[test]
    fn rates() {
        // 20 ms of PM timer (71591 ticks) against a 1 GHz counter.
        let ref_ticks = 71_591;
        let count = 1_000_000_000u64 * ref_ticks / PM_TIMER_HZ;
        let hz = rate_hz(count, ref_ticks, PM_TIMER_HZ).unwrap();
        assert!(hz.abs_diff(1_000_000_000) < 20_000, "{hz}");
        // A 5 GHz TSC over 50 ms of PIT does not overflow.
        assert_eq!(rate_hz(250_000_000, 59_659, PIT_HZ).map(|h| h / 1_000_000), Some(5000));
        assert_eq!(rate_hz(123, 0, PIT_HZ), None);
        assert_eq!(rate_hz(u64::MAX, 1, PIT_HZ), None);
    }

    #[test]
    fn tick_counts() {
        assert_eq!(ticks_for_us(20_000, PM_TIMER_HZ), 71_591);
        assert_eq!(ticks_for_us(1, 1_000_000_000), 1000);
        assert_eq!(ticks_for_us(1, PIT_HZ), 2); // rounded up
        assert_eq!(pit_count_for_us(20_000), Some(23_864));
        assert_eq!(pit_count_for_us(60_000), None);
        assert_eq!(pit_count_for_us(0), None);
    }

    #[test]
    fn median_and_display() {
        assert_eq!(median3([5, 1, 3]), 3);
        assert_eq!(median3([7, 7, 1]), 7);
        assert_eq!(format!("{}", Mhz(1_000_000_000)), "1000.000 MHz");
        assert_eq!(format!("{}", Mhz(2_399_987_654)), "2399.988 MHz");
        assert_eq!(format!("{}", Mhz(3_579_545)), "3.580 MHz");
    }
}
