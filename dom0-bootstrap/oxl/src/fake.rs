//! An in-memory hypervisor for the tests: domains with the ABI's states and
//! checks, staged images, console and log rings, memory accounting, the credit
//! scheduler's weight and cap per domain and affinity per vCPU (with the ABI's
//! limits), and its own clock (`sleep` advances it), so destroy and shutdown
//! waits run instantly. Failures can be injected per command, and every call
//! is logged.

use std::cell::{RefCell, RefMut};
use std::collections::BTreeMap;
use std::mem::size_of;
use std::rc::Rc;
use std::time::Duration;

use oxen_abi::{
    c_str, device_kind, domctl, info_flags, DeviceAdd, IrqLine, DEVICE_GSI_FIRST, DEVICE_SIZE,
    DEVICE_STRIDE, DEVICE_WINDOW, MAX_DEVICES, name_bytes, nr, sched_flags, valid_name, vcpu_state, Action,
    BuildDomain, CreateDomain, DomainInfo, DomainRef, DomainState, Error, LoadImage, PhysInfo, Pod,
    RingRead, SchedCredit, ShutdownDomain, ShutdownReason, VcpuAffinity, VcpuInfo,
    ABI_CONSOLE_INPUT, ABI_VERSION, ALL_DOMAINS, CONSOLE_INPUT_MAX, DEFAULT_WEIGHT, DOMCTL_BUF_MAX,
    IMAGE_MAX, MAX_VCPUS, MAX_WEIGHT, MIN_MEMORY_MIB,
};

use crate::cpulist::online_mask;
use crate::hv::{CallError, CallResult, Hypervisor};

#[derive(Default)]
pub struct Staged {
    pub total: u64,
    pub bytes: Vec<u8>,
}

pub struct FakeVcpu {
    /// The pCPU it runs or last ran on.
    pub cpu: u32,
    /// Allowed pCPUs, always within the online ones.
    pub affinity: u64,
    pub cpu_time_ns: u64,
    /// A `vcpu_state` that overrides the one the domain's state implies.
    pub state: Option<u32>,
}

pub struct FakeDomain {
    pub info: DomainInfo,
    pub weight: u32,
    pub cap: u32,
    pub vcpus: Vec<FakeVcpu>,
    /// on_poweroff, on_reboot, on_crash.
    pub actions: [Action; 3],
    pub kernel: Staged,
    pub ramdisk: Staged,
    pub cmdline: String,
    /// Every console byte ever written (the ring keeps the last `State::ring`).
    pub console: Vec<u8>,
    /// Console input sent and not read by the guest (`State::input_room` at most).
    pub input: Vec<u8>,
    /// Declared devices' lines (`DEVICE_ADD`), and each line's level.
    pub lines: Vec<(u32, bool)>,
    dying_until: Option<Duration>,
    shutdown_at: Option<(Duration, ShutdownReason)>,
}

pub struct State {
    pub doms: BTreeMap<u32, FakeDomain>,
    pub next_id: u32,
    pub now: Duration,
    pub total_kib: u64,
    pub free_kib: u64,
    /// pCPUs, all online.
    pub cpus: u32,
    pub version: u32,
    /// One line per call, e.g. "LOAD 1 kernel @0 +65536/70000".
    pub calls: Vec<String>,
    /// The next call of this DOMCTL command fails with this error.
    pub fail: Vec<(u64, Error)>,
    /// The next device model the tests' launcher starts fails with this.
    pub dm_fails: Option<String>,
    /// How long a destroyed domain stays `Dying`.
    pub dying_for: Duration,
    /// How long a guest takes to act on a shutdown request.
    pub shutdown_delay: Duration,
    pub dmesg: Vec<u8>,
    /// Bytes a console or log ring keeps.
    pub ring: usize,
    /// Most bytes one LOAD_IMAGE takes.
    pub max_take: usize,
    /// Bytes a domain's console input queue holds.
    pub input_room: usize,
    /// It has dom0's event line (`Hypervisor::console_events` answers); the
    /// fake never makes the descriptor readable, so waits run to their timeout.
    pub event_line: bool,
}

