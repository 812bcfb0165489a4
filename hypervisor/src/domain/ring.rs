//! A byte ring that keeps the last `N` bytes written, addressed by absolute
//! offsets (bytes ever written), so readers need no state in the ring: a reader
//! passes the offset it reached and learns what it missed. Used for each
//! domain's console and for the hypervisor's log (`oxl console`, `oxl dmesg`).
//!
//! `InputQueue` is the same ring with one reader that consumes: a domain's
//! console input, where a byte must never be overwritten before it is read.

use alloc::boxed::Box;
use alloc::collections::TryReserveError;
use alloc::vec;
use alloc::vec::Vec;

/// Over any byte storage: a boxed slice (domain consoles) or an array (the
/// hypervisor's log, a static that exists before the heap does).
pub struct Ring<B = Box<[u8]>> {
    buf: B,
    /// Bytes ever written; the newest is at `(written - 1) % len`.
    written: u64,
}

/// What a read got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadResult {
    /// Bytes copied into the output.
    pub copied: usize,
    /// Offset after the last byte copied (pass it to the next read).
    pub next: u64,
    /// Bytes between the requested offset and the oldest byte still kept.
    pub lost: u64,
}

impl Ring {
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0);
        Self { buf: vec![0; capacity].into_boxed_slice(), written: 0 }
    }

    /// As `new`, but an allocation failure is an error, not a halt (a
    /// domain's console is made on dom0's request).
    pub fn try_new(capacity: usize) -> Result<Self, TryReserveError> {
        let mut v = Vec::new();
        v.try_reserve_exact(capacity.max(1))?;
        v.resize(capacity.max(1), 0);
        Ok(Self { buf: v.into_boxed_slice(), written: 0 })
    }
}

