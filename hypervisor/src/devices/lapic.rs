//! Virtual local APIC: one per vCPU, in xAPIC (MMIO page at 0xFEE0_0000) or
//! x2APIC (MSRs 0x800–0x8FF) mode, after Intel SDM Vol. 3A chapter 12.
//!
//! The model is a pure state machine. It owns the interrupt state of one vCPU
//! (IRR/ISR/TMR, TPR/PPR), the APIC timer and the ICR; everything that crosses
//! vCPUs or touches hardware is the caller's:
//!
//! - **Delivery into the guest.** The caller asks [`VirtualLapic::pending`]
//!   whenever the vCPU can take an interrupt, injects that vector and calls
//!   [`VirtualLapic::ack`], which moves it from IRR to ISR.
//! - **Outgoing messages** are queued as [`LapicEvent`]s and drained with
//!   [`VirtualLapic::pop_event`] after every exit that touched the APIC:
//!   [`LapicEvent::Ipi`] for an ICR or SELF IPI write (routed by the caller to
//!   dom0's own vCPUs with [`VirtualLapic::matches`] and
//!   [`VirtualLapic::receive_ipi`] — self-IPIs included, so there is one path),
//!   and [`LapicEvent::LevelEoi`] when an EOI retires a level-triggered vector
//!   (the caller EOIs its IOAPIC). A queue rather than a return value because
//!   the [`MmioDevice`] trait's write has nowhere to return it.
//! - **Time.** Nothing here reads a clock. Calls that need time take `now_ns`;
//!   the caller programs its own timer for [`VirtualLapic::timer_deadline`] and
//!   calls [`VirtualLapic::tick`] when it fires. For TSC-deadline mode the
//!   contract is that `now_ns` is the guest TSC scaled by the TSC frequency
//!   given to [`LapicClock`] (`now_ns = guest_tsc * 10^9 / tsc_hz`), so a
//!   deadline in TSC ticks converts to the same time axis.
//!
//! Stored but without behaviour (SDM §12.5.1): LVT LINT0, LINT1, perf-monitor,
//! thermal and CMCI entries are read/write with their architectural bits and
//! masked on software disable, but this model raises nothing through them; a
//! caller wiring a virtual PIC or an NMI source reads them with
//! [`VirtualLapic::lvt`]. The error LVT is live (ESR errors raise it).
//!
//! Not modelled: EOI-broadcast suppression (VERSION bit 24 clear), directed
//! EOI, lowest-priority arbitration across vCPUs (the caller picks a target;
//! [`VirtualLapic::apr`] gives it the arbitration priority), remote read, the
//! spurious-interrupt race, APIC base relocation (refused with #GP).

use super::MmioDevice;
use oxen_abi::vcpu_snapshot::LAPIC_WORDS;

/// Register offsets in the xAPIC page (SDM Vol. 3A §12.4.1, Table 12-1
/// "Local APIC Register Address Map"). The x2APIC MSR of a register is
/// `X2APIC_MSR_BASE + offset / 16` (§12.12.1.2, Table 12-6).
pub mod reg {
    pub const ID: u32 = 0x020;
    pub const VERSION: u32 = 0x030;
    pub const TPR: u32 = 0x080;
    /// Arbitration priority; xAPIC only.
    pub const APR: u32 = 0x090;
    pub const PPR: u32 = 0x0a0;
    pub const EOI: u32 = 0x0b0;
    /// Remote read; reserved on xAPIC-generation parts and in x2APIC mode.
    pub const RRD: u32 = 0x0c0;
    pub const LDR: u32 = 0x0d0;
    /// Destination format; xAPIC only.
    pub const DFR: u32 = 0x0e0;
    pub const SVR: u32 = 0x0f0;
    /// First of eight 32-bit words each for ISR, TMR and IRR.
    pub const ISR: u32 = 0x100;
    pub const TMR: u32 = 0x180;
    pub const IRR: u32 = 0x200;
    pub const ESR: u32 = 0x280;
    pub const LVT_CMCI: u32 = 0x2f0;
    pub const ICR_LOW: u32 = 0x300;
    /// ICR destination; xAPIC only (x2APIC has one 64-bit ICR MSR).
    pub const ICR_HIGH: u32 = 0x310;
    pub const LVT_TIMER: u32 = 0x320;
    pub const LVT_THERMAL: u32 = 0x330;
    pub const LVT_PERF: u32 = 0x340;
    pub const LVT_LINT0: u32 = 0x350;
    pub const LVT_LINT1: u32 = 0x360;
    pub const LVT_ERROR: u32 = 0x370;
    pub const TIMER_INITIAL: u32 = 0x380;
    pub const TIMER_CURRENT: u32 = 0x390;
    pub const TIMER_DIVIDE: u32 = 0x3e0;
    /// SELF IPI; x2APIC only (§12.12.11).
    pub const SELF_IPI: u32 = 0x3f0;
}

/// MSRs (SDM Vol. 4 Table 2-2; Vol. 3A §12.4.4, §12.5.4.1, §12.12.1.2).
pub mod msr {
    pub const IA32_APIC_BASE: u32 = 0x1b;
    pub const IA32_TSC_DEADLINE: u32 = 0x6e0;
    /// x2APIC register `offset` is MSR `X2APIC_MSR_BASE + offset / 16`.
    pub const X2APIC_MSR_BASE: u32 = 0x800;
    pub const X2APIC_MSR_LAST: u32 = 0x8ff;
    /// The 64-bit x2APIC ICR (xAPIC 0x300 and 0x310 in one).
    pub const X2APIC_ICR: u32 = 0x830;
    pub const X2APIC_SELF_IPI: u32 = 0x83f;
}

/// IA32_APIC_BASE bits (SDM Vol. 3A §12.4.4, Figure 12-5; §12.12.1).
pub mod base {
    /// This processor is the bootstrap processor.
    pub const BSP: u64 = 1 << 8;
    /// x2APIC mode (EXTD).
    pub const EXTD: u64 = 1 << 10;
    /// APIC global enable (EN).
    pub const ENABLE: u64 = 1 << 11;
    /// The architectural default base, and the only one this model accepts.
    pub const DEFAULT_ADDRESS: u64 = 0xfee0_0000;
    /// Base-address field (bits 12 up to MAXPHYADDR).
    pub const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;
}

/// VERSION register value: version 0x14 (integrated xAPIC, §12.4.8), max LVT
/// entry 6 (CMCI, timer, thermal, perf, LINT0, LINT1, error) in bits 16–23,
/// bit 24 (EOI-broadcast suppression) clear.
pub const VERSION_VALUE: u32 = 0x14 | (6 << 16);

/// Interrupt vector field of the ICR, LVT entries, SVR and SELF IPI.
const VECTOR_MASK: u32 = 0xff;
/// Vectors 0–15 are reserved to exceptions; an APIC refuses them (§12.5.2).
const FIRST_LEGAL_VECTOR: u8 = 16;

/// SVR bits (§12.9, Figure 12-23).
pub mod svr {
    /// APIC software enable.
    pub const ENABLE: u32 = 1 << 8;
    /// Focus-processor checking (a no-op here: no lowest-priority focus).
    pub const FOCUS_DISABLE: u32 = 1 << 9;
    /// Bits this model keeps: vector, enable, focus. Bit 12 (EOI-broadcast
    /// suppression) is reserved because VERSION bit 24 is clear.
    pub const WRITABLE: u32 = super::VECTOR_MASK | ENABLE | FOCUS_DISABLE;
    /// Power-up value: vector 0xFF, software-disabled (§12.4.7.1).
    pub const RESET: u32 = 0xff;
}

/// ESR bits (§12.5.3, Figure 12-9).
pub mod esr {
    pub const SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
    pub const RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
    /// xAPIC only: access to a reserved register offset.
    pub const ILLEGAL_REGISTER_ADDRESS: u32 = 1 << 7;
}

/// LVT entry bits (§12.5.1, Figure 12-8).
pub mod lvt {
    pub const VECTOR: u32 = super::VECTOR_MASK;
    /// Delivery mode (Fixed, SMI, NMI, INIT, ExtINT); not on timer and error.
    pub const DELIVERY_MODE: u32 = 0x7 << 8;
    /// Delivery status: read-only, always idle here.
    pub const DELIVERY_STATUS: u32 = 1 << 12;
    /// LINT0/1 input polarity.
    pub const POLARITY: u32 = 1 << 13;
    /// LINT0/1 remote IRR: read-only, never set (no level LINT delivery).
    pub const REMOTE_IRR: u32 = 1 << 14;
    /// LINT0/1 trigger mode.
    pub const TRIGGER_LEVEL: u32 = 1 << 15;
    pub const MASKED: u32 = 1 << 16;
    /// Timer mode (§12.5.4, Table 12-2): 00 one-shot, 01 periodic,
    /// 10 TSC-deadline, 11 reserved.
    pub const TIMER_MODE: u32 = 0x3 << 17;
    pub const TIMER_PERIODIC: u32 = 1 << 17;
    pub const TIMER_TSC_DEADLINE: u32 = 2 << 17;
}

/// Divide configuration register (§12.5.4, Figure 12-10): bits 0, 1 and 3.
const DIVIDE_MASK: u32 = 0b1011;

/// ICR bits (§12.6.1, Figure 12-12; x2APIC §12.12.9, Figure 12-28).
pub mod icr {
    pub const DELIVERY_MODE_SHIFT: u32 = 8;
    pub const DELIVERY_MODE: u32 = 0x7 << DELIVERY_MODE_SHIFT;
    pub const DEST_LOGICAL: u32 = 1 << 11;
    /// Delivery status: read-only; delivery is instant here, so always idle.
    pub const DELIVERY_STATUS: u32 = 1 << 12;
    pub const LEVEL_ASSERT: u32 = 1 << 14;
    pub const TRIGGER_LEVEL: u32 = 1 << 15;
    pub const SHORTHAND_SHIFT: u32 = 18;
    pub const SHORTHAND: u32 = 0x3 << SHORTHAND_SHIFT;
    /// Bits an xAPIC ICR low keeps (the rest are reserved or read-only).
    pub const LOW_STORED: u32 =
        super::VECTOR_MASK | DELIVERY_MODE | DEST_LOGICAL | LEVEL_ASSERT | TRIGGER_LEVEL | SHORTHAND;
    /// x2APIC ICR bits whose setting raises #GP: 13, 16–17, 20–31. Bit 12
    /// (delivery status) is reserved too but ignored, as Intel parts do.
    pub const X2APIC_RESERVED: u64 = (1 << 13) | (0x3 << 16) | (0xfff << 20);
    /// xAPIC ICR high: destination in bits 24–31.
    pub const XAPIC_DEST_SHIFT: u32 = 24;
    pub const XAPIC_HIGH_STORED: u32 = 0xff << XAPIC_DEST_SHIFT;
}

/// Destination format models in DFR bits 28–31 (§12.6.2.2).
const DFR_MODEL_MASK: u32 = 0xf000_0000;
const DFR_FLAT: u32 = 0xf000_0000;
/// DFR bits 0–27 are reserved and read as ones.
const DFR_RESERVED_ONES: u32 = 0x0fff_ffff;
/// The xAPIC logical APIC ID lives in LDR bits 24–31 (§12.6.2.2).
const XAPIC_LDR_MASK: u32 = 0xff00_0000;
/// Physical-mode broadcast destinations (§12.6.2.3, §12.12.10).
const XAPIC_BROADCAST: u32 = 0xff;
const X2APIC_BROADCAST: u32 = 0xffff_ffff;

/// The local vector table entries, in the order of `VirtualLapic::lvt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lvt {
    Cmci = 0,
    Timer,
    Thermal,
    Perf,
    Lint0,
    Lint1,
    Error,
}

impl Lvt {
    const COUNT: usize = 7;
    const ALL: [Lvt; Lvt::COUNT] = [Lvt::Cmci, Lvt::Timer, Lvt::Thermal, Lvt::Perf, Lvt::Lint0, Lvt::Lint1, Lvt::Error];

    fn from_offset(offset: u32) -> Option<Self> {
        Some(match offset {
            reg::LVT_CMCI => Lvt::Cmci,
            reg::LVT_TIMER => Lvt::Timer,
            reg::LVT_THERMAL => Lvt::Thermal,
            reg::LVT_PERF => Lvt::Perf,
            reg::LVT_LINT0 => Lvt::Lint0,
            reg::LVT_LINT1 => Lvt::Lint1,
            reg::LVT_ERROR => Lvt::Error,
            _ => return None,
        })
    }

    /// Bits software can set and read back (§12.5.1, Figure 12-8).
    fn writable(self) -> u32 {
        use lvt::*;
        match self {
            Lvt::Timer => VECTOR | MASKED | TIMER_MODE,
            Lvt::Cmci | Lvt::Thermal | Lvt::Perf => VECTOR | DELIVERY_MODE | MASKED,
            Lvt::Lint0 | Lvt::Lint1 => VECTOR | DELIVERY_MODE | POLARITY | TRIGGER_LEVEL | MASKED,
            Lvt::Error => VECTOR | MASKED,
        }
    }

    /// Bits that exist but are read-only: writing them is not an error
    /// (a read-modify-write carries them), they are just not stored.
    fn read_only(self) -> u32 {
        match self {
            Lvt::Lint0 | Lvt::Lint1 => lvt::DELIVERY_STATUS | lvt::REMOTE_IRR,
            _ => lvt::DELIVERY_STATUS,
        }
    }
}

/// A register, decoded from an xAPIC offset or an x2APIC MSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reg {
    Id,
    Version,
    Tpr,
    Apr,
    Ppr,
    Eoi,
    Ldr,
    Dfr,
    Svr,
    Isr(usize),
    Tmr(usize),
    Irr(usize),
    Esr,
    Lvt(Lvt),
    IcrLow,
    IcrHigh,
    TimerInitial,
    TimerCurrent,
    TimerDivide,
    SelfIpi,
}

impl Reg {
    /// Decodes a 16-byte-aligned register offset. RRD and the holes in the
    /// map are reserved (None); availability per mode is checked by callers.
    fn decode(offset: u32) -> Option<Self> {
        let word = ((offset >> 4) & 7) as usize;
        Some(match offset {
            reg::ID => Reg::Id,
            reg::VERSION => Reg::Version,
            reg::TPR => Reg::Tpr,
            reg::APR => Reg::Apr,
            reg::PPR => Reg::Ppr,
            reg::EOI => Reg::Eoi,
            reg::LDR => Reg::Ldr,
            reg::DFR => Reg::Dfr,
            reg::SVR => Reg::Svr,
            0x100..=0x170 => Reg::Isr(word),
            0x180..=0x1f0 => Reg::Tmr(word),
            0x200..=0x270 => Reg::Irr(word),
            reg::ESR => Reg::Esr,
            reg::ICR_LOW => Reg::IcrLow,
            reg::ICR_HIGH => Reg::IcrHigh,
            reg::TIMER_INITIAL => Reg::TimerInitial,
            reg::TIMER_CURRENT => Reg::TimerCurrent,
            reg::TIMER_DIVIDE => Reg::TimerDivide,
            reg::SELF_IPI => Reg::SelfIpi,
            _ => Reg::Lvt(Lvt::from_offset(offset)?),
        })
    }

