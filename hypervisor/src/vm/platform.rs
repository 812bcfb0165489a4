//! A domain's virtual platform (target only): the devices its vCPUs share —
//! the 16550 UART as COM1, the IOAPIC, the masked PICs, one local APIC per
//! vCPU on the domain's APIC bus, and for domUs the PCI configuration ports
//! (no device), the i8042 keyboard controller and the CMOS clock — on its
//! port and MMIO buses, with its memory views. (Each vCPU's KVM-compatible
//! clock MSRs are the vCPU's: `vm::vcpu`.)
//!
//! Every domain has one; what differs is data (`Role`): dom0's devices pass
//! through but for the ports and pages registered here, the machine's
//! interrupts are forwarded into its IOAPIC, its UART is the machine's console
//! and it owns the serial input; a domU has only what is registered here, and
//! its UART writes its console ring.
//!
//! Locks: `devices` and `apics` are never held together (each is taken, used
//! and let go) and never across a guest entry; the domain table's lock is
//! never taken while either is held.

use super::apic_bus::ApicBus;
use super::bus::Bus;
use super::ioreq;
use alloc::sync::Arc;
use crate::arch::x86_64::irq;
use crate::console_switch::{ConsoleSwitch, Focus, Input};
use crate::devices::ioapic::IoApic;
use crate::devices::lapic::LapicClock;
use crate::devices::i8042::{self, I8042, KBD_IRQ};
use crate::devices::acpi_pm::{self, AcpiPm, PmEvent};
use crate::devices::pvpanic::{self, PvPanic};
use crate::devices::rtc::Rtc;
use crate::devices::uart16550::{Uart16550, COM1_BASE, COM1_IRQ};
use crate::devices::PortDevice;
use crate::domain::control;
use crate::mem::{GuestPhysAddr, PAGE_SIZE};
use crate::virt::GuestMemory;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use log::info;
use spin::{Mutex, MutexGuard};

/// The host's wall clock now, in Unix nanoseconds.
fn wall_ns() -> u64 {
    crate::arch::x86_64::wallclock::unix_ns(crate::arch::x86_64::time::now_ns())
}

pub use super::{IOAPIC_PAGE, LAPIC_PAGE};
/// The PCI configuration mechanism #1 ports (address at 0xCF8, data at 0xCFC).
const PCI_CONFIG: u16 = 0xcf8;
/// The masks of the two 8259s: read back, never acted on (no PIC is modelled;
/// the hypervisor keeps the physical ones masked).
const PIC_MASKS: [u16; 2] = [0x21, 0xa1];
/// The ports dom0 does not reach directly: COM1 is the hypervisor's, the
/// PICs stay masked (`AnyVcpu::pass_through_dom0_io`).
pub const DOM0_KEPT_PORTS: core::ops::RangeInclusive<u16> = COM1_BASE..=COM1_BASE + 7;
pub const DOM0_KEPT_PIC_PORTS: [u16; 4] = [0x20, 0x21, 0xa0, 0xa1];

/// What a domain's platform is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The management domain: privileged, its vCPU i pinned to CPU i, the
    /// machine's devices passed through.
    Dom0,
    /// An unprivileged domain: only the devices registered on its buses.
    DomU,
}

/// A device on a port bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortDev {
    Uart,
    PicMask(u8),
    PciConfig,
    /// The PS/2 controller (its two ports, 0x60 and 0x64).
    Keyboard,
    Rtc,
    /// ACPI's sleep control / status and reset registers.
    AcpiPm,
    /// The pvpanic port (`devices::pvpanic`): the guest's kernel reports a panic.
    PvPanic,
}

/// What a guest asked of the machine through a device (the i8042's reset
/// line, ACPI's sleep and reset registers, the pvpanic port): its vCPU ends
/// the domain so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerEvent {
    Reset,
    PowerOff,
    /// The guest's kernel panicked (pvpanic PANICKED): its `on_crash`.
    Crash,
}

/// A device on an MMIO bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioDev {
    /// The local APIC of whichever vCPU touches it.
    Lapic,
    IoApic,
}

/// Redirection-entry bits dom0's physical routing depends on.
const RTE_ACTIVE_LOW: u64 = 1 << 13;
const RTE_LEVEL: u64 = 1 << 15;
const RTE_MASKED: u64 = 1 << 16;

