//! The warden's side of `oxen-dm` (`oxen_dm::warden`): forked before the device model serves, it
//! waits for the device model's end and, if that end was a death, serves the domain's devices as
//! failed ones (`oxen_dm::failed`) until the domain is gone.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use oxen_dm::failed::Failed;
use oxen_dm::oxen::{describe, Ioreq, Oxen};
use oxen_dm::serve::{self, Disk, End, Nic, Router};
use oxen_dm::spec::Args;
use oxen_dm::warden::{Area, Heard, Listener};
use oxen_dm::{ForeignDomain, MmioTransport};

use crate::TICK;

/// Runs the warden; returns its exit status (0: the device model ended normally, or its devices
/// were served failed until the domain was gone; 1: taking over failed).
#[allow(clippy::too_many_arguments)]
pub fn run(
    args: &Args,
    label: &str,
    dev: File,
    ioreq: Ioreq,
    signals: OwnedFd,
    listener: Listener,
    area: &Area,
    ram_bytes: u64,
    status_held: &[bool],
) -> i32 {
    let mut serving = false;
    let mut signalled = false;
    loop {
        match listener.hear(-1, &signals, &mut signalled) {
            Ok(Heard::Serving) => serving = true,
            Ok(Heard::Ending) => return 0,
            Ok(Heard::Closed) => break,
            Ok(Heard::Nothing) if signalled => return 0,
            Ok(Heard::Nothing) => {}
            Err(e) => {
                eprintln!("{label}warden: waiting on the device model: {}", describe(&e));
                return 1;
            }
        }
    }
    // Closed before it served: it failed to start and said why; nothing to keep answering.
    if !serving {
        return 0;
    }
    eprintln!(
        "{label}warden (pid {}): the device model died while serving: from now on every request to \
         its devices fails (disks: I/O errors; vifs: frames dropped)",
        std::process::id()
    );
    match take_over(args, label, dev, ioreq, signals, area, ram_bytes, status_held) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{label}warden: {e}");
            1
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn take_over(
    args: &Args,
    label: &str,
    dev: File,
    ioreq: Ioreq,
    signals: OwnedFd,
    area: &Area,
    ram_bytes: u64,
    status_held: &[bool],
) -> Result<(), String> {
    // The dead model's mapping went with its process; the window has room for this one.
    let mem = ForeignDomain::open(args.domid)
        .and_then(|d| d.map(&[(0, ram_bytes)]))
        .map_err(|e| format!("the domain's {} MiB of RAM: {e}", ram_bytes >> 20))?;
    let mem = Arc::new(mem);
    let mut counts: Vec<(String, Arc<AtomicU64>)> = Vec::new();
    let mut failed = |i: usize, name: &str, base: u64| -> Option<MmioTransport> {
        let Some(mut state) = area.latest(i) else {
            eprintln!("{label}warden: {name}: no state published; its window reads all ones");
            return None;
        };
        // An InterruptStatus the hypervisor holds is the page's word, not what was published.
        let word = ioreq.interrupt_status(base).filter(|_| status_held.get(i).copied().unwrap_or(false));
        if let Some(w) = word {
            state.interrupt_status = w.load(std::sync::atomic::Ordering::SeqCst);
        }
        let device = Failed::new(&state);
        counts.push((name.to_owned(), device.count()));
        match MmioTransport::resume(Box::new(device), Arc::clone(&mem), &state) {
            Ok(mut t) => {
                if let Some(w) = word {
                    t.share_interrupt_status(w);
                }
                Some(t)
            }
            Err(e) => {
                eprintln!("{label}warden: {name}: cannot go on from its registers ({e:?}); its window reads all ones");
                None
            }
        }
    };
    let mut disks = Vec::new();
    for (i, spec) in args.disks.iter().enumerate() {
        if let Some(t) = failed(i, &spec.vdev, spec.base) {
            disks.push(Disk::new(spec.clone(), t, Arc::default(), None));
        }
    }
    let mut nics = Vec::new();
    for (i, spec) in args.vifs.iter().enumerate() {
        let ifname = args.ifname(i);
        if let Some(t) = failed(args.disks.len() + i, &ifname, spec.base) {
            nics.push(Nic::new(spec.clone(), ifname, t, Arc::default()));
        }
    }
    let page = ioreq.page();
    let mut router = Router::new(disks, label.to_owned()).with_nics(nics);
    let mut host = Oxen::new(dev, ioreq, signals, args.domid);
    // The lines as the registers say (the dead model may have left one either way), then what
    // the driver had made available and the dead model had not used.
    router.take_lines(&mut host);
    router.process_all(&mut host);
    let end = serve::run(&page, &mut router, &mut host, TICK);
    let why = match &end {
        Ok(End::DomainGone) => "the domain is gone".to_owned(),
        Ok(End::Signal(s)) => format!("signal {s}"),
        Err(e) => format!("waiting failed: {}", describe(e)),
    };
    let failed: Vec<String> =
        counts.iter().map(|(n, c)| format!("{n}: {} buffers failed", c.load(Ordering::Relaxed))).collect();
    let c = router.counters;
    eprintln!(
        "{label}warden exit ({why}): {} requests answered, {} notifications; {}",
        c.requests,
        c.notifications,
        failed.join(", ")
    );
    end.map(drop).map_err(|e| format!("waiting for requests: {}", describe(&e)))
}
