//! `VmxVcpu`: one guest CPU backed by a VMCS, its set-up and the world switch.

use super::caps::{entry, pin, proc, VmxCaps};
use super::vmcs::{self, Field16, Field32, Field64, FieldNat, VmxError};
use crate::arch::x86_64::{cpu::msr, cpu::DebugRegs, cpu_id, rdmsr};
use crate::mem::{self, HostPhysAddr, PAGE_SIZE};
use crate::arch::x86_64::vmx::decode::{
    access_rights as ar, ept_pointer, exception_injection, mov_to_cr0, pat_valid, CrAccess, Decoded, InterruptionInfo,
    InterruptionType, FIRST_EXTERNAL_VECTOR, REASON_ENTRY_INSTRUCTION_FAILED,
};
use crate::virt::tlb_tag::{self, Held};
use crate::arch::x86_64::cpu::is_canonical;
use crate::virt::snapshot::{self, AuxState};
use crate::virt::state::{self, VcpuState};
use crate::virt::{GuestGprs, InitialState, Vcpu, VmExit};
use oxen_abi::vcpu_snapshot::event_kind;
use core::arch::global_asm;
use core::sync::atomic::Ordering;
use x86_64::registers::control::{Cr0Flags, Cr4Flags};

/// Frames of one vCPU, allocated together: the VMCS, I/O bitmaps A (ports
/// 0-0x7fff) and B (0x8000-0xffff), and the MSR bitmap (SDM Vol. 3C §25.6.4, §25.6.9).
const VMCS_FRAME: u64 = 0;
const IO_BITMAP_A_FRAME: u64 = 1;
const IO_BITMAP_B_FRAME: u64 = 2;
const MSR_BITMAP_FRAME: u64 = 3;
/// The guest's MSRs the VMCS has no field for: loaded at entry, stored at exit.
const MSR_AREA_FRAME: u64 = 4;
/// The virtual-APIC page behind the TPR shadow: MOV to/from CR8 reads and
/// writes its TPR (offset 0x80) instead of the physical one (§30.1.1).
const VIRTUAL_APIC_FRAME: u64 = 5;
const FRAMES: usize = 6;

/// One entry of a VM-entry MSR-load / VM-exit MSR-store area (SDM Vol. 3C §25.7.2).
#[repr(C)]
#[derive(Clone, Copy)]
struct MsrEntry {
    index: u32,
    _reserved: u32,
    value: u64,
}
const _: () = assert!(core::mem::size_of::<MsrEntry>() == 16);

/// Guest MSRs without a VMCS field. The host never uses them (no SYSCALL, no
/// SWAPGS), so the same area serves as entry-load and exit-store list and the
/// host needs no exit-load list: each guest's values round-trip through it and
/// the next guest's entry overwrites them.
/// IA32_TSC_AUX (what RDTSCP and RDPID return) comes last and only where the
/// CPU has it (`switched_msrs`): loading a missing MSR would fail VM entry.
const SWITCHED_MSRS: [u32; 6] =
    [msr::IA32_KERNEL_GS_BASE, msr::IA32_STAR, msr::IA32_LSTAR, msr::IA32_CSTAR, msr::IA32_FMASK, msr::IA32_TSC_AUX];
const _: () = assert!(SWITCHED_MSRS.len() * core::mem::size_of::<MsrEntry>() <= PAGE_SIZE as usize);

/// The MSRs this CPU switches through the load/store area.
fn switched_msrs() -> &'static [u32] {
    static HAS_TSC_AUX: spin::Once<bool> = spin::Once::new();
    if *HAS_TSC_AUX.call_once(crate::arch::x86_64::cpu::has_tsc_aux) {
        &SWITCHED_MSRS
    } else {
        &SWITCHED_MSRS[..SWITCHED_MSRS.len() - 1]
    }
}

/// Exceptions intercepted and reflected: #DB and #AC (see `exit::handle`).
const DB_VECTOR: u8 = 1;
const AC_VECTOR: u8 = 17;
const EXCEPTION_BITMAP: u32 = (1 << DB_VECTOR) | (1 << AC_VECTOR);

/// RFLAGS.IF (SDM Vol. 1 §3.4.3).
const RFLAGS_IF: u64 = 1 << 9;
/// EFER bits (SDM Vol. 3A §2.2.1).
const EFER_SCE: u64 = 1 << 0;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;
/// The EFER bits a guest may set: SCE, LME, NXE (LMA follows CR0.PG).
const EFER_GUEST_WRITABLE: u64 = EFER_SCE | EFER_LME | EFER_NXE;
/// VMCS link pointer value meaning "no shadow VMCS" (SDM Vol. 3C §25.4.2).
const NO_VMCS_LINK: u64 = u64::MAX;
/// Guest interruptibility: blocking by STI and by MOV SS (SDM Vol. 3C §25.4.2, Table 25-3).
const BLOCKING_BY_STI_OR_MOV_SS: u32 = 0b11;
/// Guest activity state "active" (SDM Vol. 3C §25.4.2).
const ACTIVITY_ACTIVE: u32 = 0;

/// Return values of `oxen_vmx_enter`.
const ENTER_EXITED: u32 = 0;
const ENTER_FAIL_INVALID: u32 = 1;
const ENTER_FAIL_VALID: u32 = 2;

// The world switch. `oxen_vmx_enter(gprs, launched)` saves the host's
// callee-saved registers and the `gprs` pointer on the stack, points HOST_RSP
// at them, loads the guest GPRs and executes VMLAUNCH (launched = 0) or
// VMRESUME. A VM exit lands at `oxen_vmx_exit` (HOST_RIP) with that stack,
// stores the guest GPRs and returns 0 from `oxen_vmx_enter`; a failed VM entry
// falls through and returns 1 (VMfailInvalid) or 2 (VMfailValid). The offsets
// follow `GuestGprs` (asserted below). A VM exit clears RFLAGS but for bit 1
// (SDM Vol. 3C §28.5.3), so the caller's RFLAGS (IF in particular) is saved
// and restored around the switch.
global_asm!(
    ".global oxen_vmx_enter",
    "oxen_vmx_enter:",
    "push rbp", "push rbx", "push r12", "push r13", "push r14", "push r15",
    "pushfq",
    "push rdi",
    "mov rax, {host_rsp}",
    "vmwrite rax, rsp",
    "jbe 3f",
    "test sil, sil",
    "mov rax, rdi",
    "mov rcx, [rax + 0x08]", "mov rdx, [rax + 0x10]", "mov rbx, [rax + 0x18]", "mov rbp, [rax + 0x20]",
    "mov rsi, [rax + 0x28]", "mov rdi, [rax + 0x30]", "mov r8, [rax + 0x38]", "mov r9, [rax + 0x40]",
    "mov r10, [rax + 0x48]", "mov r11, [rax + 0x50]", "mov r12, [rax + 0x58]", "mov r13, [rax + 0x60]",
    "mov r14, [rax + 0x68]", "mov r15, [rax + 0x70]",
    "mov rax, [rax]",
    "jnz 2f",
    "vmlaunch",
    "jmp 3f",
    "2:",
    "vmresume",
    "3:",
    "mov eax, {fail_valid}",
    "mov ecx, {fail_invalid}",
    "cmovc eax, ecx",
    "add rsp, 8",
    "popfq",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop rbx", "pop rbp",
    "ret",
    "",
    ".global oxen_vmx_exit",
    "oxen_vmx_exit:",
    "push rax",
    "mov rax, [rsp + 8]",
    "mov [rax + 0x08], rcx", "mov [rax + 0x10], rdx", "mov [rax + 0x18], rbx", "mov [rax + 0x20], rbp",
    "mov [rax + 0x28], rsi", "mov [rax + 0x30], rdi", "mov [rax + 0x38], r8", "mov [rax + 0x40], r9",
    "mov [rax + 0x48], r10", "mov [rax + 0x50], r11", "mov [rax + 0x58], r12", "mov [rax + 0x60], r13",
    "mov [rax + 0x68], r14", "mov [rax + 0x70], r15",
    "pop qword ptr [rax]",
    "add rsp, 8",
    "popfq",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop rbx", "pop rbp",
    "xor eax, eax",
    "ret",
    host_rsp = const FieldNat::HostRsp as u32,
    fail_valid = const ENTER_FAIL_VALID,
    fail_invalid = const ENTER_FAIL_INVALID,
);

const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(GuestGprs, rax) == 0x00);
    assert!(offset_of!(GuestGprs, rcx) == 0x08);
    assert!(offset_of!(GuestGprs, rbp) == 0x20);
    assert!(offset_of!(GuestGprs, rdi) == 0x30);
    assert!(offset_of!(GuestGprs, r8) == 0x38);
    assert!(offset_of!(GuestGprs, r15) == 0x70);
    assert!(ENTER_EXITED == 0);
};

extern "sysv64" {
    fn oxen_vmx_enter(gprs: *mut GuestGprs, launched: u8) -> u32;
    fn oxen_vmx_exit();
}

/// An exception to deliver at the next entry.
#[derive(Clone, Copy, Debug)]
enum PendingEvent {
    /// Asked for through `inject_exception`.
    Exception { vector: u8, error_code: Option<u32> },
    /// Asked for through `inject_interrupt`.
    Interrupt { vector: u8 },
    /// An event whose delivery a VM exit interrupted (SDM Vol. 3C §28.2.4),
    /// re-delivered as it was.
    Reinject { info: InterruptionInfo, error_code: u32, instruction_len: u32 },
}

