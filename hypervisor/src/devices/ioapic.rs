//! A virtual IOAPIC: dom0's interrupt router for the ISA and PCI lines the
//! hypervisor forwards to it.
//!
//! Register behaviour follows the Intel 82093AA I/O APIC datasheet (cited as
//! "82093AA §x"), plus the EOI register at 0x40 that version-0x20 IOAPICs (ICH and
//! later) add and that Linux uses to end level-triggered interrupts when the
//! version says it is there.
//!
//! How the hypervisor drives it:
//! - [`IoApic::set_irq`] sets the *asserted* state of a pin. Polarity is the
//!   physical side's business: the hypervisor translates its own line state, so the
//!   guest's polarity bit is stored and read back but not applied.
//! - [`IoApic::eoi`] is called when the virtual LAPIC takes an EOI for a vector it
//!   received level-triggered (its TMR bit set); the guest can also write the EOI
//!   register, which does the same.
//! - Everything the device wants to send comes out of [`IoApic::pop_delivery`],
//!   whatever caused it (a pin, an EOI, the guest unmasking a pin): call it after
//!   each of the calls above and after every guest MMIO access, and hand each
//!   [`Delivery`] to the LAPIC model. A delivery sits in a per-pin slot until taken,
//!   and its pin's delivery-status bit reads 1 meanwhile (82093AA §3.2.4, "send
//!   pending"); a second edge on the same pin before then is merged into it, as a
//!   LAPIC's IRR would merge it.
//! - [`IoApic::take_eoied_pins`] tells which pins had their remote IRR cleared by the
//!   guest (EOI, or Linux's edge/level toggle), so a level line passed through from
//!   hardware can be unmasked or EOI'd on the physical IOAPIC. For such a line the
//!   usual pattern is: physical interrupt → `set_irq(pin, true)` then
//!   `set_irq(pin, false)` with the physical pin held masked; guest EOI → unmask it;
//!   if the device still asserts, the physical interrupt simply comes again.

use super::MmioDevice;

/// Where PCs put the first IOAPIC.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// The MMIO window decoded, from [`IOAPIC_BASE`].
pub const IOAPIC_MMIO_SIZE: u64 = 0x1000;
/// Input pins: 24, as on the 82093AA and the PC chipsets after it.
pub const IOAPIC_PINS: usize = 24;
/// The most pins an instance may have (`IoApic::with_pins`): dom0's has 24
/// for the machine's lines and more for the hypervisor's own (`vm::platform`).
pub const MAX_IOAPIC_PINS: usize = 32;
/// The version reported; 0x20 tells the guest the EOI register exists.
pub const IOAPIC_VERSION: u8 = 0x20;

// Direct (memory-mapped) registers, 82093AA §3.1 Table 1; all 32 bits wide.
const REG_IOREGSEL: u64 = 0x00;
const REG_IOWIN: u64 = 0x10;
/// EOI register of version-0x20 IOAPICs: writing a vector ends it on every pin that
/// carries it.
const REG_EOI: u64 = 0x40;
const DWORD_BYTES: u64 = 4;
const DWORD_ALIGN_MASK: u64 = !(DWORD_BYTES - 1);
/// IOREGSEL bits 7:0 select the register; bits 31:8 are reserved (82093AA §3.1.1).
const IOREGSEL_MASK: u32 = 0xff;
/// The vector of an EOI-register write sits in bits 7:0.
const EOI_VECTOR_MASK: u32 = 0xff;

// Indirect registers behind IOREGSEL/IOWIN, 82093AA §3.2 Table 2.
const IND_ID: u8 = 0x00;
const IND_VERSION: u8 = 0x01;
const IND_ARBITRATION: u8 = 0x02;
/// Redirection entry n: its low dword at 0x10 + 2n, its high dword at 0x11 + 2n.
const IND_REDIR_FIRST: u8 = 0x10;
const IND_REDIR_END: u8 = IND_REDIR_FIRST + 2 * MAX_IOAPIC_PINS as u8;

/// IOAPICID and IOAPICARB: a 4-bit ID in bits 27:24 (82093AA §3.2.1, §3.2.3).
const ID_SHIFT: u32 = 24;
const ID_MASK: u8 = 0x0f;
/// IOAPICVER: version in bits 7:0, maximum redirection entry in bits 23:16 (82093AA §3.2.2).
const VERSION_MAX_REDIR_SHIFT: u32 = 16;

/// Redirection table entry fields (82093AA §3.2.4).
mod rte {
    pub const VECTOR_MASK: u64 = 0xff;
    pub const DELIVERY_MODE_SHIFT: u32 = 8;
    pub const DELIVERY_MODE_MASK: u64 = 0b111;
    /// Destination mode: 0 physical, 1 logical.
    pub const DEST_LOGICAL: u64 = 1 << 11;
    /// Read-only: the interrupt is waiting to be accepted.
    pub const DELIVERY_STATUS: u64 = 1 << 12;
    /// Polarity: 1 active low. Stored only; see the module documentation.
    #[cfg(test)]
    pub const POLARITY_LOW: u64 = 1 << 13;
    /// Read-only: a level interrupt was accepted and its EOI has not come back.
    pub const REMOTE_IRR: u64 = 1 << 14;
    /// Trigger mode: 0 edge, 1 level.
    pub const TRIGGER_LEVEL: u64 = 1 << 15;
    pub const MASKED: u64 = 1 << 16;
    pub const DESTINATION_SHIFT: u32 = 56;
    pub const READ_ONLY: u64 = DELIVERY_STATUS | REMOTE_IRR;
    /// After reset every pin is masked (82093AA §3.2.4, bit 16).
    pub const RESET: u64 = MASKED;
    pub const DWORD_BITS: u32 = 32;
    pub const LOW_DWORD: u64 = 0xffff_ffff;
}

