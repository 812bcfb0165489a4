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
    files.extend(saved_on_each_vendor()?);

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

/// The opening of a save file from each vendor, `saved-on-intel.save` and
/// `saved-on-amd.save` in dom0's tests folder: `oxl restore` decides whether
/// a file can load here from its header, config and CPUID records, so these
/// let save.sh show that a file from the other vendor is refused on whichever
/// vendor it runs. Written with the stream's own encoder (`oxen_abi::save_stream`)
/// for minimal-1's config; leaf 0 names the vendor as that CPU's would.
fn saved_on_each_vendor() -> Result<Vec<ExtraFile>> {
    let path = crate::util::repo_root().join("dom0-bootstrap/domains/minimal-1.cfg");
    let config = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok([("intel", oxen_abi::save_stream::vendor::INTEL), ("amd", oxen_abi::save_stream::vendor::AMD)]
        .into_iter()
        .map(|(name, vendor)| ExtraFile {
            dest: format!("usr/lib/oxen/tests/saved-on-{name}.save"),
            mode: 0o644,
            bytes: save_stream_opening(vendor, &config),
        })
        .collect())
}

/// A save stream's header (16 MiB, 1 vCPU, a 2 GHz TSC), then `CONFIG` and
/// `CPUID` records: what a reader has when it checks compatibility.
fn save_stream_opening(vendor: u32, config: &str) -> Vec<u8> {
    use oxen_abi::save_stream::{kind, vendor as v, CpuidEntry, RecordHeader, StreamHeader};
    let header = StreamHeader { flags: 0, abi_version: oxen_abi::ABI_VERSION, vendor, memory_mib: 16, vcpus: 1, tsc_hz: 2_000_000_000 };
    let name: &[u8; 12] = if vendor == v::INTEL { b"GenuineIntel" } else { b"AuthenticAMD" };
    let word = |i: usize| u32::from_le_bytes([name[i], name[i + 1], name[i + 2], name[i + 3]]);
    // CPUID 0: the highest leaf in EAX, the vendor in EBX, EDX, ECX.
    let leaf0 = CpuidEntry { leaf: 0, subleaf: 0, regs: [0xd, word(0), word(8), word(4)] };
    let mut out = header.encode().to_vec();
    for (k, payload) in [(kind::CONFIG, config.as_bytes().to_vec()), (kind::CPUID, leaf0.encode().to_vec())] {
        let rh = RecordHeader::of(k, &payload);
        out.extend_from_slice(&rh.encode());
        out.extend_from_slice(&payload);
        out.resize(out.len() + rh.padding(), 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxen_abi::save_stream::{kind, vendor, CpuidEntry, RecordHeader, StreamHeader, HEADER_LEN, RECORD_HEADER_LEN};

    #[test]
    fn the_other_vendors_opening_reads_back_as_written() {
        for v in [vendor::INTEL, vendor::AMD] {
            let b = save_stream_opening(v, "name = \"m\"\n");
            let h = StreamHeader::decode(&b).expect("header");
            assert_eq!((h.vendor, h.memory_mib, h.vcpus), (v, 16, 1));
            let mut at = HEADER_LEN;
            let mut kinds = Vec::new();
            while at < b.len() {
                let rh = RecordHeader::decode(b[at..at + RECORD_HEADER_LEN].try_into().unwrap()).expect("record header");
                let payload = &b[at + RECORD_HEADER_LEN..at + RECORD_HEADER_LEN + rh.len as usize];
                rh.check(payload).expect("its CRC");
                if rh.kind == kind::CPUID {
                    let e: Vec<CpuidEntry> = CpuidEntry::decode_all(payload).unwrap().collect();
                    let id: Vec<u8> = [e[0].regs[1], e[0].regs[3], e[0].regs[2]].iter().flat_map(|r| r.to_le_bytes()).collect();
                    assert_eq!(&id, if v == vendor::INTEL { b"GenuineIntel" } else { b"AuthenticAMD" });
                }
                kinds.push(rh.kind);
                at += RECORD_HEADER_LEN + rh.len as usize + rh.padding();
            }
            assert_eq!(kinds, [kind::CONFIG, kind::CPUID]);
        }
    }
}
