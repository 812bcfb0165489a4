//! What `list` and `info` print: tables for people, JSON for scripts.
//!
//! The JSON is written by hand rather than with serde_json: it is a handful of
//! flat objects of integers and short strings, the one place that needs care
//! (escaping strings) is `json_str`, tested below, and dom0's static binary
//! stays free of two more dependencies.

use std::fmt::Write as _;

use oxen_abi::{
    abi_major, c_str, info_flags, vcpu_state, DomainInfo, DomainState, PhysInfo, SchedCredit,
    ShutdownReason, VcpuInfo, ABI_VERSION,
};

use crate::cpulist;

/// A domain's name as text (lossy: the hypervisor checks names, but oxl does
/// not trust that to print).
pub fn name(d: &DomainInfo) -> String {
    match c_str(&d.name) {
        Some(s) => s.to_owned(),
        None => {
            let end = d.name.iter().position(|&b| b == 0).unwrap_or(d.name.len());
            String::from_utf8_lossy(&d.name[..end]).into_owned()
        }
    }
}

/// `'web' (id 3)`, how messages name a domain.
pub fn label(d: &DomainInfo) -> String {
    format!("'{}' (id {})", name(d), d.domid)
}

pub fn state(d: &DomainInfo) -> String {
    match DomainState::from_u32(d.state) {
        Some(s) => s.name().to_owned(),
        None => format!("unknown({})", d.state),
    }
}

/// Why it ended, when its state says it is ending or ended.
pub fn shutdown_reason(d: &DomainInfo) -> Option<&'static str> {
    match DomainState::from_u32(d.state) {
        Some(DomainState::ShuttingDown | DomainState::Shutdown) => Some(
            match ShutdownReason::from_u64(u64::from(d.shutdown_reason)) {
                Some(ShutdownReason::Poweroff) => "poweroff",
                Some(ShutdownReason::Reboot) => "reboot",
                Some(ShutdownReason::Crash) => "crash",
                None => "unknown",
            },
        ),
        _ => None,
    }
}

/// `major.minor` of an ABI version.
pub fn abi(v: u32) -> String {
    format!("{}.{}", abi_major(v), v & 0xffff)
}

pub fn vendor(p: &PhysInfo) -> String {
    match p.vendor {
        0 => "Intel VT-x".into(),
        1 => "AMD-V".into(),
        v => format!("unknown ({v})"),
    }
}

fn secs(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1e9)
}

/// `list`'s table, like `xl list`.
pub fn list_table(doms: &[DomainInfo]) -> String {
    let width = name_width(doms);
    let mut s = format!(
        "{:<width$} {:>5} {:>8} {:>5} {:>13} {:>10}\n",
        "Name", "ID", "Mem(MiB)", "VCPUs", "State", "Time(s)"
    );
    for d in doms {
        let _ = writeln!(
            s,
            "{:<width$} {:>5} {:>8} {:>5} {:>13} {:>10}",
            name(d),
            d.domid,
            d.memory_kib / 1024,
            d.vcpus,
            state(d),
            secs(d.cpu_time_ns)
        );
    }
    s
}

/// `list --json`: an array of objects, one line each.
pub fn list_json(doms: &[DomainInfo], dm: impl Fn(u32) -> Option<(crate::dm::Record, bool)>) -> String {
    json_array(doms.iter().map(|d| {
        format!(
            "{{\"id\": {}, \"name\": {}, \"state\": {}, \"memory_kib\": {}, \"vcpus\": {}, \
             \"cpu_time_ns\": {}, \"exits\": {}, \"restarts\": {}, \"privileged\": {}, \"built\": {}, \
             \"shutdown_reason\": {}, {}}}",
            d.domid,
            json_str(&name(d)),
            json_str(&state(d)),
            d.memory_kib,
            d.vcpus,
            d.cpu_time_ns,
            d.exits,
            d.restarts,
            d.flags & info_flags::PRIVILEGED != 0,
            d.flags & info_flags::BUILT != 0,
            shutdown_reason(d).map_or_else(|| "null".to_owned(), json_str),
            devices_json(dm(d.domid).as_ref()),
        )
    }))
}

