//! The Linux domU dom0 carries ready to start: `oxl create -c /etc/oxen/linux.cfg`.
//!
//! Its kernel is dom0's own (the bzImage of the Debian kernel package `dom0.rs` fetches);
//! its initramfs is written here from that busybox-static and the files of
//! `dom0-bootstrap/linux-domu/`, in both forms, so `cargo xtask bench` can boot either:
//!
//! ```text
//! target/linux-domu/initrd.cpio      /init = busybox init, /etc/inittab, /etc/init.d/rcS,
//! target/linux-domu/initrd.cpio.gz   /etc/profile, /etc/passwd, /etc/group, /bin/busybox,
//!                                    /bin/sh, /dev/console, /usr/lib/oxen/tsc,
//!                                    /lib/modules/*.ko and /lib/modules/load (MODULES)
//! ```
//!
//! In dom0's initramfs (`dom0_files`): the kernel at `KERNEL_PATH`, the uncompressed
//! initramfs at `INITRD_PATH`; the config is `dom0-bootstrap/domains/linux.cfg`, which
//! `guests.rs` installs as `/etc/oxen/linux.cfg` with the other configs.
//!
//! The uncompressed form goes into dom0: booted bare under QEMU it reaches the banner
//! with about 40 M fewer instructions (2.4%: the kernel does not inflate it; wall time
//! is the same within the noise), and costs dom0 nothing on the way in (dom0's own
//! initramfs is gzip-compressed as a whole), only 1 MiB more of its RAM and of
//! `oxl create`'s copy (BENCHMARKS.md, "Linux domU boot, bare").

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result};
use regex::Regex;

use crate::cpio::Archive;
use crate::dom0::ExtraFile;
use crate::emu::{
    boot_and_watch_with, Accel, Emulator, Ending, Input, Machine, Media, Watch, BOCHS_IPS,
};
use crate::image::target_dir;
use crate::util::{repo_root, run_output, show, step, tail};

/// The domU's init files, relative to the repo root.
const SOURCES: &str = "dom0-bootstrap/linux-domu";
/// The domain config dom0 gets as `/etc/oxen/linux.cfg`.
pub const CONFIG: &str = "dom0-bootstrap/domains/linux.cfg";
/// Where dom0 finds the domU's kernel (`kernel` in linux.cfg).
pub const KERNEL_PATH: &str = "usr/lib/oxen/linux/vmlinuz";
/// Where dom0 finds the same kernel uncompressed (`crate::vmlinux`), which the
/// Linux domU tests that run under Bochs boot (linux-vmlinux.cfg).
pub const VMLINUX_PATH: &str = "usr/lib/oxen/linux/vmlinux";
/// Where dom0 finds the domU's initramfs (`ramdisk` in linux.cfg).
pub const INITRD_PATH: &str = "usr/lib/oxen/linux/initrd.cpio";
/// rcS's banner, the end of a timed boot.
pub const BANNER: &str = r"^Oxen domU: Linux \S+ on \d+ CPU\(s\)";
/// What rcS prints after the banner when the command line has `oxen.tsc`.
const TSC_LINE: &str = r"^Oxen domU: TSC (\d+), monotonic clock (\d+) ns at the banner";
/// The shell's prompt (`PS1` in dom0-bootstrap/linux-domu/profile).
const PROMPT: &str = r"domU:\S*# ";
/// What busybox's shell prints when it has no controlling terminal.
const NO_JOB_CONTROL: &str = "job control turned off";
/// Modules the domU loads (Debian builds them as `=m`), with their dependencies:
/// `pvpanic_mmio` binds the platform's pvpanic device (ACPI QEMU0001) so a panic
/// reaches the hypervisor and the domain's `on_crash` (it needs `pvpanic`).
/// rcS `insmod`s the files named in /lib/modules/load, in that order.
/// `virtio_mmio` binds the DSDT's virtio-mmio devices (LNRO0005) and `virtio_blk`
/// drives the disks behind them (issue 11).
/// `virtio_net` gives a vif as eth0.
const MODULES: &[&str] = &["pvpanic_mmio", "virtio_mmio", "virtio_blk", "virtio_net"];
/// Loaded by /init only for a disk root (`root=/dev/vdX`): ext4, and `crc32c`
/// for its metadata checksums (the crypto API finds no module on its own here:
/// there is no modprobe with an alias table). /lib/modules/load.ext4 lists them.
const EXT4_MODULES: &[&str] = &["crc32c_generic", "ext4"];
/// The root filesystem image a Linux domU boots from a virtio disk: the
/// initramfs's tree as ext4, gzip-compressed (`ROOTFS_PATH` in dom0).
const ROOTFS_MIB: u32 = 32;
/// Where dom0 finds it (`gunzip -c` it to a file to attach it as a disk).
pub const ROOTFS_PATH: &str = "usr/lib/oxen/linux/rootfs.ext4.gz";

