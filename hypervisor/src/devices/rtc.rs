//! An emulated MC146818 real-time clock and CMOS RAM at ports 0x70/0x71, so a
//! guest reads the right date and time (Linux's `rtc-cmos`, `hwclock`) and can
//! set its own (`hwclock -w`) without touching the machine's clock.
//!
//! Register behaviour follows the Motorola MC146818A datasheet (cited as
//! "MC146818A"), with the PC conventions: port 0x70 selects a register (its bit
//! 7 masks NMIs on a PC; that is ignored), port 0x71 reads and writes it; byte
//! 0x32 holds the century, as IBM's AT put it and as the FADT's `century` field
//! then names (Linux reads it only through that field).
//!
//! The model:
//! - Time is passed in (Unix nanoseconds, from the hypervisor's wall clock),
//!   never read; the guest's clock is that plus an offset. Writing the time
//!   registers moves the offset, not the machine's clock.
//! - The date/time registers are encoded at each read in the format register B
//!   selects: BCD or binary, 12- or 24-hour. The day of the week is derived
//!   from the date (1 = Sunday).
//! - Register A's UIP flag shows during the 244 µs before each second, when a
//!   real chip warns of its coming update (MC146818A "UIP"), so it is never
//!   stuck and a guest waiting for the edge sees one; the registers stay valid
//!   throughout since the model updates atomically.
//! - Setting register B's SET bit freezes the registers for the guest to write;
//!   clearing it starts the clock from what was written (the sequence Linux's
//!   `mc146818_set_time` and `hwclock -w` use). A time that is not a real date
//!   is ignored and the clock keeps running.
//! - Register D reads "valid RAM and time"; register C reads 0: no periodic,
//!   alarm or update interrupts (alarm registers are kept and read back). Give
//!   the guest no IRQ for the RTC (a DSDT `PNP0B00` with only its I/O ports:
//!   Linux's `rtc-cmos` then runs without alarms, and `hwclock` polls).
//! - The other 114 bytes are plain CMOS RAM, zero at power-on.
//!
//! The conversion helpers (BCD, civil date ↔ Unix time) are public so the
//! hypervisor can read the machine's own RTC at boot with them
//! (`arch::x86_64::wallclock`).

use super::PortDevice;

/// Register-select port; bit 7 is the PC's NMI mask.
pub const INDEX_PORT: u16 = 0x70;
/// Data port for the selected register.
pub const DATA_PORT: u16 = 0x71;
/// Where PCs keep the century (name it in the FADT's `century` field).
pub const CENTURY_REGISTER: u8 = 0x32;

/// Register numbers (MC146818A "Address Map").
pub mod reg {
    pub const SECONDS: u8 = 0x00;
    pub const SECONDS_ALARM: u8 = 0x01;
    pub const MINUTES: u8 = 0x02;
    pub const MINUTES_ALARM: u8 = 0x03;
    pub const HOURS: u8 = 0x04;
    pub const HOURS_ALARM: u8 = 0x05;
    pub const DAY_OF_WEEK: u8 = 0x06;
    pub const DAY_OF_MONTH: u8 = 0x07;
    pub const MONTH: u8 = 0x08;
    pub const YEAR: u8 = 0x09;
    pub const A: u8 = 0x0a;
    pub const B: u8 = 0x0b;
    pub const C: u8 = 0x0c;
    pub const D: u8 = 0x0d;
}

/// Register A bits.
pub mod a {
    /// Update in progress (read-only).
    pub const UIP: u8 = 1 << 7;
    /// Divider bits 6:4 = 010: 32.768 kHz time base, clock running.
    pub const DIVIDER_NORMAL: u8 = 0b010 << 4;
    /// Rate select 0110: 1024 Hz, what PC firmware leaves.
    pub const RATE_1024HZ: u8 = 0b0110;
}

/// Register B bits.
pub mod b {
    /// Updates halted so the guest can set the time.
    pub const SET: u8 = 1 << 7;
    pub const PIE: u8 = 1 << 6;
    pub const AIE: u8 = 1 << 5;
    pub const UIE: u8 = 1 << 4;
    /// Date and time in binary rather than BCD.
    pub const DM_BINARY: u8 = 1 << 2;
    /// 24-hour rather than 12-hour (hour bit 7 = PM) format.
    pub const HOUR_24: u8 = 1 << 1;
}

