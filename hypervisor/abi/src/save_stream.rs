//! The save and migration stream (issue 12; docs/migration.md describes it in
//! prose): what `oxl save` writes to a file and `oxl migrate` sends to the
//! receiving host, read back by `oxl restore` and `oxl migrate-receive`. Pure
//! code: the stream's header and record framing, the page batches, the order
//! the records must come in, and the CPU-compatibility check. oxl does the
//! I/O.
//!
//! Layout, all little endian:
//! - stream header, 64 bytes: magic `OXENSAVE`, version `u32`, flags `u32`
//!   (bit 0: a live-migration stream), the saving hypervisor's ABI version
//!   `u32`, vendor `u32` (`vendor`), memory MiB `u32`, vCPUs `u32`, the
//!   guest's TSC rate in Hz `u64`, page size `u32` (4096), 16 bytes of zero,
//!   CRC-32 of the 60 bytes before it `u32`;
//! - records, each a 16-byte header — kind `u16`, reserved `u16` (0), CRC-32
//!   of the payload `u32`, payload length `u64` — then the payload, then zero
//!   bytes to the next multiple of 8.
//!
//! A reader refuses any malformation with a `StreamError` and never panics:
//! a truncated stream (ends inside a record, or without `END`), a corrupted
//! one (a CRC), records out of order or repeated, a page outside the guest's
//! memory, a vCPU it does not have.

use crate::envelope::crc32;

/// `OXENSAVE`.
pub const MAGIC: [u8; 8] = *b"OXENSAVE";
/// The version this code writes and the only one it reads.
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;
pub const RECORD_HEADER_LEN: usize = 16;
pub const PAGE_SIZE: usize = 4096;
/// Most pages in one `PAGES` record (4 MiB of data).
pub const MAX_BATCH: usize = 1024;
/// Largest payload of any record: a full page batch.
pub const MAX_RECORD_LEN: u64 = (8 + MAX_BATCH * (8 + PAGE_SIZE)) as u64;

/// Stream header flags.
pub mod flags {
    /// Sent by `oxl migrate` (pre-copy rounds; pages may come more than once).
    pub const LIVE: u32 = 1 << 0;
}

/// `StreamHeader::vendor`: whose virtualization the guest ran on.
pub mod vendor {
    pub const INTEL: u32 = 1;
    pub const AMD: u32 = 2;
}

/// Record kinds.
pub mod kind {
    /// The domain's config as `oxl create` read it (UTF-8 text, `name = …`
    /// first), so the restored domain has the same name and config.
    pub const CONFIG: u16 = 1;
    /// The CPUID leaves the guest was shown (`CpuidEntry`s, 24 bytes each):
    /// what it may rely on, checked against the receiving host.
    pub const CPUID: u16 = 2;
    /// A batch of guest pages (`Pages`).
    pub const PAGES: u16 = 3;
    /// One vCPU: index `u32`, 0 `u32`, then its `vcpu_snapshot` encoding.
    pub const VCPU: u16 = 4;
    /// The platform devices' `platform_state` encoding.
    pub const PLATFORM: u16 = 5;
    /// A device model's state: device index `u32` (< 64), device kind `u32`, then
    /// the model's own (versioned) bytes.
    pub const DEVICE: u16 = 6;
    /// Live migration: a pre-copy round ended (`Round`), for the receiver's
    /// progress lines.
    pub const ROUND: u16 = 7;
    /// The last record: how many records came before it and how many page
    /// entries they held (16 bytes).
    pub const END: u16 = 8;

    pub fn name(kind: u16) -> &'static str {
        match kind {
            CONFIG => "CONFIG",
            CPUID => "CPUID",
            PAGES => "PAGES",
            VCPU => "VCPU",
            PLATFORM => "PLATFORM",
            DEVICE => "DEVICE",
            ROUND => "ROUND",
            END => "END",
            _ => "unknown",
        }
    }
}

/// Why a stream was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamError {
    /// Ends before the header, inside a record, or without `END`.
    Truncated,
    BadMagic,
    Version(u32),
    /// The header's or a record's CRC does not match.
    Checksum,
    /// A reserved field or padding is not zero, or the header's values are
    /// not ones a saved domain has (no memory, no vCPU, another page size).
    Reserved,
    /// A record kind this version does not have.
    UnknownRecord(u16),
    /// A record longer than any this version writes, or of the wrong length.
    RecordLength(u16),
    /// A record where the order does not allow it (the reason).
    Order(&'static str),
    /// A page number past the guest's memory.
    Page(u64),
    /// A vCPU index the domain does not have.
    Vcpu(u32),
    /// `END`'s counts are not what came before it.
    Count,
    /// Bytes after `END`.
    Trailing,
}

