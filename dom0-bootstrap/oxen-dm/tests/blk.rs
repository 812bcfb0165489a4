//! virtio-blk driven end to end through the MMIO transport, as a guest driver would.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use common::*;
use oxen_dm::mmio::Effect;
use oxen_dm::GuestMemoryMmap;
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_mmio::*;
use vm_memory::{Bytes, GuestAddress};

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

#[test]
fn write_sectors_then_read_them_back() {
    let mem = mem();
    let vq = Vq::new(&mem, GuestAddress(0));
    let (_tmp, file) = image(64, 0);
    let mut t = blk_up(&mem, &vq, file, false);

    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    let (len, st) = request(&mut t, &mem, &vq, VIRTIO_BLK_T_OUT, 10, 4096, false);
    assert_eq!((len, st), (1, OK), "a write writes only the status byte");

    mem.write_slice(&[0u8; 4096], GuestAddress(DATA)).unwrap();
    let (len, st) = request(&mut t, &mem, &vq, VIRTIO_BLK_T_IN, 10, 4096, true);
    assert_eq!((len, st), (4097, OK));
    let mut back = vec![0u8; 4096];
    mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
    assert_eq!(back, pattern);

    // The neighbouring sectors were not touched.
    let (_, st) = request(&mut t, &mem, &vq, VIRTIO_BLK_T_IN, 9, 512, true);
    assert_eq!(st, OK);
    mem.read_slice(&mut back[..512], GuestAddress(DATA))
        .unwrap();
    assert!(back[..512].iter().all(|&b| b == 0));
}

#[test]
fn flush_returns_ok_and_the_data_is_in_the_file() {
    let mem = mem();
    let vq = Vq::new(&mem, GuestAddress(0));
    let (tmp, file) = image(16, 0);
    let mut t = blk_up(&mem, &vq, file, false);
    mem.write_slice(&[0xa5; 1024], GuestAddress(DATA)).unwrap();
    assert_eq!(
        request(&mut t, &mem, &vq, VIRTIO_BLK_T_OUT, 3, 1024, false).1,
        OK
    );
    let (len, st) = request(&mut t, &mem, &vq, VIRTIO_BLK_T_FLUSH, 0, 0, false);
    assert_eq!((len, st), (1, OK));
    let on_disk = std::fs::read(tmp.as_path()).unwrap();
    assert_eq!(on_disk.len(), 16 * 512);
    assert!(on_disk[3 * 512..5 * 512].iter().all(|&b| b == 0xa5));
    assert!(on_disk[..3 * 512].iter().all(|&b| b == 0));
    assert!(on_disk[5 * 512..].iter().all(|&b| b == 0));
}