/// Register D bit 7: valid RAM and time (the battery is good).
const D_VRT: u8 = 1 << 7;
/// 12-hour format: bit 7 of the hours register marks PM.
const HOUR_PM: u8 = 1 << 7;
/// UIP shows this long before each update (MC146818A: t_BUC = 244 µs).
const UIP_LEAD_NS: u64 = 244_000;
const NS_PER_SEC: u64 = 1_000_000_000;
const SECS_PER_DAY: i64 = 86_400;
const CMOS_SIZE: usize = 128;
const INDEX_MASK: u8 = 0x7f;
/// Years the registers (with the century byte) can show.
const MAX_YEAR: i64 = 9999;

// ----- Conversion helpers -----

/// Two BCD digits to binary; `None` if a nibble is not a decimal digit.
pub const fn bcd_to_bin(bcd: u8) -> Option<u8> {
    let (hi, lo) = (bcd >> 4, bcd & 0x0f);
    if hi > 9 || lo > 9 {
        None
    } else {
        Some(hi * 10 + lo)
    }
}

/// Binary 0..=99 to two BCD digits (values above 99 keep their last two digits).
pub const fn bin_to_bcd(bin: u8) -> u8 {
    let v = bin % 100;
    ((v / 10) << 4) | (v % 10)
}

/// Days from 1970-01-01 to the proleptic Gregorian date `year-month-day`
/// (negative before). `None` if month or day is out of range for that month.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> Option<i64> {
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    // Count from 0000-03-01 so the leap day ends each 4-year cycle: eras of
    // 400 years (146097 days), years of 365 days plus the leap rules.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let month_from_march = (i64::from(month) + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719468 days from 0000-03-01 to 1970-01-01.
    Some(era * 146_097 + day_of_era - 719_468)
}

/// The date `days` after 1970-01-01: (year, month 1-12, day 1-31).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A broken-down UTC time, as the RTC shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl DateTime {
    /// Seconds since the Unix epoch; `None` if any field is out of range or
    /// the date is before 1970.
    pub fn to_unix(&self) -> Option<u64> {
        if self.hour > 23 || self.minute > 59 || self.second > 59 {
            return None;
        }
        let days = days_from_civil(self.year, self.month, self.day)?;
        let secs = days * SECS_PER_DAY + i64::from(self.hour * 3600 + self.minute * 60 + self.second);
        u64::try_from(secs).ok()
    }

    /// The time `secs` after the Unix epoch.
    pub fn from_unix(secs: u64) -> Self {
        let days = (secs / SECS_PER_DAY as u64) as i64;
        let rem = (secs % SECS_PER_DAY as u64) as u32;
        let (year, month, day) = civil_from_days(days);
        Self { year, month, day, hour: rem / 3600, minute: rem / 60 % 60, second: rem % 60 }
    }

    /// Day of the week as the RTC numbers it: 1 = Sunday .. 7 = Saturday.
    pub fn rtc_weekday(&self) -> u8 {
        let days = days_from_civil(self.year, self.month, self.day).unwrap_or(0);
        // 1970-01-01 was a Thursday (5 in RTC numbering).
        ((days + 4).rem_euclid(7) + 1) as u8
    }
}

/// The time registers' values (0x00, 0x02, 0x04, 0x07, 0x08, 0x09 and the
/// century byte) decoded in the format register B selects. `None` if a field
/// is not valid in that format or the result is not a real date.
pub fn decode_registers(regs: &RawTime, reg_b: u8) -> Option<DateTime> {
    let binary = reg_b & b::DM_BINARY != 0;
    let field = |v: u8| if binary { Some(v) } else { bcd_to_bin(v) };
    let hour = if reg_b & b::HOUR_24 != 0 {
        field(regs.hour)?
    } else {
        let h12 = field(regs.hour & !HOUR_PM)?;
        if !(1..=12).contains(&h12) {
            return None;
        }
        h12 % 12 + if regs.hour & HOUR_PM != 0 { 12 } else { 0 }
    };
    let year = i64::from(field(regs.century)?) * 100 + i64::from(field(regs.year)?);
    let t = DateTime {
        year,
        month: field(regs.month)?.into(),
        day: field(regs.day)?.into(),
        hour: hour.into(),
        minute: field(regs.minute)?.into(),
        second: field(regs.second)?.into(),
    };
    t.to_unix().map(|_| t)
}

/// The raw values of the time registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawTime {
    pub second: u8,
    pub minute: u8,
    pub hour: u8,
    pub day: u8,
    pub month: u8,
    pub year: u8,
    pub century: u8,
}

