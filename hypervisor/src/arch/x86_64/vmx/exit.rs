//! Reading one VM exit out of the VMCS, and the exits the backend handles itself
//! (host interrupts). Decoding into `VmExit` is pure: `virt::vmx_decode`.

use super::vmcs::{self, ReadOnly32, ReadOnly64, ReadOnlyNat, FieldNat, Field32, VmxError};
use crate::virt::vmx_decode::{ExitReason, InterruptionInfo, RawExit};
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

/// Local APIC registers (SDM Vol. 3A §12.4.1, §12.8.4, §12.12.1).
mod lapic {
    pub const IA32_APIC_BASE_X2APIC: u64 = 1 << 10;
    pub const BASE_MASK: u64 = 0x000f_ffff_ffff_f000;
    /// xAPIC MMIO offsets.
    pub const EOI: u64 = 0xb0;
    pub const ISR0: u64 = 0x100;
    /// x2APIC MSRs.
    pub const X2APIC_EOI: u32 = 0x80b;
    pub const X2APIC_ISR0: u32 = 0x810;
}

/// The 8259A pair the firmware may still route interrupts through (ExtINT).
mod pic {
    pub const MASTER_COMMAND: u16 = 0x20;
    pub const SLAVE_COMMAND: u16 = 0xa0;
    /// OCW3: the next command-port read returns the in-service register.
    pub const READ_ISR: u8 = 0x0b;
    /// OCW2: non-specific end of interrupt.
    pub const EOI: u8 = 0x20;
}

/// Finishes a host interrupt the CPU acknowledged on VM exit ("acknowledge
/// interrupt on exit", SDM Vol. 3C §28.2.2): the hypervisor has no device
/// interrupts of its own yet, so it only signals end of interrupt to whichever
/// controller has it in service, and re-enters the guest.
///
/// TODO(common code): once the hypervisor owns interrupts (LAPIC timer, IPIs),
/// this should dispatch `vector` to a vendor-neutral handler instead.
pub fn end_host_interrupt(vector: Option<u8>) {
    use crate::arch::x86_64::{cpu::msr::IA32_APIC_BASE, rdmsr, wrmsr};
    log::trace!("cpu{}: vmx: host interrupt {vector:?} during guest", crate::arch::x86_64::cpu_id());
    let Some(vector) = vector else { return };
    let (word, bit) = (u32::from(vector / 32), 1u32 << (vector % 32));
    // SAFETY: IA32_APIC_BASE exists on every x86-64 CPU.
    let apic_base = unsafe { rdmsr(IA32_APIC_BASE) };
    let in_lapic_service = if apic_base & lapic::IA32_APIC_BASE_X2APIC != 0 {
        // SAFETY: the ISR MSRs exist in x2APIC mode; reading them has no side effect.
        let isr = unsafe { rdmsr(lapic::X2APIC_ISR0 + word) } as u32;
        if isr & bit != 0 {
            // SAFETY: EOI ends the in-service interrupt, which is this one.
            unsafe { wrmsr(lapic::X2APIC_EOI, 0) };
        }
        isr & bit != 0
    } else {
        let base = apic_base & lapic::BASE_MASK;
        // SAFETY: the local APIC page is identity mapped uncached by the
        // hypervisor's tables (arch::x86_64::paging); ISR reads have no side effects.
        let isr = unsafe { ((base + lapic::ISR0 + u64::from(word) * 0x10) as *const u32).read_volatile() };
        if isr & bit != 0 {
            // SAFETY: as above; writing EOI ends the in-service interrupt, this one.
            unsafe { ((base + lapic::EOI) as *mut u32).write_volatile(0) };
        }
        isr & bit != 0
    };
    if in_lapic_service {
        return;
    }
    // Delivered through LINT0 as ExtINT: the 8259 pair has it in service.
    use x86_64::instructions::port::Port;
    let mut master = Port::<u8>::new(pic::MASTER_COMMAND);
    let mut slave = Port::<u8>::new(pic::SLAVE_COMMAND);
    // SAFETY: OCW3/OCW2 to the 8259 command ports only read the in-service
    // register and end the highest-priority in-service interrupt.
    unsafe {
        slave.write(pic::READ_ISR);
        if slave.read() != 0 {
            slave.write(pic::EOI);
        }
        master.write(pic::READ_ISR);
        if master.read() != 0 {
            master.write(pic::EOI);
        }
    }
}
