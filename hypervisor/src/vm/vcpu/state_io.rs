//! A paused domU vCPU's side of `domctl::VCPU_STATE_GET/SET`: it takes its
//! state (`VcpuSnapshot`) into the domain's mailbox when it stops, and loads
//! a state posted there, in its own poll: the one place its VMCS / VMCB may
//! be used (on VT-x, loaded on this CPU for the moment with `adopt`, then
//! released again as the scheduler left it).

use super::{clock_now, GuestVcpu};
use crate::arch::x86_64::time::{now_ns, rdtsc, tsc_hz};
use crate::arch::x86_64::xstate::{self, XState};
use crate::domain::control;
use crate::exit::msr;
use crate::devices::lapic::STATE_TSC_DEADLINE;
use crate::virt::snapshot::{guest_to_host_tsc, host_to_guest_tsc, AuxState, Mailbox, Power, Request, VcpuSnapshot};
use crate::virt::{AnyVcpu, EntryMode, InitialState, Vcpu, VcpuState};
use log::info;

/// The state shown for a vCPU waiting for START-UP (its registers are
/// meaningless until then): real mode at 0, as after INIT.
fn parked_state() -> VcpuState {
    VcpuState::from_entry(&InitialState { mode: EntryMode::Real { cs_selector: 0 }, rip: 0, rsp: 0 })
}

/// Runs `f` with the vCPU object usable on this CPU, leaving it released
/// afterwards if it was.
fn with_loaded<T>(v: &mut AnyVcpu, f: impl FnOnce(&mut AnyVcpu) -> T) -> Result<T, &'static str> {
    let here = v.loaded_here();
    if !here {
        v.adopt()?;
    }
    let r = f(v);
    if !here {
        v.release();
    }
    Ok(r)
}

impl GuestVcpu {
    /// While its domain is paused: answers what the mailbox asks.
    pub(super) fn serve_state(&mut self, mailbox: &Mailbox) {
        match mailbox.request(self.index) {
            Request::None => {}
            Request::Take => mailbox.store(self.index, self.take_state()),
            Request::Load(s) => {
                match self.load_state(&s) {
                    Ok(()) => info!("{}: loaded the state posted for it (rip {:#x})", self.label(), s.arch.rip),
                    Err(e) => control::guest_log(
                        self.platform.domid,
                        log::Level::Warn,
                        format_args!("{}: cannot load the state posted for it: {e}", self.label()),
                    ),
                }
                mailbox.store(self.index, self.take_state());
            }
        }
    }

