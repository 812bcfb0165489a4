//! A domU's vCPU on its CPU's run queue (target only). It has no devices:
//! its console and its control are hypercalls; CPUID and MSRs follow the
//! common policy; port I/O finds nothing (reads all ones, writes dropped);
//! touching memory it does not have, a triple fault or an exit nobody handles
//! crashes the domain and nothing else.
//!
//! The vCPU object (VMCS/VMCB) is made on the CPU that first runs it, released
//! after every run and adopted by whichever CPU runs it next (`sched::run`).

use super::control::{self, BootSpec, RamView, Resources, DOMAINS};
use super::table::Domain;
use crate::arch::x86_64::xstate::XState;
use crate::exit::{self, cpuid::CpuidResult, io::PortBus, GuestEnv, Outcome};
use crate::hypercall::{self, After, Args, Caller};
use crate::sched::run::{now_ns, ns_to_tsc, Poll, Runnable};
use crate::virt::{AnyVcpu, GuestMemory, Vcpu};
use alloc::string::String;
use log::warn;
use oxen_abi::{request, ShutdownReason};

/// Stands for "until woken" in `blocked`.
const FOREVER: u64 = u64::MAX;

pub struct DomUVcpu {
    domid: u32,
    name: String,
    root: u64,
    ram: GuestMemory,
    boot: BootSpec,
    vcpu: Option<AnyVcpu>,
    /// Its x87/SSE/AVX/… registers and XCR0 while it is not running; made
    /// (in the reset state) with the vCPU.
    xstate: Option<XState>,
    /// Sleeping until this time (`FOREVER`: until a request comes).
    blocked: Option<u64>,
    /// SPEC_CTRL and the other MSRs virtualized per vCPU.
    msrs: exit::msr::VcpuMsrs,
}

// SAFETY: a DomUVcpu is used by one CPU at a time (the scheduler loop takes it
// out of the shared map to run it). Its vCPU object moves between CPUs only
// through `release` on the CPU that ran it (VMCLEAR on VT-x) and `adopt` on
// the next; the rest is plain data.
unsafe impl Send for DomUVcpu {}

impl DomUVcpu {
    pub fn new(d: &Domain<Resources>) -> Result<Self, oxen_abi::Error> {
        let boot = d.res.boot.ok_or(oxen_abi::Error::Busy)?;
        let root = d.res.tables.as_ref().ok_or(oxen_abi::Error::Busy)?.root();
        Ok(Self { domid: d.id, name: d.name.clone(), root, ram: d.res.ram.clone(), boot, vcpu: None, xstate: None, blocked: None, msrs: Default::default() })
    }

    fn make_vcpu(&mut self) -> Option<&mut AnyVcpu> {
        if self.vcpu.is_none() {
            match AnyVcpu::with_root(self.root, &self.boot.entry).and_then(|v| Ok((v, XState::new().ok_or("no memory for its XSAVE area")?))) {
                Ok((mut v, x)) => {
                    *v.gprs() = self.boot.gprs;
                    self.vcpu = Some(v);
                    self.xstate = Some(x);
                }
                Err(e) => {
                    warn!("d{} ({}): cannot make its vCPU: {e}", self.domid, self.name);
                    control::end(self.domid, ShutdownReason::Crash, "no vCPU");
                    return None;
                }
            }
        }
        self.vcpu.as_mut()
    }
}

