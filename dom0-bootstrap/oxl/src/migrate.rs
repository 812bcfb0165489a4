//! Live migration's pre-copy and its handshake (issue 12, docs/migration.md
//! "Live migration"): what `oxl migrate` sends over the connection to the
//! receiving host's `oxl migrate-receive`, and the lines the two exchange
//! after the stream. The domain side (dirty-page logging, pausing, its state)
//! is behind `LiveSource`, so the rounds are host-tested with a memory that
//! changes while it is sent.
//!
//! The rounds: dirty-page logging goes on and round 1 sends every page; each
//! later round `CLEAN`s the log and sends the pages written meanwhile, until
//! a round finds at most `Policy::stop_pages` dirty or `Policy::max_rounds`
//! rounds are done. Then the domain is paused, the log cleaned once more, and
//! the pages of both sets (the last round's, not sent yet, and those written
//! since) go in the stop-and-copy with the vCPUs' and platform's state. A
//! domain that still dirties more than `Policy::max_final_pages` a round
//! after the last round is not paused: the migration stops and it runs on.

use crate::save::{Batcher, Counted, GuestPages, Summary};
use oxen_abi::save_stream::{kind, CpuidEntry, Round, StreamHeader, MAX_BATCH};
use std::io::{self, BufRead, Write};

/// The TCP port `oxl migrate-receive` listens on unless told another (Xen's
/// relocation port).
pub const DEFAULT_PORT: u16 = 8002;

/// When the pre-copy rounds stop.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Rounds after the first, at most.
    pub max_rounds: u32,
    /// A round that finds this few pages dirty is the last: the domain pauses.
    pub stop_pages: u64,
    /// After `max_rounds`, the most pages the stop-and-copy may send (what
    /// bounds the downtime); more, and the migration stops.
    pub max_final_pages: u64,
}

impl Default for Policy {
    fn default() -> Self {
        // Xen's defaults are of the same order: 50 pages to stop, a handful of rounds.
        Self { max_rounds: 10, stop_pages: 64, max_final_pages: 4096 }
    }
}

/// The migrating domain, as the pre-copy sees it.
pub trait LiveSource {
    fn memory(&mut self) -> &mut dyn GuestPages;
    /// Starts (`true`) or stops dirty-page logging.
    fn log_dirty(&mut self, on: bool) -> Result<(), String>;
    /// Hands over the log as a bitmap (bit `i % 64` of word `i / 64` is page
    /// `i`), clears it and write-protects those pages again; returns how many
    /// pages were dirty.
    fn clean(&mut self, bitmap: &mut [u64]) -> Result<u64, String>;
    /// Pauses the domain for the stop-and-copy.
    fn pause(&mut self) -> Result<(), String>;
    /// The paused domain's vCPUs' states (`vcpu_snapshot`), its platform's
    /// (`platform_state`) and its device model's devices', if it has one.
    fn state(&mut self) -> Result<PausedState, String>;
}

/// Each vCPU's `vcpu_snapshot` encoding, the `platform_state` encoding, the
/// device model's devices.
pub type PausedState = (Vec<Vec<u8>>, Vec<u8>, Vec<DeviceState>);

/// One device of the domain's device model, for its `DEVICE` record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceState {
    pub kind: u32,
    pub head: oxen_abi::save_stream::DeviceHead,
    pub state: Vec<u8>,
}

/// Why a migration's sending side stopped.
#[derive(Debug)]
pub enum SendError {
    /// The connection failed.
    Io(io::Error),
    /// The domain could not be logged, paused or read.
    Source(String),
    /// The domain dirties memory faster than the rounds send it.
    Diverged(String),
    /// The receiving host refused the stream, and said why.
    Refused(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "the connection failed: {}", crate::hv::os_error(e)),
            Self::Source(m) | Self::Diverged(m) => f.write_str(m),
            Self::Refused(m) => write!(f, "the receiving host refused the domain: {m}"),
        }
    }
}

