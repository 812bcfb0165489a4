//! MSR exits. Every MSR the backend does not switch in hardware is intercepted.
//! An access is served, in order, by:
//! 1. the backend's guest state (EFER, PAT, segment bases, syscall MSRs —
//!    `Vcpu::guest_msr`), with EFER.SVME and friends never visible or writable;
//! 2. the guest's devices (`GuestEnv::msr_read` / `msr_write`: the local APIC);
//! 3. the speculation controls (`spec`), present exactly when the guest's
//!    CPUID (`exit::cpuid::guest_view`) shows the feature that implies them;
//! 4. the table below: a small, fixed virtual CPU model;
//!
//! and anything else raises #GP in the guest, as on a CPU without that MSR. That
//! keeps every MSR that could subvert the host (VMX/SVM control MSRs, VM_HSAVE_PA,
//! APIC base relocation, …) out of reach.
//!
//! Speculation controls (Intel's "Speculative Execution Side Channel
//! Mitigations", AMD's "Software Techniques for Managing Speculation"):
//! - IA32_SPEC_CTRL (0x48) and AMD's VIRT_SPEC_CTRL (0xC001011F) are kept per
//!   vCPU (`VcpuMsrs`); reserved bits (those CPUID does not show) give #GP.
//!   `load_for_guest`, called before every guest entry, puts the vCPU's value
//!   in the physical MSR when it differs from what the CPU holds. Between
//!   guests the hypervisor keeps the last guest's value: every bit a guest can
//!   set only restricts speculation, so the hypervisor is never weakened by it.
//! - IA32_PRED_CMD (0x49, IBPB/SBPB) and IA32_FLUSH_CMD (0x10B, L1D flush) are
//!   write-only commands: a valid value is executed on the real MSR (it acts on
//!   this CPU's predictors/L1D, which is what the guest asked); reads give #GP.
//!   `load_for_guest` also issues IBPB when a CPU switches to another domain.
//! - IA32_ARCH_CAPABILITIES (0x10A) is read-only: the host's value, less the
//!   bits that announce MSRs the virtual CPU does not have (TSX_CTRL,
//!   MCU_CONTROL, DOITM, FB_CLEAR_CTRL, GDS_CTRL, …, see `ARCH_CAPS_SHOWN`).

use super::cpuid::{self, CpuidResult, GuestState};
use super::{GuestEnv, Outcome};
use crate::virt::Vcpu;
#[cfg(any(test, target_os = "none"))]
use core::sync::atomic::{AtomicU64, Ordering};

const GP: u8 = 13;

/// What the virtual CPU model answers for an MSR outside the backend and devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// The host TSC.
    Tsc,
    /// A fixed value; writes are ignored.
    Fixed(u64),
    /// Reads 0; writes are accepted and ignored (write-only or no-op controls).
    Ignored,
}

pub mod nr {
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_PLATFORM_ID: u32 = 0x17;
    pub const IA32_BIOS_SIGN_ID: u32 = 0x8b;
    pub const IA32_MTRRCAP: u32 = 0xfe;
    pub const IA32_MCG_CAP: u32 = 0x179;
    pub const IA32_MCG_STATUS: u32 = 0x17a;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const IA32_MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const IA32_TSC_AUX: u32 = 0xc000_0103;
    pub const AMD_PATCH_LEVEL: u32 = 0x8b;
    pub const IA32_SPEC_CTRL: u32 = 0x48;
    pub const IA32_PRED_CMD: u32 = 0x49;
    pub const IA32_ARCH_CAPABILITIES: u32 = 0x10a;
    pub const IA32_FLUSH_CMD: u32 = 0x10b;
    pub const AMD_VIRT_SPEC_CTRL: u32 = 0xc001_011f;
    pub const AMD_HWCR: u32 = 0xc001_0015;
    pub const AMD_INT_PENDING_MSG: u32 = 0xc001_0055;
    pub const AMD_NB_CFG: u32 = 0xc001_001f;
}

/// A vCPU's own values of the MSRs the hypervisor virtualizes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuMsrs {
    pub spec_ctrl: u64,
    pub virt_spec_ctrl: u64,
}