/// `w!(write16, Field, value)`: one VMWRITE into the current VMCS, or return
/// `Err((field name, error))` from the enclosing function. Used only in
/// `unsafe fn`s whose callers made this vCPU's VMCS current; each group of
/// writes names the SDM rule its values follow.
macro_rules! w {
    ($f:ident, $field:ident, $v:expr) => {
        // SAFETY: the enclosing function's contract: the VMCS is current, and
        // the values follow the SDM rules named beside the writes.
        unsafe { vmcs::$f(vmcs_field!($f, $field), $v) }.map_err(|e| (stringify!($field), e))?
    };
}

/// The field enum a `write*` function takes.
macro_rules! vmcs_field {
    (write16, $field:ident) => { Field16::$field };
    (write32, $field:ident) => { Field32::$field };
    (write64, $field:ident) => { Field64::$field };
    (write_nat, $field:ident) => { FieldNat::$field };
}

pub struct VmxVcpu {
    gprs: GuestGprs,
    /// The VMCS and bitmap frames (see `FRAMES`).
    frames: HostPhysAddr,
    /// The CPU whose VMCS cache may hold this VMCS.
    cpu: u32,
    /// VMLAUNCH done: the next entry is VMRESUME.
    launched: bool,
    /// Guest RIP/RSP as of the last exit, written back before entry when dirty.
    rip: u64,
    rsp: u64,
    regs_dirty: bool,
    cpl: u8,
    /// Length of the instruction that caused the last exit (0 if none).
    exit_instruction_len: u32,
    /// Set by `skip_instruction`: STI/MOV SS blocking ends with the instruction.
    clear_interrupt_shadow: bool,
    pending: Option<PendingEvent>,
    /// `Vcpu::set_deadline`: the host TSC by which the guest must be out
    /// again; each entry arms the preemption timer for what is left of it.
    deadline_tsc: Option<u64>,
    pin_controls: u32,
    /// Primary processor-based controls as in the VMCS, and whether the common
    /// code wants an interrupt-window exit.
    proc_controls: u32,
    interrupt_window: bool,
    /// Its EPT pointer, for the flush when it moves to a CPU.
    eptp: u64,
    /// Its VPID, valid on the CPU and in the generation it was handed out.
    vpid_held: Held,
    /// DR0-DR3 and DR6, which no VMCS field holds (DR7 is in the VMCS).
    debug: DebugRegs,
    /// The guest's CR2, which no VMCS field holds either.
    cr2: u64,
    /// The VMCS's TSC offset, readable without the VMCS current.
    tsc_offset: u64,
    /// The exception behind the last `VmExit::Exception`, for `reflect_exception`.
    intercepted: Option<Intercepted>,
    /// Between `enter` and `leave`: its VPID is this CPU's (not looked up
    /// again around each exit).
    entered: bool,
}

/// An intercepted exception as the exit reported it.
#[derive(Clone, Copy, Debug)]
struct Intercepted {
    info: InterruptionInfo,
    error_code: u32,
    instruction_len: u32,
    qualification: u64,
}

