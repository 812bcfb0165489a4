//! What a guest sees of CPUID: the host's answers, with the hypervisor bit set,
//! VMX and SVM hidden (no nested virtualization), the features the virtual CPU
//! model does not offer hidden (MTRRs, machine checks, MONITOR/MWAIT,
//! performance-monitoring capabilities: see `exit::msr`), and Oxen's own leaves
//! at 0x40000000 (signature "OxenOxenOxen") and 0x40000001 (ABI version).

use oxen_abi::{ABI_VERSION, CPUID_MAX_LEAF, CPUID_SIGNATURE, CPUID_SIGNATURE_LEAF, CPUID_VERSION_LEAF};

/// The four registers CPUID returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidResult {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// CPUID.1:ECX bits (Intel SDM Vol. 2A, CPUID).
const LEAF1_ECX_VMX: u32 = 1 << 5;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_ECX_MONITOR: u32 = 1 << 3;
const LEAF1_ECX_PDCM: u32 = 1 << 15;
/// CPUID.1:EDX (and the same bits of CPUID.80000001H:EDX on AMD).
const EDX_MCE: u32 = 1 << 7;
const EDX_MTRR: u32 = 1 << 12;
const EDX_MCA: u32 = 1 << 14;
const EDX_HIDDEN: u32 = EDX_MCE | EDX_MTRR | EDX_MCA;
/// Architectural performance monitoring, which the virtual CPU does not have.
const PERFMON_LEAF: u32 = 0xa;
/// CPUID.80000001H:ECX.SVM (AMD APM Vol. 3, CPUID Fn8000_0001).
const EXT1_ECX_SVM: u32 = 1 << 2;
/// AMD's SVM feature leaf, meaningless without SVM.
const SVM_FEATURES_LEAF: u32 = 0x8000_000a;

