//! dom0's `/dev/oxen` driver (`dom0-bootstrap/kmod/`), built against the dom0 kernel's
//! own headers so that it loads into exactly that kernel.
//!
//! Debian ships a kernel's build tree as three packages: `linux-headers-RELEASE` (the
//! configured part), `linux-headers-ABI-common` (the sources' headers and top Makefile)
//! and `linux-kbuild-X.Y` (kbuild's scripts and host programs). Like the kernel itself
//! (`dom0.rs`) they are fetched with `apt-get download` into `target/dom0/cache/`,
//! never installed, and unpacked together under `target/dom0/linux-headers-RELEASE/`,
//! where the few paths that assume `/usr/src` are made relative. The module sources are
//! copied to `target/dom0/kmod-build/` and built there with
//! `make -C <headers> M=<copy> modules`, giving `target/dom0/oxen.ko`; its user-space
//! test program (`ioctl-test.c`), benchmark (`null-bench.c`) and the hostile user-space
//! probe (`user-probe.c`, static glibc) are compiled beside it:
//!
//! ```text
//! target/dom0/linux-headers-RELEASE/usr/src/linux-headers-RELEASE   make -C here
//! target/dom0/kmod-build/                                           M=, a copy of the sources
//! target/dom0/oxen.ko, oxen-ioctl-test, oxen-null-bench,            what goes into the initramfs
//!   oxen-user-probe
//! target/dom0/oxen.ko.inputs                                        what they were built from
//! ```

use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};

use crate::dom0::{
    dependency, extract, fetch, modinfo, newest_cached, parse_config, AptAnswer, Candidate,
};
use crate::image::target_dir;
use crate::util::{on_path, repo_root, run_captured, run_output, show, step, tool_version};

/// The module's sources, relative to the repo root.
const SOURCES: &str = "dom0-bootstrap/kmod";
/// Where the module goes in dom0's initramfs, under `lib/modules/RELEASE/` (kbuild's
/// default directory for modules built outside the kernel tree); /init loads it.
pub const MODULE_PATH: &str = "extra/oxen.ko";
/// Where its user-space test program goes in dom0's initramfs.
pub const IOCTL_TEST_PATH: &str = "usr/lib/oxen/ioctl-test";
/// Where its null-hypercall benchmark goes (`cargo xtask bench` runs it).
pub const NULL_BENCH_PATH: &str = "usr/lib/oxen/null-bench";
/// Where the hostile user-space probe goes (`dom0-bootstrap/tests/hostile-user.sh` runs it).
pub const USER_PROBE_PATH: &str = "usr/lib/oxen/user-probe";
/// Where dom0's half of the cross-domain register test goes (tests/xstate.sh).
pub const XSTATE_TEST_PATH: &str = "usr/lib/oxen/xstate-test";
/// Where the I/O request test's device model goes (tests/ioreq.sh).
pub const IOREQ_TEST_PATH: &str = "usr/lib/oxen/ioreq-test";
/// Where dom0's initramfs has `oxen-foreign-test` (`foreign-test.c`).
pub const FOREIGN_TEST_PATH: &str = "usr/lib/oxen/foreign-test";
/// Where dom0's initramfs has `oxen-dirty-test` (`dirty-test.c`, tests/dirty.sh).
pub const DIRTY_TEST_PATH: &str = "usr/lib/oxen/dirty-test";

/// What `build` made.
pub struct Built {
    /// `oxen.ko`, without debug info.
    pub module: PathBuf,
    /// `oxen-ioctl-test` (`ioctl-test.c`): checks the ioctl from dom0's user space.
    pub ioctl_test: PathBuf,
    /// `oxen-null-bench` (`null-bench.c`): times null hypercalls from dom0's user space.
    pub null_bench: PathBuf,
    /// `oxen-user-probe` (`user-probe.c`): VMX/SVM and privileged instructions from an
    /// unprivileged dom0 process, each of which must only signal that process.
    pub user_probe: PathBuf,
    /// `oxen-xstate-test` (`xstate-test.c`): checks its vector registers survive domUs.
    pub xstate_test: PathBuf,
    /// `oxen-ioreq-test` (`ioreq-test.c`): the device model of the `ioreq` guest.
    pub ioreq_test: PathBuf,
    /// `oxen-foreign-test` (`foreign-test.c`): maps a domU's memory (ABI 1.6).
    pub foreign_test: PathBuf,
    /// `oxen-dirty-test` (`dirty-test.c`): dirty-page logging (ABI 1.8).
    pub dirty_test: PathBuf,
}