impl VmxVcpu {
    /// Builds a VMCS on the calling CPU for a guest whose EPT PML4 is at
    /// `ept_root`, starting in `state`. Its VPID comes from this CPU's cache
    /// (`virt::tlb_tag`), and again from the next CPU's when it moves.
    pub fn new(ept_root: u64, state: &InitialState) -> Result<Self, &'static str> {
        let caps = super::caps()?;
        let cpu = super::this_cpu()?;
        if cpu.vmxon_region.load(Ordering::Relaxed) == 0 {
            return Err("VMX is not enabled on this CPU");
        }
        let tag = tlb_tag::assign(cpu_id(), u16::MAX, None);
        if tag.flush_all {
            flush_all_vpids(caps)?;
        }
        let vpid = tag.held.tag;
        if ept_root == 0 || !ept_root.is_multiple_of(PAGE_SIZE) {
            return Err("EPT root not page aligned");
        }
        let frames = mem::alloc_frames(FRAMES, 1).ok_or("out of memory for the VMCS")?;
        let frame = |i: u64| frames.as_u64() + i * PAGE_SIZE;
        // SAFETY: the frames are ours and identity mapped. All-ones bitmaps make
        // every port and MSR access exit; the VMCS starts with the revision id.
        unsafe {
            for i in [IO_BITMAP_A_FRAME, IO_BITMAP_B_FRAME, MSR_BITMAP_FRAME] {
                core::ptr::write_bytes(frame(i) as *mut u8, 0xff, PAGE_SIZE as usize);
            }
            // TPR 0 at reset (SDM Vol. 3A §12.4.7.1).
            core::ptr::write_bytes(frame(VIRTUAL_APIC_FRAME) as *mut u8, 0, PAGE_SIZE as usize);
            (frame(VMCS_FRAME) as *mut u32).write(caps.basic.revision());
            let area = frame(MSR_AREA_FRAME) as *mut MsrEntry;
            for (i, &index) in SWITCHED_MSRS.iter().enumerate() {
                area.add(i).write(MsrEntry { index, _reserved: 0, value: 0 });
            }
        }
        let mut vcpu = VmxVcpu {
            gprs: GuestGprs::default(),
            frames,
            cpu: cpu_id(),
            launched: false,
            rip: state.rip,
            rsp: state.rsp,
            regs_dirty: false,
            cpl: 0,
            exit_instruction_len: 0,
            clear_interrupt_shadow: false,
            pending: None,
            deadline_tsc: None,
            pin_controls: caps.pin,
            proc_controls: caps.proc,
            interrupt_window: false,
            eptp: ept_pointer(ept_root),
            debug: DebugRegs::RESET,
            cr2: 0,
            tsc_offset: 0,
            intercepted: None,
            vpid_held: tag.held,
            entered: false,
        };
        // From here on, `Drop` clears the VMCS and frees the frames on failure.
        // SAFETY: a fresh VMCS region of ours: VMCLEAR initialises its launch state
        // (SDM Vol. 3C §25.11.3), VMPTRLD makes it current on this CPU only.
        unsafe { vmcs::vmclear(frame(VMCS_FRAME)).and_then(|()| vmcs::vmptrld(frame(VMCS_FRAME))) }.map_err(|e| {
            log::error!("cpu{}: VMCLEAR/VMPTRLD of a new VMCS failed: {e}", vcpu.cpu);
            "cannot load the VMCS"
        })?;
        cpu.current_vmcs.store(frame(VMCS_FRAME), Ordering::Relaxed);
        let eptp = ept_pointer(ept_root);
        // SAFETY: the VMCS is current; host state describes this CPU as it runs now.
        unsafe { vcpu.setup(caps, eptp, state, vpid, frame) }.map_err(|(field, e)| {
            log::error!("cpu{}: writing VMCS field {field} failed: {e}", vcpu.cpu);
            "cannot set up the VMCS"
        })?;
        // An EPT root used before (by a destroyed guest) may still have
        // guest-physical translations cached, tagged by the root alone: this
        // guest must not see them (SDM Vol. 3C §29.4.3). The VPID is fresh.
        let ept_flush = if caps.invept_single_context() { vmcs::InveptType::SingleContext } else { vmcs::InveptType::AllContexts };
        vmcs::invept(ept_flush, eptp).map_err(|e| {
            log::error!("cpu{}: INVEPT failed: {e}", vcpu.cpu);
            "cannot flush guest translations"
        })?;
        Ok(vcpu)
    }

    /// Writes every VMCS field. `Err` names the field that failed.
    ///
    /// # Safety
    /// This vCPU's VMCS must be current.
    unsafe fn setup(
        &mut self,
        caps: &VmxCaps,
        eptp: u64,
        state: &InitialState,
        vpid: u16,
        frame: impl Fn(u64) -> u64,
    ) -> Result<(), (&'static str, VmxError)> {
        // SAFETY: the caller made the VMCS current.
        unsafe { Self::write_host_state() }?;

        // Execution, exit and entry controls (§25.6-§25.8), fixed by `caps`;
        // the entry control IA-32e mode follows the guest state (below).
        w!(write32, PinBasedControls, self.pin_controls);
        w!(write32, PrimaryProcControls, self.proc_controls);
        if self.proc_controls & proc::USE_TSC_OFFSETTING != 0 {
            // Used from the first entry: the guest reads the host's TSC until
            // `set_tsc_offset`.
            w!(write64, TscOffset, 0);
        }
        w!(write32, SecondaryProcControls, caps.proc2);
        w!(write32, ExitControls, caps.exit);
        w!(write32, ExceptionBitmap, EXCEPTION_BITMAP);
        w!(write32, PageFaultErrorCodeMask, 0);
        w!(write32, PageFaultErrorCodeMatch, 0);
        w!(write32, Cr3TargetCount, 0);
        w!(write64, VmExitMsrStoreAddr, frame(MSR_AREA_FRAME));
        w!(write64, VmEntryMsrLoadAddr, frame(MSR_AREA_FRAME));
        w!(write32, ExitMsrStoreCount, switched_msrs().len() as u32);
        w!(write32, EntryMsrLoadCount, switched_msrs().len() as u32);
        // TPR shadow: threshold 0, so lowering the TPR never exits (§27.2.1.1:
        // bits 3:0 may not exceed VTPR[7:4], which starts at 0).
        w!(write64, VirtualApicAddr, frame(VIRTUAL_APIC_FRAME));
        w!(write32, TprThreshold, 0);
        w!(write32, ExitMsrLoadCount, 0);
        w!(write32, EntryInterruptionInfo, 0);
        w!(write64, IoBitmapA, frame(IO_BITMAP_A_FRAME));
        w!(write64, IoBitmapB, frame(IO_BITMAP_B_FRAME));
        w!(write64, MsrBitmap, frame(MSR_BITMAP_FRAME));
        w!(write64, EptPointer, eptp);
        w!(write16, Vpid, vpid);
        w!(write64, VmcsLinkPointer, NO_VMCS_LINK);

        w!(write64, GuestIa32Debugctl, 0);
        // SAFETY: the caller made the VMCS current.
        unsafe { self.write_guest_state(caps, &VcpuState::from_entry(state)) }
    }

    /// Lets the guest reach `ports` directly: clears their I/O-bitmap bits
    /// (SDM Vol. 3C §25.6.4: bitmap A covers 0-0x7fff, B 0x8000-0xffff).
    pub fn pass_through_ports(&mut self, ports: core::ops::RangeInclusive<u16>) {
        // SAFETY: bitmaps A and B are this vCPU's own two consecutive frames.
        let map = unsafe {
            core::slice::from_raw_parts_mut(
                (self.frames.as_u64() + IO_BITMAP_A_FRAME * PAGE_SIZE) as *mut u8,
                2 * PAGE_SIZE as usize,
            )
        };
        for p in ports {
            map[usize::from(p) / 8] &= !(1 << (p % 8));
        }
    }

    /// Whether the guest's accesses to `port` exit (sets or clears its I/O-bitmap
    /// bit). Changed only while the vCPU is out of the guest (on the CPU whose
    /// VMCS it is, or released), as SDM Vol. 3C §25.6.4 expects of the bitmaps.
    pub fn intercept_port(&mut self, port: u16, on: bool) {
        // SAFETY: bitmaps A and B are this vCPU's own two consecutive frames.
        let map = unsafe {
            core::slice::from_raw_parts_mut(
                (self.frames.as_u64() + IO_BITMAP_A_FRAME * PAGE_SIZE) as *mut u8,
                2 * PAGE_SIZE as usize,
            )
        };
        let (byte, bit) = (usize::from(port) / 8, 1 << (port % 8));
        if on {
            map[byte] |= bit;
        } else {
            map[byte] &= !bit;
        }
    }

    /// dom0's I/O policy: every port for which `keep` is false reaches the
    /// hardware directly, and the MSRs the CPU switches with the guest are
    /// passed through (`pass_through_switched_msrs`).
    pub fn pass_through_io_except(&mut self, keep: impl Fn(u16) -> bool) {
        for p in 0..=u16::MAX {
            if !keep(p) {
                self.pass_through_ports(p..=p);
            }
        }
        self.pass_through_switched_msrs();
    }

    /// Lets the guest read and write directly the MSRs whose guest copy the
    /// CPU switches at entry and exit: the VMCS guest fields (FS/GS base,
    /// SYSENTER) and the entry-load/exit-store area (`SWITCHED_MSRS`).
    pub fn pass_through_switched_msrs(&mut self) {
        const VMCS_MSRS: [u32; 5] = [
            msr::IA32_FS_BASE,
            msr::IA32_GS_BASE,
            msr::IA32_SYSENTER_CS,
            msr::IA32_SYSENTER_ESP,
            msr::IA32_SYSENTER_EIP,
        ];
        for &m in VMCS_MSRS.iter().chain(switched_msrs()) {
            self.pass_through_msr(m);
        }
    }

    /// Clears `index`'s read and write bits in the MSR bitmap (SDM Vol. 3C
    /// §25.6.9: read-low, read-high, write-low, write-high, 1 KiB each).
    fn pass_through_msr(&mut self, index: u32) {
        const HIGH_BASE: u32 = 0xc000_0000;
        const RANGE: u32 = 0x2000;
        let (half, bit) = match index {
            0..RANGE => (0, index),
            _ if index.wrapping_sub(HIGH_BASE) < RANGE => (1024, index - HIGH_BASE),
            _ => return,
        };
        let map = (self.frames.as_u64() + MSR_BITMAP_FRAME * PAGE_SIZE) as *mut u8;
        for base in [half, 2048 + half] {
            let byte = base + (bit / 8) as usize;
            // SAFETY: `byte` < 4096, inside this vCPU's MSR bitmap frame.
            unsafe { *map.add(byte) &= !(1u8 << (bit % 8)) };
        }
    }

    /// Makes this vCPU's VMCS current on this CPU and writes what changed since
    /// the last exit. `Err` names the failing step.
    fn prepare_entry(&mut self) -> Result<(), (&'static str, VmxError)> {
        self.make_current()?;
        if self.regs_dirty {
            guest_write_nat(FieldNat::GuestRip, self.rip, "guest RIP")?;
            guest_write_nat(FieldNat::GuestRsp, self.rsp, "guest RSP")?;
            self.regs_dirty = false;
        }
        if self.clear_interrupt_shadow {
            let s = vmcs::read32_rw(Field32::GuestInterruptibility).map_err(|e| ("interruptibility", e))?;
            if s & BLOCKING_BY_STI_OR_MOV_SS != 0 {
                guest_write32(Field32::GuestInterruptibility, s & !BLOCKING_BY_STI_OR_MOV_SS, "interruptibility")?;
            }
            self.clear_interrupt_shadow = false;
        }
        if let Some(event) = self.pending.take() {
            let (info, error_code, len) = match event {
                PendingEvent::Exception { vector, error_code } => {
                    let cr0 = vmcs::read_nat(FieldNat::GuestCr0).map_err(|e| ("guest CR0", e))?;
                    let protected = cr0 & Cr0Flags::PROTECTED_MODE_ENABLE.bits() != 0;
                    let (info, code) = exception_injection(vector, error_code, protected);
                    (info, code, 0)
                }
                PendingEvent::Interrupt { vector } => {
                    (InterruptionInfo::new(vector, InterruptionType::ExternalInterrupt, false), None, 0)
                }
                PendingEvent::Reinject { info, error_code, instruction_len } => {
                    (info, info.error_code_valid().then_some(error_code), instruction_len)
                }
            };
            guest_write32(Field32::EntryInterruptionInfo, info.0, "entry event")?;
            if let Some(code) = error_code {
                guest_write32(Field32::EntryExceptionErrorCode, code, "entry error code")?;
            }
            if info.needs_instruction_length() {
                guest_write32(Field32::EntryInstructionLength, len, "entry instruction length")?;
            }
        }
        // The deadline's backstop: the timer counts only while the guest
        // runs, from what is left now (a deadline already past: 0, an exit
        // right after the entry).
        let deadline_ticks = self.deadline_tsc.and_then(|d| {
            let caps = super::caps().ok().filter(|c| c.has_preemption_timer)?;
            let left = d.saturating_sub(crate::arch::x86_64::time::rdtsc()) >> caps.preemption_timer_shift;
            Some(u32::try_from(left).unwrap_or(u32::MAX))
        });
        let want_pin = match deadline_ticks {
            Some(ticks) => {
                guest_write32(Field32::PreemptionTimerValue, ticks, "preemption timer")?;
                self.pin_controls | pin::PREEMPTION_TIMER
            }
            None => self.pin_controls & !pin::PREEMPTION_TIMER,
        };
        let want_proc = if self.interrupt_window {
            self.proc_controls | proc::INTERRUPT_WINDOW_EXITING
        } else {
            self.proc_controls & !proc::INTERRUPT_WINDOW_EXITING
        };
        if want_proc != self.proc_controls {
            // SAFETY: only interrupt-window exiting changes (allowed: checked in
            // `request_interrupt_window`); it causes VM exits, nothing on the host.
            unsafe { vmcs::write32(Field32::PrimaryProcControls, want_proc) }.map_err(|e| ("processor controls", e))?;
            self.proc_controls = want_proc;
        }
        if want_pin != self.pin_controls {
            // SAFETY: only the preemption-timer bit changes, set only where the
            // CPU allows it (checked for the deadline above); the timer causes
            // VM exits, nothing on the host.
            unsafe { vmcs::write32(Field32::PinBasedControls, want_pin) }.map_err(|e| ("pin controls", e))?;
            self.pin_controls = want_pin;
        }
        Ok(())
    }

    /// Writes the host-state fields: this CPU's, so they are written again
    /// when the vCPU moves to another CPU (`adopt`).
    ///
    /// # Safety
    /// This vCPU's VMCS must be current.
    unsafe fn write_host_state() -> Result<(), (&'static str, VmxError)> {
        // Host state, loaded at every VM exit (SDM Vol. 3C §25.5, checked per §27.2.3).
        let h = HostState::current();
        w!(write_nat, HostCr0, h.cr0);
        w!(write_nat, HostCr3, h.cr3);
        w!(write_nat, HostCr4, h.cr4);
        w!(write16, HostCsSelector, h.cs);
        w!(write16, HostSsSelector, h.ss);
        w!(write16, HostDsSelector, h.ds);
        w!(write16, HostEsSelector, h.es);
        w!(write16, HostFsSelector, h.fs);
        w!(write16, HostGsSelector, h.gs);
        w!(write16, HostTrSelector, h.tr);
        w!(write_nat, HostFsBase, h.fs_base);
        w!(write_nat, HostGsBase, h.gs_base);
        w!(write_nat, HostTrBase, h.tr_base);
        w!(write_nat, HostGdtrBase, h.gdtr_base);
        w!(write_nat, HostIdtrBase, h.idtr_base);
        // The hypervisor never uses SYSENTER.
        w!(write32, HostSysenterCs, 0);
        w!(write_nat, HostSysenterEsp, 0);
        w!(write_nat, HostSysenterEip, 0);
        w!(write64, HostIa32Pat, h.pat);
        w!(write64, HostIa32Efer, h.efer);
        w!(write_nat, HostRip, oxen_vmx_exit as *const () as u64);
        Ok(())
    }

    /// Lets another CPU run this vCPU next: VMCLEAR writes the VMCS back to
    /// memory and leaves it launchable anywhere (SDM Vol. 3C §25.11.3). Call
    /// on the CPU that last ran it.
    pub fn release(&mut self) {
        if cpu_id() != self.cpu {
            return;
        }
        let vmcs = self.vmcs();
        // SAFETY: our VMCS, on the CPU whose cache may hold it.
        if let Err(e) = unsafe { vmcs::vmclear(vmcs) } {
            log::error!("cpu{}: VMCLEAR on release failed: {e}", self.cpu);
            return;
        }
        if let Ok(cpu) = super::this_cpu() {
            let _ = cpu.current_vmcs.compare_exchange(vmcs, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
        self.launched = false;
        self.cpu = u32::MAX;
        self.entered = false;
    }

    /// Makes this (released) vCPU runnable on the calling CPU: loads its VMCS
    /// here, writes this CPU's host state and flushes the guest's cached
    /// translations, which this CPU may hold from an earlier user of its
    /// VPID/EPT root.
    pub fn adopt(&mut self) -> Result<(), &'static str> {
        if self.cpu == cpu_id() {
            return Ok(());
        }
        if self.cpu != u32::MAX {
            return Err("vCPU not released by the CPU that ran it");
        }
        self.cpu = cpu_id();
        self.make_current().map_err(|_| "cannot load the VMCS")?;
        // SAFETY: the VMCS is current (above).
        unsafe { Self::write_host_state() }.map_err(|_| "cannot write the host state")?;
        // Guest-physical translations are tagged by the EPT root only; the
        // VPID is replaced by one of this CPU's at the next entry (`take_vpid`).
        let caps = super::caps()?;
        let ept_flush = if caps.invept_single_context() { vmcs::InveptType::SingleContext } else { vmcs::InveptType::AllContexts };
        vmcs::invept(ept_flush, self.eptp).map_err(|_| "INVEPT")
    }

    /// Keeps the VMCS's VPID valid on this CPU in its current generation, or
    /// takes the next one (flushing every VPID when the CPU starts a new
    /// generation). The VMCS is current.
    fn take_vpid(&mut self) -> Result<(), (&'static str, VmxError)> {
        let a = tlb_tag::assign(cpu_id(), u16::MAX, Some(self.vpid_held));
        if a.changed {
            let caps = super::caps().map_err(|_| ("VMX capabilities", VmxError::FailInvalid))?;
            if a.flush_all {
                flush_all_vpids(caps).map_err(|_| ("INVVPID", VmxError::FailInvalid))?;
            }
            // Guest-physical mappings are tagged by the EPT root, not the
            // VPID (SDM Vol. 3C §29.4.1): without an all-context INVEPT in
            // `flush_all_vpids`, each vCPU drops its own when it takes a tag
            // of a new generation, so a write-protection (`LOG_DIRTY`) or an
            // unmapping holds for its page walks too.
            if caps.ept_vpid & crate::arch::x86_64::vmx::decode::ept_vpid_cap::INVEPT_ALL_CONTEXT == 0 {
                vmcs::invept(vmcs::InveptType::SingleContext, self.eptp).map_err(|_| ("INVEPT", VmxError::FailInvalid))?;
            }
            // SAFETY: a VPID other than 0, handed out by this CPU's cache.
            unsafe { vmcs::write16(Field16::Vpid, a.held.tag) }.map_err(|e| ("VPID", e))?;
            self.vpid_held = a.held;
        }
        Ok(())
    }

    /// Makes this vCPU's VMCS the current one on this CPU (another vCPU's may
    /// have been loaded since), so VMREAD/VMWRITE reach it.
    fn make_current(&self) -> Result<(), (&'static str, VmxError)> {
        if cpu_id() != self.cpu {
            return Err(("use on a foreign CPU", VmxError::FailInvalid));
        }
        let vmcs = self.vmcs();
        let cpu = super::this_cpu().map_err(|_| ("per-CPU state", VmxError::FailInvalid))?;
        if cpu.current_vmcs.load(Ordering::Relaxed) != vmcs {
            // SAFETY: our VMCS, used only on this CPU (checked above).
            unsafe { vmcs::vmptrld(vmcs) }.map_err(|e| ("VMPTRLD", e))?;
            cpu.current_vmcs.store(vmcs, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The guest's copy of `index` in the switched-MSR area.
    fn switched_msr(&self, index: u32) -> Option<*mut u64> {
        let i = switched_msrs().iter().position(|&m| m == index)?;
        let area = (self.frames.as_u64() + MSR_AREA_FRAME * PAGE_SIZE) as *mut MsrEntry;
        // SAFETY: `i` is within the area, which this vCPU owns.
        Some(unsafe { core::ptr::addr_of_mut!((*area.add(i)).value) })
    }

    /// The VMCS field holding guest MSR `index`, if there is one.
    fn msr_field(index: u32) -> Option<MsrField> {
        Some(match index {
            msr::IA32_EFER => MsrField::W64(Field64::GuestIa32Efer),
            msr::IA32_PAT => MsrField::W64(Field64::GuestIa32Pat),
            msr::IA32_FS_BASE => MsrField::Nat(FieldNat::GuestFsBase),
            msr::IA32_GS_BASE => MsrField::Nat(FieldNat::GuestGsBase),
            msr::IA32_SYSENTER_CS => MsrField::W32(Field32::GuestSysenterCs),
            msr::IA32_SYSENTER_ESP => MsrField::Nat(FieldNat::GuestSysenterEsp),
            msr::IA32_SYSENTER_EIP => MsrField::Nat(FieldNat::GuestSysenterEip),
            _ => return None,
        })
    }

    fn read_msr_field(f: MsrField) -> Result<u64, VmxError> {
        match f {
            MsrField::W32(f) => vmcs::read32_rw(f).map(u64::from),
            MsrField::W64(f) => vmcs::read64_rw(f),
            MsrField::Nat(f) => vmcs::read_nat(f),
        }
    }

    /// Checks a guest WRMSR value as the CPU would (#GP otherwise) and as VM
    /// entry will, and writes it. Only EFER touches more than its own field.
    fn write_msr_field(&mut self, index: u32, f: MsrField, value: u64) -> Result<bool, VmxError> {
        let value = match index {
            msr::IA32_EFER => {
                if value & !(EFER_GUEST_WRITABLE | EFER_LMA) != 0 {
                    return Ok(false);
                }
                let old = Self::read_msr_field(f)?;
                let paging = vmcs::read_nat(FieldNat::GuestCr0)? & Cr0Flags::PAGING.bits() != 0;
                // LME cannot change while paging is on (SDM Vol. 3A §10.8.5); LMA is read-only.
                if paging && (old ^ value) & EFER_LME != 0 {
                    return Ok(false);
                }
                (value & EFER_GUEST_WRITABLE) | (old & EFER_LMA)
            }
            msr::IA32_PAT if !pat_valid(value) => return Ok(false),
            msr::IA32_SYSENTER_CS => value & 0xffff_ffff,
            msr::IA32_FS_BASE | msr::IA32_GS_BASE | msr::IA32_SYSENTER_ESP | msr::IA32_SYSENTER_EIP
                if !is_canonical(value) =>
            {
                return Ok(false)
            }
            _ => value,
        };
        // SAFETY: guest-state fields, checked above against the VM-entry rules.
        unsafe {
            match f {
                MsrField::W32(f) => vmcs::write32(f, value as u32)?,
                MsrField::W64(f) => vmcs::write64(f, value)?,
                MsrField::Nat(f) => vmcs::write_nat(f, value)?,
            }
        }
        Ok(true)
    }

    fn vmcs(&self) -> u64 {
        self.frames.as_u64() + VMCS_FRAME * PAGE_SIZE
    }

    /// Logs and reports a VMX instruction failure around VM entry.
    fn entry_failed(&self, what: &str, e: VmxError) -> VmExit {
        log::error!("cpu{}: vmx: {what} failed: {e}", self.cpu);
        let info = match e {
            VmxError::FailValid(n) => u64::from(n),
            VmxError::FailInvalid => 0,
        };
        VmExit::Unsupported { reason: REASON_ENTRY_INSTRUCTION_FAILED, info }
    }
}

/// Drops every VPID's cached translations on this CPU (a new generation of
/// its VPIDs): all-context INVVPID, or one single-context INVVPID per VPID
/// where the CPU has only that. Guest-physical mappings (SDM Vol. 3C §29.4.1)
/// go too, with an all-context INVEPT where the CPU has it: a generation is
/// also how `mem::foreign` drops dom0's translations of an unmapped page.
fn flush_all_vpids(caps: &super::caps::VmxCaps) -> Result<(), &'static str> {
    if caps.ept_vpid & crate::arch::x86_64::vmx::decode::ept_vpid_cap::INVEPT_ALL_CONTEXT != 0 {
        vmcs::invept(vmcs::InveptType::AllContexts, 0).map_err(|_| "INVEPT")?;
    }
    if caps.ept_vpid & crate::arch::x86_64::vmx::decode::ept_vpid_cap::INVVPID_ALL_CONTEXT != 0 {
        return vmcs::invvpid(vmcs::InvvpidType::AllContexts, 0).map_err(|_| "INVVPID");
    }
    for vpid in 1..=u16::MAX {
        vmcs::invvpid(vmcs::InvvpidType::SingleContext, vpid).map_err(|_| "INVVPID")?;
    }
    Ok(())
}

/// VMWRITE of a guest-state or event-injection field, which decide what the
/// guest sees at the next entry and nothing about the host. A bad value fails
/// that entry (reported as `VmExit::Unsupported`), never the hypervisor.
fn guest_write32(f: Field32, v: u32, what: &'static str) -> Result<(), (&'static str, VmxError)> {
    // SAFETY: see above; callers pass guest-state and entry-event fields only.
    unsafe { vmcs::write32(f, v) }.map_err(|e| (what, e))
}

/// As `guest_write32`, for natural-width guest-state fields.
fn guest_write_nat(f: FieldNat, v: u64, what: &'static str) -> Result<(), (&'static str, VmxError)> {
    // SAFETY: see `guest_write32`.
    unsafe { vmcs::write_nat(f, v) }.map_err(|e| (what, e))
}

/// The VMCS field of a guest MSR, by width.
#[derive(Clone, Copy)]
enum MsrField {
    W32(Field32),
    W64(Field64),
    Nat(FieldNat),
}

/// The host state VM exits restore: this CPU as it runs now.
struct HostState {
    cr0: u64,
    cr3: u64,
    cr4: u64,
    cs: u16,
    ss: u16,
    ds: u16,
    es: u16,
    fs: u16,
    gs: u16,
    tr: u16,
    fs_base: u64,
    gs_base: u64,
    tr_base: u64,
    gdtr_base: u64,
    idtr_base: u64,
    pat: u64,
    efer: u64,
}

impl HostState {
    fn current() -> Self {
        let (cr3, cs, ss, ds, es, fs, gs, tr): (u64, u16, u16, u16, u16, u16, u16, u16);
        // SAFETY: reads of control and segment registers, no side effects.
        unsafe {
            core::arch::asm!(
                "mov {cr3}, cr3", "mov {cs:x}, cs", "mov {ss:x}, ss", "mov {ds:x}, ds", "mov {es:x}, es",
                "mov {fs:x}, fs", "mov {gs:x}, gs", "str {tr:x}",
                cr3 = out(reg) cr3, cs = out(reg) cs, ss = out(reg) ss, ds = out(reg) ds, es = out(reg) es,
                fs = out(reg) fs, gs = out(reg) gs, tr = out(reg) tr, options(nomem, nostack, preserves_flags));
        }
        let gdt = x86_64::instructions::tables::sgdt();
        let idt = x86_64::instructions::tables::sidt();
        // SAFETY: these MSRs exist on every x86-64 CPU.
        let (fs_base, gs_base, pat, efer) =
            unsafe { (rdmsr(msr::IA32_FS_BASE), rdmsr(msr::IA32_GS_BASE), rdmsr(msr::IA32_PAT), rdmsr(msr::IA32_EFER)) };
        // SAFETY: TR selects a 16-byte TSS descriptor inside the loaded GDT.
        let tr_base = unsafe { tss_base(gdt.base.as_u64(), tr) };
        // Selectors loaded on exit must have RPL 0 and TI 0 (SDM Vol. 3C §27.2.3).
        let sel = |s: u16| s & !0b111;
        HostState {
            cr0: x86_64::registers::control::Cr0::read_raw(),
            cr3,
            cr4: x86_64::registers::control::Cr4::read_raw(),
            cs: sel(cs),
            ss: sel(ss),
            ds: sel(ds),
            es: sel(es),
            fs: sel(fs),
            gs: sel(gs),
            tr: sel(tr),
            fs_base,
            gs_base,
            tr_base,
            gdtr_base: gdt.base.as_u64(),
            idtr_base: idt.base.as_u64(),
            pat,
            efer,
        }
    }
}

/// Base address in the 64-bit TSS descriptor at `selector` of the GDT at `gdt`
/// (SDM Vol. 3A §9.2.3).
///
/// # Safety
/// `selector` must index a system descriptor inside the GDT at `gdt`.
unsafe fn tss_base(gdt: u64, selector: u16) -> u64 {
    let desc = (gdt + u64::from(selector & !0b111)) as *const u64;
    // SAFETY: the caller's contract; a 64-bit system descriptor is two quadwords.
    let (low, high) = unsafe { (desc.read_unaligned(), desc.add(1).read_unaligned()) };
    ((low >> 16) & 0xff_ffff) | (((low >> 56) & 0xff) << 24) | ((high & 0xffff_ffff) << 32)
}

impl Drop for VmxVcpu {
    fn drop(&mut self) {
        if self.cpu == u32::MAX {
            // Released: already VMCLEARed, in no CPU's cache.
            mem::free_frames(self.frames, FRAMES);
            return;
        }
        if cpu_id() != self.cpu {
            // VMCLEAR elsewhere would leave a stale copy in the owner's VMCS cache:
            // leak the frames rather than let them be reused under it.
            log::error!("vmx: vCPU of cpu{} dropped on cpu{}: leaking its VMCS", self.cpu, cpu_id());
            return;
        }
        let vmcs = self.vmcs();
        // SAFETY: our VMCS; VMCLEAR flushes it from this CPU and makes it not current.
        if let Err(e) = unsafe { vmcs::vmclear(vmcs) } {
            log::error!("cpu{}: VMCLEAR failed: {e}; leaking the VMCS", self.cpu);
            return;
        }
        if let Ok(cpu) = super::this_cpu() {
            let _ = cpu.current_vmcs.compare_exchange(vmcs, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
        mem::free_frames(self.frames, FRAMES);
    }
}

impl VmxVcpu {
    /// Writes `st` into the VMCS's guest-state area and the entry control
    /// that follows it (SDM Vol. 3C §25.4, checked per §27.3.1).
    ///
    /// # Safety
    /// This vCPU's VMCS must be current.
    unsafe fn write_guest_state(&mut self, caps: &VmxCaps, st: &VcpuState) -> Result<(), (&'static str, VmxError)> {
        let long = st.efer & state::EFER_LMA != 0;
        w!(write32, EntryControls, caps.entry | if long { entry::IA32E_MODE_GUEST } else { 0 });
        // The guest owns CR0 (unrestricted guest lets it clear PE and PG,
        // §26.3) except the bits VMX operation fixes at 1 (NE): those are
        // host-owned, the guest reads its own value through the shadow, and
        // a write that changes them exits (`cr_access`: Linux clears NE on
        // its way to real mode to reboot). CR4.VMXE must stay set in VMX
        // operation, so it is host-owned and reads as 0 (§25.6.6).
        let pe_pg = Cr0Flags::PROTECTED_MODE_ENABLE.bits() | Cr0Flags::PAGING.bits();
        let cr0_fixed0 = caps.cr0_fixed0 & !pe_pg;
        let vmxe = Cr4Flags::VIRTUAL_MACHINE_EXTENSIONS.bits();
        w!(write_nat, GuestCr0, (st.cr0 | cr0_fixed0) & caps.cr0_fixed1);
        w!(write_nat, Cr0GuestHostMask, cr0_fixed0);
        w!(write_nat, Cr0ReadShadow, st.cr0);
        w!(write_nat, GuestCr4, (st.cr4 | vmxe | caps.cr4_fixed0) & caps.cr4_fixed1);
        w!(write_nat, Cr4GuestHostMask, vmxe);
        w!(write_nat, Cr4ReadShadow, st.cr4 & !vmxe);
        w!(write_nat, GuestCr3, st.cr3);
        w!(write64, GuestIa32Efer, st.efer);
        w!(write64, GuestIa32Pat, st.pat);
        w!(write_nat, GuestDr7, st.dr7);
        macro_rules! segment {
            ($s:expr, $sel:ident, $base:ident, $limit:ident, $ar:ident) => {
                w!(write16, $sel, $s.selector);
                w!(write_nat, $base, $s.base);
                w!(write32, $limit, $s.limit);
                w!(write32, $ar, $s.ar);
            };
        }
        segment!(st.cs, GuestCsSelector, GuestCsBase, GuestCsLimit, GuestCsAccessRights);
        segment!(st.ss, GuestSsSelector, GuestSsBase, GuestSsLimit, GuestSsAccessRights);
        segment!(st.ds, GuestDsSelector, GuestDsBase, GuestDsLimit, GuestDsAccessRights);
        segment!(st.es, GuestEsSelector, GuestEsBase, GuestEsLimit, GuestEsAccessRights);
        segment!(st.fs, GuestFsSelector, GuestFsBase, GuestFsLimit, GuestFsAccessRights);
        segment!(st.gs, GuestGsSelector, GuestGsBase, GuestGsLimit, GuestGsAccessRights);
        // VM entry needs a usable, busy TSS in TR even though the guest never
        // switches tasks, and accepts an unusable LDTR (§27.3.1.2).
        segment!(st.tr, GuestTrSelector, GuestTrBase, GuestTrLimit, GuestTrAccessRights);
        segment!(st.ldtr, GuestLdtrSelector, GuestLdtrBase, GuestLdtrLimit, GuestLdtrAccessRights);
        w!(write_nat, GuestGdtrBase, st.gdtr.base);
        w!(write32, GuestGdtrLimit, u32::from(st.gdtr.limit));
        w!(write_nat, GuestIdtrBase, st.idtr.base);
        w!(write32, GuestIdtrLimit, u32::from(st.idtr.limit));
        w!(write_nat, GuestRip, st.rip);
        w!(write_nat, GuestRsp, st.rsp);
        w!(write_nat, GuestRflags, st.rflags);
        w!(write32, GuestSysenterCs, st.sysenter_cs as u32);
        w!(write_nat, GuestSysenterEsp, st.sysenter_esp);
        w!(write_nat, GuestSysenterEip, st.sysenter_eip);
        // Nothing pending, no shadow, active (§25.4.2), as at INIT.
        w!(write32, GuestInterruptibility, 0);
        w!(write32, GuestActivityState, ACTIVITY_ACTIVE);
        w!(write_nat, GuestPendingDebugExceptions, 0);
        w!(write32, EntryInterruptionInfo, 0);
        self.pending = None;
        self.intercepted = None;
        (self.rip, self.rsp, self.regs_dirty) = (st.rip, st.rsp, false);
        self.cpl = ((st.ss.ar >> 5) & 3) as u8;
        self.gprs = st.gprs;
        self.cr2 = st.cr2;
        for (m, v) in [
            (msr::IA32_KERNEL_GS_BASE, st.kernel_gs_base),
            (msr::IA32_STAR, st.star),
            (msr::IA32_LSTAR, st.lstar),
            (msr::IA32_CSTAR, st.cstar),
            (msr::IA32_FMASK, st.sfmask),
        ] {
            if let Some(p) = self.switched_msr(m) {
                // SAFETY: the MSR area is ours; the next entry loads it.
                unsafe { p.write_volatile(v) };
            }
        }
        Ok(())
    }

    /// Reads the guest-state area back (`write_guest_state`'s inverse).
    fn read_guest_state(&self) -> Result<VcpuState, (&'static str, VmxError)> {
        self.make_current()?;
        let n = |f: FieldNat| vmcs::read_nat(f).map_err(|e| ("VMREAD", e));
        let r32 = |f: Field32| vmcs::read32_rw(f).map_err(|e| ("VMREAD", e));
        let r16 = |f: Field16| vmcs::read16(f).map_err(|e| ("VMREAD", e));
        let seg = |sel, base, limit, ar| -> Result<state::Segment, (&'static str, VmxError)> {
            Ok(state::Segment { selector: r16(sel)?, base: n(base)?, limit: r32(limit)?, ar: r32(ar)? })
        };
        let vmxe = Cr4Flags::VIRTUAL_MACHINE_EXTENSIONS.bits();
        let msr = |m: u32| self.switched_msr(m).map_or(0, |p| {
            // SAFETY: the MSR area is ours; the CPU wrote it at the last exit.
            unsafe { p.read_volatile() }
        });
        Ok(VcpuState {
            gprs: self.gprs,
            rsp: self.rsp,
            rip: self.rip,
            rflags: n(FieldNat::GuestRflags)?,
            // The host-owned bits as the guest set them (its shadow).
            cr0: {
                let mask = n(FieldNat::Cr0GuestHostMask)?;
                (n(FieldNat::GuestCr0)? & !mask) | (n(FieldNat::Cr0ReadShadow)? & mask)
            },
            cr2: self.cr2,
            cr3: n(FieldNat::GuestCr3)?,
            cr4: n(FieldNat::GuestCr4)? & !vmxe,
            efer: vmcs::read64_rw(Field64::GuestIa32Efer).map_err(|e| ("VMREAD", e))?,
            cs: seg(Field16::GuestCsSelector, FieldNat::GuestCsBase, Field32::GuestCsLimit, Field32::GuestCsAccessRights)?,
            ss: seg(Field16::GuestSsSelector, FieldNat::GuestSsBase, Field32::GuestSsLimit, Field32::GuestSsAccessRights)?,
            ds: seg(Field16::GuestDsSelector, FieldNat::GuestDsBase, Field32::GuestDsLimit, Field32::GuestDsAccessRights)?,
            es: seg(Field16::GuestEsSelector, FieldNat::GuestEsBase, Field32::GuestEsLimit, Field32::GuestEsAccessRights)?,
            fs: seg(Field16::GuestFsSelector, FieldNat::GuestFsBase, Field32::GuestFsLimit, Field32::GuestFsAccessRights)?,
            gs: seg(Field16::GuestGsSelector, FieldNat::GuestGsBase, Field32::GuestGsLimit, Field32::GuestGsAccessRights)?,
            tr: seg(Field16::GuestTrSelector, FieldNat::GuestTrBase, Field32::GuestTrLimit, Field32::GuestTrAccessRights)?,
            ldtr: seg(Field16::GuestLdtrSelector, FieldNat::GuestLdtrBase, Field32::GuestLdtrLimit, Field32::GuestLdtrAccessRights)?,
            gdtr: state::Table { base: n(FieldNat::GuestGdtrBase)?, limit: r32(Field32::GuestGdtrLimit)? as u16 },
            idtr: state::Table { base: n(FieldNat::GuestIdtrBase)?, limit: r32(Field32::GuestIdtrLimit)? as u16 },
            dr7: n(FieldNat::GuestDr7)?,
            pat: vmcs::read64_rw(Field64::GuestIa32Pat).map_err(|e| ("VMREAD", e))?,
            sysenter_cs: u64::from(r32(Field32::GuestSysenterCs)?),
            sysenter_esp: n(FieldNat::GuestSysenterEsp)?,
            sysenter_eip: n(FieldNat::GuestSysenterEip)?,
            star: msr(msr::IA32_STAR),
            lstar: msr(msr::IA32_LSTAR),
            cstar: msr(msr::IA32_CSTAR),
            sfmask: msr(msr::IA32_FMASK),
            kernel_gs_base: msr(msr::IA32_KERNEL_GS_BASE),
        })
    }
}

impl VmxVcpu {
    /// `enter`'s work: its VPID made valid here (once per slice).
    fn enter_here(&mut self) -> Result<(), (&'static str, VmxError)> {
        if self.entered {
            return Ok(());
        }
        self.make_current()?;
        self.take_vpid()?;
        self.entered = true;
        Ok(())
    }
}

impl Vcpu for VmxVcpu {
    fn set_deadline(&mut self, tsc: Option<u64>) {
        self.deadline_tsc = tsc;
    }

    fn enter(&mut self) {
        // A failure shows again at `run`, which reports it.
        let _ = self.enter_here();
    }

    fn leave(&mut self) {
        self.entered = false;
    }

    fn run(&mut self) -> VmExit {
        if cpu_id() != self.cpu {
            log::error!("vmx: vCPU of cpu{} run on cpu{}", self.cpu, cpu_id());
            return VmExit::Unsupported { reason: REASON_ENTRY_INSTRUCTION_FAILED, info: 0 };
        }
        if let Err((what, e)) = self.enter_here().and_then(|()| self.prepare_entry()) {
            return self.entry_failed(what, e);
        }
        // Still around each entry on VT-x (not per slice as on AMD-V): with
        // them kept per slice, dom0-probes-vmx's db-loop guest (a #DB that
        // each delivery raises again) never left its CPU under Bochs; not
        // understood yet.
        // SAFETY: between guest runs; this guest's DR7 (loaded from the VMCS
        // at entry) decides what these arm, and only while it runs.
        unsafe { self.debug.load(true) };
        // CR2 is not in the VMCS: the guest's goes in with it and comes back
        // out, so no guest sees (or loses to another) a page-fault address
        // another one took on this CPU.
        // SAFETY: CR2 holds only the last page-fault address; the hypervisor
        // takes no page faults it reads it for.
        unsafe {
            if x86_64::registers::control::Cr2::read_raw() != self.cr2 {
                core::arch::asm!("mov cr2, {}", in(reg) self.cr2, options(nostack, preserves_flags));
            }
        }
        // SAFETY: the VMCS is current and fully set up; its host state is this
        // CPU's and HOST_RIP is `oxen_vmx_exit`, which returns here.
        let rc = unsafe { oxen_vmx_enter(&mut self.gprs, u8::from(self.launched)) };
        self.cr2 = x86_64::registers::control::Cr2::read_raw();
        self.debug.store(true);
        match rc {
            ENTER_EXITED => {}
            ENTER_FAIL_VALID => {
                let what = if self.launched { "VMRESUME" } else { "VMLAUNCH" };
                return self.entry_failed(what, VmxError::FailValid(vmcs::instruction_error()));
            }
            _ => return self.entry_failed("VM entry", VmxError::FailInvalid),
        }
        let exit = match super::exit::read(&self.gprs) {
            Ok(e) => e,
            Err((what, e)) => return self.entry_failed(what, e),
        };
        match self.after_exit(&exit) {
            Ok(()) => {}
            Err((what, e)) => return self.entry_failed(what, e),
        }
        match exit.raw.decode() {
            Decoded::Exit(e) => {
                if let VmExit::Unsupported { reason, info } = e {
                    log::debug!("cpu{}: vmx: unhandled exit reason {reason} qualification {info:#x}", self.cpu);
                }
                e
            }
            Decoded::ExternalInterrupt { .. } => {
                // Without acknowledge-on-exit the interrupt is still pending:
                // open a one-instruction window so the host IDT takes it.
                // SAFETY: the hypervisor's IDT handles every vector the host
                // APIC raises; interrupts are off again right after.
                unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
                VmExit::Preempted
            }
            Decoded::Nmi => {
                // The NMI was the host's and is consumed by the exit, which
                // leaves NMIs blocked until the next IRET: INT 2 runs the
                // host's NMI handler (counted there), whose IRET unblocks them.
                // SAFETY: the IDT's NMI gate handles vector 2 and returns.
                unsafe { core::arch::asm!("int 2", options(nomem)) };
                VmExit::Preempted
            }
            Decoded::CrAccess(q) => self.cr_access(q),
            Decoded::EntryFailure { reason, qualification } => {
                log::error!(
                    "cpu{}: vmx: VM entry failed: {reason:?} (exit reason {:#x}, qualification {qualification:#x})",
                    self.cpu,
                    exit.raw.reason
                );
                VmExit::Unsupported { reason: u64::from(exit.raw.reason), info: qualification }
            }
        }
    }

    fn gprs(&mut self) -> &mut GuestGprs {
        &mut self.gprs
    }
    fn rip(&self) -> u64 {
        self.rip
    }
    fn set_rip(&mut self, rip: u64) {
        self.rip = rip;
        self.regs_dirty = true;
    }
    fn rsp(&self) -> u64 {
        self.rsp
    }
    fn cpl(&self) -> u8 {
        self.cpl
    }
    fn skip_instruction(&mut self) {
        self.rip = self.rip.wrapping_add(u64::from(self.exit_instruction_len));
        self.regs_dirty = true;
        self.clear_interrupt_shadow = true;
    }
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        self.pending = Some(PendingEvent::Exception { vector, error_code });
    }

    fn reflect_exception(&mut self) {
        let Some(x) = self.intercepted.take() else { return };
        if x.info.vector() == DB_VECTOR {
            // A #DB that exits leaves DR6 alone and reports its causes in the
            // exit qualification (SDM Vol. 3C §28.1, §28.2.1).
            self.debug.dr6 = crate::virt::exit::debug::dr6_after(self.debug.dr6, x.qualification);
            let dr7 = self.make_current().ok().and_then(|()| vmcs::read_nat(FieldNat::GuestDr7).ok()).unwrap_or(0);
            if crate::virt::exit::debug::is_fault(x.qualification, dr7) {
                // Fault-like: RF in the pushed RFLAGS, as the CPU would set it.
                if let Ok(rflags) = vmcs::read_nat(FieldNat::GuestRflags) {
                    let _ = guest_write_nat(FieldNat::GuestRflags, rflags | crate::virt::exit::debug::RFLAGS_RF, "guest RFLAGS");
                }
            }
        }
        // Re-delivered with the type it came with (INT1 is a privileged
        // software exception and needs the instruction length).
        self.pending = Some(PendingEvent::Reinject {
            info: x.info.for_reinjection(),
            error_code: x.error_code,
            instruction_len: x.instruction_len,
        });
    }

    fn interrupt_ready(&self) -> bool {
        if self.pending.is_some() {
            return false;
        }
        let state = self.make_current().and_then(|()| {
            let rflags = vmcs::read_nat(FieldNat::GuestRflags).map_err(|e| ("guest RFLAGS", e))?;
            let blocking = vmcs::read32_rw(Field32::GuestInterruptibility).map_err(|e| ("interruptibility", e))?;
            Ok((rflags, blocking))
        });
        match state {
            Ok((rflags, blocking)) => {
                // A skipped instruction ends its STI/MOV SS shadow at the next entry.
                let shadow = !self.clear_interrupt_shadow && blocking & BLOCKING_BY_STI_OR_MOV_SS != 0;
                rflags & RFLAGS_IF != 0 && !shadow
            }
            Err((what, e)) => {
                log::error!("cpu{}: vmx: interrupt_ready: {what}: {e}", self.cpu);
                false
            }
        }
    }

    fn inject_interrupt(&mut self, vector: u8) {
        if vector < FIRST_EXTERNAL_VECTOR {
            log::error!("cpu{}: vmx: refusing to inject exception vector {vector} as an interrupt", self.cpu);
            return;
        }
        self.pending = Some(PendingEvent::Interrupt { vector });
    }

    fn request_interrupt_window(&mut self, on: bool) {
        match super::caps() {
            Ok(c) if c.has_interrupt_window_exiting => self.interrupt_window = on,
            _ => log::error!("cpu{}: vmx: no interrupt-window exiting", self.cpu),
        }
    }

    fn cpu_state(&self) -> Option<crate::emulate::mmio::CpuState> {
        /// Access-rights bits L (13) and D/B (14) (SDM Vol. 3C §25.4.1).
        const AR_L: u32 = 1 << 13;
        const AR_D: u32 = 1 << 14;
        let cs_ar = vmcs::read32_rw(Field32::GuestCsAccessRights).ok()?;
        Some(crate::emulate::mmio::CpuState::from_raw(
            [
                vmcs::read_nat(FieldNat::GuestCr0).ok()?,
                vmcs::read_nat(FieldNat::GuestCr3).ok()?,
                vmcs::read_nat(FieldNat::GuestCr4).ok()?,
                vmcs::read64_rw(Field64::GuestIa32Efer).ok()?,
            ],
            vmcs::read_nat(FieldNat::GuestCsBase).ok()?,
            (cs_ar & AR_L != 0, cs_ar & AR_D != 0),
            crate::emulate::mmio::host_phys_bits(),
        ))
    }

    fn guest_msr(&self, index: u32) -> Option<u64> {
        if let Some(p) = self.switched_msr(index) {
            // SAFETY: the area is ours; the CPU wrote it at the last exit, and
            // nothing else touches it while the guest is not running.
            return Some(unsafe { p.read_volatile() });
        }
        let f = Self::msr_field(index)?;
        let r = self.make_current().and_then(|()| Self::read_msr_field(f).map_err(|e| ("VMREAD", e)));
        r.map_err(|(what, e)| log::error!("cpu{}: vmx: reading guest MSR {index:#x}: {what}: {e}", self.cpu)).ok()
    }

    fn set_guest_msr(&mut self, index: u32, value: u64) -> bool {
        if let Some(p) = self.switched_msr(index) {
            // STAR holds selectors, not addresses; TSC_AUX and FMASK have bits
            // 63:32 reserved (#GP); the rest must be canonical or the VM-entry MSR
            // load fails (SDM Vol. 3C §27.4).
            let valid = match index {
                msr::IA32_STAR => true,
                msr::IA32_TSC_AUX | msr::IA32_FMASK => value >> 32 == 0,
                _ => is_canonical(value),
            };
            if !valid {
                return false;
            }
            // SAFETY: as in `guest_msr`; the next entry loads the new value.
            unsafe { p.write_volatile(value) };
            return true;
        }
        let Some(f) = Self::msr_field(index) else { return false };
        if let Err((what, e)) = self.make_current() {
            log::error!("cpu{}: vmx: writing guest MSR {index:#x}: {what}: {e}", self.cpu);
            return false;
        }
        self.write_msr_field(index, f, value).unwrap_or_else(|e| {
            log::error!("cpu{}: vmx: writing guest MSR {index:#x}: {e}", self.cpu);
            false
        })
    }

    fn state(&self) -> Option<VcpuState> {
        self.read_guest_state().map_err(|(what, e)| log::error!("cpu{}: vmx: reading the guest state: {what}: {e}", self.cpu)).ok()
    }

    fn aux_state(&self) -> Option<AuxState> {
        self.read_aux_state().map_err(|(what, e)| log::error!("cpu{}: vmx: reading the guest's events: {what}: {e}", self.cpu)).ok()
    }

    fn tsc_offset(&self) -> u64 {
        self.tsc_offset
    }

    fn set_tsc_offset(&mut self, offset: u64) -> Result<(), &'static str> {
        let caps = super::caps()?;
        if caps.proc & super::caps::proc::USE_TSC_OFFSETTING == 0 {
            return if offset == 0 { Ok(()) } else { Err("this CPU has no TSC offsetting") };
        }
        self.make_current().map_err(|_| "cannot load the VMCS")?;
        // SAFETY: the VMCS is current (above); the field exists with the control on.
        unsafe { vmcs::write64(vmcs::Field64::TscOffset, offset) }.map_err(|_| "cannot write the TSC offset")?;
        self.tsc_offset = offset;
        Ok(())
    }

    fn set_aux_state(&mut self, aux: &AuxState) -> Result<(), &'static str> {
        self.write_aux_state(aux).map_err(|(what, e)| {
            log::error!("cpu{}: vmx: loading the guest's events: {what}: {e}", self.cpu);
            "cannot write the guest's events"
        })?
    }

    fn set_state(&mut self, st: &VcpuState) -> Result<(), &'static str> {
        let caps = super::caps()?;
        self.make_current().map_err(|_| "cannot load the VMCS")?;
        // SAFETY: the VMCS is current (above).
        unsafe { self.write_guest_state(caps, st) }.map_err(|(field, e)| {
            log::error!("cpu{}: writing VMCS field {field} failed: {e}", self.cpu);
            "cannot write the guest state"
        })
    }
}

