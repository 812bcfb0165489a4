//! Device models the hypervisor emulates for guests: pure state machines with no
//! hardware access, driven by exits and by the hypervisor's own timers and
//! interrupts, and tested on the host. One file per device.
//!
//! Time is always passed in (`now_ns`), never read here, so tests are exact.

pub mod lapic;

/// A device behind guest port I/O.
pub trait PortDevice {
    /// IN of `size` (1, 2 or 4) bytes at `port`.
    fn port_read(&mut self, port: u16, size: u8) -> u32;
    /// OUT of `size` bytes.
    fn port_write(&mut self, port: u16, size: u8, value: u32);
}

/// A device behind guest MMIO; `offset` is from the device's base address.
pub trait MmioDevice {
    fn mmio_read(&mut self, offset: u64, size: u8) -> u64;
    fn mmio_write(&mut self, offset: u64, size: u8, value: u64);
}

pub mod acpi_pm;
pub mod i8042;
pub mod ioapic;
pub mod kvmclock;
pub mod pvpanic;
pub mod rtc;
pub mod uart16550;
