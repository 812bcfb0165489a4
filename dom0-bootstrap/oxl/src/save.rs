//! The save stream's I/O (issue 12): writing a paused domain's memory and
//! state as `oxen_abi::save_stream` lays it out, and reading it back with
//! every check the format has. The hypervisor side (pausing, getting and
//! setting state, mapping the domain's memory) is the caller's, behind
//! `GuestPages` and the byte slices passed in; this module only moves bytes,
//! so it is host-tested whole. docs/migration.md describes the format.

use oxen_abi::save_stream::{
    end_payload, kind, pages_payload, pages_payload_max, pages_payload_zeros, CpuidEntry, Order, Record, RecordHeader, StreamError,
    StreamHeader, HEADER_LEN, MAX_BATCH, PAGE_SIZE, RECORD_HEADER_LEN,
};
use std::io::{self, Read, Write};

/// A domain's memory, a page at a time (a foreign mapping in dom0).
pub trait GuestPages {
    /// Copies page `gfn` into `out` (`PAGE_SIZE` bytes).
    fn read_page(&mut self, gfn: u64, out: &mut [u8]) -> io::Result<()>;
    /// Writes `data` (`PAGE_SIZE` bytes) into page `gfn`.
    fn write_page(&mut self, gfn: u64, data: &[u8]) -> io::Result<()>;
    /// Zeroes page `gfn` (a restored domain's memory may hold its kernel).
    fn zero_page(&mut self, gfn: u64) -> io::Result<()> {
        self.write_page(gfn, &[0; PAGE_SIZE])
    }
}

/// What a domain's state is made of, besides its memory.
pub struct DomainState<'a> {
    pub config: &'a str,
    pub cpuid: &'a [CpuidEntry],
    /// Each vCPU's `vcpu_snapshot` encoding, vCPU 0 first.
    pub vcpus: &'a [Vec<u8>],
    /// The `platform_state` encoding.
    pub platform: &'a [u8],
    /// The device model's devices, in its order (disks, then vifs).
    pub devices: &'a [SavedDevice<'a>],
}

/// One device's `DEVICE` record: its kind (`oxen_abi::device_kind`), its
/// place in the domain and the device model's state of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SavedDevice<'a> {
    pub kind: u32,
    pub head: oxen_abi::save_stream::DeviceHead,
    pub state: &'a [u8],
}

/// What was written or read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub pages: u64,
    /// Pages of zeros (sent as an entry without data).
    pub zero_pages: u64,
    pub bytes: u64,
}

/// Which command a `json_summary` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `oxl save`: written, the domain destroyed.
    Save,
    /// `oxl save -c`: written, the domain runs on.
    Checkpoint,
    /// `oxl restore`: read, the domain made again (its new ID).
    Restore,
    /// `oxl migrate-receive`: read from the sender (`file` is its address),
    /// the domain running here (its new ID).
    Receive,
}

/// `oxl save --json` / `oxl restore --json`: one object on one line, for
/// scripts (issue 12 item 4) — what was moved and how long the command took,
/// from its start to the domain destroyed (save), running on (checkpoint) or
/// running again (restore). `pages` counts every page of the domain's memory,
/// `zero_pages` those sent as zeros without data; `bytes` is the file's size.
pub fn json_summary(op: Op, domain: &str, domid: u32, file: &std::path::Path, s: &Summary, seconds: f64) -> String {
    let op = match op {
        Op::Save => "save",
        Op::Checkpoint => "checkpoint",
        Op::Restore => "restore",
        Op::Receive => "migrate-receive",
    };
    let seconds = if seconds.is_finite() && seconds >= 0.0 { seconds } else { 0.0 };
    format!(
        "{{\"op\": \"{op}\", \"domain\": {}, \"domid\": {domid}, \"file\": {}, \"bytes\": {}, \"pages\": {}, \"zero_pages\": {}, \"seconds\": {seconds:.3}}}\n",
        crate::show::json_str(domain),
        crate::show::json_str(&file.to_string_lossy()),
        s.bytes,
        s.pages,
        s.zero_pages,
    )
}

/// Counts what goes through a writer.
pub(crate) struct Counted<W> {
    pub(crate) w: W,
    pub(crate) bytes: u64,
    pub(crate) records: u64,
}

