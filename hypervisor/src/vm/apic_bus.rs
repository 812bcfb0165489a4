//! A domain's local APICs as one bus: where its IPIs and its IOAPIC's
//! interrupts go, and each vCPU's INIT / START-UP state.
//!
//! Pure logic (host-tested). The caller keeps the bus behind one lock, drives
//! the time (`VirtualLapic::tick`) and acts on what the calls return: a
//! [`Wake`] mask of the vCPUs that got something new (an interrupt, INIT or
//! START-UP), whose CPUs it kicks, and the level-triggered EOIs for its IOAPIC.
//!
//! Routing follows the SDM (Vol. 3A §12.6.2, §12.6.3): a message reaches every
//! vCPU whose APIC [`VirtualLapic::matches`] its destination (each APIC's own
//! DFR model for logical destinations), except that a lowest-priority message
//! goes to one of them, the lowest arbitration priority (first on ties).
//! A domain's messages only ever reach its own vCPUs: nothing here knows of
//! any other domain's APIC.
//!
//! INIT and START-UP (§9.4.4 "MP Initialization Example"): INIT resets the
//! target's APIC (`init_reset`) and parks the vCPU in wait-for-SIPI; the first
//! START-UP after it gives the start page, later ones are ignored until the
//! next INIT, as on hardware. INIT to vCPU 0, the boot CPU, would be a reset
//! of the whole domain, which is not modelled: it is ignored. NMI and SMI messages are not
//! delivered (the vCPU interface has no NMI injection yet); the first of each
//! is logged.

use crate::devices::ioapic::{self, Delivery, DestinationMode};
use crate::devices::lapic::{Destination, DeliveryMode, Ipi, IpiAction, LapicClock, LapicEvent, VirtualLapic};
use alloc::vec::Vec;

/// Bit `i` set: vCPU `i` has something new and its CPU should look again.
pub type Wake = u64;

/// The most vCPUs a bus holds (one bit each in [`Wake`]).
pub const MAX_VCPUS: usize = 64;

/// A vCPU's power state, as INIT and START-UP move it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Power {
    /// Running guest code (or halted in it).
    Running,
    /// Waiting for a START-UP IPI: after power-on (the APs) or INIT.
    WaitForSipi,
    /// A START-UP arrived: start in real mode at `page << 12`. The vCPU's own
    /// CPU takes it with [`ApicBus::take_startup`].
    StartUp(u8),
}

/// Vectors as a 256-bit set: the level-triggered EOIs for the IOAPIC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vectors([u64; 4]);

impl Vectors {
    pub fn insert(&mut self, v: u8) {
        self.0[usize::from(v / 64)] |= 1 << (v % 64);
    }

    pub fn is_empty(&self) -> bool {
        self.0 == [0; 4]
    }

    /// The vectors in the set, lowest first: one step per member (this runs
    /// at every service of a vCPU, mostly on an empty set).
    pub fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        self.0.iter().enumerate().flat_map(|(word, &bits)| {
            let mut rest = bits;
            core::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = rest.trailing_zeros();
                rest &= rest - 1;
                Some((word as u32 * 64 + bit) as u8)
            })
        })
    }
}

struct Slot {
    lapic: VirtualLapic,
    power: Power,
    /// INITs taken so far: the vCPU's CPU compares it with the count it last
    /// acted on to know its guest state must go.
    inits: u32,
}

/// Messages the bus could not deliver, counted by kind, for the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Undelivered {
    pub nmi: u64,
    pub smi: u64,
    /// INIT aimed at vCPU 0.
    pub bsp_init: u64,
    /// IOAPIC entries with a delivery mode other than fixed / lowest priority.
    pub other_mode: u64,
}

/// A domain's vCPUs' local APICs.
pub struct ApicBus {
    slots: Vec<Slot>,
    undelivered: Undelivered,
}

