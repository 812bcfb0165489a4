//! MSR exits. Every MSR the backend does not switch in hardware is intercepted.
//! An access is served, in order, by:
//! 1. the backend's guest state (EFER, PAT, segment bases, syscall MSRs —
//!    `Vcpu::guest_msr`), with EFER.SVME and friends never visible or writable;
//! 2. the guest's devices (`GuestEnv::msr_read` / `msr_write`: the local APIC);
//! 3. the table below: a small, fixed virtual CPU model;
//!
//! and anything else raises #GP in the guest, as on a CPU without that MSR. That
//! keeps every MSR that could subvert the host (VMX/SVM control MSRs, VM_HSAVE_PA,
//! APIC base relocation, …) out of reach.

use super::{GuestEnv, Outcome};
use crate::virt::Vcpu;

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
        _ => return None,
    })
}

pub fn read(vcpu: &mut impl Vcpu, msr: u32, env: &mut dyn GuestEnv) -> Outcome {
    let value = vcpu.guest_msr(msr).or_else(|| env.msr_read(msr)).or_else(|| match model(msr)? {
        Model::Tsc => Some(read_tsc()),
        Model::Fixed(v) => Some(v),
        Model::Ignored => Some(0),
    });
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
        || matches!(model(msr), Some(Model::Ignored | Model::Fixed(_)));
    if ok {
        vcpu.skip_instruction();
    } else {
        log::debug!("guest wrmsr {msr:#x} <- {value:#x}: #GP");
        vcpu.inject_exception(GP, Some(0));
    }
    Outcome::Continue
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
