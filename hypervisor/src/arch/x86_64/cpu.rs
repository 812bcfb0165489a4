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

/// A vCPU's debug registers that no VMCS/VMCB field holds: the breakpoint
/// addresses DR0-DR3 and (VT-x only: the VMCB has it) the status DR6. The
/// hypervisor never uses hardware breakpoints, so whatever the registers hold
/// belongs to the guest that ran last: each vCPU's values are loaded before
/// it runs and read back after, so no guest sees or arms another's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugRegs {
    pub dr: [u64; 4],
    pub dr6: u64,
}

impl DebugRegs {
    /// Power-on values (SDM Vol. 3B §19.2: DR6 reads 0xFFFF0FF0).
    pub const RESET: Self = Self { dr: [0; 4], dr6: 0xffff_0ff0 };

    /// Loads DR0-DR3 (and DR6 if `with_dr6`) into the CPU.
    ///
    /// # Safety
    /// Only between guest runs: the hypervisor sets no breakpoints, and the
    /// guest's DR7 (switched by VM entry) decides whether these arm anything.
    /// Values are not checked: DR0-DR3 accept any 64-bit value, and DR6 is
    /// only ever written from what the CPU or `set_dr6` produced.
    pub unsafe fn load(&self, with_dr6: bool) {
        // SAFETY: the caller's contract; MOV to DR0-3 cannot fault at CPL 0
        // with CR4.DE irrelevant for DR0-3, and DR6's upper half is written 0.
        unsafe {
            core::arch::asm!(
                "mov dr0, {0}", "mov dr1, {1}", "mov dr2, {2}", "mov dr3, {3}",
                in(reg) self.dr[0], in(reg) self.dr[1], in(reg) self.dr[2], in(reg) self.dr[3],
                options(nomem, nostack, preserves_flags)
            );
            if with_dr6 {
                core::arch::asm!("mov dr6, {}", in(reg) self.dr6 & 0xffff_ffff, options(nomem, nostack, preserves_flags));
            }
        }
    }

    /// Reads them back after the guest ran.
    pub fn store(&mut self, with_dr6: bool) {
        // SAFETY: reading debug registers at CPL 0 has no side effects.
        unsafe {
            core::arch::asm!(
                "mov {0}, dr0", "mov {1}, dr1", "mov {2}, dr2", "mov {3}, dr3",
                out(reg) self.dr[0], out(reg) self.dr[1], out(reg) self.dr[2], out(reg) self.dr[3],
                options(nomem, nostack, preserves_flags)
            );
            if with_dr6 {
                core::arch::asm!("mov {}, dr6", out(reg) self.dr6, options(nomem, nostack, preserves_flags));
            }
        }
    }
}

/// The CPU's linear-address width (CPUID.80000008H:EAX[15:8]): 57 where it
/// has 5-level paging, else 48.
pub fn linear_address_bits() -> u32 {
    static BITS: spin::Once<u32> = spin::Once::new();
    *BITS.call_once(|| {
        let bits = if cpuid(0x8000_0000, 0).eax >= 0x8000_0008 { (cpuid(0x8000_0008, 0).eax >> 8) & 0xff } else { 48 };
        if bits == 57 { 57 } else { 48 }
    })
}

/// Whether `addr` is canonical on this CPU. WRMSR to the FS/GS/KERNEL_GS
/// bases, LSTAR and friends checks against the CPU's linear-address width
/// whatever the guest's CR4.LA57 (SDM Vol. 3A §4.5.1 on 5-level paging), and
/// so does VM entry for the values the VMCS / VMCB loads.
pub fn is_canonical(addr: u64) -> bool {
    crate::mem::addr::is_canonical_bits(addr, linear_address_bits())
}

/// Whether IA32_TSC_AUX exists: CPUID.80000001H:EDX.RDTSCP or CPUID.7:ECX.RDPID
/// (SDM Vol. 4 Table 2-2).
pub fn has_tsc_aux() -> bool {
    const EXT1_EDX_RDTSCP: u32 = 1 << 27;
    const LEAF7_ECX_RDPID: u32 = 1 << 22;
    cpuid(0x8000_0001, 0).edx & EXT1_EDX_RDTSCP != 0
        || (cpuid(0, 0).eax >= 7 && cpuid(7, 0).ecx & LEAF7_ECX_RDPID != 0)
}
