//! A discrete-event simulation of pCPUs running guests under the credit
//! scheduler, as the hypervisor will drive it: each pCPU calls `schedule` when
//! its timer fires, when kicked (after `ipi_ns`), and when its vCPU halts.
//! Guests are workloads that spin, or run bursts of work between halts.
//!
//! On every decision the simulation checks the scheduler's invariants, that the
//! chosen vCPU may run there and runs nowhere else, and that the scheduler's
//! run time of every vCPU equals the simulation's own. It measures each vCPU's
//! CPU time, its wake-up latency (woken → running) and its longest wait while
//! runnable.

use super::credit::{CpuMask, CreditScheduler, Decision, Params, VcpuId, VcpuState};
use alloc::boxed::Box;
use alloc::vec::Vec;

pub const MS: u64 = 1_000_000;
pub const US: u64 = 1_000;

/// What a guest vCPU does.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// Never halts: a CPU hog, or a guest spinning with interrupts disabled
    /// (the hypervisor's timer preempts it all the same).
    Spin,
    /// Woken every `period_ns` from `phase_ns` (a timer, a packet), runs
    /// `burst_ns` of work, then halts. Work that arrives while it is still busy
    /// adds to what it has to do.
    Periodic { period_ns: u64, burst_ns: u64, phase_ns: u64 },
    /// Runs a uniform 1..=`max_run_ns`, then halts for 1..=`max_sleep_ns`.
    Random { max_run_ns: u64, max_sleep_ns: u64 },
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub n: u64,
    pub sum: u64,
    pub max: u64,
}

impl Stats {
    fn add(&mut self, x: u64) {
        self.n += 1;
        self.sum += x;
        self.max = self.max.max(x);
    }

    pub fn mean(&self) -> u64 {
        self.sum.checked_div(self.n).unwrap_or(0)
    }
}

pub struct SimVcpu {
    pub id: VcpuId,
    load: Load,
    /// The guest halted and waits for its next wake-up.
    halted: bool,
    /// Paused by the control plane (the property test).
    paused: bool,
    /// Work left before it halts.
    work: u64,
    next_wake: Option<u64>,
    woke_at: Option<u64>,
    /// Runnable but not running since then.
    ready_since: Option<u64>,
    pub removed: bool,
    pub ran_ns: u64,
    /// Woken → running.
    pub latency: Stats,
    /// Longest runnable-but-waiting stretch.
    pub max_wait_ns: u64,
}

struct SimCpu {
    running: Option<usize>,
    timer: Option<u64>,
    kick_at: Option<u64>,
}

pub struct Sim {
    pub sched: CreditScheduler,
    pub now: u64,
    start: u64,
    cpus: Vec<SimCpu>,
    pub vcpus: Vec<SimVcpu>,
    /// Kick (IPI) delivery time.
    pub ipi_ns: u64,
    rng: Box<dyn FnMut() -> u64>,
    pub decisions: u64,
}

impl Sim {
    pub fn new(ncpus: u32, params: Params) -> Self {
        // Not 0: the scheduler must not care where time starts.
        let start = 1_000 * MS;
        let mut sim = Self {
            sched: CreditScheduler::new(ncpus, params, start).unwrap(),
            now: start,
            start,
            cpus: (0..ncpus).map(|_| SimCpu { running: None, timer: None, kick_at: None }).collect(),
            vcpus: Vec::new(),
            ipi_ns: 2 * US,
            rng: Box::new(crate::emulate::testmem::xorshift(0x5eed_0fc4_ed17)),
            decisions: 0,
        };
        for cpu in 0..ncpus {
            sim.schedule(cpu);
        }
        sim
    }

    pub fn seed(&mut self, seed: u64) {
        self.rng = Box::new(crate::emulate::testmem::xorshift(seed));
    }

    pub fn rand(&mut self, max: u64) -> u64 {
        1 + (self.rng)() % max
    }

    pub fn add_domain(&mut self, dom: u32, weight: u16, cap: u32) {
        self.sched.add_domain(dom, weight, cap).unwrap();
    }

