//! Building the hypervisor ELF and wrapping it in a GRUB (multiboot2) boot ISO.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::setup::TARGET;
use crate::util::{cargo, repo_root, run_captured, run_inherit, show, step};

pub const DEFAULT_CMDLINE: &str = "console=com1,115200 dom0_mem=256M";
const GRUB_DIR: &str = "/usr/lib/grub/i386-pc";

/// Builds `oxen-hv` for the bare-metal target; returns the ELF's path.
pub fn build(debug: bool) -> Result<PathBuf> {
    let profile = if debug { "debug" } else { "release" };
    step(format!("building the hypervisor ({profile}, {TARGET})"));
    let mut cmd = cargo();
    cmd.args([
        "build",
        "-p",
        "oxen-hypervisor",
        "--bin",
        "oxen-hv",
        "--target",
        TARGET,
    ]);
    if !debug {
        cmd.arg("--release");
    }
    run_inherit(&mut cmd, "building the hypervisor")?;
    let elf = target_dir().join(TARGET).join(profile).join("oxen-hv");
    let size = std::fs::metadata(&elf)
        .with_context(|| format!("cargo succeeded but {} is missing", elf.display()))?
        .len();
    step(format!("built {} ({size} bytes)", show(&elf)));
    Ok(elf)
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// A multiboot2 module (dom0's kernel and initrd, ...).
#[derive(Clone, Debug)]
pub struct Module {
    pub file: PathBuf,
    /// The module's own command line (for a kernel: its boot parameters).
    pub args: String,
}

impl std::str::FromStr for Module {
    type Err = String;
    /// `PATH` or `PATH ARGS...`.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (file, args) = s.split_once(char::is_whitespace).unwrap_or((s, ""));
        if file.is_empty() {
            return Err("empty module path".into());
        }
        Ok(Module {
            file: file.into(),
            args: args.trim().into(),
        })
    }
}

/// What goes into a boot ISO.
pub struct IsoSpec<'a> {
    pub elf: &'a Path,
    pub cmdline: &'a str,
    pub modules: &'a [Module],
    /// Names the staging directory `target/iso/<name>`.
    pub name: &'a str,
    pub output: &'a Path,
}

/// grub.cfg from `qemu/grub.cfg.in`.
fn grub_cfg(cmdline: &str, module_lines: &str) -> Result<String> {
    let template_path = repo_root().join("qemu/grub.cfg.in");
    let template = std::fs::read_to_string(&template_path)
        .with_context(|| format!("reading the GRUB template {}", template_path.display()))?;
    if cmdline.contains(['\n', '"', '\'', '\\', '$', ';', '{', '}']) {
        bail!("the hypervisor command line must not contain newlines, quotes, `\\`, `$`, `;` or braces: {cmdline:?}");
    }
    // Only outside comments: the header names the placeholders, and a module
    // list put there left its second line uncommented (a `module2` GRUB ran
    // before the menu entry, failing).
    let mut out = String::new();
    for line in template.lines() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
        } else {
            out.push_str(&line.replace("@CMDLINE@", cmdline).replace("@MODULES@", module_lines));
        }
        out.push('\n');
    }
    Ok(out)
}

/// Stages the files and runs `grub-mkrescue`.
pub fn make_iso(spec: &IsoSpec) -> Result<()> {
    let staging = target_dir().join("iso").join(spec.name);
    let _ = std::fs::remove_dir_all(&staging);
    let grub = staging.join("boot/grub");
    std::fs::create_dir_all(&grub).with_context(|| format!("creating {}", grub.display()))?;
    std::fs::copy(spec.elf, staging.join("boot/oxen.elf"))
        .with_context(|| format!("copying {} into the ISO", spec.elf.display()))?;
    let mut module_lines = String::new();
    let mut used = vec!["oxen.elf".to_owned(), "grub".to_owned()];
    for (i, m) in spec.modules.iter().enumerate() {
        let base = m
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // /boot/<file name> (e.g. /boot/vmlinuz), unless that name is taken.
        let name = if base.is_empty() || used.contains(&base) {
            format!("mod{i}-{base}")
        } else {
            base
        };
        used.push(name.clone());
        std::fs::copy(&m.file, staging.join("boot").join(&name))
            .with_context(|| format!("copying module {} into the ISO", m.file.display()))?;
        module_lines.push_str(&format!("module2 /boot/{name} {}\n    ", m.args));
    }
    std::fs::write(
        grub.join("grub.cfg"),
        grub_cfg(spec.cmdline, module_lines.trim_end())?,
    )?;
    mkrescue(&staging, spec.output, "making the boot ISO")
}

