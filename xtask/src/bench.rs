//! `cargo xtask bench`: image size from the ELF, and the cost of a null
//! hypercall measured in emulated instructions; results go to BENCHMARKS.md.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use object::elf::PT_LOAD;
use object::read::elf::{ElfFile64, ProgramHeader as _};
use object::{Object as _, ObjectSection as _};
use regex::Regex;

use crate::emu::{
    boot_and_watch, boot_and_watch_with, Accel, Emulator, Ending, Input, Machine, Media, Watch,
    BOCHS_IPS,
};
use crate::image::{make_iso, target_dir, IsoSpec};
use crate::util::{repo_root, run_captured, show, step, tail, tool_version};

mod io;
mod migrate;
mod scale;

const BENCH_CMDLINE: &str = "console=com1,115200 bench";
const BENCH_TIMEOUT: Duration = Duration::from_secs(300);

/// The hypervisor command line of the dom0 boot benchmark (as test `dom0-boot-svm`).
const DOM0_CMDLINE: &str = "console=com1,115200 dom0_mem=256M";
/// The dom0 boot benchmark's third boot: its kernel's log through the emulated UART too.
const DOM0_CMDLINE_EMULATED: &str = "console=com1,115200 dom0_mem=256M dom0_console_direct=off";
/// dom0's init banner, the end of the timed boot (bare and under Oxen alike).
const BANNER: &str = r"dom0: init started";
/// The hypervisor's tally of dom0's exits: printed ~5 s after dom0 first idles with
/// nothing to deliver, or on its console's `e` key.
const IDLE_TALLY: &str = r"\(oxen\) dom0: (\d+) exits \((first idle stretch|console)\):(.*)";
/// dom0's init prints this just before its shell's prompt.
const SHELL_LINE: &str = r"dom0: root shell on the console";
/// Ctrl-A three times moves serial input to the hypervisor's console; `e` asks it for
/// the exit tally.
const TALLY_KEYS: &str = "\u{1}\u{1}\u{1}e";
/// Up to the banner, for either boot.
const DOM0_TIMEOUT: Duration = Duration::from_secs(180);
/// After the banner, for the idle tally.
const TALLY_GRACE: Duration = Duration::from_secs(60);
/// Bare/Oxen pairs, run alternately.
const DOM0_ROUNDS: usize = 2;

/// dom0's kernel arguments for the measurements made inside dom0: init runs
/// `dom0-bootstrap/tests/bench.sh` before its shell; `nr_cpus=1` spares dom0 the 10 s
/// it otherwise spends waiting for the second CPU of the firmware's MADT to start.
const INSIDE_ARGS: &str = "nr_cpus=1 dom0_run=/usr/lib/oxen/tests/bench.sh";
/// bench.sh's last line.
const INSIDE_DONE: &str = r"^\(oxen\) \(d0\) bench: done";
/// A boot of dom0 plus bench.sh, under either clock.
const INSIDE_TIMEOUT: Duration = Duration::from_secs(900);

pub struct Sizes {
    pub sections: Vec<(&'static str, u64)>,
    pub loaded: u64,
    pub file: u64,
}

/// Bytes of .text/.rodata/.data/.bss (including `.name.*` input sections kept
/// apart), the memory the PT_LOAD segments occupy, and the file's size.
pub fn image_sizes(elf: &Path) -> Result<Sizes> {
    let data = std::fs::read(elf).with_context(|| format!("reading {}", elf.display()))?;
    let file = ElfFile64::<object::Endianness>::parse(&*data)
        .with_context(|| format!("{} is not an ELF64 file", elf.display()))?;
    let mut sections = Vec::new();
    for name in [".text", ".rodata", ".data", ".bss"] {
        let sub = format!("{name}.");
        let total: u64 = file
            .sections()
            .filter(|s| s.name().is_ok_and(|n| n == name || n.starts_with(&sub)))
            .map(|s| s.size())
            .sum();
        sections.push((name, total));
    }
    let endian = file.endian();
    let loaded = file
        .elf_program_headers()
        .iter()
        .filter(|p| p.p_type(endian) == PT_LOAD)
        .map(|p| p.p_memsz(endian))
        .sum();
    Ok(Sizes {
        sections,
        loaded,
        file: data.len() as u64,
    })
}

pub struct Hypercall {
    pub iterations: u64,
    pub tsc_delta: u64,
    pub command: String,
}

/// Boots QEMU TCG with `-icount shift=0` and reads the hypervisor's bench line.
fn hypercall_null(elf: &Path) -> Result<Hypercall> {
    let dir = target_dir().join("bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let iso = dir.join("oxen.iso");
    make_iso(&IsoSpec {
        elf,
        cmdline: BENCH_CMDLINE,
        modules: &[],
        name: "bench",
        output: &iso,
    })?;
    let m = Machine {
        emulator: Emulator::Qemu,
        cpu: Some("max".into()),
        smp: 1,
        memory_mib: 256,
        accel: Accel::Tcg,
        icount: true,
        bochs_ips: BOCHS_IPS,
        disk: None,
        shared_disk: None,
        serve: None,
        link: None,
    };
    step(format!(
        "booting QEMU TCG -icount shift=0 with `{BENCH_CMDLINE}` (up to {}s)",
        BENCH_TIMEOUT.as_secs()
    ));
    let boot = boot_and_watch(&m, &dir, &iso, BENCH_TIMEOUT)?;
    let re = Regex::new(r"\(oxen\) bench: hypercall-null iterations=(\d+) tsc_delta=(\d+)")?;
    let found = boot.serial.lines().find_map(|l| re.captures(l));
    let Some(c) = found else {
        let how = match boot.ending {
            Ending::Halted | Ending::Done => "the hypervisor halted".to_string(),
            Ending::TimedOut => format!("timed out after {}s", BENCH_TIMEOUT.as_secs()),
            Ending::Exited(s) => format!("QEMU exited ({s})"),
            Ending::Aborted(ref l) => format!("stopped on: {l}"),
        };
        bail!(
            "the hypervisor never printed `(oxen) bench: hypercall-null iterations=<N> tsc_delta=<D>` ({how}).\n\
             Does it implement the `bench` command-line option yet? Command:\n    {}\nlast lines of {}:\n{}",
            boot.command,
            show(&dir.join("serial.log")),
            tail(&boot.serial, 20)
        );
    };
    let iterations: u64 = c[1].parse()?;
    let tsc_delta: u64 = c[2].parse()?;
    if iterations == 0 {
        bail!("bench line reports 0 iterations");
    }
    // Paths relative to the repo root, so the command reads the same on every machine.
    let command = boot
        .command
        .replace(&format!("{}/", repo_root().display()), "");
    Ok(Hypercall {
        iterations,
        tsc_delta,
        command,
    })
}

/// One round of the dom0 boot benchmark: seconds from QEMU's start to the banner.
pub struct Dom0Round {
    pub bare: f64,
    pub oxen: f64,
    /// The hypervisor's first-idle tally for this round's Oxen boot, if it came.
    pub exits: Option<Tally>,
    /// The same boot with `dom0_console_direct=off` (every byte through the
    /// emulated UART): its time and tally.
    pub emulated: f64,
    pub emulated_exits: Option<Tally>,
}

pub struct Dom0Boot {
    pub rounds: Vec<Dom0Round>,
    pub bare_command: String,
    pub oxen_command: String,
    /// The init banner as the bare boot printed it (it names the kernel).
    pub banner: String,
}

/// `(total, [(reason, count)], why)` from a `(oxen) dom0: N exits (why): ...` line.
pub type Tally = (u64, Vec<(String, u64)>, String);

/// Parses the hypervisor's first-idle tally out of a serial log.
fn parse_tally(serial: &str) -> Option<Tally> {
    let re = Regex::new(IDLE_TALLY).ok()?;
    let c = serial.lines().find_map(|l| re.captures(l))?;
    let total = c[1].parse().ok()?;
    let mut reasons = Vec::new();
    for field in c[3].split_whitespace() {
        let (name, n) = field.split_once('=')?;
        reasons.push((name.to_string(), n.parse().ok()?));
    }
    Some((total, reasons, c[2].to_string()))
}

/// Why dom0 leaves to the hypervisor for each reason (one line each).
fn exit_reason(name: &str) -> &'static str {
    match name {
        "io" => "dom0's console UART is emulated: from init on every byte written is an OUT, plus the LSR poll before \
                 it; before, its kernel writes COM1's data register itself (`dom0_console_direct`) and only the \
                 other registers exit (Linux's console saves, clears and restores IER around each message)",
        "npf" => "the local APIC and IOAPIC are emulated, so dom0's MMIO to them faults in the nested page table",
        "cpuid" => "SVM always intercepts CPUID (the hypervisor filters the leaves dom0 sees)",
        "msr-read" | "msr-write" => "EFER, PAT and the x2APIC/APIC MSRs are intercepted (the LAPIC timer and EOI go through them)",
        "preempted" => "the host's own timer and physical interrupts take the CPU back from dom0",
        "intr-window" => "an interrupt was pending while dom0 had interrupts off: exit when it can take it",
        "hlt" => "dom0 idles: HLT hands the CPU back until its next timer or interrupt",
        "hypercall" => "dom0 calls the hypervisor (VMMCALL)",
        _ => "everything else (exceptions, shutdown, unhandled reasons)",
    }
}

/// A command as it reads on every machine: paths relative to the repo root, and
/// the serial socket's per-run name replaced.
pub(crate) fn relative(command: &str) -> String {
    let c = command.replace(&format!("{}/", repo_root().display()), "");
    match Regex::new(r"path=\S*oxen-serial-\S*\.sock") {
        Ok(re) => re.replace_all(&c, "path=SOCKET").into_owned(),
        Err(_) => c,
    }
}

/// Boots dom0's kernel and initramfs bare and under Oxen, alternately, `DOM0_ROUNDS`
/// times each, timing QEMU's start to dom0's init banner; the Oxen boots go on to
/// the hypervisor's first-idle exit tally.
fn dom0_boot(elf: &Path) -> Result<Dom0Boot> {
    let dom0 = crate::dom0::prepare().context("preparing dom0's kernel and initramfs")?;
    let base = target_dir().join("bench");
    let (bare_dir, oxen_dir, emulated_dir) =
        (base.join("dom0-bare"), base.join("dom0-oxen"), base.join("dom0-oxen-emulated"));
    for d in [&bare_dir, &oxen_dir, &emulated_dir] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d)?;
    }
    let (iso, emulated_iso) = (oxen_dir.join("oxen.iso"), emulated_dir.join("oxen.iso"));
    for (cmdline, output) in [(DOM0_CMDLINE, &iso), (DOM0_CMDLINE_EMULATED, &emulated_iso)] {
        make_iso(&IsoSpec {
            elf,
            cmdline,
            modules: &dom0.modules(crate::systest::Dom0Kernel::BzImage),
            name: "bench-dom0",
            output,
        })?;
    }
    let m = Machine {
        emulator: Emulator::Qemu,
        cpu: Some("max".into()),
        smp: 1,
        memory_mib: 512,
        accel: Accel::Tcg,
        icount: false,
        bochs_ips: BOCHS_IPS,
        disk: None,
        shared_disk: None,
        serve: None,
        link: None,
    };
    let banner = Regex::new(BANNER)?;
    let bare_watch = Watch {
        done: Some(banner.clone()),
        marks: vec![banner.clone()],
        ..Watch::default()
    };
    let oxen_watch = Watch {
        done: Some(Regex::new(IDLE_TALLY)?),
        marks: vec![banner.clone()],
        grace: Some(TALLY_GRACE),
        // dom0's timer keeps waking it, so the first-idle tally may never come: at the
        // shell, ask the hypervisor's console for the tally instead.
        inputs: vec![Input {
            after: Regex::new(SHELL_LINE)?,
            send: TALLY_KEYS.into(),
        }],
        ..Watch::default()
    };
    // The same kernel command line dom0 gets under Oxen, so both print the
    // same; and the same way in: SeaBIOS, GRUB and its CD reads (~7 s of an
    // Oxen boot's ~13 s to dom0's init, loading the 70 MiB initramfs), which
    // QEMU's own `-kernel` would skip.
    let bare_iso = bare_dir.join("linux.iso");
    crate::image::make_linux_iso(&dom0.kernel, &dom0.initrd, crate::dom0::KERNEL_ARGS, "bench-dom0-bare", &bare_iso)?;
    let bare_media = Media::Iso(&bare_iso);
    let timed = |which: &str, dir: &Path, media: Media, watch: &Watch, timeout: Duration| {
        step(format!(
            "dom0 boot {which}: QEMU TCG -cpu max, 512 MiB (up to {}s to `{BANNER}`)",
            DOM0_TIMEOUT.as_secs()
        ));
        let boot = boot_and_watch_with(&m, dir, media, timeout, watch)?;
        match boot.marks[0] {
            Some(t) => Ok((t.as_secs_f64(), boot)),
            None => {
                let how = match boot.ending {
                    Ending::Halted => "the hypervisor halted".to_string(),
                    Ending::Done => "the run ended".to_string(),
                    Ending::TimedOut => format!("timed out after {}s", timeout.as_secs()),
                    Ending::Exited(s) => format!("QEMU exited ({s})"),
                    Ending::Aborted(ref l) => format!("stopped on: {l}"),
                };
                bail!(
                    "dom0 booted {which} never printed `{BANNER}` ({how}). Command:
    {}
last lines of {}:
{}",
                    boot.command,
                    show(&dir.join("serial.log")),
                    tail(&boot.serial, 20)
                )
            }
        }
    };
    let mut rounds = Vec::new();
    let (mut bare_command, mut oxen_command, mut banner_line) =
        (String::new(), String::new(), String::new());
    for round in 1..=DOM0_ROUNDS {
        let (bare, b) = timed(
            &format!("bare (round {round}/{DOM0_ROUNDS})"),
            &bare_dir,
            bare_media,
            &bare_watch,
            DOM0_TIMEOUT,
        )?;
        println!("     bare: {bare:.1}s to the init banner");
        bare_command = relative(&b.command);
        banner_line = b
            .serial
            .lines()
            .find(|l| banner.is_match(l))
            .unwrap_or_default()
            .trim()
            .to_string();
        // Under Oxen: its time to the banner and its exit tally, then again with
        // the kernel's log through the emulated UART.
        let under = |how: &str, dir: &Path, iso: &Path| -> Result<(f64, Option<Tally>, String)> {
            let label = format!("{how} (round {round}/{DOM0_ROUNDS})");
            let (t, o) = timed(&label, dir, Media::Iso(iso), &oxen_watch, DOM0_TIMEOUT + TALLY_GRACE)?;
            let exits = parse_tally(&o.serial);
            println!(
                "     {how}: {t:.1}s to the init banner ({:.2}x bare); exit tally: {}",
                t / bare,
                match &exits {
                    Some((n, _, why)) => format!("{n} exits ({why})"),
                    None => format!(
                        "none within {}s of the banner (see {})",
                        TALLY_GRACE.as_secs(),
                        show(&dir.join("serial.log"))
                    ),
                }
            );
            Ok((t, exits, relative(&o.command)))
        };
        let (oxen, exits, command) = under("under Oxen", &oxen_dir, &iso)?;
        oxen_command = command;
        let (emulated, emulated_exits, _) =
            under("under Oxen, dom0_console_direct=off", &emulated_dir, &emulated_iso)?;
        rounds.push(Dom0Round { bare, oxen, exits, emulated, emulated_exits });
    }
    Ok(Dom0Boot {
        rounds,
        bare_command,
        oxen_command,
        banner: banner_line,
    })
}