    /// Adds a vCPU and starts it (it runs its first burst at once; a
    /// `Periodic` one waits for its phase). Returns its index in `vcpus`.
    pub fn add_vcpu(&mut self, dom: u32, load: Load, affinity: CpuMask) -> usize {
        let vcpu = self.vcpus.iter().filter(|v| v.id.dom == dom).count() as u32;
        let id = VcpuId { dom, vcpu };
        self.sched.add_vcpu(id, affinity).unwrap();
        let i = self.vcpus.len();
        self.vcpus.push(SimVcpu {
            id,
            load,
            halted: false,
            paused: false,
            work: 0,
            next_wake: None,
            woke_at: None,
            ready_since: None,
            removed: false,
            ran_ns: 0,
            latency: Stats::default(),
            max_wait_ns: 0,
        });
        // A periodic guest halts as soon as it first runs, until its phase.
        if let Load::Periodic { phase_ns, .. } = load {
            self.vcpus[i].next_wake = Some(self.now + phase_ns);
        } else {
            self.vcpus[i].work = self.new_work(load);
        }
        self.vcpus[i].ready_since = Some(self.now);
        let kick = self.sched.unpause(id, self.now).unwrap();
        self.kick(kick);
        self.settle();
        i
    }

    fn new_work(&mut self, load: Load) -> u64 {
        match load {
            Load::Spin => u64::MAX,
            Load::Periodic { burst_ns, .. } => burst_ns,
            Load::Random { max_run_ns, .. } => self.rand(max_run_ns),
        }
    }

    pub fn kick(&mut self, mask: CpuMask) {
        let at = self.now + self.ipi_ns;
        for cpu in mask.iter() {
            let k = &mut self.cpus[cpu as usize].kick_at;
            *k = Some(k.map_or(at, |k| k.min(at)));
        }
    }

    /// Runs the machine until `end`.
    pub fn run_until(&mut self, end: u64) {
        loop {
            let t = self.next_event().min(end);
            self.advance(t);
            if t == end {
                // Events due exactly at `end` wait for the next call.
                return;
            }
            self.settle();
        }
    }

    pub fn run_for(&mut self, ns: u64) {
        self.run_until(self.now + ns);
    }

    /// Time since the simulation started.
    pub fn elapsed(&self) -> u64 {
        self.now - self.start
    }

    /// Share of the elapsed time vCPU `i` ran, in percent of one pCPU.
    pub fn percent(&self, i: usize) -> f64 {
        self.vcpus[i].ran_ns as f64 * 100.0 / self.elapsed() as f64
    }

    fn next_event(&self) -> u64 {
        let mut t = u64::MAX;
        for c in &self.cpus {
            t = t.min(c.timer.unwrap_or(u64::MAX)).min(c.kick_at.unwrap_or(u64::MAX));
            if let Some(i) = c.running {
                t = t.min(self.now.saturating_add(self.vcpus[i].work));
            }
        }
        for v in &self.vcpus {
            if v.halted && !v.removed {
                t = t.min(v.next_wake.unwrap_or(u64::MAX));
            }
        }
        t
    }

    fn advance(&mut self, t: u64) {
        let dt = t - self.now;
        for c in &self.cpus {
            if let Some(i) = c.running {
                let v = &mut self.vcpus[i];
                v.ran_ns += dt;
                v.work = v.work.saturating_sub(dt);
            }
        }
        self.now = t;
    }