/// Builds (or reuses) `oxen.ko` for the dom0 kernel `release` (e.g. `6.1.0-56-amd64`),
/// and its test program.
pub fn build(release: &str) -> Result<Built> {
    let dir = target_dir().join("dom0");
    let out = Built {
        module: dir.join("oxen.ko"),
        ioctl_test: dir.join("oxen-ioctl-test"),
        null_bench: dir.join("oxen-null-bench"),
        user_probe: dir.join("oxen-user-probe"),
        xstate_test: dir.join("oxen-xstate-test"),
        ioreq_test: dir.join("oxen-ioreq-test"),
        foreign_test: dir.join("oxen-foreign-test"),
        dirty_test: dir.join("oxen-dirty-test"),
    };
    let ko = &out.module;
    let stamp = dir.join("oxen.ko.inputs");
    let sources = read_sources(&repo_root().join(SOURCES))?;
    let inputs = build_inputs(release, &sources);
    // The headers are only looked at when the module must be built: a warm run asks apt nothing.
    if ko.is_file()
        && out.ioctl_test.is_file()
        && out.null_bench.is_file()
        && out.user_probe.is_file()
        && out.xstate_test.is_file()
        && out.ioreq_test.is_file()
        && out.foreign_test.is_file()
        && out.dirty_test.is_file()
        && std::fs::read_to_string(&stamp).is_ok_and(|s| s == inputs)
    {
        step(format!(
            "dom0 kernel module: {} for {release} (unchanged)",
            show(ko)
        ));
        return Ok(out);
    }
    let _ = std::fs::remove_file(&stamp);

    let headers = headers(release, &dir)?;
    let config_path = headers.join(".config");
    let config =
        parse_config(&std::fs::read_to_string(&config_path).with_context(|| {
            format!("reading the dom0 kernel's config {}", config_path.display())
        })?);
    let (cc, cc_version) = compiler(&config)?;

    let build = dir.join("kmod-build");
    if build.to_string_lossy().contains(char::is_whitespace) {
        bail!(
            "kbuild cannot build in a directory whose path has spaces: {}\n\
             Move the checkout (or set CARGO_TARGET_DIR) to a path without them.",
            build.display()
        );
    }
    let _ = std::fs::remove_dir_all(&build);
    std::fs::create_dir_all(&build).with_context(|| format!("creating {}", build.display()))?;
    for (name, bytes) in &sources {
        std::fs::write(build.join(name), bytes)?;
    }
    step(format!(
        "dom0 kernel module: building oxen.ko in {} against linux-headers-{release} with {}",
        show(&build),
        cc_version
    ));
    let t = Instant::now();
    let mut make = Command::new("make");
    make.arg("-C")
        .arg(&headers)
        .arg(format!("M={}", build.display()))
        .arg(format!("CC={cc}"))
        .arg("modules")
        // An outer make's flags (jobserver, -k, ...) are not for this one.
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL");
    show_warnings(&run_output(
        &mut make,
        "building dom0's kernel module oxen.ko",
    )?);

    let built = build.join("oxen.ko");
    let bytes = std::fs::read(&built)
        .with_context(|| format!("kbuild succeeded but wrote no {}", built.display()))?;
    let vermagic = modinfo(&bytes, "vermagic")
        .with_context(|| format!("reading the .modinfo of {}", built.display()))?;
    // vermagic is "RELEASE SMP preempt mod_unload modversions ", checked by the kernel at insmod.
    if vermagic.first().and_then(|v| v.split_whitespace().next()) != Some(release) {
        bail!(
            "{} was built for {vermagic:?}, not for the dom0 kernel {release}",
            built.display()
        );
    }
    // What goes into the initramfs leaves out the debug info (as `modules_install
    // INSTALL_MOD_STRIP=1` would); kmod-build/oxen.ko keeps it.
    run_captured(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(ko)
            .arg(&built),
        "stripping the debug info from oxen.ko",
    )?;
    step(format!(
        "dom0 kernel module: {} ({} KiB, built in {:.1}s; with debug info: {})",
        show(ko),
        std::fs::metadata(ko)?.len() / 1024,
        t.elapsed().as_secs_f64(),
        show(&built)
    ));

    for (source, program, what) in [
        ("ioctl-test.c", &out.ioctl_test, "test program"),
        ("null-bench.c", &out.null_bench, "benchmark"),
        ("xstate-test.c", &out.xstate_test, "register test"),
    ] {
        build_freestanding(&cc, &build.join(source), program)?;
        step(format!(
            "dom0 kernel module: {what} {} ({} KiB)",
            show(program),
            std::fs::metadata(program)?.len() / 1024
        ));
    }
    build_static_glibc(&cc, &build.join("user-probe.c"), &out.user_probe)?;
    build_static_glibc(&cc, &build.join("ioreq-test.c"), &out.ioreq_test)?;
    build_static_glibc(&cc, &build.join("foreign-test.c"), &out.foreign_test)?;
    build_static_glibc(&cc, &build.join("dirty-test.c"), &out.dirty_test)?;
    step(format!(
        "dom0 kernel module: hostile user-space probe {} ({} KiB)",
        show(&out.user_probe),
        std::fs::metadata(&out.user_probe)?.len() / 1024
    ));
    std::fs::write(&stamp, &inputs)?;
    Ok(out)
}

/// Compiles a user-space program of the module's (`ioctl-test.c`, `null-bench.c`):
/// freestanding (its own `_start` and system calls), so there is no libc to link, only
/// the kernel's user-space headers (linux-libc-dev) for oxen_abi.h's types and ioctl
/// macros, errno and open flags.
fn build_freestanding(cc: &str, source: &Path, out: &Path) -> Result<()> {
    let mut cmd = Command::new(cc);
    cmd.args(["-Os", "-s", "-static", "-nostdlib", "-ffreestanding"])
        .args(["-fno-stack-protector", "-fno-pie", "-no-pie"])
        .args(["-fno-asynchronous-unwind-tables", "-Wall", "-Wextra"])
        .arg("-o")
        .arg(out)
        .arg(source);
    let what = format!(
        "building dom0's {}",
        source.file_name().unwrap_or_default().to_string_lossy()
    );
    let output = run_output(&mut cmd, &what).map_err(|e| {
        e.context("(it needs the kernel's user-space headers: `apt-get install linux-libc-dev`)")
    })?;
    show_warnings(&output);
    Ok(())
}

