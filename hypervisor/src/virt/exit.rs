//! The one vendor-neutral VM-exit type. `vmx::exit` and `svm::exit` translate raw
//! exits into it after handling what is purely their own (external interrupts,
//! interrupt windows); the handlers in `crate::exit` only ever see this.

use crate::mem::GuestPhysAddr;
use bitflags::bitflags;

bitflags! {
    /// What a faulting guest-physical access tried to do.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Access: u8 {
        const READ = 1 << 0;
        const WRITE = 1 << 1;
        const EXEC = 1 << 2;
    }
}

/// An instruction that always exits and that the common code answers by
/// policy rather than emulates (see `exit::handle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insn {
    /// A VT-x or AMD-V instruction (VMXON, VMREAD, INVEPT, VMRUN, STGI,
    /// INVLPGA, …): guests have no nested virtualization.
    Virtualization,
    /// INVD: would drop dirty cache lines, including other domains'.
    Invd,
    /// WBINVD.
    Wbinvd,
    /// MONITOR / MWAIT, which the guest is not shown.
    Monitor,
    Mwait,
    /// RDPMC: no performance counters are virtualized.
    Rdpmc,
}

/// Why the guest stopped running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VmExit {
    /// CPUID with EAX = `leaf`, ECX = `subleaf`.
    Cpuid { leaf: u32, subleaf: u32 },
    /// Port I/O of `size` bytes (1, 2 or 4). For OUT the data is in the guest's RAX.
    Io { port: u16, size: u8, write: bool, string: bool, rep: bool },
    /// RDMSR of ECX = `msr`.
    MsrRead { msr: u32 },
    /// WRMSR of ECX = `msr` with EDX:EAX = `value`.
    MsrWrite { msr: u32, value: u64 },
    /// HLT.
    Hlt,
    /// XSETBV of XCR `xcr` (ECX) with EDX:EAX = `value`.
    Xsetbv { xcr: u32, value: u64 },
    /// VMCALL (Intel) or VMMCALL (AMD): number in RAX, arguments in RDI, RSI, RDX,
    /// R10, R8 (see docs/hypercalls.md).
    Hypercall,
    /// A guest-physical access the nested page tables do not allow.
    NestedPageFault { gpa: GuestPhysAddr, access: Access },
    /// An intercepted guest exception (#DB and #AC: see `Vcpu::reflect_exception`).
    Exception { vector: u8, error_code: Option<u32> },
    /// An instruction the common code answers by policy.
    Instruction(Insn),
    /// The guest triple-faulted (VMX) or hit a shutdown condition (SVM).
    TripleFault,
    /// The hypervisor's time slice for this vCPU ran out.
    Preempted,
    /// The guest can take an external interrupt now (after
    /// `Vcpu::request_interrupt_window`).
    InterruptWindow,
    /// A control-register write the backend emulated itself (VT-x: a write
    /// to a bit VMX operation fixes, which the guest/host mask keeps the
    /// hypervisor's, e.g. Linux clearing CR0.NE on its way to real mode):
    /// nothing left for the common code.
    ControlRegister,
    /// Anything the backends do not translate: the raw exit reason and
    /// qualification / EXITINFO1, for the log.
    Unsupported { reason: u64, info: u64 },
}

/// What the CPU makes of an exception raised while it delivers another
/// (SDM Vol. 3A §6.15, Tables 6-4 and 6-5). A backend that intercepts a
/// contributory exception (#GP) must apply this itself, or a guest whose
/// delivery of #GP faults would loop instead of reaching #DF and shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combined {
    /// Deliver the second exception.
    Serial,
    /// Deliver #DF (error code 0) instead.
    DoubleFault,
    /// The CPU shuts down: a triple fault.
    TripleFault,
}

/// `Combined` for exception `second` raised while delivering exception `first`.
pub const fn combine(first: u8, second: u8) -> Combined {
    const fn contributory(v: u8) -> bool {
        matches!(v, 0 | 10 | 11 | 12 | 13)
    }
    const PF: u8 = 14;
    const DF: u8 = 8;
    let second_bad = contributory(second) || second == PF;
    match first {
        DF if second_bad => Combined::TripleFault,
        PF if second_bad => Combined::DoubleFault,
        f if contributory(f) && contributory(second) => Combined::DoubleFault,
        _ => Combined::Serial,
    }
}

