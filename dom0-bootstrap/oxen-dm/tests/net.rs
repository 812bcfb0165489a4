//! virtio-net driven through the MMIO transport as Linux's virtio_net would, with a socket pair
//! as the backend: the test holds the other end and plays the network.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use common::*;
use oxen_dm::mmio::Effect;
use oxen_dm::net::{HDR_LEN, QUEUE_SIZE, RXQ, TXQ};
use oxen_dm::{FdBackend, GuestMemoryMmap, MmioTransport, Net, NetStats};
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use vm_memory::{Address, Bytes, GuestAddress};

const MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x01, 0x02, 0x03];
/// Where the driver's receive and transmit buffers are.
const RXBUF: u64 = 0x40_0000;
const TXBUF: u64 = 0x50_0000;
/// What Linux gives each receive chain without mergeable buffers: a header and 1518 bytes.
const RX_ROOM: u32 = HDR_LEN as u32 + 1518;

struct Rig {
    mem: Arc<GuestMemoryMmap>,
    t: MmioTransport,
    stats: Arc<NetStats>,
    /// The network's end of the backend.
    peer: File,
}

fn device(mem: &Arc<GuestMemoryMmap>) -> (MmioTransport, Arc<NetStats>, File) {
    let (backend, peer): (FdBackend, OwnedFd) = FdBackend::socketpair().unwrap();
    let net = Net::new(Box::new(backend), MAC);
    let stats = net.stats();
    (MmioTransport::new(Box::new(net), Arc::clone(mem)).unwrap(), stats, File::from(peer))
}

