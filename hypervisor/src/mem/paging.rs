//! One 4-level page-table walker for the three formats the hypervisor builds:
//! its own tables (`Host`), Intel EPT (`Ept`) and AMD nested page tables (`Npt`).
//!
//! The walker is generic over the entry format and over where table frames come
//! from (`TableMemory`), so it is tested on the host over a mock frame pool.

use core::marker::PhantomData;

use bitflags::bitflags;

bitflags! {
    /// Vendor-neutral permissions and attributes of a mapping.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct MapFlags: u32 {
        const READ = 1 << 0;
        const WRITE = 1 << 1;
        const EXEC = 1 << 2;
        /// Device memory: uncached.
        const UNCACHED = 1 << 3;
    }
}

impl MapFlags {
    pub const RW: Self = Self::READ.union(Self::WRITE);
    pub const RX: Self = Self::READ.union(Self::EXEC);
    pub const RWX: Self = Self::RW.union(Self::EXEC);
}

/// Page sizes the walker maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    Size4K,
    Size2M,
    Size1G,
}

impl PageSize {
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 1 << 12,
            PageSize::Size2M => 1 << 21,
            PageSize::Size1G => 1 << 30,
        }
    }
    /// Level whose entry maps a page of this size (1 = PT, 2 = PD, 3 = PDPT).
    const fn level(self) -> usize {
        match self {
            PageSize::Size4K => 1,
            PageSize::Size2M => 2,
            PageSize::Size1G => 3,
        }
    }
}

const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const HUGE: u64 = 1 << 7;

/// How one page-table format encodes its entries.
pub trait EntryFormat {
    /// Whether the entry maps or points to anything.
    fn present(entry: u64) -> bool;
    /// A non-leaf entry pointing at the table at `table`.
    fn table(table: u64) -> u64;
    /// A leaf entry at `level` (1..=3) mapping `addr` with `flags`.
    fn leaf(addr: u64, flags: MapFlags, level: usize) -> u64;
    /// Permissions of a leaf entry.
    fn flags(entry: u64) -> MapFlags;
}

/// The hypervisor's own tables (Intel SDM Vol. 3 §5.5, AMD APM Vol. 2 §5.3).
pub enum Host {}
/// AMD nested page tables: the host format, every entry with U set because the
/// nested walk is a user access (APM Vol. 2 §15.25.5).
pub enum Npt {}
/// Intel extended page tables (SDM Vol. 3 §29.3.2).
pub enum Ept {}

mod x86 {
    pub const P: u64 = 1 << 0;
    pub const RW: u64 = 1 << 1;
    pub const US: u64 = 1 << 2;
    pub const PWT: u64 = 1 << 3;
    pub const PCD: u64 = 1 << 4;
    pub const NX: u64 = 1 << 63;
}

fn x86_leaf(addr: u64, flags: MapFlags, level: usize, extra: u64) -> u64 {
    let mut e = (addr & super::paging::ADDR_MASK) | x86::P | extra;
    if flags.contains(MapFlags::WRITE) {
        e |= x86::RW;
    }
    if !flags.contains(MapFlags::EXEC) {
        e |= x86::NX;
    }
    if flags.contains(MapFlags::UNCACHED) {
        e |= x86::PCD | x86::PWT;
    }
    if level > 1 {
        e |= HUGE;
    }
    e
}

fn x86_flags(entry: u64) -> MapFlags {
    let mut f = MapFlags::READ;
    if entry & x86::RW != 0 {
        f |= MapFlags::WRITE;
    }
    if entry & x86::NX == 0 {
        f |= MapFlags::EXEC;
    }
    if entry & x86::PCD != 0 {
        f |= MapFlags::UNCACHED;
    }
    f
}

