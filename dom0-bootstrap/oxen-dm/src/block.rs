//! virtio-blk (virtio spec v1.2 §5.2) over a dom0 file: a raw image or a block device.
//!
//! One request queue. Each request is a descriptor chain: a 16-byte device-readable header
//! (type, reserved, sector), the data (device-readable for OUT, device-writable for IN and
//! GET_ID), and a 1-byte device-writable status last (§5.2.6). The chain is read and written only
//! through virtio-queue's `Reader`/`Writer`, which check every descriptor against guest RAM; every
//! file offset is checked against the disk's size before any I/O, so a guest can reach nothing
//! outside its disk, and a request of the wrong shape completes with IOERR (or, with no status
//! byte to write, with a 0-length used entry) instead of stopping the device model.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};
use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestMemory, Permissions, VolatileSlice};

use crate::mmio::{ActivateError, VirtioDevice};
use crate::GuestMemoryMmap;

/// virtio-blk sectors are 512 bytes whatever the backing store's block size (§5.2.6).
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request queue: Linux's default, and what QEMU offers.
pub const QUEUE_SIZE: u16 = 256;
/// Request header: le32 type, le32 reserved, le64 sector (§5.2.6, struct virtio_blk_req).
const HEADER_SIZE: usize = 16;
/// Data is moved through a bounded buffer, so a chain naming gigabytes (the same guest page
/// many times over) costs time, not dom0 memory.
const CHUNK: usize = 128 * 1024;
/// Bytes of `struct virtio_blk_config` (§5.2.4) up to `num_queues`, the fields Linux may read.
const CONFIG_SIZE: usize = 36;
/// Buffers one `preadv`/`pwritev` takes at most (Linux's `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// What a disk did, for the device model's summary at exit. Shared (`Block::stats`) because the
/// transport owns the device once it is built.
#[derive(Debug, Default)]
pub struct BlockStats {
    /// Requests completed (any status).
    pub requests: AtomicU64,
    /// Bytes read from the file into guest memory, and written from it to the file.
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    /// FLUSH requests.
    pub flushes: AtomicU64,
    /// Requests completed with IOERR (bad shape, out of range, or a failing read or write).
    pub errors: AtomicU64,
}

impl BlockStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A counter's value now.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A virtio block device backed by `file`.
pub struct Block {
    file: File,
    read_only: bool,
    /// Disk size in whole sectors; a trailing partial sector of the file is not exposed.
    capacity: u64,
    serial: [u8; VIRTIO_BLK_ID_BYTES as usize],
    queue_sizes: [u16; 1],
    state: Option<Active>,
    /// Data moves between the file and guest memory through this buffer of `CHUNK` bytes,
    /// page-aligned so that a block device opened with `O_DIRECT` takes it as it is.
    buf: Bounce,
    /// Data goes through `buf` only (a file opened `O_DIRECT`): see [`Block::direct`].
    bounce_only: bool,
    stats: Arc<BlockStats>,
}

/// What the device has between DRIVER_OK and reset.
struct Active {
    mem: Arc<GuestMemoryMmap>,
    queue: Queue,
}

impl Block {
    /// A disk over `file`, which must be open for reading, and for writing unless `read_only`.
    /// Its size is taken by seeking to the end, which works for block devices too (their
    /// metadata length is 0). `serial` is what GET_ID returns, cut to 20 bytes (§5.2.6).
    pub fn new(mut file: File, read_only: bool, serial: &str) -> io::Result<Self> {
        let len = file.seek(SeekFrom::End(0))?;
        let bounce_only = opened_direct(&file);
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let n = serial.len().min(id.len());
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Ok(Self {
            file,
            read_only,
            capacity: len / SECTOR_SIZE,
            serial: id,
            queue_sizes: [QUEUE_SIZE],
            state: None,
            buf: Bounce::default(),
            bounce_only,
            stats: Arc::default(),
        })
    }

    /// Its counters, which stay readable after the device is given to a transport.
    pub fn stats(&self) -> Arc<BlockStats> {
        Arc::clone(&self.stats)
    }

    /// Disk size in 512-byte sectors, as the config space reports it.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn config_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        c[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        // seg_max: data descriptors per request, the queue less header and status.
        c[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        c
    }

    /// Handles one request; returns the number of bytes written into the chain (the used
    /// length, §2.7.8), status included.
    fn handle(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
        // Descriptors outside guest RAM or lengths that overflow: nothing can be written back.
        let Ok(mut reader) = Reader::new(mem, chain.clone()) else {
            return 0;
        };
        let Some((mut writer, mut status_w)) = split_status(mem, chain.clone()) else {
            return 0;
        };
        let (status, written) = self.execute(mem, &chain, &mut reader, &mut writer);
        BlockStats::add(&self.stats.requests, 1);
        if status == VIRTIO_BLK_S_IOERR {
            BlockStats::add(&self.stats.errors, 1);
        }
        if status_w.write_all(&[status as u8]).is_err() {
            return 0;
        }
        u32::try_from(written + 1).unwrap_or(u32::MAX)
    }

