//! A KVM-compatible paravirtual clock ("kvmclock"), so that a stock Linux domU
//! learns the TSC rate and the wall clock on Intel and AMD alike, without
//! calibrating against legacy timers the platform does not have.
//!
//! The interface is KVM's (Linux `Documentation/virt/kvm/x86/msr.rst`, the guest
//! side in `arch/x86/kernel/kvmclock.c` and `pvclock.c`), advertised by the KVM
//! CPUID leaves of `exit::cpuid` with only `KVM_FEATURE_CLOCKSOURCE2` and
//! `KVM_FEATURE_CLOCKSOURCE_STABLE_BIT`:
//! - `MSR_KVM_WALL_CLOCK_NEW` (0x4b564d00): the guest writes a guest-physical
//!   address; the hypervisor writes there, once per write, the Unix time at
//!   which system time was 0 (`pvclock_wall_clock`: version, sec, nsec).
//! - `MSR_KVM_SYSTEM_TIME_NEW` (0x4b564d01), one per vCPU: an address with bit 0
//!   as "enable"; the hypervisor keeps a `pvclock_vcpu_time_info` there from
//!   which the guest computes system time from its TSC:
//!   `system_time + scale(tsc - tsc_timestamp, tsc_to_system_mul, tsc_shift)`.
//!   Linux also derives the TSC rate from the scale (`pvclock_tsc_khz`) and uses
//!   it for `tsc_khz`/`cpu_khz`, on both vendors.
//!
//! System time is the hypervisor's nanoseconds since the TSC read
//! [`ClockNow::tsc_at_zero`] (for `sched::run::now_ns`, TSC 0). Every vCPU of
//! every domain publishes the same record — that anchor, system time 0, the
//! scale of the calibrated TSC rate — so all vCPUs compute the same time from
//! the same TSC value whichever CPU they run on (the host's TSCs are
//! synchronized and invariant). That is what `PVCLOCK_TSC_STABLE_BIT` promises
//! the guest, which then skips its cross-CPU monotonicity fix-up; KVM gets the
//! same property from its "master clock". The record never needs a periodic
//! update: the 32-bit multiplier is within 2^-32 of the exact rate (a few
//! milliseconds a year).
//!
//! Both structures are written with the version protocol of msr.rst: the
//! version is made odd, the fields written, the version made even again, so a
//! guest reading concurrently retries. A structure outside the guest's RAM is
//! not written at all (KVM ignores it likewise and still accepts the write), so
//! a version is never left odd.

use crate::hypercall::GuestRam;
use core::sync::atomic::{compiler_fence, Ordering};

/// The wall-clock MSR (msr.rst: MSR_KVM_WALL_CLOCK_NEW).
pub const MSR_KVM_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
/// The per-vCPU system-time MSR (msr.rst: MSR_KVM_SYSTEM_TIME_NEW).
pub const MSR_KVM_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;

/// CPUID 0x40000001 EAX bit 3: the two MSRs above exist (Linux
/// `include/uapi/asm/kvm_para.h`).
pub const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
/// CPUID 0x40000001 EAX bit 24: the guest may trust `PVCLOCK_TSC_STABLE_BIT`.
pub const KVM_FEATURE_CLOCKSOURCE_STABLE_BIT: u32 = 1 << 24;

/// `pvclock_vcpu_time_info.flags` bit 0: the clock is the same on every vCPU.
pub const PVCLOCK_TSC_STABLE_BIT: u8 = 1 << 0;
/// Flags bit 1: the host stopped the guest (set by the host, cleared by the guest).
pub const PVCLOCK_GUEST_STOPPED: u8 = 1 << 1;

/// Bit 0 of the system-time MSR: the structure at the rest of the address is live.
const SYSTEM_TIME_ENABLE: u64 = 1;

/// `struct pvclock_vcpu_time_info` (Linux `asm/pvclock-abi.h`), packed, 32 bytes;
/// the version is at 0.
mod pvti {
    pub const SIZE: usize = 32;
    pub const TSC_TIMESTAMP: usize = 8;
    pub const SYSTEM_TIME: usize = 16;
    pub const MUL: usize = 24;
    pub const SHIFT: usize = 28;
    pub const FLAGS: usize = 29;
}

