//! The command line: xl's commands and options, as far as Oxen has them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use oxen_abi::MAX_WEIGHT;

use crate::cpulist::CpuList;

#[derive(Debug, Parser)]
#[command(
    name = "oxl",
    version,
    about = "Oxen's domain administration tool (the counterpart of Xen's xl)",
    long_about = "Oxen's domain administration tool (the counterpart of Xen's xl).\n\n\
                  Runs in dom0 as root and talks to the hypervisor through /dev/oxen. \
                  DOM is a domain's ID or its name (see 'oxl list').",
    after_help = "Domain config files use xl's syntax (key = value): see README.md, section 'oxl'."
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Create a domain from a config file and start it.
    Create {
        /// The domain's config file (xl syntax: name, memory, vcpus, kernel, ramdisk, extra, on_*,
        /// weight, cap, cpus).
        #[arg(value_name = "CFG")]
        config: PathBuf,
        /// Leave the domain paused after building it ('oxl unpause' starts it).
        #[arg(short, long)]
        paused: bool,
        /// Attach to the domain's console once it is created.
        #[arg(short, long)]
        console: bool,
        /// Declare each 'disk' and 'vif' as a virtio-mmio device in the domain's ACPI tables
        /// although no device model serves it yet (for testing the hypervisor's side: the
        /// guest must not load virtio_mmio). Without it, a config with disks or vifs is refused.
        #[arg(long)]
        declare_devices: bool,
    },
    /// List domains: name, ID, memory, vCPUs, state and CPU time.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only these domains (IDs or names).
        #[arg(value_name = "DOM")]
        domains: Vec<String>,
    },
    /// Show the host: ABI version, CPU vendor, CPUs, TSC frequency, memory, domains.
    Info {
        /// Print JSON instead of "key : value" lines.
        #[arg(long)]
        json: bool,
    },
    /// Stop a domain's vCPUs until 'oxl unpause'.
    Pause {
        #[arg(value_name = "DOM")]
        domain: String,
    },
    /// Resume a paused domain, or start one created with --paused.
    Unpause {
        #[arg(value_name = "DOM")]
        domain: String,
    },
    /// Ask a domain to power off; the hypervisor ends it if the guest does not.
    Shutdown {
        /// Wait until the domain has shut down.
        #[arg(short, long)]
        wait: bool,
        #[arg(value_name = "DOM")]
        domain: String,
    },
    /// Ask a domain to reboot; the hypervisor restarts it if the guest does not.
    Reboot {
        /// Wait until the domain has rebooted.
        #[arg(short, long)]
        wait: bool,
        #[arg(value_name = "DOM")]
        domain: String,
    },
    /// End a domain at once and wait until its memory is free again.
    Destroy {
        #[arg(value_name = "DOM")]
        domain: String,
    },
    /// Attach to a domain's console: its output as it comes, what you type to it (Ctrl-] detaches).
    #[command(
        long_about = "Attach to a domain's console, as 'xl console': its output from the oldest \
                      byte the hypervisor keeps, as it comes, and what you type to the domain \
                      (the terminal is raw while attached, so Ctrl-C goes to the domain too; \
                      it is restored when oxl ends, also on SIGTERM or SIGHUP). Ctrl-] detaches.\n\n\
                      When standard input is not a terminal (a pipe or a file), its bytes are \
                      sent as the domain takes them, and the output is shown until the domain \
                      ends, or until the input ends (or brings a Ctrl-] byte) and the output \
                      has then been quiet for 1 s (at most 10 s after the end of the input).\n\n\
                      Console input needs a hypervisor with ABI 1.3 or later; with an older one \
                      oxl says so and shows the output only. dom0's console is the serial line: \
                      DOM must be a domU."
    )]
    Console {
        /// Print what the console ring holds now and exit, without attaching
        /// (for scripts: no terminal needed).
        #[arg(short, long)]
        dump: bool,
        #[arg(value_name = "DOM")]
        domain: String,
    },
    /// List a domain's virtual disks (xl's block-list): xl's columns, then where
    /// the device sits (MMIO base, GSI), its mode and its backing in dom0.
    BlockList {
        #[arg(value_name = "DOM")]
        domain: String,
    },
    /// List a domain's virtual NICs (xl's network-list): xl's columns, then where
    /// the device sits (MMIO base, GSI), its bridge and its tap device in dom0.
    NetworkList {
        #[arg(value_name = "DOM")]
        domain: String,
    },
    /// Raise (1) or lower (0) a domain's interrupt line, as a device model does (for
    /// debugging device models): only a line the hypervisor gave one of its devices.
    IrqLine {
        #[arg(value_name = "DOM")]
        domain: String,
        /// The line (GSI) 'oxl create --declare-devices' printed for the device.
        #[arg(value_name = "GSI")]
        gsi: u32,
        #[arg(value_name = "LEVEL", value_parser = clap::value_parser!(u8).range(0..=1))]
        level: u8,
    },
    /// Print the hypervisor's log.
    Dmesg {
        /// Keep printing new lines as they are logged (Ctrl-C stops).
        #[arg(short, long)]
        follow: bool,
    },
    /// Show domains and their CPU use, refreshed (q quits).
    Top {
        /// Batch mode: print plain frames one after another, for scripts.
        #[arg(short, long)]
        batch: bool,
        /// Stop after this many frames.
        #[arg(short = 'n', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        iterations: Option<u32>,
        /// Seconds between frames (fractions allowed).
        #[arg(short, long, value_name = "SECS", default_value = "3", value_parser = parse_delay)]
        delay: Duration,
        /// Show every vCPU too: its pCPU, state, CPU time and %, affinity.
        #[arg(short, long)]
        vcpus: bool,
    },
    /// Show or set domains' credit-scheduler weight and cap.
    #[command(
        long_about = "Show or set domains' credit-scheduler weight and cap.\n\n\
                      Without -d: every domain's weight and cap. With -d: that domain's, after \
                      setting what -w and -c give. A domain gets CPU time in proportion to its \
                      weight when pCPUs are contended; a cap limits it even when they are not."
    )]
    SchedCredit {
        /// The domain to show or change (default: show every domain).
        #[arg(short, long, value_name = "DOM")]
        domain: Option<String>,
        /// Set the weight: 1 to 65535, default 256 (512 gets twice the CPU of 256).
        #[arg(short, long, value_name = "WEIGHT", requires = "domain",
              value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_WEIGHT)))]
        weight: Option<u32>,
        /// Set the cap: the most CPU the domain may use, in percent of one pCPU
        /// (100 = one pCPU, at most 100 x pCPUs); 0 = no cap.
        #[arg(short, long, value_name = "CAP", requires = "domain")]
        cap: Option<u32>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List vCPUs: the pCPU each is on, its state, CPU time and affinity.
    VcpuList {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only these domains' vCPUs (IDs or names).
        #[arg(value_name = "DOM")]
        domains: Vec<String>,
    },
    /// Read or set a paused domU vCPU's complete state (a debugging aid; the
    /// bytes are what save/restore will carry).
    #[command(
        hide = true,
        long_about = "Read or set a paused domU vCPU's complete state: registers, segments, control \
                      registers, MSRs, extended state, pending events, its local APIC and KVM clock.\n\n\
                      Without options: prints every field as NAME VALUE. -o FILE: writes the state's \
                      bytes (docs/hypercalls.md, \"vCPU state encoding\"). --set FILE: loads a state \
                      from such a file. --reg NAME=VALUE (repeatable): changes fields of the current \
                      state and loads it. The domain must be paused ('oxl pause') and stays paused."
    )]
    VcpuState {
        #[arg(value_name = "DOM")]
        domain: String,
        #[arg(value_name = "VCPU")]
        vcpu: u32,
        /// Write the state's bytes to FILE instead of printing its fields.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Load the state in FILE into the vCPU.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["output", "reg"])]
        set: Option<PathBuf>,
        /// Change a field of the current state and load it (e.g. arch.rbx=0x10).
        #[arg(long, value_name = "NAME=VALUE", conflicts_with = "output")]
        reg: Vec<String>,
    },
    /// Save a domU to FILE: pause it, write its memory and its vCPUs' and
    /// devices' state (docs/migration.md), then destroy it (-c: let it run on).
    Save {
        /// Leave the domain running after the save (a checkpoint).
        #[arg(short = 'c', long)]
        checkpoint: bool,
        /// Print a JSON summary (domain, file, bytes, pages, seconds) instead of a sentence.
        #[arg(long)]
        json: bool,
        #[arg(value_name = "DOM")]
        domain: String,
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Create a domU again from a file 'oxl save' wrote: same name and
    /// config, a new ID; it continues where it stopped.
    Restore {
        /// Leave it paused ('oxl unpause' runs it).
        #[arg(short, long)]
        paused: bool,
        /// Print a JSON summary (domain, ID, file, bytes, pages, seconds) instead of a sentence.
        #[arg(long)]
        json: bool,
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Move a running domU to another Oxen host, live, as 'xl migrate': its
    /// memory is copied while it runs, then it pauses briefly and goes on
    /// there; it is destroyed here only once the other host runs it.
    #[command(
        long_about = "Move a running domU to another Oxen host, as 'xl migrate': the other host's \
                      dom0 must be running 'oxl migrate-receive'. The domain's memory is copied \
                      while it runs, in rounds that send again the pages it wrote meanwhile \
                      (dirty-page logging); when a round finds few pages written, the domain \
                      pauses, the rest and its vCPUs' and devices' state are sent, and it goes on \
                      on the other host. It is destroyed here only after the other host says it \
                      runs; on any failure before that it runs on here. Each round is printed \
                      (pages sent, written meanwhile, rate), and the downtime at the end \
                      (docs/migration.md)."
    )]
    Migrate {
        /// Print a JSON summary (rounds, pages, bytes, downtime, seconds) instead of a sentence.
        #[arg(long)]
        json: bool,
        /// Pre-copy rounds after the first, at most.
        #[arg(long, default_value_t = crate::migrate::Policy::default().max_rounds, value_parser = clap::value_parser!(u32).range(0..=1000))]
        max_rounds: u32,
        /// The most memory (MiB) the paused domain may still have to send after the
        /// last round; a domain writing more than that is not moved (it runs on).
        #[arg(long, default_value_t = crate::migrate::Policy::default().max_final_pages / 256, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
        max_final_mib: u64,
        #[arg(value_name = "DOM")]
        domain: String,
        /// The receiving dom0's address, with :PORT if it listens on another
        /// port than 8002.
        #[arg(value_name = "HOST[:PORT]")]
        host: String,
    },
    /// Receive one domU that another host's 'oxl migrate' sends, and run it.
    MigrateReceive {
        /// The TCP port to listen on.
        #[arg(short, long, default_value_t = crate::migrate::DEFAULT_PORT, value_parser = clap::value_parser!(u16).range(1..))]
        port: u16,
        /// Give up if no migration has come in this many seconds (0: wait for ever).
        #[arg(long, default_value_t = 0)]
        timeout: u64,
        /// Print a JSON summary (domain, ID, bytes, pages, seconds) instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// Let a domain's vCPU (or all its vCPUs) run only on some pCPUs.
    VcpuPin {
        #[arg(value_name = "DOM")]
        domain: String,
        /// The vCPU's number, or all (every vCPU of the domain).
        #[arg(value_name = "VCPU", value_parser = parse_vcpu)]
        vcpu: Vcpus,
        /// The pCPUs: all (no pinning), or a list like 0-1,3; ^N leaves pCPU N out (all,^0).
        #[arg(value_name = "CPUS", value_parser = CpuList::parse)]
        cpus: CpuList,
    },
}