/// One `oxen-null-bench` line: `null|refused|syscall`, calls, TSC cycles for all.
#[derive(Clone, Debug, PartialEq)]
pub struct NullRun {
    pub kind: String,
    pub calls: u64,
    pub cycles: u64,
}

impl NullRun {
    fn per_call(&self) -> f64 {
        self.cycles as f64 / self.calls.max(1) as f64
    }
}

/// One kind of hypercall in an `OXL_STATS=1` tally: name, calls, microseconds in them.
#[derive(Clone, Debug, PartialEq)]
pub struct HcKind {
    pub name: String,
    pub calls: u64,
    pub us: f64,
}

/// An `oxl: stats: N hypercalls, T us: kind n (t us), ...` tally (OXL_STATS=1).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HcTally {
    pub total: u64,
    pub us: f64,
    pub kinds: Vec<HcKind>,
}

/// One `oxl create` of minimal-1, as bench.sh timed it in dom0.
#[derive(Clone, Debug, PartialEq)]
pub struct CreateRound {
    /// Microseconds until `oxl create` returned.
    pub create_us: u64,
    /// Microseconds until the domU's first console line was read in dom0.
    pub first_line_us: u64,
    /// `DomainInfo.exits` right after that line.
    pub exits: u64,
    pub line: String,
    pub hypercalls: Option<HcTally>,
}

/// What bench.sh printed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InsideFigures {
    pub null: Vec<NullRun>,
    pub rounds: Vec<CreateRound>,
    /// Ten `oxl info` runs, in microseconds.
    pub info_us: Option<u64>,
    /// Reading dom0's clock twice in a row (microseconds), each time measured.
    pub clock_us: Vec<u64>,
    pub info_hypercalls: Option<HcTally>,
    /// The hypervisor's TSC calibration (MHz), to turn cycles into time.
    pub tsc_mhz: Option<f64>,
}

fn parse_tally_text(text: &str) -> Option<HcTally> {
    let re = Regex::new(r"stats: (\d+) hypercalls(?:, ([\d.]+) us)?(?:: (.*))?$").ok()?;
    let kind = Regex::new(r"^(\S+) (\d+) \(([\d.]+) us\)$").ok()?;
    let c = re.captures(text.trim_end())?;
    let mut kinds = Vec::new();
    if let Some(list) = c.get(3) {
        for part in list.as_str().split(", ") {
            let k = kind.captures(part)?;
            kinds.push(HcKind {
                name: k[1].to_string(),
                calls: k[2].parse().ok()?,
                us: k[3].parse().ok()?,
            });
        }
    }
    Some(HcTally {
        total: c[1].parse().ok()?,
        us: c.get(2).map_or(Some(0.0), |m| m.as_str().parse().ok())?,
        kinds,
    })
}

/// The `bench: ` lines of dom0's output in a serial log.
fn parse_inside(serial: &str) -> InsideFigures {
    let mut f = InsideFigures::default();
    let null = Regex::new(r"bench: null-bench (\w+) (\d+) calls (\d+) cycles").expect("regex");
    let round = Regex::new(
        r"bench: create round (\d+) create_us=(\d+) first_line_us=(\d+) exits=(\d*) line=(.*)$",
    )
    .expect("regex");
    let stats = Regex::new(r"bench: create round (\d+) (stats: .*)$").expect("regex");
    let info = Regex::new(r"bench: oxl-info 10 runs us=(\d+) ?(.*)$").expect("regex");
    let clock = Regex::new(r"bench: clock overhead_us=(\d+)").expect("regex");
    let tsc = Regex::new(r"^\(oxen\) apic: .*TSC (\d+(?:\.\d+)?) MHz").expect("regex");
    for l in crate::util::log_lines(serial) {
        if let Some(c) = null.captures(l) {
            f.null.push(NullRun {
                kind: c[1].to_string(),
                calls: c[2].parse().unwrap_or(0),
                cycles: c[3].parse().unwrap_or(0),
            });
        } else if let Some(c) = round.captures(l) {
            f.rounds.push(CreateRound {
                create_us: c[2].parse().unwrap_or(0),
                first_line_us: c[3].parse().unwrap_or(0),
                exits: c[4].parse().unwrap_or(0),
                line: c[5].trim().to_string(),
                hypercalls: None,
            });
        } else if let Some(c) = stats.captures(l) {
            let n: usize = c[1].parse().unwrap_or(0);
            if let Some(r) = f.rounds.get_mut(n.wrapping_sub(1)) {
                r.hypercalls = parse_tally_text(&c[2]);
            }
        } else if let Some(c) = info.captures(l) {
            f.info_us = c[1].parse().ok();
            f.info_hypercalls = parse_tally_text(&c[2]);
        } else if let Some(c) = clock.captures(l) {
            f.clock_us.push(c[1].parse().unwrap_or(0));
        } else if let Some(c) = tsc.captures(l) {
            f.tsc_mhz = c[1].parse().ok();
        }
    }
    f
}

/// One boot of dom0 running bench.sh, and what it measured.
pub struct Inside {
    pub icount: bool,
    pub figures: InsideFigures,
    pub command: String,
    /// Wall seconds of the whole run (boot included).
    pub elapsed: f64,
}

/// Boots Oxen with dom0 in QEMU TCG `-cpu max`, 2 CPUs (dom0 on the first, the domU
/// on the second), with `-icount shift=0` or without, and collects bench.sh's lines.
fn inside_dom0(elf: &Path, icount: bool) -> Result<Inside> {
    step(format!(
        "inside dom0: QEMU TCG -cpu max{}, 2 CPUs: dom0 runs bench.sh (up to {}s)",
        if icount { " -icount shift=0" } else { "" },
        INSIDE_TIMEOUT.as_secs()
    ));
    let watch = Watch {
        done: Some(Regex::new(INSIDE_DONE)?),
        ..Watch::default()
    };
    let (boot, dir) = boot_dom0_script(
        elf,
        icount,
        if icount {
            "inside-icount"
        } else {
            "inside-tcg"
        },
        INSIDE_ARGS,
        &watch,
        INSIDE_TIMEOUT,
    )?;
    let figures = parse_inside(&boot.serial);
    if !matches!(boot.ending, Ending::Done) || figures.null.is_empty() || figures.rounds.is_empty()
    {
        let how = match boot.ending {
            Ending::Halted => "the hypervisor halted".to_string(),
            Ending::Done => "bench.sh ended without its figures".to_string(),
            Ending::TimedOut => format!("timed out after {}s", INSIDE_TIMEOUT.as_secs()),
            Ending::Exited(s) => format!("QEMU exited ({s})"),
            Ending::Aborted(ref l) => format!("stopped on: {l}"),
        };
        bail!(
            "dom0's bench.sh did not finish ({how}). Command:\n    {}\nlast lines of {}:\n{}",
            boot.command,
            show(&dir.join("serial.log")),
            tail(&boot.serial, 20)
        );
    }
    Ok(Inside {
        icount,
        figures,
        command: relative(&boot.command),
        elapsed: boot.elapsed.as_secs_f64(),
    })
}

/// dom0's kernel arguments for the scheduler measurements: init runs
/// `dom0-bootstrap/tests/sched-bench.sh`, whose window (seconds) follows.
const SCHED_ARGS: &str = "nr_cpus=1 dom0_run=/usr/lib/oxen/tests/sched-bench.sh";
/// sched-bench.sh's last line.
const SCHED_DONE: &str = r"^\(oxen\) \(d0\) sched-bench: done";
/// The measuring window of the weights part, in seconds of dom0's clock: under
/// icount every spun instruction is a nanosecond, so its window costs the emulator more.
const SCHED_WINDOW_TCG: u32 = 12;
const SCHED_WINDOW_ICOUNT: u32 = 6;
/// The hypervisor console's `s` key, and back to dom0.
const STATS_KEYS: &str = "\u{1}\u{1}\u{1}s\u{1}\u{1}\u{1}";
/// The readings sched-bench.sh asks for, in order.
const SCHED_READINGS: [&str; 4] = ["weights-start", "weights-end", "cli-start", "cli-end"];
/// What the host simulation of the scheduler is run with (docs/architecture.md).
const SIM_ARGS: [&str; 8] = [
    "test",
    "-p",
    "oxen-hypervisor",
    "sched::sim",
    "--",
    "--nocapture",
    "--test-threads",
    "1",
];

/// One reading of the hypervisor's scheduler counters (`sched::run::STATS`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SchedCounters {
    pub switches: u64,
    pub switch_cycles: u64,
    pub wakeups: u64,
    pub wakeup_ns: u64,
    /// Since boot: a maximum cannot be taken apart.
    pub wakeup_max_us: u64,
}

impl SchedCounters {
    /// What happened between `before` and this reading (the maximum stays since boot).
    fn since(&self, before: &SchedCounters) -> SchedCounters {
        SchedCounters {
            switches: self.switches.saturating_sub(before.switches),
            switch_cycles: self.switch_cycles.saturating_sub(before.switch_cycles),
            wakeups: self.wakeups.saturating_sub(before.wakeups),
            wakeup_ns: self.wakeup_ns.saturating_sub(before.wakeup_ns),
            wakeup_max_us: self.wakeup_max_us,
        }
    }
    fn per_switch(&self) -> Option<f64> {
        (self.switches > 0).then(|| self.switch_cycles as f64 / self.switches as f64)
    }
    fn wakeup_mean_ns(&self) -> Option<f64> {
        (self.wakeups > 0).then(|| self.wakeup_ns as f64 / self.wakeups as f64)
    }
}

/// What sched-bench.sh and the hypervisor printed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SchedFigures {
    /// `(reading name, counters)` in order.
    pub readings: Vec<(String, SchedCounters)>,
    /// The weights window: dom0 wall microseconds, spin-w256's and spin-w512's CPU ns.
    pub weights: Option<(u64, u64, u64)>,
    /// Ten `oxl list`, each in microseconds (a clock read included): dom0 alone, beside spin-cli.
    pub alone_us: Vec<u64>,
    pub beside_us: Vec<u64>,
    pub clock_us: Option<u64>,
    pub cli_ran_ns: Option<u64>,
}

impl SchedFigures {
    fn reading(&self, name: &str) -> Option<&SchedCounters> {
        self.readings
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c)
    }
    /// The counters' difference between readings `a` and `b`.
    fn between(&self, a: &str, b: &str) -> Option<SchedCounters> {
        Some(self.reading(b)?.since(self.reading(a)?))
    }
    /// spin-w512's CPU time over spin-w256's.
    fn ratio(&self) -> Option<f64> {
        let (_, a, b) = self.weights?;
        (a > 0).then(|| b as f64 / a as f64)
    }
}

fn parse_counters(line: &str) -> Option<SchedCounters> {
    let re = Regex::new(
        r"\(oxen\) sched: (\d+) vCPU switches, \d+ TSC cycles each .*; (\d+) wake-ups, \d+ us mean / (\d+) us max .*\(sums: (\d+) TSC cycles, (\d+) ns\)",
    )
    .ok()?;
    let c = re.captures(line)?;
    Some(SchedCounters {
        switches: c[1].parse().ok()?,
        wakeups: c[2].parse().ok()?,
        wakeup_max_us: c[3].parse().ok()?,
        switch_cycles: c[4].parse().ok()?,
        wakeup_ns: c[5].parse().ok()?,
    })
}

