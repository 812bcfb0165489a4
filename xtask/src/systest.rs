//! System tests: boot the hypervisor in an emulator per entry of
//! `tests/system.toml` and check its serial log (format described in that file).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use regex::Regex;
use serde::Deserialize;

use crate::dom0::Dom0;
use crate::emu::{
    boot_and_watch_with, Accel, Emulator, Ending, Input, Machine, Media, Watch, BOCHS_IPS,
    HALT_MARKER,
};
use crate::image::{make_iso, target_dir, IsoSpec};
use crate::util::{log_lines, show, tail};

/// How many tests run at once (the machines have 2 cores; each emulator keeps
/// one busy).
const PARALLEL: usize = 2;
/// Lines of serial log shown for a failing test.
const TAIL_LINES: usize = 40;
/// Lines from a failing line's source shown before it (`before_first_forbidden`).
const CONTEXT_LINES: usize = 12;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(rename = "test", default)]
    pub tests: Vec<TestDef>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
pub struct Defaults {
    pub memory_mib: u32,
    pub forbid: Vec<String>,
    pub timeout_secs: Timeouts,
    pub bochs_ips: u64,
    /// Put before each test's own `dom0_args`, by emulator.
    pub dom0_args: EmulatorArgs,
    /// Put after each test's own `cmdline` (the hypervisor's), by emulator;
    /// not for `bare` tests, whose `cmdline` is the kernel's.
    pub cmdline: EmulatorArgs,
    /// Which form of dom0's kernel GRUB loads, by emulator.
    pub dom0_kernel: EmulatorKernels,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            memory_mib: 256,
            forbid: vec!["PANIC".into(), "EXCEPTION".into(), "FAIL".into()],
            timeout_secs: Timeouts::default(),
            bochs_ips: BOCHS_IPS,
            dom0_args: EmulatorArgs::default(),
            cmdline: EmulatorArgs::default(),
            dom0_kernel: EmulatorKernels::default(),
        }
    }
}

/// The form of dom0's kernel a test boots.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dom0Kernel {
    /// The bzImage, as Debian ships it (what `cargo xtask run` boots).
    #[default]
    #[serde(rename = "bzImage")]
    BzImage,
    /// The same kernel unpacked (`crate::vmlinux`): no XZ unpacking in the guest
    /// (about 40 s of every dom0 boot under Bochs); its initramfs goes
    /// uncompressed too (`Dom0::initrd_cpio`: no gzip unpacking in GRUB, 45 s).
    #[serde(rename = "vmlinux")]
    Vmlinux,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
pub struct EmulatorKernels {
    pub qemu: Dom0Kernel,
    pub bochs: Dom0Kernel,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields, default)]
pub struct EmulatorArgs {
    pub qemu: String,
    pub bochs: String,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub qemu: u64,
    pub bochs: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            qemu: 120,
            bochs: 600,
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct TestDef {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub emulator: Emulator,
    pub cpu: String,
    #[serde(default = "one")]
    pub smp: u32,
    pub memory_mib: Option<u32>,
    pub cmdline: String,
    /// Add dom0's kernel and initramfs as multiboot2 modules.
    #[serde(default)]
    pub dom0: bool,
    /// QEMU only: attach a raw virtio disk of this many MiB whose every 32-bit
    /// word is its own byte offset (little endian), so its checksum is known.
    pub disk_mib: Option<u32>,
    /// QEMU only: attach a zeroed raw disk of this many MiB read-write,
    /// shared with the peer machine (`emu::Machine::shared_disk`).
    pub shared_disk_mib: Option<u32>,
    /// QEMU only: a file under target/ that guests fetch from "the host" at
    /// `http://10.0.2.100/` over QEMU's user network (`emu::HTTP_ADDR`): for each
    /// connection QEMU runs `cat` of an HTTP response holding it (`guestfwd`),
    /// written into the test's directory before the run.
    pub serve: Option<String>,
    /// Extra arguments for dom0's kernel command line (with `dom0 = true`).
    #[serde(default)]
    pub dom0_args: String,
    /// dom0's kernel as a bzImage or a vmlinux, instead of
    /// `[defaults.dom0_kernel]` for the emulator.
    pub dom0_kernel: Option<Dom0Kernel>,
    /// Boot dom0's kernel and initramfs directly under QEMU, without the hypervisor;
    /// `cmdline` is then the kernel's command line.
    #[serde(default)]
    pub bare: bool,
    /// Whether `[defaults.cmdline]` is added to `cmdline` (false: the test
    /// sees the CPU as the emulator offers it, e.g. the CPUID tests).
    #[serde(default = "yes")]
    pub default_cmdline: bool,
    /// Ends the run early (as a success for the ending) when a line matches.
    pub done: Option<String>,
    /// Text typed into COM1, each after its pattern appears.
    #[serde(default)]
    pub input: Vec<InputDef>,
    pub timeout_secs: Option<u64>,
    /// How long a run usually takes in CI (seconds), for the order tests start in
    /// only (`run_order`); a test without it counts as short.
    pub typical_secs: Option<u64>,
    /// Bochs only: instructions per emulated second, instead of the default
    /// (a faster clock for long boots such as dom0's).
    pub bochs_ips: Option<u64>,
    #[serde(default)]
    pub expect: Vec<ExpectDef>,
    #[serde(default)]
    pub expect_per_cpu: Vec<String>,
    #[serde(default)]
    pub forbid: Vec<String>,
    #[serde(default = "yes")]
    pub forbid_defaults: bool,
    /// Known to fail until the hypervisor catches up: why. Its failure is
    /// reported as XFAIL and does not fail the run; a pass says to remove this.
    pub xfail: Option<String>,
    /// Run with no other test beside it, after the others: for the heaviest
    /// QEMU runs, whose emulator faults come only when the host is short of
    /// cores (docs/architecture.md, "The two backends under the emulators").
    #[serde(default)]
    pub alone: bool,
    /// QEMU only: a second machine booted beside this one, as like it as the
    /// test allows (the same ISO but for dom0's arguments), the two NICs wired
    /// to each other (`emu::Link`) instead of QEMU's user network: two Oxen
    /// hosts, for migrations. It is stopped when this one fails; when this one
    /// ends with its expectations met, it runs on to its own `done` (if it has
    /// one) or timeout.
    pub peer: Option<PeerDef>,
}

/// `[tests.peer]`: the second machine of a two-host test.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct PeerDef {
    /// dom0's extra arguments on the peer (instead of the test's `dom0_args`).
    #[serde(default)]
    pub dom0_args: String,
    /// Lines the peer's serial log must hold (its own `peer-serial.log`); the
    /// test's `forbid` patterns apply to it too.
    #[serde(default)]
    pub expect: Vec<String>,
    /// Ends the peer's run when a line matches; the test's machine having
    /// ended well, the peer runs on until then (or its timeout).
    pub done: Option<String>,
}

