//! Pure VT-x encodings and decoders, kept free of `cfg` and of VMX instructions so
//! they are unit-tested on the host. `arch::x86_64::vmx` reads the raw values from
//! the VMCS and capability MSRs and hands them here.
//!
//! References are to the Intel SDM, Vol. 3C (order no. 326019), and Vol. 3D
//! Appendices A (capability MSRs) and C (exit reasons).

use crate::mem::GuestPhysAddr;
use crate::virt::{Access, Insn, VmExit};

// ---------------------------------------------------------------------------
// Capability MSRs and control adjustment (SDM Vol. 3D App. A.3-A.5)
// ---------------------------------------------------------------------------

/// The allowed settings of one 32-bit VMX control field, as a capability MSR
/// reports them: bits set in `must_be_1` (the MSR's low half, "allowed-0
/// settings") are fixed to 1, bits clear in `may_be_1` (the high half,
/// "allowed-1 settings") are fixed to 0 (SDM Vol. 3D §A.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllowedBits {
    pub must_be_1: u32,
    pub may_be_1: u32,
}

impl AllowedBits {
    pub const fn from_msr(msr: u64) -> Self {
        Self { must_be_1: msr as u32, may_be_1: (msr >> 32) as u32 }
    }

    /// The control value with every bit of `required`, those bits of `optional`
    /// the CPU allows, and every bit the CPU forces on. `Err` carries the
    /// required bits the CPU cannot set.
    pub const fn adjust(self, required: u32, optional: u32) -> Result<u32, u32> {
        let missing = required & !self.may_be_1;
        if missing != 0 {
            return Err(missing);
        }
        Ok((required | (optional & self.may_be_1) | self.must_be_1) & self.may_be_1)
    }

    /// Whether `bits` may all be set.
    pub const fn allows(self, bits: u32) -> bool {
        bits & !self.may_be_1 == 0
    }
}

/// CR0/CR4 values with the VMX-fixed bits applied: bits set in `fixed0` must be
/// 1, bits clear in `fixed1` must be 0 (SDM Vol. 3D §A.7, §A.8).
pub const fn apply_fixed_bits(value: u64, fixed0: u64, fixed1: u64) -> u64 {
    (value | fixed0) & fixed1
}

/// IA32_VMX_BASIC fields (SDM Vol. 3D §A.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmxBasic(pub u64);

impl VmxBasic {
    /// Memory type WB for the VMCS region (bits 53:50).
    pub const MEMORY_TYPE_WB: u64 = 6;

    /// The VMCS revision identifier, bits 30:0.
    pub const fn revision(self) -> u32 {
        self.0 as u32 & 0x7fff_ffff
    }
    /// Bytes to allocate for a VMXON or VMCS region, bits 44:32 (at most 4 KiB).
    pub const fn region_size(self) -> u32 {
        (self.0 >> 32) as u32 & 0x1fff
    }
    /// Bit 48: VMX structures limited to 32-bit physical addresses.
    pub const fn phys_addr_32bit(self) -> bool {
        self.0 & (1 << 48) != 0
    }
    pub const fn memory_type(self) -> u64 {
        (self.0 >> 50) & 0xf
    }
    /// Bit 55: the IA32_VMX_TRUE_*_CTLS MSRs exist and must be used.
    pub const fn has_true_controls(self) -> bool {
        self.0 & (1 << 55) != 0
    }
}

/// IA32_VMX_EPT_VPID_CAP bits (SDM Vol. 3D §A.10).
pub mod ept_vpid_cap {
    pub const PAGE_WALK_4: u64 = 1 << 6;
    pub const MEMORY_TYPE_WB: u64 = 1 << 14;
    pub const PAGE_2M: u64 = 1 << 16;
    pub const PAGE_1G: u64 = 1 << 17;
    pub const INVEPT: u64 = 1 << 20;
    pub const ACCESSED_DIRTY: u64 = 1 << 21;
    pub const INVEPT_SINGLE_CONTEXT: u64 = 1 << 25;
    pub const INVEPT_ALL_CONTEXT: u64 = 1 << 26;
    pub const INVVPID: u64 = 1 << 32;
    pub const INVVPID_SINGLE_CONTEXT: u64 = 1 << 41;
    pub const INVVPID_ALL_CONTEXT: u64 = 1 << 42;

    /// Checks what Oxen's EPT tables and flushes rely on.
    pub const fn check(cap: u64) -> Result<(), &'static str> {
        if cap & PAGE_WALK_4 == 0 {
            return Err("EPT lacks 4-level page walks");
        }
        if cap & MEMORY_TYPE_WB == 0 {
            return Err("EPT lacks write-back paging structures");
        }
        if cap & PAGE_2M == 0 {
            return Err("EPT lacks 2 MiB pages");
        }
        if cap & INVEPT == 0 || cap & (INVEPT_SINGLE_CONTEXT | INVEPT_ALL_CONTEXT) == 0 {
            return Err("no usable INVEPT");
        }
        if cap & INVVPID == 0 || cap & (INVVPID_SINGLE_CONTEXT | INVVPID_ALL_CONTEXT) == 0 {
            return Err("no usable INVVPID");
        }
        Ok(())
    }
}