/// IA32_SPEC_CTRL bits (SDM Vol. 4 Table 2-2; AMD's PSFD white paper).
mod spec_ctrl {
    pub const IBRS: u64 = 1 << 0;
    pub const STIBP: u64 = 1 << 1;
    pub const SSBD: u64 = 1 << 2;
    pub const IPRED_DIS: u64 = (1 << 3) | (1 << 4);
    pub const RRSBA_DIS: u64 = (1 << 5) | (1 << 6);
    pub const PSFD: u64 = 1 << 7;
    pub const BHI_DIS_S: u64 = 1 << 10;
}
const PRED_CMD_IBPB: u64 = 1 << 0;
const PRED_CMD_SBPB: u64 = 1 << 7;
const FLUSH_CMD_L1D: u64 = 1 << 0;
/// AMD VIRT_SPEC_CTRL.SSBD (AMD's "Speculative Store Bypass Disable" paper).
const VIRT_SSBD: u64 = 1 << 2;

/// IA32_ARCH_CAPABILITIES bits passed on (SDM Vol. 4 Table 2-2): the "not
/// affected" and information bits — RDCL_NO 0, IBRS_ALL 1, RSBA 2, SSB_NO 4,
/// MDS_NO 5, IF_PSCHANGE_MC_NO 6, TAA_NO 8, SBDR_SSDP_NO 13, FBSDP_NO 14,
/// PSDP_NO 15, FB_CLEAR 17, RRSBA 19, BHI_NO 20, PBRSB_NO 24, GDS_NO 26,
/// RFDS_NO 27, RFDS_CLEAR 28. Not the ones announcing control MSRs the
/// virtual CPU lacks (TSX_CTRL 7, MCU_CONTROL 9, MISC_PACKAGE_CTLS 10,
/// ENERGY_FILTERING_CTL 11, DOITM 12, FB_CLEAR_CTRL 18, XAPIC_DISABLE_STATUS
/// 21, OVERCLOCKING_STATUS 23, GDS_CTRL 25) nor SKIP_L1DFL_VMENTRY 3 (for a
/// hypervisor inside the guest, which it cannot have).
pub const ARCH_CAPS_SHOWN: u64 = (1 << 0)
    | (1 << 1)
    | (1 << 2)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 8)
    | (1 << 13)
    | (1 << 14)
    | (1 << 15)
    | (1 << 17)
    | (1 << 19)
    | (1 << 20)
    | (1 << 24)
    | (1 << 26)
    | (1 << 27)
    | (1 << 28);

/// The speculation-control features a guest is shown, from its CPUID.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spec {
    /// Valid IA32_SPEC_CTRL bits (0: the MSR does not exist).
    pub spec_ctrl: u64,
    /// Valid IA32_PRED_CMD bits (0: no such MSR).
    pub pred_cmd: u64,
    pub l1d_flush: bool,
    pub arch_caps: bool,
    pub virt_ssbd: bool,
}

impl Spec {
    /// What `view` (a guest's CPUID) shows.
    pub fn from_cpuid(view: &dyn Fn(u32, u32) -> CpuidResult) -> Self {
        let has = |r: u32, b: u32| r & (1 << b) != 0;
        let (max_basic, max_ext) = (view(0, 0).eax, view(0x8000_0000, 0).eax);
        let mut s = Spec::default();
        let mut set = |on: bool, bits: u64| {
            if on {
                s.spec_ctrl |= bits;
            }
        };
        if max_basic >= 7 {
            let l7 = view(7, 0);
            let d = l7.edx;
            set(has(d, 26), spec_ctrl::IBRS);
            set(has(d, 27), spec_ctrl::STIBP);
            set(has(d, 31), spec_ctrl::SSBD);
            if l7.eax >= 2 {
                let d2 = view(7, 2).edx;
                set(has(d2, 0), spec_ctrl::PSFD);
                set(has(d2, 1), spec_ctrl::IPRED_DIS);
                set(has(d2, 2), spec_ctrl::RRSBA_DIS);
                set(has(d2, 4), spec_ctrl::BHI_DIS_S);
            }
            if has(d, 26) {
                s.pred_cmd |= PRED_CMD_IBPB;
            }
            s.l1d_flush = has(d, 28);
            s.arch_caps = has(d, 29);
        }
        if max_ext >= 0x8000_0008 {
            let b = view(0x8000_0008, 0).ebx;
            let mut set = |on: bool, bits: u64| {
                if on {
                    s.spec_ctrl |= bits;
                }
            };
            set(has(b, 14), spec_ctrl::IBRS);
            set(has(b, 15), spec_ctrl::STIBP);
            set(has(b, 24), spec_ctrl::SSBD);
            set(has(b, 28), spec_ctrl::PSFD);
            if has(b, 12) {
                s.pred_cmd |= PRED_CMD_IBPB;
            }
            s.virt_ssbd = has(b, 25);
        }
        if max_ext >= 0x8000_0021 && has(view(0x8000_0021, 0).eax, 27) {
            s.pred_cmd |= PRED_CMD_SBPB;
        }
        s
    }

