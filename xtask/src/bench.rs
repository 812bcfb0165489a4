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

const BENCH_CMDLINE: &str = "console=com1,115200 bench";
const BENCH_TIMEOUT: Duration = Duration::from_secs(300);

/// The hypervisor command line of the dom0 boot benchmark (as test `dom0-boot-svm`).
const DOM0_CMDLINE: &str = "console=com1,115200 dom0_mem=256M";
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
        "io" => "dom0's console UART is emulated: every byte written is an OUT, plus the LSR polls before it",
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
fn relative(command: &str) -> String {
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
    let (bare_dir, oxen_dir) = (base.join("dom0-bare"), base.join("dom0-oxen"));
    for d in [&bare_dir, &oxen_dir] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d)?;
    }
    let iso = oxen_dir.join("oxen.iso");
    make_iso(&IsoSpec {
        elf,
        cmdline: DOM0_CMDLINE,
        modules: &dom0.modules(),
        name: "bench-dom0",
        output: &iso,
    })?;
    let m = Machine {
        emulator: Emulator::Qemu,
        cpu: Some("max".into()),
        smp: 1,
        memory_mib: 512,
        accel: Accel::Tcg,
        icount: false,
        bochs_ips: BOCHS_IPS,
        disk: None,
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
    };
    // The same kernel command line dom0 gets under Oxen, so both print the same.
    let bare_media = Media::Linux {
        kernel: &dom0.kernel,
        initrd: &dom0.initrd,
        append: crate::dom0::KERNEL_ARGS,
    };
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
        let (oxen, o) = timed(
            &format!("under Oxen (round {round}/{DOM0_ROUNDS})"),
            &oxen_dir,
            Media::Iso(&iso),
            &oxen_watch,
            DOM0_TIMEOUT + TALLY_GRACE,
        )?;
        let exits = parse_tally(&o.serial);
        println!(
            "     under Oxen: {oxen:.1}s to the init banner ({:.2}x bare); exit tally: {}",
            oxen / bare,
            match &exits {
                Some((n, _, why)) => format!("{n} exits ({why})"),
                None => format!(
                    "none within {}s of the banner (see {})",
                    TALLY_GRACE.as_secs(),
                    show(&oxen_dir.join("serial.log"))
                ),
            }
        );
        oxen_command = relative(&o.command);
        rounds.push(Dom0Round { bare, oxen, exits });
    }
    Ok(Dom0Boot {
        rounds,
        bare_command,
        oxen_command,
        banner: banner_line,
    })
}

/// The BENCHMARKS.md section on the boot ratio.
fn dom0_boot_section(d: &Dom0Boot, footer: &str) -> (String, String) {
    let mut rows = String::new();
    let mut ratios = Vec::new();
    for (i, r) in d.rounds.iter().enumerate() {
        let ratio = r.oxen / r.bare;
        ratios.push(ratio);
        rows.push_str(&format!(
            "| {} | {:.1} s | {:.1} s | {ratio:.2}× |\n",
            i + 1,
            r.bare,
            r.oxen
        ));
    }
    let mean = ratios.iter().sum::<f64>() / ratios.len().max(1) as f64;
    rows.push_str(&format!("| mean | | | **{mean:.2}×** |\n"));
    let summary = format!(
        "| dom0 boot to init, Oxen / bare | {mean:.2}× (mean of {} pairs) |\n",
        ratios.len()
    );
    let body = format!(
        "## dom0 boot overhead\n\n\
         Wall time from QEMU's start to dom0's init banner (`{BANNER}`), dom0's kernel and initramfs booted \
         (a) bare by QEMU and (b) under Oxen, alternately, in the same QEMU. Emulator wall time is noisy: \
         read the ratios of this one run, not the seconds, as the figure (times are polled every 0.1 s).\n\n\
         | round | (a) bare | (b) under Oxen | (b)/(a) |\n|---|---|---|---|\n{rows}\n\
         Banner: `{}`.  \nCommand: `cargo xtask bench`, which ran, in turn,\n\n\
         ```\n{}\n{}\n```\n\n\
         (the ISO carries the hypervisor with command line `{DOM0_CMDLINE}` and dom0's modules \
         `vmlinuz {}` and `initrd`; the bare boot gets the same kernel command line). {footer}",
        d.banner,
        d.bare_command,
        d.oxen_command,
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
    Some(format!(
        "## VM exits during dom0's boot\n\n\
         dom0's exits by reason from its start to its root shell, as the hypervisor tallies them, in the Oxen \
         boots of the dom0 boot benchmark above. The tally is the hypervisor's `(oxen) dom0: N exits (first idle \
         stretch): …` line (printed once dom0 has been halted 5 s with nothing to deliver) or, whichever comes \
         first, its answer to its console's `e` key (`… exits (console): …`), which the benchmark types (Ctrl-A \
         three times, then `e`) when init prints `{SHELL_LINE}` just before the shell's prompt. Which one each \
         round got: {}.\n\n{table}\n\
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

fn thousands(n: u64) -> String {
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

pub fn bench(elf: &Path) -> Result<()> {
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
    std::fs::write(&path, doc).with_context(|| format!("writing {}", path.display()))?;
    println!("\n{table}");
    step(format!("updated {}", show(&path)));
    hc.map(|_| ())
        .context("the null-hypercall benchmark failed (BENCHMARKS.md keeps its previous figure)")?;
    d0.context("the dom0 boot benchmark failed (BENCHMARKS.md keeps its previous dom0 figures)")?;
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
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_300_004), "1,300,004");
    }
}
