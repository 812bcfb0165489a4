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
    /// An intercepted guest exception.
    Exception { vector: u8, error_code: Option<u32> },
    /// The guest triple-faulted (VMX) or hit a shutdown condition (SVM).
    TripleFault,
    /// The hypervisor's time slice for this vCPU ran out.
    Preempted,
    /// The guest can take an external interrupt now (after
    /// `Vcpu::request_interrupt_window`).
    InterruptWindow,
    /// Anything the backends do not translate: the raw exit reason and
    /// qualification / EXITINFO1, for the log.
    Unsupported { reason: u64, info: u64 },
}