/// `struct pvclock_wall_clock`, packed, 12 bytes: version, sec, nsec.
mod wall {
    pub const SIZE: usize = 12;
    pub const SEC: usize = 4;
    pub const NSEC: usize = 8;
}

const NS_PER_SEC: u64 = 1_000_000_000;
/// TSC rates the scale is defined for; the hypervisor's calibrated rate is far
/// inside, these only keep the arithmetic (and the guest's) in range.
const MIN_TSC_HZ: u64 = 1_000_000;
const MAX_TSC_HZ: u64 = 1_000_000_000_000;

/// TSC ticks to nanoseconds as pvclock expresses it: `ns = ((ticks << shift)
/// * mul) >> 32`, a right shift for negative `shift`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scale {
    pub mul: u32,
    pub shift: i8,
}

impl Scale {
    /// The scale for a TSC running at `tsc_hz`, with `mul` in [2^31, 2^32) (its
    /// full 32 bits of precision); `None` outside 1 MHz..1 THz. Never a zero
    /// `mul`: Linux divides by it (`pvclock_tsc_khz`).
    pub fn for_tsc_hz(tsc_hz: u64) -> Option<Self> {
        if !(MIN_TSC_HZ..=MAX_TSC_HZ).contains(&tsc_hz) {
            return None;
        }
        // mul * 2^shift = 2^32 * 10^9 / tsc_hz: pick shift so the quotient has 32 bits.
        let target = (u128::from(NS_PER_SEC) << 32) / u128::from(tsc_hz);
        let mut shift = (128 - target.leading_zeros()) as i32 - 32;
        loop {
            // mul = round(2^(32 - shift) * 10^9 / tsc_hz).
            let (num, den) = if shift >= 0 {
                (u128::from(NS_PER_SEC) << 32, u128::from(tsc_hz) << shift)
            } else {
                (u128::from(NS_PER_SEC) << (32 - shift), u128::from(tsc_hz))
            };
            let mul = (num + den / 2) / den;
            if mul > u128::from(u32::MAX) {
                // Rounded up to 2^32: one more shift halves it.
                shift += 1;
                continue;
            }
            return Some(Self { mul: mul as u32, shift: i8::try_from(shift).ok()? });
        }
    }

    /// Nanoseconds for `ticks`, exactly as the guest computes them
    /// (`pvclock_scale_delta`).
    pub fn ticks_to_ns(self, ticks: u64) -> u64 {
        let shifted = if self.shift < 0 { ticks >> self.shift.unsigned_abs() } else { ticks << self.shift };
        ((u128::from(shifted) * u128::from(self.mul)) >> 32) as u64
    }

    /// The TSC rate in kHz the guest derives from the scale (`pvclock_tsc_khz`).
    pub fn guest_tsc_khz(self) -> u64 {
        let khz = (1_000_000u64 << 32) / u64::from(self.mul.max(1));
        if self.shift < 0 {
            khz << self.shift.unsigned_abs()
        } else {
            khz >> self.shift
        }
    }
}

/// The time at the moment of an update, read by the caller (the model reads
/// no clock itself).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockNow {
    /// The calibrated TSC rate (`arch::x86_64::time::tsc_hz`).
    pub tsc_hz: u64,
    /// The TSC value at which system time is 0 (0 for `sched::run::now_ns`).
    pub tsc_at_zero: u64,
    /// System time now: nanoseconds since `tsc_at_zero`.
    pub ns: u64,
    /// Unix time now, in nanoseconds (`arch::x86_64::wallclock::unix_ns(ns)`).
    pub unix_ns: u64,
}

impl ClockNow {
    /// Unix time, in nanoseconds, at which system time was 0.
    pub fn unix_at_zero(&self) -> u64 {
        self.unix_ns.saturating_sub(self.ns)
    }
}

/// An MSR this model does not implement; the caller answers it as before
/// (#GP for a domU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused;

