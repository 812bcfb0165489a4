//! Foreign mappings: a domU's RAM pages shown to dom0 (`domctl::FOREIGN_MAP`,
//! `FOREIGN_UNMAP`), for device models in dom0 that read and write a domU's
//! memory (virtio queues and buffers).
//!
//! dom0 is identity mapped in its nested tables and never sees a domU's
//! frames there. A mapping puts them in the *window*: `FOREIGN_WINDOW_BYTES`
//! of dom0-physical address space above everything dom0's tables map (its
//! RAM, the machine's devices), 1 GiB aligned and inside the CPU's physical
//! address width; dom0's e820 does not claim it. Every page table the window
//! needs is built at boot (`init`), so mapping never allocates a frame and
//! unmapping leaves none behind: free memory is the same before and after.
//!
//! Rules (docs/hypercalls.md, "Foreign mappings"):
//! - A mapping is a run of window pages, taken first fit; it is named by its
//!   address and length only, and only those exactly end it (`Window::take`).
//! - When its domain dies, every mapping of it is emptied (`revoke`): its
//!   entries leave dom0's tables and dom0's TLBs are flushed (`shootdown`)
//!   *before* the domain's frames go back to the pool. The run stays taken,
//!   empty, until dom0 unmaps it, so a later mapping never appears where a
//!   stale user mapping of dom0 still points. dom0's accesses to an empty
//!   page are blocked accesses (reads see all ones, writes are dropped, an
//!   undecodable access gets #GP), never a hypervisor halt.
//!
//! `Window` is the bookkeeping, pure and tested on the host; the rest works
//! on dom0's tables on the target.

use alloc::vec::Vec;
use oxen_abi::{Error, FOREIGN_MAPPINGS_MAX};

/// A run of window pages handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Its first page, counted from the window's start.
    pub first: u64,
    pub count: u64,
    pub domid: u32,
    /// Its entries are in dom0's tables (false once its domain died).
    pub live: bool,
}

/// Which pages of the window are taken, and by which domain's mappings.
pub struct Window {
    pages: u64,
    /// Sorted by `first`, not overlapping.
    slots: Vec<Slot>,
}

impl Window {
    pub const fn new(pages: u64) -> Self {
        Self { pages, slots: Vec::new() }
    }

    /// Takes the first run of `count` free pages for `domid`'s mapping.
    /// `-ENOSPC` when no run is long enough or `FOREIGN_MAPPINGS_MAX` are held.
    pub fn alloc(&mut self, domid: u32, count: u64) -> Result<Slot, Error> {
        if count == 0 || self.slots.len() >= FOREIGN_MAPPINGS_MAX {
            return Err(Error::NoSpc);
        }
        let mut at = 0;
        let mut index = self.slots.len();
        for (i, s) in self.slots.iter().enumerate() {
            if s.first - at >= count {
                index = i;
                break;
            }
            at = s.first + s.count;
        }
        if index == self.slots.len() && self.pages.saturating_sub(at) < count {
            return Err(Error::NoSpc);
        }
        self.slots.try_reserve(1).map_err(|_| Error::NoMem)?;
        let slot = Slot { first: at, count, domid, live: true };
        self.slots.insert(index, slot);
        Ok(slot)
    }

    /// Ends the mapping that is exactly `count` pages from `first`.
    pub fn take(&mut self, first: u64, count: u64) -> Result<Slot, Error> {
        let i = self.slots.binary_search_by_key(&first, |s| s.first).map_err(|_| Error::Inval)?;
        if self.slots[i].count != count {
            return Err(Error::Inval);
        }
        Ok(self.slots.remove(i))
    }

    /// Marks the mapping that is exactly `count` pages from `first` empty
    /// (the caller removes its entries); returns whether it was live. It
    /// stays taken until `take`.
    pub fn empty(&mut self, first: u64, count: u64) -> Result<bool, Error> {
        let i = self.slots.binary_search_by_key(&first, |s| s.first).map_err(|_| Error::Inval)?;
        let s = &mut self.slots[i];
        if s.count != count {
            return Err(Error::Inval);
        }
        Ok(core::mem::replace(&mut s.live, false))
    }

