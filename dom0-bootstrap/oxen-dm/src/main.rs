//! `oxen-dm`: one domU's device model in dom0, serving its virtio-mmio disks and network
//! devices (issue 11).
//!
//! `oxl create` starts it with the devices `DEVICE_ADD` placed (`oxen_dm::spec`), waits for
//! "ready" on `--ready-fd` before unpausing the domain, and sends its stderr to
//! `/var/log/oxen/NAME.dm.log`. It ends by itself when the domain is gone.
//!
//! Exit status: 0 when the domain is gone or on SIGTERM/SIGINT (read-write disks fsynced first);
//! 1 when setting up failed (before "ready": a disk that cannot be opened or is locked by
//! another device model, a vif's bridge missing or its tap refused, no such domain, its RAM or
//! its windows refused) or the loop's wait
//! failed; 2 for a bad command line.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsRawFd as _, FromRawFd as _};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser as _;

mod takeover;
use oxen_dm::block::BlockStats;
use oxen_dm::mmio::MMIO_WINDOW_SIZE;
use oxen_dm::oxen::{self, describe, Ioreq, Oxen};
use oxen_dm::net::format_mac;
use oxen_dm::serve::{self, Disk, End, Nic, Router};
use oxen_dm::spec::{Args, DiskSpec};
use oxen_dm::tap::Tap;
use oxen_dm::warden::{Area, Link, ENDING, SERVING};
use oxen_dm::{Block, ForeignDomain, MmioTransport, Net, NetStats};

/// How long a dead domain can go unnoticed (the loop then asks `GET_INFO`).
pub(crate) const TICK: Duration = Duration::from_secs(1);

/// QueueNotify (virtio-mmio §4.2.2, offset 0x050) is forwarded as a range of its own with
/// `FLAG_POSTED_WRITES`: the driver's vCPU goes on at once instead of waiting for dom0 to answer a
/// write that needs no answer (issue 11). The rest of the window is not posted: a posted
/// InterruptACK would lower the line only when dom0 gets to it, after the guest's end-of-interrupt,
/// so the level-triggered IOAPIC would deliver every interrupt a second time (a spurious one the
/// driver finds nothing for). Ordering is kept: `ioreq::Page::serve` drains the ring before any
/// request.
const QUEUE_NOTIFY: u64 = 0x050;

/// InterruptStatus (virtio-mmio §4.2.2, 0x060) and InterruptACK (0x064) are answered by the
/// hypervisor from the ioreq page (`FLAG_INTERRUPT_STATUS`, ABI 1.10): the driver's interrupt
/// handler reads one and writes the other for every interrupt, each a round trip through dom0
/// when forwarded (issue 11).
const INTERRUPT_STATUS: u64 = oxen_abi::ioreq::INTERRUPT_STATUS_REG;

/// How a device's window was registered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Split {
    /// QueueNotify is a posted range of its own.
    posted: bool,
    /// InterruptStatus and InterruptACK are the hypervisor's.
    status: bool,
}

/// Forwards a device's window at `base`: if `split`, around its notify register (posted) and its
/// interrupt-status pair (the hypervisor's), in five ranges; else whole. A hypervisor before ABI
/// 1.9 takes only whole pages (`EINVAL` for the first part, nothing registered): the window then
/// goes whole; one before 1.10 refuses the status flag (`EINVAL`): the pair is then forwarded
/// with the rest.
fn forward_window(ioreq: &Ioreq, base: u64, split: bool) -> std::io::Result<Split> {
    if split {
        match ioreq.add_mmio(base, QUEUE_NOTIFY, false) {
            Ok(()) => {
                ioreq.add_mmio(base + QUEUE_NOTIFY, 4, true)?;
                let after = QUEUE_NOTIFY + 4;
                ioreq.add_mmio(base + after, INTERRUPT_STATUS - after, false)?;
                let status = match ioreq.add_interrupt_status(base + INTERRUPT_STATUS) {
                    Ok(()) => true,
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => false,
                    Err(e) => return Err(e),
                };
                let rest = if status { INTERRUPT_STATUS + 8 } else { INTERRUPT_STATUS };
                ioreq.add_mmio(base + rest, MMIO_WINDOW_SIZE - rest, false)?;
                return Ok(Split { posted: true, status });
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    ioreq.add_mmio(base, MMIO_WINDOW_SIZE, false).map(|()| Split::default())
}

/// How many of `devices` windows can be split within the server's `oxen_abi::ioreq::MAX_RANGES`:
/// each split one takes four ranges more than the one every device needs.
fn split_windows(devices: usize) -> usize {
    devices.min(oxen_abi::ioreq::MAX_RANGES.saturating_sub(devices) / 4)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let label = format!("oxen-dm: d{} ({}): ", args.domid, args.name);
    if let Err(e) = args.check() {
        eprintln!("{label}{e}");
        return ExitCode::from(2);
    }
    match run(&args, &label) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{label}{e}");
            ExitCode::FAILURE
        }
    }
}

/// An open disk: the file with its lock, a second descriptor for the final fsync, and whether it
/// is read and written with `O_DIRECT`.
fn open_disk(spec: &DiskSpec) -> Result<(File, Option<File>, bool), String> {
    let path = spec.target.display();
    let file = File::options()
        .read(true)
        .write(!spec.read_only)
        .open(&spec.target)
        .map_err(|e| format!("{}: cannot open {path}: {}", spec.vdev, describe(&e)))?;
    // Advisory, held for the process's life (the file stays open): two device models never write
    // one image, and nothing writes an image a domain reads. Only device models honour it.
    let op = if spec.read_only { libc::LOCK_SH } else { libc::LOCK_EX };
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(format!("{}: cannot lock {path}: {}", spec.vdev, describe(&e)));
        }
        // Only a shared lock elsewhere lets us take one too: then it is attached read-only.
        // SAFETY: as above.
        let shared_elsewhere =
            !spec.read_only && unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
        let how = if shared_elsewhere { "read-only" } else { "read-write" };
        let why = if spec.read_only {
            "a disk a domain writes is not shared"
        } else {
            "a read-write disk is not shared"
        };
        return Err(format!("{}: {path} is attached {how} elsewhere (locked); {why}", spec.vdev));
    }
    let direct = direct_if_block_device(&file).map_err(|e| format!("{}: {path}: O_DIRECT: {}", spec.vdev, describe(&e)))?;
    let sync = if spec.read_only {
        None
    } else {
        Some(file.try_clone().map_err(|e| format!("{}: {path}: {}", spec.vdev, describe(&e)))?)
    };
    Ok((file, sync, direct))
}

