//! virtio-mmio register semantics (virtio spec v1.2 §4.2.2, §4.2.3, §3.1.1).

mod common;

use std::sync::Arc;

use common::*;
use oxen_dm::mmio::{Effect, MAGIC_VALUE, VENDOR_ID};
use oxen_dm::{Block, MmioTransport};
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_mmio::*;
use vm_memory::GuestAddress;

fn blk(sectors: u64) -> (vmm_sys_util::tempfile::TempFile, MmioTransport) {
    let (tmp, file) = image(sectors, 0);
    let dev = Block::new(file, false, "x").unwrap();
    (tmp, MmioTransport::new(Box::new(dev), mem()).unwrap())
}

const ACK_DRV: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
const V1: u64 = 1 << VIRTIO_F_VERSION_1;

#[test]
fn magic_version_and_ids() {
    let (_f, mut t) = blk(8);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(MAGIC_VALUE.to_le_bytes(), *b"virt");
    assert_eq!(rd(&mut t, VIRTIO_MMIO_VERSION), 2);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_ID), 2, "block device (§5)");
    assert_eq!(rd(&mut t, VIRTIO_MMIO_VENDOR_ID), VENDOR_ID);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    // No shared memory regions: length -1 (§4.2.2).
    assert_eq!(rd(&mut t, VIRTIO_MMIO_SHM_LEN_LOW), u32::MAX);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_SHM_LEN_HIGH), u32::MAX);
}

#[test]
fn config_space_reports_capacity_in_sectors() {
    let (_f, mut t) = blk(1234);
    let cfg = u64::from(VIRTIO_MMIO_CONFIG);
    assert_eq!(t.read(cfg, 4), 1234);
    assert_eq!(t.read(cfg + 4, 4), 0);
    assert_eq!(t.read(cfg, 8), 1234);
    assert_eq!(t.read(cfg, 1), 1234 & 0xff);
    assert_eq!(t.read(cfg + 1, 1), 1234 >> 8);
    assert_eq!(
        t.read(cfg + 12, 4),
        254,
        "seg_max: queue size less header and status"
    );
    // Misaligned or odd-sized config reads are 0; past the config, 0.
    assert_eq!(t.read(cfg + 1, 4), 0);
    assert_eq!(t.read(cfg, 3), 0);
    assert_eq!(t.read(cfg + 0x800, 4), 0);
    // Capacity is read-only.
    assert_eq!(t.write(cfg, 4, 7), Effect::None);
    assert_eq!(t.read(cfg, 4), 1234);
}

#[test]
fn feature_negotiation_accepts_an_offered_subset() {
    let (_f, mut t) = blk(8);
    let f = offered(&mut t);
    assert_ne!(f & V1, 0);
    let _ = wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 2);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 0, "no bank 2");
    let s = negotiate(&mut t, V1);
    assert_eq!(s, ACK_DRV | VIRTIO_CONFIG_S_FEATURES_OK);
    assert_eq!(t.driver_features(), V1);
    // Features are fixed once FEATURES_OK is set.
    let _ = wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    let _ = wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 0);
    assert_eq!(t.driver_features(), V1);
}

