//! The e820 memory map a Linux guest is given: the host's map with the ranges
//! the hypervisor keeps for itself turned from RAM into reserved, so the guest
//! neither uses nor expects them.

use crate::mem::memmap::Region;
use alloc::vec::Vec;

/// e820 types (ACPI "Address Range Types").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u32)]
pub enum Kind {
    Ram = 1,
    Reserved = 2,
    Acpi = 3,
    Nvs = 4,
    Unusable = 5,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub start: u64,
    pub end: u64,
    pub kind: Kind,
}

/// Most entries `boot_params` holds.
pub const MAX_ENTRIES: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Error {
    TooManyEntries,
}

/// `host` (any order, non-overlapping) with every RAM byte inside `withheld`
/// turned into `Reserved`; sorted, adjacent entries of one kind merged.
pub fn build(host: &[Entry], withheld: &[Region]) -> Result<Vec<Entry>, E820Error> {
    let mut out: Vec<Entry> = Vec::new();
    for e in host.iter().filter(|e| e.end > e.start) {
        if e.kind != Kind::Ram {
            out.push(*e);
            continue;
        }
        // Cut withheld ranges out of this RAM entry, in address order.
        let mut cuts: Vec<Region> = withheld
            .iter()
            .filter(|w| w.start < e.end && e.start < w.end)
            .map(|w| Region::new(w.start.max(e.start), w.end.min(e.end)))
            .collect();
        cuts.sort();
        let mut at = e.start;
        for c in cuts {
            if c.start > at {
                out.push(Entry { start: at, end: c.start, kind: Kind::Ram });
            }
            let from = c.start.max(at);
            if c.end > from {
                out.push(Entry { start: from, end: c.end, kind: Kind::Reserved });
            }
            at = at.max(c.end);
        }
        if at < e.end {
            out.push(Entry { start: at, end: e.end, kind: Kind::Ram });
        }
    }
    out.sort_by_key(|e| e.start);
    let mut merged: Vec<Entry> = Vec::with_capacity(out.len());
    for e in out {
        match merged.last_mut() {
            Some(last) if last.kind == e.kind && last.end == e.start => last.end = e.end,
            _ => merged.push(e),
        }
    }
    if merged.len() > MAX_ENTRIES {
        return Err(E820Error::TooManyEntries);
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(start: u64, end: u64, kind: Kind) -> Entry {
        Entry { start, end, kind }
    }

    #[test]
    fn withheld_ram_becomes_reserved() {
        let host = [e(0x10_0000, 0x800_0000, Kind::Ram), e(0, 0x9_fc00, Kind::Ram), e(0xf_0000, 0x10_0000, Kind::Reserved)];
        let withheld = [Region::new(0x20_0000, 0x40_0000), Region::new(0x600_0000, 0x800_0000)];
        assert_eq!(
            build(&host, &withheld).unwrap(),
            vec![
                e(0, 0x9_fc00, Kind::Ram),
                e(0xf_0000, 0x10_0000, Kind::Reserved),
                e(0x10_0000, 0x20_0000, Kind::Ram),
                e(0x20_0000, 0x40_0000, Kind::Reserved),
                e(0x40_0000, 0x600_0000, Kind::Ram),
                e(0x600_0000, 0x800_0000, Kind::Reserved),
            ]
        );
    }

    #[test]
    fn merges_and_orders() {
        let host = [e(0x2000, 0x3000, Kind::Ram), e(0x1000, 0x2000, Kind::Ram), e(0, 0x1000, Kind::Nvs)];
        assert_eq!(build(&host, &[]).unwrap(), vec![e(0, 0x1000, Kind::Nvs), e(0x1000, 0x3000, Kind::Ram)]);
    }

    #[test]
    fn withheld_range_covering_whole_entries_and_overlapping_cuts() {
        let host = [e(0x1000, 0x5000, Kind::Ram)];
        let withheld = [Region::new(0, 0x2000), Region::new(0x1800, 0x3000), Region::new(0x4000, 0x9000)];
        assert_eq!(
            build(&host, &withheld).unwrap(),
            vec![e(0x1000, 0x3000, Kind::Reserved), e(0x3000, 0x4000, Kind::Ram), e(0x4000, 0x5000, Kind::Reserved)]
        );
    }

    #[test]
    fn too_many_entries_is_an_error() {
        let host: Vec<Entry> =
            (0..200u64).map(|i| e(i * 0x2000, i * 0x2000 + 0x1000, if i % 2 == 0 { Kind::Ram } else { Kind::Acpi })).collect();
        assert_eq!(build(&host, &[]), Err(E820Error::TooManyEntries));
    }
}
