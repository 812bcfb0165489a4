//! The physical memory map: which RAM the hypervisor may hand out.
//!
//! Firmware (via multiboot2) lists available RAM; from it we carve out everything
//! that is already in use — the first MiB (real-mode structures, our AP trampoline),
//! the hypervisor image, the boot information and the boot modules — and keep whole
//! pages only.

/// A half-open physical range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Region {
    pub start: u64,
    pub end: u64,
}

impl Region {
    pub const fn new(start: u64, end: u64) -> Self {
        Self { start, end }
    }
    pub const fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }
    pub const fn overlaps(&self, other: &Region) -> bool {
        self.start < other.end && other.start < self.end
    }
}

const PAGE: u64 = super::PAGE_SIZE;

/// Most regions a memory map may have; firmware maps have a few dozen.
pub const MAX_REGIONS: usize = 128;

/// A fixed-capacity list of regions, so the map can be carved before the heap exists.
#[derive(Clone, Copy)]
pub struct RegionList {
    regions: [Region; MAX_REGIONS],
    len: usize,
}

impl RegionList {
    pub const fn new() -> Self {
        Self { regions: [Region::new(0, 0); MAX_REGIONS], len: 0 }
    }
    /// Appends `r`; returns false (dropping it) when full.
    pub fn push(&mut self, r: Region) -> bool {
        if self.len == MAX_REGIONS {
            return false;
        }
        self.regions[self.len] = r;
        self.len += 1;
        true
    }
    pub fn as_slice(&self) -> &[Region] {
        &self.regions[..self.len]
    }
}

impl Default for RegionList {
    fn default() -> Self {
        Self::new()
    }
}

/// Usable, page-aligned, sorted, disjoint regions: `available` (shrunk inward to
/// whole pages) minus `reserved` (grown outward to whole pages). Regions beyond
/// `MAX_REGIONS` are dropped (they are left unused, never misused).
pub fn carve(available: &[Region], reserved: &[Region]) -> RegionList {
    let mut free = RegionList::new();
    for r in available {
        let r = Region::new(r.start.saturating_add(PAGE - 1) & !(PAGE - 1), r.end & !(PAGE - 1));
        if !r.is_empty() {
            free.push(r);
        }
    }
    free.regions[..free.len].sort_unstable();
    // Merge overlapping or adjacent available regions (firmware maps may repeat).
    let mut merged = RegionList::new();
    for &r in free.as_slice() {
        match merged.len.checked_sub(1).map(|i| &mut merged.regions[i]) {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => {
                merged.push(r);
            }
        }
    }
    for res in reserved {
        let res = Region::new(res.start & !(PAGE - 1), res.end.saturating_add(PAGE - 1) & !(PAGE - 1));
        if res.is_empty() {
            continue;
        }
        let mut next = RegionList::new();
        for &r in merged.as_slice() {
            if !r.overlaps(&res) {
                next.push(r);
                continue;
            }
            if r.start < res.start {
                next.push(Region::new(r.start, res.start));
            }
            if res.end < r.end {
                next.push(Region::new(res.end, r.end));
            }
        }
        merged = next;
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carves_reserved_ranges_out_of_available_ram() {
        // A QEMU-like map: low RAM, then RAM from 1 MiB; image at 2 MiB, a module higher.
        let avail = [Region::new(0, 0x9fc00), Region::new(0x100000, 0x8000000)];
        let reserved = [
            Region::new(0, 0x100000),
            Region::new(0x200000, 0x234567), // image, unaligned end
            Region::new(0x300010, 0x300020), // boot info inside one page
        ];
        let got = carve(&avail, &reserved);
        assert_eq!(
            got.as_slice(),
            vec![
                Region::new(0x100000, 0x200000),
                Region::new(0x235000, 0x300000),
                Region::new(0x301000, 0x8000000),
            ]
        );
    }

    #[test]
    fn shrinks_partial_pages_and_merges_duplicates() {
        let avail = [Region::new(0x1001, 0x5fff), Region::new(0x4000, 0x9000), Region::new(0x10, 0x20)];
        assert_eq!(carve(&avail, &[]).as_slice(), vec![Region::new(0x2000, 0x9000)]);
    }

    #[test]
    fn too_many_regions_are_dropped_not_misused() {
        let avail: Vec<Region> = (0..200u64).map(|i| Region::new(i * 0x2000, i * 0x2000 + 0x1000)).collect();
        let got = carve(&avail, &[]);
        assert_eq!(got.as_slice().len(), MAX_REGIONS);
        assert!(got.as_slice().iter().all(|r| avail.contains(r)));
    }

    #[test]
    fn reserved_region_swallowing_a_whole_region() {
        let avail = [Region::new(0x1000, 0x3000), Region::new(0x10000, 0x20000)];
        let got = carve(&avail, &[Region::new(0, 0x4000)]);
        assert_eq!(got.as_slice(), vec![Region::new(0x10000, 0x20000)]);
    }
}
