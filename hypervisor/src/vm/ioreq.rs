//! I/O requests (ABI 1.6): a domU's accesses to the port and MMIO ranges
//! that its device model in dom0 registered are forwarded to it, as Xen's
//! ioreq servers and ACRN's HSM do.
//!
//! dom0 hands over one page of its RAM (`oxen_abi::IoreqPage`): a request
//! slot per vCPU and a ring of posted writes. The retry model: a vCPU's
//! first exit for an access fills its slot (`READY`), posts
//! `event::IOREQ` to dom0 and the vCPU sleeps without retiring the
//! instruction (`waiting`); the device model answers (`DONE`) and calls
//! `IOREQ_DONE`, which wakes the vCPU; it executes the instruction again,
//! exits again, and the access completes from the slot, which is freed. A
//! write to a range with posted writes goes to the ring and the vCPU goes
//! on at once (ring full: it waits as for any request).
//!
//! The page is shared with a dom0 user process, which may write anything
//! into it at any time: every field is read once (volatile), nothing read
//! from it sizes or indexes anything here, and the only value taken from it
//! is a read's data (masked to the access's size). A wrong answer can only
//! give the domU wrong data; the vCPU waits for `DONE` and nothing else.
//!
//! All accesses to the page happen under the server's lock, so once
//! `setup(None)` (the device model is gone) returns the hypervisor never
//! touches the page again and dom0 may free it. After that, forwarded reads
//! return all ones and writes are dropped: the guest's driver sees a device
//! that stopped answering, and nothing waits.
//!
//! Pure (host-tested): the platform routes accesses here and posts dom0's
//! event (`vm::platform`); the domctls are at the bottom (target only).

use super::bus::Bus;
use core::ptr::{addr_of, addr_of_mut, NonNull};
use core::sync::atomic::{fence, AtomicU32, Ordering};
use oxen_abi::{ioreq, Error, IoreqPage, MAX_VCPUS};
use spin::Mutex;

const VCPUS: usize = MAX_VCPUS as usize;

/// How a forwarded access ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Retire the instruction: a read's value (masked to its size), 0 for a
    /// write.
    Done(u64),
    /// Not answered yet: the vCPU waits without retiring the instruction.
    Wait,
}

/// One access, as put in a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Request {
    kind: u8,
    dir: u8,
    size: u8,
    addr: u64,
    data: u64,
}

/// Forwarding statistics, for the log when the domain goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests put in a slot (each is one round trip through dom0).
    pub requests: u64,
    /// Writes put in the posted ring.
    pub posted: u64,
    /// Posted writes that found the ring full and waited instead.
    pub ring_full: u64,
    /// Accesses answered as a dead device model's (all ones / dropped).
    pub dead: u64,
    /// InterruptStatus reads and InterruptACK writes answered from the page.
    pub status: u64,
    /// Round trips: from a posted write (a virtqueue notification) that
    /// found none waiting before it, to the device model's next `IRQ_LINE`
    /// raise (dom0's turnaround), and to the guest's next InterruptStatus
    /// read (the whole way back into the guest's handler); nanoseconds
    /// summed, and how many.
    pub to_line_ns: u64,
    pub to_line: u64,
    pub to_status_ns: u64,
    pub to_status: u64,
}

/// What a range of the server is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Range {
    /// Accesses go to the device model; with `posted`, writes to the ring.
    Forward { posted: bool },
    /// Declared device `device`'s InterruptStatus and InterruptACK, answered
    /// here from the page's word (`FLAG_INTERRUPT_STATUS`, ABI 1.10).
    InterruptStatus { device: u8 },
}

/// The shared page, touched only through volatile reads and writes of its
/// fields (and atomic ones of its interrupt-status words).
#[derive(Clone, Copy)]
struct Page(NonNull<IoreqPage>);

// SAFETY: the page is plain memory (dom0's RAM, identity mapped), touched only
// under the server's lock; the pointer is not tied to a thread.
unsafe impl Send for Page {}

/// Volatile write of a field of the page: `put!(page, value => field path)`.
macro_rules! put {
    ($page:expr, $v:expr => $($field:tt)+) => {{
        let v = $v;
        // SAFETY: the page is valid while registered (`Server::setup`); the
        // place is inside it (array indices are bounds-checked by `[]`).
        unsafe { core::ptr::write_volatile(addr_of_mut!((*$page.0.as_ptr()).$($field)+), v) }
    }};
}

/// Volatile read of a field of the page.
macro_rules! get {
    ($page:expr, $($field:tt)+) => {
        // SAFETY: as for `put!`.
        unsafe { core::ptr::read_volatile(addr_of!((*$page.0.as_ptr()).$($field)+)) }
    };
}

impl Page {
    fn state(self, v: usize) -> u32 {
        get!(self, slots[v].state)
    }

    /// Fills slot `v` and makes it `READY` last: the device model sees the
    /// request whole once it sees the state.
    fn publish(self, v: usize, seq: u32, r: &Request) {
        put!(self, seq => slots[v].seq);
        put!(self, r.kind => slots[v].kind);
        put!(self, r.dir => slots[v].dir);
        put!(self, r.size => slots[v].size);
        put!(self, r.addr => slots[v].addr);
        put!(self, r.data => slots[v].data);
        fence(Ordering::Release);
        put!(self, ioreq::STATE_READY => slots[v].state);
    }

    fn data(self, v: usize) -> u64 {
        fence(Ordering::Acquire);
        get!(self, slots[v].data)
    }

    fn free(self, v: usize) {
        put!(self, ioreq::STATE_FREE => slots[v].state);
    }

    /// Fresh: every slot free, the ring empty, no interrupt status.
    fn init(self) {
        for v in 0..VCPUS {
            put!(self, 0 => slots[v].seq);
            self.free(v);
        }
        put!(self, 0 => posted_head);
        put!(self, 0 => posted_tail);
        for d in 0..oxen_abi::MAX_DEVICES as usize {
            put!(self, 0 => interrupt_status[d]);
        }
    }

