//! What the machine is made of, as the firmware describes it: the CPUs and I/O
//! APICs of the ACPI MADT, and the ACPI PM timer of the FADT.
//!
//! This module is pure and host-tested: MADT entries are filtered into the list
//! of CPUs to start, the raw MADT entry stream is checked before anything walks
//! it, and the clock arithmetic of timer calibration lives in `clock`. The
//! local APIC's programming model (register offsets, ICR encoding) is in
//! `lapic`. Reading the tables from memory is `acpi` (target only); the hardware
//! access to APICs and timers is `arch::x86_64::{apic, time, smp}`.

pub mod clock;
pub mod lapic;

#[cfg(target_os = "none")]
pub mod acpi;

use alloc::vec::Vec;
use core::fmt;

/// The most CPUs Oxen starts; CPUs beyond this are reported and left halted.
pub const MAX_CPUS: usize = 64;

/// A processor entry of the MADT (ACPI 6.5 §5.2.12.2 Processor Local APIC,
/// §5.2.12.12 Processor Local x2APIC), reduced to what CPU selection needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MadtCpu {
    pub apic_id: u32,
    pub flags: u32,
    /// From a Processor Local x2APIC entry (32-bit APIC ID).
    pub x2apic: bool,
}

/// MADT processor flag: the CPU is usable (ACPI 6.5 Table 5.47).
pub const MADT_CPU_ENABLED: u32 = 1 << 0;
/// MADT processor flag: disabled now, may be brought online later (hot add).
pub const MADT_CPU_ONLINE_CAPABLE: u32 = 1 << 1;
/// "No such APIC" in a Local APIC entry's 8-bit ID field.
const XAPIC_ID_INVALID: u32 = 0xff;
/// "No such APIC" in an x2APIC entry's 32-bit ID field.
const X2APIC_ID_INVALID: u32 = u32::MAX;

/// Something odd about the firmware's CPU list, worth a warning line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuListNote {
    /// The same APIC ID appeared twice; the second entry was ignored.
    Duplicate { apic_id: u32 },
    /// An entry with the reserved "no APIC" ID.
    InvalidId { apic_id: u32 },
    /// The APIC ID is too large for the APIC mode in use (xAPIC: 8 bits).
    Unaddressable { apic_id: u32 },
    /// The boot CPU's APIC ID was missing from the MADT; it was added.
    BspMissing { apic_id: u32 },
    /// More enabled CPUs than `MAX_CPUS`; this many were left out.
    TooMany { dropped: usize },
}

impl fmt::Display for CpuListNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Duplicate { apic_id } => write!(f, "MADT lists APIC id {apic_id} twice; ignoring the second entry"),
            Self::InvalidId { apic_id } => write!(f, "MADT processor entry with invalid APIC id {apic_id:#x}; ignored"),
            Self::Unaddressable { apic_id } => {
                write!(f, "APIC id {apic_id} cannot be addressed in xAPIC mode; that CPU stays halted")
            }
            Self::BspMissing { apic_id } => write!(f, "the boot CPU (APIC id {apic_id}) is not in the MADT; adding it"),
            Self::TooMany { dropped } => {
                write!(f, "more than {MAX_CPUS} CPUs: {dropped} left halted (Oxen supports {MAX_CPUS})")
            }
        }
    }
}

/// The CPUs to run on, as APIC IDs: the boot CPU first (it is cpu0), then the
/// enabled application processors in MADT order. Dense CPU numbers follow this
/// order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuList {
    pub apic_ids: Vec<u32>,
    pub notes: Vec<CpuListNote>,
}

