//! The emulators: QEMU and Bochs command lines, KVM/TCG choice, and booting an
//! ISO while watching its serial log for the hypervisor's last line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::Deserialize;

use crate::util::{log_lines, read_lossy, repo_root, Emulator as Proc};

/// The line the hypervisor prints last before halting every CPU.
pub const HALT_MARKER: &str = "(oxen) halt:";

/// Default Bochs speed; with `clock: sync=none` it only sets how emulated time
/// relates to instructions.
pub const BOCHS_IPS: u64 = 20_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Emulator {
    Qemu,
    Bochs,
}

impl std::fmt::Display for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Emulator::Qemu => "qemu",
            Emulator::Bochs => "bochs",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        })
    }
}

/// KVM only when it can run a hypervisor inside: /dev/kvm opens, the host CPU
/// has VMX/SVM, and the KVM module allows nested guests. Returns the reason.
pub fn detect_accel() -> (Accel, String) {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    if let Err(e) = kvm {
        return (Accel::Tcg, format!("/dev/kvm is not usable ({e})"));
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().collect())
        .unwrap_or_default();
    let Some(ext) = ["vmx", "svm"].into_iter().find(|f| flags.contains(f)) else {
        return (
            Accel::Tcg,
            "/dev/kvm works but the host CPU shows neither vmx nor svm (no nested virtualization)"
                .into(),
        );
    };
    let param = if ext == "vmx" { "kvm_intel" } else { "kvm_amd" };
    let path = format!("/sys/module/{param}/parameters/nested");
    match std::fs::read_to_string(&path).map(|s| s.trim().to_string()) {
        Ok(v) if v == "Y" || v == "1" => (
            Accel::Kvm,
            format!("/dev/kvm works, host has {ext}, {path} = {v}"),
        ),
        Ok(v) => (
            Accel::Tcg,
            format!("{path} = {v}: KVM does not allow nested guests"),
        ),
        Err(_) => (
            Accel::Tcg,
            format!("host has {ext} but {path} is absent: nested KVM unavailable"),
        ),
    }
}

/// One virtual machine.
#[derive(Clone, Debug)]
pub struct Machine {
    pub emulator: Emulator,
    /// QEMU `-cpu` value or Bochs `cpu: model=`; `None` picks the default for the accelerator.
    pub cpu: Option<String>,
    pub smp: u32,
    pub memory_mib: u32,
    pub accel: Accel,
    /// QEMU `-icount shift=0`: one instruction per virtual nanosecond (bench).
    pub icount: bool,
    pub bochs_ips: u64,
}

/// Where the guest's COM1 goes.
pub enum Serial<'a> {
    /// The terminal, multiplexed with the QEMU monitor (Ctrl-A X quits, Ctrl-A C: monitor).
    Terminal,
    File(&'a Path),
}

impl Machine {
    pub fn cpu_model(&self) -> String {
        match (&self.cpu, self.emulator, self.accel) {
            (Some(c), _, _) => c.clone(),
            (None, Emulator::Qemu, Accel::Kvm) => "host".into(),
            (None, Emulator::Qemu, Accel::Tcg) => "max".into(),
            (None, Emulator::Bochs, _) => "corei7_skylake_x".into(),
        }
    }

    /// The QEMU command line booting `iso`.
    pub fn qemu(&self, iso: &Path, serial: Serial) -> Command {
        let mut c = Command::new("qemu-system-x86_64");
        c.args([
            "-accel",
            if self.accel == Accel::Kvm {
                "kvm"
            } else {
                "tcg"
            },
        ]);
        c.args(["-cpu", &self.cpu_model()]);
        c.args([
            "-smp",
            &self.smp.to_string(),
            "-m",
            &self.memory_mib.to_string(),
        ]);
        if self.icount {
            c.args(["-icount", "shift=0"]);
        }
        c.args(["-no-reboot", "-boot", "d", "-cdrom"]).arg(iso);
        // Lets the hypervisor's `debug_exit=0xf4` option end QEMU.
        c.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        match serial {
            Serial::Terminal => {
                c.args(["-nographic", "-serial", "mon:stdio"]);
            }
            Serial::File(path) => {
                c.args([
                    "-display",
                    "none",
                    "-monitor",
                    "none",
                    "-parallel",
                    "none",
                    "-serial",
                ]);
                c.arg(format!("file:{}", path.display()));
            }
        }
        c
    }