    /// Device `d`'s interrupt-status word, which the device model changes
    /// at any time with atomic operations of its own.
    fn status_word(self, d: usize) -> &'static AtomicU32 {
        // SAFETY: an aligned u32 of the page (valid while registered; `d` is
        // bounds-checked by `[]`), which dom0 changes only atomically or not
        // at all as far as this is concerned: whatever it holds is a valid
        // u32. The reference is used only under the server's lock.
        unsafe { AtomicU32::from_ptr(addr_of_mut!((*self.0.as_ptr()).interrupt_status[d])) }
    }

    /// Appends a posted write at `head` (the hypervisor's own count), if the
    /// device model's tail says there is room. A tail ahead of the head, or
    /// more than a ring behind, is garbage: taken as a full ring. `Some`
    /// (whether dom0 must be told) if it was appended.
    ///
    /// dom0 is told when the device model may have gone to sleep without
    /// this entry: its tail, read *after* the new head is published, has
    /// reached the entry. The device model stores its tail and then (in
    /// poll(2), behind a lock) reads the head, so with the fence between our
    /// store and load one of the two sees the other's (store-buffer order):
    /// either it sees this entry, or we see its caught-up tail and tell it.
    /// Judging from the tail read before publishing (as this did until
    /// 2026-12) lost a wake-up whenever the device model drained in between:
    /// it slept on an entry nobody announced, and a domU whose receive-queue
    /// notification it was stalled for good (linux-net.sh's transfer).
    fn post(self, head: u32, vcpu: usize, r: &Request) -> Option<bool> {
        let tail = get!(self, posted_tail);
        if head.wrapping_sub(tail) >= ioreq::POSTED_ENTRIES {
            return None;
        }
        let i = (head % ioreq::POSTED_ENTRIES) as usize;
        put!(self, r.kind => posted[i].kind);
        put!(self, r.size => posted[i].size);
        put!(self, vcpu as u8 => posted[i].vcpu);
        put!(self, r.addr => posted[i].addr);
        put!(self, r.data => posted[i].data);
        fence(Ordering::Release);
        put!(self, head.wrapping_add(1) => posted_head);
        fence(Ordering::SeqCst);
        Some(get!(self, posted_tail) == head)
    }
}

struct Inner {
    /// The registered page; `None` before `setup` and after its teardown.
    page: Option<Page>,
    /// The device model went away (`setup(None)` after a page).
    dead: bool,
    /// Ranges, with what each is.
    mmio: Bus<Range>,
    pio: Bus<Range>,
    ranges: usize,
    /// What each vCPU's slot holds for it.
    pending: [Option<Request>; VCPUS],
    seq: [u32; VCPUS],
    /// The posted ring's head, as the hypervisor wrote it last.
    head: u32,
    stats: Stats,
    /// When the first posted write since the guest last read an
    /// InterruptStatus came, and whether dom0 raised a line since (`Stats`).
    notified_at: Option<u64>,
    raised: bool,
}

