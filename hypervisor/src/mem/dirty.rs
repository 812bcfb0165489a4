//! A domain's dirty-page log: one bit per 4 KiB guest page, set when the guest
//! writes a page that log-dirty mode had write-protected (the nested-page
//! fault handler marks it and gives write access back to that page alone), and
//! read and cleared by whoever copies memory out — Xen's "peek and clean"
//! (`XEN_DOMCTL_SHADOW_OP_CLEAN`), the base of live migration's pre-copy rounds.
//!
//! Pure bookkeeping: what to write-protect and when to flush TLBs is the
//! caller's (`mem::paging::PageTable::set_flags`).

use super::paging::{EntryFormat, MapError, MapFlags, PageTable, TableMemory};
use alloc::vec::Vec;

const PAGE: u64 = 4096;

/// Takes write access from (`write` false) or gives it back to (`write`
/// true) each 4 KiB page of `pages` (guest frame numbers) in `pt`: a huge
/// page that holds one is split to 4 KiB pages first (its other pages keep
/// their flags), so that a write fault names one page. Pages not mapped are
/// skipped. Returns how many changed. The caller flushes the TLBs after
/// taking access away (a page given back needs no flush: the stale
/// read-only entry faults once and the fault handler finds it writable).
pub fn set_write<F: EntryFormat>(
    pt: &mut PageTable<F>,
    mem: &mut impl TableMemory,
    pages: impl IntoIterator<Item = u64>,
    write: bool,
) -> Result<u64, MapError> {
    let mut changed = 0;
    for page in pages {
        let gpa = page.checked_mul(PAGE).ok_or(MapError::NotMapped)?;
        let Some((_, flags)) = pt.translate(mem, gpa) else { continue };
        let want = if write { flags | MapFlags::WRITE } else { flags - MapFlags::WRITE };
        if want != flags {
            pt.set_flags(mem, gpa, want)?;
            changed += 1;
        }
    }
    Ok(changed)
}

/// The pages whose bits are set in `words`, the first word's bit 0 being
/// page `first`.
pub fn pages_in(first: u64, words: &[u64]) -> impl Iterator<Item = u64> + '_ {
    words.iter().enumerate().flat_map(move |(i, &w)| {
        let base = first + i as u64 * WORD_BITS;
        BitIter(w).map(move |b| base + b)
    })
}

/// Bits per word of the log (and of the words `take` copies out).
pub const WORD_BITS: u64 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirtyError {
    /// The heap could not hold the bitmap.
    OutOfMemory,
    /// A range that ends past the guest's last page, or an output buffer that
    /// does not hold it.
    OutOfRange,
    /// `first` not a multiple of `WORD_BITS` (ranges are copied word by word).
    Misaligned,
}

/// One bit per page of a guest of `pages` 4 KiB pages.
#[derive(Debug)]
pub struct DirtyLog {
    words: Vec<u64>,
    pages: u64,
    /// Bits set now (kept so that a round's size is known without a scan).
    dirty: u64,
    /// Write faults the log took (each one exit of the guest), `CLEAN`s,
    /// the pages they protected again and the time they took with their
    /// TLB flushes: the figures `DISABLE` logs.
    pub faults: u64,
    pub cleans: u64,
    pub reprotected: u64,
    pub clean_ns: u64,
}

impl DirtyLog {
    /// A clean log for `pages` pages; the bitmap is allocated fallibly (a
    /// 512 GiB guest needs 16 MiB of it).
    pub fn new(pages: u64) -> Result<Self, DirtyError> {
        let n = usize::try_from(pages.div_ceil(WORD_BITS)).map_err(|_| DirtyError::OutOfMemory)?;
        let mut words = Vec::new();
        words.try_reserve_exact(n).map_err(|_| DirtyError::OutOfMemory)?;
        words.resize(n, 0);
        Ok(Self { words, pages, dirty: 0, faults: 0, cleans: 0, reprotected: 0, clean_ns: 0 })
    }

    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Pages marked since the last `take` of them.
    pub fn count(&self) -> u64 {
        self.dirty
    }

