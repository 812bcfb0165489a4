//! The pvpanic device, ISA form: one byte-wide port through which a guest tells
//! the host it panicked, as QEMU defines it (QEMU's docs/specs/pvpanic.rst,
//! "ISA Interface"; bits in Linux's include/uapi/misc/pvpanic.h). The firmware
//! describes it to the guest as ACPI device `QEMU0001` with the port in its
//! `_CRS` (`firmware::acpi::Config::pvpanic`); Linux's `pvpanic-mmio` driver
//! binds that and accepts an I/O resource.
//!
//! | access | meaning |
//! |--------|---------|
//! | read   | the events the device recognises: [`SUPPORTED`] = PANICKED \| CRASH_LOADED (0x03) |
//! | write bit 0, PANICKED | "a guest panic has happened and should be processed by the host": [`Event::Panicked`] |
//! | write bit 1, CRASH_LOADED | "a guest panic has happened and will be handled by the guest" (a kdump kernel is loaded): the host records it and lets the guest run: [`Event::CrashLoaded`] |
//!
//! Bits the device does not recognise are ignored on write (the spec); bit 2
//! (PVPANIC_SHUTDOWN, newer QEMU) is not offered: a guest's ordinary shutdown
//! already reaches the platform through ACPI's sleep register. Should one write
//! set both bits, PANICKED wins: the guest asked the host to act.
//!
//! Linux (drivers/misc/pvpanic/pvpanic.c) reads the port at probe, keeps the
//! bits both sides know, and on panic writes PANICKED, or CRASH_LOADED instead
//! when a crash kernel is loaded.
//!
//! How the hypervisor drives it: claim [`PORT`] (one port) on a domU's port bus,
//! forward accesses to [`PvPanic::read`] / [`PvPanic::write`], and act on the
//! event before the vCPU runs again: `Panicked` → the domain's `on_crash`;
//! `CrashLoaded` → log it, keep running. An access wider than a byte covers
//! consecutive ports as port I/O does; only its first byte is this device.

/// The port QEMU's ISA pvpanic uses by default, and so the one guests expect.
pub const PORT: u16 = 0x505;

/// Event bits (Linux's uapi/misc/pvpanic.h).
pub const PANICKED: u8 = 1 << 0;
pub const CRASH_LOADED: u8 = 1 << 1;
/// What a read returns: the events this device recognises.
pub const SUPPORTED: u8 = PANICKED | CRASH_LOADED;

/// What the guest reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The guest panicked and leaves the rest to the host: apply `on_crash`.
    Panicked,
    /// The guest panicked and its own crash kernel takes over: record only.
    CrashLoaded,
}

/// The device; it has no state (each write stands alone).
#[derive(Clone, Copy, Debug, Default)]
pub struct PvPanic;

impl PvPanic {
    /// IN of `size` bytes at `port` (the device's own [`PORT`] or a wide access
    /// starting there): byte 0 is [`SUPPORTED`], further bytes are the
    /// unclaimed ports after it and read as all ones.
    pub fn read(&self, port: u16, size: u8) -> u32 {
        (0..size.min(4)).fold(0, |acc, k| {
            let byte = if port.checked_add(u16::from(k)) == Some(PORT) { SUPPORTED } else { 0xff };
            acc | u32::from(byte) << (8 * k)
        })
    }

    /// OUT of `size` bytes at `port`: the byte that lands on [`PORT`] is the
    /// event mask; returns the event it reports, if any.
    pub fn write(&self, port: u16, size: u8, value: u32) -> Option<Event> {
        let k = PORT.checked_sub(port)?;
        if k >= u16::from(size.min(4)) {
            return None;
        }
        let bits = (value >> (8 * k)) as u8 & SUPPORTED;
        if bits & PANICKED != 0 {
            Some(Event::Panicked)
        } else if bits & CRASH_LOADED != 0 {
            Some(Event::CrashLoaded)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_offers_panicked_and_crash_loaded() {
        let d = PvPanic;
        assert_eq!(d.read(PORT, 1), 0x03);
        // Linux keeps the bits both know: its PANICKED | CRASH_LOADED & what it read.
        assert_eq!(d.read(PORT, 1) as u8 & (PANICKED | CRASH_LOADED), PANICKED | CRASH_LOADED);
        // Wide reads: the ports after it are nobody's.
        assert_eq!(d.read(PORT, 2), 0xff03);
        assert_eq!(d.read(PORT, 4), 0xffff_ff03);
        // A wide read that starts below and covers it.
        assert_eq!(d.read(PORT - 1, 2), 0x03ff);
    }

    #[test]
    fn writes_report_what_linux_sends() {
        let d = PvPanic;
        // pvpanic_panic_notify: PANICKED, or CRASH_LOADED when a crash kernel is loaded.
        assert_eq!(d.write(PORT, 1, u32::from(PANICKED)), Some(Event::Panicked));
        assert_eq!(d.write(PORT, 1, u32::from(CRASH_LOADED)), Some(Event::CrashLoaded));
        assert_eq!(d.write(PORT, 1, 0x03), Some(Event::Panicked), "asking the host to act wins");
        assert_eq!(d.write(PORT, 1, 0), None);
    }

    #[test]
    fn unknown_bits_and_other_bytes_are_ignored() {
        let d = PvPanic;
        // Bit 2 (PVPANIC_SHUTDOWN) and above are not offered.
        for v in [0x04, 0x08, 0xfc] {
            assert_eq!(d.write(PORT, 1, v), None, "{v:#x}");
        }
        assert_eq!(d.write(PORT, 1, 0xfd), Some(Event::Panicked));
        // Bytes of a wide write that land on other ports.
        assert_eq!(d.write(PORT, 4, 0x0101_0100), None);
        assert_eq!(d.write(PORT - 1, 2, 0x0001), None);
        assert_eq!(d.write(PORT - 1, 2, 0x0100), Some(Event::Panicked));
        assert_eq!(d.write(PORT - 3, 4, 0x0200_0000), Some(Event::CrashLoaded));
        // Accesses that do not reach the port at all (a bus would not route them here).
        assert_eq!(d.write(PORT - 4, 4, 0xffff_ffff), None);
        assert_eq!(d.write(PORT + 1, 1, 0x01), None);
        assert_eq!(d.write(0, 4, u32::MAX), None);
        assert_eq!(d.write(u16::MAX, 4, u32::MAX), None);
        assert_eq!(d.read(u16::MAX, 4), u32::MAX);
    }
}