/// Delivery mode of a redirection entry (82093AA §3.2.4, bits 10:8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    ExtInt,
    /// 0b011 and 0b110: reserved encodings, passed on as programmed.
    Reserved(u8),
}

impl DeliveryMode {
    const FIXED: u8 = 0b000;
    const LOWEST_PRIORITY: u8 = 0b001;
    const SMI: u8 = 0b010;
    const NMI: u8 = 0b100;
    const INIT: u8 = 0b101;
    const EXTINT: u8 = 0b111;

    fn from_bits(bits: u8) -> Self {
        match bits {
            Self::FIXED => Self::Fixed,
            Self::LOWEST_PRIORITY => Self::LowestPriority,
            Self::SMI => Self::Smi,
            Self::NMI => Self::Nmi,
            Self::INIT => Self::Init,
            Self::EXTINT => Self::ExtInt,
            other => Self::Reserved(other),
        }
    }

    /// SMI, NMI, INIT and ExtINT are edge-only: NMI and INIT are "treated as edge
    /// triggered even if programmed otherwise", SMI and ExtINT require edge (82093AA
    /// §3.2.4). So they never set remote IRR.
    fn is_edge_only(self) -> bool {
        matches!(self, Self::Smi | Self::Nmi | Self::Init | Self::ExtInt)
    }
}

/// Destination mode of a redirection entry (82093AA §3.2.4, bit 11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestinationMode {
    /// `destination` is an APIC ID.
    Physical,
    /// `destination` is a logical set matched against each LAPIC's LDR/DFR.
    Logical,
}

/// Trigger mode an interrupt is delivered with; the LAPIC records it in its TMR and
/// must call [`IoApic::eoi`] on EOI of a level-triggered vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TriggerMode {
    Edge,
    Level,
}

/// One interrupt message for the local APICs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The IOAPIC pin it came from.
    pub pin: u8,
    pub vector: u8,
    /// Bits 63:56 of the entry: an APIC ID or a logical destination set.
    pub destination: u8,
    pub destination_mode: DestinationMode,
    pub delivery_mode: DeliveryMode,
    pub trigger_mode: TriggerMode,
}

/// An IOAPIC of 24 pins (or up to 32), version 0x20. See the module
/// documentation for the API contract.
#[derive(Clone, Debug)]
pub struct IoApic {
    id: u8,
    /// Input pins (its version register says so).
    pins: u8,
    ioregsel: u8,
    redirection: [u64; MAX_IOAPIC_PINS],
    /// Pin n asserted, as last set by `set_irq`.
    asserted: u32,
    /// Deliveries raised and not yet taken, one slot per pin.
    queued: [Option<Delivery>; MAX_IOAPIC_PINS],
    /// Pins whose remote IRR the guest cleared since the last `take_eoied_pins`.
    eoied: u32,
}

impl IoApic {
    /// An IOAPIC after reset with APIC ID `id` (4 bits; higher bits are dropped, as
    /// the ID register holds no more).
    pub const fn new(id: u8) -> Self {
        Self::with_pins(id, IOAPIC_PINS as u8)
    }

    /// The same with `pins` input pins (1 to `MAX_IOAPIC_PINS`, clamped).
    pub const fn with_pins(id: u8, pins: u8) -> Self {
        let pins = if pins == 0 { 1 } else if pins as usize > MAX_IOAPIC_PINS { MAX_IOAPIC_PINS as u8 } else { pins };
        Self {
            id: id & ID_MASK,
            pins,
            ioregsel: 0,
            redirection: [rte::RESET; MAX_IOAPIC_PINS],
            asserted: 0,
            queued: [None; MAX_IOAPIC_PINS],
            eoied: 0,
        }
    }

    /// Its input pins.
    pub const fn pins(&self) -> u8 {
        self.pins
    }

    /// The APIC ID, as the guest last programmed it.
    pub const fn id(&self) -> u8 {
        self.id
    }

    /// Drives input `pin` (asserted or not). Edge-triggered pins deliver on the
    /// rising edge if unmasked, and an edge on a masked pin is lost (82093AA §3.2.4,
    /// bit 16). Level-triggered pins deliver while asserted, unmasked and with remote
    /// IRR clear. Pins beyond the last are ignored.
    pub fn set_irq(&mut self, pin: u8, asserted: bool) {
        let Some(index) = self.pin_index(pin) else { return };
        let bit = 1 << index;
        let was_asserted = self.asserted & bit != 0;
        if !asserted {
            self.asserted &= !bit;
            return;
        }
        self.asserted |= bit;
        if self.is_level(index) || !was_asserted {
            self.try_deliver(index);
        }
    }

    /// End of interrupt for `vector`: clears remote IRR on every pin that carries it,
    /// and delivers again from a level-triggered pin that is still asserted.
    pub fn eoi(&mut self, vector: u8) {
        for index in 0..usize::from(self.pins) {
            let entry = self.redirection[index];
            if entry & rte::VECTOR_MASK != u64::from(vector) || entry & rte::REMOTE_IRR == 0 {
                continue;
            }
            self.clear_remote_irr(index);
            if self.is_level(index) && self.asserted & (1 << index) != 0 {
                self.try_deliver(index);
            }
        }
    }

    /// The next interrupt to hand to the local APICs, lowest pin first.
    pub fn pop_delivery(&mut self) -> Option<Delivery> {
        self.queued.iter_mut().find_map(Option::take)
    }

    /// Pins (bit n = pin n) whose remote IRR the guest cleared since the last call.
    pub fn take_eoied_pins(&mut self) -> u32 {
        core::mem::take(&mut self.eoied)
    }