/// The second machine of a test (`PeerDef`), ready to run.
pub struct Peer {
    pub dom0_args: String,
    pub expect: Vec<(String, Regex)>,
    pub done: Option<Regex>,
}

/// `{ after = 'regex', send = "text" }`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct InputDef {
    pub after: String,
    pub send: String,
}

/// An `expect` entry: a pattern, or `{ pattern = '...', xfail = "why" }` for one the
/// hypervisor is known not to reach yet.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum ExpectDef {
    Plain(String),
    Marked { pattern: String, xfail: String },
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}

/// A test ready to run: its machine and compiled expectations.
pub struct Test {
    pub name: String,
    pub xfail: Option<String>,
    /// `TestDef::alone`.
    pub alone: bool,
    pub description: String,
    pub machine: Machine,
    pub cmdline: String,
    /// Size of the disk image to write before the run.
    pub disk_mib: Option<u32>,
    /// Size of the shared disk to write (zeroed) before the run.
    pub shared_disk_mib: Option<u32>,
    /// The file served at `emu::HTTP_ADDR` (`TestDef::serve`).
    pub serve: Option<PathBuf>,
    pub dom0: bool,
    /// Appended to dom0's kernel command line.
    pub dom0_args: String,
    pub dom0_kernel: Dom0Kernel,
    pub bare: bool,
    pub watch: Watch,
    pub timeout: Duration,
    /// `TestDef::typical_secs`, else the timeout.
    pub typical: Duration,
    /// Whether `typical` is the manifest's `typical_secs` (not the timeout).
    pub typical_given: bool,
    /// (pattern as written, for which cpu, compiled)
    pub expect: Vec<(String, Option<u32>, Regex)>,
    /// Expectations known not to hold yet: (compiled, why).
    pub expect_xfail: Vec<(Regex, String)>,
    pub forbid: Vec<(String, Regex)>,
    pub peer: Option<Peer>,
}

fn compile(pattern: &str, smp: u32, cpu: Option<u32>, test: &str) -> Result<Regex> {
    let mut p = pattern.replace("{smp}", &smp.to_string());
    if let Some(c) = cpu {
        p = p.replace("{cpu}", &c.to_string());
    }
    Regex::new(&p).with_context(|| format!("test {test}: bad regular expression {pattern:?}"))
}

/// `a` and `b` as one command line (either may be empty).
fn join_words(a: &str, b: &str) -> String {
    [a, b].iter().filter(|w| !w.is_empty()).copied().collect::<Vec<_>>().join(" ")
}

/// Reads and checks the manifest.
pub fn load(path: &Path) -> Result<Vec<Test>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let m: Manifest = toml::from_str(&text).with_context(|| format!("parsing {}", show(path)))?;
    let mut tests = Vec::new();
    for t in m.tests {
        if tests.iter().any(|x: &Test| x.name == t.name) {
            bail!("{}: two tests are named {}", show(path), t.name);
        }
        if t.name.is_empty()
            || !t
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!(
                "{}: test name {:?} must be letters, digits, - and _ (it names a directory)",
                show(path),
                t.name
            );
        }
        if t.smp == 0 {
            bail!("test {}: smp must be at least 1", t.name);
        }
        let mut expect = Vec::new();
        let mut expect_xfail = Vec::new();
        for e in &t.expect {
            let p = match e {
                ExpectDef::Plain(p) => p,
                ExpectDef::Marked { pattern, xfail } => {
                    expect_xfail.push((compile(pattern, t.smp, None, &t.name)?, xfail.clone()));
                    continue;
                }
            };
            if p.contains("{cpu}") {
                bail!(
                    "test {}: {p:?} uses {{cpu}}: put it in expect_per_cpu",
                    t.name
                );
            }
            expect.push((p.clone(), None, compile(p, t.smp, None, &t.name)?));
        }
        for p in &t.expect_per_cpu {
            if !p.contains("{cpu}") {
                bail!(
                    "test {}: expect_per_cpu pattern {p:?} has no {{cpu}}",
                    t.name
                );
            }
            for cpu in 0..t.smp {
                expect.push((p.clone(), Some(cpu), compile(p, t.smp, Some(cpu), &t.name)?));
            }
        }
        let defaults = if t.forbid_defaults {
            m.defaults.forbid.clone()
        } else {
            Vec::new()
        };
        let mut forbid = Vec::new();
        for p in defaults.iter().chain(&t.forbid) {
            forbid.push((p.clone(), compile(p, t.smp, None, &t.name)?));
        }
        if t.bare && t.dom0 {
            bail!(
                "test {}: bare boots dom0's kernel without the hypervisor; drop dom0",
                t.name
            );
        }
        if t.bare && t.emulator != Emulator::Qemu {
            bail!("test {}: bare needs emulator = \"qemu\"", t.name);
        }
        let done = t
            .done
            .as_deref()
            .map(|p| compile(p, t.smp, None, &t.name))
            .transpose()?;
        if t.bare && done.is_none() {
            bail!(
                "test {}: a bare test needs `done` (there is no hypervisor halt line to end it)",
                t.name
            );
        }
        let mut inputs = Vec::new();
        for i in &t.input {
            inputs.push(Input {
                after: compile(&i.after, t.smp, None, &t.name)?,
                send: i.send.clone(),
            });
        }
        if t.peer.is_some() && (t.emulator != Emulator::Qemu || !t.dom0 || t.serve.is_some() || !t.input.is_empty()) {
            bail!(
                "test {}: a peer needs emulator = \"qemu\" and dom0, and no serve or input (the NIC is the wire to the peer; COM1 is a file)",
                t.name
            );
        }
        let common_dom0_args = match t.emulator {
            Emulator::Qemu => &m.defaults.dom0_args.qemu,
            Emulator::Bochs => &m.defaults.dom0_args.bochs,
        };
        let join_args = |own: &str| join_words(common_dom0_args, own);
        let peer = match &t.peer {
            None => None,
            Some(p) => Some(Peer {
                dom0_args: join_args(&p.dom0_args),
                expect: p
                    .expect
                    .iter()
                    .map(|e| Ok((e.clone(), compile(e, t.smp, None, &t.name)?)))
                    .collect::<Result<_>>()?,
                done: p.done.as_deref().map(|d| compile(d, t.smp, None, &t.name)).transpose()?,
            }),
        };
        let timeout = t.timeout_secs.unwrap_or(match t.emulator {
            Emulator::Qemu => m.defaults.timeout_secs.qemu,
            Emulator::Bochs => m.defaults.timeout_secs.bochs,
        });
        tests.push(Test {
            machine: Machine {
                emulator: t.emulator,
                cpu: Some(t.cpu),
                smp: t.smp,
                memory_mib: t.memory_mib.unwrap_or(m.defaults.memory_mib),
                accel: Accel::Tcg,
                icount: false,
                bochs_ips: t.bochs_ips.unwrap_or(m.defaults.bochs_ips),
                disk: t
                    .disk_mib
                    .map(|_| target_dir().join("systest").join(&t.name).join("disk.img")),
                shared_disk: t.shared_disk_mib.map(|_| target_dir().join("systest").join(&t.name).join("shared.img")),
                serve: t.serve.as_ref().map(|_| target_dir().join("systest").join(&t.name).join("http-response")),
                link: None,
            },
            disk_mib: t.disk_mib,
            shared_disk_mib: t.shared_disk_mib,
            serve: t.serve.map(|f| target_dir().join(f)),
            name: t.name,
            description: t.description,
            xfail: t.xfail,
            alone: t.alone,
            cmdline: match (t.bare || !t.default_cmdline, t.emulator) {
                (true, _) => t.cmdline,
                (false, Emulator::Qemu) => join_words(&t.cmdline, &m.defaults.cmdline.qemu),
                (false, Emulator::Bochs) => join_words(&t.cmdline, &m.defaults.cmdline.bochs),
            },
            dom0: t.dom0,
            dom0_args: join_args(&t.dom0_args),
            dom0_kernel: t.dom0_kernel.unwrap_or(match t.emulator {
                Emulator::Qemu => m.defaults.dom0_kernel.qemu,
                Emulator::Bochs => m.defaults.dom0_kernel.bochs,
            }),
            bare: t.bare,
            watch: Watch {
                done,
                inputs,
                // QEMU's own faults: the run cannot pass after one, and it is run
                // again (`run_retrying_emulator_fault`) at once rather than after
                // its script has waited out its timeouts.
                // The scheduler's watchdog: dom0 stalled for good (a lost
                // wake-up or timer, issue 10): failed at once rather than
                // after the test's timeout (the CI of 2f0a6b1 waited 1,500 s
                // on one). Not retried: it is not known to be QEMU's.
                abort_on: match t.emulator {
                    Emulator::Qemu => vec![EMULATOR_FAULT, IMPOSSIBLE_TRIPLE_FAULT, DOM0_STALLED],
                    Emulator::Bochs => vec![DOM0_STALLED],
                },
                ..Watch::default()
            },
            timeout: Duration::from_secs(timeout),
            typical: Duration::from_secs(t.typical_secs.unwrap_or(timeout)),
            typical_given: t.typical_secs.is_some(),
            expect,
            expect_xfail,
            forbid,
            peer,
        });
    }
    Ok(tests)
}

