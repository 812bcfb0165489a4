//! `/dev/oxen`: the oxen kernel module's device, one ioctl per hypercall.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd as _, RawFd};

use oxen_abi::{event, EventWaitIoctl, HypercallIoctl, DEVICE_PATH, IOCTL_EVENT_WAIT, IOCTL_HYPERCALL};

use crate::hv::{os_error, CallError, CallResult, Hypervisor};

pub struct Device {
    file: File,
    /// `IOCTL_EVENT_WAIT` failed once (no event line): not asked again.
    no_events: bool,
}

impl Device {
    /// Opens the device; the error says what to do about it.
    pub fn open() -> Result<Self, String> {
        match OpenOptions::new().read(true).write(true).open(DEVICE_PATH) {
            Ok(file) => Ok(Self { file, no_events: false }),
            Err(e) => Err(open_error(&e)),
        }
    }
}

impl Device {
    /// Never uses the event line: `console` polls as on a hypervisor without
    /// one (`OXL_NO_EVENTS=1`, to compare the two).
    pub fn without_events(mut self) -> Self {
        self.no_events = true;
        self
    }
}

fn open_error(e: &io::Error) -> String {
    let text = os_error(e);
    match e.raw_os_error() {
        Some(libc::ENOENT) => format!(
            "{DEVICE_PATH} not found: is the oxen module loaded? (oxl runs in dom0 under Oxen)"
        ),
        Some(libc::EACCES | libc::EPERM) => {
            format!("cannot open {DEVICE_PATH}: {text} (run as root)")
        }
        Some(libc::ENXIO | libc::ENODEV) => {
            format!("cannot open {DEVICE_PATH}: {text} (is this dom0, running under Oxen?)")
        }
        _ => format!("cannot open {DEVICE_PATH}: {text}"),
    }
}

/// A slice's address and length for the ioctl (0/0 when empty).
fn area(s: &mut [u8]) -> (u64, u64) {
    if s.is_empty() {
        (0, 0)
    } else {
        (s.as_mut_ptr() as u64, s.len() as u64)
    }
}

impl Hypervisor for Device {
    fn console_events(&mut self) -> Option<RawFd> {
        if self.no_events {
            return None;
        }
        // `count` no count can equal: returns at once, having subscribed the
        // file and noted the count poll(2) compares with (docs/hypercalls.md,
        // "dom0's event line").
        let mut w = EventWaitIoctl { mask: event::CONSOLE, count: u64::MAX, timeout_ms: 0 };
        // SAFETY: `w` is the `EventWaitIoctl` IOCTL_EVENT_WAIT's size field
        // describes; the driver reads and writes only it.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), IOCTL_EVENT_WAIT as libc::Ioctl, &mut w as *mut EventWaitIoctl) };
        if r < 0 {
            self.no_events = true;
            return None;
        }
        Some(self.file.as_raw_fd())
    }

    fn call(&mut self, nr: u64, cmd: u64, arg: &mut [u8], buf: &mut [u8]) -> CallResult<u64> {
        let (arg_addr, arg_len) = area(arg);
        let (buf_addr, buf_len) = area(buf);
        let mut req = HypercallIoctl {
            nr,
            cmd,
            arg: arg_addr,
            arg_len,
            buf: buf_addr,
            buf_len,
            result: 0,
        };
        // SAFETY: `req` is the `HypercallIoctl` that IOCTL_HYPERCALL's size field
        // describes; the driver reads and writes at most `arg_len`/`buf_len` bytes
        // at `arg`/`buf`, which point into the two slices borrowed mutably for
        // the whole call.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                IOCTL_HYPERCALL as libc::Ioctl,
                &mut req as *mut HypercallIoctl,
            )
        };
        if r < 0 {
            let errno = io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            return Err(CallError::from_errno(errno));
        }
        if req.result < 0 {
            // The driver turns these into errno; accept them here as well.
            return Err(CallError::from_errno((-req.result) as i32));
        }
        Ok(req.result as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_errors_say_what_to_do() {
        let e = |errno| open_error(&io::Error::from_raw_os_error(errno));
        assert_eq!(
            e(libc::ENOENT),
            "/dev/oxen not found: is the oxen module loaded? (oxl runs in dom0 under Oxen)"
        );
        assert_eq!(
            e(libc::EACCES),
            "cannot open /dev/oxen: Permission denied (run as root)"
        );
        assert_eq!(
            e(libc::ENXIO),
            "cannot open /dev/oxen: No such device or address (is this dom0, running under Oxen?)"
        );
        assert_eq!(
            e(libc::EBUSY),
            "cannot open /dev/oxen: Device or resource busy"
        );
    }
}
