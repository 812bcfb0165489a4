//! The credit scheduler, modelled on Xen's (`xen/common/sched_credit.c`).
//!
//! Every pCPU has a run queue in three priority classes, BOOST > UNDER > OVER,
//! FIFO within a class. A vCPU's credit is CPU time in nanoseconds: running
//! spends it at the rate it runs, and every accounting period the time the
//! pCPUs were busy is handed back out in proportion to the domains' weights.
//! Credit ≥ 0 queues a vCPU as UNDER, below 0 as OVER. A vCPU woken from
//! blocking with credit left is queued as BOOST and preempts whatever runs at
//! a lower priority, for at most `boost_ns`. A capped domain spends a budget
//! that accounting refills by `cap`% of the elapsed time; when it is spent its
//! vCPUs are parked until the refill.
//!
//! Where this differs from Xen, and why:
//! - Credit is charged exactly (time passed in at every call), not sampled by
//!   a 10 ms tick, so there is no tick: only deadlines.
//! - What accounting hands out is the time the pCPUs were actually busy, each
//!   pCPU's time going only to vCPUs allowed on it, none taking more than one
//!   pCPU's worth, and a vCPU that sleeps keeping at most `credit_bound`
//!   (water-filling: what one cannot take goes to the others). Xen hands out
//!   every pCPU's full period, so vCPUs pinned together on a partly idle
//!   machine all stay UNDER and share round-robin whatever their weights; and
//!   it needs its active-list heuristics against idle-ish vCPUs hoarding
//!   credit, which the ceiling replaces. Otherwise credit is conserved, which
//!   is what makes the shares exact in the long run.
//! - A cap deadline stops a capped vCPU the moment its domain's budget is
//!   spent, instead of at the next tick; unparked vCPUs get BOOST, so that
//!   they use the refill before the next one.
//! - A pCPU steals any queued vCPU of strictly higher priority than its own
//!   best (Xen only looks when its best is OVER or it would idle), so a BOOST
//!   vCPU queued behind another never waits while a peer runs UNDER work.
//!
//! Like Xen's credit1, a domain's share is its weight times the number of its
//! vCPUs that want CPU: each such vCPU weighs the domain's weight.
//!
//! The caller keeps one `CreditScheduler` behind a lock shared by all pCPUs
//! and follows the protocol in `CreditScheduler`'s documentation. Nothing here
//! allocates except adding domains and vCPUs.

use alloc::vec::Vec;
use core::fmt;

/// Most pCPUs one scheduler handles: a `CpuMask` is one `u64`.
pub const MAX_CPUS: u32 = 64;
/// A domain's weight when nobody chose one (Xen's too).
pub const DEFAULT_WEIGHT: u16 = 256;

const NIL: u32 = u32::MAX;

/// Credit and debt stop at this many `credit_bound`s: a safety limit, wide
/// enough never to be reached by a steady load, since every nanosecond
/// dropped there shifts the shares.
const CREDIT_LIMIT_BOUNDS: i64 = 4;

/// A set of pCPUs, bit `n` for pCPU `n`: affinities and pCPUs to kick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuMask(pub u64);

impl CpuMask {
    pub const EMPTY: Self = Self(0);

    /// pCPUs `0..n`.
    pub const fn first(n: u32) -> Self {
        if n >= MAX_CPUS {
            Self(u64::MAX)
        } else {
            Self((1u64 << n) - 1)
        }
    }

    pub const fn one(cpu: u32) -> Self {
        assert!(cpu < MAX_CPUS);
        Self(1 << cpu)
    }

    pub const fn contains(self, cpu: u32) -> bool {
        cpu < MAX_CPUS && (self.0 >> cpu) & 1 != 0
    }

    pub fn remove(&mut self, cpu: u32) {
        self.0 &= !Self::one(cpu).0;
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub const fn and(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The pCPUs in ascending order.
    pub fn iter(self) -> impl Iterator<Item = u32> {
        self.iter_from(0)
    }

    /// The pCPUs in ascending order from `start`, wrapping around: spreads
    /// choices when every caller starts somewhere else.
    pub fn iter_from(self, start: u32) -> impl Iterator<Item = u32> {
        let start = start % MAX_CPUS;
        let mut rest = self.0.rotate_right(start);
        core::iter::from_fn(move || {
            if rest == 0 {
                return None;
            }
            let bit = rest.trailing_zeros();
            rest &= rest - 1;
            Some((bit + start) % MAX_CPUS)
        })
    }
}

/// A vCPU: its domain's ID and its index in the domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VcpuId {
    pub dom: u32,
    pub vcpu: u32,
}

impl fmt::Display for VcpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "d{}v{}", self.dom, self.vcpu)
    }
}

/// Tunables, fixed when the scheduler is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Longest a vCPU runs before the others of its priority get the pCPU.
    pub slice_ns: u64,
    /// How often busy time is handed out as credit and cap budgets refilled.
    pub accounting_period_ns: u64,
    /// Longest a vCPU woken with BOOST keeps it while running (Xen: until its
    /// next 10 ms tick).
    pub boost_ns: u64,
}

impl Default for Params {
    /// Xen's: a 30 ms slice, accounting every 30 ms (3 ticks of 10 ms), BOOST
    /// for one tick.
    fn default() -> Self {
        Self { slice_ns: 30_000_000, accounting_period_ns: 30_000_000, boost_ns: 10_000_000 }
    }
}

/// Run-queue priority classes, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Prio {
    /// Spent more than its share.
    Over = 0,
    /// Has credit left.
    Under = 1,
    /// Just woken with credit left.
    Boost = 2,
}

impl Prio {
    /// Highest first.
    const DESCENDING: [Prio; 3] = [Prio::Boost, Prio::Under, Prio::Over];

    fn of_credit(credit: i64) -> Self {
        if credit >= 0 {
            Prio::Under
        } else {
            Prio::Over
        }
    }
}

/// Where a vCPU is, as the scheduler sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuState {
    /// Waits for `wake` (the guest halted).
    Blocked,
    /// Stopped by `pause` until `unpause`, blocked or not.
    Paused,
    /// Wants to run but its domain has spent its cap; back in a run queue at
    /// the accounting that refills it.
    Parked,
    /// In `cpu`'s run queue.
    Queued { cpu: u32 },
    /// On `cpu`. Paused or moved off `cpu` by `set_affinity` but not yet
    /// descheduled: `cpu` has been kicked.
    Running { cpu: u32 },
}

/// Why a call was refused; nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedError {
    /// `new` got 0 or more than `MAX_CPUS` pCPUs.
    BadCpuCount,
    /// `new` got a zero slice, period or boost.
    BadParams,
    DomainExists,
    NoSuchDomain,
    VcpuExists,
    NoSuchVcpu,
    /// Weights are 1..=65535.
    BadWeight,
    /// Caps are 0 (none) to 100 per pCPU.
    BadCap,
    /// The affinity has none of the scheduler's pCPUs.
    BadAffinity,
    /// `block` of a vCPU that is not running.
    NotRunning,
}

impl fmt::Display for SchedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BadCpuCount => "pCPU count must be 1..=64",
            Self::BadParams => "slice, accounting period and boost must be non-zero",
            Self::DomainExists => "domain already known to the scheduler",
            Self::NoSuchDomain => "no such domain",
            Self::VcpuExists => "vCPU already known to the scheduler",
            Self::NoSuchVcpu => "no such vCPU",
            Self::BadWeight => "weight must be 1..=65535",
            Self::BadCap => "cap must be 0..=100 per pCPU",
            Self::BadAffinity => "affinity has no usable pCPU",
            Self::NotRunning => "vCPU is not running",
        })
    }
}

/// What one pCPU does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct Decision {
    /// The vCPU to run, or `None` to idle.
    pub run: Option<VcpuId>,
    /// Call `schedule` again by then (a one-shot timer); `None`: only when
    /// kicked or when the running vCPU blocks.
    pub until_ns: Option<u64>,
    /// Other pCPUs that must call `schedule` soon (IPI them).
    pub kick: CpuMask,
}

