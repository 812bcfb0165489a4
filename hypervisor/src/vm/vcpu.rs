//! A guest vCPU on the scheduler's run queues (target only): the one path
//! every domain's vCPUs take, dom0's and domUs'. What differs is the
//! platform's data (`Role`): who may do what, what a fault ends, whether the
//! vCPU is pinned.
//!
//! Its life: vCPU 0 starts from the domain's boot state (`BootSpec`), the
//! others wait for INIT / START-UP on the domain's APIC bus. The vCPU object
//! (VMCS / VMCB) is made on the CPU that runs it, in `run`; a movable vCPU
//! is released after every run and adopted by whichever CPU runs it next
//! (`sched::run`), so nothing here touches it outside `run` but on a pinned
//! vCPU's own CPU.
//!
//! `poll` (on the CPU watching it, or after a run): the domain's state
//! (dying, restarting, paused), INIT / START-UP, interrupts moved from the
//! devices to its APIC; it runs if it has work. `run`: interrupts injected
//! when the guest can take them, the guest entered until its slice ends, it
//! halts or blocks; each exit handled by `exit::handle` with this vCPU's view
//! of the platform (`VcpuEnv`).

mod state_io;

use super::apic_bus::{bits, Power, Vectors, Wake};
use super::platform::{self, log_tally, Platform, PowerEvent, Role, STATE_HALTED, STATE_RUNNING, STATE_WAIT_FOR_SIPI};
use crate::devices::kvmclock::{ClockNow, KvmClock};
use crate::devices::uart16550::COM1_BASE;
use crate::arch::x86_64::{apic, xstate::XState};
use crate::devices::ioapic::{Delivery, MAX_IOAPIC_PINS};
use crate::devices::lapic::VirtualLapic;
use crate::domain::control::{self, BootSpec, DOMAINS};
use crate::emulate::mmio::{self, EmulateError};
use crate::exit::{self, cpuid::CpuidResult, io::PortBus, GuestEnv, MmioAccess, Outcome};
use crate::hypercall::{self, After, Args, Caller};
use crate::mem::{GuestPhysAddr, PAGE_SIZE};
use crate::sched::credit::VcpuId;
use crate::arch::x86_64::time::{now_ns, ns_to_tsc};
use crate::sched::run::{self as sched, Poll, Runnable};
use crate::virt::{Access, AnyVcpu, EntryMode, InitialState, Vcpu, VcpuState, VmExit};
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use log::{info, warn};
use oxen_abi::{request, DomainState, ShutdownReason};

/// Stands for "until woken" in `blocked_until`.
const FOREVER: u64 = u64::MAX;
/// Exits between two tallies in the log.
const TALLY_EVERY: u64 = 1 << 18;
/// A halted dom0 vCPU with nothing delivered this long is reported (once):
/// normal at an idle shell, and the state to look at when it is not.
const STALL_NS: u64 = 5_000_000_000;
/// How often dom0's vCPU 0 looks at serial input while it idles.
const SERIAL_POLL_NS: u64 = 10_000_000;
/// `exit_tally_s=N` in ns (0: off): every vCPU logs its exits by reason
/// this often, for `cargo xtask bench --only idle`.
static TALLY_PERIOD_NS: AtomicU64 = AtomicU64::new(0);

/// Sets the period of `exit_tally_s` (at boot, before any vCPU runs).
pub fn set_tally_period(seconds: Option<u64>) {
    TALLY_PERIOD_NS.store(seconds.map_or(0, |s| s * 1_000_000_000), Ordering::Relaxed);
}

/// `dom0_console_direct=`: whether dom0's vCPU 0 may write its boot log to
/// COM1 itself (`GuestVcpu::console_direct`).
static CONSOLE_DIRECT: AtomicBool = AtomicBool::new(true);

/// Sets `dom0_console_direct` (at boot, before any vCPU runs).
pub fn set_console_direct(on: bool) {
    CONSOLE_DIRECT.store(on, Ordering::Relaxed);
}

/// The UART registers dom0's vCPU 0 reaches on COM1 itself while its path is
/// direct: THR (offset 0; with DLAB off, as `Uart16550::direct_ok` requires)
/// and LSR (offset 5). The others (IER, IIR/FCR, LCR, MCR, MSR, SCR) stay
/// emulated, so the model sees every change that ends the direct path.
const DIRECT_PORTS: [u16; 2] = [COM1_BASE, COM1_BASE + 5];

/// Most refused exits / blocked accesses logged one by one; then counted.
const LOG_LIMIT: u64 = 16;
const UD: u8 = 6;
const GP: u8 = 13;

/// What `service` found.
enum Serviced {
    /// Run on; the vCPU's APIC timer fires next at this time.
    Run { timer: Option<u64> },
    /// INIT or START-UP came for this vCPU: `follow_power` first.
    PowerChanged,
}

pub struct GuestVcpu {
    index: usize,
    platform: Arc<Platform>,
    /// The VMCS / VMCB, made at its first run on the CPU running it and kept
    /// until the domain goes (INIT and reboots load a new state into it).
    vcpu: Option<AnyVcpu>,
    /// The state to load at the next run (`Vcpu::set_state`): vCPU 0's boot
    /// state, or real mode at a START-UP's page.
    start: Option<BootSpec>,
    /// Waiting for START-UP (after power-on or INIT): no guest code to run.
    parked: bool,
    /// The platform generation this vCPU belongs to.
    generation: u32,
    /// The bus's INIT count this vCPU last acted on.
    inits_seen: u32,
    exits: u64,
    halted: bool,
    /// Halted with interrupts off while one was pending: only INIT, a reset or
    /// the domain's end moves it.
    stuck: bool,
    /// `note_halt_in_service` said its line.
    halt_in_service_said: bool,
    /// Sleeping after SCHED_OP block until this time (`FOREVER`: a request).
    blocked_until: Option<u64>,
    halted_since: Option<u64>,
    stall_reported: bool,
    blocked_accesses: u64,
    /// Exits answered with #UD because nothing emulates them (dom0).
    refused: u64,
    /// Its x87/SSE/AVX/… registers and XCR0 while it is not running.
    xstate: Option<XState>,
    /// SPEC_CTRL and the other MSRs virtualized per vCPU.
    msrs: exit::msr::VcpuMsrs,
    /// A domU's KVM-compatible clock (its two MSRs).
    kvmclock: KvmClock,
    /// What its vCPU adds to the host's TSC (`Vcpu::set_tsc_offset`): 0 but
    /// for a migrated guest, whose TSC goes on from the other host's value.
    /// Kept here too, as the vCPU object is made anew at a reset.
    tsc_offset: u64,
    /// vCPU 0 of a domU: the shutdown request last passed to the guest as
    /// Ctrl-Alt-Del.
    request_sent: u64,
    /// When `exit_tally_s` logs its tally next.
    tally_at: Option<u64>,
    /// dom0's vCPU 0: its UART's data path reaches COM1 directly
    /// (`console_direct`), how many times it was opened, and whether the
    /// line saying it is over for good was printed.
    direct: bool,
    direct_stretches: u32,
    direct_over: bool,
}

