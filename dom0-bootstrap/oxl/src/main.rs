//! `oxl`: Oxen's domain administration tool for dom0, the counterpart of Xen's
//! `xl`. It talks to the hypervisor through `/dev/oxen` (one ioctl per
//! hypercall, `oxen_abi::HypercallIoctl`).

mod cli;
mod config;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Cmd};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Create { config, .. } = &cli.cmd {
        let text = match std::fs::read_to_string(config) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("oxl: create: cannot read {}: {e}", config.display());
                return ExitCode::FAILURE;
            }
        };
        match config::parse(&config.display().to_string(), &text) {
            Ok(mut c) => {
                c.resolve_paths(config.parent().unwrap_or(std::path::Path::new("")));
                eprintln!("oxl: create: {c:?}");
            }
            Err(e) => {
                eprintln!("oxl: create: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    eprintln!("oxl: {}: not implemented yet", cli.cmd.name());
    ExitCode::FAILURE
}