impl core::fmt::Display for StreamError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Truncated => f.write_str("the stream is truncated (it ends before its END record)"),
            Self::BadMagic => f.write_str("not an Oxen save stream (bad magic)"),
            Self::Version(v) => write!(f, "stream version {v}; this oxl reads version {VERSION}"),
            Self::Checksum => f.write_str("a checksum does not match: the stream is corrupted"),
            Self::Reserved => f.write_str("a reserved field is not zero or the header is not a domain's"),
            Self::UnknownRecord(k) => write!(f, "unknown record kind {k}"),
            Self::RecordLength(k) => write!(f, "a {} record of a length it cannot have", kind::name(*k)),
            Self::Order(why) => write!(f, "records out of order: {why}"),
            Self::Page(gfn) => write!(f, "page {gfn:#x} is past the domain's memory"),
            Self::Vcpu(v) => write!(f, "vCPU {v}, which the domain does not have"),
            Self::Count => f.write_str("END's counts are not what came before it: records are missing"),
            Self::Trailing => f.write_str("bytes after the END record"),
        }
    }
}

/// The stream header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamHeader {
    pub flags: u32,
    pub abi_version: u32,
    pub vendor: u32,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub tsc_hz: u64,
}

impl StreamHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..20].copy_from_slice(&self.abi_version.to_le_bytes());
        b[20..24].copy_from_slice(&self.vendor.to_le_bytes());
        b[24..28].copy_from_slice(&self.memory_mib.to_le_bytes());
        b[28..32].copy_from_slice(&self.vcpus.to_le_bytes());
        b[32..40].copy_from_slice(&self.tsc_hz.to_le_bytes());
        b[40..44].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
        let crc = crc32(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, StreamError> {
        let b = b.get(..HEADER_LEN).ok_or(StreamError::Truncated)?;
        if b[0..8] != MAGIC {
            return Err(StreamError::BadMagic);
        }
        let version = le32(&b[8..]);
        if version != VERSION {
            return Err(StreamError::Version(version));
        }
        if crc32(&b[..60]) != le32(&b[60..]) {
            return Err(StreamError::Checksum);
        }
        let h = Self {
            flags: le32(&b[12..]),
            abi_version: le32(&b[16..]),
            vendor: le32(&b[20..]),
            memory_mib: le32(&b[24..]),
            vcpus: le32(&b[28..]),
            tsc_hz: le64(&b[32..]),
        };
        let known_vendor = matches!(h.vendor, vendor::INTEL | vendor::AMD);
        if h.flags & !flags::LIVE != 0
            || !known_vendor
            || h.memory_mib == 0
            || h.vcpus == 0
            || h.vcpus > crate::MAX_VCPUS
            || le32(&b[40..]) as usize != PAGE_SIZE
            || b[44..60].iter().any(|&x| x != 0)
        {
            return Err(StreamError::Reserved);
        }
        Ok(h)
    }

    /// Guest pages in the domain's memory.
    pub fn pages(&self) -> u64 {
        u64::from(self.memory_mib) * (1 << 20) / PAGE_SIZE as u64
    }
}

/// A record's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: u16,
    pub crc: u32,
    pub len: u64,
}

impl RecordHeader {
    /// The header for `payload`.
    pub fn of(kind: u16, payload: &[u8]) -> Self {
        Self { kind, crc: crc32(payload), len: payload.len() as u64 }
    }

    pub fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut b = [0u8; RECORD_HEADER_LEN];
        b[0..2].copy_from_slice(&self.kind.to_le_bytes());
        b[4..8].copy_from_slice(&self.crc.to_le_bytes());
        b[8..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// A header as read; its length is bounded, so a reader can allocate it.
    pub fn decode(b: &[u8; RECORD_HEADER_LEN]) -> Result<Self, StreamError> {
        let kind = u16::from_le_bytes([b[0], b[1]]);
        if b[2..4] != [0, 0] {
            return Err(StreamError::Reserved);
        }
        if !(kind::CONFIG..=kind::END).contains(&kind) {
            return Err(StreamError::UnknownRecord(kind));
        }
        let len = le64(&b[8..]);
        if len > MAX_RECORD_LEN {
            return Err(StreamError::RecordLength(kind));
        }
        Ok(Self { kind, crc: le32(&b[4..]), len })
    }

    /// Zero bytes after the payload, to the next multiple of 8.
    pub fn padding(&self) -> usize {
        ((8 - self.len % 8) % 8) as usize
    }

    /// Whether `payload` is the one this header was written for.
    pub fn check(&self, payload: &[u8]) -> Result<(), StreamError> {
        if payload.len() as u64 != self.len {
            return Err(StreamError::Truncated);
        }
        if crc32(payload) != self.crc {
            return Err(StreamError::Checksum);
        }
        Ok(())
    }
}

/// One CPUID leaf as the guest saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidEntry {
    pub leaf: u32,
    pub subleaf: u32,
    pub regs: [u32; 4],
}

pub const CPUID_ENTRY_LEN: usize = 24;

