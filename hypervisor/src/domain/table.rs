//! The domain table: IDs, names, states and their checked transitions. Pure
//! logic, generic over the per-domain resources `R` (memory, nested tables,
//! images on the target; `()` in host tests), so every rule here is tested on
//! the host. The target side (`domain::control`) acts on the `Effect`s.
//!
//! States (docs/hypercalls.md): `Created` → (build, unpause) → `Running` ⇄
//! `Paused`; `Running` → `ShuttingDown` (a request the guest may honour, with a
//! deadline) → ended; ended by the guest, a crash, a timeout or `destroy` →
//! `Dying` (freed once no CPU holds its vCPUs), a restart (same ID, fresh boot),
//! or `Shutdown` (kept, stopped).

use alloc::string::String;
use alloc::vec::Vec;
use oxen_abi::{request, Action, DomainInfo, DomainState, Error, ShutdownReason, NAME_LEN};

/// dom0's ID.
pub const DOM0: u32 = 0;
/// Highest domain ID before IDs wrap around (Xen's DOMID_FIRST_RESERVED).
pub const MAX_ID: u32 = 0x7fef;
/// Most domains at once, dom0 included: every ID but one, so that the search
/// for a free ID in `create` always ends. What bounds a host in practice is
/// its heap (`heap_fits`, -ENOMEM) and its RAM, not this.
pub const MAX_DOMAINS: usize = MAX_ID as usize;

/// Heap bytes a domU's metadata may take, at most, apart from its memory:
/// its console ring (16 KiB) and echo queue (8 KiB), its entry here, its
/// vCPU objects and the scheduler's, with room to spare.
pub const DOMAIN_HEAP_BYTES: usize = 48 * 1024;
/// Heap bytes per 2 MiB of a domU's RAM, at most: its chunk list (8 bytes),
/// its memory map (a 32-byte region, in a vector that may be twice as long as
/// it needs and is reallocated while it grows) and its vCPU's copy (32 bytes).
pub const CHUNK_HEAP_BYTES: usize = 8 + 3 * 32 + 32;
/// Heap kept free for the hypervisor's own work (log lines, hypercall
/// buffers, the scheduler): a create never takes it.
pub const HEAP_RESERVE: usize = 1 << 20;

/// Heap bytes a domU of `memory_mib` needs (see `DOMAIN_HEAP_BYTES`).
pub fn metadata_bytes(memory_mib: u32) -> usize {
    DOMAIN_HEAP_BYTES + (memory_mib as usize).div_ceil(2) * CHUNK_HEAP_BYTES
}

/// Whether the heap, with `heap_free` bytes free, can hold a domU of
/// `memory_mib` and still keep `HEAP_RESERVE`: -ENOMEM if not, so the host
/// never halts on an allocation a create made.
pub fn heap_fits(memory_mib: u32, heap_free: usize) -> Result<(), Error> {
    match metadata_bytes(memory_mib).checked_add(HEAP_RESERVE) {
        Some(need) if need <= heap_free => Ok(()),
        _ => Err(Error::NoMem),
    }
}

/// What a domU is created with (validated by the caller against the ABI limits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub name: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub on_poweroff: Action,
    pub on_reboot: Action,
    pub on_crash: Action,
}

pub struct Domain<R> {
    pub id: u32,
    pub name: String,
    pub state: DomainState,
    pub privileged: bool,
    /// Its kernel is laid out in its memory: it can start.
    pub built: bool,
    pub memory_kib: u64,
    pub vcpus: u32,
    pub on_poweroff: Action,
    pub on_reboot: Action,
    pub on_crash: Action,
    /// What dom0 asked it to do (`request::*`).
    pub request: u64,
    /// When a request that was not honoured is carried out by force.
    pub deadline: Option<u64>,
    pub shutdown_reason: Option<ShutdownReason>,
    /// Set when it must boot again; the CPU that holds its vCPU does it.
    pub restart_pending: bool,
    /// Boots so far under this ID, minus one.
    pub restarts: u32,
    /// vCPUs handed to CPUs' run queues and not yet given back.
    pub live_vcpus: u32,
    pub cpu_time_ns: u64,
    pub exits: u64,
    pub res: R,
}