/// The domU's kernel and its initramfs in both forms.
pub struct LinuxDomu {
    pub kernel: PathBuf,
    /// `kernel` unpacked: its `vmlinux`, compacted (`crate::vmlinux`).
    pub vmlinux: PathBuf,
    /// The uncompressed newc archive: what dom0 carries.
    pub cpio: PathBuf,
    /// The same, gzip-compressed, for the comparison in `bench_bare`.
    pub cpio_gz: PathBuf,
    /// The same tree as an ext4 image, gzip-compressed: a root disk.
    pub rootfs_gz: PathBuf,
}

impl LinuxDomu {
    /// The kernel and the uncompressed initramfs, for dom0's initramfs.
    pub fn dom0_files(&self) -> Result<Vec<ExtraFile>> {
        [
            (KERNEL_PATH, &self.kernel),
            (VMLINUX_PATH, &self.vmlinux),
            (INITRD_PATH, &self.cpio),
            (ROOTFS_PATH, &self.rootfs_gz),
        ]
            .into_iter()
            .map(|(dest, path)| {
                Ok(ExtraFile {
                    dest: dest.into(),
                    mode: 0o644,
                    bytes: std::fs::read(path)
                        .with_context(|| format!("reading {}", path.display()))?,
                })
            })
            .collect()
    }
}