fn numbers(text: &str) -> Vec<u64> {
    text.split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// The `sched-bench: ` lines of dom0's output and the hypervisor's counter lines
/// answering them (each reading is the first counter line after its request).
fn parse_sched(serial: &str) -> SchedFigures {
    let mut f = SchedFigures::default();
    let ask = Regex::new(r"sched-bench: counters (\S+)").expect("regex");
    let weights = Regex::new(r"sched-bench: weights wall_us=(\d+) w256_ns=(\d+) w512_ns=(\d+)")
        .expect("regex");
    let lists =
        Regex::new(r"sched-bench: oxl-list (alone|beside spin-cli) us=(.*)$").expect("regex");
    let clock = Regex::new(r"sched-bench: clock overhead_us=(\d+)").expect("regex");
    let ran = Regex::new(r"sched-bench: spin-cli ran_ns=(\d+)").expect("regex");
    let mut asked: Option<String> = None;
    for l in crate::util::log_lines(serial) {
        if let Some(c) = ask.captures(l) {
            asked = Some(c[1].to_string());
        } else if let Some(counters) = parse_counters(l) {
            if let Some(name) = asked.take() {
                f.readings.push((name, counters));
            }
        } else if let Some(c) = weights.captures(l) {
            let n = |i: usize| c[i].parse().unwrap_or(0);
            f.weights = Some((n(1), n(2), n(3)));
        } else if let Some(c) = lists.captures(l) {
            if &c[1] == "alone" {
                f.alone_us = numbers(&c[2]);
            } else {
                f.beside_us = numbers(&c[2]);
            }
        } else if let Some(c) = clock.captures(l) {
            f.clock_us = c[1].parse().ok();
        } else if let Some(c) = ran.captures(l) {
            f.cli_ran_ns = c[1].parse().ok();
        }
    }
    f
}

/// One boot of dom0 running sched-bench.sh.
pub struct SchedRun {
    pub icount: bool,
    pub window: u32,
    pub figures: SchedFigures,
    pub command: String,
}

/// Boots Oxen with dom0 (`extra` added to its kernel arguments) in QEMU TCG `-cpu
/// max`, 2 CPUs, 512 MiB, with `-icount shift=0` or without, under target/bench/`name`.
pub(crate) fn boot_dom0_script(
    elf: &Path,
    icount: bool,
    name: &str,
    extra: &str,
    watch: &Watch,
    timeout: Duration,
) -> Result<(crate::emu::Boot, std::path::PathBuf)> {
    boot_dom0_script_with(elf, icount, name, extra, watch, timeout, 512)
}

/// `boot_dom0_script` on a machine of `memory_mib` MiB.
pub(crate) fn boot_dom0_script_with(
    elf: &Path,
    icount: bool,
    name: &str,
    extra: &str,
    watch: &Watch,
    timeout: Duration,
    memory_mib: u32,
) -> Result<(crate::emu::Boot, std::path::PathBuf)> {
    let dom0 = crate::dom0::prepare().context("preparing dom0's kernel and initramfs")?;
    let dir = target_dir().join("bench").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut modules = dom0.modules(crate::systest::Dom0Kernel::BzImage);
    modules[0].args = format!("{} {extra}", modules[0].args);
    let iso = dir.join("oxen.iso");
    make_iso(&IsoSpec {
        elf,
        cmdline: DOM0_CMDLINE,
        modules: &modules,
        name: &format!("bench-{name}"),
        output: &iso,
    })?;
    let m = Machine {
        emulator: Emulator::Qemu,
        cpu: Some("max".into()),
        smp: 2,
        memory_mib,
        accel: Accel::Tcg,
        icount,
        bochs_ips: BOCHS_IPS,
        disk: None,
        shared_disk: None,
        serve: None,
        link: None,
    };
    let boot = boot_and_watch_with(&m, &dir, Media::Iso(&iso), timeout, watch)?;
    Ok((boot, dir))
}

/// Boots dom0 running sched-bench.sh, typing the `s` key at each of its requests.
fn sched_dom0(elf: &Path, icount: bool) -> Result<SchedRun> {
    let window = if icount {
        SCHED_WINDOW_ICOUNT
    } else {
        SCHED_WINDOW_TCG
    };
    let mut inputs = Vec::new();
    for name in SCHED_READINGS {
        inputs.push(Input {
            after: Regex::new(&format!(r"sched-bench: counters {name}"))?,
            send: STATS_KEYS.into(),
        });
    }
    let watch = Watch {
        done: Some(Regex::new(SCHED_DONE)?),
        inputs,
        ..Watch::default()
    };
    step(format!(
        "scheduler: QEMU TCG -cpu max{}, 2 CPUs: dom0 runs sched-bench.sh, window {window} s (up to {}s)",
        if icount { " -icount shift=0" } else { "" },
        INSIDE_TIMEOUT.as_secs()
    ));
    let (boot, dir) = boot_dom0_script(
        elf,
        icount,
        if icount { "sched-icount" } else { "sched-tcg" },
        &format!("{SCHED_ARGS} sched_window={window}"),
        &watch,
        INSIDE_TIMEOUT,
    )?;
    let figures = parse_sched(&boot.serial);
    let missing: Vec<&str> = SCHED_READINGS
        .iter()
        .copied()
        .filter(|n| figures.reading(n).is_none())
        .collect();
    if !matches!(boot.ending, Ending::Done)
        || figures.weights.is_none()
        || figures.beside_us.is_empty()
        || !missing.is_empty()
    {
        let how = match boot.ending {
            Ending::Halted => "the hypervisor halted".to_string(),
            Ending::Done => format!(
                "sched-bench.sh ended without its figures{}",
                if missing.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (no `(oxen) sched: ... (sums: ...)` line after: {})",
                        missing.join(", ")
                    )
                }
            ),
            Ending::TimedOut => format!("timed out after {}s", INSIDE_TIMEOUT.as_secs()),
            Ending::Exited(s) => format!("QEMU exited ({s})"),
            Ending::Aborted(ref l) => format!("stopped on: {l}"),
        };
        bail!(
            "dom0's sched-bench.sh did not finish ({how}). Command:\n    {}\nlast lines of {}:\n{}",
            boot.command,
            show(&dir.join("serial.log")),
            tail(&boot.serial, 20)
        );
    }
    println!(
        "     done in {:.0}s: weights ratio {}",
        boot.elapsed.as_secs_f64(),
        figures.ratio().map_or("–".into(), |r| format!("{r:.3}"))
    );
    Ok(SchedRun {
        icount,
        window,
        figures,
        command: relative(&boot.command),
    })
}

/// The host simulation's figures (`sched/sim.rs`): the 1:2 weights and dom0's
/// wake-up latency against a spinner.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SimFigures {
    /// Shares (%) of the weight-256 and weight-512 spinners, their ratio and its error (%).
    pub weights: Option<(f64, f64, f64, f64)>,
    /// Mean and max wake-up latency (ns) of the dom0-like vCPU beside a spinner.
    pub dom0_latency: Option<(u64, u64)>,
}

fn parse_sim(out: &str) -> SimFigures {
    let w = Regex::new(
        r"weights 256:512 on cpu0, cpu1 None: ([\d.]+)% vs ([\d.]+)%, ratio ([\d.]+), error ([\d.]+)%",
    )
    .expect("regex");
    let l = Regex::new(r"dom0 \(20% load\) vs spinner: latency mean (\d+) ns max (\d+) ns")
        .expect("regex");
    let mut f = SimFigures::default();
    for line in out.lines() {
        if let Some(c) = w.captures(line) {
            let n = |i: usize| c[i].parse().unwrap_or(0.0);
            f.weights = Some((n(1), n(2), n(3), n(4)));
        } else if let Some(c) = l.captures(line) {
            f.dom0_latency = Some((c[1].parse().unwrap_or(0), c[2].parse().unwrap_or(0)));
        }
    }
    f
}

/// Runs the scheduler's host simulation.
fn sched_sim() -> Result<SimFigures> {
    step(format!(
        "scheduler simulation: cargo {}",
        SIM_ARGS.join(" ")
    ));
    let out = run_captured(
        crate::util::cargo().args(SIM_ARGS),
        "the scheduler simulation",
    )?;
    let f = parse_sim(&out);
    if f.weights.is_none() {
        bail!(
            "the scheduler simulation printed no `weights 256:512 on cpu0, cpu1 None: ...` line:\n{}",
            tail(&out, 20)
        );
    }
    Ok(f)
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// The BENCHMARKS.md section on the credit scheduler.
fn sched_section(runs: &[SchedRun], sim: Option<&SimFigures>, footer: &str) -> String {
    let clock_name = |r: &SchedRun| {
        if r.icount {
            "QEMU `-icount shift=0`"
        } else {
            "QEMU TCG"
        }
    };
    // 1. Fairness.
    let mut fair = String::from(
        "| where | window | spin-w256 CPU time | spin-w512 CPU time | ratio | error vs 2.0 | pCPU 1 busy |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in runs {
        if let (Some((wall, a, b)), Some(ratio)) = (r.figures.weights, r.figures.ratio()) {
            fair.push_str(&format!(
                "| {} ({}) | {:.2} s of dom0's clock | {} | {} | **{ratio:.3}** | **{:.1} %** | {:.0} % |\n",
                clock_name(r),
                if r.icount {
                    "virtual time: 1 s = 10⁹ instructions"
                } else {
                    "emulator time"
                },
                wall as f64 / 1e6,
                ms(a / 1000),
                ms(b / 1000),
                100.0 * (ratio - 2.0).abs() / 2.0,
                100.0 * (a + b) as f64 / 1000.0 / wall.max(1) as f64,
            ));
        }
    }
    if let Some((a, b, ratio, err)) = sim.and_then(|s| s.weights) {
        fair.push_str(&format!(
            "| host simulation (`sched/sim.rs`, the pCPU beside idle) | 10 simulated s | {a:.2} % | {b:.2} % | \
             **{ratio:.3}** | **{err:.1} %** | 100 % |\n"
        ));
    }
    // 2. Switch path and 3. wake-ups, from the counters' differences.
    let mut switch = String::from(
        "| run | window | vCPU switches | per switch | wake-ups | wake-up mean | wake-up max |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let unit = |r: &SchedRun| {
        if r.icount {
            "instructions"
        } else {
            "host cycles"
        }
    };
    let mut icount_pair: Option<(f64, f64)> = None;
    for r in runs {
        for (what, a, b) in [
            (
                "spin-w256 and spin-w512 on pCPU 1 (dom0 idle-ish on pCPU 0)",
                "weights-start",
                "weights-end",
            ),
            (
                "dom0 (10 `oxl list`) beside spin-cli on pCPU 0",
                "cli-start",
                "cli-end",
            ),
        ] {
            let (Some(d), Some(start)) = (r.figures.between(a, b), r.figures.reading(a)) else {
                continue;
            };
            let max = if d.wakeup_max_us > start.wakeup_max_us {
                format!("{} µs, in the window", d.wakeup_max_us)
            } else {
                format!(
                    "none new in the window ({} µs before it)",
                    start.wakeup_max_us
                )
            };
            let per = d.per_switch();
            if r.icount {
                let e = icount_pair.get_or_insert((0.0, 0.0));
                if a == "weights-start" {
                    e.0 = per.unwrap_or(0.0);
                } else {
                    e.1 = per.unwrap_or(0.0);
                }
            }
            let mean = d.wakeup_mean_ns().map_or("–".into(), |ns| {
                if r.icount {
                    format!(
                        "{:.1} µs = {} instructions",
                        ns / 1000.0,
                        thousands(ns as u64)
                    )
                } else {
                    format!("{:.1} µs emulator time", ns / 1000.0)
                }
            });
            switch.push_str(&format!(
                "| {} | {what} | {} | **{}** {} | {} | {mean} | {max} |\n",
                clock_name(r),
                thousands(d.switches),
                per.map_or("–".into(), |p| thousands(p as u64)),
                unit(r),
                thousands(d.wakeups),
            ));
        }
    }
    // 3b. The interactive side.
    let mut lists = String::from(
        "| run | 10 `oxl list`, dom0 alone: median / slowest | the same beside spin-cli: median / slowest | \
         one clock read (in each figure) | spin-cli's CPU time by the end |\n|---|---|---|---|---|\n",
    );
    for r in runs {
        let f = &r.figures;
        let mm = |v: &[u64]| {
            format!(
                "{} / **{}**",
                ms(median(v.to_vec())),
                ms(v.iter().copied().max().unwrap_or(0))
            )
        };
        lists.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            clock_name(r),
            mm(&f.alone_us),
            mm(&f.beside_us),
            f.clock_us.map_or("–".into(), ms),
            f.cli_ran_ns.map_or("–".into(), |n| ms(n / 1000)),
        ));
    }
    let sim_latency = sim
        .and_then(|s| s.dom0_latency)
        .map_or(String::new(), |(mean, max)| {
            format!(
                " The host simulation's dom0-like vCPU (4 ms of work every 20 ms) beside a spinner on one pCPU \
                 waits {:.1} µs mean, {:.1} µs max from its wake-up to running: the IPI, modelled as 2 µs; the \
                 simulation has no path lengths.",
                mean as f64 / 1000.0,
                max as f64 / 1000.0
            )
        });
    let pair = icount_pair.map_or(String::new(), |(domu, dom0)| {
        format!(
            " Under icount a switch between the two domU spinners costs {} instructions; with dom0 on one side \
             {} (dom0's `poll` services its virtual devices).",
            thousands(domu as u64),
            thousands(dom0 as u64)
        )
    });
    let commands: Vec<String> = runs.iter().map(|r| r.command.clone()).collect();
    let windows: Vec<String> = runs
        .iter()
        .map(|r| format!("{} s under {}", r.window, clock_name(r)))
        .collect();
    format!(
        "## Credit scheduler\n\n\
         Measured in dom0 by `dom0-bootstrap/tests/sched-bench.sh`, with the system test's domains \
         (`dom0-bootstrap/domains/spin-*.cfg`, the minimal guest spinning) on 2 pCPUs, dom0 with one vCPU on pCPU 0: \
         (1) spin-w256 and spin-w512 (weights 256 and 512) pinned to pCPU 1, their CPU time (the \
         hypervisor's, `oxl list --json`'s `cpu_time_ns`) over a window of dom0's clock ({}), as sched.sh's \
         weights check; (2) ten `oxl list` timed one by one (`adjtimex`, µs, a clock read included) with dom0 \
         alone, then beside spin-cli, a spinner with interrupts off pinned to dom0's pCPU 0, as sched.sh's \
         last check. Around each part's steady state the script asks for the hypervisor's scheduler counters \
         (`sched::run::STATS`, console key `s`: `cargo xtask bench` types Ctrl-A three times, `s`, Ctrl-A three \
         times while dom0 sleeps) and the tables give the difference of two readings.\n\n\
         ### Fairness: weights 256:512 sharing one pCPU\n\n\
         The credit scheduler should give spin-w512 twice spin-w256's CPU time. Under TCG dom0's clock and the \
         CPU time are the host's time as the emulator sees it, shared with other jobs on 2 host cores; under \
         icount they are virtual (instructions). The simulation is `{}` (the first of its \
         `weights 256:512` lines; docs/architecture.md, \"Scheduler (credit)\").\n\n{fair}\n\
         ### vCPU switch path\n\n\
         What a switch covers (`cpu_loop` in `hypervisor/src/sched/run.rs`): from the TSC read right after one \
         vCPU's `Runnable::run` returns to the TSC read just before the next `run` of a *different* vCPU on the \
         same pCPU: the poll of the vCPU that ran (`DomUVcpu::poll`: the domain table's lock and state), \
         blocking it in the scheduler if it halted, `release` (nothing on SVM), putting it back in `VCPUS`, the \
         loop's turn (the time, flushing the console, polling the blocked vCPUs this pCPU watches, `schedule` \
         under the scheduler's lock, kicks), taking the next out of `VCPUS` (`adopt` if it ran elsewhere). Not \
         in it: the exit that ended the run (the host timer's interrupt and `exit::handle`), what `run` does \
         around `VMRUN` (`DomUVcpu::run` clones the domain's name and memory handle and arms the timer before, \
         takes the domain table's lock to add CPU time after) and the world switch itself (section \"Null \
         hypercall\"). Under `-icount shift=0` the TSC counts instructions (all CPUs' instructions: a figure \
         can hold the other pCPU's if QEMU ran it in between; in the first row that pCPU is dom0's, idle but \
         for its ticks); under TCG it is the host's TSC, so host cycles of emulation, noisy. The \
         windows hold no idle pCPU between two different vCPUs: the counters would count the idle time as part \
         of that switch (a pCPU keeps the vCPU it ran last across a halt), which is why the console's running \
         figure since boot reads far higher than these differences.{pair}\n\n{switch}\n\
         ### Wake-up latency\n\n\
         The counters' wake-ups are blocked vCPUs found ready by their pCPU's poll, timed from that poll to the \
         vCPU's `run`: in these windows dom0's own (the spinners never block), beside an idle pCPU 0 or beside \
         spin-cli. It is the scheduler's part only: a wake-up is noticed when the pCPU next polls (its vCPU's \
         run ends at the earliest time a blocked vCPU wants polling, dom0's next timer or its 10 ms console \
         poll), and that wait is not in it. Under TCG µs of emulator time (host time, noisy); under icount \
         1 µs = 1,000 instructions. The counters keep one maximum, since boot (dom0's boot \
         included), so a window's maximum shows only when it is a new one.{sim_latency}\n\n\
         The interactive side, what dom0's user waits for: `oxl list` (start oxl, a few hypercalls, print) \
         with dom0 alone on pCPU 0 and beside spin-cli, which with interrupts off leaves only the \
         hypervisor's timer to take the pCPU back (sched.sh checks the slowest is under 1 s).\n\n{lists}\n\
         Command: `cargo xtask bench` (or `cargo xtask bench --only sched`), which ran the simulation as \
         `cargo {}` and booted dom0 with `{SCHED_ARGS} sched_window=SECONDS` on its kernel command line in\n\n\
         ```\n{}\n```\n\n{footer}",
        windows.join(", "),
        format_args!("cargo {}", SIM_ARGS.join(" ")),
        SIM_ARGS.join(" "),
        commands.join("\n"),
    )
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// What each `oxen-null-bench` kind includes.
fn null_kind(kind: &str) -> &'static str {
    match kind {
        "null" => "the ioctl forwarding `NULL`: system call, the driver copies the request in and checks it, \
                   `VMCALL`/`VMMCALL` to the hypervisor and back, the result stored to user space",
        "refused" => "the same ioctl refused by the driver after copying the request in (`NULL` with a command: \
                      `EINVAL`): everything above but the hypercall",
        "syscall" => "`getppid(2)`: entering and leaving dom0's kernel, the floor under any ioctl",
        _ => "",
    }
}