    /// Handles every event due now, including the ones they cause.
    pub fn settle(&mut self) {
        loop {
            let now = self.now;
            let mut did = false;
            // Guests that finished their work halt.
            for cpu in 0..self.cpus.len() {
                if let Some(i) = self.cpus[cpu].running {
                    if self.vcpus[i].work == 0 {
                        let sleep = match self.vcpus[i].load {
                            Load::Random { max_sleep_ns, .. } => Some(now + self.rand(max_sleep_ns)),
                            _ => None,
                        };
                        let v = &mut self.vcpus[i];
                        v.halted = true;
                        if sleep.is_some() {
                            v.next_wake = sleep;
                        }
                        self.sched.block(v.id, now).unwrap();
                        self.cpus[cpu].running = None;
                        self.schedule(cpu as u32);
                        did = true;
                    }
                }
            }
            // Wake-ups that are due.
            for i in 0..self.vcpus.len() {
                let v = &mut self.vcpus[i];
                let Some(due) = v.next_wake.filter(|&w| w <= now && !v.removed) else {
                    continue;
                };
                did = true;
                if let Load::Periodic { period_ns, burst_ns, .. } = v.load {
                    v.next_wake = Some(due + period_ns);
                    if !v.halted {
                        v.work += burst_ns;
                        continue;
                    }
                } else {
                    v.next_wake = None;
                }
                let work = self.new_work(self.vcpus[i].load);
                let v = &mut self.vcpus[i];
                v.work = work;
                v.halted = false;
                if !v.paused {
                    v.woke_at = Some(now);
                    v.ready_since = Some(now);
                }
                let kick = self.sched.wake(v.id, now).unwrap();
                self.kick(kick);
            }
            // Timers and kicks.
            for cpu in 0..self.cpus.len() {
                let c = &self.cpus[cpu];
                if c.timer.is_some_and(|t| t <= now) || c.kick_at.is_some_and(|t| t <= now) {
                    self.schedule(cpu as u32);
                    did = true;
                }
            }
            if !did {
                return;
            }
        }
    }

    fn schedule(&mut self, cpu: u32) {
        let d = self.sched.schedule(cpu, self.now);
        self.apply(cpu, d);
    }

    fn apply(&mut self, cpu: u32, d: Decision) {
        let now = self.now;
        self.decisions += 1;
        let next = d.run.map(|id| self.index(id));
        let c = &mut self.cpus[cpu as usize];
        let prev = c.running;
        c.running = next;
        c.timer = d.until_ns;
        c.kick_at = None;
        assert!(d.until_ns.is_none_or(|t| t > now), "cpu{cpu}: timer {:?} not in the future", d.until_ns);
        if let Some(p) = prev.filter(|&p| Some(p) != next) {
            let v = &mut self.vcpus[p];
            if !v.halted && !v.paused && !v.removed {
                v.ready_since = Some(now);
            }
        }
        if let Some(n) = next {
            let id = self.vcpus[n].id;
            let info = self.sched.vcpu_info(id, now).unwrap();
            assert!(info.affinity.contains(cpu), "{id} runs on cpu{cpu} outside its affinity {:#x}", info.affinity.0);
            assert_eq!(info.state, VcpuState::Running { cpu });
            for (other, c) in self.cpus.iter().enumerate() {
                assert!(other == cpu as usize || c.running != Some(n), "{id} on cpu{cpu} and cpu{other}");
            }
            let v = &mut self.vcpus[n];
            assert!(
                !v.halted && !v.paused && !v.removed,
                "{id} runs but halted {} paused {} removed {}",
                v.halted,
                v.paused,
                v.removed
            );
            if let Some(w) = v.woke_at.take() {
                v.latency.add(now - w);
            }
            if let Some(r) = v.ready_since.take() {
                v.max_wait_ns = v.max_wait_ns.max(now - r);
            }
        }
        self.kick(d.kick);
        self.check();
    }

    /// The scheduler's structure and its run times against the simulation's.
    pub fn check(&self) {
        self.sched.check_invariants(self.start);
        for v in self.vcpus.iter().filter(|v| !v.removed) {
            let info = self.sched.vcpu_info(v.id, self.now).unwrap();
            assert_eq!(info.cpu_time_ns, v.ran_ns, "{}: scheduler's run time differs", v.id);
        }
    }

    fn index(&self, id: VcpuId) -> usize {
        self.vcpus.iter().position(|v| v.id == id && !v.removed).expect("scheduler runs a vCPU the simulation has")
    }

    // ---- Control-plane operations, for the tests ------------------------------

