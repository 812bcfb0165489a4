//! The vendor-neutral vCPU interface, implemented by `VmxVcpu` and `SvmVcpu`.

/// Guest general-purpose registers other than RSP (which lives in the VMCS/VMCB).
/// The backends' world-switch code saves and restores this block; its layout is
/// part of their assembly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestGprs {
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rbx: u64,
    pub rbp: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
}

const _: () = assert!(core::mem::size_of::<GuestGprs>() == 15 * 8);
const _: () = assert!(core::mem::offset_of!(GuestGprs, rdi) == 0x30);
const _: () = assert!(core::mem::offset_of!(GuestGprs, r15) == 0x70);

/// The CPU mode a vCPU starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// Real mode: CS = `cs_selector` (base = selector * 16), IP = `rip`.
    Real { cs_selector: u16 },
    /// 64-bit long mode with paging: CR3 = `cr3` (guest-physical), flat
    /// segments, no GDT or IDT loaded (limits 0).
    Long64 { cr3: u64 },
    /// Linux's 64-bit boot protocol: long mode with paging on `cr3`, the GDT at
    /// `gdt_base`/`gdt_limit` (guest-physical), CS = 0x10, DS/ES/SS = 0x18,
    /// interrupts off (Documentation/arch/x86/boot.rst).
    Linux64 { cr3: u64, gdt_base: u64, gdt_limit: u16 },
    /// The Multiboot (v1) boot state (Multiboot Specification 0.6.96 §3.2):
    /// 32-bit protected mode, paging off (CR0.PE = 1, PG = 0), flat 4 GiB
    /// code (CS = 0x08) and data (DS/ES/FS/GS/SS = 0x10) segments, interrupts
    /// off. No GDT or IDT is loaded (limits 0): the specification leaves GDTR
    /// and IDTR undefined, and the kernel loads its own before it reloads a
    /// segment register.
    Protected32,
}

/// A vCPU's state at its first entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitialState {
    pub mode: EntryMode,
    pub rip: u64,
    pub rsp: u64,
}

/// One virtual CPU. Methods take effect at the next `run`.
/// What a backend kept of the entry before the last exit, for a dead guest's
/// log: the event that entry injected (0 if none) and the exit before it,
/// both in the vendor's raw format (AMD-V: EVENTINJ; exit code, EXITINFO1,
/// EXITINFO2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LastEntry {
    pub injected: u64,
    pub exit_before: (u64, u64, u64),
    /// The CPU the exit before was taken on, and the one this entry ran on.
    pub cpu_before: u32,
    pub cpu: u32,
    /// TSC ticks from the exit before to this entry (how long the vCPU was
    /// out of the guest: handled, waiting, descheduled).
    pub out_tsc: u64,
    /// The nested-table root this entry ran on was the vCPU's own.
    pub own_tables: bool,
}

pub trait Vcpu {
    /// Before a run slice on this CPU: loads what the vCPU keeps in the CPU
    /// across its exits (debug registers, TSC_AUX, its TLB tag), so that
    /// `run` after an exit only switches worlds. `run` enters on its own if
    /// this was not called.
    fn enter(&mut self) {}
    /// After the slice's last `run`, before another vCPU runs here: reads
    /// that state back out of the CPU.
    fn leave(&mut self) {}
    /// Enters the guest and returns at the next exit the common code must handle.
    fn run(&mut self) -> crate::virt::VmExit;
    /// General-purpose registers (not RSP).
    fn gprs(&mut self) -> &mut GuestGprs;
    fn rip(&self) -> u64;
    fn set_rip(&mut self, rip: u64);
    fn rsp(&self) -> u64;
    /// The guest's current privilege level, 0..=3.
    fn cpl(&self) -> u8;
    /// Moves RIP past the instruction that caused the last exit. Backends know
    /// the length without NRIP support (QEMU has none).
    fn skip_instruction(&mut self);
    /// Delivers exception `vector` at the next entry.
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>);
    /// Delivers the exception whose interception caused the last exit
    /// (`VmExit::Exception`) as the CPU would have delivered it without the
    /// intercept: same vector, error code and event type, with the debug
    /// status (DR6) the exception set.
    fn reflect_exception(&mut self);
    /// Whether an external interrupt can be injected now: RFLAGS.IF set, no
    /// interrupt shadow (STI/MOV SS), no other event pending injection.
    fn interrupt_ready(&self) -> bool {
        false
    }
    /// Injects external interrupt `vector` at the next entry; only when
    /// `interrupt_ready`.
    fn inject_interrupt(&mut self, _vector: u8) {}
    /// Asks for a `VmExit::InterruptWindow` as soon as the guest can take an
    /// interrupt (`true`), or stops asking (`false`).
    fn request_interrupt_window(&mut self, _on: bool) {}
    /// The host TSC by which the guest must be out again (the slice's end,
    /// the vLAPIC's next timer), also if the host timer's interrupt does not
    /// make it exit; `None`: no bound but the interrupts. The host timer is
    /// armed for it as well: this is the backstop, not the timer.
    fn set_deadline(&mut self, _tsc: Option<u64>) {}
    /// What instruction emulation needs of the guest's CPU state: control
    /// registers, EFER, CS (for RIP's meaning). `None` if the backend cannot say.
    fn cpu_state(&self) -> Option<crate::emulate::mmio::CpuState> {
        None
    }
    /// The value of an MSR the backend keeps in the guest's state area (EFER, PAT,
    /// segment bases, syscall MSRs…), or `None` if it keeps no such MSR.
    fn guest_msr(&self, _msr: u32) -> Option<u64> {
        None
    }
    /// Sets such an MSR; false if the backend keeps no such MSR or the value is
    /// invalid for it (the caller then injects #GP).
    fn set_guest_msr(&mut self, _msr: u32, _value: u64) -> bool {
        false
    }
    /// The vCPU's architectural state as a value (`virt::state`), read from
    /// the VMCS / VMCB; `None` if the backend cannot read it now.
    fn state(&self) -> Option<super::VcpuState> {
        None
    }
    /// Loads `state` into the vCPU, for its next entry. Pending events and
    /// an interrupt shadow are dropped, as at INIT.
    fn set_state(&mut self, _state: &super::VcpuState) -> Result<(), &'static str> {
        Err("this vCPU cannot load a state")
    }
    /// What the backend keeps beside `state`: the event pending injection,
    /// the interrupt shadow, DR0-3/DR6, TSC_AUX (`virt::snapshot`).
    fn aux_state(&self) -> Option<super::snapshot::AuxState> {
        None
    }
    /// Loads it, after `set_state` (which drops pending events). The caller
    /// checked it (`VcpuSnapshot::from_record`).
    fn set_aux_state(&mut self, _aux: &super::snapshot::AuxState) -> Result<(), &'static str> {
        Err("this vCPU cannot load a state")
    }
    /// What the CPU adds to the host's TSC for what the guest reads (RDTSC,
    /// RDTSCP and a TSC read that does not exit), modulo 2^64.
    fn tsc_offset(&self) -> u64 {
        0
    }
    /// Sets it, for the next entry (a migrated guest's TSC goes on from the
    /// value it had on the other host, docs/migration.md "Time").
    fn set_tsc_offset(&mut self, offset: u64) -> Result<(), &'static str> {
        if offset == 0 {
            Ok(())
        } else {
            Err("this vCPU has no TSC offset")
        }
    }
    /// `LastEntry`, where the backend keeps it.
    fn last_entry(&self) -> Option<LastEntry> {
        None
    }
}
