//! The emulators: QEMU and Bochs command lines, KVM/TCG choice, and booting an
//! ISO while watching its serial log for the hypervisor's last line.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use regex::Regex;
use serde::Deserialize;

use crate::util::{log_lines, read_lossy, repo_root, Emulator as Proc};

/// QEMU's `-d cpu_reset` log in a test's directory: each CPU's registers at
/// every reset (the first ones at power-on).
pub const QEMU_RESET_LOG: &str = "qemu-reset.log";
/// Every CPU's registers (QEMU's `info registers -a`) and APIC when a test timed out
/// or was stopped at a line it cannot pass after, beside the serial log: where a host
/// that stopped making progress was spinning or waiting.
pub const QEMU_TIMEOUT_LOG: &str = "qemu-at-timeout.log";

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
    /// QEMU only: a raw disk image attached as a virtio block device (read-only).
    pub disk: Option<PathBuf>,
    /// QEMU only: a raw image attached read-write as a virtio block device,
    /// without QEMU's image lock, so that both machines of a two-host test
    /// share it (the storage both hosts of a migration see).
    pub shared_disk: Option<PathBuf>,
    /// QEMU only: an HTTP response file QEMU's user network sends to each
    /// guest connection to `HTTP_ADDR` port 80 (`guestfwd`, `cat` of it).
    pub serve: Option<PathBuf>,
    /// QEMU only: the machine's NIC is wired to another machine's instead of
    /// QEMU's user network (two hosts for a migration).
    pub link: Option<Link>,
}

/// A wire between two QEMU machines: a TCP connection on the loopback
/// carrying their NICs' frames (QEMU's socket network). One end listens,
/// the other connects; each NIC has its own MAC.
#[derive(Clone, Debug)]
pub struct Link {
    pub port: u16,
    pub listen: bool,
    pub mac: String,
}

/// Where a guest on QEMU's user network fetches `Machine::serve` (port 80).
pub const HTTP_ADDR: &str = "10.0.2.100";

