//! VMX instructions and typed VMCS fields.
//!
//! Field encodings are from the Intel SDM Vol. 3D Appendix B; each enum holds the
//! fields of one width (§25.11.2: bits 14:13 of an encoding give the width), and
//! read-only fields live in their own enums so writing one does not compile.
//! Every VMX instruction reports failure through RFLAGS (§31.2): CF = VMfailInvalid
//! (no current VMCS), ZF = VMfailValid (reason in the VM-instruction error field).

use core::arch::asm;

/// How a VMX instruction failed (SDM Vol. 3C §31.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxError {
    /// VMfailInvalid: no current VMCS, or a bad VMXON/VMCS pointer.
    FailInvalid,
    /// VMfailValid with the VM-instruction error number (SDM Vol. 3C §31.4).
    FailValid(u32),
}

impl core::fmt::Display for VmxError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            VmxError::FailInvalid => write!(f, "VMfailInvalid"),
            VmxError::FailValid(e) => write!(f, "VMfailValid, VM-instruction error {e}"),
        }
    }
}

/// Turns the CF/ZF outcome of a VMX instruction into a `Result`.
fn check(cf: u8, zf: u8) -> Result<(), VmxError> {
    if cf != 0 {
        Err(VmxError::FailInvalid)
    } else if zf != 0 {
        Err(VmxError::FailValid(instruction_error()))
    } else {
        Ok(())
    }
}

/// The VM-instruction error of the current VMCS (0 if it cannot be read).
pub fn instruction_error() -> u32 {
    read32(ReadOnly32::VmInstructionError).unwrap_or(0)
}

/// The width of a VMCS field, bits 14:13 of its encoding (SDM Vol. 3C §25.11.2).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Width {
    Bits16 = 0,
    Bits64 = 1,
    Bits32 = 2,
    Natural = 3,
}

const fn width_of(encoding: u32) -> u32 {
    (encoding >> 13) & 3
}