#[derive(Clone)]
pub struct Fake(pub Rc<RefCell<State>>);

impl Fake {
    /// A host with 512 MiB, dom0 (256 MiB) running.
    pub fn new() -> Self {
        let mut s = State {
            doms: BTreeMap::new(),
            next_id: 1,
            now: Duration::ZERO,
            total_kib: 512 * 1024,
            free_kib: 256 * 1024,
            cpus: 2,
            version: ABI_VERSION,
            calls: Vec::new(),
            fail: Vec::new(),
            dm_fails: None,
            dying_for: Duration::from_millis(300),
            shutdown_delay: Duration::from_secs(1),
            dmesg: Vec::new(),
            ring: 1024,
            max_take: usize::MAX,
            input_room: 4096,
            event_line: false,
        };
        let mut dom0 = domain(0, "Domain-0", 256, 1, [Action::Destroy; 3], s.cpus);
        dom0.info.state = DomainState::Running as u32;
        dom0.info.flags = info_flags::PRIVILEGED | info_flags::BUILT;
        s.doms.insert(0, dom0);
        Self(Rc::new(RefCell::new(s)))
    }

    pub fn state(&self) -> RefMut<'_, State> {
        self.0.borrow_mut()
    }

    /// Adds a built domain in `state` (memory taken from the pool); returns its ID.
    pub fn add(&self, name: &str, state: DomainState) -> u32 {
        let mut s = self.state();
        let id = s.next_id;
        s.next_id += 1;
        let mut d = domain(
            id,
            name,
            64,
            1,
            [Action::Destroy, Action::Restart, Action::Destroy],
            s.cpus,
        );
        d.info.state = state as u32;
        d.info.flags = info_flags::BUILT;
        s.free_kib -= 64 * 1024;
        s.doms.insert(id, d);
        id
    }

    /// Adds a domain like `add` with `vcpus` vCPUs.
    pub fn add_vcpus(&self, name: &str, state: DomainState, vcpus: u32) -> u32 {
        let id = self.add(name, state);
        let mut s = self.state();
        let cpus = s.cpus;
        let d = s.doms.get_mut(&id).expect("just added");
        d.info.vcpus = vcpus;
        d.vcpus = (0..vcpus).map(|n| vcpu(n, cpus)).collect();
        id
    }

    /// The calls made so far, without the reads (VERSION, LIST, INFO, PHYS,
    /// VCPUS, and SCHED that sets nothing).
    pub fn actions(&self) -> Vec<String> {
        self.state()
            .calls
            .iter()
            .filter(|c| {
                !["VERSION", "LIST", "INFO", "PHYS", "VCPUS", "EVENTS"]
                    .iter()
                    .any(|r| c.starts_with(r))
                    && !c.ends_with(" get")
            })
            .cloned()
            .collect()
    }
}

/// vCPU `n` of a new domain on a host of `cpus` pCPUs: unpinned, placed round robin.
fn vcpu(n: u32, cpus: u32) -> FakeVcpu {
    FakeVcpu {
        cpu: n % cpus,
        affinity: online_mask(cpus),
        cpu_time_ns: 0,
        state: None,
    }
}

fn domain(
    domid: u32,
    name: &str,
    mib: u32,
    vcpus: u32,
    actions: [Action; 3],
    cpus: u32,
) -> FakeDomain {
    FakeDomain {
        info: DomainInfo {
            domid,
            state: DomainState::Created as u32,
            vcpus,
            flags: 0,
            memory_kib: u64::from(mib) * 1024,
            cpu_time_ns: 0,
            exits: 0,
            restarts: 0,
            shutdown_reason: 0,
            name: name_bytes(name).expect("a valid name"),
        },
        weight: DEFAULT_WEIGHT,
        cap: 0,
        vcpus: (0..vcpus).map(|n| vcpu(n, cpus)).collect(),
        actions,
        kernel: Staged::default(),
        ramdisk: Staged::default(),
        cmdline: String::new(),
        console: Vec::new(),
        input: Vec::new(),
        lines: Vec::new(),
        dying_until: None,
        shutdown_at: None,
    }
}

