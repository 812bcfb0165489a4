//! The commands end to end, against the in-memory hypervisor (`fake.rs`):
//! what they print, what they call, what they leave behind.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser as _;
use oxen_abi::{domctl, Action, DomainState, Error, DOMCTL_BUF_MAX};

use crate::app::{self, Env, Failure};
use crate::dm;
use crate::cli::Cli;
use crate::fake::Fake;
use crate::hv::Hypervisor;
use crate::term::{Input, Mode};

/// What one `oxl` run printed and returned.
struct Run {
    out: String,
    note: String,
    result: Result<(), Failure>,
}

impl Run {
    fn ok(&self) -> &str {
        if let Err(e) = &self.result {
            panic!("oxl failed: {e}\nout: {}\nnote: {}", self.out, self.note);
        }
        &self.out
    }

    fn err(&self) -> String {
        match &self.result {
            Err(e) => e.0.clone(),
            Ok(()) => panic!("oxl succeeded; out: {}", self.out),
        }
    }
}

/// Keys typed during `console`/`top`: called before each wait with the wait's
/// number (0, 1, ...), may change the fake, returns what was typed. As a
/// pipe (`tty` false) it ends after `ends_after` waits.
///
/// `console`'s waits (`wait_event`) take the fake's time: each runs its whole
/// timeout on the fake's clock, then brings what `f` typed (nothing, and `f`
/// is not called, when the caller does not read).
struct Script<F: FnMut(u32) -> Vec<u8>> {
    n: u32,
    f: F,
    tty: bool,
    ends_after: Option<u32>,
    clock: Fake,
}

impl<F: FnMut(u32) -> Vec<u8>> Input for Script<F> {
    fn wait(&mut self, _: Duration) -> io::Result<Vec<u8>> {
        self.n += 1;
        Ok((self.f)(self.n - 1))
    }

    fn wait_event(&mut self, timeout: Duration, read: bool, _: Option<std::os::fd::RawFd>) -> io::Result<Vec<u8>> {
        self.clock.sleep(timeout);
        if read {
            self.wait(timeout)
        } else {
            Ok(Vec::new())
        }
    }

    fn ended(&self) -> bool {
        self.ends_after.is_some_and(|n| self.n >= n)
    }

    fn is_terminal(&self) -> bool {
        self.tty
    }
}

/// The tests' device-model launcher: records the request among the fake's
/// calls ("DM domid name --disk ARG..."), then fails if `dm_fails` says so.
fn fake_launch(fake: &Fake) -> impl FnMut(&dm::Request) -> Result<dm::Started, String> {
    let fake = fake.clone();
    move |r| {
        let mut s = fake.state();
        let disks: Vec<String> = r.disks.iter().map(|(d, a)| format!(" --disk {}", dm::disk_arg(d, a))).collect();
        let vifs: Vec<String> = r.vifs.iter().map(|v| format!(" --vif {}", dm::vif_arg(v))).collect();
        s.calls.push(format!("DM {} {}{}{}", r.domid, r.name, disks.concat(), vifs.concat()));
        match s.dm_fails.take() {
            Some(e) => Err(e),
            None => Ok(dm::Started { pid: 4242, log: format!("/var/log/oxen/{}.dm.log", r.name).into() }),
        }
    }
}

/// dom0's /sys/class/net in the tests: a bridge xenbr0 and eth0.
fn fake_sys_net() -> PathBuf {
    let net = std::env::temp_dir().join(format!("oxl-tests-net-{}", std::process::id()));
    std::fs::create_dir_all(net.join("xenbr0/bridge")).unwrap();
    std::fs::create_dir_all(net.join("eth0")).unwrap();
    net
}

fn oxl_keys(fake: &Fake, args: &[&str], keys: impl FnMut(u32) -> Vec<u8> + Clone + 'static) -> Run {
    oxl_input(fake, args, keys, true, None)
}

/// `oxl_keys` with standard input a pipe that ends after `ends_after` reads.
fn oxl_pipe(
    fake: &Fake,
    args: &[&str],
    keys: impl FnMut(u32) -> Vec<u8> + Clone + 'static,
    ends_after: u32,
) -> Run {
    oxl_input(fake, args, keys, false, Some(ends_after))
}

fn oxl_input(
    fake: &Fake,
    args: &[&str],
    keys: impl FnMut(u32) -> Vec<u8> + Clone + 'static,
    tty: bool,
    ends_after: Option<u32>,
) -> Run {
    let cli = Cli::try_parse_from(std::iter::once("oxl").chain(args.iter().copied()))
        .expect("valid usage");
    let (mut out, mut note) = (Vec::new(), Vec::new());
    let f = fake.clone();
    let mut open = move || Ok(Box::new(f.clone()) as Box<dyn Hypervisor>);
    let clock = fake.clone();
    let mut keyboard = move |_: Mode| {
        Box::new(Script {
            n: 0,
            f: keys.clone(),
            tty,
            ends_after,
            clock: clock.clone(),
        }) as Box<dyn Input>
    };
    let result = app::run(
        &cli.cmd,
        &mut Env {
            out: &mut out,
            note: &mut note,
            open: &mut open,
            keyboard: &mut keyboard,
            state_dir: None,
            launch: &mut fake_launch(fake),
            sys_net: &fake_sys_net(),
        },
    );
    Run {
        out: String::from_utf8_lossy(&out).into_owned(),
        note: String::from_utf8_lossy(&note).into_owned(),
        result,
    }
}

fn oxl(fake: &Fake, args: &[&str]) -> Run {
    oxl_keys(fake, args, |_| panic!("this command reads no keys"))
}