impl CpuidEntry {
    pub fn encode(&self) -> [u8; CPUID_ENTRY_LEN] {
        let mut b = [0u8; CPUID_ENTRY_LEN];
        b[0..4].copy_from_slice(&self.leaf.to_le_bytes());
        b[4..8].copy_from_slice(&self.subleaf.to_le_bytes());
        for (i, r) in self.regs.iter().enumerate() {
            b[8 + 4 * i..12 + 4 * i].copy_from_slice(&r.to_le_bytes());
        }
        b
    }

    /// The entries of a `CPUID` payload.
    pub fn decode_all(payload: &[u8]) -> Result<impl Iterator<Item = CpuidEntry> + '_, StreamError> {
        if payload.is_empty() || !payload.len().is_multiple_of(CPUID_ENTRY_LEN) {
            return Err(StreamError::RecordLength(kind::CPUID));
        }
        Ok(payload.chunks_exact(CPUID_ENTRY_LEN).map(|b| CpuidEntry {
            leaf: le32(b),
            subleaf: le32(&b[4..]),
            regs: [le32(&b[8..]), le32(&b[12..]), le32(&b[16..]), le32(&b[20..])],
        }))
    }
}

/// The leaves and registers whose set bits are features a guest may rely on
/// once it saw them: leaf, subleaf, register index (EAX 0 … EDX 3), name.
/// (Leaf 0xD subleaf 0 EAX is the XSAVE components; the rest are feature
/// flags. Values that are not flags — family, sizes, APIC IDs — are not
/// compared: a guest reads them at boot and they may differ.)
pub const FEATURE_REGS: [(u32, u32, usize, &str); 11] = [
    (1, 0, 2, "1.ECX"),
    (1, 0, 3, "1.EDX"),
    (7, 0, 1, "7.0.EBX"),
    (7, 0, 2, "7.0.ECX"),
    (7, 0, 3, "7.0.EDX"),
    (7, 1, 0, "7.1.EAX"),
    (0xd, 0, 0, "0xD.0.EAX (XSAVE components)"),
    (0xd, 1, 0, "0xD.1.EAX"),
    (0x8000_0001, 0, 2, "0x80000001.ECX"),
    (0x8000_0001, 0, 3, "0x80000001.EDX"),
    (0x8000_0008, 0, 1, "0x80000008.EBX"),
];

/// Feature bits the guest saw that `host` (what this host shows such a
/// guest, by leaf and subleaf) lacks: (register name, the missing bits).
/// Empty: the guest can run here.
pub fn missing_features<'a>(
    saved: impl IntoIterator<Item = CpuidEntry> + Clone + 'a,
    host: impl Fn(u32, u32) -> [u32; 4] + 'a,
) -> impl Iterator<Item = (&'static str, u32)> + 'a {
    FEATURE_REGS.iter().filter_map(move |&(leaf, subleaf, reg, name)| {
        let seen = saved.clone().into_iter().find(|e| e.leaf == leaf && e.subleaf == subleaf)?.regs[reg];
        let missing = seen & !host(leaf, subleaf)[reg];
        (missing != 0).then_some((name, missing))
    })
}

/// A `PAGES` payload: count `u32`, 0 `u32`, `count` entries (`u64`: the page
/// number, bit 63 set for a page of zeros, which has no data), then the data
/// of each other page in entry order.
pub mod pages {
    pub const ZERO: u64 = 1 << 63;
}

/// A checked `PAGES` payload.
pub struct Pages<'a> {
    entries: &'a [u8],
    data: &'a [u8],
}

impl<'a> Pages<'a> {
    /// Checks the payload against a memory of `guest_pages` pages.
    pub fn parse(payload: &'a [u8], guest_pages: u64) -> Result<Self, StreamError> {
        let err = StreamError::RecordLength(kind::PAGES);
        let head = payload.get(..8).ok_or(err.clone())?;
        let count = le32(head) as usize;
        if count == 0 || count > MAX_BATCH || head[4..8] != [0; 4] {
            return Err(err);
        }
        let entries = payload.get(8..8 + 8 * count).ok_or(err.clone())?;
        let mut with_data = 0usize;
        for e in entries.chunks_exact(8).map(le64) {
            let gfn = e & !pages::ZERO;
            if gfn >= guest_pages || gfn >> 52 != 0 {
                return Err(StreamError::Page(gfn));
            }
            with_data += usize::from(e & pages::ZERO == 0);
        }
        let data = &payload[8 + 8 * count..];
        if data.len() != with_data * PAGE_SIZE {
            return Err(err);
        }
        Ok(Self { entries, data })
    }