#[test]
fn feature_negotiation_refuses_unoffered_features() {
    let (_f, mut t) = blk(8);
    let f = offered(&mut t);
    // A bit the device did not offer.
    let unoffered = (0..64).map(|b| 1u64 << b).find(|b| f & b == 0).unwrap();
    assert_eq!(
        negotiate(&mut t, V1 | unoffered) & VIRTIO_CONFIG_S_FEATURES_OK,
        0
    );
    // No VERSION_1 on a version 2 transport.
    assert_eq!(negotiate(&mut t, f & !V1) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    // A bit in bank 2 (there are none).
    let _ = wr(&mut t, VIRTIO_MMIO_STATUS, 0);
    let _ = wr(&mut t, VIRTIO_MMIO_STATUS, ACK_DRV);
    let _ = wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    let _ = wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    let _ = wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 2);
    let _ = wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    let _ = wr(
        &mut t,
        VIRTIO_MMIO_STATUS,
        ACK_DRV | VIRTIO_CONFIG_S_FEATURES_OK,
    );
    assert_eq!(
        rd(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
        0
    );
    // And DRIVER_OK without FEATURES_OK does not start the device.
    let _ = wr(
        &mut t,
        VIRTIO_MMIO_STATUS,
        ACK_DRV | VIRTIO_CONFIG_S_DRIVER_OK,
    );
    assert!(!t.is_activated());
    assert_eq!(
        rd(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_DRIVER_OK,
        0
    );
    // After a reset the same device negotiates fine.
    assert_ne!(negotiate(&mut t, V1) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
}

#[test]
fn status_bits_cannot_be_cleared_except_by_reset() {
    let (_f, mut t) = blk(8);
    let _ = wr(&mut t, VIRTIO_MMIO_STATUS, ACK_DRV);
    let _ = wr(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), ACK_DRV);
}

#[test]
fn queue_setup_validates_the_configuration() {
    let mem = mem();
    let vq = Vq::new(&mem, GuestAddress(0));
    let (_f, file) = image(8, 0);
    let dev = Block::new(file, false, "x").unwrap();
    let mut t = MmioTransport::new(Box::new(dev), Arc::clone(&mem)).unwrap();
    assert_ne!(negotiate(&mut t, V1) & VIRTIO_CONFIG_S_FEATURES_OK, 0);

    let _ = wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
    // A queue that does not exist: max 0, ready 0, writes ignored.
    let _ = wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
    let _ = wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    let _ = wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, u32::MAX);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 0);

    let try_ready = |t: &mut MmioTransport, num: u32, desc: u64, avail: u64, used: u64| {
        let _ = wr(t, VIRTIO_MMIO_QUEUE_SEL, 0);
        let _ = wr(t, VIRTIO_MMIO_QUEUE_READY, 0);
        let _ = wr(t, VIRTIO_MMIO_QUEUE_NUM, num);
        let _ = wr(t, VIRTIO_MMIO_QUEUE_DESC_LOW, desc as u32);
        let _ = wr(t, VIRTIO_MMIO_QUEUE_DESC_HIGH, (desc >> 32) as u32);
        let _ = wr(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, avail as u32);
        let _ = wr(t, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (avail >> 32) as u32);
        let _ = wr(t, VIRTIO_MMIO_QUEUE_USED_LOW, used as u32);
        let _ = wr(t, VIRTIO_MMIO_QUEUE_USED_HIGH, (used >> 32) as u32);
        let _ = wr(t, VIRTIO_MMIO_QUEUE_READY, 1);
        rd(t, VIRTIO_MMIO_QUEUE_READY)
    };
    let (d, a, u) = (vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0);
    let q = u32::from(QSIZE);
    assert_eq!(try_ready(&mut t, 3, d, a, u), 0, "size not a power of 2");
    assert_eq!(try_ready(&mut t, 0, d, a, u), 0, "size 0");
    assert_eq!(try_ready(&mut t, 512, d, a, u), 0, "size above QueueNumMax");
    assert_eq!(
        try_ready(&mut t, q, d + 8, a, u),
        0,
        "descriptor table not 16-aligned"
    );
    assert_eq!(
        try_ready(&mut t, q, d, a + 1, u),
        0,
        "avail ring not 2-aligned"
    );
    assert_eq!(
        try_ready(&mut t, q, d, a, u + 2),
        0,
        "used ring not 4-aligned"
    );
    assert_eq!(
        try_ready(&mut t, q, MEM_SIZE as u64, a, u),
        0,
        "table outside RAM"
    );
    assert_eq!(
        try_ready(&mut t, q, d, a, 1 << 40),
        0,
        "used ring outside RAM"
    );
    assert_eq!(
        try_ready(&mut t, q, d, a, MEM_SIZE as u64 - 8),
        0,
        "used ring crosses the end"
    );
    assert_eq!(try_ready(&mut t, q, d, a, u), 1);
    // Once ready, the configuration is fixed until QueueReady is cleared.
    let _ = wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 3);
    let _ = wr(&mut t, VIRTIO_MMIO_STATUS, S_ALL);
    assert!(t.is_activated());
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), S_ALL);
    // After DRIVER_OK queue registers are frozen.
    let _ = wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 1);
}