#[test]
fn read_only_disk_refuses_writes_and_file_is_unchanged() {
    let mem = mem();
    let vq = Vq::new(&mem, GuestAddress(0));
    let (tmp, file) = image(16, 0x11);
    let mut t = blk_up(&mem, &vq, file, true);
    let _ = wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    assert_ne!(
        rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES) & (1 << VIRTIO_BLK_F_RO),
        0
    );
    mem.write_slice(&[0xee; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(
        request(&mut t, &mem, &vq, VIRTIO_BLK_T_OUT, 0, 512, false),
        (1, IOERR)
    );
    // Reads still work.
    assert_eq!(
        request(&mut t, &mem, &vq, VIRTIO_BLK_T_IN, 0, 512, true),
        (513, OK)
    );
    let mut b = [0u8; 512];
    mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
    assert!(b.iter().all(|&x| x == 0x11));
    assert!(std::fs::read(tmp.as_path())
        .unwrap()
        .iter()
        .all(|&x| x == 0x11));
}

#[test]
fn rw_disk_does_not_offer_ro() {
    let mem = mem();
    let vq = Vq::new(&mem, GuestAddress(0));
    let (_tmp, file) = image(1, 0);
    let mut t = blk_up(&mem, &vq, file, false);
    assert_eq!(offered(&mut t) & (1 << VIRTIO_BLK_F_RO), 0);
    assert_ne!(offered(&mut t) & (1 << VIRTIO_BLK_F_FLUSH), 0);
}

#[test]
fn out_of_range_and_partial_sectors_are_ioerr() {
    let mem = mem();
    let vq = Vq::new(&mem, GuestAddress(0));
    let (tmp, file) = image(8, 0x22);
    let mut t = blk_up(&mem, &vq, file, false);
    // Last sector is fine, one past it is not; a transfer straddling the end is not.
    assert_eq!(
        request(&mut t, &mem, &vq, VIRTIO_BLK_T_IN, 7, 512, true).1,
        OK
    );
    assert_eq!(
        request(&mut t, &mem, &vq, VIRTIO_BLK_T_IN, 8, 512, true).1,
        IOERR
    );
    assert_eq!(
        request(&mut t, &mem, &vq, VIRTIO_BLK_T_IN, 7, 1024, true).1,
        IOERR
    );
    assert_eq!(
        request(&mut t, &mem, &vq, VIRTIO_BLK_T_OUT, 7, 1024, false).1,
        IOERR
    );
    assert_eq!(
        request(&mut t, &mem, &vq, VIRTIO_BLK_T_OUT, u64::MAX, 512, false).1,
        IOERR
    );
    assert_eq!(
        request(
            &mut t,
            &mem,
            &vq,
            VIRTIO_BLK_T_IN,
            u64::MAX / 512,
            512,
            true
        )
        .1,
        IOERR
    );
    // Not a whole number of sectors (§5.2.6.1).
    assert_eq!(
        request(&mut t, &mem, &vq, VIRTIO_BLK_T_OUT, 0, 100, false).1,
        IOERR
    );
    assert_eq!(
        request(&mut t, &mem, &vq, VIRTIO_BLK_T_IN, 0, 513, true).1,
        IOERR
    );
    let f = std::fs::read(tmp.as_path()).unwrap();
    assert_eq!(f.len(), 8 * 512, "nothing written past the end");
    assert!(f.iter().all(|&b| b == 0x22));
}

#[test]
fn get_id_returns_the_serial() {
    let mem = mem();
    let vq = Vq::new(&mem, GuestAddress(0));
    let (_tmp, file) = image(1, 0);
    let mut t = blk_up(&mem, &vq, file, false);
    let (len, st) = request(&mut t, &mem, &vq, VIRTIO_BLK_T_GET_ID, 0, 20, true);
    assert_eq!((len, st), (21, OK));
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..11], b"oxen-disk-0");
    assert!(id[11..].iter().all(|&b| b == 0), "NUL-padded");
    // A buffer too short for the id is an error, not a truncated id.
    assert_eq!(
        request(&mut t, &mem, &vq, VIRTIO_BLK_T_GET_ID, 0, 8, true).1,
        IOERR
    );
}

#[test]
fn unsupported_request_types_are_unsupp() {
    let mem = mem();
    let vq = Vq::new(&mem, GuestAddress(0));
    let (_tmp, file) = image(4, 0);
    let mut t = blk_up(&mem, &vq, file, false);
    for ty in [
        VIRTIO_BLK_T_DISCARD,
        VIRTIO_BLK_T_WRITE_ZEROES,
        VIRTIO_BLK_T_SCSI_CMD,
        0xdead_beef,
    ] {
        assert_eq!(
            request(&mut t, &mem, &vq, ty, 0, 0, false),
            (1, UNSUPP),
            "type {ty:#x}"
        );
    }
}

