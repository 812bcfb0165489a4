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

// ---- `idle`: exits per second of idle domains, by reason ----

/// Every vCPU logs its tally this often (`exit_tally_s`), in seconds.
const TALLY_PERIOD_S: u64 = 5;
const IDLE_DONE: &str = r"\(d0\) idle-bench: done";

/// One emulator's idle run.
pub struct IdleRun {
    /// "QEMU AMD-V" / "Bochs VT-x".
    pub vendor: &'static str,
    pub windows: Vec<IdleWindow>,
    pub command: String,
    pub dom0_args: String,
}

/// One window of idle-bench.sh.
pub struct IdleWindow {
    /// dom0, minimal, linux.
    pub name: String,
    pub seconds: f64,
    /// Exits over the window (`oxl list --json`): dom0's and the domU's.
    pub dom0: u64,
    pub domu: u64,
    /// Per label (`dom0`, `d1 (idle)`, `d2 (linux) vcpu0`, …): exits per second
    /// by reason between the first and last periodic tally inside the window.
    pub by_reason: Vec<(String, Vec<(String, f64)>)>,
}

/// Exit counts by reason name.
type Counts = Vec<(String, u64)>;

/// A `(periodic)` tally line: label, total, ` name=count` list.
fn tally_line(l: &str) -> Option<(String, Counts)> {
    let re = Regex::new(r"^\(oxen\) (.+): (\d+) exits \(periodic\):(.*)$").ok()?;
    let c = re.captures(l)?;
    let counts = c[3]
        .split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect();
    Some((c[1].to_string(), counts))
}

/// The windows in a serial log of idle-bench.sh.
fn parse_idle(serial: &str) -> Vec<IdleWindow> {
    let mark = Regex::new(r"idle-bench: window (\w+) (start|end)$").expect("regex");
    let result =
        Regex::new(r"idle-bench: window (\w+) us=(\d+) dom0=(\d+) domu=(\d+)").expect("regex");
    let mut windows = Vec::new();
    // Periodic tallies seen since the current window's start, per label.
    // Per label: its last tally and how many were seen.
    let mut inside: Option<Vec<(String, Counts, usize)>> = None;
    let mut firsts: Vec<(String, Counts)> = Vec::new();
    let mut spans: Vec<(String, Vec<(String, f64)>)> = Vec::new();
    for l in crate::util::log_lines(serial) {
        if let Some(c) = mark.captures(l) {
            if &c[2] == "start" {
                inside = Some(Vec::new());
                firsts.clear();
            } else if let Some(seen) = inside.take() {
                // First and last tally of each label inside the window.
                spans = seen
                    .into_iter()
                    .filter(|(_, _, n)| *n > 1)
                    .filter_map(|(label, last, n)| {
                        let first = &firsts.iter().find(|(f, _)| *f == label)?.1;
                        let secs = ((n - 1) as u64 * TALLY_PERIOD_S) as f64;
                        let rates = last
                            .iter()
                            .map(|(k, v)| {
                                let before = first.iter().find(|(f, _)| f == k).map_or(0, |x| x.1);
                                (k.clone(), v.saturating_sub(before) as f64 / secs)
                            })
                            .filter(|(_, r)| *r > 0.0)
                            .collect();
                        Some((label, rates))
                    })
                    .collect();
            }
        } else if let Some((label, counts)) = tally_line(l) {
            if let Some(seen) = inside.as_mut() {
                match seen.iter_mut().find(|(s, _, _)| *s == label) {
                    Some(e) => {
                        e.1 = counts;
                        e.2 += 1;
                    }
                    None => {
                        firsts.push((label.clone(), counts.clone()));
                        seen.push((label, counts, 1));
                    }
                }
            }
        } else if let Some(c) = result.captures(l) {
            windows.push(IdleWindow {
                name: c[1].to_string(),
                seconds: c[2].parse::<f64>().unwrap_or(0.0) / 1e6,
                dom0: c[3].parse().unwrap_or(0),
                domu: c[4].parse().unwrap_or(0),
                by_reason: core::mem::take(&mut spans),
            });
        }
    }
    windows
}