/// The EPT pointer for a 4-level table at `root`: WB paging structures, walk
/// length 4 encoded as 3, no accessed/dirty flags (SDM Vol. 3C §25.6.11).
pub const fn ept_pointer(root: u64) -> u64 {
    const MEMORY_TYPE_WB: u64 = 6;
    const WALK_LENGTH_SHIFT: u64 = 3;
    (root & !0xfff) | MEMORY_TYPE_WB | ((4 - 1) << WALK_LENGTH_SHIFT)
}

/// VM entry checks guest segment bases, SYSENTER_ESP/EIP and MSR-load values
/// for this (SDM Vol. 3C §27.3.1).
pub use crate::mem::addr::is_canonical;

/// Whether every entry of a PAT value is a valid memory type (0, 1, 4-7);
/// VM entry checks the guest PAT for this (SDM Vol. 3C §27.3.1.1).
pub const fn pat_valid(pat: u64) -> bool {
    let mut i = 0;
    while i < 8 {
        if !matches!((pat >> (i * 8)) as u8, 0 | 1 | 4 | 5 | 6 | 7) {
            return false;
        }
        i += 1;
    }
    true
}

// ---------------------------------------------------------------------------
// Segment access rights in the VMCS (SDM Vol. 3C §25.4.1, Table 25-2)
// ---------------------------------------------------------------------------

/// Guest segment access-rights bits as the VMCS encodes them (the descriptor's
/// bits 47:40 and 55:52 packed into 15:0, plus the "unusable" bit 16).
pub mod access_rights {
    /// Segment type, bits 3:0 (SDM Vol. 3A §3.4.5.1).
    pub const TYPE_DATA_RW_ACCESSED: u32 = 0x3;
    pub const TYPE_CODE_RX_ACCESSED: u32 = 0xb;
    pub const TYPE_TSS_BUSY_32: u32 = 0xb;
    /// S: code or data (not system) segment.
    pub const CODE_OR_DATA: u32 = 1 << 4;
    pub const DPL_SHIFT: u32 = 5;
    pub const PRESENT: u32 = 1 << 7;
    /// L: 64-bit code segment.
    pub const LONG_MODE: u32 = 1 << 13;
    /// D/B: 32-bit default operand size / stack.
    pub const DEFAULT_32: u32 = 1 << 14;
    /// G: limit in 4 KiB units.
    pub const GRANULARITY_4K: u32 = 1 << 15;
    /// The register holds no usable segment.
    pub const UNUSABLE: u32 = 1 << 16;

    /// Real-mode code: present, readable, accessed (0x9b).
    pub const REAL_CODE: u32 = PRESENT | CODE_OR_DATA | TYPE_CODE_RX_ACCESSED;
    /// Real-mode data and stack: present, writable, accessed (0x93).
    pub const REAL_DATA: u32 = PRESENT | CODE_OR_DATA | TYPE_DATA_RW_ACCESSED;
    /// 64-bit code, 4 KiB granular (0xa09b).
    pub const LONG_CODE: u32 = REAL_CODE | LONG_MODE | GRANULARITY_4K;
    /// Flat 32-bit data, 4 KiB granular (0xc093).
    pub const FLAT_DATA: u32 = REAL_DATA | DEFAULT_32 | GRANULARITY_4K;
    /// Busy 32-bit/64-bit TSS (0x8b); VM entry requires a busy TSS in TR.
    pub const TSS_BUSY: u32 = PRESENT | TYPE_TSS_BUSY_32;

    /// The DPL field; for SS it is the CPL (SDM Vol. 3C §25.4.1).
    pub const fn dpl(ar: u32) -> u8 {
        ((ar >> DPL_SHIFT) & 3) as u8
    }
}

// ---------------------------------------------------------------------------
// Exit reasons (SDM Vol. 3D Appendix C) and exit information (§28.2)
// ---------------------------------------------------------------------------