/// Writes `target/linux-domu/initrd.cpio{,.gz}` around the busybox binary at `busybox`,
/// for the kernel at `kernel` (dom0's, `target/dom0/vmlinuz`), whose modules are in
/// `moddir` (`lib/modules/RELEASE` of its package).
pub fn build(kernel: &Path, busybox: &Path, moddir: &Path) -> Result<LinuxDomu> {
    let dir = target_dir().join("linux-domu");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let src = repo_root().join(SOURCES);
    let read = |name: &str| {
        let p = src.join(name);
        std::fs::read(&p).with_context(|| format!("reading the domU's {}", p.display()))
    };
    let tsc = dir.join("tsc");
    build_tsc(&src.join("tsc.c"), &tsc)?;
    let busybox_bytes =
        std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    let read_modules = |wanted: &[&str], skip: &[(String, Vec<u8>)]| -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for m in crate::dom0::resolve_modules(moddir, wanted)? {
            let path = moddir.join(&m.path);
            let file = Path::new(&m.path).file_name().map(|f| f.to_string_lossy().into_owned());
            let file = file.with_context(|| format!("module path {}", m.path))?;
            if skip.iter().any(|(f, _)| *f == file) {
                continue;
            }
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            out.push((file, bytes));
        }
        Ok(out)
    };
    let modules = read_modules(MODULES, &[])?;
    let ext4_modules = read_modules(EXT4_MODULES, &modules)?;
    let files = Files {
        modules: &modules,
        ext4_modules: &ext4_modules,
        busybox: &busybox_bytes,
        init: &read("init")?,
        inittab: &read("inittab")?,
        rcs: &read("rcS")?,
        profile: &read("profile")?,
        tsc: &std::fs::read(&tsc)?,
        udhcpc: &{
            let p = repo_root().join("dom0-bootstrap/net/udhcpc.script");
            std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?
        },
    };
    let mut a = Archive::new();
    tree(&mut a, &files)?;
    let cpio = a.finish();
    let rootfs_gz = dir.join("rootfs.ext4.gz");
    write_rootfs(&files, &cpio, &dir.join("rootfs"), &rootfs_gz)?;
    let vmlinux = dir.join("vmlinux");
    write_vmlinux(kernel, &vmlinux)?;
    let out = LinuxDomu {
        kernel: kernel.to_path_buf(),
        vmlinux,
        cpio: dir.join("initrd.cpio"),
        cpio_gz: dir.join("initrd.cpio.gz"),
        rootfs_gz,
    };
    // Written only when they change, so dom0's initramfs is not rebuilt for nothing
    // (its stamp hashes the bytes, not the times; this keeps `ls -l` honest too).
    let gz = gzip(&cpio)?;
    for (path, bytes) in [(&out.cpio, &cpio), (&out.cpio_gz, &gz)] {
        if std::fs::read(path).ok().as_deref() != Some(bytes.as_slice()) {
            std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    step(format!(
        "Linux domU initramfs: {} ({} KiB; {} KiB gzip-compressed: /init, busybox init, rcS, a shell on the console, modules: {}; for a disk root: {}); the same as a root disk: {}",
        show(&out.cpio),
        cpio.len() / 1024,
        gz.len() / 1024,
        modules.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>().join(" "),
        ext4_modules.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>().join(" "),
        show(&out.rootfs_gz)
    ));
    Ok(out)
}

/// Unpacks the bzImage at `kernel` into `out` (`crate::vmlinux`), unless `out`
/// was made from these very bytes (its stamp `out.inputs` holds their hash).
fn write_vmlinux(kernel: &Path, out: &Path) -> Result<()> {
    use std::hash::{Hash as _, Hasher as _};
    let bytes = std::fs::read(kernel).with_context(|| format!("reading {}", kernel.display()))?;
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    let inputs = format!("{} {:016x}\n", kernel.display(), h.finish());
    let stamp = out.with_extension("inputs");
    if out.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == inputs) {
        return Ok(());
    }
    let elf = crate::vmlinux::unpack(&bytes)
        .and_then(|payload| crate::vmlinux::compact(&payload))
        .with_context(|| format!("unpacking the vmlinux inside {}", kernel.display()))?;
    std::fs::write(out, &elf).with_context(|| format!("writing {}", out.display()))?;
    std::fs::write(&stamp, inputs)?;
    step(format!(
        "Linux domU kernel, uncompressed: {} ({} KiB, from {})",
        show(out),
        elf.len() / 1024,
        show(kernel)
    ));
    Ok(())
}

/// The files of the domU's initramfs that are not written here.
struct Files<'a> {
    /// Kernel modules (file name, bytes), in load order.
    modules: &'a [(String, Vec<u8>)],
    /// Those /init loads for a disk root, in load order.
    ext4_modules: &'a [(String, Vec<u8>)],
    busybox: &'a [u8],
    init: &'a [u8],
    inittab: &'a [u8],
    rcs: &'a [u8],
    profile: &'a [u8],
    tsc: &'a [u8],
    /// udhcpc's hook (dom0-bootstrap/net/udhcpc.script, shared with dom0).
    udhcpc: &'a [u8],
}

/// Where the domU's tree is written: the initramfs (a cpio archive) or a
/// directory that becomes its root disk.
trait Tree {
    fn dir(&mut self, path: &str, mode: u32) -> Result<()>;
    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()>;
    fn symlink(&mut self, path: &str, target: &str) -> Result<()>;
    /// Only the archive has device nodes (making one in a directory needs
    /// root); on a disk root /dev is the devtmpfs /init moves there.
    fn console(&mut self) -> Result<()>;
}

impl Tree for Archive {
    fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        Archive::dir(self, path, mode)
    }
    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        Archive::file(self, path, mode, data)
    }
    fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        Archive::symlink(self, path, target)
    }
    fn console(&mut self) -> Result<()> {
        // The kernel opens /dev/console for init's stdio before /init mounts devtmpfs.
        self.char_device("dev/console", 0o600, 5, 1)
    }
}

/// A directory on the build host.
struct DirTree(PathBuf);