/// Runs `grub-mkrescue` on a staged tree, writing `output`.
fn mkrescue(staging: &Path, output: &Path, what: &str) -> Result<()> {
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if !Path::new(GRUB_DIR).join("multiboot2.mod").exists() {
        bail!("{GRUB_DIR} has no GRUB BIOS modules: install the Debian package grub-pc-bin (`cargo xtask setup`)");
    }
    let mut cmd = Command::new("grub-mkrescue");
    cmd.arg("-d").arg(GRUB_DIR).arg("-o").arg(output).arg(staging);
    run_captured(&mut cmd, &format!("grub-mkrescue ({what})"))?;
    Ok(())
}

/// An ISO whose GRUB boots a Linux kernel and initramfs directly (no
/// hypervisor), so a bare boot goes through the same firmware, GRUB and CD
/// reads as an Oxen boot (`cargo xtask bench`, dom0 boot overhead).
pub fn make_linux_iso(kernel: &Path, initrd: &Path, append: &str, name: &str, output: &Path) -> Result<()> {
    if append.contains(['\n', '"', '\'', '\\', '$', ';', '{', '}']) {
        bail!("the kernel command line must not contain newlines, quotes, `\\`, `$`, `;` or braces: {append:?}");
    }
    let staging = target_dir().join("iso").join(name);
    let _ = std::fs::remove_dir_all(&staging);
    let grub = staging.join("boot/grub");
    std::fs::create_dir_all(&grub).with_context(|| format!("creating {}", grub.display()))?;
    for (from, to) in [(kernel, "vmlinuz"), (initrd, "initrd")] {
        std::fs::copy(from, staging.join("boot").join(to))
            .with_context(|| format!("copying {} into the ISO", from.display()))?;
    }
    std::fs::write(
        grub.join("grub.cfg"),
        format!(
            "set timeout=0\nset timeout_style=hidden\n\nmenuentry \"Linux\" {{\n    linux /boot/vmlinuz {append}\n    \
             initrd /boot/initrd\n    boot\n}}\n"
        ),
    )?;
    mkrescue(&staging, output, "making the bare Linux ISO")
}

#[cfg(test)]
mod grub_tests {
    use super::grub_cfg;

    #[test]
    fn placeholders_are_filled_in_the_menu_entry_only() {
        let cfg = grub_cfg(
            "console=com1",
            "module2 /boot/vmlinux vmlinux quiet\n    module2 /boot/initrd.gz initrd",
        )
        .unwrap();
        let code: Vec<&str> = cfg
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let entry = code.iter().position(|l| l.starts_with("menuentry")).unwrap();
        // Every module line is inside the menu entry, right after multiboot2.
        assert_eq!(code[entry + 1], "multiboot2 /boot/oxen.elf console=com1");
        assert_eq!(code[entry + 2], "module2 /boot/vmlinux vmlinux quiet");
        assert_eq!(code[entry + 3], "module2 /boot/initrd.gz initrd");
        assert!(!code[..entry].iter().any(|l| l.contains("module2")));
        // The header still names the placeholders.
        assert!(cfg.contains("#   @MODULES@"));
        assert!(grub_cfg("a;b", "").is_err());
    }
}
