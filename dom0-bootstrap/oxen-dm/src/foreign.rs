//! A domU's RAM as `vm-memory` guest memory, through `/dev/oxen`'s foreign mappings (ABI 1.6,
//! docs/hypercalls.md "Foreign mappings").
//!
//! [`ForeignDomain::open`] asks the driver for a file for one domain's memory
//! (`IOCTL_FOREIGN_OPEN`); [`ForeignDomain::map`] maps guest-physical ranges of it with `mmap`
//! (offset = guest-physical address; the hypervisor checks the domain and the range) and wraps them
//! as a [`GuestMemoryMmap`] whose regions sit at those guest addresses, so `virtio-queue` reads and
//! writes the domU's rings and buffers directly. Dropping the memory unmaps each range (the
//! driver's VMA close: `FOREIGN_UNMAP`).
//!
//! If the domain dies while mapped, the hypervisor empties the mappings before its memory is
//! freed: reads then give all ones and writes go nowhere (or the process gets `SIGSEGV` for an
//! access the hypervisor cannot decode). A device model stops using the memory when it learns the
//! domain is gone; until then it never sees another domain's bytes.

use crate::GuestMemoryMmap;
use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use vm_memory::mmap::{GuestRegionMmap, MmapRegion};
use vm_memory::{FileOffset, GuestAddress};

/// Bytes of a page: ranges start and end on one.
pub const PAGE_SIZE: u64 = 4096;

/// Why a mapping could not be made.
#[derive(Debug)]
pub enum ForeignError {
    /// `/dev/oxen` could not be opened, or the driver refused the open.
    Open(io::Error),
    /// A range that is empty, not page aligned, or overlaps the one before (ranges go in
    /// ascending order).
    BadRange { gpa: u64, len: u64 },
    /// The `mmap` failed: the hypervisor's answer (`ENOENT`: no such domain, `EPERM`: dom0,
    /// `EBUSY`: dying, `EINVAL`: past its RAM, `ENOSPC`: the window is full).
    Map { gpa: u64, len: u64, error: io::Error },
}

impl std::fmt::Display for ForeignError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Open(e) => write!(f, "cannot open a foreign mapping through {}: {e}", oxen_abi::DEVICE_PATH),
            Self::BadRange { gpa, len } => {
                write!(f, "range {gpa:#x}+{len:#x}: not page aligned, empty, or not after the one before")
            }
            Self::Map { gpa, len, error } => write!(f, "mapping {gpa:#x}+{len:#x}: {error}"),
        }
    }
}

impl std::error::Error for ForeignError {}

/// One domU's memory, as a file whose `mmap` shows it.
pub struct ForeignDomain {
    domid: u32,
    file: Arc<File>,
}

impl ForeignDomain {
    /// Opens domain `domid`'s memory through `/dev/oxen` (root only). The domain is checked at
    /// each `map`, not here.
    pub fn open(domid: u32) -> Result<Self, ForeignError> {
        let dev = File::options().read(true).write(true).open(oxen_abi::DEVICE_PATH).map_err(ForeignError::Open)?;
        let arg = oxen_abi::ForeignOpenIoctl { domid, _pad: 0 };
        // SAFETY: the ioctl reads one `ForeignOpenIoctl` (its size is in the request number)
        // from a live local; the driver returns a new descriptor or -1.
        let fd = unsafe {
            libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&dev), oxen_abi::IOCTL_FOREIGN_OPEN as _, &arg)
        };
        if fd < 0 {
            return Err(ForeignError::Open(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned to us by the driver and nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self::from_file(domid, File::from(owned)))
    }

    /// A domain's memory behind any file whose offsets are its guest-physical addresses (the
    /// driver's, or a plain file standing in for it in tests).
    pub fn from_file(domid: u32, file: File) -> Self {
        Self { domid, file: Arc::new(file) }
    }

    pub fn domid(&self) -> u32 {
        self.domid
    }

    /// Maps `ranges` (guest-physical address and length, page aligned, ascending, not
    /// overlapping) and returns them as guest memory with each region at its guest address.
    /// All or nothing: what was mapped before a failure is unmapped again.
    pub fn map(&self, ranges: &[(u64, u64)]) -> Result<GuestMemoryMmap, ForeignError> {
        let mut regions = Vec::with_capacity(ranges.len());
        let mut end = 0;
        for &(gpa, len) in ranges {
            let aligned = (gpa | len) % PAGE_SIZE == 0;
            let ends = gpa.checked_add(len).filter(|_| len > 0 && aligned && gpa >= end);
            let (Some(next), Ok(size)) = (ends, usize::try_from(len)) else {
                return Err(ForeignError::BadRange { gpa, len });
            };
            end = next;
            let map_err = |error| ForeignError::Map { gpa, len, error };
            let region = MmapRegion::<vm_memory::bitmap::AtomicBitmap>::from_file(FileOffset::from_arc(self.file.clone(), gpa), size)
                .map_err(|e| map_err(io::Error::other(e)))?;
            let region = GuestRegionMmap::new(region, GuestAddress(gpa))
                .ok_or_else(|| map_err(io::Error::from(io::ErrorKind::InvalidInput)))?;
            regions.push(region);
        }
        if regions.is_empty() {
            return Err(ForeignError::BadRange { gpa: 0, len: 0 });
        }
        GuestMemoryMmap::from_regions(regions).map_err(|e| ForeignError::Map {
            gpa: ranges[0].0,
            len: 0,
            error: io::Error::other(e),
        })
    }
}

