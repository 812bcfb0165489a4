//! Host set-up run before every command: the Debian packages that boot the
//! hypervisor and build dom0's tools, and the bare-metal Rust target. Fast (two small queries) when all
//! is present; installs what is missing on a fresh machine (CI starts on one).

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{bail, Result};

use crate::util::{on_path, render, run_captured, run_inherit, step};

/// Debian packages and why Oxen needs each.
const PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "QEMU"),
    ("bochs", "Bochs"),
    ("bochsbios", "Bochs"),
    ("vgabios", "Bochs"),
    ("grub-pc-bin", "GRUB ISOs"),
    ("grub-common", "GRUB ISOs"),
    ("xorriso", "GRUB ISOs"),
    ("mtools", "GRUB ISOs"),
    // dom0's /dev/oxen module is built against the dom0 kernel's headers (kmod.rs):
    // gcc brings the compiler Debian's kernel was built with, and binutils; libelf1
    // is what kbuild's prebuilt objtool links against; the module's user-space test
    // program includes the kernel's user-space headers.
    ("gcc", "dom0's kernel module"),
    ("make", "dom0's kernel module"),
    ("libelf1", "dom0's kernel module"),
    ("linux-libc-dev", "dom0's kernel module"),
    // glibc's libc.a: dom0's oxl is linked statically (xtask/src/oxl.rs).
    ("libc6-dev", "the static oxl for dom0"),
    // iasl: the hypervisor's host tests disassemble the ACPI tables it builds for
    // domains (hypervisor/src/firmware/acpi.rs) to check them against ACPICA.
    ("acpica-tools", "iasl, for the ACPI table tests"),
    // mke2fs -d: the Linux domU's root disk image (linux_domu.rs).
    ("e2fsprogs", "the Linux domU's root disk"),
];

/// Programs that stand for the packages on hosts without dpkg.
const PROGRAMS: &[&str] = &[
    "qemu-system-x86_64",
    "bochs",
    "grub-mkrescue",
    "xorriso",
    "mformat",
    "gcc",
    "make",
    "iasl",
];

pub const TARGET: &str = "x86_64-unknown-none";

pub fn ensure() -> Result<()> {
    ensure_packages()?;
    ensure_target()
}

/// Packages from `PACKAGES` that dpkg does not list as installed.
fn missing_packages() -> Result<Vec<&'static str>> {
    let mut cmd = Command::new("dpkg-query");
    cmd.arg("-W")
        .arg("-f=${Package} ${Status}\n")
        .args(PACKAGES.iter().map(|p| p.0));
    // dpkg-query exits 1 when some package is unknown; its stdout still lists the rest.
    let out = cmd.output()?;
    let installed: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.ends_with(" install ok installed"))
        .filter_map(|l| l.split_whitespace().next())
        .map(|p| p.split(':').next().unwrap_or(p).to_owned()) // "qemu-system-x86:amd64"
        .collect();
    Ok(PACKAGES
        .iter()
        .map(|p| p.0)
        .filter(|p| !installed.contains(*p))
        .collect())
}

fn ensure_packages() -> Result<()> {
    if !on_path("dpkg-query") {
        let absent: Vec<&str> = PROGRAMS.iter().copied().filter(|p| !on_path(p)).collect();
        if absent.is_empty() {
            step("host tools present (not a Debian host: found them on PATH)");
            return Ok(());
        }
        bail!(
            "this is not a Debian-like host (no dpkg-query) and these programs are missing: {}.\n\
             Install the equivalents of the Debian packages {} with your package manager.",
            absent.join(", "),
            PACKAGES.iter().map(|p| p.0).collect::<Vec<_>>().join(" ")
        );
    }
    let missing = missing_packages()?;
    if missing.is_empty() {
        step(format!(
            "host packages present ({} checked)",
            PACKAGES.len()
        ));
        return Ok(());
    }
    let purposes: Vec<&str> = {
        let mut seen = Vec::new();
        for (p, why) in PACKAGES {
            if missing.contains(p) && !seen.contains(why) {
                seen.push(*why);
            }
        }
        seen
    };
    let list = missing.join(" ");
    let manual = format!(
        "sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {list}"
    );
    step(format!(
        "installing {list} (needed for: {})",
        purposes.join(", ")
    ));
    let apt = |args: &[&str]| {
        apt_get_as_root(args).map_err(|e| {
            anyhow::anyhow!("missing Debian packages: {list}\n{e}; run as root:\n    {manual}")
        })
    };
    let mut update = apt(&["-q", "update"])?;
    if let Err(e) = run_captured(&mut update, "apt-get update") {
        bail!("{e}\nCould not install {list}; install them yourself:\n    {manual}");
    }
    let mut install = apt(&["-q", "install", "-y", "--no-install-recommends"])?;
    install.args(&missing);
    if let Err(e) = run_captured(&mut install, "apt-get install") {
        bail!("{e}\nCould not install {list}; install them yourself:\n    {manual}");
    }
    let still = missing_packages()?;
    if !still.is_empty() {
        bail!(
            "after `{}` these packages are still missing: {}",
            render(&install),
            still.join(" ")
        );
    }
    Ok(())
}

/// `apt-get ARGS` as root: directly when we are root, else through `sudo` (`sudo -n`
/// without a terminal, so it fails instead of waiting for a password).
pub fn apt_get_as_root(args: &[&str]) -> Result<Command> {
    // SAFETY: geteuid(2) has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut c = if root {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c
    } else if on_path("sudo") {
        let mut c = Command::new("sudo");
        if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            c.arg("-n");
        }
        c.args(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
        c
    } else {
        bail!("xtask is not root and there is no sudo");
    };
    c.args(args);
    Ok(c)
}

fn ensure_target() -> Result<()> {
    if on_path("rustup") {
        let installed = run_captured(
            Command::new("rustup").args(["target", "list", "--installed"]),
            "rustup target list --installed",
        )?;
        if installed.lines().any(|l| l.trim() == TARGET) {
            step(format!("rust target {TARGET} installed"));
            return Ok(());
        }
        step(format!(
            "installing rust target {TARGET} (the hypervisor is a bare-metal binary)"
        ));
        return run_inherit(
            Command::new("rustup").args(["target", "add", TARGET]),
            "rustup target add",
        )
        .map_err(|e| {
            e.context(format!(
                "could not add the {TARGET} target; run `rustup target add {TARGET}`"
            ))
        });
    }
    // No rustup: look in the sysroot of whatever rustc cargo uses.
    let sysroot = run_captured(
        Command::new("rustc").args(["--print", "sysroot"]),
        "rustc --print sysroot",
    )?;
    let lib = std::path::Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(TARGET);
    if lib.is_dir() {
        step(format!(
            "rust target {TARGET} installed (no rustup; found in the sysroot)"
        ));
        Ok(())
    } else {
        bail!("the Rust target {TARGET} is missing and rustup is not installed: install rustup (it reads rust-toolchain.toml), or add the target to your toolchain")
    }
}
