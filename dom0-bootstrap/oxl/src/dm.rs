//! A domU's device model: the `oxen-dm` process that serves its virtio disks
//! and NICs from dom0 (issue 11), as xl starts a device model per HVM domain.
//!
//! `oxl create` checks every disk before anything is made ([`check_disks`]),
//! declares one virtio-mmio device per disk (DEVICE_ADD, before BUILD writes
//! the DSDT), then, with the domain built and still paused, starts `oxen-dm`
//! ([`launch`]) and waits for the line `ready` on a pipe of its own (file
//! descriptor 3 in the child) before it starts the domain. The device model
//! runs on after oxl exits, in its own session, its output appended to
//! `/var/log/oxen/NAME.dm.log` (xl: `/var/log/xen/qemu-dm-NAME.log`); it
//! ends by itself when its domain is gone, and `oxl destroy` tells it to.
//!
//! What oxl knows of it afterwards is `DOMID.dm` in the state directory
//! ([`Record`]): its PID, its log and the disks and vifs with their places. A
//! vif is a tap device in dom0 named `vifDOMID.N` (Xen's name) unless the spec
//! gives `vifname=`, which the device model adds to the vif's bridge.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::fs::FileTypeExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oxen_abi::DeviceAdd;

use crate::config::{Config, Setting};
use crate::devspec::{format_mac, Access, DiskSpec, VifSpec};
use crate::hv::os_error;

/// Where dom0 keeps the device model (`OXEN_DM` overrides it).
pub const DM_PATH: &str = "/usr/lib/oxen/oxen-dm";
/// Where device models' logs go (`OXEN_LOG_DIR` overrides it).
pub const LOG_DIR: &str = "/var/log/oxen";
/// How long `create` waits for `ready`: the device model opens its disks, maps
/// the domain's RAM and registers its windows, which takes well under a second
/// on hardware and a few under an emulator.
const READY_WAIT: Duration = Duration::from_secs(30);

/// Checks the config's disks before anything is created: each target exists,
/// is a regular file (or, for `phy:`, a block device), opens as its access
/// asks, is named once in the domain if it is written, and is not held by
/// another domain's device model (whose lock this tries and lets go again).
/// The error names the config's file and line.
pub fn check_disks(file: &str, disks: &[Setting<DiskSpec>]) -> Result<(), String> {
    for (i, Setting { value: d, line }) in disks.iter().enumerate() {
        let at = |why: String| format!("{file}:{line}: disk {} ({}): {why}", i + 1, d.vdev);
        if let Some(other) = disks[..i].iter().find(|o| same_file(&o.value.target, &d.target)) {
            if d.access == Access::ReadWrite || other.value.access == Access::ReadWrite {
                return Err(at(format!(
                    "{} is also {} (line {}): a disk written by the domain must be attached once",
                    d.target.display(),
                    other.value.vdev,
                    other.line
                )));
            }
        }
        check_target(d).map_err(at)?;
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => a == b,
    }
}

fn check_target(d: &DiskSpec) -> Result<(), String> {
    use crate::devspec::Backing;
    let shown = d.target.display();
    let meta = std::fs::metadata(&d.target).map_err(|e| format!("{shown}: {}", os_error(&e)))?;
    let kind = meta.file_type();
    match d.backing {
        Backing::File if !kind.is_file() => {
            return Err(if kind.is_block_device() {
                format!("{shown} is a block device: write it as 'phy:{shown}'")
            } else {
                format!("{shown} is not a regular file (a disk image is one)")
            })
        }
        Backing::Device if !kind.is_block_device() => {
            return Err(format!("{shown} is not a block device ('phy:' is for those; an image file is written without it)"))
        }
        _ => {}
    }
    let rw = d.access == Access::ReadWrite;
    let f = OpenOptions::new().read(true).write(rw).open(&d.target).map_err(|e| {
        let how = if rw { "read-write" } else { "read-only" };
        format!("cannot open {shown} {how}: {} (for a disk the domain only reads, give access 'ro')", os_error(&e))
    })?;
    if rw && (meta.len() == 0 && kind.is_file()) {
        return Err(format!("{shown} is empty: a disk image needs a size (e.g. 'truncate -s 1G {shown}')"));
    }
    let op = if rw { libc::LOCK_EX } else { libc::LOCK_SH };
    // SAFETY: flock on a descriptor `f` owns; the lock goes when `f` is closed.
    if unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            if rw {
                format!("{shown} is attached to another domain ('oxl block-list' shows which): a disk the domain writes cannot be shared; give 'ro' on every domain to share it read-only")
            } else {
                format!("{shown} is attached read-write to another domain ('oxl block-list' shows which)")
            }
        } else {
            format!("cannot lock {shown}: {}", os_error(&e))
        });
    }
    Ok(())
}

