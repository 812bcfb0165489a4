//! The device model's loop: wait on the ioreq fd and the network backends, serve the page, move
//! frames, act on what the devices say.
//!
//! Every access the hypervisor forwards goes to the device (disk or vif) whose window holds it
//! ([`Bound`]); one
//! outside every window reads all ones and a write there is dropped (counted: the hypervisor only
//! forwards the ranges registered, so such an access means a mismatch, not a guest's doing).
//!
//! Order within a round (one [`Page::serve`]):
//! - an interrupt line is lowered (InterruptACK, reset) while the access that lowers it is being
//!   answered, before its slot is `DONE`: the guest's end-of-interrupt that follows the ACK must
//!   find the line low, or the level-triggered IOAPIC delivers the interrupt again;
//! - then every answered vCPU is released (`IOREQ_DONE`);
//! - then the notified queues are processed and the line raised if a buffer was used: the vCPU
//!   that notified runs on while dom0 does the I/O (issue 11);
//! - then each vif whose backend was readable moves its frames into the guest's receive buffers.
//!
//! A vif's backend is waited on only while its device wants frames ([`MmioTransport::backend_fd`]:
//! started, and no frame already waiting for a receive buffer); the guest's notification of new
//! receive buffers (a QueueNotify of queue 0) delivers the waiting frame and reads on.
//!
//! The hypercalls and the waiting are behind [`Host`], so that the tests drive this loop with an
//! in-memory page and record the interrupt lines (`tests/serve.rs`); `crate::oxen` is the real one.

use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oxen_abi::ioreq::KIND_MMIO;
use oxen_abi::{DomainInfo, DomainState};

use crate::block::BlockStats;
use crate::ioreq::{Access, IoDevice, Page};
use crate::mmio::{Effect, MmioTransport, TransportState, MMIO_WINDOW_SIZE};
use crate::warden::Area;
use crate::net::NetStats;
use crate::oxen::describe;
use crate::spec::{DiskSpec, VifSpec};

/// Why [`Host::wait`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The ioreq fd is readable: requests or posted writes wait (backends may be ready too).
    Ioreq,
    /// Only backends are readable (those whose [`Watch::ready`] is set).
    Backends,
    /// SIGTERM or SIGINT (the number).
    Signal(i32),
    /// Nothing within the timeout.
    Timeout,
}

/// A descriptor the loop waits on besides the ioreq fd: a network backend's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watch {
    pub fd: RawFd,
    /// Set by [`Host::wait`] when `fd` is readable (or in error: the device finds out reading).
    pub ready: bool,
}

/// `oxl save` asks for the devices' state: [`run`] serves what waits, writes every device's
/// [`TransportState`] to the router's state file ([`Router::save_states`]) and then serves nothing
/// — takes no request, moves no frame, writes nothing to the guest's memory — until
/// [`SIG_THAW`] or the domain's end. oxl pauses the domain first, so what the file says stays
/// true while its memory is copied.
pub const SIG_FREEZE: i32 = libc::SIGUSR1;
/// Serving again after [`SIG_FREEZE`] (`oxl save -c`, or a save that failed).
pub const SIG_THAW: i32 = libc::SIGUSR2;

/// `oxl migrate` asks which guest pages the device model wrote since it last asked (each round,
/// and once more after the freeze): [`Router::save_dirty`] writes them to the dirty file.
/// SIGRTMIN (a function in libc: glibc keeps the first real-time signals for itself).
pub fn sig_dirty() -> i32 {
    libc::SIGRTMIN()
}

/// The device model's calls out: to the kernel (the ioreq fd, signals) and the hypervisor.
pub trait Host {
    /// Waits for a signal only (the loop is frozen: [`SIG_FREEZE`]) or `timeout`.
    fn wait_signal(&mut self, timeout: Duration) -> io::Result<Wake> {
        self.wait(timeout, &mut [])
    }
    /// Waits until the ioreq fd or one of `backends` is readable, a stop signal comes, or
    /// `timeout` passes; sets `ready` on each backend that is readable.
    fn wait(&mut self, timeout: Duration, backends: &mut [Watch]) -> io::Result<Wake>;
    /// `IOCTL_IOREQ_DONE`: vCPU `vcpu`'s slot is answered.
    fn ioreq_done(&mut self, vcpu: u32) -> io::Result<()>;
    /// `domctl::IRQ_LINE` for the domain's line `gsi`.
    fn irq_line(&mut self, gsi: u32, level: bool) -> io::Result<()>;
    /// `domctl::GET_INFO` for the domain; `None` once there is no such domain.
    fn domain_info(&mut self) -> io::Result<Option<DomainInfo>>;
}

