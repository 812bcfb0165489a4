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

/// An access of `size` bytes to byte-wide registers: split into bytes at
/// successive ports, as the ISA bus does. Sizes other than 1, 2 or 4 read as
/// all ones and write nothing.
pub fn read_bytewise(port: u16, size: u8, mut read: impl FnMut(u16) -> u8) -> u32 {
    if !matches!(size, 1 | 2 | 4) {
        return u32::MAX;
    }
    let mut bytes = [0; 4];
    for (i, byte) in bytes.iter_mut().enumerate().take(usize::from(size)) {
        *byte = read(port.wrapping_add(i as u16));
    }
    u32::from_le_bytes(bytes)
}

/// The write side of [`read_bytewise`].
pub fn write_bytewise(port: u16, size: u8, value: u32, mut write: impl FnMut(u16, u8)) {
    if !matches!(size, 1 | 2 | 4) {
        return;
    }
    for (i, byte) in value.to_le_bytes().into_iter().enumerate().take(usize::from(size)) {
        write(port.wrapping_add(i as u16), byte);
    }
}

/// A device behind guest MMIO; `offset` is from the device's base address.
pub trait MmioDevice {
    fn mmio_read(&mut self, offset: u64, size: u8) -> u64;
    fn mmio_write(&mut self, offset: u64, size: u8, value: u64);
    /// After a read or write: the device has not answered yet (a request to
    /// dom0's device model, `vm::ioreq`), so the instruction is not retired
    /// and runs again later; what the read returned is not used.
    fn waits(&self) -> bool {
        false
    }
    /// Accesses go elsewhere and may wait: an XCHG, a read and a write that
    /// must be one, cannot be completed on it.
    fn forwards(&self) -> bool {
        false
    }
}

pub mod acpi_pm;
pub mod i8042;
pub mod ioapic;
pub mod kvmclock;
pub mod pvpanic;
pub mod rtc;
pub mod uart16550;
