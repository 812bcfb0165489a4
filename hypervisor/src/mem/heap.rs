//! The hypervisor heap: one contiguous run of frames behind `linked_list_allocator`.

use linked_list_allocator::LockedHeap;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Heap size. Domain memory never comes from here (it comes from the frame
/// allocator); the heap holds hypervisor objects only.
pub const HEAP_SIZE: usize = 8 << 20;

/// Hands `[start, start + size)` to the heap.
///
/// # Safety
/// The range must be identity-mapped, writable, unused by anything else and
/// never freed; `init` must be called once.
pub unsafe fn init(start: *mut u8, size: usize) {
    // SAFETY: guaranteed by the caller.
    unsafe { HEAP.lock().init(start, size) };
}