    pub fn remove_vcpu(&mut self, i: usize) {
        let kick = self.sched.remove_vcpu(self.vcpus[i].id, self.now).unwrap();
        self.forget(i);
        self.kick(kick);
    }

    pub fn remove_domain(&mut self, dom: u32) {
        let kick = self.sched.remove_domain(dom, self.now).unwrap();
        for i in 0..self.vcpus.len() {
            if self.vcpus[i].id.dom == dom && !self.vcpus[i].removed {
                self.forget(i);
            }
        }
        self.kick(kick);
    }

    fn forget(&mut self, i: usize) {
        self.vcpus[i].removed = true;
        for c in &mut self.cpus {
            if c.running == Some(i) {
                c.running = None;
            }
        }
    }

    pub fn pause(&mut self, i: usize) {
        let kick = self.sched.pause(self.vcpus[i].id, self.now).unwrap();
        let v = &mut self.vcpus[i];
        v.paused = true;
        v.ready_since = None;
        v.woke_at = None;
        self.kick(kick);
    }

    pub fn unpause(&mut self, i: usize) {
        let kick = self.sched.unpause(self.vcpus[i].id, self.now).unwrap();
        let now = self.now;
        let v = &mut self.vcpus[i];
        v.paused = false;
        let running = self.cpus.iter().any(|c| c.running == Some(i));
        if !v.halted && !running {
            v.ready_since = Some(now);
        }
        self.kick(kick);
    }

    pub fn set_affinity(&mut self, i: usize, affinity: CpuMask) {
        let kick = self.sched.set_affinity(self.vcpus[i].id, affinity, self.now).unwrap();
        self.kick(kick);
    }
}

#[cfg(test)]
mod tests {
    //! Each test prints its figures; `cargo test -p oxen-hypervisor sched::sim
    //! -- --nocapture --test-threads 1` shows them (docs/architecture.md quotes them).
    use super::*;
    use crate::sched::credit::{SchedError, DEFAULT_WEIGHT};

    const ALL: CpuMask = CpuMask(u64::MAX);
    const W: u16 = DEFAULT_WEIGHT;

    fn pin(cpu: u32) -> CpuMask {
        CpuMask::one(cpu)
    }

    /// Two spinners pinned together on cpu0 with weights 256 and 512, cpu1
    /// running `other` (or idle): their run times must be 1:2 within 5%.
    fn weights_on_cpu0(other: Option<(Load, CpuMask)>) -> f64 {
        let mut sim = Sim::new(2, Params::default());
        sim.add_domain(1, 256, 0);
        sim.add_domain(2, 512, 0);
        let a = sim.add_vcpu(1, Load::Spin, pin(0));
        let b = sim.add_vcpu(2, Load::Spin, pin(0));
        if let Some((load, affinity)) = other {
            sim.add_domain(3, W, 0);
            sim.add_vcpu(3, load, affinity);
        }
        sim.run_for(10_000 * MS);
        let ratio = sim.vcpus[b].ran_ns as f64 / sim.vcpus[a].ran_ns as f64;
        let error = (ratio / 2.0 - 1.0).abs();
        println!(
            "weights 256:512 on cpu0, cpu1 {other:?}: {:.2}% vs {:.2}%, ratio {ratio:.4}, error {:.2}%",
            sim.percent(a),
            sim.percent(b),
            error * 100.0
        );
        assert!(error < 0.05, "ratio {ratio}");
        assert!(sim.percent(a) + sim.percent(b) > 99.9, "cpu0 idled");
        error
    }

    #[test]
    fn weights_share_a_pinned_cpu_1_to_2() {
        weights_on_cpu0(None);
        // Work elsewhere must not dilute the pinned pair's shares: a spinner on
        // cpu1, then one that may run anywhere (and so competes on cpu0 too).
        weights_on_cpu0(Some((Load::Spin, pin(1))));
        weights_on_cpu0(Some((Load::Random { max_run_ns: 5 * MS, max_sleep_ns: 5 * MS }, pin(1))));
    }