/// Where the guest's COM1 goes.
pub enum Serial<'a> {
    /// The terminal, multiplexed with the QEMU monitor (escape key `QEMU_ESCAPE`: Ctrl-\ x quits, Ctrl-\ c: monitor).
    Terminal,
    File(&'a Path),
    /// A Unix socket QEMU listens on (and waits for a client before starting the
    /// machine), so xtask can both read COM1 and type into it.
    Socket(&'a Path),
}

/// What QEMU boots.
#[derive(Clone, Copy)]
pub enum Media<'a> {
    /// A GRUB ISO (the hypervisor and its modules).
    Iso(&'a Path),
    /// A Linux kernel booted directly by QEMU (`-kernel -initrd -append`), without the
    /// hypervisor: dom0's kernel and initramfs bare, for comparison and for testing them.
    Linux {
        kernel: &'a Path,
        initrd: &'a Path,
        append: &'a str,
    },
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
        self.qemu_media(Media::Iso(iso), serial)
    }

    /// The QEMU command line booting `media`.
    pub fn qemu_media(&self, media: Media, serial: Serial) -> Command {
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
        c.arg("-no-reboot");
        match media {
            Media::Iso(iso) => {
                c.args(["-boot", "d", "-cdrom"]).arg(iso);
            }
            Media::Linux {
                kernel,
                initrd,
                append,
            } => {
                c.arg("-kernel").arg(kernel);
                c.arg("-initrd").arg(initrd);
                c.args(["-append", append]);
            }
        }
        if let Some(disk) = &self.disk {
            c.arg("-drive").arg(format!(
                "file={},if=virtio,format=raw,readonly=on",
                disk.display()
            ));
        }
        if let Some(disk) = &self.shared_disk {
            c.arg("-drive").arg(format!(
                "file={},if=virtio,format=raw,file.locking=off",
                disk.display().to_string().replace(',', ",,")
            ));
        }
        if let Some(response) = &self.serve {
            // The machine's NIC as QEMU's default (an e1000 on the user
            // network), plus the forward. QEMU splits options at commas: a
            // comma in the path is written twice.
            let path = response.display().to_string().replace(',', ",,");
            // `cat` alone ends the command as soon as it has written, and slirp then drops
            // what it had not sent yet (the guest got a truncated file): the command stays
            // until the guest has read it all and closed.
            c.arg("-nic").arg(format!("user,model=e1000,guestfwd=tcp:{HTTP_ADDR}:80-cmd:sh -c \"cat '{path}'; sleep 30\""));
        }
        if let Some(l) = &self.link {
            let end = if l.listen { "listen" } else { "connect" };
            c.arg("-nic").arg(format!("socket,model=e1000,mac={},{end}=127.0.0.1:{}", l.mac, l.port));
        }
        // Lets the hypervisor's `debug_exit=0xf4` option end QEMU.
        c.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
        match serial {
            Serial::Terminal => {
                // QEMU's escape key moves from Ctrl-A (which the hypervisor's
                // console uses: Ctrl-A three times) to Ctrl-\: Ctrl-\ x quits.
                c.args(["-nographic", "-serial", "mon:stdio", "-echr", &QEMU_ESCAPE.to_string()]);
            }
            Serial::File(path) => {
                c.args(["-display", "none", "-monitor", "none", "-parallel", "none"]);
                c.arg("-serial").arg(format!("file:{}", path.display()));
                // Every CPU's state as it resets, beside the serial log: a
                // machine that resets under a test (a triple fault of the
                // host, which `-no-reboot` turns into QEMU's exit) says where.
                if let Some(dir) = path.parent() {
                    c.args(["-d", "cpu_reset", "-D"]).arg(dir.join(QEMU_RESET_LOG));
                }
            }
            Serial::Socket(path) => {
                c.args(["-display", "none", "-monitor", "none", "-parallel", "none"]);
                c.arg("-chardev").arg(format!(
                    "socket,id=com1,path={},server=on,wait=on",
                    path.display()
                ));
                c.args(["-serial", "chardev:com1"]);
            }
        }
        // Extra QEMU options for a debugging run (traces, `-d` logs), never set
        // by the tests themselves: last, so that a `-d`/`-D` of theirs wins.
        if let Some(extra) = std::env::var_os("OXEN_QEMU_ARGS") {
            c.args(extra.to_string_lossy().split_whitespace());
        }
        c
    }

    /// A bochsrc (from `qemu/bochsrc.in`) for running Bochs from the ISO's directory.
    pub fn bochsrc(&self, iso_name: &str, com1: BochsCom1) -> Result<String> {
        let path = repo_root().join("qemu/bochsrc.in");
        let t = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(t.replace("@MEMORY_MIB@", &self.memory_mib.to_string())
            .replace("@COM1@", &com1.bochsrc())
            .replace("@ISO@", iso_name)
            .replace("@CPU_MODEL@", &self.cpu_model())
            .replace("@SMP@", &self.smp.to_string())
            .replace("@IPS@", &self.bochs_ips.to_string()))
    }

    /// Writes bochsrc and dbg.rc into `dir`; returns the Bochs command to run there.
    pub fn bochs(&self, dir: &Path, iso_name: &str, com1: BochsCom1) -> Result<Command> {
        std::fs::write(dir.join("bochsrc"), self.bochsrc(iso_name, com1)?)?;
        // Bochs here is built with its debugger: `c` lets it run.
        std::fs::write(dir.join("dbg.rc"), "c\n")?;
        let mut c = Command::new("bochs");
        c.args(["-q", "-f", "bochsrc", "-rc", "dbg.rc"])
            .current_dir(dir);
        Ok(c)
    }
}

/// QEMU's escape key under `cargo xtask run`: Ctrl-\ (0x1c), so Ctrl-A reaches
/// the guest as typed (the hypervisor's console switch is Ctrl-A three times)
/// and so does Ctrl-] (`oxl console`'s detach key, as `xl console`'s).
pub const QEMU_ESCAPE: u8 = 0x1c;

/// Where Bochs' COM1 goes.
#[derive(Clone, Copy)]
pub enum BochsCom1<'a> {
    /// Output into a file in the run directory (input impossible).
    File(&'a str),
    /// A TCP server on 127.0.0.1:port; Bochs waits for one client before it
    /// starts, and COM1 is then both ways through it.
    Socket(u16),
}

