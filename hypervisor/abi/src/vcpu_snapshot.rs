//! The byte encoding of one vCPU's complete state (`domctl::VCPU_STATE_GET` /
//! `VCPU_STATE_SET`; issue 12's save stream carries it as it is). Pure code,
//! shared by the hypervisor (which fills and loads it) and oxl (which stores,
//! prints and patches it); docs/hypercalls.md describes it in prose.
//!
//! Layout, all little endian:
//! - header (16 bytes): magic `OXVS`, version `u16`, flags `u16` (0), total
//!   length `u32` (header included), CRC-32 (IEEE) `u32` of every byte after
//!   the header;
//! - records, each `kind u16`, reserved `u16` (0), payload length `u32`, then
//!   the payload. Every kind of this version appears exactly once, in any
//!   order; an unknown kind, a repeated or missing one, a length that is not
//!   the kind's, bytes after the last record, a wrong CRC or version are all
//!   refused (`DecodeError`), never a panic.
//!
//! Most records are arrays of `u64` words whose names `WORD_RECORDS` lists in
//! order (oxl prints and patches them by name); `XSTATE` is `xcr0 u64`, then
//! the XSAVE area (standard, non-compacted form) in the remaining bytes.

/// `OXVS`.
pub const MAGIC: [u8; 4] = *b"OXVS";
/// The version this code writes and the only one it reads.
pub const VERSION: u16 = 1;
pub use crate::envelope::{crc32, DecodeError, HEADER_LEN, RECORD_HEADER_LEN};
use crate::envelope::{le64, Seen, Writer};
/// Largest XSAVE area accepted (the architectural maximum today is below 12 KiB).
pub const XSAVE_MAX: usize = 16 * 1024;

/// Record kinds.
pub mod kind {
    /// `ARCH` words: registers, segments, control registers, the syscall MSRs.
    pub const ARCH: u16 = 1;
    /// `EVENTS` words: the event pending injection and the interrupt shadow.
    pub const EVENTS: u16 = 2;
    /// `DEBUG` words: DR0-DR3, DR6 (DR7 is in `ARCH`).
    pub const DEBUG: u16 = 3;
    /// `MSRS` words: the other MSRs a guest owns.
    pub const MSRS: u16 = 4;
    /// The x87/SSE/AVX… state: XCR0, then the XSAVE area.
    pub const XSTATE: u16 = 5;
    /// `LAPIC` words: the local APIC, its timer relative to the guest's TSC.
    pub const LAPIC: u16 = 6;
    /// `KVMCLOCK` words: the KVM-compatible clock's two registration MSRs.
    pub const KVMCLOCK: u16 = 7;
    /// `TSC` words: the guest's TSC when the state was taken, and its rate.
    pub const TSC: u16 = 8;
    /// `POWER` words: running or waiting for START-UP, halted.
    pub const POWER: u16 = 9;
}

/// Segment words: selector, base, limit, access rights (VMX layout: SDM Vol.
/// 3C §25.4.1 — type 3:0, S 4, DPL 6:5, P 7, AVL 12, L 13, D/B 14, G 15,
/// unusable 16).
macro_rules! seg {
    ($s:literal) => {
        [concat!($s, ".sel"), concat!($s, ".base"), concat!($s, ".limit"), concat!($s, ".ar")]
    };
}