/// Checks the config's vifs before anything is created: each bridge exists in
/// dom0 (`sys_net` is `/sys/class/net`), and no interface has a vif's name yet.
pub fn check_vifs(file: &str, domid_hint: Option<u32>, vifs: &[Setting<VifSpec>], sys_net: &Path) -> Result<(), String> {
    for (i, Setting { value: v, line }) in vifs.iter().enumerate() {
        let at = |why: String| format!("{file}:{line}: vif {}: {why}", i + 1);
        if !sys_net.join(&v.bridge).join("bridge").is_dir() {
            let why = if sys_net.join(&v.bridge).exists() {
                format!("'{}' is a network interface of dom0 but not a bridge", v.bridge)
            } else {
                format!("there is no bridge '{}' in dom0", v.bridge)
            };
            return Err(at(format!("{why} (dom0's init makes xenbr0; 'brctl show' lists the bridges)")));
        }
        let name = v.vifname.clone().or_else(|| domid_hint.map(|d| vif_name(d, i as u32, v)));
        if let Some(n) = name.filter(|n| sys_net.join(n).exists()) {
            return Err(at(format!("dom0 already has an interface named '{n}': give the vif another vifname=")));
        }
    }
    Ok(())
}

/// A vif's tap device in dom0: its `vifname=`, or Xen's `vifDOMID.N`.
pub fn vif_name(domid: u32, index: u32, v: &VifSpec) -> String {
    v.vifname.clone().unwrap_or_else(|| format!("vif{domid}.{index}"))
}

/// One vif as the device model gets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacedVif {
    pub spec: VifSpec,
    /// Its tap device's name in dom0.
    pub name: String,
    pub add: DeviceAdd,
}

/// What the device model is started with.
pub struct Request<'a> {
    pub domid: u32,
    pub name: &'a str,
    /// Each disk with the place DEVICE_ADD gave it, in the config's order.
    pub disks: Vec<(&'a DiskSpec, DeviceAdd)>,
    /// Each vif, placed after the disks.
    pub vifs: Vec<PlacedVif>,
    /// Where it writes its devices' state when `oxl save` freezes it
    /// ([`freeze`]); `None`: it cannot be saved.
    pub state_file: Option<PathBuf>,
    /// A restore's saved device states (an `OXDS` set) to go on from.
    pub resume: Option<PathBuf>,
}

/// The file a domain's device model writes its devices' state to when frozen.
pub fn state_path(dir: &Path, domid: u32) -> PathBuf {
    dir.join(format!("{domid}.dm.state"))
}

/// How long [`freeze`] waits for the device model's state.
const FREEZE_WAIT: Duration = Duration::from_secs(10);

/// Freezes a paused domain's device model for a save: it serves what waits,
/// writes its devices' state (an `OXDS` set, disks then vifs) to
/// [`state_path`] and then serves nothing until [`thaw`] or the domain's end.
/// Returns the set's bytes.
pub fn freeze(dir: &Path, domid: u32, rec: &Record) -> Result<Vec<u8>, String> {
    ask(rec, libc::SIGUSR1, &state_path(dir, domid), "write its devices' state")
}

/// The guest pages a domain's device model wrote since it was last asked
/// (`oxl migrate`'s rounds): it writes them, one little-endian `u64` page
/// number each, to the state file's name with `.dirty` added.
pub fn dirty(dir: &Path, domid: u32, rec: &Record) -> Result<Vec<u64>, String> {
    let mut path = state_path(dir, domid).into_os_string();
    path.push(".dirty");
    let b = ask(rec, libc::SIGRTMIN(), Path::new(&path), "say which pages it wrote")?;
    Ok(b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect())
}