#[test]
fn malformed_chains_do_not_panic() {
    let mem = mem();
    let vq = Vq::new(&mem, GuestAddress(0));
    let (tmp, file) = image(4, 0x33);
    let mut t = blk_up(&mem, &vq, file, false);
    let status = |m: &oxen_dm::GuestMemoryMmap| m.read_obj::<u8>(GuestAddress(STATUS)).unwrap();

    // Header only, nothing writable: no status can be returned, a 0-length used entry.
    header(&mem, VIRTIO_BLK_T_IN, 0);
    assert_eq!(submit(&mut t, &mem, &vq, &[desc(HDR, 16, 0, 0)]), (0, 0));

    // Header too short (8 bytes) with a status byte: IOERR.
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let c = [desc(HDR, 8, F_NEXT, 1), desc(STATUS, 1, F_WRITE, 0)];
    assert_eq!(submit(&mut t, &mem, &vq, &c), (0, 1));
    assert_eq!(status(&mem), IOERR);

    // Header device-writable (not readable): IOERR, the device reads no request.
    let c = [
        desc(HDR, 16, F_WRITE | F_NEXT, 1),
        desc(STATUS, 1, F_WRITE, 0),
    ];
    let (_, len) = submit(&mut t, &mem, &vq, &c);
    assert!(len >= 1);
    assert_eq!(status(&mem), IOERR);

    // Flush whose status descriptor is read-only: nothing writable, 0-length used entry.
    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let c = [desc(HDR, 16, F_NEXT, 1), desc(STATUS, 1, 0, 0)];
    assert_eq!(submit(&mut t, &mem, &vq, &c), (0, 0));
    assert_eq!(
        status(&mem),
        0xff,
        "a read-only descriptor is never written"
    );

    // Read whose status descriptor is read-only: the last writable byte becomes the status,
    // leaving 511 data bytes, not whole sectors: IOERR there, nothing else written.
    header(&mem, VIRTIO_BLK_T_IN, 0);
    mem.write_slice(&[0u8; 512], GuestAddress(DATA)).unwrap();
    let c = [
        desc(HDR, 16, F_NEXT, 1),
        desc(DATA, 512, F_WRITE | F_NEXT, 2),
        desc(STATUS, 1, 0, 0),
    ];
    assert_eq!(submit(&mut t, &mem, &vq, &c), (0, 1));
    assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA + 511)).unwrap(), IOERR);

    // A data descriptor outside guest RAM: the chain cannot be mapped, 0-length used entry.
    let c = [
        desc(HDR, 16, F_NEXT, 1),
        desc(MEM_SIZE as u64 - 256, 512, F_WRITE | F_NEXT, 2),
        desc(STATUS, 1, F_WRITE, 0),
    ];
    assert_eq!(submit(&mut t, &mem, &vq, &c), (0, 0));

    // A descriptor pointing at itself (a loop): virtio-queue's TTL ends the chain.
    let c = [desc(HDR, 16, F_NEXT, 0)];
    vq.add_desc_chains(&c, 0);
    assert_eq!(
        wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0),
        Effect::QueueNotify(0)
    );
    let _ = t.process_queue(0);

    // The device still works afterwards.
    mem.write_slice(&[0x44; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(
        request(&mut t, &mem, &vq, VIRTIO_BLK_T_OUT, 1, 512, false),
        (1, OK)
    );
    let f = std::fs::read(tmp.as_path()).unwrap();
    assert_eq!(f.len(), 4 * 512);
    assert!(f[512..1024].iter().all(|&b| b == 0x44));
    assert!(f[..512].iter().chain(&f[1024..]).all(|&b| b == 0x33));
}

#[test]
fn indirect_descriptors_work() {
    let mem = mem();
    let vq = Vq::new(&mem, GuestAddress(0));
    let (tmp, file) = image(4, 0);
    let mut t = blk_up(&mem, &vq, file, false);
    header(&mem, VIRTIO_BLK_T_OUT, 2);
    mem.write_slice(&[0x55; 512], GuestAddress(DATA)).unwrap();
    let table = 0x40_0000u64;
    let inner = [
        desc(HDR, 16, F_NEXT, 1),
        desc(DATA, 512, F_NEXT, 2),
        desc(STATUS, 1, F_WRITE, 0),
    ];
    for (i, d) in inner.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    const F_INDIRECT: u16 = 4;
    let (_, len) = submit(&mut t, &mem, &vq, &[desc(table, 48, F_INDIRECT, 0)]);
    assert_eq!(len, 1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), OK);
    let mut b = [0u8; 512];
    tmp.as_file().read_exact_at(&mut b, 1024).unwrap();
    assert!(b.iter().all(|&x| x == 0x55));
}

#[test]
fn many_requests_wrap_the_rings() {
    let mem = mem();
    let vq = Vq::new(&mem, GuestAddress(0));
    let (tmp, file) = image(64, 0);
    let mut t = blk_up(&mem, &vq, file, false);
    // 3 × the queue size: ring indices wrap (§2.7.6), every request still lands.
    for s in 0..3 * u64::from(QSIZE) {
        mem.write_slice(&[s as u8 + 1; 512], GuestAddress(DATA))
            .unwrap();
        assert_eq!(
            request(&mut t, &mem, &vq, VIRTIO_BLK_T_OUT, s, 512, false),
            (1, OK)
        );
    }
    for s in 0..3 * u64::from(QSIZE) {
        assert_eq!(
            request(&mut t, &mem, &vq, VIRTIO_BLK_T_IN, s, 512, true),
            (513, OK)
        );
        let mut b = [0u8; 512];
        mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
        assert!(b.iter().all(|&x| x == s as u8 + 1), "sector {s}");
    }
    let f = std::fs::read(tmp.as_path()).unwrap();
    assert!(f[48 * 512..].iter().all(|&x| x == 0));
}