macro_rules! exit_reasons {
    ($($(#[$doc:meta])* $name:ident = $value:literal,)*) => {
        /// Basic exit reasons, bits 15:0 of the exit-reason field (SDM Vol. 3D App. C).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(u16)]
        pub enum ExitReason {
            $($(#[$doc])* $name = $value,)*
        }

        impl ExitReason {
            pub const fn from_raw(raw: u16) -> Option<Self> {
                match raw {
                    $($value => Some(Self::$name),)*
                    _ => None,
                }
            }
        }
    };
}

exit_reasons! {
    /// An exception or NMI the exception bitmap / NMI exiting intercepts.
    ExceptionOrNmi = 0,
    ExternalInterrupt = 1,
    TripleFault = 2,
    InitSignal = 3,
    StartupIpi = 4,
    InterruptWindow = 7,
    NmiWindow = 8,
    TaskSwitch = 9,
    Cpuid = 10,
    Getsec = 11,
    Hlt = 12,
    Invd = 13,
    Invlpg = 14,
    Rdpmc = 15,
    Rdtsc = 16,
    Rsm = 17,
    Vmcall = 18,
    Vmclear = 19,
    Vmlaunch = 20,
    Vmptrld = 21,
    Vmptrst = 22,
    Vmread = 23,
    Vmresume = 24,
    Vmwrite = 25,
    Vmxoff = 26,
    Vmxon = 27,
    ControlRegisterAccess = 28,
    MovDr = 29,
    IoInstruction = 30,
    Rdmsr = 31,
    Wrmsr = 32,
    /// VM entry failed its guest-state checks (§27.3.1).
    EntryFailInvalidGuestState = 33,
    EntryFailMsrLoading = 34,
    Mwait = 36,
    MonitorTrapFlag = 37,
    Monitor = 39,
    Pause = 40,
    EntryFailMachineCheck = 41,
    TprBelowThreshold = 43,
    ApicAccess = 44,
    VirtualizedEoi = 45,
    GdtrIdtrAccess = 46,
    LdtrTrAccess = 47,
    EptViolation = 48,
    EptMisconfiguration = 49,
    Invept = 50,
    Rdtscp = 51,
    PreemptionTimerExpired = 52,
    Invvpid = 53,
    Wbinvd = 54,
    Xsetbv = 55,
    ApicWrite = 56,
    Rdrand = 57,
    Invpcid = 58,
    Vmfunc = 59,
    Encls = 60,
    Rdseed = 61,
    PmlFull = 62,
    Xsaves = 63,
    Xrstors = 64,
}

/// Bit 31 of the exit-reason field: VM entry failed (SDM Vol. 3C §25.9.1).
pub const EXIT_REASON_ENTRY_FAILURE: u32 = 1 << 31;

/// `VmExit::Unsupported::reason` when VMLAUNCH/VMRESUME itself failed
/// (VMfailValid/VMfailInvalid, SDM Vol. 3C §31.4) rather than exiting: not a
/// real exit reason. `info` is then the VM-instruction error (§31.4), or 0
/// for VMfailInvalid.
pub const REASON_ENTRY_INSTRUCTION_FAILED: u64 = 0xffff_ffff;

/// Exit qualification of an I/O instruction (SDM Vol. 3C §28.2.1, Table 28-5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoQualification(pub u64);

impl IoQualification {
    const SIZE_MASK: u64 = 0x7;
    const DIRECTION_IN: u64 = 1 << 3;
    const STRING: u64 = 1 << 4;
    const REP: u64 = 1 << 5;
    const PORT_SHIFT: u64 = 16;

    /// Access size in bytes: the field holds size - 1 (0, 1 or 3).
    pub const fn size(self) -> u8 {
        (self.0 & Self::SIZE_MASK) as u8 + 1
    }
    pub const fn is_in(self) -> bool {
        self.0 & Self::DIRECTION_IN != 0
    }
    pub const fn string(self) -> bool {
        self.0 & Self::STRING != 0
    }
    pub const fn rep(self) -> bool {
        self.0 & Self::REP != 0
    }
    pub const fn port(self) -> u16 {
        (self.0 >> Self::PORT_SHIFT) as u16
    }
}

/// Exit qualification of an EPT violation (SDM Vol. 3C §28.2.1, Table 28-7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EptViolationQualification(pub u64);

impl EptViolationQualification {
    const READ: u64 = 1 << 0;
    const WRITE: u64 = 1 << 1;
    const FETCH: u64 = 1 << 2;

    pub fn access(self) -> Access {
        let mut a = Access::empty();
        if self.0 & Self::READ != 0 {
            a |= Access::READ;
        }
        if self.0 & Self::WRITE != 0 {
            a |= Access::WRITE;
        }
        if self.0 & Self::FETCH != 0 {
            a |= Access::EXEC;
        }
        a
    }
}

/// Interruption type in bits 10:8 of the interruption-information fields
/// (SDM Vol. 3C §25.8.3, §25.9.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum InterruptionType {
    ExternalInterrupt = 0,
    Nmi = 2,
    HardwareException = 3,
    SoftwareInterrupt = 4,
    PrivilegedSoftwareException = 5,
    SoftwareException = 6,
    Other = 7,
}

/// The VM-exit interruption-information, IDT-vectoring-information and
/// VM-entry interruption-information fields share this layout
/// (SDM Vol. 3C §25.8.3, §25.9.2, §25.9.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptionInfo(pub u32);

impl InterruptionInfo {
    const VECTOR_MASK: u32 = 0xff;
    const TYPE_SHIFT: u32 = 8;
    const TYPE_MASK: u32 = 0x7;
    const ERROR_CODE_VALID: u32 = 1 << 11;
    const VALID: u32 = 1 << 31;

    pub const fn new(vector: u8, kind: InterruptionType, deliver_error_code: bool) -> Self {
        let mut v = Self::VALID | (vector as u32) | ((kind as u32) << Self::TYPE_SHIFT);
        if deliver_error_code {
            v |= Self::ERROR_CODE_VALID;
        }
        Self(v)
    }

    pub const fn valid(self) -> bool {
        self.0 & Self::VALID != 0
    }
    pub const fn vector(self) -> u8 {
        (self.0 & Self::VECTOR_MASK) as u8
    }
    pub const fn kind(self) -> InterruptionType {
        match (self.0 >> Self::TYPE_SHIFT) & Self::TYPE_MASK {
            0 => InterruptionType::ExternalInterrupt,
            2 => InterruptionType::Nmi,
            3 => InterruptionType::HardwareException,
            4 => InterruptionType::SoftwareInterrupt,
            5 => InterruptionType::PrivilegedSoftwareException,
            6 => InterruptionType::SoftwareException,
            _ => InterruptionType::Other,
        }
    }
    pub const fn error_code_valid(self) -> bool {
        self.0 & Self::ERROR_CODE_VALID != 0
    }
    /// Software-generated events need the instruction length at re-injection
    /// (SDM Vol. 3C §27.6.1.3).
    pub const fn needs_instruction_length(self) -> bool {
        matches!(
            self.kind(),
            InterruptionType::SoftwareInterrupt
                | InterruptionType::PrivilegedSoftwareException
                | InterruptionType::SoftwareException
        )
    }
    /// The value to write to the VM-entry interruption-information field to
    /// re-deliver an event that an exit interrupted: bits 30:12 are reserved there.
    pub const fn for_reinjection(self) -> Self {
        Self(self.0 & (Self::VALID | Self::ERROR_CODE_VALID | (Self::TYPE_MASK << Self::TYPE_SHIFT) | Self::VECTOR_MASK))
    }
}

/// NMI is vector 2 and has its own interruption type.
pub const NMI_VECTOR: u8 = 2;
/// Vectors 0-31 are exceptions.
pub const FIRST_EXTERNAL_VECTOR: u8 = 32;

/// Whether the CPU delivers an error code with exception `vector` in protected
/// or long mode; VM entry requires "deliver error code" to match exactly, and
/// forbids it in real mode (SDM Vol. 3C §27.2.1.3).
pub const fn exception_has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17)
}

/// The VM-entry interruption information to deliver exception `vector` to a
/// guest whose CR0.PE is `protected`, with the error code VM entry will accept.
/// Garbage from a caller (a bogus vector, an error code where none exists)
/// is fixed up here rather than failing the entry.
pub fn exception_injection(vector: u8, error_code: Option<u32>, protected: bool) -> (InterruptionInfo, Option<u32>) {
    if vector == NMI_VECTOR {
        return (InterruptionInfo::new(vector, InterruptionType::Nmi, false), None);
    }
    if vector >= FIRST_EXTERNAL_VECTOR {
        return (InterruptionInfo::new(vector, InterruptionType::ExternalInterrupt, false), None);
    }
    let code = (protected && exception_has_error_code(vector)).then_some(error_code.unwrap_or(0));
    (InterruptionInfo::new(vector, InterruptionType::HardwareException, code.is_some()), code)
}

/// What the exit-reason-dependent VMCS fields held at one exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawExit {
    /// The full exit-reason field (SDM Vol. 3C §25.9.1).
    pub reason: u32,
    pub qualification: u64,
    /// VM-exit interruption information (exception and interrupt exits).
    pub interruption_info: u32,
    pub interruption_error_code: u32,
    /// Guest-physical address (EPT violations).
    pub guest_physical_address: u64,
    /// Guest RAX, RCX, RDX (MSR exits, CPUID).
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
}