    /// A bochsrc (from `qemu/bochsrc.in`) for running Bochs from the ISO's directory.
    pub fn bochsrc(&self, iso_name: &str, serial_name: &str) -> Result<String> {
        let path = repo_root().join("qemu/bochsrc.in");
        let t = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(t.replace("@MEMORY_MIB@", &self.memory_mib.to_string())
            .replace("@SERIAL@", serial_name)
            .replace("@ISO@", iso_name)
            .replace("@CPU_MODEL@", &self.cpu_model())
            .replace("@SMP@", &self.smp.to_string())
            .replace("@IPS@", &self.bochs_ips.to_string()))
    }

    /// Writes bochsrc and dbg.rc into `dir`; returns the Bochs command to run there.
    pub fn bochs(&self, dir: &Path, iso_name: &str, serial_name: &str) -> Result<Command> {
        std::fs::write(dir.join("bochsrc"), self.bochsrc(iso_name, serial_name)?)?;
        // Bochs here is built with its debugger: `c` lets it run.
        std::fs::write(dir.join("dbg.rc"), "c\n")?;
        let mut c = Command::new("bochs");
        c.args(["-q", "-f", "bochsrc", "-rc", "dbg.rc"])
            .current_dir(dir);
        Ok(c)
    }
}

/// How a watched boot ended.
pub enum Ending {
    /// The serial log has a `(oxen) halt:` line.
    Halted,
    /// The emulator exited before the hypervisor halted.
    Exited(std::process::ExitStatus),
    TimedOut,
}

pub struct Boot {
    pub ending: Ending,
    pub elapsed: Duration,
    pub serial: String,
    pub command: String,
}

/// Boots `iso` (in `dir`) headless with COM1 into `dir/serial.log`, stopping the
/// emulator when the hypervisor prints its halt line, when it exits, or at `timeout`.
/// `dir/emulator.log` gets the emulator's own output.
pub fn boot_and_watch(m: &Machine, dir: &Path, iso: &Path, timeout: Duration) -> Result<Boot> {
    let serial_path: PathBuf = dir.join("serial.log");
    let _ = std::fs::remove_file(&serial_path);
    std::fs::File::create(&serial_path)?;
    let mut cmd = match m.emulator {
        Emulator::Qemu => m.qemu(iso, Serial::File(&serial_path)),
        Emulator::Bochs => {
            let iso_name = iso
                .file_name()
                .context("ISO path has no file name")?
                .to_string_lossy()
                .into_owned();
            if iso.parent() != Some(dir) {
                std::fs::copy(iso, dir.join(&iso_name))?;
            }
            m.bochs(dir, &iso_name, "serial.log")?
        }
    };
    let command = match cmd.get_current_dir() {
        Some(d) => format!("cd {} && {}", d.display(), crate::util::render(&cmd)),
        None => crate::util::render(&cmd),
    };
    let start = Instant::now();
    let mut proc = Proc::spawn(&mut cmd, &dir.join("emulator.log"))?;
    let ending = loop {
        std::thread::sleep(Duration::from_millis(100));
        let text = read_lossy(&serial_path);
        if log_lines(&text).iter().any(|l| l.contains(HALT_MARKER)) {
            break Ending::Halted;
        }
        if let Some(status) = proc.try_wait() {
            break Ending::Exited(status);
        }
        if start.elapsed() >= timeout {
            break Ending::TimedOut;
        }
    };
    let elapsed = start.elapsed();
    proc.kill();
    Ok(Boot {
        ending,
        elapsed,
        serial: read_lossy(&serial_path),
        command,
    })
}