impl<const N: usize> Ring<[u8; N]> {
    /// A ring in an array, for statics.
    pub const fn new_array() -> Self {
        assert!(N > 0);
        Self { buf: [0; N], written: 0 }
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Ring<B> {
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn write(&mut self, bytes: &[u8]) {
        let buf = self.buf.as_mut();
        let cap = buf.len();
        // Only the last `cap` bytes can survive.
        let skip = bytes.len().saturating_sub(cap);
        self.written += skip as u64;
        let bytes = &bytes[skip..];
        // Two copies at most (up to the end, then from the start): a guest's
        // console write is done under the domain table's lock.
        let at = (self.written % cap as u64) as usize;
        let first = bytes.len().min(cap - at);
        buf[at..at + first].copy_from_slice(&bytes[..first]);
        buf[..bytes.len() - first].copy_from_slice(&bytes[first..]);
        self.written += bytes.len() as u64;
    }

    /// Copies bytes from `offset` on into `out`. An offset past the end reads
    /// nothing and returns the current end.
    pub fn read(&self, offset: u64, out: &mut [u8]) -> ReadResult {
        let buf = self.buf.as_ref();
        let cap = buf.len() as u64;
        let oldest = self.written.saturating_sub(cap);
        let start = offset.clamp(oldest, self.written);
        let lost = start - offset.min(start);
        let n = ((self.written - start) as usize).min(out.len());
        for (i, o) in out[..n].iter_mut().enumerate() {
            *o = buf[((start + i as u64) % cap) as usize];
        }
        ReadResult { copied: n, next: start + n as u64, lost }
    }
}

/// A first-in first-out byte queue over a `Ring`: writers add only what fits
/// (never overwriting unread bytes), the one reader takes them in order. A
/// domain's console input, filled by dom0 (`domctl::CONSOLE_INPUT`) and read
/// by the domain (`nr::CONSOLE_READ`, or its UART model).
pub struct InputQueue {
    ring: Ring,
    /// Offset of the next byte to take: `ring.written() - read` are queued.
    read: u64,
    /// Bytes came since the last `take` or `take_wake`: the reader, if it
    /// sleeps, is to be woken once (an edge, not the queue's level, so a
    /// reader that never reads still sleeps).
    wake: bool,
}

impl InputQueue {
    pub fn try_new(capacity: usize) -> Result<Self, TryReserveError> {
        Ok(Self { ring: Ring::try_new(capacity)?, read: 0, wake: false })
    }

    fn capacity(&self) -> usize {
        self.ring.buf.len()
    }

    /// Bytes queued and not taken yet.
    pub fn len(&self) -> usize {
        (self.ring.written() - self.read) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends what fits of `bytes`, from the front; returns how many.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.capacity() - self.len());
        self.ring.write(&bytes[..n]);
        self.wake |= n > 0;
        n
    }

    /// Whether bytes came since the reader last took or was woken, and
    /// forgets it. Ask only for a reader that sleeps: one that runs reads
    /// the queue anyway, and asking then would lose the wake-up of a reader
    /// that goes to sleep next.
    pub fn take_wake(&mut self) -> bool {
        core::mem::take(&mut self.wake)
    }

    /// Moves up to `out.len()` queued bytes, oldest first, into `out`.
    /// Whatever it gets, the reader has looked: only bytes that come after
    /// it wake the reader again.
    pub fn take(&mut self, out: &mut [u8]) -> usize {
        self.wake = false;
        let got = self.ring.read(self.read, out);
        // Never `lost`: `push` does not overwrite what is unread.
        debug_assert_eq!(got.lost, 0);
        self.read = got.next;
        got.copied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_queue_is_fifo_and_never_overwrites() {
        let mut q = InputQueue::try_new(4).unwrap();
        assert!(q.is_empty());
        assert_eq!(q.push(b"abcdef"), 4);
        assert_eq!(q.push(b"x"), 0);
        assert_eq!(q.len(), 4);
        let mut out = [0u8; 3];
        assert_eq!(q.take(&mut out), 3);
        assert_eq!(&out, b"abc");
        // Room for three again, across the ring's end.
        assert_eq!(q.push(b"123456"), 3);
        let mut out = [0u8; 8];
        let n = q.take(&mut out);
        assert_eq!(&out[..n], b"d123");
        assert_eq!(q.take(&mut out), 0);
        assert!(q.is_empty());
    }

    #[test]
    fn input_queue_wakes_once_per_arrival_not_while_bytes_wait() {
        let mut q = InputQueue::try_new(4).unwrap();
        assert!(!q.take_wake());
        q.push(b"ab");
        assert!(q.take_wake());
        // Still queued (the reader never reads), but no new arrival.
        assert!(!q.take_wake());
        q.push(b"c");
        // The reader read before it slept: no wake-up for what it has seen.
        let mut out = [0u8; 1];
        q.take(&mut out);
        assert!(!q.take_wake());
        // A full queue takes nothing: nothing new to wake for.
        q.push(b"xyz");
        q.take_wake();
        assert_eq!(q.push(b"!"), 0);
        assert!(!q.take_wake());
    }

    #[test]
    fn input_queue_against_a_model() {
        // Random pushes and takes of every size against a VecDeque.
        let mut q = InputQueue::try_new(7).unwrap();
        let mut model = std::collections::VecDeque::new();
        let mut x: u32 = 12345;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let mut byte = 0u8;
        for _ in 0..5000 {
            if next() % 2 == 0 {
                let len = (next() % 10) as usize;
                let data: Vec<u8> = (0..len).map(|_| {
                    byte = byte.wrapping_add(1);
                    byte
                }).collect();
                let n = q.push(&data);
                assert_eq!(n, len.min(7 - model.len()));
                model.extend(&data[..n]);
                // Bytes not taken are not queued: the next push starts after them.
                byte = byte.wrapping_sub((len - n) as u8);
            } else {
                let mut out = vec![0u8; (next() % 10) as usize];
                let n = q.take(&mut out);
                let want: Vec<u8> = model.drain(..n.min(model.len())).collect();
                assert_eq!(&out[..n], &want[..]);
                assert_eq!(n, want.len());
            }
            assert_eq!(q.len(), model.len());
        }
    }

    #[test]
    fn reads_what_was_written() {
        let mut r = Ring::new(8);
        r.write(b"hello");
        let mut out = [0u8; 16];
        let got = r.read(0, &mut out);
        assert_eq!(&out[..got.copied], b"hello");
        assert_eq!((got.next, got.lost), (5, 0));
        let got = r.read(5, &mut out);
        assert_eq!((got.copied, got.next), (0, 5));
    }

    #[test]
    fn wrapping_reports_lost_bytes() {
        let mut r = Ring::new(4);
        r.write(b"abcdef");
        let mut out = [0u8; 16];
        let got = r.read(0, &mut out);
        assert_eq!(&out[..got.copied], b"cdef");
        assert_eq!((got.next, got.lost), (6, 2));
        // A long write keeps only its tail.
        r.write(b"0123456789");
        let got = r.read(6, &mut out);
        assert_eq!(&out[..got.copied], b"6789");
        assert_eq!((got.next, got.lost), (16, 6));
    }

    #[test]
    fn writes_wrap_at_every_position() {
        // Against a byte-by-byte model, for every start offset and length.
        for cap in 1..6usize {
            for pre in 0..2 * cap {
                for len in 0..3 * cap {
                    let mut r = Ring::new(cap);
                    let mut model = Vec::new();
                    let head: Vec<u8> = (0..pre as u8).collect();
                    let data: Vec<u8> = (100..100 + len as u8).collect();
                    r.write(&head);
                    r.write(&data);
                    model.extend_from_slice(&head);
                    model.extend_from_slice(&data);
                    let mut out = [0u8; 8];
                    let got = r.read(0, &mut out);
                    let keep = model.len().min(cap);
                    assert_eq!(&out[..got.copied], &model[model.len() - keep..], "cap {cap} pre {pre} len {len}");
                    assert_eq!(got.next, model.len() as u64);
                }
            }
        }
    }

    #[test]
    fn array_rings_behave_the_same() {
        let mut r = Ring::<[u8; 4]>::new_array();
        r.write(b"abcdef");
        let mut out = [0u8; 8];
        let got = r.read(0, &mut out);
        assert_eq!(&out[..got.copied], b"cdef");
        assert_eq!((got.next, got.lost), (6, 2));
    }

    #[test]
    fn short_buffers_and_future_offsets() {
        let mut r = Ring::new(16);
        r.write(b"abcdef");
        let mut out = [0u8; 2];
        let got = r.read(1, &mut out);
        assert_eq!(&out, b"bc");
        assert_eq!(got.next, 3);
        let got = r.read(100, &mut out);
        assert_eq!((got.copied, got.next, got.lost), (0, 6, 0));
    }
}