impl Runnable for DomUVcpu {
    fn poll(&mut self, now: u64) -> Poll {
        // Consoles' serial echoes are printed here, between turns, with no
        // lock held; a domain writing its console never waits for the UART.
        let echo_at = control::drain_echo(now);
        let mut t = DOMAINS.lock();
        let Some(d) = t.get_mut(self.domid) else { return Poll::Gone };
        if d.state == oxen_abi::DomainState::Dying {
            // This CPU made the vCPU, so it drops it, then maybe the domain.
            self.vcpu = None;
            if let Some(dead) = t.release_vcpu(self.domid) {
                drop(t);
                control::release(dead);
            }
            return Poll::Gone;
        }
        if d.restart_pending {
            // A fresh boot: memory zeroed and laid out again from the staged
            // kernel, a new vCPU.
            self.vcpu = None;
            self.blocked = None;
            // Zeroing takes long (about 0.1 s a GiB), so not under the table's
            // lock: `restart_pending` keeps the domain from running and from
            // ending again, and its vCPU, held here, keeps its memory from
            // being freed (a destroy meanwhile only marks it dying).
            drop(t);
            for r in self.ram.regions() {
                // SAFETY: the region is this domain's RAM (its own chunks,
                // identity mapped), alive while this vCPU is; no vCPU of the
                // domain runs while it restarts.
                unsafe { core::ptr::write_bytes(r.hpa.as_u64() as *mut u8, 0, r.len as usize) };
            }
            t = DOMAINS.lock();
            let Some(d) = t.get_mut(self.domid) else { return Poll::Gone };
            if !d.restart_pending {
                // Destroyed meanwhile: the next poll lets it go.
                return Poll::Sleep(Some(now));
            }
            match super::build::lay_out(&mut d.res, d.vcpus) {
                Ok(spec) => {
                    self.boot = spec;
                    d.res.boot = Some(spec);
                    t.finish_restart(self.domid);
                    drop(t);
                    control::guest_log(self.domid, log::Level::Info, format_args!("d{} ({}): rebooted", self.domid, self.name));
                }
                Err(e) => {
                    d.restart_pending = false;
                    d.state = oxen_abi::DomainState::Dying;
                    drop(t);
                    warn!("d{} ({}): cannot boot it again: {}", self.domid, self.name, e.why);
                    return Poll::Sleep(Some(now));
                }
            }
            return Poll::Run;
        }
        if !matches!(d.state, oxen_abi::DomainState::Running | oxen_abi::DomainState::ShuttingDown) {
            return Poll::Sleep(None);
        }
        let pending = d.request != request::NONE || (self.blocked.is_some() && d.res.take_input_wake());
        match self.blocked {
            // Woken for a due echo too (a muted echo's "suppressed" line).
            Some(until) if !pending && now < until => {
                let at = until.min(echo_at);
                Poll::Sleep((at != FOREVER).then_some(at))
            }
            _ => {
                self.blocked = None;
                Poll::Run
            }
        }
    }

    fn run(&mut self, until: u64) {
        let start = now_ns();
        let mut exits = 0u64;
        let (domid, name) = (self.domid, self.name.clone());
        if self.make_vcpu().is_none() {
            return;
        }
        let (Some(vcpu), Some(xstate)) = (self.vcpu.as_mut(), self.xstate.as_mut()) else { return };
        xstate.load();
        // Borrowed, not copied: this runs at every slice and wake-up.
        let mut env = DomUEnv { domid, ram: &self.ram, ports: NoPorts, msrs: &mut self.msrs };
        let mut blocked = None;
        loop {
            crate::arch::x86_64::apic::arm_timer(Some(ns_to_tsc(until)));
            exit::msr::load_for_guest(env.msrs, domid);
            let exit = vcpu.run();
            exits += 1;
            let outcome = exit::handle(vcpu, exit, &mut env);
            match outcome {
                Outcome::Continue => {
                    if now_ns() >= until {
                        break;
                    }
                }
                // The timer (slice end) or a kick: back to the scheduler.
                Outcome::Preempted => break,
                Outcome::Yield => break,
                Outcome::Block { timeout_ns } => {
                    blocked = Some(if timeout_ns == 0 { FOREVER } else { now_ns().saturating_add(timeout_ns) });
                    break;
                }
                // No interrupts reach a domU yet: HLT waits for a request.
                Outcome::Halted => {
                    blocked = Some(FOREVER);
                    break;
                }
                Outcome::Shutdown(reason) => {
                    let why = match reason {
                        ShutdownReason::Poweroff => "powered off",
                        ShutdownReason::Reboot => "asked to reboot",
                        ShutdownReason::Crash => "reported a crash",
                    };
                    control::end(domid, reason, why);
                    break;
                }
                Outcome::MemoryFault { gpa, access } => {
                    let rip = vcpu.rip();
                    control::guest_log(domid, log::Level::Warn, format_args!("d{domid} ({name}): {access:?} of {:#x}, not its memory, at rip {rip:#x}", gpa.as_u64()));
                    control::end(domid, ShutdownReason::Crash, "crashed (memory outside its own)");
                    break;
                }
                Outcome::TripleFault => {
                    let rip = vcpu.rip();
                    control::guest_log(domid, log::Level::Warn, format_args!("d{domid} ({name}): triple fault at rip {rip:#x}"));
                    control::end(domid, ShutdownReason::Crash, "crashed (triple fault)");
                    break;
                }
                Outcome::Unhandled(e) => {
                    let rip = vcpu.rip();
                    control::guest_log(domid, log::Level::Warn, format_args!("d{domid} ({name}): unhandled exit {e:?} at rip {rip:#x}"));
                    control::end(domid, ShutdownReason::Crash, "crashed (unhandled exit)");
                    break;
                }
            }
        }
        xstate.save();
        self.blocked = blocked;
        let ran = now_ns().saturating_sub(start);
        if let Some(d) = DOMAINS.lock().get_mut(domid) {
            d.cpu_time_ns += ran;
            d.exits += exits;
            d.res.home_cpu = crate::arch::x86_64::cpu_id();
        }
    }

