//! Time from the TSC at the rate the hypervisor's KVM clock publishes (the
//! scale of its `pvclock_vcpu_time_info`, which is how Linux learns it too),
//! so the guests' intervals are the hypervisor's milliseconds whatever the
//! emulator makes of the TSC. Without that clock (dom0 has none), measured
//! against a 10 ms `BLOCK`: a measurement a late wake-up stretches (one
//! that came 22 ms late under Bochs made a domU's second last 3.2 s).

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
    if let Some(khz) = kvmclock_khz() {
        crate::println!("{}: TSC runs at {} kHz (the hypervisor's KVM clock says)", crate::name(), khz);
        return khz;
    }
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

/// KVM's leaves and features (Linux `Documentation/virt/kvm/x86/cpuid.rst`),
/// searched as Linux does in blocks of 0x100 from 0x40000000.
const KVM_SIGNATURE: &[u8; 12] = b"KVMKVMKVM\0\0\0";
const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
/// Linux `Documentation/virt/kvm/x86/msr.rst`.
const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;

/// `struct pvclock_vcpu_time_info` (msr.rst), 32 bytes.
#[repr(C, align(32))]
struct PvclockTimeInfo {
    version: u32,
    pad0: u32,
    tsc_timestamp: u64,
    system_time: u64,
    tsc_to_system_mul: u32,
    tsc_shift: i8,
    flags: u8,
    pad: [u8; 2],
}

static mut PVCLOCK: PvclockTimeInfo =
    PvclockTimeInfo { version: 0, pad0: 0, tsc_timestamp: 0, system_time: 0, tsc_to_system_mul: 0, tsc_shift: 0, flags: 0, pad: [0; 2] };

/// The TSC rate in kHz from the KVM clock's scale, if the hypervisor offers
/// the clock: ns = ((ticks << shift) * mul) >> 32 (a negative shift shifts
/// right), so kHz = 10^6 * 2^32 / (mul * 2^shift). The structure is
/// registered just long enough to read it once.
fn kvmclock_khz() -> Option<u64> {
    let base = (0x4000_0000u32..0x4001_0000).step_by(0x100).find(|&leaf| {
        let (_, b, c, d) = crate::cpu::cpuid(leaf);
        let mut sig = [0u8; 12];
        sig[..4].copy_from_slice(&b.to_le_bytes());
        sig[4..8].copy_from_slice(&c.to_le_bytes());
        sig[8..].copy_from_slice(&d.to_le_bytes());
        &sig == KVM_SIGNATURE
    })?;
    if crate::cpu::cpuid(base + 1).0 & KVM_FEATURE_CLOCKSOURCE2 == 0 {
        return None;
    }
    let area = core::ptr::addr_of_mut!(PVCLOCK);
    // SAFETY: the clock MSR is offered (the feature bit above); the area is
    // ours, 32-byte aligned (never crossing a page), and identity mapped, so
    // its address is its guest-physical one. Bit 0 enables it, and the write
    // of 0 after reading disables it again.
    let (version, mul, shift) = unsafe {
        crate::cpu::wrmsr(MSR_KVM_SYSTEM_TIME_NEW, area as u64 | 1);
        let v = core::ptr::read_volatile(core::ptr::addr_of!((*area).version));
        let mul = core::ptr::read_volatile(core::ptr::addr_of!((*area).tsc_to_system_mul));
        let shift = core::ptr::read_volatile(core::ptr::addr_of!((*area).tsc_shift));
        crate::cpu::wrmsr(MSR_KVM_SYSTEM_TIME_NEW, 0);
        (v, mul, shift)
    };
    // An odd version is an update in progress; it is written at the WRMSR,
    // so an even, non-zero one with a scale is complete.
    if version == 0 || version % 2 == 1 || mul == 0 || !(-32..=32).contains(&shift) {
        return None;
    }
    let scaled = u128::from(mul);
    let khz = if shift >= 0 {
        (1_000_000u128 << 32) / (scaled << shift)
    } else {
        ((1_000_000u128 << 32) << (-shift)) / scaled
    };
    u64::try_from(khz).ok().filter(|&k| k >= 1_000)
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