impl<W: Write> Counted<W> {
    /// Starts a stream: its header.
    pub(crate) fn start(mut w: W, header: &StreamHeader) -> io::Result<Self> {
        w.write_all(&header.encode())?;
        Ok(Self { w, bytes: HEADER_LEN as u64, records: 0 })
    }

    pub(crate) fn record(&mut self, kind: u16, payload: &[u8]) -> io::Result<()> {
        let h = RecordHeader::of(kind, payload);
        self.w.write_all(&h.encode())?;
        self.w.write_all(payload)?;
        self.w.write_all(&[0; 8][..h.padding()])?;
        self.bytes += (RECORD_HEADER_LEN + payload.len() + h.padding()) as u64;
        self.records += 1;
        Ok(())
    }
}

/// Writes a whole (not live) stream: `header`, the state, every page of the
/// domain's memory; `progress(pages done, pages in all)` after each batch.
pub fn write_stream(
    w: impl Write,
    header: &StreamHeader,
    state: &DomainState<'_>,
    mem: &mut dyn GuestPages,
    mut progress: impl FnMut(u64, u64),
) -> io::Result<Summary> {
    let mut out = Counted::start(w, header)?;
    out.preamble(state.config, state.cpuid)?;
    let total = header.pages();
    let mut summary = Summary::default();
    let mut batcher = Batcher::new();
    let mut gfn = 0;
    while gfn < total {
        let n = (total - gfn).min(MAX_BATCH as u64);
        batcher.send(&mut out, mem, gfn..gfn + n, &mut summary)?;
        gfn += n;
        progress(gfn, total);
    }
    out.finish(state.vcpus, state.platform, state.devices, &mut summary)?;
    Ok(summary)
}

impl<W: Write> Counted<W> {
    /// `CONFIG` and `CPUID`, the records before the memory.
    pub(crate) fn preamble(&mut self, config: &str, cpuid: &[CpuidEntry]) -> io::Result<()> {
        self.record(kind::CONFIG, config.as_bytes())?;
        let cpuid: Vec<u8> = cpuid.iter().flat_map(CpuidEntry::encode).collect();
        self.record(kind::CPUID, &cpuid)
    }

    /// Every vCPU's `VCPU`, `PLATFORM` and `END`, the records after the
    /// memory; `summary.bytes` is then the stream's length.
    pub(crate) fn finish(&mut self, vcpus: &[Vec<u8>], platform: &[u8], devices: &[SavedDevice<'_>], summary: &mut Summary) -> io::Result<()> {
        for (i, v) in vcpus.iter().enumerate() {
            let mut p = Vec::with_capacity(8 + v.len());
            p.extend_from_slice(&(i as u32).to_le_bytes());
            p.extend_from_slice(&[0; 4]);
            p.extend_from_slice(v);
            self.record(kind::VCPU, &p)?;
        }
        self.record(kind::PLATFORM, platform)?;
        for (i, d) in devices.iter().enumerate() {
            let mut p = Vec::with_capacity(8 + oxen_abi::save_stream::DEVICE_HEAD_LEN + d.state.len());
            p.extend_from_slice(&(i as u32).to_le_bytes());
            p.extend_from_slice(&d.kind.to_le_bytes());
            p.extend_from_slice(&d.head.encode());
            p.extend_from_slice(d.state);
            self.record(kind::DEVICE, &p)?;
        }
        let end = end_payload(self.records, summary.pages);
        self.record(kind::END, &end)?;
        self.w.flush()?;
        summary.bytes = self.bytes;
        Ok(())
    }
}

/// Sends pages as `PAGES` records (buffers for one batch kept between calls).
pub(crate) struct Batcher {
    pages: Vec<u8>,
    payload: Vec<u8>,
}

impl Batcher {
    pub(crate) fn new() -> Self {
        Self { pages: vec![0u8; MAX_BATCH * PAGE_SIZE], payload: vec![0u8; pages_payload_max(MAX_BATCH)] }
    }

