//! A domU's memory as `oxl save` / `restore` see it: through a foreign
//! mapping of `/dev/oxen` (ABI 1.6, docs/hypercalls.md "Foreign mappings"),
//! a window of `CHUNK` bytes mapped at a time and moved as pages are asked
//! for, so a domain of any size needs at most that much of dom0's address
//! space and of the hypervisor's foreign window.

use crate::save::GuestPages;
use oxen_abi::save_stream::PAGE_SIZE;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

/// Bytes mapped at once.
const CHUNK: u64 = 64 << 20;

pub struct ForeignMemory {
    file: File,
    pages: u64,
    /// The mapped chunk: its first page and the mapping.
    mapped: Option<(u64, *mut u8, usize)>,
}

impl ForeignMemory {
    /// Domain `domid`'s `pages` pages of RAM (root only).
    pub fn open(domid: u32, pages: u64) -> io::Result<Self> {
        let dev = File::options().read(true).write(true).open(oxen_abi::DEVICE_PATH)?;
        let arg = oxen_abi::ForeignOpenIoctl { domid, _pad: 0 };
        // SAFETY: the ioctl reads one `ForeignOpenIoctl` (its size is in the
        // request number) from a live local; it returns a new descriptor or -1.
        let fd = unsafe { libc::ioctl(dev.as_raw_fd(), oxen_abi::IOCTL_FOREIGN_OPEN as _, &arg) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor the driver just gave this process, owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        Ok(Self { file, pages, mapped: None })
    }

    /// The mapping that holds page `gfn`, mapped if it is not.
    fn page(&mut self, gfn: u64) -> io::Result<*mut u8> {
        if gfn >= self.pages {
            return Err(io::Error::other(format!("page {gfn:#x} is past the domain's memory")));
        }
        let per_chunk = CHUNK / PAGE_SIZE as u64;
        let first = gfn / per_chunk * per_chunk;
        if !matches!(self.mapped, Some((f, _, _)) if f == first) {
            self.unmap();
            let len = ((self.pages - first).min(per_chunk) as usize) * PAGE_SIZE;
            // SAFETY: a new shared mapping of the foreign file at the chunk's
            // guest-physical address; the driver checks the range and maps
            // nothing else; it is unmapped in `unmap` (or at drop).
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    self.file.as_raw_fd(),
                    (first * PAGE_SIZE as u64) as libc::off_t,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            self.mapped = Some((first, ptr.cast(), len));
        }
        let (first, ptr, _) = self.mapped.expect("mapped above");
        // SAFETY: `gfn` lies in the mapped chunk (checked above), so the page
        // at this offset is inside the mapping.
        Ok(unsafe { ptr.add(((gfn - first) as usize) * PAGE_SIZE) })
    }

    fn unmap(&mut self) {
        if let Some((_, ptr, len)) = self.mapped.take() {
            // SAFETY: exactly a mapping `page` made; no reference into it outlives the calls.
            unsafe { libc::munmap(ptr.cast(), len) };
        }
    }
}

impl Drop for ForeignMemory {
    fn drop(&mut self) {
        self.unmap();
    }
}

impl GuestPages for ForeignMemory {
    fn read_page(&mut self, gfn: u64, out: &mut [u8]) -> io::Result<()> {
        let p = self.page(gfn)?;
        // SAFETY: `p` is a mapped page of PAGE_SIZE bytes; `out` holds as many.
        unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), PAGE_SIZE.min(out.len())) };
        Ok(())
    }

    fn write_page(&mut self, gfn: u64, data: &[u8]) -> io::Result<()> {
        let p = self.page(gfn)?;
        // SAFETY: as in `read_page`, the other way.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, PAGE_SIZE.min(data.len())) };
        Ok(())
    }
}