/// One vCPU's kvmclock state: what the guest last wrote to the two MSRs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmClock {
    system_time: u64,
    wall_clock: u64,
    /// Structures skipped because they were not in the guest's RAM.
    faults: u64,
}

impl KvmClock {
    /// The state after reset: no clock registered.
    pub const fn new() -> Self {
        Self { system_time: 0, wall_clock: 0, faults: 0 }
    }

    /// Whether `msr` is one of this model's.
    pub const fn claims(msr: u32) -> bool {
        matches!(msr, MSR_KVM_WALL_CLOCK_NEW | MSR_KVM_SYSTEM_TIME_NEW)
    }

    /// RDMSR: the value last written, as KVM returns it.
    pub fn msr_read(&self, msr: u32) -> Result<u64, Refused> {
        match msr {
            MSR_KVM_WALL_CLOCK_NEW => Ok(self.wall_clock),
            MSR_KVM_SYSTEM_TIME_NEW => Ok(self.system_time),
            _ => Err(Refused),
        }
    }

    /// WRMSR. The wall clock is written once, now; the system-time structure
    /// is written now if bit 0 enables it, and again at each [`Self::refresh`].
    /// Every value is accepted, as KVM accepts it.
    pub fn msr_write(&mut self, msr: u32, value: u64, ram: &mut dyn GuestRam, now: &ClockNow) -> Result<(), Refused> {
        match msr {
            MSR_KVM_WALL_CLOCK_NEW => {
                self.wall_clock = value;
                if write_wall_clock(ram, value, now.unix_at_zero()).is_err() {
                    self.faults += 1;
                }
            }
            MSR_KVM_SYSTEM_TIME_NEW => {
                self.system_time = value;
                self.refresh(ram, now);
            }
            _ => return Err(Refused),
        }
        Ok(())
    }

    /// Rewrites the system-time structure if one is registered: after the vCPU
    /// moved to another CPU (as KVM does; the record is the same everywhere, so
    /// this is cheap insurance, not a correction) or after a restore.
    pub fn refresh(&mut self, ram: &mut dyn GuestRam, now: &ClockNow) {
        let Some(gpa) = self.system_time_gpa() else { return };
        if write_vcpu_time(ram, gpa, now).is_err() {
            self.faults += 1;
        }
    }

    /// The two MSRs as last written: system time, wall clock (a vCPU
    /// state's `KVMCLOCK` record).
    pub const fn registration(&self) -> [u64; 2] {
        [self.system_time, self.wall_clock]
    }

    /// Takes a saved registration: the system-time structure is written
    /// again for `now`, so the guest's clock goes on from the host's; the
    /// wall-clock structure, written once when the guest registered it, is
    /// left as the guest's memory has it.
    pub fn restore(&mut self, registration: [u64; 2], ram: &mut dyn GuestRam, now: &ClockNow) {
        [self.system_time, self.wall_clock] = registration;
        self.refresh(ram, now);
    }

    /// Forgets the registered structures: on the vCPU's INIT or the domain's
    /// reset, so that nothing is written into the next kernel's memory.
    pub fn reset(&mut self) {
        *self = Self { faults: self.faults, ..Self::new() };
    }

    /// Where the system-time structure is, if enabled.
    pub fn system_time_gpa(&self) -> Option<u64> {
        (self.system_time & SYSTEM_TIME_ENABLE != 0).then_some(self.system_time & !SYSTEM_TIME_ENABLE)
    }

    /// Structures not written because they were outside the guest's RAM.
    pub const fn faults(&self) -> u64 {
        self.faults
    }
}

/// The version the hypervisor writes while updating: the guest's current one
/// made odd (msr.rst; KVM likewise starts from what is in guest memory).
fn odd_after(version: u32) -> u32 {
    version.wrapping_add(1) | 1
}

