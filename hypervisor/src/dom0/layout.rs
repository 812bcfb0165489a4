//! Where dom0's boot pieces go. dom0's RAM is identity mapped (guest-physical =
//! host-physical, so the devices it drives can DMA), so this is a plan over host
//! addresses that are dom0's own: the boot structures in low memory, the kernel
//! at its preferred aligned address, the initrd where GRUB left it.

use crate::mem::memmap::Region;
use alloc::vec::Vec;

/// Low-memory boot area (inside dom0's first 640 KiB): zero page, command line,
/// GDT, then the identity page tables (PML4, PDPT, one PD per GiB).
pub const BOOT_AREA: u64 = 0x1_0000;
pub const BOOT_PARAMS: u64 = BOOT_AREA;
pub const CMDLINE: u64 = BOOT_AREA + 0x1000;
pub const CMDLINE_MAX: usize = 0x1000;
pub const GDT: u64 = BOOT_AREA + 0x2000;
pub const PAGE_TABLES: u64 = BOOT_AREA + 0x3000;
/// Linux's boot-protocol selectors (boot.rst, "64-bit BOOT PROTOCOL").
pub const BOOT_CS: u16 = 0x10;
pub const BOOT_DS: u16 = 0x18;
/// The boot GDT: null, null, 64-bit code at 0x10, data at 0x18.
pub const GDT_ENTRIES: [u64; 4] = [0, 0, 0x00af_9a00_0000_ffff, 0x00cf_9300_0000_ffff];

const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;
/// One PDPT: the boot identity map covers at most 512 GiB.
const MAX_IDENTITY: u64 = 512 * GIB;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub kernel_load: u64,
    /// Bytes of page tables at `PAGE_TABLES`.
    pub page_table_bytes: u64,
    /// Identity map covers `[0, identity_top)`.
    pub identity_top: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// dom0's RAM does not contain the low boot area.
    NoLowMemory,
    /// No region of dom0's RAM holds the kernel's `init_size` at its alignment.
    NoRoomForKernel,
    TooMuchMemory,
}

fn contains(ram: &[Region], r: Region) -> bool {
    ram.iter().any(|m| m.start <= r.start && r.end <= m.end)
}

/// Plans dom0's boot: `ram` is dom0's RAM (sorted, disjoint), `avoid` what must not
/// be overwritten (the initrd, the boot modules), `align`/`pref`/`init_size` from
/// the bzImage.
pub fn plan(ram: &[Region], avoid: &[Region], align: u64, pref: u64, init_size: u64) -> Result<Layout, LayoutError> {
    let top = ram.iter().map(|r| r.end).chain(avoid.iter().map(|r| r.end)).max().unwrap_or(0);
    let identity_top = top.max(4 * GIB).div_ceil(GIB) * GIB;
    if identity_top > MAX_IDENTITY {
        return Err(LayoutError::TooMuchMemory);
    }
    let page_table_bytes = identity_map_bytes(identity_top);
    if !contains(ram, Region::new(BOOT_AREA, PAGE_TABLES + page_table_bytes)) {
        return Err(LayoutError::NoLowMemory);
    }
    let align = align.max(MIB2);
    let boot_area = Region::new(BOOT_AREA, PAGE_TABLES + page_table_bytes);
    for r in ram {
        let mut at = r.start.max(pref).div_ceil(align) * align;
        while at.checked_add(init_size).is_some_and(|end| end <= r.end) {
            let k = Region::new(at, at + init_size);
            match avoid.iter().chain(core::iter::once(&boot_area)).find(|a| a.overlaps(&k)) {
                None => return Ok(Layout { kernel_load: at, page_table_bytes, identity_top }),
                Some(a) => at = a.end.div_ceil(align) * align,
            }
        }
    }
    Err(LayoutError::NoRoomForKernel)
}

/// The identity page tables for `layout`, to be copied to `PAGE_TABLES`: PML4,
/// PDPT, then PDs of 2 MiB pages, all present and writable.
pub fn identity_tables(layout: &Layout) -> Vec<u8> {
    identity_map(PAGE_TABLES, layout.identity_top)
}

/// Bytes of the tables `identity_map` builds for `[0, top)`: PML4, PDPT, one PD
/// per GiB begun and, when `top` ends inside a 2 MiB page, one page table for it.
pub const fn identity_map_bytes(top: u64) -> u64 {
    let tail_table = if top.is_multiple_of(MIB2) { 0 } else { 1 };
    (2 + top.div_ceil(GIB) + tail_table) * 4096
}