impl EntryFormat for Host {
    fn present(e: u64) -> bool {
        e & x86::P != 0
    }
    fn table(t: u64) -> u64 {
        t | x86::P | x86::RW
    }
    fn leaf(addr: u64, flags: MapFlags, level: usize) -> u64 {
        x86_leaf(addr, flags, level, 0)
    }
    fn flags(e: u64) -> MapFlags {
        x86_flags(e)
    }
}

impl EntryFormat for Npt {
    fn present(e: u64) -> bool {
        e & x86::P != 0
    }
    fn table(t: u64) -> u64 {
        t | x86::P | x86::RW | x86::US
    }
    fn leaf(addr: u64, flags: MapFlags, level: usize) -> u64 {
        x86_leaf(addr, flags, level, x86::US)
    }
    fn flags(e: u64) -> MapFlags {
        x86_flags(e)
    }
}

mod ept {
    pub const R: u64 = 1 << 0;
    pub const W: u64 = 1 << 1;
    pub const X: u64 = 1 << 2;
    /// Memory type in bits 5:3 (SDM Vol. 3 §29.3.7): 0 = UC, 6 = WB.
    pub const MT_WB: u64 = 6 << 3;
    pub const MT_UC: u64 = 0;
}

impl EntryFormat for Ept {
    fn present(e: u64) -> bool {
        e & (ept::R | ept::W | ept::X) != 0
    }
    fn table(t: u64) -> u64 {
        t | ept::R | ept::W | ept::X
    }
    fn leaf(addr: u64, flags: MapFlags, level: usize) -> u64 {
        let mut e = addr & ADDR_MASK;
        if flags.contains(MapFlags::READ) {
            e |= ept::R;
        }
        if flags.contains(MapFlags::WRITE) {
            e |= ept::W;
        }
        if flags.contains(MapFlags::EXEC) {
            e |= ept::X;
        }
        e |= if flags.contains(MapFlags::UNCACHED) { ept::MT_UC } else { ept::MT_WB };
        if level > 1 {
            e |= HUGE;
        }
        e
    }
    fn flags(e: u64) -> MapFlags {
        let mut f = MapFlags::empty();
        if e & ept::R != 0 {
            f |= MapFlags::READ;
        }
        if e & ept::W != 0 {
            f |= MapFlags::WRITE;
        }
        if e & ept::X != 0 {
            f |= MapFlags::EXEC;
        }
        if e & (7 << 3) != ept::MT_WB {
            f |= MapFlags::UNCACHED;
        }
        f
    }
}

/// Where page-table frames come from and how the walker reaches them.
pub trait TableMemory {
    /// A zeroed 4 KiB frame for a new table, or `None` when out of memory.
    fn alloc_table(&mut self) -> Option<u64>;
    /// Gives a table frame back.
    fn free_table(&mut self, table: u64);
    /// Pointer to the 512 entries of the table at physical `table`.
    fn entries(&mut self, table: u64) -> *mut [u64; 512];
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    OutOfMemory,
    /// Address or size not aligned to the page size.
    Misaligned,
    /// Something is already mapped there.
    AlreadyMapped,
    /// Nothing is mapped there.
    NotMapped,
}

/// A 4-level page table of format `F`, identified by its root frame.
pub struct PageTable<F: EntryFormat> {
    root: u64,
    _format: PhantomData<F>,
}

