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
use crate::virt::{Access, Insn, Vcpu, VmExit};
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
    /// The guest touched guest-physical memory that is neither its RAM nor a
    /// device of its buses; its domain's policy decides (dom0: nothing there;
    /// a domU: it crashed).
    MemoryFault { gpa: GuestPhysAddr, access: Access },
    /// An access to a device's MMIO range that could not be completed (an
    /// instruction the emulator does not decode, an access across pages).
    Unemulated { gpa: GuestPhysAddr, error: crate::emulate::mmio::EmulateError },
    /// The guest triple-faulted: it is dead.
    TripleFault,
    /// An exit the hypervisor does not handle: the guest is killed.
    Unhandled(VmExit),
    /// The guest gave up the rest of its time slice (hypercall).
    Yield,
    /// The guest sleeps until `timeout_ns` passed (0: none) or it is woken.
    Block { timeout_ns: u64 },
    /// An access waits for dom0's device model (`vm::ioreq`): the
    /// instruction is not retired; the vCPU sleeps until the answer came.
    IoWait,
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
    /// The guest's RAM, for reading the instruction at its RIP; `None` where
    /// the hypervisor has no view of it (the self-test guests).
    fn memory(&self) -> Option<&dyn crate::emulate::GuestPhysRead> {
        None
    }
    /// The guest's MMIO bus: calls `access` with the device whose range holds
    /// `gpa`, the start of that range and the guest's memory (for the page walk
    /// and the instruction fetch), and returns true; false if no device claims
    /// `gpa`.
    fn mmio(&mut self, _gpa: GuestPhysAddr, _access: MmioAccess<'_>) -> bool {
        false
    }
    /// WBINVD (or INVD, which is answered as WBINVD) at CPL 0. Only a domain
    /// that drives devices needs the host's caches written back (a device
    /// doing non-coherent DMA); for others it is a no-op, so a guest cannot
    /// stall a CPU with cache flushes.
    fn wbinvd(&mut self) {}
    /// A write the nested tables refused at `gpa`: true if it was to RAM
    /// that dirty-page logging write-protects (now marked dirty and
    /// writable again: the guest retries it), false if it is for the MMIO
    /// path. Without domains (the self-test guests) nothing is logged.
    fn write_fault(&mut self, _gpa: GuestPhysAddr) -> bool {
        false
    }
    /// A hypercall from CPL > 0 was refused.
    fn refused_cpl(&mut self, cpl: u8, number: u64) {
        log::warn!("hypercall {number:#x} from CPL {cpl} refused");
    }
}

/// What `GuestEnv::mmio` calls with the claiming device.
pub type MmioAccess<'a> =
    &'a mut dyn FnMut(&dyn crate::emulate::GuestPhysRead, GuestPhysAddr, &mut dyn crate::devices::MmioDevice);

/// A nested-page fault: an access to a device on the guest's MMIO bus is
/// completed by emulating the instruction; anything else is a memory fault.
fn mmio(vcpu: &mut impl Vcpu, gpa: GuestPhysAddr, access: Access, env: &mut dyn GuestEnv) -> Outcome {
    let Some(cpu) = vcpu.cpu_state() else { return Outcome::MemoryFault { gpa, access } };
    let mut result = None;
    let claimed = env.mmio(gpa, &mut |mem, base, device| {
        result = Some(crate::emulate::mmio::emulate_mmio(vcpu, mem, &cpu, gpa, base, device));
    });
    match result {
        _ if !claimed => Outcome::MemoryFault { gpa, access },
        Some(Err(crate::emulate::mmio::EmulateError::Wait)) => Outcome::IoWait,
        Some(Err(error)) => Outcome::Unemulated { gpa, error },
        _ => Outcome::Continue,
    }
}

/// Exception vectors (SDM Vol. 3A §6.15).
const DB: u8 = 1;
const UD: u8 = 6;
const GP: u8 = 13;
const AC: u8 = 17;

/// The instructions answered by policy: what a CPU without the feature (or
/// without the privilege) would do.
fn instruction(vcpu: &mut impl Vcpu, insn: Insn, env: &mut dyn GuestEnv) -> Outcome {
    match insn {
        // No nested virtualization, and MONITOR/MWAIT are not in the guest's
        // CPUID: #UD, as on a CPU without them (SDM Vol. 2: #UD when
        // CPUID.1:ECX.VMX/MONITOR = 0; APM Vol. 3: #UD when EFER.SVME = 0).
        Insn::Virtualization | Insn::Monitor | Insn::Mwait => vcpu.inject_exception(UD, None),
        // No counters: #GP(0), as for a counter index the CPU does not have.
        Insn::Rdpmc => vcpu.inject_exception(GP, Some(0)),
        // Privileged: #GP(0) above CPL 0 (the CPU checks before the exit on
        // VT-x; checked again here for the backends that do not).
        Insn::Invd | Insn::Wbinvd if vcpu.cpl() != 0 => vcpu.inject_exception(GP, Some(0)),
        // INVD would throw away dirty lines of other domains: written back
        // instead (as Xen does).
        Insn::Invd | Insn::Wbinvd => {
            env.wbinvd();
            vcpu.skip_instruction();
        }
    }
    Outcome::Continue
}