impl BochsCom1<'_> {
    fn bochsrc(self) -> String {
        match self {
            Self::File(name) => format!("mode=file, dev={name}"),
            Self::Socket(port) => format!("mode=socket-server, dev=127.0.0.1:{port}"),
        }
    }
}

/// A loopback TCP port nobody listens on now (the OS picks it; Bochs binds it
/// right after, so the window for another taker is small).
/// Whether something listens on TCP `port` of the loopback (read from
/// /proc/net/tcp, so that the check takes no connection from the listener).
pub fn listening(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    // "sl local_address rem_address st ...": 0100007F:PORT (or 00000000:PORT), state 0A.
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[3] == "0A" && f[1].rsplit_once(':').is_some_and(|(_, p)| u16::from_str_radix(p, 16) == Ok(port))
    })
}

pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// COM1 as a stream xtask reads and types into: QEMU's Unix socket or Bochs' TCP one.
pub enum Com1Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Com1Stream {
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(match self {
            Self::Unix(s) => Self::Unix(s.try_clone()?),
            Self::Tcp(s) => Self::Tcp(s.try_clone()?),
        })
    }
}

impl std::io::Read for Com1Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Unix(s) => s.read(buf),
            Self::Tcp(s) => s.read(buf),
        }
    }
}

impl std::io::Write for Com1Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Unix(s) => s.write(buf),
            Self::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Unix(s) => s.flush(),
            Self::Tcp(s) => s.flush(),
        }
    }
}

/// Where the emulator serves COM1 for `connect`.
#[derive(Clone)]
pub enum Com1Server {
    Unix(PathBuf),
    Tcp(u16),
}

/// How a watched boot ended.
pub enum Ending {
    /// The serial log has a `(oxen) halt:` line.
    Halted,
    /// The `done` pattern matched (after every input was sent).
    Done,
    /// The emulator exited before the hypervisor halted.
    Exited(std::process::ExitStatus),
    TimedOut,
    /// A line with one of `Watch::abort_on` came (that line): the run was
    /// stopped then, as it could no longer pass.
    Aborted(String),
}

pub struct Boot {
    pub ending: Ending,
    pub elapsed: Duration,
    pub serial: String,
    pub command: String,
    /// Inputs that were typed, as `(index, when)`; the rest never found their pattern.
    pub sent: Vec<(usize, Duration)>,
    /// For each of `Watch::marks`, when a line first matched it (from the emulator's
    /// start, to within the 100 ms the log is polled at).
    pub marks: Vec<Option<Duration>>,
}

/// Text to type into the serial console once `after` matches.
#[derive(Clone, Debug)]
pub struct Input {
    pub after: Regex,
    pub send: String,
}

/// What ends a watched boot besides the timeout, and what to type.
#[derive(Clone, Debug, Default)]
pub struct Watch {
    /// Ends the run once every input is sent and a line after the last one matches.
    pub done: Option<Regex>,
    /// Typed in order; each waits for its `after` to match output that follows the
    /// point where the previous input's pattern matched.
    pub inputs: Vec<Input>,
    /// Patterns whose first matching line is timed (`Boot::marks`); they end nothing.
    pub marks: Vec<Regex>,
    /// Once every mark has matched, the run times out this long after the last one
    /// (instead of at the overall timeout).
    pub grace: Option<Duration>,
    /// Set by another thread to end the run (as `Ending::Done`): a test's
    /// peer machine, once the test's own machine has ended.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Texts that end the run at once when a line holds one (`Ending::Aborted`):
    /// faults after which the run cannot pass, so that waiting out its timeout
    /// (up to half an hour) buys nothing.
    pub abort_on: Vec<&'static str>,
}

/// The serial log as the watcher matches it: `\r` and NULs dropped, so `$` and
/// line splitting behave the same as in the checks.
fn normalize_serial(text: &str) -> String {
    text.chars().filter(|&c| c != '\r' && c != '\0').collect()
}

/// The watcher's progress through the inputs.
#[derive(Default)]
struct Typing {
    next: usize,
    /// Byte offset in the normalized log after which the next pattern must match.
    from: usize,
}