/// One virtio-blk device of the domain.
pub struct Disk {
    pub spec: DiskSpec,
    pub transport: MmioTransport,
    pub stats: Arc<BlockStats>,
    /// A second descriptor of a read-write disk's file, for the `fsync` at exit (the transport
    /// owns the device and its file).
    pub sync: Option<File>,
    /// The level last set on its line (lines start low).
    line: bool,
}

impl Disk {
    pub fn new(spec: DiskSpec, transport: MmioTransport, stats: Arc<BlockStats>, sync: Option<File>) -> Self {
        Self { spec, transport, stats, sync, line: false }
    }

    fn holds(&self, a: Access) -> Option<u64> {
        let off = a.addr.checked_sub(self.spec.base)?;
        (a.kind == KIND_MMIO && off < MMIO_WINDOW_SIZE).then_some(off)
    }
}

/// One virtio-net device of the domain.
pub struct Nic {
    pub spec: VifSpec,
    /// Its tap's name in dom0 (the log's name for it).
    pub ifname: String,
    pub transport: MmioTransport,
    pub stats: Arc<NetStats>,
    /// The level last set on its line (lines start low).
    line: bool,
}

impl Nic {
    pub fn new(spec: VifSpec, ifname: String, transport: MmioTransport, stats: Arc<NetStats>) -> Self {
        Self { spec, ifname, transport, stats, line: false }
    }

    fn holds(&self, a: Access) -> Option<u64> {
        let off = a.addr.checked_sub(self.spec.base)?;
        (a.kind == KIND_MMIO && off < MMIO_WINDOW_SIZE).then_some(off)
    }
}

/// What the loop counted, for the summary at exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// vCPU requests answered (slots), and posted writes taken from the ring.
    pub requests: u64,
    pub posted: u64,
    /// QueueNotify writes.
    pub notifications: u64,
    /// Wake-ups of a vif for its backend's frames.
    pub backend_wakes: u64,
    /// `IRQ_LINE` raises that took effect.
    pub interrupts: u64,
    /// Accesses outside every device's window.
    pub unclaimed: u64,
    /// `IRQ_LINE` or `IOREQ_DONE` calls that failed.
    pub call_errors: u64,
    /// Rounds served after a wake-up, and their time summed (serving, the devices' work, the
    /// calls, publishing the states): the device model's part of a request's round trip.
    pub rounds: u64,
    pub round_ns: u64,
}

/// Failed calls logged one by one before going quiet (a guest must not fill dom0's log).
const LOGGED_ERRORS: u64 = 10;

/// The domain's devices and what is pending between the serving of a round and its end.
///
/// A device is named by one index: `0..disks.len()` the disks, then the vifs.
pub struct Router {
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
    pub counters: Counters,
    /// (device, queue) notified in this round, in order, each once.
    notified: Vec<(usize, u16)>,
    /// The backends waited on in this round and the vif of each.
    watch: Vec<Watch>,
    watched: Vec<usize>,
    /// The log's prefix: `oxen-dm: d5 (web): `.
    label: String,
    /// Where each device's state is published for the warden, and what was published last.
    area: Option<(Area, Vec<Option<TransportState>>)>,
    /// Where [`SIG_FREEZE`] writes the devices' states (`--state-file`).
    state_file: Option<PathBuf>,
    /// The guest memory the devices write, whose dirty pages [`sig_dirty`] asks for.
    mem: Option<Arc<crate::GuestMemoryMmap>>,
}

/// A device's transport and line, whichever kind it is.
struct Port<'a> {
    transport: &'a mut MmioTransport,
    line: &'a mut bool,
    gsi: u32,
    name: &'a str,
}

impl Router {
    pub fn new(disks: Vec<Disk>, label: String) -> Self {
        Self {
            disks,
            nics: Vec::new(),
            counters: Counters::default(),
            notified: Vec::new(),
            watch: Vec::new(),
            watched: Vec::new(),
            label,
            area: None,
            state_file: None,
            mem: None,
        }
    }