/// Writes a structure of `N` bytes at `gpa` under the version protocol: reads it
/// whole first (so a structure not entirely in RAM is left alone), makes the
/// version odd, writes the fields from `fill`, makes it even.
fn versioned_write<const N: usize>(
    ram: &mut dyn GuestRam,
    gpa: u64,
    fill: impl FnOnce(&mut [u8; N]),
) -> Result<(), oxen_abi::Error> {
    let mut buf = [0u8; N];
    ram.read(gpa, &mut buf)?;
    let version = odd_after(u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]));
    ram.write(gpa, &version.to_le_bytes())?;
    // The guest must see the odd version before any field changes; x86 keeps
    // stores in order, the fence keeps the compiler from merging them.
    compiler_fence(Ordering::Release);
    fill(&mut buf);
    ram.write(gpa + 4, &buf[4..])?;
    compiler_fence(Ordering::Release);
    ram.write(gpa, &version.wrapping_add(1).to_le_bytes())
}

fn write_wall_clock(ram: &mut dyn GuestRam, gpa: u64, unix_at_zero_ns: u64) -> Result<(), oxen_abi::Error> {
    // sec is 32 bits in the ABI (good until 2106), as KVM truncates it.
    let sec = (unix_at_zero_ns / NS_PER_SEC) as u32;
    let nsec = (unix_at_zero_ns % NS_PER_SEC) as u32;
    versioned_write::<{ wall::SIZE }>(ram, gpa, |b| {
        b[wall::SEC..wall::SEC + 4].copy_from_slice(&sec.to_le_bytes());
        b[wall::NSEC..wall::NSEC + 4].copy_from_slice(&nsec.to_le_bytes());
    })
}

