//! The warden: what keeps a domU's devices answering when its device model dies (issue 11).
//!
//! `oxen-dm` forks before it serves. The parent is the device model (the process `oxl` records
//! and `oxl destroy` stops); the child, the warden, keeps the ioreq fd open and waits. The two
//! share:
//! - an [`Area`], memory both map, where the device model publishes each device's
//!   [`TransportState`] whenever it changes (after each serving round);
//! - a [`Link`], a pipe the device model writes [`SERVING`] to when it starts serving and
//!   [`ENDING`] to when it ends normally (the domain gone, or a stop signal).
//!
//! If the pipe closes after `SERVING` without `ENDING`, the device model died (killed, crashed):
//! the warden maps the domain's RAM itself, rebuilds each device from its last published state as
//! a [`crate::failed::Failed`] one, and serves them until the domain is gone, so the guest's
//! pending and later requests end with errors instead of waiting for ever, and its vCPUs waiting
//! on a register access are answered. Because the ioreq fd stays open in the warden, the
//! hypervisor's I/O server is not torn down in between.

use std::cell::UnsafeCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::mmio::TransportState;

/// The device model started serving: from now on its end must be announced.
pub const SERVING: u8 = b'S';
/// The device model ends normally: the warden ends too.
pub const ENDING: u8 = b'E';

/// One device's slot: two copies, and the generation saying which is whole. A copy is written
/// only while it is not the published one, so a writer that dies mid-write leaves the last
/// published copy intact.
struct Slot {
    generation: AtomicU64,
    copies: [UnsafeCell<TransportState>; 2],
}

/// Memory shared by the device model and its warden (`MAP_SHARED | MAP_ANONYMOUS`, made before the
/// fork): one [`Slot`] per device, in the device model's order (disks, then vifs).
pub struct Area {
    slots: NonNull<Slot>,
    len: usize,
}

// SAFETY: the area is plain shared memory; a slot's copies are written only by its one publisher
// (the device model's serving thread) and read through `generation`'s Acquire.
unsafe impl Send for Area {}

impl Area {
    /// An area for `devices` devices, shared with any child forked after this call.
    pub fn new(devices: usize) -> io::Result<Self> {
        let bytes = size_of::<Slot>().checked_mul(devices.max(1)).ok_or(io::ErrorKind::InvalidInput)?;
        // SAFETY: a fresh anonymous shared mapping; the kernel picks the address. Zeroed pages
        // are a valid `Slot` array (generation 0: nothing published).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let slots = NonNull::new(p.cast()).ok_or(io::ErrorKind::InvalidData)?;
        Ok(Self { slots, len: devices })
    }

    fn slot(&self, i: usize) -> Option<&Slot> {
        // SAFETY: `i < len` slots were mapped, and the mapping lives as long as `self`.
        (i < self.len).then(|| unsafe { &*self.slots.as_ptr().add(i) })
    }

    /// Publishes device `i`'s state (ignored for an `i` past the area).
    pub fn publish(&self, i: usize, state: &TransportState) {
        let Some(slot) = self.slot(i) else { return };
        let next = slot.generation.load(Ordering::Relaxed).wrapping_add(1);
        // SAFETY: only the publisher writes copies, and never the published one
        // (`generation % 2`); readers read it only after the Release below.
        unsafe { *slot.copies[(next % 2) as usize].get() = *state };
        slot.generation.store(next, Ordering::Release);
    }

    /// Device `i`'s last published state, if any.
    pub fn latest(&self, i: usize) -> Option<TransportState> {
        let slot = self.slot(i)?;
        let g = slot.generation.load(Ordering::Acquire);
        // SAFETY: the published copy is whole (written before the Release that made it so). A
        // torn other copy is never read. Every field is an integer or a bool whose byte was
        // written whole, so any bytes there are a valid value.
        (g != 0).then(|| unsafe { *slot.copies[(g % 2) as usize].get() })
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, with its size; nothing borrows it past `self`.
        unsafe { libc::munmap(self.slots.as_ptr().cast(), size_of::<Slot>() * self.len.max(1)) };
    }
}

/// The pipe between the device model (write end) and its warden (read end).
pub struct Link {
    read: OwnedFd,
    write: OwnedFd,
}

/// What the warden learnt from the pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heard {
    /// The device model started serving.
    Serving,
    /// It ended normally.
    Ending,
    /// The pipe closed: the device model is gone (how, `Serving` before it says).
    Closed,
    /// Nothing yet (the wait timed out, or a signal came: see `signal`).
    Nothing,
}

