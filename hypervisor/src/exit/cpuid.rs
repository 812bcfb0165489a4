//! What a guest sees of CPUID: one policy per domain kind (`Kind`), applied to
//! the host's answers. The rule: a feature is shown only if every MSR and
//! instruction it implies works for the guest (`exit::msr` handles the MSRs,
//! the backends enable the instructions); everything else is hidden.
//!
//! - Hidden for every guest: VMX, SVM, SMX and SKINIT (no nested
//!   virtualization), MONITOR/MWAIT(X), machine checks, MTRRs, performance
//!   monitoring and debug store, thermal and power management (leaf 6 but
//!   ARAT, EIST, HWP, EPB), SGX, PT, RDT, Key Locker, PCONFIG, TME, UINTR,
//!   CET, AMX and XFD, XSAVES (no IA32_XSS), MPX, TSC_ADJUST, WAITPKG,
//!   HRESET, LAM, PPIN, TSX_FORCE_ABORT, SRBDS/MCU_OPT_CTRL, CORE_CAPABILITIES,
//!   AMD's IBS, LWP, OSVW, extended perf counters, data-breakpoint masks,
//!   RDPRU, MCOMMIT, automatic IBRS, SEV and perfmon v2.
//! - Shown as the host has them: the speculation controls (IBRS/IBPB, STIBP,
//!   SSBD, L1D flush, ARCH_CAPABILITIES, PSFD, IPRED/RRSBA/BHI controls, AMD's
//!   IBPB/IBRS/STIBP/SSBD and VIRT_SSBD): `exit::msr` virtualizes SPEC_CTRL
//!   and VIRT_SPEC_CTRL per vCPU and executes IBPB and L1D flushes.
//! - Mirrors of guest state follow the guest: leaf 1's OSXSAVE (CR4.OSXSAVE),
//!   leaf 7's OSPKE (CR4.PKE), leaf 0xD.0's EBX and 0xD.1's EBX (the XSAVE
//!   and compacted sizes for the guest's XCR0; XSAVEC itself is hidden).
//! - Leaf 0xD offers only components with a size of their own (so PKU goes
//!   when PKRU has none), and its sizes are computed from the components'
//!   subleaves rather than copied, so they agree with each other even where
//!   the CPU model's do not.
//! - Topology: dom0's vCPU i runs on CPU i and keeps that CPU's APIC IDs, so
//!   the host's answers stand. A domU sees its own: vCPU n has (x2)APIC ID n
//!   in leaves 1, 0xB, 0x1F and AMD's 0x8000001E, one thread per core, one
//!   package. Every domain's platform has a virtual local APIC with x2APIC
//!   and TSC-deadline modes (`devices::lapic`): a domU is shown them whatever
//!   the host has.
//! - Oxen's own leaves at 0x40000000 (signature "OxenOxenOxen") and
//!   0x40000001 (ABI version); 0x40000002..0x400000ff read as zero.
//! - A domU also finds KVM's leaves at 0x40000100 ("KVMKVMKVM", max leaf
//!   0x40000101) and 0x40000101 (features: the kvmclock MSRs and their stable
//!   bit only; no hints), so Linux takes its TSC rate and wall clock from
//!   `devices::kvmclock` on both vendors. The rest of the range reads as zero.

use oxen_abi::{ABI_VERSION, CPUID_MAX_LEAF, CPUID_SIGNATURE, CPUID_SIGNATURE_LEAF, CPUID_VERSION_LEAF};

/// The four registers CPUID returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidResult {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// Which policy a guest gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// dom0: vCPU i on CPU i, with a virtual local APIC carrying that CPU's ID.
    Dom0,
    /// A domU: `vcpus` vCPUs numbered from 0, this is `vcpu`, each with a
    /// virtual local APIC whose ID is its number.
    DomU { vcpu: u32, vcpus: u32 },
}

/// Guest state that CPUID bits mirror, read during the exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestState {
    /// CR4.OSXSAVE (bit 18).
    pub osxsave: bool,
    /// CR4.PKE (bit 22).
    pub pke: bool,
    /// The guest's XCR0 (what XGETBV returns while its state is loaded).
    pub xcr0: u64,
}

const fn bit(n: u32) -> u32 {
    1 << n
}

/// CPUID.1:ECX (Intel SDM Vol. 2A, CPUID, Table 3-10).
pub mod l1c {
    use super::bit;
    pub const DTES64: u32 = bit(2);
    pub const MONITOR: u32 = bit(3);
    pub const DS_CPL: u32 = bit(4);
    pub const VMX: u32 = bit(5);
    pub const SMX: u32 = bit(6);
    pub const EIST: u32 = bit(7);
    pub const TM2: u32 = bit(8);
    pub const SDBG: u32 = bit(11);
    pub const XTPR: u32 = bit(14);
    pub const PDCM: u32 = bit(15);
    pub const DCA: u32 = bit(18);
    pub const X2APIC: u32 = bit(21);
    pub const TSC_DEADLINE: u32 = bit(24);
    pub const XSAVE: u32 = bit(26);
    pub const OSXSAVE: u32 = bit(27);
    pub const HYPERVISOR: u32 = bit(31);
}

/// CPUID.1:EDX (and the same bits of CPUID.80000001H:EDX on AMD).
pub mod l1d {
    use super::bit;
    pub const MCE: u32 = bit(7);
    pub const APIC: u32 = bit(9);
    pub const MTRR: u32 = bit(12);
    pub const MCA: u32 = bit(14);
    pub const DS: u32 = bit(21);
    pub const ACPI: u32 = bit(22);
    pub const HTT: u32 = bit(28);
    pub const TM: u32 = bit(29);
    pub const PBE: u32 = bit(31);
}

