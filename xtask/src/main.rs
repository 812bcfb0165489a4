//! `cargo xtask`: build, boot, test and benchmark the Oxen hypervisor.
//!
//! Every command first checks the host (Debian packages for QEMU, Bochs and GRUB,
//! and the `x86_64-unknown-none` Rust target) and installs what is missing.

mod bench;
mod bench_exits;
mod cpio;
mod dom0;
mod dom0_tools;
mod emu;
mod fuzz;
mod guests;
mod image;
mod kmod;
mod linux_domu;
mod oxl;
mod run;
mod setup;
mod systest;
mod util;
mod vmlinux;
mod vecregs;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

use crate::emu::{Accel, Emulator, Machine, BOCHS_IPS};
use crate::image::{Module, DEFAULT_CMDLINE};
use crate::util::{cargo, show, step};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, boot, test and benchmark the Oxen hypervisor"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Only check and install the host tools (every other command does this first).
    Setup,
    /// Build the hypervisor ELF (target/x86_64-unknown-none/release/oxen-hv).
    Build(BuildArgs),
    /// Build a bootable GRUB multiboot2 ISO (default target/oxen.iso).
    Iso(IsoOutArgs),
    /// Boot the ISO in QEMU or Bochs with the serial console on this terminal.
    Run(RunArgs),
    /// Run the host unit tests and the system tests of tests/system.toml.
    Test(TestArgs),
    /// Measure image size, hypercall, dom0 and scheduler costs; update BENCHMARKS.md.
    Bench(BenchArgs),
    /// Random hypercalls from a domU and from dom0 beside a bystander domU (QEMU, SVM).
    Fuzz(fuzz::FuzzArgs),
}

#[derive(Args)]
struct BuildArgs {
    /// Build without optimizations (target/x86_64-unknown-none/debug/oxen-hv).
    #[arg(long)]
    debug: bool,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    build: BuildArgs,
    /// Measure only this part (its BENCHMARKS.md section; the others are kept).
    #[arg(long, value_enum)]
    only: Option<bench::Part>,
}

#[derive(Args)]
struct IsoArgs {
    #[command(flatten)]
    build: BuildArgs,
    /// The hypervisor command line.
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Boot dom0: Debian's kernel and a busybox initramfs as the first two modules,
    /// fetched and built under target/dom0/ (the default).
    #[arg(long, overrides_with = "no_dom0")]
    dom0: bool,
    /// Leave dom0 out (an image for `selftest` or `bench` only).
    #[arg(long, overrides_with = "dom0")]
    no_dom0: bool,
    /// An extra multiboot2 module: "PATH" or "PATH ARGS..." (repeatable; after dom0's
    /// kernel and initrd, or instead of them with --no-dom0).
    #[arg(long = "module", value_name = "PATH [ARGS]")]
    modules: Vec<Module>,
}

#[derive(Args)]
struct IsoOutArgs {
    #[command(flatten)]
    iso: IsoArgs,
    /// Where to write the ISO.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    iso: IsoArgs,
    #[arg(long, value_enum, default_value_t = Emulator::Qemu)]
    emulator: Emulator,
    /// QEMU accelerator; default: KVM only if the host offers nested virtualization, else TCG.
    #[arg(long, value_enum)]
    accel: Option<Accel>,
    /// CPU model (QEMU -cpu / Bochs cpu model); default: max (TCG), host (KVM), corei7_skylake_x (Bochs).
    #[arg(long)]
    cpu: Option<String>,
    /// Number of CPUs (2: the Linux domU of /etc/oxen/linux.cfg has 2 vCPUs).
    #[arg(long, default_value_t = 2)]
    smp: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    mem: u32,
}

