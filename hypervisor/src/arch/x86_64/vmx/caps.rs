//! VMX capability MSRs and the execution controls Oxen runs guests with, adjusted
//! once at boot to what the CPU allows (SDM Vol. 3D Appendix A).

use crate::arch::x86_64::rdmsr;
use crate::arch::x86_64::vmx::decode::{ept_vpid_cap, AllowedBits, VmxBasic};

/// Capability MSRs (SDM Vol. 4 Table 2-2, Vol. 3D Appendix A).
pub mod msr {
    pub const IA32_VMX_BASIC: u32 = 0x480;
    pub const IA32_VMX_PINBASED_CTLS: u32 = 0x481;
    pub const IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
    pub const IA32_VMX_EXIT_CTLS: u32 = 0x483;
    pub const IA32_VMX_ENTRY_CTLS: u32 = 0x484;
    pub const IA32_VMX_MISC: u32 = 0x485;
    pub const IA32_VMX_CR0_FIXED0: u32 = 0x486;
    pub const IA32_VMX_CR0_FIXED1: u32 = 0x487;
    pub const IA32_VMX_CR4_FIXED0: u32 = 0x488;
    pub const IA32_VMX_CR4_FIXED1: u32 = 0x489;
    pub const IA32_VMX_PROCBASED_CTLS2: u32 = 0x48b;
    pub const IA32_VMX_EPT_VPID_CAP: u32 = 0x48c;
    pub const IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48d;
    pub const IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48e;
    pub const IA32_VMX_TRUE_EXIT_CTLS: u32 = 0x48f;
    pub const IA32_VMX_TRUE_ENTRY_CTLS: u32 = 0x490;
}

/// IA32_FEATURE_CONTROL bits (SDM Vol. 3C §24.7).
pub mod feature_control {
    pub const LOCKED: u64 = 1 << 0;
    pub const VMX_OUTSIDE_SMX: u64 = 1 << 2;
}

/// Pin-based VM-execution controls (SDM Vol. 3C §25.6.1, Table 25-5).
pub mod pin {
    pub const EXTERNAL_INTERRUPT_EXITING: u32 = 1 << 0;
    pub const NMI_EXITING: u32 = 1 << 3;
    pub const PREEMPTION_TIMER: u32 = 1 << 6;
}

/// Primary processor-based controls (SDM Vol. 3C §25.6.2, Table 25-6).
pub mod proc {
    pub const INTERRUPT_WINDOW_EXITING: u32 = 1 << 2;
    pub const USE_TSC_OFFSETTING: u32 = 1 << 3;
    pub const HLT_EXITING: u32 = 1 << 7;
    pub const MWAIT_EXITING: u32 = 1 << 10;
    pub const RDPMC_EXITING: u32 = 1 << 11;
    pub const USE_TPR_SHADOW: u32 = 1 << 21;
    pub const USE_IO_BITMAPS: u32 = 1 << 25;
    pub const USE_MSR_BITMAPS: u32 = 1 << 28;
    pub const MONITOR_EXITING: u32 = 1 << 29;
    pub const SECONDARY_CONTROLS: u32 = 1 << 31;
}

/// Secondary processor-based controls (SDM Vol. 3C §25.6.2, Table 25-7).
pub mod proc2 {
    pub const ENABLE_EPT: u32 = 1 << 1;
    pub const ENABLE_RDTSCP: u32 = 1 << 3;
    pub const ENABLE_VPID: u32 = 1 << 5;
    pub const WBINVD_EXITING: u32 = 1 << 6;
    pub const UNRESTRICTED_GUEST: u32 = 1 << 7;
    pub const ENABLE_INVPCID: u32 = 1 << 12;
}

/// VM-exit controls (SDM Vol. 3C §25.7.1, Table 25-13).
pub mod exit {
    pub const SAVE_DEBUG_CONTROLS: u32 = 1 << 2;
    pub const HOST_ADDRESS_SPACE_SIZE: u32 = 1 << 9;
    pub const SAVE_PAT: u32 = 1 << 18;
    pub const LOAD_PAT: u32 = 1 << 19;
    pub const SAVE_EFER: u32 = 1 << 20;
    pub const LOAD_EFER: u32 = 1 << 21;
}