impl Link {
    pub fn new() -> io::Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: two new descriptors, ours alone.
        Ok(unsafe { Self { read: OwnedFd::from_raw_fd(fds[0]), write: OwnedFd::from_raw_fd(fds[1]) } })
    }

    /// The device model's end (the read end closed in it).
    pub fn model(self) -> Teller {
        Teller(self.write)
    }

    /// The warden's end (the write end closed in it, so that the pipe closes with the model).
    pub fn warden(self) -> Listener {
        Listener(self.read)
    }
}

/// The device model's end of the [`Link`].
pub struct Teller(OwnedFd);

impl Teller {
    /// Tells the warden `what` ([`SERVING`] or [`ENDING`]).
    pub fn tell(&self, what: u8) -> io::Result<()> {
        // SAFETY: writes one byte from `what`.
        let n = unsafe { libc::write(self.0.as_raw_fd(), (&raw const what).cast(), 1) };
        if n == 1 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// The warden's end of the [`Link`].
pub struct Listener(OwnedFd);

impl Listener {
    /// Waits up to `timeout_ms` for word from the device model, or for `signals` (a signalfd) to
    /// be readable (then `Nothing`, and `*signalled` is set).
    pub fn hear(&self, timeout_ms: i32, signals: &impl AsRawFd, signalled: &mut bool) -> io::Result<Heard> {
        let mut fds = [
            libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: signals.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: `fds` is a live array of two pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(Heard::Nothing) } else { Err(e) };
        }
        if fds[1].revents != 0 {
            *signalled = true;
            return Ok(Heard::Nothing);
        }
        if fds[0].revents == 0 {
            return Ok(Heard::Nothing);
        }
        let mut b = 0u8;
        // SAFETY: reads at most one byte into `b`.
        let r = unsafe { libc::read(self.0.as_raw_fd(), (&raw mut b).cast(), 1) };
        Ok(match (r, b) {
            (1, SERVING) => Heard::Serving,
            (1, ENDING) => Heard::Ending,
            (1, _) => Heard::Nothing,
            _ => Heard::Closed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mmio::{QueueState, STATE_CONFIG, STATE_QUEUES};

    fn state(status: u32) -> TransportState {
        TransportState {
            device_type: 2,
            device_features: 1 << 32,
            config: [7; STATE_CONFIG],
            queue_count: 1,
            queues: [QueueState { max_size: 256, size: 128, ready: true, desc: 0x1000, driver: 0x2000, device: 0x3000 };
                STATE_QUEUES],
            device_features_sel: 0,
            driver_features_sel: 1,
            driver_features: 1 << 32,
            driver_features_high: false,
            queue_sel: 0,
            status,
            interrupt_status: 1,
            config_generation: 0,
            activated: true,
        }
    }

    #[test]
    fn the_last_published_state_is_what_a_forked_child_reads() {
        let area = Area::new(2).unwrap();
        assert_eq!(area.latest(0), None);
        area.publish(0, &state(0xf));
        area.publish(0, &state(0x7));
        area.publish(1, &state(0x3));
        area.publish(5, &state(0x1)); // past the area: ignored
        assert_eq!(area.latest(5), None);
        // SAFETY: the child only reads the shared area and exits with what it found.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = area.latest(0) == Some(state(0x7)) && area.latest(1) == Some(state(0x3));
            area.publish(1, &state(0x1));
            // SAFETY: ends the child without running the test harness's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child saw other states");
        // What the child published is seen here: the area is shared, not copied.
        assert_eq!(area.latest(1), Some(state(0x1)));
    }

    #[test]
    fn the_warden_hears_serving_ending_and_a_closed_pipe() {
        let quiet = Link::new().unwrap(); // its read end never becomes readable (the write end lives)
        let mut signalled = false;
        let link = Link::new().unwrap();
        let (r, w) = (link.read, link.write);
        let (listener, teller) = (Listener(r), Teller(w));
        assert_eq!(listener.hear(0, &quiet.read, &mut signalled).unwrap(), Heard::Nothing);
        teller.tell(SERVING).unwrap();
        assert_eq!(listener.hear(100, &quiet.read, &mut signalled).unwrap(), Heard::Serving);
        teller.tell(ENDING).unwrap();
        assert_eq!(listener.hear(100, &quiet.read, &mut signalled).unwrap(), Heard::Ending);
        drop(teller);
        assert_eq!(listener.hear(100, &quiet.read, &mut signalled).unwrap(), Heard::Closed);
        assert!(!signalled);
    }
}