    /// Present in xAPIC mode (Table 12-1)? SELF IPI is x2APIC-only.
    fn in_xapic(self) -> bool {
        self != Reg::SelfIpi
    }

    /// Present in x2APIC mode (Table 12-6)? APR, DFR and ICR high are gone.
    fn in_x2apic(self) -> bool {
        !matches!(self, Reg::Apr | Reg::Dfr | Reg::IcrHigh)
    }

    /// Readable? EOI and SELF IPI are write-only (RDMSR #GP in x2APIC mode).
    fn readable(self) -> bool {
        !matches!(self, Reg::Eoi | Reg::SelfIpi)
    }

    /// Writable? In x2APIC mode a WRMSR to a read-only register raises #GP
    /// (Table 12-6); in xAPIC mode the write is dropped.
    fn writable_in_x2apic(self) -> bool {
        !matches!(
            self,
            Reg::Id | Reg::Version | Reg::Ppr | Reg::Ldr | Reg::Isr(_) | Reg::Tmr(_) | Reg::Irr(_) | Reg::TimerCurrent
        )
    }

    /// Bits a WRMSR may set in x2APIC mode: any other set bit is reserved and
    /// raises #GP (§12.12.1.3 "Reserved Bit Checking"). ICR is checked apart.
    fn x2apic_allowed_bits(self) -> u32 {
        match self {
            Reg::Tpr | Reg::SelfIpi => VECTOR_MASK,
            Reg::Svr => svr::WRITABLE,
            // WRMSR of a non-zero value to EOI or ESR raises #GP (Table 12-6).
            Reg::Eoi | Reg::Esr => 0,
            Reg::Lvt(l) => l.writable() | l.read_only(),
            Reg::TimerInitial => u32::MAX,
            Reg::TimerDivide => DIVIDE_MASK,
            _ => 0,
        }
    }
}

/// APIC operating mode, from IA32_APIC_BASE EN and EXTD (§12.12.5, Table 12-5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicMode {
    /// EN = 0: the APIC is off; the MMIO page and x2APIC MSRs are gone.
    Disabled,
    XApic,
    X2Apic,
}

/// The error of a refused MSR access: the caller injects #GP(0) into the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GeneralProtection;

/// The time base the model converts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LapicClock {
    /// APIC timer input frequency (the "bus clock" before the divider).
    pub bus_hz: u64,
    /// Guest TSC frequency, for TSC-deadline mode.
    pub tsc_hz: u64,
}

/// How an xAPIC interprets logical destinations (DFR model, §12.6.2.2).
/// x2APIC logical mode is always cluster-based with a 32-bit LDR (§12.12.10.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogicalMode {
    Flat,
    Cluster,
}

/// Who an IPI is for (§12.6.2, §12.12.10). Physical broadcast (ID 0xFF, or
/// 0xFFFF_FFFF in x2APIC mode) and x2APIC logical broadcast decode to
/// `AllIncludingSelf`, which is what they mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    /// One APIC ID (8-bit in xAPIC mode, 32-bit in x2APIC mode).
    Physical(u32),
    /// A logical destination: xAPIC MDA in bits 0–7 (flat bitmap or
    /// cluster:bitmap), or an x2APIC cluster (bits 16–31) and bitmap (0–15).
    Logical(u32),
    /// Shorthand "self".
    SelfOnly,
    AllIncludingSelf,
    AllExcludingSelf,
}

impl Destination {
    /// Decodes a destination field without shorthand: from the ICR, or from
    /// an IOAPIC redirection entry or MSI (8-bit, `x2apic_format` false).
    /// Physical broadcast (0xFF; 0xFFFF_FFFF in x2APIC format) and x2APIC
    /// logical broadcast become `AllIncludingSelf` (§12.6.2.3, §12.12.10).
    pub fn from_message(raw: u32, logical: bool, x2apic_format: bool) -> Self {
        match (logical, x2apic_format, raw) {
            (false, false, XAPIC_BROADCAST) | (_, true, X2APIC_BROADCAST) => Destination::AllIncludingSelf,
            (false, _, id) => Destination::Physical(id),
            (true, _, mda) => Destination::Logical(mda),
        }
    }
}

/// ICR delivery modes (§12.6.1). INIT with trigger = level and level =
/// de-assert is the INIT level de-assert message, kept apart because
/// receivers of the xAPIC generation ignore it (§12.6.1, Table 12-3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    InitDeassert,
    StartUp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TriggerMode {
    Edge,
    Level,
}

/// An interprocessor interrupt for the caller to route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipi {
    /// APIC ID of the sender (for the self shorthands).
    pub source: u32,
    pub dest: Destination,
    /// Vector; for StartUp, the start page (execution begins at vector << 12).
    pub vector: u8,
    pub mode: DeliveryMode,
    /// Level bit: true = assert.
    pub level: bool,
    /// Trigger bit as written (xAPIC receivers treat level IPIs as edge).
    pub trigger: TriggerMode,
}

/// What a receiving vCPU must do with an IPI after [`VirtualLapic::receive_ipi`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpiAction {
    /// Nothing (dropped, or a fixed interrupt the model already put in IRR and
    /// the caller will see through `pending`).
    None,
    /// A fixed or lowest-priority interrupt was accepted into IRR.
    Interrupt,
    Nmi,
    Smi,
    /// INIT: reset the vCPU (and call `init_reset` on this APIC) and wait for SIPI.
    Init,
    /// Start-up IPI: if waiting for SIPI, start in real mode at `page << 12`.
    StartUp(u8),
}

/// Something the APIC sends out; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LapicEvent {
    Ipi(Ipi),
    /// An EOI retired this level-triggered vector: EOI it at the IOAPIC.
    LevelEoi(u8),
}

/// Outgoing events between two drains. One guest access queues at most one
/// event, so this only fills if the caller forgets to drain.
const EVENT_QUEUE_LEN: usize = 16;

#[derive(Clone, Debug)]
struct EventQueue {
    slots: [Option<LapicEvent>; EVENT_QUEUE_LEN],
    head: usize,
    len: usize,
    dropped: u64,
}

impl EventQueue {
    const fn new() -> Self {
        Self { slots: [None; EVENT_QUEUE_LEN], head: 0, len: 0, dropped: 0 }
    }

    fn push(&mut self, e: LapicEvent) {
        if self.len == EVENT_QUEUE_LEN {
            self.dropped += 1;
            return;
        }
        self.slots[(self.head + self.len) % EVENT_QUEUE_LEN] = Some(e);
        self.len += 1;
    }

    fn pop(&mut self) -> Option<LapicEvent> {
        if self.len == 0 {
            return None;
        }
        let e = self.slots[self.head].take();
        self.head = (self.head + 1) % EVENT_QUEUE_LEN;
        self.len -= 1;
        e
    }
}

const NS_PER_SEC: u128 = 1_000_000_000;

/// Periodic timer interrupts are never raised closer together than this, so
/// a guest cannot make the hypervisor's own timer fire continuously (KVM
/// clamps the same way). The current count is unaffected: only interrupts
/// are coalesced.
pub const MIN_PERIODIC_INTERRUPT_NS: u64 = 100_000;

/// A running one-shot or periodic count (§12.5.4). The count is derived from
/// time rather than stored: it was `base_count` at `base_ns` and falls by one
/// every `divisor` bus clocks; a periodic count reloads the initial count
/// after reaching zero. `fired` counts the expiries already signalled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Countdown {
    base_ns: u64,
    base_count: u32,
    fired: u64,
}

#[derive(Clone, Debug)]
struct Timer {
    clock: LapicClock,
    initial: u32,
    divide: u32,
    countdown: Option<Countdown>,
    /// IA32_TSC_DEADLINE; 0 = disarmed.
    tsc_deadline: u64,
    last_fire_ns: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerMode {
    OneShot,
    Periodic,
    TscDeadline,
}

impl TimerMode {
    /// The reserved encoding 11b behaves as one-shot here.
    fn of(lvt_timer: u32) -> Self {
        match lvt_timer & lvt::TIMER_MODE {
            lvt::TIMER_PERIODIC => TimerMode::Periodic,
            lvt::TIMER_TSC_DEADLINE => TimerMode::TscDeadline,
            _ => TimerMode::OneShot,
        }
    }
}

impl Timer {
    fn new(clock: LapicClock) -> Self {
        // A zero frequency is a configuration bug, not guest input: keep the
        // arithmetic defined rather than divide by zero.
        let clock = LapicClock { bus_hz: clock.bus_hz.max(1), tsc_hz: clock.tsc_hz.max(1) };
        Self { clock, initial: 0, divide: 0, countdown: None, tsc_deadline: 0, last_fire_ns: None }
    }

    fn reset(&mut self) {
        *self = Timer::new(self.clock);
    }

    /// Divide value from the divide configuration (Figure 12-10): bits 3,1:0
    /// = 000 → 2, 001 → 4, … 110 → 128, 111 → 1.
    fn divisor(&self) -> u128 {
        let code = (self.divide & 0b11) | ((self.divide >> 1) & 0b100);
        1 << ((code + 1) & 0b111)
    }

    /// Whole counter decrements between two instants.
    fn ticks(&self, from_ns: u64, to_ns: u64) -> u128 {
        let dt = u128::from(to_ns.saturating_sub(from_ns));
        dt * u128::from(self.clock.bus_hz) / (NS_PER_SEC * self.divisor())
    }

    /// Time for `ticks` decrements, rounded up so that the count has really
    /// reached its target at the returned instant.
    fn ns_for(&self, ticks: u128) -> u64 {
        let bus = u128::from(self.clock.bus_hz);
        let num = ticks.saturating_mul(NS_PER_SEC * self.divisor());
        u64::try_from(num.saturating_add(bus - 1) / bus).unwrap_or(u64::MAX)
    }

    fn current(&self, now_ns: u64, mode: TimerMode) -> u32 {
        let Some(c) = self.countdown else { return 0 };
        let e = self.ticks(c.base_ns, now_ns);
        let base = u128::from(c.base_count);
        if e < base {
            (base - e) as u32
        } else if mode == TimerMode::Periodic && self.initial != 0 {
            let initial = u128::from(self.initial);
            (initial - (e - base) % initial) as u32
        } else {
            0
        }
    }

    /// Instant of the next unsignalled expiry, ignoring the periodic clamp.
    fn next_expiry(&self, mode: TimerMode) -> Option<u64> {
        if mode == TimerMode::TscDeadline {
            if self.tsc_deadline == 0 {
                return None;
            }
            let ns = u128::from(self.tsc_deadline).saturating_mul(NS_PER_SEC);
            let hz = u128::from(self.clock.tsc_hz);
            return Some(u64::try_from(ns.saturating_add(hz - 1) / hz).unwrap_or(u64::MAX));
        }
        let c = self.countdown?;
        let ticks =
            u128::from(c.base_count).saturating_add(u128::from(c.fired).saturating_mul(u128::from(self.initial)));
        Some(c.base_ns.saturating_add(self.ns_for(ticks)))
    }

    /// `next_expiry` with periodic interrupts spaced by the minimum period.
    fn deadline(&self, mode: TimerMode) -> Option<u64> {
        let next = self.next_expiry(mode)?;
        match (mode, self.last_fire_ns) {
            (TimerMode::Periodic, Some(last)) => Some(next.max(last.saturating_add(MIN_PERIODIC_INTERRUPT_NS))),
            _ => Some(next),
        }
    }

    /// Retires expiries due by `now_ns`; true if the timer fired (several
    /// missed periods coalesce into one interrupt, as IRR is one bit).
    fn poll(&mut self, now_ns: u64, mode: TimerMode) -> bool {
        match self.deadline(mode) {
            Some(d) if d <= now_ns => {}
            _ => return false,
        }
        self.last_fire_ns = Some(now_ns);
        match mode {
            // §12.5.4.1: on expiry the timer disarms and the MSR reads 0.
            TimerMode::TscDeadline => self.tsc_deadline = 0,
            TimerMode::OneShot => self.countdown = None,
            TimerMode::Periodic => {
                if let Some(mut c) = self.countdown {
                    let e = self.ticks(c.base_ns, now_ns);
                    let extra = e.saturating_sub(u128::from(c.base_count)) / u128::from(self.initial.max(1));
                    c.fired = u64::try_from(1 + extra).unwrap_or(u64::MAX);
                    self.countdown = Some(c);
                }
            }
        }
        true
    }

    /// Restarts counting from the current count: after a divide change
    /// (the count continues at the new rate) or a one-shot/periodic switch.
    fn rebase(&mut self, now_ns: u64, mode: TimerMode) {
        if self.countdown.is_none() {
            return;
        }
        let count = self.current(now_ns, mode);
        self.countdown = (count != 0).then_some(Countdown { base_ns: now_ns, base_count: count, fired: 0 });
    }

    fn start(&mut self, initial: u32, now_ns: u64) {
        self.initial = initial;
        self.countdown = (initial != 0).then_some(Countdown { base_ns: now_ns, base_count: initial, fired: 0 });
    }