/// The BENCHMARKS.md section on null hypercalls from dom0's user space.
fn dom0_null_section(runs: &[&Inside], in_hv: Option<f64>, footer: &str) -> (String, String) {
    let mut table = String::from("| call | ");
    let heads: Vec<String> = runs
        .iter()
        .map(|r| {
            if r.icount {
                "`-icount shift=0`: instructions per call".to_string()
            } else {
                "TCG: host TSC cycles per call".to_string()
            }
        })
        .collect();
    table.push_str(&heads.join(" | "));
    table.push_str(" | what it is |\n|---|");
    table.push_str(&"---|".repeat(runs.len()));
    table.push_str("---|\n");
    let kinds: Vec<String> = runs[0]
        .figures
        .null
        .iter()
        .map(|n| n.kind.clone())
        .collect();
    let per = |r: &Inside, kind: &str| {
        r.figures
            .null
            .iter()
            .find(|n| n.kind == kind)
            .map(NullRun::per_call)
    };
    for kind in &kinds {
        let cells: Vec<String> = runs
            .iter()
            .map(|r| per(r, kind).map_or("–".into(), |v| format!("{v:.1}")))
            .collect();
        table.push_str(&format!(
            "| {kind} | {} | {} |\n",
            cells.join(" | "),
            null_kind(kind)
        ));
    }
    let diff: Vec<Option<f64>> = runs
        .iter()
        .map(|r| Some(per(r, "null")? - per(r, "refused")?))
        .collect();
    let cells: Vec<String> = diff
        .iter()
        .map(|d| d.map_or("–".into(), |v| format!("**{v:.1}**")))
        .collect();
    table.push_str(&format!(
        "| null − refused | {} | the hypercall itself as dom0's kernel sees it: the world switch out of dom0 \
         and back, dom0's vCPU loop around the exit, the dispatch, and storing the result |\n",
        cells.join(" | ")
    ));
    let icount = runs.iter().position(|r| r.icount);
    let mut compare = String::new();
    let mut summary = String::new();
    if let (Some(i), Some(hv)) = (icount, in_hv) {
        if let Some(d) = diff[i] {
            let full = per(runs[i], "null").unwrap_or(0.0);
            compare = format!(
                "\n\nThe in-hypervisor figure above (section \"Null hypercall\": {hv:.1} instructions, a self-test \
                 guest's kernel-mode `VMMCALL` loop under the same `-icount shift=0`) is the bare round trip: the \
                 world switch, `exit::handle` and the dispatch. From dom0's kernel the hypercall costs {d:.1} \
                 instructions, {:.1}× that: the {:.0} more are what every exit of a domain's vCPU pays on the one \
                 vCPU path (`vm/vcpu.rs`, `GuestVcpu::run`): the exit counted by reason, the check for a host \
                 interrupt before the entry, the hypercall's dispatch for a domain (its `Caller`, its RAM view) and \
                 the result stored; a hypercall is a light exit, so no device, APIC or timer is looked at before \
                 the guest is entered again (section \"Null hypercall from dom0's kernel: where the instructions \
                 went\"). The driver adds a `put_user` of the result. The whole ioctl from user space costs \
                 {full:.1} instructions ({:.1}× the bare round trip); the system call and the driver's checks are \
                 the other {:.0}.\n\n\
                 Under plain TCG one hypercall from dom0 costs {} host cycles against {} for the refused ioctl: \
                 QEMU's emulation of the world switch itself (`VMRUN` and `#VMEXIT` load and save the whole CPU \
                 state, paging included) costs far more host time than the instructions around it, so under TCG \
                 what matters is the number of exits, not their instructions.",
                d / hv,
                d - hv,
                full / hv,
                full - d,
                runs.iter()
                    .find(|r| !r.icount)
                    .and_then(|r| per(r, "null"))
                    .map_or("–".into(), |v| thousands(v as u64)),
                runs.iter()
                    .find(|r| !r.icount)
                    .and_then(|r| per(r, "refused"))
                    .map_or("–".into(), |v| thousands(v as u64)),
            );
        }
    }
    if let Some(i) = icount {
        if let Some(v) = per(runs[i], "null") {
            summary = format!(
                "| null hypercall from dom0 user space (ioctl on /dev/oxen) | {v:.1} instructions per call (icount) |\n"
            );
        }
    }
    let commands: Vec<String> = runs.iter().map(|r| r.command.clone()).collect();
    let body = format!(
        "## Null hypercall from dom0's user space\n\n\
         `oxen-null-bench` (`dom0-bootstrap/kmod/null-bench.c`, in dom0 as `/usr/lib/oxen/null-bench`) times \
         {} back-to-back calls of each kind with `RDTSC` (after 100 warm-up calls), in dom0 before any domU \
         exists. Under `-icount shift=0` QEMU's TSC counts instructions, so that column is deterministic \
         instruction counts of everything on the CPU (dom0's user space and kernel, and Oxen); without icount \
         the guest TSC is the host's, so that column is host cycles spent emulating, noisy (2 cores shared with \
         other jobs) and only good for ratios.\n\n{table}{compare}\n\n\
         Command: `cargo xtask bench`, which booted dom0 with `{INSIDE_ARGS}` on its kernel command line \
         (dom0's init runs `dom0-bootstrap/tests/bench.sh`, which runs `/usr/lib/oxen/null-bench 10000`) in\n\n\
         ```\n{}\n```\n\n{footer}",
        runs[0].figures.null.first().map_or(0, |n| n.calls),
        commands.join("\n"),
    );
    (summary, body)
}

fn tally_text(t: &HcTally) -> String {
    let kinds: Vec<String> = t
        .kinds
        .iter()
        .map(|k| format!("{} {}", k.name, k.calls))
        .collect();
    format!("{} ({})", t.total, kinds.join(", "))
}

/// The median time (us) of hypercall `name` over the rounds of one run.
fn kind_us(r: &Inside, name: &str) -> Option<f64> {
    let mut v: Vec<f64> = r
        .figures
        .rounds
        .iter()
        .filter_map(|c| {
            c.hypercalls
                .as_ref()?
                .kinds
                .iter()
                .find(|k| k.name == name)
                .map(|k| k.us)
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// Why `oxl create` makes each kind of hypercall.
fn create_call(kind: &str) -> &'static str {
    match kind {
        "version" => "oxl checks the hypervisor speaks its ABI before anything else",
        "domctl-create" => "the domain: its memory in 2 MiB chunks from the pool (zeroed), nested page tables (its TLB tag is taken per CPU when it runs)",
        "domctl-load_image" => "the kernel ELF staged in the hypervisor, at most 64 KiB (the driver's bounce buffer) per call",
        "domctl-build" => "the ELF checked and laid out with page tables, GDT and StartInfo (its memory zeroed again only on a second BUILD)",
        "domctl-unpause" => "the vCPU queued on the least loaded CPU other than dom0's, which is kicked",
        "domctl-get_info" | "domctl-list" => "looking the domain up",
        "domctl-phys_info" => "the host's figures",
        _ => "",
    }
}

/// The BENCHMARKS.md section on `oxl create` → the domU's first line.
fn create_section(runs: &[&Inside], footer: &str) -> (String, String) {
    let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
    let mut out = String::new();
    let mut summary = String::new();
    for r in runs {
        let f = &r.figures;
        let (title, clock) = if r.icount {
            (
                "Under `-icount shift=0` (deterministic)",
                "dom0's clock is virtual time, one instruction per ns: 1 ms here is 1 million instructions \
                 executed (dom0's and Oxen's; idle waits are skipped over and cost none)",
            )
        } else {
            (
                "Under plain TCG (emulator wall time)",
                "dom0's clock follows the host's: emulator milliseconds, slowed by emulation and by the other \
                 jobs sharing the 2 host cores, so only the ratio to the baseline below means much",
            )
        };
        out.push_str(&format!(
            "### {title}\n\n{clock}.\n\n\
             | round | `oxl create` returned | first console line read | domU exits by then |\n|---|---|---|---|\n"
        ));
        for (i, c) in f.rounds.iter().enumerate() {
            out.push_str(&format!(
                "| {} | {} ms | {} ms | {} |\n",
                i + 1,
                ms(c.create_us),
                ms(c.first_line_us),
                thousands(c.exits)
            ));
        }
        let create = median(f.rounds.iter().map(|c| c.create_us).collect());
        let first = median(f.rounds.iter().map(|c| c.first_line_us).collect());
        let exits = median(f.rounds.iter().map(|c| c.exits).collect());
        let clock = median(f.clock_us.clone());
        out.push_str(&format!(
            "| median | **{} ms** | **{} ms** | **{}** |\n\
             | median less the clock reads in it (one, two: {} ms each) | {} ms | {} ms | |\n\n",
            ms(create),
            ms(first),
            thousands(exits),
            ms(clock),
            ms(create.saturating_sub(clock)),
            ms(first.saturating_sub(2 * clock)),
        ));
        if let Some(info) = f.info_us {
            let per = info as f64 / 10.0;
            out.push_str(&format!(
                "Baselines on the same clock: one `oxl info` (start oxl, open `/dev/oxen`, hypercalls: {}, \
                 print) takes {} ms (10 runs: {} ms), so `oxl create` is {:.1}× and create → first line read \
                 {:.1}× one trivial oxl command; reading the clock itself (`adjtimex | sed`; `oxl create`'s \
                 figure holds one, the first line's two) takes {} ms.\n\n",
                f.info_hypercalls.as_ref().map_or("–".into(), tally_text),
                ms(per as u64),
                ms(info),
                create as f64 / per.max(1.0),
                first as f64 / per.max(1.0),
                ms(clock),
            ));
            summary.push_str(&format!(
                "| `oxl create` → domU's first console line read in dom0, {} | {} ms median ({:.1}× an `oxl info`), domU exits by then: {} |\n",
                if r.icount { "icount (1 ms = 1 M instructions)" } else { "TCG wall" },
                ms(first),
                first as f64 / per.max(1.0),
                thousands(exits)
            ));
        }
    }
    // The hypercalls are the same in every round and under either clock: show one tally.
    let tally = runs
        .iter()
        .flat_map(|r| r.figures.rounds.iter())
        .find_map(|c| c.hypercalls.clone());
    let mut calls = String::new();
    if let Some(t) = &tally {
        let heads: Vec<&str> = runs
            .iter()
            .map(|r| {
                if r.icount {
                    "time in it, icount (1 µs = 1,000 instructions)"
                } else {
                    "time in it, TCG wall"
                }
            })
            .collect();
        calls.push_str(&format!(
            "`oxl create /etc/oxen/minimal-1.cfg` makes **{} hypercalls** (counted with `OXL_STATS=1`, one \
             ioctl on `/dev/oxen` each, the same in every round; the time is oxl's, from the ioctl's call to its \
             return, median of the rounds):\n\n| hypercall | calls | {} | what it does |\n|---|---|{}---|\n",
            t.total,
            heads.join(" | "),
            "---|".repeat(runs.len())
        ));
        for k in &t.kinds {
            let times: Vec<String> = runs
                .iter()
                .map(|r| kind_us(r, &k.name).map_or("–".into(), |us| format!("{us:.1} µs")))
                .collect();
            calls.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                k.name,
                k.calls,
                times.join(" | "),
                create_call(&k.name)
            ));
        }
        calls.push('\n');
    }
    let mut why = String::new();
    if let Some(r) = runs.iter().find(|r| r.icount) {
        let f = &r.figures;
        let clock = median(f.clock_us.clone());
        let create =
            median(f.rounds.iter().map(|c| c.create_us).collect()).saturating_sub(clock) as f64;
        // The first-line interval holds two clock reads: its own and `oxl create`'s end.
        let first = median(f.rounds.iter().map(|c| c.first_line_us).collect())
            .saturating_sub(2 * clock) as f64;
        let info = f.info_us.map(|u| u as f64 / 10.0);
        let mut hc: Vec<(String, f64)> = tally
            .iter()
            .flat_map(|t| t.kinds.iter())
            .filter_map(|k| Some((k.name.clone(), kind_us(r, &k.name)?)))
            .collect();
        let in_calls: f64 = hc.iter().map(|h| h.1).sum();
        hc.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top: Vec<String> = hc
            .iter()
            .take(2)
            .map(|(n, us)| format!("{n} {:.2} ms", us / 1000.0))
            .collect();
        why = format!(
            "Where the time goes (icount figures, so instructions: 1 ms = 1 M): `oxl create` takes {:.2} ms once \
             the clock read is taken out. {:.2} ms of it is inside its hypercalls, mostly {}: the hypervisor \
             zeroes the domain's 16 MiB when `CREATE` takes the memory (`mem::alloc_frames`; `BUILD` zeroes it \
             again only for a second build, `hypervisor/src/domain/control.rs`), and every store \
             instruction of that counts here. The rest, about {:.2} ms, is dom0's: starting the static 1.5 MiB oxl \
             (one `oxl info` costs {}), reading and checking the config, reading the kernel file, and the \
             ioctl path (each hypercall also crosses the system call and the driver's copies, see the section \
             above). The domU's own start is small: its first line needs about {} exits (the console write \
             hypercall among them). The {:.2} ms between `oxl create` returning and the line being read are \
             about one more oxl start (`oxl console`) and a pipe: the line was already there when it looked.\n\n",
            create / 1000.0,
            in_calls / 1000.0,
            top.join(" and "),
            (create - in_calls) / 1000.0,
            info.map_or("–".into(), |i| format!("{:.2} ms", i / 1000.0)),
            median(f.rounds.iter().map(|c| c.exits).collect()),
            (first - create) / 1000.0,
        );
    }
    let line = runs
        .iter()
        .flat_map(|r| r.figures.rounds.first())
        .map(|c| c.line.clone())
        .next()
        .unwrap_or_default();
    let elf_bytes =
        std::fs::metadata(target_dir().join("guests/x86_64-unknown-none/release/minimal"))
            .map_or("–".into(), |m| thousands(m.len()));
    let commands: Vec<String> = runs.iter().map(|r| r.command.clone()).collect();
    let body = format!(
        "## `oxl create` → the domU's first console line\n\n\
         Measured in dom0 by `dom0-bootstrap/tests/bench.sh`, five rounds of: `oxl create /etc/oxen/minimal-1.cfg` \
         (the minimal test guest: 16 MiB, 1 vCPU, a {elf_bytes}-byte ELF), then `oxl console minimal-1` until its \
         first line (`{line}`) is read, then `oxl list --json` for the domain's VM exits, then `oxl destroy`. \
         dom0's clock: busybox's `date` has no `%N`, so the time comes from `adjtimex` (microseconds). \
         \"First console line read\" counts from before `oxl create` to the moment a second process, `oxl console`, \
         has read the line: the guest prints it on its first run, right after `UNPAUSE`, so by the time `oxl \
         console` has started the line is already there, and the figure is `oxl create` plus one oxl start. \
         The exits are `DomainInfo.exits` read just after the line, so approximate: the hypervisor adds a \
         run's exits when the vCPU stops (when the guest first sleeps), and a tick may be in them.\n\n\
         {calls}{out}{why}\
         Command: `cargo xtask bench`, which booted dom0 with `{INSIDE_ARGS}` on its kernel command line in\n\n\
         ```\n{}\n```\n\n{footer}",
        commands.join("\n"),
    );
    (summary, body)
}

