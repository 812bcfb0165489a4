//! `echo`: a domU that reads its console input. It prints a prompt, echoes
//! what is typed as it comes (as a terminal would: oxl's raw terminal does
//! not), and answers each line with `ECHO: ` and the line in capitals, so a
//! test tells the answer from the input. Between reads it sleeps in
//! `SCHED_OP` `BLOCK`, which new input (or a control request) ends.
//!
//! Lines end at CR or LF (CR LF counts once); Backspace or DEL erases the
//! last character; a line of `quit` powers the domain off. dom0's power-off
//! and reboot requests are honoured.
//!
//! A line `dirty N M ...` (page indexes below `DIRTY_PAGES`) writes one byte
//! in each of those pages of a page-aligned buffer and answers `DIRTIED gfn
//! 0x.. 0x..` with their guest frame numbers (paging is an identity map):
//! what dirty-page logging (`domctl::LOG_DIRTY`, `dirty-test.c`) must
//! report. The buffer is in .bss, so nothing else writes it.
#![cfg_attr(target_os = "none", no_std, no_main)]

use oxen_abi::{request, ShutdownReason, StartInfo};
use oxen_guest_rt::{hypercall, print, println};

oxen_guest_rt::entry!("echo", guest_main);

/// Longest line kept; further characters are ignored until the line ends.
const LINE_MAX: usize = 200;

/// Pages of the buffer `dirty` lines write.
const DIRTY_PAGES: usize = 64;

#[repr(C, align(4096))]
struct Pages([[u8; 4096]; DIRTY_PAGES]);

/// Written only by `dirty` lines, one vCPU.
static mut DIRTY_BUF: Pages = Pages([[0; 4096]; DIRTY_PAGES]);

/// The page indexes of a `dirty` line (`None`: not one); indexes out of
/// range or not numbers are skipped.
fn dirty_pages(line: &[u8]) -> Option<impl Iterator<Item = usize> + '_> {
    let rest = line.strip_prefix(b"dirty ")?;
    Some(
        rest.split(|&b| b == b' ')
            .filter_map(|w| core::str::from_utf8(w).ok()?.parse::<usize>().ok())
            .filter(|&i| i < DIRTY_PAGES),
    )
}

/// Writes a byte in each page `dirty_pages` names and says which frames.
fn dirty(line: &[u8]) -> bool {
    let Some(pages) = dirty_pages(line) else { return false };
    print!("DIRTIED gfn");
    for i in pages {
        // SAFETY: one vCPU, and only this function touches the buffer; a
        // volatile write so that the store is not elided.
        let p = unsafe { core::ptr::addr_of_mut!(DIRTY_BUF.0[i][0]) };
        // SAFETY: `p` is inside the static buffer.
        unsafe { p.write_volatile(p.read_volatile().wrapping_add(1)) };
        print!(" {:#x}", p as u64 >> 12);
    }
    println!();
    true
}

fn guest_main(_info: &'static StartInfo) -> ! {
    println!(
        "echo: domain {} up: type a line, it comes back in capitals ('quit' powers off)",
        hypercall::Rax(hypercall::domain_id())
    );
    let mut line = Line::new();
    print!("echo> ");
    let mut buf = [0u8; 64];
    loop {
        let n = match hypercall::console_read(&mut buf) {
            Ok(n) => n,
            Err(e) => oxen_guest_rt::crash(format_args!(
                "console_read failed: -{e} {} (a hypervisor older than ABI 1.3?)",
                hypercall::errno_name(e)
            )),
        };
        if n == 0 {
            control_requests();
            // Until input (or a request) comes: the hypervisor wakes us.
            hypercall::block(0);
            continue;
        }
        for &b in &buf[..n] {
            match line.key(b) {
                Key::Echo => print!("{}", b as char),
                Key::Erase => print!("\x08 \x08"),
                Key::Ignore => {}
                Key::End => {
                    let text = line.take();
                    println!();
                    if text.as_slice() == b"quit" {
                        println!("echo: bye");
                        hypercall::shutdown(ShutdownReason::Poweroff);
                    }
                    if !dirty(text.as_slice()) {
                        println!("ECHO: {}", Upper(&text));
                    }
                    print!("echo> ");
                }
            }
        }
    }
}