/// CPUID.(EAX=7,ECX=0) (SDM Vol. 2A Table 3-8; Intel's "Speculative Execution
/// Side Channel Mitigations" for EDX 26-31).
pub mod l7 {
    use super::bit;
    pub const B_SGX: u32 = bit(2);
    pub const B_TSC_ADJUST: u32 = bit(1);
    pub const B_PQM: u32 = bit(12);
    pub const B_MPX: u32 = bit(14);
    pub const B_PQE: u32 = bit(15);
    pub const B_PT: u32 = bit(25);
    pub const C_PKU: u32 = bit(3);
    pub const C_OSPKE: u32 = bit(4);
    pub const C_WAITPKG: u32 = bit(5);
    pub const C_CET_SS: u32 = bit(7);
    pub const C_TME: u32 = bit(13);
    pub const C_KL: u32 = bit(23);
    pub const C_ENQCMD: u32 = bit(29);
    pub const C_SGX_LC: u32 = bit(30);
    pub const D_UINTR: u32 = bit(5);
    pub const D_SRBDS_CTRL: u32 = bit(9);
    pub const D_TSX_FORCE_ABORT: u32 = bit(13);
    pub const D_PCONFIG: u32 = bit(18);
    pub const D_ARCH_LBR: u32 = bit(19);
    pub const D_CET_IBT: u32 = bit(20);
    pub const D_AMX_BF16: u32 = bit(22);
    pub const D_AMX_TILE: u32 = bit(24);
    pub const D_AMX_INT8: u32 = bit(25);
    pub const D_IBRS_IBPB: u32 = bit(26);
    pub const D_STIBP: u32 = bit(27);
    pub const D_L1D_FLUSH: u32 = bit(28);
    pub const D_ARCH_CAPABILITIES: u32 = bit(29);
    pub const D_CORE_CAPABILITIES: u32 = bit(30);
    pub const D_SSBD: u32 = bit(31);
    /// Subleaf 1, EAX.
    pub const S1A_HRESET: u32 = bit(22);
    pub const S1A_LAM: u32 = bit(26);
    /// Subleaf 1, EBX.
    pub const S1B_PPIN: u32 = bit(0);
    /// Subleaf 2, EDX: the SPEC_CTRL bits beyond IBRS/STIBP/SSBD.
    pub const S2D_PSFD: u32 = bit(0);
    pub const S2D_IPRED_CTRL: u32 = bit(1);
    pub const S2D_RRSBA_CTRL: u32 = bit(2);
    pub const S2D_BHI_CTRL: u32 = bit(4);
}

/// CPUID.80000001H:ECX (AMD APM Vol. 3, CPUID Fn8000_0001_ECX).
pub mod e1c {
    use super::bit;
    pub const SVM: u32 = bit(2);
    pub const OSVW: u32 = bit(9);
    pub const IBS: u32 = bit(10);
    pub const SKINIT: u32 = bit(12);
    pub const WDT: u32 = bit(13);
    pub const LWP: u32 = bit(15);
    pub const PERF_CTR_CORE: u32 = bit(23);
    pub const PERF_CTR_NB: u32 = bit(24);
    pub const DATA_BP_EXT: u32 = bit(26);
    pub const PERF_TSC: u32 = bit(27);
    pub const PERF_CTR_LLC: u32 = bit(28);
    pub const MONITORX: u32 = bit(29);
}

/// CPUID.80000008H:EBX (AMD APM Vol. 3, Fn8000_0008_EBX; AMD's "Software
/// techniques for managing speculation").
pub mod e8b {
    use super::bit;
    pub const INST_RET_CNT_MSR: u32 = bit(1);
    pub const RDPRU: u32 = bit(4);
    pub const MCOMMIT: u32 = bit(8);
    pub const IBPB: u32 = bit(12);
    pub const IBRS: u32 = bit(14);
    pub const STIBP: u32 = bit(15);
    pub const PPIN: u32 = bit(23);
    pub const SSBD: u32 = bit(24);
    pub const VIRT_SSBD: u32 = bit(25);
    pub const CPPC: u32 = bit(27);
    pub const PSFD: u32 = bit(28);
}

/// CPUID.80000021H:EAX (AMD APM Vol. 3, Fn8000_0021_EAX).
pub mod e21a {
    use super::bit;
    pub const AUTO_IBRS: u32 = bit(8);
    pub const SBPB: u32 = bit(27);
}

/// XCR0/XSS components (SDM Vol. 1 §13.1) the policy hides: MPX (3, 4), PT
/// (8), PASID (10), CET (11, 12), HDC (13), UINTR (14), LBR (15), HWP (16),
/// AMX (17, 18). Supervisor components go with XSAVES.
const XSTATE_HIDDEN: u64 = (1 << 3) | (1 << 4) | (1 << 8) | (0x7f << 10) | (1 << 17) | (1 << 18);
const PKRU: u64 = 1 << 9;
/// CPUID.(EAX=0DH,ECX=1):EAX.
const XSAVES: u32 = bit(3);
/// XSAVEC: hidden, so guests use the standard format, whose layout is the
/// CPU's own (each component at the offset its subleaf gives), rather than a
/// compacted layout the guest computes from alignment bits that the CPU's own
/// XSAVEC must then agree with. Bochs' Skylake-X reports a leaf 0xD its own
/// XSAVE does not match; with XSAVEC shown, dom0 there ran compacted and one
/// of its processes died of a corrupted TLS pointer (not proven to be this).
const XSAVEC: u32 = bit(1);
const XFD: u32 = bit(4);

/// Leaf 6 (thermal and power management): only ARAT (EAX bit 2, "the APIC
/// timer keeps running in deep C-states") is kept; the rest names MSRs the
/// virtual CPU has not (IA32_THERM_*, HWP, EPB, MPERF/APERF).
const LEAF6_ARAT: u32 = bit(2);

/// Leaves answered with zeros: 5 (MONITOR/MWAIT), 9 (DCA), 0xA (perfmon),
/// 0xF/0x10 (RDT), 0x12 (SGX), 0x14 (PT), 0x19 (Key Locker), 0x1B (PCONFIG),
/// 0x1D/0x1E (AMX), 0x20 (HRESET); AMD 0x8000000A (SVM), 0x8000001B (IBS),
/// 0x8000001C (LWP), 0x8000001F (SEV), 0x80000020 (PQoS), 0x80000022 (perfmon v2).
const ZEROED: [u32; 17] = [
    0x5,
    0x9,
    0xa,
    0xf,
    0x10,
    0x12,
    0x14,
    0x19,
    0x1b,
    0x1d,
    0x1e,
    0x20,
    0x8000_000a,
    0x8000_001b,
    0x8000_001c,
    0x8000_001f,
    0x8000_0020,
];
const AMD_PERFMON_V2_LEAF: u32 = 0x8000_0022;

