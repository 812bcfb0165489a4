//! The commands, over whatever `Env` provides: output streams, a way to reach
//! the hypervisor, and the keyboard. `main` gives the real ones; the tests give
//! `fake::Fake` and buffers.

use std::fmt;
use std::io::Write;
use std::path::Path;

use oxen_abi::{
    abi_major, domctl, info_flags, DomainInfo, Error as HvError, ShutdownReason, VcpuInfo,
    ABI_CONSOLE_INPUT, ABI_VERSION,
};

use crate::cli::{Cmd, Vcpus};
use crate::config;
use crate::cpulist::{self, CpuList};
use crate::create::{check_images, create};
use crate::dm;
use crate::domain::{
    call_failed, destroy_and_wait, dom_failed, find, not_dom0, resolve, wait_ended, Ended,
};
use crate::hv::{self, os_error, CallError, Hypervisor};
use crate::ring::{self, write_failed, Detached};
use crate::show::{self, abi, label};
use crate::term::{Input, Mode};
use crate::top;

pub struct Env<'a> {
    /// What the command prints.
    pub out: &'a mut dyn Write,
    /// Notes about what is going on (stderr).
    pub note: &'a mut dyn Write,
    /// Opens the hypervisor device.
    pub open: &'a mut dyn FnMut() -> std::result::Result<Box<dyn Hypervisor>, String>,
    /// Takes the keyboard in a mode, until the returned value is dropped.
    pub keyboard: &'a mut dyn FnMut(Mode) -> Box<dyn Input>,
    /// Where `create` records each domain's config for `save` (`None`: not
    /// recorded, as in the tests).
    pub state_dir: Option<&'a Path>,
    /// Starts a domain's device model and waits until it serves
    /// (`dm::launch`; the tests give a fake).
    pub launch: &'a mut dyn FnMut(&dm::Request) -> std::result::Result<dm::Started, String>,
    /// dom0's network interfaces (`/sys/class/net`): where `create` looks for
    /// a vif's bridge.
    pub sys_net: &'a Path,
}

/// A failed command: what `main` prints after "oxl: ".
#[derive(Debug, PartialEq, Eq)]
pub struct Failure(pub String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An error inside a command, before `run` names the command in it.
enum Error {
    /// About the command: printed as "COMMAND: message".
    Command(String),
    /// About oxl's set-up (the device, the ABI): printed as is.
    Setup(String),
}

impl From<String> for Error {
    fn from(s: String) -> Self {
        Self::Command(s)
    }
}

type Result<T = ()> = std::result::Result<T, Error>;

/// Runs one command.
pub fn run(cmd: &Cmd, env: &mut Env) -> std::result::Result<(), Failure> {
    let r = match cmd {
        Cmd::Create {
            config,
            paused,
            console,
            declare_devices,
        } => cmd_create(env, config, *paused, *console, *declare_devices),
        Cmd::IrqLine { domain, gsi, level } => cmd_irq_line(env, domain, *gsi, *level == 1),
        Cmd::BlockList { domain } => cmd_block_list(env, domain, false),
        Cmd::NetworkList { domain } => cmd_block_list(env, domain, true),
        Cmd::List { json, domains } => cmd_list(env, *json, domains),
        Cmd::Info { json } => cmd_info(env, *json),
        Cmd::Pause { domain } => cmd_pause(env, domain, domctl::PAUSE),
        Cmd::Unpause { domain } => cmd_pause(env, domain, domctl::UNPAUSE),
        Cmd::Shutdown { wait, domain } => {
            cmd_shutdown(env, domain, ShutdownReason::Poweroff, *wait)
        }
        Cmd::Reboot { wait, domain } => cmd_shutdown(env, domain, ShutdownReason::Reboot, *wait),
        Cmd::Destroy { domain } => cmd_destroy(env, domain),
        Cmd::Console { domain, dump } => cmd_console(env, domain, *dump),
        Cmd::Dmesg { follow } => cmd_dmesg(env, *follow),
        Cmd::Top {
            batch,
            iterations,
            delay,
            vcpus,
        } => cmd_top(
            env,
            &top::Options {
                batch: *batch,
                iterations: *iterations,
                delay: *delay,
                vcpus: *vcpus,
            },
        ),
        Cmd::SchedCredit {
            domain,
            weight,
            cap,
            json,
        } => cmd_sched_credit(env, domain.as_deref(), *weight, *cap, *json),
        Cmd::VcpuPin { domain, vcpu, cpus } => cmd_vcpu_pin(env, domain, *vcpu, cpus),
        Cmd::VcpuList { json, domains } => cmd_vcpu_list(env, *json, domains),
        Cmd::VcpuState {
            domain,
            vcpu,
            output,
            set,
            reg,
        } => cmd_vcpu_state(env, domain, *vcpu, output.as_deref(), set.as_deref(), reg),
        Cmd::Save { checkpoint, json, domain, file } => cmd_save(env, domain, file, *checkpoint, *json),
        Cmd::Restore { paused, json, file } => cmd_restore(env, file, *paused, *json),
        Cmd::Migrate { json, max_rounds, max_final_mib, domain, host } => {
            let policy = crate::migrate::Policy { max_rounds: *max_rounds, max_final_pages: max_final_mib * 256, ..Default::default() };
            cmd_migrate(env, domain, host, policy, *json)
        }
        Cmd::MigrateReceive { port, timeout, json } => cmd_migrate_receive(env, *port, *timeout, *json),
    };
    r.map_err(|e| match e {
        Error::Command(m) => Failure(format!("{}: {m}", cmd.name())),
        Error::Setup(m) => Failure(m),
    })
}

/// Opens the hypervisor and checks that it speaks oxl's ABI.
fn connect(env: &mut Env) -> Result<Box<dyn Hypervisor>> {
    let mut hv = (env.open)().map_err(Error::Setup)?;
    let v = hv::version(&mut *hv).map_err(|e| {
        Error::Setup(format!(
            "the hypervisor does not tell its ABI version ({e}): is this dom0 under Oxen?"
        ))
    })?;
    if abi_major(v) != abi_major(ABI_VERSION) {
        return Err(Error::Setup(format!(
            "the hypervisor speaks ABI {}, this oxl ABI {}: use the oxl built with this hypervisor",
            abi(v),
            abi(ABI_VERSION)
        )));
    }
    Ok(hv)
}

fn out(env: &mut Env, text: &str) -> Result {
    env.out.write_all(text.as_bytes()).map_err(write_failed)?;
    Ok(())
}

fn note(env: &mut Env, text: &str) {
    let _ = writeln!(env.note, "{text}");
}

fn cmd_create(env: &mut Env, path: &Path, paused: bool, console: bool, declare_devices: bool) -> Result {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the config file {}: {}",
            path.display(),
            os_error(&e)
        )
    })?;
    let file = path.display().to_string();
    let mut cfg = config::parse(&file, &text).map_err(|e| e.to_string())?;
    cfg.resolve_paths(path.parent().unwrap_or(Path::new("")));
    // Everything that can be checked without the hypervisor comes first, then
    // what needs to know the host, then the domain is made.
    let images = check_images(&cfg).map_err(|e| format!("{file}: {e}"))?;
    if !declare_devices {
        dm::check_disks(&file, &cfg.disks)?;
        dm::check_vifs(&file, None, &cfg.vifs, env.sys_net)?;
    }
    let mut hv = connect(env)?;
    let cpus = if cfg.needs_host() {
        hv::phys_info(&mut *hv)
            .map_err(|e| call_failed("read the host's state", e))?
            .cpus
    } else {
        0
    };
    let sched = cfg.sched(&file, cpus).map_err(|e| e.to_string())?;
    let devices = device_names(&cfg);
    // With the domain built and still paused: its device model, which must
    // serve before a vCPU can touch a device.
    let mut served = None;
    let state_dir = env.state_dir;
    let launch = &mut *env.launch;
    let mut start_dm = |d: &DomainInfo, placed: &[oxen_abi::DeviceAdd]| {
        if declare_devices || (cfg.disks.is_empty() && cfg.vifs.is_empty()) {
            return Ok(());
        }
        let disks = dm::placed(&cfg, placed);
        let vifs = dm::placed_vifs(&cfg, d.domid, placed);
        let state_file = state_dir.map(|dir| dm::state_path(dir, d.domid));
        let started = launch(&dm::Request { domid: d.domid, name: &cfg.name, disks: disks.clone(), vifs: vifs.clone(), state_file, resume: None })?;
        served = Some(dm::Record::new(&started, &disks, &vifs));
        Ok(())
    };
    let created = create(&mut *hv, &cfg, &images, &sched, paused, &devices, &mut start_dm);
    let (domid, placed) = match created {
        Ok(c) => c,
        Err(e) => {
            // A device model started for a domain that then failed ends with it.
            if let Some(r) = &served {
                dm::kill(r.pid);
            }
            return Err(e.into());
        }
    };
    out(env, &format!("Created domain {} (id {domid})\n", cfg.name))?;
    record_config(env, domid, path, &text);
    match &served {
        Some(r) => {
            record_dm(env, domid, r);
            for d in &r.disks {
                out(
                    env,
                    &format!(
                        "{}: virtio-mmio disk at {:#x}, GSI {}, {} {}, served by oxen-dm (pid {}, log {})\n",
                        d.vdev,
                        d.base,
                        d.gsi,
                        if d.read_only { "read-only" } else { "read-write" },
                        d.target.display(),
                        r.pid,
                        r.log.display()
                    ),
                )?;
            }
            for v in &r.vifs {
                out(
                    env,
                    &format!(
                        "{}: virtio-mmio NIC at {:#x}, GSI {}, MAC {}, tap {} on bridge {}, served by oxen-dm (pid {})\n",
                        v.name,
                        v.base,
                        v.gsi,
                        crate::devspec::format_mac(&v.mac),
                        v.name,
                        v.bridge,
                        r.pid
                    ),
                )?;
            }
        }
        None => {
            // A record left by an earlier domain with this ID (one that ended
            // without 'oxl destroy') is not this one's.
            if let Some(dir) = env.state_dir {
                let _ = std::fs::remove_file(dm::Record::path(dir, domid));
            }
            for (name, d) in devices.iter().zip(&placed) {
                out(
                    env,
                    &format!(
                        "{name}: virtio-mmio at {:#x} ({} bytes), GSI {} (declared only: no device model serves it)\n",
                        d.base, d.size, d.gsi
                    ),
                )?;
            }
        }
    }
    if paused {
        out(
            env,
            &format!("It is paused: 'oxl unpause {}' starts it.\n", cfg.name),
        )?;
    }
    if console {
        let d = hv::info(&mut *hv, domid).map_err(|e| call_failed("find the new domain", e))?;
        attach(env, &mut *hv, &d)?;
    }
    Ok(())
}