/// VM-entry controls (SDM Vol. 3C §25.8.1, Table 25-15).
pub mod entry {
    pub const LOAD_DEBUG_CONTROLS: u32 = 1 << 2;
    pub const IA32E_MODE_GUEST: u32 = 1 << 9;
    pub const LOAD_PAT: u32 = 1 << 14;
    pub const LOAD_EFER: u32 = 1 << 15;
}

/// What the boot CPU's capability MSRs allow, and the control values every
/// vCPU uses (all CPUs of one machine report the same capabilities).
#[derive(Clone, Copy, Debug)]
pub struct VmxCaps {
    pub basic: VmxBasic,
    pub cr0_fixed0: u64,
    pub cr0_fixed1: u64,
    pub cr4_fixed0: u64,
    pub cr4_fixed1: u64,
    pub ept_vpid: u64,
    /// TSC bits shifted right per preemption-timer tick (IA32_VMX_MISC 4:0).
    pub preemption_timer_shift: u8,
    pub has_preemption_timer: bool,
    pub has_interrupt_window_exiting: bool,
    pub pin: u32,
    pub proc: u32,
    pub proc2: u32,
    pub exit: u32,
    /// Entry controls without IA-32e mode guest, which depends on the vCPU.
    pub entry: u32,
}

impl VmxCaps {
    /// Reads the capability MSRs and computes the controls.
    ///
    /// # Safety
    /// CPUID.1:ECX.VMX must be set (the MSRs exist only then).
    pub unsafe fn read() -> Result<Self, &'static str> {
        // SAFETY: the VMX capability MSRs exist when CPUID reports VMX (caller).
        let r = |m: u32| unsafe { rdmsr(m) };
        let basic = VmxBasic(r(msr::IA32_VMX_BASIC));
        if basic.region_size() as u64 > crate::mem::PAGE_SIZE {
            return Err("VMCS region larger than a page");
        }
        if basic.memory_type() != VmxBasic::MEMORY_TYPE_WB {
            return Err("VMCS must be accessed uncached");
        }
        if basic.phys_addr_32bit() {
            return Err("VMX structures limited to 32-bit addresses");
        }
        // With TRUE controls, default-1 bits such as CR3-load exiting may be cleared (§A.2).
        let (pin_msr, proc_msr, exit_msr, entry_msr) = if basic.has_true_controls() {
            (msr::IA32_VMX_TRUE_PINBASED_CTLS, msr::IA32_VMX_TRUE_PROCBASED_CTLS, msr::IA32_VMX_TRUE_EXIT_CTLS, msr::IA32_VMX_TRUE_ENTRY_CTLS)
        } else {
            (msr::IA32_VMX_PINBASED_CTLS, msr::IA32_VMX_PROCBASED_CTLS, msr::IA32_VMX_EXIT_CTLS, msr::IA32_VMX_ENTRY_CTLS)
        };
        let pin_allowed = AllowedBits::from_msr(r(pin_msr));
        let proc_allowed = AllowedBits::from_msr(r(proc_msr));
        if !proc_allowed.allows(proc::SECONDARY_CONTROLS) {
            return Err("no secondary processor-based controls");
        }
        let proc2_allowed = AllowedBits::from_msr(r(msr::IA32_VMX_PROCBASED_CTLS2));
        let exit_allowed = AllowedBits::from_msr(r(exit_msr));
        let entry_allowed = AllowedBits::from_msr(r(entry_msr));

        if !proc2_allowed.allows(proc2::ENABLE_EPT) {
            return Err("no EPT");
        }
        if !proc2_allowed.allows(proc2::ENABLE_VPID) {
            return Err("no VPID");
        }
        if !proc2_allowed.allows(proc2::UNRESTRICTED_GUEST) {
            return Err("no unrestricted guest");
        }
        let ept_vpid = r(msr::IA32_VMX_EPT_VPID_CAP);
        ept_vpid_cap::check(ept_vpid)?;