    #[test]
    fn weights_with_an_unpinned_competitor() {
        // cpu0: a (256), b (512); c (256) may run on either pCPU and gets cpu1
        // to itself. The ideal split gives c all of cpu1 and a:b = 1:2 on cpu0.
        let mut sim = Sim::new(2, Params::default());
        sim.add_domain(1, 256, 0);
        sim.add_domain(2, 512, 0);
        sim.add_domain(3, 256, 0);
        let a = sim.add_vcpu(1, Load::Spin, pin(0));
        let b = sim.add_vcpu(2, Load::Spin, pin(0));
        let c = sim.add_vcpu(3, Load::Spin, ALL);
        sim.run_for(10_000 * MS);
        let ratio = sim.vcpus[b].ran_ns as f64 / sim.vcpus[a].ran_ns as f64;
        println!(
            "pinned 256:512 + unpinned 256: {:.2}% {:.2}% {:.2}%, a:b ratio {ratio:.4}",
            sim.percent(a),
            sim.percent(b),
            sim.percent(c)
        );
        assert!((ratio / 2.0 - 1.0).abs() < 0.05, "ratio {ratio}");
        assert!(sim.percent(c) > 95.0);
    }

    /// A spinner in a domain capped at `cap`% with `n` vCPUs, on `ncpus`
    /// pCPUs shared with `rivals` uncapped spinners: percent of one pCPU.
    fn capped(cap: u32, n: usize, ncpus: u32, rivals: usize) -> f64 {
        let mut sim = Sim::new(ncpus, Params::default());
        sim.add_domain(1, W, cap);
        sim.add_domain(2, W, 0);
        let capped: Vec<usize> = (0..n).map(|_| sim.add_vcpu(1, Load::Spin, ALL)).collect();
        for _ in 0..rivals {
            sim.add_vcpu(2, Load::Spin, ALL);
        }
        sim.run_for(10_000 * MS);
        let got: f64 = capped.iter().map(|&i| sim.percent(i)).sum();
        println!("cap {cap}%: {n} vCPU(s) on {ncpus} pCPU(s) with {rivals} rival(s): {got:.3}%");
        got
    }

    #[test]
    fn cap_limits_a_domain() {
        for (cap, n, ncpus, rivals) in [(25, 1, 1, 0), (25, 1, 2, 1), (25, 1, 1, 2), (25, 2, 2, 0), (50, 2, 2, 2)] {
            let got = capped(cap, n, ncpus, rivals);
            assert!((got - cap as f64).abs() <= 3.0, "cap {cap}: got {got}%");
        }
        // A cap above what it wants does nothing: 150% of 2 pCPUs, 1 vCPU.
        let got = capped(150, 1, 2, 0);
        assert!(got > 99.9, "got {got}%");
    }

    /// An interactive vCPU (0.5 ms of work every 10 ms) pinned with three
    /// spinners: woken with BOOST, it preempts them at once.
    #[test]
    fn interactive_wakeup_latency_is_bounded_by_boost() {
        let mut sim = Sim::new(2, Params::default());
        sim.add_domain(4, W, 0);
        let load = Load::Periodic { period_ns: 10 * MS, burst_ns: 500 * US, phase_ns: 3 * MS };
        let i = sim.add_vcpu(4, load, pin(0));
        for dom in 1..=3 {
            sim.add_domain(dom, W, 0);
            sim.add_vcpu(dom, Load::Spin, pin(0));
        }
        sim.run_for(10_000 * MS);
        let v = &sim.vcpus[i];
        println!(
            "interactive vs 3 spinners on one pCPU: {} wake-ups, latency mean {} ns max {} ns, ran {:.2}%",
            v.latency.n,
            v.latency.mean(),
            v.latency.max,
            sim.percent(i)
        );
        assert_eq!(v.latency.n, 1000);
        assert!(v.latency.max <= Params::default().slice_ns, "max latency {}", v.latency.max);
        // In fact one IPI: nothing it waits behind.
        assert!(v.latency.max <= sim.ipi_ns);
        // It did all its work: 0.5 ms per 10 ms.
        assert!((sim.percent(i) - 5.0).abs() < 0.1);
    }

