//! An SVM vCPU: its VMCB, permission maps and the world switch.

use super::vmcb::{self, intercept1 as i1, intercept2 as i2, exit_code, Segment, Vmcb};
use crate::arch::x86_64::cpu::{msr, DebugRegs};
use crate::mem::{alloc_frames, free_frames, HostPhysAddr};
use crate::virt::exit::Combined;
use crate::virt::tlb_tag::{self, Held};
use crate::virt::snapshot::{self, AuxState};
use crate::virt::state::{self, VcpuState};
use oxen_abi::vcpu_snapshot::event_kind;
use crate::virt::{GuestGprs, InitialState, Vcpu, VmExit};
use core::arch::global_asm;

/// I/O permission map: 12 KiB, one bit per port (APM Vol. 2 §15.10.1).
const IOPM_PAGES: usize = 3;
/// MSR permission map: 8 KiB (APM Vol. 2 §15.11).
const MSRPM_PAGES: usize = 2;

const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;
/// The guest's EFER must have SVME set or VMRUN fails its consistency checks
/// (APM Vol. 2 §15.5.1); RDMSR of EFER is intercepted, so the guest never sees it.
const EFER_SVME: u64 = 1 << 12;
/// The exceptions intercepted and reflected (#DB, #AC).
const DB_VECTOR: u8 = 1;
const GP_VECTOR: u8 = 13;
const DF_VECTOR: u8 = 8;
const AC_VECTOR: u8 = 17;

pub struct SvmVcpu {
    vmcb: HostPhysAddr,
    iopm: HostPhysAddr,
    msrpm: HostPhysAddr,
    gprs: GuestGprs,
    /// Guest RIP after the instruction behind the last exit, if it was one.
    next_rip: Option<u64>,
    /// The CPU it last ran on (`u32::MAX`: none yet).
    cpu: u32,
    /// DR0-DR3 (DR6 and DR7 are in the VMCB).
    debug: DebugRegs,
    /// The guest's IA32_TSC_AUX (what RDTSCP and RDPID return), loaded into
    /// the CPU before each run when it differs from what the CPU holds.
    tsc_aux: u32,
    /// The exception behind the last `VmExit::Exception`, for `reflect_exception`.
    intercepted: Option<(u8, Option<u32>)>,
    /// Its ASID: from the per-CPU cache of the CPU it runs on (`virt::tlb_tag`).
    asid: Option<Held>,
    /// Between `enter` and `leave`: its DR0-DR3 and TSC_AUX are in the CPU
    /// (exits in between are handled without switching them), and this CPU's
    /// host save area.
    entered: Option<HostPhysAddr>,
    /// The exit before the last one (code, EXITINFO1, EXITINFO2): what the
    /// vCPU was doing when `host_state_check` finds its state lost.
    previous_exit: (u64, u64, u64),
    /// What the last VMRUN injected (EVENTINJ) and the exit before the last
    /// one: `Vcpu::last_entry`, for a triple fault's log.
    last_entry: crate::virt::vcpu::LastEntry,
    /// The CPU and TSC of the last exit, for `last_entry`.
    last_exit_at: (u32, u64),
    /// Its nested tables' root, as given at creation.
    npt_root: u64,
}

impl SvmVcpu {
    fn vmcb(&self) -> &Vmcb {
        // SAFETY: `vmcb` is a frame this vCPU owns, identity mapped; the CPU
        // writes it only during VMRUN, when no reference is live.
        unsafe { &*self.vmcb.as_ptr::<Vmcb>() }
    }

    fn vmcb_mut(&mut self) -> &mut Vmcb {
        // SAFETY: as in `vmcb`, and `&mut self` makes this the only reference.
        unsafe { &mut *self.vmcb.as_ptr::<Vmcb>() }
    }

