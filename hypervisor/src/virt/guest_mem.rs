//! A guest's physical memory: which host frames back which guest-physical
//! ranges. EPT and NPT tables are both built from this one description, and every
//! hypervisor access to guest memory goes through `translate`, so a guest can only
//! ever name its own memory.

use alloc::vec::Vec;

use crate::mem::paging::{EntryFormat, MapError, MapFlags, PageSize, PageTable, TableMemory};
use crate::mem::{GuestPhysAddr, HostPhysAddr};

/// `len` bytes at guest-physical `gpa` backed by host-physical `hpa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRegion {
    pub gpa: GuestPhysAddr,
    pub hpa: HostPhysAddr,
    pub len: u64,
    pub flags: MapFlags,
}

#[derive(Clone, Debug, Default)]
pub struct GuestMemory {
    regions: Vec<GuestRegion>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestMemError {
    /// Not page aligned, empty or wrapping.
    BadRegion,
    /// Overlaps a region already present.
    Overlap,
}

impl GuestMemory {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn regions(&self) -> &[GuestRegion] {
        &self.regions
    }

    pub fn add(&mut self, r: GuestRegion) -> Result<(), GuestMemError> {
        let aligned = (r.gpa.as_u64() | r.hpa.as_u64() | r.len) & 0xfff == 0;
        if !aligned || r.len == 0 || r.gpa.checked_add(r.len).is_none() || r.hpa.checked_add(r.len).is_none() {
            return Err(GuestMemError::BadRegion);
        }
        let end = r.gpa.as_u64() + r.len;
        if self.regions.iter().any(|o| r.gpa.as_u64() < o.gpa.as_u64() + o.len && o.gpa.as_u64() < end) {
            return Err(GuestMemError::Overlap);
        }
        self.regions.push(r);
        Ok(())
    }

    /// Host address of guest-physical `gpa` and how many bytes from there on stay
    /// in the same region, or `None` if the guest has no memory there.
    pub fn translate(&self, gpa: GuestPhysAddr) -> Option<(HostPhysAddr, u64)> {
        self.regions.iter().find_map(|r| {
            let off = gpa.as_u64().checked_sub(r.gpa.as_u64())?;
            (off < r.len).then(|| (HostPhysAddr::new(r.hpa.as_u64() + off), r.len - off))
        })
    }

    /// Builds nested page tables (EPT or NPT) mapping every region.
    pub fn build_tables<F: EntryFormat>(&self, mem: &mut impl TableMemory) -> Result<PageTable<F>, MapError> {
        let mut pt = PageTable::<F>::new(mem)?;
        for r in &self.regions {
            if let Err(e) = pt.map_range(mem, r.gpa.as_u64(), r.hpa.as_u64(), r.len, r.flags, PageSize::Size2M) {
                pt.destroy(mem);
                return Err(e);
            }
        }
        Ok(pt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(gpa: u64, hpa: u64, len: u64) -> GuestRegion {
        GuestRegion { gpa: GuestPhysAddr::new(gpa), hpa: HostPhysAddr::new(hpa), len, flags: MapFlags::RWX }
    }

    #[test]
    fn translate_only_inside_regions() {
        let mut m = GuestMemory::new();
        m.add(region(0, 0x80_0000, 0x4000)).unwrap();
        m.add(region(0x10_0000, 0x90_0000, 0x1000)).unwrap();
        assert_eq!(m.translate(GuestPhysAddr::new(0x1234)), Some((HostPhysAddr::new(0x80_1234), 0x2dcc)));
        assert_eq!(m.translate(GuestPhysAddr::new(0x10_0fff)), Some((HostPhysAddr::new(0x90_0fff), 1)));
        assert_eq!(m.translate(GuestPhysAddr::new(0x4000)), None);
        assert_eq!(m.translate(GuestPhysAddr::new(u64::MAX)), None);
    }

    #[test]
    fn rejects_bad_and_overlapping_regions() {
        let mut m = GuestMemory::new();
        assert_eq!(m.add(region(0x10, 0, 0x1000)), Err(GuestMemError::BadRegion));
        assert_eq!(m.add(region(0, 0, 0)), Err(GuestMemError::BadRegion));
        assert_eq!(m.add(region(!0xfff, 0, 0x2000)), Err(GuestMemError::BadRegion));
        m.add(region(0x2000, 0, 0x2000)).unwrap();
        assert_eq!(m.add(region(0x3000, 0x10000, 0x1000)), Err(GuestMemError::Overlap));
        assert_eq!(m.add(region(0x1000, 0x10000, 0x2000)), Err(GuestMemError::Overlap));
        m.add(region(0x4000, 0x10000, 0x1000)).unwrap();
    }
}
