//! Mapping guest-physical pages the boot map leaves out (those beyond RAM), so
//! the final acts reach the hypervisor's nested paging rather than stop at a
//! #PF in the guest's own tables.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};
use oxen_guest_rt::cpu;

const PRESENT_RW: u64 = 0x3;
const LARGE: u64 = 0x80;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Zeroed pages for new tables (a PD and a PT per mapping, at most).
#[repr(C, align(4096))]
struct Pool(UnsafeCell<[[u64; 512]; 4]>);
// SAFETY: one vCPU; each page is handed out once (`NEXT`).
unsafe impl Sync for Pool {}
static POOL: Pool = Pool(UnsafeCell::new([[0; 512]; 4]));
static NEXT: AtomicUsize = AtomicUsize::new(0);

fn new_table() -> Option<u64> {
    let i = NEXT.fetch_add(1, Ordering::SeqCst);
    // Only the address of page `i` is taken, in bounds when checked.
    (i < 4).then(|| POOL.0.get() as u64 + i as u64 * 4096)
}

/// The entry `index` of the table at `table`, creating the next-level table if
/// it is missing. `None` when a large page already maps it or the pool is empty.
///
/// # Safety
/// `table` must be a page table of the current identity-mapped hierarchy.
unsafe fn next_level(table: u64, index: u64) -> Option<u64> {
    let slot = (table + index * 8) as *mut u64;
    // SAFETY: inside the table (index < 512), identity mapped (caller).
    let e = unsafe { slot.read_volatile() };
    if e & 1 != 0 {
        return (e & LARGE == 0).then_some(e & ADDR);
    }
    let t = new_table()?;
    // SAFETY: as above.
    unsafe { slot.write_volatile(t | PRESENT_RW) };
    Some(t)
}

/// Maps the 4 KiB page at guest-physical `gpa` at the same virtual address
/// (below 512 GiB; the PML4 entry 0 the boot map has). Returns false if it
/// could not: a large page already covers it (it is RAM), or no tables left.
pub fn map_identity(gpa: u64) -> bool {
    let i = |shift: u32| (gpa >> shift) & 0x1ff;
    if gpa >> 39 != 0 {
        return false;
    }
    let pml4 = cpu::read_cr3() & ADDR;
    // SAFETY: CR3's tables are the guest's own identity map; each step checks
    // presence and large pages before going down.
    let pt = unsafe {
        let Some(pdpt) = next_level(pml4, i(39)) else { return false };
        let Some(pd) = next_level(pdpt, i(30)) else { return false };
        let Some(pt) = next_level(pd, i(21)) else { return false };
        pt
    };
    let slot = (pt + i(12) * 8) as *mut u64;
    // SAFETY: a page table of ours, index < 512.
    unsafe { slot.write_volatile((gpa & ADDR) | PRESENT_RW) };
    cpu::flush_tlb();
    true
}