/// The devices a domain is given, in order: each disk by its vdev, then each
/// vif by its number (`vif0`, ...).
fn device_names(cfg: &config::Config) -> Vec<String> {
    let disks = cfg.disks.iter().map(|d| d.value.vdev.clone());
    disks.chain((0..cfg.vifs.len()).map(|i| format!("vif{i}"))).collect()
}

/// Keeps what `block-list` and `destroy` need of a domain's device model. A
/// failure is a note: the device model still ends with its domain.
fn record_dm(env: &mut Env, domid: u32, r: &dm::Record) {
    let Some(dir) = env.state_dir else { return };
    let w = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(dm::Record::path(dir, domid), r.to_text()));
    if let Err(e) = w {
        note(env, &format!("oxl: could not record the device model in {} ({}): 'oxl block-list' will not know this domain's disks", dir.display(), os_error(&e)));
    }
}

/// `block-list`, or with `net` `network-list`: from oxl's record of the
/// domain's device model.
fn cmd_block_list(env: &mut Env, dom: &str, net: bool) -> Result {
    let mut hv = connect(env)?;
    let d = find(&mut *hv, dom)?;
    let rec = served_by(env, &d);
    let running = rec.as_ref().is_some_and(|r| dm::running(r.pid));
    let text = if net { show::network_list(rec.as_ref(), running) } else { show::block_list(rec.as_ref(), running) };
    out(env, &text)
}

fn cmd_irq_line(env: &mut Env, dom: &str, gsi: u32, level: bool) -> Result {
    let mut hv = connect(env)?;
    let d = find(&mut *hv, dom)?;
    not_dom0(&d, "drive an interrupt line of")?;
    hv::irq_line(&mut *hv, d.domid, gsi, level).map_err(|e| match e {
        CallError::Hv(HvError::Inval) => format!(
            "GSI {gsi} is not the line of a device of domain {} (see what 'oxl create --declare-devices' printed)",
            label(&d)
        ),
        CallError::Hv(HvError::Busy) => format!("domain {} is not running (not started, dying or ended)", label(&d)),
        e => dom_failed(&d, &format!("drive GSI {gsi} of"), e),
    })?;
    Ok(())
}

fn cmd_list(env: &mut Env, json: bool, wanted: &[String]) -> Result {
    let mut hv = connect(env)?;
    let mut doms = hv::list(&mut *hv).map_err(|e| call_failed("list the domains", e))?;
    if !wanted.is_empty() {
        doms = wanted
            .iter()
            .map(|w| resolve(&doms, w))
            .collect::<std::result::Result<_, _>>()?;
    }
    let text = if json {
        let dir = env.state_dir;
        show::list_json(&doms, |domid| {
            let rec = dm::Record::read(dir?, domid)?;
            let running = dm::running(rec.pid);
            Some((rec, running))
        })
    } else {
        show::list_table(&doms)
    };
    out(env, &text)
}

fn cmd_info(env: &mut Env, json: bool) -> Result {
    let mut hv = connect(env)?;
    let p = hv::phys_info(&mut *hv).map_err(|e| call_failed("read the host's state", e))?;
    out(
        env,
        &if json {
            show::info_json(&p)
        } else {
            show::info_text(&p)
        },
    )
}

fn cmd_pause(env: &mut Env, dom: &str, cmd: u64) -> Result {
    let mut hv = connect(env)?;
    let d = find(&mut *hv, dom)?;
    let verb = if cmd == domctl::PAUSE {
        "pause"
    } else {
        "unpause"
    };
    if cmd == domctl::PAUSE {
        not_dom0(&d, verb)?;
    }
    hv::domain_op(&mut *hv, cmd, d.domid).map_err(|e| dom_failed(&d, verb, e))?;
    Ok(())
}

fn cmd_shutdown(env: &mut Env, dom: &str, reason: ShutdownReason, wait: bool) -> Result {
    let mut hv = connect(env)?;
    let d = find(&mut *hv, dom)?;
    let verb = if reason == ShutdownReason::Reboot {
        "reboot"
    } else {
        "shut down"
    };
    not_dom0(&d, verb)?;
    hv::shutdown(&mut *hv, d.domid, reason).map_err(|e| dom_failed(&d, verb, e))?;
    if !wait {
        return Ok(());
    }
    note(
        env,
        &format!("Waiting for domain {} to {verb}...", label(&d)),
    );
    let text = match wait_ended(&mut *hv, &d)? {
        Ended::Gone => format!("Domain {} has shut down and is gone.\n", label(&d)),
        Ended::Restarted => format!("Domain {} has restarted.\n", label(&d)),
        Ended::Preserved => format!(
            "Domain {} has shut down and is kept (preserve): 'oxl destroy {}' frees it.\n",
            label(&d),
            show::name(&d)
        ),
    };
    out(env, &text)
}

/// How long `destroy` waits for a device model to flush and end.
const DM_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn cmd_destroy(env: &mut Env, dom: &str) -> Result {
    let mut hv = connect(env)?;
    let d = find(&mut *hv, dom)?;
    not_dom0(&d, "destroy")?;
    destroy_and_wait(&mut *hv, &d)?;
    // The device model would notice within a second; told now, it has flushed
    // its disks and let go of them when destroy returns.
    if let Some(dir) = env.state_dir {
        dm::stop(dir, d.domid, DM_STOP_WAIT);
    }
    Ok(())
}

fn cmd_console(env: &mut Env, dom: &str, dump: bool) -> Result {
    let mut hv = connect(env)?;
    let d = find(&mut *hv, dom)?;
    if dump {
        ring::console_dump(&mut *hv, &d, env.out)?;
        return Ok(());
    }
    if d.flags & info_flags::PRIVILEGED != 0 {
        return Err(Error::Command(format!(
            "domain {} is dom0: its console is the serial line this shell runs on \
             ('oxl console' is for domUs, see 'oxl list'; 'oxl dmesg' shows the hypervisor's log)",
            label(&d)
        )));
    }
    attach(env, &mut *hv, &d)
}