fn le(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// CPUID.1:ECX.OSXSAVE reflects the *guest's* CR4.OSXSAVE, not the host's
/// (SDM Vol. 2A, CPUID): software checks it before using XGETBV.
const LEAF1_ECX_OSXSAVE: u32 = 1 << 27;

/// Leaf 1 with OSXSAVE set as the guest's CR4 says.
pub fn with_osxsave(leaf1: CpuidResult, guest_cr4_osxsave: bool) -> CpuidResult {
    let ecx = leaf1.ecx & !LEAF1_ECX_OSXSAVE;
    CpuidResult { ecx: if guest_cr4_osxsave { ecx | LEAF1_ECX_OSXSAVE } else { ecx }, ..leaf1 }
}

/// Intel's TSC leaves: 0x15 (TSC/crystal ratio and crystal Hz) and 0x16
/// (processor base/max MHz).
pub const TSC_RATIO_LEAF: u32 = 0x15;
pub const FREQ_LEAF: u32 = 0x16;

/// Leaves 0x15 and 0x16 saying the TSC runs at `tsc_hz`, the rate the
/// hypervisor calibrated, rather than what the (possibly emulated) CPU's
/// model claims: a guest that trusts them (Linux on Intel) keeps time right.
/// Other leaves pass unchanged.
pub fn with_tsc_rate(leaf: u32, r: CpuidResult, tsc_hz: u64) -> CpuidResult {
    if tsc_hz == 0 {
        return r;
    }
    match leaf {
        TSC_RATIO_LEAF => {
            // TSC = crystal * EBX / EAX, with the crystal (ECX, Hz) fitting 32 bits.
            let k = tsc_hz.div_ceil(u64::from(u32::MAX)).max(1);
            CpuidResult { eax: 1, ebx: k as u32, ecx: (tsc_hz / k) as u32, edx: r.edx }
        }
        FREQ_LEAF => {
            let mhz = (tsc_hz / 1_000_000).min(0xffff) as u32;
            CpuidResult { eax: mhz, ebx: mhz, ..r }
        }
        _ => r,
    }
}

/// The guest's answer to CPUID(`leaf`, `subleaf`) given the host's answer `host`.
pub fn guest_view(leaf: u32, _subleaf: u32, host: CpuidResult) -> CpuidResult {
    match leaf {
        1 => CpuidResult {
            ecx: (host.ecx & !(LEAF1_ECX_VMX | LEAF1_ECX_MONITOR | LEAF1_ECX_PDCM)) | LEAF1_ECX_HYPERVISOR,
            edx: host.edx & !EDX_HIDDEN,
            ..host
        },
        0x8000_0001 => CpuidResult { ecx: host.ecx & !EXT1_ECX_SVM, edx: host.edx & !EDX_HIDDEN, ..host },
        SVM_FEATURES_LEAF | PERFMON_LEAF => CpuidResult::default(),
        CPUID_SIGNATURE_LEAF => CpuidResult {
            eax: CPUID_MAX_LEAF,
            ebx: le(&CPUID_SIGNATURE[0..4]),
            ecx: le(&CPUID_SIGNATURE[4..8]),
            edx: le(&CPUID_SIGNATURE[8..12]),
        },
        CPUID_VERSION_LEAF => CpuidResult { eax: ABI_VERSION, ..CpuidResult::default() },
        0x4000_0002..=0x4000_00ff => CpuidResult::default(),
        _ => host,
    }
}

#[cfg(test)]
mod tsc_tests {
    use super::*;

    #[test]
    fn tsc_leaves_give_the_calibrated_rate() {
        let host = CpuidResult { eax: 2, ebx: 292, ecx: 24_000_000, edx: 0 };
        let r = with_tsc_rate(TSC_RATIO_LEAF, host, 200_000_000);
        assert_eq!(u64::from(r.ecx) * u64::from(r.ebx) / u64::from(r.eax), 200_000_000);
        let r = with_tsc_rate(TSC_RATIO_LEAF, host, 5_000_000_000);
        assert_eq!(u64::from(r.ecx) * u64::from(r.ebx) / u64::from(r.eax), 5_000_000_000);
        let f = with_tsc_rate(FREQ_LEAF, CpuidResult { eax: 3500, ebx: 3500, ecx: 100, edx: 0 }, 200_000_000);
        assert_eq!((f.eax, f.ebx, f.ecx), (200, 200, 100));
        assert_eq!(with_tsc_rate(1, host, 1), host);
        assert_eq!(with_tsc_rate(TSC_RATIO_LEAF, host, 0), host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: CpuidResult = CpuidResult { eax: 0x11, ebx: 0x22, ecx: 0xffff_ffff, edx: 0x44 };

    #[test]
    fn hides_vmx_and_svm_and_sets_hypervisor_bit() {
        let l1 = guest_view(1, 0, CpuidResult { ecx: LEAF1_ECX_VMX, ..HOST });
        assert_eq!(l1.ecx, LEAF1_ECX_HYPERVISOR);
        assert_eq!((l1.eax, l1.ebx, l1.edx), (0x11, 0x22, 0x44));
        let l1 = guest_view(1, 0, CpuidResult { ecx: !0, edx: !0, ..HOST });
        assert_eq!(l1.ecx & (LEAF1_ECX_VMX | LEAF1_ECX_MONITOR | LEAF1_ECX_PDCM), 0);
        assert_eq!(l1.edx & (EDX_MTRR | EDX_MCE | EDX_MCA), 0);
        assert_eq!(guest_view(0x8000_0001, 0, CpuidResult { edx: !0, ..HOST }).edx & EDX_MTRR, 0);
        assert_eq!(guest_view(0x8000_0001, 0, HOST).ecx & EXT1_ECX_SVM, 0);
        assert_eq!(guest_view(SVM_FEATURES_LEAF, 0, HOST), CpuidResult::default());
    }

    #[test]
    fn hypervisor_leaves() {
        let sig = guest_view(0x4000_0000, 0, HOST);
        assert_eq!(sig.eax, 0x4000_0001);
        let mut s = [0u8; 12];
        s[0..4].copy_from_slice(&sig.ebx.to_le_bytes());
        s[4..8].copy_from_slice(&sig.ecx.to_le_bytes());
        s[8..12].copy_from_slice(&sig.edx.to_le_bytes());
        assert_eq!(&s, b"OxenOxenOxen");
        assert_eq!(guest_view(0x4000_0001, 0, HOST).eax, ABI_VERSION);
        assert_eq!(guest_view(0x4000_0042, 0, HOST), CpuidResult::default());
    }

    #[test]
    fn osxsave_follows_the_guest() {
        let host = CpuidResult { ecx: LEAF1_ECX_OSXSAVE | 1, ..HOST };
        assert_eq!(with_osxsave(host, false).ecx, 1);
        assert_eq!(with_osxsave(CpuidResult { ecx: 1, ..HOST }, true).ecx, 1 | LEAF1_ECX_OSXSAVE);
    }

    #[test]
    fn other_leaves_pass_through() {
        assert_eq!(guest_view(0, 0, HOST), HOST);
        assert_eq!(guest_view(7, 0, HOST), HOST);
    }
}
