//! `minimal`: the smallest useful domU. Says who and where it is, then ticks
//! (or spins) until dom0 asks it to power off or reboot.
//!
//! Command line (space separated):
//! - `interval_ms=N`: time between lines (default 1000)
//! - `mode=tick` (default): `minimal: tick N`, sleeping in `SCHED_OP` `BLOCK`
//! - `mode=spin`: a busy loop with interrupts on, `minimal: spin N (L loops in M ms)`
//! - `mode=spin-cli`: the same with interrupts off, never blocking
//! - `ignore_shutdown`: never act on control requests (says so once per request)
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
            _ => println!("minimal: warning: unknown option '{}'", opt.text),
        }
    }
    match mode {
        Mode::Tick => ticker::tick(config),
        Mode::Spin => ticker::spin(config, false),
        Mode::SpinCli => ticker::spin(config, true),
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("minimal is an Oxen domU kernel: `cargo xtask` builds it for x86_64-unknown-none");
    std::process::exit(1);
}