/// Data moves straight between the file and guest memory (one `preadv`/`pwritev`, no bounce
/// buffer): buffers of any size and number, a header sharing its descriptor with data, a status
/// byte sharing one with data, and a descriptor across two regions of guest memory all land where
/// the driver put them, and nothing around them is touched.
#[test]
fn scattered_buffers_go_straight_to_and_from_the_file() {
    let mib = 1u64 << 20;
    // Two regions back to back: a buffer at 8 MiB - 1 KiB runs across them.
    let mem = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 8 << 20), (GuestAddress(8 * mib), 8 << 20)]).unwrap());
    let vq = Vq::new(&mem, GuestAddress(0));
    let (tmp, file) = image(64, 0);
    let mut t = blk_up(&mem, &vq, file, false);
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 13 + 5) as u8).collect();

    // OUT at sector 4: the header and the first 512 bytes in one descriptor, then 1,536 bytes
    // across the regions' border, then 6,144 bytes.
    let across = 8 * mib - 1024;
    mem.write_slice(&[VIRTIO_BLK_T_OUT as u8, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0], GuestAddress(HDR)).unwrap();
    mem.write_slice(&pattern[..512], GuestAddress(HDR + 16)).unwrap();
    mem.write_slice(&pattern[512..2048], GuestAddress(across)).unwrap();
    mem.write_slice(&pattern[2048..], GuestAddress(DATA)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let descs = [
        desc(HDR, 16 + 512, F_NEXT, 1),
        desc(across, 1536, F_NEXT, 2),
        desc(DATA, 6144, F_NEXT, 3),
        desc(STATUS, 1, F_WRITE, 0),
    ];
    assert_eq!(submit(&mut t, &mem, &vq, &descs), (0, 1));
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), OK);
    let on_disk = std::fs::read(tmp.as_path()).unwrap();
    assert_eq!(&on_disk[4 * 512..4 * 512 + 8192], &pattern[..]);
    assert!(on_disk[..4 * 512].iter().chain(&on_disk[4 * 512 + 8192..]).all(|&b| b == 0));

    // IN of the same sectors: 1,000 + 24 bytes (an odd split), across the border, and the last
    // 5,120 bytes sharing their descriptor with the status byte.
    for a in [DATA, across, STATUS] {
        mem.write_slice(&[0xee; 8192], GuestAddress(a)).unwrap();
    }
    header(&mem, VIRTIO_BLK_T_IN, 4);
    let descs = [
        desc(HDR, 16, F_NEXT, 1),
        desc(DATA, 1000, F_NEXT | F_WRITE, 2),
        desc(DATA + 4096, 24, F_NEXT | F_WRITE, 3),
        desc(across, 2048, F_NEXT | F_WRITE, 4),
        desc(STATUS, 5120 + 1, F_WRITE, 0),
    ];
    assert_eq!(submit(&mut t, &mem, &vq, &descs), (0, 8192 + 1));
    let mut back = vec![0u8; 8192];
    mem.read_slice(&mut back[..1000], GuestAddress(DATA)).unwrap();
    mem.read_slice(&mut back[1000..1024], GuestAddress(DATA + 4096)).unwrap();
    mem.read_slice(&mut back[1024..3072], GuestAddress(across)).unwrap();
    mem.read_slice(&mut back[3072..], GuestAddress(STATUS)).unwrap();
    assert_eq!(back, pattern);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS + 5120)).unwrap(), OK);
    // Bytes next to the buffers are the driver's still.
    assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA + 1000)).unwrap(), 0xee);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA + 4096 + 24)).unwrap(), 0xee);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(across + 2048)).unwrap(), 0xee);
    // What the device wrote into guest memory is marked dirty (a live migration sends it).
    let dirty = oxen_dm::foreign::take_dirty(&mem);
    for a in [DATA, across, STATUS, 8 * mib] {
        assert!(dirty.contains(&(a >> 12)), "page {:#x} not dirty", a >> 12);
    }
}