    /// Marks `domid`'s live mappings empty and calls `f` on each: the caller
    /// removes their entries. They stay taken until `take`. Returns how many
    /// mappings of `domid` are held, live or not.
    pub fn revoke(&mut self, domid: u32, mut f: impl FnMut(&Slot)) -> usize {
        let mut n = 0;
        for s in self.slots.iter_mut().filter(|s| s.domid == domid) {
            if s.live {
                s.live = false;
                f(s);
            }
            n += 1;
        }
        n
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }
}

/// The most guest-physical address bits the window may use: 4-level EPT and
/// NPT tables (`mem::paging`) translate 48.
pub const WINDOW_MAX_BITS: u8 = 48;

/// Where the window goes: the highest 1 GiB-aligned run of `bytes` below
/// `1 << phys_bits` (at most `WINDOW_MAX_BITS`) that overlaps none of the
/// machine's memory-map entries `occupied` (RAM, reserved ranges, device
/// memory, `[start, end)`) and lies above `floor` (dom0's RAM) and 4 GiB. The
/// top of the address space is where firmware puts nothing in general (it
/// assigns 64-bit BARs upwards from just above the RAM); a QEMU AMD machine
/// has a reserved range (the HyperTransport hole) at its last 12 GiB, so the
/// window sits just below it there.
pub fn place_window(occupied: &[(u64, u64)], floor: u64, bytes: u64, phys_bits: u8) -> Option<u64> {
    const GIB: u64 = 1 << 30;
    let limit = 1u64 << phys_bits.min(WINDOW_MAX_BITS);
    let floor = floor.max(4 * GIB).checked_next_multiple_of(GIB)?;
    let mut base = limit.checked_sub(bytes)? & !(GIB - 1);
    while base >= floor {
        let end = base + bytes;
        match occupied.iter().filter(|&&(s, e)| s < end && e > base).map(|&(s, _)| s).min() {
            None => return Some(base),
            Some(s) => base = s.checked_sub(bytes)? & !(GIB - 1),
        }
    }
    None
}

#[cfg(target_os = "none")]
pub use global::*;

#[cfg(target_os = "none")]
mod global {
    use super::{Slot, Window};
    use crate::mem::paging::{EntryFormat, MapError, MapFlags, PageSize, PageTable};
    use crate::mem::{FrameTables, PAGE_SIZE};
    use crate::virt::NestedTables;
    use core::sync::atomic::{AtomicU64, Ordering};
    use log::{info, warn};
    use oxen_abi::{Error, FOREIGN_WINDOW_BYTES};
    use spin::Mutex;

    struct Foreign {
        base: u64,
        window: Window,
        /// dom0's nested tables (kept here for good once dom0 is built).
        tables: NestedTables,
    }

    static FOREIGN: Mutex<Option<Foreign>> = Mutex::new(None);

    /// Takes dom0's nested tables and builds the window's page tables at
    /// `base`: one 4 KiB entry made and removed in each 2 MiB of it leaves
    /// its page directory and page tables in place, empty.
    pub fn init(mut tables: NestedTables, base: u64) {
        let built = (0..FOREIGN_WINDOW_BYTES / PageSize::Size2M.bytes()).try_for_each(|i| {
            let at = base + i * PageSize::Size2M.bytes();
            with_table(&mut tables, |t| {
                t.map(&mut FrameTables, at, 0, PageSize::Size4K, MapFlags::READ)?;
                t.unmap(&mut FrameTables, at, PageSize::Size4K).map(|_| ())
            })
        });
        if let Err(e) = built {
            // What was built stays (dom0's tables are never freed); only the
            // window is off: FOREIGN_MAP answers -ENOSPC.
            warn!("foreign: no window for dom0's foreign mappings ({e:?})");
            *FOREIGN.lock() = Some(Foreign { base, window: Window::new(0), tables });
            return;
        }
        info!("foreign: dom0's window for foreign mappings at {:#x}-{:#x}", base, base + FOREIGN_WINDOW_BYTES);
        *FOREIGN.lock() = Some(Foreign { base, window: Window::new(FOREIGN_WINDOW_BYTES / PAGE_SIZE), tables });
    }