impl<R> Domain<R> {
    pub fn info(&self) -> DomainInfo {
        let mut name = [0u8; NAME_LEN];
        let n = self.name.len().min(NAME_LEN - 1);
        name[..n].copy_from_slice(&self.name.as_bytes()[..n]);
        let mut flags = 0;
        if self.privileged {
            flags |= oxen_abi::info_flags::PRIVILEGED;
        }
        if self.built {
            flags |= oxen_abi::info_flags::BUILT;
        }
        DomainInfo {
            domid: self.id,
            state: self.state as u32,
            vcpus: self.vcpus,
            flags,
            memory_kib: self.memory_kib,
            cpu_time_ns: self.cpu_time_ns,
            exits: self.exits,
            restarts: self.restarts,
            shutdown_reason: self.shutdown_reason.map_or(0, |r| r as u32),
            name,
        }
    }

    fn action_for(&self, reason: ShutdownReason) -> Action {
        match reason {
            ShutdownReason::Poweroff => self.on_poweroff,
            ShutdownReason::Reboot => self.on_reboot,
            ShutdownReason::Crash => self.on_crash,
        }
    }
}

/// What the caller must do after a transition.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    Nothing,
    /// First start: hand the domain's vCPUs to run queues.
    Start,
    /// Wake the CPUs holding its vCPUs so they notice the change.
    Kick,
}

/// Sorted by ID, so that a lookup by ID (every hypercall naming a domain,
/// every poll of a blocked vCPU) is a binary search, and with an index by name
/// so that a create's uniqueness check is one too: neither grows with the
/// number of domains beyond log n.
pub struct Table<R> {
    doms: Vec<Domain<R>>,
    /// The IDs in `doms`, ordered by name.
    by_name: Vec<u32>,
    /// How many domains have a shutdown deadline: `overdue`, which dom0's
    /// CPU calls every turn, looks at the table only when some do.
    deadlines: usize,
    next_id: u32,
}

impl<R> Default for Table<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R> Table<R> {
    pub const fn new() -> Self {
        Self { doms: Vec::new(), by_name: Vec::new(), deadlines: 0, next_id: 1 }
    }

    pub fn len(&self) -> usize {
        self.doms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.doms.is_empty()
    }

    fn index(&self, id: u32) -> Result<usize, usize> {
        self.doms.binary_search_by_key(&id, |d| d.id)
    }