/// Compiles a user-space program against static glibc (libc6-dev, which xtask already
/// installs for `oxl`): for `user-probe.c`, whose signal handling (sigsetjmp/siglongjmp)
/// is not worth rewriting freestanding.
fn build_static_glibc(cc: &str, source: &Path, out: &Path) -> Result<()> {
    let mut cmd = Command::new(cc);
    cmd.args(["-O2", "-s", "-static", "-Wall", "-Wextra"])
        .arg("-o")
        .arg(out)
        .arg(source);
    let what = format!(
        "building dom0's {}",
        source.file_name().unwrap_or_default().to_string_lossy()
    );
    let output = run_output(&mut cmd, &what)
        .map_err(|e| e.context("(it needs static glibc: `apt-get install libc6-dev`)"))?;
    show_warnings(&output);
    Ok(())
}

/// A compiler's warnings, one progress line each (they are on stderr).
fn show_warnings(out: &std::process::Output) {
    for line in String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("warning:"))
    {
        step(format!("dom0 kernel module: {}", line.trim()));
    }
}

/// Every file of the module's source directory: (name, contents), sorted by name.
fn read_sources(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        if e.file_type()?.is_file() {
            let name = e.file_name().to_string_lossy().into_owned();
            files.push((name, std::fs::read(e.path())?));
        }
    }
    files.sort();
    if !files.iter().any(|(n, _)| n == "Kbuild") {
        bail!("{} has no Kbuild file", dir.display());
    }
    Ok(files)
}

/// Bump when `build` changes what it makes of the same sources.
const RECIPE: u32 = 1;

/// What the module is built from, as text for the stamp: the kernel release, each
/// source file's hash and `RECIPE`. (The header packages of one release share its ABI,
/// so a newer Debian revision of them needs no rebuild.)
fn build_inputs(release: &str, sources: &[(String, Vec<u8>)]) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut s = format!("recipe {RECIPE}\nrelease {release}\n");
    for (name, bytes) in sources {
        let mut h = std::hash::DefaultHasher::new();
        bytes.hash(&mut h);
        let _ = writeln!(s, "source {name} {:016x}", h.finish());
    }
    s
}

/// The three header packages of `release`, fetched and unpacked into one tree whose
/// paths work where it is. Returns the directory to run `make -C` in.
fn headers(release: &str, dir: &Path) -> Result<PathBuf> {
    let cache = dir.join("cache");
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let mut debs = Vec::new();
    for c in &header_packages(release, &cache)? {
        debs.push(fetch("dom0 kernel headers", c, &cache)?.0);
    }
    let root = dir.join(format!("linux-headers-{release}"));
    let (root, _) = extract(
        &debs.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
        &root,
    )?;
    let fixed = make_relocatable(&root)?;
    if fixed > 0 {
        step(format!(
            "dom0 kernel headers: {fixed} absolute path(s) under {} made relative",
            show(&root)
        ));
    }
    let headers = root
        .join("usr/src")
        .join(format!("linux-headers-{release}"));
    if !headers.join("Makefile").is_file() {
        bail!(
            "the headers package unpacked into {} has no usr/src/linux-headers-{release}/Makefile",
            root.display()
        );
    }
    Ok(headers)
}

/// `linux-headers-RELEASE` and the two packages it depends on for building modules: its
/// `-common` headers and `linux-kbuild-X.Y`. Names and versions come from apt (`Depends:`
/// of the headers package), or from the .debs already in the cache when apt cannot say.
fn header_packages(release: &str, cache: &Path) -> Result<[Candidate; 3]> {
    let main = format!("linux-headers-{release}");
    let apt = AptAnswer::query(&[&main]);
    let Some(stanza) = apt.get(&main) else {
        // No answer (even after `apt-get update`): asking about the others would not help.
        let (common, kbuild) = derived_names(release)?;
        let cached =
            |name: &str| newest_cached(name, cache).ok_or_else(|| apt.cannot_tell(name, cache));
        return Ok([cached(&main)?, cached(&common)?, cached(&kbuild)?]);
    };
    let common = dependency(stanza, |d| {
        d.starts_with("linux-headers-") && d.contains("-common")
    })
    .with_context(|| format!("{main} does not depend on a linux-headers-*-common package"))?;
    let kbuild = dependency(stanza, |d| d.starts_with("linux-kbuild-"))
        .with_context(|| format!("{main} does not depend on a linux-kbuild-* package"))?;
    // `NAME=VERSION` asks for the pinned version (common), a bare name for the
    // candidate (kbuild has a `>=` bound).
    let spec = |(name, version): &(String, Option<String>)| match version {
        Some(v) => format!("{name}={v}"),
        None => name.clone(),
    };
    let deps = AptAnswer::query(&[&spec(&common), &spec(&kbuild)]);
    let pick = |apt: &AptAnswer, name: &str| {
        apt.candidate(name)
            .or_else(|| newest_cached(name, cache))
            .ok_or_else(|| apt.cannot_tell(name, cache))
    };
    Ok([
        pick(&apt, &main)?,
        pick(&deps, &common.0)?,
        pick(&deps, &kbuild.0)?,
    ])
}