fn write_vcpu_time(ram: &mut dyn GuestRam, gpa: u64, now: &ClockNow) -> Result<(), oxen_abi::Error> {
    let Some(scale) = Scale::for_tsc_hz(now.tsc_hz) else {
        // Uncalibrated: publishing a zero multiplier would make the guest divide by 0.
        return Err(oxen_abi::Error::Inval);
    };
    versioned_write::<{ pvti::SIZE }>(ram, gpa, |b| {
        // Keep GUEST_STOPPED if the guest has not consumed it yet, as KVM does.
        let flags = PVCLOCK_TSC_STABLE_BIT | (b[pvti::FLAGS] & PVCLOCK_GUEST_STOPPED);
        b[4..].fill(0);
        b[pvti::TSC_TIMESTAMP..pvti::TSC_TIMESTAMP + 8].copy_from_slice(&now.tsc_at_zero.to_le_bytes());
        b[pvti::SYSTEM_TIME..pvti::SYSTEM_TIME + 8].copy_from_slice(&0u64.to_le_bytes());
        b[pvti::MUL..pvti::MUL + 4].copy_from_slice(&scale.mul.to_le_bytes());
        b[pvti::SHIFT] = scale.shift as u8;
        b[pvti::FLAGS] = flags;
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxen_abi::Error;

    /// Guest RAM at 0..len that logs every write, to check the version protocol.
    struct Ram {
        bytes: Vec<u8>,
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl Ram {
        fn new(len: usize) -> Self {
            Self { bytes: vec![0; len], writes: Vec::new() }
        }
        fn u32_at(&self, at: u64) -> u32 {
            let a = at as usize;
            u32::from_le_bytes(self.bytes[a..a + 4].try_into().unwrap())
        }
        fn u64_at(&self, at: u64) -> u64 {
            let a = at as usize;
            u64::from_le_bytes(self.bytes[a..a + 8].try_into().unwrap())
        }
    }

    impl GuestRam for Ram {
        fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), Error> {
            let end = gpa.checked_add(out.len() as u64).ok_or(Error::Fault)?;
            out.copy_from_slice(self.bytes.get(gpa as usize..end as usize).ok_or(Error::Fault)?);
            Ok(())
        }
        fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), Error> {
            let end = gpa.checked_add(data.len() as u64).ok_or(Error::Fault)?;
            self.bytes.get_mut(gpa as usize..end as usize).ok_or(Error::Fault)?.copy_from_slice(data);
            self.writes.push((gpa, data.to_vec()));
            Ok(())
        }
    }

    const HZ: u64 = 2_893_437_000;

    fn now(ns: u64) -> ClockNow {
        // 2026-12-05 20:00:00 UTC when system time is 0.
        ClockNow { tsc_hz: HZ, tsc_at_zero: 0, ns, unix_ns: 1_796_500_800_000_000_000 + ns }
    }

    /// What Linux's `pvclock_clocksource_read` returns for `tsc` from the record at `gpa`.
    fn guest_read(ram: &Ram, gpa: u64, tsc: u64) -> u64 {
        let version = ram.u32_at(gpa);
        assert_eq!(version & 1, 0, "a consistent record has an even version");
        let scale = Scale { mul: ram.u32_at(gpa + 24), shift: ram.bytes[gpa as usize + 28] as i8 };
        ram.u64_at(gpa + 16) + scale.ticks_to_ns(tsc - ram.u64_at(gpa + 8))
    }

    #[test]
    fn scale_is_within_1ppm_from_100mhz_to_10ghz() {
        let mut hz = 100_000_000u64;
        while hz <= 10_000_000_000 {
            // Odd rates too: 1.000001x steps from a round one.
            for rate in [hz, hz + 1, hz * 1_000_001 / 1_000_000 + 7] {
                let s = Scale::for_tsc_hz(rate).unwrap();
                assert!(s.mul >= 1 << 31, "{rate}: mul {:#x} keeps all 32 bits", s.mul);
                for ticks in [rate / 1000, rate, rate * 3600, rate * 86_400 * 365] {
                    let exact = u128::from(ticks) * u128::from(NS_PER_SEC) / u128::from(rate);
                    let got = u128::from(s.ticks_to_ns(ticks));
                    let err = exact.abs_diff(got);
                    // 1 ppm as asked, plus 1 ns for truncation.
                    assert!(err <= exact / 1_000_000 + 1, "{rate} Hz, {ticks} ticks: {got} vs {exact}");
                    // In fact the 32-bit multiplier does a thousand times better.
                    assert!(err <= exact / 1_000_000_000 + 2, "{rate} Hz, {ticks} ticks: {got} vs {exact}");
                }
                let khz = s.guest_tsc_khz();
                assert!(khz.abs_diff(rate / 1000) <= 1 + rate / 1_000_000_000, "{rate} Hz read back as {khz} kHz");
            }
            hz = hz * 3 / 2;
        }
    }

    #[test]
    fn scale_examples_and_limits() {
        // 2 GHz: half a nanosecond per tick, exactly.
        assert_eq!(Scale::for_tsc_hz(2_000_000_000), Some(Scale { mul: 1 << 31, shift: 0 }));
        // 1 GHz: one per tick, as 2^31 with one left shift.
        assert_eq!(Scale::for_tsc_hz(1_000_000_000), Some(Scale { mul: 1 << 31, shift: 1 }));
        assert_eq!(Scale::for_tsc_hz(1_000_000_000).unwrap().ticks_to_ns(12345), 12345);
        assert_eq!(Scale::for_tsc_hz(1_000_000_000).unwrap().guest_tsc_khz(), 1_000_000);
        // 100 MHz: 10 ns per tick.
        let s = Scale::for_tsc_hz(100_000_000).unwrap();
        assert_eq!((s.shift, s.ticks_to_ns(7)), (4, 70));
        // Bochs' 20 MHz TSC (its default IPS): 50 ns per tick.
        let s = Scale::for_tsc_hz(20_000_000).unwrap();
        assert_eq!((s.ticks_to_ns(1), s.ticks_to_ns(20_000_000), s.guest_tsc_khz()), (50, 1_000_000_000, 20_000));
        // 10 GHz shifts right.
        assert!(Scale::for_tsc_hz(10_000_000_000).unwrap().shift < 0);
        for bad in [0, 1, MIN_TSC_HZ - 1, MAX_TSC_HZ + 1, u64::MAX] {
            assert_eq!(Scale::for_tsc_hz(bad), None, "{bad}");
        }
        // Every rate in range gives a usable scale.
        for hz in [MIN_TSC_HZ, MAX_TSC_HZ, 3_999_999_999, 4_294_967_295, 4_294_967_296, 8_589_934_591] {
            let s = Scale::for_tsc_hz(hz).unwrap();
            assert!(s.mul >= 1 << 31);
            let khz = s.guest_tsc_khz();
            assert!(khz.abs_diff(hz / 1000) <= 1 + hz / 1_000_000_000, "{hz}: {khz}");
        }
    }

    #[test]
    fn linux_boot_sequence_gives_rate_time_and_wall_clock() {
        let mut ram = Ram::new(0x3000);
        let mut c = KvmClock::new();
        // kvmclock_init: register vCPU 0's record (hv_clock_boot[0], page aligned) with bit 0.
        let t0 = 5_000_000_000;
        c.msr_write(MSR_KVM_SYSTEM_TIME_NEW, 0x1000 | 1, &mut ram, &now(t0)).unwrap();
        assert_eq!(c.msr_read(MSR_KVM_SYSTEM_TIME_NEW), Ok(0x1001));
        assert_eq!(c.system_time_gpa(), Some(0x1000));
        assert_eq!(ram.bytes[0x1000 + 29], PVCLOCK_TSC_STABLE_BIT);
        // kvm_get_tsc_khz.
        let scale = Scale { mul: ram.u32_at(0x1018), shift: ram.bytes[0x101c] as i8 };
        assert!(scale.guest_tsc_khz().abs_diff(HZ / 1000) <= 1, "Linux truncates to kHz");
        // The guest's clock is system time: at the TSC of t0 it reads t0.
        let tsc_t0 = (u128::from(t0) * u128::from(HZ) / u128::from(NS_PER_SEC)) as u64;
        assert!(guest_read(&ram, 0x1000, tsc_t0).abs_diff(t0) <= 1);
        // kvm_get_wallclock: the wall clock plus system time is Unix time now.
        let t1 = t0 + 123_456_789;
        c.msr_write(MSR_KVM_WALL_CLOCK_NEW, 0x2000, &mut ram, &now(t1)).unwrap();
        assert_eq!(c.msr_read(MSR_KVM_WALL_CLOCK_NEW), Ok(0x2000));
        assert_eq!(ram.u32_at(0x2000) & 1, 0);
        let wall = u64::from(ram.u32_at(0x2004)) * NS_PER_SEC + u64::from(ram.u32_at(0x2008));
        let tsc_t1 = (u128::from(t1) * u128::from(HZ) / u128::from(NS_PER_SEC)) as u64;
        let unix = wall + guest_read(&ram, 0x1000, tsc_t1);
        assert!(unix.abs_diff(now(t1).unix_ns) <= 2, "{unix}");
        assert_eq!(c.faults(), 0);
    }

    #[test]
    fn updates_follow_the_version_protocol() {
        let mut ram = Ram::new(0x2000);
        // Junk left by the guest, odd: the update still ends even and newer.
        ram.bytes[0x100..0x104].copy_from_slice(&41u32.to_le_bytes());
        let mut c = KvmClock::new();
        c.msr_write(MSR_KVM_SYSTEM_TIME_NEW, 0x101, &mut ram, &now(1)).unwrap();
        let w = &ram.writes;
        assert_eq!(w.len(), 3);
        assert_eq!((w[0].0, &w[0].1[..]), (0x100, &43u32.to_le_bytes()[..]), "odd first");
        assert_eq!(w[1].0, 0x104, "then the fields");
        assert_eq!((w[2].0, &w[2].1[..]), (0x100, &44u32.to_le_bytes()[..]), "even last");
        // Each refresh moves the version on by two.
        c.refresh(&mut ram, &now(2));
        assert_eq!(ram.u32_at(0x100), 46);
        // The same record whenever and wherever it is written: every vCPU agrees.
        let first = ram.bytes[0x104..0x120].to_vec();
        c.refresh(&mut ram, &now(99_000_000_000));
        assert_eq!(ram.bytes[0x104..0x120], first[..]);
        let mut other = KvmClock::new();
        other.msr_write(MSR_KVM_SYSTEM_TIME_NEW, 0x181, &mut ram, &now(7)).unwrap();
        assert_eq!(ram.bytes[0x184..0x1a0], first[..]);
        // The guest's GUEST_STOPPED survives an update; its other flag bits do not.
        ram.bytes[0x100 + 29] = PVCLOCK_GUEST_STOPPED | 0x80;
        c.refresh(&mut ram, &now(3));
        assert_eq!(ram.bytes[0x100 + 29], PVCLOCK_TSC_STABLE_BIT | PVCLOCK_GUEST_STOPPED);
    }

    #[test]
    fn disabled_or_reset_clocks_are_not_written() {
        let mut ram = Ram::new(0x1000);
        let mut c = KvmClock::new();
        // Bit 0 clear (kvmclock_disable writes 0): nothing written, value kept.
        c.msr_write(MSR_KVM_SYSTEM_TIME_NEW, 0x200, &mut ram, &now(1)).unwrap();
        c.refresh(&mut ram, &now(2));
        assert!(ram.writes.is_empty());
        assert_eq!(c.msr_read(MSR_KVM_SYSTEM_TIME_NEW), Ok(0x200));
        c.msr_write(MSR_KVM_SYSTEM_TIME_NEW, 0x201, &mut ram, &now(1)).unwrap();
        let n = ram.writes.len();
        c.reset();
        c.refresh(&mut ram, &now(2));
        assert_eq!(ram.writes.len(), n, "after reset the old address is left alone");
        assert_eq!(c.msr_read(MSR_KVM_SYSTEM_TIME_NEW), Ok(0));
    }

    #[test]
    fn addresses_outside_ram_are_accepted_but_never_half_written() {
        let mut ram = Ram::new(0x1000);
        let mut c = KvmClock::new();
        // The record would cross the end of RAM: nothing is written, not even the version.
        for gpa in [0x1000 - 8, 0x1000, !1, u64::MAX - 3] {
            assert_eq!(c.msr_write(MSR_KVM_SYSTEM_TIME_NEW, gpa | 1, &mut ram, &now(1)), Ok(()));
            assert_eq!(c.msr_write(MSR_KVM_WALL_CLOCK_NEW, gpa, &mut ram, &now(1)), Ok(()));
        }
        assert!(ram.writes.is_empty());
        assert_eq!(c.faults(), 8);
        // An uncalibrated TSC publishes nothing rather than a zero multiplier.
        let uncalibrated = ClockNow { tsc_hz: 0, ..now(1) };
        c.msr_write(MSR_KVM_SYSTEM_TIME_NEW, 0x101, &mut ram, &uncalibrated).unwrap();
        assert!(ram.writes.is_empty());
    }

    #[test]
    fn other_msrs_are_refused() {
        let mut ram = Ram::new(0x1000);
        let mut c = KvmClock::new();
        // The old MSRs (0x11, 0x12) are not advertised, nor steal time, PV EOI...
        for msr in [0x11, 0x12, 0x4b56_4d02, 0x4b56_4d03, 0x4b56_4d04, 0x4b56_4dff, 0] {
            assert!(!KvmClock::claims(msr));
            assert_eq!(c.msr_read(msr), Err(Refused));
            assert_eq!(c.msr_write(msr, 1, &mut ram, &now(1)), Err(Refused));
        }
        assert!(KvmClock::claims(MSR_KVM_WALL_CLOCK_NEW) && KvmClock::claims(MSR_KVM_SYSTEM_TIME_NEW));
        assert!(ram.writes.is_empty());
    }

    #[test]
    fn wall_clock_of_a_boot_before_system_time_zero_saturates() {
        let mut ram = Ram::new(0x100);
        let mut c = KvmClock::new();
        let odd = ClockNow { unix_ns: 5, ns: 10, ..now(0) };
        c.msr_write(MSR_KVM_WALL_CLOCK_NEW, 0x10, &mut ram, &odd).unwrap();
        assert_eq!((ram.u32_at(0x14), ram.u32_at(0x18)), (0, 0));
    }
}