/// Filters MADT processor entries into the CPUs to start.
///
/// Keeps enabled entries (disabled and merely online-capable ones are hot-plug
/// slots), drops reserved IDs, duplicates (firmware may list a CPU both as Local
/// APIC and x2APIC) and IDs above `max_apic_id` (255 in xAPIC mode: the ICR has
/// 8 destination bits), puts `bsp_apic_id` first, and caps the list at
/// `MAX_CPUS`. Never fails: odd entries become notes.
pub fn select_cpus(entries: impl IntoIterator<Item = MadtCpu>, bsp_apic_id: u32, max_apic_id: u32) -> CpuList {
    let mut list = CpuList { apic_ids: Vec::new(), notes: Vec::new() };
    list.apic_ids.push(bsp_apic_id);
    let mut bsp_seen = false;
    let mut dropped = 0;
    for e in entries {
        if e.flags & MADT_CPU_ENABLED == 0 {
            continue;
        }
        let invalid = if e.x2apic { X2APIC_ID_INVALID } else { XAPIC_ID_INVALID };
        if e.apic_id == invalid {
            list.notes.push(CpuListNote::InvalidId { apic_id: e.apic_id });
            continue;
        }
        if e.apic_id == bsp_apic_id {
            if bsp_seen {
                list.notes.push(CpuListNote::Duplicate { apic_id: e.apic_id });
            }
            bsp_seen = true;
            continue;
        }
        if list.apic_ids.contains(&e.apic_id) {
            list.notes.push(CpuListNote::Duplicate { apic_id: e.apic_id });
            continue;
        }
        if e.apic_id > max_apic_id {
            list.notes.push(CpuListNote::Unaddressable { apic_id: e.apic_id });
            continue;
        }
        if list.apic_ids.len() == MAX_CPUS {
            dropped += 1;
            continue;
        }
        list.apic_ids.push(e.apic_id);
    }
    if !bsp_seen {
        list.notes.push(CpuListNote::BspMissing { apic_id: bsp_apic_id });
    }
    if dropped > 0 {
        list.notes.push(CpuListNote::TooMany { dropped });
    }
    list
}

/// Where a malformed MADT entry stream stops making sense.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MalformedEntry {
    /// Byte offset of the bad entry from the start of the entry list.
    pub offset: usize,
}

/// Checks the MADT's variable-length entry list (the bytes after the 44-byte
/// fixed part, ACPI 6.5 §5.2.12): every entry's length must be at least its
/// 2-byte header and must not run past the end. A zero length would make any
/// walker loop forever; an overlong one would read past the table.
pub fn check_madt_entries(entries: &[u8]) -> Result<usize, MalformedEntry> {
    let mut offset = 0;
    let mut count = 0;
    while offset < entries.len() {
        let len = match entries.get(offset + 1) {
            Some(&len) if len >= 2 && offset + usize::from(len) <= entries.len() => usize::from(len),
            _ => return Err(MalformedEntry { offset }),
        };
        offset += len;
        count += 1;
    }
    Ok(count)
}

/// Byte length of the MADT's fixed part: SDT header, local APIC address, flags.
pub const MADT_FIXED_LEN: usize = 44;

/// An I/O APIC (ACPI 6.5 §5.2.12.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApic {
    pub id: u8,
    pub address: u32,
    /// First global system interrupt it handles.
    pub gsi_base: u32,
}

/// Where the ACPI PM timer is (ACPI 6.5 §4.8.3.3): a 24- or 32-bit counter at
/// 3.579545 MHz.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmTimer {
    Port { port: u16, bits32: bool },
    Mmio { address: u64, bits32: bool },
}

/// The platform as the firmware's ACPI tables describe it.
#[derive(Clone, Debug, Default)]
pub struct Platform {
    /// All enabled processor entries of the MADT, unfiltered.
    pub madt_cpus: Vec<MadtCpu>,
    pub io_apics: Vec<IoApic>,
    pub pm_timer: Option<PmTimer>,
    /// Physical address of the local APICs from the MADT (or its override).
    pub local_apic_address: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lapic(apic_id: u32, flags: u32) -> MadtCpu {
        MadtCpu { apic_id, flags, x2apic: false }
    }