/// The `-common` and kbuild package names of a release, as Debian forms them, for when
/// apt cannot say: `6.1.0-56-amd64` → `linux-headers-6.1.0-56-common`, `linux-kbuild-6.1`.
fn derived_names(release: &str) -> Result<(String, String)> {
    let mut parts = release.split('-');
    let (Some(version), Some(abi)) = (parts.next(), parts.next()) else {
        bail!("cannot read the kernel release {release:?} (expected VERSION-ABI-FLAVOUR)");
    };
    let major_minor: Vec<&str> = version.split('.').take(2).collect();
    Ok((
        format!("linux-headers-{version}-{abi}-common"),
        format!("linux-kbuild-{}", major_minor.join(".")),
    ))
}

/// Debian's header packages expect to live in `/usr/src` and `/usr/lib`: the configured
/// tree's Makefile includes the common one by absolute path, and `lib/modules/RELEASE/
/// {build,source}` are absolute symlinks. Makes each relative so the tree works where it
/// was unpacked (kbuild runs with its working directory in the configured tree). Returns
/// how many it changed; running it again changes nothing.
fn make_relocatable(root: &Path) -> Result<usize> {
    let mut fixed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e?;
            let path = e.path();
            let kind = e.file_type()?;
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&path)?;
                if target.is_absolute() {
                    let rel = relative_to(root, &path, &target);
                    std::fs::remove_file(&path)?;
                    std::os::unix::fs::symlink(&rel, &path).with_context(|| {
                        format!("linking {} to {}", path.display(), rel.display())
                    })?;
                    fixed += 1;
                }
            }
        }
    }
    let src = root.join("usr/src");
    for e in std::fs::read_dir(&src).with_context(|| format!("reading {}", src.display()))? {
        let makefile = e?.path().join("Makefile");
        let Ok(text) = std::fs::read_to_string(&makefile) else {
            continue;
        };
        let (new, n) = relative_includes(&text, &makefile, root);
        if n > 0 {
            std::fs::write(&makefile, new)
                .with_context(|| format!("writing {}", makefile.display()))?;
            fixed += n;
        }
    }
    Ok(fixed)
}

/// `target`, an absolute path meant for a system whose `/` is `root`, as a path relative
/// to the directory of `link` (a path under `root`).
fn relative_to(root: &Path, link: &Path, target: &Path) -> PathBuf {
    let depth = link
        .parent()
        .and_then(|p| p.strip_prefix(root).ok())
        .map_or(0, |p| p.components().count());
    let mut rel = PathBuf::new();
    for _ in 0..depth {
        rel.push("..");
    }
    rel.extend(
        target
            .components()
            .filter(|c| matches!(c, Component::Normal(_))),
    );
    rel
}

/// The `include /ABSOLUTE` lines of `makefile` (a path under `root`, its text `text`)
/// rewritten relative to its directory: (text, lines changed).
fn relative_includes(text: &str, makefile: &Path, root: &Path) -> (String, usize) {
    let mut n = 0;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        match line.strip_prefix("include /") {
            Some(rest) => {
                let (path, end) = rest.split_at(rest.trim_end().len());
                let rel = relative_to(root, makefile, &Path::new("/").join(path));
                let _ = write!(out, "include {}{end}", rel.display());
                n += 1;
            }
            None => out.push_str(line),
        }
    }
    (out, n)
}

/// The C compiler for the module: the one the kernel was built with (first word of
/// `CONFIG_CC_VERSION_TEXT`, e.g. `gcc-12`) when it is installed, else `gcc`. Warns when
/// its version differs from the kernel's. Returns (program, its version line).
fn compiler(config: &std::collections::BTreeMap<String, String>) -> Result<(String, String)> {
    let kernel_cc = config
        .get("CONFIG_CC_VERSION_TEXT")
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_default();
    let wanted = kernel_cc.split_whitespace().next().unwrap_or("gcc");
    let cc = if on_path(wanted) {
        wanted
    } else if on_path("gcc") {
        "gcc"
    } else {
        bail!(
            "no C compiler for dom0's kernel module: the dom0 kernel was built with `{kernel_cc}`, \
             and neither `{wanted}` nor `gcc` is installed.\n\
             Run `cargo xtask setup` (or `apt-get install gcc make libelf1` as root)."
        );
    };
    let host_cc = tool_version(cc, &["--version"]);
    if !same_compiler(&kernel_cc, &host_cc) {
        step(format!(
            "warning: the dom0 kernel was built with `{kernel_cc}` but its module is built with \
             `{host_cc}`; it may not load or may misbehave"
        ));
    }
    Ok((cc.to_owned(), host_cc))
}