impl From<io::Error> for SendError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// What was sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    /// Rounds, the stop-and-copy included.
    pub rounds: u32,
    /// Pages sent in all rounds (a page dirtied again is counted again).
    pub pages: u64,
    /// Of them, sent as zeros without data.
    pub zero_pages: u64,
    /// Pages sent while the domain was paused.
    pub final_pages: u64,
    /// The stream's length.
    pub bytes: u64,
}

/// The pages a bitmap marks, in order.
fn marked(bitmap: &[u64], pages: u64) -> impl Iterator<Item = u64> + Clone + '_ {
    bitmap.iter().enumerate().flat_map(move |(w, &word)| {
        (0..64).filter(move |b| word >> b & 1 != 0).map(move |b| w as u64 * 64 + b).filter(move |&p| p < pages)
    })
}

/// Sends `pages` (an iterator of page numbers) in batches; between batches
/// asks `peer` whether the receiver has given up.
fn send_pages<W: Write>(
    out: &mut Counted<W>,
    batcher: &mut Batcher,
    mem: &mut dyn GuestPages,
    pages: impl Iterator<Item = u64>,
    summary: &mut Summary,
    peer: &mut dyn FnMut() -> Option<String>,
) -> Result<u64, SendError> {
    let mut sent = 0;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut pages = pages.peekable();
    while pages.peek().is_some() {
        batch.clear();
        batch.extend(pages.by_ref().take(MAX_BATCH));
        batcher.send(out, mem, batch.iter().copied(), summary)?;
        sent += batch.len() as u64;
        if let Some(why) = peer() {
            return Err(SendError::Refused(why));
        }
    }
    Ok(sent)
}

/// What the sender hears while it sends.
pub struct Hooks<'a> {
    /// Asked between page batches whether the receiver sent an `ERROR`:
    /// returns its reason.
    pub peer: &'a mut dyn FnMut() -> Option<String>,
    /// Told of each round as it ends, with the stream's bytes so far.
    pub round: &'a mut dyn FnMut(&Round, u64),
}

/// Sends a live stream: header, config, CPUID, the pre-copy rounds, the
/// stop-and-copy and the state. On `Err` the domain may be paused and logging
/// still on: the caller resumes it (`LiveSource::log_dirty(false)`, unpause).
pub fn send_live(
    w: impl Write,
    header: &StreamHeader,
    (config, cpuid): (&str, &[CpuidEntry]),
    src: &mut dyn LiveSource,
    policy: Policy,
    hooks: Hooks<'_>,
) -> Result<Sent, SendError> {
    let Hooks { peer, round } = hooks;
    let total = header.pages();
    let mut out = Counted::start(w, header)?;
    out.preamble(config, cpuid)?;
    let mut summary = Summary::default();
    let mut batcher = Batcher::new();
    let mut bitmap = vec![0u64; total.div_ceil(64) as usize];
    src.log_dirty(true).map_err(SendError::Source)?;
    let mut sent = send_pages(&mut out, &mut batcher, src.memory(), 0..total, &mut summary, peer)?;
    let mut n = 1;
    let mut dirty = src.clean(&mut bitmap).map_err(SendError::Source)?;
    loop {
        let r = Round { round: n, sent, dirtied: dirty };
        out.record(kind::ROUND, &r.encode())?;
        round(&r, out.bytes);
        if dirty <= policy.stop_pages || n > policy.max_rounds {
            break;
        }
        sent = send_pages(&mut out, &mut batcher, src.memory(), marked(&bitmap, total), &mut summary, peer)?;
        n += 1;
        dirty = src.clean(&mut bitmap).map_err(SendError::Source)?;
    }
    if dirty > policy.max_final_pages {
        return Err(SendError::Diverged(format!(
            "the domain does not converge: after {n} rounds it still wrote {dirty} pages ({} MiB) in one, more than the {} pages the stop-and-copy may send (--max-final-mib)",
            dirty / 256,
            policy.max_final_pages
        )));
    }
    // The stop-and-copy: the last round's pages and those written since.
    src.pause().map_err(SendError::Source)?;
    let mut last = vec![0u64; bitmap.len()];
    src.clean(&mut last).map_err(SendError::Source)?;
    for (a, b) in bitmap.iter_mut().zip(&last) {
        *a |= b;
    }
    let final_pages = send_pages(&mut out, &mut batcher, src.memory(), marked(&bitmap, total), &mut summary, peer)?;
    let (vcpus, platform, devices) = src.state().map_err(SendError::Source)?;
    let r = Round { round: n + 1, sent: final_pages, dirtied: 0 };
    out.record(kind::ROUND, &r.encode())?;
    round(&r, out.bytes);
    let devices: Vec<crate::save::SavedDevice<'_>> =
        devices.iter().map(|d| crate::save::SavedDevice { kind: d.kind, head: d.head, state: &d.state }).collect();
    out.finish(&vcpus, &platform, &devices, &mut summary)?;
    Ok(Sent { rounds: n + 1, pages: summary.pages, zero_pages: summary.zero_pages, final_pages, bytes: summary.bytes })
}