/// One vCPU, for `oxl list`/`top` and for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuInfo {
    pub state: VcpuState,
    /// The class it is queued in or would be queued in now.
    pub prio: Prio,
    pub credit_ns: i64,
    /// Time it has run, up to `now`.
    pub cpu_time_ns: u64,
    pub affinity: CpuMask,
    /// The pCPU it runs on, is queued on, or ran on last.
    pub cpu: u32,
}

/// One pCPU, for `oxl top` and for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuInfo {
    pub current: Option<VcpuId>,
    pub queued: u32,
    /// Time it ran vCPUs, and time it idled, up to `now`.
    pub busy_ns: u64,
    pub idle_ns: u64,
}

/// Where a vCPU is; the guest's own wishes (`blocked`) and the control
/// plane's (`paused`) are kept apart in `Vcpu` so that a wake never undoes a
/// pause and an unpause never undoes a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    /// Not runnable: blocked or paused (or both).
    Off,
    Parked,
    Queued {
        cpu: u32,
        prio: Prio,
    },
    Running {
        cpu: u32,
    },
}

struct Vcpu {
    id: VcpuId,
    /// Slot in `domains`.
    dom: u32,
    run: Run,
    blocked: bool,
    paused: bool,
    boosted: bool,
    affinity: CpuMask,
    /// Where it runs, is queued, or last ran.
    cpu: u32,
    credit: i64,
    /// Ran since the last accounting.
    ran: bool,
    /// Blocked since the last accounting.
    slept: bool,
    /// Credit taken in the accounting under way.
    intake: u64,
    cpu_time: u64,
    /// In `CreditScheduler::active`: accounting looks at it.
    active: bool,
    /// Run-queue links (slots in `vcpus`).
    prev: u32,
    next: u32,
}

impl Vcpu {
    fn wants_cpu(&self) -> bool {
        matches!(self.run, Run::Queued { .. } | Run::Running { .. })
    }
}

struct Domain {
    weight: u16,
    /// Percent of one pCPU; 0 = none.
    cap: u32,
    /// What a capped domain may still run before it is parked.
    budget: i64,
    /// Its vCPUs' slots.
    vcpus: Vec<u32>,
    /// Time its vCPUs ran, including removed ones.
    cpu_time: u64,
}

#[derive(Clone, Copy)]
struct Queue {
    head: u32,
    tail: u32,
}

struct Pcpu {
    current: u32,
    /// Indexed by `Prio`.
    queues: [Queue; 3],
    queued: u32,
    /// Time up to which it has been charged.
    charged_to: u64,
    busy_ns: u64,
    idle_ns: u64,
    /// Busy time since the last accounting: what it hands out there.
    period_busy: u64,
    /// Has been kicked and has not yet called `schedule`.
    kicked: bool,
}

/// The credit scheduler for `ncpus` pCPUs.
///
/// Protocol (every call takes the caller's current time in nanoseconds; the
/// pCPUs' clocks may differ a little, time that seems to go back counts as 0):
/// - each pCPU calls `schedule(cpu, now)` when its `until_ns` timer fires,
///   when it is kicked, and right after its vCPU blocked (`block`), and runs
///   what the `Decision` says;
/// - every call that returns pCPUs to kick expects an IPI to each (a kick of
///   the caller's own pCPU means: call `schedule` before re-entering a guest);
/// - new vCPUs start paused: `unpause` starts them.
pub struct CreditScheduler {
    params: Params,
    ncpus: u32,
    cpus: Vec<Pcpu>,
    vcpus: Vec<Option<Vcpu>>,
    free_vcpus: Vec<u32>,
    domains: Vec<Option<Domain>>,
    free_domains: Vec<u32>,
    /// Sorted by ID, for lookups: (ID, slot).
    vcpu_index: Vec<(VcpuId, u32)>,
    domain_index: Vec<(u32, u32)>,
    /// The vCPUs accounting must look at (Xen's active list): those that ran,
    /// want to run or owe credit since the last accounting. A vCPU blocked
    /// for a whole period with no debt takes no credit and changes no class,
    /// so accounting costs O(active vCPUs), not O(all): a host of hundreds of
    /// mostly idle domUs pays for the few that ran. Its capacity covers every
    /// vCPU, so adding to it never allocates.
    active: Vec<u32>,
    /// Slots of the domains with a cap, which accounting refills.
    capped: Vec<u32>,
    next_acct: u64,
    last_acct: u64,
    /// Accountings that came so late that capped domains were refilled less
    /// than the time that passed (`late_refills`): how many, the latest gap.
    late_refills: u64,
    last_late_gap_ns: u64,
    /// How many vCPUs are `Run::Parked`.
    parked: u32,
    /// Accounting's per-pCPU scratch, kept to avoid allocating there: busy
    /// time to hand out, how many vCPUs may take it, the order to do it in.
    supply: Vec<u64>,
    takers: Vec<u32>,
    order: Vec<u32>,
}

impl CreditScheduler {
    pub fn new(ncpus: u32, params: Params, now: u64) -> Result<Self, SchedError> {
        if ncpus == 0 || ncpus > MAX_CPUS {
            return Err(SchedError::BadCpuCount);
        }
        if params.slice_ns == 0 || params.accounting_period_ns == 0 || params.boost_ns == 0 {
            return Err(SchedError::BadParams);
        }
        let empty = Queue { head: NIL, tail: NIL };
        let cpus = (0..ncpus)
            .map(|_| Pcpu {
                current: NIL,
                queues: [empty; 3],
                queued: 0,
                charged_to: now,
                busy_ns: 0,
                idle_ns: 0,
                period_busy: 0,
                kicked: false,
            })
            .collect();
        Ok(Self {
            params,
            ncpus,
            cpus,
            vcpus: Vec::new(),
            free_vcpus: Vec::new(),
            domains: Vec::new(),
            free_domains: Vec::new(),
            vcpu_index: Vec::new(),
            domain_index: Vec::new(),
            active: Vec::new(),
            capped: Vec::new(),
            late_refills: 0,
            last_late_gap_ns: 0,
            next_acct: now + params.accounting_period_ns,
            last_acct: now,
            parked: 0,
            supply: alloc::vec![0; ncpus as usize],
            takers: alloc::vec![0; ncpus as usize],
            order: alloc::vec![0; ncpus as usize],
        })
    }

    pub fn params(&self) -> Params {
        self.params
    }

    pub fn ncpus(&self) -> u32 {
        self.ncpus
    }

    fn online(&self) -> CpuMask {
        CpuMask::first(self.ncpus)
    }

    /// The most credit a vCPU that slept keeps: a slice plus a period, enough
    /// to run a whole slice and still be UNDER after the next accounting.
    fn credit_bound(&self) -> i64 {
        (self.params.slice_ns + self.params.accounting_period_ns) as i64
    }

    // ---- Domains ------------------------------------------------------------

    pub fn add_domain(&mut self, dom: u32, weight: u16, cap: u32) -> Result<(), SchedError> {
        let at = match self.domain_index.binary_search_by_key(&dom, |e| e.0) {
            Ok(_) => return Err(SchedError::DomainExists),
            Err(at) => at,
        };
        self.check_params(weight, cap)?;
        let d = Domain { weight, cap, budget: self.full_budget(cap), vcpus: Vec::new(), cpu_time: 0 };
        let slot = fill_slot(&mut self.domains, &mut self.free_domains, d);
        self.domain_index.insert(at, (dom, slot));
        if cap != 0 {
            self.capped.push(slot);
        }
        Ok(())
    }

    /// Changes a domain's weight and cap. A new cap starts with a full
    /// budget, so its parked vCPUs return to the run queues.
    pub fn set_params(&mut self, dom: u32, weight: u16, cap: u32, now: u64) -> Result<CpuMask, SchedError> {
        let ds = self.domain_slot(dom)?;
        self.check_params(weight, cap)?;
        let budget = self.full_budget(cap);
        let d = self.dom_mut(ds);
        d.weight = weight;
        if d.cap == cap {
            return Ok(CpuMask::EMPTY);
        }
        d.cap = cap;
        d.budget = budget;
        self.capped.retain(|&c| c != ds);
        if cap != 0 {
            self.capped.push(ds);
        }
        Ok(self.unpark(ds, now))
    }

