//! Oxen's own files in dom0's initramfs, beside busybox and the kernel's
//! modules: the `/dev/oxen` driver, the `oxl` CLI, the test guests and their
//! configs. Each is built here, from this checkout, every time dom0 is prepared
//! (cargo and make skip what is up to date).

use crate::dom0::ExtraFile;
use anyhow::Result;

/// Builds every tool for the dom0 kernel `release` and returns the files to add.
pub fn collect(release: &str) -> Result<Vec<ExtraFile>> {
    let _ = release;
    let mut files = Vec::new();
    files.extend(crate::guests::collect()?);
    Ok(files)
}