/// dom0's link to the machine: serial input, and the physical interrupt
/// lines mirrored from its IOAPIC.
pub struct HostLink {
    pub switch: ConsoleSwitch,
    /// Redirection entries last mirrored onto the physical I/O APIC.
    routed: [u64; irq::PINS as usize],
    /// The physical APIC id forwarded interrupts are sent to (the boot CPU's,
    /// where dom0's vCPU 0 runs).
    host_apic_id: u32,
}

/// dom0's IOAPIC: the machine's 24 lines (mirrored), then the hypervisor's.
pub const DOM0_IOAPIC_PINS: u8 = 32;
/// dom0's event line (`oxen_abi::EVENT_GSI`).
const EVENT_PIN: u8 = oxen_abi::EVENT_GSI as u8;
const _: () = assert!(EVENT_PIN >= irq::PINS && EVENT_PIN < DOM0_IOAPIC_PINS);

/// dom0's platform, for events posted from any CPU (`post_dom0_events`).
static DOM0: spin::Once<alloc::sync::Arc<Platform>> = spin::Once::new();

/// Remembers dom0's platform (once, when dom0 is built).
pub fn set_dom0(platform: alloc::sync::Arc<Platform>) {
    DOM0.call_once(|| platform);
}

/// Events pending for dom0 (`oxen_abi::event`) and those it wants
/// (`nr::EVENTS`); its event line is up while the two share a bit. Atomics, so
/// that a domU's console write does not take dom0's devices' lock.
static DOM0_EVENTS: AtomicU64 = AtomicU64::new(0);
static DOM0_EVENTS_WANTED: AtomicU64 = AtomicU64::new(0);

/// Whether an event dom0 wants is pending (its line up, or about to be).
pub fn dom0_events_waiting() -> bool {
    dom0_event_line()
}

fn dom0_event_line() -> bool {
    DOM0_EVENTS.load(Ordering::Acquire) & DOM0_EVENTS_WANTED.load(Ordering::Acquire) != 0
}

/// Notes events for dom0. When one it wants becomes pending, its event
/// line goes up at its vCPU 0's next look at its devices, which this asks
/// for; more while it is up only add bits (one interrupt for the lot).
pub fn post_dom0_events(bits: u64) {
    let Some(p) = DOM0.get() else { return };
    let old = DOM0_EVENTS.fetch_or(bits, Ordering::AcqRel);
    let wanted = DOM0_EVENTS_WANTED.load(Ordering::Acquire);
    if old & wanted == 0 && bits & wanted != 0 {
        crate::sched::run::nudge(crate::sched::credit::VcpuId { dom: p.domid, vcpu: 0 });
    }
}

/// `nr::EVENTS`: takes dom0's pending events, lowers its line at once (so
/// the EOI that follows its handler does not deliver again for these) and
/// notes what it wants from now on. Under the devices' lock, as the line's
/// update (`Devices::update_lines`): an event posted after the swap raises
/// the line again at the service its nudge brings.
pub fn take_dom0_events(want: u64) -> u64 {
    let Some(p) = DOM0.get() else { return 0 };
    let mut d = p.devices.lock();
    DOM0_EVENTS_WANTED.store(want, Ordering::Release);
    let got = DOM0_EVENTS.swap(0, Ordering::AcqRel);
    d.ioapic.set_irq(EVENT_PIN, false);
    got
}

/// The devices but the local APICs.
pub struct Devices {
    pub uart: Uart16550,
    uart_irq: bool,
    /// Writes to the UART since its output last went to the console.
    uart_unflushed: u32,
    pic_masks: [u8; 2],
    pub ioapic: IoApic,
    /// Level pins that stay in service too long (`vm::vcpu` reports them).
    pub stuck: crate::devices::ioapic::StuckPins,
    /// The last address written to 0xCF8.
    pci_address: u32,
    /// domUs: the PS/2 controller (Ctrl-Alt-Del for `oxl shutdown`, its reset
    /// line for reboots) and the CMOS clock.
    pub keyboard: I8042,
    rtc: Rtc,
    acpi_pm: AcpiPm,
    /// What a device asked of the machine, for the vCPU to act on.
    power: Option<PowerEvent>,
    /// dom0 only.
    host: Option<HostLink>,
}