/// Intel's TSC leaves: 0x15 (TSC/crystal ratio and crystal Hz) and 0x16
/// (processor base/max MHz).
pub const TSC_RATIO_LEAF: u32 = 0x15;
pub const FREQ_LEAF: u32 = 0x16;
const XSTATE_LEAF: u32 = 0xd;
const TOPOLOGY_LEAF: u32 = 0xb;
const TOPOLOGY_V2_LEAF: u32 = 0x1f;
const AMD_TOPOLOGY_LEAF: u32 = 0x8000_001e;

/// KVM's leaves, one block of 0x100 above Oxen's own: Linux's
/// `hypervisor_cpuid_base` walks 0x40000000..0x40010000 in steps of 0x100 and
/// compares each block's signature, whatever the EAX of the blocks before
/// says, so Oxen's leaves at 0x40000000 hide nothing. KVM's own leaves: Linux
/// `Documentation/virt/kvm/x86/cpuid.rst`.
pub const KVM_SIGNATURE_LEAF: u32 = 0x4000_0100;
/// EAX: the paravirtual features; EDX: hints.
pub const KVM_FEATURES_LEAF: u32 = 0x4000_0101;
const KVM_SIGNATURE: &[u8; 12] = b"KVMKVMKVM\0\0\0";
/// Only the clock (`devices::kvmclock`): the new MSRs and the stable bit. No
/// other feature, so Linux makes no KVM hypercall and touches no other KVM
/// MSR (no async PF, steal time, PV EOI, PV IPIs/TLB flush/spinlocks, poll
/// control, MSI extended destination ID).
const KVM_FEATURES: u32 =
    crate::devices::kvmclock::KVM_FEATURE_CLOCKSOURCE2 | crate::devices::kvmclock::KVM_FEATURE_CLOCKSOURCE_STABLE_BIT;