    /// Keeps dom0's tables with no window: `FOREIGN_MAP` answers -ENOSPC.
    pub fn init_without_window(tables: NestedTables) {
        *FOREIGN.lock() = Some(Foreign { base: 0, window: Window::new(0), tables });
    }

    fn with_table<T>(t: &mut NestedTables, f: impl FnOnce(&mut dyn Table) -> T) -> T {
        match t {
            NestedTables::Ept(t) => f(t),
            NestedTables::Npt(t) => f(t),
        }
    }

    /// The two walker operations the window uses, for either format.
    trait Table {
        fn map(&mut self, mem: &mut FrameTables, virt: u64, phys: u64, size: PageSize, flags: MapFlags) -> Result<(), MapError>;
        fn unmap(&mut self, mem: &mut FrameTables, virt: u64, size: PageSize) -> Result<u64, MapError>;
    }

    impl<F: EntryFormat> Table for PageTable<F> {
        fn map(&mut self, mem: &mut FrameTables, virt: u64, phys: u64, size: PageSize, flags: MapFlags) -> Result<(), MapError> {
            PageTable::map(self, mem, virt, phys, size, flags)
        }
        fn unmap(&mut self, mem: &mut FrameTables, virt: u64, size: PageSize) -> Result<u64, MapError> {
            PageTable::unmap(self, mem, virt, size)
        }
    }

    /// Maps `count` pages of `domid`, page `i` at host-physical `hpa(i)`, into
    /// the window, read-write, write-back (no UNCACHED: NPT leaves PAT/PCD/PWT
    /// clear, EPT's memory type is WB). Returns the dom0-physical address.
    /// Called with the domain table locked, the domain checked alive: a death
    /// after this returns finds the mapping (`revoke`).
    pub fn map(domid: u32, count: u64, hpa: impl Fn(u64) -> Option<u64>) -> Result<u64, Error> {
        let mut g = FOREIGN.lock();
        let f = g.as_mut().ok_or(Error::NoSpc)?;
        let slot = f.window.alloc(domid, count)?;
        let at = f.base + slot.first * PAGE_SIZE;
        for i in 0..count {
            let r = match hpa(i) {
                Some(h) => with_table(&mut f.tables, |t| t.map(&mut FrameTables, at + i * PAGE_SIZE, h, PageSize::Size4K, MapFlags::RW)),
                None => Err(MapError::NotMapped),
            };
            if let Err(e) = r {
                // Cannot happen (the caller checked the range, the run was
                // free, its tables built): undo what was done. The entries
                // made were never returned to dom0, but it could have guessed
                // them: flushed all the same.
                warn!("foreign: d{domid}: mapping page {i} at {:#x} failed: {e:?}", at + i * PAGE_SIZE);
                clear(&mut f.tables, at, i);
                let _ = f.window.empty(slot.first, count);
                drop(g);
                shootdown();
                if let Some(f) = FOREIGN.lock().as_mut() {
                    let _ = f.window.take(slot.first, count);
                }
                return Err(Error::Inval);
            }
        }
        Ok(at)
    }

    /// Removes the entries of `count` pages from `at` (those not there are
    /// skipped).
    fn clear(tables: &mut NestedTables, at: u64, count: u64) {
        for i in 0..count {
            let _ = with_table(tables, |t| t.unmap(&mut FrameTables, at + i * PAGE_SIZE, PageSize::Size4K));
        }
    }