impl Devices {
    fn new(role: Role) -> Self {
        Self {
            uart: Uart16550::com1(),
            uart_irq: false,
            uart_unflushed: 0,
            pic_masks: [0xff; 2],
            ioapic: if role == Role::Dom0 { IoApic::with_pins(0, DOM0_IOAPIC_PINS) } else { IoApic::new(0) },
            stuck: Default::default(),
            pci_address: 0,
            keyboard: I8042::default(),
            rtc: Rtc::new(),
            acpi_pm: AcpiPm::default(),
            power: None,
            host: (role == Role::Dom0).then(|| HostLink {
                switch: ConsoleSwitch::default(),
                routed: [RTE_MASKED; irq::PINS as usize],
                host_apic_id: crate::arch::x86_64::apic::id(),
            }),
        }
    }

    /// The IOAPIC's input lines: the UART's, and for dom0 the physical
    /// interrupts forwarded to it (a pulse on the virtual pin; a level line
    /// stays masked on the physical side until dom0's EOI, then is unmasked).
    pub fn update_lines(&mut self) {
        let level = self.uart.irq_level();
        if level != self.uart_irq {
            self.uart_irq = level;
            self.ioapic.set_irq(COM1_IRQ, level);
        }
        let Some(host) = self.host.as_ref() else {
            self.keyboard_line();
            return;
        };
        self.ioapic.set_irq(EVENT_PIN, dom0_event_line());
        let pending = irq::take_pending();
        for pin in (0..irq::PINS).filter(|p| pending & (1 << p) != 0) {
            self.ioapic.set_irq(pin, true);
            self.ioapic.set_irq(pin, false);
        }
        let eoied = self.ioapic.take_eoied_pins();
        for pin in (0..irq::PINS).filter(|p| eoied & (1 << p) != 0 && *p != COM1_IRQ) {
            let e = host.routed[usize::from(pin)];
            if e & RTE_LEVEL != 0 && e & RTE_MASKED == 0 {
                irq::unmask_level(pin, e & RTE_ACTIVE_LOW != 0, host.host_apic_id);
            }
        }
    }

    /// The keyboard's IRQ 1: each byte is its own edge, since Linux reads one
    /// byte per interrupt (`I8042::service` loads the next one only after the
    /// line was seen low).
    fn keyboard_line(&mut self) {
        self.ioapic.set_irq(KBD_IRQ, self.keyboard.irq_level());
        self.keyboard.service();
        self.ioapic.set_irq(KBD_IRQ, self.keyboard.irq_level());
    }

    /// dom0: mirrors the pins it enabled or changed on its IOAPIC onto the
    /// physical one. Pin 4 is its virtual UART, never a physical line.
    fn sync_routes(&mut self) {
        let Some(host) = self.host.as_mut() else { return };
        for pin in (0..irq::PINS).filter(|&p| p != COM1_IRQ) {
            let Some(e) = self.ioapic.redirection_entry(pin) else { continue };
            let e = e & (RTE_ACTIVE_LOW | RTE_LEVEL | RTE_MASKED);
            if e != host.routed[usize::from(pin)] {
                host.routed[usize::from(pin)] = e;
                irq::route(pin, e & RTE_MASKED == 0, e & RTE_LEVEL != 0, e & RTE_ACTIVE_LOW != 0, host.host_apic_id);
            }
        }
    }

    /// dom0: moves serial input from the machine's COM1 into its UART, or to
    /// the hypervisor's console after Ctrl-A three times. Returns the keys
    /// for the hypervisor's console.
    pub fn poll_serial_input(&mut self, help: &str) -> Vec<u8> {
        let mut keys = Vec::new();
        let Some(host) = self.host.as_mut() else { return keys };
        while self.uart.rx_space() > 2 {
            let Some(b) = crate::console::try_read_byte() else { break };
            match host.switch.feed(b) {
                None => {}
                Some(Input::ToDom0(bytes)) => {
                    self.uart.push_input(&bytes);
                }
                Some(Input::ToHypervisor(bytes)) => keys.extend(bytes),
                Some(Input::Switched(Focus::Hypervisor)) => {
                    info!("console: input now goes to the hypervisor (Ctrl-A three times for dom0); keys: {help}")
                }
                Some(Input::Switched(Focus::Dom0)) => info!("console: input now goes to dom0"),
            }
        }
        keys
    }
}