    /// The router reporting the pages written through `mem` when asked ([`sig_dirty`]).
    pub fn tracking(mut self, mem: Arc<crate::GuestMemoryMmap>) -> Self {
        self.mem = Some(mem);
        self
    }

    /// The dirty file: the state file's name with `.dirty` added.
    pub fn dirty_file(&self) -> Option<PathBuf> {
        let mut p = self.state_file.clone()?.into_os_string();
        p.push(".dirty");
        Some(p.into())
    }

    /// Writes the guest pages written since the last call (`crate::foreign::take_dirty`), each a
    /// little-endian `u64` page number, to the dirty file (a new file renamed over it).
    pub fn save_dirty(&self) -> io::Result<(PathBuf, usize)> {
        let path = self.dirty_file().ok_or_else(|| io::Error::other("no --state-file was given"))?;
        let mem = self.mem.as_ref().ok_or_else(|| io::Error::other("no guest memory is tracked"))?;
        let pages = crate::foreign::take_dirty(mem);
        let bytes: Vec<u8> = pages.iter().flat_map(|p| p.to_le_bytes()).collect();
        let mut tmp = path.clone().into_os_string();
        tmp.push(".new");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, &path)?;
        Ok((path, pages.len()))
    }

    /// Flushes every read-write disk's file (before a freeze hands the domain to another host,
    /// whose device model reads the same storage).
    pub fn sync_disks(&self) -> io::Result<()> {
        self.disks.iter().filter_map(|d| d.sync.as_ref()).try_for_each(File::sync_all)
    }

    /// The router writing its devices' states to `path` when frozen ([`SIG_FREEZE`]).
    pub fn saving_to(mut self, path: Option<PathBuf>) -> Self {
        self.state_file = path;
        self
    }

    /// Writes every device's state, disks then vifs, as a `crate::state` set to the state file
    /// (a new file renamed over it, so a reader never sees half of one).
    pub fn save_states(&self) -> io::Result<PathBuf> {
        let path = self.state_file.as_ref().ok_or_else(|| io::Error::other("no --state-file was given"))?;
        let transports = self.disks.iter().map(|d| &d.transport).chain(self.nics.iter().map(|n| &n.transport));
        let states = transports
            .map(|t| t.state().ok_or_else(|| io::Error::other("a device has more queues than a saved state holds")))
            .collect::<io::Result<Vec<_>>>()?;
        let mut tmp = path.clone().into_os_string();
        tmp.push(".new");
        std::fs::write(&tmp, crate::state::encode_set(&states))?;
        std::fs::rename(&tmp, path)?;
        Ok(path.clone())
    }

    /// The router publishing its devices' states to `area` (`crate::warden`), from the next
    /// [`Router::publish`] on.
    pub fn publishing_to(mut self, area: Area) -> Self {
        self.area = Some((area, Vec::new()));
        self
    }

    /// Publishes each device's transport state that changed since it was last published. [`run`]
    /// does it after every round: a device model that dies leaves its warden the registers as
    /// its last round left them.
    pub fn publish(&mut self) {
        let Some((area, last)) = self.area.as_mut() else { return };
        let transports = self.disks.iter().map(|d| &d.transport).chain(self.nics.iter().map(|n| &n.transport));
        for (i, t) in transports.enumerate() {
            let Some(state) = t.state() else { continue };
            if last.len() <= i {
                last.resize(i + 1, None);
            }
            if last[i] != Some(state) {
                area.publish(i, &state);
                last[i] = Some(state);
            }
        }
    }

    /// The router with these vifs besides its disks.
    pub fn with_nics(mut self, nics: Vec<Nic>) -> Self {
        self.nics = nics;
        self
    }

    fn port(&mut self, i: usize) -> Option<Port<'_>> {
        let disks = self.disks.len();
        if i < disks {
            let d = &mut self.disks[i];
            return Some(Port { transport: &mut d.transport, line: &mut d.line, gsi: d.spec.gsi, name: &d.spec.vdev });
        }
        let n = self.nics.get_mut(i - disks)?;
        Some(Port { transport: &mut n.transport, line: &mut n.line, gsi: n.spec.gsi, name: &n.ifname })
    }

    /// The device whose window holds `a`, and the offset in it.
    fn find(&self, a: Access) -> Option<(usize, u64)> {
        let disks = self.disks.iter().map(|d| d.holds(a));
        let nics = self.nics.iter().map(|n| n.holds(a));
        disks.chain(nics).enumerate().find_map(|(i, off)| Some((i, off?)))
    }

    /// Collects the backends to wait on: every vif's that wants frames now.
    fn collect_watch(&mut self) {
        self.watch.clear();
        self.watched.clear();
        for (i, n) in self.nics.iter().enumerate() {
            if let Some(fd) = n.transport.backend_fd() {
                self.watch.push(Watch { fd, ready: false });
                self.watched.push(i);
            }
        }
    }

    fn failed(&mut self, what: std::fmt::Arguments<'_>) {
        self.counters.call_errors += 1;
        if self.counters.call_errors <= LOGGED_ERRORS {
            eprintln!("{}{what}", self.label);
        }
    }

    /// Sets device `i`'s line to `level` if that changes it. A failed call leaves the level as
    /// it was, so the next change tries again. A device whose InterruptStatus the hypervisor holds
    /// has its line lowered there, unseen here: every raise is made (the transport asks for one
    /// only when the first bit is set).
    fn set_line(&mut self, host: &mut impl Host, i: usize, level: bool) {
        if self.port(i).is_some_and(|p| p.transport.interrupt_status_shared() || *p.line != level) {
            self.drive_line(host, i, level);
        }
    }

    /// Sets device `i`'s line to `level` whatever it was thought to be.
    fn drive_line(&mut self, host: &mut impl Host, i: usize, level: bool) {
        let Some(p) = self.port(i) else { return };
        let gsi = p.gsi;
        match host.irq_line(gsi, level) {
            Ok(()) => {
                *p.line = level;
                self.counters.interrupts += u64::from(level);
            }
            Err(e) => {
                let name = p.name.to_owned();
                self.failed(format_args!("{name}: setting gsi {gsi} to {}: {}", u8::from(level), describe(&e)));
            }
        }
    }

    /// Sets every device's line to what its registers say (InterruptStatus ≠ 0), whatever the
    /// line was thought to be: for a router taking over lines another process drove.
    pub fn take_lines(&mut self, host: &mut impl Host) {
        for i in 0..self.disks.len() + self.nics.len() {
            let Some(level) = self.port(i).map(|p| p.transport.interrupt_pending()) else { continue };
            self.drive_line(host, i, level);
        }
    }

    /// Processes every queue of every device, as if each had been notified.
    pub fn process_all(&mut self, host: &mut impl Host) {
        for i in 0..self.disks.len() + self.nics.len() {
            let queues = self.port(i).map_or(0, |p| p.transport.queue_count());
            for q in 0..queues {
                let effect = self.port(i).map_or(Effect::None, |p| p.transport.process_queue(q));
                if let Effect::Interrupt(level) = effect {
                    self.set_line(host, i, level);
                }
            }
        }
    }

    /// One round: serve the page, release the answered vCPUs, process the notified queues, take
    /// the frames of the backends [`Host::wait`] found readable.
    pub fn round(&mut self, page: &Page, host: &mut impl Host) {
        let served = page.serve(&mut Bound { router: self, host });
        self.counters.requests += u64::from(served.answered.count_ones());
        self.counters.posted += u64::from(served.posted);
        for v in 0..8 {
            if served.answered & (1 << v) != 0 {
                if let Err(e) = host.ioreq_done(v) {
                    self.failed(format_args!("IOREQ_DONE for vCPU {v}: {}", describe(&e)));
                }
            }
        }
        let notified = std::mem::take(&mut self.notified);
        for &(i, q) in &notified {
            let effect = self.port(i).map_or(Effect::None, |p| p.transport.process_queue(q));
            if let Effect::Interrupt(level) = effect {
                self.set_line(host, i, level);
            }
        }
        // The vectors are kept: no allocation per round.
        self.notified = notified;
        self.notified.clear();
        for w in 0..self.watch.len() {
            if !self.watch[w].ready {
                continue;
            }
            self.watch[w].ready = false;
            let n = self.watched[w];
            self.counters.backend_wakes += 1;
            if let Effect::Interrupt(level) = self.nics[n].transport.backend_ready() {
                self.set_line(host, self.disks.len() + n, level);
            }
        }
    }
}