    /// Ends the mapping `FOREIGN_MAP` returned as `addr`, `count` pages. Its
    /// entries go first and the TLBs are flushed while the run is still
    /// taken (empty), so a `revoke` of its domain meanwhile finds it and does
    /// not free the frames before a flush has completed; then it is freed.
    pub fn unmap(addr: u64, count: u64) -> Result<(), Error> {
        let first = {
            let mut g = FOREIGN.lock();
            let f = g.as_mut().ok_or(Error::Inval)?;
            let first = addr.checked_sub(f.base).ok_or(Error::Inval)? / PAGE_SIZE;
            if !f.window.empty(first, count)? {
                return Ok(());
            }
            clear(&mut f.tables, addr, count);
            first
        };
        shootdown();
        if let Some(f) = FOREIGN.lock().as_mut() {
            let _ = f.window.take(first, count);
        }
        Ok(())
    }

    /// Empties every mapping of `domid` and flushes dom0's TLBs: called
    /// before its frames are freed, without the domain table's lock. Also
    /// flushes when a mapping of it was emptied by an unmap still flushing.
    pub fn revoke(domid: u32) {
        let (held, emptied) = {
            let mut g = FOREIGN.lock();
            let Some(f) = g.as_mut() else { return };
            let base = f.base;
            let Foreign { window, tables, .. } = f;
            let mut emptied = 0;
            let held = window.revoke(domid, |s: &Slot| {
                clear(tables, base + s.first * PAGE_SIZE, s.count);
                emptied += 1;
            });
            (held, emptied)
        };
        if held > 0 {
            shootdown();
        }
        if emptied > 0 {
            info!("foreign: d{domid}: {emptied} mapping(s) into dom0 emptied and flushed before its memory is freed");
        }
    }

    /// Shootdowns so far (each bumps every CPU's flush request).
    static SHOOTDOWNS: AtomicU64 = AtomicU64::new(0);

    /// Makes every CPU drop what its TLBs hold of guests' nested translations
    /// (dom0's here; a domU's when `LOG_DIRTY` write-protects its RAM) before
    /// returning. Each CPU is asked to flush at its next guest entry
    /// (`tlb_tag::request_flush`); the guest it runs now is stopped by a wake
    /// IPI, whose handler counting it means the CPU is in the hypervisor and
    /// leaves its run loop before entering a guest again (`apic::take_pending`),
    /// so the next entry flushes. This CPU stops its own guest the same way
    /// (a wake IPI to itself, pending until the run loop looks). Waits with
    /// no lock held and interrupts as they were (off): a CPU that is itself
    /// waiting here has done the same and counts as done.
    pub fn shootdown() {
        use crate::arch::x86_64::{apic, cpu_id, smp};
        use crate::virt::tlb_tag;
        let seq = SHOOTDOWNS.fetch_add(1, Ordering::SeqCst) + 1;
        let me = cpu_id();
        let cpus = smp::cpu_count();
        for c in 0..cpus {
            tlb_tag::request_flush(c, seq);
        }
        // Only with its own guest stopped does this CPU count as done for
        // another CPU waiting here at the same time.
        match apic::wake_self() {
            Ok(()) => tlb_tag::set_waiting(me, true),
            Err(why) => warn!("foreign: cannot stop this CPU's guest for a TLB flush: {why}"),
        }
        let seen: Vec<u32> = (0..cpus).map(apic::wakes_taken_by).collect();
        for c in (0..cpus).filter(|&c| c != me) {
            smp::kick(c);
        }
        let start = crate::arch::x86_64::time::now_ns();
        let mut warned = false;
        for c in (0..cpus).filter(|&c| c != me) {
            while apic::wakes_taken_by(c) == seen[c as usize] && !tlb_tag::flushed_or_waiting(c, seq) {
                core::hint::spin_loop();
                if !warned && crate::arch::x86_64::time::now_ns() - start > 1_000_000_000 {
                    warned = true;
                    warn!("foreign: cpu{c} has not answered a TLB flush request for 1 s; still waiting");
                    smp::kick(c);
                }
            }
        }
        tlb_tag::set_waiting(me, false);
    }