/// What the console and the log see of one vCPU: its CPU counts, others read.
#[derive(Default)]
pub struct VcpuStats {
    pub tally: [AtomicU64; TALLY_LEN],
    /// `STATE_*`.
    pub state: AtomicU8,
}

pub const STATE_WAIT_FOR_SIPI: u8 = 0;
pub const STATE_RUNNING: u8 = 1;
pub const STATE_HALTED: u8 = 2;

/// VM exits counted by kind, for the log and the boot benchmark.
pub const TALLY_LEN: usize = 10;
pub const TALLY_NAMES: [&str; TALLY_LEN] =
    ["cpuid", "io", "msr-read", "msr-write", "hlt", "hypercall", "npf", "preempted", "intr-window", "other"];

impl VcpuStats {
    pub fn counts(&self) -> [u64; TALLY_LEN] {
        core::array::from_fn(|i| self.tally[i].load(Ordering::Relaxed))
    }

    pub fn state_name(&self) -> &'static str {
        match self.state.load(Ordering::Relaxed) {
            STATE_WAIT_FOR_SIPI => "waiting for START-UP",
            STATE_HALTED => "halted",
            _ => "running",
        }
    }
}

/// `(oxen) LABEL: N exits (WHY): name=count ...` (the boot benchmark reads
/// dom0's `first idle stretch` and `console` lines).
pub fn log_tally(label: &str, why: &str, counts: [u64; TALLY_LEN]) {
    let (total, by) = tally_text(counts);
    info!("{label}: {total} exits ({why}):{by}");
}

/// The total and ` name=count` for each reason seen.
pub fn tally_text(counts: [u64; TALLY_LEN]) -> (u64, String) {
    let mut s = String::new();
    for (name, n) in TALLY_NAMES.iter().zip(counts).filter(|(_, n)| *n > 0) {
        let _ = core::fmt::Write::write_fmt(&mut s, format_args!(" {name}={n}"));
    }
    (counts.iter().sum(), s)
}

/// One domain's platform, shared by its vCPUs.
pub struct Platform {
    pub domid: u32,
    pub role: Role,
    name: String,
    pub devices: Mutex<Devices>,
    apics: Mutex<ApicBus>,
    /// The APIC ids the bus was made with (kept for a reset).
    apic_ids: Vec<u32>,
    clock: LapicClock,
    pub stats: Vec<VcpuStats>,
    ports: Bus<PortDev>,
    mmio: Bus<MmioDev>,
    /// Everything the domain may touch (for MMIO emulation's page walks).
    pub gm: GuestMemory,
    /// Its RAM only: where hypercall arguments may be.
    pub ram: GuestMemory,
    /// The nested tables' root, for the vCPUs it makes.
    pub root: u64,
    /// Boots so far: a restart makes every vCPU drop its state.
    generation: AtomicU32,
    /// Tickets for the UART's output, taken under the devices' lock with it
    /// (kept here, so a reset of the devices does not restart them), and the
    /// one whose bytes go to the ring next (`flush_console`).
    console_next: AtomicU64,
    console_turn: AtomicU64,
    /// A domU's I/O server (`with_ioreq`).
    ioreq: Option<Arc<ioreq::Server>>,
}

impl Platform {
    /// The platform of domain `domid` with one vCPU per entry of `apic_ids`
    /// (vCPU 0 the boot processor).
    pub fn new(domid: u32, role: Role, name: &str, apic_ids: &[u32], gm: GuestMemory, ram: GuestMemory, root: u64) -> Self {
        let clock = LapicClock {
            bus_hz: crate::arch::x86_64::apic::timer_hz().max(1),
            tsc_hz: crate::arch::x86_64::time::tsc_hz().max(1),
        };
        let mut ports = Bus::new();
        let mut mmio = Bus::new();
        // Fixed, distinct ranges: registration cannot fail.
        for (start, len, dev) in fixed_ports(role) {
            let _ = ports.insert(start, len, dev);
        }
        for (start, len, dev) in FIXED_MMIO {
            let _ = mmio.insert(start, len, dev);
        }
        Self {
            domid,
            role,
            name: name.into(),
            devices: Mutex::new(Devices::new(role)),
            apics: Mutex::new(ApicBus::new(apic_ids, clock)),
            apic_ids: apic_ids.into(),
            clock,
            stats: (0..apic_ids.len()).map(|_| VcpuStats::default()).collect(),
            ports,
            mmio,
            gm,
            ram,
            root,
            generation: AtomicU32::new(0),
            console_next: AtomicU64::new(0),
            console_turn: AtomicU64::new(0),
            ioreq: None,
        }
    }