    /// Level pins asserted whose interrupt is still in service (remote IRR
    /// set): each waits for the guest's EOI. Bit n = pin n.
    pub fn in_service_pins(&self) -> u32 {
        (0..usize::from(self.pins))
            .filter(|&i| self.is_level(i) && self.asserted & (1 << i) != 0 && self.redirection[i] & rte::REMOTE_IRR != 0)
            .fold(0, |m, i| m | 1 << i)
    }

    /// Redirection entry of `pin` as the guest reads it.
    pub fn redirection_entry(&self, pin: u8) -> Option<u64> {
        let index = self.pin_index(pin)?;
        let pending = if self.queued[index].is_some() { rte::DELIVERY_STATUS } else { 0 };
        Some(self.redirection[index] | pending)
    }

    fn is_level(&self, index: usize) -> bool {
        let entry = self.redirection[index];
        entry & rte::TRIGGER_LEVEL != 0 && !delivery_mode(entry).is_edge_only()
    }

    fn clear_remote_irr(&mut self, index: usize) {
        self.redirection[index] &= !rte::REMOTE_IRR;
        self.eoied |= 1 << index;
    }

    /// Sends from pin `index` unless it is masked or a level interrupt from it is
    /// still in service.
    fn try_deliver(&mut self, index: usize) {
        let entry = self.redirection[index];
        if entry & rte::MASKED != 0 {
            return;
        }
        let level = self.is_level(index);
        if level {
            if entry & rte::REMOTE_IRR != 0 {
                return;
            }
            self.redirection[index] |= rte::REMOTE_IRR;
        }
        self.queued[index] = Some(self.delivery_for(index));
    }

    /// The interrupt message pin `index`'s entry sends.
    fn delivery_for(&self, index: usize) -> Delivery {
        let entry = self.redirection[index];
        let level = self.is_level(index);
        Delivery {
            pin: index as u8,
            vector: (entry & rte::VECTOR_MASK) as u8,
            destination: (entry >> rte::DESTINATION_SHIFT) as u8,
            destination_mode: if entry & rte::DEST_LOGICAL != 0 {
                DestinationMode::Logical
            } else {
                DestinationMode::Physical
            },
            delivery_mode: delivery_mode(entry),
            trigger_mode: if level { TriggerMode::Level } else { TriggerMode::Edge },
        }
    }

    fn read_indirect(&self) -> u32 {
        match self.ioregsel {
            IND_ID | IND_ARBITRATION => u32::from(self.id) << ID_SHIFT,
            IND_VERSION => u32::from(IOAPIC_VERSION) | ((u32::from(self.pins) - 1) << VERSION_MAX_REDIR_SHIFT),
            sel @ IND_REDIR_FIRST..IND_REDIR_END if self.decodes(sel) => {
                let (index, high) = redir_slot(sel);
                let entry = self.redirection_entry(index as u8).unwrap_or_default();
                if high {
                    (entry >> rte::DWORD_BITS) as u32
                } else {
                    entry as u32
                }
            }
            // Nothing decodes there; reads float high as KVM models it.
            _ => u32::MAX,
        }
    }

    fn write_indirect(&mut self, value: u32) {
        match self.ioregsel {
            IND_ID => self.id = (value >> ID_SHIFT) as u8 & ID_MASK,
            // The version and arbitration ID are read-only.
            IND_VERSION | IND_ARBITRATION => {}
            sel @ IND_REDIR_FIRST..IND_REDIR_END if self.decodes(sel) => {
                let (index, high) = redir_slot(sel);
                self.write_redirection(index, high, value);
            }
            _ => {}
        }
    }

    fn write_redirection(&mut self, index: usize, high: bool, value: u32) {
        let old = self.redirection[index];
        let value = u64::from(value);
        let mut entry = if high {
            (old & rte::LOW_DWORD) | (value << rte::DWORD_BITS)
        } else {
            (old & !rte::LOW_DWORD) | value
        };
        entry = (entry & !rte::READ_ONLY) | (old & rte::READ_ONLY);
        self.redirection[index] = entry;
        // Reprogramming a pin as edge clears remote IRR: Linux and Xen end a level
        // interrupt this way on IOAPICs without an EOI register (as KVM notes).
        if entry & rte::TRIGGER_LEVEL == 0 && old & rte::REMOTE_IRR != 0 {
            self.clear_remote_irr(index);
        }
        // A level line that is asserted delivers as soon as it may: unmasked, or
        // switched from edge to level.
        if self.is_level(index) && self.asserted & (1 << index) != 0 {
            self.try_deliver(index);
        }
    }

    /// The 32-bit direct register at dword-aligned `offset`.
    fn read_dword(&self, offset: u64) -> u32 {
        match offset {
            REG_IOREGSEL => u32::from(self.ioregsel),
            REG_IOWIN => self.read_indirect(),
            // The EOI register is write-only; the rest of the page is reserved.
            _ => 0,
        }
    }

    /// A write of the bytes selected by `lanes` (a byte mask) into the direct register
    /// at dword-aligned `offset`; the other bytes keep their value.
    fn write_dword(&mut self, offset: u64, value: u32, lanes: u32) {
        let merge = |old: u32| (old & !lanes) | (value & lanes);
        match offset {
            REG_IOREGSEL => self.ioregsel = (merge(u32::from(self.ioregsel)) & IOREGSEL_MASK) as u8,
            REG_IOWIN => {
                let merged = merge(self.read_indirect());
                self.write_indirect(merged);
            }
            // Only a write that carries the vector byte is an EOI.
            REG_EOI if lanes & EOI_VECTOR_MASK != 0 => self.eoi((value & EOI_VECTOR_MASK) as u8),
            _ => {}
        }
    }
}

/// Its state as `oxen_abi::platform_state`'s `IOAPIC` words.
pub type IoApicState = [u64; oxen_abi::platform_state::IOAPIC_FIELDS.len()];