/// Sends the device model `sig` and returns the file it answers with at
/// `path` (written whole and renamed there, so it is read whole), removed
/// again; `what` says what it was asked to do, for the error.
fn ask(rec: &Record, sig: i32, path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let _ = std::fs::remove_file(path);
    if !running(rec.pid) {
        return Err(format!("its device model (pid {}) is not running, so it cannot {what}", rec.pid));
    }
    // SAFETY: a signal to a process that `running` just found to be oxen-dm.
    unsafe { libc::kill(rec.pid as libc::pid_t, sig) };
    let end = Instant::now() + FREEZE_WAIT;
    loop {
        if let Ok(b) = std::fs::read(path) {
            let _ = std::fs::remove_file(path);
            return Ok(b);
        }
        if Instant::now() >= end || !running(rec.pid) {
            return Err(format!(
                "its device model (pid {}) did not {what} in {} within {} s (its log: {})",
                rec.pid,
                path.display(),
                FREEZE_WAIT.as_secs(),
                rec.log.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Lets a device model [`freeze`] stopped serve again (`save -c`, or a save
/// that failed).
pub fn thaw(rec: &Record) {
    if running(rec.pid) {
        // SAFETY: a signal to a process that `running` just found to be oxen-dm.
        unsafe { libc::kill(rec.pid as libc::pid_t, libc::SIGUSR2) };
    }
}

/// A running device model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Started {
    pub pid: u32,
    pub log: PathBuf,
}

/// `oxen-dm`'s `--disk` argument for one disk (`target=` last: it takes the
/// rest, commas included).
pub fn disk_arg(d: &DiskSpec, a: &DeviceAdd) -> String {
    let access = if d.access == Access::ReadWrite { "rw" } else { "ro" };
    format!("base={:#x},gsi={},access={access},vdev={},target={}", a.base, a.gsi, d.vdev, d.target.display())
}

/// `oxen-dm`'s `--vif` argument for one vif.
pub fn vif_arg(v: &PlacedVif) -> String {
    format!(
        "base={:#x},gsi={},mac={},bridge={},vifname={}",
        v.add.base,
        v.add.gsi,
        format_mac(&v.spec.mac),
        v.spec.bridge,
        v.name
    )
}

/// The disks of a config, with their places, as [`Request::disks`] wants them
/// (DEVICE_ADD placed the disks first).
pub fn placed<'a>(cfg: &'a Config, added: &[DeviceAdd]) -> Vec<(&'a DiskSpec, DeviceAdd)> {
    cfg.disks.iter().map(|s| &s.value).zip(added.iter().copied()).collect()
}

/// The vifs of a config with their places (after the disks') and names.
pub fn placed_vifs(cfg: &Config, domid: u32, added: &[DeviceAdd]) -> Vec<PlacedVif> {
    let after_disks = added.get(cfg.disks.len()..).unwrap_or_default();
    cfg.vifs
        .iter()
        .zip(after_disks)
        .enumerate()
        .map(|(i, (s, a))| PlacedVif { spec: s.value.clone(), name: vif_name(domid, i as u32, &s.value), add: *a })
        .collect()
}

/// Starts `oxen-dm` for `req` and waits until it says `ready`. On failure the
/// process is gone and the error has the end of its log.
pub fn launch(req: &Request) -> Result<Started, String> {
    let prog = std::env::var_os("OXEN_DM").map_or_else(|| PathBuf::from(DM_PATH), PathBuf::from);
    let dir = std::env::var_os("OXEN_LOG_DIR").map_or_else(|| PathBuf::from(LOG_DIR), PathBuf::from);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make {} for the device model's log: {}", dir.display(), os_error(&e)))?;
    let log = dir.join(format!("{}.dm.log", req.name));
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| format!("cannot open the device model's log {}: {}", log.display(), os_error(&e)))?;
    let start = out.metadata().map_or(0, |m| m.len());
    let err = out.try_clone().map_err(|e| format!("{}: {}", log.display(), os_error(&e)))?;
    let (ready_r, ready_w) = pipe().map_err(|e| format!("cannot make a pipe for the device model: {}", os_error(&e)))?;
    let mut cmd = Command::new(&prog);
    cmd.arg("--domid").arg(req.domid.to_string()).arg("--name").arg(req.name).args(["--ready-fd", "3"]);
    for (d, a) in &req.disks {
        cmd.arg("--disk").arg(disk_arg(d, a));
    }
    for v in &req.vifs {
        cmd.arg("--vif").arg(vif_arg(v));
    }
    if let Some(p) = &req.state_file {
        cmd.arg("--state-file").arg(p);
    }
    if let Some(p) = &req.resume {
        cmd.arg("--resume").arg(p);
    }
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let w = ready_w.as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls: dup2, fcntl, setsid.
    unsafe {
        cmd.pre_exec(move || {
            // The write end as fd 3, without close-on-exec (dup2 clears it, but
            // not when the descriptor is 3 already).
            if w == 3 {
                if libc::fcntl(3, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(w, 3) != 3 {
                return Err(io::Error::last_os_error());
            }
            // Its own session: a Ctrl-C on oxl's terminal is not for it.
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        format!("cannot start the device model {}: {} (it comes with Oxen's dom0; OXEN_DM names another)", prog.display(), os_error(&e))
    })?;
    drop(ready_w);
    let failed = |why: String| {
        let tail = log_tail(&log, start);
        format!("the device model for domain {} (d{}) {why}{tail} (its log: {})", req.name, req.domid, log.display())
    };
    match wait_ready(&ready_r, READY_WAIT) {
        Ok(true) => Ok(Started { pid: child.id(), log }),
        Ok(false) => {
            let status = child.wait().map_or_else(|e| os_error(&e), |s| s.to_string());
            Err(failed(format!("failed before it was ready ({status})")))
        }
        Err(why) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(failed(why))
        }
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just made and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Reads the pipe until `ready\n` (true), its end (false: the process closed
/// it, i.e. ended, without being ready) or `limit` (an error).
fn wait_ready(r: &OwnedFd, limit: Duration) -> Result<bool, String> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut file = File::from(r.try_clone().map_err(|e| os_error(&e))?);
    loop {
        if got.windows(6).any(|w| w == b"ready\n") {
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("did not say it was ready within {} s, so it was stopped", limit.as_secs()));
        }
        let mut p = libc::pollfd { fd: r.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd that lives across the call.
        let n = unsafe { libc::poll(&mut p, 1, left.as_millis().min(1000) as i32) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                if crate::term::stop_requested() {
                    return Err("was stopped: oxl was interrupted".into());
                }
                continue;
            }
            return Err(format!("could not be waited for: {}", os_error(&e)));
        }
        if n == 0 {
            continue;
        }
        let mut buf = [0u8; 64];
        match file.read(&mut buf) {
            Ok(0) => return Ok(false),
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("could not be read from: {}", os_error(&e))),
        }
    }
}

/// The last lines the device model wrote to its log after `start`, as
/// ": LINE; LINE" (empty if none).
fn log_tail(log: &Path, start: u64) -> String {
    let Ok(bytes) = std::fs::read(log) else { return String::new() };
    let text = String::from_utf8_lossy(bytes.get(start as usize..).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    format!(": {}", lines[lines.len().saturating_sub(3)..].join("; "))
}

/// What oxl keeps of a domain's device model (`DOMID.dm` in the state
/// directory): one `key value` per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub pid: u32,
    pub log: PathBuf,
    pub disks: Vec<RecordedDisk>,
    pub vifs: Vec<RecordedVif>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedVif {
    /// Its tap device in dom0.
    pub name: String,
    pub base: u64,
    pub gsi: u32,
    pub mac: [u8; 6],
    pub bridge: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedDisk {
    pub vdev: String,
    pub base: u64,
    pub gsi: u32,
    pub read_only: bool,
    pub target: PathBuf,
}

impl Record {
    pub fn new(started: &Started, disks: &[(&DiskSpec, DeviceAdd)], vifs: &[PlacedVif]) -> Self {
        Self {
            vifs: vifs
                .iter()
                .map(|v| RecordedVif { name: v.name.clone(), base: v.add.base, gsi: v.add.gsi, mac: v.spec.mac, bridge: v.spec.bridge.clone() })
                .collect(),
            pid: started.pid,
            log: started.log.clone(),
            disks: disks
                .iter()
                .map(|(d, a)| RecordedDisk {
                    vdev: d.vdev.clone(),
                    base: a.base,
                    gsi: a.gsi,
                    read_only: d.access == Access::ReadOnly,
                    target: d.target.clone(),
                })
                .collect(),
        }
    }

    pub fn to_text(&self) -> String {
        let mut s = format!("pid {}\nlog {}\n", self.pid, self.log.display());
        for d in &self.disks {
            let access = if d.read_only { "ro" } else { "rw" };
            s += &format!("disk {} {:#x} {} {access} {}\n", d.vdev, d.base, d.gsi, d.target.display());
        }
        for v in &self.vifs {
            s += &format!("vif {} {:#x} {} {} {}\n", v.name, v.base, v.gsi, format_mac(&v.mac), v.bridge);
        }
        s
    }

    /// `None` for anything oxl did not write.
    pub fn parse(text: &str) -> Option<Self> {
        let mut pid = None;
        let mut log = None;
        let mut disks = Vec::new();
        let mut vifs = Vec::new();
        for line in text.lines() {
            let (key, rest) = line.split_once(' ')?;
            match key {
                "pid" => pid = rest.parse().ok(),
                "log" => log = Some(PathBuf::from(rest)),
                "disk" => {
                    let mut f = rest.splitn(5, ' ');
                    let vdev = f.next()?.to_owned();
                    let base = u64::from_str_radix(f.next()?.strip_prefix("0x")?, 16).ok()?;
                    let gsi = f.next()?.parse().ok()?;
                    let read_only = match f.next()? {
                        "ro" => true,
                        "rw" => false,
                        _ => return None,
                    };
                    disks.push(RecordedDisk { vdev, base, gsi, read_only, target: PathBuf::from(f.next()?) });
                }
                "vif" => {
                    let f: Vec<&str> = rest.split(' ').collect();
                    let [name, base, gsi, mac, bridge] = f[..] else { return None };
                    vifs.push(RecordedVif {
                        name: name.to_owned(),
                        base: u64::from_str_radix(base.strip_prefix("0x")?, 16).ok()?,
                        gsi: gsi.parse().ok()?,
                        mac: crate::devspec::parse_mac(mac).ok()?,
                        bridge: bridge.to_owned(),
                    });
                }
                _ => return None,
            }
        }
        Some(Self { pid: pid?, log: log?, disks, vifs })
    }

    pub fn path(dir: &Path, domid: u32) -> PathBuf {
        dir.join(format!("{domid}.dm"))
    }

    /// The record of domain `domid`'s device model in `dir`, if there is one oxl wrote.
    pub fn read(dir: &Path, domid: u32) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(Self::path(dir, domid)).ok()?)
    }
}

/// Whether process `pid` is a running device model (not a zombie, not a PID
/// reused by something else).
pub fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // "PID (COMM) STATE ...": COMM may hold spaces and parentheses.
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return false };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].trim_start().chars().next();
    comm == "oxen-dm" && !matches!(state, Some('Z' | 'X'))
}

/// Ends a device model at once (a create that failed after starting it).
pub fn kill(pid: u32) {
    if running(pid) {
        // SAFETY: a signal to a process that `running` just found to be oxen-dm.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// Tells a domain's device model to end (SIGTERM: it flushes its disks) and
/// waits up to `limit` for it; the record goes either way.
pub fn stop(dir: &Path, domid: u32, limit: Duration) -> Option<Record> {
    let path = Record::path(dir, domid);
    let rec = Record::read(dir, domid);
    let _ = std::fs::remove_file(&path);
    let rec = rec?;
    if running(rec.pid) {
        // SAFETY: a signal to a process that `running` just found to be oxen-dm.
        unsafe { libc::kill(rec.pid as libc::pid_t, libc::SIGTERM) };
        let end = Instant::now() + limit;
        while running(rec.pid) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Some(rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devspec::{parse_disk, Backing};

    fn disk(spec: &str, line: usize) -> Setting<DiskSpec> {
        Setting { value: parse_disk(spec).unwrap(), line }
    }

    fn tmp(name: &str, len: u64) -> PathBuf {
        let p = std::env::temp_dir().join(format!("oxl-dm-{}-{name}", std::process::id()));
        let f = File::create(&p).unwrap();
        f.set_len(len).unwrap();
        p
    }

    #[test]
    fn disks_are_checked_before_anything_is_made() {
        let a = tmp("a.img", 1 << 20);
        let empty = tmp("empty.img", 0);
        let ok = [disk(&format!("{},raw,xvda,rw", a.display()), 3)];
        assert_eq!(check_disks("web.cfg", &ok), Ok(()));

        let missing = [disk("/nonexistent/x.img,raw,xvda,rw", 4)];
        let e = check_disks("web.cfg", &missing).unwrap_err();
        assert!(e.starts_with("web.cfg:4: disk 1 (xvda): /nonexistent/x.img: "), "{e}");

        let e = check_disks("web.cfg", &[disk(&format!("{},raw,xvda,rw", empty.display()), 2)]).unwrap_err();
        assert!(e.contains("is empty"), "{e}");

        let e = check_disks("web.cfg", &[disk("/tmp,raw,xvda,rw", 2)]).unwrap_err();
        assert!(e.contains("is not a regular file"), "{e}");

        let e = check_disks("web.cfg", &[disk(&format!("phy:{},xvda,w", a.display()), 2)]).unwrap_err();
        assert!(e.contains("is not a block device"), "{e}");

        // One image twice in a domain: only when neither is written.
        let twice = [disk(&format!("{},raw,xvda,ro", a.display()), 2), disk(&format!("{},raw,xvdb,rw", a.display()), 3)];
        let e = check_disks("web.cfg", &twice).unwrap_err();
        assert!(e.starts_with("web.cfg:3: disk 2 (xvdb):") && e.contains("also xvda (line 2)"), "{e}");
        let shared = [disk(&format!("{},raw,xvda,ro", a.display()), 2), disk(&format!("{},raw,xvdb,ro", a.display()), 3)];
        assert_eq!(check_disks("web.cfg", &shared), Ok(()));
        let _ = (std::fs::remove_file(&a), std::fs::remove_file(&empty));
    }

    #[test]
    fn vifs_need_a_bridge_and_a_free_name() {
        let net = std::env::temp_dir().join(format!("oxl-dm-net-{}", std::process::id()));
        std::fs::create_dir_all(net.join("xenbr0/bridge")).unwrap();
        std::fs::create_dir_all(net.join("eth0")).unwrap();
        std::fs::create_dir_all(net.join("vif5.0")).unwrap();
        let vif = |spec: &str, line| Setting { value: crate::devspec::parse_vif(spec, "web", 0).unwrap(), line };
        assert_eq!(check_vifs("web.cfg", Some(4), &[vif("bridge=xenbr0", 3)], &net), Ok(()));
        let e = check_vifs("web.cfg", None, &[vif("bridge=br9", 3)], &net).unwrap_err();
        assert_eq!(e, "web.cfg:3: vif 1: there is no bridge 'br9' in dom0 (dom0's init makes xenbr0; 'brctl show' lists the bridges)");
        let e = check_vifs("web.cfg", None, &[vif("bridge=eth0", 3)], &net).unwrap_err();
        assert!(e.contains("'eth0' is a network interface of dom0 but not a bridge"), "{e}");
        let e = check_vifs("web.cfg", None, &[vif("vifname=eth0", 3)], &net).unwrap_err();
        assert!(e.contains("dom0 already has an interface named 'eth0'"), "{e}");
        let e = check_vifs("web.cfg", Some(5), &[vif("", 3)], &net).unwrap_err();
        assert!(e.contains("named 'vif5.0'"), "{e}");
        let _ = std::fs::remove_dir_all(&net);
    }

    #[test]
    fn a_disk_held_read_write_elsewhere_is_refused() {
        let a = tmp("held.img", 4096);
        let holder = File::open(&a).unwrap();
        // SAFETY: flock on a descriptor the test owns.
        assert_eq!(unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
        let e = check_disks("db.cfg", &[disk(&format!("{},raw,xvda,rw", a.display()), 7)]).unwrap_err();
        assert!(e.starts_with("db.cfg:7: disk 1 (xvda):") && e.contains("attached to another domain"), "{e}");
        let e = check_disks("db.cfg", &[disk(&format!("{},raw,xvda,ro", a.display()), 7)]).unwrap_err();
        assert!(e.contains("attached read-write to another domain"), "{e}");
        drop(holder);
        assert_eq!(check_disks("db.cfg", &[disk(&format!("{},raw,xvda,rw", a.display()), 7)]), Ok(()));
        let _ = std::fs::remove_file(&a);
    }

    #[test]
    fn the_disk_argument_and_the_record_round_trip() {
        let d = DiskSpec {
            target: PathBuf::from("/srv/a,b.img"),
            backing: Backing::File,
            vdev: "xvdb".into(),
            index: 1,
            access: Access::ReadOnly,
        };
        let a = DeviceAdd { base: 0xfeb0_1000, size: 0x1000, gsi: 17, ..Default::default() };
        assert_eq!(disk_arg(&d, &a), "base=0xfeb01000,gsi=17,access=ro,vdev=xvdb,target=/srv/a,b.img");
        let v = PlacedVif {
            spec: crate::devspec::parse_vif("mac=00:16:3e:01:02:03,bridge=xenbr0", "web", 0).unwrap(),
            name: "vif3.0".into(),
            add: DeviceAdd { base: 0xfeb0_2000, size: 0x1000, gsi: 18, ..Default::default() },
        };
        assert_eq!(vif_arg(&v), "base=0xfeb02000,gsi=18,mac=00:16:3e:01:02:03,bridge=xenbr0,vifname=vif3.0");
        let rec = Record::new(&Started { pid: 42, log: "/var/log/oxen/web.dm.log".into() }, &[(&d, a)], &[v]);
        let text = rec.to_text();
        assert_eq!(
            text,
            "pid 42\nlog /var/log/oxen/web.dm.log\ndisk xvdb 0xfeb01000 17 ro /srv/a,b.img\n\
             vif vif3.0 0xfeb02000 18 00:16:3e:01:02:03 xenbr0\n"
        );
        assert_eq!(Record::parse(&text), Some(rec));
        assert_eq!(Record::parse("pid x\n"), None);
        assert_eq!(Record::parse("something else\n"), None);
    }

    #[test]
    fn a_device_model_that_fails_or_never_gets_ready_is_reported() {
        let dir = std::env::temp_dir().join(format!("oxl-dm-launch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A stand-in that prints a reason and exits 1; then one that is ready.
        let fail = dir.join("fail.sh");
        std::fs::write(&fail, "#!/bin/sh\necho 'oxen-dm: d3 (web): xvda: no such file' >&2\nexit 1\n").unwrap();
        let ready = dir.join("ready.sh");
        std::fs::write(&ready, "#!/bin/sh\necho \"args: $*\"\necho ready >&3\n").unwrap();
        for p in [&fail, &ready] {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let d = parse_disk("/srv/web.img,raw,xvda,rw").unwrap();
        let a = DeviceAdd { base: 0xfeb0_0000, size: 0x1000, gsi: 16, ..Default::default() };
        let mut req = Request { domid: 3, name: "web", disks: vec![(&d, a)], vifs: Vec::new(), state_file: None, resume: None };
        // Environment variables are process-wide: both runs are in this one test.
        std::env::set_var("OXEN_LOG_DIR", &dir);
        std::env::set_var("OXEN_DM", &fail);
        let e = launch(&req).unwrap_err();
        assert!(e.starts_with("the device model for domain web (d3) failed before it was ready (exit status: 1): oxen-dm: d3 (web): xvda: no such file"), "{e}");
        std::env::set_var("OXEN_DM", &ready);
        let s = launch(&req).unwrap();
        assert_eq!(s.log, dir.join("web.dm.log"));
        let log = std::fs::read_to_string(&s.log).unwrap();
        assert!(log.contains("args: --domid 3 --name web --ready-fd 3 --disk base=0xfeb00000,gsi=16,access=rw,vdev=xvda,target=/srv/web.img\n"), "{log}");
        // A restore's: where it writes its state when frozen, and the state it goes on from.
        req.state_file = Some("/run/oxen/3.dm.state".into());
        req.resume = Some("/run/oxen/3.dm.resume".into());
        let s = launch(&req).unwrap();
        let log = std::fs::read_to_string(&s.log).unwrap();
        assert!(log.contains("target=/srv/web.img --state-file /run/oxen/3.dm.state --resume /run/oxen/3.dm.resume\n"), "{log}");
        std::env::remove_var("OXEN_DM");
        std::env::remove_var("OXEN_LOG_DIR");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