// SAFETY: a GuestVcpu is used by one CPU at a time (the scheduler takes it out
// of its map to poll or run it). Its vCPU object is made in `run` on the CPU
// running it; a pinned vCPU never leaves that CPU, a movable one moves only
// through `release` (VMCLEAR on VT-x) on the CPU that ran it and `adopt` on
// the next. The rest is plain data and the shared, locked platform.
unsafe impl Send for GuestVcpu {}

impl GuestVcpu {
    /// vCPU `index` of the platform's domain; vCPU 0 gets the boot state.
    pub fn new(index: usize, platform: Arc<Platform>, boot: Option<BootSpec>) -> Self {
        let generation = platform.generation();
        Self {
            index,
            platform,
            vcpu: None,
            parked: boot.is_none(),
            start: boot,
            generation,
            inits_seen: 0,
            exits: 0,
            halted: false,
            stuck: false,
            halt_in_service_said: false,
            blocked_until: None,
            halted_since: None,
            stall_reported: false,
            blocked_accesses: 0,
            refused: 0,
            xstate: None,
            msrs: Default::default(),
            kvmclock: KvmClock::new(),
            tsc_offset: 0,
            request_sent: request::NONE,
            tally_at: None,
            direct: false,
            direct_stretches: 0,
            direct_over: false,
        }
    }

    fn label(&self) -> alloc::string::String {
        self.platform.label(self.index)
    }

    fn stats(&self) -> &platform::VcpuStats {
        &self.platform.stats[self.index]
    }

    /// Parks the vCPU (INIT, a restart): its guest code stops until a
    /// START-UP or a boot state is loaded.
    fn power_off(&mut self) {
        self.parked = true;
        self.start = None;
        // Nothing more is written into the old kernel's memory.
        self.kvmclock.reset();
        (self.halted, self.stuck, self.blocked_until) = (false, false, None);
        (self.halted_since, self.stall_reported) = (None, false);
    }

    /// Loads the state waiting in `start`, making the vCPU object on this CPU
    /// first if it has none. False if there is no guest code to run.
    fn make_vcpu(&mut self) -> bool {
        let Some(start) = self.start.take() else { return self.vcpu.is_some() && !self.parked };
        let made = match self.vcpu.as_mut() {
            Some(v) => v.set_state(&VcpuState { gprs: start.gprs, ..VcpuState::from_entry(&start.entry) }),
            None => AnyVcpu::with_root(self.platform.root, &start.entry).and_then(|mut v| {
                *v.gprs() = start.gprs;
                if self.platform.role == Role::Dom0 {
                    v.pass_through_dom0_io(&[platform::DOM0_KEPT_PORTS], &platform::DOM0_KEPT_PIC_PORTS);
                }
                v.set_tsc_offset(self.tsc_offset)?;
                self.vcpu = Some(v);
                Ok(())
            }),
        };
        let made = made.and_then(|()| {
            if self.xstate.is_none() {
                self.xstate = Some(XState::new().ok_or("no memory for its XSAVE area")?);
            }
            Ok(())
        });
        match made {
            Ok(()) => {
                self.parked = false;
                true
            }
            Err(e) => {
                warn!("{}: cannot start its vCPU: {e}", self.label());
                match self.platform.role {
                    Role::Dom0 => crate::console::fatal(format_args!("{}: no vCPU: {e}", self.label())),
                    Role::DomU => control::end(self.platform.domid, ShutdownReason::Crash, "no vCPU"),
                }
                false
            }
        }
    }

    /// Acts on INIT (the guest state goes; wait for START-UP) and START-UP
    /// (taken now, the vCPU is made in real mode at the next run).
    fn follow_power(&mut self) {
        let (reset, startup) = {
            let mut bus = self.platform.apics();
            let inits = bus.inits(self.index);
            let reset = inits != self.inits_seen;
            self.inits_seen = inits;
            (reset, bus.take_startup(self.index))
        };
        if reset {
            if !self.parked {
                info!("{}: INIT: waiting for START-UP", self.label());
            }
            self.power_off();
        }
        if let Some(page) = startup {
            info!("{}: START-UP: real mode at {:#x} on cpu{}", self.label(), u32::from(page) << 12, crate::arch::x86_64::cpu_id());
            let entry = InitialState { mode: EntryMode::Real { cs_selector: u16::from(page) << 8 }, rip: 0, rsp: 0 };
            self.start = Some(BootSpec { entry, gprs: Default::default(), format: "START-UP" });
        }
        let state = if !self.powered() {
            STATE_WAIT_FOR_SIPI
        } else if self.halted {
            STATE_HALTED
        } else {
            STATE_RUNNING
        };
        self.stats().state.store(state, Ordering::Relaxed);
    }

    /// Whether it has guest code to run (or a state to load).
    fn powered(&self) -> bool {
        self.start.is_some() || (self.vcpu.is_some() && !self.parked)
    }