    /// A vCPU on the nested tables at `npt_root`. Its ASID comes from the CPU
    /// that runs it, at each entry (`take_asid`).
    pub fn new(npt_root: u64, state: &InitialState) -> Result<Self, &'static str> {
        if super::num_asids() < 2 {
            return Err("the CPU has no ASID for guests");
        }
        let vmcb = alloc_frames(1, 1).ok_or("out of memory for a VMCB")?;
        let Some(iopm) = alloc_frames(IOPM_PAGES, 1) else {
            free_frames(vmcb, 1);
            return Err("out of memory for an I/O permission map");
        };
        let Some(msrpm) = alloc_frames(MSRPM_PAGES, 1) else {
            free_frames(vmcb, 1);
            free_frames(iopm, IOPM_PAGES);
            return Err("out of memory for an MSR permission map");
        };
        // Intercept every port and every MSR: the guest reaches only what the exit
        // handlers allow.
        // SAFETY: both maps are frames we just allocated.
        unsafe {
            core::ptr::write_bytes(iopm.as_ptr::<u8>(), 0xff, IOPM_PAGES * 4096);
            core::ptr::write_bytes(msrpm.as_ptr::<u8>(), 0xff, MSRPM_PAGES * 4096);
        }
        let mut v = SvmVcpu {
            vmcb,
            iopm,
            msrpm,
            gprs: GuestGprs::default(),
            next_rip: None,
            cpu: crate::arch::x86_64::cpu_id(),
            debug: DebugRegs::RESET,
            tsc_aux: 0,
            intercepted: None,
            asid: None,
            entered: None,
            previous_exit: (0, 0, 0),
            last_entry: Default::default(),
            last_exit_at: (crate::arch::x86_64::cpu_id(), 0),
            npt_root,
        };
        let c = &mut v.vmcb_mut().control;
        // Every instruction that could reach the host or other guests exits:
        // the SVM instructions, INVD/WBINVD, MONITOR/MWAIT, RDPMC (see
        // `exit::instruction` for what the guest gets).
        c.intercept1 = i1::INTR | i1::NMI | i1::SMI | i1::INIT | i1::RDPMC | i1::CPUID | i1::INVD | i1::HLT
            | i1::INVLPGA | i1::IOIO_PROT | i1::MSR_PROT | i1::TASK_SWITCH | i1::SHUTDOWN;
        c.intercept2 = i2::VMRUN | i2::VMMCALL | i2::VMLOAD | i2::VMSAVE | i2::STGI | i2::CLGI | i2::SKINIT
            | i2::WBINVD | i2::MONITOR | i2::MWAIT | i2::XSETBV;
        // #DB and #AC exit, so an exception that recurs while being delivered
        // (XSA-156) cannot hold the CPU in microcode: see `exit::handle`.
        // #GP exits so that an SVM instruction above CPL 0 gets #UD, as on a
        // CPU without SVM (`exit::general_protection`).
        c.intercept_exceptions = (1 << DB_VECTOR) | (1 << GP_VECTOR) | (1 << AC_VECTOR);
        c.iopm_base_pa = iopm.as_u64();
        c.msrpm_base_pa = msrpm.as_u64();
        // An ASID is assigned before each entry (`take_asid`).
        c.tlb_control = vmcb::TLB_CONTROL_NONE;
        // Guest RFLAGS.IF must not mask host interrupts.
        c.int_ctl = vmcb::V_INTR_MASKING;
        c.np_enable = vmcb::NP_ENABLE;
        c.n_cr3 = npt_root;

        {
            let s = &mut v.vmcb_mut().save;
            s.dr6 = 0xffff_0ff0;
        }
        v.load_state(&VcpuState::from_entry(state));
        Ok(v)
    }
}

impl SvmVcpu {
    /// Makes sure the VMCB holds an ASID valid on this CPU in its current
    /// generation: kept while it is, else the next one, with a flush of every
    /// ASID when the CPU starts a new generation.
    fn take_asid(&mut self) {
        let here = crate::arch::x86_64::cpu_id();
        let max = super::num_asids().saturating_sub(1).min(u64::from(u16::MAX)) as u16;
        let a = tlb_tag::assign(here, max, self.asid);
        self.asid = Some(a.held);
        if a.changed {
            let c = &mut self.vmcb_mut().control;
            c.guest_asid = a.held.tag.into();
            if a.flush_all {
                c.tlb_control = vmcb::TLB_CONTROL_FLUSH_ALL;
            }
        }
    }

    /// Writes `st` into the VMCB's save area (and the GPR block).
    fn load_state(&mut self, st: &VcpuState) {
        self.gprs = st.gprs;
        self.next_rip = None;
        let s = &mut self.vmcb_mut().save;
        (s.rip, s.rsp, s.rflags, s.rax) = (st.rip, st.rsp, st.rflags, st.gprs.rax);
        // The guest never sees EFER.SVME, which VMRUN requires.
        (s.cr0, s.cr2, s.cr3, s.cr4, s.efer) = (st.cr0, st.cr2, st.cr3, st.cr4, st.efer | EFER_SVME);
        (s.cs, s.ds, s.es, s.fs, s.gs, s.ss) =
            (seg_to_vmcb(&st.cs), seg_to_vmcb(&st.ds), seg_to_vmcb(&st.es), seg_to_vmcb(&st.fs), seg_to_vmcb(&st.gs), seg_to_vmcb(&st.ss));
        (s.tr, s.ldtr) = (seg_to_vmcb(&st.tr), seg_to_vmcb(&st.ldtr));
        s.gdtr = Segment { selector: 0, attrib: 0, limit: st.gdtr.limit.into(), base: st.gdtr.base };
        s.idtr = Segment { selector: 0, attrib: 0, limit: st.idtr.limit.into(), base: st.idtr.base };
        // CPL is SS.DPL (APM Vol. 2 §15.5.1).
        s.cpl = ((st.ss.ar >> 5) & 3) as u8;
        (s.dr7, s.g_pat) = (st.dr7, st.pat);
        (s.sysenter_cs, s.sysenter_esp, s.sysenter_eip) = (st.sysenter_cs, st.sysenter_esp, st.sysenter_eip);
        (s.star, s.lstar, s.cstar, s.sfmask, s.kernel_gs_base) = (st.star, st.lstar, st.cstar, st.sfmask, st.kernel_gs_base);
        // Events pending from the old state are dropped, as at INIT.
        let c = &mut self.vmcb_mut().control;
        c.event_inj = 0;
        c.int_shadow = 0;
        self.intercepted = None;
    }