/// A domain's disks and the device model serving them, for `list --json`:
/// `"disks": [...], "device_model": {...}` (`[]` and `null` without one).
fn devices_json(dm: Option<&(crate::dm::Record, bool)>) -> String {
    let Some((rec, running)) = dm else { return "\"disks\": [], \"vifs\": [], \"device_model\": null".into() };
    let disks: Vec<String> = rec
        .disks
        .iter()
        .map(|d| {
            format!(
                "{{\"vdev\": {}, \"target\": {}, \"mode\": {}, \"base\": {}, \"gsi\": {}}}",
                json_str(&d.vdev),
                json_str(&d.target.display().to_string()),
                json_str(if d.read_only { "r" } else { "w" }),
                d.base,
                d.gsi
            )
        })
        .collect();
    let vifs: Vec<String> = rec
        .vifs
        .iter()
        .map(|v| {
            format!(
                "{{\"vif\": {}, \"mac\": {}, \"bridge\": {}, \"base\": {}, \"gsi\": {}}}",
                json_str(&v.name),
                json_str(&crate::devspec::format_mac(&v.mac)),
                json_str(&v.bridge),
                v.base,
                v.gsi
            )
        })
        .collect();
    format!(
        "\"disks\": [{}], \"vifs\": [{}], \"device_model\": {{\"pid\": {}, \"running\": {running}, \"log\": {}}}",
        disks.join(", "),
        vifs.join(", "),
        rec.pid,
        json_str(&rec.log.display().to_string())
    )
}

/// The width of the Name column: the longest name, at least "Name".
fn name_width<'a>(doms: impl IntoIterator<Item = &'a DomainInfo>) -> usize {
    doms.into_iter()
        .map(|d| name(d).len())
        .max()
        .unwrap_or(0)
        .max(4)
}

/// `sched-credit`'s table, like `xl sched-credit`: Name, ID, Weight, Cap.
pub fn sched_table(rows: &[(DomainInfo, SchedCredit)]) -> String {
    let width = name_width(rows.iter().map(|(d, _)| d));
    let mut s = format!(
        "{:<width$} {:>5} {:>6} {:>5}\n",
        "Name", "ID", "Weight", "Cap"
    );
    for (d, c) in rows {
        let _ = writeln!(
            s,
            "{:<width$} {:>5} {:>6} {:>5}",
            name(d),
            d.domid,
            c.weight,
            c.cap
        );
    }
    s
}

/// `sched-credit --json`: an array of objects, one line each.
pub fn sched_json(rows: &[(DomainInfo, SchedCredit)]) -> String {
    json_array(rows.iter().map(|(d, c)| {
        format!(
            "{{\"id\": {}, \"name\": {}, \"weight\": {}, \"cap\": {}}}",
            d.domid,
            json_str(&name(d)),
            c.weight,
            c.cap
        )
    }))
}

/// A vCPU's state as `vcpu-list` and `top` print it.
pub fn vcpu_state(v: &VcpuInfo) -> String {
    match v.state {
        vcpu_state::RUNNING => "running".into(),
        vcpu_state::RUNNABLE => "runnable".into(),
        vcpu_state::BLOCKED => "blocked".into(),
        vcpu_state::PAUSED => "paused".into(),
        vcpu_state::OFFLINE => "offline".into(),
        s => format!("unknown({s})"),
    }
}

/// The pCPU a vCPU is on (or was on last), "-" for one that never started.
pub fn vcpu_cpu(v: &VcpuInfo) -> String {
    if v.state == vcpu_state::OFFLINE {
        "-".into()
    } else {
        v.cpu.to_string()
    }
}

/// `vcpu-list`'s table, like `xl vcpu-list`: Name, ID, VCPU, CPU, State,
/// Time(s), Affinity (`all` or pCPU ranges), on a host of `cpus` pCPUs.
pub fn vcpu_table(rows: &[(DomainInfo, VcpuInfo)], cpus: u32) -> String {
    let width = name_width(rows.iter().map(|(d, _)| d));
    let mut s = format!(
        "{:<width$} {:>5} {:>5} {:>4} {:>8} {:>10} {}\n",
        "Name", "ID", "VCPU", "CPU", "State", "Time(s)", "Affinity"
    );
    for (d, v) in rows {
        let _ = writeln!(
            s,
            "{:<width$} {:>5} {:>5} {:>4} {:>8} {:>10} {}",
            name(d),
            d.domid,
            v.vcpu,
            vcpu_cpu(v),
            vcpu_state(v),
            secs(v.cpu_time_ns),
            cpulist::affinity(v.affinity, cpus)
        );
    }
    s
}