    /// Serial input (dom0's vCPU 0), interrupts moved from the devices to the
    /// APICs, this APIC's timer, and — when `inject` (in `run`, where the
    /// vCPU object is loaded) — an interrupt injected if one is due and the
    /// guest can take it. Without `inject`, a pending interrupt ends a halt.
    fn service(&mut self, now: u64, inject: bool) -> Serviced {
        let (p, i) = (&*self.platform, self.index);
        if p.role == Role::Dom0 && i == 0 {
            let keys = p.devices.lock().poll_serial_input(crate::dom0::keys::HELP);
            for key in keys {
                crate::dom0::keys::debug_key(key, p);
            }
            self.console_direct();
        }
        let (p, i) = (&*self.platform, self.index);
        let mut wake: Wake = 0;
        let mut eois = Vectors::default();
        let mut first = true;
        let mut stuck_pins: [Option<u64>; MAX_IOAPIC_PINS] = [None; MAX_IOAPIC_PINS];
        let result = loop {
            // The IOAPIC: EOIs from the last round, input lines, what it sends.
            let mut out: [Option<Delivery>; MAX_IOAPIC_PINS] = [None; MAX_IOAPIC_PINS];
            {
                let mut dev = p.devices.lock();
                for v in eois.iter() {
                    dev.ioapic.eoi(v);
                }
                dev.update_lines();
                for slot in out.iter_mut() {
                    let Some(d) = dev.ioapic.pop_delivery() else { break };
                    *slot = Some(d);
                }
                if first {
                    let in_service = dev.ioapic.in_service_pins();
                    let stuck = dev.stuck.update(in_service, now);
                    for pin in bits(stuck.into()) {
                        stuck_pins[pin] = dev.ioapic.redirection_entry(pin as u8);
                    }
                }
            }
            eois = Vectors::default();
            // The APICs: the IOAPIC's messages, this APIC's timer and what it sends.
            let mut bus = p.apics();
            for d in out.iter().flatten() {
                wake |= bus.deliver(d);
            }
            if first {
                bus.lapic(i).tick(now);
                first = false;
            }
            wake |= bus.drain(i, &mut eois);
            if !eois.is_empty() {
                // A level EOI may let the IOAPIC send again: another round.
                continue;
            }
            if bus.inits(i) != self.inits_seen || matches!(bus.power(i), Power::StartUp(_)) {
                break Serviced::PowerChanged;
            }
            let lapic = bus.lapic(i);
            if let Some(vector) = lapic.pending() {
                match self.vcpu.as_mut() {
                    Some(vcpu) if inject => {
                        if vcpu.interrupt_ready() {
                            vcpu.inject_interrupt(vector);
                            lapic.ack();
                            (self.halted, self.stuck, self.halted_since) = (false, false, None);
                        } else if self.halted {
                            // HLT with interrupts off: nothing but INIT or
                            // an NMI (not modelled) wakes it, as on a CPU.
                            if !self.stuck {
                                // Said once per stretch: with IF set, what else
                                // blocks it (a shadow, an event in flight) would be
                                // the hypervisor's doing, and the vCPU is lost.
                                let rflags = vcpu.state().map(|s| s.rflags);
                                let aux = vcpu.aux_state();
                                let label = self.platform.label(i);
                                let text = format_args!(
                                    "{label}: halted and cannot take vector {vector:#x}: rflags {rflags:#x?}, shadow {:?}, event in flight {:?}: it stays halted",
                                    aux.as_ref().map(|a| a.shadow),
                                    aux.as_ref().map(|a| a.pending),
                                );
                                if self.platform.role == Role::Dom0 {
                                    log::warn!("{text}");
                                } else {
                                    control::guest_log(self.platform.domid, log::Level::Warn, text);
                                }
                            }
                            self.stuck = true;
                        } else {
                            vcpu.request_interrupt_window(true);
                        }
                    }
                    _ if !self.stuck => self.halted = false,
                    _ => {}
                }
            }
            break Serviced::Run { timer: lapic.timer_deadline() };
        };
        // The others that got something look again.
        for j in bits(wake & !(1 << i)) {
            sched::nudge(VcpuId { dom: p.domid, vcpu: j as u32 });
        }
        for (pin, entry) in stuck_pins.iter().enumerate() {
            if let Some(entry) = entry {
                self.report_stuck_pin(pin, *entry, now);
            }
        }
        result
    }

    /// dom0's vCPU 0: opens or closes the direct path of its UART. While its
    /// kernel boots, Linux's console polls LSR and writes THR, two port exits
    /// a byte (~53,000 of the ~60,000 exits of dom0's boot under QEMU); with
    /// the path direct those two registers reach the machine's COM1 itself.
    /// Direct while the model holds nothing the hardware lacks
    /// (`Uart16550::direct_ok`: until the driver opens the port and takes
    /// interrupts, at init's start), the hypervisor holds no line to print
    /// (`console::lines_held`: closing makes dom0's next bytes go through the
    /// model, which ends its line before they are printed), and dom0 is the
    /// only domain (a domU's lines are printed as they come). dom0 is
    /// privileged and owns the machine's other devices; what this lends it is
    /// the line's data register, while the hypervisor keeps the UART's set-up
    /// and its input. What it loses: the `(d0)` tag on those lines (the
    /// hypervisor does not see them), and a byte typed in the moment the
    /// driver starts up may be read by dom0 directly instead of through the
    /// console switch.
    fn console_direct(&mut self) {
        if self.direct_over {
            return;
        }
        let Some(vcpu) = self.vcpu.as_mut() else { return };
        // (The devices' lock is let go before the domain table's is taken.)
        let (uart_ok, opened) = {
            let d = self.platform.devices.lock();
            (d.uart.direct_ok(), d.uart.opened())
        };
        let want = CONSOLE_DIRECT.load(Ordering::Relaxed)
            && uart_ok
            && !crate::console::lines_held()
            && DOMAINS.lock().len() == 1;
        if want != self.direct && (!want || crate::console::direct_begin()) {
            for port in DIRECT_PORTS {
                vcpu.intercept_port(port, !want);
            }
            if want {
                self.direct_stretches += 1;
            } else {
                crate::console::direct_end();
            }
            self.direct = want;
        }
        if opened && !self.direct {
            self.direct_over = true;
            if self.direct_stretches > 0 {
                info!(
                    "{}: its UART driver opened the port: its output goes through the emulated UART from here \
                     (its kernel wrote to COM1 directly before, in {} stretch(es))",
                    self.label(),
                    self.direct_stretches
                );
            }
        }
    }

    /// HLT with interrupts on while the APIC still has a vector in service: an
    /// OS halts in its idle loop, never inside a handler, so the handler of
    /// that vector never ran to its EOI, i.e. its delivery was lost (QEMU's TCG
    /// was seen to fail a delivery's page walks, `IMPOSSIBLE_TRIPLE_FAULT`).
    /// Until an EOI comes, that vector's priority class and every one below it
    /// (the timer's, the devices') stay blocked: the vCPU sleeps through its
    /// timer. Said once per vCPU.
    fn note_halt_in_service(&mut self) {
        if self.halt_in_service_said {
            return;
        }
        let p = &*self.platform;
        // The APIC first (every HLT comes here): the guest's RFLAGS only when
        // a vector is in service.
        let (vector, irr) = {
            let mut bus = p.apics();
            let l = bus.lapic(self.index);
            let Some(vector) = l.in_service() else { return };
            (vector, l.read_register(0x200 + 0x10 * 7, now_ns()))
        };
        let Some(vcpu) = self.vcpu.as_ref() else { return };
        let Some(rflags) = vcpu.state().map(|s| s.rflags) else { return };
        if rflags & (1 << 9) == 0 {
            return;
        }
        self.halt_in_service_said = true;
        let text = format_args!(
            "{}: halted with interrupts on while vector {vector:#x} is in service: its handler never ended, the delivery was lost; its class and those below stay blocked (IRR 0xe0-0xff {irr:#x}, rip {:#x})",
            p.label(self.index),
            vcpu.rip()
        );
        if p.role == Role::Dom0 {
            log::warn!("{text}");
        } else {
            control::guest_log(p.domid, log::Level::Warn, text);
        }
    }

