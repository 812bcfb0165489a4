//! dom0's kernel and initramfs, made from Debian packages without installing them.
//!
//! The kernel is the one `linux-image-amd64` currently depends on; busybox comes from
//! `busybox-static`. Both `.deb`s are fetched with `apt-get download` into
//! `target/dom0/cache/` (kept: a second run downloads nothing), unpacked with
//! `dpkg-deb -x` under `target/dom0/`, and the initramfs is written here as a newc
//! cpio archive (`cpio.rs`), gzip-compressed:
//!
//! ```text
//! target/dom0/vmlinuz     the kernel (boot/vmlinuz-* of the package)
//! target/dom0/initrd.gz   /init (dom0-bootstrap/init), /bin/busybox, /dev/console,
//!                         /lib/modules/<release>/: the modules of MODULES that the
//!                         kernel has as `=m`, their dependencies, modules.dep,
//!                         modules.alias (for modprobe: devices and the kernel's
//!                         requests) and modules.dom0 (the modules /init loads on
//!                         every machine, in order); Oxen's
//!                         own files (dom0_tools.rs) and the Linux domU's kernel
//!                         and initramfs (linux_domu.rs)
//! ```
//! Nothing is installed on the host and nothing outside `target/` is written (except
//! apt's own package lists, refreshed with `apt-get update` when they are empty).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use object::{Object as _, ObjectSection as _};

use crate::cpio::Archive;
use crate::image::{target_dir, Module};
use crate::setup::apt_get_as_root;
use crate::util::{repo_root, run_captured, show, step};

/// The Debian package whose dependency names the current kernel package.
const KERNEL_META: &str = "linux-image-amd64";
const BUSYBOX: &str = "busybox-static";

/// dom0's kernel command line (after the module name the hypervisor skips).
pub const KERNEL_ARGS: &str = "console=ttyS0 earlyprintk=serial,ttyS0,115200";

/// When dom0's /init has a module of `MODULES` loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// At boot on every machine: what Oxen's own tools need whatever the
    /// hardware (listed in modules.dom0, loaded in that order).
    Boot,
    /// When the machine has a device it drives, as udev's coldplug does: /init
    /// hands every device's modalias to modprobe, which matches them against
    /// the aliases in modules.alias. Under Bochs (no NIC, no disk controller
    /// dom0 uses) none of them loads: they took ≈ 45 s of each dom0 boot there.
    Device,
    /// When the kernel asks for it: `mount -t ext4` makes it run
    /// `/sbin/modprobe fs-ext4`, found in modules.alias.
    Demand,
}

/// Kernel modules dom0 carries, each with the config symbol that says whether
/// Debian builds it as a module (`=m`: copied with its dependencies) or into the
/// kernel (`=y`: nothing to do), when /init loads it, and why dom0 wants it.
/// The one list to extend when dom0 needs another driver. (No ata_piix: only
/// the emulators' i440FX boards have its IDE controller, and there it holds
/// nothing but the boot CD, which dom0 does not read.)
pub const MODULES: &[(&str, &str, Load, &str)] = &[
    ("e1000", "CONFIG_E1000", Load::Device, "QEMU's default NIC (i440FX machine)"),
    ("e1000e", "CONFIG_E1000E", Load::Device, "QEMU's default NIC on the q35 machine"),
    ("virtio_pci", "CONFIG_VIRTIO_PCI", Load::Device, "the PCI transport virtio devices sit on"),
    ("virtio_net", "CONFIG_VIRTIO_NET", Load::Device, "virtio NIC"),
    ("bridge", "CONFIG_BRIDGE", Load::Boot, "xenbr0: dom0's NIC and the domUs' vifs on one bridge"),
    ("tun", "CONFIG_TUN", Load::Boot, "tap devices, one per domU vif"),
    (
        "loop",
        "CONFIG_BLK_DEV_LOOP",
        Load::Boot,
        "disk images mounted in dom0 (linux-disk.sh reads what a domU wrote)",
    ),
    ("virtio_blk", "CONFIG_VIRTIO_BLK", Load::Device, "virtio disk"),
    ("ahci", "CONFIG_SATA_AHCI", Load::Device, "SATA disks"),
    ("sd_mod", "CONFIG_BLK_DEV_SD", Load::Device, "SCSI/SATA disks as /dev/sd*"),
    ("ext4", "CONFIG_EXT4_FS", Load::Demand, "the file system of guest disk images"),
    (
        "crc32c_generic",
        "CONFIG_CRYPTO_CRC32C",
        Load::Demand,
        "ext4's metadata checksums (ext4 asks for crypto-crc32c)",
    ),
];

/// What the ISO needs to boot dom0.
pub struct Dom0 {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The same initramfs not compressed (`initrd.cpio`), which Bochs tests
    /// boot: GRUB unpacks a gzip module itself (`module2` without
    /// `--nounzip`), and under Bochs that took 45 s of each dom0 test (the
    /// hypervisor's first line 71 s after power-on with `initrd.gz`, 25 s
    /// with `initrd.cpio`; dom0's /init at 100 s and 56 s).
    pub initrd_cpio: PathBuf,
    /// The Linux domU dom0 carries (its kernel is `kernel`).
    pub linux: crate::linux_domu::LinuxDomu,
}

