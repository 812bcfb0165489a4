//! XSETBV exits: a guest enabling extended processor state (AVX, …) in XCR0.
//!
//! The instruction is checked exactly as the CPU checks it (SDM Vol. 2C,
//! XSETBV; Vol. 1 §13.3): #UD without CR4.OSXSAVE, #GP(0) at CPL > 0, for any
//! XCR but XCR0, and for an XCR0 the CPU would refuse. Only a value that passes
//! every rule is loaded into the real XCR0, so the hypervisor's own XSETBV can
//! never fault (a fault there would halt the host CPU). The hypervisor itself
//! depends on no state XCR0 enables; `arch::x86_64::xstate` saves the guest's
//! XCR0 (read back with XGETBV) and its extended state at the end of each run
//! slice and restores them at the start of the next.

use super::Outcome;
use crate::virt::Vcpu;

const X87: u64 = 1 << 0;
const SSE: u64 = 1 << 1;
const AVX: u64 = 1 << 2;
const BNDREGS: u64 = 1 << 3;
const BNDCSR: u64 = 1 << 4;
/// AVX-512: opmask, ZMM_Hi256, Hi16_ZMM.
const AVX512: u64 = 0b111 << 5;
const TILECFG: u64 = 1 << 17;
const TILEDATA: u64 = 1 << 18;
const UD: u8 = 6;
const GP: u8 = 13;

/// The XCR0 components of CPUID.(EAX=0DH,ECX=0): EDX:EAX.
pub fn components(leaf_d: super::cpuid::CpuidResult) -> u64 {
    u64::from(leaf_d.eax) | (u64::from(leaf_d.edx) << 32)
}

/// Whether `value` may go into XCR `xcr` when the CPU (and the guest's view of
/// it) offers the XCR0 components `supported` (SDM Vol. 1 §13.3, Vol. 2C XSETBV).
pub fn valid(xcr: u32, value: u64, supported: u64) -> bool {
    let all_or_none = |mask: u64| value & mask == 0 || value & mask == mask;
    xcr == 0
        && value & !supported == 0
        && value & X87 != 0
        && (value & AVX == 0 || value & SSE != 0)
        && all_or_none(BNDREGS | BNDCSR)
        && all_or_none(AVX512)
        && (value & AVX512 == 0 || value & AVX != 0)
        && all_or_none(TILECFG | TILEDATA)
}

/// Handles a guest's XSETBV; `supported` is the XCR0 components both the host
/// and the guest's CPUID leaf 0xD report.
pub fn xsetbv(vcpu: &mut impl Vcpu, xcr: u32, value: u64, supported: u64) -> Outcome {
    // Both faults come before the VM exit on real hardware; checked again
    // because nothing may reach the real XSETBV that the CPU would refuse.
    let osxsave = vcpu
        .cpu_state()
        .is_none_or(|s| s.paging.cr4.contains(x86_64::registers::control::Cr4Flags::OSXSAVE));
    if !osxsave {
        vcpu.inject_exception(UD, None);
        return Outcome::Continue;
    }
    if vcpu.cpl() != 0 || !valid(xcr, value, supported) {
        vcpu.inject_exception(GP, Some(0));
        return Outcome::Continue;
    }
    #[cfg(target_os = "none")]
    // SAFETY: the value passed every check the CPU makes and only has
    // components the host CPU supports, so XSETBV cannot fault; the hypervisor
    // does not use the state XCR0 enables.
    unsafe {
        core::arch::asm!("xsetbv", in("ecx") xcr, in("eax") value as u32, in("edx") (value >> 32) as u32,
            options(nomem, nostack));
    }
    vcpu.skip_instruction();
    Outcome::Continue
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virt::fake::FakeVcpu;

    /// The rules again, written the other way round: as the list of faults
    /// the SDM's XSETBV pseudo-code gives.
    fn reference_faults(xcr: u32, v: u64, supported: u64) -> bool {
        let bit = |n: u32| (v >> n) & 1;
        xcr != 0
            || (0..64).any(|n| bit(n) == 1 && (supported >> n) & 1 == 0)
            || bit(0) == 0
            || (bit(1) == 0 && bit(2) == 1)
            || bit(3) != bit(4)
            || !(bit(5) == bit(6) && bit(6) == bit(7))
            || (bit(5) == 1 && bit(2) == 0)
            || bit(17) != bit(18)
    }

    /// Hosts: x87+SSE+AVX; with MPX; Skylake-X (AVX-512, PKRU); Sapphire
    /// Rapids (AMX); one that reports everything in the low 19 bits.
    const HOSTS: [u64; 5] = [0x7, 0x1f, 0x2ff, 0x602e7, 0x7_ffff];

    #[test]
    fn every_low_combination_matches_the_reference() {
        for &host in &HOSTS {
            let mut accepted = 0;
            for v in 0..(1u64 << 19) {
                let ok = valid(0, v, host);
                assert_eq!(ok, !reference_faults(0, v, host), "host {host:#x} value {v:#x}");
                accepted += u32::from(ok);
            }
            assert!(accepted > 0, "host {host:#x}: something must be valid");
        }
        // Above bit 18: only what the host reports.
        assert!(!valid(0, 0x7 | (1 << 19), 0x7_ffff));
        assert!(!valid(0, 0x7 | (1 << 63), 0x7));
        assert!(valid(0, 0x7 | (1 << 40), 0x7 | (1 << 40)));
    }

    #[test]
    fn the_issue_values_are_refused() {
        let skx = 0x2ff;
        assert!(!valid(0, 0x27, skx), "opmask without ZMM");
        assert!(!valid(0, 0x0b, 0x1f), "BNDREGS without BNDCSR");
        assert!(!valid(0, 0xe3, skx), "AVX-512 without AVX");
        assert!(valid(0, 0xe7, skx));
        assert!(valid(0, 0x2e7, skx));
        assert!(!valid(1, 0x1, skx), "only XCR0");
    }

    #[test]
    fn faults_like_the_cpu() {
        let mut v = FakeVcpu::default();
        assert_eq!(xsetbv(&mut v, 0, 0x7, 0x7), Outcome::Continue);
        assert_eq!((v.skipped, v.injected), (1, None));

        let mut v = FakeVcpu { cpl: 3, ..FakeVcpu::default() };
        xsetbv(&mut v, 0, 0x7, 0x7);
        assert_eq!((v.skipped, v.injected), (0, Some((GP, Some(0)))), "CPL 3");

        let mut v = FakeVcpu::default();
        xsetbv(&mut v, 0, 0x27, 0x2ff);
        assert_eq!((v.skipped, v.injected), (0, Some((GP, Some(0)))));
    }
}