/// One domU's I/O server: its device model's page and ranges.
pub struct Server {
    inner: Mutex<Inner>,
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

fn mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

impl Server {
    pub const fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                page: None,
                dead: false,
                mmio: Bus::new(),
                pio: Bus::new(),
                ranges: 0,
                pending: [None; VCPUS],
                seq: [0; VCPUS],
                head: 0,
                stats: Stats { requests: 0, posted: 0, ring_full: 0, dead: 0, status: 0, to_line_ns: 0, to_line: 0, to_status_ns: 0, to_status: 0 },
                notified_at: None,
                raised: false,
            }),
        }
    }

    /// Registers the page (`Some`), or tears the server down (`None`: its
    /// device model is gone). Returns the vCPUs that waited on a request,
    /// to be woken (they complete as a dead device model's accesses).
    ///
    /// A second page, or one after a teardown, is refused (`Busy`): the
    /// ranges belong to the device model that registered them.
    ///
    /// # Safety
    /// `page` must be a 4 KiB page of plain memory the hypervisor may read
    /// and write until `setup(None)` returns (dom0's RAM, checked by the
    /// caller).
    pub unsafe fn setup(&self, page: Option<NonNull<IoreqPage>>) -> Result<u8, Error> {
        let mut g = self.inner.lock();
        match page {
            Some(p) => {
                if g.page.is_some() || g.dead {
                    return Err(Error::Busy);
                }
                let p = Page(p);
                p.init();
                g.page = Some(p);
                g.head = 0;
                Ok(0)
            }
            None => {
                if g.page.take().is_none() {
                    // Never set up, or already gone: nothing changes.
                    return Ok(0);
                }
                g.dead = true;
                let mut woken = 0u8;
                for (v, p) in g.pending.iter_mut().enumerate() {
                    if p.take().is_some() {
                        woken |= 1 << v;
                    }
                }
                Ok(woken)
            }
        }
    }

    /// Forwards `[start, start + len)` of `kind` (`flags`: `FLAG_POSTED_WRITES`
    /// or nothing). `reserved(start, len)` says whether it touches what the
    /// hypervisor emulates or the domain's RAM.
    pub fn add_range(&self, kind: u8, flags: u32, start: u64, len: u64, reserved: impl Fn(u64, u64) -> bool) -> Result<(), Error> {
        let range = Range::Forward { posted: flags & ioreq::FLAG_POSTED_WRITES != 0 };
        self.insert(kind, range, start, len, reserved)
    }

    /// Answers declared device `device`'s InterruptStatus and InterruptACK,
    /// the 8 bytes at `start`, from the page (`FLAG_INTERRUPT_STATUS`); the
    /// caller checked that `start` is that device's.
    pub fn add_status_range(&self, device: u8, start: u64, reserved: impl Fn(u64, u64) -> bool) -> Result<(), Error> {
        if u32::from(device) >= oxen_abi::MAX_DEVICES {
            return Err(Error::Inval);
        }
        self.insert(ioreq::KIND_MMIO, Range::InterruptStatus { device }, start, 8, reserved)
    }

    fn insert(&self, kind: u8, range: Range, start: u64, len: u64, reserved: impl Fn(u64, u64) -> bool) -> Result<(), Error> {
        let mut g = self.inner.lock();
        if g.page.is_none() || g.dead {
            return Err(Error::Busy);
        }
        if g.ranges >= ioreq::MAX_RANGES {
            return Err(Error::NoSpc);
        }
        if reserved(start, len) {
            return Err(Error::Busy);
        }
        let bus = if kind == ioreq::KIND_PIO { &mut g.pio } else { &mut g.mmio };
        bus.try_reserve(1).map_err(|_| Error::NoMem)?;
        bus.insert(start, len, range).map_err(|_| Error::Busy)?;
        g.ranges += 1;
        Ok(())
    }

    /// Whether a range of `kind` holds `addr` (no server: never).
    pub fn claims(&self, kind: u8, addr: u64) -> bool {
        let g = self.inner.lock();
        let bus = if kind == ioreq::KIND_PIO { &g.pio } else { &g.mmio };
        bus.find(addr).is_some()
    }

    /// vCPU `vcpu`'s access of `size` bytes at `addr` (a write if `write`
    /// holds its value). Returns the answer, and whether dom0 has something
    /// new in the page (post `event::IOREQ`). `None` if no range holds
    /// `addr` or `vcpu` is out of range. `line(device, level)` sets a
    /// declared device's interrupt line, for an InterruptACK answered here;
    /// it is called under the server's lock. `now` (ns) times round trips.
    #[allow(clippy::too_many_arguments)]
    pub fn access(
        &self,
        vcpu: usize,
        kind: u8,
        addr: u64,
        size: u8,
        write: Option<u64>,
        now: u64,
        line: &mut dyn FnMut(u8, bool),
    ) -> Option<(Answer, bool)> {
        let mut g = self.inner.lock();
        let bus = if kind == ioreq::KIND_PIO { &g.pio } else { &g.mmio };
        let (start, range) = bus.find(addr)?;
        if vcpu >= VCPUS {
            return None;
        }
        let all_ones = Answer::Done(if write.is_some() { 0 } else { mask(size) });
        let Some(page) = g.page else {
            // Torn down (ranges exist only after a setup).
            g.pending[vcpu] = None;
            g.stats.dead += 1;
            return Some((all_ones, false));
        };
        let posted = match range {
            Range::Forward { posted } => posted,
            Range::InterruptStatus { device } => {
                g.stats.status += 1;
                if write.is_none() {
                    if let Some(t) = g.notified_at.take() {
                        g.stats.to_status += 1;
                        g.stats.to_status_ns += now.saturating_sub(t);
                    }
                    g.raised = false;
                }
                return Some((Answer::Done(interrupt_status(page, device, addr - start, size, write, line)), false));
            }
        };
        let req = Request {
            kind,
            dir: if write.is_some() { ioreq::DIR_WRITE } else { ioreq::DIR_READ },
            size,
            addr,
            data: write.map_or(0, |v| v & mask(size)),
        };
        if let Some(asked) = g.pending[vcpu] {
            match page.state(vcpu) {
                ioreq::STATE_DONE if asked == req => {
                    let data = page.data(vcpu);
                    page.free(vcpu);
                    g.pending[vcpu] = None;
                    return Some((Answer::Done(if write.is_some() { 0 } else { data & mask(size) }), false));
                }
                // Asked and not answered (the vCPU ran again without being
                // woken for it): still waiting, nothing new for dom0.
                _ if asked == req => return Some((Answer::Wait, false)),
                // Not the access it asked for (the vCPU was reset, or its
                // state loaded anew): the old request is dropped and this
                // one asked instead.
                _ => g.pending[vcpu] = None,
            }
        }
        if write.is_some() && posted {
            if let Some(tell) = page.post(g.head, vcpu, &req) {
                g.head = g.head.wrapping_add(1);
                g.stats.posted += 1;
                g.notified_at.get_or_insert(now);
                // dom0 is told when the device model has caught up with the
                // ring (`Page::post`), not for each write: a device model
                // drains to the head it reads, and its poll finds any entry
                // added meanwhile (head != tail), as a virtio driver's
                // notification suppression.
                return Some((Answer::Done(0), tell));
            }
            g.stats.ring_full += 1;
        }
        g.seq[vcpu] = g.seq[vcpu].wrapping_add(1);
        page.publish(vcpu, g.seq[vcpu], &req);
        g.pending[vcpu] = Some(req);
        g.stats.requests += 1;
        Some((Answer::Wait, true))
    }

    /// The device model raised one of the domain's lines (`IRQ_LINE`) at
    /// `now`: the first raise after a notification ends dom0's turnaround.
    pub fn line_raised(&self, now: u64) {
        let mut g = self.inner.lock();
        if let (Some(t), false) = (g.notified_at, g.raised) {
            g.raised = true;
            g.stats.to_line += 1;
            g.stats.to_line_ns += now.saturating_sub(t);
        }
    }

    /// Whether vCPU `vcpu` waits for its device model: it asked, and the
    /// slot is not `DONE` (whatever else dom0 wrote there).
    pub fn waiting(&self, vcpu: usize) -> bool {
        let g = self.inner.lock();
        match (g.pending.get(vcpu), g.page) {
            (Some(Some(_)), Some(page)) => page.state(vcpu) != ioreq::STATE_DONE,
            _ => false,
        }
    }

    /// The domain rebooted: requests asked before are forgotten (their slots
    /// freed); the ranges and the page stay.
    pub fn reset(&self) {
        let mut g = self.inner.lock();
        let page = g.page;
        for (v, p) in g.pending.iter_mut().enumerate() {
            if p.take().is_some() {
                if let Some(page) = page {
                    page.free(v);
                }
            }
        }
    }

    pub fn stats(&self) -> Stats {
        self.inner.lock().stats
    }
}