    /// One `PAGES` record of the pages `gfns` names (1 to `MAX_BATCH` of them),
    /// read from `mem`; counted in `summary`.
    pub(crate) fn send<W: Write>(
        &mut self,
        out: &mut Counted<W>,
        mem: &mut dyn GuestPages,
        gfns: impl IntoIterator<Item = u64> + Clone,
        summary: &mut Summary,
    ) -> io::Result<()> {
        let mut n = 0;
        for (gfn, page) in gfns.clone().into_iter().zip(self.pages.chunks_exact_mut(PAGE_SIZE)) {
            mem.read_page(gfn, page)?;
            n += 1;
        }
        let batch: Vec<(u64, &[u8])> = gfns.into_iter().zip(self.pages.chunks_exact(PAGE_SIZE)).take(n).collect();
        let len = pages_payload(&batch, &mut self.payload).ok_or_else(|| io::Error::other("a page batch did not fit"))?;
        summary.zero_pages += pages_payload_zeros(n, len) as u64;
        summary.pages += n as u64;
        out.record(kind::PAGES, &self.payload[..len])
    }
}

/// How a loaded vCPU's TSC relates to the one it was saved with (the stream
/// holds the guest's TSC when taken and its offset from that host's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscRule {
    /// `oxl migrate-receive`: the guest's TSC goes on from the value it had
    /// when its state was taken on the other host, whose TSC is unrelated to
    /// this one's (the moments of the handshake do not count for it).
    GoOn,
    /// `oxl restore`: the saved offset (on the host that saved it, the guest's
    /// TSC advances by the time it spent saved, as for a pause), unless that
    /// would turn its TSC back (a file from another host): then as `GoOn`.
    NeverBack,
}

/// The TSC offset (guest = host + offset, modulo 2^64) a state taken at
/// guest TSC `saved_tsc` with `saved_offset` loads with when this host's TSC
/// reads `host_tsc`.
pub fn tsc_offset_for(rule: TscRule, saved_tsc: u64, saved_offset: u64, host_tsc: u64) -> u64 {
    let go_on = saved_tsc.wrapping_sub(host_tsc);
    match rule {
        TscRule::GoOn => go_on,
        TscRule::NeverBack if host_tsc.wrapping_add(saved_offset) >= saved_tsc => saved_offset,
        TscRule::NeverBack => go_on,
    }
}

/// A `vcpu_snapshot` encoding with its TSC offset replaced by `offset`.
pub fn with_tsc_offset(state: &[u8], offset: u64) -> Result<Vec<u8>, String> {
    use oxen_abi::vcpu_snapshot::VcpuStateRecord;
    let mut r = VcpuStateRecord::decode(state).map_err(|e| format!("a vCPU state in the stream: {}", e.describe()))?;
    r.tsc[2] = offset;
    let mut out = vec![0u8; r.encoded_len()];
    let n = r.encode(&mut out).ok_or("a vCPU state did not encode again")?;
    out.truncate(n);
    Ok(out)
}

/// The guest's TSC when the state was taken and its offset then.
pub fn saved_tsc(state: &[u8]) -> Result<(u64, u64), String> {
    let r = oxen_abi::vcpu_snapshot::VcpuStateRecord::decode(state).map_err(|e| format!("a vCPU state in the stream: {}", e.describe()))?;
    Ok((r.tsc[0], r.tsc[2]))
}

/// Why reading a stream failed.
#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    Stream(StreamError),
    /// The caller refused the stream (another vendor, too little memory, …).
    Refused(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => f.write_str(&StreamError::Truncated.to_string()),
            Self::Io(e) => write!(f, "{e}"),
            Self::Stream(e) => write!(f, "{e}"),
            Self::Refused(why) => f.write_str(why),
        }
    }
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<StreamError> for ReadError {
    fn from(e: StreamError) -> Self {
        Self::Stream(e)
    }
}

/// Where a stream's contents go, in the order they come.
pub trait Loader {
    /// The header, config and the CPUID the guest saw: check them (vendor,
    /// features, memory) and make the domain; the memory its pages go to.
    fn begin(&mut self, header: &StreamHeader, config: &str, cpuid: &[CpuidEntry]) -> Result<(), String>;
    fn memory(&mut self) -> &mut dyn GuestPages;
    fn vcpu(&mut self, index: u32, state: &[u8]) -> Result<(), String>;
    fn platform(&mut self, state: &[u8]) -> Result<(), String>;
    fn device(&mut self, index: u32, kind: u32, state: &[u8]) -> Result<(), String>;
    /// A live stream's round ended (for progress lines).
    fn round(&mut self, _round: u32, _sent: u64, _dirtied: u64) {}
}