/// Queue `q`'s setup (§4.2.3.2) with `vq`'s rings.
fn setup(t: &mut MmioTransport, q: u32, vq: &Vq<'_>) {
    let _ = wr(t, VIRTIO_MMIO_QUEUE_SEL, q);
    assert_eq!(rd(t, VIRTIO_MMIO_QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
    let _ = wr(t, VIRTIO_MMIO_QUEUE_NUM, u32::from(QSIZE));
    for (lo, hi, a) in [
        (VIRTIO_MMIO_QUEUE_DESC_LOW, VIRTIO_MMIO_QUEUE_DESC_HIGH, vq.desc_table_addr()),
        (VIRTIO_MMIO_QUEUE_AVAIL_LOW, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, vq.avail_addr()),
        (VIRTIO_MMIO_QUEUE_USED_LOW, VIRTIO_MMIO_QUEUE_USED_HIGH, vq.used_addr()),
    ] {
        let _ = wr(t, lo, a.raw_value() as u32);
        let _ = wr(t, hi, (a.raw_value() >> 32) as u32);
    }
    let _ = wr(t, VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(rd(t, VIRTIO_MMIO_QUEUE_READY), 1);
}

/// A device brought to DRIVER_OK with every offered feature, rx at `rx`, tx at `tx`.
fn up<'a>(mem: &'a Arc<GuestMemoryMmap>) -> (Rig, Vq<'a>, Vq<'a>) {
    let (mut t, stats, peer) = device(mem);
    let rx = Vq::new(mem, GuestAddress(0x1_0000));
    let tx = Vq::new(mem, GuestAddress(0x2_0000));
    let f = offered(&mut t);
    assert_ne!(negotiate(&mut t, f) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    setup(&mut t, u32::from(RXQ), &rx);
    setup(&mut t, u32::from(TXQ), &tx);
    assert_eq!(wr(&mut t, VIRTIO_MMIO_STATUS, S_ALL), Effect::None);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), S_ALL);
    (Rig { mem: Arc::clone(mem), t, stats, peer }, rx, tx)
}

/// The used ring's index and its `n`th element (id, len).
fn used(mem: &GuestMemoryMmap, vq: &Vq<'_>, n: u16) -> (u16, (u32, u32)) {
    let idx: u16 = mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap();
    let e = vq.used_addr().unchecked_add(4 + 8 * u64::from(n % QSIZE));
    (idx, (mem.read_obj(e).unwrap(), mem.read_obj(e.unchecked_add(4)).unwrap()))
}

/// The interrupt the driver sees after `effect`, acknowledged as virtio_mmio's handler does.
fn interrupted(t: &mut MmioTransport, effect: Effect) -> bool {
    if effect != Effect::Interrupt(true) {
        return false;
    }
    assert_eq!(rd(t, VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
    assert_eq!(wr(t, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING), Effect::Interrupt(false));
    true
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    // A broadcast from the guest's MAC.
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&MAC);
    f
}

/// Posts a receive buffer of `room` bytes at `RXBUF + slot * 0x1_0000`, table index `slot`.
fn post_rx(rx: &Vq<'_>, slot: u16, room: u32) {
    rx.add_desc_chains(&[desc(RXBUF + u64::from(slot) * 0x1_0000, room, F_WRITE, 0)], slot);
}

/// A transmit chain as Linux lays one out: the header, then the frame, in two descriptors.
fn post_tx(r: &Rig, tx: &Vq<'_>, f: &[u8]) {
    r.mem.write_slice(&[0u8; HDR_LEN], GuestAddress(TXBUF)).unwrap();
    r.mem.write_slice(f, GuestAddress(TXBUF + 0x100)).unwrap();
    tx.add_desc_chains(&[desc(TXBUF, HDR_LEN as u32, F_NEXT, 1), desc(TXBUF + 0x100, f.len() as u32, 0, 0)], 0);
}

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    NetStats::get(c)
}

#[test]
fn registers_offer_a_plain_nic_with_its_mac() {
    let mem = mem();
    let (mut t, _, _) = device(&mem);
    assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_NET);
    let want = 1u64 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_INDIRECT_DESC | 1 << VIRTIO_NET_F_MAC;
    assert_eq!(offered(&mut t), want, "no offloads, no MRG_RXBUF, no control queue");
    // Two queues of 256; no third.
    for q in 0..3 {
        let _ = wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, q);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), if q < 2 { 256 } else { 0 });
    }
    // The MAC in the config space, by bytes as Linux reads it, and wider; past it zeros.
    let cfg = u64::from(VIRTIO_MMIO_CONFIG);
    let bytes: Vec<u8> = (0..8).map(|i| t.read(cfg + i, 1) as u8).collect();
    assert_eq!(bytes, [0x00, 0x16, 0x3e, 0x01, 0x02, 0x03, 0, 0]);
    assert_eq!(t.read(cfg, 4), 0x013e_1600);
    assert_eq!(t.read(cfg + 4, 2), 0x0302);
    // Writes do not change it (not a legacy device).
    assert_eq!(t.write(cfg, 4, 0xdead_beef), Effect::None);
    assert_eq!(t.read(cfg, 4), 0x013e_1600);
    // A driver asking for an offload it was not offered does not get FEATURES_OK.
    let csum = 1u64 << virtio_bindings::virtio_net::VIRTIO_NET_F_CSUM;
    assert_eq!(negotiate(&mut t, want | csum) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    assert_ne!(negotiate(&mut t, want) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
}

#[test]
fn driver_ok_without_the_transmit_queue_needs_reset() {
    let mem = mem();
    let (mut t, _, _) = device(&mem);
    let rx = Vq::new(&mem, GuestAddress(0x1_0000));
    let f = offered(&mut t);
    negotiate(&mut t, f);
    setup(&mut t, 0, &rx);
    assert_eq!(wr(&mut t, VIRTIO_MMIO_STATUS, S_ALL), Effect::Interrupt(true));
    assert_ne!(rd(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert!(!t.is_activated());
    assert_eq!(t.backend_fd(), None, "a device not started is not waited on");
}

#[test]
fn transmitted_frames_reach_the_backend_without_their_header() {
    let mem = mem();
    let (mut r, _rx, tx) = up(&mem);
    let f1 = frame(60, 1);
    post_tx(&r, &tx, &f1);
    assert_eq!(wr(&mut r.t, VIRTIO_MMIO_QUEUE_NOTIFY, u32::from(TXQ)), Effect::QueueNotify(TXQ));
    let e = r.t.process_queue(TXQ);
    assert!(interrupted(&mut r.t, e));
    assert_eq!(used(&mem, &tx, 0), (1, (0, 0)), "a transmit chain is used with length 0");
    let mut got = vec![0u8; 70_000];
    let n = r.peer.read(&mut got).unwrap();
    assert_eq!(&got[..n], &f1[..], "one frame, header stripped");

    // Header and frame in one descriptor (also allowed, §2.7.4), and a full-size frame.
    let f2 = frame(1514, 2);
    r.mem.write_slice(&[0u8; HDR_LEN], GuestAddress(TXBUF)).unwrap();
    r.mem.write_slice(&f2, GuestAddress(TXBUF + HDR_LEN as u64)).unwrap();
    tx.add_desc_chains(&[desc(TXBUF, (HDR_LEN + f2.len()) as u32, 0, 0)], 0);
    let _ = r.t.process_queue(TXQ);
    let n = r.peer.read(&mut got).unwrap();
    assert_eq!(&got[..n], &f2[..]);
    assert_eq!((get(&r.stats.tx_frames), get(&r.stats.tx_bytes)), (2, 60 + 1514));
    assert_eq!((get(&r.stats.tx_dropped), get(&r.stats.bad_chains)), (0, 0));
}

#[test]
fn received_frames_arrive_behind_a_header_and_wait_for_buffers() {
    let mem = mem();
    let (mut r, rx, _tx) = up(&mem);
    let fd = r.t.backend_fd().expect("a started device with nothing pending is waited on");
    let f1 = frame(98, 3);
    let f2 = frame(1514, 4);
    r.peer.write_all(&f1).unwrap();
    r.peer.write_all(&f2).unwrap();

    // No buffer yet: the first frame is kept, the backend no longer waited on (it would spin).
    assert_eq!(r.t.backend_ready(), Effect::None);
    assert_eq!(r.t.backend_fd(), None);
    assert_eq!(get(&r.stats.rx_dropped), 0);

    // The driver adds two buffers and notifies: both frames arrive, in order.
    post_rx(&rx, 0, RX_ROOM);
    post_rx(&rx, 1, RX_ROOM);
    assert_eq!(wr(&mut r.t, VIRTIO_MMIO_QUEUE_NOTIFY, u32::from(RXQ)), Effect::QueueNotify(RXQ));
    let e = r.t.process_queue(RXQ);
    assert!(interrupted(&mut r.t, e));
    for (n, f) in [(0u16, &f1), (1, &f2)] {
        let (idx, (id, len)) = used(&mem, &rx, n);
        assert!(idx > n);
        assert_eq!((id, len), (u32::from(n), (HDR_LEN + f.len()) as u32));
        let mut back = vec![0u8; HDR_LEN + f.len()];
        mem.read_slice(&mut back, GuestAddress(RXBUF + u64::from(n) * 0x1_0000)).unwrap();
        // flags, gso_type, hdr_len, gso_size, csum_start, csum_offset 0; num_buffers 1 (§5.1.6.4).
        assert_eq!(back[..HDR_LEN], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(&back[HDR_LEN..], &f[..]);
    }
    assert_eq!(r.t.backend_fd(), Some(fd), "waited on again");

    // With a buffer already there, the backend's readiness alone delivers.
    post_rx(&rx, 2, RX_ROOM);
    let f3 = frame(60, 5);
    r.peer.write_all(&f3).unwrap();
    let e = r.t.backend_ready();
    assert!(interrupted(&mut r.t, e));
    assert_eq!(used(&mem, &rx, 2), (3, (2, (HDR_LEN + 60) as u32)));
    // Nothing more: no interrupt, nothing used.
    assert_eq!(r.t.backend_ready(), Effect::None);
    assert_eq!((get(&r.stats.rx_frames), get(&r.stats.rx_bytes)), (3, 98 + 1514 + 60));
}

#[test]
fn a_frame_too_big_for_the_buffer_is_dropped_and_the_buffer_kept() {
    let mem = mem();
    let (mut r, rx, _tx) = up(&mem);
    post_rx(&rx, 0, HDR_LEN as u32 + 64);
    r.peer.write_all(&frame(100, 6)).unwrap();
    let small = frame(64, 7);
    r.peer.write_all(&small).unwrap();
    let e = r.t.backend_ready();
    assert!(interrupted(&mut r.t, e));
    assert_eq!(get(&r.stats.rx_dropped), 1);
    // The 64-byte frame went into the same buffer, the only one used.
    assert_eq!(used(&mem, &rx, 0), (1, (0, (HDR_LEN + 64) as u32)));
    let mut back = vec![0u8; 64];
    mem.read_slice(&mut back, GuestAddress(RXBUF + HDR_LEN as u64)).unwrap();
    assert_eq!(back, small);
}

#[test]
fn bad_chains_complete_empty_and_are_counted() {
    let mem = mem();
    let (mut r, rx, tx) = up(&mem);
    let outside = MEM_SIZE as u64 + 0x1000;
    // Transmit: a header cut short; a descriptor outside guest RAM; a frame shorter than an
    // Ethernet header; a frame larger than any MTU (the same page named over and over).
    let bad_tx: [&[_]; 4] = [
        &[desc(TXBUF, 8, 0, 0)],
        &[desc(outside, 100, 0, 0)],
        &[desc(TXBUF, HDR_LEN as u32 + 10, 0, 0)],
        &[desc(TXBUF, 0x1_0000, F_NEXT, 1), desc(TXBUF, 0x1_0000, 0, 0)],
    ];
    for (i, chain) in bad_tx.iter().enumerate() {
        tx.add_desc_chains(chain, 0);
        let _ = r.t.process_queue(TXQ);
        assert_eq!(used(&mem, &tx, i as u16), (i as u16 + 1, (0, 0)));
    }
    assert_eq!((get(&r.stats.bad_chains), get(&r.stats.tx_dropped), get(&r.stats.tx_frames)), (2, 2, 0));

    // Receive: a chain with no writable byte, one outside RAM, then a good one: the frame skips
    // the two (completed empty) and lands in the third.
    rx.add_desc_chains(&[desc(RXBUF, 2048, 0, 0)], 0);
    rx.add_desc_chains(&[desc(outside, 2048, F_WRITE, 0)], 1);
    post_rx(&rx, 2, RX_ROOM);
    let f = frame(200, 8);
    r.peer.write_all(&f).unwrap();
    let e = r.t.backend_ready();
    assert!(interrupted(&mut r.t, e));
    assert_eq!(used(&mem, &rx, 0), (3, (0, 0)));
    assert_eq!(used(&mem, &rx, 1), (3, (1, 0)));
    assert_eq!(used(&mem, &rx, 2), (3, (2, (HDR_LEN + 200) as u32)));
    assert_eq!((get(&r.stats.bad_chains), get(&r.stats.rx_frames), get(&r.stats.rx_dropped)), (4, 1, 0));

    // A notification of a queue that does not exist is not one.
    assert_eq!(wr(&mut r.t, VIRTIO_MMIO_QUEUE_NOTIFY, 2), Effect::None);
}

#[test]
fn a_closed_backend_is_no_longer_waited_on() {
    let mem = mem();
    let (mut r, _rx, tx) = up(&mem);
    drop(std::mem::replace(&mut r.peer, File::open("/dev/null").unwrap()));
    assert!(r.t.backend_fd().is_some());
    assert_eq!(r.t.backend_ready(), Effect::None);
    assert_eq!(r.t.backend_fd(), None, "read returned 0: closed");
    // Transmitting into it fails, counted, the chain still used.
    post_tx(&r, &tx, &frame(60, 9));
    let e = r.t.process_queue(TXQ);
    assert!(interrupted(&mut r.t, e));
    assert_eq!((get(&r.stats.tx_dropped), get(&r.stats.backend_errors)), (1, 1));
}

#[test]
fn a_reset_drops_the_pending_frame_and_the_device_comes_up_again() {
    let mem = mem();
    let (mut r, _rx, _tx) = up(&mem);
    r.peer.write_all(&frame(60, 10)).unwrap();
    assert_eq!(r.t.backend_ready(), Effect::None);
    assert_eq!(wr(&mut r.t, VIRTIO_MMIO_STATUS, 0), Effect::None);
    assert_eq!(get(&r.stats.rx_dropped), 1);
    assert_eq!(r.t.backend_fd(), None, "reset: not started");
    // Brought up again with fresh rings, the next frame arrives.
    let rx2 = Vq::new(&mem, GuestAddress(0x3_0000));
    let tx2 = Vq::new(&mem, GuestAddress(0x4_0000));
    let f = offered(&mut r.t);
    negotiate(&mut r.t, f);
    setup(&mut r.t, 0, &rx2);
    setup(&mut r.t, 1, &tx2);
    assert_eq!(wr(&mut r.t, VIRTIO_MMIO_STATUS, S_ALL), Effect::None);
    post_rx(&rx2, 0, RX_ROOM);
    r.peer.write_all(&frame(61, 11)).unwrap();
    let e = r.t.backend_ready();
    assert!(interrupted(&mut r.t, e));
    assert_eq!(used(&mem, &rx2, 0), (1, (0, (HDR_LEN + 61) as u32)));
}

/// The device on a real tap on a real bridge: the guest asks for the bridge's address by ARP and
/// the reply (dom0's kernel's) arrives in a receive buffer. Needs root, /dev/net/tun and a bridge
/// `oxtestbr0` with 10.9.0.1/24, which a host test run has not; run by hand in a network
/// namespace of its own, touching no real interface:
/// `unshare -n sh -c 'ip link add oxtestbr0 type bridge && ip addr add 10.9.0.1/24 dev oxtestbr0
/// && ip link set oxtestbr0 up && cargo test -p oxen-dm --test net -- --ignored'`.
#[test]
#[ignore = "needs root, /dev/net/tun and a bridge oxtestbr0 with 10.9.0.1/24"]
fn a_guest_on_a_tap_gets_dom0s_arp_reply() {
    use oxen_dm::tap::Tap;
    let mem = mem();
    let tap = Tap::open("oxtest2.0", "oxtestbr0").unwrap();
    let net = Net::new(Box::new(tap), MAC);
    let stats = net.stats();
    let mut t = MmioTransport::new(Box::new(net), Arc::clone(&mem)).unwrap();
    let rx = Vq::new(&mem, GuestAddress(0x1_0000));
    let tx = Vq::new(&mem, GuestAddress(0x2_0000));
    let f = offered(&mut t);
    negotiate(&mut t, f);
    setup(&mut t, 0, &rx);
    setup(&mut t, 1, &tx);
    assert_eq!(wr(&mut t, VIRTIO_MMIO_STATUS, S_ALL), Effect::None);
    for slot in 0..8 {
        post_rx(&rx, slot, RX_ROOM);
    }
    let _ = t.process_queue(RXQ);

    // who-has 10.9.0.1 tell 10.9.0.2, from MAC (RFC 826), padded to the 60-byte minimum.
    let mut arp = vec![0xffu8; 6];
    arp.extend(MAC);
    arp.extend([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    arp.extend(MAC);
    arp.extend([10, 9, 0, 2, 0, 0, 0, 0, 0, 0, 10, 9, 0, 1]);
    arp.resize(60, 0);
    mem.write_slice(&[0u8; HDR_LEN], GuestAddress(TXBUF)).unwrap();
    mem.write_slice(&arp, GuestAddress(TXBUF + 0x100)).unwrap();
    tx.add_desc_chains(&[desc(TXBUF, HDR_LEN as u32, F_NEXT, 1), desc(TXBUF + 0x100, 60, 0, 0)], 0);
    let _ = t.process_queue(TXQ);
    assert_eq!(NetStats::get(&stats.tx_frames), 1);

    // Frames come as the loop would take them: poll the backend, then let the device read.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut seen = 0u16;
    while std::time::Instant::now() < deadline {
        let fd = t.backend_fd().expect("buffers are there: waited on");
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one live pollfd.
        unsafe { libc::poll(&mut p, 1, 100) };
        let _ = t.backend_ready();
        let (idx, _) = used(&mem, &rx, 0);
        while seen < idx {
            let (_, (id, len)) = used(&mem, &rx, seen);
            seen += 1;
            let mut f = vec![0u8; len as usize];
            mem.read_slice(&mut f, GuestAddress(RXBUF + u64::from(id) * 0x1_0000)).unwrap();
            let f = &f[HDR_LEN..];
            // An ARP reply (oper 2) to us from 10.9.0.1; dom0 also sends IPv6 noise, skipped.
            if f[..6] == MAC && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] {
                assert_eq!(f[28..32], [10, 9, 0, 1], "sender protocol address");
                assert_eq!(f[32..38], MAC, "target hardware address");
                return;
            }
        }
    }
    panic!("no ARP reply in 5 s ({seen} other frames)");
}

/// Knuth's MMIX LCG (as tests/random.rs): reproducible random input without a fuzzing crate.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 16
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random descriptor tables and avail rings on both queues, random frames from the network:
/// nothing panics, every frame the backend gets is a frame (14 bytes to MAX_FRAME), and the
/// counters add up with what went in and out.
#[test]
fn random_chains_and_frames_never_panic_and_add_up() {
    use std::os::fd::AsRawFd;
    const AREA: u64 = 0x40_0000;
    const AREA_LEN: u64 = 0x8_0000;
    let (mut completed, mut delivered) = (0u64, 0u64);
    for seed in 0..100u64 {
        let mut r = Lcg(seed.wrapping_mul(0x9e37_79b9) | 1);
        let mem = mem();
        let (mut rig, rx, tx) = up(&mem);
        let (mut sent, mut got) = (0u64, 0u64);
        for _round in 0..8 {
            for vq in [&rx, &tx] {
                for i in 0..QSIZE {
                    let addr = match r.below(6) {
                        0 => r.next() << 16 | r.next(),
                        1 => MEM_SIZE as u64 - r.below(64),
                        _ => AREA + r.below(AREA_LEN),
                    };
                    let len = match r.below(5) {
                        0 => r.next() as u32,
                        1 => [0, 1, 11, 12, 13, 26, 1530, 65536][r.below(8) as usize],
                        _ => r.below(2048) as u32,
                    };
                    let next = if r.below(8) == 0 { r.next() as u16 } else { r.below(u64::from(QSIZE)) as u16 };
                    vq.desc_table().store(i, desc(addr, len, r.below(8) as u16, next)).unwrap();
                }
                let avail = vq.avail_addr();
                let old: u16 = mem.read_obj(avail.unchecked_add(2)).unwrap();
                for i in 0..QSIZE {
                    let head = if r.below(8) == 0 { r.next() as u16 } else { r.below(u64::from(QSIZE)) as u16 };
                    mem.write_obj(head, avail.unchecked_add(4 + 2 * u64::from(i))).unwrap();
                }
                let idx = if r.below(4) == 0 { r.next() as u16 } else { old.wrapping_add(1 + r.below(8) as u16) };
                mem.write_obj(idx, avail.unchecked_add(2)).unwrap();
            }
            for _ in 0..r.below(6) {
                let len = [1, 13, 14, 60, 1514, 1600, 9000][r.below(7) as usize];
                if rig.peer.write_all(&frame(len.max(12), r.next() as u8)[..len]).is_ok() {
                    sent += 1;
                }
            }
            for q in [RXQ, TXQ] {
                if r.below(4) != 0 {
                    let e = wr(&mut rig.t, VIRTIO_MMIO_QUEUE_NOTIFY, u32::from(q));
                    if let Effect::QueueNotify(q) = e {
                        let _ = rig.t.process_queue(q);
                    }
                }
            }
            if rig.t.backend_fd().is_some() {
                let _ = rig.t.backend_ready();
            }
            let _ = wr(&mut rig.t, VIRTIO_MMIO_INTERRUPT_ACK, u32::MAX);
            // The network drains what the guest sent.
            let mut buf = vec![0u8; 70_000];
            loop {
                // SAFETY: reads at most buf.len() bytes into buf.
                let n = unsafe {
                    libc::recv(rig.peer.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
                };
                if n < 0 {
                    break;
                }
                assert!((14..=oxen_dm::net::MAX_FRAME).contains(&(n as usize)), "seed {seed}: a {n}-byte frame");
                got += 1;
            }
        }
        let s = &rig.stats;
        assert_eq!(get(&s.tx_frames), got, "seed {seed}: every frame sent reached the network");
        let (rxf, rxd) = (get(&s.rx_frames), get(&s.rx_dropped));
        assert!(rxf + rxd <= sent, "seed {seed}: {rxf} delivered + {rxd} dropped of {sent}");
        completed += u64::from(mem.read_obj::<u16>(rx.used_addr().unchecked_add(2)).unwrap())
            + u64::from(mem.read_obj::<u16>(tx.used_addr().unchecked_add(2)).unwrap());
        delivered += rxf + got;
    }
    // The inputs reach the frame handling, not only virtio-queue's index checks.
    assert!(completed > 500 && delivered > 100, "{completed} chains completed, {delivered} frames moved");
    eprintln!("{completed} random chains completed, {delivered} frames moved");
}