    fn adopt(&mut self) {
        if let Some(v) = self.vcpu.as_mut() {
            if let Err(e) = v.adopt() {
                warn!("d{} ({}): cannot move its vCPU here: {e}", self.domid, self.name);
                control::end(self.domid, ShutdownReason::Crash, "its vCPU could not move");
            }
        }
    }

    fn release(&mut self) {
        if let Some(v) = self.vcpu.as_mut() {
            v.release();
        }
    }
}

/// What a domU's exits reach.
struct DomUEnv<'a> {
    domid: u32,
    ram: &'a GuestMemory,
    ports: NoPorts,
    msrs: &'a mut exit::msr::VcpuMsrs,
}

/// No ports: reads find nothing (all ones), writes go nowhere.
struct NoPorts;

impl PortBus for NoPorts {
    fn read(&mut self, _port: u16, size: u8) -> Option<u32> {
        Some(match size {
            1 => 0xff,
            2 => 0xffff,
            _ => u32::MAX,
        })
    }
    fn write(&mut self, _port: u16, _size: u8, _value: u32) -> bool {
        true
    }
}

impl GuestEnv for DomUEnv<'_> {
    fn ports(&mut self) -> &mut dyn PortBus {
        &mut self.ports
    }
    fn memory(&self) -> Option<&dyn crate::emulate::GuestPhysRead> {
        Some(self.ram)
    }
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        crate::arch::x86_64::cpuid(leaf, subleaf)
    }
    fn cpuid_kind(&self) -> exit::cpuid::Kind {
        // One vCPU, number 0.
        exit::cpuid::Kind::DomU { vcpu: 0, vcpus: 1 }
    }
    fn vcpu_msrs(&mut self) -> Option<&mut exit::msr::VcpuMsrs> {
        Some(self.msrs)
    }
    fn tsc_hz(&self) -> u64 {
        crate::arch::x86_64::time::tsc_hz()
    }
    fn hypercall(&mut self, args: &Args) -> (Result<u64, oxen_abi::Error>, After) {
        let mut ram = RamView(self.ram);
        let mut caller = Caller { domid: self.domid, privileged: false, ram: &mut ram };
        hypercall::dispatch(&mut caller, &mut control::Hv, args)
    }
    fn refused_cpl(&mut self, cpl: u8, number: u64) {
        use crate::hypercall::Services;
        control::Hv.refused(self.domid, format_args!("hypercall {number:#x} from CPL {cpl}"));
    }
}
