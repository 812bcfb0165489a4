//! Reading one VM exit out of the VMCS, and the exits the backend handles itself
//! (host interrupts). Decoding into `VmExit` is pure: `vmx::decode`.

use super::vmcs::{self, ReadOnly32, ReadOnly64, ReadOnlyNat, FieldNat, Field32, VmxError};
use crate::arch::x86_64::vmx::decode::{ExitReason, InterruptionInfo, RawExit};
use crate::virt::GuestGprs;

/// What the VMCS says about one exit, plus the guest state `VmxVcpu` caches.
pub struct ExitState {
    pub raw: RawExit,
    pub rip: u64,
    pub rsp: u64,
    pub ss_access_rights: u32,
    pub instruction_len: u32,
    /// An event whose delivery the exit interrupted (SDM Vol. 3C §28.2.4).
    pub idt_vectoring: InterruptionInfo,
    pub idt_vectoring_error_code: u32,
}

/// Reads the exit information fields (SDM Vol. 3C §25.9) the exit reason makes valid.
pub fn read(gprs: &GuestGprs) -> Result<ExitState, (&'static str, VmxError)> {
    let reason = vmcs::read32(ReadOnly32::ExitReason).map_err(|e| ("exit reason", e))?;
    let mut raw = RawExit {
        reason,
        qualification: vmcs::read_ro_nat(ReadOnlyNat::ExitQualification).map_err(|e| ("exit qualification", e))?,
        rax: gprs.rax,
        rcx: gprs.rcx,
        rdx: gprs.rdx,
        ..RawExit::default()
    };
    match ExitReason::from_raw(raw.basic_reason()) {
        Some(ExitReason::ExceptionOrNmi | ExitReason::ExternalInterrupt) => {
            raw.interruption_info =
                vmcs::read32(ReadOnly32::ExitInterruptionInfo).map_err(|e| ("exit interruption info", e))?;
            if InterruptionInfo(raw.interruption_info).error_code_valid() {
                raw.interruption_error_code =
                    vmcs::read32(ReadOnly32::ExitInterruptionErrorCode).map_err(|e| ("exit error code", e))?;
            }
        }
        Some(ExitReason::EptViolation | ExitReason::EptMisconfiguration) => {
            raw.guest_physical_address =
                vmcs::read64(ReadOnly64::GuestPhysicalAddress).map_err(|e| ("guest-physical address", e))?;
        }
        _ => {}
    }
    let idt_vectoring =
        InterruptionInfo(vmcs::read32(ReadOnly32::IdtVectoringInfo).map_err(|e| ("IDT-vectoring info", e))?);
    let idt_vectoring_error_code = if idt_vectoring.valid() && idt_vectoring.error_code_valid() {
        vmcs::read32(ReadOnly32::IdtVectoringErrorCode).map_err(|e| ("IDT-vectoring error code", e))?
    } else {
        0
    };
    Ok(ExitState {
        raw,
        rip: vmcs::read_nat(FieldNat::GuestRip).map_err(|e| ("guest RIP", e))?,
        rsp: vmcs::read_nat(FieldNat::GuestRsp).map_err(|e| ("guest RSP", e))?,
        ss_access_rights: vmcs::read32_rw(Field32::GuestSsAccessRights).map_err(|e| ("guest SS", e))?,
        instruction_len: vmcs::read32(ReadOnly32::ExitInstructionLength).map_err(|e| ("instruction length", e))?,
        idt_vectoring,
        idt_vectoring_error_code,
    })
}

