//! The byte encoding of a domU's platform devices' state (`domctl::
//! PLATFORM_STATE_GET` / `PLATFORM_STATE_SET`; issue 12's save stream carries
//! it as it is): the IOAPIC, the UART, the CMOS clock, the i8042, the ACPI
//! sleep registers and the PIC masks. The local APICs and the KVM clock are
//! each vCPU's (`vcpu_snapshot`). Pure code; docs/hypercalls.md describes it.
//!
//! Framing: `envelope` with magic `OXPS`. Every record is an array of
//! little-endian `u64` words whose names `RECORDS` lists; every kind appears
//! exactly once. Byte-sized registers are packed into words low byte first;
//! a FIFO or queue is its length, then its bytes oldest first. Whether the
//! values are ones the device can hold is the device's check when the state
//! is loaded (`DecodeError::Value`).

pub use crate::envelope::DecodeError;
use crate::envelope::{Seen, Writer};
use crate::vcpu_snapshot::join;

/// `OXPS`.
pub const MAGIC: [u8; 4] = *b"OXPS";
/// The version this code writes and the only one it reads.
pub const VERSION: u16 = 1;

/// Record kinds.
pub mod kind {
    pub const IOAPIC: u16 = 1;
    pub const UART: u16 = 2;
    pub const RTC: u16 = 3;
    pub const I8042: u16 = 4;
    pub const ACPI_PM: u16 = 5;
    pub const PIC: u16 = 6;
    pub const LAST: u16 = PIC;
}

/// Redirection entries in `IOAPIC` (the most pins an IOAPIC model has).
pub const IOAPIC_RTES: usize = 32;

macro_rules! numbered {
    ($p:literal, $n:literal) => {{
        const N: [&str; 32] = [
            concat!($p, "0"), concat!($p, "1"), concat!($p, "2"), concat!($p, "3"), concat!($p, "4"),
            concat!($p, "5"), concat!($p, "6"), concat!($p, "7"), concat!($p, "8"), concat!($p, "9"),
            concat!($p, "10"), concat!($p, "11"), concat!($p, "12"), concat!($p, "13"), concat!($p, "14"),
            concat!($p, "15"), concat!($p, "16"), concat!($p, "17"), concat!($p, "18"), concat!($p, "19"),
            concat!($p, "20"), concat!($p, "21"), concat!($p, "22"), concat!($p, "23"), concat!($p, "24"),
            concat!($p, "25"), concat!($p, "26"), concat!($p, "27"), concat!($p, "28"), concat!($p, "29"),
            concat!($p, "30"), concat!($p, "31"),
        ];
        let mut out = [""; $n];
        let mut i = 0;
        while i < $n {
            out[i] = N[i];
            i += 1;
        }
        out
    }};
}

/// `IOAPIC`: its ID, IOREGSEL, pin count; `asserted` (bit n: pin n's input
/// is high), `queued` (bit n: a delivery from pin n waits for the local
/// APICs), `eoied` (bit n: remote IRR cleared since last looked at); then
/// the redirection entries, pin 0 first (entries past the pin count 0).
pub const IOAPIC_FIELDS: [&str; 6 + IOAPIC_RTES] =
    join(&[&["id", "ioregsel", "pins", "asserted", "queued", "eoied"], &numbered!("rte", 32)]);