/// An access at `offset` of device `device`'s InterruptStatus/InterruptACK
/// pair (virtio 1.2 §4.2.2), answered from its word in the page; returns a
/// read's value. §4.2.2.2 has the driver use 4-byte accesses: others read 0
/// and are dropped, as the registers' write-only and read-only halves.
///
/// An acknowledgement clears its bits with one atomic operation (the device
/// model may be setting others at that moment, on another CPU) and lowers the
/// line if none is left. The device model sets a bit and then raises the
/// line (`IRQ_LINE`) without this lock, so after lowering the word is read
/// again, with a full fence between: a bit set between the clearing and the
/// lowering is seen then and the line raised again, and one set after that
/// read is the device model's to raise, which it does after its store. Either
/// way the line ends up high while a bit is set: no interrupt is lost, at the
/// cost of a spurious one at worst.
fn interrupt_status(page: Page, device: u8, offset: u64, size: u8, write: Option<u64>, line: &mut dyn FnMut(u8, bool)) -> u64 {
    let word = page.status_word(usize::from(device));
    match (offset, size, write) {
        (0, 4, None) => u64::from(word.load(Ordering::SeqCst)),
        (4, 4, Some(v)) => {
            let acked = v as u32;
            let was = word.fetch_and(!acked, Ordering::SeqCst);
            if was != 0 && was & !acked == 0 {
                line(device, false);
                fence(Ordering::SeqCst);
                if word.load(Ordering::SeqCst) != 0 {
                    line(device, true);
                }
            }
            0
        }
        _ => 0,
    }
}

/// The device the MMIO emulator drives for an access in a range of the
/// server: offsets are guest-physical addresses (its base is 0). One per
/// emulated instruction.
pub struct Forward<'a> {
    server: &'a Server,
    vcpu: usize,
    now: u64,
    /// Sets a declared device's line (`Server::access`).
    line: &'a mut dyn FnMut(u8, bool),
    wait: bool,
    /// dom0 has something new in the page.
    pub notify: bool,
}

impl<'a> Forward<'a> {
    pub fn new(server: &'a Server, vcpu: usize, now: u64, line: &'a mut dyn FnMut(u8, bool)) -> Self {
        Self { server, vcpu, now, line, wait: false, notify: false }
    }

    fn access(&mut self, addr: u64, size: u8, write: Option<u64>) -> u64 {
        match self.server.access(self.vcpu, ioreq::KIND_MMIO, addr, size, write, self.now, self.line) {
            Some((answer, notify)) => {
                self.notify |= notify;
                match answer {
                    Answer::Done(v) => v,
                    Answer::Wait => {
                        self.wait = true;
                        0
                    }
                }
            }
            // Not a range of the server's (the caller checked): nothing answers.
            None => u64::MAX,
        }
    }
}

impl crate::devices::MmioDevice for Forward<'_> {
    fn mmio_read(&mut self, offset: u64, size: u8) -> u64 {
        self.access(offset, size, None)
    }
    fn mmio_write(&mut self, offset: u64, size: u8, value: u64) {
        self.access(offset, size, Some(value));
    }
    fn waits(&self) -> bool {
        self.wait
    }
    fn forwards(&self) -> bool {
        true
    }
}

/// The domctls (target only): the checks that need the domain table.
#[cfg(target_os = "none")]
pub mod service {
    use super::Server;
    use crate::domain::control::DOMAINS;
    use crate::domain::table::DOM0;
    use crate::mem::GuestPhysAddr;
    use crate::sched::credit::VcpuId;
    use crate::sched::run as sched;
    use alloc::sync::Arc;
    use oxen_abi::{DomainState, Error, IoreqRange};

    /// The server of a domU (that is not dying, unless `dying_too`).
    fn server(domid: u32, dying_too: bool) -> Result<Arc<Server>, Error> {
        let t = DOMAINS.lock();
        let d = t.get(domid).ok_or(Error::NoEnt)?;
        if d.privileged {
            return Err(Error::Perm);
        }
        if d.state == DomainState::Dying && !dying_too {
            return Err(Error::Busy);
        }
        Ok(d.res.ioreq.clone())
    }

    fn wake(domid: u32, vcpus: u8) {
        for v in 0..8 {
            if vcpus & (1 << v) != 0 {
                sched::nudge(VcpuId { dom: domid, vcpu: v });
            }
        }
    }

    /// `IOREQ_SETUP`. The page must be dom0's RAM: one page that dom0's
    /// memory map holds whole (never the hypervisor's memory nor a device's).
    pub fn setup(domid: u32, page: u64) -> Result<u64, Error> {
        if page == 0 {
            // A dying domain's vCPUs may still be in an access until each
            // has let go of it: its page is forgotten all the same, under the
            // server's lock, before dom0 frees it. A domain no longer listed
            // has no vCPU left.
            let s = match server(domid, true) {
                Err(Error::NoEnt) => return Ok(0),
                other => other?,
            };
            // SAFETY: `None` only forgets the page.
            let woken = unsafe { s.setup(None) }?;
            wake(domid, woken);
            crate::domain::control::guest_log(domid, log::Level::Info, format_args!("d{domid}: its device model is gone: its I/O ranges read all ones from now on"));
            return Ok(0);
        }
        let s = server(domid, false)?;
        let hpa = {
            let t = DOMAINS.lock();
            let dom0 = t.get(DOM0).ok_or(Error::NoEnt)?;
            match dom0.res.ram.translate(GuestPhysAddr::new(page)) {
                Some((hpa, left)) if left >= 4096 && hpa.as_u64() % 4096 == 0 => hpa.as_u64(),
                _ => return Err(Error::Inval),
            }
        };
        let ptr = core::ptr::NonNull::new(hpa as *mut oxen_abi::IoreqPage).ok_or(Error::Inval)?;
        // SAFETY: a whole, aligned page of dom0's RAM (checked above),
        // identity mapped in the hypervisor; dom0 keeps it until it tears the
        // server down (a page it frees earlier is its own memory: only dom0
        // is hurt).
        unsafe { s.setup(Some(ptr)) }?;
        log::info!("d{domid}: I/O request server at dom0 page {page:#x}");
        Ok(0)
    }