pub(crate) const fn join<const N: usize>(parts: &[&[&'static str]]) -> [&'static str; N] {
    let mut out = [""; N];
    let mut n = 0;
    let mut i = 0;
    while i < parts.len() {
        let mut j = 0;
        while j < parts[i].len() {
            out[n] = parts[i][j];
            n += 1;
            j += 1;
        }
        i += 1;
    }
    assert!(n == N);
    out
}

pub const ARCH_WORDS: usize = 16 + 2 + 5 + 8 * 4 + 4 + 1 + 9;
/// `ARCH`'s words in order.
pub const ARCH_FIELDS: [&str; ARCH_WORDS] = join(&[
    &["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"],
    &["rip", "rflags"],
    &["cr0", "cr2", "cr3", "cr4", "efer"],
    &seg!("cs"),
    &seg!("ds"),
    &seg!("es"),
    &seg!("fs"),
    &seg!("gs"),
    &seg!("ss"),
    &seg!("tr"),
    &seg!("ldtr"),
    &["gdtr.base", "gdtr.limit", "idtr.base", "idtr.limit"],
    &["dr7"],
    &["pat", "sysenter_cs", "sysenter_esp", "sysenter_eip", "star", "lstar", "cstar", "sfmask", "kernel_gs_base"],
]);

/// `EVENTS`: `pending` is 0 (nothing) or `1 | kind << 8 | vector << 16 |
/// has_error_code << 24` (`event_kind`); `error_code`, `insn_len` (software
/// events' length); `shadow` bit 0 STI, bit 1 MOV SS blocking; `nmi_blocked`;
/// `pending_debug`: debug exceptions pending (VMX's field layout, SDM Vol. 3C
/// §25.4.2: B3-B0 3:0, enabled breakpoint 12, BS 14, RTM 16; 0 on AMD-V).
pub const EVENTS_FIELDS: [&str; 6] = ["pending", "error_code", "insn_len", "shadow", "nmi_blocked", "pending_debug"];
/// Event kinds in `EVENTS.pending` bits 15:8.
pub mod event_kind {
    pub const EXTERNAL_INTERRUPT: u64 = 0;
    pub const NMI: u64 = 2;
    pub const HARDWARE_EXCEPTION: u64 = 3;
    pub const SOFTWARE_INTERRUPT: u64 = 4;
    pub const PRIVILEGED_SOFTWARE_EXCEPTION: u64 = 5;
    pub const SOFTWARE_EXCEPTION: u64 = 6;
}
pub const DEBUG_FIELDS: [&str; 5] = ["dr0", "dr1", "dr2", "dr3", "dr6"];
pub const MSRS_FIELDS: [&str; 3] = ["tsc_aux", "spec_ctrl", "virt_spec_ctrl"];
/// `LAPIC`: the APIC base MSR (EN, EXTD, BSP), the registers, IRR/ISR/TMR as
/// 4 words each (vectors 0-63 in the first), the timer: `timer.armed` (a
/// one-shot or periodic count is running), its current count, and the
/// TSC-deadline MSR in guest TSC ticks.
pub const LAPIC_FIELDS: [&str; 31] = [
    "apic_base", "id", "tpr", "ldr", "dfr", "svr", "esr", "esr_pending", "icr_low", "icr_high",
    "lvt.cmci", "lvt.timer", "lvt.thermal", "lvt.perf", "lvt.lint0", "lvt.lint1", "lvt.error",
    "isr0", "isr1", "isr2", "isr3", "tmr0", "tmr1", "tmr2", "tmr3", "irr0", "irr1", "irr2", "irr3",
    "timer.initial", "timer.divide",
];
pub const LAPIC_TIMER_FIELDS: [&str; 3] = ["timer.armed", "timer.current", "timer.tsc_deadline"];
pub const LAPIC_WORDS: usize = LAPIC_FIELDS.len() + LAPIC_TIMER_FIELDS.len();
pub const KVMCLOCK_FIELDS: [&str; 2] = ["system_time", "wall_clock"];
/// `TSC`: the guest's TSC when taken, its frequency, and the offset from the
/// host's TSC (0 today: guests see the host's TSC).
pub const TSC_FIELDS: [&str; 3] = ["tsc", "tsc_hz", "tsc_offset"];
/// `POWER`: `state` 0 running, 1 waiting for START-UP; `halted` 1 in HLT.
pub const POWER_FIELDS: [&str; 2] = ["state", "halted"];
pub mod power {
    pub const RUNNING: u64 = 0;
    pub const WAIT_FOR_SIPI: u64 = 1;
}

/// The word records: kind, name, field names.
pub const WORD_RECORDS: [(u16, &str, &[&str]); 7] = [
    (kind::ARCH, "arch", &ARCH_FIELDS),
    (kind::EVENTS, "events", &EVENTS_FIELDS),
    (kind::DEBUG, "debug", &DEBUG_FIELDS),
    (kind::MSRS, "msrs", &MSRS_FIELDS),
    (kind::KVMCLOCK, "kvmclock", &KVMCLOCK_FIELDS),
    (kind::TSC, "tsc", &TSC_FIELDS),
    (kind::POWER, "power", &POWER_FIELDS),
];

/// One vCPU's state, decoded (the XSAVE area borrowed from the bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuStateRecord<'a> {
    pub arch: [u64; ARCH_WORDS],
    pub events: [u64; 6],
    pub debug: [u64; 5],
    pub msrs: [u64; 3],
    pub lapic: [u64; LAPIC_WORDS],
    pub kvmclock: [u64; 2],
    pub tsc: [u64; 3],
    pub power: [u64; 2],
    pub xcr0: u64,
    pub xsave: &'a [u8],
}

impl Default for VcpuStateRecord<'_> {
    fn default() -> Self {
        Self {
            arch: [0; ARCH_WORDS],
            events: [0; 6],
            debug: [0; 5],
            msrs: [0; 3],
            lapic: [0; LAPIC_WORDS],
            kvmclock: [0; 2],
            tsc: [0; 3],
            power: [0; 2],
            xcr0: 0,
            xsave: &[],
        }
    }
}