/// Blocking by NMI in the interruptibility state (SDM Vol. 3C §25.4.2).
const BLOCKING_BY_NMI: u32 = 1 << 3;

impl VmxVcpu {
    /// A control-register access the guest/host masks made exit (only
    /// writes: reads of the masked bits come from the read shadows). MOV to
    /// CR0 changing NE is emulated as the CPU would run it (`mov_to_cr0`);
    /// MOV to CR4 exits only to set VMXE, which guests are not shown: #GP.
    fn cr_access(&mut self, q: CrAccess) -> VmExit {
        let gp = |v: &mut Self| {
            v.inject_exception(13, Some(0));
            VmExit::ControlRegister
        };
        if q.kind() != CrAccess::MOV_TO_CR || !matches!(q.cr(), 0 | 4) {
            log::debug!("cpu{}: vmx: unexpected CR access {:#x}", self.cpu, q.0);
            return VmExit::Unsupported { reason: 28, info: q.0 };
        }
        if q.cr() == 4 {
            return gp(self);
        }
        let g = &self.gprs;
        let value = match q.gpr() {
            0 => g.rax,
            1 => g.rcx,
            2 => g.rdx,
            3 => g.rbx,
            4 => self.rsp,
            5 => g.rbp,
            6 => g.rsi,
            7 => g.rdi,
            8 => g.r8,
            9 => g.r9,
            10 => g.r10,
            11 => g.r11,
            12 => g.r12,
            13 => g.r13,
            14 => g.r14,
            _ => g.r15,
        };
        let done = (|| -> Result<bool, VmxError> {
            let caps = super::caps().map_err(|_| VmxError::FailInvalid)?;
            let old = vmcs::read_nat(FieldNat::GuestCr0)?;
            let efer = vmcs::read64_rw(Field64::GuestIa32Efer)?;
            let cr4 = vmcs::read_nat(FieldNat::GuestCr4)?;
            let Some(w) = mov_to_cr0(value, old, efer, cr4, caps.cr0_fixed0, caps.cr0_fixed1) else {
                return Ok(false);
            };
            // SAFETY: the VMCS is current; the values follow the VM-entry
            // checks (§27.3.1.1): the fixed bits, and EFER.LMA with the
            // "IA-32e mode guest" control when paging turns on or off.
            unsafe {
                vmcs::write_nat(FieldNat::GuestCr0, w.real)?;
                vmcs::write_nat(FieldNat::Cr0ReadShadow, w.shadow)?;
                if let Some(lma) = w.lma {
                    let lma_bit = state::EFER_LMA;
                    vmcs::write64(Field64::GuestIa32Efer, if lma { efer | lma_bit } else { efer & !lma_bit })?;
                    let ctl = vmcs::read32_rw(Field32::EntryControls)?;
                    let ia32e = entry::IA32E_MODE_GUEST;
                    vmcs::write32(Field32::EntryControls, if lma { ctl | ia32e } else { ctl & !ia32e })?;
                }
            }
            Ok(true)
        })();
        match done {
            Ok(true) => {
                self.skip_instruction();
                VmExit::ControlRegister
            }
            Ok(false) => gp(self),
            Err(e) => {
                log::error!("cpu{}: vmx: CR0 write: {e:?}", self.cpu);
                VmExit::Unsupported { reason: 28, info: q.0 }
            }
        }
    }

