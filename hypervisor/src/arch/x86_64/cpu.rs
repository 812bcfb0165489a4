//! CPUID, MSRs and control registers.

pub use crate::exit::cpuid::CpuidResult;

/// CPUID with EAX = `leaf`, ECX = `subleaf`.
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    CpuidResult { eax: r.eax, ebx: r.ebx, ecx: r.ecx, edx: r.edx }
}

/// Architectural MSR numbers the hypervisor uses (Intel SDM Vol. 4, AMD APM Vol. 2 App. A).
pub mod msr {
    pub const IA32_APIC_BASE: u32 = 0x1b;
    pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
    pub const IA32_VMX_BASIC: u32 = 0x480;
    pub const IA32_EFER: u32 = 0xc000_0080;
    pub const IA32_PAT: u32 = 0x277;
    pub const IA32_FS_BASE: u32 = 0xc000_0100;
    pub const IA32_GS_BASE: u32 = 0xc000_0101;
    pub const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const IA32_STAR: u32 = 0xc000_0081;
    pub const IA32_LSTAR: u32 = 0xc000_0082;
    pub const IA32_CSTAR: u32 = 0xc000_0083;
    pub const IA32_FMASK: u32 = 0xc000_0084;
    pub const IA32_TSC_AUX: u32 = 0xc000_0103;
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const VM_CR: u32 = 0xc001_0114;
    pub const VM_HSAVE_PA: u32 = 0xc001_0117;
}

/// Reads an MSR.
///
/// # Safety
/// `msr` must exist on this CPU (otherwise #GP).
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists.
    unsafe { core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes an MSR.
///
/// # Safety
/// `msr` must exist and `value` must be valid for it; the write must not break
/// the hypervisor's own execution environment.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: the caller guarantees the write is valid.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
            options(nostack))
    };
}