    /// Removes a domain and its vCPUs; returns the pCPUs that were running
    /// them, which must stop doing so.
    pub fn remove_domain(&mut self, dom: u32, now: u64) -> Result<CpuMask, SchedError> {
        let ds = self.domain_slot(dom)?;
        let mut kick = CpuMask::EMPTY;
        while let Some(&vs) = self.dom(ds).vcpus.last() {
            let id = self.vcpu(vs).id;
            kick = kick.union(self.remove_vcpu(id, now)?);
        }
        self.domains[ds as usize] = None;
        self.free_domains.push(ds);
        self.capped.retain(|&c| c != ds);
        let at = self.domain_index.binary_search_by_key(&dom, |e| e.0).expect("indexed domain");
        self.domain_index.remove(at);
        Ok(kick)
    }

    /// Pauses every vCPU of a domain (see `pause`).
    pub fn pause_domain(&mut self, dom: u32, now: u64) -> Result<CpuMask, SchedError> {
        self.for_each_vcpu(dom, now, Self::pause)
    }

    /// Unpauses every vCPU of a domain (see `unpause`).
    pub fn unpause_domain(&mut self, dom: u32, now: u64) -> Result<CpuMask, SchedError> {
        self.for_each_vcpu(dom, now, Self::unpause)
    }

    fn for_each_vcpu(
        &mut self,
        dom: u32,
        now: u64,
        op: fn(&mut Self, VcpuId, u64) -> Result<CpuMask, SchedError>,
    ) -> Result<CpuMask, SchedError> {
        let ds = self.domain_slot(dom)?;
        let mut kick = CpuMask::EMPTY;
        for k in 0..self.dom(ds).vcpus.len() {
            let id = self.vcpu(self.dom(ds).vcpus[k]).id;
            kick = kick.union(op(self, id, now)?);
        }
        Ok(kick)
    }

    /// How many accountings refilled capped domains for less than the time
    /// since the last one (nobody scheduled for longer than a period and a
    /// slice: the capped domains get less than their cap then), and the
    /// latest such gap.
    pub fn late_refills(&self) -> (u64, u64) {
        (self.late_refills, self.last_late_gap_ns)
    }

    /// A domain's weight and cap.
    pub fn domain_params(&self, dom: u32) -> Result<(u16, u32), SchedError> {
        let d = self.dom(self.domain_slot(dom)?);
        Ok((d.weight, d.cap))
    }

    /// Time a domain's vCPUs have run, removed ones included, up to `now`.
    pub fn domain_cpu_time(&self, dom: u32, now: u64) -> Result<u64, SchedError> {
        let d = self.dom(self.domain_slot(dom)?);
        Ok(d.cpu_time + d.vcpus.iter().map(|&vs| self.unaccounted(vs, now)).sum::<u64>())
    }

    fn check_params(&self, weight: u16, cap: u32) -> Result<(), SchedError> {
        if weight == 0 {
            return Err(SchedError::BadWeight);
        }
        if cap > 100 * self.ncpus {
            return Err(SchedError::BadCap);
        }
        Ok(())
    }

    /// A capped domain's budget for one accounting period.
    fn full_budget(&self, cap: u32) -> i64 {
        (self.params.accounting_period_ns as u128 * cap as u128 / 100) as i64
    }

    // ---- vCPUs --------------------------------------------------------------

    /// Adds a vCPU, paused, allowed on the pCPUs in `affinity`. It starts with
    /// a slice of credit, so that it is not OVER before its first accounting.
    pub fn add_vcpu(&mut self, id: VcpuId, affinity: CpuMask) -> Result<(), SchedError> {
        let ds = self.domain_slot(id.dom)?;
        let at = match self.vcpu_index.binary_search_by_key(&id, |e| e.0) {
            Ok(_) => return Err(SchedError::VcpuExists),
            Err(at) => at,
        };
        let allowed = affinity.and(self.online());
        let Some(cpu) = allowed.iter().next() else {
            return Err(SchedError::BadAffinity);
        };
        let v = Vcpu {
            id,
            dom: ds,
            run: Run::Off,
            blocked: false,
            paused: true,
            boosted: false,
            affinity: allowed,
            cpu,
            credit: self.params.slice_ns as i64,
            ran: false,
            slept: false,
            intake: 0,
            cpu_time: 0,
            active: false,
            prev: NIL,
            next: NIL,
        };
        let slot = fill_slot(&mut self.vcpus, &mut self.free_vcpus, v);
        self.vcpu_index.insert(at, (id, slot));
        self.dom_mut(ds).vcpus.push(slot);
        self.active.reserve(self.vcpu_index.len().saturating_sub(self.active.len()));
        Ok(())
    }

    /// Removes a vCPU in any state; returns the pCPU that was running it,
    /// which must stop doing so. Its run time stays in its domain's.
    pub fn remove_vcpu(&mut self, id: VcpuId, now: u64) -> Result<CpuMask, SchedError> {
        let vs = self.vcpu_slot(id)?;
        let kick = match self.vcpu(vs).run {
            Run::Running { cpu } => {
                self.charge(cpu, now);
                self.cpus[cpu as usize].current = NIL;
                self.kick(cpu)
            }
            Run::Queued { .. } => {
                self.dequeue(vs);
                CpuMask::EMPTY
            }
            Run::Parked => {
                self.parked -= 1;
                CpuMask::EMPTY
            }
            Run::Off => CpuMask::EMPTY,
        };
        let ds = self.vcpu(vs).dom;
        if self.vcpu(vs).active {
            let at = self.active.iter().position(|&s| s == vs).expect("active vCPU listed");
            self.active.swap_remove(at);
        }
        let members = &mut self.dom_mut(ds).vcpus;
        members.retain(|&s| s != vs);
        self.vcpus[vs as usize] = None;
        self.free_vcpus.push(vs);
        let at = self.vcpu_index.binary_search_by_key(&id, |e| e.0).expect("indexed vCPU");
        self.vcpu_index.remove(at);
        Ok(kick)
    }

    /// Restricts a vCPU to the pCPUs in `affinity`. A queued vCPU moves at
    /// once; a running one moves when its pCPU, kicked, calls `schedule`.
    pub fn set_affinity(&mut self, id: VcpuId, affinity: CpuMask, now: u64) -> Result<CpuMask, SchedError> {
        let vs = self.vcpu_slot(id)?;
        let allowed = affinity.and(self.online());
        if allowed.is_empty() {
            return Err(SchedError::BadAffinity);
        }
        self.vcpu_mut(vs).affinity = allowed;
        Ok(match self.vcpu(vs).run {
            Run::Queued { cpu, prio } if !allowed.contains(cpu) => {
                self.dequeue(vs);
                self.place(vs, prio, now)
            }
            Run::Running { cpu } if !allowed.contains(cpu) => self.kick(cpu),
            _ => CpuMask::EMPTY,
        })
    }

    /// The guest halted: `id`, which must be running, waits for `wake`. Its
    /// pCPU then calls `schedule`.
    pub fn block(&mut self, id: VcpuId, now: u64) -> Result<(), SchedError> {
        let vs = self.vcpu_slot(id)?;
        let Run::Running { cpu } = self.vcpu(vs).run else {
            return Err(SchedError::NotRunning);
        };
        self.charge(cpu, now);
        self.cpus[cpu as usize].current = NIL;
        let v = self.vcpu_mut(vs);
        v.run = Run::Off;
        v.blocked = true;
        v.slept = true;
        v.boosted = false;
        Ok(())
    }

    /// Something for a blocked vCPU arrived (an interrupt, an event): it is
    /// runnable again, with BOOST if it has credit left. Returns the pCPU to
    /// kick: an idle one, or one running something of lower priority.
    /// Waking a vCPU that is not blocked does nothing.
    pub fn wake(&mut self, id: VcpuId, now: u64) -> Result<CpuMask, SchedError> {
        let vs = self.vcpu_slot(id)?;
        let v = self.vcpu_mut(vs);
        if !v.blocked {
            return Ok(CpuMask::EMPTY);
        }
        v.blocked = false;
        if v.paused {
            return Ok(CpuMask::EMPTY);
        }
        Ok(self.make_runnable(vs, true, now))
    }