/// `UART`: the registers, the latches, and the receive FIFO (`rx_len`, then
/// up to 16 bytes in `rx0` and `rx1`).
pub const UART_FIELDS: [&str; 13] = [
    "ier", "lcr", "mcr", "scr", "divisor", "fcr", "line_errors", "modem_deltas", "thre_pending", "last_rx", "rx_len",
    "rx0", "rx1",
];
/// `RTC`: the index register; the guest's time less the host's wall clock in
/// nanoseconds (two's complement); `frozen` 1 while SET holds the time
/// registers, with them in `frozen_time` (second, minute, hour, day, month,
/// year, century in bytes 0-6); then the 128 bytes of CMOS RAM.
pub const RTC_FIELDS: [&str; 4 + 16] = join(&[&["index", "offset_ns", "frozen", "frozen_time"], &numbered!("cmos", 16)]);
/// `I8042`: its 32 bytes of RAM; `ctl` (bytes: output port, output buffer
/// full, the byte in it, the last byte read, a command waiting for its
/// parameter, that command, the last port-0x64 write was a command, a break
/// prefix seen while translating); `ctl_replies` (length, then up to 4
/// bytes); `kbd` (bytes: awaiting a parameter, that command, scanning,
/// scan-code set, LEDs, last byte sent); `kbd_replies` (length, up to 4
/// bytes); `kbd_keys` (length) and `kbd_keys0`/`1` (up to 16 bytes).
pub const I8042_FIELDS: [&str; 11] = [
    "ram0", "ram1", "ram2", "ram3", "ctl", "ctl_replies", "kbd", "kbd_replies", "kbd_keys", "kbd_keys0", "kbd_keys1",
];
/// `ACPI_PM`: the sleep type last written to the sleep control register.
pub const ACPI_PM_FIELDS: [&str; 1] = ["slp_typ"];
/// `PIC`: the two 8259s' interrupt masks (read back, never acted on).
pub const PIC_FIELDS: [&str; 2] = ["mask_master", "mask_slave"];

/// The records: kind, name, field names.
pub const RECORDS: [(u16, &str, &[&str]); 6] = [
    (kind::IOAPIC, "ioapic", &IOAPIC_FIELDS),
    (kind::UART, "uart", &UART_FIELDS),
    (kind::RTC, "rtc", &RTC_FIELDS),
    (kind::I8042, "i8042", &I8042_FIELDS),
    (kind::ACPI_PM, "acpi_pm", &ACPI_PM_FIELDS),
    (kind::PIC, "pic", &PIC_FIELDS),
];

/// A platform's state, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformStateRecord {
    pub ioapic: [u64; IOAPIC_FIELDS.len()],
    pub uart: [u64; UART_FIELDS.len()],
    pub rtc: [u64; RTC_FIELDS.len()],
    pub i8042: [u64; I8042_FIELDS.len()],
    pub acpi_pm: [u64; ACPI_PM_FIELDS.len()],
    pub pic: [u64; PIC_FIELDS.len()],
}

impl Default for PlatformStateRecord {
    fn default() -> Self {
        Self {
            ioapic: [0; IOAPIC_FIELDS.len()],
            uart: [0; UART_FIELDS.len()],
            rtc: [0; RTC_FIELDS.len()],
            i8042: [0; I8042_FIELDS.len()],
            acpi_pm: [0; ACPI_PM_FIELDS.len()],
            pic: [0; PIC_FIELDS.len()],
        }
    }
}

/// Largest encoding (every record is fixed-size).
pub const ENCODED_LEN: usize = crate::envelope::HEADER_LEN
    + 6 * crate::envelope::RECORD_HEADER_LEN
    + 8 * (IOAPIC_FIELDS.len()
        + UART_FIELDS.len()
        + RTC_FIELDS.len()
        + I8042_FIELDS.len()
        + ACPI_PM_FIELDS.len()
        + PIC_FIELDS.len());

impl PlatformStateRecord {
    fn records(&self) -> [(u16, &[u64]); 6] {
        [
            (kind::IOAPIC, &self.ioapic),
            (kind::UART, &self.uart),
            (kind::RTC, &self.rtc),
            (kind::I8042, &self.i8042),
            (kind::ACPI_PM, &self.acpi_pm),
            (kind::PIC, &self.pic),
        ]
    }

    fn words_mut(&mut self, k: u16) -> Option<&mut [u64]> {
        Some(match k {
            kind::IOAPIC => &mut self.ioapic,
            kind::UART => &mut self.uart,
            kind::RTC => &mut self.rtc,
            kind::I8042 => &mut self.i8042,
            kind::ACPI_PM => &mut self.acpi_pm,
            kind::PIC => &mut self.pic,
            _ => return None,
        })
    }