impl Tree for DirTree {
    fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let p = self.0.join(path);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", p.display()))
    }
    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let p = self.0.join(path);
        std::fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", p.display()))
    }
    fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        let p = self.0.join(path);
        std::os::unix::fs::symlink(target, &p).with_context(|| format!("linking {}", p.display()))
    }
    fn console(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The domU's tree: /init (a script) starts busybox init, which reads /etc/inittab.
fn tree(a: &mut dyn Tree, f: &Files) -> Result<()> {
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "usr/lib/oxen",
        "dev",
        "proc",
        "sys",
        "etc",
        "etc/init.d",
        "run",
    ] {
        a.dir(d, 0o755)?;
    }
    a.dir("root", 0o700)?;
    a.dir("tmp", 0o1777)?;
    a.console()?;
    a.file("bin/busybox", 0o755, f.busybox)?;
    a.file("init", 0o755, f.init)?;
    // For the scripts' `#!/bin/sh`; rcS makes the other applet links.
    a.symlink("bin/sh", "busybox")?;
    a.file("etc/inittab", 0o644, f.inittab)?;
    a.file("etc/init.d/rcS", 0o755, f.rcs)?;
    a.file("etc/profile", 0o644, f.profile)?;
    a.file("etc/udhcpc.script", 0o755, f.udhcpc)?;
    // So `id`, `ls -l` and `ps` name root.
    a.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")?;
    a.file("etc/group", 0o644, b"root:x:0:\n")?;
    a.file("usr/lib/oxen/tsc", 0o755, f.tsc)?;
    a.dir("lib", 0o755)?;
    a.dir("lib/modules", 0o755)?;
    for (list, modules) in [("load", f.modules), ("load.ext4", f.ext4_modules)] {
        let mut load = String::new();
        for (name, bytes) in modules {
            a.file(&format!("lib/modules/{name}"), 0o644, bytes)?;
            load.push_str(name);
            load.push('\n');
        }
        a.file(&format!("lib/modules/{list}"), 0o644, load.as_bytes())?;
    }
    Ok(())
}

/// The domU's tree as an ext4 image of `ROOTFS_MIB` (Debian's `mke2fs -d`, from
/// e2fsprogs), gzip-compressed into `out`: remade only when the initramfs
/// (`cpio`, the same tree) changed, as its stamp `out.inputs` records.
fn write_rootfs(f: &Files, cpio: &[u8], staging: &Path, out: &Path) -> Result<()> {
    let stamp = out.with_extension("gz.inputs");
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::hash::DefaultHasher::new();
    cpio.hash(&mut h);
    let want = format!("{:016x} {ROOTFS_MIB} MiB\n", h.finish());
    if out.is_file() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    if staging.exists() {
        std::fs::remove_dir_all(staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    std::fs::create_dir_all(staging)?;
    tree(&mut DirTree(staging.to_path_buf()), f)?;
    // A file that says which root this is: the disk's own.
    std::fs::write(staging.join("etc/oxen-root"), "disk\n")?;
    let img = staging.with_extension("ext4");
    let _ = std::fs::remove_file(&img);
    // Debian keeps it in /usr/sbin, which a user's PATH may not have.
    let mke2fs = ["/usr/sbin/mke2fs", "/sbin/mke2fs"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("mke2fs");
    let mut cmd = Command::new(mke2fs);
    // -d: the files; root_owner: owned by root in the guest whoever builds it;
    // a fixed UUID and hash seed so the same tree gives the same file system.
    cmd.args(["-q", "-F", "-t", "ext4", "-L", "oxen-root", "-U", "6f78656e-726f-6f74-6469-736b00000001"])
        .args(["-E", "root_owner=0:0,hash_seed=6f78656e-726f-6f74-6469-736b00000002"])
        .arg("-d")
        .arg(staging)
        .arg(&img)
        .arg(format!("{ROOTFS_MIB}M"))
        .env("E2FSPROGS_FAKE_TIME", "1");
    run_output(&mut cmd, "making the Linux domU's root disk (mke2fs -d)")?;
    let bytes = std::fs::read(&img).with_context(|| format!("reading {}", img.display()))?;
    std::fs::write(out, gzip(&bytes)?).with_context(|| format!("writing {}", out.display()))?;
    std::fs::remove_file(&img)?;
    std::fs::remove_dir_all(staging)?;
    std::fs::write(&stamp, want)?;
    Ok(())
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes)?;
    Ok(gz.finish()?)
}

/// Compiles `tsc.c` freestanding (no libc: only gcc is needed), when it changed.
fn build_tsc(source: &Path, out: &Path) -> Result<()> {
    let newer = |a: &Path, b: &Path| -> bool {
        let t = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
        matches!((t(a), t(b)), (Some(x), Some(y)) if x > y)
    };
    if out.is_file() && !newer(source, out) {
        return Ok(());
    }
    let mut cmd = Command::new("gcc");
    cmd.args(["-Os", "-s", "-static", "-nostdlib", "-ffreestanding"])
        .args(["-fno-stack-protector", "-fno-pie", "-no-pie"])
        .args([
            "-fno-asynchronous-unwind-tables",
            "-Wall",
            "-Wextra",
            "-Werror",
        ])
        .arg("-o")
        .arg(out)
        .arg(source);
    run_output(&mut cmd, "building the Linux domU's tsc.c")
        .map_err(|e| e.context("(it needs gcc: `cargo xtask setup`)"))?;
    Ok(())
}

/// linux.cfg's kernel command line (`extra` or `cmdline`) and memory (MiB), so the
/// bare boot gets what the domU gets.
pub fn config() -> Result<(String, u32)> {
    let path = repo_root().join(CONFIG);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let cmdline = value_of(&text, &["extra", "cmdline"])
        .and_then(|v| {
            let q = v.chars().next().filter(|c| *c == '"' || *c == '\'')?;
            Some(v[1..].split(q).next()?.to_owned())
        })
        .with_context(|| format!("{} has no `extra = \"...\"` line", path.display()))?;
    let memory = value_of(&text, &["memory"])
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{} has no `memory = MiB` line", path.display()))?;
    Ok((cmdline, memory))
}

/// The value of the first `KEY = VALUE` line whose key is one of `keys`, trimmed.
fn value_of<'a>(text: &'a str, keys: &[&str]) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (key, value) = l.split_once('=')?;
        keys.contains(&key.trim()).then(|| value.trim())
    })
}