    pub fn get(&self, id: u32) -> Option<&Domain<R>> {
        self.index(id).ok().map(|i| &self.doms[i])
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut Domain<R>> {
        self.index(id).ok().map(|i| &mut self.doms[i])
    }

    /// Where `name` is, or would go, in `by_name`.
    fn name_index(&self, name: &str) -> Result<usize, usize> {
        self.by_name.binary_search_by(|&id| self.get(id).map_or("", |d| d.name.as_str()).cmp(name))
    }

    /// The domain named `name`.
    pub fn find(&self, name: &str) -> Option<&Domain<R>> {
        self.name_index(name).ok().and_then(|i| self.get(self.by_name[i]))
    }

    fn domu_mut(&mut self, id: u32) -> Result<&mut Domain<R>, Error> {
        match self.get_mut(id) {
            Some(d) if d.privileged => Err(Error::Perm),
            Some(d) => Ok(d),
            None => Err(Error::NoEnt),
        }
    }

    /// Every domain, in ID order.
    pub fn iter(&self) -> impl Iterator<Item = &Domain<R>> {
        self.doms.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Domain<R>> {
        self.doms.iter_mut()
    }

    /// Adds dom0, running.
    pub fn add_dom0(&mut self, memory_kib: u64, vcpus: u32, res: R) {
        let cfg = Config {
            name: String::from("Domain-0"),
            memory_mib: 0,
            vcpus,
            on_poweroff: Action::Preserve,
            on_reboot: Action::Preserve,
            on_crash: Action::Preserve,
        };
        let mut d = Self::new_domain(DOM0, cfg.name.clone(), &cfg, res);
        d.privileged = true;
        d.built = true;
        d.memory_kib = memory_kib;
        d.state = DomainState::Running;
        d.live_vcpus = vcpus;
        let at = self.name_index(&d.name).unwrap_or_else(|at| at);
        self.doms.insert(0, d);
        self.by_name.insert(at, DOM0);
    }

    fn new_domain(id: u32, name: String, cfg: &Config, res: R) -> Domain<R> {
        Domain {
            id,
            name,
            state: DomainState::Created,
            privileged: false,
            built: false,
            memory_kib: u64::from(cfg.memory_mib) * 1024,
            vcpus: cfg.vcpus,
            on_poweroff: cfg.on_poweroff,
            on_reboot: cfg.on_reboot,
            on_crash: cfg.on_crash,
            request: request::NONE,
            deadline: None,
            shutdown_reason: None,
            restart_pending: false,
            restarts: 0,
            live_vcpus: 0,
            cpu_time_ns: 0,
            exits: 0,
            res,
        }
    }

    /// Checks that a domain named `name` could be created now.
    pub fn can_create(&self, name: &str) -> Result<(), Error> {
        if self.name_index(name).is_ok() {
            return Err(Error::Exist);
        }
        if self.doms.len() >= MAX_DOMAINS {
            return Err(Error::NoSpc);
        }
        Ok(())
    }

    /// A new domU in state `Created`; IDs grow until they wrap, as in Xen, so a
    /// stale ID rarely names a new domain.
    pub fn create(&mut self, cfg: &Config, res: R) -> Result<u32, Error> {
        self.create_or_return(cfg, res).map_err(|(e, _)| e)
    }

    /// As `create`, but hands `res` back when it fails, so the caller can
    /// free what it holds.
    pub fn create_or_return(&mut self, cfg: &Config, res: R) -> Result<u32, (Error, R)> {
        if let Err(e) = self.can_create(&cfg.name) {
            return Err((e, res));
        }
        let mut name = String::new();
        if self.doms.try_reserve(1).is_err()
            || self.by_name.try_reserve(1).is_err()
            || name.try_reserve_exact(cfg.name.len()).is_err()
        {
            return Err((Error::NoMem, res));
        }
        name.push_str(&cfg.name);
        let mut id = self.next_id;
        while self.get(id).is_some() {
            id = if id >= MAX_ID { 1 } else { id + 1 };
        }
        self.next_id = if id >= MAX_ID { 1 } else { id + 1 };
        let d = Self::new_domain(id, name, cfg, res);
        let at = self.index(id).unwrap_err();
        let name_at = self.name_index(&cfg.name).unwrap_err();
        // Within the capacity reserved above: no allocation.
        self.doms.insert(at, d);
        self.by_name.insert(name_at, id);
        Ok(id)
    }

    /// Starts a built domain, or resumes a paused one.
    pub fn unpause(&mut self, id: u32) -> Result<Effect, Error> {
        let d = self.domu_mut(id)?;
        match d.state {
            DomainState::Created if d.built => {
                d.state = DomainState::Running;
                // Each vCPU releases itself when the domain dies.
                d.live_vcpus = d.vcpus;
                Ok(Effect::Start)
            }
            DomainState::Paused => {
                d.state = DomainState::Running;
                Ok(Effect::Kick)
            }
            _ => Err(Error::Busy),
        }
    }

    /// Starts a built domain that never ran straight into `Paused` (its
    /// vCPUs are made and stop before their first instruction).
    pub fn start_paused(&mut self, id: u32) -> Result<Effect, Error> {
        let d = self.domu_mut(id)?;
        match d.state {
            DomainState::Created if d.built => {
                d.state = DomainState::Paused;
                d.live_vcpus = d.vcpus;
                Ok(Effect::Start)
            }
            _ => Err(Error::Busy),
        }
    }

    pub fn pause(&mut self, id: u32) -> Result<Effect, Error> {
        let d = self.domu_mut(id)?;
        match d.state {
            DomainState::Running => {
                d.state = DomainState::Paused;
                Ok(Effect::Kick)
            }
            _ => Err(Error::Busy),
        }
    }

    /// Asks a running domain to power off or reboot by `deadline`.
    pub fn request_shutdown(&mut self, id: u32, reason: ShutdownReason, deadline: u64) -> Result<Effect, Error> {
        let d = self.domu_mut(id)?;
        if reason == ShutdownReason::Crash {
            return Err(Error::Inval);
        }
        match d.state {
            DomainState::Running => {
                d.state = DomainState::ShuttingDown;
                d.request = if reason == ShutdownReason::Reboot { request::REBOOT } else { request::POWEROFF };
                d.shutdown_reason = Some(reason);
                if d.deadline.replace(deadline).is_none() {
                    self.deadlines += 1;
                }
                Ok(Effect::Kick)
            }
            _ => Err(Error::Busy),
        }
    }

    /// The domain ended (it asked, it crashed, or its deadline passed): applies
    /// its `on_*` action and returns it.
    pub fn end(&mut self, id: u32, reason: ShutdownReason) -> Result<Action, Error> {
        let d = self.domu_mut(id)?;
        if matches!(d.state, DomainState::Dying | DomainState::Shutdown) || d.restart_pending {
            return Err(Error::Busy);
        }
        let action = d.action_for(reason);
        d.shutdown_reason = Some(reason);
        d.request = request::NONE;
        let had_deadline = d.deadline.take().is_some();
        match action {
            Action::Destroy => d.state = DomainState::Dying,
            Action::Preserve => d.state = DomainState::Shutdown,
            Action::Restart => d.restart_pending = true,
        }
        if had_deadline {
            self.deadlines -= 1;
        }
        Ok(action)
    }

    /// The CPU holding the domain's vCPU booted it again.
    pub fn finish_restart(&mut self, id: u32) {
        if let Some(d) = self.get_mut(id) {
            d.restart_pending = false;
            d.restarts += 1;
            d.shutdown_reason = None;
            if d.state == DomainState::ShuttingDown {
                d.state = DomainState::Running;
            }
        }
    }

    /// Ends a domain at once. Returns it, removed, when no CPU holds its vCPUs
    /// (its resources can be freed now); otherwise it is `Dying` until the last
    /// `release_vcpu`.
    pub fn destroy(&mut self, id: u32) -> Result<Option<Domain<R>>, Error> {
        let d = self.domu_mut(id)?;
        d.state = DomainState::Dying;
        d.restart_pending = false;
        Ok(if d.live_vcpus == 0 { self.remove(id) } else { None })
    }

    /// A CPU dropped one of the domain's vCPUs. Returns the domain, removed,
    /// once it is dying and no vCPU is left.
    pub fn release_vcpu(&mut self, id: u32) -> Option<Domain<R>> {
        let d = self.get_mut(id)?;
        d.live_vcpus = d.live_vcpus.saturating_sub(1);
        (d.state == DomainState::Dying && d.live_vcpus == 0).then(|| self.remove(id)).flatten()
    }

    fn remove(&mut self, id: u32) -> Option<Domain<R>> {
        let i = self.index(id).ok()?;
        if let Ok(n) = self.name_index(&self.doms[i].name) {
            self.by_name.remove(n);
        }
        if self.doms[i].deadline.is_some() {
            self.deadlines -= 1;
        }
        Some(self.doms.remove(i))
    }

    /// Domains whose shutdown request has passed its deadline, with the reason
    /// asked for (the caller ends them).
    pub fn overdue(&self, now: u64) -> Vec<(u32, ShutdownReason)> {
        if self.deadlines == 0 {
            return Vec::new();
        }
        self.doms
            .iter()
            .filter(|d| d.state == DomainState::ShuttingDown && d.deadline.is_some_and(|t| now >= t))
            .map(|d| (d.id, d.shutdown_reason.unwrap_or(ShutdownReason::Poweroff)))
            .collect()
    }

    /// Whether a vCPU of the domain may run now.
    pub fn runnable(&self, id: u32) -> bool {
        self.get(id).is_some_and(|d| {
            matches!(d.state, DomainState::Running | DomainState::ShuttingDown) && !d.restart_pending
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: &str) -> Config {
        Config {
            name: name.into(),
            memory_mib: 16,
            vcpus: 1,
            on_poweroff: Action::Destroy,
            on_reboot: Action::Restart,
            on_crash: Action::Destroy,
        }
    }

    fn table() -> Table<()> {
        let mut t = Table::new();
        t.add_dom0(256 * 1024, 1, ());
        t
    }

    #[test]
    fn ids_grow_and_names_are_unique() {
        let mut t = table();
        assert_eq!(t.create(&cfg("a"), ()), Ok(1));
        assert_eq!(t.create(&cfg("b"), ()), Ok(2));
        assert_eq!(t.create(&cfg("a"), ()), Err(Error::Exist));
        assert!(t.destroy(1).unwrap().is_some());
        // The freed ID is not reused at once.
        assert_eq!(t.create(&cfg("a"), ()), Ok(3));
        let ids: Vec<u32> = t.iter().map(|d| d.id).collect();
        assert_eq!(ids, [0, 2, 3]);
    }

    #[test]
    fn ids_wrap_past_the_last_and_skip_live_ones() {
        let mut t = table();
        t.next_id = MAX_ID;
        assert_eq!(t.create(&cfg("a"), ()), Ok(MAX_ID));
        assert_eq!(t.create(&cfg("b"), ()), Ok(1));
        t.next_id = 1;
        assert_eq!(t.create(&cfg("c"), ()), Ok(2));
    }

    #[test]
    fn table_is_bounded() {
        let mut t = table();
        for i in 1..MAX_DOMAINS {
            t.create(&cfg(&alloc::format!("d{i}")), ()).unwrap();
        }
        assert_eq!(t.create(&cfg("one-more"), ()), Err(Error::NoSpc));
    }

    #[test]
    fn lookups_by_id_and_name_agree_through_creates_and_destroys() {
        // Names out of ID order, destroys in the middle: the indexes follow.
        let mut t = table();
        let names = ["m", "b", "z", "a", "q", "c"];
        for n in names {
            t.create(&cfg(n), ()).unwrap();
        }
        assert!(t.destroy(t.find("z").unwrap().id).unwrap().is_some());
        assert!(t.destroy(t.find("a").unwrap().id).unwrap().is_some());
        assert_eq!(t.create(&cfg("a"), ()), Ok(7));
        assert_eq!(t.create(&cfg("b"), ()), Err(Error::Exist));
        for d in t.iter() {
            assert_eq!(t.find(&d.name).map(|f| f.id), Some(d.id), "{}", d.name);
            assert_eq!(t.get(d.id).map(|g| g.name.as_str()), Some(d.name.as_str()));
        }
        assert!(t.find("z").is_none() && t.get(3).is_none());
        assert_eq!(t.find("Domain-0").map(|d| d.id), Some(DOM0));
        let ids: Vec<u32> = t.iter().map(|d| d.id).collect();
        assert_eq!(ids, [0, 1, 2, 5, 6, 7]);
    }

    #[test]
    fn a_create_the_heap_cannot_hold_fails_with_nomem() {
        // Exactly enough: fits; a byte less: -ENOMEM.
        let need = metadata_bytes(64) + HEAP_RESERVE;
        assert_eq!(heap_fits(64, need), Ok(()));
        assert_eq!(heap_fits(64, need - 1), Err(Error::NoMem));
        // The largest domU the ABI allows: no overflow, just -ENOMEM.
        assert_eq!(heap_fits(u32::MAX, 8 << 20), Err(Error::NoMem));
        // Per 2 MiB of RAM, what the metadata really takes (a chunk address,
        // a region in the domain's map and in its vCPU's copy) fits.
        let region = core::mem::size_of::<crate::virt::guest_mem::GuestRegion>();
        assert!(CHUNK_HEAP_BYTES >= 8 + 3 * region + region, "a region is {region} bytes");
    }

    #[test]
    fn a_failed_create_leaves_the_table_as_it_was() {
        // Filling a simulated heap: every create is checked first, and the
        // one that does not fit leaves no trace.
        let mut t = table();
        let mut heap_free = 4 << 20;
        let mut made = 0;
        loop {
            let c = cfg(&alloc::format!("d{made}"));
            match heap_fits(c.memory_mib, heap_free) {
                Ok(()) => {
                    t.create(&c, ()).unwrap();
                    heap_free -= metadata_bytes(c.memory_mib);
                    made += 1;
                }
                Err(e) => {
                    assert_eq!(e, Error::NoMem);
                    break;
                }
            }
        }
        assert!(made > 0 && heap_free >= HEAP_RESERVE);
        assert_eq!(t.len(), made + 1);
        // The next free ID is still the next one: nothing was half made.
        assert_eq!(t.create(&cfg("after"), ()), Ok(made as u32 + 1));
    }

    #[test]
    fn dom0_is_out_of_reach() {
        let mut t = table();
        assert_eq!(t.pause(DOM0), Err(Error::Perm));
        assert_eq!(t.destroy(DOM0).err(), Some(Error::Perm));
        assert_eq!(t.request_shutdown(DOM0, ShutdownReason::Poweroff, 0), Err(Error::Perm));
        assert_eq!(t.end(DOM0, ShutdownReason::Crash), Err(Error::Perm));
        assert_eq!(t.pause(9), Err(Error::NoEnt));
    }

    #[test]
    fn start_needs_a_built_kernel() {
        let mut t = table();
        let id = t.create(&cfg("a"), ()).unwrap();
        assert_eq!(t.unpause(id), Err(Error::Busy));
        t.get_mut(id).unwrap().built = true;
        assert_eq!(t.pause(id), Err(Error::Busy));
        assert_eq!(t.unpause(id), Ok(Effect::Start));
        assert_eq!(t.get(id).unwrap().live_vcpus, t.get(id).unwrap().vcpus);
        assert!(t.runnable(id));
        assert_eq!(t.pause(id), Ok(Effect::Kick));
        assert!(!t.runnable(id));
        assert_eq!(t.pause(id), Err(Error::Busy));
        assert_eq!(t.unpause(id), Ok(Effect::Kick));
        assert_eq!(t.get(id).unwrap().state, DomainState::Running);
    }

    #[test]
    fn a_start_paused_domain_waits_for_its_unpause() {
        let mut t = table();
        let id = t.create(&cfg("r"), ()).unwrap();
        assert_eq!(t.start_paused(id), Err(Error::Busy), "not built");
        t.get_mut(id).unwrap().built = true;
        assert_eq!(t.start_paused(id), Ok(Effect::Start));
        assert_eq!(t.get(id).unwrap().state, DomainState::Paused);
        assert_eq!(t.get(id).unwrap().live_vcpus, t.get(id).unwrap().vcpus);
        assert!(!t.runnable(id));
        assert_eq!(t.start_paused(id), Err(Error::Busy), "started already");
        assert_eq!(t.unpause(id), Ok(Effect::Kick), "then runs as a resumed domain");
        assert!(t.runnable(id));
        assert_eq!(t.start_paused(id), Err(Error::Busy));
        assert_eq!(t.start_paused(0), Err(Error::Perm), "dom0 is out of reach");
    }

    fn running(t: &mut Table<()>, name: &str) -> u32 {
        let id = t.create(&cfg(name), ()).unwrap();
        t.get_mut(id).unwrap().built = true;
        t.unpause(id).unwrap();
        id
    }

    #[test]
    fn shutdown_request_then_guest_honours_it() {
        let mut t = table();
        let id = running(&mut t, "a");
        assert_eq!(t.request_shutdown(id, ShutdownReason::Crash, 10), Err(Error::Inval));
        assert_eq!(t.request_shutdown(id, ShutdownReason::Poweroff, 10), Ok(Effect::Kick));
        assert_eq!(t.get(id).unwrap().request, request::POWEROFF);
        assert!(t.runnable(id), "it must run to honour the request");
        assert_eq!(t.request_shutdown(id, ShutdownReason::Poweroff, 10), Err(Error::Busy));
        assert!(t.overdue(9).is_empty());
        assert_eq!(t.end(id, ShutdownReason::Poweroff), Ok(Action::Destroy));
        assert_eq!(t.get(id).unwrap().state, DomainState::Dying);
        assert!(!t.runnable(id));
        // Freed only when the CPU holding its vCPU lets go.
        assert!(t.release_vcpu(id).is_some());
        assert!(t.get(id).is_none());
    }

    #[test]
    fn overdue_requests_are_reported_with_their_reason() {
        let mut t = table();
        let a = running(&mut t, "a");
        let b = running(&mut t, "b");
        t.request_shutdown(a, ShutdownReason::Reboot, 100).unwrap();
        t.request_shutdown(b, ShutdownReason::Poweroff, 200).unwrap();
        assert_eq!(t.overdue(150), [(a, ShutdownReason::Reboot)]);
        assert_eq!(t.overdue(200).len(), 2);
        // The count that spares `overdue` its walk follows ends and destroys.
        assert_eq!(t.deadlines, 2);
        t.end(a, ShutdownReason::Reboot).unwrap();
        assert_eq!(t.deadlines, 1);
        t.destroy(b).unwrap();
        assert_eq!(t.deadlines, 1, "dying, its vCPU still held: listed");
        assert!(t.release_vcpu(b).is_some());
        assert_eq!(t.deadlines, 0);
        assert!(t.overdue(u64::MAX).is_empty());
    }

    #[test]
    fn reboot_restarts_under_the_same_id() {
        let mut t = table();
        let id = running(&mut t, "a");
        assert_eq!(t.end(id, ShutdownReason::Reboot), Ok(Action::Restart));
        assert!(!t.runnable(id), "not until its memory is fresh");
        assert_eq!(t.end(id, ShutdownReason::Crash), Err(Error::Busy));
        t.finish_restart(id);
        let d = t.get(id).unwrap();
        assert_eq!((d.state, d.restarts, d.restart_pending), (DomainState::Running, 1, false));
        assert!(t.runnable(id));
    }

    #[test]
    fn preserve_keeps_it_until_destroyed() {
        let mut t = table();
        let id = t.create(&Config { on_crash: Action::Preserve, ..cfg("a") }, ()).unwrap();
        t.get_mut(id).unwrap().built = true;
        t.unpause(id).unwrap();
        assert_eq!(t.end(id, ShutdownReason::Crash), Ok(Action::Preserve));
        let d = t.get(id).unwrap();
        assert_eq!((d.state, d.shutdown_reason), (DomainState::Shutdown, Some(ShutdownReason::Crash)));
        assert_eq!(t.unpause(id), Err(Error::Busy));
        // Its vCPU is still held by a CPU: destroy marks it, the release frees it.
        assert!(t.destroy(id).unwrap().is_none());
        assert_eq!(t.get(id).unwrap().state, DomainState::Dying);
        assert!(t.release_vcpu(id).is_some());
    }

    #[test]
    fn never_started_domains_are_freed_at_once() {
        let mut t = table();
        let id = t.create(&cfg("a"), ()).unwrap();
        assert!(t.destroy(id).unwrap().is_some());
        assert_eq!(t.destroy(id).err(), Some(Error::NoEnt));
    }

    #[test]
    fn info_reports_state_and_flags() {
        let mut t = table();
        let id = running(&mut t, "web");
        let i = t.get(id).unwrap().info();
        assert_eq!(oxen_abi::c_str(&i.name), Some("web"));
        assert_eq!((i.state, i.memory_kib, i.flags), (DomainState::Running as u32, 16 * 1024, oxen_abi::info_flags::BUILT));
        let d0 = t.get(DOM0).unwrap().info();
        assert_eq!(d0.flags & oxen_abi::info_flags::PRIVILEGED, oxen_abi::info_flags::PRIVILEGED);
    }
}