    /// A domU's I/O server (`vm::ioreq`): the ranges its device model in
    /// dom0 registered, tried where no device of the buses answers.
    pub fn with_ioreq(mut self, server: Arc<ioreq::Server>) -> Self {
        self.ioreq = Some(server);
        self
    }

    /// vCPU `vcpu`'s port access, if a range of the I/O server holds the port.
    pub fn ioreq_port(&self, vcpu: usize, port: u16, size: u8, write: Option<u32>, now: u64) -> Option<ioreq::Answer> {
        let server = self.ioreq.as_ref()?;
        if self.ports.find(u64::from(port)).is_some() {
            return None;
        }
        // Interrupt-status ranges are MMIO only: no line is set from here.
        let (answer, notify) = server.access(vcpu, oxen_abi::ioreq::KIND_PIO, port.into(), size, write.map(u64::from), now, &mut |_, _| {})?;
        if notify {
            post_dom0_events(oxen_abi::event::IOREQ);
        }
        Some(answer)
    }

    /// Whether vCPU `vcpu` waits for dom0's device model to answer its access.
    pub fn ioreq_waiting(&self, vcpu: usize) -> bool {
        self.ioreq.as_ref().is_some_and(|s| s.waiting(vcpu))
    }

    pub fn vcpus(&self) -> usize {
        self.stats.len()
    }

    pub fn privileged(&self) -> bool {
        self.role == Role::Dom0
    }

    /// How vCPU `i` is named in the log: "dom0" or "d3 (name)", with
    /// "vcpuN" when the domain has more than one.
    pub fn label(&self, i: usize) -> String {
        let base = match self.role {
            Role::Dom0 => String::from("dom0"),
            Role::DomU => alloc::format!("d{} ({})", self.domid, self.name),
        };
        if self.vcpus() == 1 {
            base
        } else {
            alloc::format!("{base} vcpu{i}")
        }
    }