/// The lines the two sides exchange after the stream, each ended by `\n`:
/// the receiver's `READY` (the domain is loaded, paused) or `ERROR <why>`;
/// the sender's `GO` (it has stopped its copy for good: run yours); the
/// receiver's `RUNNING` or `ERROR <why>`.
pub mod line {
    pub const READY: &str = "READY";
    pub const GO: &str = "GO";
    pub const RUNNING: &str = "RUNNING";
    pub const ERROR: &str = "ERROR";
}

/// What the other side said.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Ready,
    Go,
    Running,
    Error(String),
}

/// Reads one line of the handshake (at most 4 KiB): `Err` if the connection
/// ended or the line is not one of `line`'s.
pub fn read_reply<R: BufRead>(r: &mut R) -> Result<Reply, String> {
    let mut text = Vec::new();
    let n = io::Read::take(r, 4096).read_until(b'\n', &mut text).map_err(|e| format!("the connection failed: {}", crate::hv::os_error(&e)))?;
    if n == 0 {
        return Err("the connection was closed".into());
    }
    let text = String::from_utf8_lossy(&text);
    let text = text.trim_end_matches('\n');
    match text.split_once(' ').unwrap_or((text, "")) {
        (line::READY, "") => Ok(Reply::Ready),
        (line::GO, "") => Ok(Reply::Go),
        (line::RUNNING, "") => Ok(Reply::Running),
        (line::ERROR, why) => Ok(Reply::Error(why.to_string())),
        _ => Err(format!("an unexpected answer {:?}", text.chars().take(80).collect::<String>())),
    }
}

/// Writes one handshake line (`ERROR`'s reason on one line).
pub fn write_reply(w: &mut impl Write, reply: &Reply) -> io::Result<()> {
    let text = match reply {
        Reply::Ready => line::READY.to_string(),
        Reply::Go => line::GO.to_string(),
        Reply::Running => line::RUNNING.to_string(),
        Reply::Error(why) => format!("{} {}", line::ERROR, why.replace('\n', " ")),
    };
    w.write_all(format!("{text}\n").as_bytes())?;
    w.flush()
}

/// `oxl migrate --json`: one object on one line.
pub fn json_summary(domain: &str, domid: u32, host: &str, s: &Sent, downtime: f64, seconds: f64) -> String {
    let fin = |x: f64| if x.is_finite() && x >= 0.0 { x } else { 0.0 };
    format!(
        "{{\"op\": \"migrate\", \"domain\": {}, \"domid\": {domid}, \"host\": {}, \"rounds\": {}, \"pages\": {}, \"zero_pages\": {}, \"final_pages\": {}, \"bytes\": {}, \"downtime\": {:.3}, \"seconds\": {:.3}}}\n",
        crate::show::json_str(domain),
        crate::show::json_str(host),
        s.rounds,
        s.pages,
        s.zero_pages,
        s.final_pages,
        s.bytes,
        fin(downtime),
        fin(seconds),
    )
}