/// Encodes `t` in the format register B selects.
pub fn encode_registers(t: &DateTime, reg_b: u8) -> RawTime {
    let binary = reg_b & b::DM_BINARY != 0;
    let field = |v: u32| if binary { v as u8 } else { bin_to_bcd(v as u8) };
    let hour = if reg_b & b::HOUR_24 != 0 {
        field(t.hour)
    } else {
        let pm = if t.hour >= 12 { HOUR_PM } else { 0 };
        let h12 = match t.hour % 12 {
            0 => 12,
            h => h,
        };
        field(h12) | pm
    };
    let year = t.year.clamp(0, MAX_YEAR) as u32;
    RawTime {
        second: field(t.second),
        minute: field(t.minute),
        hour,
        day: field(t.day),
        month: field(t.month),
        year: field(year % 100),
        century: field(year / 100),
    }
}

// ----- The device -----

/// The clock's state as `oxen_abi::platform_state`'s `RTC` words.
pub type RtcState = [u64; oxen_abi::platform_state::RTC_FIELDS.len()];

/// The MC146818 and its CMOS RAM. See the module documentation.
#[derive(Clone, Debug)]
pub struct Rtc {
    /// CMOS RAM, indexed by register number; the time registers and A-D are
    /// kept here only as far as they are plain storage (alarms, A's rate and
    /// divider, B).
    cmos: [u8; CMOS_SIZE],
    index: u8,
    /// Guest time minus host time, in nanoseconds.
    offset_ns: i64,
    /// While SET is on: the time registers as the guest sees and writes them.
    frozen: Option<RawTime>,
}

impl Default for Rtc {
    fn default() -> Self {
        Self::new()
    }
}

impl Rtc {
    /// An RTC showing the host's time, as PC firmware leaves it: BCD, 24-hour,
    /// 1024 Hz rate, no interrupts enabled.
    pub const fn new() -> Self {
        let mut cmos = [0; CMOS_SIZE];
        cmos[reg::A as usize] = a::DIVIDER_NORMAL | a::RATE_1024HZ;
        cmos[reg::B as usize] = b::HOUR_24;
        Self { cmos, index: 0, offset_ns: 0, frozen: None }
    }

    /// Whether `port` is one of the two.
    pub fn claims(port: u16) -> bool {
        port == INDEX_PORT || port == DATA_PORT
    }

    /// The guest's clock minus the host's, in ns (what `hwclock -w` changed).
    pub const fn offset_ns(&self) -> i64 {
        self.offset_ns
    }

    /// Restores an offset (a restored or migrated domain).
    pub fn set_offset_ns(&mut self, offset_ns: i64) {
        self.offset_ns = offset_ns;
    }

    /// Its state, for save and migration (`oxen_abi::platform_state`'s `RTC`
    /// words). The guest's time is kept as its offset from the host's wall
    /// clock, so a domain restored later, or on another host with a right
    /// clock, reads the time it would have read without the pause.
    pub fn save(&self) -> RtcState {
        let mut w = [0u64; oxen_abi::platform_state::RTC_FIELDS.len()];
        w[0] = self.index.into();
        w[1] = self.offset_ns as u64;
        if let Some(t) = self.frozen {
            w[2] = 1;
            w[3] = oxen_abi::platform_state::pack(&[t.second, t.minute, t.hour, t.day, t.month, t.year, t.century]);
        }
        for (d, chunk) in w[4..].iter_mut().zip(self.cmos.chunks_exact(8)) {
            *d = oxen_abi::platform_state::pack(chunk);
        }
        w
    }