/// `vcpu-list --json`: an array of objects, one line each.
pub fn vcpu_json(rows: &[(DomainInfo, VcpuInfo)], cpus: u32) -> String {
    json_array(rows.iter().map(|(d, v)| {
        let list: Vec<String> = cpulist::cpus_of(v.affinity, cpus)
            .iter()
            .map(u32::to_string)
            .collect();
        format!(
            "{{\"id\": {}, \"name\": {}, \"vcpu\": {}, \"cpu\": {}, \"state\": {}, \
             \"cpu_time_ns\": {}, \"affinity\": {}, \"affinity_cpus\": [{}]}}",
            d.domid,
            json_str(&name(d)),
            v.vcpu,
            if v.state == vcpu_state::OFFLINE {
                "null".to_owned()
            } else {
                v.cpu.to_string()
            },
            json_str(&vcpu_state(v)),
            v.cpu_time_ns,
            json_str(&cpulist::affinity(v.affinity, cpus)),
            list.join(", ")
        )
    }))
}

/// "weight 512 and cap 50": what a SCHED_CREDIT call sets, for messages.
pub fn sched_change(weight: Option<u32>, cap: Option<u32>) -> String {
    let parts: Vec<String> = [("weight", weight), ("cap", cap)]
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k} {v}")))
        .collect();
    parts.join(" and ")
}

/// A JSON array of one-line objects, one a line.
fn json_array(objects: impl Iterator<Item = String>) -> String {
    let mut s = String::from("[");
    let mut empty = true;
    for o in objects {
        s.push_str(if empty { "\n  " } else { ",\n  " });
        s.push_str(&o);
        empty = false;
    }
    s.push_str(if empty { "]\n" } else { "\n]\n" });
    s
}

/// `info`, in `xl info`'s "key : value" form (memory in MiB, as xl prints it).
pub fn info_text(p: &PhysInfo) -> String {
    let rows = [
        ("abi_version", abi(p.abi_version)),
        ("oxl_abi_version", abi(ABI_VERSION)),
        ("oxl_version", env!("CARGO_PKG_VERSION").to_owned()),
        ("virt_caps", vendor(p)),
        ("nr_cpus", p.cpus.to_string()),
        ("tsc_khz", p.tsc_khz.to_string()),
        ("total_memory", (p.total_kib / 1024).to_string()),
        ("free_memory", (p.free_kib / 1024).to_string()),
        ("nr_domains", p.domains.to_string()),
    ];
    rows.iter()
        .map(|(k, v)| format!("{k:<22} : {v}\n"))
        .collect()
}

pub fn info_json(p: &PhysInfo) -> String {
    format!(
        "{{\"abi_version\": {}, \"oxl_abi_version\": {}, \"oxl_version\": {}, \"vendor\": {}, \"cpus\": {}, \
         \"tsc_khz\": {}, \"total_kib\": {}, \"free_kib\": {}, \"domains\": {}}}\n",
        json_str(&abi(p.abi_version)),
        json_str(&abi(ABI_VERSION)),
        json_str(env!("CARGO_PKG_VERSION")),
        json_str(&vendor(p)),
        p.cpus,
        p.tsc_khz,
        p.total_kib,
        p.free_kib,
        p.domains
    )
}

