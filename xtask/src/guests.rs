//! The project's own test guests (`tests/guests/`) and their domain configs
//! (`dom0-bootstrap/domains/`), for dom0's initramfs: the ELFs at
//! `usr/lib/oxen/guests/<name>.elf`, the configs at `etc/oxen/<path>`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use object::read::elf::ProgramHeader as _;
use object::Object as _;

use crate::dom0::ExtraFile;
use crate::setup::TARGET;
use crate::util::{cargo, repo_root, run_inherit, show, step};

/// (package, binary) of every guest.
const GUESTS: [(&str, &str); 10] = [
    ("oxen-guest-minimal", "minimal"),
    ("oxen-guest-hostile", "hostile"),
    ("oxen-guest-regs", "regs"),
    ("oxen-guest-fuzz", "fuzz"),
    ("oxen-guest-cpuinfo", "cpuinfo"),
    ("oxen-guest-multiboot", "multiboot"),
    ("oxen-guest-echo", "echo"),
    ("oxen-guest-vstate", "vstate"),
    ("oxen-guest-ioreq", "ioreq"),
    ("oxen-guest-irq", "irq"),
];
/// Where the domU boot state lets a kernel load (docs/hypercalls.md).
const KERNEL_MIN: u64 = 0x10_0000;

/// Builds the guests and returns them with the domain configs.
pub fn collect() -> Result<Vec<ExtraFile>> {
    let mut files = build()?;
    files.extend(configs(&repo_root().join("dom0-bootstrap/domains"))?);
    Ok(files)
}

/// A target directory of their own, so building them never invalidates the
/// hypervisor's build (and the other way round).
fn target_dir() -> PathBuf {
    crate::image::target_dir().join("guests")
}

fn build() -> Result<Vec<ExtraFile>> {
    step(format!("building the test guests ({TARGET}, release)"));
    let dir = target_dir();
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--target", TARGET, "--target-dir"]).arg(&dir);
    for (package, _) in GUESTS {
        cmd.args(["-p", package]);
    }
    // Symbols stay (for reading a crash report's RIP); DWARF would only make
    // dom0's initramfs and the LOAD_IMAGE transfers bigger.
    cmd.env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo");
    run_inherit(&mut cmd, "building the test guests")?;
    let mut files = Vec::new();
    for (_, bin) in GUESTS {
        let path = dir.join(TARGET).join("release").join(bin);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("cargo succeeded but {} is missing", path.display()))?;
        check_elf(&path, &bytes)?;
        files.push(ExtraFile { dest: format!("usr/lib/oxen/guests/{bin}.elf"), mode: 0o644, bytes });
    }
    Ok(files)
}

/// Catches a broken linker script here rather than as a BUILD failure in dom0:
/// a static x86-64 executable whose segments load at 1 MiB or above.
fn check_elf(path: &Path, bytes: &[u8]) -> Result<()> {
    let elf = object::read::elf::ElfFile64::<object::Endianness>::parse(bytes)
        .with_context(|| format!("{} is not an ELF64 file", show(path)))?;
    if elf.kind() != object::ObjectKind::Executable || elf.architecture() != object::Architecture::X86_64 {
        bail!("{} is not an x86-64 executable (ET_EXEC)", show(path));
    }
    let endian = elf.endian();
    for ph in elf.elf_program_headers() {
        let (paddr, memsz) = (ph.p_paddr(endian), ph.p_memsz(endian));
        if ph.p_type(endian) == object::elf::PT_LOAD && memsz > 0 && paddr < KERNEL_MIN {
            bail!("{}: a segment loads at {paddr:#x}, below 1 MiB (check tests/guests/guest.ld)", show(path));
        }
    }
    Ok(())
}

/// Every file under `dir` (recursively), as `etc/oxen/<path relative to dir>`.
fn configs(dir: &Path) -> Result<Vec<ExtraFile>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let rel = path.strip_prefix(dir).expect("found under dir").to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            files.push(ExtraFile { dest: format!("etc/oxen/{rel}"), mode: 0o644, bytes });
        }
    }
    files.sort_by(|a, b| a.dest.cmp(&b.dest));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_keep_their_subfolders() {
        let files = configs(&repo_root().join("dom0-bootstrap/domains")).unwrap();
        let dests: Vec<&str> = files.iter().map(|f| f.dest.as_str()).collect();
        for want in ["etc/oxen/minimal-1.cfg", "etc/oxen/hostile.cfg", "etc/oxen/bad/unknown-key.cfg"] {
            assert!(dests.contains(&want), "{want} missing from {dests:?}");
        }
        let minimal = files.iter().find(|f| f.dest == "etc/oxen/minimal-1.cfg").unwrap();
        assert!(String::from_utf8_lossy(&minimal.bytes).contains("kernel = \"/usr/lib/oxen/guests/minimal.elf\""));
    }

    #[test]
    fn guest_elves_are_checked() {
        assert!(check_elf(Path::new("x"), b"not an elf").is_err());
    }
}