/// A control-register access exit's qualification (SDM Vol. 3C §28.2.1,
/// Table 28-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrAccess(pub u64);

impl CrAccess {
    pub const MOV_TO_CR: u8 = 0;
    /// The control register (0, 3, 4 or 8).
    pub const fn cr(self) -> u8 {
        (self.0 & 0xf) as u8
    }
    /// 0 MOV to CR, 1 MOV from CR, 2 CLTS, 3 LMSW.
    pub const fn kind(self) -> u8 {
        ((self.0 >> 4) & 3) as u8
    }
    /// The general-purpose register of a MOV (0 RAX ... 15 R15).
    pub const fn gpr(self) -> u8 {
        ((self.0 >> 8) & 0xf) as u8
    }
}

use crate::virt::state::{EFER_LMA, EFER_LME};
use x86_64::registers::control::{Cr0Flags, Cr4Flags};
const CR0_PE: u64 = Cr0Flags::PROTECTED_MODE_ENABLE.bits();
const CR0_NW: u64 = Cr0Flags::NOT_WRITE_THROUGH.bits();
const CR0_CD: u64 = Cr0Flags::CACHE_DISABLE.bits();
const CR0_PG: u64 = Cr0Flags::PAGING.bits();
const CR4_PAE: u64 = Cr4Flags::PHYSICAL_ADDRESS_EXTENSION.bits();