        // Physical NMIs are the host's: they exit rather than reach the guest's IDT.
        let pin = pin_allowed
            .adjust(pin::EXTERNAL_INTERRUPT_EXITING | pin::NMI_EXITING, 0)
            .map_err(|_| "pin-based controls: no external-interrupt or NMI exiting")?;
        // MONITOR/MWAIT and RDPMC would otherwise run on the host's hardware;
        // the TPR shadow keeps a guest's MOV to CR8 off the physical TPR (every
        // CPU with EPT has it).
        let proc = proc_allowed
            .adjust(
                proc::HLT_EXITING
                    | proc::MWAIT_EXITING
                    | proc::RDPMC_EXITING
                    | proc::USE_TPR_SHADOW
                    | proc::USE_IO_BITMAPS
                    | proc::USE_MSR_BITMAPS
                    | proc::MONITOR_EXITING
                    | proc::SECONDARY_CONTROLS,
                // With offset 0 (the VMCS's start) the guest reads the host's
                // TSC as without it; a migrated guest's goes on from its own.
                proc::USE_TSC_OFFSETTING,
            )
            .map_err(|_| "processor-based controls: no HLT/MWAIT/MONITOR/RDPMC exiting, TPR shadow or I/O/MSR bitmaps")?;
        // RDTSCP and INVPCID would #UD in the guest without their enables;
        // WBINVD exits where the CPU can make it (see `exit::instruction`).
        let proc2 = proc2_allowed
            .adjust(
                proc2::ENABLE_EPT | proc2::ENABLE_VPID | proc2::UNRESTRICTED_GUEST,
                proc2::ENABLE_RDTSCP | proc2::ENABLE_INVPCID | proc2::WBINVD_EXITING,
            )
            .map_err(|_| "secondary controls")?;
        // Debug controls: DR7 and IA32_DEBUGCTL are switched by entry and exit.
        let exit = exit_allowed
            .adjust(
                exit::SAVE_DEBUG_CONTROLS
                    | exit::HOST_ADDRESS_SPACE_SIZE
                    | exit::SAVE_PAT
                    | exit::LOAD_PAT
                    | exit::SAVE_EFER
                    | exit::LOAD_EFER,
                0,
            )
            .map_err(|_| "exit controls: no 64-bit host or debug-control/PAT/EFER switching")?;
        let entry = entry_allowed
            .adjust(entry::LOAD_DEBUG_CONTROLS | entry::LOAD_PAT | entry::LOAD_EFER, 0)
            .map_err(|_| "entry controls: no debug-control/PAT/EFER loading")?;
        if !entry_allowed.allows(entry::IA32E_MODE_GUEST) {
            return Err("entry controls: no IA-32e mode guest");
        }
        const MISC_TIMER_RATE_MASK: u64 = 0x1f;
        Ok(Self {
            basic,
            cr0_fixed0: r(msr::IA32_VMX_CR0_FIXED0),
            cr0_fixed1: r(msr::IA32_VMX_CR0_FIXED1),
            cr4_fixed0: r(msr::IA32_VMX_CR4_FIXED0),
            cr4_fixed1: r(msr::IA32_VMX_CR4_FIXED1),
            ept_vpid,
            preemption_timer_shift: (r(msr::IA32_VMX_MISC) & MISC_TIMER_RATE_MASK) as u8,
            has_preemption_timer: pin_allowed.allows(pin::PREEMPTION_TIMER),
            has_interrupt_window_exiting: proc_allowed.allows(proc::INTERRUPT_WINDOW_EXITING),
            pin,
            proc,
            proc2,
            exit,
            entry,
        })
    }

    pub fn invept_single_context(&self) -> bool {
        self.ept_vpid & ept_vpid_cap::INVEPT_SINGLE_CONTEXT != 0
    }
}