    /// A level pin in service for longer than `StuckPins::LIMIT_NS`: what the
    /// IOAPIC and each local APIC hold for its vector, and each vCPU's state,
    /// so that a lost delivery or EOI says where it was lost.
    fn report_stuck_pin(&self, pin: usize, entry: u64, now: u64) {
        let p = &*self.platform;
        let vector = (entry & 0xff) as u32;
        let (word, bit) = (0x10 * (vector / 32), 1u32 << (vector % 32));
        let mut text = alloc::format!(
            "{}: IOAPIC pin {pin} asserted and in service (remote IRR) for over {} s: entry {entry:#x}; vector {vector:#x} in",
            p.label(self.index),
            crate::devices::ioapic::StuckPins::LIMIT_NS / 1_000_000_000
        );
        let mut bus = p.apics();
        for j in 0..p.vcpus() {
            let l = bus.lapic(j);
            let (isr, tmr, irr) = (l.read_register(0x100 + word, now), l.read_register(0x180 + word, now), l.read_register(0x200 + word, now));
            let has = |r: u32, name: &'static str| if r & bit != 0 { name } else { "" };
            let _ = core::fmt::Write::write_fmt(
                &mut text,
                format_args!(
                    " vcpu{j} [{}{}{} ppr {:#x} pending {:?} id {} {}]",
                    has(irr, "IRR "),
                    has(isr, "ISR "),
                    has(tmr, "TMR "),
                    l.ppr(),
                    l.pending(),
                    l.id(),
                    p.stats.get(j).map_or("?", |s| s.state_name())
                ),
            );
        }
        drop(bus);
        if p.role == Role::Dom0 {
            log::warn!("{text}");
        } else {
            control::guest_log(p.domid, log::Level::Warn, format_args!("{text}"));
        }
    }

    /// A domU's state in the domain table: `Some` if it decides the poll.
    fn follow_domain(&mut self, now: u64) -> Option<Poll> {
        let domid = self.platform.domid;
        // Console input goes to vCPU 0's UART as its FIFO has room (the domain
        // table's lock is never held with a device's).
        let mut input = [0u8; crate::devices::uart16550::FIFO_SIZE];
        let room = if self.index == 0 { self.platform.uart_rx_space().min(input.len()) } else { 0 };
        let mut t = DOMAINS.lock();
        let Some(d) = t.get_mut(domid) else { return Some(Poll::Gone) };
        if d.state == DomainState::Dying {
            // This CPU may drop the vCPU (released, or its own), then maybe
            // the domain. The last vCPU gives the memory back first, while the
            // domain is still listed (dying), then lets it go.
            self.vcpu = None;
            if d.live_vcpus == 1 {
                let memory = d.res.take_memory();
                drop(t);
                memory.free();
                t = DOMAINS.lock();
            }
            let dead = t.release_vcpu(domid);
            drop(t);
            // Its exits by reason, for `cargo xtask bench` and whoever wonders
            // what the guest cost (rate-limited as every guest-caused line).
            if self.exits > 0 {
                let (total, by) = platform::tally_text(self.stats().counts());
                control::guest_log(domid, log::Level::Info, format_args!("{}: {total} exits (at its end):{by}", self.label()));
            }
            if let Some(dead) = dead {
                control::release(dead);
            }
            return Some(Poll::Gone);
        }
        if d.restart_pending {
            if self.index != 0 {
                // vCPU 0 boots it again; this one waits for START-UP then.
                drop(t);
                self.power_off();
                return Some(Poll::Sleep(None));
            }
            drop(t);
            return Some(self.restart(now));
        }
        if !matches!(d.state, DomainState::Running | DomainState::ShuttingDown) {
            // Paused: its state for VCPU_STATE_GET/SET (`state_io`).
            let states = (d.state == DomainState::Paused).then(|| d.res.vcpu_states.clone()).flatten();
            drop(t);
            if let Some(m) = states {
                self.serve_state(&m);
            }
            return Some(Poll::Sleep(None));
        }
        let got = if room > 0 && d.res.has_console_input() { d.res.take_console_input(&mut input[..room]) } else { 0 };
        // A request wakes a vCPU blocked in SCHED_OP, and so does console
        // input (once per arrival) for the test kernels that read it through
        // CONSOLE_READ.
        let request = d.request != request::NONE || (self.blocked_until.is_some() && d.res.take_input_wake());
        let asked = d.request;
        drop(t);
        if got > 0 {
            self.platform.push_uart_input(&input[..got]);
        }
        if self.index == 0 && asked != self.request_sent {
            // A guest without Oxen's control hypercalls (Linux) learns of
            // `oxl shutdown` / `reboot` as Ctrl-Alt-Del, as Firecracker does;
            // its init shuts down and the power-off that follows is taken as
            // what was asked (`settle`). Until its driver listens, the 30 s
            // fallback stands.
            if asked == request::NONE || self.platform.ctrl_alt_del() {
                self.request_sent = asked;
            }
        }
        match self.blocked_until {
            // A request wakes a vCPU blocked in SCHED_OP (the guest asks for
            // it then).
            Some(until) if !request && now < until => {
                let at = until.min(control::drain_echo(now));
                Some(Poll::Sleep((at != FOREVER).then_some(at)))
            }
            _ => {
                self.blocked_until = None;
                None
            }
        }
    }

    /// vCPU 0 of a domU boots it again: memory zeroed and laid out again from
    /// the staged kernel, devices and APICs back to power-on, every vCPU's
    /// state dropped.
    fn restart(&mut self, now: u64) -> Poll {
        let domid = self.platform.domid;
        self.power_off();
        self.xstate = None;
        self.msrs = Default::default();
        // Zeroing takes long (about 0.1 s a GiB), so not under the table's
        // lock: `restart_pending` keeps the domain from running and from
        // ending again, and this vCPU keeps its memory from being freed (a
        // destroy meanwhile only marks it dying).
        for r in self.platform.ram.regions() {
            // SAFETY: the region is this domain's RAM (its own chunks, identity
            // mapped), alive while this vCPU is; no vCPU of the domain runs
            // while it restarts.
            unsafe { core::ptr::write_bytes(r.hpa.as_u64() as *mut u8, 0, r.len as usize) };
        }
        self.platform.reset();
        self.generation = self.platform.generation();
        self.inits_seen = 0;
        let mut t = DOMAINS.lock();
        let Some(d) = t.get_mut(domid) else { return Poll::Gone };
        if !d.restart_pending {
            // Destroyed meanwhile: the next poll lets it go.
            return Poll::Sleep(Some(now));
        }
        match crate::domain::build::lay_out(&mut d.res, d.vcpus) {
            Ok(spec) => {
                self.start = Some(spec);
                d.res.boot = Some(spec);
                let vcpus = d.vcpus;
                t.finish_restart(domid);
                drop(t);
                // The others drop their state when they see the new generation.
                for j in 1..vcpus {
                    sched::nudge(VcpuId { dom: domid, vcpu: j });
                }
                control::guest_log(domid, log::Level::Info, format_args!("{}: rebooted", self.platform.label(0)));
                Poll::Run
            }
            Err(e) => {
                d.restart_pending = false;
                d.state = DomainState::Dying;
                drop(t);
                warn!("{}: cannot boot it again: {}", self.platform.label(0), e.why);
                Poll::Sleep(Some(now))
            }
        }
    }

