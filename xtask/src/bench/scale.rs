//! `cargo xtask bench --only scale`: hundreds of domUs on one host (section
//! `scale`). dom0 runs `dom0-bootstrap/tests/many500.sh` (500 minimal 4 MiB
//! domUs created one after another, then destroyed), which prints the time of
//! a create, of `oxl list` and of a destroy around the 10th, 100th and 500th
//! domU; at each of those points it asks twice, 5 s apart, for the
//! hypervisor's scheduler counters (the `s` key), whose difference gives the
//! mean cost of a scheduler decision with that many domUs.

use super::*;

/// dom0's kernel arguments: init runs many500.sh (500 domUs) before its shell.
const SCALE_ARGS: &str = "nr_cpus=1 dom0_run=/usr/lib/oxen/tests/many500.sh";
const SCALE_DONE: &str = r"^\(oxen\) \(d0\) many500: done";
/// Enough RAM for 500 domUs of 4 MiB, dom0's 256 MiB and the heap.
const SCALE_MEMORY_MIB: u32 = 3072;
const SCALE_TIMEOUT: Duration = Duration::from_secs(1500);
/// The points many500.sh measures at.
const POINTS: [u32; 3] = [10, 100, 500];

/// What many500.sh and the hypervisor printed.
#[derive(Debug, Default, PartialEq)]
pub(super) struct ScaleFigures {
    /// `(what, at, microseconds)`: create, list-all, list-one, destroy, clock.
    pub costs: Vec<(String, u32, u64)>,
    /// `(reading, decisions, TSC cycles)` in order: a10, b10, a100, ...
    pub counters: Vec<(String, u64, u64)>,
    pub failed: Vec<String>,
}

impl ScaleFigures {
    fn cost(&self, what: &str, at: u32) -> Option<u64> {
        self.costs.iter().find(|c| c.0 == what && c.1 == at).map(|c| c.2)
    }
    fn reading(&self, name: &str) -> Option<(u64, u64)> {
        self.counters.iter().find(|c| c.0 == name).map(|c| (c.1, c.2))
    }
    /// Decisions made and their mean TSC cycles between the two readings at `at`.
    fn decisions(&self, at: u32) -> Option<(u64, f64)> {
        let (n0, c0) = self.reading(&format!("a{at}"))?;
        let (n1, c1) = self.reading(&format!("b{at}"))?;
        let n = n1.checked_sub(n0)?;
        (n > 0).then(|| (n, c1.saturating_sub(c0) as f64 / n as f64))
    }
}

pub(super) fn parse_scale(serial: &str) -> ScaleFigures {
    let mut f = ScaleFigures::default();
    let cost = Regex::new(r"many500: cost (\S+) at=(\d+) us=(\d+)").expect("regex");
    let ask = Regex::new(r"many500: counters (\S+)").expect("regex");
    let counters = Regex::new(r"\(oxen\) sched: .*; (\d+) decisions, \d+ TSC cycles each \(sum (\d+)\)").expect("regex");
    let failed = Regex::new(r"check: (.*): FAILED").expect("regex");
    let mut asked: Option<String> = None;
    for line in serial.lines() {
        if let Some(c) = cost.captures(line) {
            if let (Ok(at), Ok(us)) = (c[2].parse(), c[3].parse()) {
                f.costs.push((c[1].to_string(), at, us));
            }
        } else if let Some(c) = ask.captures(line) {
            asked = Some(c[1].to_string());
        } else if let Some(c) = counters.captures(line) {
            if let (Some(name), Ok(n), Ok(sum)) = (asked.take(), c[1].parse(), c[2].parse()) {
                f.counters.push((name, n, sum));
            }
        } else if let Some(c) = failed.captures(line) {
            f.failed.push(c[1].to_string());
        }
    }
    f
}

