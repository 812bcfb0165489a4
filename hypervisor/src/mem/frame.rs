//! The physical frame allocator: one bit per 4 KiB frame between the lowest and the
//! highest usable address. It only ever knows the frames `memmap::carve` left
//! usable, so it can never hand out the hypervisor image, the boot modules or
//! firmware memory. Free-frame counts are exact, which is what lets tests check
//! that tearing a guest down gives back every frame it took.

use super::memmap::Region;
use super::{HostPhysAddr, PAGE_SIZE};

/// Bitmap allocator over `[base, base + nframes * 4 KiB)`; a set bit is a free frame.
pub struct FrameAllocator {
    base: u64,
    nframes: usize,
    bitmap: &'static mut [u64],
    free: usize,
    total: usize,
    hint: usize,
}

/// Number of `u64` bitmap words needed to cover `regions`.
pub fn bitmap_words(regions: &[Region]) -> usize {
    match (regions.first(), regions.last()) {
        (Some(first), Some(last)) => (((last.end - first.start) / PAGE_SIZE) as usize).div_ceil(64),
        _ => 0,
    }
}

impl FrameAllocator {
    /// Builds the allocator over sorted, disjoint, page-aligned `regions`, with
    /// `bitmap` (at least `bitmap_words(regions)` long) as storage.
    pub fn new(regions: &[Region], bitmap: &'static mut [u64]) -> Self {
        let base = regions.first().map_or(0, |r| r.start);
        let nframes = regions.last().map_or(0, |r| ((r.end - base) / PAGE_SIZE) as usize);
        assert!(bitmap.len() * 64 >= nframes, "frame bitmap too small");
        bitmap.fill(0);
        let mut this = Self { base, nframes, bitmap, free: 0, total: 0, hint: 0 };
        for r in regions {
            let first = ((r.start - base) / PAGE_SIZE) as usize;
            let last = ((r.end - base) / PAGE_SIZE) as usize;
            for i in first..last {
                this.set_free(i, true);
            }
        }
        this.total = this.free;
        this
    }

    fn is_free(&self, i: usize) -> bool {
        self.bitmap[i / 64] & (1 << (i % 64)) != 0
    }

    fn set_free(&mut self, i: usize, free: bool) {
        let bit = 1u64 << (i % 64);
        let word = &mut self.bitmap[i / 64];
        let was_free = *word & bit != 0;
        if free && !was_free {
            *word |= bit;
            self.free += 1;
        } else if !free && was_free {
            *word &= !bit;
            self.free -= 1;
        }
    }

    fn addr(&self, i: usize) -> HostPhysAddr {
        HostPhysAddr::new(self.base + i as u64 * PAGE_SIZE)
    }

    /// One free frame, or `None` when memory is exhausted.
    pub fn alloc(&mut self) -> Option<HostPhysAddr> {
        self.alloc_contiguous(1, 1)
    }

    /// `count` contiguous frames whose first frame's address is a multiple of
    /// `align_frames * 4 KiB`.
    pub fn alloc_contiguous(&mut self, count: usize, align_frames: usize) -> Option<HostPhysAddr> {
        if count == 0 || align_frames == 0 || count > self.free {
            return None;
        }
        let align_bytes = align_frames as u64 * PAGE_SIZE;
        // Start from the hint for single frames (the common case), else from the start.
        let starts = if count == 1 { [self.hint, 0] } else { [0, 0] };
        for &from in &starts {
            let mut i = from;
            while i + count <= self.nframes {
                let a = self.base + i as u64 * PAGE_SIZE;
                if !a.is_multiple_of(align_bytes) {
                    let aligned = a.div_ceil(align_bytes) * align_bytes;
                    i = ((aligned - self.base) / PAGE_SIZE) as usize;
                    continue;
                }
                if count == 1 && self.bitmap[i / 64] == 0 && i % 64 == 0 {
                    i += 64; // skip a whole word of used frames
                    continue;
                }
                match (i..i + count).find(|&j| !self.is_free(j)) {
                    None => {
                        for j in i..i + count {
                            self.set_free(j, false);
                        }
                        // Only single frames move the hint: were it set past
                        // a domU's 2 MiB chunk, the page tables and the like
                        // allocated next would each take a frame of the next
                        // 2 MiB region and spoil it for chunks. Single frames
                        // pack from the bottom instead, a region at a time.
                        if count == 1 {
                            self.hint = i + 1;
                        }
                        return Some(self.addr(i));
                    }
                    Some(used) => i = used + 1,
                }
            }
        }
        None
    }

