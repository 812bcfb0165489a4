//! The serving loop end to end (`serve::run`): a guest's accesses written into an in-memory ioreq
//! page as the hypervisor would, disks and a vif (on a socket pair) behind the router, and a fake
//! host that records the `IOREQ_DONE` and `IRQ_LINE` calls in the order they came.

mod common;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use oxen_abi::ioreq::{DIR_READ, DIR_WRITE, KIND_MMIO, KIND_PIO, POSTED_ENTRIES, STATE_DONE, STATE_FREE, STATE_READY};
use oxen_abi::{DomainInfo, DomainState, IoreqPage};
use oxen_dm::ioreq::Page;
use oxen_dm::net::HDR_LEN;
use oxen_dm::serve::{self, Disk, End, Host, Nic, Router, Wake, Watch};
use oxen_dm::spec::{DiskSpec, VifSpec};
use oxen_dm::{Block, BlockStats, FdBackend, GuestMemoryMmap, MmioTransport, Net, NetStats};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_mmio::*;
use vm_memory::{Bytes, GuestAddress};

const BASE_A: u64 = 0xfeb0_0000;
const BASE_B: u64 = 0xfeb0_1000;

/// What the fake saw, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Done(u32),
    Irq(u32, bool),
}

/// One thing the guest does between two waits.
enum Step {
    /// vCPU, kind, address, size: a read; its answer is recorded.
    Read(u32, u8, u64, u8),
    /// vCPU, address, size, value: a write that waits for its answer.
    Write(u32, u64, u8, u64),
    /// A posted write to the ring.
    Posted(u64, u64),
    /// Guest memory work (a request laid out), no access.
    Mem(Box<dyn FnOnce()>),
    /// A wait that finds nothing (the loop then looks the domain up).
    Idle,
    /// A wait that finds nothing, asserting how many backends the loop waits on.
    Watched(usize),
    /// A signal comes.
    Signal(i32),
}

/// The hypervisor and the guest, as the loop sees them: the script runs one step per wait.
struct Fake {
    page: *mut IoreqPage,
    steps: VecDeque<Step>,
    calls: Vec<Call>,
    /// Answers of the reads, in order.
    answers: Vec<u64>,
    /// The vCPU whose access is in its slot, whether it was a read, and `calls.len()` then.
    waiting: Option<(usize, bool, usize)>,
    /// `domain_info` says the domain is gone after this many lookups (`None`: never).
    alive_lookups: Option<u32>,
    lookups: u32,
    /// Ends the run with a signal once the script is done.
    signal_at_end: bool,
}

impl Fake {
    fn new(page: &mut IoreqPage, steps: Vec<Step>) -> Self {
        Self {
            page,
            steps: steps.into(),
            calls: Vec::new(),
            answers: Vec::new(),
            waiting: None,
            alive_lookups: Some(0),
            lookups: 0,
            signal_at_end: false,
        }
    }

    fn slot(&mut self, v: usize) -> &mut oxen_abi::IoreqSlot {
        // SAFETY: the page outlives the fake (both in one test); one thread; no other reference
        // to it is held across this call.
        unsafe { &mut (*self.page).slots[v] }
    }

    /// The previous access must have been answered and released before the guest goes on.
    fn retire(&mut self) {
        if let Some((v, read, since)) = self.waiting.take() {
            assert_eq!(self.slot(v).state, STATE_DONE, "vCPU {v} answered");
            assert!(self.calls[since..].contains(&Call::Done(v as u32)), "and released");
            if read {
                let d = self.slot(v).data;
                self.answers.push(d);
            }
            self.slot(v).state = STATE_FREE;
        }
    }

    fn request(&mut self, v: u32, kind: u8, dir: u8, addr: u64, size: u8, data: u64) {
        let s = self.slot(v as usize);
        (s.kind, s.dir, s.size, s.addr, s.data, s.state) = (kind, dir, size, addr, data, STATE_READY);
        self.waiting = Some((v as usize, dir == DIR_READ, self.calls.len()));
    }
}

