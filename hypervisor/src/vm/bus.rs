//! A domain's buses: which of its devices answers a port or a guest-physical
//! address. Ranges are registered once, when the domain's platform is made,
//! and looked up on every port-I/O exit and every nested-page fault outside
//! its RAM; what nobody claims goes to one default answer (`exit::io`: all
//! ones; a fault the domain's policy settles).
//!
//! Pure (host-tested): a sorted list of non-overlapping ranges, searched by
//! bisection. A device is named by a small `Copy` value of the platform's
//! choosing, so the bus holds no references and no locks.

use alloc::vec::Vec;

/// Two registrations would answer the same address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overlap {
    pub start: u64,
    pub len: u64,
}

/// Ranges `[start, start + len)` of one address space (ports or
/// guest-physical memory), each owned by device `D`.
#[derive(Clone, Debug)]
pub struct Bus<D: Copy> {
    /// Sorted by start; never overlapping.
    ranges: Vec<(u64, u64, D)>,
}

impl<D: Copy> Default for Bus<D> {
    fn default() -> Self {
        Self { ranges: Vec::new() }
    }
}

impl<D: Copy> Bus<D> {
    pub const fn new() -> Self {
        Self { ranges: Vec::new() }
    }

    /// Makes room for `n` more registrations (a registration that must not
    /// abort the hypervisor when the heap is short).
    pub fn try_reserve(&mut self, n: usize) -> Result<(), alloc::collections::TryReserveError> {
        self.ranges.try_reserve(n)
    }

    /// Registers `device` for `[start, start + len)`. Refused if empty, if it
    /// wraps, or if another device already has part of it.
    pub fn insert(&mut self, start: u64, len: u64, device: D) -> Result<(), Overlap> {
        let end = start.checked_add(len).filter(|_| len > 0).ok_or(Overlap { start, len })?;
        let at = self.ranges.partition_point(|&(s, _, _)| s < start);
        let after_prev = at == 0 || {
            let (s, l, _) = self.ranges[at - 1];
            s + l <= start
        };
        let before_next = self.ranges.get(at).is_none_or(|&(s, _, _)| end <= s);
        if !(after_prev && before_next) {
            return Err(Overlap { start, len });
        }
        self.ranges.insert(at, (start, len, device));
        Ok(())
    }

    /// The device claiming `addr`, and the start of its range.
    pub fn find(&self, addr: u64) -> Option<(u64, D)> {
        let at = self.ranges.partition_point(|&(s, _, _)| s <= addr);
        let &(s, l, d) = self.ranges.get(at.checked_sub(1)?)?;
        (addr - s < l).then_some((s, d))
    }

    /// Every registration, in address order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, D)> + '_ {
        self.ranges.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_owner_and_its_base() {
        let mut b = Bus::new();
        b.insert(0x3f8, 8, 'u').unwrap();
        b.insert(0x21, 1, 'p').unwrap();
        b.insert(0xcf8, 8, 'c').unwrap();
        assert_eq!(b.find(0x3f8), Some((0x3f8, 'u')));
        assert_eq!(b.find(0x3ff), Some((0x3f8, 'u')));
        assert_eq!(b.find(0x400), None);
        assert_eq!(b.find(0x3f7), None);
        assert_eq!(b.find(0x21), Some((0x21, 'p')));
        assert_eq!(b.find(0x20), None);
        assert_eq!(b.find(0), None);
        assert_eq!(b.find(u64::MAX), None);
        assert_eq!(b.iter().map(|(s, _, _)| s).collect::<Vec<_>>(), [0x21, 0x3f8, 0xcf8]);
    }

    #[test]
    fn refuses_overlaps_empty_and_wrapping_ranges() {
        let mut b = Bus::new();
        b.insert(0x1000, 0x1000, 1).unwrap();
        for (s, l) in [(0x1000, 1), (0xfff, 2), (0x1fff, 1), (0x800, 0x2000), (0x1800, 0x10)] {
            assert_eq!(b.insert(s, l, 2), Err(Overlap { start: s, len: l }), "{s:#x}+{l:#x}");
        }
        assert!(b.insert(0x5000, 0, 2).is_err());
        assert!(b.insert(u64::MAX, 2, 2).is_err());
        // Touching is not overlapping.
        b.insert(0x2000, 0x1000, 3).unwrap();
        b.insert(0xff0, 0x10, 4).unwrap();
        assert_eq!(b.find(0x2000), Some((0x2000, 3)));
        assert_eq!(b.find(0x1fff), Some((0x1000, 1)));
        assert_eq!(b.find(0xfff), Some((0xff0, 4)));
    }

    #[test]
    fn lookup_agrees_with_a_linear_scan() {
        // Pseudo-random ranges, kept where they fit, then every address near
        // them looked up both ways.
        let mut b = Bus::new();
        let mut kept = Vec::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..200u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (s, l) = (x % 0x10_000, 1 + (x >> 32) % 0x40);
            if b.insert(s, l, i).is_ok() {
                kept.push((s, l, i));
            }
        }
        for &(s, l, _) in &kept {
            for a in [s.saturating_sub(1), s, s + l / 2, s + l - 1, s + l] {
                let linear = kept.iter().find(|&&(s, l, _)| a >= s && a < s + l).map(|&(s, _, d)| (s, d));
                assert_eq!(b.find(a), linear, "{a:#x}");
            }
        }
    }
}