/// Checks a serial log against a test's expectations; returns what is wrong.
pub fn check(test: &Test, serial: &str) -> Vec<String> {
    let lines = log_lines(serial);
    let mut problems = Vec::new();
    // Per-CPU patterns are reported once, listing the CPUs that lack a line.
    let mut missing: Vec<(String, Vec<u32>)> = Vec::new();
    for (pattern, cpu, re) in &test.expect {
        if lines.iter().any(|l| re.is_match(l)) {
            continue;
        }
        match cpu {
            None => problems.push(format!(
                "no line matches required pattern /{}/",
                re.as_str()
            )),
            Some(c) => match missing.iter_mut().find(|(p, _)| p == pattern) {
                Some((_, cpus)) => cpus.push(*c),
                None => missing.push((pattern.clone(), vec![*c])),
            },
        }
    }
    for (pattern, cpus) in missing {
        let cpus: Vec<String> = cpus.iter().map(|c| format!("cpu{c}")).collect();
        let pattern = pattern.replace("{smp}", &test.machine.smp.to_string());
        problems.push(format!(
            "no line matches required pattern /{pattern}/ for {}",
            cpus.join(", ")
        ));
    }
    for (pattern, re) in &test.forbid {
        if let Some((n, l)) = lines.iter().enumerate().find(|(_, l)| re.is_match(l)) {
            problems.push(format!(
                "forbidden pattern /{pattern}/ matches line {}: {l}",
                n + 1
            ));
        }
    }
    problems
}

/// The first line a forbidden pattern matches (its number, from 1) and up to
/// `n` lines before it from the same source (its `(oxen) (dN) ` tag, or the
/// hypervisor's own lines): a script's reasons ("1 then 3") come just before
/// its FAILED line, with other domains' output between them.
pub fn before_first_forbidden<'a>(test: &Test, serial: &'a str, n: usize) -> Option<(usize, Vec<&'a str>)> {
    let lines = log_lines(serial);
    let at = lines
        .iter()
        .position(|l| test.forbid.iter().any(|(_, re)| re.is_match(l)))?;
    let tag = |l: &str| -> String {
        match l.strip_prefix("(oxen) (d").and_then(|r| r.split_once(") ")) {
            Some((id, _)) => format!("(oxen) (d{id}) "),
            None => String::new(),
        }
    };
    let mine = tag(lines[at]);
    let mut before: Vec<&str> = lines[..at]
        .iter()
        .rev()
        .filter(|l| tag(l) == mine)
        .take(n)
        .copied()
        .collect();
    before.reverse();
    Some((at + 1, before))
}

/// The expectations marked xfail: (still not matching: pattern and why, matching now).
pub fn check_xfail(test: &Test, serial: &str) -> (Vec<(String, String)>, Vec<String>) {
    let lines = log_lines(serial);
    let mut still = Vec::new();
    let mut now = Vec::new();
    for (re, why) in &test.expect_xfail {
        if lines.iter().any(|l| re.is_match(l)) {
            now.push(re.as_str().to_owned());
        } else {
            still.push((re.as_str().to_owned(), why.clone()));
        }
    }
    (still, now)
}

#[derive(Default)]
pub struct Summary {
    pub passed: usize,
    pub failed: Vec<String>,
    /// Failed but marked `xfail`: not counted as failures.
    pub xfailed: Vec<String>,
    /// Each test's wall time (retries included) and its emulator, in the
    /// order they ended, and the whole run's.
    pub times: Vec<(String, Emulator, Duration)>,
    pub wall: Duration,
}

impl Summary {
    /// Where the time went, a few lines for the end of a run (CI shows its
    /// tail): the run's wall time, each emulator's sum, the slowest tests.
    pub fn timing(&self) -> String {
        let sum = |e: Emulator| self.times.iter().filter(|t| t.1 == e).map(|t| t.2).sum::<Duration>().as_secs();
        let mut slow: Vec<_> = self.times.iter().collect();
        slow.sort_by_key(|t| std::cmp::Reverse(t.2));
        let slowest: Vec<String> = slow.iter().take(10).map(|t| format!("{} {}", t.0, t.2.as_secs())).collect();
        format!(
            "system tests took {} s of wall time (Bochs runs {} s, QEMU runs {} s, summed); slowest (s): {}",
            self.wall.as_secs(),
            sum(Emulator::Bochs),
            sum(Emulator::Qemu),
            slowest.join(", ")
        )
    }
}