impl<'a> VcpuStateRecord<'a> {
    /// The encoding's length.
    pub fn encoded_len(&self) -> usize {
        crate::envelope::encoded_len(self.records().map(|(_, p)| p.len()))
    }

    fn records(&self) -> impl Iterator<Item = (u16, Payload<'_>)> {
        [
            (kind::ARCH, Payload::Words(&self.arch)),
            (kind::EVENTS, Payload::Words(&self.events)),
            (kind::DEBUG, Payload::Words(&self.debug)),
            (kind::MSRS, Payload::Words(&self.msrs)),
            (kind::XSTATE, Payload::Xstate(self.xcr0, self.xsave)),
            (kind::LAPIC, Payload::Words(&self.lapic)),
            (kind::KVMCLOCK, Payload::Words(&self.kvmclock)),
            (kind::TSC, Payload::Words(&self.tsc)),
            (kind::POWER, Payload::Words(&self.power)),
        ]
        .into_iter()
    }

    /// Writes the encoding into `out`; returns its length, or `None` if `out`
    /// is too short (nothing meaningful is left in it then).
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let mut w = Writer::new(out)?;
        for (k, p) in self.records() {
            match p {
                Payload::Words(words) => w.words(k, words)?,
                Payload::Xstate(xcr0, area) => {
                    let payload = w.record(k, p.len())?;
                    payload[..8].copy_from_slice(&xcr0.to_le_bytes());
                    payload[8..].copy_from_slice(area);
                }
            }
        }
        Some(w.finish(MAGIC, VERSION))
    }

    /// Reads an encoding; every malformation is an error, never a panic.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = VcpuStateRecord::default();
        let mut seen = Seen::new(kind::POWER);
        for record in crate::envelope::read(bytes, MAGIC, VERSION)? {
            let (k, payload) = record?;
            seen.see(k)?;
            let words: &mut [u64] = match k {
                kind::ARCH => &mut r.arch,
                kind::EVENTS => &mut r.events,
                kind::DEBUG => &mut r.debug,
                kind::MSRS => &mut r.msrs,
                kind::LAPIC => &mut r.lapic,
                kind::KVMCLOCK => &mut r.kvmclock,
                kind::TSC => &mut r.tsc,
                kind::POWER => &mut r.power,
                _ => {
                    // XSTATE: XCR0, then the area: at least FXSAVE's legacy
                    // region (CPUID 0xD's sizes need not be whole lines).
                    let area = payload.len().checked_sub(8).ok_or(DecodeError::RecordLength(k))?;
                    if !(512..=XSAVE_MAX).contains(&area) {
                        return Err(DecodeError::RecordLength(k));
                    }
                    r.xcr0 = le64(&payload[..8]);
                    r.xsave = &payload[8..];
                    continue;
                }
            };
            crate::envelope::words_from(k, payload, words)?;
        }
        seen.all()?;
        Ok(r)
    }

    /// The word named `name` (`record.field`, e.g. `arch.rip`), for oxl.
    pub fn word_mut(&mut self, name: &str) -> Option<&mut u64> {
        let (rec, field) = name.split_once('.')?;
        let (words, names): (&mut [u64], &[&str]) = match rec {
            "arch" => (&mut self.arch, &ARCH_FIELDS),
            "events" => (&mut self.events, &EVENTS_FIELDS),
            "debug" => (&mut self.debug, &DEBUG_FIELDS),
            "msrs" => (&mut self.msrs, &MSRS_FIELDS),
            "kvmclock" => (&mut self.kvmclock, &KVMCLOCK_FIELDS),
            "tsc" => (&mut self.tsc, &TSC_FIELDS),
            "power" => (&mut self.power, &POWER_FIELDS),
            "lapic" => {
                let i = LAPIC_FIELDS.iter().chain(LAPIC_TIMER_FIELDS.iter()).position(|n| *n == field)?;
                return self.lapic.get_mut(i);
            }
            "xstate" if field == "xcr0" => return Some(&mut self.xcr0),
            _ => return None,
        };
        let i = names.iter().position(|n| *n == field)?;
        words.get_mut(i)
    }

    /// Every word with its name (`record.field`), in encoding order.
    pub fn words(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        let lapic_names = LAPIC_FIELDS.iter().chain(LAPIC_TIMER_FIELDS.iter());
        ARCH_FIELDS.iter().zip(self.arch.iter()).map(|(n, v)| ("arch", *n, *v))
            .chain(EVENTS_FIELDS.iter().zip(self.events.iter()).map(|(n, v)| ("events", *n, *v)))
            .chain(DEBUG_FIELDS.iter().zip(self.debug.iter()).map(|(n, v)| ("debug", *n, *v)))
            .chain(MSRS_FIELDS.iter().zip(self.msrs.iter()).map(|(n, v)| ("msrs", *n, *v)))
            .chain(core::iter::once(("xstate", "xcr0", self.xcr0)))
            .chain(lapic_names.zip(self.lapic.iter()).map(|(n, v)| ("lapic", *n, *v)))
            .chain(KVMCLOCK_FIELDS.iter().zip(self.kvmclock.iter()).map(|(n, v)| ("kvmclock", *n, *v)))
            .chain(TSC_FIELDS.iter().zip(self.tsc.iter()).map(|(n, v)| ("tsc", *n, *v)))
            .chain(POWER_FIELDS.iter().zip(self.power.iter()).map(|(n, v)| ("power", *n, *v)))
    }
}