    /// The control plane stops a vCPU until `unpause`. A running one stops
    /// when its pCPU, kicked, calls `schedule`.
    pub fn pause(&mut self, id: VcpuId, _now: u64) -> Result<CpuMask, SchedError> {
        let vs = self.vcpu_slot(id)?;
        self.vcpu_mut(vs).paused = true;
        Ok(match self.vcpu(vs).run {
            Run::Running { cpu } => self.kick(cpu),
            Run::Queued { .. } => {
                self.dequeue(vs);
                CpuMask::EMPTY
            }
            Run::Parked => {
                self.parked -= 1;
                self.vcpu_mut(vs).run = Run::Off;
                CpuMask::EMPTY
            }
            Run::Off => CpuMask::EMPTY,
        })
    }

    /// Undoes `pause`; a vCPU that is not also blocked is runnable again.
    pub fn unpause(&mut self, id: VcpuId, now: u64) -> Result<CpuMask, SchedError> {
        let vs = self.vcpu_slot(id)?;
        let v = self.vcpu_mut(vs);
        if !v.paused {
            return Ok(CpuMask::EMPTY);
        }
        v.paused = false;
        // Still running (paused, not yet descheduled): it just goes on.
        if v.blocked || v.run != Run::Off {
            return Ok(CpuMask::EMPTY);
        }
        Ok(self.make_runnable(vs, false, now))
    }

    /// Whether `id` is a vCPU of the scheduler's (added and not removed).
    pub fn has_vcpu(&self, id: VcpuId) -> bool {
        self.vcpu_slot(id).is_ok()
    }

    pub fn vcpu_info(&self, id: VcpuId, now: u64) -> Result<VcpuInfo, SchedError> {
        let vs = self.vcpu_slot(id)?;
        let v = self.vcpu(vs);
        let state = match v.run {
            Run::Off if v.paused => VcpuState::Paused,
            Run::Off => VcpuState::Blocked,
            Run::Parked => VcpuState::Parked,
            Run::Queued { cpu, .. } => VcpuState::Queued { cpu },
            Run::Running { cpu } => VcpuState::Running { cpu },
        };
        let unaccounted = self.unaccounted(vs, now);
        let credit = v.credit - unaccounted as i64;
        let prio = match v.run {
            Run::Queued { prio, .. } => prio,
            _ if v.boosted => Prio::Boost,
            _ => Prio::of_credit(credit),
        };
        Ok(VcpuInfo {
            state,
            prio,
            credit_ns: credit,
            cpu_time_ns: v.cpu_time + unaccounted,
            affinity: v.affinity,
            cpu: v.cpu,
        })
    }

    pub fn cpu_info(&self, cpu: u32, now: u64) -> CpuInfo {
        let p = &self.cpus[cpu as usize];
        let since = now.saturating_sub(p.charged_to);
        let (busy, idle) = if p.current == NIL { (0, since) } else { (since, 0) };
        CpuInfo {
            current: (p.current != NIL).then(|| self.vcpu(p.current).id),
            queued: p.queued,
            busy_ns: p.busy_ns + busy,
            idle_ns: p.idle_ns + idle,
        }
    }

    /// Time a running vCPU has run since its pCPU was last charged.
    fn unaccounted(&self, vs: u32, now: u64) -> u64 {
        match self.vcpu(vs).run {
            Run::Running { cpu } => now.saturating_sub(self.cpus[cpu as usize].charged_to),
            _ => 0,
        }
    }

    // ---- Scheduling ---------------------------------------------------------

    /// Picks what `cpu` runs next, and until when. The vCPU it ran goes back
    /// to the tail of its priority class (so `SCHED_OP YIELD` is just this
    /// call), unless it was paused, its domain's cap is spent, or its
    /// affinity no longer has `cpu`. Does accounting when it is due.
    pub fn schedule(&mut self, cpu: u32, now: u64) -> Decision {
        assert!(cpu < self.ncpus, "sched: no pCPU {cpu}");
        self.charge(cpu, now);
        let mut kick = CpuMask::EMPTY;
        if now >= self.next_acct {
            kick = self.accounting(now);
        }
        let p = &mut self.cpus[cpu as usize];
        p.kicked = false;
        let prev = core::mem::replace(&mut p.current, NIL);
        if prev != NIL {
            let v = self.vcpu_mut(prev);
            v.boosted = false;
            v.run = Run::Off;
            let prio = Prio::of_credit(v.credit);
            if v.paused {
                // Stays off.
            } else if self.over_cap(self.vcpu(prev).dom) {
                self.park(prev);
            } else if self.vcpu(prev).affinity.contains(cpu) {
                self.enqueue(cpu, prev, prio);
            } else {
                kick = kick.union(self.place(prev, prio, now));
            }
        }

        let next = self.pick_next(cpu);
        let mut until = None;
        if let Some(vs) = next {
            self.dequeue(vs);
            let v = self.vcpu_mut(vs);
            v.run = Run::Running { cpu };
            v.cpu = cpu;
            let boosted = v.boosted;
            let ds = v.dom;
            self.cpus[cpu as usize].current = vs;
            let mut end = now + self.params.slice_ns;
            if boosted {
                end = end.min(now + self.params.boost_ns);
            }
            let d = self.dom(ds);
            if d.cap != 0 {
                // Siblings running elsewhere spend the same budget: give each
                // an equal part so that together they stop about when it is
                // spent.
                let running =
                    d.vcpus.iter().filter(|&&s| matches!(self.vcpu(s).run, Run::Running { .. })).count() as i64;
                end = end.min(now + (d.budget / running).max(1) as u64);
            }
            until = Some(end);
        } else if self.parked != 0 {
            // Someone waits for the refill.
            until = Some(self.next_acct);
        }

        // Work left here that an idle pCPU could take now.
        if let Some((_, head)) = self.head(cpu) {
            kick = kick.union(self.kick_idle(head, cpu));
        }
        kick.remove(cpu);
        Decision { run: next.map(|vs| self.vcpu(vs).id), until_ns: until, kick }
    }

    /// The best vCPU queued on `cpu`, or a better one queued elsewhere that
    /// may run on `cpu` (stolen).
    fn pick_next(&self, cpu: u32) -> Option<u32> {
        let mut best = self.head(cpu);
        if let Some((Prio::Boost, vs)) = best {
            return Some(vs);
        }
        for peer in self.online().iter_from(cpu + 1) {
            if peer == cpu {
                continue;
            }
            for prio in Prio::DESCENDING {
                if best.is_some_and(|(b, _)| prio <= b) {
                    break;
                }
                if let Some(vs) = self.first_allowed(peer, prio, cpu) {
                    best = Some((prio, vs));
                    break;
                }
            }
            if let Some((Prio::Boost, _)) = best {
                break;
            }
        }
        best.map(|(_, vs)| vs)
    }

    /// The head of `cpu`'s highest non-empty class.
    fn head(&self, cpu: u32) -> Option<(Prio, u32)> {
        let p = &self.cpus[cpu as usize];
        Prio::DESCENDING
            .into_iter()
            .find(|&prio| p.queues[prio as usize].head != NIL)
            .map(|prio| (prio, p.queues[prio as usize].head))
    }

    /// The first vCPU in `peer`'s class `prio` that may run on `cpu`.
    fn first_allowed(&self, peer: u32, prio: Prio, cpu: u32) -> Option<u32> {
        let mut vs = self.cpus[peer as usize].queues[prio as usize].head;
        while vs != NIL {
            let v = self.vcpu(vs);
            if v.affinity.contains(cpu) {
                return Some(vs);
            }
            vs = v.next;
        }
        None
    }

    /// Queues a vCPU that became runnable (woken, unpaused), parked if its
    /// domain's cap is spent. `boost`: it was woken, and gets BOOST if it has
    /// credit left. An unpaused vCPU does not: it did not wait for an event.
    fn make_runnable(&mut self, vs: u32, boost: bool, now: u64) -> CpuMask {
        if self.over_cap(self.vcpu(vs).dom) {
            self.park(vs);
            return CpuMask::EMPTY;
        }
        let v = self.vcpu_mut(vs);
        v.boosted = boost && v.credit >= 0;
        let prio = if v.boosted { Prio::Boost } else { Prio::of_credit(v.credit) };
        self.place(vs, prio, now)
    }