/// A JSON string literal (RFC 8259: quote, backslash and control characters escaped).
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use oxen_abi::{name_bytes, NAME_LEN};

    pub fn dom(
        domid: u32,
        n: &str,
        state: DomainState,
        mib: u64,
        vcpus: u32,
        cpu_ns: u64,
    ) -> DomainInfo {
        DomainInfo {
            domid,
            state: state as u32,
            vcpus,
            flags: if domid == 0 {
                info_flags::PRIVILEGED | info_flags::BUILT
            } else {
                info_flags::BUILT
            },
            memory_kib: mib * 1024,
            cpu_time_ns: cpu_ns,
            exits: 1000 + u64::from(domid),
            restarts: 0,
            shutdown_reason: 0,
            name: name_bytes(n).unwrap_or([0; NAME_LEN]),
        }
    }

    pub fn phys() -> PhysInfo {
        PhysInfo {
            abi_version: 0x0001_0001,
            cpus: 2,
            total_kib: 512 * 1024,
            free_kib: 200 * 1024 + 512,
            tsc_khz: 2_993_000,
            domains: 2,
            vendor: 1,
        }
    }

    #[test]
    fn table_like_xl_list() {
        let doms = [
            dom(0, "Domain-0", DomainState::Running, 256, 1, 12_345_678_901),
            dom(3, "web", DomainState::Paused, 64, 2, 50_000_000),
        ];
        assert_eq!(
            list_table(&doms),
            "\
Name        ID Mem(MiB) VCPUs         State    Time(s)
Domain-0     0      256     1       running       12.3
web          3       64     2        paused        0.1
"
        );
        assert_eq!(
            list_table(&[]),
            "Name    ID Mem(MiB) VCPUs         State    Time(s)\n"
        );
    }

    #[test]
    fn odd_states_and_names_still_print() {
        let mut d = dom(7, "x", DomainState::Running, 4, 1, 0);
        d.state = 42;
        d.name = [0xff; NAME_LEN];
        let t = list_table(&[d]);
        assert!(t.contains("unknown(42)"), "{t}");
        assert!(t.contains('\u{fffd}'), "{t}");
    }

    #[test]
    fn json_list() {
        let mut web = dom(3, "web", DomainState::Shutdown, 64, 2, 5);
        web.shutdown_reason = ShutdownReason::Crash as u32;
        let doms = [dom(0, "Domain-0", DomainState::Running, 256, 1, 7), web];
        assert_eq!(
            list_json(&doms, |id| (id == 3).then(|| (crate::dm::Record {
                pid: 9,
                log: "/var/log/oxen/web.dm.log".into(),
                disks: vec![crate::dm::RecordedDisk { vdev: "xvda".into(), base: 0xfeb0_0000, gsi: 16, read_only: false, target: "/srv/web.img".into() }],
                vifs: Vec::new(),
            }, false))),
            "[\n  \
{\"id\": 0, \"name\": \"Domain-0\", \"state\": \"running\", \"memory_kib\": 262144, \"vcpus\": 1, \
\"cpu_time_ns\": 7, \"exits\": 1000, \"restarts\": 0, \"privileged\": true, \"built\": true, \"shutdown_reason\": null, \
\"disks\": [], \"vifs\": [], \"device_model\": null},\n  \
{\"id\": 3, \"name\": \"web\", \"state\": \"shutdown\", \"memory_kib\": 65536, \"vcpus\": 2, \
\"cpu_time_ns\": 5, \"exits\": 1003, \"restarts\": 0, \"privileged\": false, \"built\": true, \"shutdown_reason\": \"crash\", \
\"disks\": [{\"vdev\": \"xvda\", \"target\": \"/srv/web.img\", \"mode\": \"w\", \"base\": 4272947200, \"gsi\": 16}], \"vifs\": [], \
\"device_model\": {\"pid\": 9, \"running\": false, \"log\": \"/var/log/oxen/web.dm.log\"}}\n]\n"
        );
        assert_eq!(list_json(&[], |_| None), "[]\n");
    }

    #[test]
    fn info_like_xl_info() {
        let text = info_text(&phys());
        let expected = format!(
            "\
abi_version            : 1.1
oxl_abi_version        : {}
oxl_version            : {}
virt_caps              : AMD-V
nr_cpus                : 2
tsc_khz                : 2993000
total_memory           : 512
free_memory            : 200
nr_domains             : 2
",
            abi(ABI_VERSION),
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(text, expected);
        let j = info_json(&PhysInfo {
            vendor: 0,
            ..phys()
        });
        assert!(j.starts_with("{\"abi_version\": \"1.1\", "), "{j}");
        assert!(j.contains("\"vendor\": \"Intel VT-x\", \"cpus\": 2, \"tsc_khz\": 2993000, \"total_kib\": 524288, \"free_kib\": 205312, \"domains\": 2}\n"), "{j}");
        assert_eq!(
            vendor(&PhysInfo {
                vendor: 9,
                ..phys()
            }),
            "unknown (9)"
        );
    }

    #[test]
    fn sched_table_and_json() {
        let c = |weight, cap| SchedCredit {
            domid: 0,
            flags: 0,
            weight,
            cap,
        };
        let rows = [
            (
                dom(0, "Domain-0", DomainState::Running, 256, 1, 0),
                c(256, 0),
            ),
            (dom(12, "web", DomainState::Paused, 64, 2, 0), c(65535, 150)),
        ];
        assert_eq!(
            sched_table(&rows),
            "\
Name        ID Weight   Cap
Domain-0     0    256     0
web         12  65535   150
"
        );
        assert_eq!(
            sched_json(&rows),
            "[\n  {\"id\": 0, \"name\": \"Domain-0\", \"weight\": 256, \"cap\": 0},\n  \
             {\"id\": 12, \"name\": \"web\", \"weight\": 65535, \"cap\": 150}\n]\n"
        );
        assert_eq!(sched_json(&[]), "[]\n");
    }

    fn vcpu(domid: u32, n: u32, cpu: u32, state: u32, affinity: u64, ns: u64) -> VcpuInfo {
        VcpuInfo {
            domid,
            vcpu: n,
            cpu,
            state,
            affinity,
            cpu_time_ns: ns,
        }
    }

    #[test]
    fn vcpu_table_like_xl_vcpu_list() {
        let d0 = dom(0, "Domain-0", DomainState::Running, 256, 1, 0);
        let web = dom(3, "web", DomainState::Running, 64, 4, 0);
        let rows = [
            (
                d0,
                vcpu(0, 0, 1, vcpu_state::RUNNING, 0b1111, 12_345_678_901),
            ),
            (web, vcpu(3, 0, 0, vcpu_state::RUNNABLE, 0b1011, 50_000_000)),
            (web, vcpu(3, 1, 3, vcpu_state::BLOCKED, 0b1000, 0)),
            (web, vcpu(3, 2, 2, vcpu_state::PAUSED, u64::MAX, 0)),
            (web, vcpu(3, 3, 0, vcpu_state::OFFLINE, 0b1_0000, 0)),
            (web, vcpu(3, 4, 0, 9, 0b1, 0)),
        ];
        assert_eq!(
            vcpu_table(&rows, 4),
            "\
Name        ID  VCPU  CPU    State    Time(s) Affinity
Domain-0     0     0    1  running       12.3 all
web          3     0    0 runnable        0.1 0-1,3
web          3     1    3  blocked        0.0 3
web          3     2    2   paused        0.0 all
web          3     3    -  offline        0.0 none
web          3     4    0 unknown(9)        0.0 0
"
        );
        assert_eq!(
            vcpu_table(&[], 4),
            "Name    ID  VCPU  CPU    State    Time(s) Affinity\n"
        );
        assert_eq!(
            vcpu_json(&rows[..2], 4),
            "[\n  \
{\"id\": 0, \"name\": \"Domain-0\", \"vcpu\": 0, \"cpu\": 1, \"state\": \"running\", \
\"cpu_time_ns\": 12345678901, \"affinity\": \"all\", \"affinity_cpus\": [0, 1, 2, 3]},\n  \
{\"id\": 3, \"name\": \"web\", \"vcpu\": 0, \"cpu\": 0, \"state\": \"runnable\", \
\"cpu_time_ns\": 50000000, \"affinity\": \"0-1,3\", \"affinity_cpus\": [0, 1, 3]}\n]\n"
        );
        assert_eq!(
            vcpu_json(&rows[4..5], 4),
            "[\n  {\"id\": 3, \"name\": \"web\", \"vcpu\": 3, \"cpu\": null, \"state\": \"offline\", \
             \"cpu_time_ns\": 0, \"affinity\": \"none\", \"affinity_cpus\": []}\n]\n"
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("web"), "\"web\"");
        assert_eq!(
            json_str("a\"b\\c\nd\u{1}\u{7f}é"),
            "\"a\\\"b\\\\c\\nd\\u0001\\u007fé\""
        );
    }
}

