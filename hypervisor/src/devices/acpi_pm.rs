//! The power-management registers of a hardware-reduced ACPI platform: the
//! Sleep Control, Sleep Status and Reset registers that the FADT built by
//! `firmware::acpi` points at (ACPI 6.5 §4.8.3.6 "Reset Register", §4.8.3.7
//! "Sleep Control and Status Registers"). With them a guest powers off
//! (`poweroff`: S5) and resets (`reboot`, with `reboot=acpi` on a Linux guest's
//! command line: see `firmware::acpi`).
//!
//! Ports, one byte each ([`PORTS`]); 0x600 is above the ISA range and clear of
//! PCI configuration (0xCF8-0xCFF):
//!
//! | port  | register | guest writes | event |
//! |-------|----------|--------------|-------|
//! | 0x600 | Sleep Control | SLP_EN (bit 5) with SLP_TYP (bits 2-4) = [`SLP_TYP_S5`] (5): 0x34 | [`PmEvent::PowerOff`] |
//! | 0x601 | Sleep Status  | WAK_STS (bit 7) to clear it | none |
//! | 0x602 | Reset         | [`RESET_VALUE`] (0x06) | [`PmEvent::Reset`] |
//! | 0x603 | reserved      | | none |
//!
//! Everything else is ignored, as the specification has it: SLP_EN with a sleep
//! type the DSDT does not offer (only `\_S5` exists), other values written to
//! the reset register, reserved bits. Reads return 0 but for the SLP_TYP last
//! written; SLP_EN reads as 0 (§4.8.3.7), and WAK_STS stays 0 because the
//! platform never sleeps and wakes (S5 ends the domain).
//!
//! How the hypervisor drives it: claim ports `PORTS.sleep_control ..
//! PORTS.sleep_control + PORT_COUNT` on the domain's port bus, forward accesses
//! ([`AcpiPm::read`], [`AcpiPm::write`], or the [`PortDevice`] methods and then
//! [`AcpiPm::take_event`]), and act on an event before the vCPU runs again:
//! `PowerOff` → the domain's `on_poweroff`, `Reset` → its `on_reboot`. An access
//! wider than a byte covers consecutive ports, as port I/O does.

use super::PortDevice;
use crate::firmware::acpi::PmPorts;

/// Where the registers are and what the guest writes; `firmware::acpi::Config::pm`.
pub const PORTS: PmPorts = PmPorts {
    sleep_control: 0x600,
    sleep_status: 0x601,
    reset: 0x602,
    reset_value: RESET_VALUE,
    s5_slp_typ: SLP_TYP_S5,
};
/// Ports from `PORTS.sleep_control` the device claims (0x600-0x603).
pub const PORT_COUNT: u16 = 4;

/// SLP_TYP of S5, the value `\_S5` names. Any 3-bit value would do; 5 reads as "S5".
pub const SLP_TYP_S5: u8 = 5;
/// FADT RESET_VALUE: the value of the PC's 0xCF9 "hard reset", familiar to readers.
pub const RESET_VALUE: u8 = 0x06;

/// Sleep Control Register fields (§4.8.3.7).
mod sleep_control {
    pub const SLP_TYP_SHIFT: u8 = 2;
    pub const SLP_TYP_MASK: u8 = 0b111 << SLP_TYP_SHIFT;
    /// Write-only: start the transition to the state in SLP_TYP.
    pub const SLP_EN: u8 = 1 << 5;
}

/// What the guest asked of the platform. Ordered by precedence: should one
/// wide write or several unhandled writes ask for both, the reset wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PmEvent {
    /// SLP_EN with SLP_TYP = S5: soft off.
    PowerOff,
    /// RESET_VALUE written to the reset register.
    Reset,
}

/// The device: the registers described by a [`PmPorts`] (normally [`PORTS`]).
#[derive(Clone, Debug)]
pub struct AcpiPm {
    ports: PmPorts,
    /// SLP_TYP as last written (the rest of the register reads as 0).
    slp_typ: u8,
    /// An event raised through `PortDevice::port_write`, until taken.
    pending: Option<PmEvent>,
}

impl Default for AcpiPm {
    fn default() -> Self {
        AcpiPm::new(PORTS)
    }
}

impl AcpiPm {
    pub fn new(ports: PmPorts) -> Self {
        AcpiPm { ports, slp_typ: 0, pending: None }
    }

    /// Its state, for save and migration (`oxen_abi::platform_state`'s
    /// `ACPI_PM` words). An event raised and not yet taken is not part of it.
    pub fn save(&self) -> [u64; 1] {
        [self.slp_typ.into()]
    }