fn scale_run(elf: &Path) -> Result<(ScaleFigures, String)> {
    let dom0 = crate::dom0::prepare().context("preparing dom0's kernel and initramfs")?;
    let dir = target_dir().join("bench").join("scale");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut modules = dom0.modules(crate::systest::Dom0Kernel::BzImage);
    modules[0].args = format!("{} {SCALE_ARGS}", modules[0].args);
    let iso = dir.join("oxen.iso");
    make_iso(&IsoSpec { elf, cmdline: DOM0_CMDLINE, modules: &modules, name: "bench-scale", output: &iso })?;
    let m = Machine {
        emulator: Emulator::Qemu,
        cpu: Some("max".into()),
        smp: 2,
        memory_mib: SCALE_MEMORY_MIB,
        accel: Accel::Tcg,
        icount: false,
        bochs_ips: BOCHS_IPS,
        disk: None,
        shared_disk: None,
        serve: None,
        link: None,
    };
    let mut inputs = Vec::new();
    for at in POINTS {
        for ab in ["a", "b"] {
            inputs.push(Input { after: Regex::new(&format!(r"many500: counters {ab}{at}\b"))?, send: STATS_KEYS.into() });
        }
    }
    let watch = Watch { done: Some(Regex::new(SCALE_DONE)?), inputs, ..Watch::default() };
    step(format!(
        "hundreds of domUs: QEMU TCG -cpu max, 2 CPUs, {SCALE_MEMORY_MIB} MiB: dom0 runs many500.sh (up to {}s)",
        SCALE_TIMEOUT.as_secs()
    ));
    let boot = boot_and_watch_with(&m, &dir, Media::Iso(&iso), SCALE_TIMEOUT, &watch)?;
    let f = parse_scale(&boot.serial);
    let complete = POINTS.iter().all(|&at| {
        ["create", "list-all", "list-one", "destroy"].iter().all(|w| f.cost(w, at).is_some()) && f.decisions(at).is_some()
    });
    if !f.failed.is_empty() {
        println!("     many500.sh's checks that failed (the system test dom0-500-domus-svm judges them): {:?}", f.failed);
    }
    if !matches!(boot.ending, Ending::Done) || !complete {
        bail!(
            "dom0's many500.sh did not finish with its figures ({}; failed checks: {:?}). Command:\n    {}\nlast lines of {}:\n{}",
            match boot.ending {
                Ending::Halted => "the hypervisor halted".to_string(),
                Ending::Done => "it ended".to_string(),
                Ending::TimedOut => format!("timed out after {}s", SCALE_TIMEOUT.as_secs()),
                Ending::Exited(s) => format!("QEMU exited ({s})"),
                Ending::Aborted(ref l) => format!("stopped on: {l}"),
            },
            f.failed,
            boot.command,
            show(&dir.join("serial.log")),
            tail(&boot.serial, 20)
        );
    }
    println!("     done in {:.0}s", boot.elapsed.as_secs_f64());
    // As the other sections show it: paths from the repository, no socket name.
    let root = format!("{}/", repo_root().display());
    let sock = Regex::new(r"path=[^,]*\.sock")?;
    let command = sock.replace(&boot.command.replace(&root, ""), "path=SOCKET").into_owned();
    Ok((f, command))
}

