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

/// How often `console` looks for output when the hypervisor cannot say when
/// there is some (no event line: a hypervisor older than ABI 1.5, or an
/// `oxen.ko` without it): about 20 times a second.
pub const CONSOLE_POLL: Duration = Duration::from_millis(50);
/// With the event line, `console` sleeps in poll(2) until a domU writes to its
/// console or a key comes, but looks at least this often anyway: the domain
/// may have gone (which raises no event).
pub const CONSOLE_IDLE_LOOK: Duration = Duration::from_secs(1);
/// Input the domain's queue refused (full) is offered again this often.
pub const INPUT_RETRY: Duration = Duration::from_millis(50);
/// How often `dmesg --follow` looks.
pub const DMESG_POLL: Duration = Duration::from_millis(250);
/// Ctrl-], the key that detaches from a console (as in xl and telnet).
pub const DETACH: u8 = 0x1d;

pub fn write_failed(e: std::io::Error) -> String {
    format!("writing output: {}", hv::os_error(&e))
}

/// Piped input (not a terminal): once it ended, or brought Ctrl-], output is
/// still shown until it has been quiet for `QUIET` (since the end, or since
/// the last output after it), so the domain's answer to the last line is seen ...
pub const QUIET: Duration = Duration::from_secs(1);
/// ... but for at most `LINGER` after the end: a domain that never goes quiet
/// does not keep a script attached.
pub const LINGER: Duration = Duration::from_secs(10);
/// Input read but not yet taken by the domain, at most: a pipe is not read
/// further meanwhile, a terminal's further keys are dropped (and said so).
pub const PENDING_MAX: usize = 64 * 1024;

/// `console`'s clock work, on the monotonic clock the caller reads
/// (`Hypervisor::now`): when piped input ended, when output last came, so
/// when to detach and how long the next wait may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// When piped input ended (or brought Ctrl-]).
    ended_at: Option<Duration>,
    /// When output was last shown (the start, before any).
    output_at: Duration,
}

impl Timing {
    pub fn new(now: Duration) -> Self {
        Self { ended_at: None, output_at: now }
    }

    /// Output was shown at `now`.
    pub fn output(&mut self, now: Duration) {
        self.output_at = now;
    }

    /// Piped input ended at `now` (the first time counts).
    pub fn input_ended(&mut self, now: Duration) {
        self.ended_at.get_or_insert(now);
    }

    /// Whether to detach: input ended and either everything was `sent` and
    /// the output has been quiet for `QUIET`, or `LINGER` passed.
    pub fn detach(&self, now: Duration, sent: bool) -> bool {
        let Some(end) = self.ended_at else { return false };
        let quiet_since = end.max(self.output_at);
        (sent && now.saturating_sub(quiet_since) >= QUIET) || now.saturating_sub(end) >= LINGER
    }

    /// The longest the next wait may be: until the next look `events` does
    /// not bring (with the event line the idle look, else the poll), input to
    /// offer again (`retry`: not all sent), or a detach deadline, whichever
    /// comes first;
    /// at least 1 ms, so a deadline just passed cannot make oxl spin.
    pub fn timeout(&self, now: Duration, events: bool, retry: bool) -> Duration {
        let mut t = if events { CONSOLE_IDLE_LOOK } else { CONSOLE_POLL };
        if retry {
            t = t.min(INPUT_RETRY);
        }
        if let Some(end) = self.ended_at {
            // The quiet deadline counts once everything is sent (`retry` off).
            if !retry {
                t = t.min((end.max(self.output_at) + QUIET).saturating_sub(now));
            }
            t = t.min((end + LINGER).saturating_sub(now));
        }
        t.max(Duration::from_millis(1))
    }
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
    let mut timing = Timing::new(hv.now());
    loop {
        // Subscribed (again) before reading: output written after the read
        // below makes the wait return at once.
        let events = hv.console_events();
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
        if shown > 0 {
            timing.output(hv.now());
        }
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
        // Piped input ended or brought Ctrl-]: detaching once quiet.
        if pipe_stopped || keys.ended() {
            timing.input_ended(hv.now());
        }
        let sent = pending.is_empty() || !input;
        if timing.detach(hv.now(), sent) {
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
        // A script's input waits while the domain has not taken what came
        // before; a person's keys are read always (Ctrl-] must work).
        let read = tty || !(pipe_stopped || pending.len() >= PENDING_MAX);
        let timeout = timing.timeout(hv.now(), events.is_some(), !sent);
        let typed = keys
            .wait_event(timeout, read, events)
            .map_err(|e| format!("reading the keyboard: {e}"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn timing_waits_long_with_the_event_line_and_short_without() {
        let t = Timing::new(Duration::ZERO);
        // Idle on a terminal: the event line wakes oxl; only the idle look is timed.
        assert_eq!(t.timeout(Duration::from_secs(5), true, false), CONSOLE_IDLE_LOOK);
        assert_eq!(t.timeout(Duration::from_secs(5), false, false), CONSOLE_POLL);
        // Input the domain refused is offered again soon, event line or not.
        assert_eq!(t.timeout(Duration::from_secs(5), true, true), INPUT_RETRY);
        assert!(!t.detach(Duration::from_secs(100), true), "input has not ended");
    }

    #[test]
    fn timing_detaches_when_quiet_after_the_end_or_when_lingering_too_long() {
        let mut t = Timing::new(Duration::ZERO);
        t.output(200 * MS);
        t.input_ended(300 * MS);
        // A later end does not move the first.
        t.input_ended(900 * MS);
        // Quiet since the end (300 ms): the wait stops at the quiet deadline.
        assert_eq!(t.timeout(800 * MS, true, false), 500 * MS);
        assert!(!t.detach(1299 * MS, true));
        assert!(t.detach(1300 * MS, true));
        // Output after the end starts the quiet second again.
        t.output(1200 * MS);
        assert!(!t.detach(1300 * MS, true));
        assert!(t.detach(2200 * MS, true));
        // Not all input sent: stays, up to LINGER after the end.
        assert!(!t.detach(5 * 1000 * MS, false));
        assert!(t.detach(300 * MS + LINGER, false));
        assert_eq!(t.timeout(300 * MS + LINGER - 10 * MS, true, true), 10 * MS);
        // A deadline just passed: a short wait, never a spin.
        assert_eq!(t.timeout(300 * MS + LINGER + MS, true, false), MS);
    }
}