    /// What the guest behind `env` is shown.
    pub fn of(env: &dyn GuestEnv) -> Self {
        let kind = env.cpuid_kind();
        let host = |l: u32, s: u32| env.host_cpuid(l, s);
        Self::from_cpuid(&|l, s| cpuid::guest_view(kind, &GuestState::default(), l, s, &host))
    }
}

/// Whether `msr` is one of the speculation controls (`spec_read`/`spec_write`).
pub fn is_spec(msr: u32) -> bool {
    use nr::*;
    matches!(msr, IA32_SPEC_CTRL | IA32_PRED_CMD | IA32_ARCH_CAPABILITIES | IA32_FLUSH_CMD | AMD_VIRT_SPEC_CTRL)
}

/// What a speculation-control MSR access does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecAccess {
    /// Not a speculation-control MSR.
    NotOurs,
    /// #GP: the MSR is not shown, is read-only/write-only, or a reserved bit was set.
    Fault,
    /// A read answered with this value, or a write stored.
    Done(u64),
    /// A command to execute: write `value` to the real `msr` (validated).
    Execute { msr: u32, value: u64 },
}

/// Reads a speculation-control MSR. `host_arch_caps` is the host's
/// IA32_ARCH_CAPABILITIES (only asked when the guest is shown it).
pub fn spec_read(spec: &Spec, msrs: Option<&VcpuMsrs>, msr: u32, host_arch_caps: impl FnOnce() -> u64) -> SpecAccess {
    use nr::*;
    match msr {
        IA32_SPEC_CTRL if spec.spec_ctrl != 0 => msrs.map_or(SpecAccess::Fault, |m| SpecAccess::Done(m.spec_ctrl)),
        AMD_VIRT_SPEC_CTRL if spec.virt_ssbd => msrs.map_or(SpecAccess::Fault, |m| SpecAccess::Done(m.virt_spec_ctrl)),
        IA32_ARCH_CAPABILITIES if spec.arch_caps => SpecAccess::Done(host_arch_caps() & ARCH_CAPS_SHOWN),
        IA32_SPEC_CTRL | AMD_VIRT_SPEC_CTRL | IA32_ARCH_CAPABILITIES | IA32_PRED_CMD | IA32_FLUSH_CMD => {
            SpecAccess::Fault
        }
        _ => SpecAccess::NotOurs,
    }
}

/// Writes a speculation-control MSR: stores per-vCPU values in `msrs`.
pub fn spec_write(spec: &Spec, msrs: Option<&mut VcpuMsrs>, msr: u32, value: u64) -> SpecAccess {
    use nr::*;
    let valid = |mask: u64| mask != 0 && value & !mask == 0;
    match msr {
        IA32_SPEC_CTRL if valid(spec.spec_ctrl) => match msrs {
            Some(m) => {
                m.spec_ctrl = value;
                SpecAccess::Done(value)
            }
            None => SpecAccess::Fault,
        },
        AMD_VIRT_SPEC_CTRL if spec.virt_ssbd && value & !VIRT_SSBD == 0 => match msrs {
            Some(m) => {
                m.virt_spec_ctrl = value;
                SpecAccess::Done(value)
            }
            None => SpecAccess::Fault,
        },
        // Writing 0 is a valid no-op command.
        IA32_PRED_CMD if spec.pred_cmd != 0 && value & !spec.pred_cmd == 0 => {
            if value == 0 {
                SpecAccess::Done(0)
            } else {
                SpecAccess::Execute { msr, value }
            }
        }
        IA32_FLUSH_CMD if spec.l1d_flush && value & !FLUSH_CMD_L1D == 0 => {
            if value == 0 {
                SpecAccess::Done(0)
            } else {
                SpecAccess::Execute { msr, value }
            }
        }
        IA32_SPEC_CTRL | AMD_VIRT_SPEC_CTRL | IA32_ARCH_CAPABILITIES | IA32_PRED_CMD | IA32_FLUSH_CMD => {
            SpecAccess::Fault
        }
        _ => SpecAccess::NotOurs,
    }
}