/// Which vCPUs of a domain a command is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vcpus {
    All,
    One(u32),
}

impl Cmd {
    /// The subcommand's name, for error messages (`oxl: pause: ...`).
    pub fn name(&self) -> &'static str {
        match self {
            Cmd::Create { .. } => "create",
            Cmd::List { .. } => "list",
            Cmd::Info { .. } => "info",
            Cmd::Pause { .. } => "pause",
            Cmd::Unpause { .. } => "unpause",
            Cmd::Shutdown { .. } => "shutdown",
            Cmd::Reboot { .. } => "reboot",
            Cmd::Destroy { .. } => "destroy",
            Cmd::Console { .. } => "console",
            Cmd::IrqLine { .. } => "irq-line",
            Cmd::BlockList { .. } => "block-list",
            Cmd::NetworkList { .. } => "network-list",
            Cmd::Dmesg { .. } => "dmesg",
            Cmd::Top { .. } => "top",
            Cmd::SchedCredit { .. } => "sched-credit",
            Cmd::VcpuPin { .. } => "vcpu-pin",
            Cmd::VcpuList { .. } => "vcpu-list",
            Cmd::VcpuState { .. } => "vcpu-state",
            Cmd::Save { .. } => "save",
            Cmd::Restore { .. } => "restore",
            Cmd::Migrate { .. } => "migrate",
            Cmd::MigrateReceive { .. } => "migrate-receive",
        }
    }
}