impl IoApic {
    /// Its state, for save and migration.
    pub fn save(&self) -> IoApicState {
        let mut w = [0u64; oxen_abi::platform_state::IOAPIC_FIELDS.len()];
        let queued = self.queued.iter().enumerate().filter(|(_, q)| q.is_some()).fold(0u32, |m, (i, _)| m | 1 << i);
        w[..6].copy_from_slice(&[
            self.id.into(),
            self.ioregsel.into(),
            self.pins.into(),
            self.asserted.into(),
            queued.into(),
            self.eoied.into(),
        ]);
        w[6..6 + usize::from(self.pins)].copy_from_slice(&self.redirection[..usize::from(self.pins)]);
        w
    }

    /// Takes a state `save` gave, on an IOAPIC with as many pins; refuses
    /// (and keeps its own) one it could not have been in.
    pub fn restore(&mut self, w: &IoApicState) -> Result<(), &'static str> {
        let pins = usize::from(self.pins);
        let pin_bits = if pins == 32 { u64::from(u32::MAX) } else { (1u64 << pins) - 1 };
        if w[2] != u64::from(self.pins) {
            return Err("IOAPIC: another pin count");
        }
        if w[0] > u64::from(ID_MASK) || w[1] > u64::from(IOREGSEL_MASK) {
            return Err("IOAPIC: ID or IOREGSEL out of range");
        }
        if w[3..6].iter().any(|&m| m & !pin_bits != 0) {
            return Err("IOAPIC: a pin bit past its pins");
        }
        let entries = &w[6..6 + pins];
        if entries.iter().any(|e| e & rte::DELIVERY_STATUS != 0) || w[6 + pins..].iter().any(|&e| e != 0) {
            return Err("IOAPIC: a redirection entry it could not hold");
        }
        self.id = w[0] as u8;
        self.ioregsel = w[1] as u8;
        self.asserted = w[3] as u32;
        self.eoied = w[5] as u32;
        self.redirection[..pins].copy_from_slice(entries);
        for i in 0..pins {
            self.queued[i] = (w[4] & (1 << i) != 0).then(|| self.delivery_for(i));
        }
        Ok(())
    }
}

impl IoApic {
    fn pin_index(&self, pin: u8) -> Option<usize> {
        (pin < self.pins).then_some(usize::from(pin))
    }

    /// Whether indirect register `sel` is one of its pins' redirection entries.
    fn decodes(&self, sel: u8) -> bool {
        sel < IND_REDIR_FIRST + 2 * self.pins
    }
}

/// Watches for level pins that stay in service (asserted, remote IRR set) far
/// longer than any interrupt handler runs: a lost delivery or a lost EOI
/// leaves one so for good, and whatever waits on that line (dom0's event
/// line: every device model) waits with it. Says each such stretch once.
#[derive(Clone, Debug, Default)]
pub struct StuckPins {
    /// Since when pin n has been in service (0: it is not).
    since: [u64; MAX_IOAPIC_PINS],
    /// Pins already reported for their current stretch.
    reported: u32,
}

impl StuckPins {
    /// In service for longer than this: five seconds, a thousand of Linux's
    /// ticks, while a handler runs in microseconds.
    pub const LIMIT_NS: u64 = 5_000_000_000;

    /// Takes the pins in service now (`IoApic::in_service_pins`); returns
    /// those in service for longer than `LIMIT_NS` and not reported yet.
    pub fn update(&mut self, in_service: u32, now: u64) -> u32 {
        let mut stuck = 0;
        for (i, since) in self.since.iter_mut().enumerate() {
            let bit = 1 << i;
            if in_service & bit == 0 {
                *since = 0;
                self.reported &= !bit;
                continue;
            }
            if *since == 0 {
                *since = now.max(1);
            } else if now.saturating_sub(*since) > Self::LIMIT_NS && self.reported & bit == 0 {
                self.reported |= bit;
                stuck |= bit;
            }
        }
        stuck
    }
}

fn delivery_mode(entry: u64) -> DeliveryMode {
    DeliveryMode::from_bits(((entry >> rte::DELIVERY_MODE_SHIFT) & rte::DELIVERY_MODE_MASK) as u8)
}

/// The pin and half (high dword?) an indirect redirection-table index selects.
fn redir_slot(sel: u8) -> (usize, bool) {
    let slot = sel - IND_REDIR_FIRST;
    (usize::from(slot / 2), slot % 2 == 1)
}

/// Accesses of 1 to 8 bytes anywhere in the page work byte lane by byte lane on the
/// 32-bit registers, so a byte write to IOREGSEL or a 64-bit read of IOWIN behaves as
/// on a bus with byte enables. Other sizes and accesses past the page read as 0 and
/// write nothing.
fn access_is_valid(offset: u64, size: u8) -> bool {
    (1..=8).contains(&size) && offset.checked_add(u64::from(size)).is_some_and(|end| end <= IOAPIC_MMIO_SIZE)
}

const BYTE_BITS: u64 = 8;
const BYTE_MASK: u64 = 0xff;

impl MmioDevice for IoApic {
    fn mmio_read(&mut self, offset: u64, size: u8) -> u64 {
        if !access_is_valid(offset, size) {
            return 0;
        }
        (0..u64::from(size)).fold(0, |acc, i| {
            let addr = offset + i;
            let dword = self.read_dword(addr & DWORD_ALIGN_MASK);
            let byte = (u64::from(dword) >> ((addr % DWORD_BYTES) * BYTE_BITS)) & BYTE_MASK;
            acc | (byte << (i * BYTE_BITS))
        })
    }

