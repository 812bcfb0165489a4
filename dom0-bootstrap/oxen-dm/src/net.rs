//! virtio-net (virtio spec v1.2 §5.1) over a dom0 [`Backend`]: a tap device on a bridge
//! ([`crate::tap`]), or in tests a socket pair.
//!
//! Two queues, receive (0) and transmit (1); no control queue, no multiqueue. Features offered:
//! `VIRTIO_F_VERSION_1`, `VIRTIO_NET_F_MAC` (the config space holds the MAC) and indirect
//! descriptors, nothing else: no checksum or segmentation offloads (no CSUM, GUEST_CSUM, *_TSO,
//! *_UFO), so every frame either way is a whole Ethernet frame with a checksummed payload and its
//! 12-byte `virtio_net_hdr_v1` carries nothing but `num_buffers`.
//!
//! `VIRTIO_NET_F_MRG_RXBUF` is not offered: without guest offloads no frame is larger than the
//! MTU, and Linux's receive buffers without mergeable buffers ("small" buffers) hold a header and
//! 1518 bytes, one whole frame per chain (§5.1.6.3.1). One chain per frame keeps receive a single
//! copy with no bookkeeping of buffers across chains.
//!
//! Transmit (§5.1.6.2): each chain is a header and a frame, device-readable; the header is
//! skipped and the frame goes to the backend in one `write`. The chain is used with length 0.
//!
//! Receive (§5.1.6.3): a frame read from the backend is written, behind a header, into the next
//! available receive chain. With no chain available the frame is kept (one, `pending`) and the
//! backend is not read again until the driver adds buffers (its notification of queue 0): the
//! frames behind it wait in the backend (a tap's queue, whose length the kernel bounds and whose
//! drops it counts), so the device model neither spins on a readable descriptor nor drops a frame
//! only because the guest was slow. A frame larger than the chain is dropped (counted), and the
//! chain is left for the next frame.
//!
//! Every chain is read and written through virtio-queue's `Reader`/`Writer`, which check each
//! descriptor against guest RAM. A chain that cannot be (descriptors outside RAM, a transmit
//! chain shorter than the header, a receive chain with no room for one) is completed with
//! length 0 and counted; nothing a guest writes stops the device model.

use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{virtio_net_hdr_v1, VIRTIO_NET_F_MAC};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};

use crate::mmio::{ActivateError, VirtioDevice};
use crate::GuestMemoryMmap;

/// The receive queue's index (§5.1.2: receiveq1).
pub const RXQ: u16 = 0;
/// The transmit queue's index (transmitq1).
pub const TXQ: u16 = 1;
/// Size of each queue: Linux's default, and what QEMU offers.
pub const QUEUE_SIZE: u16 = 256;
/// `struct virtio_net_hdr_v1` (§5.1.6): with VERSION_1 it always includes `num_buffers`.
pub const HDR_LEN: usize = size_of::<virtio_net_hdr_v1>();
const _: () = assert!(HDR_LEN == 12);
/// Where `num_buffers` (le16) sits in the header.
const NUM_BUFFERS: usize = std::mem::offset_of!(virtio_net_hdr_v1, num_buffers);
/// The largest frame moved either way: a 14-byte Ethernet header, a VLAN tag and the largest
/// MTU Linux allows (`ETH_MAX_MTU`, 65535). Larger transmit chains are dropped.
pub const MAX_FRAME: usize = 14 + 4 + 65535;
/// The smallest frame: an Ethernet header. Shorter transmit frames are dropped (a tap refuses
/// them anyway).
const MIN_FRAME: usize = 14;
/// Frames moved from the backend per call: a busy backend cannot keep the loop from serving the
/// domain's vCPUs. The descriptor stays readable, so the loop comes back at once.
const RX_BUDGET: usize = 256;
/// Bytes of `struct virtio_net_config` (§5.1.4) the device has: `mac` only (no STATUS, MQ,
/// MTU features).
const CONFIG_SIZE: usize = 6;

/// Where a network device's frames go and come from, in dom0.
pub trait Backend: Send {
    /// Reads one frame into `buf`, without blocking: `WouldBlock` when there is none, `Ok(0)`
    /// when the backend is closed for good.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one whole frame.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()>;
    /// A descriptor readable when a frame waits (for `poll(2)`).
    fn fd(&self) -> RawFd;
}