    /// Whether its VMCS is loaded on this CPU (not released).
    pub fn loaded_here(&self) -> bool {
        self.cpu == cpu_id()
    }

    /// `Vcpu::aux_state`: the event waiting in `pending` (delivered at the
    /// next entry by `prepare_entry`), the interruptibility state and pending
    /// debug exceptions from the VMCS, DR0-3/DR6 and TSC_AUX.
    fn read_aux_state(&self) -> Result<AuxState, (&'static str, VmxError)> {
        self.make_current()?;
        let blocking = vmcs::read32_rw(Field32::GuestInterruptibility).map_err(|e| ("interruptibility", e))?;
        let pending_debug = vmcs::read_nat(FieldNat::GuestPendingDebugExceptions).map_err(|e| ("pending debug", e))?;
        let protected = vmcs::read_nat(FieldNat::GuestCr0).map_err(|e| ("guest CR0", e))? & Cr0Flags::PROTECTED_MODE_ENABLE.bits() != 0;
        let pending = self.pending.map(|p| match p {
            // Delivered as `exception_injection` will: without an error code
            // where the exception (or real mode) has none.
            PendingEvent::Exception { vector, error_code } => snapshot::PendingEvent {
                kind: InterruptionType::HardwareException as u8,
                vector,
                error_code: error_code.filter(|_| protected && crate::arch::x86_64::vmx::decode::exception_has_error_code(vector)),
                insn_len: 0,
            },
            PendingEvent::Interrupt { vector } => {
                snapshot::PendingEvent { kind: InterruptionType::ExternalInterrupt as u8, vector, error_code: None, insn_len: 0 }
            }
            PendingEvent::Reinject { info, error_code, instruction_len } => snapshot::PendingEvent {
                kind: info.kind() as u8,
                vector: info.vector(),
                error_code: info.error_code_valid().then_some(error_code),
                insn_len: if info.needs_instruction_length() { instruction_len } else { 0 },
            },
        });
        let shadow = if self.clear_interrupt_shadow { 0 } else { (blocking & BLOCKING_BY_STI_OR_MOV_SS) as u8 };
        let tsc_aux = self.switched_msr(msr::IA32_TSC_AUX).map_or(0, |p| {
            // SAFETY: the MSR area is ours; the CPU wrote it at the last exit.
            unsafe { p.read_volatile() }
        });
        Ok(AuxState {
            pending,
            shadow,
            nmi_blocked: blocking & BLOCKING_BY_NMI != 0,
            pending_debug,
            dr: self.debug.dr,
            dr6: self.debug.dr6,
            tsc_aux,
        })
    }