    fn disarm(&mut self) {
        self.initial = 0;
        self.countdown = None;
        self.tsc_deadline = 0;
    }
}

/// 256 one-bit-per-vector flags as eight 32-bit words, the register layout.
type VectorBits = [u32; 8];

fn test_bit(bits: &VectorBits, v: u8) -> bool {
    bits[usize::from(v >> 5)] & (1 << (v & 31)) != 0
}

fn set_bit(bits: &mut VectorBits, v: u8, on: bool) {
    let w = &mut bits[usize::from(v >> 5)];
    if on {
        *w |= 1 << (v & 31);
    } else {
        *w &= !(1 << (v & 31));
    }
}

fn highest(bits: &VectorBits) -> Option<u8> {
    (0..8).rev().find(|&i| bits[i] != 0).map(|i| (i as u8) * 32 + (31 - bits[i].leading_zeros() as u8))
}

/// Priority class of a vector or priority register: bits 7–4.
fn class(v: u8) -> u8 {
    v >> 4
}

/// One vCPU's local APIC.
#[derive(Clone, Debug)]
pub struct VirtualLapic {
    /// Initial APIC ID, fixed by the hypervisor (writes to ID are dropped so
    /// routing by ID stays unambiguous).
    id: u32,
    bsp: bool,
    mode: ApicMode,
    tpr: u8,
    /// xAPIC LDR (bits 24–31); x2APIC mode derives the LDR from the ID.
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: VectorBits,
    tmr: VectorBits,
    irr: VectorBits,
    /// ESR as last latched by a write, and errors seen since (§12.5.3).
    esr: u32,
    esr_pending: u32,
    icr_low: u32,
    /// xAPIC: destination in bits 24–31; x2APIC: the 32-bit destination.
    icr_high: u32,
    lvt: [u32; Lvt::COUNT],
    timer: Timer,
    events: EventQueue,
    /// The timer's last few steps, oldest first once full (`timer_history`).
    history: TimerHistory,
}

/// One step of the timer's life, for a report on a vCPU that sleeps through
/// its timer: what the guest armed, what fired, what the caller took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerStep {
    /// TMICT written (one-shot or periodic count) at `at_ns`.
    Count { initial: u32, at_ns: u64 },
    /// IA32_TSC_DEADLINE written at `at_ns`.
    Deadline { tsc: u64, at_ns: u64 },
    /// The timer LVT written.
    Lvt { value: u32 },
    /// An expiry retired at `at_ns`; `raised`: its vector went to IRR.
    Fired { at_ns: u64, raised: bool },
    /// The timer's vector taken for injection (IRR to ISR).
    Taken,
    /// The timer's vector retired by an EOI.
    Ended,
}

const HISTORY: usize = 8;

#[derive(Clone, Copy, Debug)]
struct TimerHistory {
    steps: [Option<TimerStep>; HISTORY],
    next: usize,
}

impl TimerHistory {
    const fn new() -> Self {
        Self { steps: [None; HISTORY], next: 0 }
    }

    fn note(&mut self, step: TimerStep) {
        self.steps[self.next % HISTORY] = Some(step);
        self.next = self.next.wrapping_add(1);
    }

    fn oldest_first(&self) -> impl Iterator<Item = TimerStep> + '_ {
        (0..HISTORY).filter_map(move |i| self.steps[(self.next + i) % HISTORY])
    }
}

/// Where `VirtualLapic::save_state` puts the TSC deadline (0: none), in the
/// TSC the model counts in (the caller converts a guest's with an offset).
pub const STATE_TSC_DEADLINE: usize = 33;

impl VirtualLapic {
    /// An APIC in its power-up state (§12.4.7.1): enabled in xAPIC mode at
    /// 0xFEE0_0000, software-disabled, every LVT masked.
    pub fn new(id: u32, bsp: bool, clock: LapicClock) -> Self {
        let mut l = Self {
            id,
            bsp,
            mode: ApicMode::XApic,
            tpr: 0,
            ldr: 0,
            dfr: 0,
            svr: 0,
            isr: [0; 8],
            tmr: [0; 8],
            irr: [0; 8],
            esr: 0,
            esr_pending: 0,
            icr_low: 0,
            icr_high: 0,
            lvt: [0; Lvt::COUNT],
            timer: Timer::new(clock),
            events: EventQueue::new(),
            history: TimerHistory::new(),
        };
        l.reset_registers();
        l
    }

    /// Power-up values of everything but the ID, the mode and the base MSR
    /// (§12.4.7.1, §12.4.7.3).
    fn reset_registers(&mut self) {
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = u32::MAX;
        self.svr = svr::RESET;
        self.isr = [0; 8];
        self.tmr = [0; 8];
        self.irr = [0; 8];
        self.esr = 0;
        self.esr_pending = 0;
        self.icr_low = 0;
        self.icr_high = 0;
        self.lvt = [lvt::MASKED; Lvt::COUNT];
        self.timer.reset();
    }

    /// The APIC's response to INIT (§12.4.7.3): every register back to its
    /// power-up value except the APIC ID and IA32_APIC_BASE (so an x2APIC
    /// stays in x2APIC mode). Queued outgoing events are kept.
    pub fn init_reset(&mut self) {
        self.reset_registers();
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn mode(&self) -> ApicMode {
        self.mode
    }

    /// Globally enabled (IA32_APIC_BASE.EN)?
    pub fn hardware_enabled(&self) -> bool {
        self.mode != ApicMode::Disabled
    }

    /// Software-enabled (SVR bit 8, §12.4.3) and globally enabled?
    pub fn software_enabled(&self) -> bool {
        self.hardware_enabled() && self.svr & svr::ENABLE != 0
    }

    // ----- IA32_APIC_BASE -----

    /// IA32_APIC_BASE as the guest reads it.
    pub fn apic_base(&self) -> u64 {
        let mut v = base::DEFAULT_ADDRESS;
        if self.bsp {
            v |= base::BSP;
        }
        match self.mode {
            ApicMode::Disabled => {}
            ApicMode::XApic => v |= base::ENABLE,
            ApicMode::X2Apic => v |= base::ENABLE | base::EXTD,
        }
        v
    }

    /// WRMSR IA32_APIC_BASE. Refused for reserved bits, a base other
    /// than 0xFEE0_0000, EXTD without EN, and the transitions §12.12.5
    /// forbids (x2APIC → xAPIC, disabled → x2APIC). The BSP bit is the
    /// hypervisor's and is kept whatever is written.
    pub fn set_apic_base(&mut self, value: u64) -> Result<(), GeneralProtection> {
        let known = base::BSP | base::EXTD | base::ENABLE | base::ADDRESS_MASK;
        if value & !known != 0 || value & base::ADDRESS_MASK != base::DEFAULT_ADDRESS {
            return Err(GeneralProtection);
        }
        let new = match (value & base::ENABLE != 0, value & base::EXTD != 0) {
            (false, false) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
            (false, true) => return Err(GeneralProtection),
        };
        match (self.mode, new) {
            (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic) => Err(GeneralProtection),
            (old, new) if old == new => Ok(()),
            (_, ApicMode::Disabled) => {
                // Global disable loses the APIC state (§12.4.3).
                self.mode = new;
                self.reset_registers();
                Ok(())
            }
            (_, ApicMode::X2Apic) => {
                // xAPIC → x2APIC keeps the state; the ID widens and the LDR
                // becomes derived (§12.12.5.1). The xAPIC ICR layout does not
                // carry over.
                self.mode = new;
                self.icr_low = 0;
                self.icr_high = 0;
                Ok(())
            }
            (_, _) => {
                self.mode = new;
                Ok(())
            }
        }
    }

    // ----- MSR interface -----

    /// True for the MSRs this model answers: IA32_APIC_BASE,
    /// IA32_TSC_DEADLINE and the x2APIC range. Their errors are #GP; other
    /// MSRs are not this device's business.
    pub fn owns_msr(msr: u32) -> bool {
        matches!(msr, msr::IA32_APIC_BASE | msr::IA32_TSC_DEADLINE)
            || (msr::X2APIC_MSR_BASE..=msr::X2APIC_MSR_LAST).contains(&msr)
    }

    /// RDMSR of an MSR `owns_msr` claims.
    pub fn msr_read(&mut self, msr: u32, now_ns: u64) -> Result<u64, GeneralProtection> {
        match msr {
            msr::IA32_APIC_BASE => return Ok(self.apic_base()),
            msr::IA32_TSC_DEADLINE => return Ok(self.tsc_deadline(now_ns)),
            _ => {}
        }
        let reg = self.x2apic_reg(msr)?;
        if !reg.readable() {
            return Err(GeneralProtection);
        }
        self.catch_up(now_ns);
        if reg == Reg::IcrLow {
            return Ok(u64::from(self.icr_high) << 32 | u64::from(self.icr_low));
        }
        Ok(u64::from(self.read_reg(reg, now_ns)))
    }

    /// WRMSR of an MSR `owns_msr` claims. Refused: x2APIC registers outside x2APIC
    /// mode, read-only or reserved registers, reserved bits set (§12.12.1.3),
    /// non-zero EOI/ESR writes.
    pub fn msr_write(&mut self, msr: u32, value: u64, now_ns: u64) -> Result<(), GeneralProtection> {
        match msr {
            msr::IA32_APIC_BASE => {
                self.catch_up(now_ns);
                return self.set_apic_base(value);
            }
            msr::IA32_TSC_DEADLINE => {
                self.set_tsc_deadline(value, now_ns);
                return Ok(());
            }
            _ => {}
        }
        let reg = self.x2apic_reg(msr)?;
        if !reg.writable_in_x2apic() {
            return Err(GeneralProtection);
        }
        self.catch_up(now_ns);
        if reg == Reg::IcrLow {
            if value & icr::X2APIC_RESERVED != 0 {
                return Err(GeneralProtection);
            }
            self.icr_low = value as u32 & icr::LOW_STORED;
            self.icr_high = (value >> 32) as u32;
            self.send_ipi();
            return Ok(());
        }
        let value = u32::try_from(value).map_err(|_| GeneralProtection)?;
        if value & !reg.x2apic_allowed_bits() != 0 {
            return Err(GeneralProtection);
        }
        self.write_reg(reg, value, now_ns);
        Ok(())
    }

    /// The register behind an x2APIC MSR, if the APIC is in x2APIC mode and
    /// the register exists there.
    fn x2apic_reg(&self, msr: u32) -> Result<Reg, GeneralProtection> {
        if self.mode != ApicMode::X2Apic || !(msr::X2APIC_MSR_BASE..=msr::X2APIC_MSR_LAST).contains(&msr) {
            return Err(GeneralProtection);
        }
        let reg = Reg::decode((msr - msr::X2APIC_MSR_BASE) << 4).ok_or(GeneralProtection)?;
        if reg.in_x2apic() {
            Ok(reg)
        } else {
            Err(GeneralProtection)
        }
    }

    // ----- xAPIC MMIO interface -----

    /// The xAPIC page at `now_ns`, as an [`MmioDevice`].
    pub fn mmio(&mut self, now_ns: u64) -> LapicMmio<'_> {
        LapicMmio { lapic: self, now_ns }
    }

    /// An aligned 32-bit xAPIC register read (the path behind [`Self::mmio`],
    /// for callers that decode the access themselves; meant for xAPIC mode). Reserved offsets read 0 and
    /// latch "illegal register address" in the ESR.
    pub fn read_register(&mut self, offset: u32, now_ns: u64) -> u32 {
        self.catch_up(now_ns);
        match Reg::decode(offset & !0xf).filter(|r| r.in_xapic()) {
            Some(reg) => self.read_reg(reg, now_ns),
            None => {
                self.signal_error(esr::ILLEGAL_REGISTER_ADDRESS);
                0
            }
        }
    }

    /// An aligned 32-bit xAPIC register write. Read-only registers ignore
    /// writes; reserved bits are dropped; reserved offsets latch "illegal
    /// register address".
    pub fn write_register(&mut self, offset: u32, value: u32, now_ns: u64) {
        self.catch_up(now_ns);
        match Reg::decode(offset & !0xf).filter(|r| r.in_xapic()) {
            Some(reg) => self.write_reg(reg, value, now_ns),
            None => self.signal_error(esr::ILLEGAL_REGISTER_ADDRESS),
        }
    }

    fn mmio_read_at(&mut self, offset: u64, size: u8, now_ns: u64) -> u64 {
        let size = usize::from(size.min(8));
        if self.mode != ApicMode::XApic {
            // Not decoded when disabled or in x2APIC mode: the bus floats.
            return if size == 8 { u64::MAX } else { (1u64 << (8 * size)) - 1 };
        }
        // Each register is the first 4 bytes of a 16-byte slot (§12.4.1);
        // narrower or unaligned reads see those bytes, and bytes 4–15 read 0.
        let mut value = 0u64;
        let mut slot_value: Option<(u64, u32)> = None;
        for i in 0..size {
            let Some(addr) = offset.checked_add(i as u64).filter(|&a| a < 0x1000) else { break };
            let slot = (addr & !0xf) as u32;
            let byte_in_slot = (addr & 0xf) as u32;
            if byte_in_slot >= 4 {
                continue;
            }
            let v = match slot_value {
                Some((s, v)) if s == u64::from(slot) => v,
                _ => {
                    let v = self.read_register(slot, now_ns);
                    slot_value = Some((u64::from(slot), v));
                    v
                }
            };
            value |= u64::from((v >> (8 * byte_in_slot)) & 0xff) << (8 * i);
        }
        value
    }

    fn mmio_write_at(&mut self, offset: u64, size: u8, value: u64, now_ns: u64) {
        // Only aligned 32-bit stores reach a register (§12.4.1); anything
        // else is dropped, as KVM does.
        if self.mode != ApicMode::XApic || size != 4 || offset & 0xf != 0 || offset >= 0x1000 {
            return;
        }
        self.write_register(offset as u32, value as u32, now_ns);
    }

    // ----- Registers -----

    fn read_reg(&mut self, reg: Reg, now_ns: u64) -> u32 {
        let x2 = self.mode == ApicMode::X2Apic;
        match reg {
            Reg::Id if x2 => self.id,
            Reg::Id => (self.id & 0xff) << 24,
            Reg::Version => VERSION_VALUE,
            Reg::Tpr => u32::from(self.tpr),
            Reg::Apr => u32::from(self.apr()),
            Reg::Ppr => u32::from(self.ppr()),
            Reg::Eoi | Reg::SelfIpi => 0,
            Reg::Ldr if x2 => self.x2apic_ldr(),
            Reg::Ldr => self.ldr,
            Reg::Dfr => self.dfr,
            Reg::Svr => self.svr,
            Reg::Isr(i) => self.isr[i],
            Reg::Tmr(i) => self.tmr[i],
            Reg::Irr(i) => self.irr[i],
            Reg::Esr => self.esr,
            Reg::Lvt(l) => self.lvt[l as usize],
            Reg::IcrLow => self.icr_low,
            Reg::IcrHigh => self.icr_high,
            Reg::TimerInitial => self.timer.initial,
            // §12.5.4.1: the current count reads 0 in TSC-deadline mode.
            Reg::TimerCurrent => match self.timer_mode() {
                TimerMode::TscDeadline => 0,
                mode => self.timer.current(now_ns, mode),
            },
            Reg::TimerDivide => self.timer.divide,
        }
    }