    /// Takes a state `save` gave; refuses (and keeps its own) one it could
    /// not have been in.
    pub fn restore(&mut self, w: &RtcState) -> Result<(), &'static str> {
        if w[0] >= CMOS_SIZE as u64 || w[2] > 1 || (w[2] == 0 && w[3] != 0) || w[3] >> 56 != 0 {
            return Err("RTC: index, SET latch or held time out of range");
        }
        let b = |i| oxen_abi::platform_state::byte(w[3], i);
        self.index = w[0] as u8;
        self.offset_ns = w[1] as i64;
        self.frozen = (w[2] == 1).then(|| RawTime {
            second: b(0),
            minute: b(1),
            hour: b(2),
            day: b(3),
            month: b(4),
            year: b(5),
            century: b(6),
        });
        for (chunk, word) in self.cmos.chunks_exact_mut(8).zip(&w[4..]) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        Ok(())
    }

    /// The ports at host time `unix_ns`, as a [`PortDevice`].
    pub fn ports(&mut self, unix_ns: u64) -> RtcPorts<'_> {
        RtcPorts { rtc: self, unix_ns }
    }

    /// The guest's Unix time in ns at host time `unix_ns`, clamped to the
    /// years the registers can show.
    pub fn guest_unix_ns(&self, unix_ns: u64) -> u64 {
        let max = (days_from_civil(MAX_YEAR, 12, 31).unwrap_or(0) + 1) as u128
            * SECS_PER_DAY as u128
            * u128::from(NS_PER_SEC)
            - 1;
        let t = i128::from(unix_ns) + i128::from(self.offset_ns);
        t.clamp(0, max as i128) as u64
    }

    fn reg_b(&self) -> u8 {
        self.cmos[reg::B as usize]
    }

    fn now_registers(&self, unix_ns: u64) -> RawTime {
        match self.frozen {
            Some(raw) => raw,
            None => encode_registers(&DateTime::from_unix(self.guest_unix_ns(unix_ns) / NS_PER_SEC), self.reg_b()),
        }
    }

    /// Makes the guest's clock read `t` (whole seconds) at host time
    /// `unix_ns`, with `fraction_ns` into that second.
    fn set_time(&mut self, t: &DateTime, fraction_ns: u64, unix_ns: u64) {
        if let Some(secs) = t.to_unix() {
            let target = i128::from(secs) * i128::from(NS_PER_SEC) + i128::from(fraction_ns);
            let offset = target - i128::from(unix_ns);
            self.offset_ns = offset.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        }
    }

    fn read(&mut self, index: u8, unix_ns: u64) -> u8 {
        let raw = self.now_registers(unix_ns);
        match index {
            reg::SECONDS => raw.second,
            reg::MINUTES => raw.minute,
            reg::HOURS => raw.hour,
            reg::DAY_OF_WEEK => match self.frozen {
                // While frozen, the stored byte (a guest may write it).
                Some(_) => self.cmos[reg::DAY_OF_WEEK as usize],
                None => self.read_weekday_running(unix_ns),
            },
            reg::DAY_OF_MONTH => raw.day,
            reg::MONTH => raw.month,
            reg::YEAR => raw.year,
            CENTURY_REGISTER => raw.century,
            reg::A => {
                let mut v = self.cmos[reg::A as usize] & !a::UIP;
                let fraction = self.guest_unix_ns(unix_ns) % NS_PER_SEC;
                if self.frozen.is_none() && fraction >= NS_PER_SEC - UIP_LEAD_NS {
                    v |= a::UIP;
                }
                v
            }
            // No interrupt sources: nothing is ever flagged.
            reg::C => 0,
            reg::D => D_VRT,
            i => self.cmos[usize::from(i)],
        }
    }

    fn write(&mut self, index: u8, value: u8, unix_ns: u64) {
        match index {
            reg::SECONDS
            | reg::MINUTES
            | reg::HOURS
            | reg::DAY_OF_MONTH
            | reg::MONTH
            | reg::YEAR
            | CENTURY_REGISTER => {
                let mut raw = self.now_registers(unix_ns);
                match index {
                    reg::SECONDS => raw.second = value,
                    reg::MINUTES => raw.minute = value,
                    reg::HOURS => raw.hour = value,
                    reg::DAY_OF_MONTH => raw.day = value,
                    reg::MONTH => raw.month = value,
                    reg::YEAR => raw.year = value,
                    _ => raw.century = value,
                }
                if self.frozen.is_some() {
                    self.frozen = Some(raw);
                } else if let Some(t) = decode_registers(&raw, self.reg_b()) {
                    // A running clock: change the field, keep the phase.
                    let fraction = self.guest_unix_ns(unix_ns) % NS_PER_SEC;
                    self.set_time(&t, fraction, unix_ns);
                }
            }
            reg::A => self.cmos[reg::A as usize] = value & !a::UIP,
            reg::B => {
                let was_set = self.reg_b() & b::SET != 0;
                // SET clears UIE (MC146818A "SET").
                let value = if value & b::SET != 0 { value & !b::UIE } else { value };
                match (was_set, value & b::SET != 0) {
                    (false, true) => {
                        // Freeze in the format being set, so the guest reads back what it expects.
                        self.cmos[reg::B as usize] = value;
                        self.frozen = Some(self.now_registers(unix_ns));
                        self.cmos[reg::DAY_OF_WEEK as usize] = self.read_weekday_running(unix_ns);
                    }
                    (true, false) => {
                        let raw = self.frozen.take().unwrap_or_default();
                        // Decode in the format the registers were written in.
                        if let Some(t) = decode_registers(&raw, self.reg_b()) {
                            self.set_time(&t, 0, unix_ns);
                        }
                        self.cmos[reg::B as usize] = value;
                    }
                    _ => self.cmos[reg::B as usize] = value,
                }
            }
            // C and D are read-only.
            reg::C | reg::D => {}
            // The weekday follows the date; a write shows only while frozen.
            reg::DAY_OF_WEEK => self.cmos[reg::DAY_OF_WEEK as usize] = value,
            i => self.cmos[usize::from(i)] = value,
        }
    }

    fn read_weekday_running(&self, unix_ns: u64) -> u8 {
        let wday = DateTime::from_unix(self.guest_unix_ns(unix_ns) / NS_PER_SEC).rtc_weekday();
        if self.reg_b() & b::DM_BINARY != 0 {
            wday
        } else {
            bin_to_bcd(wday)
        }
    }
}

