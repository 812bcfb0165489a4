//! Picks VMX or SVM at boot from CPUID and dispatches to it statically: one image
//! runs on both vendors, and both backends are always compiled.

use crate::arch::x86_64::{svm, vmx};
use crate::mem::paging::{Ept, MapError, Npt, PageTable};
use crate::mem::FrameTables;
use crate::virt::{GuestGprs, GuestMemory, InitialState, Vcpu, VmExit};
use spin::Once;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Vmx,
    Svm,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Vmx => "vmx",
            Backend::Svm => "svm",
        }
    }
}

static BACKEND: Once<Backend> = Once::new();

/// The backend chosen at boot.
pub fn backend() -> Backend {
    *BACKEND.get().expect("virtualization not initialised")
}

/// Detects and checks hardware virtualization on the boot CPU and enables it
/// there. Without VT-x or AMD-V the hypervisor cannot run guests: it says so and halts.
pub fn init_bsp() {
    let vendor = cpu_vendor();
    let result = match &vendor {
        b"GenuineIntel" => vmx::probe().map(|desc| (Backend::Vmx, desc)),
        // Hygon's CPUs are AMD's design, with AMD-V as AMD documents it.
        b"AuthenticAMD" | b"HygonGenuine" => svm::probe().map(|desc| (Backend::Svm, desc)),
        _ => Err("unknown CPU vendor"),
    };
    let vendor = core::str::from_utf8(&vendor).unwrap_or("?");
    match result {
        Ok((backend, desc)) => {
            log::info!("cpu: vendor {vendor}, virtualization: {desc}");
            BACKEND.call_once(|| backend);
            init_cpu();
        }
        Err(why) => crate::console::fatal(format_args!(
            "no hardware virtualization: {vendor} CPU lacks {} ({why}); Oxen needs Intel VT-x with EPT or AMD-V with NPT",
            if vendor == "GenuineIntel" { "usable VT-x" } else { "usable AMD-V" }
        )),
    }
}

/// Turns virtualization on for the calling CPU (VMXON / EFER.SVME).
pub fn init_cpu() {
    // CR4.OSFXSR/OSXSAVE for switching guests' extended state (and for the
    // XSETBV that completes a guest's, exit::xcr); before the backends record
    // the host's CR0/CR4.
    crate::arch::x86_64::xstate::init_cpu();
    let r = match backend() {
        Backend::Vmx => vmx::enable_cpu(),
        Backend::Svm => svm::enable_cpu(),
    };
    if let Err(why) = r {
        crate::console::fatal(format_args!("cpu{}: cannot enable virtualization: {why}", crate::arch::x86_64::cpu_id()));
    }
}

/// The CPUID vendor string ("GenuineIntel", "AuthenticAMD", ...).
fn cpu_vendor() -> [u8; 12] {
    let r = crate::arch::x86_64::cpuid(0, 0);
    let mut v = [0u8; 12];
    v[0..4].copy_from_slice(&r.ebx.to_le_bytes());
    v[4..8].copy_from_slice(&r.edx.to_le_bytes());
    v[8..12].copy_from_slice(&r.ecx.to_le_bytes());
    v
}

/// A guest address space's nested page tables, in the chosen vendor's format.
pub enum NestedTables {
    Ept(PageTable<Ept>),
    Npt(PageTable<Npt>),
}

impl NestedTables {
    pub fn build(mem: &GuestMemory) -> Result<Self, MapError> {
        Ok(match backend() {
            Backend::Vmx => NestedTables::Ept(mem.build_tables::<Ept>(&mut FrameTables)?),
            Backend::Svm => NestedTables::Npt(mem.build_tables::<Npt>(&mut FrameTables)?),
        })
    }

    /// Physical address of the top-level table (for the EPT pointer / nCR3).
    pub fn root(&self) -> u64 {
        match self {
            NestedTables::Ept(t) => t.root(),
            NestedTables::Npt(t) => t.root(),
        }
    }

    /// Frees the table frames.
    pub fn destroy(self) {
        match self {
            NestedTables::Ept(t) => t.destroy(&mut FrameTables),
            NestedTables::Npt(t) => t.destroy(&mut FrameTables),
        }
    }
}

/// A vCPU of either vendor.
pub enum AnyVcpu {
    Vmx(vmx::VmxVcpu),
    Svm(svm::SvmVcpu),
}

impl AnyVcpu {
    /// A vCPU on `tables` starting in `state`. Its TLB tag (VPID / ASID) comes
    /// from the CPU that runs it (`virt::tlb_tag`).
    pub fn new(tables: &NestedTables, state: &InitialState) -> Result<Self, &'static str> {
        Self::with_root(tables.root(), state)
    }

    /// The same, from the nested tables' root address (the tables must outlive
    /// the vCPU).
    pub fn with_root(root: u64, state: &InitialState) -> Result<Self, &'static str> {
        Ok(match backend() {
            Backend::Vmx => AnyVcpu::Vmx(vmx::VmxVcpu::new(root, state)?),
            Backend::Svm => AnyVcpu::Svm(svm::SvmVcpu::new(root, state)?),
        })
    }

    /// Whether it can be used on this CPU as it is (VMX: its VMCS is loaded
    /// here, not released); else `adopt` first.
    pub fn loaded_here(&self) -> bool {
        match self {
            AnyVcpu::Vmx(v) => v.loaded_here(),
            AnyVcpu::Svm(_) => true,
        }
    }

    /// After its last run on this CPU for now: lets another CPU run it next
    /// (VMX: VMCLEAR; nothing to do for a VMCB).
    pub fn release(&mut self) {
        if let AnyVcpu::Vmx(v) = self {
            v.release();
        }
    }

    /// Before running it on the calling CPU, if another CPU ran it last (and
    /// released it): loads it here and flushes what this CPU may have cached
    /// under its TLB tag.
    pub fn adopt(&mut self) -> Result<(), &'static str> {
        match self {
            AnyVcpu::Vmx(v) => v.adopt(),
            AnyVcpu::Svm(v) => {
                v.adopt();
                Ok(())
            }
        }
    }
}