impl Host for Fake {
    fn wait(&mut self, _timeout: Duration, backends: &mut [Watch]) -> io::Result<Wake> {
        self.retire();
        // Every backend is said to be ready: a device must cope with one that has nothing.
        for w in backends.iter_mut() {
            w.ready = true;
        }
        let Some(step) = self.steps.pop_front() else {
            return Ok(if self.signal_at_end { Wake::Signal(15) } else { Wake::Timeout });
        };
        match step {
            Step::Read(v, kind, addr, size) => self.request(v, kind, DIR_READ, addr, size, 0),
            Step::Write(v, addr, size, value) => self.request(v, KIND_MMIO, DIR_WRITE, addr, size, value),
            Step::Posted(addr, value) => {
                // SAFETY: as in `slot`.
                let p = unsafe { &mut *self.page };
                let e = &mut p.posted[(p.posted_head % POSTED_ENTRIES) as usize];
                (e.kind, e.size, e.vcpu, e.addr, e.data) = (KIND_MMIO, 4, 0, addr, value);
                p.posted_head = p.posted_head.wrapping_add(1);
            }
            Step::Mem(f) => f(),
            Step::Idle => return Ok(Wake::Timeout),
            Step::Watched(n) => {
                assert_eq!(backends.len(), n, "backends waited on");
                return Ok(Wake::Timeout);
            }
            Step::Signal(sig) => return Ok(Wake::Signal(sig)),
        }
        Ok(Wake::Ioreq)
    }

    fn ioreq_done(&mut self, vcpu: u32) -> io::Result<()> {
        self.calls.push(Call::Done(vcpu));
        Ok(())
    }

    fn irq_line(&mut self, gsi: u32, level: bool) -> io::Result<()> {
        self.calls.push(Call::Irq(gsi, level));
        Ok(())
    }

    fn domain_info(&mut self) -> io::Result<Option<DomainInfo>> {
        self.lookups += 1;
        if self.alive_lookups.is_some_and(|n| self.lookups > n) {
            return Ok(None);
        }
        Ok(Some(DomainInfo {
            domid: 5,
            state: DomainState::Running as u32,
            vcpus: 2,
            flags: 0,
            memory_kib: (MEM_SIZE / 1024) as u64,
            cpu_time_ns: 0,
            exits: 0,
            restarts: 0,
            shutdown_reason: 0,
            name: [0; oxen_abi::NAME_LEN],
        }))
    }
}

fn disk(mem: &Arc<GuestMemoryMmap>, base: u64, gsi: u32, sectors: u64, fill: u8) -> (vmm_sys_util::tempfile::TempFile, Disk) {
    let (tmp, file) = image(sectors, fill);
    let spec = DiskSpec { base, gsi, read_only: false, vdev: format!("xvd{gsi}"), target: tmp.as_path().into() };
    let sync = file.try_clone().unwrap();
    let block = Block::new(file, false, &spec.vdev).unwrap();
    let stats = block.stats();
    let t = MmioTransport::new(Box::new(block), Arc::clone(mem)).unwrap();
    (tmp, Disk::new(spec, t, stats, Some(sync)))
}

/// Runs `steps` through the loop, the domain never gone, until the signal that ends the script;
/// the page (which the fake points into) and the fake's record.
fn run_to_signal(router: &mut Router, steps: Vec<Step>) -> (Box<IoreqPage>, Fake) {
    let mut page = zeroed_page();
    let mut fake = Fake::new(&mut page, steps);
    fake.alive_lookups = None;
    fake.signal_at_end = true;
    // SAFETY: the box outlives `p` (moving the box does not move the page); one thread.
    let p = unsafe { Page::new(NonNull::from(&mut *page)) };
    assert_eq!(serve::run(&p, router, &mut fake, Duration::from_secs(60)).unwrap(), End::Signal(15));
    (page, fake)
}

fn zeroed_page() -> Box<IoreqPage> {
    // SAFETY: all-zero bytes are a valid page (integers only).
    Box::new(unsafe { std::mem::zeroed() })
}

/// A guest's driver bringing up the disk at BASE_A (§3.1.1, §4.2.3.2) with vCPU `v`, through
/// forwarded accesses.
fn bring_up(v: u32, vq_desc: u64, vq_avail: u64, vq_used: u64) -> Vec<Step> {
    bring_up_at(v, BASE_A, &[(vq_desc, vq_avail, vq_used)])
}