impl Typing {
    /// The inputs due now (in order), advancing past each one's match.
    fn due<'w>(&mut self, watch: &'w Watch, log: &str) -> Vec<(usize, &'w Input)> {
        let mut out = Vec::new();
        while let Some(input) = watch.inputs.get(self.next) {
            let Some(m) = log.get(self.from..).and_then(|t| input.after.find(t)) else {
                break;
            };
            self.from += m.end();
            out.push((self.next, input));
            self.next += 1;
        }
        out
    }

    /// Whether `done` matches a line of what followed the last input.
    fn done(&self, watch: &Watch, log: &str) -> bool {
        match &watch.done {
            Some(re) if self.next == watch.inputs.len() => log
                .get(self.from..)
                .is_some_and(|t| t.split('\n').any(|l| re.is_match(l))),
            _ => false,
        }
    }
}

/// A Unix socket path short enough for `sun_path` (108 bytes) wherever target/ is.
fn socket_path() -> PathBuf {
    socket_path_for("serial")
}

fn socket_path_for(what: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "oxen-{what}-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ))
}

/// Sends one command to a QEMU human monitor listening on `path` and returns what it
/// printed until it went quiet (a second without output, at most ten in all).
fn monitor_command(path: &Path, command: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(format!("{command}\n").as_bytes())?;
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while start.elapsed() < Duration::from_secs(10) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Err(e) => return Err(e),
        }
    }
    // The monitor's line editing: escape sequences and carriage returns.
    // The echo of the command is redrawn once per key typed: its line is dropped.
    let text = strip_escapes(&String::from_utf8_lossy(&out).replace('\r', ""));
    Ok(text.lines().filter(|l| !l.starts_with("(qemu)")).map(|l| format!("{l}\n")).collect())
}