impl ApicBus {
    /// One APIC per entry of `apic_ids` (vCPU `i` gets `apic_ids[i]`); vCPU 0
    /// is the boot processor and runs, the others wait for START-UP.
    pub fn new(apic_ids: &[u32], clock: LapicClock) -> Self {
        assert!(!apic_ids.is_empty() && apic_ids.len() <= MAX_VCPUS, "1 to {MAX_VCPUS} vCPUs");
        let slots = apic_ids
            .iter()
            .enumerate()
            .map(|(i, &id)| Slot {
                lapic: VirtualLapic::new(id, i == 0, clock),
                power: if i == 0 { Power::Running } else { Power::WaitForSipi },
                inits: 0,
            })
            .collect();
        Self { slots, undelivered: Undelivered::default() }
    }

    /// How many vCPUs.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// vCPU `vcpu`'s APIC.
    pub fn lapic(&mut self, vcpu: usize) -> &mut VirtualLapic {
        &mut self.slots[vcpu].lapic
    }

    pub fn power(&self, vcpu: usize) -> Power {
        self.slots[vcpu].power
    }

    /// INITs vCPU `vcpu` has taken so far.
    pub fn inits(&self, vcpu: usize) -> u32 {
        self.slots[vcpu].inits
    }

    /// Messages dropped so far.
    pub fn undelivered(&self) -> Undelivered {
        self.undelivered
    }

    /// The start page of a START-UP for `vcpu`, if one is waiting; the vCPU
    /// counts as running from then on.
    pub fn take_startup(&mut self, vcpu: usize) -> Option<u8> {
        let slot = &mut self.slots[vcpu];
        match slot.power {
            Power::StartUp(page) => {
                slot.power = Power::Running;
                Some(page)
            }
            _ => None,
        }
    }

    /// Sends what `vcpu`'s APIC queued: IPIs go over the bus, level EOIs are
    /// added to `eois` for the IOAPIC. Call after every exit that may have
    /// touched the APIC (and after `tick`).
    pub fn drain(&mut self, vcpu: usize, eois: &mut Vectors) -> Wake {
        let mut wake = 0;
        while let Some(ev) = self.slots[vcpu].lapic.pop_event() {
            match ev {
                LapicEvent::LevelEoi(v) => eois.insert(v),
                LapicEvent::Ipi(ipi) => wake |= self.send_ipi(&ipi),
            }
        }
        wake
    }

    /// Delivers one IPI to every vCPU it names (one, for lowest priority).
    pub fn send_ipi(&mut self, ipi: &Ipi) -> Wake {
        let targets = self.targets(&ipi.dest, ipi.source);
        let targets = if ipi.mode == DeliveryMode::LowestPriority { self.lowest_priority(targets) } else { targets };
        let mut wake = 0;
        for i in bits(targets) {
            let slot = &mut self.slots[i];
            match slot.lapic.receive_ipi(ipi) {
                IpiAction::None => {}
                IpiAction::Interrupt => wake |= 1 << i,
                IpiAction::Init if i == 0 => {
                    self.undelivered.bsp_init += 1;
                    if self.undelivered.bsp_init == 1 {
                        log::warn!("apic bus: INIT to the boot vCPU ignored (a reset of the domain is not modelled)");
                    }
                }
                IpiAction::Init => {
                    slot.lapic.init_reset();
                    slot.power = Power::WaitForSipi;
                    slot.inits = slot.inits.wrapping_add(1);
                    wake |= 1 << i;
                }
                IpiAction::StartUp(page) => {
                    // Only a vCPU waiting for one takes it (SDM §9.4.4.1: the
                    // second START-UP is for CPUs that missed the first).
                    if slot.power == Power::WaitForSipi {
                        slot.power = Power::StartUp(page);
                        wake |= 1 << i;
                    }
                }
                IpiAction::Nmi => {
                    self.undelivered.nmi += 1;
                    if self.undelivered.nmi == 1 {
                        log::warn!("apic bus: NMI IPIs are not delivered (first one to vCPU {i})");
                    }
                }
                IpiAction::Smi => {
                    self.undelivered.smi += 1;
                    if self.undelivered.smi == 1 {
                        log::warn!("apic bus: SMI IPIs are not delivered (first one to vCPU {i})");
                    }
                }
            }
        }
        wake
    }

