//! XSETBV exits: a guest enabling extended processor state (AVX, …) in XCR0.
//!
//! The value is checked as the CPU would check it (SDM Vol. 2C, XSETBV): only
//! XCR0, x87 always on, AVX only with SSE, only components the host supports;
//! anything else gets #GP. A valid value is loaded into the real XCR0, which the
//! hypervisor itself never depends on (it uses no FPU, SSE or AVX).
//! XCR0 and the extended state are not switched between guests yet.

use super::cpuid::CpuidResult;
use super::Outcome;
use crate::virt::Vcpu;

const X87: u64 = 1 << 0;
const SSE: u64 = 1 << 1;
const AVX: u64 = 1 << 2;
const GP: u8 = 13;

/// Whether `value` may go into XCR `xcr`, given CPUID.(EAX=0DH,ECX=0) of the host.
pub fn valid(xcr: u32, value: u64, leaf_d: CpuidResult) -> bool {
    let supported = u64::from(leaf_d.eax) | (u64::from(leaf_d.edx) << 32);
    xcr == 0 && value & X87 != 0 && value & !supported == 0 && (value & AVX == 0 || value & SSE != 0)
}

pub fn xsetbv(vcpu: &mut impl Vcpu, xcr: u32, value: u64, leaf_d: CpuidResult) -> Outcome {
    if !valid(xcr, value, leaf_d) {
        vcpu.inject_exception(GP, Some(0));
        return Outcome::Continue;
    }
    #[cfg(target_os = "none")]
    // SAFETY: the value was checked against what the CPU supports, so XSETBV
    // cannot fault; the hypervisor does not use the state XCR0 enables.
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

    const HOST: CpuidResult = CpuidResult { eax: 0x7, ebx: 0, ecx: 0, edx: 0 };

    #[test]
    fn checks_like_the_cpu() {
        assert!(valid(0, X87 | SSE | AVX, HOST));
        assert!(valid(0, X87, HOST));
        assert!(!valid(0, SSE, HOST), "x87 must stay on");
        assert!(!valid(0, X87 | AVX, HOST), "AVX needs SSE");
        assert!(!valid(0, X87 | (1 << 5), HOST), "not supported by the host");
        assert!(!valid(1, X87, HOST), "only XCR0");
    }
}