/// What each CPU's speculation MSRs hold now, and the domain it last ran
/// (`u64::MAX`: none yet). Firmware leaves SPEC_CTRL and VIRT_SPEC_CTRL at 0.
#[cfg(any(test, target_os = "none"))]
struct CpuSpecState {
    spec_ctrl: AtomicU64,
    virt_spec_ctrl: AtomicU64,
    domain: AtomicU64,
}
#[cfg(target_os = "none")]
#[allow(clippy::declare_interior_mutable_const)]
const CPU_SPEC_INIT: CpuSpecState =
    CpuSpecState { spec_ctrl: AtomicU64::new(0), virt_spec_ctrl: AtomicU64::new(0), domain: AtomicU64::new(u64::MAX) };
#[cfg(target_os = "none")]
static CPU_SPEC: [CpuSpecState; crate::platform::MAX_CPUS] = [CPU_SPEC_INIT; crate::platform::MAX_CPUS];

/// What `load_for_guest` must do on this CPU before entering a vCPU of
/// `domain` with `msrs`: the SPEC_CTRL and VIRT_SPEC_CTRL values to write
/// (if they differ from what the CPU holds) and whether to issue IBPB (the
/// CPU last ran another domain and has IBPB). Updates `cpu`'s record.
#[cfg(any(test, target_os = "none"))]
fn plan(cpu: &CpuSpecState, msrs: &VcpuMsrs, domain: u32, host_ibpb: bool) -> (Option<u64>, Option<u64>, bool) {
    let spec = (cpu.spec_ctrl.swap(msrs.spec_ctrl, Ordering::Relaxed) != msrs.spec_ctrl).then_some(msrs.spec_ctrl);
    let virt = (cpu.virt_spec_ctrl.swap(msrs.virt_spec_ctrl, Ordering::Relaxed) != msrs.virt_spec_ctrl)
        .then_some(msrs.virt_spec_ctrl);
    let last = cpu.domain.swap(u64::from(domain), Ordering::Relaxed);
    (spec, virt, host_ibpb && last != u64::MAX && last != u64::from(domain))
}

#[cfg(target_os = "none")]
/// Whether this CPU has IBPB (Intel CPUID.7.0:EDX[26], AMD 8000_0008:EBX[12]).
fn host_has_ibpb() -> bool {
    let host = |l, s| crate::arch::x86_64::cpuid(l, s);
    Spec::from_cpuid(&host).pred_cmd & PRED_CMD_IBPB != 0
}

#[cfg(target_os = "none")]
/// Before entering a vCPU of `domain` on this CPU: its SPEC_CTRL and
/// VIRT_SPEC_CTRL into the real MSRs where they differ from what the CPU
/// holds, and IBPB when the CPU last ran another domain, so one domain's
/// branch-predictor training does not steer another's (Intel's "Indirect
/// Branch Predictor Barrier" guidance). A value other than 0 was validated
/// against the guest's CPUID, which only shows what the host has.
pub fn load_for_guest(msrs: &VcpuMsrs, domain: u32) {
    let cpu = crate::arch::x86_64::cpu_id() as usize;
    let Some(state) = CPU_SPEC.get(cpu) else {
        return;
    };
    let (spec, virt, ibpb) = plan(state, msrs, domain, host_has_ibpb_cached());
    // SAFETY: (all three) each MSR exists — SPEC_CTRL and VIRT_SPEC_CTRL
    // values other than 0 were accepted only with the bits CPUID shows (a
    // subset of the host's), and a 0 after a non-0 means the MSR was written
    // before; IBPB only where the host has it. They change speculation
    // behaviour only, not memory.
    unsafe {
        if let Some(v) = spec {
            crate::arch::x86_64::wrmsr(nr::IA32_SPEC_CTRL, v);
        }
        if let Some(v) = virt {
            crate::arch::x86_64::wrmsr(nr::AMD_VIRT_SPEC_CTRL, v);
        }
        if ibpb {
            crate::arch::x86_64::wrmsr(nr::IA32_PRED_CMD, PRED_CMD_IBPB);
        }
    }
}