    fn report_stall(&mut self, now: u64) {
        let since = *self.halted_since.get_or_insert(now);
        if self.stall_reported || now - since <= STALL_NS || self.platform.role != Role::Dom0 {
            return;
        }
        self.stall_reported = true;
        let label = self.label();
        log_tally(&label, "first idle stretch", self.stats().counts());
        let Some(vcpu) = self.vcpu.as_ref() else { return };
        let (rip, exits) = (vcpu.rip(), self.exits);
        let mut bus = self.platform.apics();
        let l = bus.lapic(self.index);
        let isr: [u32; 8] = core::array::from_fn(|i| l.read_register(0x100 + 0x10 * i as u32, now));
        let irr: [u32; 8] = core::array::from_fn(|i| l.read_register(0x200 + 0x10 * i as u32, now));
        let history: alloc::vec::Vec<_> = l.timer_history().collect();
        info!(
            "{label}: idle for {} s (nothing to deliver): rip {rip:#x}, pending {:?}, ppr {:#x}, timer deadline {:?} (now {now}), lvt timer {:#x}, isr {isr:x?}, irr {irr:x?}, exits {exits}; its timer's last steps: {history:?}",
            (now - since) / 1_000_000_000,
            l.pending(),
            l.ppr(),
            l.timer_deadline(),
            l.read_register(0x320, now),
        );
    }

    /// The guest ended itself, faulted, or did what nothing emulates. dom0
    /// gets the answer a machine would give (#UD, all ones); its triple fault
    /// or shutdown stops the host, as a real machine stops. A domU's ends
    /// the domain (its `on_*` action) and nothing else.
    fn settle(&mut self, outcome: Outcome) -> bool {
        let Some(vcpu) = self.vcpu.as_mut() else { return true };
        let (domid, label, rip) = (self.platform.domid, self.platform.label(self.index), vcpu.rip());
        if self.platform.role == Role::Dom0 {
            match outcome {
                Outcome::MemoryFault { gpa, access } => blocked_access(vcpu, &self.platform, gpa, access, &mut self.blocked_accesses),
                Outcome::TripleFault | Outcome::Shutdown(_) => {
                    crate::console::fatal(format_args!("{label} stopped after {} exits at rip {rip:#x}: {outcome:?}", self.exits))
                }
                Outcome::Unemulated { gpa, error } => {
                    refuse(vcpu, &mut self.refused, format_args!("{label}: cannot emulate MMIO at {gpa:?}: {error:?}"))
                }
                other => refuse(vcpu, &mut self.refused, format_args!("{label}: {other:?}")),
            }
            return false;
        }
        let (reason, why) = match outcome {
            // A power-off while a reboot was asked for (the guest shut down
            // on Ctrl-Alt-Del): the reboot it was asked for, as xl does.
            Outcome::Shutdown(ShutdownReason::Poweroff) if self.request_sent == request::REBOOT => {
                (ShutdownReason::Reboot, "shut down as asked, to reboot")
            }
            Outcome::Shutdown(reason) => (
                reason,
                match reason {
                    ShutdownReason::Poweroff => "powered off",
                    ShutdownReason::Reboot => "asked to reboot",
                    ShutdownReason::Crash => "reported a crash",
                },
            ),
            Outcome::MemoryFault { gpa, access } => {
                control::guest_log(domid, log::Level::Warn, format_args!("{label}: {access:?} of {:#x}, not its memory, at rip {rip:#x}", gpa.as_u64()));
                (ShutdownReason::Crash, "crashed (memory outside its own)")
            }
            Outcome::TripleFault => {
                log_triple_fault(vcpu, &self.platform.gm, domid, &label, rip);
                (ShutdownReason::Crash, "crashed (triple fault)")
            }
            Outcome::Unemulated { gpa, error } => {
                control::guest_log(domid, log::Level::Warn, format_args!("{label}: cannot emulate MMIO at {gpa:?} ({error:?}) at rip {rip:#x}"));
                (ShutdownReason::Crash, "crashed (MMIO the hypervisor cannot complete)")
            }
            other => {
                control::guest_log(domid, log::Level::Warn, format_args!("{label}: unhandled exit {other:?} at rip {rip:#x}"));
                (ShutdownReason::Crash, "crashed (unhandled exit)")
            }
        };
        control::end(domid, reason, why);
        true
    }
}

/// Logs what a domU's triple fault left (its state, the walk of its #DF
/// gate against its nested tables, the entry before it), each line through
/// the domain's rate limit.
fn log_triple_fault(vcpu: &AnyVcpu, gm: &crate::virt::GuestMemory, domid: u32, label: &str, rip: u64) {
    // The state it died in, for whoever debugs the guest.
    let st = vcpu.state().unwrap_or_default();
    control::guest_log(
        domid,
        log::Level::Warn,
        format_args!(
            "{label}: triple fault at rip {rip:#x} (rsp {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} cs {:#x} gdtr {:#x}/{:#x} idtr {:#x}/{:#x} tr {:#x}/{:#x})",
            st.rsp, st.cr0, st.cr2, st.cr3, st.cr4, st.efer, st.cs.selector, st.gdtr.base, st.gdtr.limit, st.idtr.base, st.idtr.limit, st.tr.selector, st.tr.base
        ),
    );
    // How its IDT's #DF entry translates, entry by entry: a
    // triple fault is often a #DF whose gate is unreachable.
    if let Some(cpu) = vcpu.cpu_state() {
        let df = st.idtr.base.wrapping_add(8 * 16);
        let trace = crate::emulate::walk::WalkTrace::new(gm, &cpu.paging, df);
        control::guest_log(domid, log::Level::Warn, format_args!("{label}: its #DF gate at {df:#x}: {trace}"));
        // Each table the walk read, as the CPU reaches it (the
        // nested tables) against the domain's RAM map.
        let mut differ = 0;
        let end = trace.end().ok().map(|g| (0u8, g.as_u64() & !0xfff, 0u64));
        for &(level, at, _) in trace.steps().iter().chain(end.iter()) {
            if let Some((nested, ram)) = control::nested_and_ram_translation(domid, at) {
                if nested != ram {
                    differ += 1;
                    control::guest_log(domid, log::Level::Warn, format_args!("{label}: its L{level} table (L0: the gate's page) at {at:#x}: nested tables {nested:x?}, RAM map {ram:x?}: they differ"));
                }
            }
        }
        if differ == 0 {
            control::guest_log(domid, log::Level::Warn, format_args!("{label}: its nested tables map each of those tables and the gate's page as its RAM map does"));
            // The last fault was reading that gate (CR2), which both
            // its own and its nested tables map: a CPU does not fault
            // there. Said in one line an emulator's log can be
            // searched for (`cargo xtask test` reruns such a run).
            if st.cr2 == df && trace.end().is_ok() {
                control::guest_log(domid, log::Level::Warn, format_args!("{label}: {IMPOSSIBLE_TRIPLE_FAULT}"));
            }
        }
    }
    // What the entry that ended so delivered (a vendor's raw
    // format), and the exit before it.
    if let Some(e) = vcpu.last_entry() {
        let (code, info1, info2) = e.exit_before;
        control::guest_log(
            domid,
            log::Level::Warn,
            format_args!(
                "{label}: the entry before it injected {:#x} (raw), after exit {code:#x} ({info1:#x}, {info2:#x}) on cpu{}; it ran on cpu{} {} TSC ticks after that exit, on {} nested tables",
                e.injected,
                e.cpu_before,
                e.cpu,
                e.out_tsc,
                if e.own_tables { "its own" } else { "OTHER" }
            ),
        );
    }
}