    /// Entries in this batch.
    pub fn len(&self) -> usize {
        self.entries.len() / 8
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Each page: its number and its data (`None`: all zero).
    pub fn iter(&self) -> impl Iterator<Item = (u64, Option<&'a [u8]>)> + '_ {
        let mut at = 0;
        self.entries.chunks_exact(8).map(le64).map(move |e| {
            if e & pages::ZERO != 0 {
                (e & !pages::ZERO, None)
            } else {
                let page = &self.data[at..at + PAGE_SIZE];
                at += PAGE_SIZE;
                (e, Some(page))
            }
        })
    }
}

/// Writes a `PAGES` payload for `pages` ((page number, its data) each, at
/// most `MAX_BATCH`) into `out`, which must hold `pages_payload_max(n)`
/// bytes; its length (zero pages carry no data).
pub fn pages_payload(pages: &[(u64, &[u8])], out: &mut [u8]) -> Option<usize> {
    let n = pages.len();
    if n == 0 || n > MAX_BATCH || out.len() < pages_payload_max(n) {
        return None;
    }
    out[..4].copy_from_slice(&(n as u32).to_le_bytes());
    out[4..8].fill(0);
    let mut at = 8 + 8 * n;
    for (i, (gfn, page)) in pages.iter().enumerate() {
        let zero = is_zero(page);
        let entry = if zero { gfn | pages::ZERO } else { *gfn };
        out[8 + 8 * i..16 + 8 * i].copy_from_slice(&entry.to_le_bytes());
        if !zero {
            out[at..at + PAGE_SIZE].copy_from_slice(page.get(..PAGE_SIZE)?);
            at += PAGE_SIZE;
        }
    }
    Some(at)
}

/// How many of the `n` pages of a `PAGES` payload `len` bytes long are zero
/// (carry no data).
pub const fn pages_payload_zeros(n: usize, len: usize) -> usize {
    n - (len - 8 - 8 * n) / PAGE_SIZE
}

/// Whether every byte of `data` is zero: 64-byte blocks, each folded with OR
/// (which the compiler turns into vector code) and the scan left at the first
/// block that is not. A byte at a time, `all(|&b| b == 0)`, cost about 12,000
/// instructions a zero page, a visible part of a save under Bochs.
pub fn is_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(64);
    blocks.all(|b| b.iter().fold(0u8, |a, &x| a | x) == 0) && blocks.remainder().iter().all(|&b| b == 0)
}

/// The longest `PAGES` payload of `n` pages (none of them zero).
pub const fn pages_payload_max(n: usize) -> usize {
    8 + n * (8 + PAGE_SIZE)
}

/// A `ROUND` payload: round `u32`, 0 `u32`, pages sent in it `u64`, pages
/// the guest dirtied meanwhile `u64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Round {
    pub round: u32,
    pub sent: u64,
    pub dirtied: u64,
}

impl Round {
    pub fn encode(&self) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0..4].copy_from_slice(&self.round.to_le_bytes());
        b[8..16].copy_from_slice(&self.sent.to_le_bytes());
        b[16..24].copy_from_slice(&self.dirtied.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, StreamError> {
        if b.len() != 24 || b[4..8] != [0; 4] {
            return Err(StreamError::RecordLength(kind::ROUND));
        }
        Ok(Self { round: le32(b), sent: le64(&b[8..]), dirtied: le64(&b[16..]) })
    }
}

/// A `DEVICE` record's head, before the device model's own state: the
/// device's place in the domain, which the restoring host's placement must
/// repeat (the guest found the device there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceHead {
    /// Where the device's window starts (guest-physical).
    pub base: u64,
    /// Its interrupt line.
    pub gsi: u32,
}

/// Bytes of a `DeviceHead` (base `u64`, GSI `u32`, 0 `u32`).
pub const DEVICE_HEAD_LEN: usize = 16;

impl DeviceHead {
    pub fn encode(&self) -> [u8; DEVICE_HEAD_LEN] {
        let mut b = [0u8; DEVICE_HEAD_LEN];
        b[0..8].copy_from_slice(&self.base.to_le_bytes());
        b[8..12].copy_from_slice(&self.gsi.to_le_bytes());
        b
    }

    /// The head at the start of `b` (what follows a `DEVICE` record's index
    /// and kind) and the device model's state after it.
    pub fn decode(b: &[u8]) -> Result<(Self, &[u8]), StreamError> {
        let head = b.get(..DEVICE_HEAD_LEN).ok_or(StreamError::RecordLength(kind::DEVICE))?;
        if head[12..] != [0; 4] {
            return Err(StreamError::Reserved);
        }
        Ok((Self { base: le64(head), gsi: le32(&head[8..]) }, &b[DEVICE_HEAD_LEN..]))
    }
}

/// `OXDS`: a device model's states for one domain, as `oxen-dm` writes them
/// when `oxl save` freezes it and reads them when a restore starts it.
pub const DEVICE_SET_MAGIC: [u8; 4] = *b"OXDS";
/// The most devices in a set (a `DEVICE` record's index is below 64).
pub const DEVICE_SET_MAX: usize = 64;

/// A set: magic `OXDS`, count `u32`, then for each device, in the device
/// model's order (disks, then vifs), its length `u32` and its state. oxl
/// carries each state as it is, one `DEVICE` record each. `out` gets the
/// set's bytes piece by piece.
pub fn device_set_join<'s>(states: impl ExactSizeIterator<Item = &'s [u8]>, mut out: impl FnMut(&[u8])) {
    out(&DEVICE_SET_MAGIC);
    out(&(states.len() as u32).to_le_bytes());
    for s in states {
        out(&(s.len() as u32).to_le_bytes());
        out(s);
    }
}

