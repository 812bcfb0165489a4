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

use crate::emu::{boot_and_watch, Accel, Emulator, Ending, Machine, BOCHS_IPS};
use crate::image::{make_iso, target_dir, IsoSpec};
use crate::util::{repo_root, run_captured, show, step, tail, tool_version};

const BENCH_CMDLINE: &str = "console=com1,115200 bench";
const BENCH_TIMEOUT: Duration = Duration::from_secs(300);

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
    std::fs::write(&path, doc).with_context(|| format!("writing {}", path.display()))?;
    println!("\n{table}");
    step(format!("updated {}", show(&path)));
    hc.map(|_| ())
        .context("the null-hypercall benchmark failed (BENCHMARKS.md keeps its previous figure)")
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
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_300_004), "1,300,004");
    }
}