pub struct Outcome {
    pub passed: bool,
    pub report: String,
}

fn describe(t: &Test) -> String {
    let m = &t.machine;
    format!(
        "{}{} -cpu {}, {} cpu{}, {} MiB, timeout {}s",
        m.emulator,
        if t.bare {
            " (dom0 kernel without the hypervisor)"
        } else if t.dom0 {
            " (with dom0)"
        } else {
            ""
        },
        m.cpu_model(),
        m.smp,
        if m.smp == 1 { "" } else { "s" },
        m.memory_mib,
        t.timeout.as_secs(),
    ) + if t.alone { ", alone" } else { "" }
}

/// Runs one test whose ISO is ready in `target/systest/<name>/oxen.iso` (or, for a
/// bare test, dom0's kernel and initramfs).
/// The MACs of a two-machine test's NICs (QEMU's default, and the next).
const MAC: &str = "52:54:00:12:34:56";
const PEER_MAC: &str = "52:54:00:12:34:57";

/// A test's peer machine, booting in a thread of its own.
struct PeerRun {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Result<crate::emu::Boot>>,
    dir: PathBuf,
}

/// Starts `t`'s peer, listening on a wire for `t`'s machine, and waits until
/// its QEMU listens; returns it and the machine `t` boots (connecting). A
/// known QEMU fault on the peer ends its run at once and sets `main_stop`,
/// which ends the test's machine too: the test is run again
/// (`retry_emulator_fault`) instead of its scripts waiting out their timeouts
/// for a peer whose domain is gone (the rehearsal of 5927dd7: a migrated
/// domU's impossible triple fault on the peer, then ~6 minutes of waits).
fn start_peer(t: &Test, peer: &Peer, dir: &Path, main_stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Result<(PeerRun, Machine)> {
    let port = crate::emu::free_port()?;
    let mut pm = t.machine.clone();
    pm.link = Some(crate::emu::Link { port, listen: true, mac: PEER_MAC.into() });
    let mut m = t.machine.clone();
    m.link = Some(crate::emu::Link { port, listen: false, mac: MAC.into() });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watch = crate::emu::Watch {
        done: peer.done.clone(),
        stop: Some(stop.clone()),
        abort_on: vec![EMULATOR_FAULT, IMPOSSIBLE_TRIPLE_FAULT],
        ..Default::default()
    };
    let pdir = dir.join("peer");
    let (timeout, d) = (t.timeout, pdir.clone());
    let thread = std::thread::spawn(move || {
        let boot = boot_and_watch_with(&pm, &d, Media::Iso(&d.join("oxen.iso")), timeout, &watch);
        if matches!(&boot, Ok(b) if matches!(b.ending, Ending::Aborted(_))) {
            main_stop.store(true, Ordering::SeqCst);
        }
        boot
    });
    let since = std::time::Instant::now();
    while !crate::emu::listening(port) {
        if thread.is_finished() || since.elapsed() > Duration::from_secs(60) {
            stop.store(true, Ordering::SeqCst);
            let why = match thread.join() {
                Ok(Err(e)) => format!("{e:#}"),
                _ => format!("it did not listen on port {port} within 60 s"),
            };
            bail!("the peer machine did not start: {why}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((PeerRun { stop, thread, dir: pdir }, m))
}

fn run_one(t: &Test, dom0: Option<&Dom0>) -> Outcome {
    let dir = target_dir().join("systest").join(&t.name);
    let iso = dir.join("oxen.iso");
    let media = match (t.bare, dom0) {
        (true, Some(d)) => Media::Linux {
            kernel: &d.kernel,
            initrd: &d.initrd,
            append: &t.cmdline,
        },
        _ => Media::Iso(&iso),
    };
    let fail = |why: String| Outcome { passed: false, report: format!("FAIL {}: {why}\n", t.name) };
    let mut watch = t.watch.clone();
    let (peer_run, machine) = match &t.peer {
        None => (None, t.machine.clone()),
        Some(p) => {
            let main_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            watch.stop = Some(main_stop.clone());
            match start_peer(t, p, &dir, main_stop) {
                Ok((r, m)) => (Some(r), m),
                Err(e) => return fail(format!("{e:#}")),
            }
        }
    };
    let boot = boot_and_watch_with(&machine, &dir, media, t.timeout, &watch);
    // The peer ends with the test's machine, unless that one reached its end
    // with its expectations met and the peer has a `done` of its own: then
    // the peer runs on to it (or to its timeout), as its checks may come
    // after the test machine's.
    let main_ended = matches!(&boot, Ok(b) if matches!(b.ending, Ending::Done | Ending::Halted) && check(t, &b.serial).is_empty());
    let peer_boot = peer_run.map(|r| {
        if !(main_ended && t.peer.as_ref().is_some_and(|p| p.done.is_some())) {
            r.stop.store(true, Ordering::SeqCst);
        }
        (r.thread.join().unwrap_or_else(|_| Err(anyhow::anyhow!("its thread panicked"))), r.dir)
    });
    let boot = match boot {
        Ok(b) => b,
        Err(e) => return fail(format!("could not start the emulator: {e:#}")),
    };
    let mut problems = Vec::new();
    if let (Some(peer), Some((pb, pdir))) = (&t.peer, &peer_boot) {
        match pb {
            Err(e) => problems.push(format!("the peer machine: {e:#}")),
            Ok(pb) => {
                if let Ending::Exited(status) = pb.ending {
                    problems.push(format!("the peer machine's QEMU exited ({status}){}", reset_state(pdir)));
                }
                for (p, re) in &peer.expect {
                    if !log_lines(&pb.serial).iter().any(|l| re.is_match(l)) {
                        problems.push(format!("the peer's serial log ({}) has no line matching /{p}/", show(&pdir.join("serial.log"))));
                    }
                }
                for (p, re) in &t.forbid {
                    if let Some(l) = log_lines(&pb.serial).iter().find(|l| re.is_match(l)) {
                        problems.push(format!("the peer's serial log has a forbidden line (/{p}/): {l}"));
                    }
                }
            }
        }
    }
    let mut emulator_log = None;
    let (xfailing, xpassing) = check_xfail(t, &boot.serial);
    // A run that never reaches an expectation marked xfail may well hang there: its
    // timeout is then part of that known failure, not a failure of its own.
    let mut timeout_excused = false;
    match &boot.ending {
        Ending::Halted | Ending::Done => {}
        Ending::Aborted(line) => {
            problems.push(format!("stopped at a fault it cannot pass after: {line}"));
            problems.extend(cpu_states(&dir, "then"));
        }
        Ending::TimedOut if !xfailing.is_empty() => timeout_excused = true,
        Ending::TimedOut => {
            let why = match &t.watch.done {
                Some(re) => format!(
                    "timed out after {}s: no line matched done /{}/{}",
                    t.timeout.as_secs(),
                    re.as_str(),
                    if t.bare {
                        String::new()
                    } else {
                        format!(" and no `{HALT_MARKER}` line")
                    }
                ),
                None => format!(
                    "timed out after {}s without a `{HALT_MARKER}` line",
                    t.timeout.as_secs()
                ),
            };
            let regs = dir.join(crate::emu::QEMU_TIMEOUT_LOG);
            problems.push(if regs.exists() {
                format!("{why} (every CPU's registers then: {})", show(&regs))
            } else {
                why
            });
            problems.extend(cpu_states(&dir, "at the timeout"));
        }
        Ending::Exited(status) => {
            let log = match t.machine.emulator {
                Emulator::Qemu => "emulator.log",
                Emulator::Bochs => "bochs.log",
            };
            problems.push(format!(
                "{} exited ({status}) before the hypervisor printed `{HALT_MARKER}`{}",
                t.machine.emulator,
                reset_state(&dir),
            ));
            emulator_log = Some(dir.join(log));
        }
    }
    let typed: Vec<usize> = boot.sent.iter().map(|s| s.0).collect();
    for (i, input) in t.watch.inputs.iter().enumerate() {
        if !typed.contains(&i) {
            problems.push(format!(
                "input {} ({:?}) was never typed: nothing matched /{}/ after the previous input",
                i + 1,
                input.send,
                input.after.as_str()
            ));
            break;
        }
    }
    problems.extend(check(t, &boot.serial));
    let secs = boot.elapsed.as_secs_f64();
    let mut report = String::new();
    if problems.is_empty() {
        let _ = writeln!(report, "PASS {} ({secs:.1}s)", t.name);
        for (pattern, why) in &xfailing {
            let _ = writeln!(
                report,
                "     not yet (xfail: {why}): no line matches /{pattern}/"
            );
        }
        if timeout_excused {
            let _ = writeln!(
                report,
                "     (ran into the {}s timeout short of the xfail line{}; last line: {})",
                t.timeout.as_secs(),
                if xfailing.len() == 1 { "" } else { "s" },
                log_lines(boot.serial.trim_end()).last().unwrap_or(&"")
            );
        }
        for pattern in &xpassing {
            let _ = writeln!(
                report,
                "     /{pattern}/ is marked xfail but matches now: remove its xfail from the manifest"
            );
        }
        if let Some(why) = &t.xfail {
            let _ = writeln!(
                report,
                "     (marked xfail: {why:?}, but it passes now: remove `xfail` from the manifest)"
            );
        }
        return Outcome {
            passed: true,
            report,
        };
    }
    let verdict = if t.xfail.is_some() { "XFAIL" } else { "FAIL" };
    let _ = writeln!(report, "{verdict} {}: {} ({secs:.1}s)", t.name, problems[0]);
    if let Some(why) = &t.xfail {
        let _ = writeln!(
            report,
            "     expected to fail (xfail: {why}); not counted as a failure"
        );
        return Outcome {
            passed: false,
            report,
        };
    }
    for p in &problems[1..] {
        let _ = writeln!(report, "     also: {p}");
    }
    let serial = dir.join("serial.log");
    let _ = writeln!(report, "     command: {}", boot.command);
    if let Some((at, before)) = before_first_forbidden(t, &boot.serial, CONTEXT_LINES) {
        if !before.is_empty() {
            let _ = writeln!(report, "     the {} lines from the same source before line {at}:", before.len());
            for l in before {
                let _ = writeln!(report, "    | {l}");
            }
        }
    }
    let exited = emulator_log.is_some();
    if let Some(log) = emulator_log {
        let _ = writeln!(report, "     last 10 lines of {}:", show(&log));
        report.push_str(&tail(&crate::util::read_lossy(&log), 10));
    }
    if boot.serial.trim().is_empty() {
        if exited {
            let _ = writeln!(report, "     {} is empty", show(&serial));
            return Outcome {
                passed: false,
                report,
            };
        }
        let _ = writeln!(
            report,
            "     {} is empty: the hypervisor printed nothing (did GRUB load it? try `cargo xtask run`)",
            show(&serial)
        );
    } else {
        let _ = writeln!(report, "     last {TAIL_LINES} lines of {}:", show(&serial));
        report.push_str(&tail(&boot.serial, TAIL_LINES));
    }
    Outcome {
        passed: false,
        report,
    }
}

/// The hypervisor's line when a guest's VMCB holds the host's own state after
/// #VMEXIT (`arch/x86_64/svm/vcpu.rs`, `host_state_found`): seen only under
/// QEMU 7.2's TCG, where it ends dom0 (docs/architecture.md, "The two backends
/// under the emulators").
pub(crate) const EMULATOR_FAULT: &str = "host state in a guest's VMCB";

/// A line per CPU from the QEMU state xtask took when the run stopped
/// (`emu::QEMU_TIMEOUT_LOG`), each after `when`; none if there is no such file.
fn cpu_states(dir: &Path, when: &str) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join(crate::emu::QEMU_TIMEOUT_LOG)).unwrap_or_default();
    crate::emu::summarize_timeout_state(&text).into_iter().map(|l| format!("{when}, {l}")).collect()
}

/// The scheduler watchdog's line (`sched/run.rs`, `watchdog`) on dom0's vCPU 0:
/// unattended or asleep far past any timer Linux keeps, which it does not
/// come back from.
const DOM0_STALLED: &str = "sched: watchdog: dom0's vCPU 0";

/// The hypervisor's line when a guest triple-faulted reading a #DF gate that
/// its own and its nested tables map (`vm/vcpu.rs`, `IMPOSSIBLE_TRIPLE_FAULT`):
/// no CPU faults there; seen only under QEMU 7.2's TCG with the host short of
/// cores (docs/architecture.md, "The two backends under the emulators").
pub(crate) const IMPOSSIBLE_TRIPLE_FAULT: &str = "CR2 is its #DF gate, which its own and its nested tables map: no CPU faults there";

/// Where QEMU's CPUs were when the machine last reset (its `-d cpu_reset`
/// log, `emu::QEMU_RESET_LOG`): a host that triple-faults, which
/// `-no-reboot` turns into QEMU's quiet exit, says nothing on its serial line.
/// Empty without the log.
fn reset_state(dir: &Path) -> String {
    let path = dir.join(crate::emu::QEMU_RESET_LOG);
    let text = crate::util::read_lossy(&path);
    // Each dump has a line "RIP=... RFL=..." (or EIP in 32-bit modes) and one
    // "CR0=... CR2=... CR3=... CR4=..."; the last dump of each CPU is at the reset.
    let picked: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("RIP=") || l.starts_with("EIP=") || l.starts_with("CR0="))
        .collect();
    if picked.is_empty() {
        return String::new();
    }
    let tail = &picked[picked.len().saturating_sub(4)..];
    format!(
        "; CPUs at the reset ({}):\n       {}",
        show(&path),
        tail.iter().map(|l| l.trim()).collect::<Vec<_>>().join("\n       ")
    )
}

/// What a QEMU run says when the machine reset under it: `-no-reboot` turns a
/// reset into QEMU's exit with status 0, before any halt line.
const SILENT_RESET: &str = "qemu exited (exit status: 0) before the hypervisor printed";

/// Runs `t`; a QEMU run that failed on `EMULATOR_FAULT` or
/// `IMPOSSIBLE_TRIPLE_FAULT`, or on a machine reset
/// with nothing on the serial line (`SILENT_RESET`: seen in about 1 of 10
/// runs of `dom0-linux-many-svm`, cause not found yet, docs/architecture.md
/// "The two backends under the emulators"), runs once more, and the report
/// says so and keeps the first run's line and logs (`serial-first.log`,
/// `qemu-reset-first.log`). Any other failure, and a second one, stand.
fn run_retrying_emulator_fault(t: &Test, dom0: Option<&Dom0>) -> Outcome {
    let first = run_one(t, dom0);
    // Twice at most: the CI of 4820d83's successor met a silent reset and then
    // the impossible triple fault in one test's two runs.
    match retry_emulator_fault(t, dom0, first) {
        Ok(second) => match retry_emulator_fault(t, dom0, second) {
            Ok(third) | Err(third) => third,
        },
        Err(outcome) => outcome,
    }
}

/// Runs `t` again if `before` failed on one of QEMU's own faults (`Ok`: the
/// new run, its report saying why); else `Err(before)`.
fn retry_emulator_fault(t: &Test, dom0: Option<&Dom0>, before: Outcome) -> Result<Outcome, Outcome> {
    let first = before;
    if first.passed || t.machine.emulator != Emulator::Qemu {
        return Err(first);
    }
    let dir = target_dir().join("systest").join(&t.name);
    let serial = crate::util::read_lossy(&dir.join("serial.log"));
    // A two-host test's peer is a QEMU machine too: its fault fails the test
    // the same way (the CI of 2714acc: the migrated domU's triple fault on B).
    let peer_serial = crate::util::read_lossy(&dir.join("peer").join("serial.log"));
    let is_fault = |l: &&str| l.contains(EMULATOR_FAULT) || l.contains(IMPOSSIBLE_TRIPLE_FAULT);
    let fault = serial
        .lines()
        .find(is_fault)
        .map(|l| l.trim().to_owned())
        .or_else(|| peer_serial.lines().find(is_fault).map(|l| format!("(on the peer) {}", l.trim())));
    let why = match fault {
        Some(line) => format!("the QEMU TCG fault:\n     {line}"),
        None if first.report.contains(SILENT_RESET) => {
            let last = serial.lines().last().unwrap_or_default().trim().to_owned();
            format!("a machine reset with nothing on the serial line (its last line: {last}){}", reset_state(&dir))
        }
        None => return Err(first),
    };
    // The first failed run's logs are kept (a second retry keeps the second's).
    let n = if dir.join("serial-first.log").exists() { "second" } else { "first" };
    let _ = std::fs::rename(dir.join("serial.log"), dir.join(format!("serial-{n}.log")));
    let _ = std::fs::rename(dir.join(crate::emu::QEMU_RESET_LOG), dir.join(format!("qemu-reset-{n}.log")));
    let _ = std::fs::rename(dir.join("peer").join("serial.log"), dir.join("peer").join(format!("serial-{n}.log")));
    let mut second = run_one(t, dom0);
    second.report = format!(
        "{}RETRIED {}: its {n} run ended on {why}\n     ({n} run's log: {})\n{}",
        if n == "second" { format!("{}\n", first.report.lines().find(|l| l.starts_with("RETRIED")).unwrap_or_default()) } else { String::new() },
        t.name,
        show(&dir.join(format!("serial-{n}.log"))),
        second.report
    );
    Ok(second)
}

/// Writes a disk image of `mib` MiB whose every 32-bit word is its own byte
/// offset, little endian: content any reader can check without a file system.
fn write_disk_image(path: &Path, mib: u32) -> Result<()> {
    let words = (u64::from(mib) << 20) / 4;
    let bytes: Vec<u8> = (0..words)
        .flat_map(|w| ((w * 4) as u32).to_le_bytes())
        .collect();
    std::fs::write(path, bytes)?;
    Ok(())
}

/// Writes `response`: an HTTP/1.0 answer whose body is `file`, for QEMU to
/// send to each guest connection to `emu::HTTP_ADDR`.
fn write_http_response(file: &Path, response: &Path) -> Result<()> {
    // QEMU runs `sh -c "cat '<response>'; ..."` (emu.rs): a quote in the path would end it early.
    if response.to_string_lossy().contains(['\'', '"']) {
        bail!("{} has a quote in its path, which QEMU's forward command cannot hold: move the checkout", show(response));
    }
    let body = std::fs::read(file).with_context(|| format!("reading {}", show(file)))?;
    let mut out = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    std::fs::write(response, out).with_context(|| format!("writing {}", show(response)))
}

/// Builds the ISOs and runs `tests`: QEMU ones two at a time, then Bochs ones.
/// Prints a line per test.
pub fn run_all(tests: &[Test], elf: &Path) -> Result<Summary> {
    let dom0 = if tests.iter().any(|t| t.dom0 || t.bare) {
        Some(crate::dom0::prepare().context("preparing dom0's kernel and initramfs")?)
    } else {
        None
    };
    let dom0_modules = |kernel| dom0.as_ref().map(|d| d.modules(kernel)).unwrap_or_default();
    for t in tests {
        let dir = target_dir().join("systest").join(&t.name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        if let (Some(mib), Some(path)) = (t.disk_mib, &t.machine.disk) {
            write_disk_image(path, mib)
                .with_context(|| format!("writing the disk image for {}", t.name))?;
        }
        if let (Some(mib), Some(path)) = (t.shared_disk_mib, &t.machine.shared_disk) {
            let f = std::fs::File::create(path).with_context(|| format!("writing the shared disk for {}", t.name))?;
            f.set_len(u64::from(mib) << 20).with_context(|| format!("sizing the shared disk for {}", t.name))?;
        }
        if let (Some(file), Some(response)) = (&t.serve, &t.machine.serve) {
            write_http_response(file, response).with_context(|| format!("the file {} serves", t.name))?;
        }
        if t.bare {
            continue;
        }
        let mut modules = if t.dom0 {
            dom0_modules(t.dom0_kernel)
        } else {
            Vec::new()
        };
        if let Some(kernel) = modules.first_mut().filter(|_| !t.dom0_args.is_empty()) {
            kernel.args = format!("{} {}", kernel.args, t.dom0_args);
        }
        make_iso(&IsoSpec {
            elf,
            cmdline: &t.cmdline,
            modules: &modules,
            name: &t.name,
            output: &dir.join("oxen.iso"),
        })
        .with_context(|| format!("making the ISO for {}", t.name))?;
        if let Some(peer) = &t.peer {
            let mut modules = dom0_modules(t.dom0_kernel);
            if let Some(kernel) = modules.first_mut().filter(|_| !peer.dom0_args.is_empty()) {
                kernel.args = format!("{} {}", kernel.args, peer.dom0_args);
            }
            let pdir = dir.join("peer");
            std::fs::create_dir_all(&pdir)?;
            make_iso(&IsoSpec { elf, cmdline: &t.cmdline, modules: &modules, name: &t.name, output: &pdir.join("oxen.iso") })
                .with_context(|| format!("making the peer's ISO for {}", t.name))?;
        }
    }
    let dom0 = dom0.as_ref();
    // One queue for both emulators, Bochs first: its runs are the longest, so
    // starting them early keeps both cores busy to the end. Bochs' guest time
    // follows its instruction count (`clock: sync=none`), so sharing a core
    // slows its wall time, not what the guest measures.
    let queue = run_order(tests);
    let started = std::time::Instant::now();
    let times = Mutex::new(Vec::new());
    let passed = AtomicUsize::new(0);
    let failed = Mutex::new(Vec::new());
    let xfailed = Mutex::new(Vec::new());
    let print = Mutex::new(());
    let record = |t: &Test, o: Outcome, took: Duration| {
        times.lock().unwrap_or_else(|e| e.into_inner()).push((t.name.clone(), t.machine.emulator, took));
        let _guard = print.lock();
        print!("{}", o.report);
        if o.passed {
            passed.fetch_add(1, Ordering::SeqCst);
        } else {
            println!("     rerun: cargo xtask test --filter {}", t.name);
            if t.xfail.is_some() { &xfailed } else { &failed }
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(t.name.clone());
        }
    };
    let announce = |t: &Test| {
        let _guard = print.lock();
        println!("     {}: started ({})", t.name, describe(t));
    };
    let run = |t: &Test| {
        announce(t);
        let t0 = std::time::Instant::now();
        record(t, run_retrying_emulator_fault(t, dom0), t0.elapsed());
    };
    let (alone, shared): (Vec<&Test>, Vec<&Test>) = queue.into_iter().partition(|t| t.alone);
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..PARALLEL.min(shared.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(t) = shared.get(i) else { break };
                run(t);
            });
        }
    });
    for t in alone {
        run(t);
    }
    let names = |m: Mutex<Vec<String>>| m.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(Summary {
        passed: passed.into_inner(),
        failed: names(failed),
        xfailed: names(xfailed),
        times: times.into_inner().unwrap_or_else(|e| e.into_inner()),
        wall: started.elapsed(),
    })
}