#[cfg(target_os = "none")]
/// `host_has_ibpb`, asked once (0: not asked, 1: no, 2: yes).
fn host_has_ibpb_cached() -> bool {
    static HAS: AtomicU64 = AtomicU64::new(0);
    match HAS.load(Ordering::Relaxed) {
        0 => {
            let has = host_has_ibpb();
            HAS.store(if has { 2 } else { 1 }, Ordering::Relaxed);
            has
        }
        v => v == 2,
    }
}

/// The virtual CPU model: no microcode information, no machine-check banks, no
/// MTRRs (CPUID hides them, so guests use PAT alone), fast strings on.
pub fn model(msr: u32) -> Option<Model> {
    use nr::*;
    Some(match msr {
        IA32_TSC => Model::Tsc,
        IA32_PLATFORM_ID => Model::Fixed(0),
        IA32_BIOS_SIGN_ID => Model::Ignored,
        IA32_MTRRCAP => Model::Fixed(0),
        IA32_MTRR_DEF_TYPE => Model::Ignored,
        IA32_MCG_CAP | IA32_MCG_STATUS => Model::Fixed(0),
        // Fast-string enable (bit 0), as firmware leaves it.
        IA32_MISC_ENABLE => Model::Fixed(1),
        IA32_TSC_AUX => Model::Ignored,
        // AMD only (`amd_only`). Linux reads HWCR unchecked on family > 0x10
        // with an invariant TSC: TscFreqSel (bit 24) says the TSC counts at
        // the P0 rate, as on every such CPU.
        AMD_HWCR => Model::Fixed(1 << 24),
        // Linux reads it unchecked on CPUs with erratum 400 (family 0xF/0x10,
        // which QEMU's `max` and `qemu64` claim to be): C1E is never active.
        AMD_INT_PENDING_MSG => Model::Fixed(0),
        // Linux (arch/x86/pci/amd_bus.c) sets EnableCf8ExtCfg (bit 46) on
        // families 0x10-0x17, unchecked. It is a per-node northbridge setting
        // the firmware or dom0's PCI write to the northbridge enables; no
        // guest changes it here.
        AMD_NB_CFG => Model::Ignored,
        _ => return None,
    })
}

pub fn read(vcpu: &mut impl Vcpu, msr: u32, env: &mut dyn GuestEnv) -> Outcome {
    let value = match vcpu.guest_msr(msr).or_else(|| env.msr_read(msr)) {
        Some(v) => Some(v),
        None if is_spec(msr) => {
            let spec = Spec::of(env);
            match spec_read(&spec, env.vcpu_msrs().as_deref(), msr, host_arch_capabilities) {
                SpecAccess::Done(v) => Some(v),
                _ => None,
            }
        }
        None if amd_only(msr) && !is_amd(env) => None,
        None => model_read(msr),
    };
    match value {
        Some(v) => {
            let g = vcpu.gprs();
            g.rax = v & 0xffff_ffff;
            g.rdx = v >> 32;
            vcpu.skip_instruction();
        }
        None => {
            log::debug!("guest rdmsr {msr:#x}: #GP");
            vcpu.inject_exception(GP, Some(0));
        }
    }
    Outcome::Continue
}