/// Page tables that map guest-physical `[0, top)` at the same virtual addresses,
/// to be copied to guest-physical `base` (page aligned): PML4, PDPT, one PD per
/// GiB begun, then a page table when `top` ends inside a 2 MiB page. Whole
/// 2 MiB pages are mapped large, the rest in 4 KiB pages; nothing at or above
/// `top` is mapped. Every entry is present, writable, executable, supervisor.
///
/// `top` must be a multiple of 4 KiB, at most 512 GiB (one PDPT); both callers
/// check that before planning.
pub fn identity_map(base: u64, top: u64) -> Vec<u8> {
    let valid = top.is_multiple_of(4096) && top <= MAX_IDENTITY && base.is_multiple_of(4096);
    assert!(valid, "identity_map({base:#x}, {top:#x})");
    let mut t = alloc::vec![0u8; identity_map_bytes(top) as usize];
    let mut put = |index: u64, value: u64| {
        let o = (index * 8) as usize;
        t[o..o + 8].copy_from_slice(&value.to_le_bytes());
    };
    const P_RW: u64 = 0x3;
    const PS: u64 = 0x80;
    let gibs = top.div_ceil(GIB);
    // Entry indices: the PML4 is table 0, the PDPT table 1, PD g is table 2 + g
    // (so PD entries run on from 1024 across the PDs), the tail table follows.
    put(0, (base + 0x1000) | P_RW);
    for g in 0..gibs {
        put(512 + g, (base + 0x2000 + g * 0x1000) | P_RW);
    }
    let large = top / MIB2;
    for m in 0..large {
        put(1024 + m, (m * MIB2) | P_RW | PS);
    }
    let tail = top % MIB2;
    if tail != 0 {
        let table = 2 + gibs;
        put(1024 + large, (base + table * 0x1000) | P_RW);
        for p in 0..tail / 4096 {
            put(table * 512 + p, (large * MIB2 + p * 4096) | P_RW);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn kernel_at_preferred_address_when_free() {
        let ram = [Region::new(0, 0x9f000), Region::new(4 * MIB, 256 * MIB)];
        let l = plan(&ram, &[], 2 * MIB, 16 * MIB, 64 * MIB).unwrap();
        assert_eq!(l.kernel_load, 16 * MIB);
        assert_eq!(l.identity_top, 4 * GIB);
        assert_eq!(l.page_table_bytes, 6 * 4096);
    }

    #[test]
    fn kernel_skips_initrd_and_small_regions() {
        let ram = [Region::new(0, 0x9f000), Region::new(16 * MIB, 40 * MIB), Region::new(64 * MIB, 300 * MIB)];
        let initrd = Region::new(70 * MIB, 71 * MIB + 5);
        let l = plan(&ram, &[initrd], 2 * MIB, 16 * MIB, 64 * MIB).unwrap();
        assert_eq!(l.kernel_load, 72 * MIB);
    }

    #[test]
    fn errors() {
        let ram = [Region::new(0, 0x9f000), Region::new(16 * MIB, 40 * MIB)];
        assert_eq!(plan(&ram, &[], 2 * MIB, 16 * MIB, 64 * MIB), Err(LayoutError::NoRoomForKernel));
        let ram = [Region::new(16 * MIB, 400 * MIB)];
        assert_eq!(plan(&ram, &[], 2 * MIB, 16 * MIB, 64 * MIB), Err(LayoutError::NoLowMemory));
        let ram = [Region::new(0, 0x9f000), Region::new(600 * GIB, 601 * GIB)];
        assert_eq!(plan(&ram, &[], 2 * MIB, 16 * MIB, 64 * MIB), Err(LayoutError::TooMuchMemory));
    }

    #[test]
    fn identity_tables_map_2mib_pages() {
        let ram = [Region::new(0, 0x9f000), Region::new(16 * MIB, 5 * GIB)];
        let l = plan(&ram, &[], 2 * MIB, 16 * MIB, 64 * MIB).unwrap();
        assert_eq!(l.identity_top, 5 * GIB);
        let t = identity_tables(&l);
        let at = |i: usize| u64::from_le_bytes(t[i * 8..i * 8 + 8].try_into().unwrap());
        assert_eq!(at(0), PAGE_TABLES + 0x1000 + 3);
        assert_eq!(at(512 + 4), PAGE_TABLES + 0x6000 + 3);
        // PD for GiB 1, entry 3: 1 GiB + 6 MiB, large page.
        assert_eq!(at(1024 + 512 + 3), GIB + 6 * MIB + 0x83);
        assert_eq!(t.len(), 7 * 4096);
    }

    #[test]
    fn whole_gib_maps_are_the_same_as_before_the_tail_support() {
        // The tables as dom0's builder made them when only whole GiBs were mapped.
        for gibs in [1u64, 4, 5, 64] {
            let mut old = alloc::vec![0u64; (2 + gibs as usize) * 512];
            old[0] = (PAGE_TABLES + 0x1000) | 3;
            for g in 0..gibs {
                old[512 + g as usize] = (PAGE_TABLES + 0x2000 + g * 0x1000) | 3;
                for m in 0..512 {
                    old[(1024 + g * 512 + m) as usize] = (g * GIB + m * MIB2) | 0x83;
                }
            }
            let old: Vec<u8> = old.iter().flat_map(|e| e.to_le_bytes()).collect();
            let top = gibs * GIB;
            let l = Layout { kernel_load: 0, page_table_bytes: identity_map_bytes(top), identity_top: top };
            assert!(identity_tables(&l) == old, "{gibs} GiB");
        }
    }
}