/// A block device (`phy:`) is read and written past dom0's page cache (`O_DIRECT`): storage
/// another host also attaches (the disk of a domain that migrates between them) is then read as
/// it is, never as this dom0 cached it before the other host wrote it. Only with 512-byte logical
/// blocks, the unit of virtio-blk's offsets and lengths (the bounce buffer is page-aligned); a
/// file image stays cached (tmpfs has no `O_DIRECT`).
fn direct_if_block_device(file: &File) -> std::io::Result<bool> {
    use std::os::unix::fs::FileTypeExt;
    if !file.metadata()?.file_type().is_block_device() {
        return Ok(false);
    }
    let mut logical: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int, the device's logical block size, through the pointer.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut logical) } != 0 || logical != 512 {
        return Ok(false);
    }
    // SAFETY: F_GETFL only reads the flags of a descriptor we own.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on a descriptor we own; Linux lets it set O_DIRECT.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_DIRECT) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(true)
}

/// Takes `--ready-fd` before anything else is opened: a descriptor oxl did not pass (closed)
/// must be refused, not found again as one of our own files (a disk image).
fn take_ready_fd(fd: i32) -> Result<File, String> {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if fd <= 2 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(format!("--ready-fd {fd}: not an open descriptor besides stdin/stdout/stderr"));
    }
    // SAFETY: open (checked above) and passed by oxl for the ready line alone: ours to write and
    // close.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The device states of `--resume PATH`: one for each of the `devices` devices.
fn read_states(path: &std::path::Path, devices: usize) -> Result<Vec<oxen_dm::mmio::TransportState>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("--resume {}: {}", path.display(), describe(&e)))?;
    let states = oxen_dm::state::decode_set(&bytes).map_err(|e| format!("--resume {}: {e}", path.display()))?;
    if states.len() != devices {
        return Err(format!("--resume {}: {} device states for {devices} devices", path.display(), states.len()));
    }
    Ok(states)
}

