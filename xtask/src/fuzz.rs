//! `cargo xtask fuzz [--calls N] [--seed S]`: the system test `dom0-fuzz-svm`
//! (tests/system.toml: QEMU `-cpu max`, SVM, two CPUs, dom0) with N calls
//! instead of its 50,000. dom0 runs `dom0-bootstrap/tests/fuzz.sh N S`, which
//! splits N between the domU fuzzer (`tests/guests/fuzz`, N/2) and dom0's
//! `/dev/oxen` fuzzer (the rest), beside a bystander domU, and checks that the
//! hypervisor, dom0 and the bystander came through. The test's own checks decide
//! the outcome; this prints the figures the run reported.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::image::target_dir;
use crate::util::{repo_root, show, step};

/// The system test whose machine, input and checks the run reuses.
const TEST: &str = "dom0-fuzz-svm";
/// The name the run goes under (its serial log: target/systest/fuzz/serial.log).
const RUN: &str = "fuzz";
/// Time allowed per call on top of the test's own timeout. Measured (QEMU TCG,
/// both fuzzers at once): 1,000,000 calls in 391 s, dom0's half the slower at
/// 0.78 ms a call (the domU's half took 49 s); 4 ms leaves room for a busy host.
const PER_CALL: Duration = Duration::from_millis(4);

#[derive(Args)]
pub struct FuzzArgs {
    /// Calls in all: half from the domU fuzzer, half from dom0's.
    #[arg(long, default_value_t = 1_000_000)]
    calls: u64,
    /// Seed of both fuzzers' random numbers (the same seed makes the same calls).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn fuzz(a: &FuzzArgs) -> Result<ExitCode> {
    let manifest = repo_root().join("tests/system.toml");
    let mut t = crate::systest::load(&manifest)?
        .into_iter()
        .find(|t| t.name == TEST)
        .with_context(|| format!("{} has no test {TEST}", show(&manifest)))?;
    let Some(input) = t.watch.inputs.first_mut().filter(|i| i.send.contains("/fuzz.sh ")) else {
        bail!("{TEST} in {} does not type a fuzz.sh command", show(&manifest));
    };
    input.send = format!("/usr/lib/oxen/tests/fuzz.sh {} {}; echo MARK-$((6*7))\n", a.calls, a.seed);
    t.name = RUN.into();
    t.timeout += PER_CALL * u32::try_from(a.calls).unwrap_or(u32::MAX);
    step(format!(
        "fuzz: {} calls, seed {}: the system test {TEST} with that many calls (timeout {} s)",
        a.calls,
        a.seed,
        t.timeout.as_secs()
    ));
    let elf = crate::image::build(false)?;
    let started = Instant::now();
    let summary = crate::systest::run_all(std::slice::from_ref(&t), &elf)?;
    let log = target_dir().join("systest").join(RUN).join("serial.log");
    report(&log, started.elapsed());
    let passed = summary.failed.is_empty() && summary.passed == 1;
    println!(
        "fuzz: {} calls, seed {}: {} in {:.0} s (emulator included); serial log {}",
        a.calls,
        a.seed,
        if passed { "PASSED" } else { "FAILED" },
        started.elapsed().as_secs_f64(),
        show(&log)
    );
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Prints what the fuzzers and fuzz.sh reported: figures, tallies, failed checks.
fn report(log: &Path, elapsed: Duration) {
    let Ok(text) = std::fs::read_to_string(log) else {
        println!("fuzz: no serial log at {} after {:.0} s", show(log), elapsed.as_secs_f64());
        return;
    };
    let wanted = [
        "fuzz: summary:", "fuzz: results:", "fuzz: calls:", "fuzz: adjusted:", "fuzz: UNEXPECTED",
        "oxen-fuzz: start:", "oxen-fuzz: own domains:", "oxen-fuzz: cleanup:", "calls (", "FAILED", "FATAL",
        "fuzz: done,",
    ];
    for line in text.lines().map(|l| l.trim_end_matches('\r')) {
        if wanted.iter().any(|w| line.contains(w)) {
            println!("     {line}");
        }
    }
}