impl Dom0 {
    /// The two multiboot2 modules, in the order the hypervisor expects them:
    /// `module2 /boot/vmlinuz vmlinuz ARGS` then `module2 /boot/initrd.gz
    /// initrd`; for `Dom0Kernel::Vmlinux` both unpacked (`/boot/vmlinux`,
    /// `/boot/initrd.cpio`), which is what the Bochs tests boot.
    pub fn modules(&self, kernel: crate::systest::Dom0Kernel) -> Vec<Module> {
        let (file, name, initrd) = match kernel {
            crate::systest::Dom0Kernel::BzImage => (&self.kernel, "vmlinuz", &self.initrd),
            crate::systest::Dom0Kernel::Vmlinux => (&self.linux.vmlinux, "vmlinux", &self.initrd_cpio),
        };
        vec![
            Module {
                file: file.clone(),
                args: format!("{name} {KERNEL_ARGS}"),
            },
            Module {
                file: initrd.clone(),
                args: "initrd".into(),
            },
        ]
    }
}

/// Fetches (or reuses) the packages and writes `target/dom0/{vmlinuz,initrd.gz}`.
pub fn prepare() -> Result<Dom0> {
    let start = Instant::now();
    let dir = target_dir().join("dom0");
    let cache = dir.join("cache");
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let mut cold = false;

    let (kernel_pkg, busybox_pkg) = candidates(&cache)?;
    let (kdeb, fetched) = fetch("dom0 kernel", &kernel_pkg, &cache)?;
    cold |= fetched;
    let (kroot, extracted) = extract(&[&kdeb], &dir.join(&kernel_pkg.name))?;
    cold |= extracted;
    let (bdeb, fetched) = fetch("dom0 busybox", &busybox_pkg, &cache)?;
    cold |= fetched;
    let (broot, extracted) = extract(&[&bdeb], &dir.join(BUSYBOX))?;
    cold |= extracted;

    let (vmlinuz, release) = find_kernel(&kroot)?;
    let kernel = dir.join("vmlinuz");
    std::fs::copy(&vmlinuz, &kernel)
        .with_context(|| format!("copying {} to {}", vmlinuz.display(), kernel.display()))?;

    let config_path = kroot.join("boot").join(format!("config-{release}"));
    let config = parse_config(
        &std::fs::read_to_string(&config_path)
            .with_context(|| format!("reading the kernel config {}", config_path.display()))?,
    );
    let moddir = kroot.join("lib/modules").join(&release);
    let (wanted, builtin) = modules_to_load(&config);
    if !builtin.is_empty() {
        step(format!(
            "dom0 modules built into the kernel (nothing to copy): {}",
            builtin.join(" ")
        ));
    }
    let names: Vec<&str> = wanted.iter().map(|&(n, _)| n).collect();
    let mods = resolve_modules(&moddir, &names)?;
    let boot: Vec<&str> = wanted.iter().filter(|&&(_, w)| w == Load::Boot).map(|&(n, _)| n).collect();
    let boot = boot_order(&mods, &boot)?;
    let mut extras = crate::dom0_tools::collect(&release)?;
    let busybox = broot.join("bin/busybox");
    let linux = crate::linux_domu::build(&kernel, &busybox, &moddir)?;
    extras.extend(linux.dom0_files()?);

    let initrd = dir.join("initrd.gz");
    let init_path = repo_root().join("dom0-bootstrap/init");
    let init = std::fs::read(&init_path)
        .with_context(|| format!("reading dom0's init script {}", init_path.display()))?;
    // Rebuilt only when something that goes into it changed (compressing it
    // takes seconds in xtask's unoptimized build).
    let stamp = dir.join("initrd.gz.inputs");
    let inputs = initrd_inputs(&kdeb, &bdeb, &init, &mods, &extras);
    let initrd_cpio = dir.join("initrd.cpio");
    let fresh = initrd.is_file() && initrd_cpio.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == inputs);
    if !fresh {
        let _ = std::fs::remove_file(&stamp);
        let m = InitrdModules { all: &mods, boot: &boot };
        write_initrd(&initrd, &initrd_cpio, &release, &init, &busybox, &moddir, m, &extras)?;
        std::fs::write(&stamp, &inputs)?;
    }
    let size = std::fs::metadata(&initrd)?.len();
    step(format!(
        "dom0 initramfs: {} ({}, {} KiB: busybox, /init, {} modules: {}; Oxen's: {})",
        show(&initrd),
        if fresh { "unchanged" } else { "written" },
        size / 1024,
        mods.len(),
        mods.iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        extras
            .iter()
            .map(|e| e.dest.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    step(format!(
        "dom0 ready in {:.1}s ({} cache): {} ({release}), {}",
        start.elapsed().as_secs_f64(),
        if cold { "cold" } else { "warm" },
        show(&kernel),
        show(&initrd)
    ));
    Ok(Dom0 {
        kernel,
        initrd,
        initrd_cpio,
        linux,
    })
}

/// A package version to fetch, as apt names it; `cached_only` is set when apt could not
/// say and a .deb already in the cache stands in.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    name: String,
    version: String,
    arch: String,
    cached_only: Option<PathBuf>,
}

impl Candidate {
    /// The file name `apt-get download` gives it.
    fn deb_name(&self) -> String {
        deb_file_name(&self.name, &self.version, &self.arch)
    }
}

/// The file name `apt-get download` gives a package: `PKG_VERSION_ARCH.deb`
/// with the epoch's `:` written `%3a`.
fn deb_file_name(pkg: &str, version: &str, arch: &str) -> String {
    format!("{pkg}_{}_{arch}.deb", version.replace(':', "%3a"))
}

/// What `apt-cache show --no-all-versions` says about some packages. When apt knows none
/// of them (its lists are empty on a fresh machine) `apt-get update` runs first.
pub(crate) struct AptAnswer {
    stanzas: Vec<Stanza>,
    /// Why `apt-get update` failed, when it was needed and did.
    update_error: Option<String>,
}

impl AptAnswer {
    /// Asks about `specs`: package names, or `NAME=VERSION` for one exact version.
    /// apt-cache takes most of a second per call here, so ask about several at once.
    pub(crate) fn query(specs: &[&str]) -> Self {
        let query = || {
            let out = Command::new("apt-cache")
                .args(["show", "--no-all-versions"])
                .args(specs)
                .output();
            out.map(|o| parse_stanzas(&String::from_utf8_lossy(&o.stdout)))
                .unwrap_or_default()
        };
        let mut stanzas = query();
        let mut update_error = None;
        if stanzas.is_empty() {
            step(format!(
                "apt knows none of {}: running `apt-get update` first",
                specs.join(", ")
            ));
            if let Err(e) = apt_get_as_root(&["-q", "update"])
                .and_then(|mut c| run_captured(&mut c, "apt-get update").map(drop))
            {
                update_error = Some(format!("{e:#}"));
            }
            stanzas = query();
        }
        Self {
            stanzas,
            update_error,
        }
    }

    /// The stanza of package `pkg`.
    pub(crate) fn get(&self, pkg: &str) -> Option<&Stanza> {
        self.stanzas
            .iter()
            .find(|s| s.get("Package").map(String::as_str) == Some(pkg))
    }

    /// The version of `pkg` apt would download.
    pub(crate) fn candidate(&self, pkg: &str) -> Option<Candidate> {
        self.get(pkg).and_then(stanza_candidate)
    }

    /// The error for a package that apt cannot place and the cache has no copy of.
    pub(crate) fn cannot_tell(&self, pkg: &str, cache: &Path) -> anyhow::Error {
        let why = self.update_error.as_deref().map_or(String::new(), |e| {
            format!(" (`apt-get update` failed: {e})")
        });
        anyhow::anyhow!(
            "apt cannot tell which {pkg} to download{why} and {} holds no copy.\n\
             Check that this machine reaches its Debian mirror (`apt-get update` as root), then run \
             this again; or put the package's .deb into that directory yourself.\n\
             (`cargo xtask run --no-dom0` boots the hypervisor without dom0.)",
            cache.display()
        )
    }
}

/// The kernel package `linux-image-amd64` depends on now (e.g. linux-image-6.1.0-56-amd64
/// 6.1.192-2) and busybox-static's candidate, from one `apt-cache show`. Without apt's
/// answer, .debs already in the cache are used.
fn candidates(cache: &Path) -> Result<(Candidate, Candidate)> {
    let apt = AptAnswer::query(&[KERNEL_META, BUSYBOX]);
    let kernel = match apt
        .get(KERNEL_META)
        .and_then(|s| dependency(s, |d| d.starts_with("linux-image-")))
    {
        Some((name, Some(version))) => Some(Candidate {
            name,
            version,
            arch: apt
                .get(KERNEL_META)
                .and_then(|s| s.get("Architecture").cloned())
                .unwrap_or_else(|| "amd64".into()),
            cached_only: None,
        }),
        // No exact version in the dependency: ask about the kernel package itself.
        Some((name, None)) => AptAnswer::query(&[&name]).candidate(&name),
        None => None,
    };
    let kernel = match kernel {
        Some(k) => k,
        None => cached_kernel(cache).ok_or_else(|| apt.cannot_tell(KERNEL_META, cache))?,
    };
    let busybox = match apt.candidate(BUSYBOX) {
        Some(b) => b,
        None => newest_cached(BUSYBOX, cache).ok_or_else(|| apt.cannot_tell(BUSYBOX, cache))?,
    };
    Ok((kernel, busybox))
}

pub(crate) type Stanza = BTreeMap<String, String>;

/// `apt-cache show` output: one map of fields per blank-line-separated stanza.
fn parse_stanzas(text: &str) -> Vec<Stanza> {
    let mut out = Vec::new();
    let mut cur = Stanza::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            last = None;
        } else if line.starts_with([' ', '\t']) {
            if let Some(v) = last.as_ref().and_then(|k| cur.get_mut(k)) {
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            cur.insert(k.to_owned(), v.trim().to_owned());
            last = Some(k.to_owned());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn stanza_candidate(s: &Stanza) -> Option<Candidate> {
    Some(Candidate {
        name: s.get("Package")?.clone(),
        version: s.get("Version")?.clone(),
        arch: s.get("Architecture")?.clone(),
        cached_only: None,
    })
}

/// The first package of `Depends:` whose name `wanted` accepts, with its version when
/// the dependency pins one: `linux-image-6.1.0-56-amd64 (= 6.1.192-2)` gives
/// (`linux-image-6.1.0-56-amd64`, Some(`6.1.192-2`)); a `>=` bound gives None.
pub(crate) fn dependency(
    stanza: &Stanza,
    wanted: impl Fn(&str) -> bool,
) -> Option<(String, Option<String>)> {
    stanza
        .get("Depends")?
        .split([',', '|'])
        .map(str::trim)
        .find_map(|d| {
            let (name, rest) = d.split_once(' ').unwrap_or((d, ""));
            let version = rest
                .trim()
                .strip_prefix("(=")
                .and_then(|v| v.strip_suffix(')'))
                .map(|v| v.trim().to_owned());
            wanted(name).then(|| (name.to_owned(), version))
        })
}

/// The newest versioned kernel .deb in the cache (by file name).
fn cached_kernel(cache: &Path) -> Option<Candidate> {
    let mut names: Vec<String> = std::fs::read_dir(cache)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| {
            let pkg = n.strip_suffix(".deb")?.split('_').next()?.to_owned();
            (pkg.starts_with("linux-image-") && pkg != KERNEL_META).then_some(pkg)
        })
        .collect();
    names.sort();
    newest_cached(names.last()?, cache)
}

/// The last cached .deb of `pkg` by file name.
pub(crate) fn newest_cached(pkg: &str, cache: &Path) -> Option<Candidate> {
    let prefix = format!("{pkg}_");
    let mut v: Vec<PathBuf> = std::fs::read_dir(cache)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    v.sort();
    let path = v.pop()?;
    let name = path.file_name()?.to_str()?.to_owned();
    let mut parts = name.strip_prefix(&prefix)?.strip_suffix(".deb")?.split('_');
    Some(Candidate {
        name: pkg.to_owned(),
        version: parts.next()?.replace("%3a", ":"),
        arch: parts.next()?.to_owned(),
        cached_only: Some(path),
    })
}

/// The cached .deb of `c` (downloading it first if needed): (path, downloaded now?).
/// Prints `==> LABEL: PKG VERSION`.
pub(crate) fn fetch(label: &str, c: &Candidate, cache: &Path) -> Result<(PathBuf, bool)> {
    let (pkg, version) = (&c.name, &c.version);
    if let Some(path) = &c.cached_only {
        step(format!(
            "{label}: {pkg} {version} (apt cannot say which version is current; using the cached {})",
            show(path)
        ));
        return Ok((path.clone(), false));
    }
    let path = cache.join(c.deb_name());
    if path.is_file() {
        step(format!("{label}: {pkg} {version} (cached)"));
        return Ok((path, false));
    }
    step(format!("{label}: {pkg} {version} (downloading)"));
    let partial = cache.join(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)?;
    let t = Instant::now();
    let spec = format!("{pkg}={version}");
    let mut cmd = Command::new("apt-get");
    cmd.args(["-q", "download", &spec]).current_dir(&partial);
    if let Err(e) = run_captured(&mut cmd, &format!("downloading {spec}")) {
        let _ = std::fs::remove_dir_all(&partial);
        bail!(
            "{e:#}\nCould not download {pkg} {version} (needed for dom0). Check that this machine \
             reaches its Debian mirror (`apt-get update` as root), then run this again; or put \
             the .deb there yourself: {}\n(`cargo xtask run --no-dom0` boots the hypervisor without dom0.)",
            path.display()
        );
    }
    let got = partial.join(c.deb_name());
    if !got.is_file() {
        let found: Vec<String> = std::fs::read_dir(&partial)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let _ = std::fs::remove_dir_all(&partial);
        bail!(
            "`apt-get download {spec}` succeeded but wrote {found:?}, not {}",
            c.deb_name()
        );
    }
    std::fs::rename(&got, &path)?;
    let _ = std::fs::remove_dir_all(&partial);
    let mib = std::fs::metadata(&path)?.len() as f64 / (1 << 20) as f64;
    step(format!(
        "downloaded {} ({mib:.1} MiB in {:.1}s)",
        show(&path),
        t.elapsed().as_secs_f64()
    ));
    Ok((path, true))
}

/// Unpacks `debs` together into `dest` with `dpkg-deb -x`, unless `dest` already holds
/// those very .debs (a stamp file records which). Returns (dest, unpacked now?).
pub(crate) fn extract(debs: &[&Path], dest: &Path) -> Result<(PathBuf, bool)> {
    let stamp = dest.join(".unpacked-from");
    let names = debs
        .iter()
        .map(|d| {
            d.file_name()
                .context("a .deb path has a file name")
                .map(|n| n.to_string_lossy().into_owned())
        })
        .collect::<Result<Vec<_>>>()?;
    let record = names.iter().map(|n| format!("{n}\n")).collect::<String>();
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == record) {
        return Ok((dest.to_path_buf(), false));
    }
    let _ = std::fs::remove_dir_all(dest);
    std::fs::create_dir_all(dest)?;
    let t = Instant::now();
    for (deb, name) in debs.iter().zip(&names) {
        run_captured(
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest),
            &format!("unpacking {name}"),
        )?;
    }
    std::fs::write(&stamp, &record)?;
    step(format!(
        "unpacked {} into {} ({:.1}s)",
        names.join(", "),
        show(dest),
        t.elapsed().as_secs_f64()
    ));
    Ok((dest.to_path_buf(), true))
}

