//! `oxl` for dom0: a static x86-64 Linux binary, since dom0's initramfs has
//! busybox and no C library to link against at run time.
//!
//! Built with `cargo build -p oxl --release --target x86_64-unknown-linux-gnu`
//! and `+crt-static` for that target only (glibc's `libc.a`, from Debian's
//! `libc6-dev`, which `setup` installs). The explicit `--target` keeps the
//! flag off build scripts and proc-macros, which run on the host; the target
//! directory `target/oxl/` keeps this build from invalidating or waiting on
//! the workspace's own.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use object::elf::PT_INTERP;
use object::read::elf::{ElfFile64, ProgramHeader as _};

use crate::image::target_dir;
use crate::util::{cargo, run_inherit, show, step};

const TARGET: &str = "x86_64-unknown-linux-gnu";
/// What a static glibc link of `TARGET` needs (Debian's libc6-dev).
const LIBC_A: &str = "/usr/lib/x86_64-linux-gnu/libc.a";
/// Cargo's per-target rustflags variable for `TARGET`.
const RUSTFLAGS_VAR: &str = "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS";

/// Builds the static `oxl`, checks it is static, returns its path.
pub fn build() -> Result<PathBuf> {
    let dir = target_dir().join("oxl");
    step(format!("building oxl and oxen-dm for dom0 (release, {TARGET}, static)"));
    let mut cmd = cargo();
    // oxen-dm (the device model `oxl create` starts per domU) in the same
    // command: same flags, one target directory, one dependency build.
    cmd.args(["build", "-p", "oxl", "-p", "oxen-dm", "--release", "--target", TARGET, "--target-dir"])
        .arg(&dir)
        .env(RUSTFLAGS_VAR, "-C target-feature=+crt-static")
        // Either of these would replace the per-target flags and give a
        // dynamically linked binary that dom0 cannot run.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    run_inherit(&mut cmd, "building oxl").map_err(|e| {
        // The hint only where it is the cause: a compile error in oxl is
        // not a missing libc.a.
        if std::path::Path::new(LIBC_A).exists() {
            e
        } else {
            e.context(format!(
                "a static glibc build needs {LIBC_A}: on Debian `apt-get install libc6-dev` \
                 (`cargo xtask setup` does it)"
            ))
        }
    })?;
    let bin = dir.join(TARGET).join("release").join("oxl");
    let data = std::fs::read(&bin)
        .with_context(|| format!("cargo succeeded but {} is missing", bin.display()))?;
    check_static(&bin, &data)?;
    step(format!(
        "built {} ({} KiB, statically linked: no PT_INTERP)",
        show(&bin),
        data.len() / 1024
    ));
    Ok(bin)
}

/// `oxen-fuzz` (`dom0-bootstrap/oxl/src/bin/oxen-fuzz.rs`, the dom0 hypercall
/// fuzzer), which `build` built beside oxl with the same static flags.
pub fn fuzzer() -> Result<PathBuf> {
    let bin = target_dir().join("oxl").join(TARGET).join("release").join("oxen-fuzz");
    let data = std::fs::read(&bin)
        .with_context(|| format!("building oxl should have built {}", bin.display()))?;
    check_static(&bin, &data)?;
    Ok(bin)
}

/// `oxen-dm` (`dom0-bootstrap/oxen-dm/src/main.rs`, a domU's virtio device
/// model), which `build` built beside oxl with the same static flags.
pub fn dm() -> Result<PathBuf> {
    let bin = target_dir().join("oxl").join(TARGET).join("release").join("oxen-dm");
    let data = std::fs::read(&bin)
        .with_context(|| format!("building oxl should have built {}", bin.display()))?;
    check_static(&bin, &data)?;
    Ok(bin)
}

/// Fails unless the ELF file asks for no program interpreter (the dynamic
/// loader), which is what makes it run without a C library beside it.
fn check_static(path: &Path, data: &[u8]) -> Result<()> {
    let elf = ElfFile64::<object::Endianness>::parse(data)
        .with_context(|| format!("{} is not an ELF64 file", path.display()))?;
    let endian = elf.endian();
    if let Some(interp) = elf
        .elf_program_headers()
        .iter()
        .find(|p| p.p_type(endian) == PT_INTERP)
    {
        let name = interp
            .data(endian, data)
            .ok()
            .map(|b| String::from_utf8_lossy(b).trim_end_matches('\0').to_owned())
            .unwrap_or_default();
        bail!(
            "{} is dynamically linked (interpreter {name}), so it would not run in dom0; \
             {RUSTFLAGS_VAR}=\"-C target-feature=+crt-static\" did not take effect",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_binary_is_refused() {
        // xtask itself is linked dynamically against glibc.
        let me = std::env::current_exe().unwrap();
        let data = std::fs::read(&me).unwrap();
        let err = check_static(&me, &data).unwrap_err().to_string();
        assert!(err.contains("is dynamically linked (interpreter /lib"), "{err}");
    }
}