/// A set's states, checked whole by `parse`: `BadMagic` without `OXDS`,
/// `Truncated` for one that ends early, `Trailing` for bytes after its last
/// state, `RecordLength` for more than `DEVICE_SET_MAX` states.
#[derive(Clone, Copy, Debug)]
pub struct DeviceSet<'a> {
    bytes: &'a [u8],
    count: usize,
}

impl<'a> DeviceSet<'a> {
    pub fn parse(b: &'a [u8]) -> Result<Self, StreamError> {
        let head = b.get(..8).ok_or(StreamError::Truncated)?;
        if head[..4] != DEVICE_SET_MAGIC {
            return Err(StreamError::BadMagic);
        }
        let count = le32(&head[4..]) as usize;
        if count > DEVICE_SET_MAX {
            return Err(StreamError::RecordLength(kind::DEVICE));
        }
        let mut at = 8usize;
        for _ in 0..count {
            let len = b.get(at..at + 4).map(|l| le32(l) as usize).ok_or(StreamError::Truncated)?;
            at = at.checked_add(4 + len).filter(|&end| end <= b.len()).ok_or(StreamError::Truncated)?;
        }
        if at != b.len() {
            return Err(StreamError::Trailing);
        }
        Ok(Self { bytes: b, count })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Each device's state, in order.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let bytes = self.bytes;
        let mut at = 8;
        (0..self.count).map(move |_| {
            let len = le32(&bytes[at..]) as usize;
            let one = &bytes[at + 4..at + 4 + len];
            at += 4 + len;
            one
        })
    }
}

/// `END`'s payload: records before it, page entries in them.
pub fn end_payload(records: u64, pages: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&records.to_le_bytes());
    b[8..].copy_from_slice(&pages.to_le_bytes());
    b
}

/// The order records must come in, checked as a reader takes them:
/// `CONFIG`, then `CPUID`, then `PAGES` (and, in a live stream, `ROUND`s
/// between rounds), then each vCPU's `VCPU` once, `PLATFORM` once and any
/// `DEVICE`s, in any order, then `END`, whose counts must match.
#[derive(Clone, Debug)]
pub struct Order {
    header: StreamHeader,
    phase: Phase,
    vcpus_seen: u64,
    platform: bool,
    /// Bit n: device n's state came.
    devices: u64,
    records: u64,
    pages: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Config,
    Cpuid,
    Memory,
    State,
    Ended,
}

impl Order {
    pub fn new(header: StreamHeader) -> Self {
        Self {
            header,
            phase: Phase::Config,
            vcpus_seen: 0,
            platform: false,
            devices: 0,
            records: 0,
            pages: 0,
        }
    }

    /// Takes the next record (its payload already checked against its CRC).
    /// For `PAGES` the parsed batch, for `VCPU` the index and its state's
    /// bytes: what the caller loads.
    pub fn take<'a>(&mut self, kind: u16, payload: &'a [u8]) -> Result<Record<'a>, StreamError> {
        use StreamError::Order as O;
        let rec = match (self.phase, kind) {
            (Phase::Ended, _) => return Err(StreamError::Trailing),
            (Phase::Config, kind::CONFIG) => {
                self.phase = Phase::Cpuid;
                Record::Config(core::str::from_utf8(payload).map_err(|_| StreamError::RecordLength(kind))?)
            }
            (Phase::Config, _) => return Err(O("the stream must start with CONFIG")),
            (Phase::Cpuid, kind::CPUID) => {
                let _ = CpuidEntry::decode_all(payload)?.count();
                self.phase = Phase::Memory;
                Record::Cpuid(payload)
            }
            (Phase::Cpuid, _) => return Err(O("CPUID must follow CONFIG")),
            (_, kind::CONFIG | kind::CPUID) => return Err(O("CONFIG or CPUID twice")),
            (Phase::Memory, kind::PAGES) => {
                let p = Pages::parse(payload, self.header.pages())?;
                self.pages += p.len() as u64;
                Record::Pages(p)
            }
            (Phase::Memory, kind::ROUND) if self.header.flags & flags::LIVE != 0 => Record::Round(Round::decode(payload)?),
            (Phase::Memory, kind::ROUND) => return Err(O("ROUND in a stream that is not live")),
            (Phase::State, kind::PAGES | kind::ROUND) => return Err(O("memory after the vCPU or device state")),
            (Phase::Memory | Phase::State, kind::VCPU) => {
                let idx = payload.get(..8).ok_or(StreamError::RecordLength(kind))?;
                let (vcpu, zero) = (le32(idx), le32(&idx[4..]));
                if zero != 0 {
                    return Err(StreamError::Reserved);
                }
                if vcpu >= self.header.vcpus {
                    return Err(StreamError::Vcpu(vcpu));
                }
                if self.vcpus_seen & (1 << vcpu) != 0 {
                    return Err(O("a vCPU's state twice"));
                }
                self.vcpus_seen |= 1 << vcpu;
                self.phase = Phase::State;
                Record::Vcpu(vcpu, &payload[8..])
            }
            (Phase::Memory | Phase::State, kind::PLATFORM) => {
                if self.platform {
                    return Err(O("the platform's state twice"));
                }
                self.platform = true;
                self.phase = Phase::State;
                Record::Platform(payload)
            }
            (Phase::Memory | Phase::State, kind::DEVICE) => {
                let head = payload.get(..8).ok_or(StreamError::RecordLength(kind))?;
                let (index, device_kind) = (le32(head), le32(&head[4..]));
                if index >= 64 {
                    return Err(StreamError::RecordLength(kind));
                }
                if self.devices & (1 << index) != 0 {
                    return Err(O("a device's state twice"));
                }
                self.devices |= 1 << index;
                self.phase = Phase::State;
                Record::Device(index, device_kind, &payload[8..])
            }
            (Phase::Memory | Phase::State, kind::END) => {
                if payload.len() != 16 {
                    return Err(StreamError::RecordLength(kind));
                }
                let all = if self.header.vcpus == 64 { u64::MAX } else { (1u64 << self.header.vcpus) - 1 };
                if self.vcpus_seen != all || !self.platform {
                    return Err(O("END before every vCPU's and the platform's state"));
                }
                if le64(payload) != self.records || le64(&payload[8..]) != self.pages {
                    return Err(StreamError::Count);
                }
                self.phase = Phase::Ended;
                Record::End
            }
            (_, k) => return Err(StreamError::UnknownRecord(k)),
        };
        self.records += 1;
        Ok(rec)
    }

    /// Whether `END` came: a stream that stops before it is truncated.
    pub fn ended(&self) -> bool {
        self.phase == Phase::Ended
    }
}