    /// Lets the guest reach ports `ports` directly (clears their IOPM bits).
    pub fn pass_through_ports(&mut self, ports: core::ops::RangeInclusive<u16>) {
        // SAFETY: the IOPM is this vCPU's own 12 KiB.
        let map = unsafe { core::slice::from_raw_parts_mut(self.iopm.as_ptr::<u8>(), IOPM_PAGES * 4096) };
        for p in ports {
            map[usize::from(p) / 8] &= !(1 << (p % 8));
        }
    }

    /// Whether the guest's accesses to `port` exit (sets or clears its IOPM
    /// bit). The processor reads the IOPM at each IN/OUT (APM Vol. 2 §15.10.1),
    /// so a change made while the vCPU is out of the guest holds from its next
    /// instruction on.
    pub fn intercept_port(&mut self, port: u16, on: bool) {
        // SAFETY: the IOPM is this vCPU's own 12 KiB.
        let map = unsafe { core::slice::from_raw_parts_mut(self.iopm.as_ptr::<u8>(), IOPM_PAGES * 4096) };
        let (byte, bit) = (usize::from(port) / 8, 1 << (port % 8));
        if on {
            map[byte] |= bit;
        } else {
            map[byte] &= !bit;
        }
    }

    /// Lets the guest read and write `msr` directly (clears its MSRPM bits).
    /// Only for MSRs whose guest copy the VMCB holds.
    fn pass_through_msr(&mut self, msr: u32) {
        // MSRPM ranges (APM Vol. 2 §15.11): two bits per MSR, read then write.
        let (base, offset) = match msr {
            0..=0x1fff => (0, 0),
            0xc000_0000..=0xc000_1fff => (0xc000_0000, 0x800),
            0xc001_0000..=0xc001_1fff => (0xc001_0000, 0x1000),
            _ => return,
        };
        let bit = (msr - base) as usize * 2;
        // SAFETY: the MSRPM is this vCPU's own 8 KiB.
        let map = unsafe { core::slice::from_raw_parts_mut(self.msrpm.as_ptr::<u8>(), MSRPM_PAGES * 4096) };
        map[offset + bit / 8] &= !(0b11 << (bit % 8));
    }

    /// Passes through the MSRs VMLOAD/VMSAVE and VMRUN switch with the guest
    /// (segment bases, syscall and sysenter MSRs): the guest owns them outright.
    pub fn pass_through_switched_msrs(&mut self) {
        for msr in SWITCHED_MSRS {
            self.pass_through_msr(msr);
        }
    }
}

/// MSRs whose guest values live in the VMCB and are switched by hardware.
const SWITCHED_MSRS: [u32; 10] = [
    msr::IA32_FS_BASE,
    msr::IA32_GS_BASE,
    msr::IA32_KERNEL_GS_BASE,
    msr::IA32_STAR,
    msr::IA32_LSTAR,
    msr::IA32_CSTAR,
    msr::IA32_FMASK,
    msr::IA32_SYSENTER_CS,
    msr::IA32_SYSENTER_ESP,
    msr::IA32_SYSENTER_EIP,
];

/// Valid PAT memory types: UC, WC, WT, WP, WB, UC- (SDM Vol. 3 §13.12.2).
fn pat_valid(pat: u64) -> bool {
    pat.to_le_bytes().iter().all(|&t| matches!(t, 0 | 1 | 4 | 5 | 6 | 7))
}

impl SvmVcpu {
    /// Makes the vCPU runnable on the calling CPU. A VMCB is not tied to a CPU;
    /// its clean bits describe what the *last* CPU cached, so they go.
    pub fn adopt(&mut self) {
        let here = crate::arch::x86_64::cpu_id();
        if self.cpu != here {
            // Its ASID was the other CPU's: `take_asid` gives it one of this
            // CPU's, fresh in its generation, so nothing cached needs a flush.
            self.cpu = here;
            self.vmcb_mut().control.clean_bits = 0;
            // Left without `leave` on the other CPU: its debug registers stay
            // there (lost, never read into another vCPU), and this CPU's host
            // area is looked up again.
            self.entered = None;
        }
    }
}

/// Where the host resumes after #VMEXIT (`svm_vmrun_resume`).
fn resume_rip() -> u64 {
    // Only the label's address is taken, never its bytes.
    core::ptr::addr_of!(svm_vmrun_resume) as u64
}