/// `vcpu-pin`'s VCPU: a number or all.
fn parse_vcpu(s: &str) -> Result<Vcpus, String> {
    if s == "all" {
        return Ok(Vcpus::All);
    }
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("'{s}' is not a vCPU number or all"));
    }
    s.parse()
        .map(Vcpus::One)
        .map_err(|_| format!("vCPU {s} is out of range"))
}

/// `top -d`: seconds, 0.1 to 3600.
fn parse_delay(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(0.1..=3600.0).contains(&secs) {
        return Err(format!("{s} is outside 0.1 to 3600 seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cmd, clap::Error> {
        Cli::try_parse_from(std::iter::once("oxl").chain(args.iter().copied())).map(|c| c.cmd)
    }

    fn kind(args: &[&str]) -> ErrorKind {
        parse(args).expect_err("should not parse").kind()
    }

    #[test]
    fn commands_parse() {
        match parse(&["create", "-p", "-c", "vm.cfg"]).unwrap() {
            Cmd::Create {
                config,
                paused,
                console,
                declare_devices,
            } => {
                assert_eq!(config, PathBuf::from("vm.cfg"));
                assert!(paused && console && !declare_devices);
            }
            c => panic!("{c:?}"),
        }
        match parse(&["create", "--paused", "vm.cfg"]).unwrap() {
            Cmd::Create {
                paused, console, ..
            } => assert!(paused && !console),
            c => panic!("{c:?}"),
        }
        assert!(matches!(
            parse(&["create", "--declare-devices", "vm.cfg"]).unwrap(),
            Cmd::Create { declare_devices: true, .. }
        ));
        assert!(matches!(
            parse(&["save", "-c", "--json", "web", "/tmp/w.save"]).unwrap(),
            Cmd::Save { checkpoint: true, json: true, .. }
        ));
        assert!(matches!(parse(&["save", "web", "f"]).unwrap(), Cmd::Save { checkpoint: false, json: false, .. }));
        assert!(matches!(parse(&["restore", "--json", "-p", "f"]).unwrap(), Cmd::Restore { paused: true, json: true, .. }));
        match parse(&["irq-line", "web", "16", "1"]).unwrap() {
            Cmd::IrqLine { domain, gsi, level } => assert_eq!((domain.as_str(), gsi, level), ("web", 16, 1)),
            c => panic!("{c:?}"),
        }
        assert_eq!(kind(&["irq-line", "web", "16", "2"]), ErrorKind::ValueValidation);
        match parse(&["list", "--json", "web", "3"]).unwrap() {
            Cmd::List { json, domains } => {
                assert!(json);
                assert_eq!(domains, ["web", "3"]);
            }
            c => panic!("{c:?}"),
        }
        match parse(&["shutdown", "-w", "web"]).unwrap() {
            Cmd::Shutdown { wait, domain } => assert!(wait && domain == "web"),
            c => panic!("{c:?}"),
        }
        match parse(&["top", "-b", "-n", "2", "-d", "0.5", "--vcpus"]).unwrap() {
            Cmd::Top {
                batch,
                iterations,
                delay,
                vcpus,
            } => {
                assert!(batch && vcpus);
                assert_eq!(iterations, Some(2));
                assert_eq!(delay, Duration::from_millis(500));
            }
            c => panic!("{c:?}"),
        }
        match parse(&["top"]).unwrap() {
            Cmd::Top {
                batch,
                iterations,
                delay,
                vcpus,
            } => {
                assert!(!batch && !vcpus && iterations.is_none());
                assert_eq!(delay, Duration::from_secs(3));
            }
            c => panic!("{c:?}"),
        }
        assert!(matches!(
            parse(&["dmesg", "-f"]).unwrap(),
            Cmd::Dmesg { follow: true }
        ));
        assert_eq!(parse(&["reboot", "-w", "1"]).unwrap().name(), "reboot");
        match parse(&["sched-credit", "-d", "web", "-w", "512", "-c", "0"]).unwrap() {
            Cmd::SchedCredit {
                domain,
                weight,
                cap,
                json,
            } => {
                assert_eq!(domain.as_deref(), Some("web"));
                assert_eq!((weight, cap, json), (Some(512), Some(0), false));
            }
            c => panic!("{c:?}"),
        }
        match parse(&["sched-credit", "--json"]).unwrap() {
            Cmd::SchedCredit {
                domain,
                weight,
                cap,
                json,
            } => assert!(domain.is_none() && weight.is_none() && cap.is_none() && json),
            c => panic!("{c:?}"),
        }
        assert!(parse(&["sched-credit", "--domain", "1", "--weight", "65535"]).is_ok());
        match parse(&["vcpu-pin", "web", "1", "0-1,3"]).unwrap() {
            Cmd::VcpuPin { domain, vcpu, cpus } => {
                assert_eq!((domain.as_str(), vcpu), ("web", Vcpus::One(1)));
                assert_eq!(cpus, CpuList::parse("0-1,3").unwrap());
            }
            c => panic!("{c:?}"),
        }
        match parse(&["vcpu-list", "--json", "web", "0"]).unwrap() {
            Cmd::VcpuList { json, domains } => assert!(json && domains == ["web", "0"]),
            c => panic!("{c:?}"),
        }
        match parse(&["vcpu-pin", "3", "all", "all"]).unwrap() {
            Cmd::VcpuPin { vcpu, cpus, .. } => {
                assert_eq!(vcpu, Vcpus::All);
                assert_eq!(cpus, CpuList::parse("all").unwrap());
            }
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn vcpu_state_parses() {
        match parse(&["vcpu-state", "web", "1", "--reg", "arch.rip=0x10", "--reg", "arch.rax=1"]).unwrap() {
            Cmd::VcpuState { domain, vcpu, output, set, reg } => {
                assert_eq!((domain.as_str(), vcpu, output, set), ("web", 1, None, None));
                assert_eq!(reg, ["arch.rip=0x10", "arch.rax=1"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(&["vcpu-state", "web", "0", "-o", "f"]).unwrap(), Cmd::VcpuState { output: Some(_), .. }));
        // Saving and loading at once makes no sense.
        assert_eq!(kind(&["vcpu-state", "web", "0", "-o", "f", "--set", "g"]), ErrorKind::ArgumentConflict);
        assert_eq!(kind(&["vcpu-state", "web", "x"]), ErrorKind::ValueValidation);
    }

    #[test]
    fn usage_errors() {
        assert_eq!(
            kind(&[]),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        );
        assert_eq!(kind(&["lst"]), ErrorKind::InvalidSubcommand);
        assert_eq!(kind(&["create"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(kind(&["pause"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(kind(&["pause", "a", "b"]), ErrorKind::UnknownArgument);
        assert_eq!(kind(&["list", "--jsn"]), ErrorKind::UnknownArgument);
        assert_eq!(kind(&["destroy", "-w", "web"]), ErrorKind::UnknownArgument);
        assert_eq!(kind(&["top", "-n", "0"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["top", "-d", "fast"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["top", "-d", "0"]), ErrorKind::ValueValidation);
        assert_eq!(
            kind(&["sched-credit", "-w", "512"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&["sched-credit", "-c", "50"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&["sched-credit", "-d", "1", "-w", "0"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&["sched-credit", "-d", "1", "-w", "65536"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&["sched-credit", "-d", "1", "-c", "-1"]),
            ErrorKind::UnknownArgument
        );
        assert_eq!(
            kind(&["sched-credit", "-d", "1", "-c", "x"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&["vcpu-pin", "web", "0"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&["vcpu-pin", "web", "x", "0"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&["vcpu-pin", "web", "0", "3-1"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&["vcpu-pin", "web", "0", "1,,2"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(kind(&["--help"]), ErrorKind::DisplayHelp);
        assert_eq!(kind(&["create", "--help"]), ErrorKind::DisplayHelp);
        assert_eq!(kind(&["--version"]), ErrorKind::DisplayVersion);
    }

    #[test]
    fn usage_errors_say_what_was_wrong() {
        let e = parse(&["lst"]).unwrap_err().to_string();
        assert!(e.contains("'lst'") && e.contains("'list'"), "{e}");
        let e = parse(&["top", "-d", "fast"]).unwrap_err().to_string();
        assert!(e.contains("'fast' is not a number of seconds"), "{e}");
        let e = parse(&["create"]).unwrap_err().to_string();
        assert!(e.contains("<CFG>"), "{e}");
        let e = parse(&["sched-credit", "-d", "1", "-w", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("'0'") && e.contains("1..=65535"), "{e}");
        let e = parse(&["sched-credit", "-w", "5"]).unwrap_err().to_string();
        assert!(e.contains("--domain <DOM>"), "{e}");
        let e = parse(&["vcpu-pin", "web", "one", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("'one' is not a vCPU number or all"), "{e}");
        let e = parse(&["vcpu-pin", "web", "99999999999", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("vCPU 99999999999 is out of range"), "{e}");
        let e = parse(&["vcpu-pin", "web", "0", "0-x"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'0-x' is not a pCPU, a range of them (N-M) or all"),
            "{e}"
        );
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