    /// `IOREQ_RANGE`: refused over the domain's RAM or any device the
    /// hypervisor emulates for a domU.
    pub fn range(r: &IoreqRange) -> Result<u64, Error> {
        let s = server(r.domid, false)?;
        let (ram, devices) = {
            let t = DOMAINS.lock();
            let d = t.get(r.domid).ok_or(Error::NoEnt)?;
            (d.res.ram.clone(), d.res.devices.clone())
        };
        let kind = r.kind as u8;
        let reserved = |start: u64, len: u64| {
            let end = start + len;
            let in_ram = kind == oxen_abi::ioreq::KIND_MMIO
                && ram.regions().iter().any(|g| start < g.gpa.as_u64() + g.len && g.gpa.as_u64() < end);
            in_ram || crate::vm::platform::emulated_for_domu(kind == oxen_abi::ioreq::KIND_PIO, start, len)
        };
        if r.flags & oxen_abi::ioreq::FLAG_INTERRUPT_STATUS != 0 {
            // Only a declared device's own InterruptStatus/InterruptACK: the
            // line an acknowledgement lowers is that device's.
            let device = devices
                .iter()
                .position(|d| d.base + oxen_abi::ioreq::INTERRUPT_STATUS_REG == r.start)
                .ok_or(Error::Inval)?;
            s.add_status_range(device as u8, r.start, reserved)?;
            log::info!(
                "d{}: MMIO {:#x}+0x8: device {device}'s interrupt status and acknowledgement answered here from its device model's page",
                r.domid,
                r.start
            );
            return Ok(0);
        }
        s.add_range(kind, r.flags, r.start, r.len, reserved)?;
        log::info!(
            "d{}: {} {:#x}+{:#x} forwarded to its device model{}",
            r.domid,
            if kind == oxen_abi::ioreq::KIND_PIO { "ports" } else { "MMIO" },
            r.start,
            r.len,
            if r.flags & oxen_abi::ioreq::FLAG_POSTED_WRITES != 0 { " (posted writes)" } else { "" }
        );
        Ok(0)
    }