    #[test]
    fn qemu_like_madt_with_hotplug_slots() {
        // QEMU -smp 4,maxcpus=6: six entries, the last two not enabled.
        let e = [lapic(0, 1), lapic(1, 1), lapic(2, 1), lapic(3, 1), lapic(4, 0), lapic(5, 2)];
        let l = select_cpus(e, 0, 0xfe);
        assert_eq!(l.apic_ids, [0, 1, 2, 3]);
        assert!(l.notes.is_empty());
    }

    #[test]
    fn bsp_first_even_when_not_listed_first() {
        let e = [lapic(0, 1), lapic(2, 1), lapic(4, 1), lapic(6, 1)];
        let l = select_cpus(e, 4, 0xfe);
        assert_eq!(l.apic_ids, [4, 0, 2, 6]);
        assert!(l.notes.is_empty());
    }

    #[test]
    fn missing_bsp_is_added_with_a_note() {
        let l = select_cpus([lapic(1, 1)], 0, 0xfe);
        assert_eq!(l.apic_ids, [0, 1]);
        assert_eq!(l.notes, [CpuListNote::BspMissing { apic_id: 0 }]);
    }

    #[test]
    fn duplicates_and_invalid_ids_are_dropped() {
        let e = [
            lapic(0, 1),
            lapic(1, 1),
            MadtCpu { apic_id: 1, flags: 1, x2apic: true },
            lapic(0xff, 1),
            MadtCpu { apic_id: u32::MAX, flags: 1, x2apic: true },
            lapic(0, 1),
        ];
        let l = select_cpus(e, 0, u32::MAX);
        assert_eq!(l.apic_ids, [0, 1]);
        assert_eq!(
            l.notes,
            [
                CpuListNote::Duplicate { apic_id: 1 },
                CpuListNote::InvalidId { apic_id: 0xff },
                CpuListNote::InvalidId { apic_id: u32::MAX },
                CpuListNote::Duplicate { apic_id: 0 },
            ]
        );
    }

    #[test]
    fn x2apic_ids_beyond_xapic_reach() {
        let e = [lapic(0, 1), MadtCpu { apic_id: 300, flags: 1, x2apic: true }];
        let xapic = select_cpus(e, 0, 0xfe);
        assert_eq!(xapic.apic_ids, [0]);
        assert_eq!(xapic.notes, [CpuListNote::Unaddressable { apic_id: 300 }]);
        let x2apic = select_cpus(e, 0, u32::MAX - 1);
        assert_eq!(x2apic.apic_ids, [0, 300]);
    }

    #[test]
    fn capped_at_max_cpus() {
        let e = (0..100).map(|i| MadtCpu { apic_id: i, flags: 1, x2apic: true });
        let l = select_cpus(e, 7, u32::MAX - 1);
        assert_eq!(l.apic_ids.len(), MAX_CPUS);
        assert_eq!(l.apic_ids[0], 7);
        assert!(!l.apic_ids[1..].contains(&7));
        assert_eq!(l.notes, [CpuListNote::TooMany { dropped: 100 - MAX_CPUS }]);
    }

    #[test]
    fn madt_entry_stream_checks() {
        // Local APIC (8 bytes), I/O APIC (12 bytes).
        let good = [0u8, 8, 0, 0, 1, 0, 0, 0, 1, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0];
        assert_eq!(check_madt_entries(&good), Ok(2));
        assert_eq!(check_madt_entries(&[]), Ok(0));
        // Zero length: a naive walker spins forever on it.
        assert_eq!(check_madt_entries(&[0, 8, 0, 0, 1, 0, 0, 0, 1, 0]), Err(MalformedEntry { offset: 8 }));
        // Runs past the end of the table.
        assert_eq!(check_madt_entries(&[0, 8, 0, 0, 1, 0, 0]), Err(MalformedEntry { offset: 0 }));
        // A lone type byte with no length.
        assert_eq!(check_madt_entries(&[0]), Err(MalformedEntry { offset: 0 }));
    }
}
