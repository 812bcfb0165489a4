//! The framing the state encodings share (`vcpu_snapshot`, `platform_state`):
//! a header, then typed records; pure code.
//!
//! Layout, all little endian:
//! - header (16 bytes): magic (4 bytes), version `u16`, flags `u16` (0),
//!   total length `u32` (header included), CRC-32 (IEEE) `u32` of every byte
//!   after the header;
//! - records, each `kind u16`, reserved `u16` (0), payload length `u32`, then
//!   the payload.
//!
//! `read` checks the header, the length and the checksum; `Records` walks the
//! records and refuses a reserved field that is not zero or a record that runs
//! past the end. What kinds must appear, and their lengths, is the encoding's.

pub const HEADER_LEN: usize = 16;
pub const RECORD_HEADER_LEN: usize = 8;

/// Why bytes were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its header or than the length it states.
    Truncated,
    BadMagic,
    /// A version this code does not read.
    Version(u16),
    /// Flags or a record's reserved field not zero.
    Reserved,
    /// The stated total length is not the buffer's.
    Length,
    /// The checksum does not match the contents.
    Checksum,
    UnknownRecord(u16),
    DuplicateRecord(u16),
    MissingRecord(u16),
    /// A record whose length is not its kind's.
    RecordLength(u16),
    /// A record whose length is right but whose contents are not a state the
    /// device or vCPU can be in (the record's kind).
    Value(u16),
}

impl DecodeError {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::BadMagic => "bad magic (not this kind of state)",
            Self::Version(_) => "unsupported version",
            Self::Reserved => "reserved field not zero",
            Self::Length => "stated length is not the data's",
            Self::Checksum => "checksum mismatch (corrupted)",
            Self::UnknownRecord(_) => "unknown record",
            Self::DuplicateRecord(_) => "record repeated",
            Self::MissingRecord(_) => "record missing",
            Self::RecordLength(_) => "record of the wrong length",
            Self::Value(_) => "a value out of range",
        }
    }
}

/// The reflected CRC-32 polynomial (IEEE 802.3, as zlib's).
const CRC32_POLY: u32 = 0xedb8_8320;

/// Slicing-by-8 tables: `t[0]` is the classic byte table, `t[k][b]` the CRC
/// of byte `b` followed by `k` zero bytes. Built at compile time (8 KiB).
const fn crc32_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = (c >> 1) ^ (CRC32_POLY & (c & 1).wrapping_neg());
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    t
}

static CRC32_TABLES: [[u32; 256]; 8] = crc32_tables();

/// CRC-32 (IEEE 802.3, reflected, as zlib's), eight bytes a step (slicing by
/// 8). A save stream checks every page it carries: bit by bit this was
/// ~165,000 instructions a 4 KiB page, nearly all of a save's cost under
/// Bochs (28 s of dom0's time for a 128 MiB domU); this takes ~2 a byte.
pub fn crc32(bytes: &[u8]) -> u32 {
    let t = &CRC32_TABLES;
    let byte = |x: u32, shift: u32| ((x >> shift) & 0xff) as usize;
    let mut crc = !0u32;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let lo = u32::from_le_bytes([w[0], w[1], w[2], w[3]]) ^ crc;
        let hi = u32::from_le_bytes([w[4], w[5], w[6], w[7]]);
        crc = t[7][byte(lo, 0)]
            ^ t[6][byte(lo, 8)]
            ^ t[5][byte(lo, 16)]
            ^ t[4][byte(lo, 24)]
            ^ t[3][byte(hi, 0)]
            ^ t[2][byte(hi, 8)]
            ^ t[1][byte(hi, 16)]
            ^ t[0][byte(hi, 24)];
    }
    for &b in words.remainder() {
        crc = (crc >> 8) ^ t[0][byte(crc ^ u32::from(b), 0)];
    }
    !crc
}

/// Writes an encoding into a buffer: records, then `finish` the header.
pub struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl<'a> Writer<'a> {
    /// `None` if `out` cannot even hold the header.
    pub fn new(out: &'a mut [u8]) -> Option<Self> {
        (out.len() >= HEADER_LEN).then_some(Self { out, at: HEADER_LEN })
    }

    /// Appends a record header for `len` payload bytes; the payload to fill
    /// in, or `None` if the buffer is too short.
    pub fn record(&mut self, kind: u16, len: usize) -> Option<&mut [u8]> {
        let end = self.at.checked_add(RECORD_HEADER_LEN)?.checked_add(len)?;
        let rec = self.out.get_mut(self.at..end)?;
        rec[0..2].copy_from_slice(&kind.to_le_bytes());
        rec[2..4].fill(0);
        rec[4..8].copy_from_slice(&u32::try_from(len).ok()?.to_le_bytes());
        self.at = end;
        Some(&mut rec[RECORD_HEADER_LEN..])
    }

    /// Appends a record of little-endian words.
    pub fn words(&mut self, kind: u16, words: &[u64]) -> Option<()> {
        let payload = self.record(kind, 8 * words.len())?;
        for (chunk, w) in payload.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        Some(())
    }

    /// Writes the header; the encoding's length.
    pub fn finish(self, magic: [u8; 4], version: u16) -> usize {
        let total = self.at;
        let out = &mut self.out[..total];
        out[0..4].copy_from_slice(&magic);
        out[4..6].copy_from_slice(&version.to_le_bytes());
        out[6..8].fill(0);
        out[8..12].copy_from_slice(&(total as u32).to_le_bytes());
        let crc = crc32(&out[HEADER_LEN..]);
        out[12..16].copy_from_slice(&crc.to_le_bytes());
        total
    }
}