/// A backend on a descriptor that moves one frame per `read`/`write`: a tap (`IFF_NO_PI`), a
/// `SOCK_SEQPACKET` or `SOCK_DGRAM` socket. Made non-blocking.
pub struct FdBackend {
    fd: OwnedFd,
}

impl FdBackend {
    /// Takes `fd` and sets `O_NONBLOCK` on it.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
        let r = unsafe {
            let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            if fl < 0 {
                -1
            } else {
                libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK)
            }
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// A `SOCK_SEQPACKET` pair: the backend, and the other end (blocking) for whoever plays the
    /// network (tests, or a user-space switch).
    pub fn socketpair() -> io::Result<(Self, OwnedFd)> {
        let mut fds = [0; 2];
        // SAFETY: `fds` is the two ints socketpair writes.
        let r = unsafe {
            libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: two new descriptors, ours alone.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((Self::new(a)?, b))
    }
}

impl Backend for FdBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reads at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: reads `frame.len()` bytes from `frame`.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // A tap or a packet socket takes a frame whole or not at all.
        if n as usize != frame.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "frame cut short"));
        }
        Ok(())
    }

    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// What a network device did, for the device model's summary at exit (shared: the transport
/// owns the device).
#[derive(Debug, Default)]
pub struct NetStats {
    /// Frames (and their bytes, headers excluded) from the guest to the backend.
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames (and bytes) from the backend into the guest.
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Guest frames not sent: shorter than an Ethernet header, larger than `MAX_FRAME`, or
    /// refused by the backend.
    pub tx_dropped: AtomicU64,
    /// Backend frames not delivered: larger than the receive chain, or pending at a reset.
    pub rx_dropped: AtomicU64,
    /// Chains completed with nothing because of their shape (either queue).
    pub bad_chains: AtomicU64,
    /// Backend reads and writes that failed (other than "would block").
    pub backend_errors: AtomicU64,
}

impl NetStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A counter's value now.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A virtio network device whose frames go to and come from `backend`.
pub struct Net {
    backend: Box<dyn Backend>,
    mac: [u8; 6],
    queue_sizes: [u16; 2],
    state: Option<Active>,
    /// The length of a frame in `rx_buf` read from the backend and not yet delivered (no
    /// receive chain was available).
    pending: Option<usize>,
    /// The backend said it is closed (`read` returned 0): it is not waited on again.
    closed: bool,
    /// Frames move through these, allocated on first use: one allocation per device.
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    stats: Arc<NetStats>,
}

/// What the device has between DRIVER_OK and reset.
struct Active {
    mem: Arc<GuestMemoryMmap>,
    rx: Queue,
    tx: Queue,
}

/// What became of a frame offered to the receive queue.
enum Delivery {
    /// Written into a chain.
    Done,
    /// No chain available: the frame waits.
    NoBuffer,
    /// The next chain is too small for it: dropped.
    TooBig,
}

impl Net {
    /// A device with MAC address `mac` on `backend`.
    pub fn new(backend: Box<dyn Backend>, mac: [u8; 6]) -> Self {
        Self {
            backend,
            mac,
            queue_sizes: [QUEUE_SIZE; 2],
            state: None,
            pending: None,
            closed: false,
            rx_buf: Vec::new(),
            tx_buf: Vec::new(),
            stats: Arc::default(),
        }
    }

    /// Its counters, which stay readable after the device is given to a transport.
    pub fn stats(&self) -> Arc<NetStats> {
        Arc::clone(&self.stats)
    }

    /// Sends every available transmit chain; returns whether a chain was used.
    fn transmit(&mut self, active: &mut Active) -> bool {
        let mem = Arc::clone(&active.mem);
        let mut used = false;
        // Bounded by the avail index the driver published: virtio-queue refuses one more than
        // the queue size ahead (InvalidAvailRingIndex).
        while let Some(chain) = active.tx.pop_descriptor_chain(&*mem) {
            let head = chain.head_index();
            self.send(&mem, chain);
            // Fails only for a head index ≥ queue size, which pop_descriptor_chain never returns.
            used |= active.tx.add_used(&*mem, head, 0).is_ok();
        }
        used
    }