/// One bare boot of the domU's kernel and initramfs under QEMU.
pub struct BareBoot {
    /// From QEMU's start to the banner.
    pub banner_after: Duration,
    /// The banner as printed.
    pub banner: String,
    /// The TSC and the monotonic clock (ns) rcS read at the banner (`oxen.tsc` runs only).
    pub tsc: Option<(u64, u64)>,
    /// The command (paths relative to the repo, the socket's name replaced).
    pub command: String,
}

/// The machine of a domU of linux.cfg: `-cpu max`, 2 CPUs (under icount one,
/// `ICOUNT_SMP`), its memory.
fn bare_machine(icount: bool, memory_mib: u32) -> Machine {
    Machine {
        emulator: Emulator::Qemu,
        cpu: Some("max".into()),
        smp: if icount { ICOUNT_SMP } else { 2 },
        memory_mib,
        accel: Accel::Tcg,
        icount,
        bochs_ips: BOCHS_IPS,
        disk: None,
        shared_disk: None,
        serve: None,
        link: None,
    }
}

/// A boot to the shell takes about 10 s of TCG and 30 s of icount here.
const BARE_TIMEOUT: Duration = Duration::from_secs(150);
/// Failed TCG boots `bench_bare` makes again before it gives up.
const MAX_FAILED: usize = 2;
/// QEMU 7.2's TCG under `-icount` never brings Linux's second CPU up: the boot stops
/// at `x86: Booting SMP configuration:` (seen with sleep on and off, 150 s each), so the
/// instruction count is of a 1-CPU boot.
const ICOUNT_SMP: u32 = 1;