/// Shows `d`'s console until Ctrl-] or until it is gone, and sends it what is
/// typed (or piped in) if the hypervisor has console input.
fn attach(env: &mut Env, hv: &mut dyn Hypervisor, d: &DomainInfo) -> Result {
    let v = hv::version(hv).map_err(|e| call_failed("ask the hypervisor's ABI version", e))?;
    let input = v >= ABI_CONSOLE_INPUT;
    let mut keys = (env.keyboard)(Mode::Raw);
    let how = match (input, keys.is_terminal()) {
        (false, _) => format!(
            ", output only: console input needs ABI {} or later and the hypervisor has {} \
             (boot the hypervisor built with this oxl to type into domains)",
            abi(ABI_CONSOLE_INPUT),
            abi(v)
        ),
        (true, true) => String::new(),
        (true, false) => format!(
            "; standard input is sent to it, and once it ends oxl detaches when the output \
             has been quiet for {} s (at most {} s)",
            ring::QUIET.as_secs(),
            ring::LINGER.as_secs()
        ),
    };
    note(
        env,
        &format!("Console of domain {}{how}. Ctrl-] detaches.", label(d)),
    );
    let r = ring::console(hv, d, &mut *keys, env.out, input);
    drop(keys);
    match r? {
        Detached::Key | Detached::Signal => {
            note(env, &format!("\nDetached from domain {}.", label(d)))
        }
        Detached::InputEnded => note(
            env,
            &format!("\nInput ended; detached from domain {}.", label(d)),
        ),
        Detached::Gone => note(env, &format!("\nDomain {} is gone.", label(d))),
    }
    Ok(())
}

fn cmd_dmesg(env: &mut Env, follow: bool) -> Result {
    let mut hv = connect(env)?;
    ring::dmesg(&mut *hv, follow, env.out)?;
    Ok(())
}

fn cmd_top(env: &mut Env, opts: &top::Options) -> Result {
    let mut hv = connect(env)?;
    // Batch mode leaves the terminal alone: it may be a script's.
    let mut keys = (!opts.batch).then(|| (env.keyboard)(Mode::Keys));
    top::run(
        &mut *hv,
        opts,
        keys.as_deref_mut().map(|k| k as &mut dyn Input),
        env.out,
    )?;
    Ok(())
}

fn cmd_sched_credit(
    env: &mut Env,
    dom: Option<&str>,
    weight: Option<u32>,
    cap: Option<u32>,
    json: bool,
) -> Result {
    let mut hv = connect(env)?;
    let doms = hv::list(&mut *hv).map_err(|e| call_failed("list the domains", e))?;
    let rows = match dom {
        Some(dom) => {
            let d = resolve(&doms, dom)?;
            if let Some(cap) = cap {
                let p =
                    hv::phys_info(&mut *hv).map_err(|e| call_failed("read the host's state", e))?;
                let most = 100 * u64::from(p.cpus);
                if u64::from(cap) > most {
                    return Err(format!(
                        "cap {cap} is too high: this host has {}, so at most {most} \
                         (the cap is in percent of one pCPU; 0 = no cap)",
                        cpulist::host_cpus(p.cpus)
                    )
                    .into());
                }
            }
            let verb = if weight.is_none() && cap.is_none() {
                "read the weight and cap of".to_owned()
            } else {
                format!("set {} for", show::sched_change(weight, cap))
            };
            let c = hv::sched_credit(&mut *hv, d.domid, weight, cap).map_err(|e| match e {
                CallError::Hv(HvError::Inval) => format!(
                    "{} (the weight is 1 to {}, the cap 0 to 100 x pCPUs)",
                    dom_failed(&d, &verb, e),
                    oxen_abi::MAX_WEIGHT
                ),
                e => dom_failed(&d, &verb, e),
            })?;
            vec![(d, c)]
        }
        None => {
            let mut rows = Vec::new();
            for d in doms {
                match hv::sched_credit(&mut *hv, d.domid, None, None) {
                    Ok(c) => rows.push((d, c)),
                    // Gone since LIST: not a domain any more.
                    Err(CallError::Hv(HvError::NoEnt)) => {}
                    Err(e) => return Err(dom_failed(&d, "read the weight and cap of", e).into()),
                }
            }
            rows
        }
    };
    out(
        env,
        &if json {
            show::sched_json(&rows)
        } else {
            show::sched_table(&rows)
        },
    )
}

fn cmd_vcpu_pin(env: &mut Env, dom: &str, vcpu: Vcpus, cpus: &CpuList) -> Result {
    let mut hv = connect(env)?;
    let d = find(&mut *hv, dom)?;
    let p = hv::phys_info(&mut *hv).map_err(|e| call_failed("read the host's state", e))?;
    let mask = cpus.mask(p.cpus)?;
    let which = match vcpu {
        Vcpus::All => 0..d.vcpus,
        Vcpus::One(n) if n < d.vcpus => n..n + 1,
        Vcpus::One(n) => {
            return Err(format!(
                "domain {} has {}: there is no vCPU {n}",
                label(&d),
                match d.vcpus {
                    1 => "1 vCPU (0)".to_owned(),
                    v => format!("{v} vCPUs (0-{})", v.saturating_sub(1)),
                }
            )
            .into())
        }
    };
    let first = which.start;
    for n in which {
        hv::vcpu_affinity(&mut *hv, d.domid, n, mask).map_err(|e| {
            let mut why = dom_failed(
                &d,
                &format!("pin vCPU {n} to pCPUs {} in", cpulist::ranges(mask)),
                e,
            );
            if e == CallError::Hv(HvError::Inval) {
                why += " (the hypervisor takes only the domain's vCPUs and online pCPUs: see 'oxl vcpu-list', 'oxl info')";
            }
            match n - first {
                0 => {}
                1 => why += &format!("; vCPU {first} was pinned already"),
                _ => why += &format!("; vCPUs {first}-{} were pinned already", n - 1),
            }
            why
        })?;
    }
    Ok(())
}

/// How long `vcpu-state` waits for a paused vCPU to stop or load a state.
const VCPU_STATE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads the state, asking again while the hypervisor says "not yet".
fn vcpu_state_wait(hv: &mut dyn Hypervisor, d: &DomainInfo, vcpu: u32) -> Result<Vec<u8>> {
    let start = hv.now();
    loop {
        match hv::vcpu_state_get(hv, d.domid, vcpu) {
            Err(CallError::Hv(HvError::Again)) if hv.now() - start < VCPU_STATE_WAIT => {
                hv.sleep(std::time::Duration::from_millis(10))
            }
            Err(CallError::Hv(HvError::Busy)) => {
                return Err(format!("domain {} is not paused (run 'oxl pause' first)", label(d)).into())
            }
            r => return r.map_err(|e| dom_failed(d, &format!("read vCPU {vcpu}'s state of"), e).into()),
        }
    }
}

fn cmd_vcpu_state(
    env: &mut Env,
    dom: &str,
    vcpu: u32,
    output: Option<&Path>,
    set: Option<&Path>,
    regs: &[String],
) -> Result {
    use oxen_abi::vcpu_snapshot::VcpuStateRecord;
    let mut hv = connect(env)?;
    let d = find(&mut *hv, dom)?;
    not_dom0(&d, "read or set a vCPU state of")?;
    if vcpu >= d.vcpus {
        return Err(format!("domain {} has no vCPU {vcpu}", label(&d)).into());
    }
    let new = if let Some(path) = set {
        Some(std::fs::read(path).map_err(|e| format!("cannot read {}: {}", path.display(), os_error(&e)))?)
    } else if !regs.is_empty() {
        let bytes = vcpu_state_wait(&mut *hv, &d, vcpu)?;
        let mut r = VcpuStateRecord::decode(&bytes)
            .map_err(|e| format!("the hypervisor's state does not decode: {}", e.describe()))?;
        for a in regs {
            let (name, value) = a.split_once('=').ok_or_else(|| format!("--reg {a}: NAME=VALUE expected"))?;
            let v = match value.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => value.parse(),
            }
            .map_err(|_| format!("--reg {a}: {value} is not a number"))?;
            *r.word_mut(name).ok_or_else(|| format!("--reg {a}: no field {name} (see 'oxl vcpu-state DOM VCPU')"))? = v;
        }
        let mut out = vec![0u8; r.encoded_len()];
        r.encode(&mut out);
        Some(out)
    } else {
        None
    };
    if let Some(bytes) = new {
        hv::vcpu_state_set(&mut *hv, d.domid, vcpu, &bytes).map_err(|e| match e {
            CallError::Hv(HvError::Inval) => format!(
                "the hypervisor refused the state for vCPU {vcpu} of {}: malformed or not loadable here (the reason is in 'oxl dmesg')",
                label(&d)
            ),
            CallError::Hv(HvError::Busy) => format!("domain {} is not paused (run 'oxl pause' first)", label(&d)),
            e => dom_failed(&d, &format!("set vCPU {vcpu}'s state of"), e),
        })?;
        // Read back once loaded: what the vCPU holds now.
        vcpu_state_wait(&mut *hv, &d, vcpu)?;
        note(env, &format!("vCPU {vcpu} of {}: state loaded", label(&d)));
        return Ok(());
    }
    let bytes = vcpu_state_wait(&mut *hv, &d, vcpu)?;
    if let Some(path) = output {
        std::fs::write(path, &bytes).map_err(|e| format!("cannot write {}: {}", path.display(), os_error(&e)))?;
        return Ok(());
    }
    let r = VcpuStateRecord::decode(&bytes).map_err(|e| format!("the hypervisor's state does not decode: {}", e.describe()))?;
    let mut text = String::new();
    for (rec, field, v) in r.words() {
        text += &format!("{rec}.{field} {v:#x}\n");
    }
    text += &format!("xstate.size {}\n", r.xsave.len());
    out(env, &text)
}