/// `HOST` or `HOST:PORT` (an IPv6 address in brackets with a port) as a
/// connectable address, the port `DEFAULT_PORT` if none is given.
pub fn host_port(spec: &str) -> Result<(String, u16), String> {
    let bad = || format!("'{spec}' is not HOST or HOST:PORT (e.g. 10.0.3.2 or 10.0.3.2:{DEFAULT_PORT})");
    if spec.is_empty() {
        return Err(bad());
    }
    if let Some(rest) = spec.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        return match after.strip_prefix(':') {
            None if after.is_empty() => Ok((host.to_string(), DEFAULT_PORT)),
            Some(p) => Ok((host.to_string(), p.parse().ok().filter(|&p| p != 0).ok_or_else(bad)?)),
            None => Err(bad()),
        };
    }
    match spec.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => Ok((spec.to_string(), DEFAULT_PORT)),
        Some((host, p)) if !host.is_empty() => Ok((host.to_string(), p.parse().ok().filter(|&p| p != 0).ok_or_else(bad)?)),
        Some(_) => Err(bad()),
        None => Ok((spec.to_string(), DEFAULT_PORT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::save::{read_stream, Loader};
    use oxen_abi::save_stream::{vendor, PAGE_SIZE};

    /// A domain whose guest writes `writes(round)` pages after each `clean`,
    /// as a running guest would while a round is sent.
    struct Guest {
        mem: Vec<u8>,
        dirty: Vec<u64>,
        logging: bool,
        paused: bool,
        cleans: u32,
        writes: fn(u32) -> u64,
    }

    impl Guest {
        fn new(pages: usize, writes: fn(u32) -> u64) -> Self {
            let mut mem = vec![0u8; pages * PAGE_SIZE];
            for (i, p) in mem.chunks_exact_mut(PAGE_SIZE).enumerate().filter(|(i, _)| i % 4 != 0) {
                p.fill(i as u8 | 1);
            }
            Self { mem, dirty: vec![0; pages.div_ceil(64)], logging: false, paused: false, cleans: 0, writes }
        }

        /// The guest runs a while: it writes `n` pages (spread out), each with the round in it.
        fn run(&mut self, n: u64) {
            let pages = (self.mem.len() / PAGE_SIZE) as u64;
            for k in 0..n {
                let p = (k * 7 + u64::from(self.cleans) * 13) % pages;
                self.mem[p as usize * PAGE_SIZE + 100] = self.cleans as u8 + 0x80;
                if self.logging {
                    self.dirty[(p / 64) as usize] |= 1 << (p % 64);
                }
            }
        }
    }

    impl GuestPages for Guest {
        fn read_page(&mut self, gfn: u64, out: &mut [u8]) -> io::Result<()> {
            let at = gfn as usize * PAGE_SIZE;
            out.copy_from_slice(&self.mem[at..at + PAGE_SIZE]);
            Ok(())
        }
        fn write_page(&mut self, _: u64, _: &[u8]) -> io::Result<()> {
            unreachable!("the source is only read")
        }
    }

    impl LiveSource for Guest {
        fn memory(&mut self) -> &mut dyn GuestPages {
            self
        }
        fn log_dirty(&mut self, on: bool) -> Result<(), String> {
            self.logging = on;
            Ok(())
        }
        fn clean(&mut self, bitmap: &mut [u64]) -> Result<u64, String> {
            assert!(self.logging);
            if !self.paused {
                // What the guest wrote while the round before was sent.
                self.run((self.writes)(self.cleans));
            }
            self.cleans += 1;
            bitmap.copy_from_slice(&self.dirty);
            self.dirty.fill(0);
            Ok(bitmap.iter().map(|w| u64::from(w.count_ones())).sum())
        }
        fn pause(&mut self) -> Result<(), String> {
            self.paused = true;
            Ok(())
        }
        fn state(&mut self) -> Result<PausedState, String> {
            assert!(self.paused, "state read from a running domain");
            let disk = DeviceState { kind: 1, head: oxen_abi::save_stream::DeviceHead { base: 0xfeb0_0000, gsi: 16 }, state: b"disk".to_vec() };
            Ok((vec![b"v0".to_vec()], b"platform".to_vec(), vec![disk]))
        }
    }

    #[derive(Default)]
    struct Target {
        mem: Vec<u8>,
        rounds: Vec<(u32, u64, u64)>,
        vcpus: usize,
        devices: Vec<(u32, u32, Vec<u8>)>,
    }

    impl GuestPages for Target {
        fn read_page(&mut self, _: u64, _: &mut [u8]) -> io::Result<()> {
            unreachable!()
        }
        fn write_page(&mut self, gfn: u64, data: &[u8]) -> io::Result<()> {
            let at = gfn as usize * PAGE_SIZE;
            self.mem[at..at + PAGE_SIZE].copy_from_slice(data);
            Ok(())
        }
    }

    impl Loader for Target {
        fn begin(&mut self, h: &StreamHeader, _: &str, _: &[CpuidEntry]) -> Result<(), String> {
            assert!(h.flags & oxen_abi::save_stream::flags::LIVE != 0);
            self.mem = vec![0xee; h.pages() as usize * PAGE_SIZE];
            Ok(())
        }
        fn memory(&mut self) -> &mut dyn GuestPages {
            self
        }
        fn vcpu(&mut self, _: u32, _: &[u8]) -> Result<(), String> {
            self.vcpus += 1;
            Ok(())
        }
        fn platform(&mut self, _: &[u8]) -> Result<(), String> {
            Ok(())
        }
        fn device(&mut self, index: u32, kind: u32, state: &[u8]) -> Result<(), String> {
            self.devices.push((index, kind, state.to_vec()));
            Ok(())
        }
        fn round(&mut self, round: u32, sent: u64, dirtied: u64) {
            self.rounds.push((round, sent, dirtied));
        }
    }

    fn header(pages: u64) -> StreamHeader {
        StreamHeader {
            flags: oxen_abi::save_stream::flags::LIVE,
            abi_version: oxen_abi::ABI_VERSION,
            vendor: vendor::AMD,
            memory_mib: (pages / 256) as u32,
            vcpus: 1,
            tsc_hz: 1_000_000_000,
        }
    }

    fn migrate(guest: &mut Guest, policy: Policy) -> (Result<Sent, SendError>, Vec<u8>) {
        let pages = (guest.mem.len() / PAGE_SIZE) as u64;
        let cpuid = [CpuidEntry { leaf: 1, subleaf: 0, regs: [1, 2, 3, 4] }];
        let mut stream = Vec::new();
        let hooks = Hooks { peer: &mut || None, round: &mut |_, _| {} };
        let r = send_live(&mut stream, &header(pages), ("name = \"m\"\n", &cpuid), guest, policy, hooks);
        (r, stream)
    }

    #[test]
    fn pages_written_during_the_rounds_arrive_as_the_guest_left_them() {
        // 8 MiB; the guest writes fewer pages each round (it converges).
        let mut g = Guest::new(2048, |round| [900, 300, 100, 30, 5][round.min(4) as usize]);
        let (r, stream) = migrate(&mut g, Policy::default());
        let sent = r.unwrap();
        assert!(g.paused && g.logging, "paused for the stop-and-copy; logging left to the caller");
        // Round 1: everything; the guest wrote 900 pages meanwhile, so round 2
        // sends them, then 300, then 100 (> 64): round 4 sends those and finds
        // 30 dirty, few enough to stop. The stop-and-copy sends those 30.
        assert_eq!(sent.rounds, 5);
        assert_eq!(sent.final_pages, 30);
        assert_eq!(sent.pages, 2048 + 900 + 300 + 100 + 30);
        assert_eq!(sent.bytes, stream.len() as u64);
        let mut t = Target::default();
        // Bytes after END are left to the handshake: a live stream is read to END.
        let mut with_tail = stream.clone();
        with_tail.extend_from_slice(b"GO\n");
        let mut reader = &with_tail[..];
        read_stream(&mut reader, &mut t, |_, _| {}).unwrap();
        assert_eq!(reader, b"GO\n");
        assert!(t.mem == g.mem, "the target's memory is the paused source's");
        assert_eq!(t.rounds, [(1, 2048, 900), (2, 900, 300), (3, 300, 100), (4, 100, 30), (5, 30, 0)]);
        assert_eq!(t.vcpus, 1);
        // The device model's device, after the vCPUs: its place, then its state.
        let (i, k, b) = &t.devices[0];
        let (head, state) = oxen_abi::save_stream::DeviceHead::decode(b).unwrap();
        assert_eq!((*i, *k, head.base, head.gsi, state), (0, 1, 0xfeb0_0000, 16, &b"disk"[..]));
    }

    #[test]
    fn a_guest_that_dirties_faster_than_the_rounds_is_not_paused() {
        let mut g = Guest::new(2048, |_| 2000);
        let policy = Policy { max_rounds: 3, stop_pages: 64, max_final_pages: 1024 };
        let (r, _) = migrate(&mut g, policy);
        let e = r.unwrap_err();
        assert!(matches!(e, SendError::Diverged(_)), "{e}");
        assert!(e.to_string().contains("after 4 rounds it still wrote"), "{e}");
        assert!(!g.paused, "a migration that gives up never paused the domain");
        // A larger stop-and-copy allowance lets the same guest move.
        let mut g = Guest::new(2048, |_| 2000);
        let (r, _) = migrate(&mut g, Policy { max_final_pages: 2048, ..policy });
        assert_eq!(r.unwrap().final_pages, 2000);
    }

    #[test]
    fn the_receiver_refusing_stops_the_sender_before_it_pauses() {
        let mut g = Guest::new(4096, |_| 10);
        let mut asked = 0;
        let mut peer = || {
            asked += 1;
            (asked == 2).then(|| "this host's CPU lacks features the guest was shown: leaf 7 EBX bits 0x20".to_string())
        };
        let h = header(4096);
        let r = send_live(io::sink(), &h, ("", &[]), &mut g, Policy::default(), Hooks { peer: &mut peer, round: &mut |_, _| {} });
        let e = r.unwrap_err();
        assert!(e.to_string().starts_with("the receiving host refused the domain: this host's CPU lacks"), "{e}");
        assert!(!g.paused);
    }

    #[test]
    fn handshake_lines_read_back_and_nonsense_is_refused() {
        for reply in [Reply::Ready, Reply::Go, Reply::Running, Reply::Error("no room\nhere".into())] {
            let mut b = Vec::new();
            write_reply(&mut b, &reply).unwrap();
            let back = read_reply(&mut &b[..]).unwrap();
            match reply {
                Reply::Error(_) => assert_eq!(back, Reply::Error("no room here".into())),
                r => assert_eq!(back, r),
            }
        }
        assert_eq!(read_reply(&mut &b""[..]).unwrap_err(), "the connection was closed");
        assert!(read_reply(&mut &b"HELLO\n"[..]).unwrap_err().contains("unexpected answer \"HELLO\""));
        assert!(read_reply(&mut &b"READY now\n"[..]).is_err());
    }

    #[test]
    fn hosts_and_ports() {
        assert_eq!(host_port("10.0.3.2"), Ok(("10.0.3.2".into(), DEFAULT_PORT)));
        assert_eq!(host_port("10.0.3.2:9000"), Ok(("10.0.3.2".into(), 9000)));
        assert_eq!(host_port("peer"), Ok(("peer".into(), DEFAULT_PORT)));
        assert_eq!(host_port("[fe80::1]:9000"), Ok(("fe80::1".into(), 9000)));
        assert_eq!(host_port("fe80::1"), Ok(("fe80::1".into(), DEFAULT_PORT)));
        for bad in ["", ":80", "h:0", "h:x", "h:70000", "[::1]x"] {
            assert!(host_port(bad).unwrap_err().contains("is not HOST or HOST:PORT"), "{bad}");
        }
    }

    #[test]
    fn json_is_one_object() {
        let s = Sent { rounds: 4, pages: 5000, zero_pages: 10, final_pages: 30, bytes: 123 };
        assert_eq!(
            json_summary("m", 3, "10.0.3.2", &s, 0.25, 4.0),
            "{\"op\": \"migrate\", \"domain\": \"m\", \"domid\": 3, \"host\": \"10.0.3.2\", \"rounds\": 4, \"pages\": 5000, \"zero_pages\": 10, \"final_pages\": 30, \"bytes\": 123, \"downtime\": 0.250, \"seconds\": 4.000}\n"
        );
    }
}