    /// Queues `vs` on the pCPU that suits it best and returns that pCPU if it
    /// must be kicked to run it now.
    fn place(&mut self, vs: u32, prio: Prio, now: u64) -> CpuMask {
        let cpu = self.pick_cpu(vs, prio, now);
        self.enqueue(cpu, vs, prio);
        let p = &self.cpus[cpu as usize];
        if p.kicked || (p.current != NIL && self.live_prio(cpu, now) >= prio) {
            return CpuMask::EMPTY;
        }
        self.kick(cpu)
    }

    /// Where a vCPU of priority `prio` should queue: an idle pCPU (the one
    /// it ran on last if it is idle, else the next idle one from there), else
    /// one running something it preempts (the lowest priority), else the
    /// least loaded, preferring the one it ran on last.
    fn pick_cpu(&self, vs: u32, prio: Prio, now: u64) -> u32 {
        let v = self.vcpu(vs);
        let allowed = v.affinity;
        let last = v.cpu;
        let idle =
            allowed.iter_from(last).find(|&c| self.cpus[c as usize].current == NIL && !self.cpus[c as usize].kicked);
        if let Some(c) = idle {
            return c;
        }
        // Every pCPU left runs something, or has been kicked.
        let preempt = allowed
            .iter_from(last)
            .filter(|&c| !self.cpus[c as usize].kicked)
            .map(|c| (self.live_prio(c, now), c))
            .filter(|&(p, _)| p < prio)
            .min_by_key(|&(p, _)| p);
        if let Some((_, c)) = preempt {
            return c;
        }
        let load = |c: u32| {
            let p = &self.cpus[c as usize];
            p.queued + u32::from(p.current != NIL)
        };
        allowed.iter_from(last).min_by_key(|&c| load(c)).expect("affinity is never empty")
    }

    /// The priority of what `cpu` runs, with its credit charged up to `now`.
    fn live_prio(&self, cpu: u32, now: u64) -> Prio {
        let p = &self.cpus[cpu as usize];
        let v = self.vcpu(p.current);
        if v.boosted {
            Prio::Boost
        } else {
            Prio::of_credit(v.credit - now.saturating_sub(p.charged_to) as i64)
        }
    }

    /// An idle pCPU other than `from` that may run `vs` and has not been
    /// kicked yet: kicked now, so that it steals `vs`.
    fn kick_idle(&mut self, vs: u32, from: u32) -> CpuMask {
        let idle = self
            .vcpu(vs)
            .affinity
            .iter_from(from + 1)
            .find(|&c| c != from && self.cpus[c as usize].current == NIL && !self.cpus[c as usize].kicked);
        match idle {
            Some(c) => self.kick(c),
            None => CpuMask::EMPTY,
        }
    }

    /// Puts a vCPU on the active list (it ran or is queued).
    fn activate(&mut self, vs: u32) {
        let v = self.vcpu_mut(vs);
        if !v.active {
            v.active = true;
            // Within the capacity `add_vcpu` reserved: no allocation.
            self.active.push(vs);
        }
    }

    fn kick(&mut self, cpu: u32) -> CpuMask {
        self.cpus[cpu as usize].kicked = true;
        CpuMask::one(cpu)
    }

    /// Charges what `cpu` ran since it was last charged: the vCPU's credit,
    /// its domain's cap budget, the run times.
    fn charge(&mut self, cpu: u32, now: u64) {
        let p = &mut self.cpus[cpu as usize];
        let ns = now.saturating_sub(p.charged_to);
        p.charged_to = p.charged_to.max(now);
        if ns == 0 {
            return;
        }
        if p.current == NIL {
            p.idle_ns += ns;
            return;
        }
        p.busy_ns += ns;
        p.period_busy += ns;
        let vs = p.current;
        self.activate(vs);
        let v = self.vcpu_mut(vs);
        v.cpu_time += ns;
        v.credit = v.credit.saturating_sub(ns as i64);
        v.ran = true;
        let ds = v.dom;
        let d = self.dom_mut(ds);
        d.cpu_time += ns;
        if d.cap != 0 {
            d.budget -= ns as i64;
            if d.budget <= 0 {
                self.park_queued(ds);
            }
        }
    }

    fn over_cap(&self, ds: u32) -> bool {
        let d = self.dom(ds);
        d.cap != 0 && d.budget <= 0
    }

    fn park(&mut self, vs: u32) {
        let v = self.vcpu_mut(vs);
        v.run = Run::Parked;
        v.boosted = false;
        self.parked += 1;
    }

    /// Takes a domain that spent its cap out of the run queues.
    fn park_queued(&mut self, ds: u32) {
        for k in 0..self.dom(ds).vcpus.len() {
            let vs = self.dom(ds).vcpus[k];
            if let Run::Queued { .. } = self.vcpu(vs).run {
                self.dequeue(vs);
                self.park(vs);
            }
        }
    }

    /// Puts a domain's parked vCPUs back into run queues, as if woken: they
    /// waited for the refill as a woken vCPU waited for its event, and must
    /// run before the next refill to use the budget, which does not carry
    /// over. Without BOOST a capped vCPU queued behind uncapped ones for a
    /// period or two loses its budget and gets well under its cap.
    fn unpark(&mut self, ds: u32, now: u64) -> CpuMask {
        let mut kick = CpuMask::EMPTY;
        for k in 0..self.dom(ds).vcpus.len() {
            let vs = self.dom(ds).vcpus[k];
            if self.vcpu(vs).run == Run::Parked {
                self.parked -= 1;
                self.vcpu_mut(vs).run = Run::Off;
                kick = kick.union(self.make_runnable(vs, true, now));
            }
        }
        kick
    }

    // ---- Accounting ---------------------------------------------------------

    /// Hands the busy time of the period out as credit, refills cap budgets
    /// and requeues whoever changed class. Returns pCPUs to kick for
    /// unparked vCPUs.
    fn accounting(&mut self, now: u64) -> CpuMask {
        let elapsed = now.saturating_sub(self.last_acct);
        self.last_acct = now;
        self.next_acct = now + self.params.accounting_period_ns;
        for cpu in 0..self.ncpus {
            self.charge(cpu, now);
        }
        self.hand_out_credit(elapsed);

        // Cap budgets: what was left is not carried over (a cap is a rate,
        // not a savings account), overruns are paid back. Accounting that
        // is up to a slice late loses nothing; after a long idle time only
        // that much is refilled, so a capped domain cannot burst.
        let refill_ns = elapsed.min(self.params.accounting_period_ns + self.params.slice_ns);
        if refill_ns < elapsed && !self.capped.is_empty() {
            self.late_refills += 1;
            self.last_late_gap_ns = elapsed;
        }
        let mut kick = CpuMask::EMPTY;
        for k in 0..self.capped.len() {
            let ds = self.capped[k];
            let Some(d) = self.domains[ds as usize].as_mut() else { continue };
            if d.cap == 0 {
                continue;
            }
            let refill = (refill_ns as u128 * d.cap as u128 / 100) as i64;
            d.budget = d.budget.min(0) + refill;
            if d.budget > 0 {
                kick = kick.union(self.unpark(ds, now));
            }
        }

        // Queued vCPUs whose credit changed sign change class, in order.
        for cpu in 0..self.ncpus {
            for class in [Prio::Under, Prio::Over] {
                let mut vs = self.cpus[cpu as usize].queues[class as usize].head;
                while vs != NIL {
                    let v = self.vcpu(vs);
                    let (next, prio) = (v.next, Prio::of_credit(v.credit));
                    if prio != class {
                        self.dequeue(vs);
                        self.enqueue(cpu, vs, prio);
                    }
                    vs = next;
                }
            }
        }
        kick
    }