fn cmd_vcpu_list(env: &mut Env, json: bool, wanted: &[String]) -> Result {
    let mut hv = connect(env)?;
    let p = hv::phys_info(&mut *hv).map_err(|e| call_failed("read the host's state", e))?;
    let mut rows: Vec<(DomainInfo, VcpuInfo)> = Vec::new();
    if wanted.is_empty() {
        // vCPUs first, then the domains to name them: a domain created in
        // between is simply not shown, one destroyed in between is left out.
        let vcpus = hv::vcpu_list(&mut *hv, None).map_err(|e| call_failed("list the vCPUs", e))?;
        let doms = hv::list(&mut *hv).map_err(|e| call_failed("list the domains", e))?;
        for v in vcpus {
            if let Some(d) = doms.iter().find(|d| d.domid == v.domid) {
                rows.push((*d, v));
            }
        }
    } else {
        let all = hv::list(&mut *hv).map_err(|e| call_failed("list the domains", e))?;
        let doms = wanted
            .iter()
            .map(|w| resolve(&all, w))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        for d in doms {
            let vcpus = hv::vcpu_list(&mut *hv, Some(d.domid))
                .map_err(|e| dom_failed(&d, "list the vCPUs of", e))?;
            rows.extend(vcpus.into_iter().map(|v| (d, v)));
        }
    }
    let text = if json {
        show::vcpu_json(&rows, p.cpus)
    } else {
        show::vcpu_table(&rows, p.cpus)
    };
    out(env, &text)
}

/// The first line of a recorded config: the file it was read from, so that
/// relative paths in it resolve as they did.
const CONFIG_FROM: &str = "# oxl: read from ";

/// Keeps domain `domid`'s config where `save` finds it (`Env::state_dir`).
/// A failure only costs `save` for that domain, so it is a note.
fn record_config(env: &mut Env, domid: u32, path: &Path, text: &str) {
    let Some(dir) = env.state_dir else { return };
    let from = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let r = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(dir.join(format!("{domid}.cfg")), format!("{CONFIG_FROM}{}\n{text}", from.display())));
    if let Err(e) = r {
        note(env, &format!("oxl: could not record the config in {} ({}): 'oxl save' will not know this domain's config", dir.display(), os_error(&e)));
    }
}

/// How long `save` and `restore` wait for a paused vCPU to give or take its state.
const STATE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn cmd_save(env: &mut Env, dom: &str, file: &Path, checkpoint: bool, json: bool) -> Result {
    let mut hv = connect(env)?;
    let start = hv.now();
    let d = find(&mut *hv, dom)?;
    not_dom0(&d, "save")?;
    let config = recorded_config(env, &d, "saved")?;
    let dm = served_by(env, &d);
    let host = hv::phys_info(&mut *hv).map_err(|e| call_failed("read the host's state", e))?;
    let was_running = d.state == oxen_abi::DomainState::Running as u32;
    if was_running {
        hv::domain_op(&mut *hv, domctl::PAUSE, d.domid).map_err(|e| dom_failed(&d, "pause", e))?;
    }
    // The device model, frozen once the domain is paused: its devices' state
    // then stays what the memory copied after it says.
    let r = match (&dm, env.state_dir) {
        (Some(rec), Some(dir)) => match dm::freeze(dir, d.domid, rec) {
            Ok(set) => save_paused(env, &mut *hv, &d, file, &config, host.vendor, Some((rec, &set))),
            Err(why) => Err(format!("domain {}: {why}", label(&d)).into()),
        },
        _ => save_paused(env, &mut *hv, &d, file, &config, host.vendor, None),
    };
    // On failure, or with -c, the domain runs on as it was.
    if r.is_err() || checkpoint {
        if let Some(rec) = &dm {
            dm::thaw(rec);
        }
        if was_running {
            hv::domain_op(&mut *hv, domctl::UNPAUSE, d.domid).map_err(|e| dom_failed(&d, "unpause", e))?;
        }
        let s = r?;
        if json {
            let seconds = (hv.now() - start).as_secs_f64();
            return out(env, &crate::save::json_summary(crate::save::Op::Checkpoint, &show::name(&d), d.domid, file, &s, seconds));
        }
        return out(env, &format!("Saved domain {} to {} (it runs on)\n", label(&d), file.display()));
    }
    let s = r?;
    destroy_and_wait(&mut *hv, &d)?;
    if let (Some(_), Some(dir)) = (&dm, env.state_dir) {
        // It ends by itself with the domain; this waits for it (disks flushed).
        dm::stop(dir, d.domid, DM_STOP_WAIT);
    }
    if json {
        let seconds = (hv.now() - start).as_secs_f64();
        return out(env, &crate::save::json_summary(crate::save::Op::Save, &show::name(&d), d.domid, file, &s, seconds));
    }
    out(env, &format!("Saved domain {} to {}; it is destroyed ('oxl restore {}' brings it back)\n", label(&d), file.display(), file.display()))?;
    Ok(())
}

/// The config `oxl create` recorded for `d`, which a save or migration
/// carries.
fn recorded_config(env: &Env, d: &DomainInfo, verb: &str) -> Result<String> {
    let recorded = env.state_dir.map(|dir| dir.join(format!("{}.cfg", d.domid)));
    recorded.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).ok_or_else(|| {
        format!("no config recorded for domain {} (oxl create keeps it in {}): it cannot be {verb}", label(d), env.state_dir.map_or("/run/oxen".into(), |p| p.display().to_string())).into()
    })
}

/// The device model serving `d`'s disks and vifs, as `create` recorded it.
fn served_by(env: &Env, d: &DomainInfo) -> Option<dm::Record> {
    dm::Record::read(env.state_dir?, d.domid)
}

/// Writes a paused domain to `file` (removed again on failure).
/// `dm`: its device model's record and the states it wrote when frozen.
fn save_paused(
    env: &mut Env,
    hv: &mut dyn Hypervisor,
    d: &DomainInfo,
    file: &Path,
    config: &str,
    host_vendor: u32,
    dm: Option<(&dm::Record, &[u8])>,
) -> Result<crate::save::Summary> {
    use oxen_abi::save_stream::{vendor, StreamHeader};
    use oxen_abi::vcpu_snapshot::VcpuStateRecord;
    let mut vcpus = Vec::new();
    for v in 0..d.vcpus {
        vcpus.push(state_wait(hv, d, |hv| hv::vcpu_state_get(hv, d.domid, v))?);
    }
    let tsc_hz = VcpuStateRecord::decode(&vcpus[0]).map(|r| r.tsc[1]).unwrap_or(0);
    let platform = hv::platform_state_get(hv, d.domid).map_err(|e| dom_failed(d, "read the devices' state of", e))?;
    let cpuid = hv::cpuid_get(hv, d.domid).map_err(|e| dom_failed(d, "read the CPUID of", e))?;
    let memory_mib = (d.memory_kib / 1024) as u32;
    let header = StreamHeader {
        flags: 0,
        abi_version: oxen_abi::ABI_VERSION,
        vendor: if host_vendor == 0 { vendor::INTEL } else { vendor::AMD },
        memory_mib,
        vcpus: d.vcpus,
        tsc_hz,
    };
    let mut mem = crate::foreign::ForeignMemory::open(d.domid, header.pages())
        .map_err(|e| format!("cannot map domain {}'s memory: {}", label(d), os_error(&e)))?;
    let f = std::fs::File::create(file).map_err(|e| format!("cannot write {}: {}", file.display(), os_error(&e)))?;
    let devices = match dm {
        Some((rec, set)) => saved_devices(rec, set).map_err(|why| format!("domain {}: {why}", label(d)))?,
        None => Vec::new(),
    };
    let state = crate::save::DomainState { config, cpuid: &cpuid, vcpus: &vcpus, platform: &platform, devices: &devices };
    let mut last = 0;
    let r = crate::save::write_stream(std::io::BufWriter::new(f), &header, &state, &mut mem, |done, total| {
        if done * 10 / total > last {
            last = done * 10 / total;
            let _ = writeln!(env.note, "save: {} of {} MiB", done / 256, total / 256);
        }
    });
    match r {
        Ok(s) => {
            note(env, &format!("save: {} pages ({} of them zero), {} bytes", s.pages, s.zero_pages, s.bytes));
            Ok(s)
        }
        Err(e) => {
            let _ = std::fs::remove_file(file);
            Err(format!("cannot write {}: {}", file.display(), os_error(&e)).into())
        }
    }
}