/// Boots `kernel` with `initrd` directly in QEMU TCG (no hypervisor) with linux.cfg's
/// command line, times the banner, and proves the shell: it types a sum at the prompt
/// and waits for the answer, which only a shell computing it prints. With `icount`,
/// QEMU runs `-icount shift=0` and rcS reads the TSC at the banner (`oxen.tsc`).
pub fn boot_bare(kernel: &Path, initrd: &Path, icount: bool, dir: &Path) -> Result<BareBoot> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let (mut append, memory) = config()?;
    if icount {
        append.push_str(" oxen.tsc");
    }
    let banner = Regex::new(BANNER)?;
    let watch = Watch {
        inputs: vec![Input {
            after: Regex::new(PROMPT)?,
            send: "echo answer-$((6 * 7))\n".into(),
        }],
        done: Some(Regex::new(r"^answer-42$")?),
        marks: vec![banner.clone()],
        ..Watch::default()
    };
    let m = bare_machine(icount, memory);
    let boot = boot_and_watch_with(
        &m,
        dir,
        Media::Linux {
            kernel,
            initrd,
            append: &append,
        },
        BARE_TIMEOUT,
        &watch,
    )?;
    let command = crate::bench::relative(&boot.command);
    let fail = |what: &str| -> anyhow::Error {
        let how = match boot.ending {
            Ending::Halted | Ending::Done => "the run ended".to_string(),
            Ending::TimedOut => format!("timed out after {}s", BARE_TIMEOUT.as_secs()),
            Ending::Exited(s) => format!("QEMU exited ({s})"),
            Ending::Aborted(ref l) => format!("stopped on: {l}"),
        };
        anyhow::anyhow!(
            "the Linux domU booted bare {what} ({how}). Command:\n    {command}\nlast lines of {}:\n{}",
            show(&dir.join("serial.log")),
            tail(&boot.serial, 20)
        )
    };
    let Some(banner_after) = boot.marks[0] else {
        return Err(fail(&format!("never printed its banner `{BANNER}`")));
    };
    if !matches!(boot.ending, Ending::Done) {
        return Err(fail("printed its banner but its shell did not answer `echo answer-$((6 * 7))` with answer-42"));
    }
    if boot.serial.contains(NO_JOB_CONTROL) {
        return Err(fail(&format!(
            "has a shell without a controlling terminal (`{NO_JOB_CONTROL}`)"
        )));
    }
    let lines: Vec<&str> = boot
        .serial
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .collect();
    let banner_line = lines
        .iter()
        .find(|l| banner.is_match(l))
        .map(|l| l.to_string())
        .unwrap_or_default();
    let tsc_re = Regex::new(TSC_LINE)?;
    let tsc = lines
        .iter()
        .find_map(|l| tsc_re.captures(l))
        .and_then(|c| Some((c[1].parse().ok()?, c[2].parse().ok()?)));
    if icount && tsc.is_none() {
        return Err(fail(&format!(
            "printed no `{TSC_LINE}` line although its command line has oxen.tsc"
        )));
    }
    Ok(BareBoot {
        banner_after,
        banner: banner_line,
        tsc,
        command,
    })
}

/// Bare boots per initramfs form under plain TCG (wall time is noisy).
const WALL_ROUNDS: usize = 3;

