//! Raw SVM exits → `VmExit`, with the length of the exiting instruction, which
//! we must know ourselves when the CPU has no next-RIP save (QEMU TCG).

use super::vmcb::{exit_code as code, Vmcb};
use crate::mem::GuestPhysAddr;
use crate::virt::{Access, Insn, VmExit};

/// IOIO EXITINFO1 fields (APM Vol. 2 §15.10.2).
mod ioio {
    pub const TYPE_IN: u64 = 1 << 0;
    pub const STR: u64 = 1 << 2;
    pub const REP: u64 = 1 << 3;
    pub const SZ8: u64 = 1 << 4;
    pub const SZ16: u64 = 1 << 5;
    pub const PORT_SHIFT: u64 = 16;
}

/// #NPF error code bits in EXITINFO1 (APM Vol. 2 §15.25.6).
mod npf {
    pub const WRITE: u64 = 1 << 1;
    pub const EXEC: u64 = 1 << 4;
}

/// Length of the instruction behind an exit, where it is fixed by the exit.
const CPUID_LEN: u64 = 2;
const HLT_LEN: u64 = 1;
const VMMCALL_LEN: u64 = 3;
const RDWRMSR_LEN: u64 = 2;
const XSETBV_LEN: u64 = 3;
/// INVD (0f 08) and WBINVD (0f 09).
const INVD_LEN: u64 = 2;

/// Exceptions carrying an error code (vectors 8, 10-14, 17, 21, 29, 30).
const ERROR_CODE_VECTORS: u32 = 0x6022_7d00;

/// The vendor-neutral exit and, for instruction exits, the guest's next RIP.
pub fn translate(vmcb: &Vmcb) -> (VmExit, Option<u64>) {
    let c = &vmcb.control;
    let rip = vmcb.save.rip;
    // Where the CPU saves the next RIP it is right even with prefixes (a
    // WBNOINVD is an F3-prefixed WBINVD); otherwise the length the exit implies.
    let after = |len: u64| Some(if super::has_nrips() { c.next_rip } else { rip.wrapping_add(len) });
    match c.exit_code {
        code::CPUID => {
            // The guest's RAX lives in the VMCB; RCX in the saved GPRs (filled by the caller).
            (VmExit::Cpuid { leaf: vmcb.save.rax as u32, subleaf: 0 }, after(CPUID_LEN))
        }
        code::HLT => (VmExit::Hlt, after(HLT_LEN)),
        code::VMMCALL => (VmExit::Hypercall, after(VMMCALL_LEN)),
        // ECX and EDX come from the saved GPRs (filled in by the caller).
        code::XSETBV => (VmExit::Xsetbv { xcr: 0, value: vmcb.save.rax & 0xffff_ffff }, after(XSETBV_LEN)),
        code::IOIO => {
            let i = c.exit_info1;
            let size = if i & ioio::SZ8 != 0 {
                1
            } else if i & ioio::SZ16 != 0 {
                2
            } else {
                4
            };
            let exit = VmExit::Io {
                port: (i >> ioio::PORT_SHIFT) as u16,
                size,
                write: i & ioio::TYPE_IN == 0,
                string: i & ioio::STR != 0,
                rep: i & ioio::REP != 0,
            };
            // EXITINFO2 holds the next RIP for IOIO even without NRIP support.
            (exit, Some(c.exit_info2))
        }
        code::MSR => {
            let exit = if c.exit_info1 == 0 {
                VmExit::MsrRead { msr: 0 }
            } else {
                VmExit::MsrWrite { msr: 0, value: 0 }
            };
            (exit, after(RDWRMSR_LEN))
        }
        code::NPF => {
            let e = c.exit_info1;
            let mut access = Access::READ;
            if e & npf::WRITE != 0 {
                access = Access::WRITE;
            }
            if e & npf::EXEC != 0 {
                access = Access::EXEC;
            }
            (VmExit::NestedPageFault { gpa: GuestPhysAddr::new(c.exit_info2), access }, None)
        }
        code::SHUTDOWN => (VmExit::TripleFault, None),
        code::VMRUN | code::VMLOAD | code::VMSAVE | code::STGI | code::CLGI | code::SKINIT | code::INVLPGA => {
            (VmExit::Instruction(Insn::Virtualization), None)
        }
        code::INVD => (VmExit::Instruction(Insn::Invd), after(INVD_LEN)),
        code::WBINVD => (VmExit::Instruction(Insn::Wbinvd), after(INVD_LEN)),
        code::MONITOR => (VmExit::Instruction(Insn::Monitor), None),
        code::MWAIT | code::MWAIT_CONDITIONAL => (VmExit::Instruction(Insn::Mwait), None),
        code::RDPMC => (VmExit::Instruction(Insn::Rdpmc), None),
        code::VINTR => (VmExit::InterruptWindow, None),
        v @ code::EXCP_BASE..=0x5f => {
            let vector = (v - code::EXCP_BASE) as u8;
            let has_code = ERROR_CODE_VECTORS & (1 << vector) != 0;
            (VmExit::Exception { vector, error_code: has_code.then_some(c.exit_info1 as u32) }, None)
        }
        other => (VmExit::Unsupported { reason: other, info: c.exit_info1 }, None),
    }
}