/// Each device of a frozen device model's state set, with its place as
/// `create` recorded it (the set is in the device model's order: disks, then
/// vifs).
fn saved_devices<'a>(rec: &dm::Record, set: &'a [u8]) -> std::result::Result<Vec<crate::save::SavedDevice<'a>>, String> {
    use oxen_abi::save_stream::{DeviceHead, DeviceSet};
    let set = DeviceSet::parse(set).map_err(|e| format!("its device model's state: {e}"))?;
    let places = rec.disks.iter().map(|d| (d.base, d.gsi)).chain(rec.vifs.iter().map(|v| (v.base, v.gsi)));
    if set.len() != places.clone().count() {
        return Err(format!("its device model wrote {} device states for {} devices", set.len(), places.count()));
    }
    Ok(places
        .zip(set.iter())
        .map(|((base, gsi), state)| crate::save::SavedDevice { kind: oxen_abi::device_kind::VIRTIO_MMIO, head: DeviceHead { base, gsi }, state })
        .collect())
}

/// Retries `f` while the hypervisor answers -EAGAIN (a vCPU still stopping
/// or loading), up to `STATE_WAIT`.
fn state_wait<T>(hv: &mut dyn Hypervisor, d: &DomainInfo, mut f: impl FnMut(&mut dyn Hypervisor) -> hv::CallResult<T>) -> Result<T> {
    let start = hv.now();
    loop {
        match f(hv) {
            Err(CallError::Hv(HvError::Again)) if hv.now() - start < STATE_WAIT => hv.sleep(std::time::Duration::from_millis(10)),
            r => return r.map_err(|e| dom_failed(d, "move the vCPU state of", e).into()),
        }
    }
}

/// Where a restore's records go: the domain it makes, then its memory and state.
struct Restorer<'h> {
    hv: &'h mut dyn Hypervisor,
    host_vendor: u32,
    domain: Option<DomainInfo>,
    mem: Option<crate::foreign::ForeignMemory>,
    /// A live stream's rounds and the TSC offset chosen, as progress lines.
    rounds: Vec<String>,
    /// The config file the domain was made from and its text, recorded for
    /// the new ID once it runs (so it can be saved or migrated again).
    config: Option<(std::path::PathBuf, String)>,
    /// How the vCPUs' TSC goes on, and the offset chosen at the first vCPU
    /// for them all (their TSCs stay in step).
    tsc_rule: crate::save::TscRule,
    tsc_offset: Option<u64>,
    /// Where a vif's bridge is looked for (`Env::sys_net`).
    sys_net: std::path::PathBuf,
    /// The restored domain's devices, once `begin` placed them.
    devices: Option<RestoredDevices>,
}

/// A restored domain's disks and vifs: what its device model needs.
struct RestoredDevices {
    cfg: config::Config,
    placed: Vec<oxen_abi::DeviceAdd>,
    /// Each device's place and state from its `DEVICE` record.
    saved: Vec<Option<(oxen_abi::save_stream::DeviceHead, Vec<u8>)>>,
}

impl<'h> Restorer<'h> {
    /// Nothing made yet; `begin` makes the domain.
    /// A domain with disks or vifs gets its device model from
    /// `start_restored_dm` once the stream is read.
    fn new(hv: &'h mut dyn Hypervisor, host_vendor: u32, tsc_rule: crate::save::TscRule, sys_net: &Path) -> Self {
        let sys_net = sys_net.to_path_buf();
        Self { hv, host_vendor, domain: None, mem: None, rounds: Vec::new(), config: None, tsc_rule, tsc_offset: None, sys_net, devices: None }
    }

    /// Whose progress lines these are.
    fn verb(&self) -> &'static str {
        match self.tsc_rule {
            crate::save::TscRule::GoOn => "migrate-receive",
            crate::save::TscRule::NeverBack => "restore",
        }
    }
}

/// This host's TSC as dom0 reads it (dom0's vCPUs have no TSC offset).
fn host_tsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: RDTSC has no side effects; Linux lets user space run it.
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
    #[cfg(not(target_arch = "x86_64"))]
    0
}

impl crate::save::Loader for Restorer<'_> {
    fn begin(&mut self, h: &oxen_abi::save_stream::StreamHeader, config: &str, cpuid: &[oxen_abi::save_stream::CpuidEntry]) -> std::result::Result<(), String> {
        use oxen_abi::save_stream::{missing_features, vendor};
        let here = if self.host_vendor == 0 { vendor::INTEL } else { vendor::AMD };
        if h.vendor != here {
            let name = |v| if v == vendor::INTEL { "Intel VT-x" } else { "AMD-V" };
            return Err(format!("the domain was saved on {}, this host has {}: its vCPU state loads only on an {} host", name(h.vendor), name(here), name(h.vendor)));
        }
        let (from, text) = match config.split_once('\n') {
            Some((first, rest)) if first.starts_with(CONFIG_FROM) => (std::path::PathBuf::from(&first[CONFIG_FROM.len()..]), rest),
            _ => (std::path::PathBuf::from("saved-config"), config),
        };
        let file = from.display().to_string();
        self.config = Some((from.clone(), text.to_string()));
        let mut cfg = config::parse(&file, text).map_err(|e| format!("the saved config: {e}"))?;
        cfg.resolve_paths(from.parent().unwrap_or(Path::new("")));
        if cfg.memory_mib != h.memory_mib || cfg.vcpus != h.vcpus {
            return Err(format!("the saved config says {} MiB and {} vCPUs, the saved state {} MiB and {}: the file is not consistent", cfg.memory_mib, cfg.vcpus, h.memory_mib, h.vcpus));
        }
        let images = check_images(&cfg).map_err(|e| format!("{file}: {e}"))?;
        let host = hv::phys_info(self.hv).map_err(|e| call_failed("read the host's state", e))?;
        let want_kib = u64::from(h.memory_mib) * 1024;
        if host.free_kib < want_kib {
            return Err(format!(
                "the domain needs {} MiB but the hypervisor has {} MiB free (see 'oxl info'): destroy a domain to make room",
                h.memory_mib,
                host.free_kib / 1024
            ));
        }
        let sched = cfg.sched(&file, host.cpus).map_err(|e| e.to_string())?;
        dm::check_disks(&file, &cfg.disks)?;
        dm::check_vifs(&file, None, &cfg.vifs, &self.sys_net)?;
        let devices = device_names(&cfg);
        let (domid, placed) = create(self.hv, &cfg, &images, &sched, true, &devices, &mut |_, _| Ok(()))?;
        if !placed.is_empty() {
            let saved = vec![None; placed.len()];
            self.devices = Some(RestoredDevices { cfg: cfg.clone(), placed, saved });
        }
        let d = hv::info(self.hv, domid).map_err(|e| call_failed("find the new domain", e))?;
        self.domain = Some(d);
        hv::domain_op(self.hv, domctl::START_PAUSED, domid).map_err(|e| dom_failed(&d, "start (paused)", e))?;
        let shown = hv::cpuid_get(self.hv, domid).map_err(|e| dom_failed(&d, "read the CPUID of", e))?;
        let lookup = |leaf: u32, sub: u32| shown.iter().find(|e| e.leaf == leaf && e.subleaf == sub).map_or([0; 4], |e| e.regs);
        let missing: Vec<String> = missing_features(cpuid.iter().copied(), lookup).map(|(r, bits)| format!("{r} bits {bits:#x}")).collect();
        if !missing.is_empty() {
            return Err(format!("this host's CPU lacks features the guest was shown: {}", missing.join(", ")));
        }
        let mem = crate::foreign::ForeignMemory::open(domid, h.pages()).map_err(|e| format!("cannot map the new domain's memory: {}", os_error(&e)))?;
        self.mem = Some(mem);
        Ok(())
    }

    fn memory(&mut self) -> &mut dyn crate::save::GuestPages {
        self.mem.as_mut().expect("begin made it")
    }

    fn vcpu(&mut self, index: u32, state: &[u8]) -> std::result::Result<(), String> {
        let d = self.domain.expect("begin made it");
        let (saved, saved_offset) = crate::save::saved_tsc(state)?;
        let offset = match self.tsc_offset {
            Some(o) => o,
            None => {
                let o = crate::save::tsc_offset_for(self.tsc_rule, saved, saved_offset, host_tsc());
                if o != saved_offset {
                    // Said in guest-TSC ticks: the guest was told its rate, not this host's.
                    self.rounds.push(format!("{}: the guest's TSC goes on from {saved} (its offset from this host's TSC: {})", self.verb(), o as i64));
                }
                *self.tsc_offset.insert(o)
            }
        };
        let state = &crate::save::with_tsc_offset(state, offset)?;
        state_wait(self.hv, &d, |hv| hv::vcpu_state_set(hv, d.domid, index, state)).map_err(|e| match e {
            Error::Command(m) | Error::Setup(m) => m,
        })
    }

    fn platform(&mut self, state: &[u8]) -> std::result::Result<(), String> {
        let d = self.domain.expect("begin made it");
        hv::platform_state_set(self.hv, d.domid, state).map_err(|e| dom_failed(&d, "load the devices' state into", e))
    }

    fn device(&mut self, index: u32, kind: u32, state: &[u8]) -> std::result::Result<(), String> {
        let Some(devs) = self.devices.as_mut() else {
            return Err(format!("the stream holds the state of device {index}, and its config has no disk or vif"));
        };
        let Some(slot) = devs.saved.get_mut(index as usize) else {
            return Err(format!("the stream holds the state of device {index}, and its config has {} devices", devs.placed.len()));
        };
        if kind != oxen_abi::device_kind::VIRTIO_MMIO {
            return Err(format!("device {index} is of kind {kind}, which this oxl does not restore"));
        }
        let (head, state) = oxen_abi::save_stream::DeviceHead::decode(state).map_err(|e| format!("device {index}: {e}"))?;
        let here = &devs.placed[index as usize];
        if (here.base, here.gsi) != (head.base, head.gsi) {
            return Err(format!(
                "device {index} was at {:#x}, GSI {} and is placed at {:#x}, GSI {} here: the guest would not find it",
                head.base, head.gsi, here.base, here.gsi
            ));
        }
        *slot = Some((head, state.to_vec()));
        Ok(())
    }

    fn round(&mut self, round: u32, sent: u64, dirtied: u64) {
        self.rounds.push(format!("migrate-receive: round {round}: {sent} pages, {dirtied} written meanwhile"));
    }
}

