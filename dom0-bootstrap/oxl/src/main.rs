//! `oxl`: Oxen's domain administration tool for dom0, the counterpart of Xen's
//! `xl`. It talks to the hypervisor through `/dev/oxen` (one ioctl per
//! hypercall, `oxen_abi::HypercallIoctl`).

mod cli;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    eprintln!("oxl: {}: not implemented yet", cli.cmd.name());
    ExitCode::FAILURE
}