    /// Gives back `count` frames starting at `addr`.
    ///
    /// Panics on a frame outside the allocator or already free: both are
    /// hypervisor bugs, never guest input.
    pub fn free(&mut self, addr: HostPhysAddr, count: usize) {
        let a = addr.as_u64();
        assert!(a >= self.base && a.is_multiple_of(PAGE_SIZE), "free of foreign frame {a:#x}");
        let first = ((a - self.base) / PAGE_SIZE) as usize;
        assert!(first + count <= self.nframes, "free of foreign frame {a:#x}");
        for i in first..first + count {
            assert!(!self.is_free(i), "double free of frame {:#x}", self.addr(i).as_u64());
            self.set_free(i, true);
        }
        self.hint = self.hint.min(first);
    }

    /// Marks frames in `r` as used (e.g. the frames holding this bitmap).
    pub fn reserve(&mut self, r: Region) {
        let lo = r.start.max(self.base);
        let hi = r.end.min(self.base + self.nframes as u64 * PAGE_SIZE);
        let mut a = lo & !(PAGE_SIZE - 1);
        while a < hi {
            let i = ((a - self.base) / PAGE_SIZE) as usize;
            if self.is_free(i) {
                self.total -= 1;
                self.set_free(i, false);
            }
            a += PAGE_SIZE;
        }
    }

    pub fn free_frames(&self) -> usize {
        self.free
    }

    pub fn total_frames(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn allocator(regions: &[Region]) -> FrameAllocator {
        let words = bitmap_words(regions);
        FrameAllocator::new(regions, vec![0u64; words].leak())
    }

    #[test]
    fn hands_out_only_usable_frames_and_counts_exactly() {
        let regions = [Region::new(0x100000, 0x104000), Region::new(0x200000, 0x202000)];
        let mut fa = allocator(&regions);
        assert_eq!(fa.free_frames(), 6);
        let mut got = vec![];
        while let Some(f) = fa.alloc() {
            got.push(f.as_u64());
        }
        got.sort();
        assert_eq!(got, vec![0x100000, 0x101000, 0x102000, 0x103000, 0x200000, 0x201000]);
        assert_eq!(fa.free_frames(), 0);
        for f in got {
            fa.free(HostPhysAddr::new(f), 1);
        }
        assert_eq!(fa.free_frames(), 6);
    }

    #[test]
    fn contiguous_and_aligned() {
        let regions = [Region::new(0x1000, 0x10000)];
        let mut fa = allocator(&regions);
        let a = fa.alloc_contiguous(3, 4).unwrap();
        assert_eq!(a.as_u64(), 0x4000);
        assert_eq!(fa.free_frames(), 15 - 3);
        // Does not span the hole left by a used frame.
        let b = fa.alloc_contiguous(8, 1).unwrap();
        assert_eq!(b.as_u64(), 0x7000);
        assert!(fa.alloc_contiguous(8, 1).is_none());
        fa.free(a, 3);
        fa.free(b, 8);
        assert_eq!(fa.free_frames(), 15);
    }

    #[test]
    fn single_frames_do_not_spoil_2mib_chunks() {
        // 64 MiB; each "domain" takes a 2 MiB chunk, then 5 single frames
        // (its tables): the singles pack into as few regions as they fill,
        // so all but those regions still go as chunks.
        let regions = [Region::new(0, 64 << 20)];
        let mut fa = allocator(&regions);
        let mut made = 0;
        while fa.alloc_contiguous(512, 512).is_some() {
            for _ in 0..5 {
                fa.alloc().unwrap();
            }
            made += 1;
        }
        // 32 regions: one spoiled by the singles (5 * 31 < 512).
        assert_eq!(made, 31);
    }

    #[test]
    fn reserve_removes_frames() {
        let regions = [Region::new(0x0, 0x8000)];
        let mut fa = allocator(&regions);
        fa.reserve(Region::new(0x1000, 0x3000));
        assert_eq!(fa.free_frames(), 6);
        for _ in 0..6 {
            let f = fa.alloc().unwrap().as_u64();
            assert!(!(0x1000..0x3000).contains(&f));
        }
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_is_caught() {
        let mut fa = allocator(&[Region::new(0x0, 0x2000)]);
        let f = fa.alloc().unwrap();
        fa.free(f, 1);
        fa.free(f, 1);
    }
}