/// `boot/vmlinuz-RELEASE` in the unpacked kernel package: (path, RELEASE).
fn find_kernel(root: &Path) -> Result<(PathBuf, String)> {
    let boot = root.join("boot");
    let mut found: Vec<(PathBuf, String)> = std::fs::read_dir(&boot)
        .with_context(|| format!("the kernel package has no {}", boot.display()))?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let release = name.strip_prefix("vmlinuz-")?.to_owned();
            Some((e.path(), release))
        })
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("no boot/vmlinuz-* in {}", root.display()),
        _ => bail!(
            "several kernels in {}: {:?}",
            boot.display(),
            found.iter().map(|f| &f.1).collect::<Vec<_>>()
        ),
    }
}

/// `CONFIG_FOO=value` lines of a kernel config (`# CONFIG_FOO is not set` is absent).
pub(crate) fn parse_config(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| l.starts_with("CONFIG_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// MODULES split by the config: (`=m`: to copy, with when to load them;
/// `=y`: built in). Others are reported.
fn modules_to_load(config: &BTreeMap<String, String>) -> (Vec<(&'static str, Load)>, Vec<&'static str>) {
    let mut load = Vec::new();
    let mut builtin = Vec::new();
    for &(name, symbol, when, why) in MODULES {
        match config.get(symbol).map(String::as_str) {
            Some("m") => load.push((name, when)),
            Some("y") => builtin.push(name),
            other => step(format!(
                "warning: this kernel has no {name} ({why}): {symbol} is {}",
                other.map_or("not set".to_owned(), |v| format!("={v}"))
            )),
        }
    }
    (load, builtin)
}

/// A kernel module file in the package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelModule {
    pub name: String,
    /// Relative to `lib/modules/RELEASE/`, e.g. `kernel/drivers/ata/ata_piix.ko`.
    pub path: String,
    /// Names of the modules it needs loaded first (`depends=` of its .modinfo).
    pub depends: Vec<String>,
    /// What it answers to (`alias=` of its .modinfo): device IDs with
    /// wildcards (`pci:v00008086d0000100Esv*...`), `fs-ext4`, `crypto-crc32c`.
    pub aliases: Vec<String>,
}

/// Module names use `_` where file names may use `-`.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Every `*.ko` under `moddir/kernel`: normalized name → relative path.
fn index_modules(moddir: &Path) -> Result<BTreeMap<String, String>> {
    let mut index = BTreeMap::new();
    let mut stack = vec![moddir.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
            } else if let Some(stem) = p.file_name().and_then(|n| n.to_str()?.strip_suffix(".ko")) {
                let rel = p
                    .strip_prefix(moddir)
                    .expect("under moddir")
                    .to_string_lossy()
                    .into_owned();
                index.insert(normalize(stem), rel);
            }
        }
    }
    Ok(index)
}