    pub fn apics(&self) -> MutexGuard<'_, ApicBus> {
        self.apics.lock()
    }

    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    /// Back to power-on for a reboot: fresh devices and APICs (vCPU 0 running,
    /// the others waiting for START-UP); every vCPU drops its state when it
    /// sees the new generation.
    pub fn reset(&self) {
        if let Some(s) = self.ioreq.as_ref() {
            s.reset();
        }
        *self.devices.lock() = Devices::new(self.role);
        *self.apics.lock() = ApicBus::new(&self.apic_ids, self.clock);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Port read by vCPU `vcpu`; `None` if no device claims the port.
    pub fn port_read(&self, port: u16, size: u8) -> Option<u32> {
        let (_, dev) = self.ports.find(u64::from(port))?;
        let mut d = self.devices.lock();
        Some(match dev {
            PortDev::Uart => d.uart.port_read(port, size),
            PortDev::PicMask(i) => d.pic_masks[usize::from(i)].into(),
            PortDev::PciConfig => match (port - PCI_CONFIG, size) {
                (0, 4) => d.pci_address,
                // No device answers: all ones (PCI Local Bus 3.0 §6.1).
                _ => u32::MAX,
            },
            PortDev::Keyboard => {
                let v = d.keyboard.port_read(port, size);
                d.keyboard_line();
                v
            }
            PortDev::Rtc => d.rtc.ports(wall_ns()).port_read(port, size),
            PortDev::AcpiPm => d.acpi_pm.read(port, size),
            PortDev::PvPanic => PvPanic.read(port, size),
        })
    }

    /// Port write; false if no device claims the port.
    pub fn port_write(&self, port: u16, size: u8, value: u32) -> bool {
        let Some((_, dev)) = self.ports.find(u64::from(port)) else { return false };
        let mut d = self.devices.lock();
        match dev {
            PortDev::Uart => {
                d.uart.port_write(port, size, value);
                d.uart_unflushed += 1;
                // A domU's bytes go to its ring a line (or 64 bytes) at a time
                // and at the end of each run (`flush_pending_console`), not one
                // table lock per byte; dom0's straight through.
                if self.role == Role::Dom0 || value as u8 == b'\n' || d.uart_unflushed >= 64 {
                    d.uart_unflushed = 0;
                    self.flush_console(d);
                }
            }
            PortDev::PicMask(i) => d.pic_masks[usize::from(i)] = value as u8,
            PortDev::PciConfig => {
                if port == PCI_CONFIG && size == 4 {
                    d.pci_address = value;
                }
            }
            PortDev::Keyboard => {
                d.keyboard.port_write(port, size, value);
                if d.keyboard.take_event() == Some(i8042::Event::CpuReset) {
                    d.power = Some(PowerEvent::Reset);
                }
                d.keyboard_line();
            }
            PortDev::Rtc => d.rtc.ports(wall_ns()).port_write(port, size, value),
            PortDev::AcpiPm => match d.acpi_pm.write(port, size, value) {
                Some(PmEvent::PowerOff) => d.power = Some(PowerEvent::PowerOff),
                Some(PmEvent::Reset) => d.power = Some(PowerEvent::Reset),
                None => {}
            },
            PortDev::PvPanic => match PvPanic.write(port, size, value) {
                Some(pvpanic::Event::Panicked) => d.power = Some(PowerEvent::Crash),
                // Its own crash kernel takes over (kdump): noted (rate-limited,
                // and not under the devices' lock), the guest runs on.
                Some(pvpanic::Event::CrashLoaded) => {
                    drop(d);
                    control::guest_log(
                        self.domid,
                        log::Level::Info,
                        format_args!("d{} ({}): its kernel panicked; the crash kernel it loaded takes over (pvpanic)", self.domid, self.name),
                    );
                }
                None => {}
            },
        }
        true
    }

    /// The devices' state in `oxen_abi::platform_state`'s encoding, into
    /// `out` (at least `ENCODED_LEN` bytes); its length. For a paused domU:
    /// what its UART wrote goes to its console first, so the state holds no
    /// output. (Its local APICs are its vCPUs' state.)
    pub fn save_state(&self, out: &mut [u8]) -> Option<usize> {
        let mut d = self.devices.lock();
        d.uart_unflushed = 0;
        self.flush_console(d);
        let d = self.devices.lock();
        let r = oxen_abi::platform_state::PlatformStateRecord {
            ioapic: d.ioapic.save(),
            uart: d.uart.save(),
            rtc: d.rtc.save(),
            i8042: d.keyboard.save(),
            acpi_pm: d.acpi_pm.save(),
            pic: d.pic_masks.map(u64::from),
        };
        drop(d);
        r.encode(out)
    }

    /// Loads a state `save_state` gave (here or on another host): every
    /// device's part is checked, on copies, before any device changes; the
    /// reason for a refusal.
    pub fn restore_state(&self, bytes: &[u8]) -> Result<(), &'static str> {
        let r = oxen_abi::platform_state::PlatformStateRecord::decode(bytes).map_err(|e| e.describe())?;
        let [Ok(mask0), Ok(mask1)] = r.pic.map(u8::try_from) else { return Err("PIC: a mask wider than a byte") };
        let mut d = self.devices.lock();
        let (mut ioapic, mut uart, mut rtc, mut keyboard, mut acpi_pm) =
            (d.ioapic.clone(), d.uart.clone(), d.rtc.clone(), d.keyboard.clone(), d.acpi_pm.clone());
        ioapic.restore(&r.ioapic)?;
        uart.restore(&r.uart)?;
        rtc.restore(&r.rtc)?;
        keyboard.restore(&r.i8042)?;
        acpi_pm.restore(&r.acpi_pm)?;
        // The UART's line as the IOAPIC last saw it: `update_lines` then
        // acts on a change from there.
        d.uart_irq = ioapic.save()[3] & (1 << COM1_IRQ) != 0;
        (d.ioapic, d.uart, d.rtc, d.keyboard, d.acpi_pm) = (ioapic, uart, rtc, keyboard, acpi_pm);
        d.pic_masks = [mask0, mask1];
        d.uart_unflushed = 0;
        d.power = None;
        Ok(())
    }

    /// Sends what the UART holds to the console (a domU's partial line, as
    /// its prompt, at the end of a run).
    pub fn flush_pending_console(&self) {
        let mut d = self.devices.lock();
        if d.uart_unflushed > 0 {
            d.uart_unflushed = 0;
            self.flush_console(d);
        }
    }

    /// Room in the UART's receive FIFO, while a driver receives (else 0: a
    /// guest that reads its console with CONSOLE_READ keeps its input).
    pub fn uart_rx_space(&self) -> usize {
        let d = self.devices.lock();
        if d.uart.receiving() {
            d.uart.rx_space()
        } else {
            0
        }
    }

    /// Console input into the UART (the IRQ follows at the next service).
    pub fn push_uart_input(&self, bytes: &[u8]) {
        self.devices.lock().uart.push_input(bytes);
    }

    /// What a device asked of the machine since the last look.
    pub fn take_power_event(&self) -> Option<PowerEvent> {
        self.devices.lock().power.take()
    }

    /// Presses Ctrl-Alt-Del on the domain's keyboard; false if its driver is
    /// not listening (yet).
    pub fn ctrl_alt_del(&self) -> bool {
        let mut d = self.devices.lock();
        let sent = d.keyboard.ctrl_alt_del();
        d.keyboard_line();
        sent
    }

    /// What the domain wrote to its UART goes to its console: dom0's straight
    /// to the machine's serial line tagged `(d0)` (under the lock, so lines
    /// of two vCPUs keep their order) and its ring; a domU's into its ring
    /// and its rate-limited echo (`control`), after the lock is let go.
    pub fn flush_console(&self, mut d: MutexGuard<'_, Devices>) {
        let out: Vec<u8> = d.uart.take_output().collect();
        if out.is_empty() {
            return;
        }
        match self.role {
            Role::Dom0 => {
                crate::console::write_guest("(oxen) (d0) ", out.iter().copied());
                if let Some(dom) = control::DOMAINS.lock().get_mut(self.domid) {
                    dom.res.console.write(&out);
                }
            }
            Role::DomU => {
                // Written to the ring outside the devices' lock (the domain
                // table's is never held with a device's), but in the order
                // the bytes were taken: two vCPUs flushing at once once put a
                // banner's "Oxen " after its "domU: Linux". A ticket taken
                // under the lock says when it is this flush's turn; the one
                // before is on another CPU, between here and its store below.
                let ticket = self.console_next.fetch_add(1, Ordering::Relaxed);
                drop(d);
                while self.console_turn.load(Ordering::Acquire) != ticket {
                    core::hint::spin_loop();
                }
                use crate::hypercall::Services;
                control::Hv.console_write(self.domid, &out);
                self.console_turn.store(ticket + 1, Ordering::Release);
            }
        }
    }

    /// Completes an access by vCPU `vcpu` to a device on the MMIO bus:
    /// calls `access` with the device, its base and the domain's memory.
    /// False if nothing claims `gpa`.
    pub fn mmio(&self, vcpu: usize, gpa: GuestPhysAddr, now: u64, access: crate::exit::MmioAccess<'_>) -> bool {
        let Some((base, dev)) = self.mmio.find(gpa.as_u64()) else {
            return self.ioreq_mmio(vcpu, gpa, now, access);
        };
        let base = GuestPhysAddr::new(base);
        match dev {
            MmioDev::Lapic => access(&self.gm, base, &mut self.apics.lock().lapic(vcpu).mmio(now)),
            MmioDev::IoApic => {
                let mut d = self.devices.lock();
                access(&self.gm, base, &mut d.ioapic);
                d.sync_routes();
            }
        }
        true
    }

    /// An MMIO access in a range of the I/O server: the emulator decodes it
    /// as for any device, the device being the request to dom0.
    fn ioreq_mmio(&self, vcpu: usize, gpa: GuestPhysAddr, now: u64, access: crate::exit::MmioAccess<'_>) -> bool {
        let server = self.ioreq.as_ref().filter(|s| s.claims(oxen_abi::ioreq::KIND_MMIO, gpa.as_u64()));
        let Some(server) = server else { return self.absent_device(gpa, access) };
        // An InterruptACK answered by the server sets its device's line
        // (GSI `DEVICE_GSI_FIRST + device`), under the server's lock; the
        // devices' lock is only ever taken inside it, never the other way.
        let mut line = |device: u8, level: bool| {
            let pin = oxen_abi::DEVICE_GSI_FIRST as u8 + device;
            self.devices.lock().ioapic.set_irq(pin, level);
        };
        // Offsets from 0: the device sees guest-physical addresses.
        let mut device = ioreq::Forward::new(server, vcpu, now, &mut line);
        access(&self.gm, GuestPhysAddr::new(0), &mut device);
        if device.notify {
            post_dom0_events(oxen_abi::event::IOREQ);
        }
        true
    }
}