/// The guest pages written through `mem` since the last call (or since it was mapped), by page
/// number in ascending order, and clears them: what a live migration's round must send again
/// besides the pages the hypervisor's dirty log names (its log sees the guest's own writes, not
/// the device model's: used rings, disk reads, received frames).
pub fn take_dirty(mem: &GuestMemoryMmap) -> Vec<u64> {
    use vm_memory::{GuestMemoryBackend as _, GuestMemoryRegion as _};
    let mut pages = Vec::new();
    for region in mem.iter() {
        let first = region.start_addr().0 / PAGE_SIZE;
        let count = region.len() / PAGE_SIZE;
        for (w, word) in std::ops::Deref::deref(region).bitmap().get_and_reset().into_iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let page = w as u64 * 64 + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                if page < count {
                    pages.push(first + page);
                }
            }
        }
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};
    use virtio_queue::{mock::MockSplitQueue, Queue, QueueT};
    use vm_memory::{Bytes, GuestMemoryBackend};

    /// A plain file standing in for the driver's: offset = guest-physical address.
    fn standin(bytes: usize) -> (std::path::PathBuf, File) {
        // Tests run in parallel: each stand-in file its own name.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("oxen-dm-foreign-{}-{n}-{bytes}", std::process::id()));
        let mut f = File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        let content: Vec<u8> = (0..bytes).map(|i| (i / 4096) as u8 ^ (i as u8)).collect();
        f.write_all(&content).unwrap();
        (path, f)
    }

    #[test]
    fn regions_sit_at_their_guest_addresses_and_write_through() {
        let (path, file) = standin(64 * 1024);
        let dom = ForeignDomain::from_file(7, file.try_clone().unwrap());
        let mem = dom.map(&[(0x2000, 0x2000), (0x8000, 0x1000)]).unwrap();
        assert_eq!(mem.num_regions(), 2);
        // The byte at guest 0x2003 is the file's at offset 0x2003.
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x2003)).unwrap(), 2 ^ 3);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x8001)).unwrap(), 8 ^ 1);
        // Outside every range: an error, not a panic or another range's byte.
        assert!(mem.read_obj::<u8>(GuestAddress(0x4000)).is_err());
        assert!(mem.read_obj::<u8>(GuestAddress(0x9000)).is_err());
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x3ffc)).unwrap();
        drop(mem);
        let mut f = file;
        let mut back = [0u8; 4];
        f.seek(SeekFrom::Start(0x3ffc)).unwrap();
        f.read_exact(&mut back).unwrap();
        assert_eq!(u32::from_le_bytes(back), 0xdead_beef, "the write reached the file (the domU)");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn writes_through_the_mapping_are_taken_as_dirty_pages_once() {
        let (path, file) = standin(64 * 1024);
        let dom = ForeignDomain::from_file(7, file);
        let mem = dom.map(&[(0x2000, 0x3000), (0x8000, 0x8000)]).unwrap();
        assert_eq!(take_dirty(&mem), [] as [u64; 0], "nothing written yet");
        mem.write_obj(1u32, GuestAddress(0x3ffe)).unwrap(); // across pages 3 and 4
        mem.write_slice(&[0u8; 0x1800], GuestAddress(0x9800)).unwrap(); // pages 9, 10
        let mut buf = [0u8; 16];
        mem.read_slice(&mut buf, GuestAddress(0xc000)).unwrap(); // a read marks nothing
        assert_eq!(take_dirty(&mem), [3, 4, 9, 10]);
        assert_eq!(take_dirty(&mem), [] as [u64; 0], "taken once");
        // Through a queue's used ring, as the device side writes it.
        let mock = MockSplitQueue::create(&mem, GuestAddress(0x8000), 16);
        let desc = virtio_queue::desc::split::Descriptor::new(0xe000, 0x100, 0, 0);
        mock.build_desc_chain(&[virtio_queue::desc::RawDescriptor::from(desc)]).unwrap();
        let mut q: Queue = mock.create_queue().unwrap();
        let _ = take_dirty(&mem);
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        q.add_used(&mem, chain.head_index(), 0x100).unwrap();
        let used_page = q.used_ring() / PAGE_SIZE;
        assert!(take_dirty(&mem).contains(&used_page), "the used ring's page");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn bad_ranges_are_refused_before_any_mapping() {
        let (path, file) = standin(16 * 1024);
        let dom = ForeignDomain::from_file(7, file);
        for ranges in [
            &[(0x1000u64, 0u64)][..],
            &[(0x1001, 0x1000)],
            &[(0x1000, 0x800)],
            &[(0x2000, 0x1000), (0x1000, 0x1000)],
            &[(0x1000, 0x2000), (0x2000, 0x1000)],
            &[(!0xfffu64, 0x1000)],
            &[],
        ] {
            assert!(matches!(dom.map(ranges), Err(ForeignError::BadRange { .. })), "{ranges:x?}");
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_virtqueue_works_on_it() {
        // A driver's queue laid out in "domU memory" (the stand-in file), read by the device
        // side through the foreign mapping.
        let (path, file) = standin(64 * 1024);
        let dom = ForeignDomain::from_file(7, file);
        let mem = dom.map(&[(0, 64 * 1024)]).unwrap();
        let mock = MockSplitQueue::new(&mem, 16);
        let desc = virtio_queue::desc::split::Descriptor::new(0x4000, 0x100, 0, 0);
        mock.build_desc_chain(&[virtio_queue::desc::RawDescriptor::from(desc)]).unwrap();
        let mut q: Queue = mock.create_queue().unwrap();
        let chain = q.pop_descriptor_chain(&mem).expect("the chain the driver posted");
        let d = chain.clone().next().unwrap();
        assert_eq!((d.addr().0, d.len()), (0x4000, 0x100));
        q.add_used(&mem, chain.head_index(), 0x100).unwrap();
        assert_eq!(q.next_used(), 1);
        std::fs::remove_file(path).unwrap();
    }
}