    /// `IOREQ_DONE`: wakes the vCPU, which looks at its slot.
    pub fn done(domid: u32, vcpu: u32) -> Result<u64, Error> {
        let vcpus = {
            let t = DOMAINS.lock();
            let d = t.get(domid).ok_or(Error::NoEnt)?;
            if d.privileged {
                return Err(Error::Perm);
            }
            d.vcpus
        };
        if vcpu >= vcpus {
            return Err(Error::Inval);
        }
        sched::nudge(VcpuId { dom: domid, vcpu });
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;
    use oxen_abi::ioreq::*;

    impl Server {
        /// `access` where no line is set (no status range is involved).
        fn acc(&self, vcpu: usize, kind: u8, addr: u64, size: u8, write: Option<u64>) -> Option<(Answer, bool)> {
            self.access(vcpu, kind, addr, size, write, 0, &mut |d, l| panic!("line {d} set to {l}"))
        }
    }

    struct Fixture {
        server: Server,
        page: *mut IoreqPage,
    }

    impl Fixture {
        fn new() -> Self {
            // SAFETY: all-zero bytes are a valid IoreqPage (integers only).
            let page = Box::into_raw(Box::new(unsafe { core::mem::zeroed::<IoreqPage>() }));
            let server = Server::new();
            // SAFETY: the box lives until `drop`, after the server is torn down.
            unsafe { server.setup(NonNull::new(page)) }.unwrap();
            server.add_range(KIND_MMIO, 0, 0x1000_0000, 0x1000, |_, _| false).unwrap();
            server.add_range(KIND_MMIO, FLAG_POSTED_WRITES, 0x1000_1000, 0x1000, |_, _| false).unwrap();
            server.add_range(KIND_PIO, 0, 0x5000, 16, |_, _| false).unwrap();
            Self { server, page }
        }

        fn page(&mut self) -> &mut IoreqPage {
            // SAFETY: the test is the device model; one thread.
            unsafe { &mut *self.page }
        }

        /// The device model answers slot `v` with `data`.
        fn answer(&mut self, v: usize, data: u64) {
            let s = &mut self.page().slots[v];
            s.data = data;
            s.state = STATE_DONE;
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            // SAFETY: forgets the page, then frees it.
            unsafe {
                self.server.setup(None).unwrap();
                drop(Box::from_raw(self.page));
            }
        }
    }

    #[test]
    fn a_read_waits_then_retires_from_the_slot() {
        let mut f = Fixture::new();
        assert_eq!(f.server.acc(1, KIND_MMIO, 0x1000_0010, 4, None), Some((Answer::Wait, true)));
        let s = f.page().slots[1];
        assert_eq!((s.state, s.kind, s.dir, s.size, s.addr, s.seq), (STATE_READY, KIND_MMIO, DIR_READ, 4, 0x1000_0010, 1));
        assert!(f.server.waiting(1));
        assert!(!f.server.waiting(0));
        // Run again before an answer: still waiting, no second event.
        assert_eq!(f.server.acc(1, KIND_MMIO, 0x1000_0010, 4, None), Some((Answer::Wait, false)));
        // Junk above the access's size is dropped.
        f.answer(1, 0xdead_beef_1234_5678);
        assert!(!f.server.waiting(1));
        assert_eq!(f.server.acc(1, KIND_MMIO, 0x1000_0010, 4, None), Some((Answer::Done(0x1234_5678), false)));
        assert_eq!(f.page().slots[1].state, STATE_FREE);
        assert_eq!(f.server.stats().requests, 1);
    }

    #[test]
    fn one_register_of_a_page_posted_the_rest_waits() {
        let mut f = Fixture::new();
        // A device's page split as oxen-dm does (1.9): its notify register posted.
        f.server.add_range(KIND_MMIO, 0, 0x1000_2000, 0x50, |_, _| false).unwrap();
        f.server.add_range(KIND_MMIO, FLAG_POSTED_WRITES, 0x1000_2050, 4, |_, _| false).unwrap();
        f.server.add_range(KIND_MMIO, 0, 0x1000_2054, 0xfac, |_, _| false).unwrap();
        assert_eq!(f.server.acc(0, KIND_MMIO, 0x1000_2050, 4, Some(1)), Some((Answer::Done(0), true)));
        assert_eq!((f.page().posted_head, f.page().posted[0].addr), (1, 0x1000_2050));
        assert_eq!(f.server.acc(0, KIND_MMIO, 0x1000_2064, 4, Some(1)), Some((Answer::Wait, true)));
        assert_eq!(f.server.acc(1, KIND_MMIO, 0x1000_204c, 4, None), Some((Answer::Wait, true)));
        assert!(f.server.claims(KIND_MMIO, 0x1000_2fff));
        assert!(!f.server.claims(KIND_MMIO, 0x1000_3000));
    }

    #[test]
    fn a_write_carries_its_value_masked() {
        let mut f = Fixture::new();
        assert_eq!(f.server.acc(0, KIND_PIO, 0x5002, 2, Some(0xffff_abcd)), Some((Answer::Wait, true)));
        let s = f.page().slots[0];
        assert_eq!((s.kind, s.dir, s.size, s.addr, s.data), (KIND_PIO, DIR_WRITE, 2, 0x5002, 0xabcd));
        f.answer(0, 0x55);
        assert_eq!(f.server.acc(0, KIND_PIO, 0x5002, 2, Some(0xffff_abcd)), Some((Answer::Done(0), false)));
    }

    #[test]
    fn unclaimed_addresses_are_not_forwarded() {
        let f = Fixture::new();
        assert_eq!(f.server.acc(0, KIND_MMIO, 0x1000_2000, 4, None), None);
        assert_eq!(f.server.acc(0, KIND_PIO, 0x1000_0000, 4, None), None);
        assert_eq!(f.server.acc(0, KIND_MMIO, 0x5000, 4, None), None);
        assert_eq!(f.server.acc(VCPUS, KIND_MMIO, 0x1000_0000, 4, None), None);
        assert!(f.server.claims(KIND_PIO, 0x500f) && !f.server.claims(KIND_PIO, 0x5010));
    }

    #[test]
    fn garbage_in_the_page_never_wakes_or_misleads() {
        let mut f = Fixture::new();
        f.server.acc(2, KIND_MMIO, 0x1000_0000, 8, None);
        for junk in [STATE_FREE, STATE_READY, 7, u32::MAX] {
            f.page().slots[2].state = junk;
            f.page().slots[2].size = 0xff;
            f.page().slots[2].addr = 0;
            assert!(f.server.waiting(2), "state {junk}");
        }
        // A DONE for a slot the hypervisor did not ask anything in is not
        // an answer: the next access asks anew.
        f.answer(3, 1);
        assert_eq!(f.server.acc(3, KIND_MMIO, 0x1000_0000, 1, None), Some((Answer::Wait, true)));
        // A bad tail is a full ring: the posted write waits as a request.
        f.page().posted_tail = 1000;
        assert_eq!(f.server.acc(0, KIND_MMIO, 0x1000_1000, 4, Some(9)), Some((Answer::Wait, true)));
        assert_eq!(f.server.stats().ring_full, 1);
    }

    #[test]
    fn a_different_access_replaces_the_request() {
        let mut f = Fixture::new();
        f.server.acc(0, KIND_MMIO, 0x1000_0000, 4, None);
        f.answer(0, 5);
        assert_eq!(f.server.acc(0, KIND_MMIO, 0x1000_0004, 4, None), Some((Answer::Wait, true)));
        assert_eq!(f.page().slots[0].state, STATE_READY);
        assert_eq!(f.page().slots[0].addr, 0x1000_0004);
        assert_eq!(f.page().slots[0].seq, 2);
    }

    #[test]
    fn posted_writes_fill_the_ring_then_wait() {
        let mut f = Fixture::new();
        for i in 0..POSTED_ENTRIES {
            // Only the first finds the ring empty and tells dom0.
            let want = Some((Answer::Done(0), i == 0));
            assert_eq!(f.server.acc(1, KIND_MMIO, 0x1000_1000 + 4 * u64::from(i % 8), 4, Some(u64::from(i))), want);
        }
        assert_eq!(f.page().posted_head, POSTED_ENTRIES);
        let e = f.page().posted[5];
        assert_eq!((e.kind, e.size, e.vcpu, e.addr, e.data), (KIND_MMIO, 4, 1, 0x1000_1014, 5));
        // Full: this one waits in the slot.
        assert_eq!(f.server.acc(1, KIND_MMIO, 0x1000_1000, 4, Some(0x77)), Some((Answer::Wait, true)));
        // The device model drains the ring and answers; the next posted write
        // goes into entry 0 again.
        f.page().posted_tail = POSTED_ENTRIES;
        f.answer(1, 0);
        assert_eq!(f.server.acc(1, KIND_MMIO, 0x1000_1000, 4, Some(0x77)), Some((Answer::Done(0), false)));
        assert_eq!(f.server.acc(0, KIND_MMIO, 0x1000_1008, 2, Some(0x1_2345)), Some((Answer::Done(0), true)));
        assert_eq!((f.page().posted[0].data, f.page().posted_head), (0x2345, POSTED_ENTRIES + 1));
        // Reads of a posted range still wait for their answer.
        assert_eq!(f.server.acc(0, KIND_MMIO, 0x1000_1000, 4, None), Some((Answer::Wait, true)));
        let s = f.server.stats();
        assert_eq!((s.posted, s.ring_full, s.requests), (u64::from(POSTED_ENTRIES) + 1, 1, 2));
    }

    /// A device model on another thread drains the ring and sleeps as
    /// oxen-dm does (stores its tail, then, registered for the wake-up, reads
    /// the head once more), while a vCPU posts writes as fast as it can: no
    /// entry is ever left in the ring with the device model asleep and not
    /// told. The old rule (tell when the tail read *before* publishing showed
    /// an empty ring) failed this within a few thousand writes.
    #[test]
    fn a_device_model_that_drains_and_sleeps_is_always_woken_for_what_is_left() {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        use std::time::Duration;
        const WRITES: u32 = 200_000;
        struct Shared(*mut IoreqPage);
        // SAFETY: the page outlives both threads (joined before the fixture drops).
        unsafe impl Sync for Shared {}
        impl Shared {
            fn get(&self) -> *mut IoreqPage {
                self.0
            }
        }
        let f = Fixture::new();
        let shared = Shared(f.page);
        let page = || shared.get();
        let tells = AtomicU64::new(0);
        let done = AtomicBool::new(false);
        let lost = std::thread::scope(|s| {
            let dm = s.spawn(|| {
                let mut consumed = 0u32;
                while consumed < WRITES {
                    // SAFETY: volatile accesses to the live page, as oxen-dm's `Page::drain`.
                    let head = unsafe { core::ptr::read_volatile(addr_of!((*page()).posted_head)) };
                    fence(Ordering::Acquire);
                    consumed = consumed.wrapping_add(head.wrapping_sub(consumed));
                    fence(Ordering::Release);
                    // SAFETY: as above.
                    unsafe { core::ptr::write_volatile(addr_of_mut!((*page()).posted_tail), head) };
                    // poll(2): on the wait queue (a spinlock: a full fence), then the check.
                    fence(Ordering::SeqCst);
                    let seen = tells.load(Ordering::SeqCst);
                    // SAFETY: as above.
                    if unsafe { core::ptr::read_volatile(addr_of!((*page()).posted_head)) } != head {
                        continue;
                    }
                    if consumed >= WRITES {
                        break;
                    }
                    let t0 = std::time::Instant::now();
                    while tells.load(Ordering::SeqCst) == seen {
                        if t0.elapsed() > Duration::from_secs(2) {
                            // Asleep with writes still to come and none announced: if
                            // the vCPU is done or waits for room, that is a lost wake-up.
                            // SAFETY: as above.
                            let now = unsafe { core::ptr::read_volatile(addr_of!((*page()).posted_head)) };
                            if now != head || done.load(Ordering::SeqCst) {
                                return Some(now.wrapping_sub(head));
                            }
                        }
                        std::thread::yield_now();
                    }
                }
                None
            });
            for i in 0..WRITES {
                // The vCPU never fills the ring, so every write is posted.
                // SAFETY: as above.
                while i.wrapping_sub(unsafe { core::ptr::read_volatile(addr_of!((*page()).posted_tail)) })
                    >= POSTED_ENTRIES - 1
                {
                    if dm.is_finished() {
                        break;
                    }
                    std::hint::spin_loop();
                }
                if dm.is_finished() {
                    break;
                }
                let r = f.server.acc(0, KIND_MMIO, 0x1000_1000, 4, Some(u64::from(i)));
                let Some((Answer::Done(0), tell)) = r else { panic!("write {i} not posted: {r:?}") };
                if tell {
                    tells.fetch_add(1, Ordering::SeqCst);
                }
            }
            done.store(true, Ordering::SeqCst);
            dm.join().unwrap()
        });
        assert_eq!(lost, None, "the device model slept on un-announced writes");
    }

    #[test]
    fn teardown_completes_waiters_with_all_ones() {
        let f = Fixture::new();
        f.server.acc(0, KIND_MMIO, 0x1000_0000, 2, None);
        f.server.acc(3, KIND_PIO, 0x5000, 1, Some(1));
        // SAFETY: forgets the page.
        assert_eq!(unsafe { f.server.setup(None) }, Ok(0b1001));
        assert!(!f.server.waiting(0) && !f.server.waiting(3));
        assert_eq!(f.server.acc(0, KIND_MMIO, 0x1000_0000, 2, None), Some((Answer::Done(0xffff), false)));
        assert_eq!(f.server.acc(0, KIND_MMIO, 0x1000_0000, 8, None), Some((Answer::Done(u64::MAX), false)));
        assert_eq!(f.server.acc(3, KIND_PIO, 0x5000, 1, Some(1)), Some((Answer::Done(0), false)));
        assert_eq!(f.server.acc(3, KIND_MMIO, 0x1000_1000, 4, Some(1)), Some((Answer::Done(0), false)));
        // No second server, and no ranges, after it.
        // SAFETY: all-zero bytes are a valid IoreqPage (integers only).
        let mut other = unsafe { core::mem::zeroed::<IoreqPage>() };
        // SAFETY: refused before the page is touched.
        assert_eq!(unsafe { f.server.setup(NonNull::new(&mut other)) }, Err(Error::Busy));
        assert_eq!(f.server.add_range(KIND_PIO, 0, 0x6000, 1, |_, _| false), Err(Error::Busy));
        assert_eq!(f.server.stats().dead, 4);
    }

    #[test]
    fn ranges_are_bounded_and_never_overlap() {
        let s = Server::new();
        assert_eq!(s.add_range(KIND_PIO, 0, 0x6000, 1, |_, _| false), Err(Error::Busy), "no server yet");
        // SAFETY: all-zero bytes are a valid IoreqPage (integers only).
        let mut page = unsafe { core::mem::zeroed::<IoreqPage>() };
        // SAFETY: `page` outlives the server's use of it (torn down below).
        unsafe { s.setup(NonNull::new(&mut page)) }.unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { s.setup(NonNull::new(&mut page)) }, Err(Error::Busy), "one page per server");
        assert_eq!(s.add_range(KIND_PIO, 0, 0x60, 1, |_, _| true), Err(Error::Busy));
        s.add_range(KIND_PIO, 0, 0x6000, 8, |_, _| false).unwrap();
        assert_eq!(s.add_range(KIND_PIO, 0, 0x6007, 2, |_, _| false), Err(Error::Busy));
        // The same numbers as MMIO are another space.
        s.add_range(KIND_MMIO, 0, 0x6000, 8, |_, _| false).unwrap();
        for i in 2..MAX_RANGES as u64 {
            s.add_range(KIND_PIO, 0, 0x7000 + i * 16, 16, |_, _| false).unwrap();
        }
        assert_eq!(s.add_range(KIND_PIO, 0, 0x9000, 1, |_, _| false), Err(Error::NoSpc));
        // SAFETY: forgets the page before it goes.
        unsafe { s.setup(None) }.unwrap();
    }