/// The length of an encoding whose payloads are `lens` bytes long.
pub fn encoded_len(lens: impl IntoIterator<Item = usize>) -> usize {
    HEADER_LEN + lens.into_iter().map(|l| RECORD_HEADER_LEN + l).sum::<usize>()
}

/// Checks the header (magic, version, flags, length, checksum) of `bytes`;
/// its records.
pub fn read(bytes: &[u8], magic: [u8; 4], version: u16) -> Result<Records<'_>, DecodeError> {
    let header = bytes.get(..HEADER_LEN).ok_or(DecodeError::Truncated)?;
    if header[0..4] != magic {
        return Err(DecodeError::BadMagic);
    }
    let v = u16::from_le_bytes([header[4], header[5]]);
    if v != version {
        return Err(DecodeError::Version(v));
    }
    if header[6..8] != [0, 0] {
        return Err(DecodeError::Reserved);
    }
    let total = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
    if total > bytes.len() {
        return Err(DecodeError::Truncated);
    }
    if total != bytes.len() {
        return Err(DecodeError::Length);
    }
    let crc = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    if crc32(&bytes[HEADER_LEN..]) != crc {
        return Err(DecodeError::Checksum);
    }
    Ok(Records { rest: &bytes[HEADER_LEN..] })
}

/// The records of a checked encoding: `(kind, payload)` each.
pub struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<(u16, &'a [u8]), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let item = (|| {
            let h = self.rest.get(..RECORD_HEADER_LEN).ok_or(DecodeError::Truncated)?;
            let kind = u16::from_le_bytes([h[0], h[1]]);
            if h[2..4] != [0, 0] {
                return Err(DecodeError::Reserved);
            }
            let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
            let payload =
                self.rest.get(RECORD_HEADER_LEN..).and_then(|p| p.get(..len)).ok_or(DecodeError::Truncated)?;
            self.rest = &self.rest[RECORD_HEADER_LEN + len..];
            Ok((kind, payload))
        })();
        if item.is_err() {
            // One error ends the walk.
            self.rest = &[];
        }
        Some(item)
    }
}

/// Fills `words` from a payload of exactly as many little-endian words.
pub fn words_from(kind: u16, payload: &[u8], words: &mut [u64]) -> Result<(), DecodeError> {
    if payload.len() != 8 * words.len() {
        return Err(DecodeError::RecordLength(kind));
    }
    for (w, chunk) in words.iter_mut().zip(payload.chunks_exact(8)) {
        *w = le64(chunk);
    }
    Ok(())
}

/// Reads the first 8 bytes of `b` as a little-endian `u64` (`b` has them).
pub fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Tracks which of the kinds `1..=last` appeared: each exactly once.
pub struct Seen {
    bits: u64,
    last: u16,
}

impl Seen {
    /// For kinds 1 to `last` (at most 63).
    pub const fn new(last: u16) -> Self {
        Self { bits: 0, last }
    }

    /// Records `kind`; refuses one outside the range or seen before.
    pub fn see(&mut self, kind: u16) -> Result<(), DecodeError> {
        if kind == 0 || kind > self.last || kind > 63 {
            return Err(DecodeError::UnknownRecord(kind));
        }
        let bit = 1u64 << kind;
        if self.bits & bit != 0 {
            return Err(DecodeError::DuplicateRecord(kind));
        }
        self.bits |= bit;
        Ok(())
    }

    /// The first kind that never appeared, as an error.
    pub fn all(&self) -> Result<(), DecodeError> {
        match (1..=self.last).find(|k| self.bits & (1u64 << k) == 0) {
            Some(k) => Err(DecodeError::MissingRecord(k)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// The definition, a bit at a time.
    fn crc32_bitwise(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = (crc >> 1) ^ (CRC32_POLY & (crc & 1).wrapping_neg());
            }
        }
        !crc
    }

    #[test]
    fn crc32_is_zlibs_at_every_length_and_alignment() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
        let data: Vec<u8> = (0..4200u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for start in 0..9 {
            for len in (0..40).chain([4095, 4096, 4097, 4191]) {
                let s = &data[start..start + len];
                assert_eq!(crc32(s), crc32_bitwise(s), "start {start} len {len}");
            }
        }
    }
}
