//! The device model's side of I/O requests (ABI 1.6, docs/hypercalls.md "I/O requests"): the
//! page an ioreq fd of `/dev/oxen` maps (`oxen_abi::IoreqPage`), and one round of serving it.
//!
//! The hypervisor writes requests into the page; this side reads them, asks an [`IoDevice`] and
//! writes the answers. Each round first drains the posted-write ring (so a vCPU's posted writes
//! reach the device before that vCPU's later accesses, which wait in its slot), then answers every
//! `READY` slot: the value, then `DONE`, then the caller's `IOREQ_DONE` for that vCPU.
//!
//! What the hypervisor wrote is trusted no more than it must be: a slot's size outside 1/2/4/8
//! is answered with all ones without reaching the device, and the ring is read up to the head
//! read once, at most one ring's worth.
//!
//! [`mmio::MmioTransport`](crate::mmio::MmioTransport) sits behind [`IoDevice`] by address
//! range; `ioreq-test.c` in `dom0-bootstrap/kmod/` is the C device model of the system tests.

use core::ptr::{addr_of, addr_of_mut, NonNull};
use core::sync::atomic::{fence, Ordering};
use oxen_abi::ioreq::{DIR_WRITE, POSTED_ENTRIES, STATE_DONE, STATE_READY};
use oxen_abi::{IoreqPage, MAX_VCPUS};

/// An access forwarded from a domU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// `oxen_abi::ioreq::KIND_MMIO` or `KIND_PIO`.
    pub kind: u8,
    /// Guest-physical address or port.
    pub addr: u64,
    /// 1, 2, 4 or 8 bytes.
    pub size: u8,
    /// The vCPU that made it.
    pub vcpu: u8,
}

/// What answers the accesses of a domain's forwarded ranges.
pub trait IoDevice {
    /// A read: the low `size` bytes of the result count.
    fn read(&mut self, access: Access) -> u64;
    /// A write (also every posted write, in order).
    fn write(&mut self, access: Access, value: u64);
}

/// What one [`Page::serve`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Posted writes taken from the ring.
    pub posted: u32,
    /// Slots answered (bit i: vCPU i), for `IOREQ_DONE`.
    pub answered: u8,
}

/// The mapped page.
pub struct Page {
    page: NonNull<IoreqPage>,
}

// SAFETY: the page is plain shared memory; `Page` only hands out volatile accesses.
unsafe impl Send for Page {}

macro_rules! get {
    ($p:expr, $($field:tt)+) => {
        // SAFETY: the page is mapped while `Page` lives (`Page::new`); the place is inside it.
        unsafe { core::ptr::read_volatile(addr_of!((*$p.page.as_ptr()).$($field)+)) }
    };
}

macro_rules! put {
    ($p:expr, $v:expr => $($field:tt)+) => {{
        let v = $v;
        // SAFETY: as for `get!`.
        unsafe { core::ptr::write_volatile(addr_of_mut!((*$p.page.as_ptr()).$($field)+), v) }
    }};
}

fn mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

impl Page {
    /// # Safety
    /// `page` must point to an `IoreqPage` (an ioreq fd's mapping) that stays mapped while the
    /// `Page` lives, and nothing else in this process may write it.
    pub unsafe fn new(page: NonNull<IoreqPage>) -> Self {
        Self { page }
    }

    /// Hands the ring's writes to `dev`; returns how many.
    pub fn drain(&self, dev: &mut impl IoDevice) -> u32 {
        let head = get!(self, posted_head);
        fence(Ordering::Acquire);
        let mut tail = get!(self, posted_tail);
        // A head more than a ring ahead is not the hypervisor's: take one ring's worth.
        let n = head.wrapping_sub(tail).min(POSTED_ENTRIES);
        for _ in 0..n {
            let i = (tail % POSTED_ENTRIES) as usize;
            let size = get!(self, posted[i].size);
            let access = Access { kind: get!(self, posted[i].kind), addr: get!(self, posted[i].addr), size, vcpu: get!(self, posted[i].vcpu) };
            let value = get!(self, posted[i].data) & mask(size);
            if matches!(size, 1 | 2 | 4 | 8) {
                dev.write(access, value);
            }
            tail = tail.wrapping_add(1);
        }
        fence(Ordering::Release);
        put!(self, tail => posted_tail);
        n
    }

    /// One round: the ring, then every `READY` slot. The caller then calls `IOREQ_DONE` for each
    /// vCPU in `answered`.
    pub fn serve(&self, dev: &mut impl IoDevice) -> Served {
        let mut served = Served { posted: self.drain(dev), answered: 0 };
        for v in 0..MAX_VCPUS as usize {
            if get!(self, slots[v].state) != STATE_READY {
                continue;
            }
            fence(Ordering::Acquire);
            // Posted writes that came before this request go first.
            served.posted += self.drain(dev);
            let size = get!(self, slots[v].size);
            let access = Access { kind: get!(self, slots[v].kind), addr: get!(self, slots[v].addr), size, vcpu: v as u8 };
            let write = get!(self, slots[v].dir) == DIR_WRITE;
            let answer = match (matches!(size, 1 | 2 | 4 | 8), write) {
                (false, _) => u64::MAX,
                (true, true) => {
                    dev.write(access, get!(self, slots[v].data) & mask(size));
                    0
                }
                (true, false) => dev.read(access) & mask(size),
            };
            put!(self, answer => slots[v].data);
            fence(Ordering::Release);
            put!(self, STATE_DONE => slots[v].state);
            served.answered |= 1 << v;
        }
        served
    }

