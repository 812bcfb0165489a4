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
            Reg::Id
                | Reg::Version
                | Reg::Ppr
                | Reg::Ldr
                | Reg::Isr(_)
                | Reg::Tmr(_)
                | Reg::Irr(_)
                | Reg::TimerCurrent
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
        let ticks = u128::from(c.base_count)
            .saturating_add(u128::from(c.fired).saturating_mul(u128::from(self.initial)));
        Some(c.base_ns.saturating_add(self.ns_for(ticks)))
    }

    /// `next_expiry` with periodic interrupts spaced by the minimum period.
    fn deadline(&self, mode: TimerMode) -> Option<u64> {
        let next = self.next_expiry(mode)?;
        match (mode, self.last_fire_ns) {
            (TimerMode::Periodic, Some(last)) => {
                Some(next.max(last.saturating_add(MIN_PERIODIC_INTERRUPT_NS)))
            }
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
        self.countdown =
            (count != 0).then_some(Countdown { base_ns: now_ns, base_count: count, fired: 0 });
    }

    fn start(&mut self, initial: u32, now_ns: u64) {
        self.initial = initial;
        self.countdown =
            (initial != 0).then_some(Countdown { base_ns: now_ns, base_count: initial, fired: 0 });
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
}

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

    /// WRMSR IA32_APIC_BASE. Err (→ #GP) for reserved bits, a base other
    /// than 0xFEE0_0000, EXTD without EN, and the transitions §12.12.5
    /// forbids (x2APIC → xAPIC, disabled → x2APIC). The BSP bit is the
    /// hypervisor's and is kept whatever is written.
    pub fn set_apic_base(&mut self, value: u64) -> Result<(), ()> {
        let known = base::BSP | base::EXTD | base::ENABLE | base::ADDRESS_MASK;
        if value & !known != 0 || value & base::ADDRESS_MASK != base::DEFAULT_ADDRESS {
            return Err(());
        }
        let new = match (value & base::ENABLE != 0, value & base::EXTD != 0) {
            (false, false) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
            (false, true) => return Err(()),
        };
        match (self.mode, new) {
            (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic) => Err(()),
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

    /// RDMSR. Err → the caller injects #GP.
    pub fn msr_read(&mut self, msr: u32, now_ns: u64) -> Result<u64, ()> {
        match msr {
            msr::IA32_APIC_BASE => return Ok(self.apic_base()),
            msr::IA32_TSC_DEADLINE => return Ok(self.tsc_deadline(now_ns)),
            _ => {}
        }
        let reg = self.x2apic_reg(msr)?;
        if !reg.readable() {
            return Err(());
        }
        self.catch_up(now_ns);
        if reg == Reg::IcrLow {
            return Ok(u64::from(self.icr_high) << 32 | u64::from(self.icr_low));
        }
        Ok(u64::from(self.read_reg(reg, now_ns)))
    }

    /// WRMSR. Err → the caller injects #GP: x2APIC registers outside x2APIC
    /// mode, read-only or reserved registers, reserved bits set (§12.12.1.3),
    /// non-zero EOI/ESR writes.
    pub fn msr_write(&mut self, msr: u32, value: u64, now_ns: u64) -> Result<(), ()> {
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
            return Err(());
        }
        self.catch_up(now_ns);
        if reg == Reg::IcrLow {
            if value & icr::X2APIC_RESERVED != 0 {
                return Err(());
            }
            self.icr_low = value as u32 & icr::LOW_STORED;
            self.icr_high = (value >> 32) as u32;
            self.send_ipi();
            return Ok(());
        }
        let value = u32::try_from(value).map_err(|_| ())?;
        if value & !reg.x2apic_allowed_bits() != 0 {
            return Err(());
        }
        self.write_reg(reg, value, now_ns);
        Ok(())
    }

    /// The register behind an x2APIC MSR, if the APIC is in x2APIC mode and
    /// the register exists there.
    fn x2apic_reg(&self, msr: u32) -> Result<Reg, ()> {
        if self.mode != ApicMode::X2Apic || !(msr::X2APIC_MSR_BASE..=msr::X2APIC_MSR_LAST).contains(&msr) {
            return Err(());
        }
        let reg = Reg::decode((msr - msr::X2APIC_MSR_BASE) << 4).ok_or(())?;
        if reg.in_x2apic() {
            Ok(reg)
        } else {
            Err(())
        }
    }

    // ----- xAPIC MMIO interface -----

    /// The xAPIC page at `now_ns`, as an [`MmioDevice`].
    pub fn mmio(&mut self, now_ns: u64) -> LapicMmio<'_> {
        LapicMmio { lapic: self, now_ns }
    }

    /// An aligned 32-bit xAPIC register read. Reserved offsets read 0 and
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
        Some(v)
    }

    /// End of interrupt (§12.8.5): retires the highest in-service vector and
    /// returns it if it was level-triggered (the IOAPIC needs its EOI). An
    /// EOI register write does this and queues [`LapicEvent::LevelEoi`].
    pub fn eoi(&mut self) -> Option<u8> {
        let v = highest(&self.isr)?;
        set_bit(&mut self.isr, v, false);
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
            if entry & lvt::MASKED == 0 {
                let v = entry as u8;
                if v < FIRST_LEGAL_VECTOR {
                    self.signal_error(esr::RECEIVE_ILLEGAL_VECTOR);
                } else {
                    set_bit(&mut self.irr, v, true);
                    set_bit(&mut self.tmr, v, false);
                }
            }
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
        let trigger =
            if low & icr::TRIGGER_LEVEL != 0 { TriggerMode::Level } else { TriggerMode::Edge };
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
                let logical = low & icr::DEST_LOGICAL != 0;
                match (logical, x2, raw) {
                    (false, false, XAPIC_BROADCAST) | (_, true, X2APIC_BROADCAST) => {
                        Destination::AllIncludingSelf
                    }
                    (false, _, id) => Destination::Physical(id),
                    (true, _, mda) => Destination::Logical(mda),
                }
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
    /// globally disabled APIC receives nothing.
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
                    LogicalMode::Cluster => {
                        mda == XAPIC_BROADCAST || (mda >> 4 == lid >> 4 && mda & lid & 0xf != 0)
                    }
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