    /// Marks `page` dirty; true if it was clean. A page past the guest's end
    /// (not RAM: the caller's fault handler should not get here) is ignored.
    pub fn mark(&mut self, page: u64) -> bool {
        if page >= self.pages {
            return false;
        }
        let (w, bit) = ((page / WORD_BITS) as usize, 1u64 << (page % WORD_BITS));
        let was_clean = self.words[w] & bit == 0;
        self.words[w] |= bit;
        self.dirty += u64::from(was_clean);
        was_clean
    }

    /// Marks every page dirty: the first round of a migration sends all of them.
    pub fn mark_all(&mut self) {
        let full = self.pages / WORD_BITS;
        for w in &mut self.words[..full as usize] {
            *w = u64::MAX;
        }
        let tail = self.pages % WORD_BITS;
        if tail != 0 {
            self.words[full as usize] = (1u64 << tail) - 1;
        }
        self.dirty = self.pages;
    }

    pub fn is_dirty(&self, page: u64) -> bool {
        page < self.pages && self.words[(page / WORD_BITS) as usize] & (1 << (page % WORD_BITS)) != 0
    }

    /// The words `take` and `peek` copy for a range starting at page `first`
    /// into `len` words: the first word and how many exist (the rest of the
    /// output reads clean).
    fn window(&self, first: u64, len: usize) -> Result<(usize, usize), DirtyError> {
        if !first.is_multiple_of(WORD_BITS) {
            return Err(DirtyError::Misaligned);
        }
        if first >= self.pages && !(first == 0 && self.pages == 0) {
            return Err(DirtyError::OutOfRange);
        }
        let w0 = (first / WORD_BITS) as usize;
        Ok((w0, len.min(self.words.len() - w0)))
    }

    /// Copies the bits of pages `[first, first + out.len() * 64)` (clipped to
    /// the guest's end; bits past it read as clean) into `out` and clears
    /// them: those pages start the next round clean. Returns how many were
    /// dirty. Checked before anything changes.
    pub fn take(&mut self, first: u64, out: &mut [u64]) -> Result<u64, DirtyError> {
        let (w0, n) = self.window(first, out.len())?;
        let mut taken = 0;
        for (o, w) in out.iter_mut().zip(&mut self.words[w0..w0 + n]) {
            *o = core::mem::take(w);
            taken += u64::from(o.count_ones());
        }
        for o in &mut out[n..] {
            *o = 0;
        }
        self.dirty -= taken;
        Ok(taken)
    }

    /// The dirty pages in order, without clearing them.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        pages_in(0, &self.words)
    }

    /// Copies the bits of `[first, first + out.len() * 64)` into `out`
    /// without clearing them (`PEEK`); same checks and clipping as `take`.
    pub fn peek(&self, first: u64, out: &mut [u64]) -> Result<u64, DirtyError> {
        let (w0, n) = self.window(first, out.len())?;
        out[..n].copy_from_slice(&self.words[w0..w0 + n]);
        out[n..].fill(0);
        Ok(out.iter().map(|w| u64::from(w.count_ones())).sum())
    }
}

/// The set bits of a word, lowest first.
struct BitIter(u64);

