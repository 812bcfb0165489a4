//! The devices dom0 declared for a domU (`domctl DEVICE_ADD`), placed by the
//! hypervisor so that no caller can make one overlap anything: the i-th gets
//! the i-th 4 KiB slot of `DEVICE_WINDOW` and IOAPIC line
//! `DEVICE_GSI_FIRST + i`. Pure, so the rules are tested on the host; `BUILD`
//! describes the list in the domU's DSDT (`firmware::acpi::VirtioMmio`) and
//! `IRQ_LINE` drives only the lines given out here.
//!
//! Why there: the window `[0xFEB00000, 0xFEB08000)` is below the IOAPIC
//! (0xFEC00000) and the local APICs (0xFEE00000), above the BIOS area, and
//! never RAM for a domU whose RAM ends below it — the only ones that may have
//! devices. Neither a Linux domU's e820 map nor a Multiboot one's memory map
//! names it (RAM ends at `memory_bytes`), so it is a hole to both; the DSDT's
//! `_CRS` claims it. The lines are GSIs 16-23 of the domU's 24-pin IOAPIC:
//! 0-15 are the ISA IRQs (the UART's 4, the keyboard's 1; no SCI, the
//! platform is hardware-reduced) that an OS may treat as legacy edge lines.

use crate::devices::ioapic::{IOAPIC_BASE, IOAPIC_PINS};
use crate::devices::uart16550::COM1_IRQ;
use crate::devices::i8042::KBD_IRQ;
use oxen_abi::{device_kind, Error, DEVICE_GSI_FIRST, DEVICE_SIZE, DEVICE_STRIDE, DEVICE_WINDOW, MAX_DEVICES};

const _: () = {
    assert!(DEVICE_WINDOW + MAX_DEVICES as u64 * DEVICE_STRIDE <= IOAPIC_BASE);
    assert!(DEVICE_SIZE <= DEVICE_STRIDE && DEVICE_WINDOW.is_multiple_of(4096));
    assert!(DEVICE_WINDOW > 0x10_0000);
    assert!(DEVICE_GSI_FIRST >= 16 && DEVICE_GSI_FIRST + MAX_DEVICES <= IOAPIC_PINS as u32);
    assert!((COM1_IRQ as u32) < DEVICE_GSI_FIRST && (KBD_IRQ as u32) < DEVICE_GSI_FIRST);
};

/// One declared device, where the hypervisor put it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Declared {
    pub kind: u32,
    pub base: u64,
    pub size: u64,
    pub gsi: u32,
}

/// A domU's declared devices, in the order declared (at most `MAX_DEVICES`).
#[derive(Clone, Debug, Default)]
pub struct DeviceList {
    list: [Option<Declared>; MAX_DEVICES as usize],
    len: usize,
}

impl DeviceList {
    /// Places a device of `kind` for a domain of `memory_bytes` of RAM.
    /// `NoSpc` when the list is full or the domain's RAM reaches the window.
    pub fn add(&mut self, kind: u32, memory_bytes: u64) -> Result<Declared, Error> {
        if kind != device_kind::VIRTIO_MMIO {
            return Err(Error::Inval);
        }
        if memory_bytes > DEVICE_WINDOW || self.len >= self.list.len() {
            return Err(Error::NoSpc);
        }
        let i = self.len;
        let d = Declared {
            kind,
            base: DEVICE_WINDOW + i as u64 * DEVICE_STRIDE,
            size: DEVICE_SIZE,
            gsi: DEVICE_GSI_FIRST + i as u32,
        };
        self.list[i] = Some(d);
        self.len += 1;
        Ok(d)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Declared> {
        self.list.iter().flatten()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `gsi` is a declared device's line (what `IRQ_LINE` may drive).
    pub fn owns_gsi(&self, gsi: u32) -> bool {
        self.iter().any(|d| d.gsi == gsi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn devices_get_distinct_slots_and_lines_until_full() {
        let mut l = DeviceList::default();
        assert!(l.is_empty() && !l.owns_gsi(4) && !l.owns_gsi(16));
        for i in 0..MAX_DEVICES {
            let d = l.add(device_kind::VIRTIO_MMIO, 128 * MIB).unwrap();
            assert_eq!(d.base, 0xfeb0_0000 + u64::from(i) * 0x1000);
            assert_eq!((d.size, d.gsi), (0x1000, 16 + i));
        }
        assert_eq!(l.add(device_kind::VIRTIO_MMIO, 128 * MIB), Err(Error::NoSpc));
        assert_eq!(l.len(), MAX_DEVICES as usize);
        assert!((16..24).all(|g| l.owns_gsi(g)));
        assert!(!l.owns_gsi(4) && !l.owns_gsi(1) && !l.owns_gsi(24) && !l.owns_gsi(u32::MAX));
        // No two overlap, none reaches the IOAPIC.
        let v: Vec<Declared> = l.iter().copied().collect();
        for (i, a) in v.iter().enumerate() {
            assert!(a.base + a.size <= IOAPIC_BASE);
            for b in &v[i + 1..] {
                assert!(a.base + a.size <= b.base || b.base + b.size <= a.base);
            }
        }
    }

    #[test]
    fn ram_reaching_the_window_or_an_unknown_kind_is_refused() {
        let mut l = DeviceList::default();
        assert_eq!(l.add(device_kind::VIRTIO_MMIO, DEVICE_WINDOW + 2 * MIB), Err(Error::NoSpc));
        assert_eq!(l.add(0, 128 * MIB), Err(Error::Inval));
        assert!(l.is_empty());
        assert!(l.add(device_kind::VIRTIO_MMIO, DEVICE_WINDOW).is_ok());
    }
}