    /// dom0's vCPU (a 4 ms burst every 20 ms: 20% of a pCPU) against a
    /// guest spinning with interrupts disabled on the same pCPU.
    #[test]
    fn dom0_stays_responsive_against_a_spinner() {
        let mut sim = Sim::new(1, Params::default());
        sim.add_domain(0, W, 0);
        sim.add_domain(1, W, 0);
        let dom0 = sim.add_vcpu(0, Load::Periodic { period_ns: 20 * MS, burst_ns: 4 * MS, phase_ns: MS }, ALL);
        let spin = sim.add_vcpu(1, Load::Spin, ALL);
        sim.run_for(10_000 * MS);
        let v = &sim.vcpus[dom0];
        println!(
            "dom0 (20% load) vs spinner: latency mean {} ns max {} ns, dom0 {:.2}%, spinner {:.2}%",
            v.latency.mean(),
            v.latency.max,
            sim.percent(dom0),
            sim.percent(spin)
        );
        assert!(v.latency.max <= sim.ipi_ns);
        assert!((sim.percent(dom0) - 20.0).abs() < 0.1, "dom0 did not get its work done");
        assert!(sim.percent(spin) > 79.9);
    }

    #[test]
    fn spinners_balance_across_cpus() {
        for (n, ncpus) in [(4, 2), (3, 2), (5, 4)] {
            let mut sim = Sim::new(ncpus, Params::default());
            let mut got = Vec::new();
            for dom in 0..n {
                sim.add_domain(dom, W, 0);
                got.push(sim.add_vcpu(dom, Load::Spin, ALL));
            }
            sim.run_for(10_000 * MS);
            let fair = 100.0 * ncpus as f64 / n as f64;
            let shares: Vec<f64> = got.iter().map(|&i| sim.percent(i)).collect();
            let worst = shares.iter().map(|s| (s / fair - 1.0).abs()).fold(0.0, f64::max);
            println!("{n} spinners on {ncpus} pCPUs: {shares:.2?}, worst error {:.2}%", worst * 100.0);
            assert!(worst < 0.05, "{shares:?}");
            assert!(shares.iter().sum::<f64>() > ncpus as f64 * 100.0 - 0.1, "a pCPU idled");
        }
    }

    #[test]
    fn pinned_vcpus_never_move_to_an_idle_cpu() {
        // The simulation asserts affinity on every decision; here cpu1 must
        // stay idle although cpu0 is overloaded.
        let mut sim = Sim::new(2, Params::default());
        sim.add_domain(1, W, 0);
        let a = sim.add_vcpu(1, Load::Spin, pin(0));
        let b = sim.add_vcpu(1, Load::Spin, pin(0));
        sim.run_for(1_000 * MS);
        assert_eq!(sim.sched.cpu_info(1, sim.now).busy_ns, 0);
        assert!((sim.percent(a) - 50.0).abs() < 2.0 && (sim.percent(b) - 50.0).abs() < 2.0);
        // Re-pinned to cpu1 while running or queued: it moves.
        sim.set_affinity(b, pin(1));
        sim.run_for(1_000 * MS);
        assert!(sim.sched.cpu_info(1, sim.now).busy_ns > 999 * MS);
    }