macro_rules! vmcs_fields {
    ($(#[$doc:meta])* $name:ident, $width:expr, { $($(#[$fdoc:meta])* $field:ident = $enc:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u32)]
        #[allow(dead_code)] // a catalogue: not every field is used yet
        pub enum $name {
            $($(#[$fdoc])* $field = $enc,)*
        }
        // Every encoding in this enum has the enum's width.
        const _: () = { $(assert!(width_of($enc) == $width as u32);)* };
    };
}

vmcs_fields!(
    /// 16-bit fields (SDM Vol. 3D §B.1).
    Field16, Width::Bits16, {
        /// Virtual-processor identifier (§25.6.12).
        Vpid = 0x0000,
        GuestEsSelector = 0x0800,
        GuestCsSelector = 0x0802,
        GuestSsSelector = 0x0804,
        GuestDsSelector = 0x0806,
        GuestFsSelector = 0x0808,
        GuestGsSelector = 0x080a,
        GuestLdtrSelector = 0x080c,
        GuestTrSelector = 0x080e,
        HostEsSelector = 0x0c00,
        HostCsSelector = 0x0c02,
        HostSsSelector = 0x0c04,
        HostDsSelector = 0x0c06,
        HostFsSelector = 0x0c08,
        HostGsSelector = 0x0c0a,
        HostTrSelector = 0x0c0c,
    }
);

vmcs_fields!(
    /// 64-bit fields (SDM Vol. 3D §B.2), written as one full-width access.
    Field64, Width::Bits64, {
        IoBitmapA = 0x2000,
        IoBitmapB = 0x2002,
        MsrBitmap = 0x2004,
        VmExitMsrStoreAddr = 0x2006,
        VmExitMsrLoadAddr = 0x2008,
        VmEntryMsrLoadAddr = 0x200a,
        TscOffset = 0x2010,
        /// Virtual-APIC page, read by the TPR shadow (§25.6.8).
        VirtualApicAddr = 0x2012,
        /// EPT pointer (§25.6.11).
        EptPointer = 0x201a,
        /// Must be all ones when VMCS shadowing is off (§25.4.2).
        VmcsLinkPointer = 0x2800,
        GuestIa32Debugctl = 0x2802,
        GuestIa32Pat = 0x2804,
        GuestIa32Efer = 0x2806,
        HostIa32Pat = 0x2c00,
        HostIa32Efer = 0x2c02,
    }
);

vmcs_fields!(
    /// Read-only 64-bit exit information (SDM Vol. 3D §B.2.2).
    ReadOnly64, Width::Bits64, {
        GuestPhysicalAddress = 0x2400,
    }
);

vmcs_fields!(
    /// 32-bit fields (SDM Vol. 3D §B.3).
    Field32, Width::Bits32, {
        PinBasedControls = 0x4000,
        PrimaryProcControls = 0x4002,
        ExceptionBitmap = 0x4004,
        PageFaultErrorCodeMask = 0x4006,
        PageFaultErrorCodeMatch = 0x4008,
        Cr3TargetCount = 0x400a,
        ExitControls = 0x400c,
        ExitMsrStoreCount = 0x400e,
        ExitMsrLoadCount = 0x4010,
        EntryControls = 0x4012,
        EntryMsrLoadCount = 0x4014,
        /// VM-entry interruption information (§25.8.3).
        EntryInterruptionInfo = 0x4016,
        EntryExceptionErrorCode = 0x4018,
        EntryInstructionLength = 0x401a,
        /// TPR threshold (§25.6.8).
        TprThreshold = 0x401c,
        SecondaryProcControls = 0x401e,
        GuestEsLimit = 0x4800,
        GuestCsLimit = 0x4802,
        GuestSsLimit = 0x4804,
        GuestDsLimit = 0x4806,
        GuestFsLimit = 0x4808,
        GuestGsLimit = 0x480a,
        GuestLdtrLimit = 0x480c,
        GuestTrLimit = 0x480e,
        GuestGdtrLimit = 0x4810,
        GuestIdtrLimit = 0x4812,
        GuestEsAccessRights = 0x4814,
        GuestCsAccessRights = 0x4816,
        GuestSsAccessRights = 0x4818,
        GuestDsAccessRights = 0x481a,
        GuestFsAccessRights = 0x481c,
        GuestGsAccessRights = 0x481e,
        GuestLdtrAccessRights = 0x4820,
        GuestTrAccessRights = 0x4822,
        /// Guest interruptibility state (§25.4.2, Table 25-3).
        GuestInterruptibility = 0x4824,
        GuestActivityState = 0x4826,
        GuestSysenterCs = 0x482a,
        PreemptionTimerValue = 0x482e,
        HostSysenterCs = 0x4c00,
    }
);

vmcs_fields!(
    /// Read-only 32-bit exit information (SDM Vol. 3D §B.3.3).
    ReadOnly32, Width::Bits32, {
        VmInstructionError = 0x4400,
        ExitReason = 0x4402,
        ExitInterruptionInfo = 0x4404,
        ExitInterruptionErrorCode = 0x4406,
        IdtVectoringInfo = 0x4408,
        IdtVectoringErrorCode = 0x440a,
        ExitInstructionLength = 0x440c,
        ExitInstructionInfo = 0x440e,
    }
);

vmcs_fields!(
    /// Natural-width fields (SDM Vol. 3D §B.4).
    FieldNat, Width::Natural, {
        Cr0GuestHostMask = 0x6000,
        Cr4GuestHostMask = 0x6002,
        Cr0ReadShadow = 0x6004,
        Cr4ReadShadow = 0x6006,
        GuestCr0 = 0x6800,
        GuestCr3 = 0x6802,
        GuestCr4 = 0x6804,
        GuestEsBase = 0x6806,
        GuestCsBase = 0x6808,
        GuestSsBase = 0x680a,
        GuestDsBase = 0x680c,
        GuestFsBase = 0x680e,
        GuestGsBase = 0x6810,
        GuestLdtrBase = 0x6812,
        GuestTrBase = 0x6814,
        GuestGdtrBase = 0x6816,
        GuestIdtrBase = 0x6818,
        GuestDr7 = 0x681a,
        GuestRsp = 0x681c,
        GuestRip = 0x681e,
        GuestRflags = 0x6820,
        GuestPendingDebugExceptions = 0x6822,
        GuestSysenterEsp = 0x6824,
        GuestSysenterEip = 0x6826,
        HostCr0 = 0x6c00,
        HostCr3 = 0x6c02,
        HostCr4 = 0x6c04,
        HostFsBase = 0x6c06,
        HostGsBase = 0x6c08,
        HostTrBase = 0x6c0a,
        HostGdtrBase = 0x6c0c,
        HostIdtrBase = 0x6c0e,
        HostSysenterEsp = 0x6c10,
        HostSysenterEip = 0x6c12,
        HostRsp = 0x6c14,
        HostRip = 0x6c16,
    }
);

vmcs_fields!(
    /// Read-only natural-width exit information (SDM Vol. 3D §B.4.2).
    ReadOnlyNat, Width::Natural, {
        ExitQualification = 0x6400,
        GuestLinearAddress = 0x640a,
    }
);

/// VMREAD of `encoding` from the current VMCS.
fn vmread(encoding: u32) -> Result<u64, VmxError> {
    let value: u64;
    let (cf, zf): (u8, u8);
    // SAFETY: VMREAD only reads the current VMCS into a register; it reports a
    // missing VMCS or bad encoding through RFLAGS. The hypervisor only runs this
    // in VMX root operation (after `enable_cpu`), where it cannot fault.
    unsafe {
        asm!("vmread {v}, {e}", "setc {cf}", "setz {zf}",
            e = in(reg) u64::from(encoding), v = out(reg) value, cf = out(reg_byte) cf, zf = out(reg_byte) zf,
            options(nostack, readonly));
    }
    check(cf, zf).map(|()| value)
}

/// VMWRITE of `value` to `encoding` in the current VMCS.
///
/// # Safety
/// Host-state and control fields decide where and how the CPU resumes the host at
/// the next VM exit; the caller must write values that keep the host intact.
unsafe fn vmwrite(encoding: u32, value: u64) -> Result<(), VmxError> {
    let (cf, zf): (u8, u8);
    // SAFETY: the caller vouches for the value; VMWRITE reports failure in RFLAGS.
    unsafe {
        asm!("vmwrite {e}, {v}", "setc {cf}", "setz {zf}",
            e = in(reg) u64::from(encoding), v = in(reg) value, cf = out(reg_byte) cf, zf = out(reg_byte) zf,
            options(nostack));
    }
    check(cf, zf)
}

pub fn read16(f: Field16) -> Result<u16, VmxError> {
    vmread(f as u32).map(|v| v as u16)
}
pub fn read32(f: ReadOnly32) -> Result<u32, VmxError> {
    vmread(f as u32).map(|v| v as u32)
}
pub fn read32_rw(f: Field32) -> Result<u32, VmxError> {
    vmread(f as u32).map(|v| v as u32)
}
pub fn read64_rw(f: Field64) -> Result<u64, VmxError> {
    vmread(f as u32)
}
pub fn read64(f: ReadOnly64) -> Result<u64, VmxError> {
    vmread(f as u32)
}
pub fn read_nat(f: FieldNat) -> Result<u64, VmxError> {
    vmread(f as u32)
}
pub fn read_ro_nat(f: ReadOnlyNat) -> Result<u64, VmxError> {
    vmread(f as u32)
}

/// # Safety
/// See `vmwrite`.
pub unsafe fn write16(f: Field16, v: u16) -> Result<(), VmxError> {
    // SAFETY: forwarded to the caller.
    unsafe { vmwrite(f as u32, u64::from(v)) }
}
/// # Safety
/// See `vmwrite`.
pub unsafe fn write32(f: Field32, v: u32) -> Result<(), VmxError> {
    // SAFETY: forwarded to the caller.
    unsafe { vmwrite(f as u32, u64::from(v)) }
}
/// # Safety
/// See `vmwrite`.
pub unsafe fn write64(f: Field64, v: u64) -> Result<(), VmxError> {
    // SAFETY: forwarded to the caller.
    unsafe { vmwrite(f as u32, v) }
}
/// # Safety
/// See `vmwrite`.
pub unsafe fn write_nat(f: FieldNat, v: u64) -> Result<(), VmxError> {
    // SAFETY: forwarded to the caller.
    unsafe { vmwrite(f as u32, v) }
}

/// VMXON with the region at physical `region` (SDM Vol. 3C §31.3 "VMXON").
///
/// # Safety
/// `region` must be a 4 KiB-aligned frame owned by this CPU for as long as it
/// stays in VMX operation, holding the VMCS revision identifier; CR0/CR4 must
/// satisfy the VMX fixed bits.
pub unsafe fn vmxon(region: u64) -> Result<(), VmxError> {
    let (cf, zf): (u8, u8);
    // SAFETY: the caller's contract; the operand is the address of the pointer.
    unsafe {
        asm!("vmxon [{p}]", "setc {cf}", "setz {zf}", p = in(reg) &region,
            cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
    }
    // No current VMCS yet, so VMfailValid has no error to read.
    if cf != 0 || zf != 0 {
        return Err(if cf != 0 { VmxError::FailInvalid } else { VmxError::FailValid(0) });
    }
    Ok(())
}

/// VMCLEAR: writes the VMCS at `vmcs` back to memory and marks it clear and
/// not current (SDM Vol. 3C §31.3).
///
/// # Safety
/// `vmcs` must be a VMCS region owned by the caller.
pub unsafe fn vmclear(vmcs: u64) -> Result<(), VmxError> {
    let (cf, zf): (u8, u8);
    // SAFETY: the caller's contract.
    unsafe {
        asm!("vmclear [{p}]", "setc {cf}", "setz {zf}", p = in(reg) &vmcs,
            cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
    }
    check(cf, zf)
}

/// VMPTRLD: makes the VMCS at `vmcs` current on this CPU (SDM Vol. 3C §31.3).
///
/// # Safety
/// `vmcs` must be a VMCS region owned by the caller, initialised with the
/// revision identifier, and not current on any other CPU.
pub unsafe fn vmptrld(vmcs: u64) -> Result<(), VmxError> {
    let (cf, zf): (u8, u8);
    // SAFETY: the caller's contract.
    unsafe {
        asm!("vmptrld [{p}]", "setc {cf}", "setz {zf}", p = in(reg) &vmcs,
            cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack));
    }
    check(cf, zf)
}

/// INVEPT types (SDM Vol. 3C §31.3 "INVEPT").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum InveptType {
    SingleContext = 1,
    AllContexts = 2,
}

/// INVVPID types (SDM Vol. 3C §31.3 "INVVPID").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum InvvpidType {
    SingleContext = 1,
    AllContexts = 2,
}

/// The 128-bit INVEPT / INVVPID descriptor.
#[repr(C, align(16))]
struct InvDescriptor([u64; 2]);
const _: () = assert!(core::mem::size_of::<InvDescriptor>() == 16);

/// Drops cached EPT-derived translations for `eptp` (or all, per `kind`).
pub fn invept(kind: InveptType, eptp: u64) -> Result<(), VmxError> {
    let desc = InvDescriptor([eptp, 0]);
    let (cf, zf): (u8, u8);
    // SAFETY: INVEPT only invalidates TLB entries; the descriptor is valid memory.
    unsafe {
        asm!("invept {t}, [{d}]", "setc {cf}", "setz {zf}", t = in(reg) kind as u64, d = in(reg) &desc,
            cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack, readonly));
    }
    check(cf, zf)
}

/// Drops cached translations tagged `vpid` (or all, per `kind`).
pub fn invvpid(kind: InvvpidType, vpid: u16) -> Result<(), VmxError> {
    let desc = InvDescriptor([u64::from(vpid), 0]);
    let (cf, zf): (u8, u8);
    // SAFETY: INVVPID only invalidates TLB entries; the descriptor is valid memory.
    unsafe {
        asm!("invvpid {t}, [{d}]", "setc {cf}", "setz {zf}", t = in(reg) kind as u64, d = in(reg) &desc,
            cf = out(reg_byte) cf, zf = out(reg_byte) zf, options(nostack, readonly));
    }
    check(cf, zf)
}