#[test]
fn driver_ok_without_a_ready_queue_needs_reset() {
    let (_f, mut t) = blk(8);
    assert_ne!(negotiate(&mut t, V1) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    assert_eq!(
        wr(&mut t, VIRTIO_MMIO_STATUS, S_ALL),
        Effect::Interrupt(true)
    );
    assert!(!t.is_activated());
    assert_ne!(
        rd(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
        0
    );
    assert_eq!(
        rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_CONFIG
    );
    assert_eq!(rd(&mut t, VIRTIO_MMIO_CONFIG_GENERATION), 1);
    // A notify to a device that is not running does nothing.
    assert_eq!(wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0), Effect::None);
    assert_eq!(t.process_queue(0), Effect::None);
    // Reset lowers the line.
    assert_eq!(wr(&mut t, VIRTIO_MMIO_STATUS, 0), Effect::Interrupt(false));
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
}

#[test]
fn notify_before_driver_ok_or_to_a_bad_queue_does_nothing() {
    let mem = mem();
    let vq = Vq::new(&mem, GuestAddress(0));
    let (_f, file) = image(8, 0);
    let dev = Block::new(file, false, "x").unwrap();
    let mut t = MmioTransport::new(Box::new(dev), Arc::clone(&mem)).unwrap();
    assert_eq!(wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0), Effect::None);
    assert_ne!(negotiate(&mut t, V1) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    setup_queue(&mut t, &vq);
    assert_eq!(wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0), Effect::None);
    let _ = wr(&mut t, VIRTIO_MMIO_STATUS, S_ALL);
    assert_eq!(
        wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0),
        Effect::QueueNotify(0)
    );
    assert_eq!(wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 1), Effect::None);
    assert_eq!(wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, u32::MAX), Effect::None);
    assert_eq!(t.process_queue(7), Effect::None);
    // Nothing available: no interrupt.
    assert_eq!(t.process_queue(0), Effect::None);
}

#[test]
fn reset_clears_all_state() {
    let mem = mem();
    let vq = Vq::new(&mem, GuestAddress(0));
    let (_f, file) = image(8, 0);
    let mut t = blk_up(&mem, &vq, file, false);
    assert!(t.is_activated());
    let _ = wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(wr(&mut t, VIRTIO_MMIO_STATUS, 0), Effect::None);
    assert!(!t.is_activated());
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), 0);
    assert_eq!(t.driver_features(), 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
    assert_eq!(wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0), Effect::None);
    // The device comes up again from scratch and works, with its rings restarted at 0.
    let vq2 = Vq::new(&mem, GuestAddress(0x8000));
    assert_ne!(negotiate(&mut t, V1) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    setup_queue(&mut t, &vq2);
    let _ = wr(&mut t, VIRTIO_MMIO_STATUS, S_ALL);
    let (len, st) = request(&mut t, &mem, &vq2, 0, 0, 512, true);
    assert_eq!((len, st), (513, 0));
}

#[test]
fn interrupt_ack_lowers_the_line_only_when_all_bits_are_acked() {
    let (_f, mut t) = blk(8);
    assert_ne!(negotiate(&mut t, V1) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    // NEEDS_RESET raises INT_CONFIG.
    assert_eq!(
        wr(&mut t, VIRTIO_MMIO_STATUS, S_ALL),
        Effect::Interrupt(true)
    );
    assert!(t.interrupt_pending());
    assert_eq!(
        wr(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING),
        Effect::None
    );
    assert!(t.interrupt_pending());
    assert_eq!(
        wr(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, u32::MAX),
        Effect::Interrupt(false)
    );
    assert!(!t.interrupt_pending());
    assert_eq!(
        wr(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, u32::MAX),
        Effect::None
    );
}

#[test]
fn bad_offsets_and_sizes_read_zero_and_writes_are_ignored() {
    let (_f, mut t) = blk(8);
    let _ = wr(&mut t, VIRTIO_MMIO_STATUS, ACK_DRV);
    for size in 0..=16u8 {
        for off in (0..0x1100u64).chain([u64::MAX, u64::MAX - 3, 1 << 32, (1 << 32) + 0x70]) {
            let good = size == 4 && off % 4 == 0 && off < 0x100;
            let v = t.read(off, size);
            if !good && off < 0x100 {
                assert_eq!(v, 0, "read off {off:#x} size {size}");
            }
            if off >= 0x1000 {
                assert_eq!(v, 0, "read past the window, off {off:#x} size {size}");
            }
            if !good && off != 0x100 {
                assert_eq!(t.write(off, size, u64::MAX), Effect::None);
            }
        }
    }
    // The bad writes (Status among them, with sizes ≠ 4 and unaligned) changed nothing.
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), ACK_DRV);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_MAGIC_VALUE), MAGIC_VALUE);
    assert_eq!(t.read(u64::from(VIRTIO_MMIO_CONFIG), 4), 8);
}