    /// The shared write path; x2APIC-only checks happened in `msr_write`.
    fn write_reg(&mut self, reg: Reg, value: u32, now_ns: u64) {
        match reg {
            Reg::Tpr => self.tpr = value as u8,
            Reg::Eoi => {
                if let Some(v) = self.eoi() {
                    self.events.push(LapicEvent::LevelEoi(v));
                }
            }
            Reg::Ldr if self.mode == ApicMode::XApic => self.ldr = value & XAPIC_LDR_MASK,
            Reg::Dfr => self.dfr = (value & DFR_MODEL_MASK) | DFR_RESERVED_ONES,
            Reg::Svr => {
                self.svr = value & svr::WRITABLE;
                if value & svr::ENABLE == 0 {
                    // Software disable masks every LVT entry (§12.4.7.2).
                    for e in self.lvt.iter_mut() {
                        *e |= lvt::MASKED;
                    }
                }
            }
            Reg::Esr => {
                // A write latches the errors seen since the last one (§12.5.3).
                self.esr = core::mem::take(&mut self.esr_pending);
            }
            Reg::Lvt(l) => self.write_lvt(l, value, now_ns),
            Reg::IcrLow => {
                self.icr_low = value & icr::LOW_STORED;
                self.send_ipi();
            }
            Reg::IcrHigh => self.icr_high = value & icr::XAPIC_HIGH_STORED,
            Reg::TimerInitial => {
                // §12.5.4.1: ignored in TSC-deadline mode.
                if self.timer_mode() != TimerMode::TscDeadline {
                    self.timer.start(value, now_ns);
                    self.history.note(TimerStep::Count { initial: value, at_ns: now_ns });
                }
            }
            Reg::TimerDivide => {
                let mode = self.timer_mode();
                if value & DIVIDE_MASK != self.timer.divide {
                    // Keep the count reached so far; count on at the new rate.
                    self.timer.rebase(now_ns, mode);
                    self.timer.divide = value & DIVIDE_MASK;
                }
            }
            Reg::SelfIpi => {
                // §12.12.11: a fixed, edge-triggered IPI to this APIC.
                self.queue_ipi(Ipi {
                    source: self.id,
                    dest: Destination::SelfOnly,
                    vector: value as u8,
                    mode: DeliveryMode::Fixed,
                    level: true,
                    trigger: TriggerMode::Edge,
                });
            }
            // Read-only here: ID (hypervisor-assigned), VERSION, APR, PPR,
            // LDR in x2APIC mode, ISR/TMR/IRR, current count.
            Reg::Id
            | Reg::Version
            | Reg::Apr
            | Reg::Ppr
            | Reg::Ldr
            | Reg::Isr(_)
            | Reg::Tmr(_)
            | Reg::Irr(_)
            | Reg::TimerCurrent => {}
        }
    }

    fn write_lvt(&mut self, l: Lvt, value: u32, now_ns: u64) {
        let mut v = value & l.writable();
        if !self.software_enabled() {
            // Masks cannot be cleared while software-disabled (§12.4.7.2).
            v |= lvt::MASKED;
        }
        if l == Lvt::Timer {
            self.history.note(TimerStep::Lvt { value: v });
            let old = self.timer_mode();
            let new = TimerMode::of(v);
            if (old == TimerMode::TscDeadline) != (new == TimerMode::TscDeadline) {
                // Entering or leaving TSC-deadline mode disarms (§12.5.4.1).
                self.timer.disarm();
            } else if old != new {
                // One-shot <-> periodic: the count in progress carries on
                // under the new mode.
                self.timer.rebase(now_ns, old);
            }
        }
        self.lvt[l as usize] = v;
    }

    /// Any LVT entry as stored (for LINT0/LINT1 wiring and NMI sources).
    pub fn lvt(&self, which: Lvt) -> u32 {
        self.lvt[which as usize]
    }

    /// x2APIC logical ID: cluster = ID[31:4] in bits 16–31, one bit for
    /// ID[3:0] in bits 0–15 (§12.12.10.2).
    fn x2apic_ldr(&self) -> u32 {
        ((self.id >> 4) << 16) | (1 << (self.id & 0xf))
    }

    // ----- Priorities and the interrupt path -----

    /// Task priority (also CR8 << 4, §12.8.6).
    pub fn tpr(&self) -> u8 {
        self.tpr
    }

    /// Sets TPR, for CR8 writes and hardware TPR shadows.
    pub fn set_tpr(&mut self, tpr: u8) {
        self.tpr = tpr;
    }

    /// Processor priority (§12.8.3.1): TPR if its class is at least that of
    /// the highest in-service vector, else that vector's class.
    pub fn ppr(&self) -> u8 {
        let isrv = highest(&self.isr).unwrap_or(0);
        if class(self.tpr) >= class(isrv) {
            self.tpr
        } else {
            isrv & 0xf0
        }
    }

    /// The highest vector in service (ISR), if any.
    pub fn in_service(&self) -> Option<u8> {
        highest(&self.isr)
    }

    /// Arbitration priority (§12.6.2.4), for a caller choosing the target of a
    /// lowest-priority interrupt.
    pub fn apr(&self) -> u8 {
        let isrv = highest(&self.isr).unwrap_or(0);
        let irrv = highest(&self.irr).unwrap_or(0);
        if class(self.tpr) >= class(irrv) && class(self.tpr) > class(isrv) {
            self.tpr
        } else {
            class(self.tpr).max(class(isrv)).max(class(irrv)) << 4
        }
    }

    /// Accepts a fixed interrupt into IRR (§12.8.4) and records its trigger
    /// mode in TMR. Dropped (false) while the APIC is disabled; an illegal
    /// vector (0–15) is refused with a "receive illegal vector" error.
    pub fn accept(&mut self, vector: u8, level_triggered: bool) -> bool {
        if !self.software_enabled() {
            return false;
        }
        if vector < FIRST_LEGAL_VECTOR {
            self.signal_error(esr::RECEIVE_ILLEGAL_VECTOR);
            return false;
        }
        set_bit(&mut self.irr, vector, true);
        set_bit(&mut self.tmr, vector, level_triggered);
        true
    }

    /// The vector to inject next, if any: the highest IRR vector whose
    /// priority class is above PPR's (§12.8.3.1, §12.8.4).
    pub fn pending(&self) -> Option<u8> {
        if !self.software_enabled() {
            return None;
        }
        let irrv = highest(&self.irr)?;
        (class(irrv) > class(self.ppr())).then_some(irrv)
    }

    /// Called when the caller injects `pending()`'s vector: moves it from IRR
    /// to ISR, which raises PPR.
    pub fn ack(&mut self) -> Option<u8> {
        let v = self.pending()?;
        set_bit(&mut self.irr, v, false);
        set_bit(&mut self.isr, v, true);
        if v == self.lvt[Lvt::Timer as usize] as u8 {
            self.history.note(TimerStep::Taken);
        }
        Some(v)
    }

    /// End of interrupt (§12.8.5): retires the highest in-service vector and
    /// returns it if it was level-triggered (the IOAPIC needs its EOI). An
    /// EOI register write does this and queues [`LapicEvent::LevelEoi`].
    pub fn eoi(&mut self) -> Option<u8> {
        let v = highest(&self.isr)?;
        set_bit(&mut self.isr, v, false);
        if v == self.lvt[Lvt::Timer as usize] as u8 {
            self.history.note(TimerStep::Ended);
        }
        test_bit(&self.tmr, v).then_some(v)
    }

    /// Records an error (§12.5.3) and raises the error LVT if unmasked. An
    /// illegal error vector only adds "receive illegal vector", so this never
    /// recurses.
    fn signal_error(&mut self, bits: u32) {
        if self.mode == ApicMode::X2Apic {
            // There is no illegal register address in x2APIC mode: #GP instead.
            self.esr_pending |= bits & !esr::ILLEGAL_REGISTER_ADDRESS;
        } else {
            self.esr_pending |= bits;
        }
        let e = self.lvt[Lvt::Error as usize];
        if e & lvt::MASKED == 0 {
            let v = e as u8;
            if v < FIRST_LEGAL_VECTOR {
                self.esr_pending |= esr::RECEIVE_ILLEGAL_VECTOR;
            } else {
                set_bit(&mut self.irr, v, true);
                set_bit(&mut self.tmr, v, false);
            }
        }
    }

    // ----- State as a value (virt::snapshot, oxen_abi::vcpu_snapshot) -----

    /// The APIC as `oxen_abi::vcpu_snapshot`'s `LAPIC` words, at `now_ns`
    /// (expiries due by then are taken into IRR first). The timer is kept
    /// relative: a one-shot or periodic count as the count left, a
    /// TSC-deadline as the guest-TSC value it fires at. Queued outgoing
    /// events are not part of it (the platform drains them each turn).
    pub fn save_state(&mut self, now_ns: u64) -> [u64; LAPIC_WORDS] {
        self.catch_up(now_ns);
        let mode = self.timer_mode();
        let mut w = [0u64; LAPIC_WORDS];
        let regs = [
            self.apic_base(),
            u64::from(self.id),
            u64::from(self.tpr),
            u64::from(self.ldr),
            u64::from(self.dfr),
            u64::from(self.svr),
            u64::from(self.esr),
            u64::from(self.esr_pending),
            u64::from(self.icr_low),
            u64::from(self.icr_high),
        ];
        w[..10].copy_from_slice(&regs);
        for (i, l) in self.lvt.iter().enumerate() {
            w[10 + i] = u64::from(*l);
        }
        for (k, bits) in [&self.isr, &self.tmr, &self.irr].into_iter().enumerate() {
            for i in 0..4 {
                w[17 + 4 * k + i] = u64::from(bits[2 * i]) | (u64::from(bits[2 * i + 1]) << 32);
            }
        }
        w[29] = u64::from(self.timer.initial);
        w[30] = u64::from(self.timer.divide);
        w[31] = u64::from(self.timer.countdown.is_some());
        w[32] = u64::from(self.timer.current(now_ns, mode));
        w[STATE_TSC_DEADLINE] = self.timer.tsc_deadline;
        w
    }