    /// Writes the encoding (`ENCODED_LEN` bytes) into `out`; `None` if it is
    /// too short.
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let mut w = Writer::new(out)?;
        for (k, words) in self.records() {
            w.words(k, words)?;
        }
        Some(w.finish(MAGIC, VERSION))
    }

    /// Reads an encoding; every malformation is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Self::default();
        let mut seen = Seen::new(kind::LAST);
        for record in crate::envelope::read(bytes, MAGIC, VERSION)? {
            let (k, payload) = record?;
            seen.see(k)?;
            let words = r.words_mut(k).ok_or(DecodeError::UnknownRecord(k))?;
            crate::envelope::words_from(k, payload, words)?;
        }
        seen.all()?;
        Ok(r)
    }

    /// Every word with its record's and its own name, in encoding order.
    pub fn words(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> + '_ {
        RECORDS.iter().zip(self.records()).flat_map(|((_, name, fields), (_, words))| {
            fields.iter().zip(words.iter()).map(move |(f, v)| (*name, *f, *v))
        })
    }
}

/// Packs up to 8 bytes into a word, low byte first.
pub fn pack(bytes: &[u8]) -> u64 {
    bytes.iter().take(8).enumerate().fold(0, |w, (i, &b)| w | (u64::from(b) << (8 * i)))
}

/// Byte `i` (0-7) of a word.
pub const fn byte(word: u64, i: usize) -> u8 {
    (word >> (8 * i)) as u8
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    fn sample() -> PlatformStateRecord {
        let mut r = PlatformStateRecord::default();
        for (i, w) in r.ioapic.iter_mut().enumerate() {
            *w = 0x10_0000 + i as u64;
        }
        r.uart[0] = 0x0f;
        r.rtc[1] = (-5_000_000_000i64) as u64;
        r.i8042[4] = pack(&[1, 2, 3, 4]);
        r.acpi_pm[0] = 5;
        r.pic = [0xff, 0xfb];
        r
    }

    #[test]
    fn round_trip_and_fixed_length() {
        let r = sample();
        let mut out = vec![0u8; ENCODED_LEN];
        assert_eq!(r.encode(&mut out), Some(ENCODED_LEN));
        assert_eq!(PlatformStateRecord::decode(&out), Ok(r.clone()));
        assert_eq!(r.encode(&mut vec![0u8; ENCODED_LEN - 1]), None);
        assert_eq!(r.words().count(), RECORDS.iter().map(|(_, _, f)| f.len()).sum::<usize>());
        assert_eq!(r.words().find(|(rec, f, _)| *rec == "pic" && *f == "mask_slave").map(|(_, _, v)| v), Some(0xfb));
    }

    #[test]
    fn damage_is_refused() {
        let mut out = vec![0u8; ENCODED_LEN];
        sample().encode(&mut out).unwrap();
        for n in 0..out.len() {
            assert!(PlatformStateRecord::decode(&out[..n]).is_err(), "{n} bytes accepted");
        }
        for i in 0..out.len() {
            let mut b = out.clone();
            b[i] ^= 0x10;
            assert!(PlatformStateRecord::decode(&b).is_err(), "byte {i} flipped and accepted");
        }
        // A vCPU state is not a platform state.
        let mut b = out.clone();
        b[0..4].copy_from_slice(b"OXVS");
        assert_eq!(PlatformStateRecord::decode(&b), Err(DecodeError::BadMagic));
    }

    #[test]
    fn names_are_unique_per_record() {
        for (_, _, fields) in RECORDS {
            for (i, a) in fields.iter().enumerate() {
                assert!(!a.is_empty());
                assert!(fields[i + 1..].iter().all(|b| b != a), "{a} twice");
            }
        }
        assert_eq!(pack(&[0x11, 0x22]), 0x2211);
        assert_eq!(byte(0x2211, 1), 0x22);
    }
}
