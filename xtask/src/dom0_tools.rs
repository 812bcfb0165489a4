//! Oxen's own files in dom0's initramfs, beside busybox and the kernel's
//! modules: the `/dev/oxen` driver, the `oxl` CLI, the test guests and their
//! configs. Each is built here, from this checkout, every time dom0 is prepared
//! (cargo and make skip what is up to date).

use crate::dom0::ExtraFile;
use anyhow::{Context as _, Result};

/// Builds every tool for the dom0 kernel `release` and returns the files to add.
pub fn collect(release: &str) -> Result<Vec<ExtraFile>> {
    let mut files = Vec::new();

    let kmod = crate::kmod::build(release)?;
    for (dest, mode, path) in [
        (
            format!("lib/modules/{release}/{}", crate::kmod::MODULE_PATH),
            0o644,
            &kmod.module,
        ),
        (
            crate::kmod::IOCTL_TEST_PATH.to_owned(),
            0o755,
            &kmod.ioctl_test,
        ),
        (
            crate::kmod::NULL_BENCH_PATH.to_owned(),
            0o755,
            &kmod.null_bench,
        ),
        (
            crate::kmod::USER_PROBE_PATH.to_owned(),
            0o755,
            &kmod.user_probe,
        ),
        (
            crate::kmod::XSTATE_TEST_PATH.to_owned(),
            0o755,
            &kmod.xstate_test,
        ),
        (
            crate::kmod::IOREQ_TEST_PATH.to_owned(),
            0o755,
            &kmod.ioreq_test,
        ),
        (
            crate::kmod::FOREIGN_TEST_PATH.to_owned(),
            0o755,
            &kmod.foreign_test,
        ),
        (crate::kmod::DIRTY_TEST_PATH.to_owned(), 0o755, &kmod.dirty_test),
    ] {
        files.push(ExtraFile {
            dest,
            mode,
            bytes: std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        });
    }

    let oxl = crate::oxl::build()?;
    files.push(ExtraFile {
        dest: "usr/bin/oxl".into(),
        mode: 0o755,
        bytes: std::fs::read(&oxl).with_context(|| format!("reading {}", oxl.display()))?,
    });

    // The dom0 side of `cargo xtask fuzz` (dom0-bootstrap/tests/fuzz.sh runs it).
    let fuzzer = crate::oxl::fuzzer()?;
    files.push(ExtraFile {
        dest: "usr/lib/oxen/fuzz".into(),
        mode: 0o755,
        bytes: std::fs::read(&fuzzer).with_context(|| format!("reading {}", fuzzer.display()))?,
    });

    // The device model `oxl create` starts for a domU with disks.
    let dm = crate::oxl::dm()?;
    files.push(ExtraFile {
        dest: "usr/lib/oxen/oxen-dm".into(),
        mode: 0o755,
        bytes: std::fs::read(&dm).with_context(|| format!("reading {}", dm.display()))?,
    });

    // The DHCP hook of dom0's bridge (dom0-bootstrap/init sets up xenbr0).
    let hook = crate::util::repo_root().join("dom0-bootstrap/net/udhcpc.script");
    files.push(ExtraFile {
        dest: "usr/lib/oxen/udhcpc.script".into(),
        mode: 0o755,
        bytes: std::fs::read(&hook).with_context(|| format!("reading {}", hook.display()))?,
    });

    files.extend(crate::guests::collect()?);

    // The shell scripts system tests run in dom0 (dom0-bootstrap/tests/).
    let dir = crate::util::repo_root().join("dom0-bootstrap/tests");
    let mut scripts: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sh"))
        .collect();
    scripts.sort();
    for path in scripts {
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        files.push(ExtraFile {
            dest: format!("usr/lib/oxen/tests/{name}"),
            mode: 0o755,
            bytes: std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        });
    }
    Ok(files)
}
