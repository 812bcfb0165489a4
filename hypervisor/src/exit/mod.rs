//! Vendor-neutral VM-exit handlers. A backend's `run` returns a `VmExit`;
//! `handle` acts on it through the `Vcpu` interface and says what the caller
//! (the self-test runner, later the scheduler) should do next.
//!
//! One file per exit family: `cpuid`, `io`, `msr`, `hypercall`.
pub mod cpuid;
pub mod hypercall;
pub mod io;
pub mod msr;
pub mod xcr;

use crate::mem::GuestPhysAddr;
use crate::virt::{Access, Vcpu, VmExit};
use cpuid::CpuidResult;

/// What to do with the vCPU after an exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Handled: run the guest again.
    Continue,
    /// The guest executed HLT; RIP is past it. Run again when it has work.
    Halted,
    /// The time slice ended.
    Preempted,
    /// The guest touched guest-physical memory it does not have: it is killed.
    MemoryFault { gpa: GuestPhysAddr, access: Access },
    /// The guest triple-faulted: it is dead.
    TripleFault,
    /// An exit the hypervisor does not handle: the guest is killed.
    Unhandled(VmExit),
    /// The guest gave up the rest of its time slice (hypercall).
    Yield,
    /// The guest sleeps until `timeout_ns` passed (0: none) or it is woken.
    Block { timeout_ns: u64 },
    /// The guest ended itself (hypercall).
    Shutdown(oxen_abi::ShutdownReason),
}

/// The parts of the platform a guest's exits reach.
pub trait GuestEnv {
    /// The guest's port-I/O devices.
    fn ports(&mut self) -> &mut dyn io::PortBus;
    /// The host CPU's own CPUID, which `cpuid::guest_view` filters.
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult;
    /// Which CPUID policy the guest gets. Without a domain (the self-test
    /// guests): a one-vCPU domU's.
    fn cpuid_kind(&self) -> cpuid::Kind {
        cpuid::Kind::DomU { vcpu: 0, vcpus: 1 }
    }
    /// This vCPU's virtualized MSRs (SPEC_CTRL, …), if it keeps them; without
    /// them those MSRs give #GP.
    fn vcpu_msrs(&mut self) -> Option<&mut msr::VcpuMsrs> {
        None
    }
    /// An MSR backed by one of the guest's devices (the local APIC), if any.
    fn msr_read(&mut self, _msr: u32) -> Option<u64> {
        None
    }
    /// Writes such an MSR; false if no device claims it or the value is refused.
    fn msr_write(&mut self, _msr: u32, _value: u64) -> bool {
        false
    }
    /// The TSC rate guests are told (CPUID 0x15/0x16); 0: leave the host's.
    fn tsc_hz(&self) -> u64 {
        0
    }
    /// A hypercall from CPL 0. Without domains (the self-test guests) only
    /// `VERSION` and `NULL` exist.
    fn hypercall(&mut self, args: &crate::hypercall::Args) -> (Result<u64, oxen_abi::Error>, crate::hypercall::After) {
        let result = match args.nr {
            oxen_abi::nr::VERSION => Ok(oxen_abi::ABI_VERSION.into()),
            oxen_abi::nr::NULL => Ok(0),
            _ => Err(oxen_abi::Error::NoSys),
        };
        (result, crate::hypercall::After::Continue)
    }
    /// A hypercall from CPL > 0 was refused.
    fn refused_cpl(&mut self, cpl: u8, number: u64) {
        log::warn!("hypercall {number:#x} from CPL {cpl} refused");
    }
}

/// Handles one exit.
pub fn handle(vcpu: &mut impl Vcpu, exit: VmExit, env: &mut dyn GuestEnv) -> Outcome {
    match exit {
        VmExit::Cpuid { leaf, subleaf } => {
            let host = |l: u32, s: u32| env.host_cpuid(l, s);
            let cr4 = vcpu.cpu_state().map(|s| s.paging.cr4);
            let state = cpuid::GuestState {
                osxsave: cr4.is_some_and(|c| c.contains(x86_64::registers::control::Cr4Flags::OSXSAVE)),
                pke: cr4.is_some_and(|c| c.contains(x86_64::registers::control::Cr4Flags::PROTECTION_KEY_USER)),
                xcr0: if leaf == 0xd { cpuid::current_xcr0(&host) } else { 0 },
            };
            let mut r = cpuid::guest_view(env.cpuid_kind(), &state, leaf, subleaf, &host);
            if matches!(leaf, cpuid::TSC_RATIO_LEAF | cpuid::FREQ_LEAF) && env.host_cpuid(0, 0).eax >= leaf {
                r = cpuid::with_tsc_rate(leaf, r, env.tsc_hz());
            }
            let g = vcpu.gprs();
            (g.rax, g.rbx, g.rcx, g.rdx) = (r.eax.into(), r.ebx.into(), r.ecx.into(), r.edx.into());
            vcpu.skip_instruction();
            Outcome::Continue
        }
        VmExit::Io { port, size, write, string, rep } => {
            io::handle(vcpu, port, size, write, string || rep, env.ports())
        }
        VmExit::MsrRead { msr } => msr::read(vcpu, msr, env),
        VmExit::MsrWrite { msr, value } => msr::write(vcpu, msr, value, env),
        VmExit::Hlt => {
            vcpu.skip_instruction();
            Outcome::Halted
        }
        VmExit::Hypercall => hypercall::handle(vcpu, env),
        VmExit::Xsetbv { xcr, value } => xcr::xsetbv(vcpu, xcr, value, env.host_cpuid(0xd, 0)),
        VmExit::NestedPageFault { gpa, access } => Outcome::MemoryFault { gpa, access },
        VmExit::TripleFault => Outcome::TripleFault,
        VmExit::Preempted => Outcome::Preempted,
        VmExit::InterruptWindow => {
            vcpu.request_interrupt_window(false);
            Outcome::Continue
        }
        other => Outcome::Unhandled(other),
    }
}