    /// Takes a state `save` gave; refuses (and keeps its own) a sleep type
    /// the register cannot hold.
    pub fn restore(&mut self, w: &[u64; 1]) -> Result<(), &'static str> {
        let max = u64::from(sleep_control::SLP_TYP_MASK >> sleep_control::SLP_TYP_SHIFT);
        if w[0] > max {
            return Err("ACPI PM: a sleep type the register cannot hold");
        }
        self.slp_typ = w[0] as u8;
        self.pending = None;
        Ok(())
    }

    /// IN of `size` bytes at `port`: byte `k` of the result is port `port + k`.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        (0..size.min(4)).fold(0, |acc, k| {
            let byte = port.checked_add(u16::from(k)).map_or(0xff, |p| self.read_byte(p));
            acc | u32::from(byte) << (8 * k)
        })
    }

    /// OUT of `size` bytes at `port`, byte `k` of `value` to port `port + k`;
    /// returns the event the write raised, if any.
    pub fn write(&mut self, port: u16, size: u8, value: u32) -> Option<PmEvent> {
        let mut event = None;
        for k in 0..size.min(4) {
            let Some(p) = port.checked_add(u16::from(k)) else { break };
            event = event.max(self.write_byte(p, (value >> (8 * k)) as u8));
        }
        event
    }

    /// The event raised by the last `PortDevice::port_write`s, once.
    pub fn take_event(&mut self) -> Option<PmEvent> {
        self.pending.take()
    }

    fn read_byte(&self, port: u16) -> u8 {
        if port == self.ports.sleep_control {
            self.slp_typ << sleep_control::SLP_TYP_SHIFT
        } else if port == self.ports.sleep_status || port == self.ports.reset || self.claims(port) {
            // WAK_STS is never set; the reset register and the reserved port read as 0.
            0
        } else {
            // Beyond the range on a wide access: nothing drives the bus.
            0xff
        }
    }

    fn write_byte(&mut self, port: u16, value: u8) -> Option<PmEvent> {
        if port == self.ports.sleep_control {
            self.slp_typ = (value & sleep_control::SLP_TYP_MASK) >> sleep_control::SLP_TYP_SHIFT;
            let enable = value & sleep_control::SLP_EN != 0;
            (enable && self.slp_typ == self.ports.s5_slp_typ).then_some(PmEvent::PowerOff)
        } else if port == self.ports.reset {
            (value == self.ports.reset_value).then_some(PmEvent::Reset)
        } else {
            // Sleep Status: WAK_STS is write-1-to-clear and already 0; reserved ports ignore writes.
            None
        }
    }

    /// Whether `port` is one of the `PORT_COUNT` ports from the sleep control register.
    fn claims(&self, port: u16) -> bool {
        port.wrapping_sub(self.ports.sleep_control) < PORT_COUNT
    }
}

impl PortDevice for AcpiPm {
    fn port_read(&mut self, port: u16, size: u8) -> u32 {
        self.read(port, size)
    }