/// The values of `key` in a module's `.modinfo` section (empty when it has none).
pub(crate) fn modinfo(ko: &[u8], key: &str) -> Result<Vec<String>> {
    let file = object::File::parse(ko)?;
    let Some(section) = file.section_by_name(".modinfo") else {
        return Ok(Vec::new());
    };
    Ok(modinfo_values(section.data()?, key))
}

/// `key=value` strings of a `.modinfo` section (NUL-separated): the values of `key`.
fn modinfo_values(modinfo: &[u8], key: &str) -> Vec<String> {
    modinfo
        .split(|&b| b == 0)
        .filter_map(|kv| kv.strip_prefix(key.as_bytes())?.strip_prefix(b"="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// `depends=` of a module: the modules to load before it.
fn module_depends(ko: &[u8]) -> Result<Vec<String>> {
    Ok(split_depends(&modinfo(ko, "depends")?))
}

fn split_depends(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(',').map(normalize))
        .filter(|d| !d.is_empty())
        .collect()
}

/// `wanted` and everything they depend on, each once, dependencies first.
/// (The package has no modules.dep: depmod writes it at install time.)
pub(crate) fn resolve_modules(moddir: &Path, wanted: &[&str]) -> Result<Vec<KernelModule>> {
    let index = index_modules(moddir)?;
    let read = |name: &str| -> Result<KernelModule> {
        let path = index.get(name).with_context(|| {
            format!(
                "the kernel package has no module {name}.ko under {}",
                moddir.display()
            )
        })?;
        let bytes = std::fs::read(moddir.join(path))?;
        let depends =
            module_depends(&bytes).with_context(|| format!("reading the .modinfo of {path}"))?;
        let aliases = modinfo(&bytes, "alias").with_context(|| format!("reading the .modinfo of {path}"))?;
        Ok(KernelModule {
            name: name.to_owned(),
            path: path.clone(),
            depends,
            aliases,
        })
    };
    let mut all = BTreeMap::new();
    let mut todo: Vec<String> = wanted.iter().map(|w| normalize(w)).collect();
    while let Some(name) = todo.pop() {
        if all.contains_key(&name) {
            continue;
        }
        let m = read(&name)?;
        todo.extend(m.depends.iter().cloned());
        all.insert(name, m);
    }
    load_order(wanted, &all)
}

/// Dependencies before dependents, otherwise in `wanted`'s order.
fn load_order(wanted: &[&str], all: &BTreeMap<String, KernelModule>) -> Result<Vec<KernelModule>> {
    fn visit(
        name: &str,
        all: &BTreeMap<String, KernelModule>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
        out: &mut Vec<KernelModule>,
    ) -> Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            bail!("module dependency cycle: {} -> {name}", path.join(" -> "));
        }
        let m = all
            .get(name)
            .with_context(|| format!("unknown module {name}"))?;
        path.push(name.to_owned());
        for d in &m.depends {
            visit(d, all, done, path, out)?;
        }
        path.pop();
        done.insert(name.to_owned());
        out.push(m.clone());
        Ok(())
    }
    let mut out = Vec::new();
    let mut done = BTreeSet::new();
    for w in wanted {
        visit(&normalize(w), all, &mut done, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

/// `boot` and what they depend on, dependencies first: the modules /init
/// loads on every machine (modules.dom0).
fn boot_order(mods: &[KernelModule], boot: &[&str]) -> Result<Vec<KernelModule>> {
    let all: BTreeMap<String, KernelModule> = mods.iter().map(|m| (m.name.clone(), m.clone())).collect();
    load_order(boot, &all)
}

/// The modules in dom0's initramfs: every one, and those loaded at boot in order.
#[derive(Clone, Copy)]
struct InitrdModules<'a> {
    all: &'a [KernelModule],
    boot: &'a [KernelModule],
}

/// modules.dep in depmod's format (`path: dep-paths`, all dependencies, the ones
/// to load first last) for busybox's modprobe.
fn modules_dep(mods: &[KernelModule]) -> String {
    let by_name: BTreeMap<&str, &KernelModule> =
        mods.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut s = String::new();
    for m in mods {
        // Transitive dependencies, dependencies-first, then reversed.
        let mut order: Vec<&str> = Vec::new();
        let mut stack: Vec<(&str, bool)> = m
            .depends
            .iter()
            .rev()
            .map(|d| (d.as_str(), false))
            .collect();
        while let Some((n, expanded)) = stack.pop() {
            if expanded {
                if !order.contains(&n) {
                    order.push(n);
                }
                continue;
            }
            if order.contains(&n) {
                continue;
            }
            stack.push((n, true));
            if let Some(dm) = by_name.get(n) {
                stack.extend(dm.depends.iter().rev().map(|d| (d.as_str(), false)));
            }
        }
        let deps: Vec<&str> = order
            .iter()
            .rev()
            .filter_map(|n| by_name.get(n).map(|d| d.path.as_str()))
            .collect();
        s.push_str(&m.path);
        s.push(':');
        for d in deps {
            s.push(' ');
            s.push_str(d);
        }
        s.push('\n');
    }
    s
}

/// modules.alias in depmod's format (`alias PATTERN MODULE`), which busybox's
/// modprobe matches device modaliases and the kernel's requests against.
fn modules_alias(mods: &[KernelModule]) -> String {
    mods.iter()
        .flat_map(|m| m.aliases.iter().map(move |a| format!("alias {a} {}\n", m.name)))
        .collect()
}

/// What the initramfs is made of, as text: the two .debs, /init's hash, the modules,
/// and the xtask binary's build time (a change to how it is written).
fn initrd_inputs(
    kdeb: &Path,
    bdeb: &Path,
    init: &[u8],
    mods: &[KernelModule],
    extras: &[ExtraFile],
) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::hash::DefaultHasher::new();
    init.hash(&mut h);
    let xtask = std::env::current_exe()
        .and_then(|p| p.metadata())
        .and_then(|m| m.modified())
        .map(|t| format!("{t:?}"))
        .unwrap_or_default();
    let mut s = format!(
        "kernel {}\nbusybox {}\ninit {:016x}\nxtask {xtask}\n",
        kdeb.display(),
        bdeb.display(),
        h.finish()
    );
    for m in mods {
        s.push_str(&format!("module {}\n", m.path));
    }
    for e in extras {
        let mut h = std::hash::DefaultHasher::new();
        e.bytes.hash(&mut h);
        s.push_str(&format!(
            "extra {} {:o} {:016x}\n",
            e.dest,
            e.mode,
            h.finish()
        ));
    }
    s
}

/// A file of Oxen's own for dom0's initramfs (`crate::dom0_tools`).
pub struct ExtraFile {
    /// Path inside the initramfs, without a leading `/`.
    pub dest: String,
    pub mode: u32,
    pub bytes: Vec<u8>,
}

/// Writes the initramfs, gzip-compressed to `out` and as it is to `cpio_out`.
#[allow(clippy::too_many_arguments)]
fn write_initrd(
    out: &Path,
    cpio_out: &Path,
    release: &str,
    init: &[u8],
    busybox: &Path,
    moddir: &Path,
    modules: InitrdModules,
    extras: &[ExtraFile],
) -> Result<()> {
    let mods = modules.all;
    let busybox_bytes =
        std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    let mut a = Archive::new();
    for d in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "etc", "run",
    ] {
        a.dir(d, 0o755)?;
    }
    a.dir("root", 0o700)?;
    a.dir("tmp", 0o1777)?;
    // The kernel opens /dev/console for init's stdio before /init can mount devtmpfs.
    a.char_device("dev/console", 0o600, 5, 1)?;
    a.file("bin/busybox", 0o755, &busybox_bytes)?;
    // /init's `#!/bin/sh` needs this before `busybox --install -s` makes the rest.
    a.symlink("bin/sh", "busybox")?;
    a.file("init", 0o755, init)?;
    let base = format!("lib/modules/{release}");
    a.dirs(&base)?;
    for m in mods {
        let dest = format!("{base}/{}", m.path);
        if let Some((parent, _)) = dest.rsplit_once('/') {
            a.dirs(parent)?;
        }
        let bytes = std::fs::read(moddir.join(&m.path))?;
        a.file(&dest, 0o644, &bytes)?;
    }
    a.file(
        &format!("{base}/modules.dep"),
        0o644,
        modules_dep(mods).as_bytes(),
    )?;
    for extra in ["modules.builtin", "modules.order"] {
        if let Ok(bytes) = std::fs::read(moddir.join(extra)) {
            a.file(&format!("{base}/{extra}"), 0o644, &bytes)?;
        }
    }
    a.file(&format!("{base}/modules.alias"), 0o644, modules_alias(mods).as_bytes())?;
    let order: String = modules.boot.iter().map(|m| format!("{}\n", m.path)).collect();
    a.file(&format!("{base}/modules.dom0"), 0o644, order.as_bytes())?;
    for e in extras {
        if let Some((parent, _)) = e.dest.rsplit_once('/') {
            a.dirs(parent)?;
        }
        a.file(&e.dest, e.mode, &e.bytes)?;
    }
    let cpio = a.finish();
    let tmp = cpio_out.with_extension("cpio.tmp");
    std::fs::write(&tmp, &cpio).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, cpio_out)?;

    let tmp = out.with_extension("gz.tmp");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut gz = flate2::write::GzEncoder::new(
        std::io::BufWriter::new(file),
        flate2::Compression::default(),
    );
    gz.write_all(&cpio)?;
    gz.finish()?.flush()?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn km(name: &str, deps: &[&str]) -> KernelModule {
        KernelModule {
            name: name.into(),
            path: format!("kernel/{name}.ko"),
            depends: deps.iter().map(|d| d.to_string()).collect(),
            aliases: Vec::new(),
        }
    }

    #[test]
    fn candidates_from_apt_cache_show() {
        let out = "Package: linux-image-amd64\nSource: linux-signed-amd64 (6.1.192+2)\n\
            Version: 6.1.192-2\nArchitecture: amd64\n\
            Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)\n\
            Description: Linux for 64-bit PCs (meta-package)\n more text\n\n\
            Package: busybox-static\nVersion: 1:1.35.0-4+deb12u1+b1\nArchitecture: amd64\n\n";
        let st = parse_stanzas(out);
        assert_eq!(st.len(), 2);
        assert_eq!(
            st[0]["Description"],
            "Linux for 64-bit PCs (meta-package)\nmore text"
        );
        assert_eq!(
            dependency(&st[0], |d| d.starts_with("linux-image-")),
            Some((
                "linux-image-6.1.0-56-amd64".into(),
                Some("6.1.192-2".into())
            ))
        );
        let b = stanza_candidate(&st[1]).unwrap();
        assert_eq!(
            b.deb_name(),
            "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"
        );
        let mut bare = Stanza::new();
        bare.insert("Depends".into(), "linux-image-6.1.0-9-amd64".into());
        assert_eq!(
            dependency(&bare, |d| d.starts_with("linux-image-")),
            Some(("linux-image-6.1.0-9-amd64".into(), None))
        );
        assert!(parse_stanzas("N: Unable to locate package x\n")
            .iter()
            .all(|s| !s.contains_key("Package")));
    }

    #[test]
    fn the_cache_stands_in_for_apt() {
        let dir = std::env::temp_dir().join(format!("xtask-dom0-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in [
            "linux-image-6.1.0-55-amd64_6.1.190-1_amd64.deb",
            "linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb",
            "busybox-static_1%3a1.35.0-4_amd64.deb",
        ] {
            std::fs::write(dir.join(f), b"").unwrap();
        }
        let k = cached_kernel(&dir).unwrap();
        assert_eq!(
            (k.name.as_str(), k.version.as_str()),
            ("linux-image-6.1.0-56-amd64", "6.1.192-2")
        );
        let b = newest_cached(BUSYBOX, &dir).unwrap();
        assert_eq!(b.version, "1:1.35.0-4");
        assert_eq!(b.cached_only, Some(dir.join(b.deb_name())));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_says_module_or_builtin() {
        let c = parse_config("# comment\nCONFIG_E1000=m\nCONFIG_EXT4_FS=y\n# CONFIG_SATA_AHCI is not set\nCONFIG_X=\"a=b\"\n");
        assert_eq!(c.get("CONFIG_E1000").map(String::as_str), Some("m"));
        assert_eq!(c.get("CONFIG_EXT4_FS").map(String::as_str), Some("y"));
        assert_eq!(c.get("CONFIG_X").map(String::as_str), Some("\"a=b\""));
        assert!(!c.contains_key("CONFIG_SATA_AHCI"));
        let (load, builtin) = modules_to_load(&c);
        assert_eq!(load, [("e1000", Load::Device)]);
        assert_eq!(builtin, ["ext4"]);
    }

    #[test]
    fn modinfo_depends() {
        let info =
            b"license=GPL\0softdep=pre: crypto-crc32c\0depends=jbd2,mbcache,crc16\0name=ext4\0";
        let depends = |m: &[u8]| split_depends(&modinfo_values(m, "depends"));
        assert_eq!(depends(info), ["jbd2", "mbcache", "crc16"]);
        assert!(depends(b"depends=\0name=crc16\0").is_empty());
        assert_eq!(depends(b"depends=nls-utf8\0"), ["nls_utf8"]);
        assert_eq!(modinfo_values(info, "name"), ["ext4"]);
        assert!(modinfo_values(b"dependsx=a\0", "depends").is_empty());
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let all: BTreeMap<String, KernelModule> = [
            km("ext4", &["jbd2", "mbcache", "crc16"]),
            km("jbd2", &["crc16"]),
            km("mbcache", &[]),
            km("crc16", &[]),
            km("sd_mod", &["scsi_mod"]),
            km("scsi_mod", &[]),
        ]
        .into_iter()
        .map(|m| (m.name.clone(), m))
        .collect();
        let names: Vec<String> = load_order(&["sd_mod", "ext4", "crc16"], &all)
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(
            names,
            ["scsi_mod", "sd_mod", "crc16", "jbd2", "mbcache", "ext4"]
        );

        let mut cyclic = all.clone();
        cyclic.insert("crc16".into(), km("crc16", &["ext4"]));
        let e = load_order(&["ext4"], &cyclic).unwrap_err().to_string();
        assert!(e.contains("cycle"), "{e}");
    }

    #[test]
    fn modules_dep_lists_transitive_dependencies_last_first() {
        let mods = vec![
            km("crc16", &[]),
            km("jbd2", &["crc16"]),
            km("ext4", &["jbd2"]),
        ];
        assert_eq!(
            modules_dep(&mods),
            "kernel/crc16.ko:\nkernel/jbd2.ko: kernel/crc16.ko\nkernel/ext4.ko: kernel/jbd2.ko kernel/crc16.ko\n"
        );
    }

    #[test]
    fn boot_modules_come_with_their_dependencies_and_nothing_else() {
        let mods = vec![
            km("llc", &[]),
            km("stp", &["llc"]),
            km("bridge", &["stp", "llc"]),
            km("crc16", &[]),
            km("ext4", &["crc16"]),
            km("tun", &[]),
        ];
        let names: Vec<String> = boot_order(&mods, &["bridge", "tun"]).unwrap().into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["llc", "stp", "bridge", "tun"]);
    }

    #[test]
    fn modules_alias_is_in_depmods_format() {
        let mut e1000 = km("e1000", &[]);
        e1000.aliases = vec!["pci:v00008086d0000100Esv*sd*bc*sc*i*".into(), "pci:v00008086d0000100Fsv*sd*bc*sc*i*".into()];
        let mut ext4 = km("ext4", &[]);
        ext4.aliases = vec!["fs-ext4".into()];
        assert_eq!(
            modules_alias(&[e1000, km("crc16", &[]), ext4]),
            "alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\n\
             alias pci:v00008086d0000100Fsv*sd*bc*sc*i* e1000\n\
             alias fs-ext4 ext4\n"
        );
    }

    #[test]
    fn modules_list_is_well_formed() {
        let mut names = BTreeSet::new();
        for (name, symbol, _, why) in MODULES {
            assert!(names.insert(name), "{name} twice");
            assert!(symbol.starts_with("CONFIG_") && !why.is_empty());
            assert!(!name.contains('-'), "{name}: module names use _");
        }
    }
}