    /// Executes the request of `chain` whose header is next in `reader`; `data_w` is the
    /// writable data area (status byte excluded). Returns the status and the bytes written into
    /// the data area.
    fn execute(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: &DescriptorChain<&GuestMemoryMmap>,
        reader: &mut crate::ChainReader<'_>,
        data_w: &mut crate::ChainWriter<'_>,
    ) -> (u32, usize) {
        let mut hdr = [0u8; HEADER_SIZE];
        if reader.read_exact(&mut hdr).is_err() {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = hdr;
        let req_type = u32::from_le_bytes([t0, t1, t2, t3]);
        let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
        let status = match req_type {
            VIRTIO_BLK_T_IN => {
                let len = data_w.available_bytes();
                let Some(off) = self.range(sector, len) else {
                    return (VIRTIO_BLK_S_IOERR, 0);
                };
                // The data: the chain's writable bytes but the last, its status byte.
                match self.direct(mem, chain, Dir::In, 0, len, off) {
                    Some(Ok(())) => return (VIRTIO_BLK_S_OK, len),
                    Some(Err(_)) => return (VIRTIO_BLK_S_IOERR, 0),
                    None => status(self.read_to_guest(off, len, data_w)),
                }
            }
            VIRTIO_BLK_T_OUT => {
                if self.read_only {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let len = reader.available_bytes();
                let Some(off) = self.range(sector, len) else {
                    return (VIRTIO_BLK_S_IOERR, 0);
                };
                // The data: the chain's readable bytes after the header.
                match self.direct(mem, chain, Dir::Out, HEADER_SIZE, len, off) {
                    Some(r) => status(r),
                    None => status(self.write_from_guest(off, len, reader)),
                }
            }
            // With FLUSH negotiated, completed writes may sit in dom0's page cache; a flush
            // completes only once they are on the file (§5.2.6.2, issue 11: flushed writes survive
            // the domain).
            VIRTIO_BLK_T_FLUSH => {
                BlockStats::add(&self.stats.flushes, 1);
                status(self.file.sync_data())
            }
            VIRTIO_BLK_T_GET_ID => {
                // The driver's buffer is VIRTIO_BLK_ID_BYTES; a shorter one cannot hold the id.
                if data_w.available_bytes() < self.serial.len() {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                status(data_w.write_all(&self.serial))
            }
            _ => VIRTIO_BLK_S_UNSUPP,
        };
        (status, data_w.bytes_written())
    }

    /// Moves a request's data straight between the file at `off` and guest memory: the `len`
    /// bytes from `skip` on of the chain's device-writable descriptors (`Dir::In`) or
    /// device-readable ones (`Dir::Out`), in one `preadv`/`pwritev` (more for over `IOV_MAX`
    /// buffers or a short transfer). `None`: not done, the caller goes through the bounce buffer.
    ///
    /// One copy instead of two (file → bounce → guest): a 1 MiB read costs dom0 about a copy of
    /// the data under the emulator, the most of what it does per request (BENCHMARKS.md, issue
    /// 11). A file opened `O_DIRECT` (a `phy:` block device) cannot take it: the kernel would pin
    /// the user pages for the device's DMA, and pages of a foreign mapping (`VM_PFNMAP`) cannot be
    /// pinned (`EFAULT`): such a disk always goes through the bounce buffer, which is its own
    /// memory. An `EFAULT` here from any other file says the same and turns this off for the disk.
    fn direct(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: &DescriptorChain<&GuestMemoryMmap>,
        dir: Dir,
        skip: usize,
        len: usize,
        off: u64,
    ) -> Option<io::Result<()>> {
        if self.bounce_only {
            return None;
        }
        let bufs = match guest_buffers(mem, chain, dir, skip, len) {
            Ok(b) => b,
            // The Reader/Writer built over the same chain accepted it: not reached in practice.
            Err(e) => return Some(Err(e)),
        };
        let r = transfer(&self.file, dir, off, &bufs);
        if let Err(e) = &r {
            if e.raw_os_error() == Some(libc::EFAULT) {
                self.bounce_only = true;
                return None;
            }
        }
        if r.is_ok() {
            let counter = match dir {
                Dir::In => {
                    // What dom0 wrote into the domU's memory is dirty (a live migration sends it).
                    for b in &bufs {
                        b.bitmap().mark_dirty(0, b.len());
                    }
                    &self.stats.bytes_read
                }
                Dir::Out => &self.stats.bytes_written,
            };
            BlockStats::add(counter, len as u64);
        }
        Some(r)
    }

    /// The file offset of a `len`-byte transfer at `sector`, if it is whole sectors
    /// (§5.2.6.1: data is a multiple of 512 bytes) inside the disk.
    fn range(&self, sector: u64, len: usize) -> Option<u64> {
        let len = u64::try_from(len).ok()?;
        if len % SECTOR_SIZE != 0 {
            return None;
        }
        let end = sector.checked_add(len / SECTOR_SIZE)?;
        (end <= self.capacity).then(|| sector * SECTOR_SIZE)
    }

    fn read_to_guest(
        &mut self,
        mut off: u64,
        mut len: usize,
        w: &mut crate::ChainWriter<'_>,
    ) -> io::Result<()> {
        let buf = self.buf.bytes();
        while len > 0 {
            let n = len.min(CHUNK);
            self.file.read_exact_at(&mut buf[..n], off)?;
            w.write_all(&buf[..n])?;
            BlockStats::add(&self.stats.bytes_read, n as u64);
            off += n as u64;
            len -= n;
        }
        Ok(())
    }

    fn write_from_guest(
        &mut self,
        mut off: u64,
        mut len: usize,
        r: &mut crate::ChainReader<'_>,
    ) -> io::Result<()> {
        let buf = self.buf.bytes();
        while len > 0 {
            let n = len.min(CHUNK);
            r.read_exact(&mut buf[..n])?;
            self.file.write_all_at(&buf[..n], off)?;
            BlockStats::add(&self.stats.bytes_written, n as u64);
            off += n as u64;
            len -= n;
        }
        Ok(())
    }
}

/// A request's device-writable part split into its data and its status byte, the chain's last
/// writable byte (§5.2.6); `None` when nothing can be written back (descriptors outside guest RAM,
/// or no writable byte: the driver cannot be told anything).
fn split_status<'a>(
    mem: &'a GuestMemoryMmap,
    chain: DescriptorChain<&'a GuestMemoryMmap>,
) -> Option<(crate::ChainWriter<'a>, crate::ChainWriter<'a>)> {
    let mut writer = Writer::new(mem, chain).ok()?;
    let writable = writer.available_bytes().checked_sub(1)?;
    let status_w = writer.split_at(writable).ok()?;
    Some((writer, status_w))
}

/// Completes a request without doing it: status IOERR (a device whose model died,
/// `crate::failed`). Returns the used length, as [`Block`]'s requests do.
pub(crate) fn fail_request(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
    let Some((_, mut status_w)) = split_status(mem, chain) else {
        return 0;
    };
    match status_w.write_all(&[VIRTIO_BLK_S_IOERR as u8]) {
        Ok(()) => 1,
        Err(_) => 0,
    }
}

/// Which way a request's data goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    /// File → guest (a read request: the device writes the chain's writable buffers).
    In,
    /// Guest → file (a write request: the device reads the chain's readable buffers).
    Out,
}

type GuestSlice<'a> = VolatileSlice<'a, vm_memory::bitmap::RefSlice<'a, vm_memory::bitmap::AtomicBitmap>>;

/// The bytes `[skip, skip + len)` of a chain's buffers that go `dir`, as slices of guest memory
/// (a descriptor across two regions of it is two). Every one is checked against guest RAM by
/// `get_slices`, as virtio-queue's `Reader`/`Writer` check them.
fn guest_buffers<'a>(
    mem: &'a GuestMemoryMmap,
    chain: &DescriptorChain<&'a GuestMemoryMmap>,
    dir: Dir,
    mut skip: usize,
    mut len: usize,
) -> io::Result<Vec<GuestSlice<'a>>> {
    let bad = |e: vm_memory::GuestMemoryError| io::Error::new(io::ErrorKind::InvalidInput, e);
    let (want_write, perm) = match dir {
        Dir::In => (true, Permissions::Write),
        Dir::Out => (false, Permissions::Read),
    };
    let mut out = Vec::new();
    for desc in chain.clone() {
        if len == 0 {
            break;
        }
        if desc.is_write_only() != want_write {
            continue;
        }
        for slice in mem.get_slices(desc.addr(), desc.len() as usize, perm).map_err(bad)? {
            let mut slice = slice.map_err(bad)?;
            if skip >= slice.len() {
                skip -= slice.len();
                continue;
            }
            if skip > 0 {
                slice = slice.offset(skip).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                skip = 0;
            }
            let n = slice.len().min(len);
            out.push(slice.subslice(0, n).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?);
            len -= n;
            if len == 0 {
                break;
            }
        }
    }
    if len > 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the chain is shorter than its data"));
    }
    Ok(out)
}