/// The same for the device at `base` with one queue per (desc, avail, used) in `queues`.
fn bring_up_at(v: u32, base: u64, queues: &[(u64, u64, u64)]) -> Vec<Step> {
    let w = |off: u32, val: u64| Step::Write(v, base + u64::from(off), 4, val);
    let split = |a: u64| (a & 0xffff_ffff, a >> 32);
    let ack_drv = u64::from(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER);
    let features = 1u64 << VIRTIO_F_VERSION_1;
    let mut steps = vec![
        w(VIRTIO_MMIO_STATUS, 0),
        w(VIRTIO_MMIO_STATUS, u64::from(VIRTIO_CONFIG_S_ACKNOWLEDGE)),
        w(VIRTIO_MMIO_STATUS, ack_drv),
        w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1),
        w(VIRTIO_MMIO_DRIVER_FEATURES, features >> 32),
        w(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0),
        w(VIRTIO_MMIO_DRIVER_FEATURES, features & 0xffff_ffff),
        w(VIRTIO_MMIO_STATUS, ack_drv | u64::from(VIRTIO_CONFIG_S_FEATURES_OK)),
    ];
    for (q, &(d, av, u)) in queues.iter().enumerate() {
        let (dl, dh) = split(d);
        let (al, ah) = split(av);
        let (ul, uh) = split(u);
        steps.extend([
            w(VIRTIO_MMIO_QUEUE_SEL, q as u64),
            w(VIRTIO_MMIO_QUEUE_NUM, u64::from(QSIZE)),
            w(VIRTIO_MMIO_QUEUE_DESC_LOW, dl),
            w(VIRTIO_MMIO_QUEUE_DESC_HIGH, dh),
            w(VIRTIO_MMIO_QUEUE_AVAIL_LOW, al),
            w(VIRTIO_MMIO_QUEUE_AVAIL_HIGH, ah),
            w(VIRTIO_MMIO_QUEUE_USED_LOW, ul),
            w(VIRTIO_MMIO_QUEUE_USED_HIGH, uh),
            w(VIRTIO_MMIO_QUEUE_READY, 1),
        ]);
    }
    steps.extend([
        w(VIRTIO_MMIO_STATUS, u64::from(S_ALL)),
        Step::Read(v, KIND_MMIO, base + u64::from(VIRTIO_MMIO_STATUS), 4),
    ]);
    steps
}

/// A three-descriptor request at table index 0 made available (the driver's side of
/// `common::request`, without the transport calls).
fn post_request(mem: &GuestMemoryMmap, vq: &Vq<'_>, req_type: u32, sector: u64, len: u32, device_writes: bool) {
    header(mem, req_type, sector);
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let f = if device_writes { F_WRITE } else { 0 };
    vq.add_desc_chains(&[desc(HDR, 16, F_NEXT, 1), desc(DATA, len, F_NEXT | f, 2), desc(STATUS, 1, F_WRITE, 0)], 0);
}