/// A guest's MOV to CR0 that exited because it changes a bit the guest/host
/// mask keeps the hypervisor's (the ones VMX operation fixes; §25.6.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cr0Write {
    /// What CR0 really holds: `value` with the fixed bits VMX needs.
    pub real: u64,
    /// What the guest reads back: `value`.
    pub shadow: u64,
    /// The new EFER.LMA (and "IA-32e mode guest" entry control) when paging
    /// turns on with EFER.LME or off in long mode (SDM Vol. 3A §10.8.5).
    pub lma: Option<bool>,
}

/// Checks a guest's CR0 value as MOV to CR0 does (None: #GP; SDM Vol. 3A
/// §2.5 and the MOV CR instruction) and says what to load. `fixed0`/`fixed1`
/// are IA32_VMX_CR0_FIXED0/1; PE and PG are the guest's own (unrestricted
/// guest), CD and NW are never checked at VM entry (§27.3.1.1).
pub fn mov_to_cr0(value: u64, old_real: u64, efer: u64, cr4: u64, fixed0: u64, fixed1: u64) -> Option<Cr0Write> {
    if value >> 32 != 0 || (value & CR0_PG != 0 && value & CR0_PE == 0) || (value & CR0_NW != 0 && value & CR0_CD == 0) {
        return None;
    }
    let paging_on = value & CR0_PG != 0 && old_real & CR0_PG == 0;
    let paging_off = value & CR0_PG == 0 && old_real & CR0_PG != 0;
    if paging_on && efer & EFER_LME != 0 && cr4 & CR4_PAE == 0 {
        return None;
    }
    let lma = if paging_on && efer & EFER_LME != 0 {
        Some(true)
    } else if paging_off && efer & EFER_LMA != 0 {
        Some(false)
    } else {
        None
    };
    let forced = fixed0 & !(CR0_PE | CR0_PG);
    Some(Cr0Write { real: (value | forced) & (fixed1 | CR0_CD | CR0_NW), shadow: value, lma })
}

/// One exit, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// For the common code.
    Exit(VmExit),
    /// A host interrupt arrived while the guest ran: the backend handles it and
    /// re-enters. `vector` is set when the CPU acknowledged the interrupt on exit.
    ExternalInterrupt { vector: Option<u8> },
    /// A physical NMI arrived while the guest ran (NMI exiting): the host's.
    Nmi,
    /// VM entry failed after loading guest state: the guest cannot run.
    EntryFailure { reason: ExitReason, qualification: u64 },
    /// A control-register access the guest/host masks made exit: the
    /// backend emulates it (`mov_to_cr0`).
    CrAccess(CrAccess),
}

impl RawExit {
    /// The basic exit reason, bits 15:0.
    pub const fn basic_reason(&self) -> u16 {
        self.reason as u16
    }