    /// Each pCPU's busy time goes to the vCPUs allowed on it in proportion to
    /// their domains' weights, water-filling: what one cannot take goes round
    /// again to the others. What one can take:
    /// - demand: at most one pCPU for the elapsed time. The pCPUs with the
    ///   fewest takers hand out first, so a vCPU that had a pCPU to itself is
    ///   filled there and leaves the shared pCPUs' time to those stuck on them.
    /// - ceiling: a vCPU that slept in the period keeps at most
    ///   `credit_bound`, so an idle-ish vCPU does not hoard shares it will not
    ///   use; one that neither ran nor wants to run only has its debt paid
    ///   off, so it is not OVER when it wakes however long it slept. A vCPU
    ///   runnable throughout is owed what it did not get: it keeps it, up to
    ///   the safety limit, because handing it to the vCPUs it shares a pCPU
    ///   with would even out their credits and with them their shares.
    ///
    /// Credit is conserved apart from that: it is what makes the shares come
    /// out right in the long run, FIFO within a class being coarse.
    fn hand_out_credit(&mut self, elapsed: u64) {
        // Rounds of redistribution: enough for what saturates in one to reach
        // the rest; what is left after that is dust or nobody's to take.
        const ROUNDS: usize = 4;
        let bound = self.credit_bound();
        for (s, p) in self.supply.iter_mut().zip(self.cpus.iter_mut()) {
            *s = core::mem::take(&mut p.period_busy);
        }
        let limit = CREDIT_LIMIT_BOUNDS * bound;
        let ceiling = |v: &Vcpu| {
            if v.wants_cpu() && !v.slept {
                limit
            } else if v.ran || v.wants_cpu() {
                bound
            } else {
                0
            }
        };
        let room = |v: &Vcpu| (ceiling(v) - v.credit).max(0) as u64;
        let takes_part = |v: &Vcpu, cpu: u32| v.affinity.contains(cpu) && room(v) != 0 && v.intake < elapsed;

        let vcpus = &mut self.vcpus;
        let active = &self.active;
        for &vs in active {
            vcpus[vs as usize].as_mut().expect("active vCPU").intake = 0;
        }
        for cpu in 0..self.ncpus {
            self.takers[cpu as usize] =
                active.iter().filter(|&&vs| takes_part(vcpus[vs as usize].as_ref().expect("active vCPU"), cpu)).count()
                    as u32;
            self.order[cpu as usize] = cpu;
        }
        let takers = &self.takers;
        self.order.sort_unstable_by_key(|&cpu| (takers[cpu as usize], cpu));

        let domains = &self.domains;
        let weight = |v: &Vcpu| u64::from(domains[v.dom as usize].as_ref().expect("vCPU's domain").weight);
        for _ in 0..ROUNDS {
            let mut moved = false;
            for &cpu in &self.order {
                let supply = self.supply[cpu as usize];
                if supply == 0 {
                    continue;
                }
                let total: u64 = active
                    .iter()
                    .map(|&vs| vcpus[vs as usize].as_ref().expect("active vCPU"))
                    .filter(|v| takes_part(v, cpu))
                    .map(weight)
                    .sum();
                if total == 0 {
                    continue;
                }
                let mut spent = 0;
                for &vs in active {
                    let v = vcpus[vs as usize].as_mut().expect("active vCPU");
                    if !takes_part(v, cpu) {
                        continue;
                    }
                    let share = (supply as u128 * weight(v) as u128 / total as u128) as u64;
                    let (room, demand) = (room(v), elapsed - v.intake);
                    let take = share.min(room).min(demand);
                    v.credit += take as i64;
                    v.intake += take;
                    spent += take;
                    if share > take && room < demand && ceiling(v) == limit {
                        spent += share - take;
                    }
                }
                self.supply[cpu as usize] -= spent.min(supply);
                moved |= spent != 0;
            }
            if !moved {
                break;
            }
        }
        // Who neither runs nor waits to, and owes nothing, takes no part in
        // the next accounting: off the list until it runs or queues again.
        self.active.retain(|&vs| {
            let v = vcpus[vs as usize].as_mut().expect("active vCPU");
            v.credit = v.credit.max(-limit);
            v.ran = false;
            v.slept = false;
            v.active = v.wants_cpu() || v.credit < 0;
            v.active
        });
    }

    // ---- Run queues ---------------------------------------------------------

    fn enqueue(&mut self, cpu: u32, vs: u32, prio: Prio) {
        self.activate(vs);
        let q = self.cpus[cpu as usize].queues[prio as usize];
        let v = self.vcpu_mut(vs);
        debug_assert_eq!(v.run, Run::Off);
        v.run = Run::Queued { cpu, prio };
        v.cpu = cpu;
        v.prev = q.tail;
        v.next = NIL;
        if q.tail == NIL {
            self.cpus[cpu as usize].queues[prio as usize].head = vs;
        } else {
            self.vcpu_mut(q.tail).next = vs;
        }
        let p = &mut self.cpus[cpu as usize];
        p.queues[prio as usize].tail = vs;
        p.queued += 1;
    }

    /// Takes a queued vCPU out of its queue; it is `Run::Off` until the
    /// caller says where it goes.
    fn dequeue(&mut self, vs: u32) {
        let v = self.vcpu_mut(vs);
        let Run::Queued { cpu, prio } = v.run else {
            unreachable!("dequeue of a vCPU that is not queued");
        };
        let (prev, next) = (v.prev, v.next);
        v.run = Run::Off;
        v.prev = NIL;
        v.next = NIL;
        if prev == NIL {
            self.cpus[cpu as usize].queues[prio as usize].head = next;
        } else {
            self.vcpu_mut(prev).next = next;
        }
        if next == NIL {
            self.cpus[cpu as usize].queues[prio as usize].tail = prev;
        } else {
            self.vcpu_mut(next).prev = prev;
        }
        self.cpus[cpu as usize].queued -= 1;
    }

    // ---- Slots --------------------------------------------------------------

    fn vcpu_slot(&self, id: VcpuId) -> Result<u32, SchedError> {
        self.vcpu_index
            .binary_search_by_key(&id, |e| e.0)
            .map(|at| self.vcpu_index[at].1)
            .map_err(|_| SchedError::NoSuchVcpu)
    }

    fn domain_slot(&self, dom: u32) -> Result<u32, SchedError> {
        self.domain_index
            .binary_search_by_key(&dom, |e| e.0)
            .map(|at| self.domain_index[at].1)
            .map_err(|_| SchedError::NoSuchDomain)
    }

    fn vcpu(&self, vs: u32) -> &Vcpu {
        self.vcpus[vs as usize].as_ref().expect("live vCPU slot")
    }

    fn vcpu_mut(&mut self, vs: u32) -> &mut Vcpu {
        self.vcpus[vs as usize].as_mut().expect("live vCPU slot")
    }

    fn dom(&self, ds: u32) -> &Domain {
        self.domains[ds as usize].as_ref().expect("live domain slot")
    }

    fn dom_mut(&mut self, ds: u32) -> &mut Domain {
        self.domains[ds as usize].as_mut().expect("live domain slot")
    }