#[test]
fn a_guest_reads_and_writes_a_disk_through_the_page() {
    let mem = mem();
    let (_ta, a) = disk(&mem, BASE_A, 16, 64, 0x5a);
    let (_tb, b) = disk(&mem, BASE_B, 17, 128, 0);
    let mut router = Router::new(vec![a, b], String::from("test: "));
    // Leaked: the steps' closures hold the queue's view of memory for the whole test.
    let mem_ref: &'static GuestMemoryMmap = Box::leak(Box::new(Arc::clone(&mem)));
    let vq: &'static Vq<'static> = Box::leak(Box::new(Vq::new(mem_ref, GuestAddress(0x8000))));
    let (d, av, u) = (vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0);

    let notify = Step::Write(1, BASE_A + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), 4, 0);
    let isr = || Step::Read(1, KIND_MMIO, BASE_A + u64::from(VIRTIO_MMIO_INTERRUPT_STATUS), 4);
    let ack = || Step::Write(1, BASE_A + u64::from(VIRTIO_MMIO_INTERRUPT_ACK), 4, u64::from(VIRTIO_MMIO_INT_VRING));
    let mut steps = vec![
        // Routing: each window answers for its own disk (capacity in its config space).
        Step::Read(0, KIND_MMIO, BASE_A + u64::from(VIRTIO_MMIO_MAGIC_VALUE), 4),
        Step::Read(0, KIND_MMIO, BASE_A + u64::from(VIRTIO_MMIO_CONFIG), 4),
        Step::Read(1, KIND_MMIO, BASE_B + u64::from(VIRTIO_MMIO_CONFIG), 4),
        // Outside both windows (and a port): all ones; a write there is dropped.
        Step::Read(0, KIND_MMIO, BASE_B + 0x1000, 4),
        Step::Read(0, KIND_PIO, BASE_A, 2),
        Step::Write(0, 0xfec0_0000, 4, 1),
    ];
    steps.extend(bring_up(0, d, av, u));
    steps.extend([
        // A read of sector 1 (the image is all 0x5a).
        Step::Mem(Box::new(move || post_request(mem_ref, vq, VIRTIO_BLK_T_IN, 1, 512, true))),
        notify,
        isr(),
        ack(),
        // A write of sector 2 from guest memory, its notification posted this time, then a read
        // that must find it done (the ring drained first).
        Step::Mem(Box::new(move || {
            mem_ref.write_slice(&[0xc3u8; 512], GuestAddress(DATA)).unwrap();
            post_request(mem_ref, vq, VIRTIO_BLK_T_OUT, 2, 512, false);
        })),
        Step::Posted(BASE_A + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), 0),
        isr(),
        ack(),
        Step::Idle,
    ]);
    let mut page = zeroed_page();
    let mut fake = Fake::new(&mut page, steps);
    fake.alive_lookups = Some(1);
    // SAFETY: the box outlives `p` (both locals of this test); one thread.
    let p = unsafe { Page::new(NonNull::from(&mut *page)) };
    let end = serve::run(&p, &mut router, &mut fake, Duration::from_millis(1)).unwrap();
    assert_eq!(end, End::DomainGone, "the second lookup finds no domain");

    let all_ones = u64::from(u32::MAX);
    assert_eq!(&fake.answers[..5], [0x7472_6976, 64, 128, all_ones, 0xffff]);
    assert_eq!(fake.answers[5], u64::from(S_ALL), "DRIVER_OK accepted through the page");
    assert_eq!(fake.answers[6], u64::from(VIRTIO_MMIO_INT_VRING), "the read completed");
    assert_eq!(fake.answers[7], u64::from(VIRTIO_MMIO_INT_VRING), "the write completed before the read");
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), VIRTIO_BLK_S_OK as u8);
    let mut first = [0u8; 512];
    mem.read_slice(&mut first, GuestAddress(DATA)).unwrap();
    assert_eq!(first, [0xc3; 512]);

    // The interrupt protocol, in order: the notifying vCPU released before the queue is
    // processed and the line raised; the ACK lowers the line before its vCPU is released.
    let irqs: Vec<(usize, Call)> =
        fake.calls.iter().copied().enumerate().filter(|(_, c)| matches!(c, Call::Irq(..))).collect();
    let levels: Vec<Call> = irqs.iter().map(|&(_, c)| c).collect();
    assert_eq!(levels, [Call::Irq(16, true), Call::Irq(16, false), Call::Irq(16, true), Call::Irq(16, false)]);
    assert_eq!(fake.calls[irqs[0].0 - 1], Call::Done(1), "raised after the notify's release");
    assert_eq!(fake.calls[irqs[1].0 + 1], Call::Done(1), "lowered before the ACK's release");

    let c = router.counters;
    assert_eq!((c.posted, c.notifications, c.interrupts, c.unclaimed, c.call_errors), (1, 2, 2, 3, 0));
    let reqs = fake.calls.iter().filter(|c| matches!(c, Call::Done(_))).count() as u64;
    assert_eq!(c.requests, reqs);
    let s = &router.disks[0].stats;
    assert_eq!(BlockStats::get(&s.requests), 2);
    assert_eq!((BlockStats::get(&s.bytes_read), BlockStats::get(&s.bytes_written)), (512, 512));
    let mut back = vec![0u8; 512];
    use std::os::unix::fs::FileExt;
    router.disks[0].sync.as_ref().unwrap().read_exact_at(&mut back, 1024).unwrap();
    assert_eq!(back, [0xc3; 512], "sector 2 of the image");
}