/// Acts on dom0's power-off or reboot request, if one is pending. (Its
/// line starts after the prompt or what was typed so far.)
fn control_requests() {
    match hypercall::control_request() {
        request::POWEROFF => {
            println!("\necho: powering off");
            hypercall::shutdown(ShutdownReason::Poweroff);
        }
        request::REBOOT => {
            println!("\necho: rebooting");
            hypercall::shutdown(ShutdownReason::Reboot);
        }
        _ => {}
    }
}

/// What one input byte does to the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    /// Added: show it.
    Echo,
    /// The last character was removed.
    Erase,
    /// The line is complete (`Line::take` it).
    End,
    Ignore,
}

/// The line being typed.
struct Line {
    bytes: [u8; LINE_MAX],
    len: usize,
    /// The last byte was CR: an LF right after it ends no second line.
    after_cr: bool,
}

impl Line {
    const fn new() -> Self {
        Self { bytes: [0; LINE_MAX], len: 0, after_cr: false }
    }

    fn key(&mut self, b: u8) -> Key {
        let after_cr = core::mem::replace(&mut self.after_cr, b == b'\r');
        match b {
            b'\n' if after_cr => Key::Ignore,
            b'\r' | b'\n' => Key::End,
            0x08 | 0x7f if self.len > 0 => {
                self.len -= 1;
                Key::Erase
            }
            0x20..=0x7e if self.len < LINE_MAX => {
                self.bytes[self.len] = b;
                self.len += 1;
                Key::Echo
            }
            _ => Key::Ignore,
        }
    }

    /// The finished line; the next one starts empty.
    fn take(&mut self) -> LineText {
        let text = LineText { bytes: self.bytes, len: self.len };
        self.len = 0;
        text
    }
}

struct LineText {
    bytes: [u8; LINE_MAX],
    len: usize,
}

impl LineText {
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// A line shown in capitals (it holds printable ASCII only).
struct Upper<'a>(&'a LineText);

impl core::fmt::Display for Upper<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for &b in self.0.as_slice() {
            core::fmt::Write::write_char(f, b.to_ascii_uppercase() as char)?;
        }
        Ok(())
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("echo is an Oxen domU kernel: `cargo xtask` builds it for x86_64-unknown-none");
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(line: &mut Line, bytes: &[u8]) -> Vec<Key> {
        bytes.iter().map(|&b| line.key(b)).collect()
    }

    #[test]
    fn lines_end_at_cr_or_lf_once() {
        let mut l = Line::new();
        assert_eq!(feed(&mut l, b"hi\r\n"), [Key::Echo, Key::Echo, Key::End, Key::Ignore]);
        assert_eq!(l.take().as_slice(), b"hi");
        assert_eq!(feed(&mut l, b"a\n\n"), [Key::Echo, Key::End, Key::End]);
    }

    #[test]
    fn erase_and_limits() {
        let mut l = Line::new();
        assert_eq!(feed(&mut l, b"\x7fab\x08c\x01"), [Key::Ignore, Key::Echo, Key::Echo, Key::Erase, Key::Echo, Key::Ignore]);
        assert_eq!(l.take().as_slice(), b"ac");
        for _ in 0..LINE_MAX {
            assert_eq!(l.key(b'x'), Key::Echo);
        }
        assert_eq!(l.key(b'y'), Key::Ignore);
        assert_eq!(l.take().len, LINE_MAX);
    }

    #[test]
    fn dirty_lines_name_pages_in_range() {
        assert!(dirty_pages(b"dirty").is_none());
        assert!(dirty_pages(b"hello dirty 1").is_none());
        let got: Vec<_> = dirty_pages(b"dirty 1 63 64 x 5").unwrap().collect();
        assert_eq!(got, [1, 63, 5]);
    }

    #[test]
    fn answers_in_capitals() {
        let mut l = Line::new();
        feed(&mut l, b"hello Oxen 42");
        assert_eq!(format!("{}", Upper(&l.take())), "HELLO OXEN 42");
    }
}