impl Iterator for BitIter {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        if self.0 == 0 {
            return None;
        }
        let b = self.0.trailing_zeros();
        self.0 &= self.0 - 1;
        Some(u64::from(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn mark_count_and_take() {
        // 130 pages: two full words and two bits of a third.
        let mut log = DirtyLog::new(130).unwrap();
        assert_eq!(log.count(), 0);
        assert!(log.mark(0));
        assert!(log.mark(129));
        assert!(!log.mark(129), "a second write to a dirty page is not new");
        assert!(!log.mark(130), "past the end: ignored");
        assert!(log.mark(64));
        assert_eq!(log.count(), 3);
        assert_eq!(log.iter().collect::<Vec<_>>(), vec![0, 64, 129]);

        let mut out = [u64::MAX; 2];
        assert_eq!(log.take(0, &mut out), Ok(2));
        assert_eq!(out, [1, 1]);
        assert_eq!(log.count(), 1);
        assert!(!log.is_dirty(0) && !log.is_dirty(64) && log.is_dirty(129));
        // The last word, with room to spare: the spare words read clean.
        let mut out = [u64::MAX; 4];
        assert_eq!(log.take(128, &mut out), Ok(1));
        assert_eq!(out, [2, 0, 0, 0]);
        assert_eq!(log.count(), 0);
        assert_eq!(log.iter().count(), 0);
    }

    #[test]
    fn peek_copies_without_clearing() {
        let mut log = DirtyLog::new(200).unwrap();
        for p in [1, 70, 199] {
            log.mark(p);
        }
        let mut out = [u64::MAX; 4];
        assert_eq!(log.peek(64, &mut out), Ok(2));
        assert_eq!(out, [1 << 6, 0, 1 << 7, 0]);
        assert_eq!(log.count(), 3, "nothing cleared");
        assert_eq!(log.peek(3, &mut out), Err(DirtyError::Misaligned));
        assert_eq!(log.peek(256, &mut out), Err(DirtyError::OutOfRange));
        assert_eq!(pages_in(64, &out).collect::<Vec<_>>(), vec![70, 199]);
        let mut out = [0u64; 4];
        assert_eq!(log.take(0, &mut out), Ok(3));
        assert_eq!(pages_in(0, &out).collect::<Vec<_>>(), vec![1, 70, 199]);
    }

    #[test]
    fn bad_ranges_change_nothing() {
        let mut log = DirtyLog::new(100).unwrap();
        log.mark(5);
        let mut out = [0u64; 1];
        assert_eq!(log.take(3, &mut out), Err(DirtyError::Misaligned));
        assert_eq!(log.take(128, &mut out), Err(DirtyError::OutOfRange));
        assert_eq!(log.take(u64::MAX - 63, &mut out), Err(DirtyError::OutOfRange));
        assert_eq!(log.count(), 1);
        assert!(log.is_dirty(5));
    }

    #[test]
    fn mark_all_sets_exactly_the_guests_pages() {
        for pages in [0u64, 1, 63, 64, 65, 4096, 32768 + 5] {
            let mut log = DirtyLog::new(pages).unwrap();
            log.mark_all();
            assert_eq!(log.count(), pages);
            assert_eq!(log.iter().count() as u64, pages);
            assert!(!log.is_dirty(pages));
            let mut out = vec![0u64; pages.div_ceil(64) as usize + 1];
            if pages > 0 {
                assert_eq!(log.take(0, &mut out), Ok(pages));
            }
            assert_eq!(log.count(), 0);
        }
    }

    #[test]
    fn count_matches_a_model_under_random_marks() {
        // A small xorshift so the test is reproducible without a crate.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let pages = 1000;
        let mut log = DirtyLog::new(pages).unwrap();
        let mut model = vec![false; pages as usize];
        for round in 0..20 {
            for _ in 0..300 {
                let p = next() % (pages + 10);
                let new = log.mark(p);
                if p < pages {
                    assert_eq!(new, !model[p as usize]);
                    model[p as usize] = true;
                }
            }
            assert_eq!(log.count(), model.iter().filter(|&&d| d).count() as u64, "round {round}");
            if round % 3 == 0 {
                let mut out = vec![0u64; 16];
                let taken = log.take(0, &mut out).unwrap();
                let listed: u64 = out.iter().map(|w| u64::from(w.count_ones())).sum();
                assert_eq!(taken, listed);
                for (p, d) in model.iter_mut().enumerate() {
                    assert_eq!(out[p / 64] & (1 << (p % 64)) != 0, *d);
                    *d = false;
                }
                assert_eq!(log.count(), 0);
            }
        }
    }
}