/// The BENCHMARKS.md overview of what the frequent costs are, from this run's figures.
fn costs_section(
    inside: &[Inside],
    in_hv: f64,
    boot: Option<&Dom0Boot>,
    footer: &str,
) -> Option<String> {
    let ic = inside.iter().find(|r| r.icount)?;
    let tcg = inside.iter().find(|r| !r.icount)?;
    let per = |r: &Inside, kind: &str| {
        r.figures
            .null
            .iter()
            .find(|n| n.kind == kind)
            .map(NullRun::per_call)
    };
    let (null, refused, syscall) = (per(ic, "null")?, per(ic, "refused")?, per(ic, "syscall")?);
    let hc = null - refused;
    let tcg_hc = per(tcg, "null")? - per(tcg, "refused")?;
    let tsc_mhz = tcg.figures.tsc_mhz.unwrap_or(0.0);
    let exit_us = if tsc_mhz > 0.0 { tcg_hc / tsc_mhz } else { 0.0 };
    let clock = median(ic.figures.clock_us.clone());
    let create_us =
        median(ic.figures.rounds.iter().map(|c| c.create_us).collect()).saturating_sub(clock);
    let zeroing: f64 = ["domctl-create", "domctl-build"]
        .iter()
        .filter_map(|k| kind_us(ic, k))
        .sum();
    let oxl_start = ic.figures.info_us.map_or(0.0, |u| u as f64 / 10.0);
    let mut rows = format!(
        "| a null hypercall, bare: guest kernel → Oxen → guest | {in_hv:.0} instructions | the world switch \
         (`VMRUN`/`#VMEXIT`), decoding the exit, the dispatch: the floor under every exit |\n\
         | a VM exit of dom0's (measured: a null hypercall from dom0's kernel) | {} instructions | the floor \
         above plus the exit's tally, `exit::handle` and the hypercall's dispatch for a domain; a light exit \
         (hypercall, CPUID, MSR read) re-enters without servicing devices or timers (sections \"Null \
         hypercall from dom0's user space\" and \"Null hypercall from dom0's kernel\") |\n\
         | a VM exit under QEMU TCG, in host time | {} host cycles{} | QEMU emulating the world switch; under \
         TCG the number of exits, not their instructions, sets the emulator's speed |\n",
        thousands(hc as u64),
        thousands(tcg_hc as u64),
        if exit_us > 0.0 { format!(" ≈ {exit_us:.0} µs (host TSC {tsc_mhz:.0} MHz)") } else { String::new() },
    );
    if let Some(b) = boot {
        if let Some((total, reasons, _)) = b.rounds.first().and_then(|r| r.exits.as_ref()) {
            let extra: f64 = b.rounds.iter().map(|r| r.oxen - r.bare).sum::<f64>()
                / b.rounds.len().max(1) as f64;
            let mut top = reasons.clone();
            top.sort_by_key(|r| std::cmp::Reverse(r.1));
            let shares: Vec<String> = top
                .iter()
                .take(3)
                .map(|(n, c)| format!("{n} {:.0} %", 100.0 * *c as f64 / (*total).max(1) as f64))
                .collect();
            rows.push_str(&format!(
                "| dom0's boot to its shell | {} exits ({}) | each reason explained in \"VM exits during dom0's boot\"; \
                 at the cost above that is ≈ {:.1} s of emulator time, against {extra:.1} s more than the bare boot \
                 (section \"dom0 boot overhead\") |\n",
                thousands(*total),
                shares.join(", "),
                *total as f64 * exit_us / 1e6,
            ));
        }
    }
    rows.push_str(&format!(
        "| a system call in dom0 | {syscall:.0} instructions | Linux's entry and exit (`getppid`) |\n\
         | an ioctl on `/dev/oxen` short of the hypercall | {refused:.0} instructions | the system call, the \
         driver copying the request in and checking it |\n\
         | starting an oxl command (`oxl info`) | {:.1} M instructions | Linux's fork and exec of a static \
         1.5 MiB binary, and its page faults: dom0's own cost, not Oxen's |\n\
         | `oxl create` of a 16 MiB domU | {:.1} M instructions, {:.1} M of them in `CREATE` and `BUILD` | \
         `CREATE` zeroes the domain's 16 MiB (`alloc_frames`); `BUILD` copies the kernel and boot structures |\n",
        oxl_start / 1000.0,
        create_us as f64 / 1000.0,
        zeroing / 1000.0,
    ));
    Some(format!(
        "## What the frequent costs are, and why\n\n\
         A summary of the sections below, from the same run: instruction counts under QEMU `-icount shift=0` \
         (deterministic), host time under plain TCG (noisy: 2 cores shared with other jobs).\n\n\
         | cost | how much | why |\n|---|---|---|\n{rows}\nCommand: `cargo xtask bench`. {footer}"
    ))
}

/// The BENCHMARKS.md section on the boot ratio.
fn dom0_boot_section(d: &Dom0Boot, footer: &str) -> (String, String) {
    let mut rows = String::new();
    let mut ratios = Vec::new();
    let mut emulated_ratios = Vec::new();
    for (i, r) in d.rounds.iter().enumerate() {
        let ratio = r.oxen / r.bare;
        ratios.push(ratio);
        let emulated = r.emulated / r.bare;
        emulated_ratios.push(emulated);
        rows.push_str(&format!(
            "| {} | {:.1} s | {:.1} s | {ratio:.2}× | {:.1} s | {emulated:.2}× |\n",
            i + 1,
            r.bare,
            r.oxen,
            r.emulated
        ));
    }
    let mean = ratios.iter().sum::<f64>() / ratios.len().max(1) as f64;
    let emulated_mean = emulated_ratios.iter().sum::<f64>() / emulated_ratios.len().max(1) as f64;
    rows.push_str(&format!("| mean | | | **{mean:.2}×** | | {emulated_mean:.2}× |\n"));
    let summary = format!(
        "| dom0 boot to init, Oxen / bare | {mean:.2}× (mean of {} pairs) |\n",
        ratios.len()
    );
    let body = format!(
        "## dom0 boot overhead\n\n\
         Wall time from QEMU's start to dom0's init banner (`{BANNER}`), dom0's kernel and initramfs booted \
         (a) bare, by GRUB from an ISO as the Oxen boots are (so the firmware, GRUB and its reads of the \
         kernel and initramfs from the CD are in both), (b) under Oxen and (c) under Oxen with \
         `dom0_console_direct=off` (its kernel's \
         boot log through the emulated UART too, a VM exit per byte and per LSR poll), in turn, in the same \
         QEMU. Emulator wall time is noisy: read the ratios of this one run, not the seconds, as the figure \
         (times are polled every 0.1 s).\n\n\
         | round | (a) bare | (b) under Oxen | (b)/(a) | (c) `dom0_console_direct=off` | (c)/(a) |\n\
         |---|---|---|---|---|---|\n{rows}\n\
         Banner: `{}`.  \nCommand: `cargo xtask bench`, which ran, in turn,\n\n\
         ```\n{}\n{}\n```\n\n\
         (the Oxen ISO carries the hypervisor with command line `{DOM0_CMDLINE}` and dom0's modules \
         `vmlinuz {}` and `initrd`; (c)'s adds `dom0_console_direct=off`; the bare ISO's GRUB boots the same \
         kernel with the same command line and initramfs: `linux /boot/vmlinuz {}`, `initrd /boot/initrd`). \
         {footer}",
        d.banner,
        d.bare_command,
        d.oxen_command,
        crate::dom0::KERNEL_ARGS,
        crate::dom0::KERNEL_ARGS,
    );
    (summary, body)
}

/// The BENCHMARKS.md section on dom0's exits, if every Oxen boot printed its tally.
fn dom0_exits_section(d: &Dom0Boot, footer: &str) -> Option<String> {
    let tallies: Vec<&Tally> = d
        .rounds
        .iter()
        .map(|r| r.exits.as_ref())
        .collect::<Option<_>>()?;
    let first = tallies.first()?;
    let mut names: Vec<String> = Vec::new();
    for (_, reasons, _) in &tallies {
        for (n, _) in reasons {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    let count = |t: &Tally, name: &str| t.1.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c);
    names.sort_by_key(|n| std::cmp::Reverse(count(first, n)));
    let runs: Vec<String> = (1..=tallies.len()).map(|i| format!("round {i}")).collect();
    let mut table = format!(
        "| reason | {} | share (round 1) | why dom0 exits for it |\n|---|{}---|---|\n",
        runs.join(" | "),
        "---|".repeat(runs.len())
    );
    for name in &names {
        let cells: Vec<String> = tallies.iter().map(|t| thousands(count(t, name))).collect();
        table.push_str(&format!(
            "| {name} | {} | {:.1} % | {} |\n",
            cells.join(" | "),
            100.0 * count(first, name) as f64 / first.0.max(1) as f64,
            exit_reason(name)
        ));
    }
    let totals: Vec<String> = tallies
        .iter()
        .map(|t| format!("**{}**", thousands(t.0)))
        .collect();
    table.push_str(&format!("| total | {} | 100 % | |\n", totals.join(" | ")));
    let whens: Vec<String> = tallies
        .iter()
        .enumerate()
        .map(|(i, t)| format!("round {}: `{}`", i + 1, t.2))
        .collect();
    // The same boots with every byte through the emulated UART, for comparison.
    let emulated: Option<Vec<&Tally>> = d.rounds.iter().map(|r| r.emulated_exits.as_ref()).collect();
    let emulated = emulated.map_or_else(String::new, |e| {
        let cells = |f: &dyn Fn(&Tally) -> u64| e.iter().map(|t| thousands(f(t))).collect::<Vec<_>>().join(" | ");
        format!(
            "The same boots under Oxen with `dom0_console_direct=off` (boot (c) of \"dom0 boot overhead\": the \
             kernel's boot log through the emulated UART as well):\n\n\
             | | {} |\n|---|{}\n| io | {} |\n| total | {} |\n\n",
            runs.join(" | "),
            "---|".repeat(runs.len()),
            cells(&|t| count(t, "io")),
            cells(&|t| t.0),
        )
    });
    Some(format!(
        "## VM exits during dom0's boot\n\n\
         dom0's exits by reason from its start to its root shell, as the hypervisor tallies them, in the Oxen \
         boots of the dom0 boot benchmark above. The tally is the hypervisor's `(oxen) dom0: N exits (first idle \
         stretch): …` line (printed once dom0 has been halted 5 s with nothing to deliver) or, whichever comes \
         first, its answer to its console's `e` key (`… exits (console): …`), which the benchmark types (Ctrl-A \
         three times, then `e`) when init prints `{SHELL_LINE}` just before the shell's prompt. Which one each \
         round got: {}.\n\n{table}\n{emulated}\
         Command: `cargo xtask bench` (the boots under Oxen above, each kept running after the init banner until \
         the tally line, up to {}s more). {footer}",
        whens.join(", "),
        TALLY_GRACE.as_secs()
    ))
}

fn today() -> String {
    run_captured(Command::new("date").args(["-u", "+%Y-%m-%d"]), "date")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn host() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cpu}, {cores} cores; {}", tool_version("uname", &["-srm"]))
}

