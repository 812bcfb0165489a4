//! The hypervisor heap: one contiguous run of frames behind `linked_list_allocator`,
//! sized at boot from the machine's memory (`super::heap_size_for`).

use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Hands `[start, start + size)` to the heap.
///
/// # Safety
/// The range must be identity-mapped, writable, unused by anything else and
/// never freed; `init` must be called once.
pub unsafe fn init(start: *mut u8, size: usize) {
    // SAFETY: guaranteed by the caller.
    unsafe { HEAP.lock().init(start, size) };
}

/// Heap bytes free now (fragmentation aside: a create checks this with a
/// generous margin, `domain::table::HEAP_RESERVE`).
pub fn free_bytes() -> usize {
    HEAP.lock().free()
}

/// The heap's size.
pub fn size() -> usize {
    HEAP.lock().size()
}