/// `preadv`/`pwritev` of `bufs` at `off`, until all of them are moved.
fn transfer(file: &File, dir: Dir, mut off: u64, bufs: &[GuestSlice<'_>]) -> io::Result<()> {
    // (index of the first buffer not done, bytes of it done)
    let (mut first, mut done) = (0usize, 0usize);
    while first < bufs.len() {
        let iov: Vec<libc::iovec> = bufs[first..]
            .iter()
            .take(IOV_MAX)
            .enumerate()
            .map(|(i, b)| {
                let from = if i == 0 { done } else { 0 };
                // SAFETY: in bounds of the slice (`from` < its length); the guard is not kept,
                // but the mapping outlives this call (the slices borrow the guest memory).
                libc::iovec { iov_base: unsafe { b.ptr_guard_mut().as_ptr().add(from) }.cast(), iov_len: b.len() - from }
            })
            .collect();
        let at = libc::off_t::try_from(off).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let count = iov.len() as libc::c_int;
        // SAFETY: each iovec names bytes of guest memory mapped into this process for as long as
        // `bufs` borrows it; the kernel checks them as any user buffer.
        let n = unsafe {
            match dir {
                Dir::In => libc::preadv(file.as_raw_fd(), iov.as_ptr(), count, at),
                Dir::Out => libc::pwritev(file.as_raw_fd(), iov.as_ptr(), count, at),
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        let mut n = n as usize;
        off += n as u64;
        while n > 0 && first < bufs.len() {
            let left = bufs[first].len() - done;
            if n >= left {
                n -= left;
                first += 1;
                done = 0;
            } else {
                done += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// A page of the bounce buffer: its alignment is what `O_DIRECT` asks of a buffer (the logical
/// block size, at most a page).
#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Page([u8; 4096]);

/// The bounce buffer, allocated on first use and kept: one allocation per disk, not per request.
#[derive(Default)]
struct Bounce(Vec<Page>);

impl Bounce {
    fn bytes(&mut self) -> &mut [u8] {
        const PAGES: usize = CHUNK / 4096;
        if self.0.len() < PAGES {
            self.0.resize(PAGES, Page([0; 4096]));
        }
        // SAFETY: `Page` is 4096 plain bytes with no padding (`repr(C)`, one array field of a
        // multiple of its alignment), so the vector's pages are `len * 4096` initialised bytes in
        // one allocation, borrowed mutably for as long as `self` is.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u8>(), self.0.len() * 4096) }
    }
}

/// Whether `file` was opened (or set) `O_DIRECT`.
fn opened_direct(file: &File) -> bool {
    // SAFETY: F_GETFL on a descriptor we own.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    flags >= 0 && flags & libc::O_DIRECT != 0
}

fn status(r: io::Result<()>) -> u32 {
    match r {
        Ok(()) => VIRTIO_BLK_S_OK,
        Err(_) => VIRTIO_BLK_S_IOERR,
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        let mut f = 1u64 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX;
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config_bytes();
        crate::mmio::copy_config(&c, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Only `writeback` is writable, and only with VIRTIO_BLK_F_CONFIG_WCE, not offered.
    }

    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        _acked_features: u64,
    ) -> Result<(), ActivateError> {
        let Some(queue) = queues.into_iter().next() else {
            return Err(ActivateError::QueueNotReady(0));
        };
        if !queue.ready() {
            return Err(ActivateError::QueueNotReady(0));
        }
        self.state = Some(Active { mem, queue });
        Ok(())
    }

    fn process_queue(&mut self, index: u16) -> bool {
        if index != 0 {
            return false;
        }
        let Some(mut active) = self.state.take() else {
            return false;
        };
        let mem = Arc::clone(&active.mem);
        let mut used = false;
        // Bounded by what the driver made available when each chain is popped: virtio-queue
        // refuses an avail index more than the queue size ahead (InvalidAvailRingIndex).
        while let Some(chain) = active.queue.pop_descriptor_chain(&*mem) {
            let head = chain.head_index();
            let len = self.handle(&mem, chain);
            // Fails only for a head index ≥ queue size, which pop_descriptor_chain never returns.
            if active.queue.add_used(&*mem, head, len).is_ok() {
                used = true;
            }
        }
        let notify = used && active.queue.needs_notification(&*mem).unwrap_or(true);
        self.state = Some(active);
        notify
    }

    fn reset(&mut self) {
        self.state = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// O_DIRECT takes a buffer aligned to the device's logical block size (at most a page):
    /// every request's data goes through this one, whole.
    #[test]
    fn the_bounce_buffer_is_page_aligned_and_a_chunk_long() {
        let mut b = Bounce::default();
        let (at, len) = {
            let s = b.bytes();
            s[CHUNK - 1] = 0xa5;
            (s.as_ptr() as usize, s.len())
        };
        assert_eq!(at % 4096, 0);
        assert_eq!(len, CHUNK);
        // Kept, not reallocated, from one request to the next.
        assert_eq!(b.bytes().as_ptr() as usize, at);
        assert_eq!(b.bytes()[CHUNK - 1], 0xa5);
    }
}