#[test]
fn a_reset_lowers_the_line_and_the_device_comes_up_again() {
    // A guest rebooting in place: its new kernel resets the device with an interrupt pending,
    // then brings it up again and uses it.
    let mem = mem();
    let (_ta, a) = disk(&mem, BASE_A, 16, 64, 0x11);
    let mut router = Router::new(vec![a], String::from("test: "));
    let mem_ref: &'static GuestMemoryMmap = Box::leak(Box::new(Arc::clone(&mem)));
    let vq: &'static Vq<'static> = Box::leak(Box::new(Vq::new(mem_ref, GuestAddress(0x8000))));
    let (d, av, u) = (vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0);
    let mut steps = bring_up(0, d, av, u);
    steps.push(Step::Mem(Box::new(move || post_request(mem_ref, vq, VIRTIO_BLK_T_IN, 0, 512, true))));
    steps.push(Step::Write(0, BASE_A + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), 4, 0));
    // No ACK: the "reboot" comes first. A fresh queue in the zeroed memory of the new kernel.
    let vq2: &'static Vq<'static> = Box::leak(Box::new(Vq::new(mem_ref, GuestAddress(0x10000))));
    let (d2, av2, u2) = (vq2.desc_table_addr().0, vq2.avail_addr().0, vq2.used_addr().0);
    steps.extend(bring_up(0, d2, av2, u2));
    steps.push(Step::Mem(Box::new(move || post_request(mem_ref, vq2, VIRTIO_BLK_T_IN, 3, 512, true))));
    steps.push(Step::Write(0, BASE_A + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), 4, 0));
    let (_page, fake) = run_to_signal(&mut router, steps);
    let irqs: Vec<Call> = fake.calls.iter().copied().filter(|c| matches!(c, Call::Irq(..))).collect();
    assert_eq!(irqs, [Call::Irq(16, true), Call::Irq(16, false), Call::Irq(16, true)]);
    assert_eq!(fake.answers, [u64::from(S_ALL), u64::from(S_ALL)]);
    assert_eq!(BlockStats::get(&router.disks[0].stats.requests), 2);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), VIRTIO_BLK_S_OK as u8);
}

/// A host whose line calls fail (a domain restarting: `-EBUSY`).
struct Refusing(Fake);

impl Host for Refusing {
    fn wait(&mut self, t: Duration, b: &mut [Watch]) -> io::Result<Wake> {
        self.0.wait(t, b)
    }
    fn ioreq_done(&mut self, v: u32) -> io::Result<()> {
        self.0.ioreq_done(v)
    }
    fn irq_line(&mut self, gsi: u32, level: bool) -> io::Result<()> {
        self.0.calls.push(Call::Irq(gsi, level));
        Err(io::Error::from_raw_os_error(16))
    }
    fn domain_info(&mut self) -> io::Result<Option<DomainInfo>> {
        self.0.domain_info()
    }
}

#[test]
fn a_refused_line_change_is_tried_again() {
    let mem = mem();
    let (_ta, a) = disk(&mem, BASE_A, 16, 64, 0);
    let mut router = Router::new(vec![a], String::from("test: "));
    let mem_ref: &'static GuestMemoryMmap = Box::leak(Box::new(Arc::clone(&mem)));
    let vq: &'static Vq<'static> = Box::leak(Box::new(Vq::new(mem_ref, GuestAddress(0x8000))));
    let (d, av, u) = (vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0);
    let mut steps = bring_up(0, d, av, u);
    for _ in 0..2 {
        steps.push(Step::Mem(Box::new(move || post_request(mem_ref, vq, VIRTIO_BLK_T_IN, 0, 512, true))));
        steps.push(Step::Write(0, BASE_A + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), 4, 0));
    }
    let mut page = zeroed_page();
    let mut host = Refusing(Fake::new(&mut page, steps));
    host.0.alive_lookups = Some(0);
    // SAFETY: as in the first test.
    let p = unsafe { Page::new(NonNull::from(&mut *page)) };
    assert_eq!(serve::run(&p, &mut router, &mut host, Duration::from_secs(60)).unwrap(), End::DomainGone);
    // The line is still low as far as the loop knows, so the second raise is asked again.
    let irqs: Vec<Call> = host.0.calls.iter().copied().filter(|c| matches!(c, Call::Irq(..))).collect();
    assert_eq!(irqs, [Call::Irq(16, true), Call::Irq(16, true)]);
    assert_eq!((router.counters.interrupts, router.counters.call_errors), (0, 2));
}