/// Reads a stream to its `END` and hands everything to `loader`, checking
/// it all: nothing is loaded past the first error, and the caller then
/// destroys what `begin` made. Bytes after `END` are an error too, in a file;
/// a live stream (a migration's connection, where the two sides go on talking
/// after it) is read up to its `END` and no further.
pub fn read_stream(mut r: impl Read, loader: &mut dyn Loader, mut progress: impl FnMut(u64, u64)) -> Result<Summary, ReadError> {
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head)?;
    let header = StreamHeader::decode(&head)?;
    let mut order = Order::new(header);
    let mut summary = Summary { bytes: HEADER_LEN as u64, ..Default::default() };
    let mut payload = Vec::new();
    let mut config = String::new();
    loop {
        let mut rh = [0u8; RECORD_HEADER_LEN];
        match r.read_exact(&mut rh) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && order.ended() => {
                // Read nothing at all: the stream ended right after END.
                return Ok(summary);
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(StreamError::Truncated.into()),
            Err(e) => return Err(e.into()),
            Ok(()) if order.ended() => return Err(StreamError::Trailing.into()),
            Ok(()) => {}
        }
        let rh = RecordHeader::decode(&rh)?;
        payload.resize(rh.len as usize, 0);
        r.read_exact(&mut payload)?;
        rh.check(&payload)?;
        let mut pad = [0u8; 8];
        r.read_exact(&mut pad[..rh.padding()])?;
        if pad.iter().any(|&b| b != 0) {
            return Err(StreamError::Reserved.into());
        }
        summary.bytes += (RECORD_HEADER_LEN + payload.len() + rh.padding()) as u64;
        match order.take(rh.kind, &payload)? {
            Record::Config(c) => config = c.to_string(),
            Record::Cpuid(bytes) => {
                let cpuid: Vec<CpuidEntry> = CpuidEntry::decode_all(bytes)?.collect();
                loader.begin(&header, &config, &cpuid).map_err(ReadError::Refused)?;
            }
            Record::Pages(p) => {
                let mem = loader.memory();
                for (gfn, data) in p.iter() {
                    match data {
                        Some(d) => mem.write_page(gfn, d)?,
                        None => {
                            mem.zero_page(gfn)?;
                            summary.zero_pages += 1;
                        }
                    }
                }
                summary.pages += p.len() as u64;
                progress(summary.pages, header.pages());
            }
            Record::Round(r) => loader.round(r.round, r.sent, r.dirtied),
            Record::Vcpu(i, s) => loader.vcpu(i, s).map_err(ReadError::Refused)?,
            Record::Platform(s) => loader.platform(s).map_err(ReadError::Refused)?,
            Record::Device(i, k, s) => loader.device(i, k, s).map_err(ReadError::Refused)?,
            Record::End if header.flags & oxen_abi::save_stream::flags::LIVE != 0 => return Ok(summary),
            Record::End => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxen_abi::save_stream::{vendor, DeviceHead};

    #[test]
    fn json_summaries_are_one_object_with_every_field() {
        let s = Summary { pages: 32768, zero_pages: 16486, bytes: 66_964_472 };
        let j = json_summary(Op::Save, "linux", 3, std::path::Path::new("/tmp/l.save"), &s, 2.3456);
        assert_eq!(
            j,
            "{\"op\": \"save\", \"domain\": \"linux\", \"domid\": 3, \"file\": \"/tmp/l.save\", \"bytes\": 66964472, \"pages\": 32768, \"zero_pages\": 16486, \"seconds\": 2.346}\n"
        );
        let j = json_summary(Op::Restore, "we\"b", 7, std::path::Path::new("a\\b.save"), &s, 0.5);
        assert!(j.starts_with("{\"op\": \"restore\", \"domain\": \"we\\\"b\", \"domid\": 7, \"file\": \"a\\\\b.save\""), "{j}");
        assert!(json_summary(Op::Checkpoint, "x", 1, std::path::Path::new("f"), &s, f64::NAN).contains("\"op\": \"checkpoint\"") );
        assert!(json_summary(Op::Checkpoint, "x", 1, std::path::Path::new("f"), &s, -1.0).ends_with("\"seconds\": 0.000}\n"));
    }

    /// A memory of `pages` pages.
    struct Mem(Vec<u8>);

    impl GuestPages for Mem {
        fn read_page(&mut self, gfn: u64, out: &mut [u8]) -> io::Result<()> {
            let at = gfn as usize * PAGE_SIZE;
            out.copy_from_slice(self.0.get(at..at + PAGE_SIZE).ok_or_else(|| io::Error::other("past the memory"))?);
            Ok(())
        }
        fn write_page(&mut self, gfn: u64, data: &[u8]) -> io::Result<()> {
            let at = gfn as usize * PAGE_SIZE;
            self.0.get_mut(at..at + PAGE_SIZE).ok_or_else(|| io::Error::other("past the memory"))?.copy_from_slice(data);
            Ok(())
        }
    }

    #[derive(Default)]
    struct Target {
        mem: Option<Mem>,
        config: String,
        vcpus: Vec<(u32, Vec<u8>)>,
        platform: Vec<u8>,
        devices: Vec<(u32, u32, Vec<u8>)>,
        refuse_memory_over: Option<u32>,
    }

    impl Loader for Target {
        fn begin(&mut self, h: &StreamHeader, config: &str, cpuid: &[CpuidEntry]) -> Result<(), String> {
            if self.refuse_memory_over.is_some_and(|m| h.memory_mib > m) {
                return Err(format!("{} MiB wanted, {} free", h.memory_mib, self.refuse_memory_over.unwrap()));
            }
            assert_eq!(cpuid.len(), 1);
            self.config = config.to_string();
            // Memory as a fresh build leaves it: not zero (a kernel in it).
            self.mem = Some(Mem(vec![0xee; h.pages() as usize * PAGE_SIZE]));
            Ok(())
        }
        fn memory(&mut self) -> &mut dyn GuestPages {
            self.mem.as_mut().unwrap()
        }
        fn vcpu(&mut self, index: u32, state: &[u8]) -> Result<(), String> {
            self.vcpus.push((index, state.to_vec()));
            Ok(())
        }
        fn platform(&mut self, state: &[u8]) -> Result<(), String> {
            self.platform = state.to_vec();
            Ok(())
        }
        fn device(&mut self, index: u32, kind: u32, state: &[u8]) -> Result<(), String> {
            self.devices.push((index, kind, state.to_vec()));
            Ok(())
        }
    }

    fn saved() -> (Vec<u8>, Mem, Summary) {
        // 8 MiB: two full batches; every third page zero.
        let pages = 2048;
        let mut mem = Mem(vec![0; pages * PAGE_SIZE]);
        for (i, p) in mem.0.chunks_exact_mut(PAGE_SIZE).enumerate().filter(|(i, _)| i % 3 != 0) {
            p.fill(i as u8 | 1);
        }
        let h = StreamHeader { flags: 0, abi_version: oxen_abi::ABI_VERSION, vendor: vendor::AMD, memory_mib: 8, vcpus: 2, tsc_hz: 1_000_000_000 };
        let vcpus = vec![b"vcpu0-state".to_vec(), b"vcpu1".to_vec()];
        let cpuid = [CpuidEntry { leaf: 1, subleaf: 0, regs: [1, 2, 3, 4] }];
        let devices = [
            SavedDevice { kind: 1, head: DeviceHead { base: 0xfeb0_0000, gsi: 16 }, state: b"disk" },
            SavedDevice { kind: 1, head: DeviceHead { base: 0xfeb0_1000, gsi: 17 }, state: b"vif" },
        ];
        let state = DomainState { config: "name = \"web\"\n", cpuid: &cpuid, vcpus: &vcpus, platform: b"OXPS...", devices: &devices };
        let mut out = Vec::new();
        let mut steps = Vec::new();
        let s = write_stream(&mut out, &h, &state, &mut mem, |d, t| steps.push((d, t))).unwrap();
        assert_eq!(steps, [(1024, 2048), (2048, 2048)]);
        (out, mem, s)
    }

    #[test]
    fn a_saved_domain_reads_back_whole() {
        let (bytes, mem, written) = saved();
        assert_eq!(written.pages, 2048);
        assert_eq!(written.zero_pages, 683);
        assert_eq!(written.bytes, bytes.len() as u64);
        let mut t = Target::default();
        let read = read_stream(&bytes[..], &mut t, |_, _| {}).unwrap();
        assert_eq!(read, written);
        assert_eq!(t.config, "name = \"web\"\n");
        assert!(t.mem.as_ref().unwrap().0 == mem.0, "memory differs");
        assert_eq!(t.vcpus, [(0, b"vcpu0-state".to_vec()), (1, b"vcpu1".to_vec())]);
        assert_eq!(t.platform, b"OXPS...");
        // Each device: its index and kind, then its place and the device model's bytes.
        let heads: Vec<(u32, u32, DeviceHead, Vec<u8>)> = t
            .devices
            .iter()
            .map(|(i, k, b)| {
                let (h, state) = DeviceHead::decode(b).unwrap();
                (*i, *k, h, state.to_vec())
            })
            .collect();
        assert_eq!(
            heads,
            [
                (0, 1, DeviceHead { base: 0xfeb0_0000, gsi: 16 }, b"disk".to_vec()),
                (1, 1, DeviceHead { base: 0xfeb0_1000, gsi: 17 }, b"vif".to_vec())
            ]
        );
    }

    #[test]
    fn a_loaded_tsc_goes_on_or_never_goes_back() {
        // Saved at guest TSC 1000 with offset 0 on a host whose TSC read 1000.
        // Migrated to a host whose TSC reads 300 (up for less time): on from 1000.
        assert_eq!(300u64.wrapping_add(tsc_offset_for(TscRule::GoOn, 1000, 0, 300)), 1000);
        // ... or 5000 (up longer): on from 1000 too, not from 5000.
        assert_eq!(5000u64.wrapping_add(tsc_offset_for(TscRule::GoOn, 1000, 0, 5000)), 1000);
        // Restored on the host that saved it, later: its offset, time passed.
        assert_eq!(tsc_offset_for(TscRule::NeverBack, 1000, 0, 1800), 0);
        assert_eq!(tsc_offset_for(TscRule::NeverBack, 1000, 200, 900), 200);
        // A file from a host up longer: not back, on from the saved value.
        assert_eq!(300u64.wrapping_add(tsc_offset_for(TscRule::NeverBack, 1000, 0, 300)), 1000);
        // A negative offset (the guest behind the host) survives.
        let behind = 0u64.wrapping_sub(100);
        assert_eq!(tsc_offset_for(TscRule::NeverBack, 900, behind, 1500), behind);
    }

    #[test]
    fn a_states_tsc_offset_is_replaced_and_nothing_else() {
        use oxen_abi::vcpu_snapshot::VcpuStateRecord;
        let xsave = [0u8; 512];
        let r = VcpuStateRecord { tsc: [123, 2_000_000_000, 0], xsave: &xsave, xcr0: 1, ..Default::default() };
        let mut bytes = vec![0u8; r.encoded_len()];
        let n = r.encode(&mut bytes).unwrap();
        bytes.truncate(n);
        assert_eq!(saved_tsc(&bytes), Ok((123, 0)));
        let out = with_tsc_offset(&bytes, 77).unwrap();
        let back = VcpuStateRecord::decode(&out).unwrap();
        assert_eq!(back.tsc, [123, 2_000_000_000, 77]);
        assert_eq!(VcpuStateRecord { tsc: r.tsc, ..back }, r);
        assert!(with_tsc_offset(b"garbage", 1).unwrap_err().starts_with("a vCPU state in the stream"));
    }

    #[test]
    fn truncated_corrupted_and_refused_streams_fail_with_a_reason() {
        let (bytes, _, _) = saved();
        for n in [0, 10, HEADER_LEN, HEADER_LEN + 5, bytes.len() / 2, bytes.len() - 1] {
            let e = read_stream(&bytes[..n], &mut Target::default(), |_, _| {}).unwrap_err();
            assert!(e.to_string().contains("truncated"), "{n} bytes: {e}");
        }
        for at in [HEADER_LEN + 20, bytes.len() / 3, bytes.len() - 30] {
            let mut b = bytes.clone();
            b[at] ^= 0x20;
            let e = read_stream(&b[..], &mut Target::default(), |_, _| {}).unwrap_err();
            assert!(matches!(e, ReadError::Stream(_)), "byte {at}: {e}");
        }
        let mut b = bytes.clone();
        b.extend_from_slice(&[0; 24]);
        let e = read_stream(&b[..], &mut Target::default(), |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("after the END"), "{e}");
        let mut t = Target { refuse_memory_over: Some(4), ..Default::default() };
        let e = read_stream(&bytes[..], &mut t, |_, _| {}).unwrap_err();
        assert_eq!(e.to_string(), "8 MiB wanted, 4 free");
        assert!(t.mem.is_none(), "nothing made after a refusal");
    }
}
