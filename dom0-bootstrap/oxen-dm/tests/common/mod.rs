//! A minimal virtio-mmio driver for the tests: it does what Linux's virtio_mmio and virtio_blk do
//! (§3.1.1 initialisation, §4.2.3.2 queue setup, requests of §5.2.6) over a `GuestMemoryMmap`.
//!
//! The descriptor table is virtio-queue's `MockSplitQueue`'s. Its rings are not used: in
//! virtio-queue 0.18 the mock places the used ring `len` bytes after the available ring's
//! entries instead of `2 * len` (SplitQueueRing::end counts elements, not bytes), so the two
//! rings overlap, and `add_desc_chains` does not wrap the available ring index. [`Vq`] puts the
//! available and used rings on pages of their own and wraps indices as a driver does (§2.7.6).
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::sync::Arc;

use oxen_dm::mmio::Effect;
use oxen_dm::{Block, GuestMemoryMmap, MmioTransport};
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::{DescriptorTable, MockSplitQueue};
use vm_memory::{Address, Bytes, GuestAddress};

pub const MEM_SIZE: usize = 16 << 20;
pub const QSIZE: u16 = 16;
pub const HDR: u64 = 0x10_0000;
pub const DATA: u64 = 0x20_0000;
pub const STATUS: u64 = 0x30_0000;
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

/// A split virtqueue as the driver sees it: the mock's descriptor table at `base`, the available
/// ring at `base + 0x1000`, the used ring at `base + 0x2000`.
pub struct Vq<'a> {
    mock: MockSplitQueue<'a, GuestMemoryMmap>,
    mem: &'a GuestMemoryMmap,
    base: u64,
}

impl<'a> Vq<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, base: GuestAddress) -> Self {
        let mock = MockSplitQueue::create(mem, base, QSIZE);
        let vq = Self {
            mock,
            mem,
            base: base.raw_value(),
        };
        mem.write_slice(&[0u8; 0x2000], vq.avail_addr()).unwrap();
        vq
    }
    pub fn desc_table_addr(&self) -> GuestAddress {
        self.mock.desc_table_addr()
    }
    pub fn avail_addr(&self) -> GuestAddress {
        GuestAddress(self.base + 0x1000)
    }
    pub fn used_addr(&self) -> GuestAddress {
        GuestAddress(self.base + 0x2000)
    }
    pub fn desc_table(&self) -> &DescriptorTable<'a, GuestMemoryMmap> {
        self.mock.desc_table()
    }
    /// Stores one chain at table index `offset` (its head) and makes it available.
    pub fn add_desc_chains(&self, descs: &[RawDescriptor], offset: u16) {
        for (i, d) in descs.iter().enumerate() {
            self.desc_table().store(offset + i as u16, *d).unwrap();
        }
        let idx_addr = self.avail_addr().unchecked_add(2);
        let idx: u16 = self.mem.read_obj(idx_addr).unwrap();
        let slot = self
            .avail_addr()
            .unchecked_add(4 + 2 * u64::from(idx % QSIZE));
        self.mem.write_obj(offset, slot).unwrap();
        self.mem.write_obj(idx.wrapping_add(1), idx_addr).unwrap();
    }
}

pub fn mem() -> Arc<GuestMemoryMmap> {
    Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap())
}

/// A temporary disk image of `sectors` sectors, each byte set to `fill`.
pub fn image(sectors: u64, fill: u8) -> (vmm_sys_util::tempfile::TempFile, File) {
    let tmp = vmm_sys_util::tempfile::TempFile::new().unwrap();
    let mut f = tmp.as_file().try_clone().unwrap();
    f.write_all(&vec![fill; (sectors * 512) as usize]).unwrap();
    let file = File::options()
        .read(true)
        .write(true)
        .open(tmp.as_path())
        .unwrap();
    (tmp, file)
}

pub fn rd(t: &mut MmioTransport, off: u32) -> u32 {
    t.read(u64::from(off), 4) as u32
}

pub fn wr(t: &mut MmioTransport, off: u32, v: u32) -> Effect {
    t.write(u64::from(off), 4, u64::from(v))
}