/// The order tests start in: Bochs before QEMU, and within each the longest
/// run first, so that a long run never starts late and leaves one core idle
/// while it ends: first those with a `typical_secs` (longest first), then the
/// others, which are the short ones (longest timeout first). Timeouts alone
/// put a 320 s Bochs test with a 2,400 s timeout before a 990 s one with
/// 1,800, and QEMU tests of 30 s with 600 s timeouts before ones of 200 s.
fn run_order(tests: &[Test]) -> Vec<&Test> {
    let mut queue: Vec<&Test> = tests.iter().collect();
    // Stable: equal durations keep the manifest's order.
    queue.sort_by_key(|t| (t.machine.emulator != Emulator::Bochs, !t.typical_given, std::cmp::Reverse(t.typical)));
    queue
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch file name no other test thread uses.
    fn scratch() -> std::path::PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        std::env::temp_dir().join(format!("xtask-manifest-{}-{n}.toml", std::process::id()))
    }

    #[test]
    fn the_emulator_fault_lines_are_the_hypervisors() {
        // The retry keys on these texts: they must be what the hypervisor prints.
        assert!(include_str!("../../hypervisor/src/vm/vcpu.rs").contains(IMPOSSIBLE_TRIPLE_FAULT));
        assert!(include_str!("../../hypervisor/src/arch/x86_64/svm/vcpu.rs").contains(EMULATOR_FAULT));
    }

    #[test]
    fn bochs_first_then_the_longest_timeout_first() {
        let one = |name: &str, emulator: &str, timeout: u32| {
            format!(
                "[[test]]\nname = \"{name}\"\nemulator = \"{emulator}\"\ncpu = \"max\"\ncmdline = \"selftest\"\ntimeout_secs = {timeout}\nexpect = ['x']\n"
            )
        };
        let text = [
            one("q-short", "qemu", 100),
            one("b-short", "bochs", 300),
            one("q-long", "qemu", 900),
            one("b-long", "bochs", 2400),
            one("b-short-2", "bochs", 300),
        ]
        .concat();
        let tests = manifest(&text);
        let names: Vec<&str> = run_order(&tests).iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["b-long", "b-short", "b-short-2", "q-long", "q-short"]);
        // Tests with a typical duration come first, longest first; the others
        // (the short ones) after them, by timeout.
        let typical = |name: &str, emulator: &str, timeout: u32, secs: u32| {
            one(name, emulator, timeout).replace("expect", &format!("typical_secs = {secs}\nexpect"))
        };
        let text = [
            one("b-short", "bochs", 1800),
            typical("b-quick", "bochs", 2400, 300),
            typical("b-slow", "bochs", 1800, 900),
            one("q-small", "qemu", 600),
            typical("q-big", "qemu", 900, 200),
        ]
        .concat();
        let tests = manifest(&text);
        let names: Vec<&str> = run_order(&tests).iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["b-slow", "b-quick", "b-short", "q-big", "q-small"]);
    }

    fn manifest(text: &str) -> Vec<Test> {
        let path = scratch();
        std::fs::write(&path, text).unwrap();
        let tests = load(&path);
        let _ = std::fs::remove_file(&path);
        tests.unwrap()
    }

    const TWO_CPUS: &str = r#"
        [[test]]
        name = "t"
        emulator = "qemu"
        cpu = "max"
        smp = 2
        cmdline = "selftest"
        expect = ['^\(oxen\) smp: {smp}/{smp} cpus online']
        expect_per_cpu = ['^\(oxen\) selftest: cpu{cpu} svm hlt: PASS']
    "#;

    #[test]
    fn the_real_manifest_loads() {
        let tests = load(&crate::util::repo_root().join("tests/system.toml")).unwrap();
        assert!(tests.iter().any(|t| t.machine.emulator == Emulator::Bochs));
        assert!(tests.iter().all(|t| !t.forbid.is_empty()));
    }

    #[test]
    fn an_emulators_default_cmdline_follows_each_tests_own() {
        let tests = manifest(
            r#"
            [defaults.cmdline]
            bochs = "cpuid_hide=erms"
            [[test]]
            name = "b"
            emulator = "bochs"
            cpu = "corei7_skylake_x"
            cmdline = "console=com1"
            expect = ['x']
            [[test]]
            name = "q"
            emulator = "qemu"
            cpu = "max"
            cmdline = "console=com1"
            expect = ['x']
            [[test]]
            name = "e"
            emulator = "bochs"
            cpu = "corei7_skylake_x"
            cmdline = ""
            expect = ['x']
            "#,
        );
        let line = |n: &str| tests.iter().find(|t| t.name == n).unwrap().cmdline.clone();
        assert_eq!(line("b"), "console=com1 cpuid_hide=erms");
        assert_eq!(line("q"), "console=com1");
        assert_eq!(line("e"), "cpuid_hide=erms");
    }

    #[test]
    fn per_cpu_patterns_expand_for_every_cpu() {
        let t = &manifest(TWO_CPUS)[0];
        let ok = "(oxen) smp: 2/2 cpus online\n(oxen) selftest: cpu0 svm hlt: PASS (x)\r\n(oxen) selftest: cpu1 svm hlt: PASS\n";
        assert!(check(t, ok).is_empty(), "{:?}", check(t, ok));
        let missing = check(
            t,
            "(oxen) smp: 2/2 cpus online\n(oxen) selftest: cpu0 svm hlt: PASS\n",
        );
        assert_eq!(missing.len(), 1);
        assert!(missing[0].ends_with("for cpu1"), "{}", missing[0]);
        assert_eq!(check(t, "").len(), 2);
    }

    #[test]
    fn a_forbidden_line_comes_with_the_lines_of_its_source_before_it() {
        let t = &manifest(TWO_CPUS)[0];
        let log = "(oxen) (d0) a\n(oxen) (d1) COUNT 1\n(oxen) (d0) b\n(oxen) (d1) COUNT 2\n(oxen) (d0) c: FAIL\n(oxen) (d0) after\n";
        let (at, before) = before_first_forbidden(t, log, 2).unwrap();
        assert_eq!(at, 5);
        assert_eq!(before, ["(oxen) (d0) a", "(oxen) (d0) b"]);
        // A hypervisor line's source is the hypervisor's other lines.
        let log = "(oxen) x\n(oxen) (d0) y\n(oxen) PANIC on cpu0\n";
        assert_eq!(before_first_forbidden(t, log, 5).unwrap().1, ["(oxen) x"]);
        assert!(before_first_forbidden(t, "(oxen) fine\n", 5).is_none());
    }

    #[test]
    fn default_forbidden_patterns_apply() {
        let t = &manifest(TWO_CPUS)[0];
        let log = "(oxen) smp: 2/2 cpus online\n(oxen) selftest: cpu0 svm hlt: PASS\n(oxen) selftest: cpu1 svm hlt: PASS\n(oxen) PANIC on cpu1: boom\n";
        let p = check(t, log);
        assert_eq!(p.len(), 1);
        assert!(
            p[0].contains("/PANIC/") && p[0].contains("line 4"),
            "{}",
            p[0]
        );
    }

    #[test]
    fn dom0_fields_and_xfail_expectations() {
        let tests = manifest(
            r#"
            [[test]]
            name = "plain"
            emulator = "qemu"
            cpu = "max"
            cmdline = "selftest"

            [[test]]
            name = "d0"
            emulator = "qemu"
            cpu = "max"
            dom0 = true
            cmdline = "console=com1,115200"
            done = 'shell$'
            input = [{ after = '# ', send = "ls\n" }, { after = '# ', send = "exit\n" }]
            expect = ['Linux version', { pattern = 'init started', xfail = "not there yet" }]
        "#,
        );
        let (plain, d0) = (&tests[0], &tests[1]);
        assert!(!plain.dom0 && !plain.bare);
        assert!(plain.watch.done.is_none() && plain.watch.inputs.is_empty());
        assert!(d0.dom0 && !d0.bare);
        assert_eq!(d0.watch.inputs.len(), 2);
        assert_eq!(d0.watch.inputs[0].send, "ls\n");
        assert_eq!(d0.expect.len(), 1);
        // The xfail expectation does not fail the check; check_xfail reports it.
        let log = "(d0) Linux version 6.1\n";
        assert!(check(d0, log).is_empty());
        let (still, now) = check_xfail(d0, log);
        assert_eq!(
            still,
            [("init started".to_string(), "not there yet".to_string())]
        );
        assert!(now.is_empty());
        let (still, now) = check_xfail(d0, "Linux version\ndom0: init started\n");
        assert!(still.is_empty());
        assert_eq!(now, ["init started"]);
    }

    #[test]
    fn mistakes_in_the_manifest_are_reported() {
        let bad_on = |emulator: &str, extra: &str| {
            let text = format!("[[test]]\nname = \"t\"\nemulator = \"{emulator}\"\ncpu = \"max\"\ncmdline = \"\"\n{extra}\n");
            let path = scratch();
            std::fs::write(&path, text).unwrap();
            let r = load(&path).err().map(|e| format!("{e:#}"));
            let _ = std::fs::remove_file(&path);
            r.expect("should be rejected")
        };
        let bad = |extra: &str| bad_on("qemu", extra);
        assert!(bad_on("bochs", "bare = true\ndone = 'x'").contains("qemu"));
        assert!(bad("expect_per_cpu = ['no placeholder']").contains("has no {cpu}"));
        assert!(bad("expect = ['cpu{cpu}']").contains("expect_per_cpu"));
        assert!(bad("expect = ['(unclosed']").contains("bad regular expression"));
        assert!(bad("timeout = 3").contains("unknown field"));
        assert!(bad("bare = true").contains("needs `done`"));
        assert!(bad("bare = true\ndom0 = true\ndone = 'x'").contains("drop dom0"));
        assert!(bad("input = [{ after = 'x' }]").contains("send"));
        assert!(bad("done = '(x'").contains("bad regular expression"));
    }
}
