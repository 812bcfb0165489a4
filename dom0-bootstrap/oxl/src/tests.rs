//! The commands end to end, against the in-memory hypervisor (`fake.rs`):
//! what they print, what they call, what they leave behind.

use std::time::Duration;

use clap::Parser as _;
use oxen_abi::{domctl, Action, DomainState, Error};

use crate::app::{self, Env, Failure};
use crate::cli::Cli;
use crate::fake::Fake;
use crate::hv::Hypervisor;

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

fn oxl(fake: &Fake, args: &[&str]) -> Run {
    let cli = Cli::try_parse_from(std::iter::once("oxl").chain(args.iter().copied()))
        .expect("valid usage");
    let (mut out, mut note) = (Vec::new(), Vec::new());
    let f = fake.clone();
    let mut open = move || Ok(Box::new(f.clone()) as Box<dyn Hypervisor>);
    let result = app::run(
        &cli.cmd,
        &mut Env {
            out: &mut out,
            note: &mut note,
            open: &mut open,
        },
    );
    Run {
        out: String::from_utf8_lossy(&out).into_owned(),
        note: String::from_utf8_lossy(&note).into_owned(),
        result,
    }
}

#[test]
fn device_and_abi_problems_are_not_blamed_on_the_command() {
    let cli = Cli::try_parse_from(["oxl", "list"]).unwrap();
    let (mut out, mut note) = (Vec::new(), Vec::new());
    let mut open = || -> Result<Box<dyn Hypervisor>, String> {
        Err("cannot open /dev/oxen: Permission denied (run as root)".into())
    };
    let r = app::run(
        &cli.cmd,
        &mut Env {
            out: &mut out,
            note: &mut note,
            open: &mut open,
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
