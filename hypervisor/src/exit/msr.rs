//! MSR exits. Every MSR access is intercepted; the guest may touch only the MSRs
//! listed here, and anything else gets #GP as on a CPU without that MSR. That keeps
//! a guest away from everything that could subvert the host (EFER.SVME, the VMX
//! and SVM control MSRs, the APIC base, …).

use super::Outcome;
use crate::virt::Vcpu;

const GP: u8 = 13;

/// IA32_TSC: the guest reads the host TSC (plus the vCPU's offset, applied by
/// hardware for RDTSC but not for RDMSR — close enough until TSC offsetting).
const IA32_TSC: u32 = 0x10;

pub fn read(vcpu: &mut impl Vcpu, msr: u32) -> Outcome {
    match msr {
        IA32_TSC => {
            let tsc = read_tsc();
            let g = vcpu.gprs();
            g.rax = tsc & 0xffff_ffff;
            g.rdx = tsc >> 32;
            vcpu.skip_instruction();
        }
        _ => {
            log::debug!("guest rdmsr {msr:#x}: #GP");
            vcpu.inject_exception(GP, Some(0));
        }
    }
    Outcome::Continue
}

pub fn write(vcpu: &mut impl Vcpu, msr: u32, value: u64) -> Outcome {
    log::debug!("guest wrmsr {msr:#x} <- {value:#x}: #GP");
    vcpu.inject_exception(GP, Some(0));
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
    use crate::exit::io::tests::FakeVcpu;

    #[test]
    fn unknown_msrs_fault() {
        let mut v = FakeVcpu::default();
        assert_eq!(read(&mut v, 0xc000_0080), Outcome::Continue);
        assert_eq!(v.injected, Some((13, Some(0))));
        assert_eq!(v.skipped, 0);
        let mut v = FakeVcpu::default();
        write(&mut v, 0xc001_0117, 0x1000);
        assert_eq!(v.injected, Some((13, Some(0))));
    }

    #[test]
    fn tsc_is_readable() {
        let mut v = FakeVcpu::default();
        read(&mut v, IA32_TSC);
        assert_eq!(v.skipped, 1);
        assert!(v.injected.is_none());
    }
}