/// xl's number for a virtual disk (`xvda` = 51712): the Xen PV disk major 202
/// with 16 minors per disk, or the extended form past the 16th.
pub fn xen_vdev_number(index: u32) -> u32 {
    if index < 16 {
        (202 << 8) | (index << 4)
    } else {
        (1 << 28) | (index << 8)
    }
}

/// `oxl block-list`: xl's columns (Vdev, BE, handle, state: 4 connected while
/// the device model runs, 6 closed when it does not), then Oxen's.
pub fn block_list(rec: Option<&crate::dm::Record>, running: bool) -> String {
    let mut s = format!("{:<10}{:<4}{:<7}{:<6}{:<11}{:<4}{:<5}{}\n", "Vdev", "BE", "handle", "state", "base", "gsi", "mode", "target");
    let Some(rec) = rec else { return s };
    for (handle, d) in rec.disks.iter().enumerate() {
        let index = crate::devspec::vdev_index(&d.vdev).unwrap_or(handle as u32);
        let state = if running { 4 } else { 6 };
        s += &format!(
            "{:<10}{:<4}{:<7}{:<6}{:<11}{:<4}{:<5}{}\n",
            xen_vdev_number(index),
            0,
            handle,
            state,
            format!("{:#x}", d.base),
            d.gsi,
            if d.read_only { "r" } else { "w" },
            d.target.display()
        );
    }
    s
}

