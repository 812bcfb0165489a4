//! `cargo xtask bench --only migrate`: issue 12's figures. Two QEMU machines on
//! a wire, as test `dom0-migrate-svm` (so the run is a test of
//! `tests/bench.toml`, run by the system tests' machinery): host A saves and
//! restores a 256 MiB Linux domU and migrates it idle to B; B migrates it back
//! while a writer in it rewrites 8 MiB (dom0-bootstrap/tests/migrate-bench.sh,
//! migrate-bench-peer.sh). Section `migrate`.

use super::*;

/// The test in tests/bench.toml.
const TEST: &str = "bench-migrate-svm";

/// One `migrate-bench: RESULT WHAT SECONDS BYTES` line.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Timed {
    pub what: String,
    pub seconds: f64,
    pub bytes: u64,
}

/// One migration as its sender printed it: each round's
/// `migrate: round N: S pages sent, ...` line and the `--json` summary.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Migration {
    /// Pages sent in each round, the last being the stop-and-copy.
    pub rounds: Vec<u64>,
    pub pages: u64,
    pub zero_pages: u64,
    pub bytes: u64,
    pub final_pages: u64,
    pub downtime: f64,
    pub seconds: f64,
}

pub(super) fn parse_timed(serial: &str) -> Vec<Timed> {
    let re = Regex::new(r"\(d0\) migrate-bench: RESULT (\S+) ([\d.]+) (\d+)\s*$").expect("regex");
    serial
        .lines()
        .filter_map(|l| {
            let c = re.captures(l)?;
            Some(Timed { what: c[1].to_string(), seconds: c[2].parse().ok()?, bytes: c[3].parse().ok()? })
        })
        .collect()
}

/// The migrations a host sent, in order (their rounds are the lines before
/// each summary).
pub(super) fn parse_migrations(serial: &str) -> Vec<Migration> {
    let round = Regex::new(r"\(d0\) migrate: round \d+: (\d+) pages sent").expect("regex");
    let number = |l: &str, key: &str| -> Option<f64> {
        let at = l.find(&format!("\"{key}\": "))? + key.len() + 4;
        l[at..].split([',', '}']).next()?.trim().parse().ok()
    };
    let mut out = Vec::new();
    let mut rounds = Vec::new();
    for l in serial.lines() {
        if let Some(c) = round.captures(l) {
            rounds.push(c[1].parse().unwrap_or(0));
        } else if l.contains("(d0) {\"op\": \"migrate\"") {
            let m = Migration {
                rounds: std::mem::take(&mut rounds),
                pages: number(l, "pages").unwrap_or(0.0) as u64,
                zero_pages: number(l, "zero_pages").unwrap_or(0.0) as u64,
                bytes: number(l, "bytes").unwrap_or(0.0) as u64,
                final_pages: number(l, "final_pages").unwrap_or(0.0) as u64,
                downtime: number(l, "downtime").unwrap_or(f64::NAN),
                seconds: number(l, "seconds").unwrap_or(f64::NAN),
            };
            out.push(m);
        }
    }
    out
}

fn migration_row(what: &str, m: &Migration) -> String {
    let per_round = m.rounds.iter().map(|p| thousands(*p)).collect::<Vec<_>>().join(", ");
    format!(
        "| {what} | {:.1} s | {:.0} ms | {} | {per_round} | {} ({} MiB; {} zero) |\n",
        m.seconds,
        m.downtime * 1000.0,
        m.rounds.len(),
        thousands(m.pages),
        m.bytes >> 20,
        thousands(m.zero_pages)
    )
}

