//! TLB tags (VPIDs on VT-x, ASIDs on AMD-V) as a per-CPU cache, as Xen and KVM
//! keep them: a CPU hands out its tags one after the other, each to the vCPU
//! that runs next without a valid one; when they run out it starts a new
//! generation with a full flush of its TLB and hands them out again. A tag is
//! therefore only ever valid on one CPU and in one generation, and the number
//! of tags a CPU has never limits how many domains or vCPUs exist.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use spin::Mutex;

/// One CPU's tags 1..=`max` (0 is the host's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TagCache {
    generation: u64,
    next: u32,
}

/// A tag as a vCPU holds it: where and when it was handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub cpu: u32,
    pub generation: u64,
    pub tag: u16,
}

/// What `TagCache::assign` decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assigned {
    pub held: Held,
    /// A tag other than the one the vCPU had: write it to the VMCS/VMCB.
    pub changed: bool,
    /// A new generation began: flush every tag's translations on this CPU
    /// before entering the guest.
    pub flush_all: bool,
}

impl TagCache {
    pub const fn new() -> Self {
        Self { generation: 1, next: 1 }
    }

    /// Ends the generation: the next `assign` hands out a new one with a
    /// full flush, whatever tag the vCPU held.
    pub fn retire(&mut self) {
        self.generation += 1;
        self.next = u32::MAX;
    }

    /// The tag for a vCPU about to run on `cpu`, which held `held` (if any).
    /// A tag handed out in the current generation has not tagged anything on
    /// this CPU since the last full flush, so a fresh one needs no flush.
    pub fn assign(&mut self, cpu: u32, max: u16, held: Option<Held>) -> Assigned {
        if let Some(h) = held.filter(|h| h.cpu == cpu && h.generation == self.generation && h.tag != 0) {
            return Assigned { held: h, changed: false, flush_all: false };
        }
        let mut flush_all = false;
        if self.next > u32::from(max) {
            self.generation += 1;
            self.next = 1;
            flush_all = true;
        }
        let tag = self.next as u16;
        self.next += 1;
        Assigned { held: Held { cpu, generation: self.generation, tag }, changed: true, flush_all }
    }
}

impl Default for TagCache {
    fn default() -> Self {
        Self::new()
    }
}

/// The most CPUs Oxen brings up (`arch::x86_64::smp`).
const MAX_CPUS: usize = 64;

/// Each CPU's cache; only that CPU takes its lock (when it enters a guest).
static CACHES: [Mutex<TagCache>; MAX_CPUS] = [const { Mutex::new(TagCache::new()) }; MAX_CPUS];

/// Flushes asked of each CPU (a sequence number; `mem::foreign`'s
/// shootdowns), and the last one its entries have honoured.
static FLUSH_WANTED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static FLUSH_DONE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// The CPU waits for others' flushes with its own guest stopped (a wake
/// interrupt pending for its run loop): it enters no guest before `assign`.
static WAITING: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// `TagCache::assign` on `cpu`'s cache, which starts a new generation (a full
/// flush of the CPU's guest translations, every tag's) if a flush was asked
/// since the last. Called before a vCPU's slice on that CPU.
pub fn assign(cpu: u32, max: u16, held: Option<Held>) -> Assigned {
    let i = cpu as usize % MAX_CPUS;
    let mut cache = CACHES[i].lock();
    let wanted = FLUSH_WANTED[i].load(Ordering::SeqCst);
    if wanted > FLUSH_DONE[i].load(Ordering::SeqCst) {
        cache.retire();
        FLUSH_DONE[i].store(wanted, Ordering::SeqCst);
    }
    cache.assign(cpu, max, held)
}

/// Asks `cpu` to flush at its next `assign` (flush `seq`).
pub fn request_flush(cpu: u32, seq: u64) {
    FLUSH_WANTED[cpu as usize % MAX_CPUS].fetch_max(seq, Ordering::SeqCst);
}

/// Whether `cpu` honoured flush `seq`, or waits with its guest stopped.
pub fn flushed_or_waiting(cpu: u32, seq: u64) -> bool {
    let i = cpu as usize % MAX_CPUS;
    FLUSH_DONE[i].load(Ordering::SeqCst) >= seq || WAITING[i].load(Ordering::SeqCst)
}

pub fn set_waiting(cpu: u32, waiting: bool) {
    WAITING[cpu as usize % MAX_CPUS].store(waiting, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_kept_while_valid_and_recycled_with_a_flush() {
        let mut c = TagCache::new();
        let a = c.assign(0, 2, None);
        assert_eq!((a.held.tag, a.changed, a.flush_all), (1, true, false));
        // Same CPU, same generation: kept.
        assert_eq!(c.assign(0, 2, Some(a.held)), Assigned { held: a.held, changed: false, flush_all: false });
        let b = c.assign(0, 2, None);
        assert_eq!(b.held.tag, 2);
        // Out of tags: a new generation, a flush, tag 1 again.
        let d = c.assign(0, 2, None);
        assert_eq!((d.held.tag, d.held.generation, d.flush_all), (1, 2, true));
        // The first vCPU's tag is from the old generation: it gets a new one.
        let a2 = c.assign(0, 2, Some(a.held));
        assert_eq!((a2.held.tag, a2.changed, a2.flush_all), (2, true, false));
    }

    #[test]
    fn a_retired_generation_flushes_even_for_a_valid_tag() {
        let mut c = TagCache::new();
        let a = c.assign(0, 8, None);
        c.retire();
        let b = c.assign(0, 8, Some(a.held));
        assert!(b.changed && b.flush_all, "{b:?}");
        assert_eq!(b.held.tag, 1);
        assert_eq!(c.assign(0, 8, Some(b.held)), Assigned { held: b.held, changed: false, flush_all: false });
    }

    #[test]
    fn a_tag_from_another_cpu_is_not_reused() {
        let mut c = TagCache::new();
        let moved = Held { cpu: 1, generation: 1, tag: 1 };
        let a = c.assign(0, 8, Some(moved));
        assert!(a.changed);
        assert_eq!(a.held.cpu, 0);
    }

    #[test]
    fn five_hundred_vcpus_on_fifteen_asids() {
        let mut c = TagCache::new();
        let mut held: Vec<Option<Held>> = vec![None; 500];
        let mut flushes = 0;
        for round in 0..3 {
            for h in held.iter_mut() {
                let a = c.assign(0, 15, *h);
                flushes += u32::from(a.flush_all);
                *h = Some(a.held);
                assert!((1..=15).contains(&a.held.tag), "round {round}");
            }
        }
        // 1500 assignments, 15 per generation.
        assert_eq!(flushes, 1500 / 15 - 1);
    }
}