/// A vif at BASE_B on gsi 17, its backend a socket pair; returns the network's end.
fn nic(mem: &Arc<GuestMemoryMmap>) -> (File, Nic) {
    let (backend, peer) = FdBackend::socketpair().unwrap();
    let spec = VifSpec {
        base: BASE_B,
        gsi: 17,
        mac: [0x00, 0x16, 0x3e, 0x0a, 0x0b, 0x0c],
        bridge: "xenbr0".into(),
        vifname: None,
    };
    let net = Net::new(Box::new(backend), spec.mac);
    let stats = net.stats();
    let t = MmioTransport::new(Box::new(net), Arc::clone(mem)).unwrap();
    (File::from(peer), Nic::new(spec, "vif5.0".into(), t, stats))
}

#[test]
fn a_guest_exchanges_frames_through_the_loop_beside_a_disk() {
    let mem = mem();
    let (_ta, a) = disk(&mem, BASE_A, 16, 64, 0);
    let (peer, n) = nic(&mem);
    let mut router = Router::new(vec![a], String::from("test: ")).with_nics(vec![n]);
    let mem_ref: &'static GuestMemoryMmap = Box::leak(Box::new(Arc::clone(&mem)));
    let peer: &'static File = Box::leak(Box::new(peer));
    let rx: &'static Vq<'static> = Box::leak(Box::new(Vq::new(mem_ref, GuestAddress(0x8000))));
    let tx: &'static Vq<'static> = Box::leak(Box::new(Vq::new(mem_ref, GuestAddress(0x10000))));
    let rings = |q: &Vq<'_>| (q.desc_table_addr().0, q.avail_addr().0, q.used_addr().0);
    let frame = |len: usize, seed: u8| -> Vec<u8> { (0..len).map(|i| (i as u8) ^ seed).collect() };
    let (f1, f2, f3) = (frame(60, 0x11), frame(1514, 0x22), frame(98, 0x33));
    const RXBUF: u64 = 0x40_0000;
    const TXBUF: u64 = 0x50_0000;
    let room = (HDR_LEN + 1518) as u32;

    let isr = || Step::Read(1, KIND_MMIO, BASE_B + u64::from(VIRTIO_MMIO_INTERRUPT_STATUS), 4);
    let ack = || Step::Write(1, BASE_B + u64::from(VIRTIO_MMIO_INTERRUPT_ACK), 4, u64::from(VIRTIO_MMIO_INT_VRING));
    let notify = |q: u64| Step::Write(1, BASE_B + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), 4, q);
    let mut steps = vec![
        // The vif's window: a network device whose config space starts with its MAC.
        Step::Read(0, KIND_MMIO, BASE_B + u64::from(VIRTIO_MMIO_DEVICE_ID), 4),
        Step::Read(0, KIND_MMIO, BASE_B + u64::from(VIRTIO_MMIO_CONFIG), 4),
        // Not started: its backend is not waited on.
        Step::Watched(0),
    ];
    steps.extend(bring_up_at(0, BASE_B, &[rings(rx), rings(tx)]));
    let f1c = f1.clone();
    steps.extend([
        Step::Watched(1),
        // A frame before any receive buffer: taken and kept; the backend is then not waited on.
        Step::Mem(Box::new(move || (&*peer).write_all(&f1c).unwrap())),
        Step::Watched(0),
        // The driver adds a buffer and notifies the receive queue: the frame arrives.
        Step::Mem(Box::new(move || rx.add_desc_chains(&[desc(RXBUF, room, F_WRITE, 0)], 0))),
        notify(0),
        isr(),
        ack(),
        Step::Watched(1),
    ]);
    let f2c = f2.clone();
    steps.extend([
        // A buffer already there: the backend's readiness alone delivers the next frame.
        Step::Mem(Box::new(move || rx.add_desc_chains(&[desc(RXBUF + 0x1_0000, room, F_WRITE, 0)], 1))),
        Step::Mem(Box::new(move || (&*peer).write_all(&f2c).unwrap())),
        isr(),
        ack(),
    ]);
    let f3c = f3.clone();
    steps.extend([
        // The guest sends: header and frame, notified through the posted ring.
        Step::Mem(Box::new(move || {
            mem_ref.write_slice(&[0u8; HDR_LEN], GuestAddress(TXBUF)).unwrap();
            mem_ref.write_slice(&f3c, GuestAddress(TXBUF + 0x100)).unwrap();
            tx.add_desc_chains(&[desc(TXBUF, HDR_LEN as u32, F_NEXT, 1), desc(TXBUF + 0x100, 98, 0, 0)], 0);
        })),
        Step::Posted(BASE_B + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), 1),
        isr(),
        ack(),
        Step::Idle,
    ]);
    let (_page, fake) = run_to_signal(&mut router, steps);

    let vring = u64::from(VIRTIO_MMIO_INT_VRING);
    assert_eq!(fake.answers, [u64::from(VIRTIO_ID_NET), 0x0a3e_1600, u64::from(S_ALL), vring, vring, vring]);
    for (i, f) in [&f1, &f2].into_iter().enumerate() {
        let mut back = vec![0u8; HDR_LEN + f.len()];
        mem.read_slice(&mut back, GuestAddress(RXBUF + i as u64 * 0x1_0000)).unwrap();
        assert_eq!(back[..HDR_LEN], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], "num_buffers 1");
        assert_eq!(&back[HDR_LEN..], &f[..]);
    }
    let mut got = vec![0u8; 2048];
    let len = (&*peer).read(&mut got).unwrap();
    assert_eq!(&got[..len], &f3[..], "the frame the guest sent, without its header");

    // Only the vif's line moved: raised per delivery or send, lowered by each ACK.
    let irqs: Vec<Call> = fake.calls.iter().copied().filter(|c| matches!(c, Call::Irq(..))).collect();
    assert_eq!(irqs, [true, false, true, false, true, false].map(|l| Call::Irq(17, l)));
    let s = &router.nics[0].stats;
    assert_eq!((NetStats::get(&s.rx_frames), NetStats::get(&s.tx_frames)), (2, 1));
    assert_eq!((NetStats::get(&s.rx_dropped), NetStats::get(&s.bad_chains)), (0, 0));
    assert_eq!(router.counters.unclaimed, 0);
    assert!(router.counters.backend_wakes >= 2, "{:?}", router.counters);
}