impl SvmVcpu {
    /// The VMCB's guest state is the host's own as VMRUN left it: the RIP
    /// right after `vmrun` and the hypervisor's CR3. No guest of this vCPU
    /// can have that state (its CR3 would point at the hypervisor's page
    /// tables, which are outside every guest's memory), so its own state is
    /// lost: written over by a #VMEXIT the CPU took while the host already
    /// ran, or by a VMRUN whose host save area is this VMCB. Seen twice under
    /// QEMU 7.2 TCG (dom0's vCPU, while many domUs ran): the vCPU then loops
    /// on nested-page faults walking the host's page tables. It is ended as
    /// by a triple fault (a domU crashes; dom0 stops the host), with what the
    /// log needs to tell the two causes apart: whose stack the saved RSP is
    /// on, and whether the VMCB is a CPU's host save area.
    #[cold]
    fn host_state_found(&mut self) -> VmExit {
        let (vmcb, save, c) = (self.vmcb.as_u64(), &self.vmcb().save, &self.vmcb().control);
        let rsp: u64;
        // SAFETY: reads the stack pointer.
        unsafe { core::arch::asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack, preserves_flags)) };
        log::error!(
            "svm: cpu{}: host state in a guest's VMCB: the VMCB at {vmcb:#x} holds the host's own state after #VMEXIT (rip {:#x}, cr3 {:#x}, rsp {:#x}; this CPU's rsp is {rsp:#x}); exit {:#x} {:#x} {:#x}, the one before {:x?}; host save areas (hsave, vmsave) {:x?}; the guest's own state is lost",
            crate::arch::x86_64::cpu_id(),
            save.rip,
            save.cr3,
            save.rsp,
            c.exit_code,
            c.exit_info1,
            c.exit_info2,
            self.previous_exit,
            super::host_save_areas(),
        );
        VmExit::TripleFault
    }
}

impl Drop for SvmVcpu {
    fn drop(&mut self) {
        free_frames(self.vmcb, 1);
        free_frames(self.iopm, IOPM_PAGES);
        free_frames(self.msrpm, MSRPM_PAGES);
    }
}

extern "C" {
    /// Runs the guest: VMSAVE host, load guest GPRs, VMLOAD/VMRUN/VMSAVE guest,
    /// store guest GPRs, VMLOAD host.
    fn svm_world_switch(gprs: *mut GuestGprs, vmcb: u64, host_vmcb: u64);
    /// The instruction after `vmrun` in `svm_world_switch`: where the host
    /// resumes after #VMEXIT (the RIP VMRUN saved in the host save area).
    static svm_vmrun_resume: u8;
}

// The guest GPR offsets below follow `GuestGprs` (layout asserted in virt/vcpu.rs).
global_asm!(
    ".global svm_world_switch",
    "svm_world_switch:",
    "push rbp", "push rbx", "push r12", "push r13", "push r14", "push r15",
    "push rdx",                     // host VMSAVE page
    "push rdi",                     // GuestGprs pointer
    "mov rax, rdx",
    "vmsave rax",
    "mov rax, rsi",
    "mov rcx, [rdi + 0x08]", "mov rdx, [rdi + 0x10]", "mov rbx, [rdi + 0x18]", "mov rbp, [rdi + 0x20]",
    "mov rsi, [rdi + 0x28]", "mov r8,  [rdi + 0x38]", "mov r9,  [rdi + 0x40]", "mov r10, [rdi + 0x48]",
    "mov r11, [rdi + 0x50]", "mov r12, [rdi + 0x58]", "mov r13, [rdi + 0x60]", "mov r14, [rdi + 0x68]",
    "mov r15, [rdi + 0x70]", "mov rdi, [rdi + 0x30]",
    "vmload rax",
    "vmrun rax",
    ".global svm_vmrun_resume",
    "svm_vmrun_resume:",
    "vmsave rax",
    "push rdi",                     // guest RDI
    "mov rdi, [rsp + 8]",
    "mov [rdi + 0x08], rcx", "mov [rdi + 0x10], rdx", "mov [rdi + 0x18], rbx", "mov [rdi + 0x20], rbp",
    "mov [rdi + 0x28], rsi", "mov [rdi + 0x38], r8",  "mov [rdi + 0x40], r9",  "mov [rdi + 0x48], r10",
    "mov [rdi + 0x50], r11", "mov [rdi + 0x58], r12", "mov [rdi + 0x60], r13", "mov [rdi + 0x68], r14",
    "mov [rdi + 0x70], r15",
    "pop qword ptr [rdi + 0x30]",
    "mov rax, [rsp + 8]",
    "vmload rax",
    "add rsp, 16",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop rbx", "pop rbp",
    "ret",
);