/// An intercepted #GP (AMD-V only). A guest runs with EFER.SVME set, which
/// VMRUN requires, while it reads EFER.SVME as clear; so an SVM instruction
/// above CPL 0 takes the CPU's own #GP(0) for CPL before any intercept, where a
/// CPU without SVM gives #UD. That #GP is answered with #UD; every other goes
/// into the guest as it came.
fn general_protection(vcpu: &mut impl Vcpu, error_code: Option<u32>, env: &mut dyn GuestEnv) -> Outcome {
    let svm = vcpu.cpl() != 0
        && error_code == Some(0)
        && match (env.memory(), vcpu.cpu_state()) {
            (Some(mem), Some(cpu)) => {
                let mut buf = [0u8; crate::emulate::decode::MAX_LEN];
                let (n, _) = crate::emulate::fetch(mem, &cpu, vcpu.rip(), &mut buf);
                crate::emulate::is_svm_instruction(&buf[..n], cpu.code)
            }
            _ => false,
        };
    if svm {
        vcpu.inject_exception(UD, None);
    } else {
        vcpu.inject_exception(GP, error_code);
    }
    Outcome::Continue
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
        VmExit::Xsetbv { xcr, value } => {
            // Only components both the CPU and the guest's CPUID view report
            // (leaf 0xD.0's EAX/EDX, which mirror no guest state).
            let host = |l: u32, s: u32| env.host_cpuid(l, s);
            let shown = cpuid::guest_view(env.cpuid_kind(), &cpuid::GuestState::default(), 0xd, 0, &host);
            let supported = xcr::components(host(0xd, 0)) & xcr::components(shown);
            xcr::xsetbv(vcpu, xcr, value, supported)
        }
        // A write to write-protected RAM (log-dirty mode) resumes the guest
        // at the same instruction, RIP not advanced: it writes again.
        VmExit::NestedPageFault { gpa, access } if access.contains(Access::WRITE) && env.write_fault(gpa) => {
            Outcome::Continue
        }
        VmExit::NestedPageFault { gpa, access } => mmio(vcpu, gpa, access, env),
        VmExit::TripleFault => Outcome::TripleFault,
        VmExit::Preempted => Outcome::Preempted,
        VmExit::ControlRegister => Outcome::Continue,
        VmExit::InterruptWindow => {
            vcpu.request_interrupt_window(false);
            Outcome::Continue
        }
        VmExit::Instruction(insn) => instruction(vcpu, insn, env),
        // Only #DB and #AC are intercepted: they exit so that an exception
        // raised while delivering itself (XSA-156) gives the hypervisor control
        // at every round instead of hanging the CPU in microcode.
        VmExit::Exception { vector: DB | AC, .. } => {
            vcpu.reflect_exception();
            Outcome::Continue
        }
        VmExit::Exception { vector: GP, error_code } => general_protection(vcpu, error_code, env),
        other => Outcome::Unhandled(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::io::tests::{FakeEnv, FakeVcpu};

    fn run(insn: Insn, cpl: u8) -> FakeVcpu {
        let mut v = FakeVcpu { cpl, ..Default::default() };
        assert_eq!(handle(&mut v, VmExit::Instruction(insn), &mut FakeEnv::default()), Outcome::Continue);
        v
    }

    #[test]
    fn policy_instructions_fault_as_on_a_cpu_without_them() {
        for cpl in [0, 3] {
            for insn in [Insn::Virtualization, Insn::Monitor, Insn::Mwait] {
                let v = run(insn, cpl);
                assert_eq!((v.injected, v.skipped), (Some((UD, None)), 0), "{insn:?} at CPL {cpl}");
            }
            let v = run(Insn::Rdpmc, cpl);
            assert_eq!((v.injected, v.skipped), (Some((GP, Some(0))), 0));
        }
    }

    #[test]
    fn cache_flushes_complete_at_cpl0_only() {
        for insn in [Insn::Invd, Insn::Wbinvd] {
            let v = run(insn, 0);
            assert_eq!((v.injected, v.skipped), (None, 1));
            let v = run(insn, 3);
            assert_eq!((v.injected, v.skipped), (Some((GP, Some(0))), 0));
        }
    }

    #[test]
    fn db_and_ac_are_reflected_others_unhandled() {
        for vector in [DB, AC] {
            let mut v = FakeVcpu::default();
            let exit = VmExit::Exception { vector, error_code: (vector == AC).then_some(0) };
            assert_eq!(handle(&mut v, exit, &mut FakeEnv::default()), Outcome::Continue);
            assert_eq!((v.reflected, v.injected), (1, None));
        }
        // #GP goes back in as it came when it is not an SVM instruction (here:
        // no view of the guest's memory).
        let mut v = FakeVcpu { cpl: 3, ..Default::default() };
        let gp = VmExit::Exception { vector: GP, error_code: Some(0x18) };
        assert_eq!(handle(&mut v, gp, &mut FakeEnv::default()), Outcome::Continue);
        assert_eq!(v.injected, Some((GP, Some(0x18))));
        let exit = VmExit::Exception { vector: 14, error_code: Some(2) };
        assert_eq!(handle(&mut FakeVcpu::default(), exit, &mut FakeEnv::default()), Outcome::Unhandled(exit));
    }
}