/// The RTC's ports at one moment (see [`Rtc::ports`]).
pub struct RtcPorts<'a> {
    rtc: &'a mut Rtc,
    unix_ns: u64,
}

impl RtcPorts<'_> {
    fn read_port(&mut self, port: u16) -> u8 {
        match port {
            // The index register is write-only on PCs.
            DATA_PORT => self.rtc.read(self.rtc.index, self.unix_ns),
            _ => u8::MAX,
        }
    }

    fn write_port(&mut self, port: u16, value: u8) {
        match port {
            // Bit 7 is the PC's NMI mask, which has no meaning here.
            INDEX_PORT => self.rtc.index = value & INDEX_MASK,
            DATA_PORT => self.rtc.write(self.rtc.index, value, self.unix_ns),
            _ => {}
        }
    }
}

impl PortDevice for RtcPorts<'_> {
    /// Byte registers: wider accesses split into bytes at successive ports;
    /// other ports read as all ones. Sizes other than 1, 2 or 4 read as all
    /// ones with no effect.
    fn port_read(&mut self, port: u16, size: u8) -> u32 {
        super::read_bytewise(port, size, |p| self.read_port(p))
    }

    fn port_write(&mut self, port: u16, size: u8, value: u32) {
        super::write_bytewise(port, size, value, |p, b| self.write_port(p, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-05 20:31:07.250 UTC, a Saturday.
    const NOW: u64 = 1_796_502_667_250_000_000;

    fn rd(r: &mut Rtc, index: u8, at: u64) -> u8 {
        let mut p = r.ports(at);
        p.port_write(INDEX_PORT, 1, index.into());
        p.port_read(DATA_PORT, 1) as u8
    }
    fn wr(r: &mut Rtc, index: u8, value: u8, at: u64) {
        let mut p = r.ports(at);
        p.port_write(INDEX_PORT, 1, index.into());
        p.port_write(DATA_PORT, 1, value.into());
    }

    /// Linux's `mc146818_get_time` (drivers/rtc/rtc-mc146818-lib.c), with the
    /// century register named by the FADT. Returns (year, mon, mday, h, m, s).
    fn linux_get_time(r: &mut Rtc, at: u64) -> (i64, u8, u8, u8, u8, u8) {
        loop {
            assert_eq!(rd(r, reg::D, at) & 0x40, 0, "RTC_VALID bit 6 must be 0");
            let sec = rd(r, reg::SECONDS, at);
            if rd(r, reg::A, at) & a::UIP != 0 {
                panic!("UIP at {at}: Linux would mdelay(1) and retry");
            }
            if sec != rd(r, reg::SECONDS, at) {
                continue;
            }
            let min = rd(r, reg::MINUTES, at);
            let hour = rd(r, reg::HOURS, at);
            let mday = rd(r, reg::DAY_OF_MONTH, at);
            let mon = rd(r, reg::MONTH, at);
            let year = rd(r, reg::YEAR, at);
            let century = rd(r, CENTURY_REGISTER, at);
            let ctrl = rd(r, reg::B, at);
            let bin = |v: u8| if ctrl & b::DM_BINARY != 0 { v } else { bcd_to_bin(v).unwrap() };
            let full_year = i64::from(bin(century)) * 100 + i64::from(bin(year));
            return (full_year, bin(mon), bin(mday), bin(hour), bin(min), bin(sec));
        }
    }

    /// Linux's `mc146818_set_time`: SET, divider reset, the fields, century, restore.
    fn linux_set_time(r: &mut Rtc, t: &DateTime, at: u64) {
        let save_control = rd(r, reg::B, at);
        wr(r, reg::B, save_control | b::SET, at);
        let save_freq = rd(r, reg::A, at);
        wr(r, reg::A, save_freq | 0x70, at);
        let bcd = save_control & b::DM_BINARY == 0;
        let f = |v: u32| if bcd { bin_to_bcd(v as u8) } else { v as u8 };
        wr(r, reg::YEAR, f((t.year % 100) as u32), at);
        wr(r, reg::MONTH, f(t.month), at);
        wr(r, reg::DAY_OF_MONTH, f(t.day), at);
        wr(r, reg::HOURS, f(t.hour), at);
        wr(r, reg::MINUTES, f(t.minute), at);
        wr(r, reg::SECONDS, f(t.second), at);
        wr(r, CENTURY_REGISTER, f((t.year / 100) as u32), at);
        wr(r, reg::B, save_control, at);
        wr(r, reg::A, save_freq, at);
    }

    #[test]
    fn saved_state_keeps_the_guests_time_its_ram_and_a_held_set() {
        let mut r = Rtc::new();
        let t = DateTime { year: 2031, month: 7, day: 4, hour: 9, minute: 30, second: 0 };
        linux_set_time(&mut r, &t, NOW);
        wr(&mut r, 0x40, 0x5a, NOW);
        let saved = r.save();
        let mut s = Rtc::new();
        assert_eq!(s.restore(&saved), Ok(()));
        assert_eq!(s.save(), saved);
        let later = NOW + 10 * NS_PER_SEC;
        assert_eq!(linux_get_time(&mut s, later), linux_get_time(&mut r, later));
        assert_eq!(linux_get_time(&mut s, later).0, 2031);
        assert_eq!(rd(&mut s, 0x40, later), 0x5a);
        // SET on: the held registers travel with it.
        let control = rd(&mut r, reg::B, NOW);
        wr(&mut r, reg::B, control | b::SET, NOW);
        wr(&mut r, reg::MINUTES, 0x45, NOW);
        let held = r.save();
        assert_eq!(held[2], 1);
        assert_eq!(s.restore(&held), Ok(()));
        assert_eq!(rd(&mut s, reg::MINUTES, later), 0x45);
        // An index past the RAM, a latch that is not 0/1: refused, kept.
        let before = s.save();
        let mut bad = held;
        bad[0] = 128;
        assert!(s.restore(&bad).is_err());
        let mut bad = held;
        bad[2] = 2;
        assert!(s.restore(&bad).is_err());
        assert_eq!(s.save(), before);
    }

    #[test]
    fn civil_conversions() {
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
        assert_eq!(days_from_civil(2000, 3, 1), Some(11_017));
        assert_eq!(days_from_civil(1969, 12, 31), Some(-1));
        assert_eq!(days_from_civil(2024, 2, 29), Some(19_782));
        assert_eq!(days_from_civil(2023, 2, 29), None);
        assert_eq!(days_from_civil(2100, 2, 29), None, "century rule");
        assert!(days_from_civil(2000, 2, 29).is_some(), "400-year rule");
        assert_eq!(days_from_civil(2026, 13, 1), None);
        assert_eq!(days_from_civil(2026, 4, 31), None);
        assert_eq!(days_from_civil(2026, 1, 0), None);
        // Round trip over 1600..2400, every day.
        let start = days_from_civil(1600, 1, 1).unwrap();
        let end = days_from_civil(2400, 12, 31).unwrap();
        let mut expect = (1600i64, 1u32, 1u32);
        for d in start..=end {
            let got = civil_from_days(d);
            assert_eq!(got, expect, "day {d}");
            assert_eq!(days_from_civil(got.0, got.1, got.2), Some(d));
            expect = if expect.2 < days_in_month(expect.0, expect.1) {
                (expect.0, expect.1, expect.2 + 1)
            } else if expect.1 < 12 {
                (expect.0, expect.1 + 1, 1)
            } else {
                (expect.0 + 1, 1, 1)
            };
        }
        let t = DateTime::from_unix(NOW / NS_PER_SEC);
        assert_eq!(t, DateTime { year: 2026, month: 12, day: 5, hour: 20, minute: 31, second: 7 });
        assert_eq!(t.to_unix(), Some(NOW / NS_PER_SEC));
        assert_eq!(t.rtc_weekday(), 7, "Saturday");
        assert_eq!(DateTime::from_unix(0).rtc_weekday(), 5, "1970-01-01 was a Thursday");
        assert_eq!(DateTime { second: 60, ..t }.to_unix(), None);
        assert_eq!(DateTime { year: 1969, ..t }.to_unix(), None);
    }

    #[test]
    fn bcd() {
        for v in 0..=99u8 {
            assert_eq!(bcd_to_bin(bin_to_bcd(v)), Some(v));
        }
        assert_eq!(bin_to_bcd(59), 0x59);
        assert_eq!(bcd_to_bin(0x1a), None);
        assert_eq!(bcd_to_bin(0xa1), None);
    }

    #[test]
    fn registers_show_the_host_time_in_bcd_24h() {
        let mut r = Rtc::new();
        assert_eq!(linux_get_time(&mut r, NOW), (2026, 12, 5, 20, 31, 7));
        assert_eq!(rd(&mut r, reg::SECONDS, NOW), 0x07);
        assert_eq!(rd(&mut r, reg::HOURS, NOW), 0x20);
        assert_eq!(rd(&mut r, reg::YEAR, NOW), 0x26);
        assert_eq!(rd(&mut r, CENTURY_REGISTER, NOW), 0x20);
        assert_eq!(rd(&mut r, reg::DAY_OF_WEEK, NOW), 7);
        assert_eq!(rd(&mut r, reg::D, NOW), 0x80, "VRT");
        assert_eq!(rd(&mut r, reg::C, NOW), 0);
        assert_eq!(rd(&mut r, reg::A, NOW), 0x26, "32.768 kHz, 1024 Hz, no UIP");
        // It runs: 53 s later the minute rolls over.
        assert_eq!(linux_get_time(&mut r, NOW + 53 * NS_PER_SEC), (2026, 12, 5, 20, 32, 0));
    }

    #[test]
    fn binary_and_12_hour_formats() {
        let mut r = Rtc::new();
        wr(&mut r, reg::B, b::DM_BINARY | b::HOUR_24, NOW);
        assert_eq!(rd(&mut r, reg::HOURS, NOW), 20);
        assert_eq!(rd(&mut r, reg::YEAR, NOW), 26);
        assert_eq!(rd(&mut r, CENTURY_REGISTER, NOW), 20);
        wr(&mut r, reg::B, 0, NOW);
        assert_eq!(rd(&mut r, reg::HOURS, NOW), HOUR_PM | 0x08, "8 PM in BCD");
        wr(&mut r, reg::B, b::DM_BINARY, NOW);
        assert_eq!(rd(&mut r, reg::HOURS, NOW), HOUR_PM | 8);
        // Midnight and noon.
        let midnight = NOW - (20 * 3600 + 31 * 60 + 7) * NS_PER_SEC;
        assert_eq!(rd(&mut r, reg::HOURS, midnight), 12);
        assert_eq!(rd(&mut r, reg::HOURS, midnight + 12 * 3600 * NS_PER_SEC), HOUR_PM | 12);
        for h in 0..24 {
            let t = DateTime { hour: h, ..DateTime::from_unix(NOW / NS_PER_SEC) };
            for fmt in [0, b::DM_BINARY, b::HOUR_24, b::HOUR_24 | b::DM_BINARY] {
                assert_eq!(decode_registers(&encode_registers(&t, fmt), fmt), Some(t), "{h} in {fmt:#x}");
            }
        }
    }

    #[test]
    fn uip_shows_before_each_update_and_never_sticks() {
        let mut r = Rtc::new();
        let second = NOW / NS_PER_SEC * NS_PER_SEC;
        let mut seen = 0;
        // Poll every 10 µs across two seconds: UIP rises and falls twice.
        let mut last = false;
        for step in 0..200_000u64 {
            let uip = rd(&mut r, reg::A, second + step * 10_000) & a::UIP != 0;
            if uip && !last {
                seen += 1;
            }
            last = uip;
        }
        assert_eq!(seen, 2);
        assert_ne!(rd(&mut r, reg::A, second + NS_PER_SEC - 1) & a::UIP, 0);
        assert_eq!(rd(&mut r, reg::A, second + NS_PER_SEC) & a::UIP, 0);
        // Register A's other bits are the guest's; UIP is read-only.
        wr(&mut r, reg::A, 0xff, NOW);
        assert_eq!(rd(&mut r, reg::A, NOW), 0x7f);
    }

    #[test]
    fn hwclock_w_moves_only_the_guest_clock() {
        let mut r = Rtc::new();
        // The guest sets 2031-06-15 08:00:00.
        let want = DateTime { year: 2031, month: 6, day: 15, hour: 8, minute: 0, second: 0 };
        linux_set_time(&mut r, &want, NOW);
        assert_eq!(linux_get_time(&mut r, NOW), (2031, 6, 15, 8, 0, 0));
        assert_eq!(rd(&mut r, reg::DAY_OF_WEEK, NOW), 1, "a Sunday");
        // It keeps running from there at the host's rate.
        assert_eq!(linux_get_time(&mut r, NOW + 3_661 * NS_PER_SEC), (2031, 6, 15, 9, 1, 1));
        assert_eq!(r.guest_unix_ns(NOW), want.to_unix().unwrap() * NS_PER_SEC);
        // A second RTC (another domain) still shows the host's time.
        assert_eq!(linux_get_time(&mut Rtc::new(), NOW), (2026, 12, 5, 20, 31, 7));
        // The offset can be carried over.
        let mut moved = Rtc::new();
        moved.set_offset_ns(r.offset_ns());
        assert_eq!(linux_get_time(&mut moved, NOW), (2031, 6, 15, 8, 0, 0));
    }

    #[test]
    fn frozen_registers_read_back_what_was_written() {
        let mut r = Rtc::new();
        wr(&mut r, reg::B, b::HOUR_24 | b::SET | b::UIE, NOW);
        assert_eq!(rd(&mut r, reg::B, NOW) & b::UIE, 0, "SET clears UIE");
        wr(&mut r, reg::MINUTES, 0x45, NOW);
        // Time does not move while SET, nor does UIP show.
        assert_eq!(rd(&mut r, reg::MINUTES, NOW + 10 * NS_PER_SEC), 0x45);
        assert_eq!(rd(&mut r, reg::SECONDS, NOW + 10 * NS_PER_SEC), 0x07);
        let just_before_update = NOW / NS_PER_SEC * NS_PER_SEC + NS_PER_SEC - 1;
        assert_eq!(rd(&mut r, reg::A, just_before_update) & a::UIP, 0);
        wr(&mut r, reg::B, b::HOUR_24, NOW + 10 * NS_PER_SEC);
        assert_eq!(linux_get_time(&mut r, NOW + 10 * NS_PER_SEC), (2026, 12, 5, 20, 45, 7));
    }

    #[test]
    fn a_running_field_write_keeps_the_phase_and_invalid_dates_are_ignored() {
        let mut r = Rtc::new();
        wr(&mut r, reg::HOURS, 0x05, NOW);
        assert_eq!(linux_get_time(&mut r, NOW), (2026, 12, 5, 5, 31, 7));
        assert_eq!(r.guest_unix_ns(NOW) % NS_PER_SEC, NOW % NS_PER_SEC);
        let before = r.offset_ns();
        // Not BCD, not a month, not a day in November: ignored.
        wr(&mut r, reg::SECONDS, 0x5a, NOW);
        wr(&mut r, reg::MONTH, 0x13, NOW);
        wr(&mut r, reg::MONTH, 0x11, NOW);
        let month_back = (days_from_civil(2026, 11, 5).unwrap() - days_from_civil(2026, 12, 5).unwrap()) * SECS_PER_DAY;
        assert_eq!(r.offset_ns(), before + month_back * NS_PER_SEC as i64);
        let mut r = Rtc::new();
        wr(&mut r, reg::B, b::HOUR_24 | b::SET, NOW);
        wr(&mut r, reg::DAY_OF_MONTH, 0x31, NOW);
        wr(&mut r, reg::MONTH, 0x02, NOW);
        wr(&mut r, reg::B, b::HOUR_24, NOW);
        assert_eq!(r.offset_ns(), 0, "February 31st is not a date");
    }

    #[test]
    fn cmos_ram_index_and_nmi_bit() {
        let mut r = Rtc::new();
        // NMI-mask bit set in the index: same register.
        wr(&mut r, 0x80 | 0x40, 0x5a, NOW);
        assert_eq!(rd(&mut r, 0x40, NOW), 0x5a);
        assert_eq!(rd(&mut r, 0x7f, NOW), 0);
        // C and D ignore writes; the index port reads as all ones.
        wr(&mut r, reg::C, 0xff, NOW);
        wr(&mut r, reg::D, 0x00, NOW);
        assert_eq!((rd(&mut r, reg::C, NOW), rd(&mut r, reg::D, NOW)), (0, 0x80));
        assert_eq!(r.ports(NOW).port_read(INDEX_PORT, 1), 0xff);
        // Alarms read back.
        wr(&mut r, reg::SECONDS_ALARM, 0x30, NOW);
        wr(&mut r, reg::MINUTES_ALARM, 0x31, NOW);
        wr(&mut r, reg::HOURS_ALARM, 0xc0, NOW);
        assert_eq!(rd(&mut r, reg::HOURS_ALARM, NOW), 0xc0);
        assert!(Rtc::claims(0x70) && Rtc::claims(0x71) && !Rtc::claims(0x72));
    }

    #[test]
    fn any_access_at_any_time_is_safe() {
        let mut r = Rtc::new();
        for at in [0, 1, NOW, u64::MAX] {
            for index in 0..=u8::MAX {
                for value in [0u8, 0x59, 0x80, 0x99, 0xff] {
                    wr(&mut r, reg::B, value, at);
                    wr(&mut r, index, value, at);
                    rd(&mut r, index, at);
                }
            }
            for size in [0, 2, 3, 4, 8] {
                r.ports(at).port_read(INDEX_PORT, size);
                r.ports(at).port_write(INDEX_PORT, size, u32::MAX);
            }
        }
        // Far-off offsets clamp to what the registers can show.
        r.set_offset_ns(i64::MAX);
        rd(&mut r, reg::YEAR, u64::MAX);
        r.set_offset_ns(i64::MIN);
        assert_eq!(r.guest_unix_ns(0), 0);
    }
}