    fn port_write(&mut self, port: u16, size: u8, value: u32) {
        let event = self.write(port, size, value);
        self.pending = self.pending.max(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::acpi::{self, Config, IoApic};

    /// What ACPICA's `acpi_hw_extended_sleep` writes for S5: SLP_TYP << 2 | SLP_EN.
    const S5_WRITE: u32 = (SLP_TYP_S5 as u32) << 2 | 1 << 5;

    #[test]
    fn s5_with_slp_en_powers_off() {
        let mut pm = AcpiPm::default();
        assert_eq!(S5_WRITE, 0x34);
        // ACPICA first clears WAK_STS, then writes the sleep control register.
        assert_eq!(pm.write(0x601, 1, 0x80), None);
        assert_eq!(pm.write(0x600, 1, S5_WRITE), Some(PmEvent::PowerOff));
        // Reserved bits 0, 1, 6, 7 do not change the meaning.
        assert_eq!(pm.write(0x600, 1, S5_WRITE | 0xc3), Some(PmEvent::PowerOff));
    }

    #[test]
    fn other_sleep_writes_are_ignored() {
        let mut pm = AcpiPm::default();
        // SLP_TYP = S5 without SLP_EN only programs the type.
        assert_eq!(pm.write(0x600, 1, 5 << 2), None);
        assert_eq!(pm.read(0x600, 1), 5 << 2, "SLP_TYP reads back, SLP_EN reads 0");
        // SLP_EN with any other type: no such state is offered.
        for typ in (0..8).filter(|&t| t != SLP_TYP_S5 as u32) {
            assert_eq!(pm.write(0x600, 1, typ << 2 | 1 << 5), None, "SLP_TYP {typ}");
        }
        assert_eq!(pm.read(0x600, 1), 7 << 2);
        assert_eq!(pm.read(0x601, 1), 0, "WAK_STS never set");
    }

    #[test]
    fn reset_value_resets_and_nothing_else_does() {
        let mut pm = AcpiPm::default();
        for v in (0..=0xffu32).filter(|&v| v != u32::from(RESET_VALUE)) {
            assert_eq!(pm.write(0x602, 1, v), None, "{v:#x}");
        }
        assert_eq!(pm.write(0x602, 1, 0x06), Some(PmEvent::Reset));
        assert_eq!(pm.read(0x602, 1), 0);
        // The reset register is the byte at 0x602 only, not at the reserved 0x603.
        assert_eq!(pm.write(0x603, 1, 0x06), None);
    }

    #[test]
    fn wide_accesses_cover_consecutive_ports() {
        let mut pm = AcpiPm::default();
        // A word at 0x601 writes sleep status (0x80) and reset (0x06).
        assert_eq!(pm.write(0x601, 2, 0x0680), Some(PmEvent::Reset));
        // A dword at 0x600 carrying S5 in its low byte powers off.
        assert_eq!(pm.write(0x600, 4, S5_WRITE), Some(PmEvent::PowerOff));
        // Both in one dword: the reset wins.
        assert_eq!(pm.write(0x600, 4, 0x0006_0000 | S5_WRITE), Some(PmEvent::Reset));
        // Reads: SLP_TYP, 0, 0, reserved 0; past the range open bus; no overflow at 0xFFFF.
        assert_eq!(pm.read(0x600, 4), u32::from(SLP_TYP_S5) << 2);
        assert_eq!(pm.read(0x602, 4), 0xffff_0000);
        assert_eq!(pm.read(0xffff, 2), 0xffff);
        assert_eq!(pm.write(0xffff, 4, u32::MAX), None);
    }

    #[test]
    fn port_device_latches_the_event_once() {
        let mut pm = AcpiPm::default();
        pm.port_write(0x602, 1, u32::from(RESET_VALUE));
        pm.port_write(0x600, 1, S5_WRITE);
        assert_eq!(pm.take_event(), Some(PmEvent::Reset), "a pending reset is not overwritten");
        assert_eq!(pm.take_event(), None);
        pm.port_write(0x600, 1, S5_WRITE);
        assert_eq!(pm.take_event(), Some(PmEvent::PowerOff));
        assert_eq!(pm.port_read(0x600, 1), u32::from(SLP_TYP_S5) << 2);
    }

    /// The registers the FADT names and the values `\_S5` and RESET_VALUE carry
    /// are the ones this model decodes.
    #[test]
    fn the_fadt_describes_this_device() {
        let cfg = Config {
            apic_ids: &[0],
            local_apic_address: 0xfee0_0000,
            io_apic: IoApic { id: 0, address: 0xfec0_0000, gsi_base: 0 },
            uart: None,
            i8042: false,
            rtc: None,
            power_button: None,
            pvpanic: None,
            virtio_mmio: &[],
            pm: PORTS,
        };
        let t = acpi::build(&cfg, 0x1000).unwrap();
        // FADT right after the XSDT (36 + 2 * 8 bytes, aligned to 8 = 56).
        let fadt = &t.tables[56..56 + 276];
        assert_eq!(&fadt[..4], b"FACP");
        let gas_port = |off: usize| {
            assert_eq!(fadt[off..off + 4], [1, 8, 0, 1], "SystemIO, 8 bits, byte access");
            u64::from_le_bytes(fadt[off + 4..off + 12].try_into().unwrap()) as u16
        };
        let mut pm = AcpiPm::default();
        assert_eq!(pm.write(gas_port(116), 1, u32::from(fadt[128])), Some(PmEvent::Reset));
        // The DSDT is only `Name (_S5, Package (2) { SLP_TYP, SLP_TYP })` here.
        let dsdt = &t.tables[t.tables.len() - 12..];
        assert_eq!(dsdt[..8], [0x08, b'_', b'S', b'5', b'_', 0x12, 0x06, 0x02]);
        assert_eq!(dsdt[8..10], [0x0a, SLP_TYP_S5]);
        let slp_typ = u32::from(dsdt[9]);
        assert_eq!(pm.write(gas_port(244), 1, slp_typ << 2 | 1 << 5), Some(PmEvent::PowerOff));
        assert_eq!(pm.write(gas_port(256), 1, 0x80), None);
        assert_eq!(pm.read(gas_port(256), 1), 0);
    }
}