pub fn write(vcpu: &mut impl Vcpu, msr: u32, value: u64, env: &mut dyn GuestEnv) -> Outcome {
    let ok = vcpu.set_guest_msr(msr, value)
        || env.msr_write(msr, value)
        || if is_spec(msr) {
            let spec = Spec::of(env);
            match spec_write(&spec, env.vcpu_msrs(), msr, value) {
                SpecAccess::Done(_) => true,
                SpecAccess::Execute { msr, value } => {
                    execute(msr, value);
                    true
                }
                SpecAccess::Fault | SpecAccess::NotOurs => false,
            }
        } else {
            matches!(model(msr), Some(Model::Ignored | Model::Fixed(_))) && (!amd_only(msr) || is_amd(env))
        };
    if ok {
        vcpu.skip_instruction();
    } else {
        log::debug!("guest wrmsr {msr:#x} <- {value:#x}: #GP");
        vcpu.inject_exception(GP, Some(0));
    }
    Outcome::Continue
}

/// MSRs of the model that only AMD CPUs have (#GP elsewhere).
fn amd_only(msr: u32) -> bool {
    (0xc001_0000..=0xc001_ffff).contains(&msr)
}

fn is_amd(env: &dyn GuestEnv) -> bool {
    let v = env.host_cpuid(0, 0);
    (v.ebx, v.edx, v.ecx) == (u32::from_le_bytes(*b"Auth"), u32::from_le_bytes(*b"enti"), u32::from_le_bytes(*b"cAMD"))
        || (v.ebx, v.edx, v.ecx) == (u32::from_le_bytes(*b"Hygo"), u32::from_le_bytes(*b"nGen"), u32::from_le_bytes(*b"uine"))
}

fn model_read(msr: u32) -> Option<u64> {
    match model(msr)? {
        Model::Tsc => Some(read_tsc()),
        Model::Fixed(v) => Some(v),
        Model::Ignored => Some(0),
    }
}

/// Runs a validated IBPB or L1D-flush command on this CPU.
fn execute(msr: u32, value: u64) {
    #[cfg(target_os = "none")]
    // SAFETY: `spec_write` accepted `value` for `msr` only with bits the
    // guest's CPUID shows, which the host has; the commands flush predictor
    // or L1D state and touch no memory the hypervisor relies on.
    unsafe {
        crate::arch::x86_64::wrmsr(msr, value)
    };
    #[cfg(not(target_os = "none"))]
    let _ = (msr, value);
}

/// The host's IA32_ARCH_CAPABILITIES (asked only when the guest, and so the
/// host, has it).
fn host_arch_capabilities() -> u64 {
    #[cfg(target_os = "none")]
    // SAFETY: called only when the guest's CPUID, a subset of the host's,
    // shows ARCH_CAPABILITIES (CPUID.7.0:EDX[29]).
    unsafe {
        crate::arch::x86_64::rdmsr(nr::IA32_ARCH_CAPABILITIES)
    }
    #[cfg(not(target_os = "none"))]
    0
}