    fn send(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) {
        let Ok(mut reader) = Reader::new(mem, chain) else {
            NetStats::add(&self.stats.bad_chains, 1);
            return;
        };
        let Some(len) = reader.available_bytes().checked_sub(HDR_LEN) else {
            NetStats::add(&self.stats.bad_chains, 1);
            return;
        };
        if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
            NetStats::add(&self.stats.tx_dropped, 1);
            return;
        }
        // The header says nothing without offloads (§5.1.6.2: flags and gso_type 0): skipped.
        let mut hdr = [0u8; HDR_LEN];
        if self.tx_buf.len() < MAX_FRAME {
            self.tx_buf.resize(MAX_FRAME, 0);
        }
        let frame = &mut self.tx_buf[..len];
        if reader.read_exact(&mut hdr).is_err() || reader.read_exact(frame).is_err() {
            NetStats::add(&self.stats.bad_chains, 1);
            return;
        }
        match self.backend.write_frame(frame) {
            Ok(()) => {
                NetStats::add(&self.stats.tx_frames, 1);
                NetStats::add(&self.stats.tx_bytes, len as u64);
            }
            Err(e) => {
                NetStats::add(&self.stats.tx_dropped, 1);
                if e.kind() != io::ErrorKind::WouldBlock {
                    NetStats::add(&self.stats.backend_errors, 1);
                }
            }
        }
    }

    /// Moves frames from the backend (the pending one first) into receive chains until the
    /// backend has none, no chain is left, or `RX_BUDGET` frames. Returns whether a chain was
    /// used.
    fn receive(&mut self, active: &mut Active) -> bool {
        let mut used = false;
        if self.rx_buf.len() < MAX_FRAME {
            self.rx_buf.resize(MAX_FRAME, 0);
        }
        for _ in 0..RX_BUDGET {
            let len = match self.pending.take() {
                Some(len) => len,
                None if self.closed => break,
                None => match self.backend.read_frame(&mut self.rx_buf) {
                    Ok(0) => {
                        self.closed = true;
                        break;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        NetStats::add(&self.stats.backend_errors, 1);
                        break;
                    }
                },
            };
            match self.deliver(active, len, &mut used) {
                Delivery::Done => {
                    NetStats::add(&self.stats.rx_frames, 1);
                    NetStats::add(&self.stats.rx_bytes, len as u64);
                }
                Delivery::NoBuffer => {
                    self.pending = Some(len);
                    break;
                }
                Delivery::TooBig => NetStats::add(&self.stats.rx_dropped, 1),
            }
        }
        used
    }

    /// Writes the frame of `len` bytes in `rx_buf` into the next usable receive chain; chains
    /// too malformed to hold anything are completed empty on the way (`used` set).
    fn deliver(&self, active: &mut Active, len: usize, used: &mut bool) -> Delivery {
        let mem = Arc::clone(&active.mem);
        let frame = &self.rx_buf[..len];
        while let Some(chain) = active.rx.pop_descriptor_chain(&*mem) {
            let head = chain.head_index();
            let room = Writer::new(&*mem, chain).ok().filter(|w| w.available_bytes() >= HDR_LEN);
            let Some(mut w) = room else {
                NetStats::add(&self.stats.bad_chains, 1);
                *used |= active.rx.add_used(&*mem, head, 0).is_ok();
                continue;
            };
            if w.available_bytes() - HDR_LEN < len {
                // A good chain, only not for this frame: given back for the next one.
                let back = active.rx.next_avail().wrapping_sub(1);
                active.rx.set_next_avail(back);
                return Delivery::TooBig;
            }
            let mut hdr = [0u8; HDR_LEN];
            // §5.1.6.4: without MRG_RXBUF, num_buffers is 1.
            hdr[NUM_BUFFERS..NUM_BUFFERS + 2].copy_from_slice(&1u16.to_le_bytes());
            let written = w.write_all(&hdr).and_then(|()| w.write_all(frame));
            let used_len = match written {
                Ok(()) => u32::try_from(HDR_LEN + len).unwrap_or(0),
                Err(_) => {
                    // Checked against guest RAM by Writer::new: not expected. The frame is lost.
                    NetStats::add(&self.stats.bad_chains, 1);
                    0
                }
            };
            *used |= active.rx.add_used(&*mem, head, used_len).is_ok();
            return if used_len == 0 { Delivery::TooBig } else { Delivery::Done };
        }
        Delivery::NoBuffer
    }

    /// Whether the driver wants an interrupt for queue `q` after buffers were used.
    fn notify(active: &mut Active, q: u16) -> bool {
        let mem = Arc::clone(&active.mem);
        let queue = if q == RXQ { &mut active.rx } else { &mut active.tx };
        queue.needs_notification(&*mem).unwrap_or(true)
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn features(&self) -> u64 {
        1u64 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_INDIRECT_DESC | 1 << VIRTIO_NET_F_MAC
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut c = [0u8; CONFIG_SIZE];
        c.copy_from_slice(&self.mac);
        crate::mmio::copy_config(&c, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // §5.1.4: `mac` is writable only by legacy drivers without VIRTIO_NET_F_CTRL_MAC_ADDR;
        // this device is not legacy, and offers no other writable field.
    }

    fn activate(
        &mut self,
        mem: Arc<GuestMemoryMmap>,
        queues: Vec<Queue>,
        _acked_features: u64,
    ) -> Result<(), ActivateError> {
        let mut it = queues.into_iter();
        let (Some(rx), Some(tx)) = (it.next(), it.next()) else {
            return Err(ActivateError::QueueNotReady(0));
        };
        for (i, q) in [&rx, &tx].into_iter().enumerate() {
            if !q.ready() {
                return Err(ActivateError::QueueNotReady(i));
            }
        }
        self.state = Some(Active { mem, rx, tx });
        Ok(())
    }

    fn process_queue(&mut self, index: u16) -> bool {
        let Some(mut active) = self.state.take() else {
            return false;
        };
        let used = match index {
            // The driver added receive buffers: the pending frame and what waits behind it.
            RXQ => self.receive(&mut active),
            TXQ => self.transmit(&mut active),
            _ => false,
        };
        let notify = used && Self::notify(&mut active, index);
        self.state = Some(active);
        notify
    }

    fn reset(&mut self) {
        self.state = None;
        if self.pending.take().is_some() {
            NetStats::add(&self.stats.rx_dropped, 1);
        }
    }

    fn backend_fd(&self) -> Option<RawFd> {
        // With a frame pending, only new receive buffers help: waiting on a backend that stays
        // readable would spin.
        (self.state.is_some() && self.pending.is_none() && !self.closed).then(|| self.backend.fd())
    }

    fn backend_ready(&mut self) -> bool {
        let Some(mut active) = self.state.take() else {
            return false;
        };
        let notify = self.receive(&mut active) && Self::notify(&mut active, RXQ);
        self.state = Some(active);
        notify
    }
}

/// The frame a device model sends for a vif that has just come up on this host with a guest
/// already running behind it (a restore, the end of a migration): a RARP request from the guest's
/// MAC to the broadcast address, as QEMU's self-announce sends, so that the bridges between here
/// and the guest's peers learn where the MAC is now without waiting for the guest to speak.
pub fn announce_frame(mac: &[u8; 6]) -> [u8; 60] {
    // 14 bytes of Ethernet header, 28 of RARP, zeros to Ethernet's 60-byte minimum.
    let mut f = [0u8; 60];
    f[0..6].fill(0xff);
    f[6..12].copy_from_slice(mac);
    f[12..14].copy_from_slice(&0x8035u16.to_be_bytes()); // RARP
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&3u16.to_be_bytes()); // reverse request
    f[22..28].copy_from_slice(mac); // sender's hardware address; its IP 0
    f[32..38].copy_from_slice(mac); // target's hardware address; its IP 0
    f
}

/// Parses `00:16:3e:01:02:03`. `None` unless six two-digit hex octets.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `00:16:3e:01:02:03`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announce_is_a_broadcast_rarp_request_from_the_guests_mac() {
        let mac = [0x00, 0x16, 0x3e, 0x0a, 0x0b, 0x0c];
        let f = announce_frame(&mac);
        assert_eq!(f.len(), 60, "Ethernet's minimum");
        assert_eq!((&f[0..6], &f[6..12]), (&[0xff; 6][..], &mac[..]));
        assert_eq!(&f[12..14], &[0x80, 0x35], "RARP");
        // htype 1, ptype IPv4, hlen 6, plen 4, op 3 (request reverse).
        assert_eq!(&f[14..22], &[0, 1, 8, 0, 6, 4, 0, 3]);
        assert_eq!((&f[22..28], &f[28..32], &f[32..38], &f[38..42]), (&mac[..], &[0; 4][..], &mac[..], &[0; 4][..]));
        assert!(f[42..].iter().all(|&b| b == 0));
    }
}