/// A triple fault whose last fault (CR2) was reading a #DF gate that the
/// guest's own tables and its nested tables map: not a fault a CPU takes,
/// seen only under QEMU 7.2's TCG (docs/architecture.md, "The two backends
/// under the emulators").
pub const IMPOSSIBLE_TRIPLE_FAULT: &str = "CR2 is its #DF gate, which its own and its nested tables map: no CPU faults there";

impl GuestVcpu {
    /// `exit_tally_s`: logs the tally when it is due; the time it is due
    /// next (a sleeping vCPU is polled then, not run: no exit is added).
    fn periodic_tally(&mut self, now: u64) -> Option<u64> {
        let period = TALLY_PERIOD_NS.load(Ordering::Relaxed);
        if period == 0 {
            return None;
        }
        let at = *self.tally_at.get_or_insert(now);
        if now >= at {
            // Logged directly, not through the domain's rate-limited log: an
            // option for measurements, off by default.
            log_tally(&self.label(), "periodic", self.stats().counts());
            self.tally_at = Some(now + period);
        }
        self.tally_at
    }

    /// The poll itself: the domain's state, INIT / START-UP, interrupts.
    fn poll_state(&mut self, now: u64) -> Poll {
        if self.platform.role == Role::DomU {
            // Consoles' serial echoes are printed here, between turns, with
            // no lock held; a domain writing its console never waits for the
            // UART.
            control::drain_echo(now);
            if let Some(p) = self.follow_domain(now) {
                return p;
            }
            // Its access waits for dom0's device model (`vm::ioreq`):
            // IOREQ_DONE, or the device model's end, wakes it.
            if self.platform.ioreq_waiting(self.index) {
                return Poll::Sleep(None);
            }
        }
        if self.generation != self.platform.generation() {
            // The domain rebooted: back to power-on (vCPU 0 got its boot state
            // in `restart`).
            self.generation = self.platform.generation();
            self.inits_seen = 0;
            self.power_off();
            self.xstate = None;
            self.msrs = Default::default();
        }
        let timer = loop {
            self.follow_power();
            if !self.powered() {
                // Waiting for START-UP: only a kick (from the IPI) changes that.
                return Poll::Sleep(None);
            }
            if let Serviced::Run { timer } = self.service(now, false) {
                break timer;
            }
        };
        if !self.halted || self.vcpu.is_none() {
            return Poll::Run;
        }
        self.stats().state.store(STATE_HALTED, Ordering::Relaxed);
        self.report_stall(now);
        // While halted, sleep until its timer, a kick, or (dom0's vCPU 0) the
        // next look at serial input.
        let serial = (self.platform.role == Role::Dom0 && self.index == 0).then_some(now + SERIAL_POLL_NS);
        Poll::Sleep(match (timer, serial) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }
}

impl Runnable for GuestVcpu {
    fn poll(&mut self, now: u64) -> Poll {
        let tally = self.periodic_tally(now);
        match self.poll_state(now) {
            Poll::Sleep(at) => Poll::Sleep(match (at, tally) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }),
            p => p,
        }
    }