    fn take_state(&mut self) -> Result<VcpuSnapshot, &'static str> {
        let now = now_ns();
        let parked = !self.powered();
        let (arch, aux) = match (self.start.as_ref(), self.vcpu.as_mut()) {
            _ if parked => (parked_state(), AuxState::default()),
            // A state to load at its next run (its boot state): that one.
            (Some(start), _) => (VcpuState { gprs: start.gprs, ..VcpuState::from_entry(&start.entry) }, AuxState::default()),
            (None, Some(v)) => {
                let (arch, aux) = with_loaded(v, |v| (v.state(), v.aux_state()))?;
                (arch.ok_or("its registers cannot be read")?, aux.ok_or("its events cannot be read")?)
            }
            (None, None) => return Err("it has no vCPU object"),
        };
        let fresh;
        let area = match self.xstate.as_ref() {
            Some(x) => x,
            None => {
                fresh = XState::new().ok_or("no memory for an XSAVE area")?;
                &fresh
            }
        };
        let (xcr0, image) = area.image();
        let mut xsave = alloc::vec::Vec::new();
        xsave.try_reserve_exact(image.len()).map_err(|_| "no memory for its XSAVE area")?;
        xsave.extend_from_slice(image);
        let mut lapic = self.platform.apics().lapic(self.index).save_state(now);
        let host_tsc = rdtsc();
        let deadline = &mut lapic[STATE_TSC_DEADLINE];
        if *deadline != 0 {
            *deadline = host_to_guest_tsc(*deadline, self.tsc_offset, host_tsc);
        }
        Ok(VcpuSnapshot {
            arch,
            aux,
            spec_ctrl: self.msrs.spec_ctrl,
            virt_spec_ctrl: self.msrs.virt_spec_ctrl,
            xcr0,
            xsave,
            lapic,
            kvmclock: self.kvmclock.registration(),
            tsc: host_tsc.wrapping_add(self.tsc_offset),
            tsc_hz: tsc_hz(),
            tsc_offset: self.tsc_offset,
            power: Power { wait_for_sipi: parked, halted: self.halted },
        })
    }

    /// Loads `s` (checked by `VcpuSnapshot::from_record`): first everything
    /// that depends on this host is tried on copies, so a refusal changes
    /// nothing; then it all goes in.
    fn load_state(&mut self, s: &VcpuSnapshot) -> Result<(), &'static str> {
        let now = now_ns();
        let components = xstate::host_components();
        if components != 0 && !crate::exit::xcr::valid(0, s.xcr0, components) {
            return Err("an XCR0 XSETBV would refuse");
        }
        // The speculation controls as the guest's WRMSR would take them:
        // `load_for_guest` writes them into the real MSRs.
        let kind = crate::exit::cpuid::Kind::DomU { vcpu: self.index as u32, vcpus: self.platform.vcpus() as u32 };
        let host = |l: u32, sub: u32| crate::arch::x86_64::cpuid(l, sub);
        let spec = msr::Spec::from_cpuid(&|l, sub| crate::exit::cpuid::guest_view(kind, &Default::default(), l, sub, &host));
        let mut msrs = msr::VcpuMsrs::default();
        for (m, v) in [(msr::nr::IA32_SPEC_CTRL, s.spec_ctrl), (msr::nr::AMD_VIRT_SPEC_CTRL, s.virt_spec_ctrl)] {
            if v != 0 && msr::spec_write(&spec, Some(&mut msrs), m, v) != msr::SpecAccess::Done(v) {
                return Err("a speculation-control MSR value this guest cannot hold");
            }
        }
        let mut area = XState::new().ok_or("no memory for an XSAVE area")?;
        area.load_image(s.xcr0, &s.xsave)?;
        let mut lapic = self.platform.apics().lapic(self.index).clone();
        let mut words = s.lapic;
        if words[STATE_TSC_DEADLINE] != 0 {
            words[STATE_TSC_DEADLINE] = guest_to_host_tsc(words[STATE_TSC_DEADLINE], s.tsc_offset, rdtsc());
        }
        lapic.load_state(&words, now)?;
        if s.power.wait_for_sipi {
            self.power_off();
        } else {
            if self.vcpu.is_none() {
                // Never run: made here, then released like any movable vCPU.
                let mut v = AnyVcpu::with_root(self.platform.root, &InitialState {
                    mode: EntryMode::Real { cs_selector: 0 },
                    rip: 0,
                    rsp: 0,
                })?;
                v.release();
                self.vcpu = Some(v);
            }
            let v = self.vcpu.as_mut().ok_or("no vCPU object")?;
            with_loaded(v, |v| {
                v.set_state(&s.arch)?;
                v.set_aux_state(&s.aux)?;
                v.set_tsc_offset(s.tsc_offset)
            })??;
            (self.start, self.parked) = (None, false);
            (self.halted, self.stuck, self.blocked_until) = (s.power.halted, false, None);
            (self.halted_since, self.stall_reported) = (None, false);
            let mut ram = control::RamView(&self.platform.ram);
            self.kvmclock.restore(s.kvmclock, &mut ram, &clock_now(s.tsc_offset));
        }
        self.tsc_offset = s.tsc_offset;
        *self.platform.apics().lapic(self.index) = lapic;
        self.xstate = Some(area);
        self.msrs = msrs;
        Ok(())
    }
}