/// `cargo xtask bench --only linux-bare`: the domU's kernel and initramfs booted bare,
/// both initramfs forms, under `-icount shift=0` (instructions to the banner) and plain
/// TCG (wall time). Returns (summary row, BENCHMARKS.md section).
pub fn bench_bare(footer: &str) -> Result<(String, String)> {
    use crate::bench::thousands;
    let dom0 = crate::dom0::prepare().context("preparing dom0 and the Linux domU")?;
    let l = &dom0.linux;
    let base = target_dir().join("bench/linux-bare");
    let forms = [("initrd.cpio", &l.cpio), ("initrd.cpio.gz", &l.cpio_gz)];
    let memory = config()?.1;
    let mut rows = String::new();
    let mut commands = Vec::new();
    let mut banner = String::new();
    let mut summary = String::new();
    // Boots that failed and were made again (their kept logs).
    let mut failed: Vec<String> = Vec::new();
    for (name, initrd) in forms {
        let size = std::fs::metadata(initrd)?.len();
        step(format!(
            "Linux domU bare, {name}: QEMU TCG -icount shift=0 -cpu max -smp {ICOUNT_SMP} -m {memory} (up to {}s)",
            BARE_TIMEOUT.as_secs()
        ));
        let ic = boot_bare(
            &l.kernel,
            initrd,
            true,
            &base.join(format!("{name}-icount")),
        )?;
        let (tsc, mono) = ic.tsc.expect("checked by boot_bare");
        println!(
            "     {name}: {} instructions from reset, {} from the kernel's clock start",
            thousands(tsc),
            thousands(mono)
        );
        commands.push(ic.command.clone());
        let mut walls = Vec::new();
        for round in 1..=WALL_ROUNDS {
            step(format!("Linux domU bare, {name}: QEMU TCG -cpu max -smp 2 -m {memory}, round {round}/{WALL_ROUNDS}"));
            let dir = base.join(format!("{name}-tcg"));
            let b = loop {
                match boot_bare(&l.kernel, initrd, false, &dir) {
                    Ok(b) => break b,
                    // QEMU's multi-threaded TCG now and then leaves a CPU stuck for good
                    // (seen: a soft lockup in the crypto self-tests, RIP on a jump label
                    // the kernel had just patched); the boot is kept and made again.
                    Err(e) if failed.len() < MAX_FAILED => {
                        let kept = base.join(format!("{name}-tcg-failed-{}", failed.len() + 1));
                        let _ = std::fs::remove_dir_all(&kept);
                        std::fs::rename(&dir, &kept)?;
                        let why = format!("{e:#}")
                            .lines()
                            .next()
                            .unwrap_or_default()
                            .to_owned();
                        println!(
                            "     {name}: this boot failed, booting again (log kept in {}): {why}",
                            show(&kept)
                        );
                        failed.push(show(&kept));
                    }
                    Err(e) => return Err(e),
                }
            };
            println!(
                "     {name}: {:.1}s to the banner",
                b.banner_after.as_secs_f64()
            );
            walls.push(b.banner_after.as_secs_f64());
            banner = b.banner.clone();
            if round == 1 {
                commands.push(b.command.clone());
            }
        }
        let all: Vec<String> = walls.iter().map(|w| format!("{w:.1}")).collect();
        walls.sort_by(f64::total_cmp);
        let median = walls[walls.len() / 2];
        rows.push_str(&format!(
            "| `{name}` ({} KiB) | {} | {} | {median:.1} s ({} s) |\n",
            size / 1024,
            thousands(tsc),
            thousands(mono),
            all.join(", ")
        ));
        if name == "initrd.cpio" {
            summary = format!(
                "| Linux domU boot to its banner, bare (QEMU) | {} instructions from the kernel's clock start, {} from reset \
                 (icount, 1 CPU); {median:.1} s wall (TCG, 2 CPUs) |\n",
                thousands(mono),
                thousands(tsc)
            );
        }
    }
    let retried = if failed.is_empty() {
        String::new()
    } else {
        format!(
            "\n\n{} plain TCG boot(s) of this run failed and were made again (not counted; logs kept: {}).",
            failed.len(),
            failed.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
        )
    };
    let body = format!(
        "## Linux domU boot, bare\n\n\
         The baseline for a Linux domU: the kernel and initramfs dom0 carries for `oxl create -c /etc/oxen/linux.cfg` \
         (Debian's kernel, the same as dom0's, and a busybox initramfs: `xtask/src/linux_domu.rs`), booted directly by \
         QEMU without the hypervisor, with linux.cfg's kernel command line and memory ({memory} MiB). Each boot runs to \
         rcS's banner, then types `echo answer-$((6 * 7))` at the shell's prompt and waits for `answer-42`.\n\n\
         Instructions: under `-icount shift=0` rcS reads the TSC and the monotonic clock at the banner (`oxen.tsc` on \
         the command line, `/usr/lib/oxen/tsc`); both count instructions there (1 ns = 1 instruction), plus virtual \
         time while the CPU idles. The TSC counts from reset, so it includes the firmware (SeaBIOS, and iPXE's wait \
         for Ctrl-B) and the kernel's decompression; the monotonic clock starts early in `start_kernel`, so it is \
         the kernel's own boot and init's, the figure to compare with a domU's boot under Oxen. These boots have \
         one CPU: QEMU 7.2's TCG under `-icount` never brings Linux's second CPU up (it stops at `x86: Booting SMP \
         configuration:`). Wall time: from QEMU's start to the banner, {WALL_ROUNDS} plain TCG boots with 2 CPUs as \
         linux.cfg has (noisy: 2 host cores shared with other jobs; polled every 0.1 s), the median and each. dom0 \
         carries `initrd.cpio`.{retried}\n\n\
         | initramfs | instructions to the banner from reset (TSC) | from the kernel's clock start (monotonic) | \
         wall time to the banner, TCG: median (each) |\n|---|---|---|---|\n{rows}\n\
         Banner: `{banner}`.  \nCommand: `cargo xtask bench --only linux-bare`, which ran, for each initramfs,\n\n\
         ```\n{}\n```\n\n{footer}",
        commands.join("\n"),
    );
    Ok((summary, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bare_boot_reads_the_config() {
        let (c, memory) = config().unwrap();
        assert!(c.starts_with("console=ttyS0"), "{c}");
        assert!(
            !c.split_whitespace().any(|w| w == "quiet"),
            "the boot is shown: {c}"
        );
        assert!(c.len() < oxen_abi::CMDLINE_LEN, "{c}");
        assert!(memory >= 64, "{memory}");
        let text = "# extra = \"x\"\nname = \"a\"\ncmdline = 'a \"b\"'\nmemory=  96\n";
        assert_eq!(value_of(text, &["extra", "cmdline"]), Some("'a \"b\"'"));
        assert_eq!(value_of(text, &["memory"]), Some("96"));
        assert_eq!(value_of(text, &["vcpus"]), None);
    }

    #[test]
    fn the_config_names_what_dom0_carries() {
        let text = std::fs::read_to_string(repo_root().join(CONFIG)).unwrap();
        for (key, path) in [("kernel", KERNEL_PATH), ("ramdisk", INITRD_PATH)] {
            let line = format!("{key} = \"/{path}\"");
            assert!(
                text.lines().any(|l| l.trim() == line),
                "linux.cfg has no `{line}`"
            );
        }
        assert!(text.lines().any(|l| l.trim() == "name = \"linux\""));
    }

    #[test]
    fn the_archive_boots_busybox_init() {
        let modules = [("pvpanic.ko".to_string(), b"ko".to_vec())];
        let ext4 = [("ext4.ko".to_string(), b"ko".to_vec())];
        let f = Files {
            modules: &modules,
            ext4_modules: &ext4,
            busybox: b"bb",
            init: b"#!/bin/sh\nexec /bin/busybox init\n",
            inittab: b"::sysinit:/etc/init.d/rcS\n",
            rcs: b"#!/bin/sh\n",
            profile: b"",
            tsc: b"t",
            udhcpc: b"#!/bin/sh\n",
        };
        let mut a = Archive::new();
        tree(&mut a, &f).unwrap();
        let a = a.finish();
        let text = String::from_utf8_lossy(&a);
        // The kernel runs /init, which ends in busybox's init applet.
        for needle in [
            "init\0",
            "lib/modules/ext4.ko",
            "lib/modules/load.ext4",
            "bin/busybox",
            "etc/inittab",
            "etc/init.d/rcS",
            "dev/console",
            "lib/modules/pvpanic.ko",
            "lib/modules/load",
            "TRAILER!!!",
        ] {
            assert!(text.contains(needle), "{needle} missing");
        }
    }

    #[test]
    fn the_inittab_covers_console_shutdown_and_ctrlaltdel() {
        let text = std::fs::read_to_string(repo_root().join(SOURCES).join("inittab")).unwrap();
        let actions: Vec<(&str, &str)> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let mut f = l.splitn(4, ':');
                let (_id, _runlevels, action, cmd) =
                    (f.next(), f.next(), f.next().unwrap(), f.next().unwrap());
                (action, cmd)
            })
            .collect();
        let has =
            |action: &str, cmd: &str| actions.iter().any(|(a, c)| *a == action && c.contains(cmd));
        assert!(has("sysinit", "/etc/init.d/rcS"));
        assert!(
            has("respawn", "cttyhack"),
            "a shell with a controlling terminal"
        );
        assert!(has("ctrlaltdel", "poweroff"));
        assert!(has("shutdown", "sync") && has("shutdown", "umount"));
        for (a, _) in &actions {
            assert!(
                ["sysinit", "respawn", "ctrlaltdel", "shutdown"].contains(a),
                "unexpected action {a}"
            );
        }
    }
}