/// The router with the host it calls while a page is being served: the [`IoDevice`] of
/// [`Page::serve`].
pub struct Bound<'a, H: Host> {
    pub router: &'a mut Router,
    pub host: &'a mut H,
}

impl<H: Host> IoDevice for Bound<'_, H> {
    fn read(&mut self, a: Access) -> u64 {
        let found = self.router.find(a);
        match found.and_then(|(i, off)| Some((self.router.port(i)?, off))) {
            Some((p, off)) => p.transport.read(off, a.size),
            None => {
                self.router.counters.unclaimed += 1;
                u64::MAX
            }
        }
    }

    fn write(&mut self, a: Access, value: u64) {
        let Some((i, off)) = self.router.find(a) else {
            self.router.counters.unclaimed += 1;
            return;
        };
        let effect = self.router.port(i).map_or(Effect::None, |p| p.transport.write(off, a.size, value));
        match effect {
            Effect::None => {}
            Effect::Interrupt(level) => self.router.set_line(self.host, i, level),
            Effect::QueueNotify(q) => {
                self.router.counters.notifications += 1;
                if !self.router.notified.contains(&(i, q)) {
                    self.router.notified.push((i, q));
                }
            }
        }
    }
}

/// Why [`run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The domain is no longer listed (destroyed), or is dying.
    DomainGone,
    /// SIGTERM or SIGINT.
    Signal(i32),
}