    /// Whether there is anything to serve (what `poll` on the fd reports).
    pub fn pending(&self) -> bool {
        get!(self, posted_head) != get!(self, posted_tail)
            || (0..MAX_VCPUS as usize).any(|v| get!(self, slots[v].state) == STATE_READY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxen_abi::ioreq::{DIR_READ, KIND_MMIO, KIND_PIO, STATE_FREE};

    /// Records what it is given; reads answer the address plus junk above any size.
    #[derive(Default)]
    struct Recorder {
        log: Vec<(Access, Option<u64>)>,
    }

    impl IoDevice for Recorder {
        fn read(&mut self, a: Access) -> u64 {
            self.log.push((a, None));
            0xabcd_0000_0000_0000 | a.addr
        }
        fn write(&mut self, a: Access, v: u64) {
            self.log.push((a, Some(v)));
        }
    }

    /// The hypervisor's side, as the tests play it.
    struct Shared(Box<IoreqPage>);

    impl Shared {
        fn new() -> Self {
            // SAFETY: all-zero bytes are a valid page (integers only).
            Self(Box::new(unsafe { core::mem::zeroed() }))
        }
        fn page(&mut self) -> Page {
            // SAFETY: the box outlives the `Page` in each test; one thread.
            unsafe { Page::new(NonNull::from(&mut *self.0)) }
        }
        fn request(&mut self, v: usize, kind: u8, dir: u8, size: u8, addr: u64, data: u64) {
            let s = &mut self.0.slots[v];
            (s.kind, s.dir, s.size, s.addr, s.data, s.state) = (kind, dir, size, addr, data, STATE_READY);
        }
        fn post(&mut self, addr: u64, data: u64) {
            let i = (self.0.posted_head % POSTED_ENTRIES) as usize;
            let e = &mut self.0.posted[i];
            (e.kind, e.size, e.vcpu, e.addr, e.data) = (KIND_MMIO, 4, 1, addr, data);
            self.0.posted_head = self.0.posted_head.wrapping_add(1);
        }
    }

    #[test]
    fn reads_and_writes_are_answered_and_marked_done() {
        let mut sh = Shared::new();
        sh.request(0, KIND_MMIO, DIR_READ, 2, 0x1000, 0);
        sh.request(3, KIND_PIO, DIR_WRITE, 1, 0x60, 0x1ff);
        let p = sh.page();
        assert!(p.pending());
        let mut dev = Recorder::default();
        assert_eq!(p.serve(&mut dev), Served { posted: 0, answered: 0b1001 });
        assert!(!p.pending());
        assert_eq!(sh.0.slots[0].state, STATE_DONE);
        assert_eq!(sh.0.slots[0].data, 0x1000, "masked to the read's size");
        assert_eq!(sh.0.slots[3].state, STATE_DONE);
        let write = Access { kind: KIND_PIO, addr: 0x60, size: 1, vcpu: 3 };
        assert_eq!(dev.log[1], (write, Some(0xff)));
        // Slots not READY are left alone.
        assert_eq!(sh.0.slots[1].state, STATE_FREE);
    }

    #[test]
    fn posted_writes_come_before_the_request_that_follows_them() {
        let mut sh = Shared::new();
        sh.post(0x2000, 1);
        sh.post(0x2004, 2);
        sh.request(1, KIND_MMIO, DIR_READ, 4, 0x2ff0, 0);
        let p = sh.page();
        let mut dev = Recorder::default();
        assert_eq!(p.serve(&mut dev), Served { posted: 2, answered: 0b10 });
        let order: Vec<_> = dev.log.iter().map(|(a, v)| (a.addr, *v)).collect();
        assert_eq!(order, [(0x2000, Some(1)), (0x2004, Some(2)), (0x2ff0, None)]);
        assert_eq!(sh.0.posted_tail, 2);
    }

    #[test]
    fn the_ring_wraps() {
        let mut sh = Shared::new();
        sh.0.posted_head = u32::MAX - 1;
        sh.0.posted_tail = u32::MAX - 1;
        for i in 0..4 {
            sh.post(0x3000, i);
        }
        let p = sh.page();
        let mut dev = Recorder::default();
        assert_eq!(p.drain(&mut dev), 4);
        assert_eq!(dev.log.iter().map(|(_, v)| v.unwrap()).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(sh.0.posted_tail, 2);
    }

    #[test]
    fn nonsense_sizes_and_heads_are_bounded() {
        let mut sh = Shared::new();
        sh.request(2, KIND_MMIO, DIR_READ, 3, 0x1000, 0);
        sh.0.posted_head = 5000;
        let p = sh.page();
        let mut dev = Recorder::default();
        let served = p.serve(&mut dev);
        // One ring's worth per drain: the round's and the one before the slot.
        assert_eq!(served.posted, 2 * POSTED_ENTRIES);
        assert_eq!(sh.0.slots[2].data, u64::MAX);
        // Neither the size-3 read nor the ring's size-0 entries reached the device.
        assert!(dev.log.is_empty());
    }
}