    fn run(&mut self, until: u64) {
        let start = now_ns();
        let exits_before = self.exits;
        let domid = self.platform.domid;
        if !self.make_vcpu() {
            return;
        }
        self.stats().state.store(STATE_RUNNING, Ordering::Relaxed);
        // What the vCPU keeps in the CPU for the whole slice, switched here
        // and at its end, not around each exit: its x87/SSE/AVX state, its
        // speculation-control MSRs, its debug registers, TSC_AUX, TLB tag.
        // The hypervisor itself uses none of them (`cargo xtask vecregs`
        // checks the vector registers), so exits in between are handled with
        // the guest's values in place, and `leave` below reads them back
        // before any other vCPU can run on this CPU.
        if let Some(x) = self.xstate.as_mut() {
            x.load();
        }
        exit::msr::load_for_guest(&self.msrs, domid);
        if let Some(v) = self.vcpu.as_mut() {
            v.enter();
        }
        let serial = self.platform.role == Role::Dom0 && self.index == 0;
        // Whether the last exit may have changed what the vCPU is to be
        // given (devices, its APIC, its timer, halting): then the devices
        // and APICs are looked at and the hypervisor's timer re-armed before
        // the guest is entered again. A hypercall, CPUID or an MSR read
        // changes none of that; what another CPU posts comes with a kick (a
        // physical interrupt, so a `Preempted` exit), and time is kept by the
        // timer armed at the last service: it fires at the guest's next timer
        // deadline or at the slice's end (`Preempted` again).
        let mut stale = true;
        loop {
            if stale {
                let now = now_ns();
                let Serviced::Run { timer } = self.service(now, true) else { break };
                if self.halted || now >= until {
                    break;
                }
                let stop = if serial { until.min(now + SERIAL_POLL_NS) } else { until };
                let deadline = ns_to_tsc(timer.map_or(stop, |d| d.min(stop)));
                apic::arm_timer(Some(deadline));
                // The same deadline as a bound the backend enforces itself
                // (VT-x: the preemption timer): under Bochs a timer interrupt
                // that should have ended the run was not seen for seconds
                // (`dom0-linux-vmx`: one spinning Linux vCPU kept
                // pCPU 1 for 20 s, its siblings starved).
                if let Some(v) = self.vcpu.as_mut() {
                    v.set_deadline(Some(deadline));
                }
            }
            // A host interrupt that came since the last exit (a kick, the
            // slice's timer) is pending: interrupts are off here. Real CPUs
            // exit right after the entry for it (external-interrupt exiting,
            // AMD-V's physical INTR intercept), but Bochs (VT-x) was seen to
            // enter and run the guest on: a paused domU kept running
            // (`dom0-probes-vmx`), a spinning Linux domU held its pCPU for
            // 12 s (`dom0-linux-vmx`). So it is taken here before
            // every entry, on both vendors, for the price of STI; NOP; CLI,
            // and ends the run as a `Preempted` exit would.
            if apic::take_pending() {
                break;
            }
            let Some(vcpu) = self.vcpu.as_mut() else { break };
            let exit = vcpu.run();
            self.exits += 1;
            let stats = &self.platform.stats[self.index];
            stats.tally[tally_index(&exit)].fetch_add(1, Ordering::Relaxed);
            if self.exits.is_multiple_of(TALLY_EVERY) {
                log_tally(&self.platform.label(self.index), "so far", stats.counts());
            }
            let io = matches!(exit, VmExit::Io { .. });
            let msr_write = matches!(exit, VmExit::MsrWrite { .. });
            stale = !matches!(exit, VmExit::Hypercall | VmExit::Cpuid { .. } | VmExit::MsrRead { .. } | VmExit::Xsetbv { .. });
            let mut env = VcpuEnv {
                platform: &self.platform,
                index: self.index,
                msrs: &mut self.msrs,
                kvmclock: &mut self.kvmclock,
                tsc_offset: self.tsc_offset,
            };
            let mut outcome = exit::handle(vcpu, exit, &mut env);
            if msr_write {
                // SPEC_CTRL and its kin take effect now, as on a CPU.
                exit::msr::load_for_guest(&self.msrs, domid);
            }
            if io && outcome == Outcome::Continue {
                // The keyboard's reset line, ACPI's sleep or reset register,
                // the pvpanic port.
                match self.platform.take_power_event() {
                    Some(PowerEvent::Reset) => outcome = Outcome::Shutdown(ShutdownReason::Reboot),
                    Some(PowerEvent::PowerOff) => outcome = Outcome::Shutdown(ShutdownReason::Poweroff),
                    Some(PowerEvent::Crash) => outcome = Outcome::Shutdown(ShutdownReason::Crash),
                    None => {}
                }
            }
            match outcome {
                Outcome::Continue => {}
                // A physical interrupt (the timer, a kick, a device): back to
                // the scheduler, which may have another vCPU to run here.
                // An access waits for dom0's device model: `poll_state`
                // keeps the vCPU asleep until the answer came.
                Outcome::Preempted | Outcome::Yield | Outcome::IoWait => break,
                Outcome::Halted => {
                    self.halted = true;
                    stale = true;
                    self.note_halt_in_service();
                }
                Outcome::Block { timeout_ns } => {
                    self.blocked_until = Some(if timeout_ns == 0 { FOREVER } else { now_ns().saturating_add(timeout_ns) });
                    break;
                }
                other => {
                    stale = true;
                    if self.settle(other) {
                        break;
                    }
                }
            }
        }
        if let Some(v) = self.vcpu.as_mut() {
            v.leave();
        }
        if let Some(x) = self.xstate.as_mut() {
            x.save();
        }
        self.platform.flush_pending_console();
        let ran = now_ns().saturating_sub(start);
        if let Some(d) = DOMAINS.lock().get_mut(domid) {
            d.cpu_time_ns += ran;
            d.exits += self.exits - exits_before;
            d.res.home_cpu = crate::arch::x86_64::cpu_id();
        }
    }

    fn adopt(&mut self) {
        if let Some(v) = self.vcpu.as_mut() {
            if let Err(e) = v.adopt() {
                warn!("{}: cannot move its vCPU here: {e}", self.platform.label(self.index));
                control::end(self.platform.domid, ShutdownReason::Crash, "its vCPU could not move");
            }
        }
    }

    fn release(&mut self) {
        if let Some(v) = self.vcpu.as_mut() {
            v.release();
        }
    }
}

fn tally_index(exit: &VmExit) -> usize {
    match exit {
        VmExit::Cpuid { .. } => 0,
        VmExit::Io { .. } => 1,
        VmExit::MsrRead { .. } => 2,
        VmExit::MsrWrite { .. } => 3,
        VmExit::Hlt => 4,
        VmExit::Hypercall => 5,
        VmExit::NestedPageFault { .. } => 6,
        VmExit::Preempted => 7,
        VmExit::InterruptWindow => 8,
        _ => 9,
    }
}

/// What one vCPU's exits reach: its domain's platform and its own APIC.
struct VcpuEnv<'a> {
    platform: &'a Platform,
    index: usize,
    msrs: &'a mut exit::msr::VcpuMsrs,
    kvmclock: &'a mut KvmClock,
    /// `GuestVcpu::tsc_offset`.
    tsc_offset: u64,
}

impl VcpuEnv<'_> {
    /// A domU's KVM-compatible clock owns the MSR.
    fn kvmclock_msr(&self, msr: u32) -> bool {
        self.platform.role == Role::DomU && KvmClock::claims(msr)
    }
}

/// The clock now as a guest whose TSC is the host's plus `tsc_offset` sees
/// it, for the KVM-compatible clock: its system time counts from its own TSC
/// 0 (the hardware adds the offset to what it reads), so it goes on across a
/// migration with its TSC; Unix time is the host's.
fn clock_now(tsc_offset: u64) -> ClockNow {
    let host_ns = now_ns();
    ClockNow {
        tsc_hz: crate::arch::x86_64::time::tsc_hz(),
        tsc_at_zero: 0,
        ns: crate::arch::x86_64::time::tsc_to_ns(crate::arch::x86_64::time::rdtsc().wrapping_add(tsc_offset)),
        unix_ns: crate::arch::x86_64::wallclock::unix_ns(host_ns),
    }
}

impl PortBus for VcpuEnv<'_> {
    fn read(&mut self, port: u16, size: u8) -> Option<u32> {
        self.platform.port_read(port, size)
    }
    fn write(&mut self, port: u16, size: u8, value: u32) -> bool {
        self.platform.port_write(port, size, value)
    }
    fn forwarded(&mut self, port: u16, size: u8, write: Option<u32>) -> Option<crate::vm::ioreq::Answer> {
        self.platform.ioreq_port(self.index, port, size, write, now_ns())
    }
}