/// Serves until the domain is gone or a stop signal comes. `tick` bounds how long a dead domain
/// goes unnoticed: after a `tick` without requests (or at least once a `tick` while busy) the
/// domain is looked up. An error of the wait itself ends the loop (`Err`).
pub fn run(page: &Page, router: &mut Router, host: &mut impl Host, tick: Duration) -> io::Result<End> {
    let mut last_check = Instant::now();
    let mut restarts = None;
    let mut frozen = false;
    loop {
        let wake = if frozen {
            host.wait_signal(tick)?
        } else {
            router.collect_watch();
            host.wait(tick, &mut router.watch)?
        };
        match wake {
            Wake::Signal(SIG_FREEZE) => {
                if !frozen {
                    // What waits is served first: a vCPU paused inside an access is answered,
                    // a notified queue processed, so nothing is in flight in the state.
                    router.round(page, host);
                    router.publish();
                    frozen = true;
                    if let Err(e) = router.sync_disks() {
                        eprintln!("{}frozen for a save, but a disk's fsync failed: {}", router.label, describe(&e));
                    }
                }
                match router.save_states() {
                    Ok(path) => eprintln!("{}frozen for a save: the devices' state is in {}", router.label, path.display()),
                    Err(e) => eprintln!("{}frozen for a save, but writing the devices' state failed: {}", router.label, describe(&e)),
                }
                continue;
            }
            Wake::Signal(SIG_THAW) => {
                if frozen {
                    eprintln!("{}serving again", router.label);
                }
                frozen = false;
                continue;
            }
            Wake::Signal(sig) if sig == sig_dirty() => {
                if let Err(e) = router.save_dirty() {
                    eprintln!("{}writing the pages it wrote failed: {}", router.label, describe(&e));
                }
                continue;
            }
            Wake::Signal(sig) => return Ok(End::Signal(sig)),
            _ => {}
        }
        // Also on a timeout: a wake-up lost between the driver and us costs one tick at most.
        if !frozen {
            let start = Instant::now();
            router.round(page, host);
            router.publish();
            router.counters.rounds += 1;
            router.counters.round_ns += u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        }
        if wake == Wake::Timeout || last_check.elapsed() >= tick {
            last_check = Instant::now();
            match host.domain_info() {
                Ok(None) => return Ok(End::DomainGone),
                Ok(Some(info)) => {
                    if info.state == DomainState::Dying as u32 {
                        return Ok(End::DomainGone);
                    }
                    // A reboot in place keeps the domain (and its memory, zeroed): the new
                    // kernel resets each device before using it (virtio §3.1.1).
                    if restarts.is_some_and(|r| r != info.restarts) {
                        eprintln!("{}the domain rebooted (restart {})", router.label, info.restarts);
                    }
                    restarts = Some(info.restarts);
                }
                Err(e) => router.failed(format_args!("GET_INFO: {}", describe(&e))),
            }
        }
    }
}
