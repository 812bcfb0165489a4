//! Rate limits for what guests make the hypervisor print (pure, host-tested):
//! a token bucket, and on top of it a limiter for log lines that counts what
//! it drops so the next line printed can say how many were suppressed.
//!
//! The serial line is shared by every domain and a write to it waits for the
//! UART (115200 baud: about 11.5 KB/s for the whole machine), so each domain
//! gets its own small share and whatever goes over it is dropped from the
//! serial echo (a domain's console ring keeps it for `oxl console`).

use alloc::collections::TryReserveError;
use alloc::vec::Vec;
use core::fmt::Write;

/// A token bucket: `rate` tokens a second, at most `burst` saved up. Time is
/// in nanoseconds (any monotonic clock); tokens are counted in
/// token-nanoseconds so slow rates refill without rounding to zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// Available tokens times 1e9.
    level: u128,
    /// When `level` was last brought up to date.
    last_ns: u64,
    rate: u64,
    burst: u64,
}

const NS: u128 = 1_000_000_000;

impl Bucket {
    /// A full bucket (a new domain may print its burst at once).
    pub const fn new(rate: u64, burst: u64, now_ns: u64) -> Self {
        Self { level: burst as u128 * NS, last_ns: now_ns, rate, burst }
    }

    fn refill(&mut self, now_ns: u64) {
        // A clock read on another CPU may be a little behind: never go back.
        let dt = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        self.level = (self.level + u128::from(dt) * u128::from(self.rate)).min(u128::from(self.burst) * NS);
    }

    /// Tokens available now.
    pub fn available(&mut self, now_ns: u64) -> u64 {
        self.refill(now_ns);
        (self.level / NS) as u64
    }

    /// Takes up to `n` tokens; returns how many it got.
    pub fn take(&mut self, now_ns: u64, n: u64) -> u64 {
        let got = self.available(now_ns).min(n);
        self.level -= u128::from(got) * NS;
        got
    }

    /// When `n` tokens will be available (now if they are; `u64::MAX` if never:
    /// more than the burst, or no refill).
    pub fn ready_at(&self, n: u64) -> u64 {
        let want = u128::from(n) * NS;
        if want <= self.level {
            return self.last_ns;
        }
        if n > self.burst || self.rate == 0 {
            return u64::MAX;
        }
        let wait = (want - self.level).div_ceil(u128::from(self.rate));
        u64::try_from(u128::from(self.last_ns) + wait).unwrap_or(u64::MAX)
    }
}

/// Limits guest-triggered log lines (refusals, crashes): `burst` lines at
/// once, then `per_s` a second; the dropped ones are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineLimit {
    bucket: Bucket,
    suppressed: u64,
}

impl LineLimit {
    pub const fn new(per_s: u64, burst: u64, now_ns: u64) -> Self {
        Self { bucket: Bucket::new(per_s, burst, now_ns), suppressed: 0 }
    }

