//! Memory management: address newtypes, the physical memory map, the frame
//! allocator, the heap, the page-table walker shared by host tables, EPT and NPT,
//! and the dirty-page log.
pub mod addr;
pub mod dirty;
pub mod foreign;
pub mod frame;
pub mod memmap;
pub mod paging;

#[cfg(target_os = "none")]
pub mod heap;

pub use addr::{GuestPhysAddr, HostPhysAddr};

/// Size of the smallest page, on the host and in EPT/NPT.
pub const PAGE_SIZE: u64 = 4096;

/// The heap's floor: what the hypervisor needs with no domU at all (dom0's
/// devices and vCPUs, the log) plus about a hundred domUs' fixed metadata
/// (`domain::table::DOMAIN_HEAP_BYTES` each).
pub const HEAP_MIN: usize = 8 << 20;
/// Bytes of RAM per byte of heap above the floor: 1/128 is 64 KiB per 8 MiB,
/// more than an 8 MiB domU's metadata (`domain::table::metadata_bytes`), so
/// with domUs of 8 MiB or more the frame pool, not the heap, runs out first
/// however the RAM is split. A host of 4 MiB domUs (the smallest) gets 32 KiB
/// per domU from this and the floor's spare room for the rest; a minimal
/// 4 MiB domU was measured to take 33 KiB (`dom0-500-domus-svm`'s create log
/// lines), so on 3 GiB about 900 fit, and the create that does not gets
/// -ENOMEM from `heap_fits`, which counts 48 KiB each.
pub const RAM_PER_HEAP_BYTE: u64 = 128;

/// The heap's size for a machine with `ram_bytes` of usable RAM, in whole pages.
pub fn heap_size_for(ram_bytes: u64) -> usize {
    let extra = usize::try_from(ram_bytes / RAM_PER_HEAP_BYTE).unwrap_or(usize::MAX);
    HEAP_MIN.saturating_add(extra).next_multiple_of(PAGE_SIZE as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::table::{CHUNK_HEAP_BYTES, DOMAIN_HEAP_BYTES, HEAP_RESERVE, MAX_DOMAINS};

    #[test]
    fn heap_grows_with_ram_past_what_domains_take() {
        assert_eq!(heap_size_for(0), HEAP_MIN);
        assert_eq!(heap_size_for(512 << 20), HEAP_MIN + (4 << 20));
        assert_eq!(heap_size_for((1 << 40) + 1) % PAGE_SIZE as usize, 0);
        // Any split of the RAM into domUs of 8 MiB or more has its metadata
        // fit, with the reserve and dom0's share of the floor.
        for ram in [256u64 << 20, 4 << 30, 1 << 40, 64 << 40] {
            let chunks = (ram / (2 << 20)) as usize;
            let domains = ((ram / (8 << 20)) as usize).min(MAX_DOMAINS);
            let worst = domains * DOMAIN_HEAP_BYTES + chunks * CHUNK_HEAP_BYTES + HEAP_RESERVE;
            assert!(worst + (2 << 20) <= heap_size_for(ram), "{ram}: {worst} > {}", heap_size_for(ram));
        }
        // 500 domUs of 4 MiB, the 500-domU test's host (3 GiB): they fit.
        let ram = 3u64 << 30;
        let need = 500 * crate::domain::table::metadata_bytes(4) + HEAP_RESERVE + (2 << 20);
        assert!(need <= heap_size_for(ram), "{need} > {}", heap_size_for(ram));
    }
}

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