    #[test]
    fn a_reset_forgets_requests() {
        let mut f = Fixture::new();
        f.server.acc(0, KIND_MMIO, 0x1000_0000, 4, None);
        f.server.reset();
        assert_eq!(f.page().slots[0].state, STATE_FREE);
        assert!(!f.server.waiting(0));
    }

    /// Declared device 2's InterruptStatus/InterruptACK at 0x1000_3060 (a
    /// window the fixture does not forward otherwise).
    fn with_status() -> Fixture {
        let f = Fixture::new();
        f.server.add_status_range(2, 0x1000_3060, |_, _| false).unwrap();
        f
    }

    fn status_access(f: &Fixture, addr: u64, size: u8, write: Option<u64>, lines: &mut Vec<(u8, bool)>) -> Option<(Answer, bool)> {
        f.server.access(0, KIND_MMIO, addr, size, write, 0, &mut |d, l| lines.push((d, l)))
    }

    #[test]
    fn interrupt_status_is_answered_from_the_page_without_dom0() {
        let mut f = with_status();
        let mut lines = Vec::new();
        f.page().interrupt_status[2] = 0b11;
        assert_eq!(status_access(&f, 0x1000_3060, 4, None, &mut lines), Some((Answer::Done(0b11), false)));
        // Acknowledging one of two bits leaves the line as it is.
        assert_eq!(status_access(&f, 0x1000_3064, 4, Some(0b01), &mut lines), Some((Answer::Done(0), false)));
        assert_eq!((f.page().interrupt_status[2], lines.len()), (0b10, 0));
        // The last one lowers it; the word read again is 0: not raised again.
        assert_eq!(status_access(&f, 0x1000_3064, 4, Some(0xffff_fff2), &mut lines), Some((Answer::Done(0), false)));
        assert_eq!((f.page().interrupt_status[2], lines.as_slice()), (0, &[(2, false)][..]));
        // An acknowledgement of nothing set changes nothing.
        assert_eq!(status_access(&f, 0x1000_3064, 4, Some(1), &mut lines), Some((Answer::Done(0), false)));
        assert_eq!(lines.len(), 1);
        // No slot, no posted entry, nothing for dom0.
        assert_eq!((f.page().slots[0].state, f.page().posted_head), (STATE_FREE, 0));
        assert_eq!(f.server.stats().requests, 0);
        assert_eq!(f.server.stats().status, 4);
        // Other shapes: InterruptStatus is read-only, InterruptACK write-only, both 4 bytes.
        f.page().interrupt_status[2] = 1;
        for (addr, size, write) in [(0x1000_3060, 4, Some(0)), (0x1000_3060, 2, None), (0x1000_3064, 4, None), (0x1000_3064, 2, Some(1)), (0x1000_3061, 1, None)] {
            assert_eq!(status_access(&f, addr, size, write, &mut lines), Some((Answer::Done(0), false)), "{addr:#x}/{size}");
        }
        assert_eq!((f.page().interrupt_status[2], lines.len()), (1, 1));
        // Outside the 8 bytes: not the range's.
        assert_eq!(status_access(&f, 0x1000_3068, 4, None, &mut lines), None);
    }