fn run(args: &Args, label: &str) -> Result<(), String> {
    let ready = args.ready_fd.map(take_ready_fd).transpose()?;
    // Blocked before anything is set up, so a stop during setup is taken by the loop's poll.
    let signals = oxen::stop_signals().map_err(|e| format!("signals: {}", describe(&e)))?;
    let mut opened = Vec::new();
    for spec in &args.disks {
        let (file, sync, direct) = open_disk(spec)?;
        let block = Block::new(file, spec.read_only, &spec.vdev)
            .map_err(|e| format!("{}: {}: size: {}", spec.vdev, spec.target.display(), describe(&e)))?;
        let sectors = block.capacity();
        eprintln!(
            "{label}{}: {}, {sectors} sectors ({} MiB), {}{}, window {:#x}, gsi {}",
            spec.vdev,
            spec.target.display(),
            sectors / 2048,
            if spec.read_only { "ro" } else { "rw" },
            if direct { " (O_DIRECT)" } else { "" },
            spec.base,
            spec.gsi
        );
        opened.push((spec.clone(), block, sync));
    }

    // Each vif's tap, made and put on its bridge now: a missing bridge is said before "ready".
    let mut taps = Vec::new();
    for (i, spec) in args.vifs.iter().enumerate() {
        let ifname = args.ifname(i);
        let tap = Tap::open(&ifname, &spec.bridge)?;
        eprintln!(
            "{label}{ifname}: mac {}, on bridge {}, window {:#x}, gsi {}",
            format_mac(&spec.mac),
            spec.bridge,
            spec.base,
            spec.gsi
        );
        taps.push((spec.clone(), ifname, tap));
    }

    // A restore's saved device states, checked before anything is registered.
    let saved = match &args.resume {
        Some(path) => {
            let states = read_states(path, opened.len() + taps.len())?;
            eprintln!("{label}resuming {} device(s) from {}", states.len(), path.display());
            Some(states)
        }
        None => None,
    };

    let dev = oxen::open_device().map_err(|e| {
        format!("cannot open {}: {} (dom0 under Oxen, as root)", oxen_abi::DEVICE_PATH, describe(&e))
    })?;
    let info = oxen::domain_info(&dev, args.domid)
        .map_err(|e| format!("GET_INFO: {}", describe(&e)))?
        .ok_or_else(|| format!("no domain {}", args.domid))?;
    // A domU's RAM is guest-physical [0, memory) (hypervisor/src/domain/linux.rs, build.rs).
    let ram_bytes = info.memory_kib * 1024;

    let ioreq = Ioreq::open(&dev, args.domid).map_err(|e| format!("IOREQ_OPEN: {}", describe(&e)))?;
    let can_split = split_windows(opened.len() + taps.len());
    let windows = opened
        .iter()
        .map(|(spec, ..)| (spec.base, spec.vdev.as_str()))
        .chain(taps.iter().map(|(spec, ifname, _)| (spec.base, ifname.as_str())));
    let mut splits = Vec::new();
    for (i, (base, name)) in windows.enumerate() {
        let s = forward_window(&ioreq, base, i < can_split)
            .map_err(|e| format!("{name}: forwarding {base:#x}+{MMIO_WINDOW_SIZE:#x}: {}", describe(&e)))?;
        splits.push(s);
    }
    let posted = splits.iter().filter(|s| s.posted).count();
    let status_held = splits.iter().filter(|s| s.status).count();
    let page = ioreq.page();

    // The warden: forked now, holding the ioreq fd (and the disks' locks, the taps) for as long as
    // the domain may need them, whatever becomes of this process (`oxen_dm::warden`).
    let area = Area::new(opened.len() + taps.len()).map_err(|e| format!("the warden's area: {}", describe(&e)))?;
    let link = Link::new().map_err(|e| format!("the warden's pipe: {}", describe(&e)))?;
    // SAFETY: no thread has been started yet, so the child is a whole copy of this process.
    match unsafe { libc::fork() } {
        -1 => return Err(format!("fork of the warden: {}", describe(&std::io::Error::last_os_error()))),
        0 => {
            // oxl reads the ready line until EOF: the warden's copy must not hold it open.
            drop(ready);
            let held: Vec<bool> = splits.iter().map(|s| s.status).collect();
            let code = takeover::run(args, label, dev, ioreq, signals, link.warden(), &area, ram_bytes, &held);
            std::process::exit(code);
        }
        _ => {}
    }
    let teller = link.model();

    let mem = ForeignDomain::open(args.domid)
        .and_then(|d| d.map(&[(0, ram_bytes)]))
        .map_err(|e| format!("the domain's {} MiB of RAM: {e}", ram_bytes >> 20))?;
    let mem = Arc::new(mem);

    // A restored domain's devices go on from their saved state, read only now: `resume` reads
    // each queue's position from the guest's memory, which oxl restored before starting us.
    let resuming = saved.is_some();
    let mut resumed = saved.map(Vec::into_iter);
    let mut transport = |device: Box<dyn oxen_dm::VirtioDevice>, name: &str| match resumed.as_mut().and_then(Iterator::next) {
        Some(state) => MmioTransport::resume(device, Arc::clone(&mem), &state)
            .map_err(|e| format!("{name}: cannot go on from its saved state: {e:?}")),
        None => MmioTransport::new(device, Arc::clone(&mem)).map_err(|e| format!("{name}: {e:?}")),
    };
    let share = |t: &mut MmioTransport, base: u64, split: Split| {
        if let Some(word) = ioreq.interrupt_status(base).filter(|_| split.status) {
            t.share_interrupt_status(word);
        }
    };
    let mut splits = splits.into_iter();
    let mut disks = Vec::new();
    for (spec, block, sync) in opened {
        let stats = block.stats();
        let mut t = transport(Box::new(block), &spec.vdev)?;
        share(&mut t, spec.base, splits.next().unwrap_or_default());
        disks.push(Disk::new(spec, t, stats, sync));
    }
    let mut nics = Vec::new();
    for (spec, ifname, mut tap) in taps {
        if resuming {
            // The guest runs on behind this vif, here now: the bridges learn its MAC at once.
            let frame = oxen_dm::net::announce_frame(&spec.mac);
            for _ in 0..3 {
                if let Err(e) = oxen_dm::Backend::write_frame(&mut tap, &frame) {
                    eprintln!("{label}{ifname}: announcing the guest's MAC: {}", describe(&e));
                }
            }
            eprintln!("{label}{ifname}: announced {} (RARP) on bridge {}", format_mac(&spec.mac), spec.bridge);
        }
        let net = Net::new(Box::new(tap), spec.mac);
        let stats = net.stats();
        let mut t = transport(Box::new(net), &ifname)?;
        share(&mut t, spec.base, splits.next().unwrap_or_default());
        nics.push(Nic::new(spec, ifname, t, stats));
    }
    let mut router =
        Router::new(disks, label.to_owned()).with_nics(nics).publishing_to(area).saving_to(args.state_file.clone()).tracking(Arc::clone(&mem));
    router.publish();
    teller.tell(SERVING).map_err(|e| format!("the warden's pipe: {}", describe(&e)))?;

    if let Some(mut ready) = ready {
        ready.write_all(b"ready\n").map_err(|e| format!("--ready-fd: {}", describe(&e)))?;
        // Closed here: oxl reads the line, then EOF.
        drop(ready);
    }
    eprintln!(
        "{label}ready: {} disk(s), {} vif(s), {} MiB of RAM mapped, QueueNotify posted for {posted} of them, \
         InterruptStatus held by the hypervisor for {status_held}",
        router.disks.len(),
        router.nics.len(),
        ram_bytes >> 20,
    );

    let mut host = Oxen::new(dev, ioreq, signals, args.domid);
    let end = serve::run(&page, &mut router, &mut host, TICK);
    // Before anything else can fail: the warden must not take this end for a death.
    if let Err(e) = teller.tell(ENDING) {
        eprintln!("{label}the warden's pipe: {}", describe(&e));
    }

    let why = match &end {
        Ok(End::DomainGone) => "the domain is gone".to_owned(),
        Ok(End::Signal(s)) => format!("signal {s}"),
        Err(e) => format!("waiting failed: {}", describe(e)),
    };
    for d in &router.disks {
        if let Some(f) = &d.sync {
            if let Err(e) = f.sync_all() {
                eprintln!("{label}{}: fsync {}: {}", d.spec.vdev, d.spec.target.display(), describe(&e));
            }
        }
    }
    let c = router.counters;
    eprintln!(
        "{label}exit ({why}): {} requests, {} posted writes, {} notifications, {} interrupts raised, \
         {} backend wake-ups, {} accesses outside the windows, {} failed calls; {} rounds of {} us on average",
        c.requests,
        c.posted,
        c.notifications,
        c.interrupts,
        c.backend_wakes,
        c.unclaimed,
        c.call_errors,
        c.rounds,
        c.round_ns.checked_div(c.rounds).unwrap_or(0) / 1000
    );
    for d in &router.disks {
        let s = &d.stats;
        eprintln!(
            "{label}{}: {} requests, {} bytes read, {} bytes written, {} flushes, {} errors",
            d.spec.vdev,
            BlockStats::get(&s.requests),
            BlockStats::get(&s.bytes_read),
            BlockStats::get(&s.bytes_written),
            BlockStats::get(&s.flushes),
            BlockStats::get(&s.errors)
        );
    }
    for n in &router.nics {
        let s = &n.stats;
        let g = NetStats::get;
        eprintln!(
            "{label}{}: tx {} frames {} bytes, rx {} frames {} bytes, dropped tx {} rx {}, \
             {} bad chains, {} backend errors",
            n.ifname,
            g(&s.tx_frames),
            g(&s.tx_bytes),
            g(&s.rx_frames),
            g(&s.rx_bytes),
            g(&s.tx_dropped),
            g(&s.rx_dropped),
            g(&s.bad_chains),
            g(&s.backend_errors)
        );
    }
    end.map(drop).map_err(|e| format!("waiting for requests: {}", describe(&e)))
}

#[cfg(test)]
mod tests {
    use super::split_windows;

    #[test]
    fn windows_are_split_while_every_device_keeps_a_range() {
        assert_eq!(split_windows(1), 1);
        assert_eq!(split_windows(8), 8); // 40 ranges: every device a domain may have
        assert_eq!(split_windows(10), 9); // 9 * 5 + 1 = 46
        assert_eq!(split_windows(16), 8); // 8 * 5 + 8 = 48
        assert_eq!(split_windows(48), 0);
    }
}