    /// Delivers one interrupt message of the IOAPIC.
    pub fn deliver(&mut self, d: &Delivery) -> Wake {
        let level = d.trigger_mode == ioapic::TriggerMode::Level;
        let lowest = match d.delivery_mode {
            ioapic::DeliveryMode::Fixed => false,
            ioapic::DeliveryMode::LowestPriority => true,
            other => {
                self.undelivered.other_mode += 1;
                if self.undelivered.other_mode == 1 {
                    log::warn!("apic bus: IOAPIC pin {} delivery mode {other:?} is not delivered", d.pin);
                }
                return 0;
            }
        };
        let dest = Destination::from_message(u32::from(d.destination), d.destination_mode == DestinationMode::Logical, false);
        // No shorthand from an IOAPIC, so the source never matters.
        let targets = self.targets(&dest, u32::MAX);
        let targets = if lowest { self.lowest_priority(targets) } else { targets };
        let mut wake = 0;
        for i in bits(targets) {
            if self.slots[i].lapic.accept(d.vector, level) {
                wake |= 1 << i;
            }
        }
        wake
    }

    /// The vCPUs whose APIC `dest` names, as a mask.
    fn targets(&self, dest: &Destination, source: u32) -> Wake {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.lapic.matches(dest, source, s.lapic.logical_mode()))
            .fold(0, |m, (i, _)| m | 1 << i)
    }

    /// Of `targets`, the one that takes a lowest-priority message: lowest
    /// arbitration priority among the software-enabled APICs (SDM §12.6.2.4),
    /// the first on ties.
    fn lowest_priority(&self, targets: Wake) -> Wake {
        bits(targets)
            .filter(|&i| self.slots[i].lapic.software_enabled())
            .min_by_key(|&i| self.slots[i].lapic.apr())
            .map_or(0, |i| 1 << i)
    }
}