impl AnyVcpu {
    /// dom0's I/O policy: every port reaches the hardware directly except
    /// `ranges` and `ports`, which the hypervisor keeps and emulates.
    pub fn pass_through_dom0_io(&mut self, ranges: &[core::ops::RangeInclusive<u16>], ports: &[u16]) {
        let keep = |p: u16| ranges.iter().any(|r| r.contains(&p)) || ports.contains(&p);
        match self {
            AnyVcpu::Svm(v) => {
                let mut start = None;
                for p in 0..=u16::MAX {
                    match (keep(p), start) {
                        (false, None) => start = Some(p),
                        (true, Some(s)) => {
                            v.pass_through_ports(s..=p - 1);
                            start = None;
                        }
                        _ => {}
                    }
                }
                if let Some(s) = start {
                    v.pass_through_ports(s..=u16::MAX);
                }
                v.pass_through_switched_msrs();
            }
            AnyVcpu::Vmx(v) => v.pass_through_io_except(keep),
        }
    }
}

impl AnyVcpu {
    /// Whether the guest's accesses to `port` exit to the hypervisor; changed
    /// between runs (dom0's UART data path, `vm::platform::Platform::console_direct`).
    pub fn intercept_port(&mut self, port: u16, on: bool) {
        match self {
            AnyVcpu::Svm(v) => v.intercept_port(port, on),
            AnyVcpu::Vmx(v) => v.intercept_port(port, on),
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $v:ident => $e:expr) => {
        match $self {
            AnyVcpu::Vmx($v) => $e,
            AnyVcpu::Svm($v) => $e,
        }
    };
}

impl Vcpu for AnyVcpu {
    fn enter(&mut self) {
        dispatch!(self, v => v.enter())
    }
    fn leave(&mut self) {
        dispatch!(self, v => v.leave())
    }
    fn run(&mut self) -> VmExit {
        dispatch!(self, v => v.run())
    }
    fn gprs(&mut self) -> &mut GuestGprs {
        dispatch!(self, v => v.gprs())
    }
    fn rip(&self) -> u64 {
        dispatch!(self, v => v.rip())
    }
    fn set_rip(&mut self, rip: u64) {
        dispatch!(self, v => v.set_rip(rip))
    }
    fn rsp(&self) -> u64 {
        dispatch!(self, v => v.rsp())
    }
    fn cpl(&self) -> u8 {
        dispatch!(self, v => v.cpl())
    }
    fn skip_instruction(&mut self) {
        dispatch!(self, v => v.skip_instruction())
    }
    fn inject_exception(&mut self, vector: u8, error_code: Option<u32>) {
        dispatch!(self, v => v.inject_exception(vector, error_code))
    }
    fn reflect_exception(&mut self) {
        dispatch!(self, v => v.reflect_exception())
    }
    fn interrupt_ready(&self) -> bool {
        dispatch!(self, v => v.interrupt_ready())
    }
    fn inject_interrupt(&mut self, vector: u8) {
        dispatch!(self, v => v.inject_interrupt(vector))
    }
    fn request_interrupt_window(&mut self, on: bool) {
        dispatch!(self, v => v.request_interrupt_window(on))
    }
    fn set_deadline(&mut self, tsc: Option<u64>) {
        dispatch!(self, v => v.set_deadline(tsc))
    }
    fn cpu_state(&self) -> Option<crate::emulate::mmio::CpuState> {
        dispatch!(self, v => v.cpu_state())
    }
    fn guest_msr(&self, msr: u32) -> Option<u64> {
        dispatch!(self, v => v.guest_msr(msr))
    }
    fn set_guest_msr(&mut self, msr: u32, value: u64) -> bool {
        dispatch!(self, v => v.set_guest_msr(msr, value))
    }
    fn state(&self) -> Option<crate::virt::VcpuState> {
        dispatch!(self, v => v.state())
    }
    fn set_state(&mut self, state: &crate::virt::VcpuState) -> Result<(), &'static str> {
        dispatch!(self, v => v.set_state(state))
    }
    fn aux_state(&self) -> Option<crate::virt::snapshot::AuxState> {
        dispatch!(self, v => v.aux_state())
    }
    fn set_aux_state(&mut self, aux: &crate::virt::snapshot::AuxState) -> Result<(), &'static str> {
        dispatch!(self, v => v.set_aux_state(aux))
    }
    fn tsc_offset(&self) -> u64 {
        dispatch!(self, v => v.tsc_offset())
    }
    fn set_tsc_offset(&mut self, offset: u64) -> Result<(), &'static str> {
        dispatch!(self, v => v.set_tsc_offset(offset))
    }
    fn last_entry(&self) -> Option<crate::virt::vcpu::LastEntry> {
        dispatch!(self, v => v.last_entry())
    }
}
