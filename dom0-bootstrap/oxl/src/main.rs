//! `oxl`: Oxen's domain administration tool for dom0, the counterpart of Xen's
//! `xl`. It talks to the hypervisor through `/dev/oxen` (one ioctl per
//! hypercall, `oxen_abi::HypercallIoctl`).
//!
//! Layout: `cli` (the command line), `config` (domain config files), `cpulist`
//! (xl's pCPU lists, `0-1,3`), `hv` (the `Hypervisor` trait and the typed
//! DOMCTL calls), `device` (`/dev/oxen`), `app` (the commands) with `create`,
//! `domain`, `ring`, `show` and `top`, and `term` (raw terminal, signals).
//! Every command runs against the `Hypervisor` trait, so the tests run them on
//! `fake`, an in-memory model.

mod app;
mod cli;
mod config;
mod cpulist;
mod create;
mod device;
mod devspec;
mod dm;
mod domain;
mod hv;
mod migrate;
mod ring;
mod foreign;
mod save;
mod show;
mod term;
mod top;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::cell::RefCell;
use std::process::ExitCode;
use std::rc::Rc;

use clap::Parser as _;

use crate::cli::{Cli, Cmd};
use crate::hv::Hypervisor;
use crate::term::{Input, Keyboard, Mode};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // SAFETY: restoring the default action of SIGPIPE, which Rust's runtime
    // ignores, so `oxl dmesg | head` ends quietly like other tools.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    term::install_panic_hook();
    if matches!(
        cli.cmd,
        Cmd::Create { .. } | Cmd::Console { .. } | Cmd::Top { .. }
    ) {
        // Create undoes a half-built domain, console and top restore the terminal.
        term::catch_stop_signals();
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut note = std::io::stderr();
    // OXL_STATS=1: count the hypercalls (one ioctl each) and print the tally at the end.
    let tally = hv::env_flag(std::env::var_os("OXL_STATS").as_deref())
        .then(|| Rc::new(RefCell::new(hv::Tally::default())));
    // OXL_NO_EVENTS=1: `console` polls every 50 ms instead of sleeping on
    // dom0's event line (as with a hypervisor older than ABI 1.5), to compare.
    let no_events = hv::env_flag(std::env::var_os("OXL_NO_EVENTS").as_deref());
    let mut open = || {
        let dev = device::Device::open()?;
        let dev = Box::new(if no_events { dev.without_events() } else { dev }) as Box<dyn Hypervisor>;
        Ok(match &tally {
            Some(t) => Box::new(hv::Counting::new(dev, t.clone())) as Box<dyn Hypervisor>,
            None => dev,
        })
    };
    let mut keyboard = |mode: Mode| Box::new(Keyboard::new(mode)) as Box<dyn Input>;
    // Where `create` records configs for `save` (OXL_STATE_DIR overrides).
    let state_dir = std::env::var_os("OXL_STATE_DIR").map_or_else(|| std::path::PathBuf::from("/run/oxen"), Into::into);
    let mut env = app::Env {
        out: &mut out,
        note: &mut note,
        open: &mut open,
        keyboard: &mut keyboard,
        state_dir: Some(&state_dir),
        launch: &mut dm::launch,
        sys_net: std::path::Path::new("/sys/class/net"),
    };
    let result = app::run(&cli.cmd, &mut env);
    if let Some(t) = &tally {
        eprintln!("oxl: {}", t.borrow().report());
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            use std::io::Write as _;
            let _ = out.flush();
            eprintln!("oxl: {e}");
            ExitCode::FAILURE
        }
    }
}