/// Starts a restored domain's device model, its devices going on from the
/// states the stream carried, and records it as `create` does; nothing for a
/// domain without disks or vifs (or no domain).
fn start_restored_dm(env: &mut Env, d: Option<&DomainInfo>, devs: Option<&RestoredDevices>) -> std::result::Result<(), String> {
    let (Some(d), Some(devs)) = (d, devs) else { return Ok(()) };
    let missing: Vec<String> = devs.saved.iter().enumerate().filter(|(_, s)| s.is_none()).map(|(i, _)| i.to_string()).collect();
    if !missing.is_empty() {
        return Err(format!("the stream has no state for device(s) {} of the domain's {}", missing.join(", "), devs.placed.len()));
    }
    let dir = env.state_dir.ok_or("no state directory to hand the device model its devices' state")?;
    let states: Vec<&[u8]> = devs.saved.iter().flatten().map(|(_, s)| s.as_slice()).collect();
    let mut set = Vec::new();
    oxen_abi::save_stream::device_set_join(states.into_iter(), |p| set.extend_from_slice(p));
    let resume = dir.join(format!("{}.dm.resume", d.domid));
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&resume, &set))
        .map_err(|e| format!("cannot write {} for the device model: {}", resume.display(), os_error(&e)))?;
    let disks = dm::placed(&devs.cfg, &devs.placed);
    let vifs = dm::placed_vifs(&devs.cfg, d.domid, &devs.placed);
    let req = dm::Request {
        domid: d.domid,
        name: &devs.cfg.name,
        disks: disks.clone(),
        vifs: vifs.clone(),
        state_file: Some(dm::state_path(dir, d.domid)),
        resume: Some(resume.clone()),
    };
    let started = (env.launch)(&req);
    let _ = std::fs::remove_file(&resume);
    let started = started?;
    record_dm(env, d.domid, &dm::Record::new(&started, &disks, &vifs));
    Ok(())
}

fn cmd_restore(env: &mut Env, file: &Path, paused: bool, json: bool) -> Result {
    let f = std::fs::File::open(file).map_err(|e| format!("cannot read {}: {}", file.display(), os_error(&e)))?;
    let mut hv = connect(env)?;
    let start = hv.now();
    let host_vendor = hv::phys_info(&mut *hv).map_err(|e| call_failed("read the host's state", e))?.vendor;
    let mut r = Restorer::new(&mut *hv, host_vendor, crate::save::TscRule::NeverBack, env.sys_net);
    let mut notes = Vec::new();
    let mut last = 0;
    let read = crate::save::read_stream(std::io::BufReader::new(f), &mut r, |done, total| {
        if done * 10 / total.max(1) > last {
            last = done * 10 / total.max(1);
            notes.push(format!("restore: {} of {} MiB", done / 256, total / 256));
        }
    });
    let (domain, mem, recorded, devices) = (r.domain, r.mem.take(), r.config.take(), r.devices.take());
    drop(mem);
    for n in notes.into_iter().chain(std::mem::take(&mut r.rounds)) {
        note(env, &n);
    }
    // Its device model, from the devices' saved state, before a vCPU runs.
    let read = read.map_err(|e| e.to_string()).and_then(|s| start_restored_dm(env, domain.as_ref(), devices.as_ref()).map(|()| s));
    let (d, summary) = match (read, domain) {
        (Ok(s), Some(d)) => (d, s),
        (Err(e), d) => {
            let why = format!("{}: {e}", file.display());
            return Err(match d {
                None => why,
                Some(d) => match destroy_and_wait(&mut *hv, &d) {
                    Ok(()) => format!("{why}; the half-restored domain {} was destroyed again", label(&d)),
                    Err(e2) => format!("{why}; destroying the half-restored domain failed too ({e2}): run 'oxl destroy {}'", d.domid),
                },
            }
            .into());
        }
        (Ok(_), None) => return Err(format!("{}: no domain in it", file.display()).into()),
    };
    if let Some((from, text)) = recorded {
        record_config(env, d.domid, &from, &text);
    }
    if !paused {
        state_wait(&mut *hv, &d, |hv| hv::domain_op(hv, domctl::UNPAUSE, d.domid))?;
    }
    if json {
        let seconds = (hv.now() - start).as_secs_f64();
        return out(env, &crate::save::json_summary(crate::save::Op::Restore, &show::name(&d), d.domid, file, &summary, seconds));
    }
    out(env, &format!("Restored domain {} (id {}){}\n", show::name(&d), d.domid, if paused { ", paused: 'oxl unpause' runs it" } else { "" }))
}

/// How long `migrate` waits for the receiving host to connect and, after the
/// stream, to load the domain and answer.
const MIGRATE_CONNECT: std::time::Duration = std::time::Duration::from_secs(10);
const MIGRATE_ANSWER: std::time::Duration = std::time::Duration::from_secs(300);

/// The migrating domain, for `migrate::send_live`.
struct Live<'h> {
    hv: &'h mut dyn Hypervisor,
    d: DomainInfo,
    pages: u64,
    mem: crate::foreign::ForeignMemory,
    logging: bool,
    /// When it was paused for the stop-and-copy.
    paused_at: Option<std::time::Duration>,
    /// Its device model (the state directory and the record), whose writes
    /// to guest memory each round adds to the log, frozen with the domain.
    dm: Option<(std::path::PathBuf, dm::Record)>,
    /// The device model's states, once frozen.
    frozen: Option<Vec<u8>>,
}