fn index(addr: u64, level: usize) -> usize {
    ((addr >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

impl<F: EntryFormat> PageTable<F> {
    pub fn new(mem: &mut impl TableMemory) -> Result<Self, MapError> {
        let root = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
        Ok(Self { root, _format: PhantomData })
    }

    /// Physical address of the root table (for CR3, the EPT pointer or nCR3).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Maps `[virt, virt + len)` to `[phys, phys + len)` using the largest pages
    /// that alignment allows, up to `max`.
    pub fn map_range(
        &mut self,
        mem: &mut impl TableMemory,
        virt: u64,
        phys: u64,
        len: u64,
        flags: MapFlags,
        max: PageSize,
    ) -> Result<(), MapError> {
        if (virt | phys | len) & 0xfff != 0 {
            return Err(MapError::Misaligned);
        }
        let mut off = 0;
        while off < len {
            let (v, p, left) = (virt + off, phys + off, len - off);
            let size = [PageSize::Size1G, PageSize::Size2M, PageSize::Size4K]
                .into_iter()
                .find(|s| s.level() <= max.level() && (v | p) % s.bytes() == 0 && left >= s.bytes())
                .unwrap_or(PageSize::Size4K);
            self.map(mem, v, p, size, flags)?;
            off += size.bytes();
        }
        Ok(())
    }

    /// Maps one page.
    pub fn map(
        &mut self,
        mem: &mut impl TableMemory,
        virt: u64,
        phys: u64,
        size: PageSize,
        flags: MapFlags,
    ) -> Result<(), MapError> {
        if !(virt | phys).is_multiple_of(size.bytes()) {
            return Err(MapError::Misaligned);
        }
        let mut table = self.root;
        for level in (size.level() + 1..=4).rev() {
            let slot = index(virt, level);
            // SAFETY: `table` is a table frame this walker allocated (or the root),
            // and `TableMemory::entries` gives a valid pointer to it.
            let entry = unsafe { (*mem.entries(table))[slot] };
            table = if !F::present(entry) {
                let new = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
                // SAFETY: as above.
                unsafe { (*mem.entries(table))[slot] = F::table(new) };
                new
            } else if entry & HUGE != 0 {
                return Err(MapError::AlreadyMapped);
            } else {
                entry & ADDR_MASK
            };
        }
        let slot = index(virt, size.level());
        // SAFETY: as above.
        let entries = unsafe { &mut *mem.entries(table) };
        if F::present(entries[slot]) {
            return Err(MapError::AlreadyMapped);
        }
        entries[slot] = F::leaf(phys, flags, size.level());
        Ok(())
    }

    /// The physical address `virt` maps to, with the mapping's flags.
    pub fn translate(&self, mem: &mut impl TableMemory, virt: u64) -> Option<(u64, MapFlags)> {
        let mut table = self.root;
        for level in (1..=4).rev() {
            // SAFETY: table frames reached from the root are ours.
            let entry = unsafe { (*mem.entries(table))[index(virt, level)] };
            if !F::present(entry) {
                return None;
            }
            if level == 1 || entry & HUGE != 0 {
                let size = 1u64 << (12 + 9 * (level - 1));
                return Some(((entry & ADDR_MASK & !(size - 1)) | (virt & (size - 1)), F::flags(entry)));
            }
            table = entry & ADDR_MASK;
        }
        None
    }

    /// The leaf entry mapping `virt`: (its table, its slot, its level).
    fn leaf_slot(&self, mem: &mut impl TableMemory, virt: u64) -> Option<(u64, usize, usize)> {
        let mut table = self.root;
        for level in (1..=4).rev() {
            let slot = index(virt, level);
            // SAFETY: table frames reached from the root are ours.
            let entry = unsafe { (*mem.entries(table))[slot] };
            if !F::present(entry) {
                return None;
            }
            if level == 1 || entry & HUGE != 0 {
                return Some((table, slot, level));
            }
            table = entry & ADDR_MASK;
        }
        None
    }

    /// Makes the page that maps `virt` a 4 KiB one: a 1 GiB or 2 MiB leaf
    /// becomes a table of 512 leaves one level down with the same flags (and
    /// again, down to 4 KiB). What the guest sees is unchanged; the caller
    /// flushes the TLB before relying on per-4 KiB permissions.
    pub fn split_to_4k(&mut self, mem: &mut impl TableMemory, virt: u64) -> Result<(), MapError> {
        loop {
            let (table, slot, level) = self.leaf_slot(mem, virt).ok_or(MapError::NotMapped)?;
            if level == 1 {
                return Ok(());
            }
            // SAFETY: table frames reached from the root are ours.
            let entry = unsafe { (*mem.entries(table))[slot] };
            let size = 1u64 << (12 + 9 * (level - 1));
            let base = entry & ADDR_MASK & !(size - 1);
            let flags = F::flags(entry);
            let new = mem.alloc_table().ok_or(MapError::OutOfMemory)?;
            let step = size / 512;
            // SAFETY: `new` is a fresh table frame from `mem`.
            let leaves = unsafe { &mut *mem.entries(new) };
            for (i, e) in leaves.iter_mut().enumerate() {
                *e = F::leaf(base + i as u64 * step, flags, level - 1);
            }
            // SAFETY: as above; one store replaces the huge leaf with the table
            // that maps the same memory.
            unsafe { (*mem.entries(table))[slot] = F::table(new) };
        }
    }

    /// Sets the flags of the 4 KiB page at `virt` (splitting a huge page that
    /// holds it first) and returns its old flags. Log-dirty mode write-protects
    /// a guest's pages with it and gives write access back page by page.
    pub fn set_flags(&mut self, mem: &mut impl TableMemory, virt: u64, flags: MapFlags) -> Result<MapFlags, MapError> {
        self.split_to_4k(mem, virt)?;
        let (table, slot, _) = self.leaf_slot(mem, virt).ok_or(MapError::NotMapped)?;
        // SAFETY: table frames reached from the root are ours.
        let entries = unsafe { &mut *mem.entries(table) };
        let old = F::flags(entries[slot]);
        entries[slot] = F::leaf(entries[slot] & ADDR_MASK, flags, 1);
        Ok(old)
    }

    /// Removes the leaf of `size` at `virt` and returns the address it mapped.
    /// Table frames stay until `destroy`; the caller flushes the TLB.
    pub fn unmap(&mut self, mem: &mut impl TableMemory, virt: u64, size: PageSize) -> Result<u64, MapError> {
        if !virt.is_multiple_of(size.bytes()) {
            return Err(MapError::Misaligned);
        }
        let (table, slot, level) = self.leaf_slot(mem, virt).ok_or(MapError::NotMapped)?;
        if level != size.level() {
            // A bigger page holds it (split it first), or a smaller one is there.
            return Err(MapError::Misaligned);
        }
        // SAFETY: table frames reached from the root are ours.
        let entries = unsafe { &mut *mem.entries(table) };
        let phys = entries[slot] & ADDR_MASK;
        entries[slot] = 0;
        Ok(phys)
    }

    /// Frees every table frame (not the mapped memory itself).
    pub fn destroy(self, mem: &mut impl TableMemory) {
        fn free_level<F: EntryFormat>(mem: &mut impl TableMemory, table: u64, level: usize) {
            if level > 1 {
                for slot in 0..512 {
                    // SAFETY: table frames reached from the root are ours.
                    let entry = unsafe { (*mem.entries(table))[slot] };
                    if F::present(entry) && entry & HUGE == 0 {
                        free_level::<F>(mem, entry & ADDR_MASK, level - 1);
                    }
                }
            }
            mem.free_table(table);
        }
        free_level::<F>(mem, self.root, 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::{boxed::Box, collections::BTreeMap};

    /// Table frames backed by host heap memory at fake physical addresses.
    #[derive(Default)]
    struct MockMemory {
        tables: BTreeMap<u64, Box<[u64; 512]>>,
        next: u64,
        freed: usize,
    }

    impl TableMemory for MockMemory {
        fn alloc_table(&mut self) -> Option<u64> {
            if self.tables.len() >= 64 {
                return None;
            }
            self.next += 0x1000;
            self.tables.insert(0x1_0000_0000 + self.next, Box::new([0; 512]));
            Some(0x1_0000_0000 + self.next)
        }
        fn free_table(&mut self, table: u64) {
            self.tables.remove(&table).expect("freeing unknown table");
            self.freed += 1;
        }
        fn entries(&mut self, table: u64) -> *mut [u64; 512] {
            &mut **self.tables.get_mut(&table).expect("unknown table") as *mut _
        }
    }

    #[test]
    fn host_map_and_translate_with_large_pages() {
        let mut mem = MockMemory::default();
        let mut pt = PageTable::<Host>::new(&mut mem).unwrap();
        // 2 MiB + 8 KiB at an aligned address: one 2 MiB page and two 4 KiB pages.
        pt.map_range(&mut mem, 0x4000_0000, 0x20_0000, 0x20_2000, MapFlags::RX, PageSize::Size2M).unwrap();
        assert_eq!(pt.translate(&mut mem, 0x4000_1234), Some((0x20_1234, MapFlags::RX)));
        assert_eq!(pt.translate(&mut mem, 0x4020_1fff).map(|t| t.0), Some(0x40_1fff));
        assert_eq!(pt.translate(&mut mem, 0x4020_2000), None);
        // root + PDPT + PD + one PT
        assert_eq!(mem.tables.len(), 4);
        let root = pt.root();
        // SAFETY: test-only raw access to a mock table.
        let pml4e = unsafe { (*mem.entries(root))[0] };
        assert_eq!(pml4e & 0x7, 0x3, "host tables are supervisor-only");
        pt.destroy(&mut mem);
        assert!(mem.tables.is_empty());
        assert_eq!(mem.freed, 4);
    }

    #[test]
    fn nx_and_write_bits() {
        let e = Host::leaf(0x5000, MapFlags::RW, 1);
        assert_eq!(e, 0x5000 | 0x3 | (1 << 63));
        let e = Host::leaf(0x20_0000, MapFlags::RX, 2);
        assert_eq!(e, 0x20_0000 | 0x1 | 0x80);
        let e = Host::leaf(0xfee0_0000, MapFlags::RW | MapFlags::UNCACHED, 1);
        assert_eq!(e & 0x18, 0x18);
    }

    #[test]
    fn npt_entries_are_user() {
        assert_eq!(Npt::table(0x1000) & 0x7, 0x7);
        assert_eq!(Npt::leaf(0x1000, MapFlags::RWX, 1), 0x1000 | 0x7);
    }

    #[test]
    fn ept_encoding() {
        // RWX, write-back, 4 KiB.
        assert_eq!(Ept::leaf(0x3000, MapFlags::RWX, 1), 0x3000 | 0x7 | (6 << 3));
        // Read-only 2 MiB, uncached.
        assert_eq!(Ept::leaf(0x20_0000, MapFlags::READ | MapFlags::UNCACHED, 2), 0x20_0000 | 0x1 | 0x80);
        assert_eq!(Ept::table(0x4000), 0x4007);
        assert_eq!(Ept::flags(Ept::leaf(0, MapFlags::RW, 1)), MapFlags::RW);
    }

    #[test]
    fn ept_map_translate() {
        let mut mem = MockMemory::default();
        let mut ept = PageTable::<Ept>::new(&mut mem).unwrap();
        ept.map_range(&mut mem, 0, 0x80_0000, 0x10_0000, MapFlags::RWX, PageSize::Size2M).unwrap();
        assert_eq!(ept.translate(&mut mem, 0xabc), Some((0x80_0abc, MapFlags::RWX)));
        assert_eq!(ept.translate(&mut mem, 0x10_0000), None);
    }

    #[test]
    fn split_keeps_every_translation_and_flag() {
        fn check<F: EntryFormat>() {
            let mut mem = MockMemory::default();
            let mut pt = PageTable::<F>::new(&mut mem).unwrap();
            pt.map(&mut mem, 0x4000_0000, 0x8000_0000, PageSize::Size1G, MapFlags::RWX).unwrap();
            pt.map(&mut mem, 0x20_0000, 0x60_0000, PageSize::Size2M, MapFlags::RW).unwrap();
            let before = mem.tables.len();
            pt.split_to_4k(&mut mem, 0x4012_3456).unwrap();
            // 1 GiB -> 512 x 2 MiB -> one of them 512 x 4 KiB: two new tables.
            assert_eq!(mem.tables.len(), before + 2);
            for v in [0x4000_0000u64, 0x4012_3456, 0x4012_3fff, 0x4020_0000, 0x7fff_ffff] {
                assert_eq!(pt.translate(&mut mem, v), Some((v + 0x4000_0000, MapFlags::RWX)), "{v:#x}");
            }
            let (_, _, level) = pt.leaf_slot(&mut mem, 0x4012_3000).unwrap();
            assert_eq!(level, 1);
            let (_, _, level) = pt.leaf_slot(&mut mem, 0x4040_0000).unwrap();
            assert_eq!(level, 2, "only the page holding the address is split down to 4 KiB");
            // Splitting a 4 KiB page again does nothing; an unmapped one is an error.
            pt.split_to_4k(&mut mem, 0x4012_3000).unwrap();
            assert_eq!(mem.tables.len(), before + 2);
            assert_eq!(pt.split_to_4k(&mut mem, 0x1000_0000), Err(MapError::NotMapped));
            pt.destroy(&mut mem);
            assert!(mem.tables.is_empty());
        }
        check::<Host>();
        check::<Npt>();
        check::<Ept>();
    }

    #[test]
    fn write_protect_and_give_back_one_page() {
        fn check<F: EntryFormat>() {
            let mut mem = MockMemory::default();
            let mut pt = PageTable::<F>::new(&mut mem).unwrap();
            pt.map_range(&mut mem, 0, 0x100_0000, 0x40_0000, MapFlags::RWX, PageSize::Size2M).unwrap();
            // Log-dirty: every page read-only, then one written page writable again.
            for page in (0..0x40_0000u64).step_by(0x1000) {
                assert_eq!(pt.set_flags(&mut mem, page, MapFlags::RX), Ok(MapFlags::RWX));
            }
            assert_eq!(pt.translate(&mut mem, 0x12_3456), Some((0x112_3456, MapFlags::RX)));
            assert_eq!(pt.set_flags(&mut mem, 0x12_3000, MapFlags::RWX), Ok(MapFlags::RX));
            assert_eq!(pt.translate(&mut mem, 0x12_3fff), Some((0x112_3fff, MapFlags::RWX)));
            assert_eq!(pt.translate(&mut mem, 0x12_4000), Some((0x112_4000, MapFlags::RX)));
            assert_eq!(pt.translate(&mut mem, 0x12_2fff), Some((0x112_2fff, MapFlags::RX)));
            assert_eq!(pt.set_flags(&mut mem, 0x40_0000, MapFlags::RX), Err(MapError::NotMapped));
            pt.destroy(&mut mem);
        }
        check::<Npt>();
        check::<Ept>();
    }

    #[test]
    fn log_dirty_protects_ram_pages_and_gives_back_one() {
        use crate::mem::dirty::set_write;
        fn check<F: EntryFormat>() {
            let mut mem = MockMemory::default();
            let mut pt = PageTable::<F>::new(&mut mem).unwrap();
            // 4 MiB of RWX RAM in 2 MiB pages and one read-only 4 KiB page
            // (a ROM): only what was writable is taken and given back.
            pt.map_range(&mut mem, 0, 0x100_0000, 0x40_0000, MapFlags::RWX, PageSize::Size2M).unwrap();
            pt.map(&mut mem, 0x40_0000, 0x200_0000, PageSize::Size4K, MapFlags::RX).unwrap();
            let tables = mem.tables.len();
            // Pages 0..=1024 plus one unmapped page (skipped).
            assert_eq!(set_write(&mut pt, &mut mem, 0..1026, false), Ok(1024));
            assert_eq!(mem.tables.len(), tables + 2, "both 2 MiB pages split, one table each");
            for v in [0u64, 0x1f_f000, 0x20_0000, 0x3f_ffff] {
                assert_eq!(pt.translate(&mut mem, v), Some((v + 0x100_0000, MapFlags::RX)), "{v:#x}");
            }
            // Already protected: nothing changes the second time.
            assert_eq!(set_write(&mut pt, &mut mem, 0..1026, false), Ok(0));
            // A write fault on page 0x123 gives that page alone back.
            assert_eq!(set_write(&mut pt, &mut mem, [0x123], true), Ok(1));
            assert_eq!(pt.translate(&mut mem, 0x12_3000).map(|t| t.1), Some(MapFlags::RWX));
            assert_eq!(pt.translate(&mut mem, 0x12_4000).map(|t| t.1), Some(MapFlags::RX));
            assert_eq!(pt.translate(&mut mem, 0x12_2fff).map(|t| t.1), Some(MapFlags::RX));
            // A page number whose address overflows is refused, not wrapped.
            assert_eq!(set_write(&mut pt, &mut mem, [u64::MAX], true), Err(MapError::NotMapped));
            pt.destroy(&mut mem);
            assert!(mem.tables.is_empty(), "split tables freed with the rest");
        }
        check::<Npt>();
        check::<Ept>();
    }

    #[test]
    fn unmap_one_page() {
        let mut mem = MockMemory::default();
        let mut pt = PageTable::<Npt>::new(&mut mem).unwrap();
        pt.map_range(&mut mem, 0x10_0000, 0x50_0000, 0x3000, MapFlags::RW, PageSize::Size4K).unwrap();
        pt.map(&mut mem, 0x20_0000, 0x60_0000, PageSize::Size2M, MapFlags::RW).unwrap();
        assert_eq!(pt.unmap(&mut mem, 0x10_1000, PageSize::Size4K), Ok(0x50_1000));
        assert_eq!(pt.translate(&mut mem, 0x10_1000), None);
        assert_eq!(pt.translate(&mut mem, 0x10_2000).map(|t| t.0), Some(0x50_2000));
        assert_eq!(pt.unmap(&mut mem, 0x10_1000, PageSize::Size4K), Err(MapError::NotMapped));
        assert_eq!(pt.unmap(&mut mem, 0x10_0800, PageSize::Size4K), Err(MapError::Misaligned));
        // A 4 KiB unmap inside a 2 MiB page needs the page split first.
        assert_eq!(pt.unmap(&mut mem, 0x20_1000, PageSize::Size4K), Err(MapError::Misaligned));
        assert_eq!(pt.unmap(&mut mem, 0x20_0000, PageSize::Size2M), Ok(0x60_0000));
        // Mapped again after the unmap.
        pt.map(&mut mem, 0x10_1000, 0x70_1000, PageSize::Size4K, MapFlags::RW).unwrap();
        assert_eq!(pt.translate(&mut mem, 0x10_1000).map(|t| t.0), Some(0x70_1000));
        pt.destroy(&mut mem);
        assert!(mem.tables.is_empty());
    }

    #[test]
    fn rejects_overlap_misalignment_and_reports_oom() {
        let mut mem = MockMemory::default();
        let mut pt = PageTable::<Host>::new(&mut mem).unwrap();
        pt.map(&mut mem, 0x20_0000, 0, PageSize::Size2M, MapFlags::RW).unwrap();
        assert_eq!(pt.map(&mut mem, 0x20_1000, 0, PageSize::Size4K, MapFlags::RW), Err(MapError::AlreadyMapped));
        assert_eq!(pt.map(&mut mem, 0x1000, 0x800, PageSize::Size4K, MapFlags::RW), Err(MapError::Misaligned));
        // 64 tables at most in the mock: mapping far-apart 4K pages runs out.
        let mut res = Ok(());
        for i in 0..100u64 {
            res = pt.map(&mut mem, i << 39, 0, PageSize::Size4K, MapFlags::RW);
            if res.is_err() {
                break;
            }
        }
        assert_eq!(res, Err(MapError::OutOfMemory));
    }
}