fn le(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// The answer the host gives when asked, for leaves the policy derives from
/// several others.
pub type Host<'a> = &'a dyn Fn(u32, u32) -> CpuidResult;

/// Features an administrator may hide from every guest, dom0 and domUs alike,
/// with `cpuid_hide=NAME[,NAME...]` on the hypervisor's command line (Xen's
/// `dom0-cpuid=`, QEMU's `-cpu host,-NAME`): (name, leaf, subleaf, register
/// 0-3 for EAX-EDX, bit). The guest then takes the path a CPU without them
/// takes.
pub const HIDEABLE: &[(&str, u32, u32, u8, u32)] = &[
    // Enhanced REP MOVSB/STOSB: Linux copies and clears with byte-sized REP
    // MOVSB/STOSB where it is, with REP MOVSQ/STOSQ where it is not. Bochs'
    // Debian build has no fast path for REP string instructions, so there a
    // byte costs what a quadword does: hiding it makes guests' copies about
    // 8x cheaper (the Bochs tests; 32 MiB in 5 s instead of 61 s).
    ("erms", 7, 0, 1, 9),
    // Fast short REP MOV, which Linux also checks before byte-sized copies.
    ("fsrm", 7, 0, 3, 4),
];

/// Features that imply another of `HIDEABLE` (dependent, what it needs): a
/// CPU without the second has not the first either, and guests rely on it.
/// Linux's memmove skips its short-copy path under FSRM, trusting that ERMS
/// is there too; with ERMS hidden and FSRM shown it corrupted memory and
/// dom0 hung in its boot (Bochs `tigerlake`, which has FSRM).
const IMPLIES: &[(&str, &str)] = &[("fsrm", "erms")];

/// `mask` (bit i: `HIDEABLE[i]`) with every feature that needs a hidden one
/// hidden too.
fn with_dependents(mut mask: u32) -> u32 {
    let index = |name: &str| HIDEABLE.iter().position(|h| h.0 == name);
    loop {
        let before = mask;
        for &(dependent, needs) in IMPLIES {
            if let (Some(d), Some(n)) = (index(dependent), index(needs)) {
                if mask & (1 << n) != 0 {
                    mask |= 1 << d;
                }
            }
        }
        if mask == before {
            return mask;
        }
    }
}

/// The features of `HIDEABLE` hidden (bit i: entry i), set once at boot.
static HIDDEN: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

/// Hides the features of `HIDEABLE` whose bits are set in `mask`, and those
/// that need them (`with_dependents`), from every guest (at boot, before any
/// guest runs); returns the features hidden.
pub fn hide(mask: u32) -> u32 {
    let hidden = with_dependents(mask);
    HIDDEN.store(hidden, core::sync::atomic::Ordering::Relaxed);
    hidden
}

/// `r`, the answer to CPUID(`leaf`, `subleaf`), without the features of
/// `HIDEABLE` set in `mask`.
fn without_hidden(leaf: u32, subleaf: u32, mut r: CpuidResult, mask: u32) -> CpuidResult {
    for (i, &(_, l, s, reg, b)) in HIDEABLE.iter().enumerate() {
        if mask & (1 << i) != 0 && l == leaf && s == subleaf {
            match reg {
                0 => r.eax &= !bit(b),
                1 => r.ebx &= !bit(b),
                2 => r.ecx &= !bit(b),
                _ => r.edx &= !bit(b),
            }
        }
    }
    r
}

/// The guest's answer to CPUID(`leaf`, `subleaf`): the host's answer filtered
/// by the policy for `kind`, with the bits mirroring `state` set from it, and
/// without the features `cpuid_hide=` hides.
pub fn guest_view(kind: Kind, state: &GuestState, leaf: u32, subleaf: u32, host: Host<'_>) -> CpuidResult {
    let r = policy_view(kind, state, leaf, subleaf, host);
    without_hidden(leaf, subleaf, r, HIDDEN.load(core::sync::atomic::Ordering::Relaxed))
}

fn policy_view(kind: Kind, state: &GuestState, leaf: u32, subleaf: u32, host: Host<'_>) -> CpuidResult {
    let r = host(leaf, subleaf);
    let max_basic = host(0, 0).eax;
    let max_ext = host(0x8000_0000, 0).eax;
    let domu = match kind {
        Kind::DomU { vcpu, vcpus } => Some((vcpu, vcpus.max(1))),
        Kind::Dom0 => None,
    };
    match leaf {
        1 => {
            let mut ecx = r.ecx
                & !(l1c::DTES64
                    | l1c::MONITOR
                    | l1c::DS_CPL
                    | l1c::VMX
                    | l1c::SMX
                    | l1c::EIST
                    | l1c::TM2
                    | l1c::SDBG
                    | l1c::XTPR
                    | l1c::PDCM
                    | l1c::DCA
                    | l1c::OSXSAVE);
            ecx |= l1c::HYPERVISOR;
            if state.osxsave && r.ecx & l1c::XSAVE != 0 {
                ecx |= l1c::OSXSAVE;
            }
            let mut edx = r.edx & !(l1d::MCE | l1d::MTRR | l1d::MCA | l1d::DS | l1d::ACPI | l1d::TM | l1d::PBE);
            let mut ebx = r.ebx;
            if let Some((vcpu, vcpus)) = domu {
                // The virtual LAPIC has both modes whatever the host has.
                ecx |= l1c::X2APIC | l1c::TSC_DEADLINE;
                edx = (edx & !l1d::HTT) | l1d::APIC;
                if vcpus > 1 {
                    edx |= l1d::HTT;
                }
                // EBX 31:24 initial APIC ID, 23:16 logical processors per package.
                ebx = (ebx & 0xffff) | ((vcpu & 0xff) << 24) | (vcpus.min(255) << 16);
            }
            CpuidResult { ebx, ecx, edx, ..r }
        }
        4 | 0x8000_001d => match domu {
            // Caches private to each vCPU (EAX 25:14 = sharing threads - 1);
            // leaf 4's 31:26 = cores per package - 1.
            Some((_, vcpus)) => {
                let mut eax = r.eax & !(0xfff << 14);
                if leaf == 4 {
                    eax = (eax & 0x03ff_ffff) | ((vcpus.next_power_of_two() - 1).min(63) << 26);
                }
                CpuidResult { eax, ..r }
            }
            None => r,
        },
        6 => CpuidResult { eax: r.eax & LEAF6_ARAT, ..CpuidResult::default() },
        7 => match subleaf {
            0 => {
                let ebx = r.ebx & !(l7::B_SGX | l7::B_TSC_ADJUST | l7::B_PQM | l7::B_MPX | l7::B_PQE | l7::B_PT);
                let mut ecx = r.ecx
                    & !(l7::C_OSPKE
                        | l7::C_WAITPKG
                        | l7::C_CET_SS
                        | l7::C_TME
                        | l7::C_KL
                        | l7::C_ENQCMD
                        | l7::C_SGX_LC);
                // PKU needs its XSAVE component (PKRU, 9) where XSAVE exists.
                let host_xsave = max_basic >= XSTATE_LEAF && host(1, 0).ecx & l1c::XSAVE != 0;
                if host_xsave && guest_xcr0_mask(host) & PKRU == 0 {
                    ecx &= !l7::C_PKU;
                }
                if state.pke && ecx & l7::C_PKU != 0 {
                    ecx |= l7::C_OSPKE;
                }
                let edx = r.edx
                    & !(l7::D_UINTR
                        | l7::D_SRBDS_CTRL
                        | l7::D_TSX_FORCE_ABORT
                        | l7::D_PCONFIG
                        | l7::D_ARCH_LBR
                        | l7::D_CET_IBT
                        | l7::D_AMX_BF16
                        | l7::D_AMX_TILE
                        | l7::D_AMX_INT8
                        | l7::D_CORE_CAPABILITIES);
                CpuidResult { ebx, ecx, edx, ..r }
            }
            1 => CpuidResult { eax: r.eax & !(l7::S1A_HRESET | l7::S1A_LAM), ebx: r.ebx & !l7::S1B_PPIN, ..r },
            _ => r,
        },
        XSTATE_LEAF => xstate(state, subleaf, host),
        TOPOLOGY_LEAF | TOPOLOGY_V2_LEAF if leaf <= max_basic => match domu {
            Some((vcpu, vcpus)) => topology(vcpu, vcpus, subleaf),
            None => r,
        },
        0x8000_0001 => {
            let ecx = r.ecx
                & !(e1c::SVM
                    | e1c::OSVW
                    | e1c::IBS
                    | e1c::SKINIT
                    | e1c::WDT
                    | e1c::LWP
                    | e1c::PERF_CTR_CORE
                    | e1c::PERF_CTR_NB
                    | e1c::DATA_BP_EXT
                    | e1c::PERF_TSC
                    | e1c::PERF_CTR_LLC
                    | e1c::MONITORX);
            let mut edx = r.edx & !(l1d::MCE | l1d::MTRR | l1d::MCA);
            if domu.is_some() {
                // AMD mirrors leaf 1's APIC bit here.
                edx |= l1d::APIC;
            }
            CpuidResult { ecx, edx, ..r }
        }
        // Advanced power management: only the invariant TSC (EDX bit 8).
        0x8000_0007 => CpuidResult { edx: r.edx & bit(8), ..CpuidResult::default() },
        0x8000_0008 => {
            let ebx = r.ebx & !(e8b::INST_RET_CNT_MSR | e8b::RDPRU | e8b::MCOMMIT | e8b::PPIN | e8b::CPPC);
            let ecx = match domu {
                // ECX 7:0 cores - 1, 15:12 APIC ID bits for them; 17:16 (perf
                // TSC size) go with PerfTsc.
                Some((_, vcpus)) => (r.ecx & 0xfffc_0f00) | (vcpus - 1).min(255) | (id_bits(vcpus) << 12),
                None => r.ecx & !0x3_0000,
            };
            CpuidResult { ebx, ecx, ..r }
        }
        AMD_TOPOLOGY_LEAF if leaf <= max_ext => match domu {
            // EAX extended APIC ID, EBX compute unit (one thread each), ECX
            // node 0 of one.
            Some((vcpu, _)) => CpuidResult { eax: vcpu, ebx: vcpu & 0xff, ecx: 0, edx: 0 },
            None => r,
        },
        0x8000_0021 => CpuidResult { eax: r.eax & !e21a::AUTO_IBRS, ..r },
        AMD_PERFMON_V2_LEAF => CpuidResult::default(),
        l if ZEROED.contains(&l) => CpuidResult::default(),
        CPUID_SIGNATURE_LEAF => CpuidResult {
            eax: CPUID_MAX_LEAF,
            ebx: le(&CPUID_SIGNATURE[0..4]),
            ecx: le(&CPUID_SIGNATURE[4..8]),
            edx: le(&CPUID_SIGNATURE[8..12]),
        },
        CPUID_VERSION_LEAF => CpuidResult { eax: ABI_VERSION, ..CpuidResult::default() },
        KVM_SIGNATURE_LEAF if domu.is_some() => CpuidResult {
            eax: KVM_FEATURES_LEAF,
            ebx: le(&KVM_SIGNATURE[0..4]),
            ecx: le(&KVM_SIGNATURE[4..8]),
            edx: le(&KVM_SIGNATURE[8..12]),
        },
        // EDX: no hints (KVM_HINTS_REALTIME would promise dedicated pCPUs).
        KVM_FEATURES_LEAF if domu.is_some() => CpuidResult { eax: KVM_FEATURES, ..CpuidResult::default() },
        // The rest of the hypervisor range (Linux looks for other hypervisors'
        // signatures every 0x100 leaves).
        0x4000_0002..=0x4fff_ffff => CpuidResult::default(),
        _ => r,
    }
}

/// Bits an x2APIC ID needs for `n` IDs (0 for one).
fn id_bits(n: u32) -> u32 {
    n.max(1).next_power_of_two().trailing_zeros()
}

/// Leaf 0xB/0x1F for a domU (SDM Vol. 2A, CPUID leaf 0BH): one thread per
/// core, `vcpus` cores, x2APIC ID = vCPU number.
fn topology(vcpu: u32, vcpus: u32, subleaf: u32) -> CpuidResult {
    const SMT: u32 = 1 << 8;
    const CORE: u32 = 2 << 8;
    match subleaf {
        0 => CpuidResult { eax: 0, ebx: 1, ecx: SMT, edx: vcpu },
        1 => CpuidResult { eax: id_bits(vcpus), ebx: vcpus, ecx: 1 | CORE, edx: vcpu },
        n => CpuidResult { eax: 0, ebx: 0, ecx: n & 0xff, edx: vcpu },
    }
}

/// XCR0 bits the guest may set: what the host supports less `XSTATE_HIDDEN`.
/// `exit::xcr` validates XSETBV against this.
/// A component whose own subleaf gives it no size is left out too: it could
/// not be saved (Bochs' Ice Lake/Tiger Lake models list PKRU in XCR0 with an
/// empty subleaf 9, which Linux reports as "misordered xstate").
pub fn guest_xcr0_mask(host: Host<'_>) -> u64 {
    let d = host(XSTATE_LEAF, 0);
    let mask = (u64::from(d.eax) | (u64::from(d.edx) << 32)) & !XSTATE_HIDDEN;
    (2..63u32).filter(|&i| mask & (1 << i) != 0 && host(XSTATE_LEAF, i).eax == 0).fold(mask, |m, i| m & !(1 << i))
}

/// Bytes of a compacted-format XSAVE area (XSAVEC) holding the components in
/// `mask` (SDM Vol. 1 §13.4.3: after 576 bytes, each component in order,
/// 64-byte aligned where its subleaf's ECX bit 1 says so).
fn xsave_compacted_size(mask: u64, host: Host<'_>) -> u32 {
    (2..63u32).filter(|&i| mask & (1 << i) != 0).fold(576u32, |at, i| {
        let c = host(XSTATE_LEAF, i);
        let at = if c.ecx & 2 != 0 { at.next_multiple_of(64) } else { at };
        at.saturating_add(c.eax)
    })
}

/// Bytes of a standard-format XSAVE area holding the components in `mask`
/// (SDM Vol. 1 §13.4: 512 legacy + 64 header, then each component at the
/// offset leaf 0xD gives).
fn xsave_size(mask: u64, host: Host<'_>) -> u32 {
    (2..63u32)
        .filter(|&i| mask & (1 << i) != 0)
        .map(|i| {
            let c = host(XSTATE_LEAF, i);
            c.eax.saturating_add(c.ebx)
        })
        .fold(576, u32::max)
}

/// Leaf 0xD (SDM Vol. 2A, CPUID leaf 0DH): only the components the guest may
/// enable, sizes computed for them, EBX of subleaf 0 for the guest's XCR0; no
/// XSAVES (the virtual CPU has no IA32_XSS) and no XFD.
fn xstate(state: &GuestState, subleaf: u32, host: Host<'_>) -> CpuidResult {
    let r = host(XSTATE_LEAF, subleaf);
    let allowed = guest_xcr0_mask(host);
    match subleaf {
        0 => CpuidResult {
            eax: allowed as u32,
            ebx: xsave_size(state.xcr0 & allowed, host),
            ecx: xsave_size(allowed, host),
            edx: (allowed >> 32) as u32,
        },
        // EBX: the XSAVEC size for XCR0 | IA32_XSS, and XSS is always 0 here.
        1 => CpuidResult {
            eax: r.eax & !(XSAVES | XSAVEC | XFD),
            ebx: xsave_compacted_size(state.xcr0 & allowed, host),
            ecx: 0,
            edx: 0,
        },
        i if i < 63 && allowed & (1 << i) != 0 => r,
        _ => CpuidResult::default(),
    }
}

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
            // To the nearest MHz: a calibration a few Hz under the round
            // figure (199,999,980 Hz of Bochs' 200 MHz) is not one MHz less.
            let mhz = (tsc_hz.saturating_add(500_000) / 1_000_000).min(0xffff) as u32;
            CpuidResult { eax: mhz, ebx: mhz, ..r }
        }
        _ => r,
    }
}