#[cfg(test)]
mod combine_tests {
    use super::*;

    #[test]
    fn double_and_triple_faults() {
        assert_eq!(combine(13, 13), Combined::DoubleFault);
        assert_eq!(combine(0, 11), Combined::DoubleFault);
        assert_eq!(combine(14, 13), Combined::DoubleFault);
        assert_eq!(combine(14, 14), Combined::DoubleFault);
        assert_eq!(combine(13, 14), Combined::Serial);
        assert_eq!(combine(8, 13), Combined::TripleFault);
        assert_eq!(combine(8, 14), Combined::TripleFault);
        assert_eq!(combine(1, 13), Combined::Serial);
        assert_eq!(combine(32, 13), Combined::Serial);
    }
}

/// Debug-exception bookkeeping shared by the backends when they reflect an
/// intercepted #DB (SDM Vol. 3B §19.2.3-19.2.4, §19.3.1).
pub mod debug {
    /// DR6 bits that read 1 when nothing is reported ("active low": RTM, bit
    /// 16, among them), and the bits an exception reports.
    pub const DR6_ACTIVE_LOW: u64 = 0xffff_0ff0;
    const DR6_B0_B3: u64 = 0xf;
    const DR6_BD: u64 = 1 << 13;
    const DR6_BS: u64 = 1 << 14;
    const DR6_RTM: u64 = 1 << 16;
    /// RFLAGS.RF: the next instruction's breakpoints are not checked.
    pub const RFLAGS_RF: u64 = 1 << 16;

    /// The guest's DR6 after a #DB whose causes are `hits` in the layout of
    /// the VT-x exit qualification (B0-B3, BD, BS, and RTM set when the
    /// debug exception hit inside a transaction; SDM Vol. 3C §28.2.1): the
    /// breakpoint bits are replaced, BD/BS added, RTM cleared when reported.
    pub const fn dr6_after(dr6: u64, hits: u64) -> u64 {
        let hits = hits & (DR6_B0_B3 | DR6_BD | DR6_BS | DR6_RTM);
        let d = (dr6 & !DR6_B0_B3) | DR6_ACTIVE_LOW | hits;
        (d ^ (hits & DR6_ACTIVE_LOW)) & 0xffff_ffff
    }

    /// Whether a #DB reporting breakpoints `hits` (B0-B3) is fault-like: an
    /// instruction breakpoint (DR7 R/Wn = 00) of an enabled slot. The CPU then
    /// sets RF in the RFLAGS it pushes so the handler's IRET does not hit the
    /// same breakpoint again; a reflected #DB must do the same.
    pub const fn is_fault(hits: u64, dr7: u64) -> bool {
        let mut i = 0;
        while i < 4 {
            let enabled = dr7 & (0b11 << (2 * i)) != 0;
            let rw = (dr7 >> (16 + 4 * i)) & 0b11;
            if hits & (1 << i) != 0 && enabled && rw == 0 {
                return true;
            }
            i += 1;
        }
        false
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn dr6_reports_like_the_cpu() {
            // A data breakpoint in slot 1 on a clean DR6.
            assert_eq!(dr6_after(0xffff_0ff0, 0b10), 0xffff_0ff2);
            // Single step keeps earlier BS/BD, replaces B0-B3.
            assert_eq!(dr6_after(0xffff_0ff1 | DR6_BD, DR6_BS), 0xffff_0ff0 | DR6_BD | DR6_BS);
            // RTM is active low.
            assert_eq!(dr6_after(0xffff_0ff0, DR6_RTM | 1), 0xfffe_0ff1);
        }

        #[test]
        fn instruction_breakpoints_are_faults() {
            // Slot 0 enabled (L0), R/W0 = 00 (execute).
            assert!(is_fault(0b1, 0b01));
            // Slot 0 is a write watchpoint (R/W0 = 01): trap.
            assert!(!is_fault(0b1, 0b01 | (0b01 << 16)));
            // Slot 2 globally enabled, execute; hit reported for slot 2 only.
            assert!(is_fault(0b100, 0b10 << 4));
            assert!(!is_fault(0b10, 0b10 << 4));
        }
    }
}