    use alloc::vec::Vec;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_taken_first_fit_and_ended_only_exactly() {
        let mut w = Window::new(16);
        let a = w.alloc(1, 4).unwrap();
        let b = w.alloc(2, 8).unwrap();
        assert_eq!((a.first, b.first), (0, 4));
        assert_eq!(w.alloc(1, 5), Err(Error::NoSpc), "4 pages left");
        assert_eq!(w.take(0, 3), Err(Error::Inval), "not its length");
        assert_eq!(w.take(1, 4), Err(Error::Inval), "not its start");
        assert_eq!(w.empty(0, 4), Ok(true));
        assert_eq!(w.empty(0, 4), Ok(false), "emptied once");
        assert_eq!(w.alloc(1, 4).unwrap().first, 12, "an empty run stays taken");
        assert_eq!(w.take(0, 4), Ok(Slot { live: false, ..a }));
        assert_eq!(w.take(0, 4), Err(Error::Inval), "ended once");
        // The hole at the front is used again, then the tail.
        assert_eq!(w.alloc(3, 2).unwrap().first, 0);
        assert_eq!(w.alloc(3, 2).unwrap().first, 2);
        assert_eq!(w.alloc(3, 1), Err(Error::NoSpc));
        assert_eq!(w.alloc(3, 0), Err(Error::NoSpc));
    }

    #[test]
    fn a_dead_domains_runs_are_emptied_but_stay_taken() {
        let mut w = Window::new(64);
        let a = w.alloc(5, 4).unwrap();
        let _b = w.alloc(6, 4).unwrap();
        let c = w.alloc(5, 2).unwrap();
        let mut seen = Vec::new();
        assert_eq!(w.revoke(5, |s| seen.push((s.first, s.count))), 2);
        assert_eq!(seen, [(a.first, 4), (c.first, 2)]);
        assert_eq!(w.revoke(5, |_| panic!("emptied once")), 2, "still held");
        assert!(w.slots().iter().filter(|s| s.domid == 5).all(|s| !s.live));
        // Still taken: a new mapping goes after them.
        assert_eq!(w.alloc(7, 1).unwrap().first, 10);
        assert!(!w.take(a.first, 4).unwrap().live);
        assert_eq!(w.alloc(7, 4).unwrap().first, 0, "free again once dom0 unmapped it");
    }

    #[test]
    fn mappings_are_bounded_in_number() {
        let mut w = Window::new(1 << 20);
        for _ in 0..FOREIGN_MAPPINGS_MAX {
            w.alloc(1, 1).unwrap();
        }
        assert_eq!(w.alloc(1, 1), Err(Error::NoSpc));
    }

    #[test]
    fn the_window_sits_high_in_a_gap_of_the_memory_map() {
        const GIB: u64 = 1 << 30;
        // QEMU (AMD, 40 bits): RAM, the PCI hole's devices, the HT hole.
        let qemu = [(0, 0xa_0000), (0x10_0000, 0x2000_0000), (0xfeff_c000, 0xff00_0000), (0xfd_0000_0000, 1 << 40)];
        assert_eq!(place_window(&qemu, 0x2000_0000, GIB, 40), Some(1011 * GIB));
        // Nothing high: the last GiB of the address space.
        assert_eq!(place_window(&qemu[..3], 0x2000_0000, GIB, 39), Some(511 * GIB));
        // Never above 48 bits (4-level tables), never below 4 GiB or the RAM.
        assert_eq!(place_window(&[], 0, GIB, 52), Some((1 << 48) - GIB));
        assert_eq!(place_window(&[(4 * GIB, 1 << 36)], 0, GIB, 36), None);
        assert_eq!(place_window(&[], 63 * GIB + 1, GIB, 36), None, "RAM up to the top");
        assert_eq!(place_window(&[], 0, GIB, 32), None, "below 4 GiB only");
        // Two entries in the way: below the lower one.
        assert_eq!(place_window(&[(61 * GIB + 5, 62 * GIB), (62 * GIB + 5, 64 * GIB)], 0, GIB, 36), Some(60 * GIB));
    }
}