    /// Runs `sim` for 10 s and checks that every vCPU ran and never waited,
    /// runnable, longer than its turn in a weighted round robin of slices
    /// among all vCPUs: slice × (sum of all weights) / its weight.
    fn check_no_starvation(mut sim: Sim, weights: &[(u32, u16)], what: &str) {
        sim.run_for(10_000 * MS);
        let weight = |dom: u32| weights.iter().find(|w| w.0 == dom).unwrap().1 as u64;
        let total: u64 = sim.vcpus.iter().map(|v| weight(v.id.dom)).sum();
        let mut worst = (0.0f64, 0, VcpuId { dom: 0, vcpu: 0 });
        for (i, v) in sim.vcpus.iter().enumerate() {
            let bound = Params::default().slice_ns * total / weight(v.id.dom);
            assert!(v.ran_ns > 0, "{} never ran", v.id);
            assert!(v.max_wait_ns <= bound, "{} waited {} ms, bound {} ms", v.id, v.max_wait_ns / MS, bound / MS);
            let ratio = v.max_wait_ns as f64 / bound as f64;
            if ratio > worst.0 {
                worst = (ratio, v.max_wait_ns, v.id);
            }
            println!(
                "  {}: {:.2}%, longest wait {} ms (bound {} ms)",
                v.id,
                sim.percent(i),
                v.max_wait_ns / MS,
                bound / MS
            );
        }
        println!(
            "{what}: longest wait relative to its bound {} ms ({:.0}% of its bound) by {}",
            worst.1 / MS,
            worst.0 * 100.0,
            worst.2
        );
    }

    #[test]
    fn nothing_starves() {
        // A mixed load on 3 pCPUs: spinners, random blockers, a periodic
        // vCPU, a capped domain, some pinning, weights 128 to 1024.
        let mut sim = Sim::new(3, Params::default());
        let weights = [(0, 256), (1, 128), (2, 1024), (3, 256), (4, 512)];
        for (dom, weight) in weights {
            sim.add_domain(dom, weight, if dom == 3 { 60 } else { 0 });
        }
        sim.add_vcpu(0, Load::Periodic { period_ns: 7 * MS, burst_ns: MS, phase_ns: 0 }, ALL);
        for dom in 1..=4 {
            sim.add_vcpu(dom, Load::Spin, ALL);
            sim.add_vcpu(dom, Load::Random { max_run_ns: 20 * MS, max_sleep_ns: 30 * MS }, ALL);
        }
        sim.add_vcpu(1, Load::Spin, pin(2));
        sim.add_vcpu(2, Load::Spin, CpuMask(0b011));
        check_no_starvation(sim, &weights, "mixed load, 11 vCPUs on 3 pCPUs");

        // A spinner against four vCPUs that wake every 5 ms for 1 ms each, all
        // on one pCPU: BOOST must not shut it out.
        let mut sim = Sim::new(1, Params::default());
        let weights = [(0, 256), (1, 256), (2, 256), (3, 256), (4, 256)];
        for (dom, weight) in weights {
            sim.add_domain(dom, weight, 0);
            let load = match dom {
                0 => Load::Spin,
                _ => Load::Periodic { period_ns: 5 * MS, burst_ns: MS, phase_ns: dom as u64 * 300 * US },
            };
            sim.add_vcpu(dom, load, ALL);
        }
        check_no_starvation(sim, &weights, "spinner vs 4 wakers at 20% each, one pCPU");
    }

    #[test]
    fn removing_running_vcpus_and_domains_is_clean() {
        let mut sim = Sim::new(2, Params::default());
        sim.add_domain(1, W, 0);
        sim.add_domain(2, W, 0);
        let d1: Vec<usize> = (0..3).map(|_| sim.add_vcpu(1, Load::Spin, ALL)).collect();
        let d2 = sim.add_vcpu(2, Load::Spin, ALL);
        sim.run_for(100 * MS + 7);

        // A running vCPU: its pCPU is kicked and runs something else.
        let running = *d1
            .iter()
            .find(|&&i| {
                matches!(sim.sched.vcpu_info(sim.vcpus[i].id, sim.now).unwrap().state, VcpuState::Running { .. })
            })
            .unwrap();
        let id = sim.vcpus[running].id;
        sim.remove_vcpu(running);
        sim.check();
        assert_eq!(sim.sched.vcpu_info(id, sim.now), Err(SchedError::NoSuchVcpu));
        assert_eq!(sim.sched.wake(id, sim.now), Err(SchedError::NoSuchVcpu));
        sim.run_for(100 * MS);

        // The whole domain, one vCPU running, one queued or running.
        let before = sim.vcpus[d2].ran_ns;
        sim.remove_domain(1);
        sim.check();
        assert_eq!(sim.sched.domain_cpu_time(1, sim.now), Err(SchedError::NoSuchDomain));
        sim.run_for(1_000 * MS);
        // The survivor has a pCPU to itself, the other idles.
        assert!(sim.vcpus[d2].ran_ns - before >= 1_000 * MS - sim.ipi_ns);
        // The ID can be used again.
        sim.add_domain(1, W, 0);
        let again = sim.add_vcpu(1, Load::Spin, ALL);
        sim.run_for(100 * MS);
        assert!(sim.vcpus[again].ran_ns > 99 * MS);
    }