enum Payload<'a> {
    Words(&'a [u64]),
    Xstate(u64, &'a [u8]),
}

impl Payload<'_> {
    fn len(&self) -> usize {
        match self {
            Payload::Words(w) => 8 * w.len(),
            Payload::Xstate(_, a) => 8 + a.len(),
        }
    }
}


#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn sample(area: &[u8]) -> VcpuStateRecord<'_> {
        let mut r = VcpuStateRecord { xcr0: 7, xsave: area, ..Default::default() };
        for (i, w) in r.arch.iter_mut().enumerate() {
            *w = 0x1111_0000_0000_0000 ^ (i as u64 * 0x0101_0101);
        }
        r.events = [1 | (3 << 8) | (14 << 16) | (1 << 24), 2, 0, 1, 0, 0];
        r.debug = [1, 2, 3, 4, 0xffff_0ff0];
        r.msrs = [5, 1, 0];
        for (i, w) in r.lapic.iter_mut().enumerate() {
            *w = i as u64 * 3;
        }
        r.kvmclock = [0x1001, 0x2000];
        r.tsc = [123_456_789, 2_000_000_000, 0];
        r.power = [power::RUNNING, 1];
        r
    }

    fn encoded(r: &VcpuStateRecord) -> Vec<u8> {
        let mut v = vec![0u8; r.encoded_len()];
        assert_eq!(r.encode(&mut v), Some(v.len()));
        v
    }

    #[test]
    fn round_trip() {
        let area: Vec<u8> = (0..576u32).map(|i| i as u8).collect();
        let r = sample(&area);
        let bytes = encoded(&r);
        assert_eq!(VcpuStateRecord::decode(&bytes), Ok(r.clone()));
        // Encoding what was decoded gives the same bytes.
        assert_eq!(encoded(&VcpuStateRecord::decode(&bytes).unwrap()), bytes);
        assert_eq!(r.encode(&mut vec![0u8; bytes.len() - 1]), None);
    }

    #[test]
    fn every_truncation_is_refused() {
        let area = [0u8; 576];
        let bytes = encoded(&sample(&area));
        for n in 0..bytes.len() {
            assert!(VcpuStateRecord::decode(&bytes[..n]).is_err(), "{n} bytes accepted");
        }
        // Also with the header's length patched to match (CRC then fails, or
        // the records run short).
        for n in HEADER_LEN..bytes.len() {
            let mut b = bytes[..n].to_vec();
            b[8..12].copy_from_slice(&(n as u32).to_le_bytes());
            let crc = crc32(&b[HEADER_LEN..]);
            b[12..16].copy_from_slice(&crc.to_le_bytes());
            assert!(VcpuStateRecord::decode(&b).is_err(), "{n} bytes with fixed header accepted");
        }
    }

    #[test]
    fn wrong_version_magic_and_reserved_are_refused() {
        let area = [0u8; 576];
        let bytes = encoded(&sample(&area));
        let mut b = bytes.clone();
        b[4] = 2;
        assert_eq!(VcpuStateRecord::decode(&b), Err(DecodeError::Version(2)));
        let mut b = bytes.clone();
        b[0] = b'X';
        assert_eq!(VcpuStateRecord::decode(&b), Err(DecodeError::BadMagic));
        let mut b = bytes.clone();
        b[6] = 1;
        assert_eq!(VcpuStateRecord::decode(&b), Err(DecodeError::Reserved));
        let mut b = bytes.clone();
        b.push(0);
        assert_eq!(VcpuStateRecord::decode(&b), Err(DecodeError::Length));
    }

    #[test]
    fn any_flipped_bit_is_refused() {
        let area = [0xa5u8; 576];
        let bytes = encoded(&sample(&area));
        for i in 0..bytes.len() {
            for bit in [0, 3, 7] {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(VcpuStateRecord::decode(&b).is_err(), "byte {i} bit {bit} flipped and accepted");
            }
        }
    }

    /// Re-encodes a record list with a valid header, for the structural checks.
    fn framed(records: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        for (k, p) in records {
            b.extend_from_slice(&k.to_le_bytes());
            b.extend_from_slice(&[0, 0]);
            b.extend_from_slice(&(p.len() as u32).to_le_bytes());
            b.extend_from_slice(p);
        }
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        let n = b.len() as u32;
        b[8..12].copy_from_slice(&n.to_le_bytes());
        let crc = crc32(&b[HEADER_LEN..]);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn split(bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = HEADER_LEN;
        while at < bytes.len() {
            let k = u16::from_le_bytes([bytes[at], bytes[at + 1]]);
            let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
            out.push((k, bytes[at + 8..at + 8 + len].to_vec()));
            at += 8 + len;
        }
        out
    }

    #[test]
    fn structure_is_checked() {
        let area = [0u8; 576];
        let recs = split(&encoded(&sample(&area)));
        assert!(VcpuStateRecord::decode(&framed(&recs)).is_ok());
        let mut rev = recs.clone();
        rev.reverse();
        assert_eq!(VcpuStateRecord::decode(&framed(&rev)), VcpuStateRecord::decode(&framed(&recs)), "any order");
        let mut dup = recs.clone();
        dup.push(recs[0].clone());
        assert_eq!(VcpuStateRecord::decode(&framed(&dup)), Err(DecodeError::DuplicateRecord(kind::ARCH)));
        let missing: Vec<_> = recs.iter().filter(|(k, _)| *k != kind::LAPIC).cloned().collect();
        assert_eq!(VcpuStateRecord::decode(&framed(&missing)), Err(DecodeError::MissingRecord(kind::LAPIC)));
        let mut unknown = recs.clone();
        unknown.push((10, vec![]));
        assert_eq!(VcpuStateRecord::decode(&framed(&unknown)), Err(DecodeError::UnknownRecord(10)));
        let mut short = recs.clone();
        short[0].1.truncate(8);
        assert_eq!(VcpuStateRecord::decode(&framed(&short)), Err(DecodeError::RecordLength(kind::ARCH)));
        let mut odd = recs.clone();
        let x = odd.iter_mut().find(|(k, _)| *k == kind::XSTATE).unwrap();
        x.1.truncate(8 + 100);
        assert_eq!(VcpuStateRecord::decode(&framed(&odd)), Err(DecodeError::RecordLength(kind::XSTATE)));
    }

    /// Random bytes, and random mutations of a valid encoding: never a panic,
    /// and what decodes encodes back to the same bytes.
    #[test]
    fn fuzz_decoder() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let area = [0u8; 576];
        let good = encoded(&sample(&area));
        for round in 0..20_000 {
            let mut b = if round % 2 == 0 {
                let n = (next() % 1500) as usize;
                (0..n).map(|_| next() as u8).collect::<Vec<u8>>()
            } else {
                good.clone()
            };
            let flips = 1 + next() % 4;
            for _ in 0..flips {
                if b.is_empty() {
                    break;
                }
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            if next() % 3 == 0 && b.len() >= HEADER_LEN {
                // A valid header over the mutated body: reaches the records.
                b[0..4].copy_from_slice(&MAGIC);
                b[4..8].copy_from_slice(&[1, 0, 0, 0]);
                let n = b.len() as u32;
                b[8..12].copy_from_slice(&n.to_le_bytes());
                let crc = crc32(&b[HEADER_LEN..]);
                b[12..16].copy_from_slice(&crc.to_le_bytes());
            }
            if let Ok(r) = VcpuStateRecord::decode(&b) {
                assert_eq!(encoded(&r).len(), b.len());
            }
        }
    }

    #[test]
    fn names_find_their_words() {
        let area = [0u8; 576];
        let mut r = sample(&area);
        *r.word_mut("arch.rip").unwrap() = 0x1234;
        assert_eq!(r.arch[ARCH_FIELDS.iter().position(|n| *n == "rip").unwrap()], 0x1234);
        *r.word_mut("lapic.timer.current").unwrap() = 9;
        assert_eq!(r.lapic[LAPIC_FIELDS.len() + 1], 9);
        assert!(r.word_mut("arch.nope").is_none() && r.word_mut("nope").is_none());
        assert_eq!(r.words().count(), ARCH_WORDS + 6 + 5 + 3 + 1 + LAPIC_WORDS + 2 + 3 + 2);
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }
}