fn arg<T: Pod>(bytes: &[u8]) -> CallResult<T> {
    if bytes.len() != size_of::<T>() {
        return Err(CallError::Hv(Error::Inval));
    }
    Ok(T::read_from(bytes).expect("sized"))
}

fn put<T: Pod>(bytes: &mut [u8], v: &T) {
    bytes[..size_of::<T>()].copy_from_slice(v.as_bytes());
}

/// Reads a ring (all bytes ever written, of which the last `keep` are kept).
fn ring_read(data: &[u8], keep: usize, r: &mut RingRead, buf: &mut [u8]) -> u64 {
    let oldest = data.len().saturating_sub(keep) as u64;
    let start = r.offset.max(oldest).min(data.len() as u64);
    r.lost = oldest.saturating_sub(r.offset);
    let n = buf.len().min(data.len() - start as usize);
    buf[..n].copy_from_slice(&data[start as usize..start as usize + n]);
    r.next = start + n as u64;
    n as u64
}

impl State {
    fn dom(&mut self, domid: u32) -> CallResult<&mut FakeDomain> {
        self.doms.get_mut(&domid).ok_or(CallError::Hv(Error::NoEnt))
    }

    /// Lets `dt` pass: guests run, shutdowns complete, dying domains go.
    fn advance(&mut self, dt: Duration) {
        self.now += dt;
        let now = self.now;
        let mut gone = Vec::new();
        for (id, d) in self.doms.iter_mut() {
            if d.info.state == DomainState::Running as u32 {
                // Each vCPU busy half the time, ten exits a millisecond.
                d.info.cpu_time_ns += dt.as_nanos() as u64 * u64::from(d.info.vcpus) / 2;
                d.info.exits += dt.as_millis() as u64 * 10;
                for v in &mut d.vcpus {
                    v.cpu_time_ns += dt.as_nanos() as u64 / 2;
                }
            }
            if let Some((at, reason)) = d.shutdown_at {
                if now >= at {
                    d.shutdown_at = None;
                    match d.actions[reason as usize] {
                        Action::Destroy => {
                            d.info.state = DomainState::Dying as u32;
                            d.dying_until = Some(now + self.dying_for);
                        }
                        Action::Restart => {
                            d.info.restarts += 1;
                            d.info.state = DomainState::Running as u32;
                        }
                        Action::Preserve => d.info.state = DomainState::Shutdown as u32,
                    }
                }
            }
            if d.dying_until.is_some_and(|t| now >= t) {
                gone.push(*id);
            }
        }
        for id in gone {
            let d = self.doms.remove(&id).expect("listed");
            self.free_kib += d.info.memory_kib;
        }
    }

