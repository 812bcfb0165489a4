//! Memory management: address newtypes, the physical memory map, the frame
//! allocator, the heap and the page-table walker shared by host tables, EPT and NPT.
pub mod addr;
pub mod frame;
pub mod memmap;
pub mod paging;

#[cfg(target_os = "none")]
pub mod heap;

pub use addr::{GuestPhysAddr, HostPhysAddr};

/// Size of the smallest page, on the host and in EPT/NPT.
pub const PAGE_SIZE: u64 = 4096;

#[cfg(target_os = "none")]
mod global {
    use super::frame::FrameAllocator;
    use super::paging::TableMemory;
    use super::{HostPhysAddr, PAGE_SIZE};
    use spin::Mutex;

    /// The one physical frame allocator, set up by `start` from the memory map.
    pub static FRAMES: Mutex<Option<FrameAllocator>> = Mutex::new(None);

    /// `count` contiguous frames aligned to `align_frames` frames, not zeroed:
    /// only for memory handed whole to a guest that the caller fills or scrubs.
    pub fn alloc_frames_unzeroed(count: usize, align_frames: usize) -> Option<HostPhysAddr> {
        FRAMES.lock().as_mut()?.alloc_contiguous(count, align_frames)
    }

    /// `count` zeroed contiguous frames aligned to `align_frames` frames.
    pub fn alloc_frames(count: usize, align_frames: usize) -> Option<HostPhysAddr> {
        let f = alloc_frames_unzeroed(count, align_frames)?;
        // SAFETY: the frames are ours now, identity mapped and writable.
        unsafe { core::ptr::write_bytes(f.as_ptr::<u8>(), 0, count * PAGE_SIZE as usize) };
        Some(f)
    }

    /// One zeroed frame.
    pub fn alloc_frame() -> Option<HostPhysAddr> {
        alloc_frames(1, 1)
    }

    /// Scrubs and gives back frames from `alloc_frames`.
    pub fn free_frames(f: HostPhysAddr, count: usize) {
        // SAFETY: the caller owned these frames; nothing else refers to them. Scrub so
        // no data leaks to the next owner.
        unsafe { core::ptr::write_bytes(f.as_ptr::<u8>(), 0, count * PAGE_SIZE as usize) };
        FRAMES.lock().as_mut().expect("frame allocator").free(f, count);
    }

    pub fn free_frame_count() -> usize {
        FRAMES.lock().as_ref().map_or(0, |f| f.free_frames())
    }

    /// Frames the allocator manages, free or not.
    pub fn total_frame_count() -> usize {
        FRAMES.lock().as_ref().map_or(0, |f| f.total_frames())
    }

    /// Page-table frames from the frame allocator, reached through the identity map.
    pub struct FrameTables;

    impl TableMemory for FrameTables {
        fn alloc_table(&mut self) -> Option<u64> {
            alloc_frame().map(|f| f.as_u64())
        }
        fn free_table(&mut self, table: u64) {
            free_frames(HostPhysAddr::new(table), 1);
        }
        fn entries(&mut self, table: u64) -> *mut [u64; 512] {
            table as *mut [u64; 512]
        }
    }
}

#[cfg(target_os = "none")]
pub use global::*;