#[test]
fn a_frozen_loop_writes_the_states_and_serves_nothing_until_thawed_and_a_resumed_disk_goes_on() {
    let mem = mem();
    let (ta, a) = disk(&mem, BASE_A, 16, 64, 0x77);
    let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
    let state_file = dir.as_path().join("5.dm.state");
    let mut router = Router::new(vec![a], String::from("test: ")).saving_to(Some(state_file.clone())).tracking(Arc::clone(&mem));
    let mem_ref: &'static GuestMemoryMmap = Box::leak(Box::new(Arc::clone(&mem)));
    let vq: &'static Vq<'static> = Box::leak(Box::new(Vq::new(mem_ref, GuestAddress(0x8000))));
    let (d, av, u) = (vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0);
    let notify = || Step::Posted(BASE_A + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), 0);
    let status = move || mem_ref.read_obj::<u8>(GuestAddress(STATUS)).unwrap();
    let mut steps = bring_up(0, d, av, u);
    steps.extend([
        // A request, its notify posted: the freeze serves it before it writes the state.
        Step::Mem(Box::new(move || post_request(mem_ref, vq, VIRTIO_BLK_T_IN, 1, 512, true))),
        notify(),
        Step::Signal(serve::SIG_FREEZE),
        Step::Mem(Box::new(move || assert_eq!(status(), VIRTIO_BLK_S_OK as u8, "served before the freeze"))),
        // Frozen: a request made now waits, whatever wakes the loop.
        Step::Mem(Box::new(move || post_request(mem_ref, vq, VIRTIO_BLK_T_IN, 2, 512, true))),
        notify(),
        Step::Idle,
        Step::Mem(Box::new(move || assert_eq!(status(), 0xff, "not served while frozen"))),
        Step::Signal(serve::SIG_THAW),
        Step::Idle,
        Step::Mem(Box::new(move || assert_eq!(status(), VIRTIO_BLK_S_OK as u8, "served once thawed"))),
        // Asked for the pages it wrote: the data, status and used-ring pages of the requests.
        Step::Signal(serve::sig_dirty()),
    ]);
    let (_page, _fake) = run_to_signal(&mut router, steps);
    assert_eq!(BlockStats::get(&router.disks[0].stats.requests), 2);

    // The pages the device model wrote, as the dirty file says: the requests' data and status
    // pages and the used ring's (and only pages of guest memory).
    let dirty: Vec<u64> = std::fs::read(router.dirty_file().unwrap())
        .unwrap()
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    for addr in [DATA, STATUS, u] {
        assert!(dirty.contains(&(addr / 4096)), "page of {addr:#x} in {dirty:x?}");
    }
    assert!(dirty.iter().all(|&p| p < (MEM_SIZE as u64) / 4096));
    // The state written at the freeze: one device, activated, its queue where the driver put it.
    let states = oxen_dm::state::decode_set(&std::fs::read(&state_file).unwrap()).unwrap();
    assert_eq!(states.len(), 1);
    assert!(states[0].activated);
    assert_eq!((states[0].queues[0].desc, states[0].queues[0].driver, states[0].queues[0].device), (d, av, u));
    // A device model started from it (a restore) goes on with the next request: the driver
    // needs no reset, and the used ring goes on from its index in memory.
    let file = File::options().read(true).write(true).open(ta.as_path()).unwrap();
    let block = Block::new(file, false, "xvda").unwrap();
    let mut t = MmioTransport::resume(Box::new(block), Arc::clone(&mem), &states[0]).unwrap();
    assert!(t.is_activated());
    let used_before = mem.read_obj::<u16>(GuestAddress(u + 2)).unwrap();
    post_request(mem_ref, vq, VIRTIO_BLK_T_IN, 3, 512, true);
    assert!(matches!(t.process_queue(0), oxen_dm::Effect::Interrupt(true)), "the used buffer raises the line");
    assert_eq!(status(), VIRTIO_BLK_S_OK as u8);
    assert_eq!(mem.read_obj::<u16>(GuestAddress(u + 2)).unwrap(), used_before.wrapping_add(1));
}