    fn mmio_write(&mut self, offset: u64, size: u8, value: u64) {
        if !access_is_valid(offset, size) {
            return;
        }
        let end = offset + u64::from(size);
        let mut dword = offset & DWORD_ALIGN_MASK;
        while dword < end {
            let (mut bytes, mut lanes) = (0u32, 0u32);
            for lane in 0..DWORD_BYTES {
                let addr = dword + lane;
                if (offset..end).contains(&addr) {
                    let byte = (value >> ((addr - offset) * BYTE_BITS)) & BYTE_MASK;
                    bytes |= (byte as u32) << (lane * BYTE_BITS);
                    lanes |= (BYTE_MASK as u32) << (lane * BYTE_BITS);
                }
            }
            self.write_dword(dword, bytes, lanes);
            dword += DWORD_BYTES;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEVEL: u64 = rte::TRIGGER_LEVEL;
    const MASKED: u64 = rte::MASKED;

    /// Linux's `io_apic_read`: writel(reg, index); readl(data).
    fn io_apic_read(a: &mut IoApic, reg: u8) -> u32 {
        a.mmio_write(REG_IOREGSEL, 4, u64::from(reg));
        a.mmio_read(REG_IOWIN, 4) as u32
    }
    /// Linux's `io_apic_write`.
    fn io_apic_write(a: &mut IoApic, reg: u8, value: u32) {
        a.mmio_write(REG_IOREGSEL, 4, u64::from(reg));
        a.mmio_write(REG_IOWIN, 4, u64::from(value));
    }
    /// Linux's `__ioapic_write_entry`: high dword first, so the destination is in
    /// place before the low dword may unmask the pin.
    fn write_entry(a: &mut IoApic, pin: u8, entry: u64) {
        io_apic_write(a, IND_REDIR_FIRST + 1 + 2 * pin, (entry >> 32) as u32);
        io_apic_write(a, IND_REDIR_FIRST + 2 * pin, entry as u32);
    }
    fn read_entry(a: &mut IoApic, pin: u8) -> u64 {
        let low = io_apic_read(a, IND_REDIR_FIRST + 2 * pin);
        let high = io_apic_read(a, IND_REDIR_FIRST + 1 + 2 * pin);
        u64::from(low) | (u64::from(high) << 32)
    }
    fn entry(vector: u8, destination: u8) -> u64 {
        u64::from(vector) | (u64::from(destination) << rte::DESTINATION_SHIFT)
    }
    fn fixed(pin: u8, vector: u8, destination: u8, trigger_mode: TriggerMode) -> Delivery {
        Delivery {
            pin,
            vector,
            destination,
            destination_mode: DestinationMode::Physical,
            delivery_mode: DeliveryMode::Fixed,
            trigger_mode,
        }
    }

    #[test]
    fn saved_state_restores_entries_lines_and_a_waiting_delivery() {
        let mut a = IoApic::new(1);
        write_entry(&mut a, 4, entry(0x24, 1));
        write_entry(&mut a, 9, entry(0x39, 0) | LEVEL);
        a.set_irq(9, true);
        a.set_irq(4, true);
        a.mmio_write(REG_IOREGSEL, 4, u64::from(IND_REDIR_FIRST + 8));
        let saved = a.save();
        let mut b = IoApic::new(0);
        assert_eq!(b.restore(&saved), Ok(()));
        assert_eq!(b.save(), saved);
        for pin in 0..24 {
            assert_eq!(read_entry(&mut b, pin), read_entry(&mut a, pin), "pin {pin}");
        }
        assert_eq!(b.pop_delivery(), Some(fixed(4, 0x24, 1, TriggerMode::Edge)));
        assert_eq!(b.pop_delivery(), Some(fixed(9, 0x39, 0, TriggerMode::Level)));
        assert_eq!(b.pop_delivery(), None);
        // Still asserted and in service: the EOI delivers again.
        b.eoi(0x39);
        assert_eq!(b.pop_delivery(), Some(fixed(9, 0x39, 0, TriggerMode::Level)));
    }

    #[test]
    fn a_state_it_could_not_hold_is_refused_and_changes_nothing() {
        let a = IoApic::new(1);
        let good = a.save();
        let mut bad = [good; 5];
        bad[0][2] = 32; // another pin count
        bad[1][3] = 1 << 30; // a line past its pins
        bad[2][6] |= rte::DELIVERY_STATUS;
        bad[3][6 + 30] = 1; // an entry past its pins
        bad[4][1] = 0x100; // IOREGSEL
        let mut b = IoApic::new(3);
        let before = b.save();
        for w in &bad {
            assert!(b.restore(w).is_err());
            assert_eq!(b.save(), before);
        }
        assert_eq!(IoApic::with_pins(0, 32).restore(&good), Err("IOAPIC: another pin count"));
    }

    #[test]
    fn identification_registers_as_linux_reads_them() {
        let mut a = IoApic::new(2);
        let ver = io_apic_read(&mut a, IND_VERSION);
        assert_eq!(ver & 0xff, 0x20, "version 0x20: Linux then uses the EOI register");
        assert_eq!((ver >> 16) & 0xff, 23, "max redirection entry: 24 pins");
        assert_eq!(io_apic_read(&mut a, IND_ID), 2 << 24);
        assert_eq!(io_apic_read(&mut a, IND_ARBITRATION), 2 << 24);
        // ID is writable in bits 27:24; VER and ARB are not.
        io_apic_write(&mut a, IND_ID, 0xffff_ffff);
        assert_eq!(io_apic_read(&mut a, IND_ID), 0x0f << 24);
        assert_eq!(a.id(), 0x0f);
        io_apic_write(&mut a, IND_VERSION, 0);
        io_apic_write(&mut a, IND_ARBITRATION, 0);
        assert_eq!(io_apic_read(&mut a, IND_VERSION), ver);
        assert_eq!(io_apic_read(&mut a, IND_ARBITRATION), 0x0f << 24);
        // IOREGSEL reads back its 8 bits.
        a.mmio_write(REG_IOREGSEL, 4, 0xffff_ff13);
        assert_eq!(a.mmio_read(REG_IOREGSEL, 4), 0x13);
    }

    #[test]
    fn every_pin_starts_masked_and_entries_read_back() {
        let mut a = IoApic::new(0);
        for pin in 0..IOAPIC_PINS as u8 {
            assert_eq!(read_entry(&mut a, pin), MASKED);
        }
        let programmed = entry(0x31, 0x0a) | LEVEL | rte::POLARITY_LOW | rte::DEST_LOGICAL | (0b001 << 8);
        write_entry(&mut a, 5, programmed);
        assert_eq!(read_entry(&mut a, 5), programmed);
        assert_eq!(a.redirection_entry(5), Some(programmed));
        assert_eq!(a.redirection_entry(IOAPIC_PINS as u8), None);
    }

    #[test]
    fn a_32_pin_instance_says_so_and_decodes_its_pins_only() {
        let mut a = IoApic::with_pins(0, 32);
        assert_eq!((io_apic_read(&mut a, IND_VERSION) >> 16) & 0xff, 31);
        let programmed = entry(0x41, 0) | LEVEL;
        write_entry(&mut a, 24, programmed);
        assert_eq!(read_entry(&mut a, 24), programmed);
        a.set_irq(24, true);
        assert_eq!(a.pop_delivery().map(|d| d.vector), Some(0x41));
        assert_eq!(a.redirection_entry(32), None);
        // 24 pins: entry 24 does not decode (reads float high, writes vanish).
        let mut b = IoApic::new(0);
        write_entry(&mut b, 24, programmed);
        assert_eq!(b.redirection_entry(24), None);
        assert_eq!(io_apic_read(&mut b, IND_REDIR_FIRST + 48), u32::MAX);
        assert_eq!(IoApic::with_pins(0, 200).pins(), 32);
        assert_eq!(IoApic::with_pins(0, 0).pins(), 1);
    }

    #[test]
    fn read_only_bits_ignore_guest_writes() {
        let mut a = IoApic::new(0);
        write_entry(&mut a, 3, entry(0x40, 0) | LEVEL | rte::READ_ONLY);
        assert_eq!(read_entry(&mut a, 3) & rte::READ_ONLY, 0);
        // With remote IRR set, writing 0 there does not clear it while level.
        a.set_irq(3, true);
        a.pop_delivery();
        write_entry(&mut a, 3, entry(0x40, 0) | LEVEL);
        assert_eq!(read_entry(&mut a, 3) & rte::REMOTE_IRR, rte::REMOTE_IRR);
    }

    #[test]
    fn edge_pin_delivers_on_rising_edges_only() {
        let mut a = IoApic::new(0);
        write_entry(&mut a, 4, entry(0x24, 1));
        a.set_irq(4, true);
        assert_eq!(a.pop_delivery(), Some(fixed(4, 0x24, 1, TriggerMode::Edge)));
        a.set_irq(4, true);
        assert_eq!(a.pop_delivery(), None, "no edge while held high");
        a.set_irq(4, false);
        assert_eq!(a.pop_delivery(), None);
        a.set_irq(4, true);
        assert!(a.pop_delivery().is_some());
        assert_eq!(read_entry(&mut a, 4) & rte::REMOTE_IRR, 0, "edge never sets remote IRR");
    }

    #[test]
    fn edge_on_a_masked_pin_is_lost() {
        let mut a = IoApic::new(0);
        write_entry(&mut a, 1, entry(0x21, 0) | MASKED);
        a.set_irq(1, true);
        write_entry(&mut a, 1, entry(0x21, 0));
        assert_eq!(a.pop_delivery(), None);
        a.set_irq(1, false);
        a.set_irq(1, true);
        assert!(a.pop_delivery().is_some());
    }

    #[test]
    fn undrained_edges_merge_and_show_as_delivery_status() {
        let mut a = IoApic::new(0);
        write_entry(&mut a, 4, entry(0x24, 0));
        a.set_irq(4, true);
        a.set_irq(4, false);
        a.set_irq(4, true);
        assert_ne!(read_entry(&mut a, 4) & rte::DELIVERY_STATUS, 0, "send pending");
        assert!(a.pop_delivery().is_some());
        assert_eq!(a.pop_delivery(), None);
        assert_eq!(read_entry(&mut a, 4) & rte::DELIVERY_STATUS, 0);
    }

    #[test]
    fn level_pin_holds_remote_irr_until_eoi_and_redelivers_while_asserted() {
        let mut a = IoApic::new(0);
        write_entry(&mut a, 16, entry(0x51, 3) | LEVEL);
        a.set_irq(16, true);
        assert_eq!(a.pop_delivery(), Some(fixed(16, 0x51, 3, TriggerMode::Level)));
        assert_ne!(read_entry(&mut a, 16) & rte::REMOTE_IRR, 0);
        // Still asserted, but in service: nothing more.
        a.set_irq(16, true);
        assert_eq!(a.pop_delivery(), None);
        // EOI for another vector changes nothing.
        a.eoi(0x52);
        assert_eq!(a.pop_delivery(), None);
        assert_eq!(a.take_eoied_pins(), 0);
        // EOI while still asserted: delivered again.
        a.eoi(0x51);
        assert_eq!(a.take_eoied_pins(), 1 << 16);
        assert_eq!(a.pop_delivery(), Some(fixed(16, 0x51, 3, TriggerMode::Level)));
        // Deasserted, then EOI: remote IRR clears, nothing more.
        a.set_irq(16, false);
        a.eoi(0x51);
        assert_eq!(a.pop_delivery(), None);
        assert_eq!(read_entry(&mut a, 16) & rte::REMOTE_IRR, 0);
        assert_eq!(a.take_eoied_pins(), 1 << 16);
    }

    #[test]
    fn a_level_pin_in_service_for_too_long_is_told_once_per_stretch() {
        let mut a = IoApic::new(0);
        write_entry(&mut a, 9, entry(0x39, 0) | rte::TRIGGER_LEVEL);
        a.set_irq(9, true);
        assert_eq!(a.pop_delivery().map(|d| d.vector), Some(0x39));
        assert_eq!(a.in_service_pins(), 1 << 9, "asserted, remote IRR set");
        let mut w = StuckPins::default();
        let s = StuckPins::LIMIT_NS;
        assert_eq!(w.update(a.in_service_pins(), 1000), 0);
        assert_eq!(w.update(a.in_service_pins(), 1000 + s), 0, "not longer than the limit yet");
        assert_eq!(w.update(a.in_service_pins(), 1001 + s), 1 << 9);
        assert_eq!(w.update(a.in_service_pins(), 1000 + 3 * s), 0, "once");
        // The EOI ends the stretch (the line is still up: delivered again).
        a.eoi(0x39);
        a.set_irq(9, false);
        assert_eq!(a.in_service_pins(), 0);
        assert_eq!(w.update(a.in_service_pins(), 1000 + 4 * s), 0);
        a.set_irq(9, true);
        assert_eq!(w.update(a.in_service_pins(), 1000 + 5 * s), 0);
        assert_eq!(w.update(a.in_service_pins(), 1001 + 6 * s), 1 << 9, "a new stretch is told again");
        // Edge pins never count.
        let mut b = IoApic::new(0);
        write_entry(&mut b, 4, entry(0x34, 0));
        b.set_irq(4, true);
        assert_eq!(b.in_service_pins(), 0);
    }

    #[test]
    fn level_line_unmasked_while_asserted_delivers() {
        let mut a = IoApic::new(0);
        write_entry(&mut a, 9, entry(0x39, 0) | LEVEL | MASKED);
        a.set_irq(9, true);
        assert_eq!(a.pop_delivery(), None);
        write_entry(&mut a, 9, entry(0x39, 0) | LEVEL);
        assert_eq!(a.pop_delivery(), Some(fixed(9, 0x39, 0, TriggerMode::Level)));
        // Masked again, EOI'd while asserted: held back until unmasked.
        write_entry(&mut a, 9, entry(0x39, 0) | LEVEL | MASKED);
        a.eoi(0x39);
        assert_eq!(a.pop_delivery(), None);
        write_entry(&mut a, 9, entry(0x39, 0) | LEVEL);
        assert!(a.pop_delivery().is_some());
    }

    #[test]
    fn eoi_register_ends_a_level_interrupt_like_linux_io_apic_eoi() {
        let mut a = IoApic::new(0);
        write_entry(&mut a, 20, entry(0x61, 0) | LEVEL);
        write_entry(&mut a, 21, entry(0x61, 0) | LEVEL);
        a.set_irq(20, true);
        a.set_irq(21, true);
        assert_eq!(a.pop_delivery().map(|d| d.pin), Some(20));
        assert_eq!(a.pop_delivery().map(|d| d.pin), Some(21));
        a.set_irq(20, false);
        // writel(vector, &io_apic->eoi): every pin with the vector is ended.
        a.mmio_write(REG_EOI, 4, 0x61);
        assert_eq!(a.take_eoied_pins(), (1 << 20) | (1 << 21));
        assert_eq!(a.pop_delivery().map(|d| d.pin), Some(21), "21 still asserted");
        assert_eq!(a.pop_delivery(), None);
        // A byte write of the vector works too; one that misses the vector byte does not.
        a.mmio_write(REG_EOI + 1, 1, 0x61);
        assert_eq!(a.take_eoied_pins(), 0);
        a.mmio_write(REG_EOI, 1, 0x61);
        assert_eq!(a.take_eoied_pins(), 1 << 21);
        assert_eq!(a.mmio_read(REG_EOI, 4), 0, "write-only");
    }

    #[test]
    fn edge_level_toggle_clears_remote_irr_for_old_ioapics() {
        // Linux's __eoi_ioapic_pin for IOAPICs below version 0x20: mask and set
        // edge, then restore the entry.
        let mut a = IoApic::new(0);
        let level = entry(0x70, 0) | LEVEL;
        write_entry(&mut a, 11, level);
        a.set_irq(11, true);
        a.pop_delivery();
        a.set_irq(11, false);
        io_apic_write(&mut a, IND_REDIR_FIRST + 22, (entry(0x70, 0) | MASKED) as u32);
        assert_eq!(read_entry(&mut a, 11) & rte::REMOTE_IRR, 0);
        io_apic_write(&mut a, IND_REDIR_FIRST + 22, level as u32);
        assert_eq!(a.take_eoied_pins(), 1 << 11);
        assert_eq!(a.pop_delivery(), None);
    }

    #[test]
    fn edge_to_level_switch_while_asserted_delivers() {
        let mut a = IoApic::new(0);
        write_entry(&mut a, 7, entry(0x27, 0));
        a.set_irq(7, true);
        a.pop_delivery();
        write_entry(&mut a, 7, entry(0x27, 0) | LEVEL);
        assert_eq!(a.pop_delivery().map(|d| d.trigger_mode), Some(TriggerMode::Level));
    }

    #[test]
    fn delivery_fields_decode_every_mode() {
        let mut a = IoApic::new(0);
        let cases = [
            (0b000, DeliveryMode::Fixed),
            (0b001, DeliveryMode::LowestPriority),
            (0b010, DeliveryMode::Smi),
            (0b011, DeliveryMode::Reserved(0b011)),
            (0b100, DeliveryMode::Nmi),
            (0b101, DeliveryMode::Init),
            (0b110, DeliveryMode::Reserved(0b110)),
            (0b111, DeliveryMode::ExtInt),
        ];
        for (bits, mode) in cases {
            // Programmed level with logical destination 0xff.
            write_entry(&mut a, 2, entry(0x30, 0xff) | LEVEL | rte::DEST_LOGICAL | (bits << 8));
            a.set_irq(2, true);
            let d = a.pop_delivery().expect("delivered");
            assert_eq!(d.delivery_mode, mode);
            assert_eq!((d.destination, d.destination_mode), (0xff, DestinationMode::Logical));
            let edge_only = matches!(mode, DeliveryMode::Smi | DeliveryMode::Nmi | DeliveryMode::Init | DeliveryMode::ExtInt);
            let expected = if edge_only { TriggerMode::Edge } else { TriggerMode::Level };
            assert_eq!(d.trigger_mode, expected, "{mode:?}");
            assert_eq!(read_entry(&mut a, 2) & rte::REMOTE_IRR != 0, !edge_only);
            a.set_irq(2, false);
            a.eoi(0x30);
        }
    }

    #[test]
    fn partial_and_wide_accesses_use_byte_lanes() {
        let mut a = IoApic::new(0);
        // A byte write to IOREGSEL, then 16-bit halves of the window.
        a.mmio_write(REG_IOREGSEL, 1, u64::from(IND_REDIR_FIRST));
        a.mmio_write(REG_IOWIN, 2, 0x0045);
        assert_eq!(a.mmio_read(REG_IOWIN, 4), u64::from(MASKED as u32 | 0x45));
        a.mmio_write(REG_IOWIN + 2, 2, 0);
        assert_eq!(a.mmio_read(REG_IOWIN, 4), 0x45, "upper half written: unmasked");
        assert_eq!(a.mmio_read(REG_IOWIN + 1, 1), 0);
        assert_eq!(a.mmio_read(REG_IOWIN, 1), 0x45);
        // A 64-bit read of IOWIN: the register, then the reserved dword.
        assert_eq!(a.mmio_read(REG_IOWIN, 8), 0x45);
        // A 64-bit write at IOREGSEL selects with its low dword.
        a.mmio_write(REG_IOREGSEL, 8, 0xdead_beef_0000_0001);
        assert_eq!(a.mmio_read(REG_IOWIN, 4), 0x0017_0020);
    }

    #[test]
    fn unknown_pins_registers_offsets_and_sizes_never_panic() {
        let mut a = IoApic::new(0);
        for pin in [24, 31, 32, 200, u8::MAX] {
            a.set_irq(pin, true);
            a.set_irq(pin, false);
        }
        a.eoi(0);
        assert_eq!(a.pop_delivery(), None);
        // Unimplemented indirect registers read as all ones and ignore writes.
        for reg in [0x03, 0x0f, IND_REDIR_END, 0x80, 0xff] {
            io_apic_write(&mut a, reg, 0x1234_5678);
            assert_eq!(io_apic_read(&mut a, reg), u32::MAX, "reg {reg:#x}");
        }
        // Reserved offsets read as 0; bad sizes and out-of-page accesses do nothing.
        for offset in [0x04, 0x08, 0x20, 0x44, 0x100, 0xffc] {
            a.mmio_write(offset, 4, u64::MAX);
            assert_eq!(a.mmio_read(offset, 4), 0);
        }
        for size in [0, 9, 16, u8::MAX] {
            a.mmio_write(REG_IOREGSEL, size, 0x10);
            assert_eq!(a.mmio_read(REG_IOREGSEL, size), 0);
        }
        assert_eq!(a.mmio_read(0xffe, 4), 0);
        a.mmio_write(0xffe, 4, u64::MAX);
        assert_eq!(a.mmio_read(u64::MAX, 8), 0);
        a.mmio_write(u64::MAX - 3, 8, u64::MAX);
        // An unaligned 4-byte read straddling IOREGSEL's end sees its top and 0x04's bottom.
        a.mmio_write(REG_IOREGSEL, 4, 0x12);
        assert_eq!(a.mmio_read(REG_IOREGSEL + 2, 4), 0);
        assert_eq!(a.mmio_read(REG_IOREGSEL, 1), 0x12);
        // Every byte value into every register through every lane.
        for reg in 0..=u8::MAX {
            for lane in 0..4 {
                a.mmio_write(REG_IOREGSEL, 1, u64::from(reg));
                a.mmio_write(REG_IOWIN + lane, 1, u64::from(reg).rotate_left(lane as u32));
                a.mmio_read(REG_IOWIN + lane, 1);
                a.set_irq(reg, reg % 2 == 0);
                a.eoi(reg);
                while a.pop_delivery().is_some() {}
            }
        }
    }

    #[test]
    fn linux_style_level_pci_interrupt_round_trip() {
        // setup_ioapic_irq for a PCI INTx on GSI 19: active low, level, vector 0x41,
        // physical destination APIC 0, written high dword first; then the device
        // interrupts, Linux acks via the LAPIC EOI (broadcast to us) and finally
        // masks the pin at shutdown.
        let mut a = IoApic::new(0);
        let e = entry(0x41, 0) | LEVEL | rte::POLARITY_LOW;
        write_entry(&mut a, 19, e | MASKED);
        write_entry(&mut a, 19, e);
        assert_eq!(a.pop_delivery(), None, "nothing asserted yet");
        a.set_irq(19, true);
        let d = a.pop_delivery().expect("delivered");
        assert_eq!(d, fixed(19, 0x41, 0, TriggerMode::Level));
        // The driver quiets the device, then EOI.
        a.set_irq(19, false);
        a.eoi(d.vector);
        assert_eq!(a.pop_delivery(), None);
        assert_eq!(read_entry(&mut a, 19), e);
        write_entry(&mut a, 19, e | MASKED);
        a.set_irq(19, true);
        assert_eq!(a.pop_delivery(), None);
    }
}
