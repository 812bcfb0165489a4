//! The date and time: read once at boot from the machine's RTC, then carried
//! forward by the TSC. Guests get it through their own RTC model and kvmclock
//! (`devices::rtc`, `devices::kvmclock`); the machine's RTC is never written
//! (dom0 owns the hardware afterwards and may set it itself).
//!
//! The RTC is assumed to keep UTC, as Linux keeps it. The decoding (BCD or
//! binary, 12- or 24-hour per register B, the century byte) is the pure code of
//! `devices::rtc`.

use super::time;
use crate::devices::rtc::{self, reg, DateTime, RawTime};
use core::sync::atomic::{AtomicU64, Ordering};
use log::{info, warn};
use x86_64::instructions::port::Port;

/// Unix time in ns at the moment `BOOT_NS` (hypervisor ns) was read.
static BOOT_UNIX_NS: AtomicU64 = AtomicU64::new(0);
static BOOT_NS: AtomicU64 = AtomicU64::new(0);

/// An update cycle lasts under 2 ms after UIP rises (MC146818A); wait a bit more.
const UIP_WAIT_US: u64 = 10_000;
/// Tries at two identical reads before taking the last one.
const STABLE_TRIES: u32 = 10;
/// How long to wait for the seconds to tick over, which aligns the reading to
/// the second; past it the reading is taken as half a second old.
const EDGE_WAIT_US: u64 = 1_100_000;
const NS_PER_SEC: u64 = 1_000_000_000;

/// Nanoseconds since TSC 0: the definition of `sched::run::now_ns`, which
/// callers of [`unix_ns`] pass in (read here so `arch` need not import `sched`).
fn now_ns() -> u64 {
    let hz = time::tsc_hz().max(1);
    (u128::from(time::rdtsc()) * 1_000_000_000 / u128::from(hz)) as u64
}

fn cmos_read(index: u8) -> u8 {
    // SAFETY: ports 0x70/0x71 are the PC's RTC; selecting a register and reading
    // it has no side effect but on register C (never read here). Bit 7 of the
    // index stays clear, leaving NMIs enabled as firmware and Linux leave them.
    // Only the boot CPU runs this, before any guest can reach the ports.
    unsafe {
        Port::<u8>::new(rtc::INDEX_PORT).write(index & 0x7f);
        Port::<u8>::new(rtc::DATA_PORT).read()
    }
}

/// Waits (bounded) until no update is in progress.
fn wait_uip_clear() {
    let deadline = time::Deadline::after_us(UIP_WAIT_US);
    while cmos_read(reg::A) & rtc::a::UIP != 0 && !deadline.passed() {
        core::hint::spin_loop();
    }
}

fn read_once() -> (RawTime, u8) {
    wait_uip_clear();
    let raw = RawTime {
        second: cmos_read(reg::SECONDS),
        minute: cmos_read(reg::MINUTES),
        hour: cmos_read(reg::HOURS),
        day: cmos_read(reg::DAY_OF_MONTH),
        month: cmos_read(reg::MONTH),
        year: cmos_read(reg::YEAR),
        century: cmos_read(rtc::CENTURY_REGISTER),
    };
    (raw, cmos_read(reg::B))
}

/// Two identical reads in a row: no update slipped in between.
fn read_stable() -> (RawTime, u8) {
    let mut last = read_once();
    for _ in 0..STABLE_TRIES {
        let next = read_once();
        if next == last {
            return next;
        }
        last = next;
    }
    last
}

/// Decodes a reading; a century byte that is not a plausible one (machines
/// that keep it elsewhere, as their FADT then says) is taken as 20.
fn decode(raw: RawTime, reg_b: u8) -> Option<DateTime> {
    rtc::decode_registers(&raw, reg_b).filter(|t| (1900..3100).contains(&t.year)).or_else(|| {
        let century = if reg_b & rtc::b::DM_BINARY != 0 { 20 } else { rtc::bin_to_bcd(20) };
        rtc::decode_registers(&RawTime { century, ..raw }, reg_b)
    })
}

/// Reads the machine's RTC, aligned to a second boundary if one comes within
/// about a second. Call once on the boot CPU after the TSC is calibrated and
/// before guests run.
pub fn init() {
    let (first, reg_b) = read_stable();
    let deadline = time::Deadline::after_us(EDGE_WAIT_US);
    let mut aligned = None;
    while !deadline.passed() {
        wait_uip_clear();
        if cmos_read(reg::SECONDS) != first.second {
            // The second just began: read it whole.
            let at = now_ns();
            aligned = Some((read_stable(), at));
            break;
        }
    }
    let (((raw, reg_b), at), fraction_ns) = match aligned {
        Some(reading) => (reading, 0),
        None => (((first, reg_b), now_ns()), NS_PER_SEC / 2),
    };
    let Some(t) = decode(raw, reg_b) else {
        warn!("wallclock: the RTC reads no valid date ({raw:x?}, register B {reg_b:#x}); guests start in 1970");
        BOOT_NS.store(at, Ordering::Relaxed);
        return;
    };
    let secs = t.to_unix().unwrap_or(0);
    BOOT_UNIX_NS.store(secs * NS_PER_SEC + fraction_ns, Ordering::Relaxed);
    BOOT_NS.store(at, Ordering::Relaxed);
    info!(
        "wallclock: {:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC from the RTC ({}, {})",
        t.year,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second,
        if aligned.is_some() { "at the second" } else { "no tick seen, +0.5 s" },
        if reg_b & rtc::b::DM_BINARY != 0 { "binary" } else { "BCD" },
    );
}

/// Unix time in ns at hypervisor time `now_ns` (`sched::run::now_ns`).
pub fn unix_ns(now_ns: u64) -> u64 {
    let boot_ns = BOOT_NS.load(Ordering::Relaxed);
    BOOT_UNIX_NS.load(Ordering::Relaxed).saturating_add(now_ns.saturating_sub(boot_ns))
}
