//! Reading the hypervisor's byte rings: a domain's console (`console`) and the
//! hypervisor's own log (`dmesg`). A ring keeps the last bytes written and
//! counts every byte ever written, so a reader that falls behind learns how
//! much it missed (`lost`).

use std::io::Write;
use std::time::Duration;

use oxen_abi::{domctl, DomainInfo, Error, CONSOLE_INPUT_MAX, DOMCTL_BUF_MAX};

use crate::domain::{call_failed, dom_failed};
use crate::hv::{self, CallError, Hypervisor};
use crate::show::label;
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

/// Piped input (not a terminal): once it ended, or brought Ctrl-], output is
/// still shown until it has been quiet for `QUIET_POLLS` looks (1 s) in a
/// row, so the domain's answer to the last line is seen ...
pub const QUIET_POLLS: u32 = 20;
/// ... but for at most `LINGER_POLLS` looks (10 s): a domain that never goes
/// quiet does not keep a script attached.
pub const LINGER_POLLS: u32 = 200;
/// Input read but not yet taken by the domain, at most: a pipe is not read
/// further meanwhile, a terminal's further keys are dropped (and said so).
pub const PENDING_MAX: usize = 64 * 1024;

/// Why `console` returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Detached {
    /// Ctrl-] was pressed.
    Key,
    /// The domain is gone.
    Gone,
    /// SIGINT, SIGTERM or SIGHUP.
    Signal,
    /// Piped input ended (or brought Ctrl-]) and the output went quiet.
    InputEnded,
}

/// Copies a domain's console output to `out`, from the oldest byte the ring
/// still keeps, until Ctrl-] arrives on `keys` or the domain is gone. With
/// `input` (the hypervisor has console input), what comes from `keys` goes to
/// the domain's console input, as fast as the domain takes it.
pub fn console(
    hv: &mut dyn Hypervisor,
    d: &DomainInfo,
    keys: &mut dyn Input,
    out: &mut dyn Write,
    mut input: bool,
) -> Result<Detached, String> {
    let mut offset = 0;
    let mut buf = vec![0u8; 16 * 1024];
    let tty = keys.is_terminal();
    // Read, not yet taken by the domain.
    let mut pending: Vec<u8> = Vec::new();
    let mut dropped = 0usize;
    // Piped input brought Ctrl-]: nothing after it is read.
    let mut pipe_stopped = false;
    let (mut quiet, mut lingered) = (0u32, 0u32);
    loop {
        let mut shown = 0;
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
            shown += c.len;
            offset = c.next;
            if c.len < buf.len() {
                break;
            }
        }
        out.flush().map_err(write_failed)?;
        if input && !pending.is_empty() {
            match send(hv, d, &mut pending) {
                Ok(()) => {}
                Err(CallError::Hv(Error::NoEnt)) => return Ok(Detached::Gone),
                Err(CallError::Hv(Error::Busy)) => {
                    // Ended (kept by on_* = "preserve") or dying: its output
                    // can still be read, input goes nowhere.
                    write!(
                        out,
                        "\r\n[oxl: domain {} takes no console input any more (it has ended): {} bytes not sent]\r\n",
                        label(d),
                        pending.len()
                    )
                    .map_err(write_failed)?;
                    out.flush().map_err(write_failed)?;
                    pending.clear();
                    input = false;
                }
                Err(e) => return Err(dom_failed(d, "send console input to", e)),
            }
        }
        // Piped input ended or brought Ctrl-]: counting looks until detaching.
        if pipe_stopped || keys.ended() {
            lingered += 1;
            quiet = if shown > 0 { 0 } else { quiet + 1 };
            let sent = pending.is_empty() || !input;
            if (sent && quiet >= QUIET_POLLS) || lingered >= LINGER_POLLS {
                if !pending.is_empty() {
                    write!(
                        out,
                        "\r\n[oxl: {} bytes of input not sent: domain {} did not read them]\r\n",
                        pending.len(),
                        label(d)
                    )
                    .map_err(write_failed)?;
                    out.flush().map_err(write_failed)?;
                }
                return Ok(Detached::InputEnded);
            }
        }
        // A script's input waits while the domain has not taken what came
        // before; a person's keys are read always (Ctrl-] must work).
        let typed = if !tty && (pipe_stopped || pending.len() >= PENDING_MAX) {
            hv.sleep(CONSOLE_POLL);
            Vec::new()
        } else {
            keys.wait(CONSOLE_POLL)
                .map_err(|e| format!("reading the keyboard: {e}"))?
        };
        let (keep, detach) = match typed.iter().position(|&b| b == DETACH) {
            Some(at) => (&typed[..at], true),
            None => (&typed[..], false),
        };
        if input {
            let room = PENDING_MAX.saturating_sub(pending.len());
            if keep.len() > room && dropped == 0 {
                write!(
                    out,
                    "\r\n[oxl: domain {} is not reading its console input: what you type is dropped]\r\n",
                    label(d)
                )
                .map_err(write_failed)?;
            }
            dropped += keep.len().saturating_sub(room);
            pending.extend_from_slice(&keep[..keep.len().min(room)]);
        }
        if detach {
            if tty {
                // What was typed before Ctrl-] still goes, if the domain takes it now.
                if input && !pending.is_empty() {
                    let _ = send(hv, d, &mut pending);
                }
                return Ok(Detached::Key);
            }
            pipe_stopped = true;
        }
        if stop_requested() {
            return Ok(Detached::Signal);
        }
    }
}

/// Sends what the domain takes of `pending` now (its queue may be full) and
/// removes that from the front.
fn send(hv: &mut dyn Hypervisor, d: &DomainInfo, pending: &mut Vec<u8>) -> Result<(), CallError> {
    while !pending.is_empty() {
        let n = pending.len().min(CONSOLE_INPUT_MAX as usize);
        let took = hv::console_input(hv, d.domid, &pending[..n])?;
        pending.drain(..took);
        if took < n {
            break;
        }
    }
    Ok(())
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