/// The set bits of `mask`, lowest first.
pub fn bits(mask: u64) -> impl Iterator<Item = usize> {
    (0..64).filter(move |i| mask & (1 << i) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::lapic::reg;

    const CLOCK: LapicClock = LapicClock { bus_hz: 1_000_000_000, tsc_hz: 1_000_000_000 };
    const SVR_ENABLED: u32 = 0x1ff;
    const DFR_FLAT: u32 = 0xffff_ffff;
    const DFR_CLUSTER: u32 = 0x0fff_ffff;

    /// A bus as Linux leaves it once every CPU is up: software-enabled APICs
    /// with logical IDs 1 << cpu (flat model), every vCPU running.
    fn linux_bus(n: usize) -> ApicBus {
        let ids: Vec<u32> = (0..n as u32).collect();
        let mut bus = ApicBus::new(&ids, CLOCK);
        for i in 0..n {
            let l = bus.lapic(i);
            l.write_register(reg::DFR, DFR_FLAT, 0);
            l.write_register(reg::LDR, 1 << (24 + i), 0);
            l.write_register(reg::SVR, SVR_ENABLED, 0);
            bus.slots[i].power = Power::Running;
        }
        bus
    }

    #[test]
    fn vector_sets_list_their_members_in_order() {
        let mut v = Vectors::default();
        assert_eq!(v.iter().count(), 0);
        for x in [255u8, 0, 64, 63, 130] {
            v.insert(x);
        }
        assert_eq!(v.iter().collect::<Vec<u8>>(), [0, 63, 64, 130, 255]);
    }

    /// Writes the ICR of `from`'s APIC (xAPIC) and drains it over the bus.
    fn icr(bus: &mut ApicBus, from: usize, high: u32, low: u32) -> (Wake, Vectors) {
        let l = bus.lapic(from);
        l.write_register(reg::ICR_HIGH, high, 0);
        l.write_register(reg::ICR_LOW, low, 0);
        let mut eois = Vectors::default();
        let wake = bus.drain(from, &mut eois);
        (wake, eois)
    }

    fn delivery(destination: u8, mode: DestinationMode, delivery_mode: ioapic::DeliveryMode, level: bool) -> Delivery {
        Delivery {
            pin: 4,
            vector: 0x41,
            destination,
            destination_mode: mode,
            delivery_mode,
            trigger_mode: if level { ioapic::TriggerMode::Level } else { ioapic::TriggerMode::Edge },
        }
    }

    #[test]
    fn aps_wait_for_startup_and_take_only_the_first_after_init() {
        let mut bus = ApicBus::new(&[0, 1], CLOCK);
        assert_eq!((bus.power(0), bus.power(1)), (Power::Running, Power::WaitForSipi));
        bus.lapic(0).write_register(reg::SVR, SVR_ENABLED, 0);
        // Linux's wakeup_secondary_cpu_via_init: INIT assert, INIT de-assert,
        // then START-UP twice, all physical to APIC ID 1.
        assert_eq!(icr(&mut bus, 0, 1 << 24, 0x0000_c500).0, 0b10, "INIT assert");
        assert_eq!(bus.inits(1), 1);
        assert_eq!(icr(&mut bus, 0, 1 << 24, 0x0000_8500).0, 0, "INIT de-assert is ignored");
        assert_eq!(icr(&mut bus, 0, 1 << 24, 0x0000_069a).0, 0b10, "first START-UP");
        assert_eq!(bus.power(1), Power::StartUp(0x9a));
        assert_eq!(icr(&mut bus, 0, 1 << 24, 0x0000_069b).0, 0, "second START-UP ignored");
        assert_eq!(bus.take_startup(1), Some(0x9a));
        assert_eq!(bus.take_startup(1), None);
        assert_eq!(bus.power(1), Power::Running);
        assert_eq!(icr(&mut bus, 0, 1 << 24, 0x0000_069c).0, 0, "a running vCPU ignores START-UP");
        // A second INIT parks it again; its APIC is reset.
        bus.lapic(1).write_register(reg::SVR, SVR_ENABLED, 0);
        assert_eq!(icr(&mut bus, 0, 1 << 24, 0x0000_c500).0, 0b10);
        assert_eq!((bus.power(1), bus.inits(1)), (Power::WaitForSipi, 2));
        assert!(!bus.lapic(1).software_enabled(), "INIT resets the APIC");
        assert_eq!(icr(&mut bus, 0, 1 << 24, 0x0000_0610).0, 0b10);
        assert_eq!(bus.take_startup(1), Some(0x10));
    }

    #[test]
    fn init_to_the_boot_vcpu_is_ignored() {
        let mut bus = linux_bus(2);
        // INIT to all including self is not a valid shorthand; all-excluding-self
        // from vCPU 1 reaches vCPU 0.
        assert_eq!(icr(&mut bus, 1, 0, 0x000c_c500).0, 0);
        assert_eq!((bus.power(0), bus.inits(0)), (Power::Running, 0));
        assert_eq!(bus.undelivered().bsp_init, 1);
        assert!(bus.lapic(0).software_enabled());
    }

    #[test]
    fn fixed_ipis_by_id_logical_set_and_shorthand() {
        let mut bus = linux_bus(3);
        // Physical: to APIC ID 2 only.
        assert_eq!(icr(&mut bus, 0, 2 << 24, 0x0000_40fd).0, 0b100);
        assert_eq!(bus.lapic(2).pending(), Some(0xfd));
        assert_eq!(bus.lapic(1).pending(), None);
        // Logical flat: the set {1, 2}.
        assert_eq!(icr(&mut bus, 0, 0b110 << 24, 0x0000_48fc).0, 0b110);
        // All excluding self, from vCPU 1.
        assert_eq!(icr(&mut bus, 1, 0, 0x000c_40fb).0, 0b101);
        // Self.
        assert_eq!(icr(&mut bus, 1, 0, 0x0004_40fa).0, 0b010);
        assert_eq!(bus.lapic(1).pending(), Some(0xfc));
        // Nobody has APIC ID 7.
        assert_eq!(icr(&mut bus, 0, 7 << 24, 0x0000_40fd).0, 0);
    }

    #[test]
    fn lowest_priority_ipi_goes_to_one_vcpu() {
        let mut bus = linux_bus(2);
        bus.lapic(0).set_tpr(0x20);
        assert_eq!(icr(&mut bus, 1, 0b11 << 24, 0x0000_49f0).0, 0b10, "vCPU 1 has the lower priority");
        bus.lapic(1).set_tpr(0x30);
        assert_eq!(icr(&mut bus, 1, 0b11 << 24, 0x0000_49f1).0, 0b01);
    }

    #[test]
    fn a_software_disabled_apic_takes_no_interrupt() {
        let mut bus = ApicBus::new(&[0, 1], CLOCK);
        bus.lapic(0).write_register(reg::SVR, SVR_ENABLED, 0);
        assert_eq!(icr(&mut bus, 0, 1 << 24, 0x0000_40fd).0, 0);
        assert_eq!(bus.lapic(1).pending(), None);
    }

    #[test]
    fn ioapic_deliveries_follow_their_destination() {
        let mut bus = linux_bus(2);
        // Physical destination 1 (Linux moved the IRQ's affinity to CPU 1).
        let d = delivery(1, DestinationMode::Physical, ioapic::DeliveryMode::Fixed, true);
        assert_eq!(bus.deliver(&d), 0b10);
        assert_eq!(bus.lapic(1).ack(), Some(0x41));
        assert_eq!(bus.lapic(0).pending(), None);
        // Its level EOI comes back out for the IOAPIC.
        bus.lapic(1).write_register(reg::EOI, 0, 0);
        let mut eois = Vectors::default();
        assert_eq!(bus.drain(1, &mut eois), 0);
        assert_eq!(eois.iter().collect::<Vec<_>>(), [0x41]);
        // Logical flat, CPU 0's bit.
        let d = delivery(0b01, DestinationMode::Logical, ioapic::DeliveryMode::Fixed, false);
        assert_eq!(bus.deliver(&d), 0b01);
        // Fixed to a set reaches all of it; lowest priority one of it.
        let d = delivery(0b11, DestinationMode::Logical, ioapic::DeliveryMode::Fixed, false);
        assert_eq!(bus.deliver(&d), 0b11);
        bus.lapic(0).set_tpr(0x80);
        let d = delivery(0b11, DestinationMode::Logical, ioapic::DeliveryMode::LowestPriority, false);
        assert_eq!(bus.deliver(&d), 0b10);
        // Physical broadcast 0xff.
        let d = delivery(0xff, DestinationMode::Physical, ioapic::DeliveryMode::Fixed, false);
        assert_eq!(bus.deliver(&d), 0b11);
        // NMI entries are not delivered.
        let d = delivery(0, DestinationMode::Physical, ioapic::DeliveryMode::Nmi, false);
        assert_eq!(bus.deliver(&d), 0);
        assert_eq!(bus.undelivered().other_mode, 1);
    }

    #[test]
    fn cluster_model_logical_destinations() {
        let mut bus = ApicBus::new(&[0, 1], CLOCK);
        for i in 0..2 {
            let l = bus.lapic(i);
            l.write_register(reg::DFR, DFR_CLUSTER, 0);
            // Cluster 1, member bit i.
            l.write_register(reg::LDR, (0x10 | (1 << i)) << 24, 0);
            l.write_register(reg::SVR, SVR_ENABLED, 0);
        }
        let d = delivery(0x12, DestinationMode::Logical, ioapic::DeliveryMode::Fixed, false);
        assert_eq!(bus.deliver(&d), 0b10);
        let d = delivery(0x22, DestinationMode::Logical, ioapic::DeliveryMode::Fixed, false);
        assert_eq!(bus.deliver(&d), 0, "another cluster");
    }

    #[test]
    fn x2apic_ipis() {
        let mut bus = linux_bus(2);
        for i in 0..2 {
            let l = bus.lapic(i);
            l.msr_write(0x1b, 0xfee0_0c00 | if i == 0 { 0x100 } else { 0 }, 0).unwrap();
        }
        bus.lapic(0).msr_write(0x830, 0x0000_0001_0000_00fd, 0).unwrap();
        let mut eois = Vectors::default();
        assert_eq!(bus.drain(0, &mut eois), 0b10);
        assert_eq!(bus.lapic(1).pending(), Some(0xfd));
    }

    #[test]
    fn vector_sets() {
        let mut v = Vectors::default();
        assert!(v.is_empty());
        for x in [0x20, 0xff, 0x41, 0x20] {
            v.insert(x);
        }
        assert_eq!(v.iter().collect::<Vec<_>>(), [0x20, 0x41, 0xff]);
        assert_eq!(bits(0b1010_0001).collect::<Vec<_>>(), [0, 5, 7]);
    }
}