impl Platform {
    /// A domU's access to its device window (`domain::devices`) that no
    /// device model serves — a device declared with none (`oxl create
    /// --declare-devices`), or not declared at all — completes as on a machine
    /// with nothing at that address: reads all ones, writes dropped. Its
    /// drivers then find no device (virtio_mmio: "Wrong magic value"), and the
    /// domain runs on. False outside the window: memory it does not have.
    fn absent_device(&self, gpa: GuestPhysAddr, access: crate::exit::MmioAccess<'_>) -> bool {
        use oxen_abi::{DEVICE_STRIDE, DEVICE_WINDOW, MAX_DEVICES};
        let window = DEVICE_WINDOW..DEVICE_WINDOW + u64::from(MAX_DEVICES) * DEVICE_STRIDE;
        if self.role != Role::DomU || !window.contains(&gpa.as_u64()) {
            return false;
        }
        access(&self.gm, GuestPhysAddr::new(0), &mut Absent);
        true
    }
}

/// What answers where no device is: all ones, writes dropped.
struct Absent;

impl crate::devices::MmioDevice for Absent {
    fn mmio_read(&mut self, _offset: u64, _size: u8) -> u64 {
        u64::MAX
    }
    fn mmio_write(&mut self, _offset: u64, _size: u8, _value: u64) {}
}