/// A fresh directory for one test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("oxl-test-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An ELF64 x86-64 header followed by a byte pattern, `size` bytes in all.
fn elf(size: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    v[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
    v[18..20].copy_from_slice(&62u16.to_le_bytes());
    v
}

/// Writes vm.cfg (with `kernel = "k.elf"` prepended to `cfg`) and a kernel of
/// `kernel_size` bytes; returns the config's path.
fn setup(test: &str, cfg: &str, kernel_size: usize) -> PathBuf {
    let dir = scratch(test);
    std::fs::write(dir.join("k.elf"), elf(kernel_size)).unwrap();
    let path = dir.join("vm.cfg");
    std::fs::write(&path, format!("kernel = \"k.elf\"\n{cfg}")).unwrap();
    path
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn create_loads_builds_and_starts() {
    let cfg = setup(
        "create",
        "name = \"web\"\nmemory = 128\nvcpus = 2\nramdisk = \"r.img\"\nextra = \"console=hvc0\"\non_crash = \"preserve\"\n",
        150_000,
    );
    let ramdisk: Vec<u8> = (0..70_000u32).map(|i| (i * 7) as u8).collect();
    std::fs::write(cfg.with_file_name("r.img"), &ramdisk).unwrap();
    let fake = Fake::new();
    let run = oxl(&fake, &["create", p(&cfg)]);
    assert_eq!(run.ok(), "Created domain web (id 1)\n");
    assert_eq!(
        fake.actions(),
        [
            "CREATE web 128M 2cpu",
            "LOAD 1 kernel @0 +65536/150000",
            "LOAD 1 kernel @65536 +65536/150000",
            "LOAD 1 kernel @131072 +18928/150000",
            "LOAD 1 ramdisk @0 +65536/70000",
            "LOAD 1 ramdisk @65536 +4464/70000",
            "BUILD 1 \"console=hvc0\"",
            "UNPAUSE 1",
        ]
    );
    let s = fake.state();
    let d = &s.doms[&1];
    assert_eq!(d.kernel.bytes, elf(150_000));
    assert_eq!(d.ramdisk.bytes, ramdisk);
    assert_eq!(d.info.state, DomainState::Running as u32);
    assert_eq!(
        d.actions,
        [Action::Destroy, Action::Restart, Action::Preserve]
    );
    assert_eq!(s.free_kib, 128 * 1024);
}

#[test]
fn create_paused_does_not_start() {
    let cfg = setup("paused", "name = \"web\"\n", 100);
    let fake = Fake::new();
    let run = oxl(&fake, &["create", "-p", p(&cfg)]);
    assert_eq!(
        run.ok(),
        "Created domain web (id 1)\nIt is paused: 'oxl unpause web' starts it.\n"
    );
    assert_eq!(fake.actions().last().unwrap(), "BUILD 1 \"\"");
    assert_eq!(
        fake.state().doms[&1].info.state,
        DomainState::Created as u32
    );
    oxl(&fake, &["unpause", "web"]).ok();
    assert_eq!(
        fake.state().doms[&1].info.state,
        DomainState::Running as u32
    );
}

#[test]
fn create_follows_partial_loads() {
    let cfg = setup("partial", "name = \"web\"\n", 70_000);
    let fake = Fake::new();
    fake.state().max_take = 30_000;
    oxl(&fake, &["create", p(&cfg)]).ok();
    let loads: Vec<String> = fake
        .actions()
        .into_iter()
        .filter(|a| a.starts_with("LOAD"))
        .collect();
    assert_eq!(
        loads,
        [
            "LOAD 1 kernel @0 +65536/70000",
            "LOAD 1 kernel @30000 +35536/70000",
            "LOAD 1 kernel @60000 +5536/70000",
            "LOAD 1 kernel @65536 +4464/70000",
        ]
    );
    assert_eq!(fake.state().doms[&1].kernel.bytes, elf(70_000));
}

/// After a failed create: only dom0, all memory back, and the domain was destroyed.
fn assert_rolled_back(fake: &Fake) {
    let s = fake.state();
    assert_eq!(s.doms.keys().copied().collect::<Vec<_>>(), [0]);
    assert_eq!(s.free_kib, 256 * 1024);
    assert!(s.calls.iter().any(|c| c == "DESTROY 1"), "{:?}", s.calls);
}

#[test]
fn create_rolls_back_a_failed_load() {
    let cfg = setup(
        "rollback-load",
        "name = \"web\"\nramdisk = \"k.elf\"\n",
        100_000,
    );
    let fake = Fake::new();
    fake.state().fail.push((domctl::LOAD_IMAGE, Error::Inval));
    let err = oxl(&fake, &["create", p(&cfg)]).err();
    assert_eq!(
        err,
        format!(
            "create: loading kernel {} into domain 'web' (id 1): invalid argument; \
             the domain was destroyed again, nothing is left behind",
            cfg.with_file_name("k.elf").display()
        )
    );
    assert_rolled_back(&fake);
}

#[test]
fn create_rolls_back_a_failed_build() {
    let cfg = setup("rollback-build", "name = \"web\"\n", 1000);
    let fake = Fake::new();
    fake.state().fail.push((domctl::BUILD, Error::NoExec));
    let err = oxl(&fake, &["create", p(&cfg)]).err();
    assert_eq!(
        err,
        format!(
            "create: kernel {}: not a kernel Oxen can boot (an ELF64 x86-64 executable, a Linux bzImage or a Multiboot image); \
             the domain was destroyed again, nothing is left behind",
            cfg.with_file_name("k.elf").display()
        )
    );
    assert_rolled_back(&fake);
}

#[test]
fn create_rolls_back_a_failed_start() {
    let cfg = setup("rollback-start", "name = \"web\"\n", 1000);
    let fake = Fake::new();
    fake.state().fail.push((domctl::UNPAUSE, Error::NoSpc));
    let err = oxl(&fake, &["create", p(&cfg)]).err();
    assert_eq!(
        err,
        "create: cannot start domain 'web' (id 1): too many domains or vCPUs; \
         the domain was destroyed again, nothing is left behind"
    );
    assert_rolled_back(&fake);
}

#[test]
fn create_says_when_the_rollback_fails() {
    let cfg = setup("rollback-fails", "name = \"web\"\n", 1000);
    let fake = Fake::new();
    fake.state().fail.extend([
        (domctl::BUILD, Error::Inval),
        (domctl::DESTROY, Error::Busy),
    ]);
    let err = oxl(&fake, &["create", p(&cfg)]).err();
    assert_eq!(
        err,
        "create: cannot build domain 'web' (id 1): invalid argument; destroying the half-built domain failed too \
         (cannot destroy domain 'web' (id 1): not possible in the domain's current state (it is created)): \
         run 'oxl destroy 1'"
    );
    assert!(fake.state().doms.contains_key(&1));

    // A domain that never finishes dying is reported too, after the bounded wait.
    let fake = Fake::new();
    fake.state().dying_for = Duration::from_secs(3600);
    fake.state().fail.push((domctl::BUILD, Error::Inval));
    let err = oxl(&fake, &["create", p(&cfg)]).err();
    assert!(
        err.contains("is still dying 10 s after being destroyed"),
        "{err}"
    );
    assert!(err.ends_with("run 'oxl destroy 1'"), "{err}");
}

#[test]
fn devices_only_declared_with_declare_devices() {
    let cfg = setup(
        "declare",
        "name = \"web\"\ndisk = ['/dev/null,raw,xvda,rw']\nvif = ['bridge=xenbr0']\n",
        100,
    );
    let fake = Fake::new();
    // Without --declare-devices /dev/null is not a disk image.
    let err = oxl(&fake, &["create", p(&cfg)]).err();
    assert!(err.contains("vm.cfg:3: disk 1 (xvda): /dev/null is not a block device"), "{err}");
    assert!(fake.actions().is_empty(), "nothing created: {:?}", fake.actions());

    let run = oxl(&fake, &["create", "--declare-devices", p(&cfg)]);
    assert_eq!(
        run.ok(),
        "Created domain web (id 1)\n\
         xvda: virtio-mmio at 0xfeb00000 (4096 bytes), GSI 16 (declared only: no device model serves it)\n\
         vif0: virtio-mmio at 0xfeb01000 (4096 bytes), GSI 17 (declared only: no device model serves it)\n"
    );
    let actions = fake.actions();
    let at = |what: &str| actions.iter().position(|a| a.starts_with(what)).unwrap();
    assert!(at("LOAD") < at("DEVICE_ADD") && at("DEVICE_ADD") < at("BUILD"), "declared before BUILD: {actions:?}");
    assert_eq!(actions.iter().filter(|a| a.starts_with("DEVICE_ADD 1 kind 1")).count(), 2);

    // Only its devices' lines, only while it runs, never dom0's.
    oxl(&fake, &["irq-line", "web", "17", "1"]).ok();
    assert_eq!(fake.state().doms[&1].lines, [(16, false), (17, true)]);
    let err = oxl(&fake, &["irq-line", "web", "4", "1"]).err();
    assert_eq!(err, "irq-line: GSI 4 is not the line of a device of domain 'web' (id 1) (see what 'oxl create --declare-devices' printed)");
    assert!(oxl(&fake, &["irq-line", "nope", "16", "1"]).err().contains("no domain 'nope'"));
    assert!(oxl(&fake, &["irq-line", "0", "16", "1"]).err().contains("it is dom0"));

    // A hypervisor that places no more: the domain is rolled back.
    fake.state().fail.push((domctl::DEVICE_ADD, Error::NoSpc));
    let cfg = setup("declare-full", "name = \"db\"\ndisk = ['/dev/null,raw,xvda,rw']\n", 100);
    let err = oxl(&fake, &["create", "--declare-devices", p(&cfg)]).err();
    assert!(err.starts_with("create: xvda: domain 'db' (id 2) can have at most 8 devices"), "{err}");
    assert!(err.contains("the domain was destroyed again"), "{err}");
}

#[test]
fn a_domain_with_disks_gets_its_device_model_before_it_starts() {
    let cfg = setup("disks", "name = \"web\"\ndisk = ['root.img,raw,xvda,rw', 'format=raw, vdev=xvdb, access=ro, target=data.img']\n", 100);
    for img in ["root.img", "data.img"] {
        std::fs::File::create(cfg.with_file_name(img)).unwrap().set_len(1 << 20).unwrap();
    }
    let dir = cfg.parent().unwrap().display().to_string();
    let fake = Fake::new();
    let run = oxl(&fake, &["create", p(&cfg)]);
    assert_eq!(
        run.ok(),
        format!(
            "Created domain web (id 1)\n\
             xvda: virtio-mmio disk at 0xfeb00000, GSI 16, read-write {dir}/root.img, served by oxen-dm (pid 4242, log /var/log/oxen/web.dm.log)\n\
             xvdb: virtio-mmio disk at 0xfeb01000, GSI 17, read-only {dir}/data.img, served by oxen-dm (pid 4242, log /var/log/oxen/web.dm.log)\n"
        )
    );
    let actions = fake.actions();
    let at = |what: &str| actions.iter().position(|a| a.starts_with(what)).unwrap();
    assert!(at("DEVICE_ADD") < at("BUILD") && at("BUILD") < at("DM") && at("DM") < at("UNPAUSE"), "{actions:?}");
    assert_eq!(
        actions[at("DM")],
        format!(
            "DM 1 web --disk base=0xfeb00000,gsi=16,access=rw,vdev=xvda,target={dir}/root.img \
             --disk base=0xfeb01000,gsi=17,access=ro,vdev=xvdb,target={dir}/data.img"
        )
    );

    // A device model that fails: the domain goes again, with the reason.
    fake.state().dm_fails = Some("the device model for domain db (d2) failed before it was ready (exit status: 1): no".into());
    let db = setup("disks-fail", "name = \"db\"\ndisk = ['db.img,raw,xvda,rw']\n", 100);
    std::fs::File::create(db.with_file_name("db.img")).unwrap().set_len(4096).unwrap();
    let err = oxl(&fake, &["create", p(&db)]).err();
    assert!(err.starts_with("create: the device model for domain db (d2) failed before it was ready"), "{err}");
    assert!(err.contains("the domain was destroyed again, nothing is left behind"), "{err}");
    assert!(!fake.actions().iter().any(|a| a == "UNPAUSE 2"), "{:?}", fake.actions());

    // A missing image is refused before anything is made, with its line.
    let gone = setup("disks-missing", "name = \"x\"\n\ndisk = ['gone.img,raw,xvda,rw']\n", 100);
    let before = fake.actions().len();
    let err = oxl(&fake, &["create", p(&gone)]).err();
    assert!(err.contains("vm.cfg:4: disk 1 (xvda): ") && err.ends_with("gone.img: No such file or directory"), "{err}");
    assert_eq!(fake.actions().len(), before);
}

#[test]
fn a_domain_with_a_vif_gets_a_tap_on_its_bridge() {
    let cfg = setup("vif", "name = \"web\"\nvif = ['mac=00:16:3e:01:02:03,bridge=xenbr0']\n", 100);
    let fake = Fake::new();
    let run = oxl(&fake, &["create", p(&cfg)]);
    assert_eq!(
        run.ok(),
        "Created domain web (id 1)\n\
         vif1.0: virtio-mmio NIC at 0xfeb00000, GSI 16, MAC 00:16:3e:01:02:03, tap vif1.0 on bridge xenbr0, served by oxen-dm (pid 4242)\n"
    );
    let actions = fake.actions();
    assert!(
        actions.contains(&"DM 1 web --vif base=0xfeb00000,gsi=16,mac=00:16:3e:01:02:03,bridge=xenbr0,vifname=vif1.0".to_string()),
        "{actions:?}"
    );
    // A bridge dom0 does not have: refused with the line, nothing made.
    let bad = setup("vif-bad", "name = \"db\"\n\nvif = ['bridge=xenbr9']\n", 100);
    let before = fake.actions().len();
    let err = oxl(&fake, &["create", p(&bad)]).err();
    assert!(err.contains("vm.cfg:4: vif 1: there is no bridge 'xenbr9' in dom0"), "{err}");
    assert_eq!(fake.actions().len(), before);
}

#[test]
fn create_errors_before_anything_is_created() {
    let fake = Fake::new();
    fake.add("web", DomainState::Running);
    let cfg = setup("exists", "name = \"web\"\n", 100);
    assert_eq!(
        oxl(&fake, &["create", p(&cfg)]).err(),
        "create: a domain named 'web' already exists (see 'oxl list'): change 'name', or 'oxl destroy web' first"
    );
    let cfg = setup("nomem", "name = \"big\"\nmemory = 300\n", 100);
    assert_eq!(
        oxl(&fake, &["create", p(&cfg)]).err(),
        "create: domain 'big' needs 300 MiB but the hypervisor has 192 MiB free (see 'oxl info'): \
         lower 'memory' or destroy a domain"
    );
    assert!(!fake
        .state()
        .calls
        .iter()
        .any(|c| c.starts_with("LOAD") || c.starts_with("DESTROY")));
    assert_eq!(fake.state().doms.len(), 2);
    // -ENOMEM with the RAM free: the hypervisor's heap is what ran out.
    fake.state().fail.push((domctl::CREATE, Error::NoMem));
    let cfg = setup("heap", "name = \"small\"\nmemory = 4\n", 100);
    let err = oxl(&fake, &["create", p(&cfg)]).err();
    assert!(err.contains("no room for another domain with 2 there (its heap for domain metadata, or free memory"), "{err}");
    assert!(err.ends_with("destroy a domain, or give the host more RAM (the heap grows with it)"), "{err}");
}

#[test]
fn create_checks_files_before_opening_the_device() {
    let fake = Fake::new();
    let no_device = |args: &[&str]| {
        let cli = Cli::try_parse_from(std::iter::once("oxl").chain(args.iter().copied())).unwrap();
        let (mut out, mut note) = (Vec::new(), Vec::new());
        let mut open = || -> Result<Box<dyn Hypervisor>, String> { panic!("opened the device") };
        let mut keyboard = |_: Mode| -> Box<dyn Input> { panic!("took the keyboard") };
        app::run(
            &cli.cmd,
            &mut Env {
                out: &mut out,
                note: &mut note,
                open: &mut open,
                keyboard: &mut keyboard,
                state_dir: None,
                launch: &mut |_: &dm::Request| panic!("started a device model"),
                sys_net: Path::new("/nonexistent"),
            },
        )
        .unwrap_err()
        .0
    };
    let cfg = setup("checks", "name = \"web\"\nmemroy = 64\n", 100);
    assert_eq!(
        no_device(&["create", p(&cfg)]),
        format!(
            "create: {}:3: unknown key 'memroy' (did you mean 'memory'?)",
            cfg.display()
        )
    );
    let cfg = setup("checks", "name = \"web\"\nramdisk = \"nope.img\"\n", 100);
    assert_eq!(
        no_device(&["create", p(&cfg)]),
        format!(
            "create: {}: ramdisk {}: No such file or directory",
            cfg.display(),
            cfg.with_file_name("nope.img").display()
        )
    );
    let cfg = setup("checks", "name = \"web\"\n", 100);
    // (A bzImage passes these checks: `create::tests::kernel_headers`.)
    std::fs::write(cfg.with_file_name("k.elf"), vec![0x5au8; 4096]).unwrap();
    assert!(no_device(&["create", p(&cfg)]).ends_with(
        "is neither an ELF file nor a Linux bzImage; Oxen boots ELF64 x86-64 kernels and Linux bzImages (vmlinuz)"
    ));
    std::fs::write(cfg.with_file_name("k.elf"), b"").unwrap();
    assert!(no_device(&["create", p(&cfg)]).ends_with("k.elf is empty"));
    // An image over IMAGE_MAX (sparse: no disk space used).
    let f = std::fs::File::create(cfg.with_file_name("k.elf")).unwrap();
    f.set_len(oxen_abi::IMAGE_MAX + 1).unwrap();
    assert!(no_device(&["create", p(&cfg)])
        .ends_with("is 65 MiB; the hypervisor takes images of at most 64 MiB"));
    assert_eq!(
        no_device(&["create", "/nonexistent/vm.cfg"]),
        "create: cannot read the config file /nonexistent/vm.cfg: No such file or directory"
    );
    assert!(fake.state().calls.is_empty());
}

#[test]
fn device_and_abi_problems_are_not_blamed_on_the_command() {
    let cli = Cli::try_parse_from(["oxl", "list"]).unwrap();
    let (mut out, mut note) = (Vec::new(), Vec::new());
    let mut open = || -> Result<Box<dyn Hypervisor>, String> {
        Err("cannot open /dev/oxen: Permission denied (run as root)".into())
    };
    let mut keyboard = |_: Mode| -> Box<dyn Input> { unreachable!() };
    let r = app::run(
        &cli.cmd,
        &mut Env {
            out: &mut out,
            note: &mut note,
            open: &mut open,
            keyboard: &mut keyboard,
            state_dir: None,
            launch: &mut |_: &dm::Request| unreachable!(),
            sys_net: Path::new("/nonexistent"),
        },
    );
    assert_eq!(
        r.unwrap_err().0,
        "cannot open /dev/oxen: Permission denied (run as root)"
    );

    let fake = Fake::new();
    fake.state().version = 0x0002_0000;
    assert_eq!(
        oxl(&fake, &["list"]).err(),
        format!(
            "the hypervisor speaks ABI 2.0, this oxl ABI {}: use the oxl built with this hypervisor",
            crate::show::abi(oxen_abi::ABI_VERSION)
        )
    );
    // A newer minor is fine.
    fake.state().version = oxen_abi::ABI_VERSION + 5;
    oxl(&fake, &["list"]).ok();
}

#[test]
fn a_hypervisor_without_domctl_says_so() {
    let fake = Fake::new();
    fake.state().fail.push((domctl::LIST, Error::NoSys));
    assert_eq!(
        oxl(&fake, &["list"]).err(),
        "list: cannot list the domains: no such hypercall \
         (the hypervisor does not implement this call: it is older than this oxl, see 'oxl info')"
    );
}

#[test]
fn list_prints_a_table_or_json() {
    let fake = Fake::new();
    let web = fake.add("web", DomainState::Paused);
    fake.state().doms.get_mut(&web).unwrap().info.cpu_time_ns = 2_500_000_000;
    assert_eq!(
        oxl(&fake, &["list"]).ok(),
        "\
Name        ID Mem(MiB) VCPUs         State    Time(s)
Domain-0     0      256     1       running        0.0
web          1       64     1        paused        2.5
"
    );
    assert_eq!(
        oxl(&fake, &["list", "web"]).ok(),
        "Name    ID Mem(MiB) VCPUs         State    Time(s)\nweb      1       64     1        paused        2.5\n"
    );
    let json = oxl(&fake, &["list", "--json", "1", "0"]).ok().to_owned();
    assert!(
        json.starts_with("[\n  {\"id\": 1, \"name\": \"web\", \"state\": \"paused\""),
        "{json}"
    );
    assert!(
        json.contains("},\n  {\"id\": 0, \"name\": \"Domain-0\""),
        "{json}"
    );
    assert_eq!(
        oxl(&fake, &["list", "web", "db"]).err(),
        "list: no domain 'db' (see 'oxl list')"
    );
}

#[test]
fn list_asks_again_when_there_are_many_domains() {
    let fake = Fake::new();
    fake.state().free_kib = 64 << 20;
    for i in 0..40 {
        fake.add(&format!("d{i}"), DomainState::Running);
    }
    let out = oxl(&fake, &["list"]).ok().to_owned();
    assert_eq!(out.lines().count(), 42);
    assert!(out.lines().last().unwrap().starts_with("d39 "), "{out}");
    assert_eq!(
        fake.state().calls.iter().filter(|c| *c == "LIST").count(),
        2
    );
}

#[test]
fn info_describes_the_host() {
    let fake = Fake::new();
    fake.add("web", DomainState::Running);
    let out = oxl(&fake, &["info"]).ok().to_owned();
    assert!(out.contains("virt_caps              : AMD-V\n"), "{out}");
    assert!(out.contains("nr_cpus                : 2\n"), "{out}");
    assert!(out.contains("tsc_khz                : 2000000\n"), "{out}");
    assert!(out.contains("total_memory           : 512\nfree_memory            : 192\nnr_domains             : 2\n"), "{out}");
    let json = oxl(&fake, &["info", "--json"]).ok().to_owned();
    assert!(
        json.contains("\"total_kib\": 524288, \"free_kib\": 196608, \"domains\": 2}"),
        "{json}"
    );
}

#[test]
fn pause_and_unpause() {
    let fake = Fake::new();
    let web = fake.add("web", DomainState::Running);
    assert_eq!(oxl(&fake, &["pause", "web"]).ok(), "");
    assert_eq!(
        fake.state().doms[&web].info.state,
        DomainState::Paused as u32
    );
    assert_eq!(
        oxl(&fake, &["pause", "1"]).err(),
        "pause: cannot pause domain 'web' (id 1): not possible in the domain's current state (it is paused)"
    );
    oxl(&fake, &["unpause", "1"]).ok();
    assert_eq!(
        fake.state().doms[&web].info.state,
        DomainState::Running as u32
    );
    assert_eq!(
        oxl(&fake, &["pause", "db"]).err(),
        "pause: no domain 'db' (see 'oxl list')"
    );
    assert_eq!(
        oxl(&fake, &["unpause", "7"]).err(),
        "unpause: no domain with id 7 (see 'oxl list')"
    );
    assert_eq!(
        oxl(&fake, &["pause", "Domain-0"]).err(),
        "pause: refusing to pause domain 'Domain-0' (id 0): it is dom0, where oxl runs"
    );
    assert_eq!(fake.actions(), ["PAUSE 1", "PAUSE 1", "UNPAUSE 1"]);
}

#[test]
fn destroy_waits_for_the_memory() {
    let fake = Fake::new();
    fake.add("web", DomainState::Running);
    fake.state().dying_for = Duration::from_secs(2);
    assert_eq!(oxl(&fake, &["destroy", "web"]).ok(), "");
    let s = fake.state();
    assert!(!s.doms.contains_key(&1));
    assert_eq!(s.free_kib, 256 * 1024);
    assert!(
        s.now >= Duration::from_secs(2) && s.now < Duration::from_secs(3),
        "{:?}",
        s.now
    );
    drop(s);
    assert_eq!(
        oxl(&fake, &["destroy", "0"]).err(),
        "destroy: refusing to destroy domain 'Domain-0' (id 0): it is dom0, where oxl runs"
    );
}

#[test]
fn destroy_gives_up_after_ten_seconds() {
    let fake = Fake::new();
    fake.add("web", DomainState::Running);
    fake.state().dying_for = Duration::from_secs(3600);
    assert_eq!(
        oxl(&fake, &["destroy", "web"]).err(),
        "destroy: domain 'web' (id 1) is still dying 10 s after being destroyed: its memory is not free yet \
         (see 'oxl list'; the hypervisor log, 'oxl dmesg', may say why)"
    );
    let now = fake.state().now;
    assert!(
        now >= Duration::from_secs(10) && now < Duration::from_secs(11),
        "{now:?}"
    );
}

#[test]
fn shutdown_and_reboot() {
    let fake = Fake::new();
    let web = fake.add("web", DomainState::Running);
    // Without -w it returns at once, the domain still shutting down.
    assert_eq!(oxl(&fake, &["shutdown", "web"]).ok(), "");
    assert_eq!(
        fake.state().doms[&web].info.state,
        DomainState::ShuttingDown as u32
    );
    assert_eq!(fake.actions(), ["SHUTDOWN 1 0"]);

    let db = fake.add("db", DomainState::Running);
    let run = oxl(&fake, &["shutdown", "-w", "db"]);
    assert_eq!(run.ok(), "Domain 'db' (id 2) has shut down and is gone.\n");
    assert_eq!(run.note, "Waiting for domain 'db' (id 2) to shut down...\n");
    assert!(!fake.state().doms.contains_key(&db));

    let app = fake.add("app", DomainState::Running);
    assert_eq!(
        oxl(&fake, &["reboot", "-w", "app"]).ok(),
        "Domain 'app' (id 3) has restarted.\n"
    );
    assert_eq!(fake.state().doms[&app].info.restarts, 1);

    fake.state().doms.get_mut(&app).unwrap().actions[0] = Action::Preserve;
    assert_eq!(
        oxl(&fake, &["shutdown", "-w", "app"]).ok(),
        "Domain 'app' (id 3) has shut down and is kept (preserve): 'oxl destroy app' frees it.\n"
    );
    assert_eq!(
        oxl(&fake, &["reboot", "app"]).err(),
        "reboot: cannot reboot domain 'app' (id 3): not possible in the domain's current state (it is shutdown)"
    );
    assert_eq!(
        oxl(&fake, &["shutdown", "0"]).err(),
        "shutdown: refusing to shut down domain 'Domain-0' (id 0): it is dom0, where oxl runs"
    );
}

#[test]
fn shutdown_wait_is_bounded() {
    let fake = Fake::new();
    fake.add("web", DomainState::Running);
    fake.state().shutdown_delay = Duration::from_secs(3600);
    assert_eq!(
        oxl(&fake, &["shutdown", "-w", "web"]).err(),
        "shutdown: domain 'web' (id 1) is still shutting-down after 120 s ('oxl destroy web' ends it at once)"
    );
}

#[test]
fn console_dump_prints_the_ring_and_exits() {
    let fake = Fake::new();
    let web = fake.add("web", DomainState::Running);
    fake.state().doms.get_mut(&web).unwrap().console = b"tick 1\ntick 2\n".to_vec();
    let run = oxl(&fake, &["console", "--dump", "web"]);
    assert_eq!(run.ok(), "tick 1\ntick 2\n");
    assert_eq!(
        oxl(&fake, &["console", "-d", "nosuch"]).err(),
        "console: no domain 'nosuch' (see 'oxl list')"
    );
}

#[test]
fn console_shows_output_and_sends_keys_until_detached() {
    let fake = Fake::new();
    let web = fake.add("web", DomainState::Running);
    fake.state().doms.get_mut(&web).unwrap().console = b"boot\r\n".to_vec();
    let f = fake.clone();
    let run = oxl_keys(&fake, &["console", "web"], move |n| {
        match n {
            0 => f
                .state()
                .doms
                .get_mut(&1)
                .unwrap()
                .console
                .extend_from_slice(b"login: "),
            1 => return b"ls\r".to_vec(),
            // What comes before Ctrl-] in the same read is still sent; after it, not.
            _ => return vec![b'x', crate::ring::DETACH, b'y'],
        }
        Vec::new()
    });
    assert_eq!(run.ok(), "boot\r\nlogin: ");
    assert_eq!(
        run.note,
        "Console of domain 'web' (id 1). Ctrl-] detaches.\n\nDetached from domain 'web' (id 1).\n"
    );
    assert_eq!(fake.state().doms[&web].input, b"ls\rx");
    let calls: Vec<String> = fake
        .state()
        .calls
        .iter()
        .filter(|c| c.starts_with("CONSOLE") || c.starts_with("INPUT"))
        .cloned()
        .collect();
    assert_eq!(
        calls,
        [
            "CONSOLE 1 @0",
            "CONSOLE 1 @6",
            "CONSOLE 1 @13",
            "INPUT 1 \"ls\\r\" took 3",
            "INPUT 1 \"x\" took 1"
        ]
    );
}

#[test]
fn console_with_the_event_line_sleeps_until_told_and_retries_refused_input() {
    let fake = Fake::new();
    fake.add("web", DomainState::Running);
    fake.state().event_line = true;
    fake.state().input_room = 2;
    let f = fake.clone();
    // Idle: each wait runs its whole timeout on the fake's clock.
    let run = oxl_keys(&fake, &["console", "web"], move |n| match n {
        0 | 1 => Vec::new(),
        2 => b"abc".to_vec(),
        3 | 4 => {
            // The guest reads its queue after the first retry.
            if n == 4 {
                f.state().doms.get_mut(&1).unwrap().input.clear();
            }
            Vec::new()
        }
        _ => vec![crate::ring::DETACH],
    });
    run.ok();
    // Three idle waits of 1 s (the third brings "abc"; the queue takes 2),
    // then 50 ms retries until the rest is taken, then 1 s again.
    let waits = crate::ring::CONSOLE_IDLE_LOOK * 3 + crate::ring::INPUT_RETRY * 2 + crate::ring::CONSOLE_IDLE_LOOK;
    assert_eq!(fake.state().now, waits);
    assert_eq!(fake.state().doms[&1].input, b"c");
    // Subscribed (again) before every look at the ring.
    let calls = fake.state().calls.clone();
    let looks: Vec<&String> = calls.iter().filter(|c| c.starts_with("CONSOLE") || c.starts_with("EVENTS")).collect();
    assert!(looks.chunks(2).all(|p| p[0] == "EVENTS console" && p[1].starts_with("CONSOLE")), "{looks:?}");
}

#[test]
fn console_input_waits_for_room_in_the_domains_queue() {
    let fake = Fake::new();
    fake.add("web", DomainState::Running);
    fake.state().input_room = 4;
    let f = fake.clone();
    // The guest reads its queue (and answers in capitals) between oxl's looks.
    let run = oxl_keys(&fake, &["console", "web"], move |n| {
        let mut s = f.state();
        let d = s.doms.get_mut(&1).unwrap();
        let got: Vec<u8> = d.input.drain(..).collect();
        d.console.extend(got.to_ascii_uppercase());
        match n {
            0 => b"hello oxen\r".to_vec(),
            1..=5 => Vec::new(),
            _ => vec![crate::ring::DETACH],
        }
    });
    assert_eq!(run.ok(), "HELLO OXEN\r");
    let inputs: Vec<String> = fake
        .state()
        .calls
        .iter()
        .filter(|c| c.starts_with("INPUT"))
        .cloned()
        .collect();
    assert_eq!(
        inputs,
        [
            "INPUT 1 \"hello oxen\\r\" took 4",
            "INPUT 1 \"o oxen\\r\" took 4",
            "INPUT 1 \"en\\r\" took 3"
        ]
    );
}

#[test]
fn console_on_an_older_hypervisor_shows_output_only() {
    let fake = Fake::new();
    let web = fake.add("web", DomainState::Running);
    fake.state().version = 0x0001_0002;
    fake.state().doms.get_mut(&web).unwrap().console = b"tick 1\n".to_vec();
    let run = oxl_keys(&fake, &["console", "web"], |n| match n {
        0 => b"typed".to_vec(),
        _ => vec![crate::ring::DETACH],
    });
    assert_eq!(run.ok(), "tick 1\n");
    assert!(
        run.note.starts_with(
            "Console of domain 'web' (id 1), output only: console input needs ABI 1.3 or later \
             and the hypervisor has 1.2 (boot the hypervisor built with this oxl to type into domains). \
             Ctrl-] detaches.\n"
        ),
        "{}",
        run.note
    );
    assert!(fake.state().calls.iter().all(|c| !c.starts_with("INPUT")));
}

#[test]
fn console_refuses_dom0_and_missing_domains() {
    let fake = Fake::new();
    assert_eq!(
        oxl(&fake, &["console", "0"]).err(),
        "console: domain 'Domain-0' (id 0) is dom0: its console is the serial line this shell runs on \
         ('oxl console' is for domUs, see 'oxl list'; 'oxl dmesg' shows the hypervisor's log)"
    );
    assert_eq!(
        oxl(&fake, &["console", "Domain-0"]).err(),
        oxl(&fake, &["console", "0"]).err()
    );
    assert_eq!(
        oxl(&fake, &["console", "nosuch"]).err(),
        "console: no domain 'nosuch' (see 'oxl list')"
    );
    assert_eq!(
        oxl(&fake, &["console", "7"]).err(),
        "console: no domain with id 7 (see 'oxl list')"
    );
    // dom0's ring may still be dumped.
    assert!(oxl(&fake, &["console", "--dump", "0"]).result.is_ok());
}

#[test]
fn console_tells_when_an_ended_domain_takes_no_input() {
    let fake = Fake::new();
    let web = fake.add("web", DomainState::Shutdown);
    fake.state().doms.get_mut(&web).unwrap().console = b"bye\r\n".to_vec();
    let run = oxl_keys(&fake, &["console", "web"], |n| match n {
        0 => b"ls\r".to_vec(),
        1 => b"more".to_vec(),
        _ => vec![crate::ring::DETACH],
    });
    assert_eq!(
        run.ok(),
        "bye\r\n\r\n[oxl: domain 'web' (id 1) takes no console input any more (it has ended): 3 bytes not sent]\r\n"
    );
    // Told once; nothing reached it.
    assert!(fake.state().doms[&web].input.is_empty());
}

#[test]
fn console_from_a_pipe_sends_it_and_detaches_when_output_goes_quiet() {
    let fake = Fake::new();
    fake.add("web", DomainState::Running);
    let f = fake.clone();
    // The pipe brings two lines in two reads, then ends; the guest answers
    // each line a few looks later, then says nothing.
    let run = oxl_pipe(
        &fake,
        &["console", "web"],
        move |n| {
            let mut s = f.state();
            let d = s.doms.get_mut(&1).unwrap();
            if n == 4 {
                let got: Vec<u8> = d.input.drain(..).collect();
                d.console.extend(got.to_ascii_uppercase());
            }
            match n {
                0 => b"one\n".to_vec(),
                1 => b"two\n".to_vec(),
                _ => Vec::new(),
            }
        },
        2,
    );
    assert_eq!(run.ok(), "ONE\nTWO\n");
    assert!(
        run.note.contains(
            "; standard input is sent to it, and once it ends oxl detaches when the output has been quiet for 1 s (at most 10 s)"
        ),
        "{}",
        run.note
    );
    assert!(
        run.note
            .ends_with("\nInput ended; detached from domain 'web' (id 1).\n"),
        "{}",
        run.note
    );
    // The answer shows at the look after the 5th wait (50 ms each: the fake
    // has no event line, so oxl polls); oxl detaches QUIET later, not sooner.
    assert_eq!(fake.state().now, Duration::from_millis(250) + crate::ring::QUIET);
    let looks = fake
        .state()
        .calls
        .iter()
        .filter(|c| c.starts_with("CONSOLE"))
        .count();
    assert_eq!(looks, 6 + 20, "a look every 50 ms");
}

#[test]
fn console_from_a_pipe_stops_reading_it_at_ctrl_bracket() {
    let fake = Fake::new();
    let web = fake.add("web", DomainState::Running);
    // What follows Ctrl-] is not sent, and the pipe is not read again.
    let run = oxl_pipe(
        &fake,
        &["console", "web"],
        |n| match n {
            0 => vec![b'a', crate::ring::DETACH, b'b'],
            _ => panic!("read after Ctrl-]"),
        },
        u32::MAX,
    );
    run.ok();
    assert_eq!(fake.state().doms[&web].input, b"a");
    assert!(run
        .note
        .ends_with("\nInput ended; detached from domain 'web' (id 1).\n"));
    // Ctrl-] came with the first wait's read (50 ms): quiet since then.
    assert_eq!(fake.state().now, Duration::from_millis(50) + crate::ring::QUIET);
}

#[test]
fn console_from_a_pipe_lingers_at_most_10_s_after_it_ends() {
    let fake = Fake::new();
    fake.add("web", DomainState::Running);
    let f = fake.clone();
    // A guest that prints between every two looks never goes quiet.
    let run = oxl_pipe(
        &fake,
        &["console", "web"],
        move |_| {
            f.state().doms.get_mut(&1).unwrap().console.push(b'.');
            Vec::new()
        },
        1,
    );
    run.ok();
    assert!(run
        .note
        .ends_with("\nInput ended; detached from domain 'web' (id 1).\n"));
    // The pipe ended at the first wait (50 ms): LINGER after that.
    assert_eq!(fake.state().now, Duration::from_millis(50) + crate::ring::LINGER);
}

#[test]
fn console_says_what_was_lost_and_when_the_domain_goes() {
    let fake = Fake::new();
    let web = fake.add("web", DomainState::Running);
    fake.state().ring = 8;
    // Older history than the ring keeps is not a loss; falling behind is.
    fake.state().doms.get_mut(&web).unwrap().console = b"0123456789".to_vec();
    let f = fake.clone();
    let run = oxl_keys(&fake, &["console", "web"], move |n| {
        let mut s = f.state();
        if n == 0 {
            s.doms
                .get_mut(&1)
                .unwrap()
                .console
                .extend_from_slice(b"abcdefghijkl");
        } else {
            s.doms.remove(&1);
        }
        Vec::new()
    });
    assert_eq!(
        run.ok(),
        "23456789\r\n[oxl: 4 bytes of console output lost: the ring wrapped before oxl read them]\r\nefghijkl"
    );
    assert!(
        run.note.ends_with("\nDomain 'web' (id 1) is gone.\n"),
        "{}",
        run.note
    );
}

#[test]
fn dmesg_prints_the_whole_log() {
    let fake = Fake::new();
    let log: Vec<u8> = (0..100_000u32)
        .map(|i| b"(oxen) hello\n"[i as usize % 13])
        .collect();
    fake.state().dmesg = log.clone();
    fake.state().ring = 1 << 20;
    assert_eq!(oxl(&fake, &["dmesg"]).ok().as_bytes(), &log[..]);
    assert_eq!(
        fake.actions(),
        ["DMESG @0", &format!("DMESG @{DOMCTL_BUF_MAX}")]
    );
}

#[test]
fn top_batch_frames() {
    let fake = Fake::new();
    fake.add("web", DomainState::Running);
    let out = oxl(&fake, &["top", "-b", "-n", "2", "-d", "2"])
        .ok()
        .to_owned();
    let frames: Vec<&str> = out.split("\n\n").collect();
    assert_eq!(frames.len(), 2, "{out}");
    let header =
        "NAME        ID         STATE   CPU(sec)  CPU(%) MEM(MiB) VCPUS        EXITS   EXITS/s";
    assert_eq!(
        frames[0],
        format!(
            "oxl top: 2 domains (2 running, 0 paused), 2 CPUs, TSC 2000 MHz, memory 512 MiB total, 192 MiB free\n\
             {header}\n\
             Domain-0     0       running          0       -      256     1            0         -\n\
             web          1       running          0       -       64     1            0         -"
        )
    );
    // Two seconds later: each 1-vCPU domain ran half the time, 10 exits a ms.
    assert_eq!(
        frames[1],
        format!(
            "oxl top: 2 domains (2 running, 0 paused), 2 CPUs, TSC 2000 MHz, memory 512 MiB total, 192 MiB free\n\
             {header}\n\
             Domain-0     0       running          1    50.0      256     1        20000     10000\n\
             web          1       running          1    50.0       64     1        20000     10000\n"
        )
    );
    // Without --vcpus, no VCPU_LIST.
    assert!(!fake.state().calls.iter().any(|c| c.starts_with("VCPUS")));
}

#[test]
fn top_interactive_quits_on_q() {
    let fake = Fake::new();
    let run = oxl_keys(&fake, &["top"], |n| {
        if n == 1 {
            b"q".to_vec()
        } else {
            Vec::new()
        }
    });
    let out = run.ok();
    assert_eq!(out.matches("\x1b[H\x1b[2J").count(), 2, "{out}");
    assert!(out.contains("q quits; every 3.0 s"), "{out}");
}

#[test]
fn the_fake_models_the_scheduler_domctls() {
    use crate::hv;
    use oxen_abi::{vcpu_state, DEFAULT_WEIGHT, MAX_WEIGHT};
    let inval = Err(crate::hv::CallError::Hv(Error::Inval));
    let fake = Fake::new();
    fake.state().cpus = 4;
    let web = fake.add_vcpus("web", DomainState::Running, 3);
    let mut hv = fake.clone();
    let hv: &mut dyn Hypervisor = &mut hv;

    // SCHED_CREDIT: flags 0 only reads; each flag sets its value; limits.
    let c = hv::sched_credit(hv, web, None, None).unwrap();
    assert_eq!((c.weight, c.cap), (DEFAULT_WEIGHT, 0));
    let c = hv::sched_credit(hv, web, Some(512), None).unwrap();
    assert_eq!((c.weight, c.cap), (512, 0));
    let c = hv::sched_credit(hv, web, None, Some(400)).unwrap();
    assert_eq!((c.weight, c.cap), (512, 400));
    assert_eq!(
        hv::sched_credit(hv, web, Some(MAX_WEIGHT), Some(0))
            .unwrap()
            .weight,
        MAX_WEIGHT
    );
    assert_eq!(hv::sched_credit(hv, web, Some(0), None).map(drop), inval);
    assert_eq!(
        hv::sched_credit(hv, web, Some(MAX_WEIGHT + 1), None).map(drop),
        inval
    );
    assert_eq!(hv::sched_credit(hv, web, None, Some(401)).map(drop), inval);
    assert_eq!(
        hv::sched_credit(hv, 9, None, None).map(drop),
        Err(crate::hv::CallError::Hv(Error::NoEnt))
    );
    let sched = |f: &Fake| {
        let s = f.state();
        (s.doms[&web].weight, s.doms[&web].cap)
    };
    assert_eq!(sched(&fake), (MAX_WEIGHT, 0));

    // VCPU_AFFINITY: at least one online pCPU, an existing vCPU.
    hv::vcpu_affinity(hv, web, 1, 0b100).unwrap();
    assert_eq!(hv::vcpu_affinity(hv, web, 1, 0b1_0000), inval);
    assert_eq!(hv::vcpu_affinity(hv, web, 1, 0), inval);
    assert_eq!(hv::vcpu_affinity(hv, web, 3, 0b1), inval);

    // VCPU_LIST: one domain or all of them, states from the domain's.
    let v = hv::vcpu_list(hv, Some(web)).unwrap();
    assert_eq!(v.len(), 3);
    assert_eq!((v[1].vcpu, v[1].cpu, v[1].affinity), (1, 2, 0b100));
    assert_eq!(
        (v[2].cpu, v[2].affinity, v[2].state),
        (2, 0b1111, vcpu_state::RUNNING)
    );
    assert_eq!(hv::vcpu_list(hv, None).unwrap().len(), 4);
    fake.state().doms.get_mut(&web).unwrap().info.state = DomainState::Paused as u32;
    assert!(hv::vcpu_list(hv, Some(web))
        .unwrap()
        .iter()
        .all(|v| v.state == vcpu_state::PAUSED));
    assert_eq!(
        hv::vcpu_list(hv, Some(9)).map(drop),
        Err(crate::hv::CallError::Hv(Error::NoEnt))
    );
    assert_eq!(
        fake.actions(),
        [
            "SCHED 1 weight=512",
            "SCHED 1 cap=400",
            "SCHED 1 weight=65535 cap=0",
            "SCHED 1 weight=0",
            "SCHED 1 weight=65536",
            "SCHED 1 cap=401",
            "AFFINITY 1 1 0x4",
            "AFFINITY 1 1 0x10",
            "AFFINITY 1 1 0x0",
            "AFFINITY 1 3 0x1",
        ]
    );
}

#[test]
fn vcpu_list_asks_again_when_there_are_many_vcpus() {
    let fake = Fake::new();
    fake.state().free_kib = 64 << 20;
    for i in 0..10 {
        fake.add_vcpus(&format!("d{i}"), DomainState::Running, 8);
    }
    let mut hv = fake.clone();
    let v = crate::hv::vcpu_list(&mut hv, None).unwrap();
    assert_eq!(v.len(), 81);
    assert_eq!((v[80].domid, v[80].vcpu), (10, 7));
    assert_eq!(
        fake.state()
            .calls
            .iter()
            .filter(|c| *c == "VCPUS all")
            .count(),
        2
    );
}

#[test]
fn sched_credit_shows_every_domain() {
    let fake = Fake::new();
    let web = fake.add("web", DomainState::Running);
    fake.add("db", DomainState::Paused);
    fake.state().doms.get_mut(&web).unwrap().weight = 512;
    fake.state().doms.get_mut(&web).unwrap().cap = 50;
    assert_eq!(
        oxl(&fake, &["sched-credit"]).ok(),
        "\
Name        ID Weight   Cap
Domain-0     0    256     0
web          1    512    50
db           2    256     0
"
    );
    let sched_calls = |f: &Fake| -> Vec<String> {
        f.state()
            .calls
            .iter()
            .filter(|c| c.starts_with("SCHED"))
            .cloned()
            .collect()
    };
    assert_eq!(
        sched_calls(&fake),
        ["SCHED 0 get", "SCHED 1 get", "SCHED 2 get"]
    );
    assert_eq!(
        oxl(&fake, &["sched-credit", "--json"]).ok(),
        "[\n  {\"id\": 0, \"name\": \"Domain-0\", \"weight\": 256, \"cap\": 0},\n  \
         {\"id\": 1, \"name\": \"web\", \"weight\": 512, \"cap\": 50},\n  \
         {\"id\": 2, \"name\": \"db\", \"weight\": 256, \"cap\": 0}\n]\n"
    );
    // A domain that goes between LIST and its SCHED_CREDIT is left out.
    fake.state().fail.push((domctl::SCHED_CREDIT, Error::NoEnt));
    assert_eq!(
        oxl(&fake, &["sched-credit"]).ok(),
        "Name    ID Weight   Cap\nweb      1    512    50\ndb       2    256     0\n"
    );
    fake.state().fail.push((domctl::SCHED_CREDIT, Error::NoSys));
    assert_eq!(
        oxl(&fake, &["sched-credit"]).err(),
        "sched-credit: cannot read the weight and cap of domain 'Domain-0' (id 0): no such hypercall \
         (the hypervisor does not implement this call: it is older than this oxl, see 'oxl info')"
    );
    // Only reads: nothing was set.
    assert!(
        !fake.actions().iter().any(|a| a.starts_with("SCHED")),
        "{:?}",
        fake.actions()
    );
}

#[test]
fn sched_credit_shows_and_sets_one_domain() {
    let fake = Fake::new();
    let web = fake.add("web", DomainState::Running);
    let table = |w, c| format!("Name    ID Weight   Cap\nweb      1 {w:>6} {c:>5}\n");
    assert_eq!(
        oxl(&fake, &["sched-credit", "-d", "web"]).ok(),
        table(256, 0)
    );
    assert_eq!(
        oxl(&fake, &["sched-credit", "-d", "web", "-w", "512"]).ok(),
        table(512, 0)
    );
    assert_eq!(
        oxl(&fake, &["sched-credit", "-d", "1", "-c", "150"]).ok(),
        table(512, 150)
    );
    assert_eq!(
        oxl(
            &fake,
            &["sched-credit", "-d", "web", "-w", "65535", "-c", "0"]
        )
        .ok(),
        table(65535, 0)
    );
    assert_eq!(
        oxl(&fake, &["sched-credit", "-d", "web", "-w", "1", "--json"]).ok(),
        "[\n  {\"id\": 1, \"name\": \"web\", \"weight\": 1, \"cap\": 0}\n]\n"
    );
    // dom0 has a weight and cap like any domain.
    assert_eq!(
        oxl(&fake, &["sched-credit", "-d", "0", "-w", "1024"]).ok(),
        "Name        ID Weight   Cap\nDomain-0     0   1024     0\n"
    );
    assert_eq!(
        fake.actions(),
        [
            "SCHED 1 weight=512",
            "SCHED 1 cap=150",
            "SCHED 1 weight=65535 cap=0",
            "SCHED 1 weight=1",
            "SCHED 0 weight=1024",
        ]
    );
    let s = fake.state();
    assert_eq!((s.doms[&web].weight, s.doms[&web].cap), (1, 0));
    assert_eq!(s.doms[&0].weight, 1024);
}

#[test]
fn sched_credit_errors() {
    let fake = Fake::new();
    let web = fake.add("web", DomainState::Running);
    assert_eq!(
        oxl(&fake, &["sched-credit", "-d", "db"]).err(),
        "sched-credit: no domain 'db' (see 'oxl list')"
    );
    // The cap's bound depends on the host: 100 x its pCPUs.
    assert_eq!(
        oxl(&fake, &["sched-credit", "-d", "web", "-c", "201"]).err(),
        "sched-credit: cap 201 is too high: this host has 2 pCPUs (0-1), so at most 200 \
         (the cap is in percent of one pCPU; 0 = no cap)"
    );
    oxl(&fake, &["sched-credit", "-d", "web", "-c", "200"]).ok();
    fake.state().cpus = 4;
    oxl(&fake, &["sched-credit", "-d", "web", "-c", "400"]).ok();
    // What the hypervisor refuses all the same.
    fake.state().fail.push((domctl::SCHED_CREDIT, Error::Inval));
    assert_eq!(
        oxl(&fake, &["sched-credit", "-d", "web", "-w", "300"]).err(),
        "sched-credit: cannot set weight 300 for domain 'web' (id 1): invalid argument \
         (the weight is 1 to 65535, the cap 0 to 100 x pCPUs)"
    );
    fake.state().fail.push((domctl::SCHED_CREDIT, Error::NoEnt));
    assert_eq!(
        oxl(
            &fake,
            &["sched-credit", "-d", "web", "-w", "300", "-c", "10"]
        )
        .err(),
        "sched-credit: domain 'web' (id 1) no longer exists (see 'oxl list')"
    );
    fake.state().doms.get_mut(&web).unwrap().info.state = DomainState::Dying as u32;
    assert_eq!(
        oxl(&fake, &["sched-credit", "-d", "web", "-c", "10"]).err(),
        "sched-credit: cannot set cap 10 for domain 'web' (id 1): \
         not possible in the domain's current state (it is dying)"
    );
    fake.state().fail.push((domctl::SCHED_CREDIT, Error::Perm));
    assert_eq!(
        oxl(&fake, &["sched-credit", "-d", "web"]).err(),
        "sched-credit: cannot read the weight and cap of domain 'web' (id 1): not permitted \
         (only dom0 may control domains: is oxl running in dom0?)"
    );
    let s = fake.state();
    assert_eq!((s.doms[&web].weight, s.doms[&web].cap), (256, 400));
}

#[test]
fn vcpu_pin_sets_affinities() {
    let fake = Fake::new();
    fake.state().cpus = 4;
    let web = fake.add_vcpus("web", DomainState::Running, 3);
    let affinity = |f: &Fake| -> Vec<u64> {
        f.state().doms[&web]
            .vcpus
            .iter()
            .map(|v| v.affinity)
            .collect()
    };
    assert_eq!(oxl(&fake, &["vcpu-pin", "web", "1", "0-1,3"]).ok(), "");
    assert_eq!(affinity(&fake), [0b1111, 0b1011, 0b1111]);
    oxl(&fake, &["vcpu-pin", "1", "all", "2"]).ok();
    assert_eq!(affinity(&fake), [0b100, 0b100, 0b100]);
    oxl(&fake, &["vcpu-pin", "web", "0", "all,^2"]).ok();
    oxl(&fake, &["vcpu-pin", "web", "2", "all"]).ok();
    assert_eq!(affinity(&fake), [0b1011, 0b100, 0b1111]);
    assert_eq!(
        fake.actions(),
        [
            "AFFINITY 1 1 0xb",
            "AFFINITY 1 0 0x4",
            "AFFINITY 1 1 0x4",
            "AFFINITY 1 2 0x4",
            "AFFINITY 1 0 0xb",
            "AFFINITY 1 2 0xf",
        ]
    );
    // dom0's vCPUs can be pinned too.
    oxl(&fake, &["vcpu-pin", "Domain-0", "0", "0"]).ok();
    assert_eq!(fake.state().doms[&0].vcpus[0].affinity, 0b1);
}

#[test]
fn vcpu_pin_errors() {
    let fake = Fake::new();
    let web = fake.add_vcpus("web", DomainState::Running, 2);
    fake.add("one", DomainState::Running);
    assert_eq!(
        oxl(&fake, &["vcpu-pin", "web", "0", "2"]).err(),
        "vcpu-pin: pCPU 2 does not exist: this host has 2 pCPUs (0-1)"
    );
    assert_eq!(
        oxl(&fake, &["vcpu-pin", "web", "0", "0-3"]).err(),
        "vcpu-pin: pCPU 2 does not exist: this host has 2 pCPUs (0-1)"
    );
    assert_eq!(
        oxl(&fake, &["vcpu-pin", "web", "0", "all,^0-1"]).err(),
        "vcpu-pin: 'all,^0-1' leaves no pCPU to run on \
         (^N takes pCPUs out of what the items before it add, e.g. all,^1)"
    );
    assert_eq!(
        oxl(&fake, &["vcpu-pin", "web", "2", "0"]).err(),
        "vcpu-pin: domain 'web' (id 1) has 2 vCPUs (0-1): there is no vCPU 2"
    );
    assert_eq!(
        oxl(&fake, &["vcpu-pin", "one", "1", "0"]).err(),
        "vcpu-pin: domain 'one' (id 2) has 1 vCPU (0): there is no vCPU 1"
    );
    assert_eq!(
        oxl(&fake, &["vcpu-pin", "db", "0", "0"]).err(),
        "vcpu-pin: no domain 'db' (see 'oxl list')"
    );
    // Nothing was asked of the hypervisor so far.
    assert_eq!(fake.actions(), Vec::<String>::new());
    fake.state()
        .fail
        .push((domctl::VCPU_AFFINITY, Error::Inval));
    assert_eq!(
        oxl(&fake, &["vcpu-pin", "web", "all", "1"]).err(),
        "vcpu-pin: cannot pin vCPU 0 to pCPUs 1 in domain 'web' (id 1): invalid argument \
         (the hypervisor takes only the domain's vCPUs and online pCPUs: see 'oxl vcpu-list', 'oxl info')"
    );
    // A vCPU the hypervisor does not know after one it pinned.
    fake.state().doms.get_mut(&web).unwrap().vcpus.pop();
    assert_eq!(
        oxl(&fake, &["vcpu-pin", "web", "all", "1"]).err(),
        "vcpu-pin: cannot pin vCPU 1 to pCPUs 1 in domain 'web' (id 1): invalid argument \
         (the hypervisor takes only the domain's vCPUs and online pCPUs: see 'oxl vcpu-list', 'oxl info'); vCPU 0 was pinned already"
    );
    fake.state().doms.get_mut(&web).unwrap().info.state = DomainState::Dying as u32;
    assert_eq!(
        oxl(&fake, &["vcpu-pin", "web", "all", "0-1"]).err(),
        "vcpu-pin: cannot pin vCPU 0 to pCPUs 0-1 in domain 'web' (id 1): \
         not possible in the domain's current state (it is dying)"
    );
    fake.state()
        .fail
        .push((domctl::VCPU_AFFINITY, Error::NoSys));
    assert!(oxl(&fake, &["vcpu-pin", "web", "0", "0"])
        .err()
        .ends_with("no such hypercall (the hypervisor does not implement this call: it is older than this oxl, see 'oxl info')"));
}

#[test]
fn vcpu_list_shows_every_vcpu() {
    use oxen_abi::vcpu_state;
    let fake = Fake::new();
    let web = fake.add_vcpus("web", DomainState::Running, 2);
    fake.add("db", DomainState::Paused);
    fake.add("new", DomainState::Created);
    oxl(&fake, &["vcpu-pin", "web", "1", "1"]).ok();
    fake.clone().sleep(Duration::from_secs(3));
    fake.state().doms.get_mut(&web).unwrap().vcpus[1].state = Some(vcpu_state::BLOCKED);
    assert_eq!(
        oxl(&fake, &["vcpu-list"]).ok(),
        "\
Name        ID  VCPU  CPU    State    Time(s) Affinity
Domain-0     0     0    0  running        1.5 all
web          1     0    0  running        1.5 all
web          1     1    1  blocked        1.5 1
db           2     0    0   paused        0.0 all
new          3     0    -  offline        0.0 all
"
    );
    assert_eq!(
        oxl(&fake, &["vcpu-list", "web", "Domain-0"]).ok(),
        "\
Name        ID  VCPU  CPU    State    Time(s) Affinity
web          1     0    0  running        1.5 all
web          1     1    1  blocked        1.5 1
Domain-0     0     0    0  running        1.5 all
"
    );
    let vcpu_calls: Vec<String> = fake
        .state()
        .calls
        .iter()
        .filter(|c| c.starts_with("VCPUS"))
        .cloned()
        .collect();
    assert_eq!(vcpu_calls, ["VCPUS all", "VCPUS 1", "VCPUS 0"]);
    assert_eq!(
        oxl(&fake, &["vcpu-list", "--json", "1"]).ok(),
        "[\n  \
{\"id\": 1, \"name\": \"web\", \"vcpu\": 0, \"cpu\": 0, \"state\": \"running\", \
\"cpu_time_ns\": 1500000000, \"affinity\": \"all\", \"affinity_cpus\": [0, 1]},\n  \
{\"id\": 1, \"name\": \"web\", \"vcpu\": 1, \"cpu\": 1, \"state\": \"blocked\", \
\"cpu_time_ns\": 1500000000, \"affinity\": \"1\", \"affinity_cpus\": [1]}\n]\n"
    );
    assert!(oxl(&fake, &["vcpu-list", "--json"]).ok().contains(
        "{\"id\": 3, \"name\": \"new\", \"vcpu\": 0, \"cpu\": null, \"state\": \"offline\""
    ));
}

#[test]
fn vcpu_list_errors() {
    let fake = Fake::new();
    fake.add("web", DomainState::Running);
    assert_eq!(
        oxl(&fake, &["vcpu-list", "web", "db"]).err(),
        "vcpu-list: no domain 'db' (see 'oxl list')"
    );
    fake.state().fail.push((domctl::VCPU_LIST, Error::NoEnt));
    assert_eq!(
        oxl(&fake, &["vcpu-list", "web"]).err(),
        "vcpu-list: domain 'web' (id 1) no longer exists (see 'oxl list')"
    );
    fake.state().fail.push((domctl::VCPU_LIST, Error::NoSys));
    assert_eq!(
        oxl(&fake, &["vcpu-list"]).err(),
        "vcpu-list: cannot list the vCPUs: no such hypercall \
         (the hypervisor does not implement this call: it is older than this oxl, see 'oxl info')"
    );
    fake.state().fail.push((domctl::LIST, Error::Busy));
    assert_eq!(
        oxl(&fake, &["vcpu-list"]).err(),
        "vcpu-list: cannot list the domains: not possible in the domain's current state"
    );
}

#[test]
fn create_applies_weight_cap_and_cpus_before_starting() {
    let cfg = setup(
        "create-sched",
        "name = \"web\"\nvcpus = 2\nweight = 512\ncap = 50\ncpus = \"1\"\n",
        100,
    );
    let fake = Fake::new();
    oxl(&fake, &["create", p(&cfg)]).ok();
    assert_eq!(
        fake.actions(),
        [
            "CREATE web 64M 2cpu",
            "LOAD 1 kernel @0 +100/100",
            "BUILD 1 \"\"",
            "SCHED 1 weight=512 cap=50",
            "AFFINITY 1 0 0x2",
            "AFFINITY 1 1 0x2",
            "UNPAUSE 1",
        ]
    );
    let s = fake.state();
    let d = &s.doms[&1];
    assert_eq!((d.weight, d.cap), (512, 50));
    assert_eq!(
        d.vcpus.iter().map(|v| v.affinity).collect::<Vec<_>>(),
        [0b10, 0b10]
    );
    drop(s);

    // Only what the config has is set: here the cap, and vCPU 0's affinity
    // (xl's list form; vCPU 1 is past the list); paused, nothing starts.
    let cfg = setup(
        "create-sched-some",
        "name = \"db\"\nvcpus = 2\ncap = 0\ncpus = ['all,^0']\n",
        100,
    );
    oxl(&fake, &["create", "-p", p(&cfg)]).ok();
    assert_eq!(
        fake.actions()[7..],
        [
            "CREATE db 64M 2cpu",
            "LOAD 2 kernel @0 +100/100",
            "BUILD 2 \"\"",
            "SCHED 2 cap=0",
            "AFFINITY 2 0 0x2",
        ]
    );
    // xl's name for the weight; no cap or cpus, so no need to ask for the host.
    let cfg = setup(
        "create-sched-weight",
        "name = \"app\"\ncpu_weight = 128\n",
        100,
    );
    oxl(&fake, &["create", p(&cfg)]).ok();
    assert_eq!(
        fake.actions()[12..],
        [
            "CREATE app 64M 1cpu",
            "LOAD 3 kernel @0 +100/100",
            "BUILD 3 \"\"",
            "SCHED 3 weight=128",
            "UNPAUSE 3",
        ]
    );
    assert_eq!(fake.state().doms[&3].weight, 128);
    assert_eq!(
        fake.state().calls.iter().filter(|c| *c == "PHYS").count(),
        2
    );
}

#[test]
fn create_without_scheduling_settings_leaves_the_defaults() {
    let cfg = setup("create-no-sched", "name = \"web\"\n", 100);
    let fake = Fake::new();
    oxl(&fake, &["create", p(&cfg)]).ok();
    assert!(
        !fake
            .state()
            .calls
            .iter()
            .any(|c| ["PHYS", "SCHED", "AFFINITY"]
                .iter()
                .any(|s| c.starts_with(s))),
        "{:?}",
        fake.state().calls
    );
}

#[test]
fn create_checks_cap_and_cpus_against_the_host_first() {
    let fake = Fake::new();
    let cfg = setup("create-cap-high", "name = \"web\"\ncap = 201\n", 100);
    assert_eq!(
        oxl(&fake, &["create", p(&cfg)]).err(),
        format!(
            "create: {}:3: cap = 201 is too high: this host has 2 pCPUs (0-1), so at most 200 \
             (the cap is in percent of one pCPU; 0 = no cap)",
            cfg.display()
        )
    );
    let cfg = setup(
        "create-cpus-absent",
        "name = \"web\"\ncpus = \"0,2\"\n",
        100,
    );
    assert_eq!(
        oxl(&fake, &["create", p(&cfg)]).err(),
        format!(
            "create: {}:3: cpus: pCPU 2 does not exist: this host has 2 pCPUs (0-1)",
            cfg.display()
        )
    );
    fake.state().fail.push((domctl::PHYS_INFO, Error::NoSys));
    assert!(oxl(&fake, &["create", p(&cfg)])
        .err()
        .starts_with("create: cannot read the host's state: no such hypercall"));
    // Nothing was created.
    assert!(
        !fake.state().calls.iter().any(|c| c.starts_with("CREATE")),
        "{:?}",
        fake.state().calls
    );
    // The same config fits a bigger host.
    fake.state().cpus = 3;
    oxl(&fake, &["create", p(&cfg)]).ok();
    assert_eq!(fake.state().doms[&1].vcpus[0].affinity, 0b101);
}

#[test]
fn create_rolls_back_a_failed_sched_credit() {
    let cfg = setup(
        "rollback-sched",
        "name = \"web\"\nweight = 512\ncap = 100\n",
        1000,
    );
    let fake = Fake::new();
    fake.state().fail.push((domctl::SCHED_CREDIT, Error::Inval));
    assert_eq!(
        oxl(&fake, &["create", p(&cfg)]).err(),
        "create: cannot set weight 512 and cap 100 for domain 'web' (id 1): invalid argument; \
         the domain was destroyed again, nothing is left behind"
    );
    assert_rolled_back(&fake);
    assert!(!fake.actions().iter().any(|a| a.starts_with("UNPAUSE")));
}

#[test]
fn create_rolls_back_a_failed_vcpu_affinity() {
    let cfg = setup(
        "rollback-affinity",
        "name = \"web\"\nvcpus = 2\ncpus = \"0\"\n",
        1000,
    );
    let fake = Fake::new();
    fake.state().fail.push((domctl::VCPU_AFFINITY, Error::Busy));
    assert_eq!(
        oxl(&fake, &["create", p(&cfg)]).err(),
        "create: cannot pin vCPU 0 to pCPUs 0 in domain 'web' (id 1): \
         not possible in the domain's current state (it is created); \
         the domain was destroyed again, nothing is left behind"
    );
    assert_rolled_back(&fake);
    assert!(!fake.actions().iter().any(|a| a.starts_with("UNPAUSE")));
}

#[test]
fn top_batch_frames_with_vcpus() {
    use oxen_abi::vcpu_state;
    let fake = Fake::new();
    let web = fake.add_vcpus("web", DomainState::Running, 2);
    fake.add("db", DomainState::Paused);
    oxl(&fake, &["vcpu-pin", "web", "1", "1"]).ok();
    fake.state().doms.get_mut(&web).unwrap().vcpus[1].state = Some(vcpu_state::BLOCKED);
    let out = oxl(&fake, &["top", "-b", "-n", "2", "-d", "2", "-v"])
        .ok()
        .to_owned();
    let frames: Vec<&str> = out.split("\n\n").collect();
    assert_eq!(frames.len(), 2, "{out}");
    let vcpu_header = "NAME        ID  VCPU  CPU    STATE   CPU(sec)  CPU(%) AFFINITY";
    let lines: Vec<&str> = frames[0].lines().collect();
    assert_eq!(
        lines[5..],
        [
            vcpu_header,
            "Domain-0     0     0    0  running          0       - all",
            "web          1     0    0  running          0       - all",
            "web          1     1    1  blocked          0       - 1",
            "db           2     0    0   paused          0       - all",
        ]
    );
    // Two seconds later: each running domain's vCPUs busy half the time.
    let lines: Vec<&str> = frames[1].lines().collect();
    assert_eq!(
        lines[5..],
        [
            vcpu_header,
            "Domain-0     0     0    0  running          1    50.0 all",
            "web          1     0    0  running          1    50.0 all",
            "web          1     1    1  blocked          1    50.0 1",
            "db           2     0    0   paused          0     0.0 all",
        ]
    );
    assert_eq!(
        fake.state()
            .calls
            .iter()
            .filter(|c| *c == "VCPUS all")
            .count(),
        2
    );
    fake.state().fail.push((domctl::VCPU_LIST, Error::NoSys));
    assert!(oxl(&fake, &["top", "-b", "-n", "1", "--vcpus"])
        .err()
        .starts_with("top: cannot list the vCPUs: no such hypercall"));
}