impl crate::migrate::LiveSource for Live<'_> {
    fn memory(&mut self) -> &mut dyn crate::save::GuestPages {
        &mut self.mem
    }

    fn log_dirty(&mut self, on: bool) -> std::result::Result<(), String> {
        hv::log_dirty(self.hv, self.d.domid, on).map_err(|e| match e {
            CallError::Hv(HvError::Busy) if on => format!("domain {} is logging its dirty pages already (another migration?)", label(&self.d)),
            e => dom_failed(&self.d, if on { "log the dirty pages of" } else { "stop logging the dirty pages of" }, e),
        })?;
        self.logging = on;
        Ok(())
    }

    fn clean(&mut self, bitmap: &mut [u64]) -> std::result::Result<u64, String> {
        let mut n = hv::log_dirty_clean(self.hv, self.d.domid, self.pages, bitmap).map_err(|e| dom_failed(&self.d, "read the dirty pages of", e))?;
        // What the device model wrote: not in the hypervisor's log.
        if let Some((dir, rec)) = &self.dm {
            let pages = dm::dirty(dir, self.d.domid, rec).map_err(|why| format!("domain {}: {why}", label(&self.d)))?;
            for p in pages.into_iter().filter(|&p| p < self.pages) {
                let (w, b) = ((p / 64) as usize, p % 64);
                if bitmap[w] & (1 << b) == 0 {
                    bitmap[w] |= 1 << b;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    fn pause(&mut self) -> std::result::Result<(), String> {
        hv::domain_op(self.hv, domctl::PAUSE, self.d.domid).map_err(|e| dom_failed(&self.d, "pause", e))?;
        self.paused_at = Some(self.hv.now());
        // Its device model stops with it: what it wrote up to here is in the
        // next clean, its devices' state in the stream.
        if let Some((dir, rec)) = &self.dm {
            let set = dm::freeze(dir, self.d.domid, rec).map_err(|why| format!("domain {}: {why}", label(&self.d)))?;
            self.frozen = Some(set);
        }
        Ok(())
    }

    fn state(&mut self) -> std::result::Result<crate::migrate::PausedState, String> {
        let d = self.d;
        let text = |e: Error| match e {
            Error::Command(m) | Error::Setup(m) => m,
        };
        let mut vcpus = Vec::new();
        for v in 0..d.vcpus {
            vcpus.push(state_wait(self.hv, &d, |hv| hv::vcpu_state_get(hv, d.domid, v)).map_err(text)?);
        }
        let platform = hv::platform_state_get(self.hv, d.domid).map_err(|e| dom_failed(&d, "read the devices' state of", e))?;
        let devices = match (&self.dm, &self.frozen) {
            (Some((_, rec)), Some(set)) => saved_devices(rec, set)
                .map_err(|why| format!("domain {}: {why}", label(&d)))?
                .into_iter()
                .map(|s| crate::migrate::DeviceState { kind: s.kind, head: s.head, state: s.state.to_vec() })
                .collect(),
            _ => Vec::new(),
        };
        Ok((vcpus, platform, devices))
    }
}

impl Live<'_> {
    /// After a failure: logging off, and the domain running again if the
    /// migration paused it. Returns what could not be undone, if anything.
    fn resume(&mut self) -> Option<String> {
        let mut left = Vec::new();
        if self.logging {
            if let Err(e) = hv::log_dirty(self.hv, self.d.domid, false) {
                left.push(dom_failed(&self.d, "stop logging the dirty pages of", e));
            }
            self.logging = false;
        }
        if let (Some((_, rec)), Some(_)) = (&self.dm, self.frozen.take()) {
            dm::thaw(rec);
        }
        if self.paused_at.take().is_some() {
            if let Err(e) = hv::domain_op(self.hv, domctl::UNPAUSE, self.d.domid) {
                left.push(dom_failed(&self.d, "unpause", e));
            }
        }
        (!left.is_empty()).then(|| left.join("; "))
    }
}

/// Whether `fd` has something to read now (the receiver's `ERROR` line).
fn readable(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd that lives across the call; a zero timeout.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
}

fn cmd_migrate(env: &mut Env, dom: &str, host_spec: &str, policy: crate::migrate::Policy, json: bool) -> Result {
    use crate::migrate::{read_reply, send_live, write_reply, Reply, SendError};
    use oxen_abi::save_stream::{flags, vendor, StreamHeader};
    use std::io::BufRead;
    use std::net::{TcpStream, ToSocketAddrs};
    use std::os::fd::AsRawFd;
    let (host, port) = crate::migrate::host_port(host_spec)?;
    let mut hv = connect(env)?;
    let start = hv.now();
    let d = find(&mut *hv, dom)?;
    not_dom0(&d, "migrate")?;
    let config = recorded_config(env, &d, "migrated")?;
    // Its device model, if it has disks or vifs: its writes to guest memory go
    // with each round, it freezes with the domain, its devices' state goes too.
    let dm = match (served_by(env, &d), env.state_dir) {
        (Some(rec), Some(dir)) => Some((dir.to_path_buf(), rec)),
        _ => None,
    };
    if d.state != oxen_abi::DomainState::Running as u32 {
        return Err(format!("domain {} is not running (state {}): only a running domain migrates ('oxl unpause' it first, or 'oxl save' it)", label(&d), show::state(&d)).into());
    }
    let info = hv::phys_info(&mut *hv).map_err(|e| call_failed("read the host's state", e))?;
    let cpuid = hv::cpuid_get(&mut *hv, d.domid).map_err(|e| dom_failed(&d, "read the CPUID of", e))?;
    let header = StreamHeader {
        flags: flags::LIVE,
        abi_version: oxen_abi::ABI_VERSION,
        vendor: if info.vendor == 0 { vendor::INTEL } else { vendor::AMD },
        memory_mib: (d.memory_kib / 1024) as u32,
        vcpus: d.vcpus,
        tsc_hz: info.tsc_khz * 1000,
    };
    let addrs: Vec<_> = (host.as_str(), port).to_socket_addrs().map_err(|e| format!("cannot resolve '{host}': {}", os_error(&e)))?.collect();
    let conn = addrs
        .iter()
        .find_map(|a| TcpStream::connect_timeout(a, MIGRATE_CONNECT).ok())
        .ok_or_else(|| format!("cannot connect to {host} port {port}: is 'oxl migrate-receive' running in that host's dom0 (and the port open)?"))?;
    let _ = conn.set_nodelay(true);
    let mut answers = std::io::BufReader::new(conn.try_clone().map_err(|e| format!("the connection: {}", os_error(&e)))?);
    let fd = conn.as_raw_fd();
    let mem = crate::foreign::ForeignMemory::open(d.domid, header.pages()).map_err(|e| format!("cannot map domain {}'s memory: {}", label(&d), os_error(&e)))?;
    let mut live = Live { hv: &mut *hv, d, pages: header.pages(), mem, logging: false, paused_at: None, dm: dm.clone(), frozen: None };
    let mut peer = || -> Option<String> {
        if !readable(fd) {
            return None;
        }
        let mut line = String::new();
        let _ = answers.read_line(&mut line);
        Some(match line.trim_end().split_once(' ') {
            Some(("ERROR", why)) => why.to_string(),
            _ if line.is_empty() => "it closed the connection".to_string(),
            _ => format!("it said {:?}", line.trim_end()),
        })
    };
    // Each round's line as it ends, with the rate since the round before.
    let mut last = (std::time::Instant::now(), 0u64);
    let note_to = &mut *env.note;
    let mut round = |r: &oxen_abi::save_stream::Round, bytes: u64| {
        let (at, before) = std::mem::replace(&mut last, (std::time::Instant::now(), bytes));
        let rate = (bytes - before) as f64 / at.elapsed().as_secs_f64().max(1e-3) / 1e6;
        let what = if r.dirtied == 0 && r.round > 1 { "the stop-and-copy".to_string() } else { format!("{} written meanwhile", r.dirtied) };
        let _ = writeln!(note_to, "migrate: round {}: {} pages sent, {what}, {rate:.1} MB/s", r.round, r.sent);
    };
    let hooks = crate::migrate::Hooks { peer: &mut peer, round: &mut round };
    let sent = send_live(std::io::BufWriter::with_capacity(1 << 20, &conn), &header, (&config, &cpuid), &mut live, policy, hooks);
    let failed = |live: &mut Live, why: String| -> Error {
        match live.resume() {
            None => format!("{why}; domain {} runs on here", label(&live.d)).into(),
            Some(left) => format!("{why}; and resuming domain {} here failed: {left}", label(&live.d)).into(),
        }
    };
    let sent = match sent {
        Ok(s) => s,
        Err(e @ SendError::Io(_)) => {
            // The receiver may have said why before it closed.
            let why = match read_reply(&mut answers) {
                Ok(Reply::Error(why)) => SendError::Refused(why).to_string(),
                _ => e.to_string(),
            };
            return Err(failed(&mut live, why));
        }
        Err(e) => return Err(failed(&mut live, e.to_string())),
    };
    let _ = conn.set_read_timeout(Some(MIGRATE_ANSWER));
    match read_reply(&mut answers) {
        Ok(Reply::Ready) => {}
        Ok(Reply::Error(why)) => return Err(failed(&mut live, SendError::Refused(why).to_string())),
        Ok(r) => return Err(failed(&mut live, format!("the receiving host answered {r:?} instead of READY"))),
        Err(e) => return Err(failed(&mut live, format!("the receiving host did not confirm the stream: {e}"))),
    }
    let paused_at = live.paused_at.unwrap_or(start);
    let d = live.d;
    drop(live);
    // From here the domain must not run in two places: this copy stays paused.
    if let Err(e) = write_reply(&mut &conn, &Reply::Go) {
        return Err(format!("could not tell the receiving host to run the domain ({}); domain {} is left paused here: 'oxl unpause' it", os_error(&e), label(&d)).into());
    }
    match read_reply(&mut answers) {
        Ok(Reply::Running) => {}
        Ok(Reply::Error(why)) => {
            // The receiver destroyed its copy: this one runs on.
            let _ = hv::log_dirty(&mut *hv, d.domid, false);
            if let Some((_, rec)) = &dm {
                dm::thaw(rec);
            }
            hv::domain_op(&mut *hv, domctl::UNPAUSE, d.domid).map_err(|e| dom_failed(&d, "unpause", e))?;
            return Err(format!("the receiving host could not run the domain: {why}; domain {} runs on here", label(&d)).into());
        }
        r => {
            let why = match r {
                Ok(r) => format!("answered {r:?}"),
                Err(e) => e,
            };
            // Paused here for good unless the admin says otherwise: without
            // the logging a migration left on.
            let _ = hv::log_dirty(&mut *hv, d.domid, false);
            return Err(format!(
                "the receiving host did not say whether it runs the domain ({why}); domain {} is left paused here: if it does not run on {host}, 'oxl unpause {}' here",
                label(&d),
                d.domid
            )
            .into());
        }
    }
    let downtime = (hv.now() - paused_at).as_secs_f64();
    destroy_and_wait(&mut *hv, &d)?;
    if let Some((dir, _)) = &dm {
        // It ends with its domain (disks flushed at the freeze); its record goes.
        dm::stop(dir, d.domid, DM_STOP_WAIT);
    }
    let seconds = (hv.now() - start).as_secs_f64();
    if json {
        return out(env, &crate::migrate::json_summary(&show::name(&d), d.domid, host_spec, &sent, downtime, seconds));
    }
    out(
        env,
        &format!(
            "Migrated domain {} to {host_spec} in {seconds:.1} s: {} rounds, {} pages sent ({} MiB), downtime {downtime:.2} s\n",
            label(&d),
            sent.rounds,
            sent.pages,
            sent.bytes >> 20
        ),
    )
}

fn cmd_migrate_receive(env: &mut Env, port: u16, timeout: u64, json: bool) -> Result {
    use crate::migrate::{read_reply, write_reply, Reply};
    use std::io::{BufReader, Read};
    use std::net::TcpListener;
    let mut hv = connect(env)?;
    let host_vendor = hv::phys_info(&mut *hv).map_err(|e| call_failed("read the host's state", e))?.vendor;
    let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("cannot listen on port {port}: {}", os_error(&e)))?;
    note(env, &format!("migrate-receive: waiting on port {port}"));
    let conn = if timeout == 0 {
        listener.accept().map(|(c, _)| c)
    } else {
        // Wait for a connection at most `timeout` s (the listener polled).
        listener.set_nonblocking(true).map_err(|e| format!("port {port}: {}", os_error(&e)))?;
        let until = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
        loop {
            match listener.accept() {
                Ok((c, _)) => break c.set_nonblocking(false).map(|()| c),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(100))
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Err(format!("no migration came in {timeout} s on port {port}").into())
                }
                Err(e) => break Err(e),
            }
        }
    }
    .map_err(|e| format!("port {port}: {}", os_error(&e)))?;
    let from = conn.peer_addr().map(|a| a.ip().to_string()).unwrap_or_else(|_| "?".into());
    let start = hv.now();
    let mut r = Restorer::new(&mut *hv, host_vendor, crate::save::TscRule::GoOn, env.sys_net);
    let mut reader = BufReader::with_capacity(1 << 20, &conn);
    let read = crate::save::read_stream(&mut reader, &mut r, |_, _| {});
    let (domain, mem, rounds, recorded, devices) = (r.domain, r.mem.take(), std::mem::take(&mut r.rounds), r.config.take(), r.devices.take());
    drop(mem);
    // Its device model, from the devices' state in the stream, before READY.
    let read = read.map_err(|e| e.to_string()).and_then(|s| start_restored_dm(env, domain.as_ref(), devices.as_ref()).map(|()| s));
    for n in rounds {
        note(env, &n);
    }
    let state_dir = env.state_dir;
    // Undoes a half-received domain after `why`, telling the sender.
    let give_up = |hv: &mut dyn Hypervisor, d: Option<DomainInfo>, why: String| -> Error {
        let _ = write_reply(&mut &conn, &Reply::Error(why.clone()));
        let _ = conn.shutdown(std::net::Shutdown::Write);
        // Take what the sender still had on the way, so that it reads the ERROR
        // line rather than a reset connection.
        let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        let _ = std::io::copy(&mut (&conn).take(1 << 30), &mut std::io::sink());
        let why = format!("from {from}: {why}");
        match d {
            None => why.into(),
            Some(d) => match destroy_and_wait(hv, &d) {
                Ok(()) => {
                    // A device model started for it ends with it; so does its record.
                    if let Some(dir) = state_dir {
                        dm::stop(dir, d.domid, DM_STOP_WAIT);
                    }
                    format!("{why}; the half-received domain {} was destroyed again", label(&d)).into()
                }
                Err(e2) => format!("{why}; destroying the half-received domain failed too ({e2}): run 'oxl destroy {}'", d.domid).into(),
            },
        }
    };
    let (d, summary) = match (read, domain) {
        (Ok(s), Some(d)) => (d, s),
        (Err(e), d) => return Err(give_up(&mut *hv, d, e)),
        (Ok(_), None) => return Err(give_up(&mut *hv, None, "the stream held no domain".into())),
    };
    if let Err(e) = write_reply(&mut &conn, &Reply::Ready) {
        return Err(give_up(&mut *hv, Some(d), format!("could not answer: {}", os_error(&e))));
    }
    // A sender that went silent (its host down) must not keep this one waiting.
    let _ = conn.set_read_timeout(Some(MIGRATE_ANSWER));
    match read_reply(&mut reader) {
        Ok(Reply::Go) => {}
        Ok(r) => return Err(give_up(&mut *hv, Some(d), format!("the sender said {r:?} instead of GO; the domain stays there"))),
        Err(e) => return Err(give_up(&mut *hv, Some(d), format!("the sender did not say GO ({e}); the domain stays there"))),
    }
    if let Err(e) = state_wait(&mut *hv, &d, |hv| hv::domain_op(hv, domctl::UNPAUSE, d.domid)) {
        let why = match e {
            Error::Command(m) | Error::Setup(m) => m,
        };
        return Err(give_up(&mut *hv, Some(d), why));
    }
    let _ = write_reply(&mut &conn, &Reply::Running);
    if let Some((from, text)) = recorded {
        record_config(env, d.domid, &from, &text);
    }
    if json {
        let seconds = (hv.now() - start).as_secs_f64();
        return out(env, &crate::save::json_summary(crate::save::Op::Receive, &show::name(&d), d.domid, std::path::Path::new(&from), &summary, seconds));
    }
    out(env, &format!("Received domain {} (id {}) from {from}; it runs\n", show::name(&d), d.domid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_device_models_states_become_records_at_their_places() {
        let rec = dm::Record::parse(
            "pid 7\nlog /var/log/oxen/web.dm.log\ndisk xvda 0xfeb00000 16 rw /srv/web.img\nvif vif3.0 0xfeb01000 17 00:16:3e:00:00:01 xenbr0\n",
        )
        .unwrap();
        let mut set = Vec::new();
        oxen_abi::save_stream::device_set_join([&b"disk"[..], b"vif"].into_iter(), |p| set.extend_from_slice(p));
        let devs = saved_devices(&rec, &set).unwrap();
        let got: Vec<(u64, u32, &[u8])> = devs.iter().map(|d| (d.head.base, d.head.gsi, d.state)).collect();
        assert_eq!(got, [(0xfeb0_0000, 16, &b"disk"[..]), (0xfeb0_1000, 17, &b"vif"[..])]);
        assert!(devs.iter().all(|d| d.kind == oxen_abi::device_kind::VIRTIO_MMIO));
        // A set that does not match the recorded devices, or is not a set, is refused.
        let mut one = Vec::new();
        oxen_abi::save_stream::device_set_join([&b"disk"[..]].into_iter(), |p| one.extend_from_slice(p));
        assert_eq!(saved_devices(&rec, &one).unwrap_err(), "its device model wrote 1 device states for 2 devices");
        assert!(saved_devices(&rec, b"junk").unwrap_err().starts_with("its device model's state: "));
    }
}