    fn domctl(&mut self, cmd: u64, a: &mut [u8], buf: &mut [u8]) -> CallResult<u64> {
        if buf.len() as u64 > DOMCTL_BUF_MAX {
            return Err(CallError::Hv(Error::TooBig));
        }
        if let Some(i) = self.fail.iter().position(|(c, _)| *c == cmd) {
            let (_, e) = self.fail.remove(i);
            self.calls.push(format!("FAILED {cmd} {e:?}"));
            return Err(CallError::Hv(e));
        }
        let state = |d: &FakeDomain| DomainState::from_u32(d.info.state).expect("valid");
        match cmd {
            domctl::CREATE => {
                let c: CreateDomain = arg(a)?;
                let name = c_str(&c.name).unwrap_or("");
                self.calls
                    .push(format!("CREATE {name} {}M {}cpu", c.memory_mib, c.vcpus));
                let actions = [c.on_poweroff, c.on_reboot, c.on_crash].map(Action::from_u8);
                if c.flags != 0
                    || c._pad != 0
                    || !valid_name(name)
                    || !(1..=MAX_VCPUS).contains(&c.vcpus)
                    || c.memory_mib < MIN_MEMORY_MIB
                    || actions.contains(&None)
                {
                    return Err(CallError::Hv(Error::Inval));
                }
                if self
                    .doms
                    .values()
                    .any(|d| c_str(&d.info.name) == Some(name))
                {
                    return Err(CallError::Hv(Error::Exist));
                }
                let kib = u64::from(c.memory_mib) * 1024;
                if kib > self.free_kib {
                    return Err(CallError::Hv(Error::NoMem));
                }
                let id = self.next_id;
                self.next_id += 1;
                self.free_kib -= kib;
                let d = domain(
                    id,
                    name,
                    c.memory_mib,
                    c.vcpus,
                    actions.map(|a| a.expect("checked")),
                    self.cpus,
                );
                self.doms.insert(id, d);
                Ok(u64::from(id))
            }
            domctl::LOAD_IMAGE => {
                let l: LoadImage = arg(a)?;
                let kind = ["kernel", "ramdisk"]
                    .get(l.kind as usize)
                    .copied()
                    .unwrap_or("?");
                self.calls.push(format!(
                    "LOAD {} {kind} @{} +{}/{}",
                    l.domid,
                    l.offset,
                    buf.len(),
                    l.total
                ));
                let take = self.max_take;
                let d = self.dom(l.domid)?;
                if state(d) != DomainState::Created || d.info.flags & info_flags::BUILT != 0 {
                    return Err(CallError::Hv(Error::Busy));
                }
                let img = match l.kind {
                    0 => &mut d.kernel,
                    1 => &mut d.ramdisk,
                    _ => return Err(CallError::Hv(Error::Inval)),
                };
                if l.total > IMAGE_MAX {
                    return Err(CallError::Hv(Error::TooBig));
                }
                if l.offset == 0 {
                    *img = Staged {
                        total: l.total,
                        bytes: Vec::new(),
                    };
                }
                if l.offset != img.bytes.len() as u64
                    || l.total != img.total
                    || l.offset + buf.len() as u64 > l.total
                    || buf.is_empty()
                {
                    return Err(CallError::Hv(Error::Inval));
                }
                let n = buf.len().min(take);
                img.bytes.extend_from_slice(&buf[..n]);
                Ok(n as u64)
            }
            domctl::BUILD => {
                let b: BuildDomain = arg(a)?;
                let cmdline = c_str(&b.cmdline).unwrap_or("?").to_owned();
                self.calls.push(format!("BUILD {} {cmdline:?}", b.domid));
                let d = self.dom(b.domid)?;
                if state(d) != DomainState::Created || d.info.flags & info_flags::BUILT != 0 {
                    return Err(CallError::Hv(Error::Busy));
                }
                let complete = |s: &Staged| s.bytes.len() as u64 == s.total;
                if d.kernel.total == 0 || !complete(&d.kernel) || !complete(&d.ramdisk) {
                    return Err(CallError::Hv(Error::Inval));
                }
                if !d.kernel.bytes.starts_with(b"\x7fELF") {
                    return Err(CallError::Hv(Error::NoExec));
                }
                d.cmdline = cmdline;
                d.info.flags |= info_flags::BUILT;
                Ok(0)
            }
            domctl::UNPAUSE | domctl::PAUSE | domctl::DESTROY => {
                let r: DomainRef = arg(a)?;
                let what = match cmd {
                    domctl::UNPAUSE => "UNPAUSE",
                    domctl::PAUSE => "PAUSE",
                    _ => "DESTROY",
                };
                self.calls.push(format!("{what} {}", r.domid));
                let (now, dying_for) = (self.now, self.dying_for);
                let d = self.dom(r.domid)?;
                if d.info.flags & info_flags::PRIVILEGED != 0 && cmd != domctl::UNPAUSE {
                    return Err(CallError::Hv(Error::Perm));
                }
                let s = state(d);
                let next = match (cmd, s) {
                    (domctl::UNPAUSE, DomainState::Created)
                        if d.info.flags & info_flags::BUILT != 0 =>
                    {
                        DomainState::Running
                    }
                    (domctl::UNPAUSE, DomainState::Paused) => DomainState::Running,
                    (domctl::PAUSE, DomainState::Running) => DomainState::Paused,
                    (domctl::DESTROY, DomainState::Dying) => return Ok(0),
                    (domctl::DESTROY, _) => {
                        d.dying_until = Some(now + dying_for);
                        d.shutdown_at = None;
                        DomainState::Dying
                    }
                    _ => return Err(CallError::Hv(Error::Busy)),
                };
                d.info.state = next as u32;
                Ok(0)
            }
            domctl::SHUTDOWN => {
                let r: ShutdownDomain = arg(a)?;
                self.calls
                    .push(format!("SHUTDOWN {} {}", r.domid, r.reason));
                let at = self.now + self.shutdown_delay;
                let d = self.dom(r.domid)?;
                let reason = match ShutdownReason::from_u64(u64::from(r.reason)) {
                    Some(s @ (ShutdownReason::Poweroff | ShutdownReason::Reboot)) => s,
                    _ => return Err(CallError::Hv(Error::Inval)),
                };
                if !matches!(state(d), DomainState::Running | DomainState::Paused) {
                    return Err(CallError::Hv(Error::Busy));
                }
                d.info.state = DomainState::ShuttingDown as u32;
                d.info.shutdown_reason = reason as u32;
                d.shutdown_at = Some((at, reason));
                Ok(0)
            }
            domctl::GET_INFO => {
                let r: DomainRef = arg(a)?;
                self.calls.push(format!("INFO {}", r.domid));
                if buf.len() < size_of::<DomainInfo>() {
                    return Err(CallError::Hv(Error::Inval));
                }
                let info = self.dom(r.domid)?.info;
                put(buf, &info);
                Ok(0)
            }
            domctl::LIST => {
                self.calls.push("LIST".into());
                for (slot, d) in buf
                    .chunks_exact_mut(size_of::<DomainInfo>())
                    .zip(self.doms.values())
                {
                    put(slot, &d.info);
                }
                Ok(self.doms.len() as u64)
            }
            domctl::CONSOLE_READ | domctl::DMESG => {
                let mut r: RingRead = arg(a)?;
                let keep = self.ring;
                let n = if cmd == domctl::DMESG {
                    self.calls.push(format!("DMESG @{}", r.offset));
                    ring_read(&self.dmesg, keep, &mut r, buf)
                } else {
                    self.calls
                        .push(format!("CONSOLE {} @{}", r.domid, r.offset));
                    ring_read(&self.dom(r.domid)?.console, keep, &mut r, buf)
                };
                put(a, &r);
                Ok(n)
            }
            domctl::CONSOLE_INPUT if self.version < ABI_CONSOLE_INPUT => {
                Err(CallError::Hv(Error::NoSys))
            }
            domctl::CONSOLE_INPUT => {
                let r: DomainRef = arg(a)?;
                if buf.is_empty() || buf.len() as u64 > CONSOLE_INPUT_MAX {
                    return Err(CallError::Hv(Error::Inval));
                }
                let room = self.input_room;
                let d = self.dom(r.domid)?;
                if d.info.flags & info_flags::PRIVILEGED != 0 {
                    return Err(CallError::Hv(Error::Perm));
                }
                if matches!(
                    DomainState::from_u32(d.info.state),
                    Some(DomainState::Dying | DomainState::Shutdown)
                ) {
                    return Err(CallError::Hv(Error::Busy));
                }
                let n = buf.len().min(room - d.input.len());
                d.input.extend_from_slice(&buf[..n]);
                let line = format!(
                    "INPUT {} {:?} took {n}",
                    r.domid,
                    String::from_utf8_lossy(buf)
                );
                self.calls.push(line);
                Ok(n as u64)
            }
            domctl::PHYS_INFO => {
                self.calls.push("PHYS".into());
                if buf.len() < size_of::<PhysInfo>() {
                    return Err(CallError::Hv(Error::Inval));
                }
                let p = PhysInfo {
                    abi_version: self.version,
                    cpus: self.cpus,
                    total_kib: self.total_kib,
                    free_kib: self.free_kib,
                    tsc_khz: 2_000_000,
                    domains: self.doms.len() as u32,
                    vendor: 1,
                };
                put(buf, &p);
                Ok(0)
            }
            domctl::SCHED_CREDIT => {
                let mut c: SchedCredit = arg(a)?;
                let mut what = String::new();
                if c.flags & sched_flags::SET_WEIGHT != 0 {
                    what += &format!(" weight={}", c.weight);
                }
                if c.flags & sched_flags::SET_CAP != 0 {
                    what += &format!(" cap={}", c.cap);
                }
                if what.is_empty() {
                    what = " get".into();
                }
                self.calls.push(format!("SCHED {}{what}", c.domid));
                let max_cap = 100 * self.cpus;
                let d = self.dom(c.domid)?;
                if c.flags & !(sched_flags::SET_WEIGHT | sched_flags::SET_CAP) != 0
                    || (c.flags & sched_flags::SET_WEIGHT != 0
                        && !(1..=MAX_WEIGHT).contains(&c.weight))
                    || (c.flags & sched_flags::SET_CAP != 0 && c.cap > max_cap)
                {
                    return Err(CallError::Hv(Error::Inval));
                }
                if c.flags != 0 && state(d) == DomainState::Dying {
                    return Err(CallError::Hv(Error::Busy));
                }
                if c.flags & sched_flags::SET_WEIGHT != 0 {
                    d.weight = c.weight;
                }
                if c.flags & sched_flags::SET_CAP != 0 {
                    d.cap = c.cap;
                }
                c.weight = d.weight;
                c.cap = d.cap;
                put(a, &c);
                Ok(0)
            }
            domctl::VCPU_AFFINITY => {
                let v: VcpuAffinity = arg(a)?;
                self.calls
                    .push(format!("AFFINITY {} {} {:#x}", v.domid, v.vcpu, v.cpus));
                let online = online_mask(self.cpus);
                let d = self.dom(v.domid)?;
                if v.cpus & online == 0 {
                    return Err(CallError::Hv(Error::Inval));
                }
                if state(d) == DomainState::Dying {
                    return Err(CallError::Hv(Error::Busy));
                }
                let vcpu = d
                    .vcpus
                    .get_mut(v.vcpu as usize)
                    .ok_or(CallError::Hv(Error::Inval))?;
                vcpu.affinity = v.cpus & online;
                if vcpu.affinity & (1 << vcpu.cpu) == 0 {
                    vcpu.cpu = vcpu.affinity.trailing_zeros();
                }
                Ok(0)
            }
            domctl::VCPU_LIST => {
                let r: DomainRef = arg(a)?;
                if r.domid == ALL_DOMAINS {
                    self.calls.push("VCPUS all".into());
                } else {
                    self.calls.push(format!("VCPUS {}", r.domid));
                    self.dom(r.domid)?;
                }
                let mut all = Vec::new();
                for d in self.doms.values() {
                    if r.domid != ALL_DOMAINS && d.info.domid != r.domid {
                        continue;
                    }
                    let implied = match state(d) {
                        DomainState::Running | DomainState::ShuttingDown => vcpu_state::RUNNING,
                        DomainState::Paused => vcpu_state::PAUSED,
                        DomainState::Created | DomainState::Dying | DomainState::Shutdown => {
                            vcpu_state::OFFLINE
                        }
                    };
                    for (n, v) in d.vcpus.iter().enumerate() {
                        all.push(VcpuInfo {
                            domid: d.info.domid,
                            vcpu: n as u32,
                            cpu: v.cpu,
                            state: v.state.unwrap_or(implied),
                            affinity: v.affinity,
                            cpu_time_ns: v.cpu_time_ns,
                        });
                    }
                }
                for (slot, v) in buf.chunks_exact_mut(size_of::<VcpuInfo>()).zip(&all) {
                    put(slot, v);
                }
                Ok(all.len() as u64)
            }
            domctl::DEVICE_ADD => {
                let mut v: DeviceAdd = arg(a)?;
                self.calls.push(format!("DEVICE_ADD {} kind {}", v.domid, v.kind));
                let d = self.dom(v.domid)?;
                if v.kind != device_kind::VIRTIO_MMIO || v.base != 0 || v.size != 0 || v.gsi != 0 {
                    return Err(CallError::Hv(Error::Inval));
                }
                if d.info.flags & info_flags::PRIVILEGED != 0 {
                    return Err(CallError::Hv(Error::Perm));
                }
                if state(d) != DomainState::Created || d.info.flags & info_flags::BUILT != 0 {
                    return Err(CallError::Hv(Error::Busy));
                }
                let i = d.lines.len() as u32;
                if i >= MAX_DEVICES {
                    return Err(CallError::Hv(Error::NoSpc));
                }
                (v.base, v.size, v.gsi) = (DEVICE_WINDOW + u64::from(i) * DEVICE_STRIDE, DEVICE_SIZE, DEVICE_GSI_FIRST + i);
                d.lines.push((v.gsi, false));
                put(a, &v);
                Ok(u64::from(i))
            }
            domctl::IRQ_LINE => {
                let l: IrqLine = arg(a)?;
                self.calls.push(format!("IRQ_LINE {} {} {}", l.domid, l.gsi, l.level));
                let d = self.dom(l.domid)?;
                if l.level > 1 {
                    return Err(CallError::Hv(Error::Inval));
                }
                if d.info.flags & info_flags::PRIVILEGED != 0 {
                    return Err(CallError::Hv(Error::Perm));
                }
                if matches!(state(d), DomainState::Created | DomainState::Dying | DomainState::Shutdown) {
                    return Err(CallError::Hv(Error::Busy));
                }
                let line = d.lines.iter_mut().find(|(g, _)| *g == l.gsi).ok_or(CallError::Hv(Error::Inval))?;
                line.1 = l.level == 1;
                Ok(0)
            }
            _ => Err(CallError::Hv(Error::NoSys)),
        }
    }
}

impl Hypervisor for Fake {
    fn call(&mut self, nr: u64, cmd: u64, arg: &mut [u8], buf: &mut [u8]) -> CallResult<u64> {
        let mut s = self.state();
        match nr {
            nr::VERSION => {
                s.calls.push("VERSION".into());
                Ok(u64::from(s.version))
            }
            nr::DOMCTL => s.domctl(cmd, arg, buf),
            _ => Err(CallError::Hv(Error::NoSys)),
        }
    }

    fn sleep(&mut self, d: Duration) {
        self.state().advance(d);
    }

    fn console_events(&mut self) -> Option<std::os::fd::RawFd> {
        let mut s = self.state();
        s.calls.push("EVENTS console".into());
        // -1: poll(2) ignores it; the fake's Script never polls anyway.
        s.event_line.then_some(-1)
    }

    fn now(&mut self) -> Duration {
        self.state().now
    }
}