    pub fn decode(&self) -> Decoded {
        let unsupported = Decoded::Exit(VmExit::Unsupported { reason: u64::from(self.reason), info: self.qualification });
        let Some(reason) = ExitReason::from_raw(self.basic_reason()) else {
            return unsupported;
        };
        if self.reason & EXIT_REASON_ENTRY_FAILURE != 0 {
            return Decoded::EntryFailure { reason, qualification: self.qualification };
        }
        let exit = match reason {
            ExitReason::ExternalInterrupt => {
                let info = InterruptionInfo(self.interruption_info);
                return Decoded::ExternalInterrupt { vector: info.valid().then(|| info.vector()) };
            }
            ExitReason::ExceptionOrNmi => {
                let info = InterruptionInfo(self.interruption_info);
                if !info.valid() {
                    return unsupported;
                }
                if info.kind() == InterruptionType::Nmi {
                    return Decoded::Nmi;
                }
                VmExit::Exception {
                    vector: info.vector(),
                    error_code: info.error_code_valid().then_some(self.interruption_error_code),
                }
            }
            ExitReason::TripleFault => VmExit::TripleFault,
            ExitReason::Cpuid => VmExit::Cpuid { leaf: self.rax as u32, subleaf: self.rcx as u32 },
            ExitReason::Xsetbv => {
                VmExit::Xsetbv { xcr: self.rcx as u32, value: ((self.rdx & 0xffff_ffff) << 32) | (self.rax & 0xffff_ffff) }
            }
            ExitReason::Hlt => VmExit::Hlt,
            ExitReason::Vmcall => VmExit::Hypercall,
            ExitReason::IoInstruction => {
                let q = IoQualification(self.qualification);
                VmExit::Io { port: q.port(), size: q.size(), write: !q.is_in(), string: q.string(), rep: q.rep() }
            }
            ExitReason::Rdmsr => VmExit::MsrRead { msr: self.rcx as u32 },
            ExitReason::Wrmsr => VmExit::MsrWrite {
                msr: self.rcx as u32,
                value: (self.rdx << 32) | (self.rax & 0xffff_ffff),
            },
            ExitReason::EptViolation => VmExit::NestedPageFault {
                gpa: GuestPhysAddr::new(self.guest_physical_address),
                access: EptViolationQualification(self.qualification).access(),
            },
            ExitReason::PreemptionTimerExpired => VmExit::Preempted,
            // The VMX instructions exit at every CPL (SDM Vol. 3C §26.1.2);
            // VMFUNC only with a function the VMCS does not enable, and GETSEC
            // (SMX, which guests are not given) always.
            ExitReason::Vmclear
            | ExitReason::Vmlaunch
            | ExitReason::Vmptrld
            | ExitReason::Vmptrst
            | ExitReason::Vmread
            | ExitReason::Vmresume
            | ExitReason::Vmwrite
            | ExitReason::Vmxoff
            | ExitReason::Vmxon
            | ExitReason::Invept
            | ExitReason::Invvpid
            | ExitReason::Vmfunc
            | ExitReason::Getsec => VmExit::Instruction(Insn::Virtualization),
            ExitReason::Invd => VmExit::Instruction(Insn::Invd),
            ExitReason::Wbinvd => VmExit::Instruction(Insn::Wbinvd),
            ExitReason::Monitor => VmExit::Instruction(Insn::Monitor),
            ExitReason::Mwait => VmExit::Instruction(Insn::Mwait),
            ExitReason::Rdpmc => VmExit::Instruction(Insn::Rdpmc),
            ExitReason::InterruptWindow => VmExit::InterruptWindow,
            ExitReason::ControlRegisterAccess => return Decoded::CrAccess(CrAccess(self.qualification)),
            _ => return unsupported,
        };
        Decoded::Exit(exit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cr_access_qualification() {
        // MOV to CR0 from RAX; MOV to CR4 from RBX (Table 28-3).
        assert_eq!(decode(28, 0x0), Decoded::CrAccess(CrAccess(0)));
        let q = CrAccess(0x304);
        assert_eq!((q.cr(), q.kind(), q.gpr()), (4, CrAccess::MOV_TO_CR, 3));
        assert_eq!(CrAccess(0x30).kind(), 3);
    }

    #[test]
    fn mov_to_cr0_as_the_cpu_checks_it() {
        // Skylake's fixed bits: PE, NE, PG must be 1; all may be 1.
        let (f0, f1) = (0x8000_0021, 0xffff_ffff);
        // Linux's way to real mode (arch/x86/realmode/rm/reboot.S): paging
        // already off, then CD|NW on and NE off: NE stays set underneath,
        // the guest reads its own value back.
        let w = mov_to_cr0(0x6000_0011, 0x5_0033, 0, 0x20, f0, f1).unwrap();
        assert_eq!((w.real, w.shadow, w.lma), (0x6000_0031, 0x6000_0011, None));
        // Paging on with LME: long mode becomes active; off again: inactive.
        let w = mov_to_cr0(0x8000_0011, 0x11, EFER_LME, CR4_PAE, f0, f1).unwrap();
        assert_eq!((w.real, w.lma), (0x8000_0031, Some(true)));
        let w = mov_to_cr0(0x11, 0x8000_0031, EFER_LME | EFER_LMA, CR4_PAE, f0, f1).unwrap();
        assert_eq!((w.real, w.lma), (0x31, Some(false)));
        // #GP: PG without PE, NW without CD, reserved high bits, long mode
        // without PAE.
        assert_eq!(mov_to_cr0(0x8000_0000, 0x11, 0, 0, f0, f1), None);
        assert_eq!(mov_to_cr0(0x2000_0011, 0x11, 0, 0, f0, f1), None);
        assert_eq!(mov_to_cr0(1 << 32 | 0x11, 0x11, 0, 0, f0, f1), None);
        assert_eq!(mov_to_cr0(0x8000_0011, 0x11, EFER_LME, 0, f0, f1), None);
    }

    #[test]
    fn adjust_applies_fixed_bits_and_reports_missing() {
        // Bits 1, 2 forced on; bits 0-7 and 31 allowed.
        let a = AllowedBits::from_msr(0x8000_00ff_0000_0006);
        assert_eq!(a.adjust(1 << 7, 0), Ok(0x86));
        assert_eq!(a.adjust(1 << 31, 1 << 20), Ok(0x8000_0006));
        assert_eq!(a.adjust((1 << 8) | 1, 0), Err(1 << 8));
        assert!(a.allows(0xff));
        assert!(!a.allows(0x100));
    }

    #[test]
    fn fixed_bits() {
        // Bochs Skylake-X: CR0_FIXED0 = 0x80000021 (PG, NE, PE), FIXED1 = all ones.
        assert_eq!(apply_fixed_bits(0x11, 0x8000_0021, 0xffff_ffff), 0x8000_0031);
        assert_eq!(apply_fixed_bits(0xf0ff, 0x2000, 0x3fff), 0x30ff);
    }

    #[test]
    fn vmx_basic() {
        // Bochs Skylake-X: revision 0x2b, 4 KiB regions, WB, TRUE controls.
        let b = VmxBasic(0x00da_1000_0000_002b);
        assert_eq!(b.revision(), 0x2b);
        assert_eq!(b.region_size(), 0x1000);
        assert_eq!(b.memory_type(), VmxBasic::MEMORY_TYPE_WB);
        assert!(b.has_true_controls());
        assert!(!b.phys_addr_32bit());
    }

    #[test]
    fn ept_caps_and_pointer() {
        use ept_vpid_cap::*;
        let good = PAGE_WALK_4 | MEMORY_TYPE_WB | PAGE_2M | INVEPT | INVEPT_SINGLE_CONTEXT | INVVPID | INVVPID_ALL_CONTEXT;
        assert_eq!(check(good), Ok(()));
        assert!(check(good & !PAGE_WALK_4).is_err());
        assert!(check(good & !INVEPT_SINGLE_CONTEXT).is_err());
        assert!(check(good & !INVVPID).is_err());
        assert_eq!(ept_pointer(0x12_3000), 0x12_301e);
    }

    #[test]
    fn canonical_and_pat() {
        assert!(is_canonical(0x0000_7fff_ffff_ffff));
        assert!(is_canonical(0xffff_8000_0000_0000));
        assert!(!is_canonical(0x0000_8000_0000_0000));
        assert!(!is_canonical(0xfff0_0000_0000_0000));
        assert!(pat_valid(0x0007_0406_0007_0406));
        assert!(!pat_valid(0x0007_0406_0007_0402));
        assert!(!pat_valid(0x0800_0000_0000_0000));
    }

    #[test]
    fn access_rights_encodings() {
        use access_rights::*;
        assert_eq!(REAL_CODE, 0x9b);
        assert_eq!(REAL_DATA, 0x93);
        assert_eq!(LONG_CODE, 0xa09b);
        assert_eq!(FLAT_DATA, 0xc093);
        assert_eq!(TSS_BUSY, 0x8b);
        assert_eq!(UNUSABLE, 0x1_0000);
        assert_eq!(dpl(0xc0f3), 3);
        assert_eq!(dpl(FLAT_DATA), 0);
    }

    #[test]
    fn io_qualification() {
        // out %al, $0xe9: size 1, OUT, immediate operand (bit 6), port 0xe9.
        let q = IoQualification(0x00e9_0040);
        assert_eq!((q.port(), q.size(), q.is_in(), q.string(), q.rep()), (0xe9, 1, false, false, false));
        // rep insw from port 0x1f0: size 2, IN, string, REP.
        let q = IoQualification(0x01f0_0039);
        assert_eq!((q.port(), q.size(), q.is_in(), q.string(), q.rep()), (0x1f0, 2, true, true, true));
        // in (%dx), %eax: size 4.
        assert_eq!(IoQualification(0xcf8_000b).size(), 4);
    }

    #[test]
    fn ept_violation_access() {
        assert_eq!(EptViolationQualification(0x181).access(), Access::READ);
        assert_eq!(EptViolationQualification(0x182).access(), Access::WRITE);
        assert_eq!(EptViolationQualification(0x84).access(), Access::EXEC);
        assert_eq!(EptViolationQualification(0x3).access(), Access::READ | Access::WRITE);
    }

    #[test]
    fn interruption_info() {
        let i = InterruptionInfo(0x8000_0b0e); // #PF, hardware exception, error code
        assert!(i.valid() && i.error_code_valid());
        assert_eq!((i.vector(), i.kind()), (14, InterruptionType::HardwareException));
        assert_eq!(InterruptionInfo::new(14, InterruptionType::HardwareException, true), i);
        let sw = InterruptionInfo(0x8000_1403); // int3 with bit 12 set (NMI unblocking)
        assert!(sw.needs_instruction_length());
        assert_eq!(sw.for_reinjection().0, 0x8000_0403);
    }

    #[test]
    fn exception_injection_is_always_enterable() {
        // #GP in protected mode carries its code; in real mode it must not.
        assert_eq!(exception_injection(13, Some(8), true), (InterruptionInfo(0x8000_0b0d), Some(8)));
        assert_eq!(exception_injection(13, Some(8), false), (InterruptionInfo(0x8000_030d), None));
        // #UD never has one, #DF always does.
        assert_eq!(exception_injection(6, Some(1), true).1, None);
        assert_eq!(exception_injection(8, None, true), (InterruptionInfo(0x8000_0b08), Some(0)));
        assert_eq!(exception_injection(2, None, true).0.kind(), InterruptionType::Nmi);
        assert_eq!(exception_injection(0x40, None, true).0.kind(), InterruptionType::ExternalInterrupt);
    }

    fn decode(reason: u32, qualification: u64) -> Decoded {
        RawExit { reason, qualification, ..Default::default() }.decode()
    }

    #[test]
    fn decode_exits() {
        assert_eq!(decode(12, 0), Decoded::Exit(VmExit::Hlt));
        assert_eq!(decode(18, 0), Decoded::Exit(VmExit::Hypercall));
        assert_eq!(decode(2, 0), Decoded::Exit(VmExit::TripleFault));
        assert_eq!(decode(52, 0), Decoded::Exit(VmExit::Preempted));
        assert_eq!(decode(7, 0), Decoded::Exit(VmExit::InterruptWindow));
        assert_eq!(
            decode(30, 0x00f0_000b),
            Decoded::Exit(VmExit::Io { port: 0xf0, size: 4, write: false, string: false, rep: false })
        );
        let raw = RawExit { reason: 10, rax: 0xffff_ffff_4000_0000, rcx: 7, ..Default::default() };
        assert_eq!(raw.decode(), Decoded::Exit(VmExit::Cpuid { leaf: 0x4000_0000, subleaf: 7 }));
        let raw = RawExit { reason: 32, rax: 0xdead_beef_1234_5678, rcx: 0x277, rdx: 0x0007_0406, ..Default::default() };
        assert_eq!(raw.decode(), Decoded::Exit(VmExit::MsrWrite { msr: 0x277, value: 0x0007_0406_1234_5678 }));
        let raw = RawExit { reason: 48, qualification: 0x181, guest_physical_address: 0x10_0000, ..Default::default() };
        assert_eq!(
            raw.decode(),
            Decoded::Exit(VmExit::NestedPageFault { gpa: GuestPhysAddr::new(0x10_0000), access: Access::READ })
        );
        let raw = RawExit { reason: 0, interruption_info: 0x8000_0b0d, interruption_error_code: 0x18, ..Default::default() };
        assert_eq!(raw.decode(), Decoded::Exit(VmExit::Exception { vector: 13, error_code: Some(0x18) }));
        let raw = RawExit { reason: 1, interruption_info: 0x8000_0020, ..Default::default() };
        assert_eq!(raw.decode(), Decoded::ExternalInterrupt { vector: Some(0x20) });
    }

    #[test]
    fn decode_policy_instructions_and_nmi() {
        for reason in [19, 20, 21, 22, 23, 24, 25, 26, 27, 50, 53, 59, 11] {
            assert_eq!(decode(reason, 0), Decoded::Exit(VmExit::Instruction(Insn::Virtualization)), "reason {reason}");
        }
        assert_eq!(decode(13, 0), Decoded::Exit(VmExit::Instruction(Insn::Invd)));
        assert_eq!(decode(54, 0), Decoded::Exit(VmExit::Instruction(Insn::Wbinvd)));
        assert_eq!(decode(39, 0), Decoded::Exit(VmExit::Instruction(Insn::Monitor)));
        assert_eq!(decode(36, 0), Decoded::Exit(VmExit::Instruction(Insn::Mwait)));
        assert_eq!(decode(15, 0), Decoded::Exit(VmExit::Instruction(Insn::Rdpmc)));
        // NMI: vector 2, type 2.
        let raw = RawExit { reason: 0, interruption_info: 0x8000_0202, ..Default::default() };
        assert_eq!(raw.decode(), Decoded::Nmi);
        // #DB from a data breakpoint: a hardware exception, for the guest.
        let raw = RawExit { reason: 0, interruption_info: 0x8000_0301, ..Default::default() };
        assert_eq!(raw.decode(), Decoded::Exit(VmExit::Exception { vector: 1, error_code: None }));
    }

    #[test]
    fn decode_failures_and_unknown() {
        assert_eq!(
            decode(0x8000_0021, 0),
            Decoded::EntryFailure { reason: ExitReason::EntryFailInvalidGuestState, qualification: 0 }
        );
        assert_eq!(decode(49, 0), Decoded::Exit(VmExit::Unsupported { reason: 49, info: 0 }));
        // A CR access is the backend's to emulate (`mov_to_cr0`), with its qualification.
        assert_eq!(decode(28, 0x14), Decoded::CrAccess(CrAccess(0x14)));
        assert_eq!(decode(0xffff, 1), Decoded::Exit(VmExit::Unsupported { reason: 0xffff, info: 1 }));
    }
}