pub(super) fn scale_section(f: &ScaleFigures, command: &str, footer: &str) -> String {
    let ms = |us: Option<u64>| us.map_or("–".to_string(), |u| format!("{:.1} ms", u as f64 / 1000.0));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if a > 0.0 => format!("{:.2}×", b / a),
        _ => "–".into(),
    };
    let mut t = String::from("| cost | at 10 domUs | at 100 | at 500 | 500th / 10th |\n|---|---|---|---|---|\n");
    for (what, label) in [
        ("create", "`oxl create` of a 4 MiB minimal domU"),
        ("list-one", "`oxl list NAME` (one domain)"),
        ("list-all", "`oxl list` (every domain: O(n) by nature)"),
        ("destroy", "`oxl destroy`"),
        ("clock", "dom0 reading its clock twice (noise floor)"),
    ] {
        let v: Vec<Option<u64>> = POINTS.iter().map(|&at| f.cost(what, at)).collect();
        t.push_str(&format!(
            "| {label} | {} | {} | {} | {} |\n",
            ms(v[0]),
            ms(v[1]),
            ms(v[2]),
            ratio(v[0].map(|x| x as f64), v[2].map(|x| x as f64))
        ));
    }
    let d: Vec<Option<(u64, f64)>> = POINTS.iter().map(|&at| f.decisions(at)).collect();
    let cyc = |x: Option<(u64, f64)>| x.map_or("–".to_string(), |(n, c)| format!("{} cycles ({} decisions)", thousands(c as u64), thousands(n)));
    t.push_str(&format!(
        "| a scheduler decision (host TSC cycles, mean over a 5 s window) | {} | {} | {} | {} |\n",
        cyc(d[0]),
        cyc(d[1]),
        cyc(d[2]),
        ratio(d[0].map(|x| x.1), d[2].map(|x| x.1))
    ));
    let checks = if f.failed.is_empty() {
        "All of many500.sh's checks passed in this run (500 created, listed and ticking; all destroyed; free memory back to the byte).".to_string()
    } else {
        format!("many500.sh's checks that failed in this run: {}.", f.failed.join("; "))
    };
    format!(
        "## Hundreds of domUs\n\n\
         One host, 2 pCPUs, dom0 creating 500 minimal 4 MiB domUs (`/etc/oxen/minimal-4m.cfg`, one tick every 5 s) \
         one after another, then destroying them from the last. Each time is the mean of 5 operations ending at the \
         10th, 100th and 500th domU (the destroys: the 5 starting there, going down), timed in dom0 (`adjtimex`, \
         1 µs) around the whole `oxl` command, so a fork and exec of `oxl` is in every figure. QEMU TCG wall time on \
         2 cores shared with other jobs: read the ratios of this one run, not the milliseconds.\n\n\
         A scheduler decision is one turn of a pCPU's loop (`sched/run.rs`): polling the blocked vCPUs that are due \
         (by their wake-up time, or nudged), then `CreditScheduler::schedule`, accounting included when it is due; \
         the hypervisor counts the turns and their TSC cycles (console key `s`), read twice 5 s apart while dom0 \
         sleeps and the domUs tick. Under TCG those are host cycles of the emulator running the hypervisor, so \
         their level says little; that they do not grow with the number of domUs is the figure.\n\n{t}\n{checks}\n\n\
         Command: `cargo xtask bench --only scale`, which ran\n\n```\n{command}\n```\n\n\
         (the ISO carries the hypervisor with command line `{DOM0_CMDLINE}` and dom0 with `{SCALE_ARGS}`). {footer}"
    )
}

/// Runs the measurement and writes `doc`'s `scale` section if it succeeds.
pub(super) fn scale_part(elf: &Path, doc: &mut String, footer: &str) -> Result<()> {
    let (f, command) = scale_run(elf)?;
    *doc = update_section(doc, "scale", &scale_section(&f, &command, footer));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_costs_and_the_counters_each_request_got() {
        let serial = "(oxen) (d0) many500: cost create at=10 us=97660\n\
                      (oxen) (d0) many500: counters a10\n\
                      (oxen) sched: 5 vCPU switches, 9 TSC cycles each from one guest's exit to the next one's entry; 1 wake-ups, 3 us mean / 4 us max from ready to running (sums: 45 TSC cycles, 3000 ns); 100 decisions, 50 TSC cycles each (sum 5000)\n\
                      (oxen) (d0) many500: counters b10\n\
                      (oxen) sched: 5 vCPU switches, 9 TSC cycles each from one guest's exit to the next one's entry; 1 wake-ups, 3 us mean / 4 us max from ready to running (sums: 45 TSC cycles, 3000 ns); 300 decisions, 60 TSC cycles each (sum 18000)\n\
                      (oxen) (d0) check: all destroyed: FAILED (3 left)\n";
        let f = parse_scale(serial);
        assert_eq!(f.cost("create", 10), Some(97660));
        assert_eq!(f.decisions(10), Some((200, 65.0)));
        assert_eq!(f.failed, ["all destroyed"]);
        let s = scale_section(&f, "qemu ...", "footer");
        assert!(s.contains("| 65 cycles (200 decisions) |"), "{s}");
    }
}