    /// Panics unless every structural invariant holds: each vCPU in at most
    /// one queue and the queue it says, running on at most one pCPU and the
    /// one it says, queued only where its affinity allows, running elsewhere
    /// only with a kick pending, queue classes matching credit, counts and
    /// indexes right, busy plus idle time equal to the time charged.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self, start: u64) {
        let mut seen = alloc::vec![false; self.vcpus.len()];
        for (cpu, p) in self.cpus.iter().enumerate() {
            let cpu = cpu as u32;
            let mut n = 0;
            for prio in Prio::DESCENDING {
                let q = p.queues[prio as usize];
                let mut prev = NIL;
                let mut vs = q.head;
                while vs != NIL {
                    assert!(!seen[vs as usize], "vCPU slot {vs} queued twice");
                    seen[vs as usize] = true;
                    let v = self.vcpu(vs);
                    assert_eq!(v.run, Run::Queued { cpu, prio }, "{} in cpu{cpu}'s {prio:?} queue", v.id);
                    assert_eq!(v.prev, prev, "{} back link", v.id);
                    assert!(v.affinity.contains(cpu), "{} queued on cpu{cpu} outside its affinity", v.id);
                    assert_eq!(prio == Prio::Boost, v.boosted, "{} boost/class", v.id);
                    if prio != Prio::Boost {
                        assert_eq!(prio, Prio::of_credit(v.credit), "{} class/credit", v.id);
                    }
                    assert!(!self.over_cap(v.dom), "{} queued over its cap", v.id);
                    prev = vs;
                    vs = v.next;
                    n += 1;
                }
                assert_eq!(q.tail, prev, "cpu{cpu} {prio:?} tail");
            }
            assert_eq!(p.queued, n, "cpu{cpu} queued count");
            if p.current != NIL {
                let v = self.vcpu(p.current);
                assert_eq!(v.run, Run::Running { cpu }, "cpu{cpu}'s current {}", v.id);
                assert!(v.affinity.contains(cpu) || p.kicked, "{} on cpu{cpu} outside its affinity", v.id);
                assert!(!v.paused || p.kicked, "{} paused on cpu{cpu} without a kick", v.id);
            }
            assert_eq!(p.busy_ns + p.idle_ns, p.charged_to - start, "cpu{cpu} time not conserved");
        }
        let mut parked = 0;
        for (vs, v) in self.vcpus.iter().enumerate() {
            let Some(v) = v else { continue };
            assert_eq!(self.vcpu_slot(v.id), Ok(vs as u32), "{} index", v.id);
            assert!(self.dom(v.dom).vcpus.contains(&(vs as u32)), "{} not in its domain", v.id);
            match v.run {
                Run::Off => assert!(v.blocked || v.paused, "{} off but neither blocked nor paused", v.id),
                Run::Parked => {
                    parked += 1;
                    assert!(!v.blocked && !v.paused, "{} parked while blocked or paused", v.id);
                    assert!(self.over_cap(v.dom), "{} parked under its cap", v.id);
                }
                Run::Queued { .. } => {
                    assert!(seen[vs], "{} says queued but is in no queue", v.id);
                    assert!(!v.blocked && !v.paused, "{} queued while blocked or paused", v.id);
                }
                Run::Running { cpu } => {
                    assert_eq!(self.cpus[cpu as usize].current, vs as u32, "{} says running on cpu{cpu}", v.id);
                    assert!(!v.blocked, "{} running while blocked", v.id);
                }
            }
            // Whoever accounting would give or take credit from is listed.
            if v.wants_cpu() || v.ran || v.credit < 0 {
                assert!(v.active, "{} takes part in accounting but is not active", v.id);
            }
            assert_eq!(v.active, self.active.contains(&(vs as u32)), "{} active flag/list", v.id);
        }
        assert!(self.active.capacity() >= self.vcpu_index.len(), "active list may allocate");
        let mut sorted = self.active.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), self.active.len(), "a vCPU listed active twice");
        for (dom, ds) in &self.domain_index {
            assert_eq!(self.dom(*ds).cap != 0, self.capped.contains(ds), "d{dom} capped list");
        }
        assert_eq!(self.parked, parked, "parked count");
        assert_eq!(self.domain_index.len(), self.domains.iter().flatten().count());
        assert_eq!(self.vcpu_index.len(), self.vcpus.iter().flatten().count());
    }
}