pub(crate) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Replaces the part of BENCHMARKS.md between `<!-- bench:KEY -->` and
/// `<!-- /bench:KEY -->`, or appends it; other sections are kept as they were.
fn update_section(doc: &str, key: &str, body: &str) -> String {
    let (open, close) = (
        format!("<!-- bench:{key} -->"),
        format!("<!-- /bench:{key} -->"),
    );
    let section = format!("{open}\n{body}{close}");
    if let (Some(a), Some(b)) = (doc.find(&open), doc.find(&close)) {
        if a < b {
            return format!("{}{section}{}", &doc[..a], &doc[b + close.len()..]);
        }
    }
    format!("{}\n\n{section}\n", doc.trim_end())
}

// ---- `linux`: a Linux domU's boot under Oxen against the same kernel bare ----

/// dom0's kernel arguments for the Linux domU's boot: init runs
/// `dom0-bootstrap/tests/linux-bench.sh`, whose domU has `linux_vcpus` vCPUs.
const LINUX_ARGS: &str = "nr_cpus=1 dom0_run=/usr/lib/oxen/tests/linux-bench.sh";
/// linux-bench.sh's last line.
const LINUX_DONE: &str = r"^\(oxen\) \(d0\) linux-bench: done";
/// A boot of dom0, then the domU's, under either clock.
const LINUX_TIMEOUT: Duration = Duration::from_secs(1200);
/// A bare boot to the TSC line.
const LINUX_BARE_TIMEOUT: Duration = Duration::from_secs(300);
/// rcS's line after the banner (`oxen.tsc`), as in `linux_domu`.
const LINUX_TSC_LINE: &str = r"Oxen domU: TSC (\d+), monotonic clock (\d+) ns at the banner";

/// A vCPU's index, its total exits, and its exits by reason.
pub type VcpuExits = (u32, u64, Vec<(String, u64)>);

/// What linux-bench.sh and the hypervisor printed in one run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinuxFigures {
    /// dom0's TSC and monotonic clock (ns) just before `oxl create`, after it
    /// returned, and once the banner was seen.
    pub before: Option<(u64, u64)>,
    pub created: Option<(u64, u64)>,
    pub seen: Option<(u64, u64)>,
    /// The domU's TSC and monotonic clock at its banner.
    pub guest: Option<(u64, u64)>,
    pub banner: String,
    /// Per vCPU: its index, total exits, and exits by reason.
    pub exits: Vec<VcpuExits>,
    /// Bytes the domU wrote to its console (the hypervisor's count at the destroy).
    pub console_bytes: Option<u64>,
}

impl LinuxFigures {
    /// TSC ticks from before `oxl create` to the banner.
    fn to_banner(&self) -> Option<u64> {
        self.guest?.0.checked_sub(self.before?.0)
    }
    /// TSC ticks per ns of dom0's clock over the run (1 under icount).
    fn rate(&self) -> Option<f64> {
        let (b, s) = (self.before?, self.seen?);
        let ns = s.1.checked_sub(b.1)?;
        (ns > 0).then(|| s.0.saturating_sub(b.0) as f64 / ns as f64)
    }
    /// `oxl create` → banner in ns of dom0's clock.
    fn to_banner_ns(&self) -> Option<f64> {
        Some(self.to_banner()? as f64 / self.rate()?)
    }
    fn create_ns(&self) -> Option<f64> {
        Some(self.created?.0.checked_sub(self.before?.0)? as f64 / self.rate()?)
    }
    /// Exits by reason summed over the vCPUs, most frequent first.
    fn exits_by_reason(&self) -> Vec<(String, u64)> {
        let mut sum: Vec<(String, u64)> = Vec::new();
        for (_, _, by) in &self.exits {
            for (name, n) in by {
                match sum.iter_mut().find(|(m, _)| m == name) {
                    Some(e) => e.1 += n,
                    None => sum.push((name.clone(), *n)),
                }
            }
        }
        sum.sort_by_key(|e| std::cmp::Reverse(e.1));
        sum
    }
}

fn parse_linux(serial: &str) -> LinuxFigures {
    let pair = |key: &str| -> Option<(u64, u64)> {
        let re = Regex::new(&format!(r"linux-bench: {key} tsc=(\d+) mono=(\d+)")).ok()?;
        let c = serial.lines().find_map(|l| re.captures(l))?;
        Some((c[1].parse().ok()?, c[2].parse().ok()?))
    };
    let mut f = LinuxFigures {
        before: pair("before"),
        created: pair("create returned"),
        seen: pair("seen"),
        ..LinuxFigures::default()
    };
    if let Ok(re) = Regex::new(&format!(r"linux-bench: guest .*{LINUX_TSC_LINE}")) {
        f.guest = serial
            .lines()
            .find_map(|l| re.captures(l))
            .and_then(|c| Some((c[1].parse().ok()?, c[2].parse().ok()?)));
    }
    if let Ok(re) = Regex::new(r"\(oxen\) d\d+ \(linux\): console: (\d+) bytes") {
        f.console_bytes = serial
            .lines()
            .find_map(|l| re.captures(l))
            .and_then(|c| c[1].parse().ok());
    }
    f.banner = serial
        .lines()
        .find_map(|l| l.split_once("linux-bench: banner "))
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default();
    // A one-vCPU domain's line has no `vcpuI` (`Platform::label`).
    if let Ok(re) =
        Regex::new(r"\(oxen\) d\d+ \(linux\)(?: vcpu(\d+))?: (\d+) exits \(at its end\):(.*)")
    {
        for c in serial.lines().filter_map(|l| re.captures(l)) {
            let by = c[3]
                .split_whitespace()
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.parse().ok()?))
                })
                .collect();
            let i = c.get(1).map_or(Ok(0), |m| m.as_str().parse());
            if let (Ok(i), Ok(n)) = (i, c[2].parse()) {
                f.exits.push((i, n, by));
            }
        }
    }
    f
}

pub struct LinuxRun {
    pub icount: bool,
    pub vcpus: u32,
    pub figures: LinuxFigures,
    pub command: String,
}

/// Boots Oxen and dom0, which runs linux-bench.sh: a Linux domU of `vcpus` vCPUs
/// created, timed to its banner, destroyed.
fn linux_oxen(elf: &Path, icount: bool, vcpus: u32) -> Result<LinuxRun> {
    step(format!(
        "Linux domU under Oxen: QEMU TCG -cpu max{}, 2 CPUs: dom0 runs linux-bench.sh, {vcpus} vCPU(s) (up to {}s)",
        if icount { " -icount shift=0" } else { "" },
        LINUX_TIMEOUT.as_secs()
    ));
    let watch = Watch {
        done: Some(Regex::new(LINUX_DONE)?),
        ..Watch::default()
    };
    let (boot, dir) = boot_dom0_script(
        elf,
        icount,
        if icount { "linux-icount" } else { "linux-tcg" },
        &format!("{LINUX_ARGS} linux_vcpus={vcpus}"),
        &watch,
        LINUX_TIMEOUT,
    )?;
    let figures = parse_linux(&boot.serial);
    if !matches!(boot.ending, Ending::Done) || figures.to_banner().is_none() || figures.rate().is_none() {
        let how = match boot.ending {
            Ending::Halted => "the hypervisor halted".to_string(),
            Ending::Done => "linux-bench.sh ended without its figures".to_string(),
            Ending::TimedOut => format!("timed out after {}s", LINUX_TIMEOUT.as_secs()),
            Ending::Exited(s) => format!("QEMU exited ({s})"),
            Ending::Aborted(ref l) => format!("stopped on: {l}"),
        };
        bail!(
            "dom0's linux-bench.sh did not finish ({how}). Command:\n    {}\nlast lines of {}:\n{}",
            boot.command,
            show(&dir.join("serial.log")),
            tail(&boot.serial, 20)
        );
    }
    println!(
        "     done in {:.0}s: {} TSC ticks oxl create → banner, guest clock {} ns, {} exits",
        boot.elapsed.as_secs_f64(),
        thousands(figures.to_banner().unwrap_or(0)),
        thousands(figures.guest.map_or(0, |g| g.1)),
        thousands(figures.exits.iter().map(|e| e.1).sum())
    );
    Ok(LinuxRun {
        icount,
        vcpus,
        figures,
        command: relative(&boot.command),
    })
}

pub struct LinuxBare {
    pub icount: bool,
    pub smp: u32,
    /// QEMU's start → banner.
    pub wall: f64,
    /// TSC and monotonic clock at the banner.
    pub tsc: (u64, u64),
    pub command: String,
}

/// The same kernel and initramfs booted by QEMU without Oxen, with linux.cfg's
/// command line plus `oxen.tsc`, to rcS's TSC line.
fn linux_bare(icount: bool, smp: u32) -> Result<LinuxBare> {
    let dom0 = crate::dom0::prepare().context("preparing dom0 and the Linux domU")?;
    let (mut append, memory) = crate::linux_domu::config()?;
    append.push_str(" oxen.tsc");
    let dir = target_dir()
        .join("bench/linux")
        .join(if icount { "bare-icount" } else { "bare-tcg" });
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    step(format!(
        "Linux domU bare: QEMU TCG -cpu max{} -smp {smp} -m {memory} (up to {}s)",
        if icount { " -icount shift=0" } else { "" },
        LINUX_BARE_TIMEOUT.as_secs()
    ));
    let m = Machine {
        emulator: Emulator::Qemu,
        cpu: Some("max".into()),
        smp,
        memory_mib: memory,
        accel: Accel::Tcg,
        icount,
        bochs_ips: BOCHS_IPS,
        disk: None,
        shared_disk: None,
        serve: None,
        link: None,
    };
    let tsc_re = Regex::new(LINUX_TSC_LINE)?;
    let watch = Watch {
        done: Some(tsc_re.clone()),
        marks: vec![Regex::new(crate::linux_domu::BANNER)?],
        ..Watch::default()
    };
    let boot = boot_and_watch_with(
        &m,
        &dir,
        Media::Linux {
            kernel: &dom0.linux.kernel,
            initrd: &dom0.linux.cpio,
            append: &append,
        },
        LINUX_BARE_TIMEOUT,
        &watch,
    )?;
    let tsc = boot
        .serial
        .lines()
        .find_map(|l| tsc_re.captures(l))
        .and_then(|c| Some((c[1].parse().ok()?, c[2].parse().ok()?)));
    match (boot.marks[0], tsc) {
        (Some(w), Some(tsc)) => {
            println!(
                "     {:.1}s to the banner, TSC {}, monotonic {} ns",
                w.as_secs_f64(),
                thousands(tsc.0),
                thousands(tsc.1)
            );
            Ok(LinuxBare {
                icount,
                smp,
                wall: w.as_secs_f64(),
                tsc,
                command: relative(&boot.command),
            })
        }
        _ => bail!(
            "the Linux domU booted bare printed no banner and TSC line. Command:\n    {}\nlast lines of {}:\n{}",
            boot.command,
            show(&dir.join("serial.log")),
            tail(&boot.serial, 20)
        ),
    }
}

/// Why a Linux domU exits for each reason (hypervisor/src/vm/, hypervisor/src/exit/).
fn linux_exit_reason(name: &str) -> &'static str {
    match name {
        "io" => "every port is intercepted and its device emulated (`vm/bus.rs`): each byte the kernel (earlyprintk, \
                 then the 8250 console, which replays the log) and the shell write to COM1 is an OUT to the 16550's THR, \
                 after at least one IN of its LSR, and each console write saves and restores the IER; the PIT, CMOS/RTC, \
                 PIC and i8042 probes are the rest",
        "msr-write" => "the domU's kernel switches its local APIC to x2APIC mode and uses the TSC-deadline timer \
                        (both shown in CPUID): arming the timer (MSR 0x6E0), EOI (0x80B) and IPIs (ICR, 0x830) are \
                        WRMSRs to the virtual local APIC (`devices/lapic.rs`); kvmclock's MSRs at each vCPU's start",
        "msr-read" => "MSRs the backend does not switch in hardware exit (`exit/msr.rs`): APIC base, x2APIC registers, \
                       MTRR/PAT and feature MSRs read at boot",
        "hlt" => "the guest idles: HLT hands the pCPU back until its next timer or interrupt",
        "cpuid" => "CPUID always exits: the hypervisor filters the leaves the domU sees (`exit/cpuid.rs`); the kernel \
                    runs it many times at boot on each CPU (features, cache and topology leaves, hypervisor detection)",
        "preempted" => "the hypervisor's own timer or a physical interrupt took the pCPU back (time slice, a kick from \
                        the other pCPU, dom0 to run)",
        "intr-window" => "an interrupt was pending while the guest had interrupts off: exit when it can take it",
        "npf" => "MMIO to emulated devices faults in the nested page table: the IOAPIC (0xFEC00000, its \
                  index/data window, one exit per access) and the xAPIC page before the kernel switches to x2APIC",
        "hypercall" => "the guest called the hypervisor (VMMCALL/VMCALL)",
        _ => "other exits (exceptions, XSETBV, INIT/SIPI, shutdown)",
    }
}

