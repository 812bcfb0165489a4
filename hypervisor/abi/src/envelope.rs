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

/// CRC-32 (IEEE 802.3, reflected, as zlib's), bit by bit: small, and the
/// states are a few KiB.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
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
