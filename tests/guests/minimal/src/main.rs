//! `minimal`: the smallest useful domU. Says who and where it is, then ticks
//! (or spins) until dom0 asks it to power off or reboot.
//!
//! Command line (space separated):
//! - `interval_ms=N`: time between lines (default 1000)
//! - `mode=tick` (default): `minimal: tick N`, sleeping in `SCHED_OP` `BLOCK`
//! - `mode=spin`: a busy loop with interrupts on, `minimal: spin N (L loops in M ms)`
//! - `mode=spin-cli`: the same with interrupts off, never blocking
//! - `ignore_shutdown`: never act on control requests (says so once per request)
//! - `show_tsc`: `minimal: tick N tsc T`, the TSC read at the tick (migration tests)
//! - `flood=BYTES`: first writes BYTES bytes without a newline, as fast as it
//!   can in `CONSOLE_WRITE_MAX` pieces, ending in `FLOOD-END-MARKER`; then
//!   `minimal: flood done, R x BYTES bytes in N ms` and the chosen mode (for
//!   the console rate-limit test)
//! - `flood_rounds=N`: the flood N times, 200 ms apart (default 1), so it
//!   lasts long enough to measure what it does to others; only the last
//!   round ends in the marker
//! - `refusals=N`: after the flood, N calls of a hypercall that does not
//!   exist, each of which must fail with -ENOSYS (for the log rate-limit test);
//!   then `minimal: refusals done, N calls, K unexpected`
//!
//! Unknown options and bad values get a warning and are otherwise ignored.
#![cfg_attr(target_os = "none", no_std, no_main)]

use oxen_abi::StartInfo;
use oxen_guest_rt::{cmdline, hypercall, println, ticker};

oxen_guest_rt::entry!("minimal", guest_main);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Tick,
    Spin,
    SpinCli,
}

fn guest_main(info: &'static StartInfo) -> ! {
    let line = oxen_guest_rt::cmdline();
    println!(
        "minimal: domain {} up, {} MiB, cmdline '{line}'",
        hypercall::Rax(hypercall::domain_id()),
        info.memory_bytes >> 20
    );
    let mut config = ticker::Config::default();
    let mut mode = Mode::Tick;
    let mut flood: u64 = 0;
    let mut rounds: u64 = 1;
    let mut refusals: u64 = 0;
    for opt in cmdline::options(line) {
        match (opt.key, opt.value) {
            ("interval_ms", Some(v)) => match cmdline::parse_u64(v) {
                Some(ms) if ms > 0 => config.interval_ms = ms,
                _ => println!("minimal: warning: bad interval '{v}', keeping {} ms", config.interval_ms),
            },
            ("mode", Some("tick")) => mode = Mode::Tick,
            ("mode", Some("spin")) => mode = Mode::Spin,
            ("mode", Some("spin-cli")) => mode = Mode::SpinCli,
            ("mode", Some(v)) => println!("minimal: warning: unknown mode '{v}' (tick, spin, spin-cli)"),
            ("ignore_shutdown", None) => config.ignore_requests = true,
            ("show_tsc", None) => config.show_tsc = true,
            ("flood", Some(v)) => match cmdline::parse_u64(v) {
                Some(n) => flood = n,
                None => println!("minimal: warning: bad flood size '{v}', no flood"),
            },
            ("refusals", Some(v)) => match cmdline::parse_u64(v) {
                Some(n) => refusals = n,
                None => println!("minimal: warning: bad refusals count '{v}', none"),
            },
            ("flood_rounds", Some(v)) => match cmdline::parse_u64(v) {
                Some(n) if n > 0 => rounds = n,
                _ => println!("minimal: warning: bad flood_rounds '{v}', keeping {rounds}"),
            },
            _ => println!("minimal: warning: unknown option '{}'", opt.text),
        }
    }
    if flood > 0 {
        flood_console(flood, rounds);
    }
    if refusals > 0 {
        refused_calls(refusals);
    }
    match mode {
        Mode::Tick => ticker::tick(config),
        Mode::Spin => ticker::spin(config, false),
        Mode::SpinCli => ticker::spin(config, true),
    }
}

/// Makes `n` calls of a hypercall number that does not exist; each must
/// fail with -ENOSYS (and the hypervisor logs each refusal, rate limited).
fn refused_calls(n: u64) {
    const ENOSYS: u64 = 38;
    let mut unexpected = 0;
    for i in 0..n {
        // SAFETY: no such hypercall: the hypervisor refuses it without
        // reading the arguments (none name memory anyway).
        let rax = unsafe { hypercall::call(0x0bad_0000 + (i & 0xff), [0; 5]) };
        if rax != ENOSYS.wrapping_neg() {
            unexpected += 1;
        }
    }
    println!("minimal: refusals done, {n} calls, {unexpected} unexpected");
}

/// The last bytes of a flood, so a reader of the ring can tell they survived.
const FLOOD_END: &[u8] = b"FLOOD-END-MARKER";

/// Writes `total` bytes without a newline `rounds` times.
fn flood_console(total: u64, rounds: u64) {
    // Calibrated first: its line is not part of the flood.
    oxen_guest_rt::time::tsc_khz();
    let t0 = oxen_guest_rt::cpu::rdtsc();
    for round in 1..=rounds {
        flood_once(total, round == rounds);
        if round < rounds {
            hypercall::block(200_000_000);
        }
    }
    let ms = oxen_guest_rt::time::ticks_to_ms(oxen_guest_rt::cpu::rdtsc().wrapping_sub(t0));
    println!("\nminimal: flood done, {rounds} x {total} bytes in {ms} ms");
}

/// Writes `total` bytes without a newline (printable, cycling through
/// `0-9a-z`), in the largest pieces the hypercall takes; the last ones are
/// `FLOOD_END` if `marker`.
fn flood_once(total: u64, marker: bool) {
    let mut piece = [0u8; oxen_abi::CONSOLE_WRITE_MAX as usize];
    let mut sent: u64 = 0;
    while sent < total {
        let n = (total - sent).min(piece.len() as u64) as usize;
        for (i, b) in piece[..n].iter_mut().enumerate() {
            let k = (sent + i as u64) % 36;
            *b = if k < 10 { b'0' + k as u8 } else { b'a' + (k - 10) as u8 };
        }
        // The marker takes the place of the flood's last bytes.
        let end = sent + n as u64;
        let marker_from = total.saturating_sub(FLOOD_END.len() as u64);
        if marker && end > marker_from {
            for at in marker_from.max(sent)..end {
                piece[(at - sent) as usize] = FLOOD_END[(at - marker_from) as usize];
            }
        }
        hypercall::console_write(&piece[..n]);
        sent = end;
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("minimal is an Oxen domU kernel: `cargo xtask` builds it for x86_64-unknown-none");
    std::process::exit(1);
}