fn linux_section(runs: &[LinuxRun], bare: &[LinuxBare], footer: &str) -> String {
    let ic = runs.iter().find(|r| r.icount);
    let tcg = runs.iter().find(|r| !r.icount);
    let bic = bare.iter().find(|b| b.icount);
    let btcg = bare.iter().find(|b| !b.icount);
    let mut s = String::from(
        "## Linux domU boot under Oxen\n\n\
         dom0 runs `dom0-bootstrap/tests/linux-bench.sh`: `oxl create` of a copy of `/etc/oxen/linux.cfg` (Debian's kernel, the \
         same as dom0's, and the busybox initramfs `initrd.cpio`, 128 MiB) with `oxen.tsc` added to `extra`, so rcS prints \
         the TSC and its monotonic clock at the banner; then `oxl destroy`. dom0 reads the TSC just before `oxl create` with \
         the same freestanding reader (`/usr/lib/oxen/tsc`, taken out of the domU's initramfs); Oxen does not offset a guest's \
         TSC, so the domU's TSC at its banner less dom0's is the time between them. Under `-icount shift=0` the TSC counts \
         instructions, of the whole machine (both CPUs: the domU's, dom0's, Oxen's; plus virtual time while all CPUs idle). \
         The bare boots are the same kernel, initramfs and command line (with `oxen.tsc`) booted by QEMU without Oxen, in \
         this run (section `linux-bare` has more).\n\n",
    );
    if let (Some(r), Some(b)) = (ic, bic) {
        let f = &r.figures;
        let whole = f.to_banner().unwrap_or(0);
        let created = f.created.zip(f.before).map(|(c, b)| c.0.saturating_sub(b.0));
        let guest = f.guest.map_or(0, |g| g.1);
        s.push_str(&format!(
            "### Instructions, `-icount shift=0`, {} vCPU (bare: `-smp {}`)\n\n\
             QEMU 7.2's TCG under `-icount` never brings a bare Linux's second CPU up (section `linux-bare`), so both boots \
             here have one CPU for the domU's kernel: the domU one vCPU (`vcpus = 1` in the copy), the bare machine `-smp 1`.\n\n\
             | figure | under Oxen | bare | Oxen ÷ bare |\n|---|---|---|---|\n\
             | the kernel's own boot: its monotonic clock at the banner (from its clock start in `start_kernel`) | {} | {} | **{:.2}×** |\n\
             | `oxl create` → banner, the whole machine (under Oxen); reset → banner (bare: firmware, decompression included) | {} | {} | {:.2}× |\n\
             | of which `oxl create` until it returned | {} | | |\n\
             | before the kernel's clock starts: whole less the kernel's own (its decompression and earliest setup; \
             Oxen: `oxl create`, dom0's polls; bare: the firmware) | {} | {} | {:.2}× |\n\n",
            r.vcpus,
            b.smp,
            thousands(guest),
            thousands(b.tsc.1),
            guest as f64 / b.tsc.1 as f64,
            thousands(whole),
            thousands(b.tsc.0),
            whole as f64 / b.tsc.0 as f64,
            created.map_or("–".into(), thousands),
            thousands(whole.saturating_sub(guest)),
            thousands(b.tsc.0.saturating_sub(b.tsc.1)),
            whole.saturating_sub(guest) as f64 / b.tsc.0.saturating_sub(b.tsc.1).max(1) as f64,
        ));
    }
    if let (Some(r), Some(b)) = (tcg, btcg) {
        let f = &r.figures;
        let wall = f.to_banner_ns().unwrap_or(0.0) / 1e9;
        let guest = f.guest.map_or(0, |g| g.1) as f64 / 1e9;
        let bguest = b.tsc.1 as f64 / 1e9;
        s.push_str(&format!(
            "### Wall time, plain TCG, {} vCPUs (bare: `-smp {}`)\n\n\
             The time from the TSC (host cycles under TCG), at the rate dom0's clock measured over the same stretch \
             ({:.0} MHz). Emulator wall time is noisy (2 host cores shared with other jobs): one run each.\n\n\
             | figure | under Oxen | bare | Oxen ÷ bare |\n|---|---|---|---|\n\
             | the kernel's own boot: its monotonic clock at the banner | {guest:.1} s | {bguest:.1} s | **{:.2}×** |\n\
             | `oxl create` → banner (under Oxen); QEMU's start → banner (bare: firmware included) | {wall:.1} s | {:.1} s | {:.2}× |\n\
             | of which `oxl create` until it returned | {} | | |\n\n",
            r.vcpus,
            b.smp,
            f.rate().unwrap_or(0.0) * 1000.0,
            guest / bguest,
            b.wall,
            wall / b.wall,
            f.create_ns().map_or("–".into(), |n| format!("{:.2} s", n / 1e9)),
        ));
    }
    for r in runs {
        let by = r.figures.exits_by_reason();
        if by.is_empty() {
            continue;
        }
        let total: u64 = by.iter().map(|e| e.1).sum();
        let per_vcpu: Vec<String> = r
            .figures
            .exits
            .iter()
            .map(|(i, n, _)| format!("vCPU {i}: {}", thousands(*n)))
            .collect();
        s.push_str(&format!(
            "### VM exits, {} run ({} vCPU(s)), `oxl create` to `oxl destroy`\n\n\
             From the hypervisor's `(oxen) dN (linux)[ vcpuI]: … exits (at its end): …` lines at the destroy ({}): the \
             boot to the banner, then the shell's prompt and the script's polls (0.2 s) until it destroys the domain.\n\n\
             | reason | exits | share | why |\n|---|---|---|---|\n",
            if r.icount { "`-icount shift=0`" } else { "TCG" },
            r.vcpus,
            per_vcpu.join(", ")
        ));
        for (name, n) in &by {
            s.push_str(&format!(
                "| {name} | {} | {:.1} % | {} |\n",
                thousands(*n),
                *n as f64 * 100.0 / total.max(1) as f64,
                linux_exit_reason(name)
            ));
        }
        s.push_str(&format!("| total | **{}** | 100 % | |\n\n", thousands(total)));
        if let (Some(bytes), Some((_, io))) =
            (r.figures.console_bytes, by.iter().find(|(n, _)| n == "io"))
        {
            s.push_str(&format!(
                "The domU wrote {} bytes to its console (the hypervisor's count at the destroy): {:.1} port-I/O \
                 exits per byte.\n\n",
                thousands(bytes),
                *io as f64 / bytes.max(1) as f64
            ));
        }
    }
    let banner = runs
        .iter()
        .map(|r| r.figures.banner.trim_end_matches('\r').to_string())
        .filter(|b| !b.is_empty())
        .collect::<Vec<_>>()
        .join("`, `");
    s.push_str(&format!(
        "Banner: `{banner}`.  \nCommand: `cargo xtask bench --only linux`, which ran (dom0 with `{LINUX_ARGS} linux_vcpus=N` \
         on its kernel command line)\n\n```\n{}\n{}\n```\n\n{footer}",
        runs.iter().map(|r| r.command.as_str()).collect::<Vec<_>>().join("\n"),
        bare.iter().map(|b| b.command.as_str()).collect::<Vec<_>>().join("\n"),
    ));
    s
}

/// The Linux domU under Oxen (icount with 1 vCPU, TCG with 2) and bare (the same),
/// written to `doc`'s `linux` section if all four boots succeed.
fn linux_part(elf: &Path, doc: &mut String, footer: &str) -> Result<()> {
    let runs = vec![linux_oxen(elf, true, 1)?, linux_oxen(elf, false, 2)?];
    let bare = vec![linux_bare(true, 1)?, linux_bare(false, 2)?];
    *doc = update_section(doc, "linux", &linux_section(&runs, &bare, footer));
    Ok(())
}

/// A part of the benchmark to run alone (`cargo xtask bench --only PART`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The base figures: image size, the null hypercall, dom0's boot against
    /// bare and its exits, the calls and `oxl create` timed inside dom0
    /// (sections `size`, `hypercall`, `dom0-boot`, `dom0-exits`, `dom0-null`,
    /// `dom0-create`, `costs`).
    Boot,
    /// The credit scheduler: fairness, switch path, wake-ups (section `sched`).
    Sched,
    /// The Linux domU's kernel and initramfs booted bare, the baseline (section `linux-bare`).
    LinuxBare,
    /// A Linux domU's boot under Oxen against the same kernel bare (section `linux`).
    Linux,
    /// Hundreds of domUs: create/list/destroy and scheduler costs at 10, 100, 500 (section `scale`).
    Scale,
    /// A null hypercall from dom0's kernel under `-icount` (section `null-dom0`).
    Null,
    /// Idle exits per second of dom0 and a domU, by reason (section `idle`).
    Idle,
    /// A Linux domU's virtio disk and network against dom0 directly (section `io`).
    Io,
    /// Save, restore and live migration of a 256 MiB Linux domU between two
    /// machines (section `migrate`).
    Migrate,
}

/// The scheduler measurements (the simulation, then dom0 under icount and under
/// TCG), written to `doc`'s `sched` section if dom0's runs both succeed.
fn sched_part(elf: &Path, doc: &mut String, footer: &str) -> Result<()> {
    let sim = sched_sim();
    if let Err(e) = &sim {
        println!("     the simulation failed, its figures are left out: {e:#}");
    }
    let mut runs = Vec::new();
    for icount in [true, false] {
        runs.push(sched_dom0(elf, icount)?);
    }
    *doc = update_section(
        doc,
        "sched",
        &sched_section(&runs, sim.as_ref().ok(), footer),
    );
    Ok(())
}