impl Vcpu for SvmVcpu {
    fn enter(&mut self) {
        if self.entered.is_some() {
            return;
        }
        self.take_asid();
        super::load_tsc_aux(self.tsc_aux);
        // SAFETY: before this vCPU's runs on this CPU; its DR7 (in the VMCB)
        // decides what these arm, and only while it runs. The hypervisor sets
        // no breakpoints, and #VMEXIT loads the host's DR7 (APM Vol. 2
        // §15.5.1, "host state"), so they arm nothing while exits are handled.
        unsafe { self.debug.load(false) };
        self.entered = Some(super::host_vmcb());
    }

    fn leave(&mut self) {
        if self.entered.take().is_some() {
            // Read back before another vCPU's are loaded over them.
            self.debug.store(false);
        }
    }

    fn run(&mut self) -> VmExit {
        self.enter();
        loop {
            self.vmcb_mut().save.rax = self.gprs.rax;
            let host = self.entered.map_or_else(|| super::host_vmcb().as_u64(), |h| h.as_u64());
            let injected = self.vmcb().control.event_inj;
            let entry_n_cr3 = self.vmcb().control.n_cr3;
            let entry_tsc = crate::arch::x86_64::time::rdtsc();
            if self.vmcb().save.rip == resume_rip() && self.vmcb().save.cr3 == crate::arch::x86_64::paging::root() {
                log::error!("svm: host state in a guest's VMCB before VMRUN (VMCB {:#x})", self.vmcb.as_u64());
            }
            // SAFETY: the VMCB, its maps and nested tables are valid and owned by
            // this vCPU; CLGI masks everything across the switch. Host RFLAGS.IF
            // is set at VMRUN so a physical interrupt exits the guest (QEMU samples
            // it there). #VMEXIT restores that IF = 1: CLI before STGI keeps a
            // physical interrupt pending (taken below only after an INTR exit),
            // so one that arrives with another exit is not consumed unseen: it
            // makes the next VMRUN exit at once, and the caller sees `Preempted`
            // (the caller handles most exits without looking at the time). The
            // world switch restores every callee-saved register and the host's
            // VMSAVE state.
            unsafe {
                core::arch::asm!("clgi", "sti", options(nomem, nostack));
                svm_world_switch(&mut self.gprs, self.vmcb.as_u64(), host);
                core::arch::asm!("cli", "stgi", options(nomem, nostack));
            }
            let vmcb = self.vmcb_mut();
            vmcb.control.tlb_control = vmcb::TLB_CONTROL_NONE;
            // An event whose delivery the exit interrupted is in EXITINTINFO (same
            // format as EVENTINJ, APM Vol. 2 §15.7.2): inject it again, or it is
            // lost (and a virtual APIC's in-service bit stays set for good).
            let pending = vmcb.control.exit_int_info;
            vmcb.control.event_inj = if pending & vmcb::EVENT_VALID != 0 { pending } else { 0 };
            self.gprs.rax = self.vmcb().save.rax;
            if self.vmcb().save.rip == resume_rip() && self.vmcb().save.cr3 == crate::arch::x86_64::paging::root() {
                return self.host_state_found();
            }
            let here = crate::arch::x86_64::cpu_id();
            let (cpu_before, exit_tsc) = self.last_exit_at;
            self.last_exit_at = (here, crate::arch::x86_64::time::rdtsc());
            self.last_entry = crate::virt::vcpu::LastEntry {
                injected,
                exit_before: self.previous_exit,
                cpu_before,
                cpu: here,
                out_tsc: entry_tsc.saturating_sub(exit_tsc),
                own_tables: entry_n_cr3 == self.npt_root,
            };
            let c = &self.vmcb().control;
            self.previous_exit = (c.exit_code, c.exit_info1, c.exit_info2);
            let (mut exit, next) = super::exit::translate(self.vmcb());
            self.next_rip = next;
            match &mut exit {
                // Physical interrupts are the host's: a one-instruction window
                // lets the host IDT take it; the caller may have timers to look at.
                VmExit::Unsupported { reason: exit_code::INTR, .. } => {
                    // SAFETY: the hypervisor's IDT handles every vector the host
                    // APIC raises; interrupts are off again right after.
                    unsafe { core::arch::asm!("sti", "nop", "cli", options(nomem, nostack)) };
                    return VmExit::Preempted;
                }
                // A physical NMI or SMI is taken by the host once STGI above
                // lets it in (an NMI through the IDT's NMI gate): the guest runs on.
                VmExit::Unsupported { reason: exit_code::NMI | exit_code::SMI, .. } => continue,
                VmExit::Exception { vector, error_code } => {
                    // Raised while delivering another exception (now in
                    // EVENTINJ for re-injection): combined as the CPU would.
                    let first = pending & 0xff;
                    if pending & vmcb::EVENT_VALID != 0 && pending & vmcb::EVENT_TYPE_MASK == vmcb::EVENT_TYPE_EXCEPTION {
                        match crate::virt::exit::combine(first as u8, *vector) {
                            Combined::TripleFault => return VmExit::TripleFault,
                            Combined::DoubleFault => {
                                self.inject_exception(DF_VECTOR, Some(0));
                                continue;
                            }
                            Combined::Serial => {}
                        }
                    }
                    self.intercepted = Some((*vector, *error_code));
                }
                VmExit::Cpuid { subleaf, .. } => *subleaf = self.gprs.rcx as u32,
                VmExit::MsrRead { msr } => *msr = self.gprs.rcx as u32,
                VmExit::Xsetbv { xcr, value } => {
                    *xcr = self.gprs.rcx as u32;
                    *value |= (self.gprs.rdx & 0xffff_ffff) << 32;
                }
                VmExit::MsrWrite { msr, value } => {
                    *msr = self.gprs.rcx as u32;
                    *value = (self.gprs.rdx << 32) | (self.gprs.rax & 0xffff_ffff);
                }
                VmExit::Unsupported { reason: exit_code::INVALID, .. } => {
                    log::error!("svm: VMRUN failed its consistency checks (VMEXIT_INVALID)");
                }
                _ => {}
            }
            return exit;
        }
    }