/// Boots Oxen with `exit_tally_s` and dom0 running idle-bench.sh.
pub fn idle_run(
    elf: &Path,
    emulator: crate::emu::Emulator,
    window_s: u32,
    linux: bool,
    timeout: Duration,
) -> Result<IdleRun> {
    use crate::emu::{boot_and_watch_with, Machine, Media};
    use crate::image::{make_iso, target_dir, IsoSpec};
    let bochs = matches!(emulator, crate::emu::Emulator::Bochs);
    let (vendor, name) = if bochs { ("Bochs VT-x", "idle-vmx") } else { ("QEMU AMD-V", "idle-svm") };
    step(format!(
        "idle exits: {vendor}, dom0 runs idle-bench.sh, windows of {window_s} s (up to {}s)",
        timeout.as_secs()
    ));
    let dom0 = crate::dom0::prepare()?;
    let dir = target_dir().join("bench").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut modules = dom0.modules(crate::systest::Dom0Kernel::BzImage);
    // dom0_run takes no arguments: the window and the Linux domU go through
    // the environment the kernel gives init (its unknown `key=value` words).
    let dom0_args = format!(
        "nr_cpus=1 dom0_run=/usr/lib/oxen/tests/idle-bench.sh idle_window={window_s}{}",
        if linux { " idle_linux=linux" } else { "" }
    );
    modules[0].args = format!("{} {dom0_args}", modules[0].args);
    let iso = dir.join("oxen.iso");
    let cmdline = format!("console=com1,115200 dom0_mem=256M exit_tally_s={TALLY_PERIOD_S}");
    make_iso(&IsoSpec {
        elf,
        cmdline: &cmdline,
        modules: &modules,
        name: &format!("bench-{name}"),
        output: &iso,
    })?;
    let m = Machine {
        emulator,
        cpu: Some(if bochs { "corei7_skylake_x" } else { "max" }.into()),
        smp: if bochs { 1 } else { 2 },
        memory_mib: 512,
        accel: crate::emu::Accel::Tcg,
        icount: false,
        bochs_ips: crate::emu::BOCHS_IPS,
        disk: None,
        shared_disk: None,
        serve: None,
        link: None,
    };
    let watch = Watch {
        done: Some(Regex::new(IDLE_DONE)?),
        ..Watch::default()
    };
    let boot = boot_and_watch_with(&m, &dir, Media::Iso(&iso), timeout, &watch)?;
    let windows = parse_idle(&boot.serial);
    if !matches!(boot.ending, Ending::Done) || windows.len() < 2 {
        bail!(
            "idle-bench.sh did not finish. Command:\n    {}\nlast lines of {}:\n{}",
            boot.command,
            show(&dir.join("serial.log")),
            tail(&boot.serial, 20)
        );
    }
    Ok(IdleRun {
        vendor,
        windows,
        command: relative(&boot.command),
        dom0_args,
    })
}

/// Section `idle`.
pub fn idle_section(runs: &[IdleRun], footer: &str) -> String {
    let mut table = String::from(
        "| machine | state | vCPU | exits/s | by reason, /s | window: exits/s as `oxl list` counts them |\n|---|---|---|---|---|---|\n",
    );
    for r in runs {
        for w in &r.windows {
            let state = match w.name.as_str() {
                "dom0" => "dom0 alone at its prompt",
                "minimal" => "dom0 + a minimal domU asleep",
                "linux" => "dom0 + a Linux domU at its shell",
                other => other,
            };
            let per = |n: u64| n as f64 / w.seconds.max(1e-9);
            for (label, rates) in &w.by_reason {
                let total: f64 = rates.iter().map(|(_, v)| v).sum::<f64>() + 0.0;
                let list: Vec<String> = rates.iter().map(|(k, v)| format!("{k} {v:.1}")).collect();
                let counted = if label.starts_with("dom0") { per(w.dom0) } else { per(w.domu) };
                table.push_str(&format!(
                    "| {} | {state} | {label} | **{total:.1}** | {} | {counted:.1} |\n",
                    r.vendor,
                    if list.is_empty() { "none".into() } else { list.join(", ") },
                ));
                step(format!("idle {} {}: {label} {total:.1} exits/s", r.vendor, w.name));
            }
        }
    }
    let commands: Vec<String> = runs
        .iter()
        .map(|r| format!("{}: dom0 `{}`, hypervisor `exit_tally_s={TALLY_PERIOD_S}`\n\n```\n{}\n```\n", r.vendor, r.dom0_args, r.command))
        .collect();
    format!(
        "## Idle exits per second (`--only idle`)\n\n\
         dom0 runs `dom0-bootstrap/tests/idle-bench.sh`: windows in which nothing is asked of any domain, \
         timed with dom0's clock (guest time: under Bochs the emulated clock). The hypervisor runs with \
         `exit_tally_s={TALLY_PERIOD_S}`: every vCPU logs its exits by reason every {TALLY_PERIOD_S} s (at a \
         poll, which is no exit); exits/s and the reasons are the difference between the first and the last \
         tally inside the window. The last column counts the whole window with `oxl list --json` before and \
         after it, so dom0's figure there includes those two `oxl` runs (exec of a static binary: a few hundred \
         CPUID exits each) — the measurement's own cost.\n\n{table}\n\
         Command: `cargo xtask bench --only idle`, which ran\n\n{}\n{footer}",
        commands.join("\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_windows_take_rates_from_the_tallies_inside_them() {
        let log = "\
(oxen) dom0: 100 exits (periodic): hlt=10 npf=90
(oxen) (d0) idle-bench: window dom0 start
(oxen) dom0: 200 exits (periodic): hlt=20 npf=180
(oxen) d1 (idle): 5 exits (periodic): hypercall=5
(oxen) dom0: 300 exits (periodic): hlt=30 npf=270 cpuid=0
(oxen) d1 (idle): 5 exits (periodic): hypercall=5
(oxen) dom0: 350 exits (periodic): hlt=40 npf=300 cpuid=10
(oxen) (d0) idle-bench: window dom0 end
(oxen) (d0) idle-bench: window dom0 us=20000000 dom0=400 domu=0
";
        let w = parse_idle(log);
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].name.as_str(), w[0].seconds, w[0].dom0), ("dom0", 20.0, 400));
        // dom0: 3 tallies inside, 10 s apart from first to last.
        let dom0 = &w[0].by_reason.iter().find(|(l, _)| l == "dom0").expect("dom0").1;
        assert_eq!(dom0, &[("hlt".to_string(), 2.0), ("npf".to_string(), 12.0), ("cpuid".to_string(), 1.0)]);
        // d1: no exits between its tallies.
        let d1 = &w[0].by_reason.iter().find(|(l, _)| l == "d1 (idle)").expect("d1").1;
        assert!(d1.is_empty());
    }
}