/// A disk whose InterruptStatus the hypervisor holds (ABI 1.10): the device model sets the word's
/// bit and raises the line only when it set the first bit; it never lowers the line (the
/// hypervisor does, for the guest's InterruptACK, which never reaches dom0), so it raises again
/// once the word was cleared, whatever it last set the line to.
#[test]
fn a_disk_whose_interrupt_status_the_hypervisor_holds_raises_only_on_the_first_bit() {
    let mem = mem();
    let (_ta, mut a) = disk(&mem, BASE_A, 16, 64, 0x5a);
    let word: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
    a.transport.share_interrupt_status(word);
    let mut router = Router::new(vec![a], String::from("test: "));
    let mem_ref: &'static GuestMemoryMmap = Box::leak(Box::new(Arc::clone(&mem)));
    let vq: &'static Vq<'static> = Box::leak(Box::new(Vq::new(mem_ref, GuestAddress(0x8000))));
    let (d, av, u) = (vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0);
    let read = || Step::Mem(Box::new(move || post_request(mem_ref, vq, VIRTIO_BLK_T_IN, 1, 512, true)));
    let notify = || Step::Posted(BASE_A + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), 0);
    let mut steps = bring_up(0, d, av, u);
    steps.extend([
        read(),
        notify(),
        // A second completion before the guest acknowledged the first: the bit is set already.
        read(),
        notify(),
        // The guest's InterruptACK, answered by the hypervisor (which also lowered the line).
        Step::Mem(Box::new(move || {
            word.fetch_and(!VIRTIO_MMIO_INT_VRING, Ordering::SeqCst);
        })),
        read(),
        notify(),
    ]);
    let (_page, fake) = run_to_signal(&mut router, steps);
    let irqs: Vec<Call> = fake.calls.iter().copied().filter(|c| matches!(c, Call::Irq(..))).collect();
    assert_eq!(irqs, [Call::Irq(16, true), Call::Irq(16, true)]);
    assert_eq!(word.load(Ordering::SeqCst), VIRTIO_MMIO_INT_VRING);
    assert_eq!(BlockStats::get(&router.disks[0].stats.requests), 3);
    // The register reads the word; the published state carries it.
    assert_eq!(router.disks[0].transport.read(u64::from(VIRTIO_MMIO_INTERRUPT_STATUS), 4), 1);
    assert_eq!(router.disks[0].transport.state().unwrap().interrupt_status, 1);
    // A reset clears it and lowers the line.
    assert_eq!(router.disks[0].transport.write(u64::from(VIRTIO_MMIO_STATUS), 4, 0), oxen_dm::Effect::Interrupt(false));
    assert_eq!(word.load(Ordering::SeqCst), 0);
}