/// The guest's XCR0, read during the exit (the guest's XCR0 is still loaded
/// then: the hypervisor itself never changes it). 0 where XGETBV is absent.
pub fn current_xcr0(host: Host<'_>) -> u64 {
    if host(1, 0).ecx & l1c::XSAVE == 0 {
        return 0;
    }
    #[cfg(target_os = "none")]
    {
        let (lo, hi): (u32, u32);
        // SAFETY: the CPU has XSAVE and the hypervisor runs with CR4.OSXSAVE
        // (virt::backend::init_cpu), so XGETBV with ECX = 0 cannot fault.
        unsafe { core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
        u64::from(lo) | (u64::from(hi) << 32)
    }
    #[cfg(not(target_os = "none"))]
    0
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
        // A calibration just under (or over) a round rate is that rate, not one MHz off.
        assert_eq!(with_tsc_rate(FREQ_LEAF, host, 199_999_980).eax, 200);
        assert_eq!(with_tsc_rate(FREQ_LEAF, host, 2_596_203_000).eax, 2596);
        assert_eq!(with_tsc_rate(1, host, 1), host);
        assert_eq!(with_tsc_rate(TSC_RATIO_LEAF, host, 0), host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMU: Kind = Kind::DomU { vcpu: 0, vcpus: 1 };
    const NONE: GuestState = GuestState { osxsave: false, pke: false, xcr0: 0 };

    /// A host with every feature bit set: max basic leaf 0x1f, max extended
    /// 0x80000022, all other registers all ones; XSAVE components 2..18 of
    /// 64 bytes each at 576 + 64 * (i - 2).
    fn all_ones(leaf: u32, subleaf: u32) -> CpuidResult {
        match (leaf, subleaf) {
            (0, _) => CpuidResult { eax: 0x1f, ..Default::default() },
            (0x8000_0000, _) => CpuidResult { eax: 0x8000_0022, ..Default::default() },
            (7, 0) => CpuidResult { eax: 2, ebx: !0, ecx: !0, edx: !0 },
            (0xd, i) if (2..19).contains(&i) => CpuidResult { eax: 64, ebx: 576 + 64 * (i - 2), ecx: 0, edx: 0 },
            (0xd, 0) => CpuidResult { eax: 0x7_ffff, ebx: 0, ecx: 0, edx: 0 },
            _ => CpuidResult { eax: !0, ebx: !0, ecx: !0, edx: !0 },
        }
    }

    fn view(kind: Kind, leaf: u32, subleaf: u32) -> CpuidResult {
        guest_view(kind, &NONE, leaf, subleaf, &all_ones)
    }

    /// (leaf, subleaf, register, bit, shown to dom0, shown to a domU).
    const TABLE: &[(u32, u32, char, u32, bool, bool)] = &[
        (1, 0, 'c', 5, false, false),            // VMX
        (1, 0, 'c', 6, false, false),            // SMX
        (1, 0, 'c', 3, false, false),            // MONITOR
        (1, 0, 'c', 7, false, false),            // EIST
        (1, 0, 'c', 15, false, false),           // PDCM
        (1, 0, 'c', 21, true, true),             // x2APIC: every domain has a virtual LAPIC
        (1, 0, 'c', 24, true, true),             // TSC deadline
        (1, 0, 'c', 31, true, true),             // hypervisor
        (1, 0, 'c', 26, true, true),             // XSAVE
        (1, 0, 'c', 27, false, false),           // OSXSAVE: the guest's CR4 (here clear)
        (1, 0, 'd', 9, true, true),              // APIC
        (1, 0, 'd', 12, false, false),           // MTRR
        (1, 0, 'd', 7, false, false),            // MCE
        (1, 0, 'd', 21, false, false),           // DS
        (1, 0, 'd', 29, false, false),           // TM
        (1, 0, 'd', 25, true, true),             // SSE
        (6, 0, 'a', 2, true, true),              // ARAT
        (6, 0, 'a', 7, false, false),            // HWP
        (6, 0, 'c', 3, false, false),            // EPB
        (7, 0, 'b', 1, false, false),            // TSC_ADJUST
        (7, 0, 'b', 2, false, false),            // SGX
        (7, 0, 'b', 14, false, false),           // MPX
        (7, 0, 'b', 25, false, false),           // PT
        (7, 0, 'b', 16, true, true),             // AVX512F
        (7, 0, 'c', 3, true, true),              // PKU
        (7, 0, 'c', 4, false, false),            // OSPKE: the guest's CR4 (here clear)
        (7, 0, 'c', 5, false, false),            // WAITPKG
        (7, 0, 'c', 7, false, false),            // CET_SS
        (7, 0, 'd', 20, false, false),           // CET_IBT
        (7, 0, 'd', 24, false, false),           // AMX_TILE
        (7, 0, 'd', 26, true, true),             // IBRS/IBPB
        (7, 0, 'd', 27, true, true),             // STIBP
        (7, 0, 'd', 28, true, true),             // L1D_FLUSH
        (7, 0, 'd', 29, true, true),             // ARCH_CAPABILITIES
        (7, 0, 'd', 30, false, false),           // CORE_CAPABILITIES
        (7, 0, 'd', 31, true, true),             // SSBD
        (7, 0, 'd', 13, false, false),           // TSX_FORCE_ABORT
        (7, 0, 'd', 9, false, false),            // SRBDS_CTRL
        (7, 1, 'a', 22, false, false),           // HRESET
        (7, 2, 'd', 0, true, true),              // PSFD
        (0xd, 1, 'a', 3, false, false),          // XSAVES
        (0xd, 1, 'a', 4, false, false),          // XFD
        (0xd, 1, 'a', 0, true, true),            // XSAVEOPT
        (0xd, 1, 'a', 1, false, false),          // XSAVEC
        (0xd, 0, 'a', 3, false, false),          // MPX state
        (0xd, 0, 'a', 17, false, false),         // AMX state
        (0xd, 0, 'a', 9, true, true),            // PKRU state
        (0x8000_0001, 0, 'c', 2, false, false),  // SVM
        (0x8000_0001, 0, 'c', 10, false, false), // IBS
        (0x8000_0001, 0, 'c', 29, false, false), // MONITORX
        (0x8000_0001, 0, 'c', 22, true, true),   // TOPOEXT
        (0x8000_0001, 0, 'd', 27, true, true),   // RDTSCP
        (0x8000_0007, 0, 'd', 8, true, true),    // invariant TSC
        (0x8000_0007, 0, 'd', 7, false, false),  // HwPstate
        (0x8000_0008, 0, 'b', 12, true, true),   // AMD IBPB
        (0x8000_0008, 0, 'b', 25, true, true),   // VIRT_SSBD
        (0x8000_0008, 0, 'b', 4, false, false),  // RDPRU
        (0x8000_0021, 0, 'a', 8, false, false),  // automatic IBRS
        (0x8000_0021, 0, 'a', 27, true, true),   // SBPB
    ];

    fn reg(r: CpuidResult, c: char) -> u32 {
        match c {
            'a' => r.eax,
            'b' => r.ebx,
            'c' => r.ecx,
            _ => r.edx,
        }
    }

    #[test]
    fn hidden_features_are_cleared_and_nothing_else() {
        let ones = CpuidResult { eax: !0, ebx: !0, ecx: !0, edx: !0 };
        assert_eq!(without_hidden(7, 0, ones, 0), ones);
        let r = without_hidden(7, 0, ones, 0b11);
        assert_eq!(r, CpuidResult { ebx: !bit(9), edx: !bit(4), ..ones });
        assert_eq!(without_hidden(7, 0, ones, 0b01), CpuidResult { ebx: !bit(9), ..ones });
        // Other leaves and subleaves keep their bits.
        assert_eq!(without_hidden(7, 1, ones, 0b11), ones);
        assert_eq!(without_hidden(1, 0, ones, 0b11), ones);
        let names: Vec<&str> = HIDEABLE.iter().map(|h| h.0).collect();
        assert_eq!(names, ["erms", "fsrm"]);
        // Hiding ERMS hides FSRM (Linux's memmove trusts that FSRM implies
        // ERMS); FSRM alone may go.
        assert_eq!(with_dependents(0b01), 0b11);
        assert_eq!(with_dependents(0b10), 0b10);
        assert_eq!(with_dependents(0), 0);
        assert!(IMPLIES.iter().all(|(a, b)| HIDEABLE.iter().any(|h| h.0 == *a) && HIDEABLE.iter().any(|h| h.0 == *b)));
        assert!(HIDEABLE.len() <= 32 && HIDEABLE.iter().all(|h| h.3 < 4 && h.4 < 32));
    }

    #[test]
    fn policy_table() {
        for &(leaf, sub, r, b, dom0, domu) in TABLE {
            for (kind, want) in [(Kind::Dom0, dom0), (DOMU, domu)] {
                let got = reg(view(kind, leaf, sub), r) & (1 << b) != 0;
                assert_eq!(got, want, "leaf {leaf:#x}.{sub} e{r}x bit {b} for {kind:?}");
            }
        }
    }

    #[test]
    fn zeroed_leaves() {
        for leaf in [5, 9, 0xa, 0xf, 0x10, 0x12, 0x14, 0x19, 0x1b, 0x1d, 0x1e, 0x8000_000a, 0x8000_001f, 0x8000_0022] {
            assert_eq!(view(Kind::Dom0, leaf, 0), CpuidResult::default(), "leaf {leaf:#x}");
        }
        assert_eq!(view(Kind::Dom0, 0xd, 17), CpuidResult::default(), "hidden AMX component");
        assert_ne!(view(Kind::Dom0, 0xd, 9), CpuidResult::default(), "PKRU component");
    }

    #[test]
    fn guest_state_mirrors() {
        let s = GuestState { osxsave: true, pke: true, xcr0: 0x7 };
        assert_ne!(guest_view(DOMU, &s, 1, 0, &all_ones).ecx & l1c::OSXSAVE, 0);
        assert_ne!(guest_view(DOMU, &s, 7, 0, &all_ones).ecx & l7::C_OSPKE, 0);
        // XCR0 = x87|SSE|AVX: AVX (component 2) ends at 576 + 64.
        assert_eq!(guest_view(DOMU, &s, 0xd, 0, &all_ones).ebx, 640);
        let s = GuestState { xcr0: 0x207, ..s };
        assert_eq!(guest_view(DOMU, &s, 0xd, 0, &all_ones).ebx, 576 + 64 * 7 + 64);
        // Hidden components do not count, even if set.
        let s = GuestState { xcr0: 0x3, ..s };
        assert_eq!(guest_view(DOMU, &s, 0xd, 0, &all_ones).ebx, 576);
        // All allowed: the last allowed component (PKRU, 9; 10-16 hidden) ends the area.
        assert_eq!(view(DOMU, 0xd, 0).ecx, 576 + 64 * 7 + 64);
        assert_eq!(guest_xcr0_mask(&all_ones), 0x7_ffff & !XSTATE_HIDDEN);
        // Without XSAVE in the host there is no XCR0 to read.
        let no_xsave = |l: u32, s: u32| CpuidResult { ecx: 0, ..all_ones(l, s) };
        assert_eq!(current_xcr0(&no_xsave), 0);
        // XSAVEC size: components 2, 5-7 and 9 (3-4 hidden), 64 bytes each, none aligned.
        let s = GuestState { xcr0: 0x2ff, ..s };
        assert_eq!(guest_view(DOMU, &s, 0xd, 1, &all_ones).ebx, 576 + 5 * 64);
        // A component with an empty subleaf is not offered; PKU goes with PKRU.
        let no_pkru = |l: u32, s: u32| if (l, s) == (0xd, 9) { CpuidResult::default() } else { all_ones(l, s) };
        assert_eq!(guest_xcr0_mask(&no_pkru) & PKRU, 0);
        assert_eq!(guest_view(DOMU, &GuestState { pke: true, ..NONE }, 7, 0, &no_pkru).ecx & (l7::C_PKU | l7::C_OSPKE), 0);
        assert_eq!(guest_view(DOMU, &NONE, 0xd, 9, &no_pkru), CpuidResult::default());
        // PKU absent: no OSPKE whatever CR4 says.
        let no_pku = |l: u32, s: u32| {
            if l == 7 {
                CpuidResult { ecx: 0, ..all_ones(l, s) }
            } else {
                all_ones(l, s)
            }
        };
        assert_eq!(guest_view(DOMU, &GuestState { pke: true, ..NONE }, 7, 0, &no_pku).ecx & l7::C_OSPKE, 0);
    }

    #[test]
    fn domu_sees_virtual_apic_ids() {
        for (vcpu, vcpus) in [(0, 1), (3, 4), (5, 6)] {
            let k = Kind::DomU { vcpu, vcpus };
            let l1 = view(k, 1, 0);
            assert_eq!((l1.ebx >> 24, (l1.ebx >> 16) & 0xff, l1.ebx & 0xffff), (vcpu, vcpus, 0xffff));
            for leaf in [0xb, 0x1f] {
                let smt = view(k, leaf, 0);
                let core = view(k, leaf, 1);
                let end = view(k, leaf, 2);
                assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 1 << 8, vcpu));
                assert_eq!((core.ebx, core.ecx >> 8 & 0xff, core.edx), (vcpus, 2, vcpu));
                assert!(1 << core.eax >= vcpus);
                assert_eq!((end.eax, end.ebx, end.ecx >> 8 & 0xff, end.edx), (0, 0, 0, vcpu));
            }
            assert_eq!(view(k, 0x8000_001e, 0).eax, vcpu);
            assert_eq!(view(k, 0x8000_0008, 0).ecx & 0xff, vcpus - 1);
        }
        // dom0 keeps the host's.
        assert_eq!(view(Kind::Dom0, 1, 0).ebx, !0);
        assert_eq!(view(Kind::Dom0, 0xb, 0), all_ones(0xb, 0));
        assert_eq!(view(Kind::Dom0, 0x8000_001e, 0), all_ones(0x8000_001e, 0));
        // Beyond the host's maximum leaf nothing is made up.
        let low = |l: u32, s: u32| {
            if l == 0 {
                CpuidResult { eax: 0xa, ..Default::default() }
            } else {
                all_ones(l, s)
            }
        };
        assert_eq!(guest_view(DOMU, &NONE, 0xb, 0, &low), all_ones(0xb, 0));
    }

    #[test]
    fn hypervisor_leaves() {
        let sig = view(DOMU, 0x4000_0000, 0);
        assert_eq!(sig.eax, 0x4000_0001);
        let mut s = [0u8; 12];
        s[0..4].copy_from_slice(&sig.ebx.to_le_bytes());
        s[4..8].copy_from_slice(&sig.ecx.to_le_bytes());
        s[8..12].copy_from_slice(&sig.edx.to_le_bytes());
        assert_eq!(&s, b"OxenOxenOxen");
        assert_eq!(view(DOMU, 0x4000_0001, 0).eax, ABI_VERSION);
        assert_eq!(view(DOMU, 0x4000_0042, 0), CpuidResult::default());
        assert_eq!(view(DOMU, 0x4000_0102, 0), CpuidResult::default());
        assert_eq!(view(DOMU, 0x4000_0200, 0), CpuidResult::default(), "no third signature");
    }

    fn signature(r: CpuidResult) -> [u8; 12] {
        let mut s = [0u8; 12];
        s[0..4].copy_from_slice(&r.ebx.to_le_bytes());
        s[4..8].copy_from_slice(&r.ecx.to_le_bytes());
        s[8..12].copy_from_slice(&r.edx.to_le_bytes());
        s
    }

    /// Linux's `hypervisor_cpuid_base(sig, leaves)` (arch/x86/include/asm/cpuid.h):
    /// every 0x100 leaves from 0x40000000 below 0x40010000, the first block whose
    /// signature matches and (if `leaves` > 0) whose EAX - base >= `leaves`.
    fn linux_cpuid_base(kind: Kind, sig: &[u8; 12], leaves: u32) -> Option<u32> {
        (0x4000_0000u32..0x4001_0000).step_by(0x100).find(|&base| {
            let r = view(kind, base, 0);
            &signature(r) == sig && (leaves == 0 || r.eax.wrapping_sub(base) >= leaves)
        })
    }

    #[test]
    fn a_domu_finds_kvm_with_the_clock_only() {
        for kind in [DOMU, Kind::DomU { vcpu: 3, vcpus: 4 }] {
            // kvm_cpuid_base() needs X86_FEATURE_HYPERVISOR, then scans.
            assert_ne!(view(kind, 1, 0).ecx & l1c::HYPERVISOR, 0);
            assert_eq!(linux_cpuid_base(kind, b"KVMKVMKVM\0\0\0", 0), Some(KVM_SIGNATURE_LEAF));
            // Oxen's block is still the first and still says what it did.
            assert_eq!(linux_cpuid_base(kind, b"OxenOxenOxen", 1), Some(0x4000_0000));
            assert_eq!(view(kind, 0x4000_0000, 0).eax, CPUID_MAX_LEAF);
            // No other hypervisor Linux knows (Xen asks for 2 leaves; VMware and
            // Hyper-V look at 0x40000000 only).
            assert_eq!(linux_cpuid_base(kind, b"XenVMMXenVMM", 2), None);
            // kvm_arch_para_features() = EAX of base | 1; hints = its EDX.
            let f = view(kind, KVM_SIGNATURE_LEAF | 1, 0);
            assert_eq!(f.eax, (1 << 3) | (1 << 24), "CLOCKSOURCE2 and CLOCKSOURCE_STABLE_BIT");
            assert_eq!(f.edx, 0, "no hints");
            assert_eq!((f.ebx, f.ecx), (0, 0));
            assert_eq!(view(kind, KVM_SIGNATURE_LEAF, 0).eax, KVM_FEATURES_LEAF);
        }
        // dom0 keeps today's view: Oxen's leaves only.
        assert_eq!(linux_cpuid_base(Kind::Dom0, b"KVMKVMKVM\0\0\0", 0), None);
        assert_eq!(view(Kind::Dom0, KVM_SIGNATURE_LEAF, 0), CpuidResult::default());
        assert_eq!(view(Kind::Dom0, KVM_FEATURES_LEAF, 0), CpuidResult::default());
        assert_eq!(linux_cpuid_base(Kind::Dom0, b"OxenOxenOxen", 1), Some(0x4000_0000));
    }

    #[test]
    fn other_leaves_pass_through() {
        assert_eq!(view(DOMU, 0, 0), all_ones(0, 0));
        assert_eq!(view(DOMU, 2, 0), all_ones(2, 0));
        assert_eq!(view(DOMU, 0x8000_0002, 0), all_ones(0x8000_0002, 0));
    }
}
