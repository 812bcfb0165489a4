//! The bench parts of issue 13's "every exit is cheap" and "idle is quiet"
//! (`cargo xtask bench --only null` / `--only idle`): a null hypercall from
//! dom0's kernel under `-icount`, and idle exits per second by reason.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use regex::Regex;

use crate::bench::{boot_dom0_script, relative, NullRun};
use crate::emu::{Ending, Watch};
use crate::util::{show, step, tail};

/// dom0 runs only `oxen-null-bench` (10,000 calls of each kind) before its shell.
const NULL_ARGS: &str = "nr_cpus=1 dom0_run=/usr/lib/oxen/null-bench";
const NULL_DONE: &str = r"dom0: /usr/lib/oxen/null-bench exited";
const NULL_TIMEOUT: Duration = Duration::from_secs(600);

/// What one null-bench run under `-icount shift=0` measured.
pub struct NullDom0 {
    pub runs: Vec<NullRun>,
    pub command: String,
}

impl NullDom0 {
    fn per(&self, kind: &str) -> Option<f64> {
        self.runs
            .iter()
            .find(|r| r.kind == kind)
            .map(|r| r.cycles as f64 / r.calls.max(1) as f64)
    }
}

/// Boots dom0 under `-icount shift=0` running `oxen-null-bench` alone.
pub fn null_dom0(elf: &Path) -> Result<NullDom0> {
    step(format!(
        "null hypercall from dom0: QEMU TCG -icount shift=0, 2 CPUs (up to {}s)",
        NULL_TIMEOUT.as_secs()
    ));
    let watch = Watch {
        done: Some(Regex::new(NULL_DONE)?),
        ..Watch::default()
    };
    let (boot, dir) = boot_dom0_script(elf, true, "null-dom0", NULL_ARGS, &watch, NULL_TIMEOUT)?;
    let re = Regex::new(r"oxen-null-bench: (\w+) (\d+) calls (\d+) cycles")?;
    let runs: Vec<NullRun> = crate::util::log_lines(&boot.serial)
        .iter()
        .filter_map(|l| re.captures(l))
        .map(|c| NullRun {
            kind: c[1].to_string(),
            calls: c[2].parse().unwrap_or(0),
            cycles: c[3].parse().unwrap_or(0),
        })
        .collect();
    if !matches!(boot.ending, Ending::Done) || runs.len() < 2 {
        bail!(
            "null-bench did not finish (timed out, halted or exited). Command:\n    {}\nlast lines of {}:\n{}",
            boot.command,
            show(&dir.join("serial.log")),
            tail(&boot.serial, 20)
        );
    }
    Ok(NullDom0 {
        runs,
        command: relative(&boot.command),
    })
}

/// The `null` part: prints the figure and writes section `null-dom0`.
pub fn null_section(r: &NullDom0, footer: &str) -> String {
    let mut table = String::from("| call | instructions per call |\n|---|---|\n");
    for n in &r.runs {
        table.push_str(&format!("| {} | {:.1} |\n", n.kind, n.cycles as f64 / n.calls.max(1) as f64));
    }
    let d = match (r.per("null"), r.per("refused")) {
        (Some(a), Some(b)) => format!("{:.1}", a - b),
        _ => "–".into(),
    };
    step(format!("null hypercall from dom0's kernel (null − refused): {d} instructions"));
    format!(
        "## Null hypercall from dom0's kernel (`--only null`)\n\n\
         `oxen-null-bench` alone in dom0 (no domU), under `-icount shift=0`: instructions per call.\n\n\
         {table}| null − refused | **{d}** |\n\n\
         Command: `cargo xtask bench --only null`, which booted dom0 with `{NULL_ARGS}` in\n\n\
         ```\n{}\n```\n\n{footer}",
        r.command
    )
}
