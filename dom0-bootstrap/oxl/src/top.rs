//! `oxl top`: the domains and their CPU use, refreshed, like xentop. CPU % is
//! the CPU time a domain's vCPUs got between two frames over the wall time
//! between them (so up to vCPUs × 100); the first frame has no "before" and
//! shows "-". With `--vcpus` a second table follows, one row per vCPU (its
//! pCPU, state, CPU time and %, affinity), from one VCPU_LIST a frame.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use oxen_abi::{DomainInfo, DomainState, PhysInfo, VcpuInfo};

use crate::cpulist;
use crate::domain::call_failed;
use crate::hv::{self, Hypervisor};
use crate::ring::write_failed;
use crate::show::{name, state, vcpu_cpu, vcpu_state};
use crate::term::{stop_requested, Input};

/// One look at the domains.
pub struct Sample {
    pub at: Duration,
    pub phys: PhysInfo,
    pub doms: Vec<DomainInfo>,
    /// Every vCPU, when asked for.
    pub vcpus: Option<Vec<VcpuInfo>>,
}

pub fn sample(hv: &mut dyn Hypervisor, vcpus: bool) -> Result<Sample, String> {
    let phys = hv::phys_info(hv).map_err(|e| call_failed("read the host's state", e))?;
    let doms = hv::list(hv).map_err(|e| call_failed("list the domains", e))?;
    let vcpus = if vcpus {
        Some(hv::vcpu_list(hv, None).map_err(|e| call_failed("list the vCPUs", e))?)
    } else {
        None
    };
    Ok(Sample {
        at: hv.now(),
        phys,
        doms,
        vcpus,
    })
}

/// CPU time between two samples over the wall time, in percent.
fn percent(now_ns: u64, before_ns: u64, wall_ns: u64) -> String {
    format!(
        "{:.1}",
        now_ns.saturating_sub(before_ns) as f64 * 100.0 / wall_ns as f64
    )
}

/// One frame: a summary line, then a row per domain.
pub fn frame(now: &Sample, before: Option<&Sample>) -> String {
    let p = &now.phys;
    let count = |s: DomainState| now.doms.iter().filter(|d| d.state == s as u32).count();
    let mut out = format!(
        "oxl top: {} domains ({} running, {} paused), {} CPUs, TSC {} MHz, memory {} MiB total, {} MiB free\n",
        now.doms.len(),
        count(DomainState::Running),
        count(DomainState::Paused),
        p.cpus,
        p.tsc_khz / 1000,
        p.total_kib >> 10,
        p.free_kib >> 10
    );
    let width = now
        .doms
        .iter()
        .map(|d| name(d).len())
        .max()
        .unwrap_or(0)
        .max(4);
    let _ = writeln!(
        out,
        "{:<width$} {:>5} {:>13} {:>10} {:>7} {:>8} {:>5} {:>12} {:>9}",
        "NAME", "ID", "STATE", "CPU(sec)", "CPU(%)", "MEM(MiB)", "VCPUS", "EXITS", "EXITS/s"
    );
    let prev: HashMap<u32, &DomainInfo> = before
        .map(|b| b.doms.iter().map(|d| (d.domid, d)).collect())
        .unwrap_or_default();
    let wall_ns = before.map_or(0, |b| now.at.saturating_sub(b.at).as_nanos() as u64);
    for d in &now.doms {
        let (cpu, rate) = match prev.get(&d.domid) {
            Some(old) if wall_ns > 0 => (
                percent(d.cpu_time_ns, old.cpu_time_ns, wall_ns),
                format!(
                    "{:.0}",
                    d.exits.saturating_sub(old.exits) as f64 * 1e9 / wall_ns as f64
                ),
            ),
            _ => ("-".to_owned(), "-".to_owned()),
        };
        let _ = writeln!(
            out,
            "{:<width$} {:>5} {:>13} {:>10} {:>7} {:>8} {:>5} {:>12} {:>9}",
            name(d),
            d.domid,
            state(d),
            d.cpu_time_ns / 1_000_000_000,
            cpu,
            d.memory_kib >> 10,
            d.vcpus,
            d.exits,
            rate
        );
    }
    if let Some(vcpus) = &now.vcpus {
        vcpu_rows(&mut out, now, vcpus, before, wall_ns, width);
    }
    out
}

/// The vCPU table under the domains (no blank line: batch frames are
/// separated by one).
fn vcpu_rows(
    out: &mut String,
    now: &Sample,
    vcpus: &[VcpuInfo],
    before: Option<&Sample>,
    wall_ns: u64,
    width: usize,
) {
    let _ = writeln!(
        out,
        "{:<width$} {:>5} {:>5} {:>4} {:>8} {:>10} {:>7} AFFINITY",
        "NAME", "ID", "VCPU", "CPU", "STATE", "CPU(sec)", "CPU(%)"
    );
    let prev: HashMap<(u32, u32), u64> = before
        .and_then(|b| b.vcpus.as_ref())
        .map(|vs| {
            vs.iter()
                .map(|v| ((v.domid, v.vcpu), v.cpu_time_ns))
                .collect()
        })
        .unwrap_or_default();
    for v in vcpus {
        let Some(d) = now.doms.iter().find(|d| d.domid == v.domid) else {
            continue;
        };
        let cpu = match prev.get(&(v.domid, v.vcpu)) {
            Some(&old) if wall_ns > 0 => percent(v.cpu_time_ns, old, wall_ns),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<width$} {:>5} {:>5} {:>4} {:>8} {:>10} {:>7} {}",
            name(d),
            d.domid,
            v.vcpu,
            vcpu_cpu(v),
            vcpu_state(v),
            v.cpu_time_ns / 1_000_000_000,
            cpu,
            cpulist::affinity(v.affinity, now.phys.cpus)
        );
    }
}

/// How `top` runs.
pub struct Options {
    /// Plain frames one after another (no screen clearing, no keys).
    pub batch: bool,
    pub iterations: Option<u32>,
    pub delay: Duration,
    /// A row per vCPU too.
    pub vcpus: bool,
}

/// Prints frames until `iterations`, 'q' (on `keys`, when interactive), or a
/// stop signal. Batch mode reads no keys.
pub fn run(
    hv: &mut dyn Hypervisor,
    opts: &Options,
    mut keys: Option<&mut dyn Input>,
    out: &mut dyn Write,
) -> Result<(), String> {
    let mut before: Option<Sample> = None;
    let mut shown = 0u32;
    loop {
        let now = sample(hv, opts.vcpus)?;
        let text = frame(&now, before.as_ref());
        if opts.batch {
            if shown > 0 {
                writeln!(out).map_err(write_failed)?;
            }
            out.write_all(text.as_bytes()).map_err(write_failed)?;
        } else {
            // Home, clear, frame, help line.
            write!(
                out,
                "\x1b[H\x1b[2J{text}\nq quits; every {:.1} s",
                opts.delay.as_secs_f64()
            )
            .map_err(write_failed)?;
        }
        out.flush().map_err(write_failed)?;
        shown += 1;
        before = Some(now);
        if opts.iterations.is_some_and(|n| shown >= n) {
            break;
        }
        match keys.as_deref_mut() {
            Some(keys) if !opts.batch => {
                let typed = keys
                    .wait(opts.delay)
                    .map_err(|e| format!("reading the keyboard: {e}"))?;
                if typed.iter().any(|&k| k == b'q' || k == b'Q') {
                    break;
                }
            }
            _ => hv.sleep(opts.delay),
        }
        if stop_requested() {
            break;
        }
    }
    if !opts.batch {
        writeln!(out).map_err(write_failed)?;
    }
    Ok(())
}