    /// Loads `save_state`'s words at `now_ns`. Refused whole, the APIC left
    /// as it was, unless every value is one the registers can hold: this
    /// APIC's ID and BSP bit (the hypervisor's), the default base, each
    /// register within its writable bits.
    pub fn load_state(&mut self, w: &[u64; LAPIC_WORDS], now_ns: u64) -> Result<(), &'static str> {
        let u32_of = |v: u64| u32::try_from(v).map_err(|_| "a LAPIC register over 32 bits");
        let base = w[0];
        let known = base::BSP | base::EXTD | base::ENABLE | base::ADDRESS_MASK;
        let mode = match (base & base::ENABLE != 0, base & base::EXTD != 0) {
            _ if base & !known != 0 || base & base::ADDRESS_MASK != base::DEFAULT_ADDRESS => {
                return Err("LAPIC base: reserved bits or not the default address")
            }
            (false, false) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
            (false, true) => return Err("LAPIC base: x2APIC without enable"),
        };
        if (base & base::BSP != 0) != self.bsp || u32_of(w[1])? != self.id {
            return Err("LAPIC: another vCPU's APIC ID or BSP flag");
        }
        let tpr = u8::try_from(w[2]).map_err(|_| "LAPIC TPR over 8 bits")?;
        let (ldr, dfr, svr) = (u32_of(w[3])?, u32_of(w[4])?, u32_of(w[5])?);
        if ldr & !XAPIC_LDR_MASK != 0 || dfr & DFR_RESERVED_ONES != DFR_RESERVED_ONES || svr & !svr::WRITABLE != 0 {
            return Err("LAPIC LDR, DFR or SVR with reserved bits");
        }
        let (esr, esr_pending, icr_low, icr_high) = (u32_of(w[6])?, u32_of(w[7])?, u32_of(w[8])?, u32_of(w[9])?);
        let mut lvt = [0u32; Lvt::COUNT];
        for (i, l) in Lvt::ALL.iter().enumerate() {
            lvt[i] = u32_of(w[10 + i])?;
            if lvt[i] & !l.writable() != 0 {
                return Err("a LAPIC LVT entry with reserved bits");
            }
        }
        let mut vec_bits = [[0u32; 8]; 3];
        for (k, bits) in vec_bits.iter_mut().enumerate() {
            for i in 0..4 {
                let v = w[17 + 4 * k + i];
                (bits[2 * i], bits[2 * i + 1]) = (v as u32, (v >> 32) as u32);
            }
        }
        let (initial, divide) = (u32_of(w[29])?, u32_of(w[30])?);
        if divide & !DIVIDE_MASK != 0 {
            return Err("LAPIC divide configuration with reserved bits");
        }
        let (armed, current, tsc_deadline) = (w[31], u32_of(w[32])?, w[STATE_TSC_DEADLINE]);
        if armed > 1 || (armed == 1 && current == 0) || (armed == 0 && current != 0) {
            return Err("LAPIC timer: armed must be 0 or 1, with a count only when armed");
        }
        let [isr, tmr, irr] = vec_bits;
        (self.mode, self.tpr, self.ldr, self.dfr, self.svr) = (mode, tpr, ldr, dfr, svr);
        (self.esr, self.esr_pending, self.icr_low, self.icr_high) = (esr, esr_pending, icr_low, icr_high);
        (self.lvt, self.isr, self.tmr, self.irr) = (lvt, isr, tmr, irr);
        self.timer.reset();
        (self.timer.initial, self.timer.divide, self.timer.tsc_deadline) = (initial, divide, tsc_deadline);
        // The count goes on from where it was; a periodic one reloads
        // `initial` after it (`Timer::current`).
        self.timer.countdown = (armed == 1).then_some(Countdown { base_ns: now_ns, base_count: current, fired: 0 });
        Ok(())
    }

    // ----- Timer -----

    fn timer_mode(&self) -> TimerMode {
        TimerMode::of(self.lvt[Lvt::Timer as usize])
    }

    /// Processes timer expiries due by `now_ns`: sets IRR with the timer LVT
    /// vector unless masked (the timer is edge-triggered, §12.5.1); periodic
    /// mode reloads, one-shot and TSC-deadline disarm. Call it when the timer
    /// from `timer_deadline` fires; every time-taking call also does it first.
    pub fn tick(&mut self, now_ns: u64) {
        self.catch_up(now_ns);
    }

    fn catch_up(&mut self, now_ns: u64) {
        if !self.hardware_enabled() {
            return;
        }
        let mode = self.timer_mode();
        if self.timer.poll(now_ns, mode) {
            let entry = self.lvt[Lvt::Timer as usize];
            let mut raised = false;
            if entry & lvt::MASKED == 0 {
                let v = entry as u8;
                if v < FIRST_LEGAL_VECTOR {
                    self.signal_error(esr::RECEIVE_ILLEGAL_VECTOR);
                } else {
                    set_bit(&mut self.irr, v, true);
                    set_bit(&mut self.tmr, v, false);
                    raised = true;
                }
            }
            self.history.note(TimerStep::Fired { at_ns: now_ns, raised });
        }
    }

    /// When the hypervisor should next call `tick`, in the `now_ns` time base:
    /// None if no timer interrupt can come (stopped, disarmed or masked).
    /// Re-read it after every APIC access and every `tick`.
    pub fn timer_deadline(&self) -> Option<u64> {
        if !self.hardware_enabled() || self.lvt[Lvt::Timer as usize] & lvt::MASKED != 0 {
            return None;
        }
        self.timer.deadline(self.timer_mode())
    }

    /// The timer's last steps, oldest first: what a report on a vCPU that
    /// sleeps through its timer shows (did the guest arm it, did it fire,
    /// was it taken).
    pub fn timer_history(&self) -> impl Iterator<Item = TimerStep> + '_ {
        self.history.oldest_first()
    }

    /// RDMSR IA32_TSC_DEADLINE: the armed deadline, 0 once it fired or
    /// outside TSC-deadline mode (§12.5.4.1).
    pub fn tsc_deadline(&mut self, now_ns: u64) -> u64 {
        self.catch_up(now_ns);
        if self.hardware_enabled() && self.timer_mode() == TimerMode::TscDeadline {
            self.timer.tsc_deadline
        } else {
            0
        }
    }

    /// WRMSR IA32_TSC_DEADLINE: arms (non-zero) or disarms (0) the timer in
    /// TSC-deadline mode; ignored in other modes (§12.5.4.1). A deadline
    /// already past fires at once.
    pub fn set_tsc_deadline(&mut self, tsc: u64, now_ns: u64) {
        self.catch_up(now_ns);
        if self.hardware_enabled() && self.timer_mode() == TimerMode::TscDeadline {
            self.timer.tsc_deadline = tsc;
            self.history.note(TimerStep::Deadline { tsc, at_ns: now_ns });
            self.catch_up(now_ns);
        }
    }

    // ----- IPIs -----

    /// Decodes the ICR just written and queues the IPI (§12.6.1). Delivery
    /// is instantaneous, so the delivery-status bit always reads idle.
    fn send_ipi(&mut self) {
        let low = self.icr_low;
        let vector = (low & VECTOR_MASK) as u8;
        let level = low & icr::LEVEL_ASSERT != 0;
        let trigger = if low & icr::TRIGGER_LEVEL != 0 { TriggerMode::Level } else { TriggerMode::Edge };
        let mode = match (low & icr::DELIVERY_MODE) >> icr::DELIVERY_MODE_SHIFT {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 if trigger == TriggerMode::Level && !level => DeliveryMode::InitDeassert,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::StartUp,
            // 011 and 111 are reserved encodings: nothing is sent.
            _ => return,
        };
        let fixed = matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority);
        if fixed && vector < FIRST_LEGAL_VECTOR {
            // §12.5.2: the sender flags it and the message is not sent.
            self.signal_error(esr::SEND_ILLEGAL_VECTOR);
            return;
        }
        let x2 = self.mode == ApicMode::X2Apic;
        let dest = match (low & icr::SHORTHAND) >> icr::SHORTHAND_SHIFT {
            1 => Destination::SelfOnly,
            2 => Destination::AllIncludingSelf,
            3 => Destination::AllExcludingSelf,
            _ => {
                let raw = if x2 { self.icr_high } else { self.icr_high >> icr::XAPIC_DEST_SHIFT };
                Destination::from_message(raw, low & icr::DEST_LOGICAL != 0, x2)
            }
        };
        // "Self" and "all including self" carry only fixed interrupts
        // (Table 12-3, Table 12-4); other combinations are invalid.
        if matches!(dest, Destination::SelfOnly | Destination::AllIncludingSelf)
            && low & icr::SHORTHAND != 0
            && mode != DeliveryMode::Fixed
        {
            return;
        }
        self.queue_ipi(Ipi { source: self.id, dest, vector, mode, level, trigger });
    }

    fn queue_ipi(&mut self, ipi: Ipi) {
        self.events.push(LapicEvent::Ipi(ipi));
    }

    /// The next outgoing IPI or level EOI, oldest first.
    pub fn pop_event(&mut self) -> Option<LapicEvent> {
        self.events.pop()
    }

    /// Events lost because the queue was full (a caller that does not drain).
    pub fn dropped_events(&self) -> u64 {
        self.events.dropped
    }

    /// This APIC's logical destination model (DFR in xAPIC mode).
    pub fn logical_mode(&self) -> LogicalMode {
        if self.dfr & DFR_MODEL_MASK == DFR_FLAT {
            LogicalMode::Flat
        } else {
            LogicalMode::Cluster
        }
    }

    /// Is this APIC a target of `dest`, sent by the APIC with ID `source`?
    /// `logical` is the domain's xAPIC logical model (the SDM requires one
    /// model for all APICs; [`Self::logical_mode`] gives each one's own);
    /// x2APIC mode always uses x2APIC clusters (§12.6.2, §12.12.10). A
    /// globally disabled APIC receives nothing. Mixed domains (some APICs in
    /// xAPIC, some in x2APIC mode) are not modelled: an xAPIC compares only
    /// the low 8 bits of a physical ID.
    pub fn matches(&self, dest: &Destination, source: u32, logical: LogicalMode) -> bool {
        let x2 = match self.mode {
            ApicMode::Disabled => return false,
            ApicMode::XApic => false,
            ApicMode::X2Apic => true,
        };
        match *dest {
            Destination::SelfOnly => self.id == source,
            Destination::AllIncludingSelf => true,
            Destination::AllExcludingSelf => self.id != source,
            Destination::Physical(id) if x2 => id == self.id,
            Destination::Physical(id) => id & 0xff == self.id & 0xff,
            Destination::Logical(mda) if x2 => {
                let ldr = self.x2apic_ldr();
                mda >> 16 == ldr >> 16 && mda & ldr & 0xffff != 0
            }
            Destination::Logical(mda) => {
                let mda = mda & 0xff;
                let lid = self.ldr >> 24;
                match logical {
                    LogicalMode::Flat => mda & lid != 0,
                    LogicalMode::Cluster => mda == XAPIC_BROADCAST || (mda >> 4 == lid >> 4 && mda & lid & 0xf != 0),
                }
            }
        }
    }

    /// Takes an IPI this APIC matched (§12.6.3). Fixed and lowest-priority
    /// interrupts go into IRR as edge-triggered — the xAPIC issues level IPIs
    /// as edge and drops level de-asserts (Table 12-3 notes); INIT level
    /// de-assert is ignored by this APIC generation. Everything else is for
    /// the caller's vCPU state machine.
    pub fn receive_ipi(&mut self, ipi: &Ipi) -> IpiAction {
        match ipi.mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                if ipi.trigger == TriggerMode::Level && !ipi.level {
                    return IpiAction::None;
                }
                if self.accept(ipi.vector, false) {
                    IpiAction::Interrupt
                } else {
                    IpiAction::None
                }
            }
            DeliveryMode::Nmi => IpiAction::Nmi,
            DeliveryMode::Smi => IpiAction::Smi,
            DeliveryMode::Init => IpiAction::Init,
            DeliveryMode::InitDeassert => IpiAction::None,
            DeliveryMode::StartUp => IpiAction::StartUp(ipi.vector),
        }
    }
}

/// The xAPIC page of one [`VirtualLapic`] at one instant.
pub struct LapicMmio<'a> {
    lapic: &'a mut VirtualLapic,
    now_ns: u64,
}