    /// Whether to print a line now: `Some(k)` yes, after a line saying `k`
    /// lines were suppressed since the last one printed (when `k > 0`);
    /// `None`: drop it (counted).
    pub fn allow(&mut self, now_ns: u64) -> Option<u64> {
        if self.bucket.take(now_ns, 1) == 1 {
            Some(core::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// Lines dropped since the last one printed.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// The count of dropped lines, once a line may be printed again (the
    /// count's own line takes that place); `None` if nothing is due.
    pub fn flush(&mut self, now_ns: u64) -> Option<u64> {
        if self.suppressed == 0 || self.bucket.take(now_ns, 1) == 0 {
            return None;
        }
        Some(core::mem::take(&mut self.suppressed))
    }

    /// When `flush` will have something (`u64::MAX`: nothing dropped).
    pub fn again_ns(&self) -> u64 {
        if self.suppressed == 0 {
            u64::MAX
        } else {
            self.bucket.ready_at(1)
        }
    }
}

/// Longest line echoed whole; a longer one is cut into lines of this length.
pub const LINE_MAX: usize = 200;
/// Room kept free in the queue for the "suppressed" line.
const MARKER_ROOM: usize = 48;

/// The serial echo of one domain's console, filled where the guest writes
/// (under the domain table's lock: only copies and arithmetic) and emptied
/// by whoever prints to the UART, outside that lock. Bytes over the
/// domain's share, or while the queue is full, are skipped and counted; the
/// echo then stays muted until `resume` bytes of share have come back, and
/// says "... N bytes suppressed" when it resumes, so a flooding guest costs
/// one such line per `resume / rate` seconds.
///
/// Control characters become `.` (a guest cannot move the terminal's cursor
/// over the hypervisor's lines); a line is queued whole, after its newline.
pub struct Echo {
    bucket: Bucket,
    resume: u64,
    muted: bool,
    /// Bytes skipped since the echo was last unmuted.
    suppressed: u64,
    /// The open line (capacity `LINE_MAX`, reserved up front).
    line: Vec<u8>,
    /// Whole lines, each ending in `\n`, not printed yet.
    queue: Vec<u8>,
    /// `queue` never holds more (its capacity is at least this).
    queue_max: usize,
}

impl Echo {
    /// Reserves both buffers now, so no later write allocates.
    pub fn try_new(rate: u64, burst: u64, resume: u64, queue_bytes: usize, now_ns: u64) -> Result<Self, TryReserveError> {
        let mut line = Vec::new();
        line.try_reserve_exact(LINE_MAX)?;
        let mut queue = Vec::new();
        queue.try_reserve_exact(queue_bytes.max(LINE_MAX + 1 + MARKER_ROOM))?;
        Ok(Self {
            bucket: Bucket::new(rate, burst, now_ns),
            resume: resume.min(burst),
            muted: false,
            suppressed: 0,
            line,
            queue,
            queue_max: queue_bytes.max(LINE_MAX + 1 + MARKER_ROOM),
        })
    }

    /// Bytes the guest wrote to its console (its ring has them all).
    pub fn write(&mut self, now_ns: u64, bytes: &[u8]) {
        self.tick(now_ns);
        if self.muted {
            self.suppressed += bytes.len() as u64;
            return;
        }
        let n = self.bucket.take(now_ns, bytes.len() as u64) as usize;
        let fed = bytes[..n].iter().take_while(|&&b| self.feed(b)).count();
        if fed < bytes.len() {
            self.mute();
            self.suppressed += (bytes.len() - fed) as u64;
        }
    }

    /// Unmutes once the share is back (queueing the "suppressed" line), even
    /// when the guest writes nothing more.
    pub fn tick(&mut self, now_ns: u64) {
        if !self.muted || self.bucket.available(now_ns) < self.resume {
            return;
        }
        // Muted because nobody printed the queue: wait until it has room again.
        if self.queue.len() + MARKER_ROOM + LINE_MAX + 1 > self.queue_max {
            return;
        }
        let mut marker = [0u8; MARKER_ROOM];
        let mut w = SliceWriter { buf: &mut marker, len: 0 };
        let _ = writeln!(w, "... {} bytes suppressed", self.suppressed);
        let len = w.len;
        if self.queue.len() + len <= self.queue_max {
            self.queue.extend_from_slice(&marker[..len]);
            self.muted = false;
            self.suppressed = 0;
        }
    }

    /// When `tick` will have something to do (`u64::MAX`: never by itself).
    pub fn again_ns(&self) -> u64 {
        if self.muted {
            self.bucket.ready_at(self.resume)
        } else {
            u64::MAX
        }
    }

    /// Whether whole lines wait to be printed.
    pub fn has_lines(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Moves whole lines (each ending in `\n`) into `out`, as many as fit;
    /// returns the bytes moved.
    pub fn take(&mut self, out: &mut [u8]) -> usize {
        let fit = self.queue.len().min(out.len());
        let n = self.queue[..fit].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        out[..n].copy_from_slice(&self.queue[..n]);
        self.queue.drain(..n);
        n
    }

    /// Queues the open line, if any (the domain is going away).
    pub fn close_line(&mut self) {
        if !self.line.is_empty() && !self.end_line() {
            self.suppressed += self.line.len() as u64;
            self.line.clear();
        }
    }

    /// Bytes skipped and not yet reported.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// One byte of output; false if there is no room for it.
    fn feed(&mut self, b: u8) -> bool {
        match b {
            b'\n' => self.end_line(),
            b'\r' => true,
            _ => {
                if self.line.len() >= LINE_MAX && !self.end_line() {
                    return false;
                }
                let safe = if (b < 0x20 && b != b'\t') || b == 0x7f { b'.' } else { b };
                self.line.push(safe);
                true
            }
        }
    }

    /// Moves the open line into the queue, keeping room for the marker.
    fn end_line(&mut self) -> bool {
        if self.queue.len() + self.line.len() + 1 + MARKER_ROOM > self.queue_max {
            return false;
        }
        self.queue.extend_from_slice(&self.line);
        self.queue.push(b'\n');
        self.line.clear();
        true
    }

    fn mute(&mut self) {
        self.muted = true;
        // The open line is printed now rather than left hanging.
        self.close_line();
    }
}

/// `fmt::Write` into a fixed buffer (the marker line, without allocating).
struct SliceWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        self.buf.get_mut(self.len..end).ok_or(core::fmt::Error)?.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    const S: u64 = 1_000_000_000;

    #[test]
    fn bucket_refills_at_its_rate_up_to_its_burst() {
        let mut b = Bucket::new(100, 50, 0);
        assert_eq!(b.take(0, 80), 50);
        assert_eq!(b.take(0, 1), 0);
        assert_eq!(b.available(S / 10), 10);
        assert_eq!(b.ready_at(30), S / 10 + S / 5);
        assert_eq!(b.available(100 * S), 50);
        assert_eq!(b.ready_at(51), u64::MAX);
        // A clock a little behind does not drain or overfill it.
        assert_eq!(b.take(99 * S, 5), 5);
        assert_eq!(b.available(100 * S), 45);
    }

    #[test]
    fn slow_rates_refill_without_rounding_away() {
        let mut b = Bucket::new(3, 3, 0);
        assert_eq!(b.take(0, 3), 3);
        // A third of a second, in many small steps.
        for i in 1..=1000 {
            b.refill(i * S / 3000);
        }
        assert_eq!(b.available(S / 3 + 1), 1);
    }

    #[test]
    fn line_limit_counts_what_it_drops() {
        let mut l = LineLimit::new(1, 3, 0);
        assert_eq!([l.allow(0), l.allow(0), l.allow(0)], [Some(0); 3]);
        assert_eq!(l.allow(0), None);
        assert_eq!(l.allow(S / 2), None);
        assert_eq!(l.suppressed(), 2);
        assert_eq!(l.allow(S), Some(2));
        assert_eq!(l.allow(S), None);
        assert_eq!(l.allow(2 * S), Some(1));
        assert_eq!(l.allow(2 * S), None);
        assert_eq!(l.flush(2 * S), None);
        assert_eq!(l.again_ns(), 3 * S);
        assert_eq!(l.flush(3 * S), Some(1));
        assert_eq!((l.flush(9 * S), l.again_ns()), (None, u64::MAX));
    }

    fn echo() -> Echo {
        Echo::try_new(1000, 4000, 1000, 4096, 0).unwrap()
    }

    fn drain(e: &mut Echo) -> Vec<u8> {
        let mut out = [0u8; 1024];
        let mut all = Vec::new();
        loop {
            let n = e.take(&mut out);
            if n == 0 {
                return all;
            }
            all.extend_from_slice(&out[..n]);
        }
    }

    #[test]
    fn echo_queues_whole_clean_lines() {
        let mut e = echo();
        e.write(0, b"hello\r\nwor");
        assert_eq!(drain(&mut e), b"hello\n");
        e.write(0, b"ld \x1b[2J\x07\tok\n");
        assert_eq!(drain(&mut e), b"world .[2J.\tok\n");
        // A long line is cut, not lost.
        e.write(0, &[b'x'; LINE_MAX + 5]);
        e.write(0, b"\n");
        let out = drain(&mut e);
        assert_eq!(out.len(), LINE_MAX + 5 + 2);
        assert_eq!(out[LINE_MAX], b'\n');
        assert_eq!(e.suppressed(), 0);
    }

    #[test]
    fn take_moves_only_whole_lines_that_fit() {
        let mut e = echo();
        e.write(0, b"aaaa\nbbbb\n");
        let mut out = [0u8; 7];
        assert_eq!(e.take(&mut out), 5);
        assert_eq!(&out[..5], b"aaaa\n");
        assert_eq!(e.take(&mut out), 5);
        assert!(!e.has_lines());
    }

    #[test]
    fn a_flood_is_cut_to_its_share_with_one_line_per_resume() {
        let mut e = echo();
        let (mut printed, mut markers, mut reported) = (0u64, 0, 0u64);
        let chunk = [b'#'; 4096];
        let mut written = 0u64;
        // 1 MiB without a newline in 4 KiB writes over 10 s, drained every 10 ms.
        for i in 0..256u64 {
            let now = i * 10 * S / 256;
            e.write(now, &chunk);
            written += 4096;
            e.tick(now);
            for line in drain(&mut e).split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                match core::str::from_utf8(line).ok().and_then(|l| l.strip_prefix("... ")) {
                    Some(rest) => {
                        markers += 1;
                        reported += rest.trim_end_matches(" bytes suppressed").parse::<u64>().unwrap();
                    }
                    None => printed += line.len() as u64,
                }
            }
        }
        // The burst, then about the rate (1000 bytes/s for 10 s).
        assert!((4000..=4000 + 10 * 1000).contains(&printed), "{printed}");
        // One line per resume (1000 bytes of share at 1000/s): about one a second.
        assert!((5..=11).contains(&markers), "{markers}");
        // Every byte is printed, reported or still counted.
        assert_eq!(printed + reported + e.suppressed(), written);
        assert!(e.again_ns() > 10 * S - S / 10 && e.again_ns() != u64::MAX);
    }

    #[test]
    fn the_suppressed_line_comes_once_share_is_back_even_without_new_output() {
        let mut e = echo();
        e.write(0, b"start ");
        e.write(0, &[b'y'; 5000]);
        // The open line is ended when the echo mutes, not left hanging.
        let out = drain(&mut e);
        assert!(out.starts_with(b"start yyy") && out.ends_with(b"y\n"), "{out:?}");
        assert_eq!(out.iter().filter(|&&b| b != b'\n').count(), 4000);
        assert_eq!(e.again_ns(), S);
        e.tick(S / 2);
        assert!(!e.has_lines());
        e.tick(S);
        assert_eq!(drain(&mut e), b"... 1006 bytes suppressed\n");
        assert_eq!(e.again_ns(), u64::MAX);
        e.write(S, b"back\n");
        assert_eq!(drain(&mut e), b"back\n");
    }

    #[test]
    fn a_full_queue_mutes_the_echo_too() {
        // A generous share, but nobody drains the queue.
        let mut e = Echo::try_new(1 << 30, 1 << 30, 100, 1024, 0).unwrap();
        for _ in 0..100 {
            e.write(0, b"0123456789012345678\n");
        }
        let out = drain(&mut e);
        assert!(out.len() <= 1024 && out.len().is_multiple_of(20), "{}", out.len());
        assert_eq!(out.len() as u64 + e.suppressed(), 2000);
        e.tick(1);
        assert!(drain(&mut e).starts_with(b"... "));
    }
}
