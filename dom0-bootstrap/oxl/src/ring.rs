//! Reading the hypervisor's byte rings: a domain's console (`console`) and the
//! hypervisor's own log (`dmesg`). A ring keeps the last bytes written and
//! counts every byte ever written, so a reader that falls behind learns how
//! much it missed (`lost`).

use std::io::Write;
use std::time::Duration;

use oxen_abi::{domctl, DomainInfo, Error, DOMCTL_BUF_MAX};

use crate::domain::{call_failed, dom_failed};
use crate::hv::{self, CallError, Hypervisor};
use crate::term::{stop_requested, Input};

/// How often `console` looks for output (about 20 times a second).
pub const CONSOLE_POLL: Duration = Duration::from_millis(50);
/// How often `dmesg --follow` looks.
pub const DMESG_POLL: Duration = Duration::from_millis(250);
/// Ctrl-], the key that detaches from a console (as in xl and telnet).
pub const DETACH: u8 = 0x1d;

pub fn write_failed(e: std::io::Error) -> String {
    format!("writing output: {}", hv::os_error(&e))
}

/// Why `console` returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Detached {
    /// Ctrl-] was pressed.
    Key,
    /// The domain is gone.
    Gone,
    /// SIGINT, SIGTERM or SIGHUP.
    Signal,
}

/// Copies a domain's console output to `out`, from the oldest byte the ring
/// still keeps, until Ctrl-] arrives on `keys` or the domain is gone.
pub fn console(
    hv: &mut dyn Hypervisor,
    d: &DomainInfo,
    keys: &mut dyn Input,
    out: &mut dyn Write,
) -> Result<Detached, String> {
    let mut offset = 0;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        loop {
            let c = match hv::ring_read(hv, domctl::CONSOLE_READ, d.domid, offset, &mut buf) {
                Err(CallError::Hv(Error::NoEnt)) => return Ok(Detached::Gone),
                Err(e) => return Err(dom_failed(d, "read the console of", e)),
                Ok(c) => c,
            };
            // From offset 0, `lost` is only history older than the ring, not a loss.
            if c.lost > 0 && offset > 0 {
                write!(
                    out,
                    "\r\n[oxl: {} bytes of console output lost: the ring wrapped before oxl read them]\r\n",
                    c.lost
                )
                .map_err(write_failed)?;
            }
            out.write_all(&buf[..c.len]).map_err(write_failed)?;
            offset = c.next;
            if c.len < buf.len() {
                break;
            }
        }
        out.flush().map_err(write_failed)?;
        let typed = keys
            .wait(CONSOLE_POLL)
            .map_err(|e| format!("reading the keyboard: {e}"))?;
        if typed.contains(&DETACH) {
            return Ok(Detached::Key);
        }
        if stop_requested() {
            return Ok(Detached::Signal);
        }
    }
}

/// Copies what a domain's console ring holds now to `out` (`console --dump`).
pub fn console_dump(hv: &mut dyn Hypervisor, d: &DomainInfo, out: &mut dyn Write) -> Result<(), String> {
    let mut offset = 0;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let c = hv::ring_read(hv, domctl::CONSOLE_READ, d.domid, offset, &mut buf)
            .map_err(|e| dom_failed(d, "read the console of", e))?;
        out.write_all(&buf[..c.len]).map_err(write_failed)?;
        offset = c.next;
        if c.len < buf.len() {
            return out.flush().map_err(write_failed);
        }
    }
}

/// Prints the hypervisor's log; with `follow`, keeps printing what is added.
pub fn dmesg(hv: &mut dyn Hypervisor, follow: bool, out: &mut dyn Write) -> Result<(), String> {
    let mut offset = 0;
    let mut buf = vec![0u8; DOMCTL_BUF_MAX as usize];
    loop {
        let c = hv::ring_read(hv, domctl::DMESG, 0, offset, &mut buf)
            .map_err(|e| call_failed("read the hypervisor log", e))?;
        if c.lost > 0 && offset > 0 {
            writeln!(
                out,
                "[oxl: {} bytes of the log lost: the ring wrapped before oxl read them]",
                c.lost
            )
            .map_err(write_failed)?;
        }
        out.write_all(&buf[..c.len]).map_err(write_failed)?;
        offset = c.next;
        if c.len < buf.len() {
            if !follow || stop_requested() {
                return out.flush().map_err(write_failed);
            }
            out.flush().map_err(write_failed)?;
            hv.sleep(DMESG_POLL);
        }
    }
}