    /// The device model sets a bit (and then raises the line) while the
    /// guest's acknowledgement is lowering it: the word read again after the
    /// lowering finds the bit and raises the line again.
    #[test]
    fn a_bit_set_while_the_line_is_lowered_raises_it_again() {
        let f = with_status();
        let page = f.page;
        // SAFETY: the test is the device model; the page lives as long as `f`.
        unsafe { (*page).interrupt_status[2] = 1 };
        let mut lines = Vec::new();
        let r = f.server.access(0, KIND_MMIO, 0x1000_3064, 4, Some(1), 0, &mut |d, l| {
            lines.push((d, l));
            if !l {
                // SAFETY: as above; what the device model does between the two.
                unsafe { AtomicU32::from_ptr(addr_of_mut!((*page).interrupt_status[2])).fetch_or(1, Ordering::SeqCst) };
            }
        });
        assert_eq!(r, Some((Answer::Done(0), false)));
        assert_eq!(lines, [(2, false), (2, true)]);
    }

    #[test]
    fn status_ranges_are_refused_past_the_devices_and_over_other_ranges() {
        let f = with_status();
        assert_eq!(f.server.add_status_range(8, 0x1000_9060, |_, _| false), Err(Error::Inval));
        // Inside a forwarded range, or the same pair twice.
        assert_eq!(f.server.add_status_range(0, 0x1000_0060, |_, _| false), Err(Error::Busy));
        assert_eq!(f.server.add_status_range(2, 0x1000_3060, |_, _| false), Err(Error::Busy));
        assert_eq!(f.server.add_status_range(3, 0x1000_4060, |_, _| true), Err(Error::Busy));
        // Torn down: reads all ones as every range of a dead device model, no line.
        // SAFETY: forgets the page (the fixture frees it).
        unsafe { f.server.setup(None) }.unwrap();
        let mut lines = Vec::new();
        assert_eq!(status_access(&f, 0x1000_3060, 4, None, &mut lines), Some((Answer::Done(0xffff_ffff), false)));
        assert_eq!(status_access(&f, 0x1000_3064, 4, Some(1), &mut lines), Some((Answer::Done(0), false)));
        assert!(lines.is_empty());
    }

    /// A notification's round trip is timed to dom0's next raise and to the
    /// guest's next InterruptStatus read; later notifications before that read
    /// belong to the same trip.
    #[test]
    fn round_trips_from_a_notification_are_timed() {
        let f = with_status();
        let mut lines = Vec::new();
        let post = |now| f.server.access(0, KIND_MMIO, 0x1000_1000, 4, Some(0), now, &mut |_, _| {});
        assert_eq!(post(100).map(|(a, _)| a), Some(Answer::Done(0)));
        assert_eq!(post(150).map(|(a, _)| a), Some(Answer::Done(0)));
        f.server.line_raised(400);
        f.server.line_raised(450);
        assert!(f.server.access(0, KIND_MMIO, 0x1000_3060, 4, None, 1000, &mut |d, l| lines.push((d, l))).is_some());
        let s = f.server.stats();
        assert_eq!((s.to_line, s.to_line_ns, s.to_status, s.to_status_ns), (1, 300, 1, 900));
        // A raise or a status read with no notification before it times nothing.
        f.server.line_raised(2000);
        assert!(f.server.access(0, KIND_MMIO, 0x1000_3060, 4, None, 3000, &mut |d, l| lines.push((d, l))).is_some());
        assert_eq!(f.server.stats().to_line, 1);
        assert_eq!(f.server.stats().to_status, 1);
    }
}
