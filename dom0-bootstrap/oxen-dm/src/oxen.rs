//! `/dev/oxen` for the device model: the hypercalls it makes (`IOCTL_HYPERCALL`: `GET_INFO`,
//! `IRQ_LINE`), its ioreq fd (`IOCTL_IOREQ_OPEN`, the page's mapping, `IOCTL_IOREQ_RANGE`,
//! `IOCTL_IOREQ_DONE`), the stop signals and the network backends' descriptors, as the [`Host`]
//! the serving loop runs on.
//!
//! oxl has its own copy of the hypercall ioctl (`oxl/src/device.rs`); this one is the few lines
//! the device model needs, so that it does not depend on oxl.

use std::fs::File;
use std::io;
use std::sync::atomic::AtomicU32;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::time::Duration;

use oxen_abi::{
    domctl, ioreq, nr, DomainInfo, DomainRef, HypercallIoctl, IoreqDone, IoreqPage, IoreqRange, IrqLine, Pod,
    DEVICE_PATH, IOCTL_HYPERCALL, IOCTL_IOREQ_DONE, IOCTL_IOREQ_OPEN, IOCTL_IOREQ_RANGE,
};

use crate::serve::{Host, Wake, Watch};

/// An OS error's text without Rust's " (os error N)" suffix, for the log.
pub fn describe(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

/// `/dev/oxen`, opened read-write (root only).
pub fn open_device() -> io::Result<File> {
    File::options().read(true).write(true).open(DEVICE_PATH)
}

/// `ioctl(fd, req, arg)`; the errno as an error.
///
/// # Safety
/// `arg` must be what `req`'s size field says the driver reads and writes.
unsafe fn ioctl<T>(fd: &impl AsRawFd, req: u64, arg: *mut T) -> io::Result<i32> {
    // SAFETY: the caller's promise.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as libc::Ioctl, arg) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// One hypercall through `/dev/oxen`: `arg` in and out, `buf` out. Returns RAX.
pub fn hypercall(dev: &File, nr: u64, cmd: u64, arg: &mut [u8], buf: &mut [u8]) -> io::Result<u64> {
    let area = |s: &mut [u8]| if s.is_empty() { (0, 0) } else { (s.as_mut_ptr() as u64, s.len() as u64) };
    let (arg_addr, arg_len) = area(arg);
    let (buf_addr, buf_len) = area(buf);
    let mut req = HypercallIoctl { nr, cmd, arg: arg_addr, arg_len, buf: buf_addr, buf_len, result: 0 };
    // SAFETY: `req` is the `HypercallIoctl` IOCTL_HYPERCALL's size describes; the driver reads
    // and writes at most `arg_len`/`buf_len` bytes at `arg`/`buf`, the two slices borrowed
    // mutably for the call.
    unsafe { ioctl(dev, IOCTL_HYPERCALL, &mut req) }?;
    if req.result < 0 {
        return Err(io::Error::from_raw_os_error(i32::try_from(-req.result).unwrap_or(libc::EIO)));
    }
    Ok(req.result as u64)
}

/// `GET_INFO`; `None` when there is no such domain (`ENOENT`).
pub fn domain_info(dev: &File, domid: u32) -> io::Result<Option<DomainInfo>> {
    let mut arg = DomainRef { domid, _pad: 0 }.as_bytes().to_vec();
    let mut buf = [0u8; size_of::<DomainInfo>()];
    match hypercall(dev, nr::DOMCTL, domctl::GET_INFO, &mut arg, &mut buf) {
        Ok(_) => Ok(DomainInfo::read_from(&buf)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A domain's I/O server as dom0 holds it: the ioreq fd and its page, mapped for the life of
/// the process. Closing the fd (at exit) tears the server down: the domain's windows then
/// read all ones.
pub struct Ioreq {
    fd: OwnedFd,
    page: NonNull<IoreqPage>,
}

impl Ioreq {
    /// `IOCTL_IOREQ_OPEN` for `domid`, and the page's mapping.
    pub fn open(dev: &File, domid: u32) -> io::Result<Self> {
        let mut r = DomainRef { domid, _pad: 0 };
        // SAFETY: IOCTL_IOREQ_OPEN reads one `DomainRef`; it returns a new descriptor.
        let fd = unsafe { ioctl(dev, IOCTL_IOREQ_OPEN, &mut r) }?;
        // SAFETY: the driver just gave us `fd`; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a fresh shared mapping of the fd's one page (the driver refuses any other
        // length or offset); the kernel picks the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size_of::<IoreqPage>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let page = NonNull::new(p.cast()).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidData))?;
        Ok(Self { fd, page })
    }

    /// The page for serving.
    pub fn page(&self) -> crate::ioreq::Page {
        // SAFETY: the mapping is never undone (it lives until the process ends), and only the
        // one serving loop writes it.
        unsafe { crate::ioreq::Page::new(self.page) }
    }

    /// The interrupt-status word in the page (`IoreqPage::interrupt_status`, ABI 1.10) of the
    /// domain's declared device whose window is at `base` (the i-th at `DEVICE_WINDOW + i *
    /// DEVICE_STRIDE`); `None` for a base that is no device's.
    pub fn interrupt_status(&self, base: u64) -> Option<&'static AtomicU32> {
        let offset = base.checked_sub(oxen_abi::DEVICE_WINDOW)?;
        let index = usize::try_from(offset / oxen_abi::DEVICE_STRIDE).ok()?;
        if !offset.is_multiple_of(oxen_abi::DEVICE_STRIDE) || index >= oxen_abi::MAX_DEVICES as usize {
            return None;
        }
        // SAFETY: an aligned u32 inside the page, whose mapping is never undone (it lives until
        // the process ends, see `page`); the hypervisor changes it only atomically.
        Some(unsafe { AtomicU32::from_ptr(std::ptr::addr_of_mut!((*self.page.as_ptr()).interrupt_status[index])) })
    }

    /// `IOCTL_IOREQ_RANGE` with `FLAG_INTERRUPT_STATUS`: the hypervisor answers the InterruptStatus
    /// and InterruptACK registers at `start` (8 bytes) of a declared device from the page.
    pub fn add_interrupt_status(&self, start: u64) -> io::Result<()> {
        let flags = ioreq::FLAG_INTERRUPT_STATUS;
        let mut r = IoreqRange { domid: 0, kind: u32::from(ioreq::KIND_MMIO), flags, _pad: 0, start, len: 8 };
        // SAFETY: IOCTL_IOREQ_RANGE reads one `IoreqRange`.
        unsafe { ioctl(&self.fd, IOCTL_IOREQ_RANGE, &mut r) }.map(drop)
    }

    /// `IOCTL_IOREQ_RANGE`: forwards `[start, start + len)` of guest-physical space here.
    pub fn add_mmio(&self, start: u64, len: u64, posted: bool) -> io::Result<()> {
        let flags = if posted { ioreq::FLAG_POSTED_WRITES } else { 0 };
        let mut r = IoreqRange { domid: 0, kind: u32::from(ioreq::KIND_MMIO), flags, _pad: 0, start, len };
        // SAFETY: IOCTL_IOREQ_RANGE reads one `IoreqRange`.
        unsafe { ioctl(&self.fd, IOCTL_IOREQ_RANGE, &mut r) }.map(drop)
    }
}

/// The loop's signals as a descriptor: SIGTERM and SIGINT (stop), `serve::SIG_FREEZE` and
/// `serve::SIG_THAW` (oxl save), `serve::sig_dirty()` (oxl migrate) are blocked (from the call on) and read from it, so the loop's
/// `poll` sees them.
pub fn stop_signals() -> io::Result<OwnedFd> {
    // SAFETY: a zeroed sigset_t is a valid argument to sigemptyset, which initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live sigset_t; the calls only write it and the thread's mask.
    let fd = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, crate::serve::SIG_FREEZE);
        libc::sigaddset(&mut set, crate::serve::SIG_THAW);
        libc::sigaddset(&mut set, crate::serve::sig_dirty());
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        libc::signalfd(-1, &set, libc::SFD_CLOEXEC)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor, ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The real [`Host`].
pub struct Oxen {
    pub dev: File,
    pub ioreq: Ioreq,
    pub signals: OwnedFd,
    pub domid: u32,
    /// `poll`'s array, kept between waits.
    polls: Vec<libc::pollfd>,
}

impl Oxen {
    pub fn new(dev: File, ioreq: Ioreq, signals: OwnedFd, domid: u32) -> Self {
        Self { dev, ioreq, signals, domid, polls: Vec::new() }
    }

    /// The signal the descriptor has (readable): its number, or SIGTERM if the read fails.
    fn read_signal(&self) -> i32 {
        // SAFETY: a zeroed signalfd_siginfo is valid; read fills at most its size.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        // SAFETY: reads into `info`, which is that many bytes.
        let r = unsafe { libc::read(self.signals.as_raw_fd(), (&raw mut info).cast(), size_of::<libc::signalfd_siginfo>()) };
        if r == size_of::<libc::signalfd_siginfo>() as isize {
            info.ssi_signo as i32
        } else {
            libc::SIGTERM
        }
    }
}

impl Host for Oxen {
    fn wait_signal(&mut self, timeout: Duration) -> io::Result<Wake> {
        let mut p = libc::pollfd { fd: self.signals.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one pollfd that lives across the call.
        let n = unsafe { libc::poll(&mut p, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(Wake::Timeout) } else { Err(e) };
        }
        if p.revents & libc::POLLIN == 0 {
            return Ok(Wake::Timeout);
        }
        Ok(Wake::Signal(self.read_signal()))
    }

    fn wait(&mut self, timeout: Duration, backends: &mut [Watch]) -> io::Result<Wake> {
        let fds = &mut self.polls;
        fds.clear();
        fds.push(libc::pollfd { fd: self.ioreq.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        fds.push(libc::pollfd { fd: self.signals.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        fds.extend(backends.iter().map(|w| libc::pollfd { fd: w.fd, events: libc::POLLIN, revents: 0 }));
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `fds` is a live array of `fds.len()` pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(Wake::Timeout) } else { Err(e) };
        }
        if fds[1].revents & libc::POLLIN != 0 {
            return Ok(Wake::Signal(self.read_signal()));
        }
        // A backend in error (POLLERR, POLLHUP) counts as ready: its device finds out reading and
        // stops waiting on it, so it cannot keep the loop spinning.
        for (w, p) in backends.iter_mut().zip(&fds[2..]) {
            w.ready = p.revents != 0;
        }
        // POLLERR/POLLHUP on the ioreq fd would be the driver's: serving finds nothing then.
        Ok(match (n, fds[0].revents) {
            (0, _) => Wake::Timeout,
            (_, 0) => Wake::Backends,
            _ => Wake::Ioreq,
        })
    }

    fn ioreq_done(&mut self, vcpu: u32) -> io::Result<()> {
        let mut d = IoreqDone { domid: 0, vcpu };
        // SAFETY: IOCTL_IOREQ_DONE reads one `IoreqDone`.
        unsafe { ioctl(&self.ioreq.fd, IOCTL_IOREQ_DONE, &mut d) }.map(drop)
    }

    fn irq_line(&mut self, gsi: u32, level: bool) -> io::Result<()> {
        let mut a = IrqLine { domid: self.domid, gsi, level: u32::from(level), _pad: 0 }.as_bytes().to_vec();
        hypercall(&self.dev, nr::DOMCTL, domctl::IRQ_LINE, &mut a, &mut []).map(drop)
    }

    fn domain_info(&mut self) -> io::Result<Option<DomainInfo>> {
        domain_info(&self.dev, self.domid)
    }
}