    fn gprs(&mut self) -> &mut GuestGprs {
        &mut self.gprs
    }

    fn rip(&self) -> u64 {
        self.vmcb().save.rip
    }

    fn set_rip(&mut self, rip: u64) {
        self.vmcb_mut().save.rip = rip;
    }

    fn rsp(&self) -> u64 {
        self.vmcb().save.rsp
    }

    fn cpl(&self) -> u8 {
        self.vmcb().save.cpl
    }

    fn skip_instruction(&mut self) {
        match self.next_rip.take() {
            Some(rip) => {
                self.set_rip(rip);
                // An STI or MOV SS shadow covers one instruction; having completed
                // it for the guest, the shadow is over (else `sti; hlt` would leave
                // a halted guest uninterruptible).
                self.vmcb_mut().control.int_shadow &= !vmcb::INT_SHADOW;
            }
            None => log::error!("svm: skip_instruction after an exit with no instruction length"),
        }
    }

    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        let mut ev = vmcb::EVENT_VALID | vmcb::EVENT_TYPE_EXCEPTION | u64::from(vector);
        if let Some(code) = error_code {
            ev |= vmcb::EVENT_ERROR_CODE_VALID | (u64::from(code) << 32);
        }
        self.vmcb_mut().control.event_inj = ev;
    }

    fn reflect_exception(&mut self) {
        // The CPU updated the VMCB's DR6 before the #DB intercept (APM Vol. 2
        // §15.12); the exception goes in as it came.
        if let Some((vector, error_code)) = self.intercepted.take() {
            let s = &mut self.vmcb_mut().save;
            if vector == DB_VECTOR && crate::virt::exit::debug::is_fault(s.dr6, s.dr7) {
                s.rflags |= crate::virt::exit::debug::RFLAGS_RF;
            }
            self.inject_exception(vector, error_code);
        }
    }

    fn interrupt_ready(&self) -> bool {
        const RFLAGS_IF: u64 = 1 << 9;
        let v = self.vmcb();
        v.save.rflags & RFLAGS_IF != 0
            && v.control.int_shadow & vmcb::INT_SHADOW == 0
            && v.control.event_inj & vmcb::EVENT_VALID == 0
    }

    fn inject_interrupt(&mut self, vector: u8) {
        self.vmcb_mut().control.event_inj = vmcb::EVENT_VALID | vmcb::EVENT_TYPE_INTR | u64::from(vector);
    }

    fn request_interrupt_window(&mut self, on: bool) {
        // A virtual interrupt request makes the CPU exit with VINTR as soon as the
        // guest could take it (APM Vol. 2 §15.21.4); we then inject the real one.
        let c = &mut self.vmcb_mut().control;
        let bits = vmcb::V_IRQ | vmcb::V_IGN_TPR | (0xf << vmcb::V_INTR_PRIO_SHIFT);
        if on {
            c.int_ctl |= bits;
            c.intercept1 |= i1::VINTR;
        } else {
            c.int_ctl &= !bits;
            c.intercept1 &= !i1::VINTR;
        }
    }

    fn cpu_state(&self) -> Option<crate::emulate::mmio::CpuState> {
        /// CS attribute bits L (9) and D/B (10) in the VMCB's compressed format.
        const CS_L: u16 = 1 << 9;
        const CS_D: u16 = 1 << 10;
        let s = &self.vmcb().save;
        Some(crate::emulate::mmio::CpuState::from_raw(
            [s.cr0, s.cr3, s.cr4, s.efer],
            s.cs.base,
            (s.cs.attrib & CS_L != 0, s.cs.attrib & CS_D != 0),
            crate::emulate::mmio::host_phys_bits(),
        ))
    }

    fn guest_msr(&self, m: u32) -> Option<u64> {
        let s = &self.vmcb().save;
        Some(match m {
            // The guest never sees SVME: it is ours.
            msr::IA32_EFER => s.efer & !EFER_SVME,
            msr::IA32_PAT => s.g_pat,
            msr::IA32_FS_BASE => s.fs.base,
            msr::IA32_GS_BASE => s.gs.base,
            msr::IA32_KERNEL_GS_BASE => s.kernel_gs_base,
            msr::IA32_STAR => s.star,
            msr::IA32_LSTAR => s.lstar,
            msr::IA32_CSTAR => s.cstar,
            msr::IA32_FMASK => s.sfmask,
            msr::IA32_SYSENTER_CS => s.sysenter_cs,
            msr::IA32_SYSENTER_ESP => s.sysenter_esp,
            msr::IA32_SYSENTER_EIP => s.sysenter_eip,
            msr::IA32_TSC_AUX if super::has_tsc_aux() => u64::from(self.tsc_aux),
            _ => return None,
        })
    }

    fn set_guest_msr(&mut self, m: u32, v: u64) -> bool {
        if m == msr::IA32_TSC_AUX && super::has_tsc_aux() {
            // Bits 63:32 are reserved (#GP), APM Vol. 2 §13.2.2.
            return match u32::try_from(v) {
                Ok(aux) => {
                    self.tsc_aux = aux;
                    if self.entered.is_some() {
                        // The CPU holds the guest's between exits.
                        super::load_tsc_aux(aux);
                    }
                    true
                }
                Err(_) => false,
            };
        }
        // Addresses must be canonical and SFMASK's upper half is reserved, or
        // WRMSR would #GP on a real CPU (APM Vol. 2 §6.1.1, §3.2.2); nothing
        // checks what VMLOAD/VMRUN later load.
        let address = matches!(
            m,
            msr::IA32_FS_BASE
                | msr::IA32_GS_BASE
                | msr::IA32_KERNEL_GS_BASE
                | msr::IA32_LSTAR
                | msr::IA32_CSTAR
                | msr::IA32_SYSENTER_ESP
                | msr::IA32_SYSENTER_EIP
        );
        if (address && !crate::arch::x86_64::cpu::is_canonical(v)) || (m == msr::IA32_FMASK && v >> 32 != 0) {
            return false;
        }
        let s = &mut self.vmcb_mut().save;
        match m {
            msr::IA32_EFER => {
                // SCE, LME, LMA, NXE, FFXSR; anything else (SVME included) is refused.
                const ALLOWED: u64 = 1 | EFER_LME | EFER_LMA | EFER_NXE | (1 << 14);
                if v & !ALLOWED != 0 {
                    return false;
                }
                s.efer = v | EFER_SVME;
            }
            msr::IA32_PAT if pat_valid(v) => s.g_pat = v,
            msr::IA32_FS_BASE => s.fs.base = v,
            msr::IA32_GS_BASE => s.gs.base = v,
            msr::IA32_KERNEL_GS_BASE => s.kernel_gs_base = v,
            msr::IA32_STAR => s.star = v,
            msr::IA32_LSTAR => s.lstar = v,
            msr::IA32_CSTAR => s.cstar = v,
            msr::IA32_FMASK => s.sfmask = v,
            msr::IA32_SYSENTER_CS => s.sysenter_cs = v,
            msr::IA32_SYSENTER_ESP => s.sysenter_esp = v,
            msr::IA32_SYSENTER_EIP => s.sysenter_eip = v,
            _ => return false,
        }
        true
    }

    fn state(&self) -> Option<VcpuState> {
        let s = &self.vmcb().save;
        let mut gprs = self.gprs;
        gprs.rax = s.rax;
        Some(VcpuState {
            gprs,
            rsp: s.rsp,
            rip: s.rip,
            rflags: s.rflags,
            cr0: s.cr0,
            cr2: s.cr2,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer & !EFER_SVME,
            cs: seg_from_vmcb(&s.cs),
            ds: seg_from_vmcb(&s.ds),
            es: seg_from_vmcb(&s.es),
            fs: seg_from_vmcb(&s.fs),
            gs: seg_from_vmcb(&s.gs),
            ss: seg_from_vmcb(&s.ss),
            tr: seg_from_vmcb(&s.tr),
            ldtr: seg_from_vmcb(&s.ldtr),
            gdtr: state::Table { base: s.gdtr.base, limit: s.gdtr.limit as u16 },
            idtr: state::Table { base: s.idtr.base, limit: s.idtr.limit as u16 },
            dr7: s.dr7,
            pat: s.g_pat,
            sysenter_cs: s.sysenter_cs,
            sysenter_esp: s.sysenter_esp,
            sysenter_eip: s.sysenter_eip,
            star: s.star,
            lstar: s.lstar,
            cstar: s.cstar,
            sfmask: s.sfmask,
            kernel_gs_base: s.kernel_gs_base,
        })
    }

    fn set_state(&mut self, state: &VcpuState) -> Result<(), &'static str> {
        self.load_state(state);
        Ok(())
    }

    /// EVENTINJ holds what the next VMRUN delivers: an injected event, or the
    /// one an exit interrupted (EXITINTINFO, copied there after each exit).
    /// The interrupt shadow is STI's (the VMCB does not say which); NMI
    /// blocking and pending debug exceptions have no VMCB field without vNMI
    /// and read as none.
    fn aux_state(&self) -> Option<AuxState> {
        let v = self.vmcb();
        let ev = v.control.event_inj;
        let pending = (ev & vmcb::EVENT_VALID != 0).then(|| {
            let vector = ev as u8;
            let kind = match (ev & vmcb::EVENT_TYPE_MASK) >> 8 {
                EVENTINJ_NMI => event_kind::NMI,
                EVENTINJ_EXCEPTION => event_kind::HARDWARE_EXCEPTION,
                EVENTINJ_SOFT_INT => event_kind::SOFTWARE_INTERRUPT,
                _ => event_kind::EXTERNAL_INTERRUPT,
            };
            snapshot::PendingEvent {
                kind: kind as u8,
                vector,
                error_code: (ev & vmcb::EVENT_ERROR_CODE_VALID != 0).then_some((ev >> 32) as u32),
                insn_len: 0,
            }
        });
        Some(AuxState {
            pending,
            shadow: u8::from(v.control.int_shadow & vmcb::INT_SHADOW != 0),
            nmi_blocked: false,
            pending_debug: 0,
            dr: self.debug.dr,
            dr6: v.save.dr6,
            tsc_aux: u64::from(self.tsc_aux),
        })
    }

    fn last_entry(&self) -> Option<crate::virt::vcpu::LastEntry> {
        Some(self.last_entry)
    }

    fn tsc_offset(&self) -> u64 {
        self.vmcb().control.tsc_offset
    }

    fn set_tsc_offset(&mut self, offset: u64) -> Result<(), &'static str> {
        // The VMCB's clean bits are never set here, so the CPU reads it anew.
        self.vmcb_mut().control.tsc_offset = offset;
        Ok(())
    }

    fn set_aux_state(&mut self, aux: &AuxState) -> Result<(), &'static str> {
        let tsc_aux = u32::try_from(aux.tsc_aux).map_err(|_| "TSC_AUX over 32 bits")?;
        if tsc_aux != 0 && !super::has_tsc_aux() {
            return Err("TSC_AUX set, and this CPU has none");
        }
        let ev = match aux.pending {
            None => 0,
            Some(p) => {
                // EVENTINJ's types (APM Vol. 2 §15.20): software exceptions
                // (#BP, #OF) go in as exceptions.
                let t = match u64::from(p.kind) {
                    event_kind::EXTERNAL_INTERRUPT => EVENTINJ_INTR,
                    event_kind::NMI => EVENTINJ_NMI,
                    event_kind::SOFTWARE_INTERRUPT => EVENTINJ_SOFT_INT,
                    _ => EVENTINJ_EXCEPTION,
                };
                let code = p.error_code.map_or(0, |c| vmcb::EVENT_ERROR_CODE_VALID | (u64::from(c) << 32));
                vmcb::EVENT_VALID | (t << 8) | u64::from(p.vector) | code
            }
        };
        // A pending interrupt window is asked for again by the caller.
        self.request_interrupt_window(false);
        self.intercepted = None;
        self.debug.dr = aux.dr;
        self.tsc_aux = tsc_aux;
        let v = self.vmcb_mut();
        v.control.event_inj = ev;
        v.control.int_shadow = if aux.shadow != 0 { vmcb::INT_SHADOW } else { 0 };
        v.save.dr6 = aux.dr6;
        Ok(())
    }
}

/// EVENTINJ types (APM Vol. 2 §15.20).
const EVENTINJ_INTR: u64 = 0;
const EVENTINJ_NMI: u64 = 2;
const EVENTINJ_EXCEPTION: u64 = 3;
const EVENTINJ_SOFT_INT: u64 = 4;

/// The VMCB packs access rights into 12 bits: type/S/DPL/P in 7:0, AVL/L/D/G
/// in 11:8 (APM Vol. 2 §15.5.1); an unusable segment is a not-present one.
fn seg_to_vmcb(s: &state::Segment) -> Segment {
    let ar = if s.ar & state::ar::UNUSABLE != 0 { 0 } else { (s.ar & 0xff) | ((s.ar >> 4) & 0xf00) };
    Segment { selector: s.selector, attrib: ar as u16, limit: s.limit, base: s.base }
}

fn seg_from_vmcb(s: &Segment) -> state::Segment {
    let a = u32::from(s.attrib);
    let ar = (a & 0xff) | ((a & 0xf00) << 4);
    state::Segment { selector: s.selector, base: s.base, limit: s.limit, ar: if a & 0x80 == 0 { ar | state::ar::UNUSABLE } else { ar } }
}