/// `text` without ANSI escape sequences (ESC [ ... letter).
fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Connects to the emulator's serial socket once it has made it (it waits for us).
pub fn connect(server: &Com1Server, proc: &mut Proc) -> Result<Com1Stream> {
    let start = Instant::now();
    loop {
        let attempt = match server {
            Com1Server::Unix(path) => UnixStream::connect(path).map(Com1Stream::Unix),
            Com1Server::Tcp(port) => TcpStream::connect(("127.0.0.1", *port)).map(Com1Stream::Tcp),
        };
        match attempt {
            Ok(s) => return Ok(s),
            Err(e) => {
                if let Some(status) = proc.try_wait() {
                    bail!("the emulator exited ({status}) before opening its serial socket");
                }
                if start.elapsed() > Duration::from_secs(30) {
                    let at = match server {
                        Com1Server::Unix(p) => p.display().to_string(),
                        Com1Server::Tcp(port) => format!("127.0.0.1:{port}"),
                    };
                    bail!("the emulator did not open its serial socket {at} in 30s: {e}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Boots `iso` (in `dir`) headless with COM1 into `dir/serial.log`, stopping the
/// emulator when the hypervisor prints its halt line, when it exits, or at `timeout`.
/// `dir/emulator.log` gets the emulator's own output.
pub fn boot_and_watch(m: &Machine, dir: &Path, iso: &Path, timeout: Duration) -> Result<Boot> {
    boot_and_watch_with(m, dir, Media::Iso(iso), timeout, &Watch::default())
}

/// Like `boot_and_watch`, for any media; also stops when `watch.done` matches, and
/// types `watch.inputs` into COM1 (COM1 is then a socket — QEMU's Unix socket,
/// Bochs' loopback TCP server — that xtask relays into `dir/serial.log`).
pub fn boot_and_watch_with(
    m: &Machine,
    dir: &Path,
    media: Media,
    timeout: Duration,
    watch: &Watch,
) -> Result<Boot> {
    let serial_path: PathBuf = dir.join("serial.log");
    let _ = std::fs::remove_file(&serial_path);
    std::fs::File::create(&serial_path)?;
    let typed = !watch.inputs.is_empty();
    let socket = match m.emulator {
        Emulator::Qemu if typed => Some(Com1Server::Unix(socket_path())),
        Emulator::Bochs if typed => Some(Com1Server::Tcp(free_port()?)),
        _ => None,
    };
    let mut cmd = match (m.emulator, media) {
        (Emulator::Qemu, _) => match &socket {
            Some(Com1Server::Unix(sock)) => m.qemu_media(media, Serial::Socket(sock)),
            _ => m.qemu_media(media, Serial::File(&serial_path)),
        },
        (Emulator::Bochs, Media::Iso(iso)) => {
            let iso_name = iso
                .file_name()
                .context("ISO path has no file name")?
                .to_string_lossy()
                .into_owned();
            if iso.parent() != Some(dir) {
                std::fs::copy(iso, dir.join(&iso_name))?;
            }
            let com1 = match &socket {
                Some(Com1Server::Tcp(port)) => BochsCom1::Socket(*port),
                _ => BochsCom1::File("serial.log"),
            };
            m.bochs(dir, &iso_name, com1)?
        }
        (Emulator::Bochs, Media::Linux { .. }) => {
            bail!("booting a kernel without the hypervisor is implemented for QEMU only")
        }
    };
    // QEMU's monitor on a socket of its own, asked for the CPUs' state at a timeout.
    let monitor = (m.emulator == Emulator::Qemu).then(|| socket_path_for("monitor"));
    if let Some(path) = &monitor {
        let _ = std::fs::remove_file(path);
        cmd.arg("-monitor").arg(format!("unix:{},server=on,wait=off", path.display()));
    }
    let command = match cmd.get_current_dir() {
        Some(d) => format!("cd {} && {}", d.display(), crate::util::render(&cmd)),
        None => crate::util::render(&cmd),
    };
    if let Some(Com1Server::Unix(sock)) = &socket {
        let _ = std::fs::remove_file(sock);
    }
    let start = Instant::now();
    let mut proc = Proc::spawn(&mut cmd, &dir.join("emulator.log"))?;
    // With a socket: a thread copies COM1's output into serial.log; we keep a writer.
    let mut relay = None;
    let mut writer = None;
    if let Some(server) = &socket {
        let stream = connect(server, &mut proc);
        if let Com1Server::Unix(sock) = server {
            let _ = std::fs::remove_file(sock);
        }
        let stream = stream?;
        writer = Some(stream.try_clone()?);
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(&serial_path)?;
        let mut stream = stream;
        relay = Some(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 || log.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }));
    }
    let mut typing = Typing::default();
    let mut sent = Vec::new();
    let mut marks: Vec<Option<Duration>> = vec![None; watch.marks.len()];
    let mut deadline = timeout;
    // Each line with the wall time it came at (seconds since the start, 0.1 s steps), for
    // finding where a long run spends its time: `serial-times.log` beside the log.
    let mut times = std::fs::File::create(serial_path.with_file_name("serial-times.log")).ok();
    let mut timed = 0;
    let mut aborting: Option<Duration> = None;
    let ending = loop {
        std::thread::sleep(Duration::from_millis(100));
        let text = read_lossy(&serial_path);
        let lines = log_lines(&text);
        // The last element is the line still being written (empty after a newline).
        let complete = lines.len().saturating_sub(1);
        if let Some(f) = times.as_mut() {
            let at = start.elapsed().as_secs_f64();
            for l in &lines[timed.min(complete)..complete] {
                let _ = writeln!(f, "{at:8.1} {l}");
            }
        }
        timed = timed.max(complete);
        let mut marked = false;
        for (re, when) in watch.marks.iter().zip(marks.iter_mut()) {
            if when.is_none() && lines.iter().any(|l| re.is_match(l)) {
                *when = Some(start.elapsed());
                marked = true;
            }
        }
        if let (true, Some(grace)) = (marked && marks.iter().all(Option::is_some), watch.grace) {
            deadline = deadline.min(start.elapsed() + grace);
        }
        if lines.iter().any(|l| l.contains(HALT_MARKER)) {
            break Ending::Halted;
        }
        if let Some(l) = lines[..complete].iter().find(|l| watch.abort_on.iter().any(|a| l.contains(a))) {
            // What the hypervisor prints after such a line (the watchdog's
            // dump of the scheduler) comes within moments: wait for it.
            let at = *aborting.get_or_insert(start.elapsed());
            if start.elapsed() >= at + Duration::from_secs(2) {
                break Ending::Aborted(l.trim().to_owned());
            }
            continue;
        }
        let norm = normalize_serial(&text);
        for (i, input) in typing.due(watch, &norm) {
            if let Some(w) = writer.as_mut() {
                w.write_all(input.send.as_bytes())
                    .with_context(|| format!("typing input {} into COM1", i + 1))?;
            }
            sent.push((i, start.elapsed()));
        }
        if typing.done(watch, &norm) || watch.stop.as_ref().is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst)) {
            break Ending::Done;
        }
        if let Some(status) = proc.try_wait() {
            break Ending::Exited(status);
        }
        if start.elapsed() >= deadline {
            break Ending::TimedOut;
        }
    };
    let elapsed = start.elapsed();
    if let (Ending::TimedOut | Ending::Aborted(_), Some(path)) = (&ending, &monitor) {
        let mut state = monitor_command(path, "info registers -a")
            .unwrap_or_else(|e| format!("could not ask QEMU's monitor ({}): {e}\n", path.display()));
        // Each CPU's local APIC (IRR, ISR, its timer): a host CPU asleep with a
        // vector stuck in service takes no timer interrupt again.
        for cpu in 0..m.smp {
            let _ = monitor_command(path, &format!("cpu {cpu}"));
            if let Ok(lapic) = monitor_command(path, "info lapic") {
                state.push_str(&format!("\nCPU {cpu}'s local APIC:\n{lapic}"));
            }
        }
        let _ = std::fs::write(dir.join(QEMU_TIMEOUT_LOG), state);
    }
    proc.kill();
    if let Some(path) = &monitor {
        let _ = std::fs::remove_file(path);
    }
    drop(writer);
    if let Some(r) = relay {
        let _ = r.join();
    }
    Ok(Boot {
        ending,
        elapsed,
        serial: read_lossy(&serial_path),
        command,
        sent,
        marks,
    })
}

/// A line per CPU from a `QEMU_TIMEOUT_LOG`'s text: where it was (RIP,
/// privilege, halted or not, CR3) and its local APIC's timer, in-service and
/// requested vectors. What CI shows of a timed-out test is its report, not
/// the file.
pub fn summarize_timeout_state(text: &str) -> Vec<String> {
    let field = |line: &str, name: &str| -> Option<String> {
        let at = line.find(&format!("{name}="))? + name.len() + 1;
        Some(line[at..].split_whitespace().next().unwrap_or("").to_string())
    };
    let mut cpus: Vec<String> = Vec::new();
    let mut apic: Option<usize> = None;
    for line in text.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("CPU#") {
            let n = rest.split(|c: char| !c.is_ascii_digit()).next().unwrap_or("?");
            cpus.push(format!("CPU {n}:"));
            apic = None;
        } else if let Some(rest) = line.strip_prefix("CPU ").and_then(|r| r.strip_suffix("'s local APIC:")) {
            apic = rest.parse::<usize>().ok().filter(|&i| i < cpus.len());
        } else if let Some(i) = apic {
            for name in ["LVTT", "Timer", "ISR", "IRR"] {
                if let Some(v) = line.strip_prefix(name).filter(|v| v.starts_with(char::is_whitespace)) {
                    let v = v.split_whitespace().collect::<Vec<_>>().join(" ");
                    cpus[i].push_str(&format!(" {name} {v};"));
                }
            }
        } else if let Some(last) = cpus.last_mut() {
            if line.starts_with("RIP=") {
                for name in ["RIP", "CPL", "HLT"] {
                    if let Some(v) = field(line, name) {
                        last.push_str(&format!(" {name}={v}"));
                    }
                }
            } else if line.starts_with("CR0=") {
                if let Some(v) = field(line, "CR3") {
                    last.push_str(&format!(" CR3={v};"));
                }
            }
        }
    }
    cpus
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_state_is_a_line_per_cpu() {
        let text = "CPU#0\nRAX=0000000000000000 RBX=0000000000000001\nRIP=ffff800000123456 RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\n\
            CR0=80050033 CR2=0000000000000000 CR3=0000000001000000 CR4=00000620\n\
            CPU#1\nRIP=0000000000401000 RFL=00000202 [-------] CPL=3 II=0 A20=1 SMM=0 HLT=0\n\
            CR0=80050033 CR2=0 CR3=0000000002000000 CR4=00000620\n\
            \nCPU 0's local APIC:\ndumping local APIC state for CPU 0\n\n\
            LVTTHMR\t 0x00010000 active-hi edge  masked                      Fixed  (vec 0)\n\
            LVTT\t 0x000000ec active-hi edge                 one-shot Fixed  (vec 236)\n\
            Timer\t DCR=0x0 (divide by 2) initial_count = 0 current_count = 0\n\
            ISR\t (none)\nIRR\t 236\n\nCPU 1's local APIC:\nISR\t 253\n";
        assert_eq!(
            summarize_timeout_state(text),
            [
                "CPU 0: RIP=ffff800000123456 CPL=0 HLT=1 CR3=0000000001000000; LVTT 0x000000ec active-hi edge one-shot Fixed (vec 236); \
                 Timer DCR=0x0 (divide by 2) initial_count = 0 current_count = 0; ISR (none); IRR 236;",
                "CPU 1: RIP=0000000000401000 CPL=3 HLT=0 CR3=0000000002000000; ISR 253;",
            ]
        );
    }

    fn watch(done: Option<&str>, inputs: &[(&str, &str)]) -> Watch {
        Watch {
            done: done.map(|d| Regex::new(d).unwrap()),
            inputs: inputs
                .iter()
                .map(|(a, s)| Input {
                    after: Regex::new(a).unwrap(),
                    send: s.to_string(),
                })
                .collect(),
            ..Watch::default()
        }
    }

    #[test]
    fn monitor_output_loses_its_line_editing() {
        assert_eq!(strip_escapes("(qemu) \x1b[K\x1b[Dinfo\nRAX=1\x1b"), "(qemu) info\nRAX=1");
    }

    #[test]
    fn inputs_go_in_order_each_after_the_previous_match() {
        let w = watch(
            Some("^MARK-42$"),
            &[("# $", "echo one\n"), ("# $", "echo two\n")],
        );
        let mut t = Typing::default();
        let mut log = normalize_serial("boot\r\ndom0:/# ");
        let due: Vec<usize> = t.due(&w, &log).iter().map(|d| d.0).collect();
        assert_eq!(due, [0], "the second waits for a prompt after the first");
        assert!(!t.done(&w, &log));
        log.push_str("echo one\none\ndom0:/# ");
        let due: Vec<usize> = t.due(&w, &log).iter().map(|d| d.0).collect();
        assert_eq!(due, [1]);
        assert!(t.due(&w, &log).is_empty(), "each input is sent once");
        assert!(!t.done(&w, &log));
        log.push_str("echo two\nMARK-42\n");
        assert!(t.done(&w, &log));
    }

    #[test]
    fn done_waits_for_every_input() {
        let w = watch(Some("prompt"), &[("never", "x")]);
        let mut t = Typing::default();
        let log = "prompt\n";
        assert!(t.due(&w, log).is_empty());
        assert!(!t.done(&w, log));
        let w = watch(Some("^prompt$"), &[]);
        assert!(Typing::default().done(&w, &normalize_serial("x\r\nprompt\r\n")));
        assert!(!Typing::default().done(&watch(None, &[]), "prompt\n"));
    }

    #[test]
    fn qemu_serial_on_a_socket_and_direct_kernel_boot() {
        let m = Machine {
            emulator: Emulator::Qemu,
            cpu: None,
            smp: 1,
            memory_mib: 512,
            accel: Accel::Tcg,
            icount: false,
            bochs_ips: BOCHS_IPS,
            disk: None,
            shared_disk: None,
            serve: None,
            link: None,
        };
        let media = Media::Linux {
            kernel: Path::new("/k"),
            initrd: Path::new("/i"),
            append: "console=ttyS0 x=1",
        };
        let cmd = crate::util::render(&m.qemu_media(media, Serial::Socket(Path::new("/s"))));
        assert!(
            cmd.contains("-kernel /k -initrd /i -append 'console=ttyS0 x=1'"),
            "{cmd}"
        );
        assert!(
            cmd.contains("-chardev socket,id=com1,path=/s,server=on,wait=on -serial chardev:com1"),
            "{cmd}"
        );
        assert!(!cmd.contains("-cdrom"), "{cmd}");
    }
}