    /// Random operations with a fixed seed; the simulation checks every
    /// invariant after each decision, and here after each operation too.
    #[test]
    fn random_operations_keep_invariants() {
        let mut sim = Sim::new(4, Params { slice_ns: 5 * MS, accounting_period_ns: 10 * MS, boost_ns: 2 * MS });
        sim.seed(0x0ced_5eed_2026_0001);
        let mut next_dom = 0u32;
        let mut ops = [0u32; 9];
        for _ in 0..4000 {
            let live: Vec<usize> = (0..sim.vcpus.len()).filter(|&i| !sim.vcpus[i].removed).collect();
            let doms: Vec<u32> = (0..next_dom).filter(|&d| sim.sched.domain_cpu_time(d, sim.now).is_ok()).collect();
            let op = sim.rand(9) as usize - 1;
            let pick = |sim: &mut Sim, n: usize| sim.rand(n as u64) as usize - 1;
            let vcpu = (!live.is_empty()).then(|| live[pick(&mut sim, live.len())]);
            let dom = (!doms.is_empty()).then(|| doms[pick(&mut sim, doms.len())]);
            match (op, vcpu, dom) {
                (0, _, _) if doms.len() < 6 => {
                    let cap = [0, 0, 0, 30, 100, 150][pick(&mut sim, 6)];
                    let weight = sim.rand(1024) as u16;
                    sim.add_domain(next_dom, weight, cap);
                    next_dom += 1;
                }
                (1, _, Some(dom)) if live.len() < 24 => {
                    let load = match sim.rand(3) {
                        1 => Load::Spin,
                        // Periods of 1 ms or more: shorter ones only make events.
                        2 => Load::Periodic {
                            period_ns: MS + sim.rand(19 * MS),
                            burst_ns: sim.rand(3 * MS),
                            phase_ns: 0,
                        },
                        _ => Load::Random { max_run_ns: sim.rand(20 * MS), max_sleep_ns: 100 * US + sim.rand(20 * MS) },
                    };
                    let affinity = CpuMask(sim.rand(15));
                    sim.add_vcpu(dom, load, affinity);
                }
                (2, Some(i), _) => sim.remove_vcpu(i),
                (3, _, Some(dom)) if sim.rand(4) == 1 => sim.remove_domain(dom),
                (4, Some(i), _) => {
                    let affinity = CpuMask(sim.rand(15));
                    sim.set_affinity(i, affinity);
                }
                (5, _, Some(dom)) => {
                    let cap = [0, 10, 50, 200][pick(&mut sim, 4)];
                    let weight = sim.rand(2048) as u16;
                    let kick = sim.sched.set_params(dom, weight, cap, sim.now).unwrap();
                    sim.kick(kick);
                }
                (6, Some(i), _) => sim.pause(i),
                (7, Some(i), _) => sim.unpause(i),
                _ => {
                    let ns = sim.rand(20 * MS);
                    sim.run_for(ns);
                    ops[8] += 1;
                    continue;
                }
            }
            ops[op] += 1;
            sim.check();
            sim.settle();
        }
        println!(
            "random operations: {ops:?} (add dom, add vcpu, rm vcpu, rm dom, affinity, params, pause, unpause, run), {} decisions, {} ms",
            sim.decisions,
            sim.elapsed() / MS
        );
        assert!(ops.iter().all(|&n| n > 20), "{ops:?}");
    }
}