#[derive(Args)]
struct TestArgs {
    /// Run only the system tests whose name contains this, or any of several
    /// separated by commas (host unit tests are then skipped).
    #[arg(long)]
    filter: Option<String>,
    /// Skip the host unit tests.
    #[arg(long)]
    no_unit: bool,
    /// List the system tests and exit.
    #[arg(long)]
    list: bool,
    /// The system-test manifest.
    #[arg(long, default_value = "tests/system.toml")]
    manifest: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    util::install_ctrlc_handler();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    if let Cmd::Test(TestArgs {
        list: true,
        manifest,
        ..
    }) = &cli.cmd
    {
        for t in systest::load(&util::repo_root().join(manifest))? {
            let with = if t.bare {
                " bare-dom0"
            } else if t.dom0 {
                " +dom0"
            } else {
                ""
            };
            println!(
                "{:<22} {:<5} -cpu {:<16} smp={}{with} cmdline={:?}",
                t.name,
                t.machine.emulator.to_string(),
                t.machine.cpu_model(),
                t.machine.smp,
                t.cmdline
            );
            if !t.description.is_empty() {
                println!("{:<22} {}", "", t.description);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    setup::ensure()?;
    match cli.cmd {
        Cmd::Setup => {}
        Cmd::Build(b) => {
            image::build(b.debug)?;
        }
        Cmd::Iso(a) => {
            let out = a
                .output
                .clone()
                .unwrap_or_else(|| image::target_dir().join("oxen.iso"));
            make_iso(&a.iso, "oxen", &out)?;
        }
        Cmd::Run(r) => {
            let dir = image::target_dir().join(format!("run-{}", r.emulator));
            std::fs::create_dir_all(&dir)?;
            let iso = dir.join("oxen.iso");
            make_iso(&r.iso, &format!("run-{}", r.emulator), &iso)?;
            let mut m = Machine {
                emulator: r.emulator,
                cpu: r.cpu,
                smp: r.smp,
                memory_mib: r.mem,
                accel: Accel::Tcg,
                icount: false,
                bochs_ips: BOCHS_IPS,
                disk: None,
                shared_disk: None,
                serve: None,
                link: None,
            };
            run::run(&mut m, r.accel, &iso)?;
        }
        Cmd::Test(t) => return test(t),
        Cmd::Bench(b) => {
            let elf = image::build(b.build.debug)?;
            bench::bench(&elf, b.only)?;
        }
        Cmd::Fuzz(f) => return fuzz::fuzz(&f),
    }
    Ok(ExitCode::SUCCESS)
}

fn make_iso(a: &IsoArgs, name: &str, out: &std::path::Path) -> Result<()> {
    let elf = image::build(a.build.debug)?;
    let mut modules = Vec::new();
    if !a.no_dom0 {
        modules.extend(dom0::prepare()?.modules(systest::Dom0Kernel::BzImage));
    }
    modules.extend(a.modules.iter().cloned());
    step(format!(
        "making {} (hypervisor command line: {})",
        show(out),
        a.cmdline
    ));
    image::make_iso(&image::IsoSpec {
        elf: &elf,
        cmdline: &a.cmdline,
        modules: &modules,
        name,
        output: out,
    })?;
    step(format!("wrote {}", show(out)));
    Ok(())
}

fn test(args: TestArgs) -> Result<ExitCode> {
    let started = std::time::Instant::now();
    let mut tests = systest::load(&util::repo_root().join(&args.manifest))?;
    if let Some(f) = &args.filter {
        tests.retain(|t| f.split(',').any(|part| !part.is_empty() && t.name.contains(part)));
        if tests.is_empty() {
            bail!("no system test name contains {f:?} (see `cargo xtask test --list`)");
        }
    }
    let unit_ok = if args.no_unit || args.filter.is_some() {
        step("host unit tests skipped (--filter/--no-unit)");
        true
    } else {
        step("host unit tests: cargo test -p oxen-hypervisor -p oxen-abi -p oxl -p oxen-dm -p oxen-guest-rt -p oxen-guest-fuzz -p xtask");
        let ok = cargo()
            .args([
                "test",
                "-p",
                "oxen-hypervisor",
                "-p",
                "oxen-abi",
                "-p",
                "oxl",
                "-p",
                "oxen-dm",
                "-p",
                "oxen-guest-rt",
                "-p",
                "oxen-guest-fuzz",
                "-p",
                "xtask",
            ])
            .status()?
            .success();
        if !ok {
            println!("host unit tests FAILED (output above); running the system tests anyway");
        }
        ok
    };
    let mut vec_ok = true;
    let summary = match image::build(false) {
        Ok(elf) => {
            // Host tier, but it needs the built image: seconds, so always run.
            if let Err(e) = vecregs::check(&elf) {
                println!("vector-register check FAILED: {e:#}");
                vec_ok = false;
            } else {
                step("vector-register check: no x87/SSE/AVX register use outside arch::x86_64::xstate");
            }
            let qemu = tests
                .iter()
                .filter(|t| t.machine.emulator == Emulator::Qemu)
                .count();
            let bochs = tests.len() - qemu;
            step(format!(
                "{} system test(s), {bochs} under Bochs and {qemu} under QEMU, two at a time (Bochs first); serial logs in {}/<test>/serial.log",
                tests.len(),
                show(&image::target_dir().join("systest"))
            ));
            systest::run_all(&tests, &elf)?
        }
        Err(e) => {
            println!("the hypervisor did not build, so no system test can run: {e:#}");
            for t in &tests {
                println!("FAIL {}: the hypervisor did not build", t.name);
            }
            systest::Summary {
                failed: tests.iter().map(|t| t.name.clone()).collect(),
                ..Default::default()
            }
        }
    };
    println!();
    if !unit_ok {
        println!("host unit tests: FAILED (see the cargo test output above)");
    }
    if !summary.xfailed.is_empty() {
        println!(
            "known failures (xfail, not counted): {}",
            summary.xfailed.join(" ")
        );
    }
    if !summary.times.is_empty() {
        println!("{}; `cargo xtask test` took {} s in all (set-up, builds and host tests included)", summary.timing(), started.elapsed().as_secs());
    }
    if !summary.failed.is_empty() {
        println!("failed system tests: {}", summary.failed.join(" "));
    }
    println!("{} passed, {} failed", summary.passed, summary.failed.len());
    Ok(if unit_ok && vec_ok && summary.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