fn read_tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: RDTSC has no side effects.
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
    #[cfg(not(target_arch = "x86_64"))]
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::io::tests::{FakeEnv, FakeVcpu};

    #[test]
    fn unknown_msrs_fault() {
        let mut v = FakeVcpu::default();
        assert_eq!(read(&mut v, 0xc001_0117, &mut FakeEnv::default()), Outcome::Continue);
        assert_eq!(v.injected, Some((13, Some(0))));
        assert_eq!(v.skipped, 0);
        let mut v = FakeVcpu::default();
        write(&mut v, 0x3a, 0x5, &mut FakeEnv::default());
        assert_eq!(v.injected, Some((13, Some(0))));
    }

    #[test]
    fn model_values_and_ignored_writes() {
        let mut v = FakeVcpu::default();
        v.gprs.rdx = 0xdead;
        read(&mut v, nr::IA32_MISC_ENABLE, &mut FakeEnv::default());
        assert_eq!((v.gprs.rax, v.gprs.rdx), (1, 0));
        write(&mut v, nr::IA32_MTRR_DEF_TYPE, 0xc06, &mut FakeEnv::default());
        read(&mut v, nr::IA32_TSC, &mut FakeEnv::default());
        assert_eq!(v.skipped, 3);
        assert!(v.injected.is_none());
    }

    /// A guest shown everything (Intel and AMD speculation bits).
    const ALL: Spec = Spec { spec_ctrl: 0x4ff, pred_cmd: 0x81, l1d_flush: true, arch_caps: true, virt_ssbd: true };

    #[test]
    fn spec_features_from_cpuid() {
        let intel = |l: u32, s: u32| match (l, s) {
            (0, _) => CpuidResult { eax: 7, ..Default::default() },
            (7, 0) => CpuidResult { eax: 0, edx: (1 << 26) | (1 << 31) | (1 << 28), ..Default::default() },
            _ => CpuidResult::default(),
        };
        let s = Spec::from_cpuid(&intel);
        assert_eq!((s.spec_ctrl, s.pred_cmd, s.l1d_flush, s.arch_caps, s.virt_ssbd), (0b101, 1, true, false, false));
        let amd = |l: u32, _s: u32| match l {
            0x8000_0000 => CpuidResult { eax: 0x8000_0021, ..Default::default() },
            0x8000_0008 => CpuidResult { ebx: (1 << 12) | (1 << 25), ..Default::default() },
            0x8000_0021 => CpuidResult { eax: 1 << 27, ..Default::default() },
            _ => CpuidResult::default(),
        };
        let s = Spec::from_cpuid(&amd);
        assert_eq!((s.spec_ctrl, s.pred_cmd, s.virt_ssbd), (0, 0x81, true));
        assert_eq!(Spec::from_cpuid(&|_, _| CpuidResult::default()), Spec::default());
    }

    #[test]
    fn spec_msr_table() {
        use nr::*;
        use SpecAccess::*;
        let none = Spec::default();
        let mut m = VcpuMsrs::default();
        // (spec, msr, value, expected write outcome)
        let writes: &[(Spec, u32, u64, SpecAccess)] = &[
            (ALL, IA32_SPEC_CTRL, 0b111, Done(0b111)),
            (ALL, IA32_SPEC_CTRL, 0, Done(0)),
            (ALL, IA32_SPEC_CTRL, 1 << 8, Fault),
            (Spec { spec_ctrl: 1, ..ALL }, IA32_SPEC_CTRL, 0b10, Fault),
            (none, IA32_SPEC_CTRL, 0, Fault),
            (ALL, IA32_PRED_CMD, 1, Execute { msr: IA32_PRED_CMD, value: 1 }),
            (ALL, IA32_PRED_CMD, 0x80, Execute { msr: IA32_PRED_CMD, value: 0x80 }),
            (ALL, IA32_PRED_CMD, 0, Done(0)),
            (ALL, IA32_PRED_CMD, 2, Fault),
            (none, IA32_PRED_CMD, 1, Fault),
            (ALL, IA32_FLUSH_CMD, 1, Execute { msr: IA32_FLUSH_CMD, value: 1 }),
            (ALL, IA32_FLUSH_CMD, 3, Fault),
            (none, IA32_FLUSH_CMD, 1, Fault),
            (ALL, IA32_ARCH_CAPABILITIES, 0, Fault),
            (ALL, AMD_VIRT_SPEC_CTRL, 4, Done(4)),
            (ALL, AMD_VIRT_SPEC_CTRL, 1, Fault),
            (none, AMD_VIRT_SPEC_CTRL, 0, Fault),
            (ALL, 0x122, 0, NotOurs),
        ];
        for &(spec, msr, value, want) in writes {
            assert_eq!(spec_write(&spec, Some(&mut m), msr, value), want, "wrmsr {msr:#x} <- {value:#x} with {spec:?}");
        }
        assert_eq!(m, VcpuMsrs { spec_ctrl: 0, virt_spec_ctrl: 4 });
        assert_eq!(spec_write(&ALL, None, IA32_SPEC_CTRL, 1), Fault, "nowhere to keep it");
        m.spec_ctrl = 5;
        let reads: &[(Spec, u32, SpecAccess)] = &[
            (ALL, IA32_SPEC_CTRL, Done(5)),
            (none, IA32_SPEC_CTRL, Fault),
            (ALL, IA32_PRED_CMD, Fault),
            (ALL, IA32_FLUSH_CMD, Fault),
            (ALL, IA32_ARCH_CAPABILITIES, Done(ARCH_CAPS_SHOWN & 0x1234_5678)),
            (none, IA32_ARCH_CAPABILITIES, Fault),
            (ALL, AMD_VIRT_SPEC_CTRL, Done(4)),
            (ALL, 0x10, NotOurs),
        ];
        for &(spec, msr, want) in reads {
            assert_eq!(spec_read(&spec, Some(&m), msr, || 0x1234_5678), want, "rdmsr {msr:#x} with {spec:?}");
        }
        // TSX_CTRL (7) and the control-MSR bits never reach the guest.
        assert_eq!(ARCH_CAPS_SHOWN & ((1 << 7) | (1 << 9) | (1 << 12) | (1 << 18) | (1 << 25)), 0);
    }

    #[test]
    fn load_plan_switches_lazily_and_ibpbs_between_domains() {
        let cpu = CpuSpecState {
            spec_ctrl: AtomicU64::new(0),
            virt_spec_ctrl: AtomicU64::new(0),
            domain: AtomicU64::new(u64::MAX),
        };
        let a = VcpuMsrs { spec_ctrl: 1, virt_spec_ctrl: 0 };
        assert_eq!(plan(&cpu, &a, 0, true), (Some(1), None, false), "first guest on this CPU: no IBPB");
        assert_eq!(plan(&cpu, &a, 0, true), (None, None, false), "same values, same domain: nothing");
        let b = VcpuMsrs::default();
        assert_eq!(plan(&cpu, &b, 3, true), (Some(0), None, true), "another domain");
        assert_eq!(plan(&cpu, &b, 0, false), (None, None, false), "no IBPB on this host");
    }

    #[test]
    fn spec_msrs_through_the_handlers() {
        // FakeEnv's CPUID shows nothing: every speculation MSR is #GP.
        for msr in [nr::IA32_SPEC_CTRL, nr::IA32_PRED_CMD, nr::IA32_FLUSH_CMD, nr::IA32_ARCH_CAPABILITIES] {
            let mut v = FakeVcpu::default();
            write(&mut v, msr, 1, &mut FakeEnv::default());
            assert_eq!(v.injected, Some((13, Some(0))), "wrmsr {msr:#x}");
            let mut v = FakeVcpu::default();
            read(&mut v, msr, &mut FakeEnv::default());
            assert_eq!(v.injected, Some((13, Some(0))), "rdmsr {msr:#x}");
        }
    }

    #[test]
    fn amd_model_msrs_only_on_amd() {
        struct Amd(FakeEnv);
        impl GuestEnv for Amd {
            fn ports(&mut self) -> &mut dyn crate::exit::io::PortBus {
                self.0.ports()
            }
            fn host_cpuid(&self, _leaf: u32, _subleaf: u32) -> CpuidResult {
                let r = |s: &[u8; 4]| u32::from_le_bytes(*s);
                CpuidResult { eax: 0, ebx: r(b"Auth"), edx: r(b"enti"), ecx: r(b"cAMD") }
            }
        }
        let mut v = FakeVcpu::default();
        read(&mut v, nr::AMD_HWCR, &mut Amd(FakeEnv::default()));
        assert_eq!((v.gprs.rax, v.gprs.rdx, v.injected), (1 << 24, 0, None));
        let mut v = FakeVcpu::default();
        read(&mut v, nr::AMD_INT_PENDING_MSG, &mut FakeEnv::default());
        assert_eq!(v.injected, Some((13, Some(0))), "not on Intel");
    }

    #[test]
    fn backend_state_and_devices_come_first() {
        let mut v = FakeVcpu { msr: Some((0xc000_0080, 0x500)), ..Default::default() };
        read(&mut v, 0xc000_0080, &mut FakeEnv::default());
        assert_eq!(v.gprs.rax, 0x500);
        let mut env = FakeEnv { msr: Some((0x1b, 0xfee0_0900)), ..Default::default() };
        read(&mut v, 0x1b, &mut env);
        assert_eq!(v.gprs.rax, 0xfee0_0900);
        assert!(v.injected.is_none());
    }
}