/// `oxl network-list`: xl's columns (Idx, BE, Mac Addr., handle, state: 4
/// connected while the device model runs, 6 closed when not), then Oxen's.
pub fn network_list(rec: Option<&crate::dm::Record>, running: bool) -> String {
    let mut s = format!("{:<4}{:<4}{:<19}{:<7}{:<6}{:<11}{:<4}{:<8}{}\n", "Idx", "BE", "Mac Addr.", "handle", "state", "base", "gsi", "bridge", "vif");
    let Some(rec) = rec else { return s };
    for (i, v) in rec.vifs.iter().enumerate() {
        s += &format!(
            "{:<4}{:<4}{:<19}{:<7}{:<6}{:<11}{:<4}{:<8}{}\n",
            i,
            0,
            crate::devspec::format_mac(&v.mac),
            i,
            if running { 4 } else { 6 },
            format!("{:#x}", v.base),
            v.gsi,
            v.bridge,
            v.name
        );
    }
    s
}

#[cfg(test)]
mod block_list_tests {
    use super::*;
    use crate::dm::{Record, RecordedDisk};

    #[test]
    fn vdev_numbers_are_xls() {
        // xl block-list prints 51712 for xvda and 51728 for xvdb.
        assert_eq!((xen_vdev_number(0), xen_vdev_number(1)), (51712, 51728));
        assert_eq!(xen_vdev_number(26), (1 << 28) | (26 << 8));
    }

    #[test]
    fn block_list_has_xls_columns_then_oxens() {
        let rec = Record {
            vifs: Vec::new(),
            pid: 7,
            log: "/var/log/oxen/web.dm.log".into(),
            disks: vec![
                RecordedDisk { vdev: "xvda".into(), base: 0xfeb0_0000, gsi: 16, read_only: false, target: "/srv/web.img".into() },
                RecordedDisk { vdev: "xvdb".into(), base: 0xfeb0_1000, gsi: 17, read_only: true, target: "/srv/data.img".into() },
            ],
        };
        assert_eq!(
            block_list(Some(&rec), true),
            "Vdev      BE  handle state base       gsi mode target\n\
             51712     0   0      4     0xfeb00000 16  w    /srv/web.img\n\
             51728     0   1      4     0xfeb01000 17  r    /srv/data.img\n"
        );
        assert!(block_list(Some(&rec), false).lines().nth(1).unwrap().starts_with("51712     0   0      6 "));
        assert_eq!(block_list(None, false).lines().count(), 1);
    }

    #[test]
    fn network_list_has_xls_columns_then_oxens() {
        let rec = Record {
            pid: 7,
            log: "/var/log/oxen/web.dm.log".into(),
            disks: Vec::new(),
            vifs: vec![crate::dm::RecordedVif { name: "vif3.0".into(), base: 0xfeb0_1000, gsi: 17, mac: [0, 0x16, 0x3e, 1, 2, 3], bridge: "xenbr0".into() }],
        };
        assert_eq!(
            network_list(Some(&rec), true),
            "Idx BE  Mac Addr.          handle state base       gsi bridge  vif\n\
             0   0   00:16:3e:01:02:03  0      4     0xfeb01000 17  xenbr0  vif3.0\n"
        );
    }
}