    /// `Vcpu::set_aux_state`. The outer `Err` is a VMWRITE failing, the
    /// inner one a value this CPU cannot hold.
    fn write_aux_state(&mut self, aux: &AuxState) -> Result<Result<(), &'static str>, (&'static str, VmxError)> {
        let pending = match aux.pending {
            None => None,
            Some(p) => {
                let kind = match u64::from(p.kind) {
                    event_kind::EXTERNAL_INTERRUPT => InterruptionType::ExternalInterrupt,
                    event_kind::NMI => InterruptionType::Nmi,
                    event_kind::HARDWARE_EXCEPTION => InterruptionType::HardwareException,
                    event_kind::SOFTWARE_INTERRUPT => InterruptionType::SoftwareInterrupt,
                    event_kind::PRIVILEGED_SOFTWARE_EXCEPTION => InterruptionType::PrivilegedSoftwareException,
                    event_kind::SOFTWARE_EXCEPTION => InterruptionType::SoftwareException,
                    _ => return Ok(Err("no such event kind")),
                };
                let info = InterruptionInfo::new(p.vector, kind, p.error_code.is_some());
                // VM entry needs a software event's length (SDM Vol. 3C §27.2.1.3).
                if info.needs_instruction_length() && !(1..=15).contains(&p.insn_len) {
                    return Ok(Err("a software event without its instruction length"));
                }
                Some(PendingEvent::Reinject { info, error_code: p.error_code.unwrap_or(0), instruction_len: p.insn_len })
            }
        };
        let aux_msr = self.switched_msr(msr::IA32_TSC_AUX);
        if aux_msr.is_none() && aux.tsc_aux != 0 {
            return Ok(Err("TSC_AUX set, and this CPU has none"));
        }
        self.make_current()?;
        let old = vmcs::read32_rw(Field32::GuestInterruptibility).map_err(|e| ("interruptibility", e))?;
        let blocking = (old & !(BLOCKING_BY_STI_OR_MOV_SS | BLOCKING_BY_NMI))
            | (u32::from(aux.shadow) & BLOCKING_BY_STI_OR_MOV_SS)
            | if aux.nmi_blocked { BLOCKING_BY_NMI } else { 0 };
        guest_write32(Field32::GuestInterruptibility, blocking, "interruptibility")?;
        guest_write_nat(FieldNat::GuestPendingDebugExceptions, aux.pending_debug, "pending debug exceptions")?;
        self.pending = pending;
        self.clear_interrupt_shadow = false;
        self.intercepted = None;
        self.debug.dr = aux.dr;
        self.debug.dr6 = aux.dr6;
        if let Some(p) = aux_msr {
            // SAFETY: the MSR area is ours; the next entry loads it.
            unsafe { p.write_volatile(aux.tsc_aux) };
        }
        Ok(Ok(()))
    }

    /// Caches the guest state the `Vcpu` accessors report and notes an
    /// interrupted event delivery for re-injection.
    fn after_exit(&mut self, exit: &super::exit::ExitState) -> Result<(), (&'static str, VmxError)> {
        if exit.raw.reason & crate::arch::x86_64::vmx::decode::EXIT_REASON_ENTRY_FAILURE == 0 {
            self.launched = true;
        }
        self.rip = exit.rip;
        self.rsp = exit.rsp;
        self.regs_dirty = false;
        self.cpl = ar::dpl(exit.ss_access_rights);
        self.exit_instruction_len = exit.instruction_len;
        self.intercepted = (exit.raw.basic_reason() == 0).then_some(Intercepted {
            info: InterruptionInfo(exit.raw.interruption_info),
            error_code: exit.raw.interruption_error_code,
            instruction_len: exit.instruction_len,
            qualification: exit.raw.qualification,
        });
        if exit.idt_vectoring.valid() {
            self.pending = Some(PendingEvent::Reinject {
                info: exit.idt_vectoring.for_reinjection(),
                error_code: exit.idt_vectoring_error_code,
                instruction_len: exit.instruction_len,
            });
        }
        Ok(())
    }
}