pub(super) fn migrate_section(timed: &[Timed], idle: &Migration, dirtying: &Migration, footer: &str) -> String {
    let get = |w: &str| timed.iter().find(|t| t.what == w);
    let mut save_rows = String::new();
    let base = get("dom0-write");
    for (w, name) in [("save", "oxl save (256 MiB domU → a file in dom0's tmpfs)"), ("restore", "oxl restore (that file → a new domain, running)")] {
        if let Some(t) = get(w) {
            let ratio = base.filter(|b| b.seconds > 0.0).map_or("-".to_string(), |b| format!("{:.1}×", t.seconds / b.seconds));
            save_rows.push_str(&format!("| {name} | {:.2} s | {} MiB | {ratio} |\n", t.seconds, t.bytes >> 20));
        }
    }
    if let Some(b) = base {
        save_rows.push_str(&format!("| dom0 writing as many bytes there (`dd`, the baseline) | {:.2} s | {} MiB | 1× |\n", b.seconds, b.bytes >> 20));
    }
    format!(
        "## Save, restore and live migration\n\n\
         A Linux domU of 256 MiB (2 vCPUs, its root in its RAM), two QEMU TCG machines (`-cpu max`, 2 CPUs, \
         1536 MiB, dom0 640 MiB) on a wire, as test `dom0-migrate-svm`. Times are emulator time (dom0's \
         `/proc/uptime`, 10 ms steps; oxl's own clock for the migrations): only the ratio to dom0's own work \
         in the same run, the page counts and the rounds mean something for hardware. Downtime is oxl's: from \
         the pause on the sender to the receiver's RUNNING (its first vCPU run), in the hypervisor's clock. \
         A page of zeros goes as an entry without data, in the save file as in the stream.\n\n\
         | step | time | size | ÷ baseline |\n|---|---|---|---|\n{save_rows}\n\
         | migration | total | downtime | rounds | pages sent per round (the last: the stop-and-copy) | pages sent |\n\
         |---|---|---|---|---|---|\n{}{}\n\
         oxl's policy: the full copy, then rounds of the pages written meanwhile until one finds at most 64 \
         (the domain is then paused and those go in the stop-and-copy) or 10 such rounds are done; at most \
         16 MiB in the stop-and-copy. {}\n\n\
         Aim (issue 12): at most 100 ms of downtime for the idle domU on hardware, Xen's live migration \
         paper's 60 ms as the anchor. Here the downtime is emulator time; it holds the last pages, the vCPUs' \
         and devices' state and the READY/GO/RUNNING handshake through the emulated NICs and both dom0s' \
         TCP stacks, and the receiver's start of the domain.\n\n\
         Command: `cargo xtask bench --only migrate` (test `{TEST}` of tests/bench.toml; logs in \
         target/systest/{TEST}/). {footer}",
        migration_row("idle, A → B", idle),
        migration_row("rewriting 8 MiB, B → A", dirtying),
        [("idle", idle), ("rewriting", dirtying)]
            .iter()
            .map(|(what, m)| {
                let pre = m.rounds.len().saturating_sub(1);
                if m.final_pages <= 64 {
                    format!("The {what} domU converged after {pre} pre-copy rounds: {} pages in its stop-and-copy.", m.final_pages)
                } else {
                    format!(
                        "The {what} domU did not get under 64 pages a round: after {pre} pre-copy rounds its stop-and-copy sent {}.",
                        thousands(m.final_pages)
                    )
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Runs the two-host benchmark and writes the `migrate` section.
pub(super) fn migrate_part(elf: &Path, doc: &mut String, footer: &str) -> Result<()> {
    let manifest = repo_root().join("tests").join("bench.toml");
    let tests: Vec<_> = crate::systest::load(&manifest)?.into_iter().filter(|t| t.name == TEST).collect();
    if tests.is_empty() {
        bail!("{} has no test {TEST}", show(&manifest));
    }
    step(format!("migrate: test {TEST} of {} (two QEMU machines, up to 2400 s)", show(&manifest)));
    let summary = crate::systest::run_all(&tests, elf)?;
    let dir = target_dir().join("systest").join(TEST);
    let a = crate::util::read_lossy(&dir.join("serial.log"));
    let b = crate::util::read_lossy(&dir.join("peer").join("serial.log"));
    let (timed, idle, dirtying) = (parse_timed(&a), parse_migrations(&a), parse_migrations(&b));
    let (Some(idle), Some(dirtying)) = (idle.first(), dirtying.first()) else {
        bail!(
            "the migrations' summaries are missing (see {} and its peer/serial.log){}",
            show(&dir.join("serial.log")),
            if summary.failed.is_empty() { String::new() } else { format!("; the run failed: {:?}", summary.failed) }
        );
    };
    if !summary.failed.is_empty() {
        println!("     {TEST} did not pass all its checks; its figures are written anyway (see its logs)");
    }
    *doc = update_section(doc, "migrate", &migrate_section(&timed, idle, dirtying, footer));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_and_summaries_make_a_row_per_migration() {
        let a = "\
(oxen) (d0) migrate-bench: RESULT dom0-write 0.50 268435456
(oxen) (d0) migrate-bench: RESULT save 2.00 268500000
(oxen) (d0) migrate-bench: RESULT restore 1.00 268500000
(oxen) (d0) migrate: round 1: 65536 pages sent, 300 written meanwhile, 20.0 MB/s
(oxen) (d0) migrate: round 2: 300 pages sent, 280 written meanwhile, 10.0 MB/s
(oxen) (d0) migrate: round 3: 290 pages sent, the stop-and-copy, 5.0 MB/s
(oxen) (d0) {\"op\": \"migrate\", \"domain\": \"mb\", \"domid\": 1, \"host\": \"10.0.3.2\", \"rounds\": 3, \"pages\": 66126, \"zero_pages\": 50000, \"final_pages\": 290, \"bytes\": 70000000, \"downtime\": 0.085, \"seconds\": 12.500}
";
        let t = parse_timed(a);
        assert_eq!(t.len(), 3);
        assert_eq!(t[1], Timed { what: "save".into(), seconds: 2.0, bytes: 268500000 });
        let m = parse_migrations(a);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].rounds, vec![65536, 300, 290]);
        assert_eq!((m[0].pages, m[0].zero_pages, m[0].bytes), (66126, 50000, 70000000));
        assert!((m[0].downtime - 0.085).abs() < 1e-9 && (m[0].seconds - 12.5).abs() < 1e-9);
        let s = migrate_section(&t, &m[0], &m[0], "footer\n");
        assert!(s.contains("| idle, A → B | 12.5 s | 85 ms | 3 | 65,536, 300, 290 | 66,126 (66 MiB; 50,000 zero) |"), "{s}");
        assert!(s.contains("| oxl save (256 MiB domU → a file in dom0's tmpfs) | 2.00 s | 256 MiB | 4.0× |"), "{s}");
        assert!(s.contains("| dom0 writing as many bytes there (`dd`, the baseline) | 0.50 s | 256 MiB | 1× |"), "{s}");
        assert!(s.contains("The idle domU did not get under 64 pages a round: after 2 pre-copy rounds its stop-and-copy sent 290."), "{s}");
    }
}