/// Feature negotiation (§3.1.1 steps 1-6) accepting `accept` of what is offered; returns
/// the status read back after FEATURES_OK.
pub fn negotiate(t: &mut MmioTransport, accept: u64) -> u32 {
    assert_eq!(wr(t, VIRTIO_MMIO_STATUS, 0), Effect::None);
    let _ = wr(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    let _ = wr(
        t,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
    );
    for sel in 0..2 {
        let _ = wr(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
        let _ = wr(
            t,
            VIRTIO_MMIO_DRIVER_FEATURES,
            (accept >> (32 * sel)) as u32,
        );
    }
    let _ = wr(
        t,
        VIRTIO_MMIO_STATUS,
        VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
    );
    rd(t, VIRTIO_MMIO_STATUS)
}

pub fn offered(t: &mut MmioTransport) -> u64 {
    let _ = wr(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    let lo = rd(t, VIRTIO_MMIO_DEVICE_FEATURES);
    let _ = wr(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    let hi = rd(t, VIRTIO_MMIO_DEVICE_FEATURES);
    u64::from(hi) << 32 | u64::from(lo)
}

/// Queue setup (§4.2.3.2) with the mock queue's ring addresses.
pub fn setup_queue(t: &mut MmioTransport, vq: &Vq<'_>) {
    let _ = wr(t, VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(rd(t, VIRTIO_MMIO_QUEUE_READY), 0);
    assert!(rd(t, VIRTIO_MMIO_QUEUE_NUM_MAX) >= u32::from(QSIZE));
    let _ = wr(t, VIRTIO_MMIO_QUEUE_NUM, u32::from(QSIZE));
    let a = |g: GuestAddress| (g.raw_value() as u32, (g.raw_value() >> 32) as u32);
    let (l, h) = a(vq.desc_table_addr());
    let _ = wr(t, VIRTIO_MMIO_QUEUE_DESC_LOW, l);
    let _ = wr(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, h);
    let (l, h) = a(vq.avail_addr());
    let _ = wr(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, l);
    let _ = wr(t, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, h);
    let (l, h) = a(vq.used_addr());
    let _ = wr(t, VIRTIO_MMIO_QUEUE_USED_LOW, l);
    let _ = wr(t, VIRTIO_MMIO_QUEUE_USED_HIGH, h);
    let _ = wr(t, VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(rd(t, VIRTIO_MMIO_QUEUE_READY), 1);
}

pub const S_ALL: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_DRIVER_OK;

/// A block device over `file`, driven to DRIVER_OK with every offered feature accepted.
pub fn blk_up(mem: &Arc<GuestMemoryMmap>, vq: &Vq<'_>, file: File, ro: bool) -> MmioTransport {
    let dev = Block::new(file, ro, "oxen-disk-0").unwrap();
    let mut t = MmioTransport::new(Box::new(dev), Arc::clone(mem)).unwrap();
    let f = offered(&mut t);
    assert_ne!(negotiate(&mut t, f) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    setup_queue(&mut t, vq);
    assert_eq!(wr(&mut t, VIRTIO_MMIO_STATUS, S_ALL), Effect::None);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), S_ALL);
    t
}

pub fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// Writes a request header (§5.2.6) at `HDR`.
pub fn header(mem: &GuestMemoryMmap, req_type: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&req_type.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HDR)).unwrap();
}

/// Makes `descs` (a chain starting at table index 0) available, notifies, lets the transport
/// process it and returns the used element (id, len). Asserts the interrupt protocol.
pub fn submit(
    t: &mut MmioTransport,
    mem: &GuestMemoryMmap,
    vq: &Vq<'_>,
    descs: &[RawDescriptor],
) -> (u32, u32) {
    let used_idx_addr = vq.used_addr().unchecked_add(2);
    let before: u16 = mem.read_obj(used_idx_addr).unwrap();
    vq.add_desc_chains(descs, 0);
    let e = wr(t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(e, Effect::QueueNotify(0));
    assert_eq!(t.process_queue(0), Effect::Interrupt(true));
    assert_eq!(
        rd(t, VIRTIO_MMIO_INTERRUPT_STATUS) & VIRTIO_MMIO_INT_VRING,
        VIRTIO_MMIO_INT_VRING
    );
    assert_eq!(
        wr(t, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING),
        Effect::Interrupt(false)
    );
    let after: u16 = mem.read_obj(used_idx_addr).unwrap();
    assert_eq!(after, before.wrapping_add(1), "one used entry per request");
    let elem = vq
        .used_addr()
        .unchecked_add(4 + 8 * u64::from(before % QSIZE));
    let id: u32 = mem.read_obj(elem).unwrap();
    let len: u32 = mem.read_obj(elem.unchecked_add(4)).unwrap();
    (id, len)
}

/// A standard three-part request: header, `data_len` bytes at DATA (device-writable if
/// `data_write`), status byte at STATUS. Returns (used len, status byte).
pub fn request(
    t: &mut MmioTransport,
    mem: &GuestMemoryMmap,
    vq: &Vq<'_>,
    req_type: u32,
    sector: u64,
    data_len: u32,
    data_write: bool,
) -> (u32, u8) {
    header(mem, req_type, sector);
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let mut descs = vec![desc(HDR, 16, F_NEXT, 1)];
    if data_len > 0 {
        let f = if data_write { F_WRITE } else { 0 };
        descs.push(desc(DATA, data_len, F_NEXT | f, 2));
    }
    descs.push(desc(STATUS, 1, F_WRITE, 0));
    let (id, len) = submit(t, mem, vq, &descs);
    assert_eq!(id, 0);
    (len, mem.read_obj(GuestAddress(STATUS)).unwrap())
}