impl MmioDevice for LapicMmio<'_> {
    fn mmio_read(&mut self, offset: u64, size: u8) -> u64 {
        self.lapic.mmio_read_at(offset, size, self.now_ns)
    }

    fn mmio_write(&mut self, offset: u64, size: u8, value: u64) {
        self.lapic.mmio_write_at(offset, size, value, self.now_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 MHz APIC bus (one count per 10 ns at divide 1), 2 GHz TSC.
    const CLOCK: LapicClock = LapicClock { bus_hz: 100_000_000, tsc_hz: 2_000_000_000 };
    const SVR_ON: u32 = svr::ENABLE | 0xff;

    /// An xAPIC, software-enabled, with ID `id`.
    fn lapic(id: u32) -> VirtualLapic {
        let mut l = VirtualLapic::new(id, id == 0, CLOCK);
        l.write_register(reg::SVR, SVR_ON, 0);
        l
    }

    fn x2lapic(id: u32) -> VirtualLapic {
        let mut l = lapic(id);
        l.set_apic_base(base::DEFAULT_ADDRESS | base::ENABLE | base::EXTD).unwrap();
        l
    }

    fn rd(l: &mut VirtualLapic, offset: u32) -> u32 {
        l.read_register(offset, 0)
    }

    fn wr(l: &mut VirtualLapic, offset: u32, value: u32) {
        l.write_register(offset, value, 0);
    }

    /// Latches and reads the ESR the way Linux does: write, then read.
    fn esr_of(l: &mut VirtualLapic) -> u32 {
        wr(l, reg::ESR, 0);
        rd(l, reg::ESR)
    }

    #[test]
    fn state_round_trips_with_the_timer_relative() {
        let mut l = lapic(1);
        wr(&mut l, reg::TPR, 0x20);
        l.accept(0x41, true);
        l.accept(0x52, false);
        l.ack();
        wr(&mut l, reg::TIMER_DIVIDE, 0b0011); // ÷16: one count per 160 ns
        wr(&mut l, reg::LVT_TIMER, 0x30 | lvt::TIMER_PERIODIC);
        l.write_register(reg::TIMER_INITIAL, 1000, 0);
        // 400 counts gone at 64 µs; saved then, loaded into a fresh APIC at
        // 1 s: the count goes on from 600, and fires 96 µs later.
        let words = l.save_state(64_000);
        let mut m = VirtualLapic::new(1, false, CLOCK);
        m.load_state(&words, 1_000_000_000).unwrap();
        assert_eq!(m.save_state(1_000_000_000), words);
        assert_eq!(m.read_register(reg::TIMER_CURRENT, 1_000_000_000), 600);
        assert_eq!(m.timer_deadline(), Some(1_000_000_000 + 96_000));
        // 0x52 in service holds 0x41 back until its EOI.
        assert_eq!((m.tpr(), m.pending()), (0x20, None));
        m.eoi();
        assert_eq!(m.pending(), Some(0x41));
        // Another vCPU's APIC, or reserved bits, are refused with nothing changed.
        let mut other = lapic(2);
        let before = other.save_state(0);
        assert!(other.load_state(&words, 0).is_err());
        let mut bad = words;
        bad[10 + Lvt::Timer as usize] |= 1 << 31;
        assert!(m.load_state(&bad, 0).is_err());
        let mut bad = words;
        bad[31] = 1;
        bad[32] = 0;
        assert!(m.load_state(&bad, 0).is_err());
        assert_eq!(other.save_state(0), before);
    }

    #[test]
    fn timer_history_tells_armed_fired_taken_and_ended() {
        let mut l = lapic(0);
        wr(&mut l, reg::LVT_TIMER, 0xec);
        l.write_register(reg::TIMER_INITIAL, 100, 1_000); // ÷2: 20 ns a count, due at 3 µs
        l.tick(2_000);
        assert_eq!(l.pending(), None);
        l.tick(5_000);
        assert_eq!(l.ack(), Some(0xec));
        l.write_register(reg::EOI, 0, 6_000);
        let steps: Vec<TimerStep> = l.timer_history().collect();
        assert_eq!(
            steps,
            [
                TimerStep::Lvt { value: 0xec },
                TimerStep::Count { initial: 100, at_ns: 1_000 },
                TimerStep::Fired { at_ns: 5_000, raised: true },
                TimerStep::Taken,
                TimerStep::Ended,
            ]
        );
        // Only the last few are kept, oldest first.
        for i in 0..20u32 {
            l.write_register(reg::TIMER_INITIAL, 1_000 + i, 10_000);
        }
        let steps: Vec<TimerStep> = l.timer_history().collect();
        assert_eq!(steps.len(), HISTORY);
        assert_eq!(steps[0], TimerStep::Count { initial: 1_012, at_ns: 10_000 });
        assert_eq!(steps[HISTORY - 1], TimerStep::Count { initial: 1_019, at_ns: 10_000 });
    }

    fn ipi(l: &mut VirtualLapic) -> Option<Ipi> {
        match l.pop_event() {
            Some(LapicEvent::Ipi(i)) => Some(i),
            Some(other) => panic!("expected an IPI, got {other:?}"),
            None => None,
        }
    }

    // ----- Registers -----

    #[test]
    fn power_up_state() {
        let mut l = VirtualLapic::new(3, false, CLOCK);
        assert_eq!(l.apic_base(), 0xfee0_0000 | base::ENABLE);
        assert_eq!(VirtualLapic::new(0, true, CLOCK).apic_base(), 0xfee0_0900);
        assert_eq!(rd(&mut l, reg::ID), 3 << 24);
        assert_eq!(rd(&mut l, reg::VERSION), 0x0006_0014);
        assert_eq!(rd(&mut l, reg::SVR), 0xff);
        assert_eq!(rd(&mut l, reg::DFR), 0xffff_ffff);
        for off in [0x2f0, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370] {
            assert_eq!(rd(&mut l, off), lvt::MASKED, "LVT {off:#x}");
        }
        assert!(!l.software_enabled());
    }

    #[test]
    fn writable_bits_and_reserved_bits() {
        let mut l = lapic(1);
        wr(&mut l, reg::TPR, 0xffff_ff45);
        assert_eq!(rd(&mut l, reg::TPR), 0x45);
        wr(&mut l, reg::LDR, 0xffff_ffff);
        assert_eq!(rd(&mut l, reg::LDR), 0xff00_0000);
        wr(&mut l, reg::DFR, 0x0000_0000);
        assert_eq!(rd(&mut l, reg::DFR), 0x0fff_ffff);
        assert_eq!(l.logical_mode(), LogicalMode::Cluster);
        // Bit 12 (EOI-broadcast suppression) is reserved: VERSION bit 24 is clear.
        wr(&mut l, reg::SVR, 0xffff_ffff);
        assert_eq!(rd(&mut l, reg::SVR), 0x3ff);
        wr(&mut l, reg::LVT_TIMER, 0xffff_ffff);
        assert_eq!(rd(&mut l, reg::LVT_TIMER), 0x0007_00ff);
        wr(&mut l, reg::LVT_LINT0, 0xffff_ffff);
        // Delivery status (12) and remote IRR (14) are read-only and idle.
        assert_eq!(rd(&mut l, reg::LVT_LINT0), 0x0001_a7ff);
        wr(&mut l, reg::LVT_ERROR, 0xffff_ffff);
        assert_eq!(rd(&mut l, reg::LVT_ERROR), 0x0001_00ff);
        wr(&mut l, reg::LVT_PERF, 0xffff_ffff);
        assert_eq!(rd(&mut l, reg::LVT_PERF), 0x0001_07ff);
        wr(&mut l, reg::LVT_CMCI, 0x0000_0400);
        assert_eq!(l.lvt(Lvt::Cmci), 0x400);
        wr(&mut l, reg::TIMER_DIVIDE, 0xffff_ffff);
        assert_eq!(rd(&mut l, reg::TIMER_DIVIDE), 0b1011);
        wr(&mut l, reg::ICR_HIGH, 0xffff_ffff);
        assert_eq!(rd(&mut l, reg::ICR_HIGH), 0xff00_0000);
    }

    #[test]
    fn read_only_registers_ignore_writes() {
        let mut l = lapic(2);
        for off in [reg::ID, reg::VERSION, reg::PPR, reg::APR, reg::ISR, reg::TMR + 0x10, reg::IRR + 0x70] {
            let before = rd(&mut l, off);
            wr(&mut l, off, 0x1234_5678);
            assert_eq!(rd(&mut l, off), before, "{off:#x}");
        }
        wr(&mut l, reg::TIMER_CURRENT, 77);
        assert_eq!(rd(&mut l, reg::TIMER_CURRENT), 0);
        assert_eq!(rd(&mut l, reg::EOI), 0);
        assert_eq!(esr_of(&mut l), 0);
    }

    #[test]
    fn reserved_offsets_set_illegal_register_address() {
        let mut l = lapic(0);
        for off in [0x000, 0x010, 0x040, reg::RRD, 0x290, 0x3a0, reg::SELF_IPI, 0x400, 0xff0] {
            assert_eq!(rd(&mut l, off), 0);
            assert_eq!(esr_of(&mut l), esr::ILLEGAL_REGISTER_ADDRESS, "{off:#x}");
            assert_eq!(esr_of(&mut l), 0, "a second ESR write clears it");
            wr(&mut l, off, 0xffff_ffff);
            assert_eq!(esr_of(&mut l), esr::ILLEGAL_REGISTER_ADDRESS, "{off:#x}");
        }
        assert!(l.pop_event().is_none());
    }

    #[test]
    fn software_disable_masks_lvts_and_keeps_them_masked() {
        let mut l = lapic(0);
        wr(&mut l, reg::LVT_TIMER, 0xec);
        wr(&mut l, reg::LVT_LINT1, 0x400);
        wr(&mut l, reg::SVR, 0xff);
        assert!(!l.software_enabled());
        assert_eq!(rd(&mut l, reg::LVT_TIMER), lvt::MASKED | 0xec);
        assert_eq!(rd(&mut l, reg::LVT_LINT1), lvt::MASKED | 0x400);
        wr(&mut l, reg::LVT_TIMER, 0xec);
        assert_eq!(rd(&mut l, reg::LVT_TIMER), lvt::MASKED | 0xec);
        assert!(!l.accept(0x40, false), "fixed interrupts are dropped");
        wr(&mut l, reg::SVR, SVR_ON);
        wr(&mut l, reg::LVT_TIMER, 0xec);
        assert_eq!(rd(&mut l, reg::LVT_TIMER), 0xec);
    }

    #[test]
    fn mmio_access_widths() {
        let mut l = lapic(0x12);
        wr(&mut l, reg::TPR, 0x20);
        let mut m = l.mmio(0);
        assert_eq!(m.mmio_read(0x20, 4), 0x1200_0000);
        assert_eq!(m.mmio_read(0x23, 1), 0x12, "byte 3 of ID");
        assert_eq!(m.mmio_read(0x22, 2), 0x1200);
        assert_eq!(m.mmio_read(0x24, 4), 0, "bytes 4..15 of a slot read 0");
        assert_eq!(m.mmio_read(0x80, 8), 0x20);
        assert_eq!(m.mmio_read(0x7e, 4), 0x20 << 16, "a read across two slots");
        assert_eq!(m.mmio_read(0xffe, 8), 0, "reads stop at the end of the page");
        assert_eq!(m.mmio_read(0x80, 0), 0);
        // Only aligned 32-bit stores reach a register.
        m.mmio_write(0x80, 1, 0x30);
        m.mmio_write(0x80, 8, 0x30);
        m.mmio_write(0x84, 4, 0x30);
        m.mmio_write(u64::MAX, 4, 0x30);
        assert_eq!(m.mmio_read(0x80, 4), 0x20);
        m.mmio_write(0x80, 4, 0x30);
        assert_eq!(m.mmio_read(0x80, 4), 0x30);
        for size in [0u8, 1, 2, 3, 4, 5, 7, 8, 9, 255] {
            let _ = m.mmio_read(0x3fd, size);
            m.mmio_write(0x3f0, size, u64::MAX);
        }
    }

    // ----- Priorities and the interrupt path -----

    #[test]
    fn tpr_blocks_lower_and_equal_classes() {
        let mut l = lapic(0);
        assert!(l.accept(0x45, false));
        wr(&mut l, reg::TPR, 0x40);
        assert_eq!(rd(&mut l, reg::PPR), 0x40);
        assert_eq!(l.pending(), None, "class 4 does not beat PPR class 4");
        wr(&mut l, reg::TPR, 0x3f);
        assert_eq!(l.pending(), Some(0x45));
        assert!(l.accept(0x51, false));
        wr(&mut l, reg::TPR, 0x50);
        assert_eq!(l.pending(), None);
        l.set_tpr(0);
        assert_eq!(l.pending(), Some(0x51), "highest vector first");
    }

    #[test]
    fn nested_interrupts_ack_and_eoi_in_priority_order() {
        let mut l = lapic(0);
        l.accept(0x31, false);
        assert_eq!(l.ack(), Some(0x31));
        assert_eq!(rd(&mut l, reg::ISR + 0x10), 1 << (0x31 - 32));
        assert_eq!(rd(&mut l, reg::PPR), 0x30, "PPR follows the in-service class");
        // Same class as in service: held until EOI.
        l.accept(0x3e, false);
        assert_eq!(l.pending(), None);
        // Higher class nests.
        l.accept(0x61, false);
        assert_eq!(l.pending(), Some(0x61));
        assert_eq!(l.ack(), Some(0x61));
        assert_eq!(rd(&mut l, reg::PPR), 0x60);
        l.accept(0x50, false);
        assert_eq!(l.pending(), None, "0x50 waits below in-service 0x61");
        assert_eq!(rd(&mut l, reg::APR), 0x60, "APR: max of TPR, ISRV, IRRV classes");
        // EOI retires the highest in-service vector first.
        wr(&mut l, reg::EOI, 0);
        assert_eq!(rd(&mut l, reg::ISR + 0x30), 0);
        assert_eq!(rd(&mut l, reg::PPR), 0x30);
        assert_eq!(l.ack(), Some(0x50));
        wr(&mut l, reg::EOI, 0);
        assert_eq!(l.pending(), None, "0x3e still waits for 0x31's EOI");
        wr(&mut l, reg::EOI, 0);
        assert_eq!(rd(&mut l, reg::PPR), 0);
        assert_eq!(l.ack(), Some(0x3e));
        wr(&mut l, reg::EOI, 0);
        assert_eq!(l.ack(), None);
        // EOI with nothing in service is harmless.
        wr(&mut l, reg::EOI, 0);
        assert!(l.pop_event().is_none(), "edge EOIs are not reported");
    }

    #[test]
    fn level_triggered_eoi_is_reported() {
        let mut l = lapic(0);
        l.accept(0x61, true);
        l.accept(0x41, false);
        assert_eq!(rd(&mut l, reg::TMR + 0x30), 1 << 1);
        assert_eq!(l.ack(), Some(0x61));
        l.mmio(0).mmio_write(reg::EOI.into(), 4, 0);
        assert_eq!(l.pop_event(), Some(LapicEvent::LevelEoi(0x61)));
        assert_eq!(l.pop_event(), None);
        assert_eq!(l.ack(), Some(0x41));
        assert_eq!(l.eoi(), None, "edge vector: nothing for the IOAPIC");
        // A later edge acceptance of the same vector clears its TMR bit.
        l.accept(0x61, true);
        l.accept(0x61, false);
        l.ack();
        assert_eq!(l.eoi(), None);
    }

    #[test]
    fn illegal_vectors_raise_errors() {
        let mut l = lapic(0);
        assert!(!l.accept(15, false));
        assert_eq!(l.pending(), None);
        assert_eq!(esr_of(&mut l), esr::RECEIVE_ILLEGAL_VECTOR);
        // A fixed IPI with vector 3 is not sent.
        wr(&mut l, reg::ICR_LOW, 0x0000_4003);
        assert!(l.pop_event().is_none());
        assert_eq!(esr_of(&mut l), esr::SEND_ILLEGAL_VECTOR);
        // The error LVT delivers its vector when unmasked.
        wr(&mut l, reg::LVT_ERROR, 0xfe);
        l.accept(1, false);
        assert_eq!(l.pending(), Some(0xfe));
        assert_eq!(esr_of(&mut l), esr::RECEIVE_ILLEGAL_VECTOR);
        // An illegal error vector only adds to the ESR.
        wr(&mut l, reg::LVT_ERROR, 0x02);
        l.ack();
        l.eoi();
        l.accept(1, false);
        assert_eq!(l.pending(), None);
        assert_eq!(esr_of(&mut l), esr::RECEIVE_ILLEGAL_VECTOR);
    }

    // ----- Timer -----

    #[test]
    fn divide_configurations() {
        let mut l = lapic(0);
        for (cfg, div) in [
            (0b0000, 2),
            (0b0001, 4),
            (0b0010, 8),
            (0b0011, 16),
            (0b1000, 32),
            (0b1001, 64),
            (0b1010, 128),
            (0b1011, 1),
        ] {
            wr(&mut l, reg::TIMER_DIVIDE, cfg);
            assert_eq!(l.timer.divisor(), div, "cfg {cfg:#06b}");
        }
    }

    #[test]
    fn one_shot_counts_down_and_fires_once() {
        let mut l = lapic(0);
        wr(&mut l, reg::LVT_TIMER, 0xec);
        wr(&mut l, reg::TIMER_DIVIDE, 0b0011); // ÷16: one count per 160 ns
        l.write_register(reg::TIMER_INITIAL, 1000, 1_000);
        assert_eq!(l.timer_deadline(), Some(1_000 + 160_000));
        assert_eq!(l.read_register(reg::TIMER_CURRENT, 1_000), 1000);
        assert_eq!(l.read_register(reg::TIMER_CURRENT, 1_000 + 159), 1000);
        assert_eq!(l.read_register(reg::TIMER_CURRENT, 1_000 + 160), 999);
        assert_eq!(l.read_register(reg::TIMER_CURRENT, 1_000 + 80_000), 500);
        l.tick(160_999);
        assert_eq!(l.pending(), None);
        assert_eq!(l.read_register(reg::TIMER_CURRENT, 160_999), 1);
        l.tick(161_000);
        assert_eq!(l.pending(), Some(0xec));
        assert_eq!(rd(&mut l, reg::TMR + 0x70), 0, "timer interrupts are edge");
        assert_eq!(l.read_register(reg::TIMER_CURRENT, 161_000), 0);
        assert_eq!(l.timer_deadline(), None);
        assert_eq!(rd(&mut l, reg::TIMER_INITIAL), 1000, "initial count is kept");
        l.ack();
        l.tick(10_000_000);
        assert_eq!(l.pending(), None, "one-shot fires once");
        // Writing 0 stops a running count.
        l.write_register(reg::TIMER_INITIAL, 5, 0);
        l.write_register(reg::TIMER_INITIAL, 0, 10);
        assert_eq!(l.timer_deadline(), None);
        assert_eq!(l.read_register(reg::TIMER_CURRENT, 1_000_000), 0);
    }

    #[test]
    fn expiry_rounds_up_to_the_instant_the_count_reaches_zero() {
        // 300 MHz at ÷1: a count every 3⅓ ns; 10 counts take 33⅓ ns.
        let mut l = VirtualLapic::new(0, true, LapicClock { bus_hz: 300_000_000, tsc_hz: 3_000_000_000 });
        wr(&mut l, reg::SVR, SVR_ON);
        wr(&mut l, reg::LVT_TIMER, 0x30);
        wr(&mut l, reg::TIMER_DIVIDE, 0b1011);
        wr(&mut l, reg::TIMER_INITIAL, 10);
        assert_eq!(l.timer_deadline(), Some(34));
        assert_eq!(l.read_register(reg::TIMER_CURRENT, 33), 1);
        l.tick(33);
        assert_eq!(l.pending(), None);
        l.tick(34);
        assert_eq!(l.pending(), Some(0x30));
    }

    #[test]
    fn periodic_reloads_and_coalesces_missed_periods() {
        let mut l = lapic(0);
        wr(&mut l, reg::LVT_TIMER, lvt::TIMER_PERIODIC | 0xef);
        wr(&mut l, reg::TIMER_DIVIDE, 0b0000); // ÷2: 20 ns a count
        wr(&mut l, reg::TIMER_INITIAL, 100_000); // 2 ms period
        assert_eq!(l.timer_deadline(), Some(2_000_000));
        assert_eq!(l.read_register(reg::TIMER_CURRENT, 1_000_000), 50_000);
        l.tick(2_000_000);
        assert_eq!(l.ack(), Some(0xef));
        assert_eq!(l.timer_deadline(), Some(4_000_000));
        assert_eq!(l.read_register(reg::TIMER_CURRENT, 2_000_000), 100_000, "reloaded");
        assert_eq!(l.read_register(reg::TIMER_CURRENT, 3_000_000), 50_000);
        l.eoi();
        // Three periods pass unnoticed: one interrupt, the schedule keeps its phase.
        l.tick(9_000_000);
        assert_eq!(l.ack(), Some(0xef));
        assert_eq!(l.pending(), None);
        assert_eq!(l.timer_deadline(), Some(10_000_000));
        assert_eq!(l.read_register(reg::TIMER_CURRENT, 9_000_000), 50_000);
    }

    #[test]
    fn tiny_periods_are_rate_limited() {
        let mut l = lapic(0);
        wr(&mut l, reg::LVT_TIMER, lvt::TIMER_PERIODIC | 0xef);
        wr(&mut l, reg::TIMER_DIVIDE, 0b1011);
        wr(&mut l, reg::TIMER_INITIAL, 10); // 100 ns period
        assert_eq!(l.timer_deadline(), Some(100), "the first expiry is exact");
        l.tick(100);
        assert_eq!(l.timer_deadline(), Some(100 + MIN_PERIODIC_INTERRUPT_NS));
        l.tick(50_000);
        assert_eq!(l.ack(), Some(0xef));
        assert_eq!(l.pending(), None);
        assert_eq!(l.read_register(reg::TIMER_CURRENT, 50_005), 10, "the count itself is exact");
    }

    #[test]
    fn divide_change_keeps_the_count_reached() {
        let mut l = lapic(0);
        wr(&mut l, reg::LVT_TIMER, 0x40);
        wr(&mut l, reg::TIMER_DIVIDE, 0b1011); // ÷1: 10 ns a count
        wr(&mut l, reg::TIMER_INITIAL, 1000);
        l.write_register(reg::TIMER_DIVIDE, 0b0001, 4_000); // 600 left, now ÷4
        assert_eq!(l.read_register(reg::TIMER_CURRENT, 4_000), 600);
        assert_eq!(l.timer_deadline(), Some(4_000 + 600 * 40));
        assert_eq!(l.read_register(reg::TIMER_CURRENT, 8_000), 500);
    }

    #[test]
    fn mode_switches() {
        let mut l = lapic(0);
        wr(&mut l, reg::TIMER_DIVIDE, 0b1011);
        wr(&mut l, reg::LVT_TIMER, lvt::TIMER_PERIODIC | 0x40);
        wr(&mut l, reg::TIMER_INITIAL, 1000); // 10 µs period
        l.tick(25_000);
        l.ack();
        l.eoi();
        // Periodic -> one-shot: the current period runs out, then it stops.
        l.write_register(reg::LVT_TIMER, 0x40, 25_000);
        assert_eq!(l.read_register(reg::TIMER_CURRENT, 25_000), 500);
        assert_eq!(l.timer_deadline(), Some(30_000));
        l.tick(30_000);
        l.tick(100_000);
        assert_eq!(l.ack(), Some(0x40));
        assert_eq!(l.timer_deadline(), None);
        // Into TSC-deadline mode: the count is disarmed.
        wr(&mut l, reg::TIMER_INITIAL, 1000);
        l.write_register(reg::LVT_TIMER, lvt::TIMER_TSC_DEADLINE | 0x40, 100_000);
        assert_eq!(rd(&mut l, reg::TIMER_INITIAL), 0);
        assert_eq!(l.timer_deadline(), None);
    }

    #[test]
    fn masked_timer_expires_silently() {
        let mut l = lapic(0);
        wr(&mut l, reg::TIMER_DIVIDE, 0b1011);
        wr(&mut l, reg::LVT_TIMER, lvt::MASKED | 0x40);
        wr(&mut l, reg::TIMER_INITIAL, 100);
        assert_eq!(l.timer_deadline(), None, "no interrupt can come");
        assert_eq!(l.read_register(reg::TIMER_CURRENT, 500), 50, "but it counts");
        l.write_register(reg::LVT_TIMER, 0x40, 2_000);
        assert_eq!(l.pending(), None, "unmasking after expiry delivers nothing");
        assert_eq!(l.timer_deadline(), None);
    }

    #[test]
    fn tsc_deadline_mode() {
        let mut l = lapic(0);
        // Outside TSC-deadline mode the MSR ignores writes and reads 0.
        l.msr_write(msr::IA32_TSC_DEADLINE, 5_000, 0).unwrap();
        assert_eq!(l.msr_read(msr::IA32_TSC_DEADLINE, 0), Ok(0));
        wr(&mut l, reg::LVT_TIMER, lvt::TIMER_TSC_DEADLINE | 0xec);
        wr(&mut l, reg::TIMER_INITIAL, 1000);
        assert_eq!(rd(&mut l, reg::TIMER_INITIAL), 0, "initial count ignored");
        assert_eq!(l.timer_deadline(), None);
        // 2 GHz TSC: tick 2_000_000 is 1 ms.
        l.msr_write(msr::IA32_TSC_DEADLINE, 2_000_000, 10).unwrap();
        assert_eq!(l.timer_deadline(), Some(1_000_000));
        assert_eq!(l.read_register(reg::TIMER_CURRENT, 500_000), 0);
        assert_eq!(l.msr_read(msr::IA32_TSC_DEADLINE, 999_999), Ok(2_000_000));
        assert_eq!(l.pending(), None);
        l.tick(1_000_000);
        assert_eq!(l.pending(), Some(0xec));
        assert_eq!(l.msr_read(msr::IA32_TSC_DEADLINE, 1_000_000), Ok(0), "disarmed on expiry");
        assert_eq!(l.timer_deadline(), None);
        l.ack();
        l.eoi();
        // A deadline in the past fires at once; 0 disarms.
        l.set_tsc_deadline(1, 2_000_000);
        assert_eq!(l.pending(), Some(0xec));
        l.set_tsc_deadline(10_000_000, 2_000_000);
        l.set_tsc_deadline(0, 2_000_000);
        assert_eq!(l.timer_deadline(), None);
        // Leaving TSC-deadline mode disarms too.
        l.set_tsc_deadline(10_000_000, 2_000_000);
        wr(&mut l, reg::LVT_TIMER, 0xec);
        assert_eq!(l.tsc_deadline(0), 0);
        assert_eq!(l.timer_deadline(), None);
    }

    #[test]
    fn tsc_deadline_rounds_up() {
        let mut l = VirtualLapic::new(0, true, LapicClock { bus_hz: 1, tsc_hz: 3_000_000_000 });
        wr(&mut l, reg::SVR, SVR_ON);
        wr(&mut l, reg::LVT_TIMER, lvt::TIMER_TSC_DEADLINE | 0xec);
        l.set_tsc_deadline(10, 0); // 3⅓ ns
        assert_eq!(l.timer_deadline(), Some(4));
    }

    // ----- IPIs -----

    /// xAPIC ICR writes as Linux issues them: high half first, then low.
    fn send(l: &mut VirtualLapic, dest: u32, low: u32) -> Option<Ipi> {
        wr(l, reg::ICR_HIGH, dest << 24);
        wr(l, reg::ICR_LOW, low);
        assert_eq!(rd(l, reg::ICR_LOW) & icr::DELIVERY_STATUS, 0, "delivery status reads idle");
        ipi(l)
    }

    #[test]
    fn init_sipi_sipi_as_linux_sends_it() {
        let mut bsp = lapic(0);
        // INIT assert: level-triggered, assert, INIT (Linux: APIC_INT_LEVELTRIG |
        // APIC_INT_ASSERT | APIC_DM_INIT).
        let init = send(&mut bsp, 1, 0x0000_c500).unwrap();
        assert_eq!(
            init,
            Ipi {
                source: 0,
                dest: Destination::Physical(1),
                vector: 0,
                mode: DeliveryMode::Init,
                level: true,
                trigger: TriggerMode::Level
            }
        );
        // INIT de-assert: level-triggered, level bit clear.
        let deassert = send(&mut bsp, 1, 0x0000_8500).unwrap();
        assert_eq!(deassert.mode, DeliveryMode::InitDeassert);
        // SIPI: start-up, vector = trampoline page 0x9a (code at 0x9a000).
        let sipi = send(&mut bsp, 1, 0x0000_069a).unwrap();
        assert_eq!((sipi.mode, sipi.vector, sipi.dest), (DeliveryMode::StartUp, 0x9a, Destination::Physical(1)));

        let mut ap = VirtualLapic::new(1, false, CLOCK);
        assert!(ap.matches(&init.dest, 0, LogicalMode::Flat));
        assert_eq!(ap.receive_ipi(&init), IpiAction::Init);
        assert_eq!(ap.receive_ipi(&deassert), IpiAction::None);
        assert_eq!(ap.receive_ipi(&sipi), IpiAction::StartUp(0x9a));
        assert!(!bsp.matches(&init.dest, 0, LogicalMode::Flat));
    }

    #[test]
    fn fixed_ipi_to_a_physical_id() {
        let mut l = lapic(0);
        let i = send(&mut l, 3, 0x0000_40fd).unwrap();
        assert_eq!(
            i,
            Ipi {
                source: 0,
                dest: Destination::Physical(3),
                vector: 0xfd,
                mode: DeliveryMode::Fixed,
                level: true,
                trigger: TriggerMode::Edge
            }
        );
        let mut target = lapic(3);
        assert!(target.matches(&i.dest, 0, LogicalMode::Flat));
        assert!(!lapic(4).matches(&i.dest, 0, LogicalMode::Flat));
        assert_eq!(target.receive_ipi(&i), IpiAction::Interrupt);
        assert_eq!(target.ack(), Some(0xfd));
        // A level-triggered fixed IPI is taken as edge; a de-assert is dropped.
        let lvl = Ipi { trigger: TriggerMode::Level, ..i };
        target.receive_ipi(&lvl);
        assert_eq!(rd(&mut target, reg::TMR + 0x70), 0);
        assert_eq!(target.receive_ipi(&Ipi { level: false, ..lvl }), IpiAction::None);
        // A software-disabled target drops fixed IPIs.
        let mut off = VirtualLapic::new(3, false, CLOCK);
        assert_eq!(off.receive_ipi(&i), IpiAction::None);
        assert_eq!(off.receive_ipi(&Ipi { mode: DeliveryMode::Nmi, ..i }), IpiAction::Nmi);
    }

    #[test]
    fn shorthands_and_broadcast() {
        let mut l = lapic(2);
        let dest_of = |l: &mut VirtualLapic, low: u32| send(l, 0, low).map(|i| (i.dest, i.mode));
        // Linux's apic_send_IPI_allbutself / _all / _self (xAPIC shorthands).
        assert_eq!(dest_of(&mut l, 0x000c_00fb), Some((Destination::AllExcludingSelf, DeliveryMode::Fixed)));
        assert_eq!(dest_of(&mut l, 0x0008_00fb), Some((Destination::AllIncludingSelf, DeliveryMode::Fixed)));
        assert_eq!(dest_of(&mut l, 0x0004_00fb), Some((Destination::SelfOnly, DeliveryMode::Fixed)));
        // NMI to all but self (Linux's NMI backtrace / reboot path).
        assert_eq!(dest_of(&mut l, 0x000c_0400), Some((Destination::AllExcludingSelf, DeliveryMode::Nmi)));
        // INIT to all but self is valid; INIT to self or all-including-self is not.
        assert_eq!(dest_of(&mut l, 0x000c_4500), Some((Destination::AllExcludingSelf, DeliveryMode::Init)));
        assert_eq!(dest_of(&mut l, 0x0004_4500), None);
        assert_eq!(dest_of(&mut l, 0x0008_0400), None);
        // Physical destination 0xFF is a broadcast.
        assert_eq!(send(&mut l, 0xff, 0x0000_40fb).unwrap().dest, Destination::AllIncludingSelf);
        // Reserved delivery modes 011 and 111 send nothing.
        assert_eq!(dest_of(&mut l, 0x0000_03fb), None);
        assert_eq!(dest_of(&mut l, 0x0000_07fb), None);

        let me = 2;
        let other = lapic(5);
        assert!(l.matches(&Destination::SelfOnly, me, LogicalMode::Flat));
        assert!(!other.matches(&Destination::SelfOnly, me, LogicalMode::Flat));
        assert!(!l.matches(&Destination::AllExcludingSelf, me, LogicalMode::Flat));
        assert!(other.matches(&Destination::AllExcludingSelf, me, LogicalMode::Flat));
        assert!(other.matches(&Destination::AllIncludingSelf, me, LogicalMode::Flat));
        let mut disabled = lapic(6);
        disabled.set_apic_base(base::DEFAULT_ADDRESS).unwrap();
        assert!(!disabled.matches(&Destination::AllIncludingSelf, me, LogicalMode::Flat));
    }

    #[test]
    fn logical_destinations() {
        // Flat: LDR bit per CPU, MDA is a bitmap.
        let mut a = lapic(0);
        wr(&mut a, reg::LDR, 0x0400_0000);
        assert!(a.matches(&Destination::Logical(0x06), 9, LogicalMode::Flat));
        assert!(!a.matches(&Destination::Logical(0x03), 9, LogicalMode::Flat));
        assert!(a.matches(&Destination::Logical(0xff), 9, LogicalMode::Flat));
        // Cluster: high nibble cluster, low nibble bitmap; 0xFF broadcasts.
        wr(&mut a, reg::DFR, 0x0fff_ffff);
        wr(&mut a, reg::LDR, 0x2100_0000);
        assert!(a.matches(&Destination::Logical(0x23), 9, LogicalMode::Cluster));
        assert!(!a.matches(&Destination::Logical(0x13), 9, LogicalMode::Cluster));
        assert!(!a.matches(&Destination::Logical(0x22), 9, LogicalMode::Cluster));
        assert!(a.matches(&Destination::Logical(0xff), 9, LogicalMode::Cluster));
        // x2APIC: ID 0x25 is cluster 2, bit 5.
        let x = x2lapic(0x25);
        assert_eq!(x.x2apic_ldr(), 0x0002_0020);
        assert!(x.matches(&Destination::Logical(0x0002_0021), 9, LogicalMode::Flat));
        assert!(!x.matches(&Destination::Logical(0x0001_0020), 9, LogicalMode::Flat));
        assert!(x.matches(&Destination::Physical(0x25), 9, LogicalMode::Flat));
        // Messages from an IOAPIC decode with the same rules.
        assert_eq!(Destination::from_message(0xff, false, false), Destination::AllIncludingSelf);
        assert_eq!(Destination::from_message(0xff, true, false), Destination::Logical(0xff));
        assert_eq!(Destination::from_message(0xffff_ffff, true, true), Destination::AllIncludingSelf);
        assert_eq!(Destination::from_message(0x105, false, true), Destination::Physical(0x105));
    }

    // ----- x2APIC -----

    #[test]
    fn x2apic_registers() {
        let mut l = x2lapic(0x105);
        assert_eq!(l.msr_read(0x802, 0), Ok(0x105), "32-bit ID");
        assert_eq!(l.msr_read(0x803, 0), Ok(0x0006_0014));
        assert_eq!(l.msr_read(0x80d, 0), Ok(0x0010_0020), "LDR derived from the ID");
        assert_eq!(l.msr_read(0x80f, 0), Ok(0x1ff), "state carried over from xAPIC mode");
        l.msr_write(0x808, 0x20, 0).unwrap();
        assert_eq!(l.msr_read(0x80a, 0), Ok(0x20));
        l.accept(0x91, true);
        assert_eq!(l.msr_read(0x824, 0), Ok(1 << 17), "IRR word 4");
        assert_eq!(l.msr_read(0x81c, 0), Ok(1 << 17), "TMR word 4");
        l.ack();
        assert_eq!(l.msr_read(0x814, 0), Ok(1 << 17), "ISR word 4");
        l.msr_write(0x80b, 0, 0).unwrap();
        assert_eq!(l.pop_event(), Some(LapicEvent::LevelEoi(0x91)));
        l.msr_write(0x832, u64::from(lvt::TIMER_PERIODIC | 0xec), 0).unwrap();
        l.msr_write(0x83e, 0b1011, 0).unwrap();
        l.msr_write(0x838, 50_000, 0).unwrap();
        assert_eq!(l.msr_read(0x839, 100_000), Ok(40_000));
        l.msr_write(0x828, 0, 0).unwrap();
        assert_eq!(l.msr_read(0x828, 0), Ok(0));
    }

    #[test]
    fn x2apic_icr_is_one_64_bit_msr() {
        let mut l = x2lapic(1);
        // Fixed IPI to x2APIC ID 0x105, as native_x2apic_icr_write does it.
        l.msr_write(msr::X2APIC_ICR, 0x0000_0105_0000_40fd, 0).unwrap();
        let i = ipi(&mut l).unwrap();
        assert_eq!((i.dest, i.vector, i.mode), (Destination::Physical(0x105), 0xfd, DeliveryMode::Fixed));
        assert_eq!(l.msr_read(msr::X2APIC_ICR, 0), Ok(0x0000_0105_0000_40fd));
        // INIT, SIPI to ID 7.
        l.msr_write(msr::X2APIC_ICR, 0x0000_0007_0000_c500, 0).unwrap();
        assert_eq!(ipi(&mut l).unwrap().mode, DeliveryMode::Init);
        l.msr_write(msr::X2APIC_ICR, 0x0000_0007_0000_069a, 0).unwrap();
        let sipi = ipi(&mut l).unwrap();
        assert_eq!((sipi.mode, sipi.vector, sipi.dest), (DeliveryMode::StartUp, 0x9a, Destination::Physical(7)));
        // Logical cluster destination, and the 0xFFFF_FFFF broadcast.
        l.msr_write(msr::X2APIC_ICR, 0x0003_0005_0000_48fd, 0).unwrap();
        assert_eq!(ipi(&mut l).unwrap().dest, Destination::Logical(0x0003_0005));
        l.msr_write(msr::X2APIC_ICR, 0xffff_ffff_0000_40fd, 0).unwrap();
        assert_eq!(ipi(&mut l).unwrap().dest, Destination::AllIncludingSelf);
        // Delivery status (bit 12) is ignored, the other reserved bits fault.
        l.msr_write(msr::X2APIC_ICR, 0x0000_0002_0000_50fd, 0).unwrap();
        assert_eq!(l.msr_read(msr::X2APIC_ICR, 0), Ok(0x0000_0002_0000_40fd));
        ipi(&mut l).unwrap();
        for bit in [13, 16, 17, 20, 31] {
            assert_eq!(l.msr_write(msr::X2APIC_ICR, (1 << bit) | 0x40fd, 0), Err(GeneralProtection), "bit {bit}");
        }
        assert!(l.pop_event().is_none());
    }

    #[test]
    fn x2apic_self_ipi() {
        let mut l = x2lapic(4);
        l.msr_write(msr::X2APIC_SELF_IPI, 0x55, 0).unwrap();
        let i = ipi(&mut l).unwrap();
        assert_eq!(
            i,
            Ipi {
                source: 4,
                dest: Destination::SelfOnly,
                vector: 0x55,
                mode: DeliveryMode::Fixed,
                level: true,
                trigger: TriggerMode::Edge
            }
        );
        assert!(l.matches(&i.dest, i.source, LogicalMode::Cluster));
        l.receive_ipi(&i);
        assert_eq!(l.pending(), Some(0x55));
        assert_eq!(l.msr_write(msr::X2APIC_SELF_IPI, 0x155, 0), Err(GeneralProtection));
        assert_eq!(l.msr_read(msr::X2APIC_SELF_IPI, 0), Err(GeneralProtection), "write-only");
    }

    #[test]
    fn x2apic_general_protection_cases() {
        let mut l = x2lapic(1);
        let gp_reads = [0x800, 0x801, 0x804, 0x809, 0x80b, 0x80c, 0x80e, 0x829, 0x831, 0x83a, 0x83f, 0x8ff];
        for m in gp_reads {
            assert_eq!(l.msr_read(m, 0), Err(GeneralProtection), "rdmsr {m:#x}");
        }
        // Read-only registers.
        for m in [0x802, 0x803, 0x80a, 0x80d, 0x810, 0x818, 0x827, 0x839] {
            assert_eq!(l.msr_write(m, 0, 0), Err(GeneralProtection), "wrmsr {m:#x}");
        }
        // Registers xAPIC has and x2APIC does not: APR, DFR, ICR high.
        for m in [0x809, 0x80e, 0x831] {
            assert_eq!(l.msr_write(m, 0, 0), Err(GeneralProtection), "wrmsr {m:#x}");
        }
        // Reserved bits, and bits 63:32 of 32-bit registers.
        assert_eq!(l.msr_write(0x808, 0x100, 0), Err(GeneralProtection));
        assert_eq!(l.msr_write(0x808, 1 << 32, 0), Err(GeneralProtection));
        assert_eq!(l.msr_write(0x80f, 0x11ff, 0), Err(GeneralProtection), "no EOI-broadcast suppression");
        assert_eq!(l.msr_write(0x83e, 0b0100, 0), Err(GeneralProtection));
        assert_eq!(l.msr_write(0x832, 1 << 19, 0), Err(GeneralProtection));
        assert_eq!(l.msr_write(0x837, 0x700, 0), Err(GeneralProtection), "no delivery mode on the error LVT");
        // Non-zero EOI and ESR writes.
        assert_eq!(l.msr_write(0x80b, 1, 0), Err(GeneralProtection));
        assert_eq!(l.msr_write(0x828, 1, 0), Err(GeneralProtection));
        // Read-only LVT bits are accepted (read-modify-write of a masked LINT0).
        l.msr_write(0x835, u64::from(lvt::MASKED | lvt::DELIVERY_STATUS | lvt::REMOTE_IRR), 0).unwrap();
        assert_eq!(l.msr_read(0x835, 0), Ok(u64::from(lvt::MASKED)));
        // Nothing above changed state or sent anything.
        assert_eq!(l.msr_read(0x808, 0), Ok(0));
        assert!(l.pop_event().is_none());
    }

    #[test]
    fn xapic_only_interfaces_are_gone_in_x2apic_mode() {
        let mut l = x2lapic(1);
        let mut m = l.mmio(0);
        assert_eq!(m.mmio_read(0x20, 4), 0xffff_ffff);
        assert_eq!(m.mmio_read(0x20, 8), u64::MAX);
        m.mmio_write(0x80, 4, 0x40);
        assert_eq!(l.tpr(), 0, "MMIO writes do nothing");
        // And the x2APIC MSRs are gone in xAPIC mode.
        let mut x = lapic(1);
        assert_eq!(x.msr_read(0x802, 0), Err(GeneralProtection));
        assert_eq!(x.msr_write(0x808, 0, 0), Err(GeneralProtection));
        assert_eq!(x.msr_write(msr::X2APIC_SELF_IPI, 0x40, 0), Err(GeneralProtection));
    }

    // ----- IA32_APIC_BASE -----

    #[test]
    fn apic_base_transitions() {
        let xapic = base::DEFAULT_ADDRESS | base::ENABLE;
        let x2apic = xapic | base::EXTD;
        let mut l = lapic(0);
        assert_eq!(l.msr_read(msr::IA32_APIC_BASE, 0), Ok(xapic | base::BSP));
        // Relocation, reserved bits, EXTD without EN.
        assert_eq!(l.msr_write(msr::IA32_APIC_BASE, 0xfec0_0000 | base::ENABLE, 0), Err(GeneralProtection));
        assert_eq!(l.msr_write(msr::IA32_APIC_BASE, xapic | 1 << 9, 0), Err(GeneralProtection));
        assert_eq!(l.msr_write(msr::IA32_APIC_BASE, xapic | 1 << 52, 0), Err(GeneralProtection));
        assert_eq!(l.msr_write(msr::IA32_APIC_BASE, base::DEFAULT_ADDRESS | base::EXTD, 0), Err(GeneralProtection));
        // The BSP bit is the hypervisor's.
        l.msr_write(msr::IA32_APIC_BASE, xapic, 0).unwrap();
        assert_eq!(l.apic_base(), xapic | base::BSP);
        // xAPIC -> x2APIC; x2APIC -> xAPIC is refused.
        l.msr_write(msr::IA32_APIC_BASE, x2apic, 0).unwrap();
        assert_eq!(l.mode(), ApicMode::X2Apic);
        assert_eq!(l.msr_write(msr::IA32_APIC_BASE, xapic, 0), Err(GeneralProtection));
        // x2APIC -> disabled loses the state; disabled -> x2APIC is refused.
        l.accept(0x40, false);
        l.msr_write(msr::IA32_APIC_BASE, base::DEFAULT_ADDRESS, 0).unwrap();
        assert_eq!(l.mode(), ApicMode::Disabled);
        assert!(!l.accept(0x40, false));
        assert_eq!(l.pending(), None);
        assert_eq!(l.mmio(0).mmio_read(0x30, 4), 0xffff_ffff);
        assert_eq!(l.msr_read(0x803, 0), Err(GeneralProtection));
        assert_eq!(l.msr_write(msr::IA32_APIC_BASE, x2apic, 0), Err(GeneralProtection));
        l.msr_write(msr::IA32_APIC_BASE, xapic, 0).unwrap();
        assert_eq!(rd(&mut l, reg::SVR), 0xff, "back at power-up values");
        assert_eq!(rd(&mut l, reg::IRR + 0x20), 0);
    }

    #[test]
    fn init_reset_keeps_id_and_mode() {
        let mut l = x2lapic(9);
        l.msr_write(0x808, 0x30, 0).unwrap();
        l.accept(0x50, false);
        l.msr_write(0x838, 1000, 0).unwrap();
        l.init_reset();
        assert_eq!(l.mode(), ApicMode::X2Apic);
        assert_eq!(l.msr_read(0x802, 0), Ok(9));
        assert_eq!(l.msr_read(0x808, 0), Ok(0));
        assert_eq!(l.msr_read(0x80f, 0), Ok(0xff));
        assert_eq!(l.msr_read(0x832, 0), Ok(u64::from(lvt::MASKED)));
        assert_eq!(l.msr_read(0x838, 0), Ok(0));
        assert_eq!(l.msr_read(0x824, 0), Ok(0));
    }

    // ----- Routing, as the caller will do it -----

    /// Delivers every queued IPI of `lapics[from]` to the APICs it matches.
    fn route(lapics: &mut [VirtualLapic], from: usize) -> Vec<(u32, IpiAction)> {
        let mut out = Vec::new();
        while let Some(LapicEvent::Ipi(i)) = lapics[from].pop_event() {
            for l in lapics.iter_mut() {
                let mode = l.logical_mode();
                if l.matches(&i.dest, i.source, mode) {
                    out.push((l.id(), l.receive_ipi(&i)));
                }
            }
        }
        out
    }

    #[test]
    fn routing_among_three_vcpus() {
        let mut v = [lapic(0), VirtualLapic::new(1, false, CLOCK), VirtualLapic::new(2, false, CLOCK)];
        send_raw(&mut v[0], 2, 0x0000_c500);
        send_raw(&mut v[0], 2, 0x0000_8500);
        send_raw(&mut v[0], 2, 0x0000_069a);
        assert_eq!(route(&mut v, 0), [(2, IpiAction::Init), (2, IpiAction::None), (2, IpiAction::StartUp(0x9a))]);
        for l in &mut v[1..] {
            wr(l, reg::SVR, SVR_ON);
        }
        // Fixed broadcast to all but self reaches 1 and 2 only.
        send_raw(&mut v[0], 0, 0x000c_00fb);
        assert_eq!(route(&mut v, 0), [(1, IpiAction::Interrupt), (2, IpiAction::Interrupt)]);
        assert_eq!((v[0].pending(), v[1].pending(), v[2].pending()), (None, Some(0xfb), Some(0xfb)));
    }

    fn send_raw(l: &mut VirtualLapic, dest: u32, low: u32) {
        wr(l, reg::ICR_HIGH, dest << 24);
        wr(l, reg::ICR_LOW, low);
    }

    #[test]
    fn undrained_events_are_counted_not_lost_silently() {
        let mut l = lapic(0);
        for _ in 0..EVENT_QUEUE_LEN + 3 {
            send_raw(&mut l, 1, 0x40fd);
        }
        assert_eq!(l.dropped_events(), 3);
        let mut n = 0;
        while l.pop_event().is_some() {
            n += 1;
        }
        assert_eq!(n, EVENT_QUEUE_LEN);
    }

    /// Arbitrary guest accesses through every entry point never panic.
    #[test]
    fn guest_input_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut l = lapic(0);
        let mut now = 0u64;
        for _ in 0..200_000 {
            now = now.wrapping_add(next() % 10_000);
            let r = next();
            let v = next();
            match r % 8 {
                0 => {
                    let _ = l.mmio(now).mmio_read(r >> 8 & 0x1fff, (r >> 32) as u8 % 10);
                }
                1 => l.mmio(now).mmio_write((r >> 8) & 0x3f0, 4, v),
                2 => {
                    let _ = l.msr_read(0x800 + (r >> 8) as u32 % 0x100, now);
                }
                3 => {
                    let _ = l.msr_write(0x800 + (r >> 8) as u32 % 0x100, v >> (r % 64), now);
                }
                4 => {
                    let _ = l.msr_write(msr::IA32_APIC_BASE, v & 0xc00 | base::DEFAULT_ADDRESS, now);
                }
                5 => {
                    l.accept(v as u8, v & 0x100 != 0);
                    l.ack();
                }
                6 => {
                    let _ = l.msr_write(msr::IA32_TSC_DEADLINE, v >> (r % 64), now);
                    l.tick(now);
                }
                _ => {
                    let _ = l.timer_deadline();
                    while l.pop_event().is_some() {}
                    if v % 50 == 0 {
                        l.init_reset();
                    }
                }
            }
        }
        // Extremes of time and frequency.
        let mut l = VirtualLapic::new(u32::MAX, false, LapicClock { bus_hz: 0, tsc_hz: 0 });
        l.write_register(reg::SVR, SVR_ON, 0);
        l.write_register(reg::LVT_TIMER, lvt::TIMER_PERIODIC | 0x40, 0);
        l.write_register(reg::TIMER_DIVIDE, 0b1010, 0);
        l.write_register(reg::TIMER_INITIAL, u32::MAX, u64::MAX - 1);
        l.tick(u64::MAX);
        let _ = l.timer_deadline();
        let _ = l.read_register(reg::TIMER_CURRENT, 0);
    }
}