/// The ports a domain's platform emulates.
fn fixed_ports(role: Role) -> impl Iterator<Item = (u64, u64, PortDev)> {
    let all = [
        (u64::from(COM1_BASE), 8, PortDev::Uart),
        (u64::from(PIC_MASKS[0]), 1, PortDev::PicMask(0)),
        (u64::from(PIC_MASKS[1]), 1, PortDev::PicMask(1)),
    ];
    let domu = [
        (u64::from(PCI_CONFIG), 8, PortDev::PciConfig),
        (u64::from(i8042::DATA_PORT), 1, PortDev::Keyboard),
        (u64::from(i8042::COMMAND_PORT), 1, PortDev::Keyboard),
        (0x70, 2, PortDev::Rtc),
        (u64::from(acpi_pm::PORTS.sleep_control), u64::from(acpi_pm::PORT_COUNT), PortDev::AcpiPm),
        (u64::from(pvpanic::PORT), 1, PortDev::PvPanic),
    ];
    // dom0 reaches the real configuration space, keyboard controller and clock.
    all.into_iter().chain(domu.into_iter().filter(move |_| role == Role::DomU))
}

/// The pages a domain's platform emulates.
const FIXED_MMIO: [(u64, u64, MmioDev); 2] = [(LAPIC_PAGE, PAGE_SIZE, MmioDev::Lapic), (IOAPIC_PAGE, PAGE_SIZE, MmioDev::IoApic)];

/// Whether `[start, start + len)` of ports (`pio`) or guest-physical
/// addresses touches a device a domU's platform emulates (`IOREQ_RANGE`
/// refuses those).
pub fn emulated_for_domu(pio: bool, start: u64, len: u64) -> bool {
    let end = start.saturating_add(len);
    let hit = |(s, l): (u64, u64)| start < s + l && s < end;
    if pio {
        fixed_ports(Role::DomU).any(|(s, l, _)| hit((s, l)))
    } else {
        FIXED_MMIO.iter().any(|&(s, l, _)| hit((s, l)))
    }
}