pub fn bench(elf: &Path, only: Option<Part>) -> Result<()> {
    let date = today();
    let rustc = tool_version("rustc", &["--version"]);
    let qemu = tool_version("qemu-system-x86_64", &["--version"]);
    let host = host();
    let root = repo_root();
    let source = tool_version(
        "git",
        &[
            "-C",
            &root.to_string_lossy(),
            "describe",
            "--always",
            "--dirty",
        ],
    );
    let path = repo_root().join("BENCHMARKS.md");
    let mut doc = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Oxen benchmarks\n\nWritten by `cargo xtask bench`: each section is replaced when it is measured \
         again, and kept as it was when its measurement fails.\n"
            .to_string()
    });
    let sched_footer = format!(
        "On {date}, source {source}, 2 CPUs (dom0's one vCPU on the first), 512 MiB, hypervisor command line \
         `{DOM0_CMDLINE}`.  \n{qemu}; built with {rustc}; host: {host}.\n"
    );
    let bare_footer =
        format!("On {date}, source {source}.  \n{qemu}; built with {rustc}; host: {host}.\n");
    if only == Some(Part::LinuxBare) {
        let r = crate::linux_domu::bench_bare(&bare_footer);
        if let Ok((_, body)) = &r {
            doc = update_section(&doc, "linux-bare", body);
            std::fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;
            step(format!("updated {}", show(&path)));
        }
        return r.map(drop).context(
            "the bare Linux domU benchmark failed (BENCHMARKS.md keeps its previous figures)",
        );
    }
    if only == Some(Part::Linux) {
        let r = linux_part(elf, &mut doc, &sched_footer);
        std::fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;
        step(format!("updated {}", show(&path)));
        return r.context(
            "the Linux domU benchmark failed (BENCHMARKS.md keeps its previous figures)",
        );
    }
    if only == Some(Part::Scale) {
        let footer = format!(
            "On {date}, source {source}, 2 CPUs, 3072 MiB.  \n{qemu}; built with {rustc}; host: {host}.\n"
        );
        let r = scale::scale_part(elf, &mut doc, &footer);
        std::fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;
        step(format!("updated {}", show(&path)));
        return r.context("the hundreds-of-domUs benchmark failed (BENCHMARKS.md keeps its previous figures)");
    }
    if only == Some(Part::Null) {
        let r = crate::bench_exits::null_dom0(elf)?;
        doc = update_section(&doc, "null-dom0", &crate::bench_exits::null_section(&r, &sched_footer));
        std::fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;
        step(format!("updated {}", show(&path)));
        return Ok(());
    }
    if only == Some(Part::Idle) {
        use crate::emu::Emulator;
        let mut runs = vec![crate::bench_exits::idle_run(elf, Emulator::Qemu, 20, true, Duration::from_secs(1200))?];
        match crate::bench_exits::idle_run(elf, Emulator::Bochs, 20, false, Duration::from_secs(1800)) {
            Ok(r) => runs.push(r),
            Err(e) => println!("     the Bochs run failed, its figures are left out: {e:#}"),
        }
        doc = update_section(&doc, "idle", &crate::bench_exits::idle_section(&runs, &sched_footer));
        std::fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;
        step(format!("updated {}", show(&path)));
        return Ok(());
    }
    let io_footer = format!(
        "On {date}, source {source}, 2 CPUs, 768 MiB, hypervisor command line `{DOM0_CMDLINE}`.  \n{qemu}; built with {rustc}; host: {host}.\n"
    );
    if only == Some(Part::Io) {
        let r = io::io_part(elf, &mut doc, &io_footer);
        std::fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;
        step(format!("updated {}", show(&path)));
        return r.context("the disk and network benchmark failed (BENCHMARKS.md keeps its previous figures)");
    }
    if only == Some(Part::Migrate) {
        let footer = format!("On {date}, source {source}.  \n{qemu}; built with {rustc}; host: {host}.\n");
        let r = migrate::migrate_part(elf, &mut doc, &footer);
        std::fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;
        step(format!("updated {}", show(&path)));
        return r.context("the save/restore and migration benchmark failed (BENCHMARKS.md keeps its previous figures)");
    }
    if only == Some(Part::Sched) {
        let r = sched_part(elf, &mut doc, &sched_footer);
        std::fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;
        step(format!("updated {}", show(&path)));
        return r
            .context("the scheduler benchmark failed (BENCHMARKS.md keeps its previous figures)");
    }

    step(format!("image size of {}", show(elf)));
    let sizes = image_sizes(elf)?;
    let mut table = String::from("| figure | value |\n|---|---|\n");
    let mut size_rows = String::new();
    for (name, n) in &sizes.sections {
        size_rows.push_str(&format!("| `{name}` | {} bytes |\n", thousands(*n)));
    }
    size_rows.push_str(&format!(
        "| loaded image (PT_LOAD memory size) | {} bytes |\n",
        thousands(sizes.loaded)
    ));
    size_rows.push_str(&format!(
        "| ELF file (with symbols and debug info) | {} bytes |\n",
        thousands(sizes.file)
    ));
    table.push_str(&size_rows);
    doc = update_section(
        &doc,
        "size",
        &format!(
            "## Image size\n\n| figure | value |\n|---|---|\n{size_rows}\n\
             Command: `cargo xtask bench` (section sizes of `{}` read with the `object` crate), {date}, \
             source {source}.  \nBuilt with {rustc}; host: {host}.\n",
            show(elf)
        ),
    );

    let hc = hypercall_null(elf);
    if let Ok(h) = &hc {
        let per = h.tsc_delta as f64 / h.iterations as f64;
        let row = format!(
            "| null hypercall round trip | {per:.1} instructions (tsc_delta {} / {} iterations) |\n",
            thousands(h.tsc_delta),
            thousands(h.iterations)
        );
        table.push_str(&row);
        doc = update_section(
            &doc,
            "hypercall",
            &format!(
                "## Null hypercall\n\nGuest RDTSC under `-icount shift=0` counts instructions, so this is the number of \
                 instructions one guest→hypervisor→guest round trip executes.\n\n| figure | value |\n|---|---|\n{row}\n\
                 Command: `cargo xtask bench`, which ran\n\n```\n{}\n```\n\non {date} (source {source}) with the hypervisor command line \
                 `{BENCH_CMDLINE}`.  \n{qemu}; built with {rustc}; host: {host}.\n",
                h.command
            ),
        );
    }
    // Written now, so a failing dom0 benchmark still leaves these figures.
    std::fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;

    let d0 = dom0_boot(elf);
    let mut exits_missing = false;
    if let Ok(d) = &d0 {
        let footer =
            format!("On {date}, source {source}.  \n{qemu}; built with {rustc}; host: {host}.\n");
        let (row, body) = dom0_boot_section(d, &footer);
        table.push_str(&row);
        doc = update_section(&doc, "dom0-boot", &body);
        match dom0_exits_section(d, &footer) {
            Some(body) => {
                let totals: Vec<String> = d
                    .rounds
                    .iter()
                    .filter_map(|r| r.exits.as_ref().map(|t| thousands(t.0)))
                    .collect();
                table.push_str(&format!(
                    "| dom0 exits to its root shell | {} |\n",
                    totals.join(", ")
                ));
                doc = update_section(&doc, "dom0-exits", &body);
            }
            None => exits_missing = true,
        }
    }
    std::fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;

    let boot_only = only == Some(Part::Boot);
    let linux_bare = if boot_only {
        Ok((String::new(), String::new()))
    } else {
        crate::linux_domu::bench_bare(&bare_footer)
    };
    if let (false, Ok((row, body))) = (boot_only, &linux_bare) {
        table.push_str(row);
        doc = update_section(&doc, "linux-bare", body);
        std::fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;
    }

    // Inside dom0: first under -icount shift=0 (deterministic), then plain TCG.
    let mut inside = Vec::new();
    let mut inside_errors = Vec::new();
    for icount in [true, false] {
        match inside_dom0(elf, icount) {
            Ok(r) => {
                println!("     done in {:.0}s", r.elapsed);
                inside.push(r);
            }
            Err(e) => inside_errors.push(e),
        }
    }
    // All or nothing, so a section never mixes figures of two runs of the benchmark.
    if inside_errors.is_empty() {
        let footer = format!(
            "On {date}, source {source}, 2 CPUs (dom0 on the first, the domU on the second), 512 MiB, \
             hypervisor command line `{DOM0_CMDLINE}`.  \n{qemu}; built with {rustc}; host: {host}.\n"
        );
        let runs: Vec<&Inside> = inside.iter().collect();
        let in_hv = hc
            .as_ref()
            .ok()
            .map(|h| h.tsc_delta as f64 / h.iterations as f64);
        let (row, body) = dom0_null_section(&runs, in_hv, &footer);
        table.push_str(&row);
        doc = update_section(&doc, "dom0-null", &body);
        let (row, body) = create_section(&runs, &footer);
        table.push_str(&row);
        doc = update_section(&doc, "dom0-create", &body);
        if let Some(body) =
            in_hv.and_then(|hv| costs_section(&inside, hv, d0.as_ref().ok(), &footer))
        {
            doc = update_section(&doc, "costs", &body);
        }
    }
    std::fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;
    // `--only boot` ends here: the parts below have `--only` of their own.
    let (mut sched, mut linux, mut io, mut migrate) = (Ok(()), Ok(()), Ok(()), Ok(()));
    if !boot_only {
        sched = sched_part(elf, &mut doc, &sched_footer);
        std::fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;
        linux = linux_part(elf, &mut doc, &sched_footer);
        std::fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;
        io = io::io_part(elf, &mut doc, &io_footer);
        std::fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;
        let migrate_footer = format!("On {date}, source {source}.  \n{qemu}; built with {rustc}; host: {host}.\n");
        migrate = migrate::migrate_part(elf, &mut doc, &migrate_footer);
        std::fs::write(&path, &doc).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("\n{table}");
    step(format!("updated {}", show(&path)));
    hc.map(|_| ())
        .context("the null-hypercall benchmark failed (BENCHMARKS.md keeps its previous figure)")?;
    d0.context("the dom0 boot benchmark failed (BENCHMARKS.md keeps its previous dom0 figures)")?;
    if let Some(e) = inside_errors.into_iter().next() {
        return Err(e.context(
            "the benchmark inside dom0 failed (BENCHMARKS.md keeps the previous figures it could not measure)",
        ));
    }
    sched.context("the scheduler benchmark failed (BENCHMARKS.md keeps its previous figures)")?;
    linux.context("the Linux domU benchmark failed (BENCHMARKS.md keeps its previous figures)")?;
    io.context("the disk and network benchmark failed (BENCHMARKS.md keeps its previous figures)")?;
    migrate.context("the save/restore and migration benchmark failed (BENCHMARKS.md keeps its previous figures)")?;
    linux_bare.map(drop).context(
        "the bare Linux domU benchmark failed (BENCHMARKS.md keeps its previous figures)",
    )?;
    if exits_missing {
        bail!(
            "an Oxen boot of dom0 printed no `(oxen) dom0: N exits (first idle stretch|console)` line within {}s of \
             the init banner (see {}): BENCHMARKS.md keeps its previous exit figures",
            TALLY_GRACE.as_secs(),
            show(&target_dir().join("bench/dom0-oxen/serial.log"))
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_or_appended() {
        let doc = update_section("# T\n\nintro\n", "a", "A1\n");
        assert_eq!(
            doc,
            "# T\n\nintro\n\n<!-- bench:a -->\nA1\n<!-- /bench:a -->\n"
        );
        let doc = update_section(&doc, "b", "B1\n");
        let doc = update_section(&doc, "a", "A2\n");
        assert!(
            doc.contains("<!-- bench:a -->\nA2\n<!-- /bench:a -->\n\n<!-- bench:b -->\nB1\n"),
            "{doc}"
        );
        assert!(!doc.contains("A1"));
    }

    #[test]
    fn idle_tally_is_parsed() {
        let log = "(oxen) dom0: 262144 exits (so far): cpuid=1 io=2\n\
                   (oxen) dom0: 300500 exits (first idle stretch): cpuid=120 io=250000 msr-write=380 npf=50000\r\n";
        let (total, reasons, why) = parse_tally(log).unwrap();
        assert_eq!(why, "first idle stretch");
        assert_eq!(total, 300_500);
        assert_eq!(reasons[1], ("io".to_string(), 250_000));
        assert_eq!(reasons.len(), 4);
        assert!(parse_tally("(oxen) dom0: 5 exits (so far): io=5\n").is_none());
        let (total, _, why) = parse_tally("(oxen) dom0: 7 exits (console): io=7\n").unwrap();
        assert_eq!((total, why.as_str()), (7, "console"));
    }

    #[test]
    fn dom0_bench_lines_are_parsed() {
        let log = "(oxen) apic: timer 1000.000 MHz, TSC 999.998 MHz (calibrated against the ACPI PM timer)\n\
                   (oxen) (d0) bench: start (clock /proc/uptime, 10 ms; 2 rounds)\n\
                   (oxen) (d0) bench: null-bench null 10000 calls 25400000 cycles 2540.0 cycles/call\r\n\
                   (oxen) (d0) bench: null-bench refused 10000 calls 20000000 cycles 2000.0 cycles/call\n\
                   (oxen) (d0) bench: null-bench syscall 10000 calls 3000000 cycles 300.0 cycles/call\n\
                   (oxen) (d0) bench: create round 1 create_us=120 first_line_us=180 exits=42 line=minimal: domain 1 up, 16 MiB\n\
                   (oxen) (d0) bench: create round 1 stats: 6 hypercalls, 1000.5 us: version 1 (2.0 us), domctl-create 1 (700.0 us), domctl-load_image 2 (100.5 us), domctl-build 1 (190.0 us), domctl-unpause 1 (8.0 us)\n\
                   (oxen) (d0) bench: create round 2 create_us=110 first_line_us=170 exits=40 line=minimal: domain 2 up, 16 MiB\n\
                   (oxen) (d0) bench: create round 2 \n\
                   (oxen) (d0) bench: clock overhead_us=7\n\
                   (oxen) (d0) bench: oxl-info 10 runs us=300 stats: 2 hypercalls, 4.0 us: version 1 (2.0 us), domctl-phys_info 1 (2.0 us)\n\
                   (oxen) (d0) bench: done\n";
        let f = parse_inside(log);
        assert_eq!(f.tsc_mhz, Some(999.998));
        assert_eq!(f.null.len(), 3);
        assert_eq!(f.null[1].kind, "refused");
        assert_eq!(f.null[0].per_call(), 2540.0);
        assert_eq!(f.rounds.len(), 2);
        assert_eq!(
            (
                f.rounds[0].create_us,
                f.rounds[0].first_line_us,
                f.rounds[0].exits
            ),
            (120, 180, 42)
        );
        assert_eq!(f.rounds[0].line, "minimal: domain 1 up, 16 MiB");
        let t = f.rounds[0].hypercalls.as_ref().unwrap();
        assert_eq!(t.total, 6);
        assert_eq!(t.us, 1000.5);
        assert_eq!(
            t.kinds[2],
            HcKind {
                name: "domctl-load_image".into(),
                calls: 2,
                us: 100.5
            }
        );
        assert_eq!(
            tally_text(t),
            "6 (version 1, domctl-create 1, domctl-load_image 2, domctl-build 1, domctl-unpause 1)"
        );
        assert!(
            f.rounds[1].hypercalls.is_none(),
            "a round without OXL_STATS output"
        );
        assert_eq!(f.info_us, Some(300));
        assert_eq!(f.clock_us, [7]);
        assert_eq!(f.info_hypercalls.as_ref().map(|t| t.total), Some(2));
        assert_eq!(
            parse_tally_text("stats: 0 hypercalls"),
            Some(HcTally::default())
        );
        assert_eq!(median(vec![5, 1, 3]), 3);
        assert_eq!(median(Vec::new()), 0);
    }

    #[test]
    fn sched_lines_are_parsed() {
        let log = "(oxen) (d0) sched-bench: start (window 6 s)\n\
                   (oxen) (d0) sched-bench: clock overhead_us=3760\n\
                   (oxen) (d0) sched-bench: counters weights-start\n\
                   (oxen) console: input now goes to the hypervisor (Ctrl-A three times for dom0); keys: ...\n\
                   (oxen) sched: 1 vCPU switches, 9000 TSC cycles each from one guest's exit to the next one's entry; 5000 wake-ups, 3 us mean / 40 us max from ready to running (sums: 9000 TSC cycles, 15000000 ns)\r\n\
                   (oxen) (d0) sched-bench: counters weights-end\n\
                   (oxen) sched: 101 vCPU switches, 9090 TSC cycles each from one guest's exit to the next one's entry; 6000 wake-ups, 2 us mean / 40 us max from ready to running (sums: 918000 TSC cycles, 17000000 ns)\n\
                   (oxen) (d0) sched-bench: weights wall_us=6000000 w256_ns=2000000000 w512_ns=3960000000\n\
                   (oxen) (d0) sched-bench: oxl-list alone us= 2100 2200 2000\n\
                   (oxen) (d0) sched-bench: counters cli-start\n\
                   (oxen) (d0) sched-bench: oxl-list beside spin-cli us= 5000 9000 7000\n\
                   (oxen) (d0) sched-bench: spin-cli ran_ns=4000000000\n\
                   (oxen) (d0) sched-bench: done\n";
        let f = parse_sched(log);
        assert_eq!(f.readings.len(), 2, "cli-start has no answer");
        let d = f.between("weights-start", "weights-end").unwrap();
        assert_eq!(
            (d.switches, d.switch_cycles, d.wakeups, d.wakeup_ns),
            (100, 909_000, 1000, 2_000_000)
        );
        assert_eq!(d.per_switch(), Some(9090.0));
        assert_eq!(d.wakeup_mean_ns(), Some(2000.0));
        assert_eq!(d.wakeup_max_us, 40);
        assert!(f.between("cli-start", "cli-end").is_none());
        assert_eq!(f.weights, Some((6_000_000, 2_000_000_000, 3_960_000_000)));
        assert_eq!(f.ratio(), Some(1.98));
        assert_eq!(f.alone_us, [2100, 2200, 2000]);
        assert_eq!(f.beside_us, [5000, 9000, 7000]);
        assert_eq!(
            (f.clock_us, f.cli_ran_ns),
            (Some(3760), Some(4_000_000_000))
        );

        let sim = parse_sim(
            "test sched::sim::tests::weights_share_a_pinned_cpu_1_to_2 ... weights 256:512 on cpu0, cpu1 None: 33.70% vs 66.30%, ratio 1.9674, error 1.63%\n\
             weights 256:512 on cpu0, cpu1 Some((Spin, CpuMask(2))): 33.80% vs 66.20%, ratio 1.9586, error 2.07%\n\
             test sched::sim::tests::dom0_stays_responsive_against_a_spinner ... dom0 (20% load) vs spinner: latency mean 2000 ns max 2500 ns, dom0 20.00%, spinner 80.00%\n",
        );
        assert_eq!(sim.weights, Some((33.70, 66.30, 1.9674, 1.63)));
        assert_eq!(sim.dom0_latency, Some((2000, 2500)));
    }

    #[test]
    fn linux_bench_lines_are_parsed() {
        let serial = "(oxen) (d0) linux-bench: start vcpus=1\n\
(oxen) (d0) linux-bench: create returned tsc=1500 mono=700\n\
(oxen) (d0) linux-bench: before tsc=1000 mono=500\n\
(oxen) (d0) linux-bench: seen tsc=9000 mono=4500\n\
(oxen) (d0) linux-bench: banner Oxen domU: Linux 6.1.0-57-amd64 on 1 CPU(s)\r\n\
(oxen) (d0) linux-bench: guest Oxen domU: TSC 8000, monotonic clock 3000 ns at the banner\n\
(oxen) d1 (linux): console: 20 bytes in 20 writes\n\
[  1.0] (oxen) d1 (linux) vcpu0: 30 exits (at its end): cpuid=5 io=20 hlt=5\n\
[  1.0] (oxen) d1 (linux) vcpu1: 4 exits (at its end): io=1 hlt=3\n";
        let f = parse_linux(serial);
        assert_eq!(f.before, Some((1000, 500)));
        assert_eq!(f.created, Some((1500, 700)));
        assert_eq!(f.guest, Some((8000, 3000)));
        assert_eq!(f.to_banner(), Some(7000));
        assert_eq!(f.rate(), Some(2.0));
        assert_eq!(f.to_banner_ns(), Some(3500.0));
        assert_eq!(f.banner, "Oxen domU: Linux 6.1.0-57-amd64 on 1 CPU(s)");
        assert_eq!(f.exits.len(), 2);
        assert_eq!(f.console_bytes, Some(20));
        let one = parse_linux("(oxen) d3 (linux): 9 exits (at its end): io=9\n");
        assert_eq!(one.exits, vec![(0, 9, vec![("io".to_string(), 9)])]);
        assert_eq!(
            f.exits_by_reason(),
            vec![("io".to_string(), 21), ("hlt".to_string(), 8), ("cpuid".to_string(), 5)]
        );
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_300_004), "1,300,004");
    }
}