/// Puts `item` in a free slot of `slots` (one from `free`, else a new one)
/// and returns its index.
fn fill_slot<T>(slots: &mut Vec<Option<T>>, free: &mut Vec<u32>, item: T) -> u32 {
    match free.pop() {
        Some(s) => {
            slots[s as usize] = Some(item);
            s
        }
        None => {
            slots.push(Some(item));
            (slots.len() - 1) as u32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    const MS: u64 = 1_000_000;
    const ALL: CpuMask = CpuMask(u64::MAX);

    fn id(dom: u32, vcpu: u32) -> VcpuId {
        VcpuId { dom, vcpu }
    }

    /// `ncpus` pCPUs, domain 1 (default weight, `cap`) with `n` vCPUs, not started.
    fn setup(ncpus: u32, cap: u32, n: u32) -> CreditScheduler {
        let mut s = CreditScheduler::new(ncpus, Params::default(), 0).unwrap();
        s.add_domain(1, DEFAULT_WEIGHT, cap).unwrap();
        for v in 0..n {
            s.add_vcpu(id(1, v), ALL).unwrap();
        }
        s
    }

    fn state(s: &CreditScheduler, v: VcpuId, now: u64) -> VcpuState {
        s.vcpu_info(v, now).unwrap().state
    }

    #[test]
    fn accounting_looks_only_at_vcpus_that_ran_queued_or_owe() {
        // 500 domUs that ran once and blocked, and one spinner on each pCPU:
        // after a period's accounting only the spinners (and none of the
        // sleepers, whose credit is non-negative) are left on the active
        // list, so the next accounting walks 2 vCPUs, not 502.
        let mut s = CreditScheduler::new(2, Params::default(), 0).unwrap();
        for dom in 1..=502u32 {
            s.add_domain(dom, DEFAULT_WEIGHT, 0).unwrap();
            s.add_vcpu(id(dom, 0), ALL).unwrap();
            let _ = s.unpause(id(dom, 0), 0).unwrap();
        }
        let mut now = 0;
        // Each sleeper runs a little, then blocks; the spinners stay.
        for _ in 0..600 {
            now += 10_000;
            for cpu in 0..2 {
                let d = s.schedule(cpu, now);
                if let Some(v) = d.run {
                    if v.dom <= 500 {
                        now += 1_000;
                        s.block(v, now).unwrap();
                    }
                }
            }
        }
        s.check_invariants(0);
        // Two accountings: the first hands out what the sleepers ran, the
        // second finds them with nothing to take.
        for _ in 0..2 {
            now += s.params().accounting_period_ns;
            for cpu in 0..2 {
                let _ = s.schedule(cpu, now);
            }
        }
        s.check_invariants(0);
        let active: Vec<u32> = s.active.iter().map(|&vs| s.vcpu(vs).id.dom).collect();
        assert!(active.iter().all(|&d| d > 500), "sleepers still active: {active:?}");
        assert_eq!(active.len(), 2);
        // A sleeper woken joins the list again.
        let _ = s.wake(id(7, 0), now).unwrap();
        assert_eq!(s.active.len(), 3);
        s.check_invariants(0);
        // Removing domains keeps the lists right.
        for dom in 1..=502u32 {
            let _ = s.remove_domain(dom, now).unwrap();
        }
        assert!(s.active.is_empty() && s.capped.is_empty());
    }

    #[test]
    fn cpumask_iterates_from_a_start_and_wraps() {
        let m = CpuMask(0b1011_0001);
        assert_eq!(m.iter().collect::<Vec<_>>(), [0, 4, 5, 7]);
        assert_eq!(m.iter_from(5).collect::<Vec<_>>(), [5, 7, 0, 4]);
        assert_eq!(m.iter_from(6).collect::<Vec<_>>(), [7, 0, 4, 5]);
        assert_eq!(ALL.iter_from(63).take(2).collect::<Vec<_>>(), [63, 0]);
        assert_eq!(CpuMask::first(3), CpuMask(0b111));
        assert_eq!(CpuMask::first(64), ALL);
        assert!(!CpuMask::one(3).contains(64));
    }

    #[test]
    fn refuses_what_it_cannot_do_and_changes_nothing() {
        let p = Params::default();
        assert_eq!(CreditScheduler::new(0, p, 0).err(), Some(SchedError::BadCpuCount));
        assert_eq!(CreditScheduler::new(65, p, 0).err(), Some(SchedError::BadCpuCount));
        let zero = Params { boost_ns: 0, ..p };
        assert_eq!(CreditScheduler::new(1, zero, 0).err(), Some(SchedError::BadParams));

        let mut s = setup(4, 0, 1);
        assert_eq!(s.add_domain(1, DEFAULT_WEIGHT, 0), Err(SchedError::DomainExists));
        assert_eq!(s.add_domain(2, 0, 0), Err(SchedError::BadWeight));
        assert_eq!(s.add_domain(2, DEFAULT_WEIGHT, 401), Err(SchedError::BadCap));
        assert_eq!(s.set_params(1, 0, 0, 0), Err(SchedError::BadWeight));
        assert_eq!(s.set_params(9, 1, 0, 0), Err(SchedError::NoSuchDomain));
        assert_eq!(s.add_vcpu(id(2, 0), ALL), Err(SchedError::NoSuchDomain));
        assert_eq!(s.add_vcpu(id(1, 0), ALL), Err(SchedError::VcpuExists));
        assert_eq!(s.add_vcpu(id(1, 1), CpuMask(0b1_0000)), Err(SchedError::BadAffinity));
        assert_eq!(s.set_affinity(id(1, 0), CpuMask::EMPTY, 0), Err(SchedError::BadAffinity));
        assert_eq!(s.block(id(1, 0), 0), Err(SchedError::NotRunning));
        assert_eq!(s.wake(id(1, 7), 0), Err(SchedError::NoSuchVcpu));
        assert_eq!(s.remove_vcpu(id(3, 0), 0), Err(SchedError::NoSuchVcpu));
        assert_eq!(s.remove_domain(3, 0), Err(SchedError::NoSuchDomain));
        assert_eq!(state(&s, id(1, 0), 0), VcpuState::Paused);
        assert_eq!(s.vcpu_info(id(1, 0), 0).unwrap().affinity, CpuMask(0b1111));
        s.check_invariants(0);
    }

    #[test]
    fn a_new_vcpu_waits_for_unpause_then_takes_an_idle_cpu() {
        let mut s = setup(2, 0, 1);
        let d = s.schedule(1, 0);
        assert_eq!(d, Decision { run: None, until_ns: None, kick: CpuMask::EMPTY });
        // It has not run anywhere: the first pCPU it may use is idle.
        assert_eq!(s.unpause(id(1, 0), 5), Ok(CpuMask::one(0)));
        assert_eq!(state(&s, id(1, 0), 5), VcpuState::Queued { cpu: 0 });
        let d = s.schedule(0, 10);
        assert_eq!(d.run, Some(id(1, 0)));
        assert_eq!(d.until_ns, Some(10 + Params::default().slice_ns));
        assert_eq!(state(&s, id(1, 0), 10), VcpuState::Running { cpu: 0 });
        s.check_invariants(0);
    }

    #[test]
    fn a_woken_vcpu_preempts_with_boost_and_keeps_it_for_boost_ns() {
        let mut s = setup(1, 0, 2);
        let (a, b) = (id(1, 0), id(1, 1));
        assert_eq!(s.unpause(b, 0), Ok(CpuMask::one(0)));
        assert_eq!(s.schedule(0, 0).run, Some(b));
        s.block(b, MS).unwrap();
        assert_eq!(state(&s, b, MS), VcpuState::Blocked);
        assert_eq!(s.schedule(0, MS).run, None);
        s.unpause(a, MS).unwrap();
        assert_eq!(s.schedule(0, MS).run, Some(a));
        // b wakes with credit left: BOOST, above a's UNDER, so cpu0 is kicked.
        assert_eq!(s.wake(b, 2 * MS), Ok(CpuMask::one(0)));
        assert_eq!(s.vcpu_info(b, 2 * MS).unwrap().prio, Prio::Boost);
        let d = s.schedule(0, 2 * MS);
        assert_eq!(d.run, Some(b));
        assert_eq!(d.until_ns, Some(2 * MS + Params::default().boost_ns));
        // At the end of its boost, a (queued ahead of it in UNDER) runs.
        assert_eq!(s.schedule(0, 12 * MS).run, Some(a));
        assert_eq!(s.vcpu_info(b, 12 * MS).unwrap().prio, Prio::Under);
        // Waking a vCPU that is not blocked does nothing.
        assert_eq!(s.wake(b, 13 * MS), Ok(CpuMask::EMPTY));
        s.check_invariants(0);
    }

    #[test]
    fn pausing_a_running_vcpu_kicks_its_cpu_and_survives_a_wake() {
        let mut s = setup(2, 0, 1);
        let v = id(1, 0);
        s.unpause(v, 0).unwrap();
        assert_eq!(s.schedule(0, 0).run, Some(v));
        assert_eq!(s.pause(v, MS), Ok(CpuMask::one(0)));
        s.check_invariants(0);
        assert_eq!(s.schedule(0, MS).run, None);
        assert_eq!(state(&s, v, MS), VcpuState::Paused);
        // A wake while paused does not start it; unpause does.
        assert_eq!(s.wake(v, 2 * MS), Ok(CpuMask::EMPTY));
        assert_eq!(state(&s, v, 2 * MS), VcpuState::Paused);
        assert_eq!(s.unpause(v, 3 * MS), Ok(CpuMask::one(0)));
        assert_eq!(s.vcpu_info(v, 3 * MS).unwrap().cpu_time_ns, MS);
        s.check_invariants(0);
    }

    #[test]
    fn a_cap_parks_the_domain_until_the_refill() {
        // 25% of a 30 ms period: 7.5 ms, then parked until the accounting.
        let mut s = setup(1, 25, 1);
        let v = id(1, 0);
        s.unpause(v, 0).unwrap();
        let d = s.schedule(0, 0);
        assert_eq!((d.run, d.until_ns), (Some(v), Some(7_500_000)));
        let d = s.schedule(0, 7_500_000);
        assert_eq!((d.run, d.until_ns), (None, Some(30 * MS)));
        assert_eq!(state(&s, v, 7_500_000), VcpuState::Parked);
        s.check_invariants(0);
        let d = s.schedule(0, 30 * MS);
        assert_eq!((d.run, d.until_ns), (Some(v), Some(37_500_000)));
        // Removing the cap unparks at once.
        assert_eq!(s.schedule(0, 37_500_000).run, None);
        assert_eq!(s.set_params(1, DEFAULT_WEIGHT, 0, 38 * MS), Ok(CpuMask::one(0)));
        assert_eq!(state(&s, v, 38 * MS), VcpuState::Queued { cpu: 0 });
        s.check_invariants(0);
    }

    #[test]
    fn a_late_accounting_refills_at_most_a_period_and_a_slice_and_says_so() {
        let mut s = setup(1, 25, 1);
        let v = id(1, 0);
        s.unpause(v, 0).unwrap();
        let _ = s.schedule(0, 0);
        assert_eq!(s.schedule(0, 7_500_000).run, None);
        // On time: nothing lost.
        assert_eq!(s.schedule(0, 30 * MS).until_ns, Some(37_500_000));
        assert_eq!(s.late_refills(), (0, 0));
        let _ = s.schedule(0, 37_500_000);
        // 100 ms late (the pCPU did not look for 130 ms): 60 ms refilled,
        // 15 ms to run (the first 10 of them boosted).
        let d = s.schedule(0, 160 * MS);
        assert_eq!((d.run, d.until_ns), (Some(v), Some(170 * MS)));
        assert_eq!(s.late_refills(), (1, 130 * MS));
        assert_eq!(s.schedule(0, 170 * MS).until_ns, Some(175 * MS));
        s.check_invariants(0);
    }

    #[test]
    fn affinity_moves_queued_and_running_vcpus() {
        let mut s = setup(3, 0, 2);
        let (a, b) = (id(1, 0), id(1, 1));
        s.set_affinity(a, CpuMask::one(0), 0).unwrap();
        s.set_affinity(b, CpuMask::one(0), 0).unwrap();
        s.unpause(a, 0).unwrap();
        s.unpause(b, 0).unwrap();
        assert_eq!(s.schedule(0, 0).run, Some(a));
        assert_eq!(state(&s, b, 0), VcpuState::Queued { cpu: 0 });
        // Queued b moves to idle cpu2 at once, which is kicked.
        assert_eq!(s.set_affinity(b, CpuMask::one(2), MS), Ok(CpuMask::one(2)));
        assert_eq!(state(&s, b, MS), VcpuState::Queued { cpu: 2 });
        // Running a moves when cpu0, kicked, reschedules.
        assert_eq!(s.set_affinity(a, CpuMask::one(1), MS), Ok(CpuMask::one(0)));
        s.check_invariants(0);
        let d = s.schedule(0, 2 * MS);
        assert_eq!((d.run, d.kick), (None, CpuMask::one(1)));
        assert_eq!(state(&s, a, 2 * MS), VcpuState::Queued { cpu: 1 });
        s.check_invariants(0);
    }
}