impl GuestEnv for VcpuEnv<'_> {
    fn ports(&mut self) -> &mut dyn PortBus {
        self
    }
    fn memory(&self) -> Option<&dyn crate::emulate::GuestPhysRead> {
        Some(&self.platform.gm)
    }
    fn mmio(&mut self, gpa: GuestPhysAddr, access: MmioAccess<'_>) -> bool {
        self.platform.mmio(self.index, gpa, now_ns(), access)
    }
    fn write_fault(&mut self, gpa: GuestPhysAddr) -> bool {
        // An MMIO write (a LAPIC EOI, a device model's page) is not RAM:
        // answered from the platform's copy of the RAM map, without the
        // domain table's lock.
        self.platform.role == Role::DomU
            && control::is_writable_ram(&self.platform.ram, gpa.as_u64() / PAGE_SIZE)
            && control::log_dirty_fault(self.platform.domid, gpa.as_u64())
    }
    fn refused_cpl(&mut self, cpl: u8, number: u64) {
        // dom0's unprivileged processes are as untrusted as a domU: their
        // refusals count against the domain's log limit alike.
        use crate::hypercall::Services;
        control::Hv.refused(self.platform.domid, format_args!("hypercall {number:#x} from CPL {cpl}"));
    }
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        crate::arch::x86_64::cpuid(leaf, subleaf)
    }
    fn cpuid_kind(&self) -> exit::cpuid::Kind {
        match self.platform.role {
            // vCPU i runs on CPU i with its APIC ID: the host's topology
            // leaves describe it as they are.
            Role::Dom0 => exit::cpuid::Kind::Dom0,
            Role::DomU => exit::cpuid::Kind::DomU { vcpu: self.index as u32, vcpus: self.platform.vcpus() as u32 },
        }
    }
    fn vcpu_msrs(&mut self) -> Option<&mut exit::msr::VcpuMsrs> {
        Some(self.msrs)
    }
    fn tsc_hz(&self) -> u64 {
        crate::arch::x86_64::time::tsc_hz()
    }
    fn msr_read(&mut self, msr: u32) -> Option<u64> {
        if self.kvmclock_msr(msr) {
            return self.kvmclock.msr_read(msr).ok();
        }
        if msr == exit::msr::nr::IA32_TSC {
            // (If it exits at all: the hardware offsets a read that does not.)
            return Some(crate::arch::x86_64::time::rdtsc().wrapping_add(self.tsc_offset));
        }
        if !VirtualLapic::owns_msr(msr) {
            return None;
        }
        let value = self.platform.apics().lapic(self.index).msr_read(msr, now_ns()).ok()?;
        Some(match msr {
            crate::devices::lapic::msr::IA32_TSC_DEADLINE if value != 0 && self.tsc_offset != 0 => {
                crate::virt::snapshot::host_to_guest_tsc(value, self.tsc_offset, crate::arch::x86_64::time::rdtsc())
            }
            _ => value,
        })
    }
    fn msr_write(&mut self, msr: u32, value: u64) -> bool {
        if self.kvmclock_msr(msr) {
            let mut ram = control::RamView(&self.platform.ram);
            return self.kvmclock.msr_write(msr, value, &mut ram, &clock_now(self.tsc_offset)).is_ok();
        }
        let value = match msr {
            crate::devices::lapic::msr::IA32_TSC_DEADLINE if value != 0 && self.tsc_offset != 0 => {
                crate::virt::snapshot::guest_to_host_tsc(value, self.tsc_offset, crate::arch::x86_64::time::rdtsc())
            }
            _ => value,
        };
        VirtualLapic::owns_msr(msr) && self.platform.apics().lapic(self.index).msr_write(msr, value, now_ns()).is_ok()
    }
    fn wbinvd(&mut self) {
        // dom0 drives the machine's devices: a driver that flushes caches for
        // a device's sake gets the real flush. Others' is a no-op.
        if self.platform.privileged() {
            // SAFETY: WBINVD writes caches back; it changes no hypervisor state.
            unsafe { core::arch::asm!("wbinvd", options(nostack, preserves_flags)) };
        }
    }
    fn hypercall(&mut self, args: &Args) -> (Result<u64, oxen_abi::Error>, After) {
        let mut ram = control::RamView(&self.platform.ram);
        let mut caller = Caller { domid: self.platform.domid, privileged: self.platform.privileged(), ram: &mut ram };
        hypercall::dispatch(&mut caller, &mut control::Hv, args)
    }
}

/// An exit nothing emulates, by dom0 (an MMIO instruction the emulator does
/// not decode, string I/O on an emulated port, an exit no handler knows):
/// dom0 gets #UD, as from a CPU that cannot run the instruction, and runs on.
/// Logged up to `LOG_LIMIT` times, then counted.
fn refuse(vcpu: &mut AnyVcpu, count: &mut u64, what: core::fmt::Arguments<'_>) {
    *count += 1;
    if *count <= LOG_LIMIT {
        warn!("{what} at rip {:#x}: #UD injected", vcpu.rip());
    } else if *count == LOG_LIMIT + 1 {
        warn!("dom0: further exits answered with #UD are counted, not logged");
    }
    vcpu.inject_exception(UD, None);
}

/// What dom0 sees where it has no memory (hypervisor RAM, or nothing): reads
/// return all ones, writes are dropped, as on a bus where nothing answers.
struct Nothing;

impl crate::devices::MmioDevice for Nothing {
    fn mmio_read(&mut self, _offset: u64, _size: u8) -> u64 {
        u64::MAX
    }
    fn mmio_write(&mut self, _offset: u64, _size: u8, _value: u64) {}
}

/// dom0 touched guest-physical memory it does not have. The access fails
/// inside dom0 and dom0 runs on: a plain MOV completes against `Nothing`,
/// anything else (string copies, as from /dev/mem) gets #GP, which Linux's
/// exception fixups turn into an error for the caller.
fn blocked_access(vcpu: &mut AnyVcpu, p: &Platform, gpa: GuestPhysAddr, access: Access, count: &mut u64) {
    *count += 1;
    let page = GuestPhysAddr::new(gpa.as_u64() & !(PAGE_SIZE - 1));
    let rip = vcpu.rip();
    let result = match vcpu.cpu_state() {
        Some(cpu) => mmio::emulate_mmio(vcpu, &p.gm, &cpu, gpa, page, &mut Nothing).map(|_| ()),
        None => Err(EmulateError::Decode(crate::emulate::decode::DecodeError::Unsupported)),
    };
    let kind = if access.contains(Access::EXEC) {
        "execute"
    } else if access.contains(Access::WRITE) {
        "write"
    } else {
        "read"
    };
    let what = match (&result, kind) {
        (Err(_), _) => "refused with #GP",
        (Ok(()), "write") => "dropped",
        (Ok(()), _) => "reads all ones",
    };
    if *count <= LOG_LIMIT {
        warn!("dom0: {kind} of {:#x} (not dom0 memory) at rip {rip:#x}: {what}", gpa.as_u64());
    } else if *count == LOG_LIMIT + 1 {
        warn!("dom0: further blocked accesses are counted, not logged");
    }
    if result.is_err() {
        vcpu.inject_exception(GP, Some(0));
    }
}