/// A record as `Order::take` hands it over.
pub enum Record<'a> {
    Config(&'a str),
    Cpuid(&'a [u8]),
    Pages(Pages<'a>),
    Round(Round),
    Vcpu(u32, &'a [u8]),
    Platform(&'a [u8]),
    Device(u32, u32, &'a [u8]),
    End,
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le64(b: &[u8]) -> u64 {
    crate::envelope::le64(b)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn set(states: &[&[u8]]) -> Vec<u8> {
        let mut b = Vec::new();
        device_set_join(states.iter().copied(), |p| b.extend_from_slice(p));
        b
    }

    #[test]
    fn a_device_set_reads_back_and_refuses_what_is_not_one() {
        let b = set(&[b"disk state", b"", b"vif"]);
        let s = DeviceSet::parse(&b).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.iter().collect::<Vec<_>>(), [&b"disk state"[..], b"", b"vif"]);
        assert!(DeviceSet::parse(&set(&[])).unwrap().is_empty());
        for cut in 0..b.len() {
            assert_eq!(DeviceSet::parse(&b[..cut]).err(), Some(StreamError::Truncated), "cut at {cut}");
        }
        let mut more = b.clone();
        more.push(0);
        assert_eq!(DeviceSet::parse(&more).err(), Some(StreamError::Trailing));
        let mut magic = b.clone();
        magic[3] = b'X';
        assert_eq!(DeviceSet::parse(&magic).err(), Some(StreamError::BadMagic));
        let mut many = set(&[]);
        many[4..8].copy_from_slice(&65u32.to_le_bytes());
        assert_eq!(DeviceSet::parse(&many).err(), Some(StreamError::RecordLength(kind::DEVICE)));
        let mut huge = b.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(DeviceSet::parse(&huge).err(), Some(StreamError::Truncated));
    }

    #[test]
    fn a_device_head_reads_back_and_its_reserved_bytes_are_zero() {
        let h = DeviceHead { base: 0xfeb0_1000, gsi: 17 };
        let mut b = h.encode().to_vec();
        b.extend_from_slice(b"state");
        assert_eq!(DeviceHead::decode(&b), Ok((h, &b"state"[..])));
        assert_eq!(DeviceHead::decode(&b[..15]), Err(StreamError::RecordLength(kind::DEVICE)));
        b[13] = 1;
        assert_eq!(DeviceHead::decode(&b), Err(StreamError::Reserved));
    }

    #[test]
    fn is_zero_looks_at_every_byte() {
        let mut page = vec![0u8; PAGE_SIZE];
        assert!(is_zero(&page));
        for at in [0, 1, 63, 64, 2047, PAGE_SIZE - 1] {
            page[at] = 0x80;
            assert!(!is_zero(&page), "byte {at}");
            assert!(!is_zero(&page[..at + 1]), "a {}-byte tail", at + 1);
            page[at] = 0;
        }
        assert!(is_zero(&[]) && is_zero(&[0; 65]) && !is_zero(&[0, 0, 1]));
    }

    #[test]
    fn zeros_are_counted_from_the_payload_length() {
        let (z, d) = (vec![0u8; PAGE_SIZE], vec![7u8; PAGE_SIZE]);
        for pages in [vec![(1, &z[..])], vec![(1, &d[..])], vec![(1, &z[..]), (2, &d[..]), (3, &z[..])]] {
            let len = batch(&pages).len();
            assert_eq!(pages_payload_zeros(pages.len(), len), pages.iter().filter(|p| p.1[0] == 0).count());
        }
    }

    fn batch(pages: &[(u64, &[u8])]) -> Vec<u8> {
        let mut out = vec![0u8; pages_payload_max(pages.len())];
        let n = pages_payload(pages, &mut out).unwrap();
        out.truncate(n);
        out
    }

    fn header(vcpus: u32, live: bool) -> StreamHeader {
        StreamHeader {
            flags: if live { flags::LIVE } else { 0 },
            abi_version: crate::ABI_VERSION,
            vendor: vendor::AMD,
            memory_mib: 4,
            vcpus,
            tsc_hz: 2_600_000_000,
        }
    }

    /// A whole stream: header, then framed records.
    fn stream(h: &StreamHeader, records: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut out = h.encode().to_vec();
        for (k, p) in records {
            out.extend_from_slice(&RecordHeader::of(*k, p).encode());
            out.extend_from_slice(p);
            out.resize(out.len() + RecordHeader::of(*k, p).padding(), 0);
        }
        out
    }

    /// Reads a stream as oxl does: header, records, END last, nothing after.
    fn read(bytes: &[u8]) -> Result<(StreamHeader, usize), StreamError> {
        let h = StreamHeader::decode(bytes)?;
        let mut order = Order::new(h);
        let mut at = HEADER_LEN;
        let mut loaded = 0;
        while at < bytes.len() {
            if order.ended() {
                return Err(StreamError::Trailing);
            }
            let rh: &[u8; RECORD_HEADER_LEN] =
                bytes.get(at..at + RECORD_HEADER_LEN).ok_or(StreamError::Truncated)?.try_into().unwrap();
            let rh = RecordHeader::decode(rh)?;
            at += RECORD_HEADER_LEN;
            let end = at.checked_add(rh.len as usize).ok_or(StreamError::Truncated)?;
            let payload = bytes.get(at..end).ok_or(StreamError::Truncated)?;
            rh.check(payload)?;
            let pad = bytes.get(end..end + rh.padding()).ok_or(StreamError::Truncated)?;
            if pad.iter().any(|&b| b != 0) {
                return Err(StreamError::Reserved);
            }
            at = end + rh.padding();
            if let Record::Pages(p) = order.take(rh.kind, payload)? {
                loaded += p.iter().count();
            }
        }
        if !order.ended() {
            return Err(StreamError::Truncated);
        }
        Ok((h, loaded))
    }

    fn vcpu(i: u32) -> Vec<u8> {
        let mut p = vec![0u8; 8];
        p[..4].copy_from_slice(&i.to_le_bytes());
        p.extend_from_slice(b"OXVS-state");
        p
    }

    fn cpuid() -> Vec<u8> {
        [CpuidEntry { leaf: 1, subleaf: 0, regs: [0x800f12, 0, 0x8000_0001, 0x0783_fbff] }]
            .iter()
            .flat_map(|e| e.encode())
            .collect()
    }

    fn good(live: bool) -> (StreamHeader, Vec<(u16, Vec<u8>)>) {
        let page = [0xabu8; PAGE_SIZE];
        let zero = [0u8; PAGE_SIZE];
        let first = batch(&[(0u64, &page[..]), (5, &zero[..]), (1023, &page[..])]);
        let mut recs = vec![(kind::CONFIG, b"name = \"web\"\nmemory = 4\n".to_vec()), (kind::CPUID, cpuid()), (kind::PAGES, first)];
        if live {
            recs.push((kind::ROUND, Round { round: 1, sent: 3, dirtied: 1 }.encode().to_vec()));
            recs.push((kind::PAGES, batch(&[(0u64, &page[..])])));
        }
        recs.extend([(kind::VCPU, vcpu(1)), (kind::PLATFORM, b"OXPS".to_vec()), (kind::VCPU, vcpu(0)), (kind::DEVICE, vec![0; 12])]);
        let pages = if live { 4 } else { 3 };
        recs.push((kind::END, end_payload(recs.len() as u64, pages).to_vec()));
        (header(2, live), recs)
    }

    #[test]
    fn a_whole_stream_reads_back() {
        for live in [false, true] {
            let (h, recs) = good(live);
            let bytes = stream(&h, &recs);
            assert_eq!(read(&bytes), Ok((h, if live { 4 } else { 3 })));
        }
        let b = batch(&[(7u64, &[1u8; PAGE_SIZE][..]), (8, &[0u8; PAGE_SIZE][..])]);
        let p = Pages::parse(&b, 16).unwrap();
        let got: Vec<_> = p.iter().map(|(g, d)| (g, d.map(|d| d[0]))).collect();
        assert_eq!(got, [(7, Some(1)), (8, None)]);
        assert_eq!(b.len(), 8 + 16 + PAGE_SIZE, "a zero page carries no data");
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let (h, recs) = good(true);
        let bytes = stream(&h, &recs);
        for n in 0..bytes.len() {
            assert!(read(&bytes[..n]).is_err(), "{n} of {} bytes accepted", bytes.len());
        }
        // Every byte of the headers and small records, and a sample of the pages.
        for i in (0..bytes.len()).filter(|i| *i < 400 || i % 97 == 0) {
            let mut b = bytes.clone();
            b[i] ^= 0x04;
            assert!(read(&b).is_err(), "byte {i} flipped and accepted");
        }
        let mut b = bytes.clone();
        b.extend_from_slice(&[0; 16]);
        assert!(read(&b).is_err(), "bytes after END");
    }

    #[test]
    fn order_and_contents_are_checked() {
        let (h, recs) = good(false);
        let without = |k: u16| recs.iter().filter(|(kk, _)| *kk != k).cloned().collect::<Vec<_>>();
        let fix_end = |mut r: Vec<(u16, Vec<u8>)>| {
            let n = r.len() as u64 - 1;
            let pages: u64 = r.iter().filter(|(k, _)| *k == kind::PAGES).map(|(_, p)| le32(p) as u64).sum();
            r.last_mut().unwrap().1 = end_payload(n, pages).to_vec();
            r
        };
        for (what, r, want) in [
            ("no CONFIG", without(kind::CONFIG), "must start with CONFIG"),
            ("no CPUID", fix_end(without(kind::CPUID)), "CPUID must follow"),
            ("no platform", fix_end(without(kind::PLATFORM)), "END before"),
        ] {
            assert!(matches!(read(&stream(&h, &r)), Err(StreamError::Order(w)) if w.contains(want)), "{what}");
        }
        let mut r = recs.clone();
        r.insert(4, (kind::VCPU, vcpu(1)));
        assert!(matches!(read(&stream(&h, &fix_end(r))), Err(StreamError::Order(_))), "a vCPU twice");
        let mut r = recs.clone();
        r[3] = (kind::VCPU, vcpu(2));
        assert_eq!(read(&stream(&h, &r)), Err(StreamError::Vcpu(2)));
        let mut r = recs.clone();
        r.insert(5, (kind::PAGES, batch(&[(1u64, &[1u8; PAGE_SIZE][..])])));
        assert!(matches!(read(&stream(&h, &fix_end(r))), Err(StreamError::Order(_))), "pages after state");
        let mut r = recs.clone();
        r[2] = (kind::PAGES, batch(&[(1024u64, &[1u8; PAGE_SIZE][..])]));
        assert_eq!(read(&stream(&h, &r)), Err(StreamError::Page(1024)), "page past 4 MiB");
        let mut r = recs.clone();
        r.insert(3, (kind::ROUND, Round { round: 1, sent: 1, dirtied: 0 }.encode().to_vec()));
        assert!(matches!(read(&stream(&h, &fix_end(r))), Err(StreamError::Order(_))), "ROUND, not live");
        let mut r = recs.clone();
        r.last_mut().unwrap().1 = end_payload(9, 3).to_vec();
        assert_eq!(read(&stream(&h, &r)), Err(StreamError::Count));
        // A header that is no domain's.
        for bad in [StreamHeader { vcpus: 0, ..h }, StreamHeader { memory_mib: 0, ..h }, StreamHeader { vendor: 3, ..h }] {
            assert_eq!(StreamHeader::decode(&bad.encode()), Err(StreamError::Reserved));
        }
        let mut b = h.encode();
        b[8] = 2;
        assert_eq!(StreamHeader::decode(&b), Err(StreamError::Version(2)));
    }

    #[test]
    fn cpuid_get_answers_every_feature_leaf() {
        for (leaf, subleaf, _, name) in FEATURE_REGS {
            assert!(crate::CPUID_GET_LEAVES.contains(&(leaf, subleaf)), "{name} is not in CPUID_GET's answer");
        }
    }

    #[test]
    fn missing_features_names_what_the_host_lacks() {
        let saved = [
            CpuidEntry { leaf: 1, subleaf: 0, regs: [0, 0, 0x0000_0201, 0x10] },
            CpuidEntry { leaf: 0xd, subleaf: 0, regs: [0xe7, 0, 0, 0] },
        ];
        let same = |l: u32, s: u32| saved.iter().find(|e| e.leaf == l && e.subleaf == s).map_or([0; 4], |e| e.regs);
        assert_eq!(missing_features(saved, same).count(), 0);
        // A host without AVX-512's components and without ECX bit 9.
        let less = |l: u32, s: u32| match (l, s) {
            (1, 0) => [0, 0, 0x0000_0001, 0x10],
            (0xd, 0) => [0x07, 0, 0, 0],
            _ => [0; 4],
        };
        let got: Vec<_> = missing_features(saved, less).collect();
        assert_eq!(got, [("1.ECX", 0x200), ("0xD.0.EAX (XSAVE components)", 0xe0)]);
    }
}