/// Whether two `cc --version` first lines name the same compiler build: everything after
/// the program's name (`gcc-12` and `gcc` are the same program on Debian).
fn same_compiler(a: &str, b: &str) -> bool {
    let rest = |s: &str| {
        s.trim()
            .split_once(char::is_whitespace)
            .map(|(_, r)| r.trim().to_owned())
    };
    rest(a).is_some() && rest(a) == rest(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths_become_relative() {
        let root = Path::new("/t/root");
        assert_eq!(
            relative_to(
                root,
                &root.join("lib/modules/6.1.0-56-amd64/build"),
                Path::new("/usr/src/linux-headers-6.1.0-56-amd64")
            ),
            Path::new("../../../usr/src/linux-headers-6.1.0-56-amd64")
        );
        let mk = "include /usr/src/linux-headers-6.1.0-56-common/Makefile\n\
                  override ARCH = x86\ninclude other.mk\n";
        let makefile = root.join("usr/src/linux-headers-6.1.0-56-amd64/Makefile");
        let (text, n) = relative_includes(mk, &makefile, root);
        assert_eq!(n, 1);
        assert_eq!(
            text,
            "include ../../../usr/src/linux-headers-6.1.0-56-common/Makefile\n\
             override ARCH = x86\ninclude other.mk\n"
        );
        assert_eq!(relative_includes(&text, &makefile, root).1, 0);
    }

    #[test]
    fn tree_is_made_relocatable_once() {
        let root = std::env::temp_dir().join(format!("xtask-kmod-tree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let arch = root.join("usr/src/linux-headers-9.9.0-1-amd64");
        let common = root.join("usr/src/linux-headers-9.9.0-1-common");
        std::fs::create_dir_all(&arch).unwrap();
        std::fs::create_dir_all(&common).unwrap();
        std::fs::create_dir_all(root.join("lib/modules/9.9.0-1-amd64")).unwrap();
        std::fs::write(common.join("Makefile"), "all:\n").unwrap();
        std::fs::write(
            arch.join("Makefile"),
            "include /usr/src/linux-headers-9.9.0-1-common/Makefile\n",
        )
        .unwrap();
        let build = root.join("lib/modules/9.9.0-1-amd64/build");
        std::os::unix::fs::symlink("/usr/src/linux-headers-9.9.0-1-amd64", &build).unwrap();
        std::os::unix::fs::symlink("../lib", arch.join("relative")).unwrap();

        assert_eq!(make_relocatable(&root).unwrap(), 2);
        assert_eq!(make_relocatable(&root).unwrap(), 0);
        assert!(
            build.join("Makefile").is_file(),
            "build link resolves in place"
        );
        assert_eq!(
            std::fs::read_link(arch.join("relative")).unwrap(),
            Path::new("../lib")
        );
        assert!(arch
            .join(
                std::fs::read_to_string(arch.join("Makefile")).unwrap()["include ".len()..].trim()
            )
            .is_file());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn package_names_from_the_release() {
        assert_eq!(
            derived_names("6.1.0-56-amd64").unwrap(),
            (
                "linux-headers-6.1.0-56-common".into(),
                "linux-kbuild-6.1".into()
            )
        );
        assert!(derived_names("6").is_err());
    }

    #[test]
    fn compilers_compare_without_their_program_name() {
        let kernel = "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0";
        assert!(same_compiler(
            kernel,
            "gcc (Debian 12.2.0-14+deb12u1) 12.2.0"
        ));
        assert!(!same_compiler(kernel, "gcc (Debian 12.2.0-14) 12.2.0"));
        assert!(!same_compiler("", ""));
        assert!(!same_compiler(kernel, "gcc: not installed"));
    }

    #[test]
    fn stamp_changes_with_sources_and_release() {
        let src = vec![("oxen.c".to_owned(), b"int x;".to_vec())];
        let a = build_inputs("6.1.0-56-amd64", &src);
        assert_eq!(a, build_inputs("6.1.0-56-amd64", &src));
        assert_ne!(a, build_inputs("6.1.0-57-amd64", &src));
        assert_ne!(
            a,
            build_inputs(
                "6.1.0-56-amd64",
                &[("oxen.c".to_owned(), b"int y;".to_vec())]
            )
        );
    }

    /// A `#define` of oxen_abi.h.
    #[derive(Debug, PartialEq, Eq)]
    enum Define {
        Int(u64),
        Str(String),
        /// `_IOWR('T', NR, struct NAME)`.
        Iowr(u8, u64, String),
    }

    fn parse_int(v: &str) -> Option<u64> {
        let v = v.trim_end_matches(['u', 'U', 'l', 'L']);
        match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        }
    }

    /// The header's `#define NAME VALUE` lines (include guards, without a value, left out).
    fn parse_defines(h: &str) -> Vec<(String, Define)> {
        h.lines()
            .filter_map(|l| l.trim().strip_prefix("#define "))
            .filter_map(|l| {
                let (name, value) = l.trim().split_once(char::is_whitespace)?;
                let value = value.trim();
                let def = if let Some(s) = value.strip_prefix('"') {
                    Define::Str(s.strip_suffix('"').expect("closing quote").to_owned())
                } else if let Some(args) = value.strip_prefix("_IOWR(") {
                    let args: Vec<&str> = args
                        .trim_end_matches(')')
                        .split(',')
                        .map(str::trim)
                        .collect();
                    let [ty, nr, strukt] = args[..] else {
                        panic!("_IOWR with {} arguments: {value}", args.len())
                    };
                    let ty = ty
                        .strip_prefix('\'')
                        .and_then(|t| t.strip_suffix('\''))
                        .expect("'T'");
                    assert_eq!(ty.len(), 1, "{value}");
                    Define::Iowr(
                        ty.as_bytes()[0],
                        parse_int(nr).expect("ioctl number"),
                        strukt
                            .strip_prefix("struct ")
                            .expect("struct NAME")
                            .to_owned(),
                    )
                } else {
                    Define::Int(
                        parse_int(value).unwrap_or_else(|| panic!("{name}: cannot read {value:?}")),
                    )
                };
                Some((name.to_owned(), def))
            })
            .collect()
    }

    /// The fields of `struct NAME { TYPE field; ... };`: (field, byte offset, type), and
    /// the struct's size (fields aligned to their size, as on x86-64).
    fn parse_struct(h: &str, name: &str) -> (Vec<(String, usize, String)>, usize) {
        let body = h
            .split_once(&format!("struct {name} {{"))
            .and_then(|(_, rest)| rest.split_once("};"))
            .unwrap_or_else(|| panic!("no struct {name}"))
            .0;
        let mut fields = Vec::new();
        let mut offset = 0usize;
        for decl in body.split(';').map(str::trim).filter(|d| !d.is_empty()) {
            let (ty, field) = decl.split_once(char::is_whitespace).expect("TYPE field");
            let size = match ty {
                "__u64" | "__s64" => 8,
                "__u32" | "__s32" => 4,
                "__u16" | "__s16" => 2,
                "__u8" | "__s8" => 1,
                _ => panic!("struct {name}: unexpected type {ty}"),
            };
            offset = offset.next_multiple_of(size);
            fields.push((field.trim().to_owned(), offset, ty.to_owned()));
            offset += size;
        }
        (fields, offset.next_multiple_of(8))
    }

    /// The `<linux/types.h>` name of a Rust integer's type: `i64` is `__s64`.
    fn c_type<T>(v: &T) -> String {
        let (sign, bits) = std::any::type_name_of_val(v).split_at(1);
        format!("__{}{bits}", if sign == "i" { "s" } else { "u" })
    }

    /// Checks that `struct NAME` in `h` has `expected` (field, offset, C type)
    /// and returns its size.
    fn assert_struct(h: &str, name: &str, expected: &[(&str, usize, String)]) -> usize {
        let (fields, size) = parse_struct(h, name);
        let got: Vec<(&str, usize, &str)> = fields.iter().map(|(f, o, t)| (f.as_str(), *o, t.as_str())).collect();
        let want: Vec<(&str, usize, &str)> = expected.iter().map(|(f, o, t)| (*f, *o, t.as_str())).collect();
        assert_eq!(got, want, "struct {name} against oxen-abi");
        size
    }

    #[test]
    fn abi_header_matches_oxen_abi() {
        use oxen_abi::{HypercallIoctl as H, *};
        use std::mem::{offset_of, size_of};

        let path = repo_root().join(SOURCES).join("oxen_abi.h");
        let h = std::fs::read_to_string(&path).unwrap();

        let v = H::default();
        let size = assert_struct(
            &h,
            "oxen_hypercall",
            &[
                ("nr", offset_of!(H, nr), c_type(&v.nr)),
                ("cmd", offset_of!(H, cmd), c_type(&v.cmd)),
                ("arg", offset_of!(H, arg), c_type(&v.arg)),
                ("arg_len", offset_of!(H, arg_len), c_type(&v.arg_len)),
                ("buf", offset_of!(H, buf), c_type(&v.buf)),
                ("buf_len", offset_of!(H, buf_len), c_type(&v.buf_len)),
                ("result", offset_of!(H, result), c_type(&v.result)),
            ],
        );
        assert_eq!(size, size_of::<H>());

        let device = DEVICE_PATH.strip_prefix("/dev/").unwrap();
        let signature = std::str::from_utf8(CPUID_SIGNATURE).unwrap();
        let expected = [
            ("OXEN_ABI_VERSION", Define::Int(ABI_VERSION.into())),
            ("OXEN_ABI_MAJOR", Define::Int(abi_major(ABI_VERSION).into())),
            (
                "OXEN_CPUID_SIGNATURE_LEAF",
                Define::Int(CPUID_SIGNATURE_LEAF.into()),
            ),
            (
                "OXEN_CPUID_VERSION_LEAF",
                Define::Int(CPUID_VERSION_LEAF.into()),
            ),
            ("OXEN_CPUID_SIGNATURE", Define::Str(signature.into())),
            ("OXEN_HC_VERSION", Define::Int(nr::VERSION)),
            ("OXEN_HC_NULL", Define::Int(nr::NULL)),
            ("OXEN_HC_DOMCTL", Define::Int(nr::DOMCTL)),
            ("OXEN_HC_EVENTS", Define::Int(nr::EVENTS)),
            ("OXEN_EVENT_GSI", Define::Int(EVENT_GSI.into())),
            ("OXEN_EVENT_CONSOLE", Define::Int(event::CONSOLE)),
            ("OXEN_EVENT_IOREQ", Define::Int(event::IOREQ)),
            ("OXEN_DOMCTL_IOREQ_SETUP", Define::Int(domctl::IOREQ_SETUP)),
            ("OXEN_DOMCTL_IOREQ_RANGE", Define::Int(domctl::IOREQ_RANGE)),
            ("OXEN_DOMCTL_IOREQ_DONE", Define::Int(domctl::IOREQ_DONE)),
            ("OXEN_MAX_VCPUS", Define::Int(MAX_VCPUS.into())),
            ("OXEN_IOREQ_STATE_FREE", Define::Int(ioreq::STATE_FREE.into())),
            ("OXEN_IOREQ_STATE_READY", Define::Int(ioreq::STATE_READY.into())),
            ("OXEN_IOREQ_STATE_DONE", Define::Int(ioreq::STATE_DONE.into())),
            ("OXEN_IOREQ_KIND_MMIO", Define::Int(ioreq::KIND_MMIO.into())),
            ("OXEN_IOREQ_KIND_PIO", Define::Int(ioreq::KIND_PIO.into())),
            ("OXEN_IOREQ_DIR_READ", Define::Int(ioreq::DIR_READ.into())),
            ("OXEN_IOREQ_DIR_WRITE", Define::Int(ioreq::DIR_WRITE.into())),
            ("OXEN_IOREQ_FLAG_POSTED_WRITES", Define::Int(ioreq::FLAG_POSTED_WRITES.into())),
            ("OXEN_IOREQ_FLAG_INTERRUPT_STATUS", Define::Int(ioreq::FLAG_INTERRUPT_STATUS.into())),
            ("OXEN_IOREQ_MAX_RANGES", Define::Int(ioreq::MAX_RANGES as u64)),
            ("OXEN_IOREQ_POSTED_ENTRIES", Define::Int(ioreq::POSTED_ENTRIES.into())),
            ("OXEN_IOREQ_OFFSET_POSTED_HEAD", Define::Int(ioreq::OFFSET_POSTED_HEAD as u64)),
            ("OXEN_IOREQ_OFFSET_POSTED_TAIL", Define::Int(ioreq::OFFSET_POSTED_TAIL as u64)),
            ("OXEN_IOREQ_OFFSET_POSTED", Define::Int(ioreq::OFFSET_POSTED as u64)),
            ("OXEN_IOREQ_OFFSET_INTERRUPT_STATUS", Define::Int(ioreq::OFFSET_INTERRUPT_STATUS as u64)),
            ("OXEN_IOREQ_PAGE_SIZE", Define::Int(size_of::<IoreqPage>() as u64)),
            ("OXEN_EVENT_ALL", Define::Int(event::ALL)),
            ("OXEN_DOMCTL_ARG_MAX", Define::Int(DOMCTL_ARG_MAX)),
            ("OXEN_DOMCTL_BUF_MAX", Define::Int(DOMCTL_BUF_MAX)),
            (
                "OXEN_DOMCTL_BUFFER_IN_ONLY_MASK",
                Define::Int(DOMCTL_BUFFER_IN_ONLY.iter().map(|&c| 1u64 << c).sum()),
            ),
            ("OXEN_DEVICE_NAME", Define::Str(device.into())),
            ("OXEN_ABI_DEVICE_MODEL", Define::Int(ABI_DEVICE_MODEL.into())),
            ("OXEN_DOMCTL_FOREIGN_MAP", Define::Int(domctl::FOREIGN_MAP)),
            ("OXEN_DOMCTL_FOREIGN_UNMAP", Define::Int(domctl::FOREIGN_UNMAP)),
            ("OXEN_FOREIGN_MAP_MAX_PAGES", Define::Int(FOREIGN_MAP_MAX_PAGES)),
            ("OXEN_ABI_LOG_DIRTY", Define::Int(ABI_LOG_DIRTY.into())),
            ("OXEN_DOMCTL_LOG_DIRTY", Define::Int(domctl::LOG_DIRTY)),
            ("OXEN_LOG_DIRTY_ENABLE", Define::Int(log_dirty::ENABLE.into())),
            ("OXEN_LOG_DIRTY_DISABLE", Define::Int(log_dirty::DISABLE.into())),
            ("OXEN_LOG_DIRTY_CLEAN", Define::Int(log_dirty::CLEAN.into())),
            ("OXEN_LOG_DIRTY_PEEK", Define::Int(log_dirty::PEEK.into())),
            ("OXEN_DOMCTL_CONSOLE_READ", Define::Int(domctl::CONSOLE_READ)),
            ("OXEN_DOMCTL_CONSOLE_INPUT", Define::Int(domctl::CONSOLE_INPUT)),
        ];
        let m = ForeignMap { domid: 0, _pad: 0, first_gfn: 0, count: 0, addr: 0 };
        let map_size = assert_struct(
            &h,
            "oxen_foreign_map",
            &[
                ("domid", offset_of!(ForeignMap, domid), c_type(&m.domid)),
                ("_pad", offset_of!(ForeignMap, _pad), c_type(&m._pad)),
                ("first_gfn", offset_of!(ForeignMap, first_gfn), c_type(&m.first_gfn)),
                ("count", offset_of!(ForeignMap, count), c_type(&m.count)),
                ("addr", offset_of!(ForeignMap, addr), c_type(&m.addr)),
            ],
        );
        assert_eq!(map_size, size_of::<ForeignMap>());
        let u = ForeignUnmap { addr: 0, count: 0 };
        let unmap_size = assert_struct(
            &h,
            "oxen_foreign_unmap",
            &[
                ("addr", offset_of!(ForeignUnmap, addr), c_type(&u.addr)),
                ("count", offset_of!(ForeignUnmap, count), c_type(&u.count)),
            ],
        );
        assert_eq!(unmap_size, size_of::<ForeignUnmap>());
        let o = ForeignOpenIoctl::default();
        let open_size = assert_struct(
            &h,
            "oxen_foreign_open",
            &[
                ("domid", offset_of!(ForeignOpenIoctl, domid), c_type(&o.domid)),
                ("_pad", offset_of!(ForeignOpenIoctl, _pad), c_type(&o._pad)),
            ],
        );
        assert_eq!(open_size, size_of::<ForeignOpenIoctl>());
        let w = EventWaitIoctl::default();
        let wait_size = assert_struct(
            &h,
            "oxen_event_wait",
            &[
                ("mask", offset_of!(EventWaitIoctl, mask), c_type(&w.mask)),
                ("count", offset_of!(EventWaitIoctl, count), c_type(&w.count)),
                ("timeout_ms", offset_of!(EventWaitIoctl, timeout_ms), c_type(&w.timeout_ms)),
            ],
        );
        assert_eq!(wait_size, size_of::<EventWaitIoctl>());

        // The I/O request structures (1.6); padding as the C side spells it.
        let u32s = |names: &[&'static str], at: usize| -> Vec<(&'static str, usize, String)> {
            names.iter().enumerate().map(|(i, n)| (*n, at + 4 * i, "__u32".to_owned())).collect()
        };
        let r = IoreqRange::default();
        let mut range = u32s(&["domid", "kind", "flags", "_pad"], 0);
        range.push(("start", offset_of!(IoreqRange, start), c_type(&r.start)));
        range.push(("len", offset_of!(IoreqRange, len), c_type(&r.len)));
        let range_size = assert_struct(&h, "oxen_ioreq_range", &range);
        assert_eq!(range_size, size_of::<IoreqRange>());
        assert_eq!(offset_of!(IoreqRange, flags), 8);
        let done_size = assert_struct(&h, "oxen_ioreq_done", &u32s(&["domid", "vcpu"], 0));
        assert_eq!((done_size, offset_of!(IoreqDone, vcpu)), (size_of::<IoreqDone>(), 4));
        let ref_size = assert_struct(&h, "oxen_domain_ref", &u32s(&["domid", "_pad"], 0));
        assert_eq!(ref_size, size_of::<DomainRef>());
        let mut setup = u32s(&["domid", "_pad"], 0);
        setup.push(("page", offset_of!(IoreqSetup, page), "__u64".to_owned()));
        assert_eq!(assert_struct(&h, "oxen_ioreq_setup", &setup), size_of::<IoreqSetup>());
        let byte = |n: &'static str, at: usize| (n, at, "__u8".to_owned());
        let mut slot = u32s(&["state", "seq"], 0);
        assert_eq!(offset_of!(IoreqSlot, kind), 8);
        slot.extend([byte("kind", 8), byte("dir", 9), byte("size", 10), byte("_pad0", 11)]);
        slot.push(("_pad1", 12, "__u32".to_owned()));
        slot.push(("addr", offset_of!(IoreqSlot, addr), "__u64".to_owned()));
        slot.push(("data", offset_of!(IoreqSlot, data), "__u64".to_owned()));
        assert_eq!(assert_struct(&h, "oxen_ioreq_slot", &slot), size_of::<IoreqSlot>());
        let mut posted = vec![byte("kind", 0), byte("size", 1), byte("vcpu", 2), byte("_pad0", 3)];
        assert_eq!(offset_of!(PostedWrite, vcpu), 2);
        posted.push(("_pad1", 4, "__u32".to_owned()));
        posted.push(("addr", offset_of!(PostedWrite, addr), "__u64".to_owned()));
        posted.push(("data", offset_of!(PostedWrite, data), "__u64".to_owned()));
        assert_eq!(assert_struct(&h, "oxen_posted_write", &posted), size_of::<PostedWrite>());
        let mut dirty = u32s(&["domid", "op"], 0);
        dirty.push(("first", offset_of!(LogDirty, first), "__u64".to_owned()));
        dirty.push(("pages", offset_of!(LogDirty, pages), "__u64".to_owned()));
        assert_eq!(assert_struct(&h, "oxen_log_dirty", &dirty), size_of::<LogDirty>());
        let mut ring = u32s(&["domid", "_pad"], 0);
        for (f, at) in [("offset", offset_of!(RingRead, offset)), ("next", offset_of!(RingRead, next)), ("lost", offset_of!(RingRead, lost))] {
            ring.push((f, at, "__u64".to_owned()));
        }
        assert_eq!(assert_struct(&h, "oxen_ring_read", &ring), size_of::<RingRead>());

        let defines = parse_defines(&h);
        for (name, def) in &defines {
            if let Define::Iowr(ty, nr, strukt) = def {
                let (size, expected) = match strukt.as_str() {
                    "oxen_hypercall" => (size, ("OXEN_IOCTL_HYPERCALL", IOCTL_HYPERCALL)),
                    "oxen_event_wait" => (wait_size, ("OXEN_IOCTL_EVENT_WAIT", IOCTL_EVENT_WAIT)),
                    "oxen_domain_ref" => (ref_size, ("OXEN_IOCTL_IOREQ_OPEN", IOCTL_IOREQ_OPEN)),
                    "oxen_ioreq_range" => (range_size, ("OXEN_IOCTL_IOREQ_RANGE", IOCTL_IOREQ_RANGE)),
                    "oxen_ioreq_done" => (done_size, ("OXEN_IOCTL_IOREQ_DONE", IOCTL_IOREQ_DONE)),
                    "oxen_foreign_open" => (open_size, ("OXEN_IOCTL_FOREIGN_OPEN", IOCTL_FOREIGN_OPEN)),
                    other => panic!("{name}: an ioctl on struct {other} is not checked here"),
                };
                // <asm-generic/ioctl.h>: dir (read|write = 3) << 30 | size << 16 | type << 8 | nr.
                let value = (3 << 30) | ((size as u64) << 16) | (u64::from(*ty) << 8) | nr;
                assert_eq!((name.as_str(), value), expected);
                continue;
            }
            let want = expected.iter().find(|(n, _)| n == name).unwrap_or_else(|| {
                panic!("{name} in oxen_abi.h is not checked here: add it to this test")
            });
            assert_eq!(def, &want.1, "{name}");
        }
        for (name, _) in &expected {
            assert!(
                defines.iter().any(|(n, _)| n == name),
                "oxen_abi.h lacks {name}"
            );
        }
        assert!(defines.iter().any(|(n, _)| n == "OXEN_IOCTL_HYPERCALL"));
        assert!(defines.iter().any(|(n, _)| n == "OXEN_IOCTL_EVENT_WAIT"));
    }
}
