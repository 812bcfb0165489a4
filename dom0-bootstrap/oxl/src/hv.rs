//! The hypervisor as oxl sees it: one raw call (`Hypervisor::call`) and the
//! typed `DOMCTL` operations built on it. `/dev/oxen` implements the trait in
//! `device.rs`; the tests use an in-memory model (`fake.rs`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::mem::size_of;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use oxen_abi::{
    domctl, nr, BuildDomain, CreateDomain, DeviceAdd, IrqLine, DomainInfo, DomainRef, LoadImage, PhysInfo, Pod,
    RingRead, SchedCredit, ShutdownDomain, ShutdownReason, VcpuAffinity, VcpuInfo, VcpuStateRef, ALL_DOMAINS,
    CMDLINE_LEN, DOMCTL_BUF_MAX,
};

/// Why a call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallError {
    /// One of the ABI's errors (from the hypervisor, or the driver using the
    /// same errno).
    Hv(oxen_abi::Error),
    /// Any other errno, from the driver or the kernel.
    Os(i32),
}

impl CallError {
    /// The error an ioctl's errno stands for.
    pub fn from_errno(errno: i32) -> Self {
        oxen_abi::Error::from_rax((-i64::from(errno)) as u64).map_or(Self::Os(errno), Self::Hv)
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Hv(e) => f.write_str(e.describe()),
            Self::Os(libc::ENOTTY) => f.write_str(
                "/dev/oxen does not know oxl's ioctl (the oxen module and oxl come from different builds?)",
            ),
            Self::Os(e) => f.write_str(&os_error(&std::io::Error::from_raw_os_error(e))),
        }
    }
}

/// An OS error's text without Rust's " (os error N)" suffix.
pub fn os_error(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

pub type CallResult<T> = Result<T, CallError>;

/// A way to make hypercalls, plus the clock that waiting loops use (so the
/// tests' model can run them on its own time).
pub trait Hypervisor {
    /// Hypercall `nr` with command `cmd`; `arg` and `buf` are copied to the
    /// hypervisor and what it wrote is copied back. Returns RAX (non-negative).
    fn call(&mut self, nr: u64, cmd: u64, arg: &mut [u8], buf: &mut [u8]) -> CallResult<u64>;

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }

    /// Subscribes to `event::CONSOLE` (a domU wrote to its console) and
    /// re-arms it: returns a descriptor poll(2) finds readable once such an
    /// event came after this call, or `None` when there is no event line (an
    /// older hypervisor or driver; the caller polls then). ABI 1.5.
    fn console_events(&mut self) -> Option<RawFd> {
        None
    }

    /// Monotonic time since some fixed point.
    fn now(&mut self) -> Duration {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed()
    }
}

/// How many hypercalls a run of oxl made, by kind, and the time spent in them:
/// `OXL_STATS=1` prints it on stderr when the command ends (`main.rs`), to measure
/// what a command costs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// `(nr, cmd)` -> (calls, time in them), in call-number order.
    calls: BTreeMap<(u64, u64), (u64, Duration)>,
}

impl Tally {
    pub fn record(&mut self, nr: u64, cmd: u64, took: Duration) {
        // Only DOMCTL has commands; the driver refuses a cmd on the others.
        let cmd = if nr == nr::DOMCTL { cmd } else { 0 };
        let e = self.calls.entry((nr, cmd)).or_default();
        e.0 += 1;
        e.1 += took;
    }

    pub fn total(&self) -> u64 {
        self.calls.values().map(|c| c.0).sum()
    }

    /// `stats: 7 hypercalls, 812.5 us: version 1 (2.0 us), domctl-create 1 (700.1 us), ...`
    /// (one line, no newline): calls and the time from the ioctl's call to its return.
    pub fn report(&self) -> String {
        let us = |d: &Duration| d.as_secs_f64() * 1e6;
        let kinds: Vec<String> = self
            .calls
            .iter()
            .map(|(&(nr, cmd), (n, t))| format!("{} {n} ({:.1} us)", call_name(nr, cmd), us(t)))
            .collect();
        let time: Duration = self.calls.values().map(|c| c.1).sum();
        if kinds.is_empty() {
            return "stats: 0 hypercalls".to_owned();
        }
        format!(
            "stats: {} hypercalls, {:.1} us: {}",
            self.total(),
            us(&time),
            kinds.join(", ")
        )
    }
}

/// A hypercall's name in `Tally::report`: `version`, `domctl-load_image`, ...
pub fn call_name(nr: u64, cmd: u64) -> String {
    let name = match nr {
        nr::VERSION => "version",
        nr::NULL => "null",
        nr::DOMCTL => {
            let c = match cmd {
                domctl::CREATE => "create",
                domctl::LOAD_IMAGE => "load_image",
                domctl::BUILD => "build",
                domctl::UNPAUSE => "unpause",
                domctl::PAUSE => "pause",
                domctl::SHUTDOWN => "shutdown",
                domctl::DESTROY => "destroy",
                domctl::GET_INFO => "get_info",
                domctl::LIST => "list",
                domctl::CONSOLE_READ => "console_read",
                domctl::DMESG => "dmesg",
                domctl::PHYS_INFO => "phys_info",
                domctl::CONSOLE_INPUT => "console_input",
                domctl::IRQ_LINE => "irq_line",
                domctl::DEVICE_ADD => "device_add",
                _ => return format!("domctl-{cmd}"),
            };
            return format!("domctl-{c}");
        }
        _ => return format!("hypercall-{nr}"),
    };
    name.to_owned()
}

/// Whether a flag variable (`OXL_STATS`, `OXL_NO_EVENTS`; its value) is on: set, not empty, not `0`.
pub fn env_flag(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|v| !v.is_empty() && v != "0")
}

/// A `Hypervisor` that counts every call it passes on into a shared `Tally`.
pub struct Counting {
    inner: Box<dyn Hypervisor>,
    tally: Rc<RefCell<Tally>>,
}

impl Counting {
    pub fn new(inner: Box<dyn Hypervisor>, tally: Rc<RefCell<Tally>>) -> Self {
        Self { inner, tally }
    }
}

impl Hypervisor for Counting {
    fn call(&mut self, nr: u64, cmd: u64, arg: &mut [u8], buf: &mut [u8]) -> CallResult<u64> {
        // Counted whatever the answer: a refused call still went to the hypervisor.
        let start = self.inner.now();
        let r = self.inner.call(nr, cmd, arg, buf);
        let took = self.inner.now().saturating_sub(start);
        self.tally.borrow_mut().record(nr, cmd, took);
        r
    }

    fn sleep(&mut self, d: Duration) {
        self.inner.sleep(d);
    }

    fn console_events(&mut self) -> Option<RawFd> {
        self.inner.console_events()
    }

    fn now(&mut self) -> Duration {
        self.inner.now()
    }
}

/// One `DOMCTL` with a typed argument, which receives what the hypervisor wrote back.
fn domctl<A: Pod>(
    hv: &mut dyn Hypervisor,
    cmd: u64,
    arg: &mut A,
    buf: &mut [u8],
) -> CallResult<u64> {
    let mut bytes = arg.as_bytes().to_vec();
    let r = hv.call(nr::DOMCTL, cmd, &mut bytes, buf)?;
    *arg = A::read_from(&bytes).expect("the argument keeps its size");
    Ok(r)
}

fn domref(domid: u32) -> DomainRef {
    DomainRef { domid, _pad: 0 }
}

/// The hypervisor's ABI version (`ABI_VERSION` format).
pub fn version(hv: &mut dyn Hypervisor) -> CallResult<u32> {
    hv.call(nr::VERSION, 0, &mut [], &mut []).map(|v| v as u32)
}

/// Creates a domain; returns its ID.
pub fn create(hv: &mut dyn Hypervisor, mut arg: CreateDomain) -> CallResult<u32> {
    domctl(hv, domctl::CREATE, &mut arg, &mut []).map(|id| id as u32)
}

/// Stages `chunk` at `offset` of a `total`-byte image; returns the bytes taken.
pub fn load_image(
    hv: &mut dyn Hypervisor,
    domid: u32,
    kind: u32,
    offset: u64,
    total: u64,
    chunk: &mut [u8],
) -> CallResult<u64> {
    let mut arg = LoadImage {
        domid,
        kind,
        offset,
        total,
    };
    domctl(hv, domctl::LOAD_IMAGE, &mut arg, chunk)
}

/// Lays out the staged kernel with `cmdline` (shorter than `CMDLINE_LEN`).
pub fn build(hv: &mut dyn Hypervisor, domid: u32, cmdline: &str) -> CallResult<()> {
    let mut arg = BuildDomain {
        domid,
        _pad: 0,
        cmdline: [0; CMDLINE_LEN],
    };
    if cmdline.len() >= CMDLINE_LEN {
        return Err(CallError::Hv(oxen_abi::Error::TooBig));
    }
    arg.cmdline[..cmdline.len()].copy_from_slice(cmdline.as_bytes());
    domctl(hv, domctl::BUILD, &mut arg, &mut []).map(drop)
}

/// A paused domU vCPU's state (`oxen_abi::vcpu_snapshot` bytes); `Again`
/// while the vCPU has not stopped or is loading a state.
pub fn vcpu_state_get(hv: &mut dyn Hypervisor, domid: u32, vcpu: u32) -> CallResult<Vec<u8>> {
    let mut buf = vec![0u8; DOMCTL_BUF_MAX as usize];
    let n = domctl(hv, domctl::VCPU_STATE_GET, &mut VcpuStateRef { domid, vcpu }, &mut buf)?;
    buf.truncate(n as usize);
    Ok(buf)
}

/// Posts a state for a paused domU vCPU; it is loaded before the vCPU runs.
pub fn vcpu_state_set(hv: &mut dyn Hypervisor, domid: u32, vcpu: u32, bytes: &[u8]) -> CallResult<()> {
    let mut buf = bytes.to_vec();
    domctl(hv, domctl::VCPU_STATE_SET, &mut VcpuStateRef { domid, vcpu }, &mut buf).map(drop)
}

/// `UNPAUSE`, `PAUSE` or `DESTROY`: the commands that only name a domain.
pub fn domain_op(hv: &mut dyn Hypervisor, cmd: u64, domid: u32) -> CallResult<()> {
    domctl(hv, cmd, &mut domref(domid), &mut []).map(drop)
}

pub fn shutdown(hv: &mut dyn Hypervisor, domid: u32, reason: ShutdownReason) -> CallResult<()> {
    let mut arg = ShutdownDomain {
        domid,
        reason: reason as u32,
    };
    domctl(hv, domctl::SHUTDOWN, &mut arg, &mut []).map(drop)
}

pub fn info(hv: &mut dyn Hypervisor, domid: u32) -> CallResult<DomainInfo> {
    let mut buf = [0u8; size_of::<DomainInfo>()];
    domctl(hv, domctl::GET_INFO, &mut domref(domid), &mut buf)?;
    Ok(DomainInfo::read_from(&buf).expect("sized for one"))
}

/// Every domain, in ID order.
pub fn list(hv: &mut dyn Hypervisor) -> CallResult<Vec<DomainInfo>> {
    read_all(|buf| hv.call(nr::DOMCTL, domctl::LIST, &mut [], buf))
}

/// The records a listing call (`LIST`, `VCPU_LIST`) puts in its buffer; `call`
/// fills the buffer it is given and returns how many records there are.
fn read_all<T: Pod>(mut call: impl FnMut(&mut [u8]) -> CallResult<u64>) -> CallResult<Vec<T>> {
    let size = size_of::<T>();
    let most = DOMCTL_BUF_MAX as usize / size;
    let mut room = 16;
    loop {
        let mut buf = vec![0u8; room * size];
        let n = call(&mut buf)? as usize;
        // A short buffer still gets the first `room`; ask again with enough (domains
        // may come and go in between, hence the loop), up to one call's maximum.
        if n <= room || room == most {
            return Ok(buf
                .chunks_exact(size)
                .take(n)
                .map(|b| T::read_from(b).expect("whole chunk"))
                .collect());
        }
        room = n.min(most);
    }
}

/// A domain's credit-scheduler weight and cap as they are after the call:
/// `weight` and `cap` are set if given, else only read.
pub fn sched_credit(
    hv: &mut dyn Hypervisor,
    domid: u32,
    weight: Option<u32>,
    cap: Option<u32>,
) -> CallResult<SchedCredit> {
    use oxen_abi::sched_flags::{SET_CAP, SET_WEIGHT};
    let mut arg = SchedCredit {
        domid,
        flags: if weight.is_some() { SET_WEIGHT } else { 0 }
            | if cap.is_some() { SET_CAP } else { 0 },
        weight: weight.unwrap_or(0),
        cap: cap.unwrap_or(0),
    };
    domctl(hv, domctl::SCHED_CREDIT, &mut arg, &mut [])?;
    Ok(arg)
}

/// Lets vCPU `vcpu` of a domain run only on the pCPUs of `cpus`.
pub fn vcpu_affinity(hv: &mut dyn Hypervisor, domid: u32, vcpu: u32, cpus: u64) -> CallResult<()> {
    let mut arg = VcpuAffinity { domid, vcpu, cpus };
    domctl(hv, domctl::VCPU_AFFINITY, &mut arg, &mut []).map(drop)
}

/// The vCPUs of one domain, or of every domain (`None`), in the hypervisor's
/// order (by domain, then vCPU).
pub fn vcpu_list(hv: &mut dyn Hypervisor, domid: Option<u32>) -> CallResult<Vec<VcpuInfo>> {
    let mut arg = domref(domid.unwrap_or(ALL_DOMAINS));
    read_all(|buf| domctl(hv, domctl::VCPU_LIST, &mut arg, buf))
}

/// What one ring read returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingChunk {
    /// Bytes copied to the front of the buffer.
    pub len: usize,
    /// The offset to read from next.
    pub next: u64,
    /// Bytes between the requested offset and the oldest byte still kept.
    pub lost: u64,
}

/// `CONSOLE_READ` (a domain's console) or `DMESG` (the hypervisor's log) from `offset`.
pub fn ring_read(
    hv: &mut dyn Hypervisor,
    cmd: u64,
    domid: u32,
    offset: u64,
    buf: &mut [u8],
) -> CallResult<RingChunk> {
    let mut arg = RingRead {
        domid,
        _pad: 0,
        offset,
        next: 0,
        lost: 0,
    };
    let len = domctl(hv, cmd, &mut arg, buf)? as usize;
    Ok(RingChunk {
        len: len.min(buf.len()),
        next: arg.next,
        lost: arg.lost,
    })
}

/// Sends `bytes` (at most `CONSOLE_INPUT_MAX`) to a domain's console input;
/// returns how many it took (fewer when its queue is full). ABI 1.3.
pub fn console_input(hv: &mut dyn Hypervisor, domid: u32, bytes: &[u8]) -> CallResult<usize> {
    let mut buf = bytes.to_vec();
    let n = domctl(hv, domctl::CONSOLE_INPUT, &mut domref(domid), &mut buf)? as usize;
    Ok(n.min(bytes.len()))
}

/// Declares a device of `kind` for a created, unbuilt domain; returns where
/// the hypervisor placed it (`base`, `size`, `gsi` filled in). ABI 1.6.
pub fn device_add(hv: &mut dyn Hypervisor, domid: u32, kind: u32) -> CallResult<DeviceAdd> {
    let mut a = DeviceAdd { domid, kind, ..Default::default() };
    domctl(hv, domctl::DEVICE_ADD, &mut a, &mut [])?;
    Ok(a)
}

/// Raises (`true`) or lowers a declared device's interrupt line. ABI 1.6.
pub fn irq_line(hv: &mut dyn Hypervisor, domid: u32, gsi: u32, level: bool) -> CallResult<()> {
    let mut a = IrqLine { domid, gsi, level: u32::from(level), _pad: 0 };
    domctl(hv, domctl::IRQ_LINE, &mut a, &mut []).map(drop)
}

/// A paused domU's platform devices' state (`oxen_abi::platform_state`). ABI 1.7.
pub fn platform_state_get(hv: &mut dyn Hypervisor, domid: u32) -> CallResult<Vec<u8>> {
    let mut buf = vec![0u8; oxen_abi::platform_state::ENCODED_LEN];
    let n = domctl(hv, domctl::PLATFORM_STATE_GET, &mut domref(domid), &mut buf)?;
    buf.truncate(n as usize);
    Ok(buf)
}

/// Loads a platform state into a paused domU's devices. ABI 1.7.
pub fn platform_state_set(hv: &mut dyn Hypervisor, domid: u32, bytes: &[u8]) -> CallResult<()> {
    let mut buf = bytes.to_vec();
    domctl(hv, domctl::PLATFORM_STATE_SET, &mut domref(domid), &mut buf).map(drop)
}

/// The CPUID feature leaves a domain's vCPUs are shown. ABI 1.7.
pub fn cpuid_get(hv: &mut dyn Hypervisor, domid: u32) -> CallResult<Vec<oxen_abi::save_stream::CpuidEntry>> {
    let mut buf = vec![0u8; oxen_abi::CPUID_GET_LEN];
    let n = domctl(hv, domctl::CPUID_GET, &mut domref(domid), &mut buf)? as usize;
    let bytes = &buf[..(n * oxen_abi::save_stream::CPUID_ENTRY_LEN).min(buf.len())];
    Ok(oxen_abi::save_stream::CpuidEntry::decode_all(bytes).map(|e| e.collect()).unwrap_or_default())
}

/// Most pages one `LOG_DIRTY` `CLEAN` covers (its buffer's bits). ABI 1.8.
pub const LOG_DIRTY_MAX_PAGES: u64 = oxen_abi::DOMCTL_BUF_MAX * 8;

/// Turns a domU's dirty-page logging on or off. ABI 1.8.
pub fn log_dirty(hv: &mut dyn Hypervisor, domid: u32, on: bool) -> CallResult<()> {
    let op = if on { oxen_abi::log_dirty::ENABLE } else { oxen_abi::log_dirty::DISABLE };
    domctl(hv, domctl::LOG_DIRTY, &mut oxen_abi::LogDirty { domid, op, first: 0, pages: 0 }, &mut []).map(drop)
}

/// `CLEAN`s the log of the domain's pages from 0: fills `bitmap` (bit `i % 64`
/// of word `i / 64` for page `i`, `pages` of them), clears it and
/// write-protects those pages again; returns how many were dirty. ABI 1.8.
pub fn log_dirty_clean(hv: &mut dyn Hypervisor, domid: u32, pages: u64, bitmap: &mut [u64]) -> CallResult<u64> {
    let mut dirty = 0;
    let mut buf = vec![0u8; oxen_abi::DOMCTL_BUF_MAX as usize];
    let mut first = 0;
    while first < pages {
        let n = (pages - first).min(LOG_DIRTY_MAX_PAGES);
        let bytes = n.div_ceil(64) as usize * 8;
        let mut arg = oxen_abi::LogDirty { domid, op: oxen_abi::log_dirty::CLEAN, first, pages: n };
        dirty += domctl(hv, domctl::LOG_DIRTY, &mut arg, &mut buf[..bytes])?;
        for (i, w) in buf[..bytes].chunks_exact(8).enumerate() {
            if let Some(word) = bitmap.get_mut((first / 64) as usize + i) {
                *word = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            }
        }
        first += n;
    }
    Ok(dirty)
}

pub fn phys_info(hv: &mut dyn Hypervisor) -> CallResult<PhysInfo> {
    let mut buf = [0u8; size_of::<PhysInfo>()];
    hv.call(nr::DOMCTL, domctl::PHYS_INFO, &mut [], &mut buf)?;
    Ok(PhysInfo::read_from(&buf).expect("sized for one"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxen_abi::Error;

    #[test]
    fn counting_tallies_every_call_by_kind() {
        let fake = crate::fake::Fake::new();
        let tally = Rc::new(RefCell::new(Tally::default()));
        let mut hv = Counting::new(Box::new(fake), tally.clone());
        version(&mut hv).unwrap();
        list(&mut hv).unwrap();
        list(&mut hv).unwrap();
        phys_info(&mut hv).unwrap();
        // Refused calls count too: they reached the hypervisor.
        assert!(info(&mut hv, 99).is_err());
        assert_eq!(tally.borrow().total(), 5);
        // The fake's clock only moves when oxl sleeps: no time in the calls.
        assert_eq!(
            tally.borrow().report(),
            "stats: 5 hypercalls, 0.0 us: version 1 (0.0 us), domctl-get_info 1 (0.0 us), \
             domctl-list 2 (0.0 us), domctl-phys_info 1 (0.0 us)"
        );
        let mut t = Tally::default();
        t.record(nr::NULL, 5, Duration::from_nanos(1500));
        t.record(nr::NULL, 0, Duration::from_nanos(2000));
        assert_eq!(t.report(), "stats: 2 hypercalls, 3.5 us: null 2 (3.5 us)");
        assert_eq!(call_name(nr::NULL, 0), "null");
        assert_eq!(call_name(nr::DOMCTL, 99), "domctl-99");
        assert_eq!(call_name(77, 0), "hypercall-77");
        assert_eq!(Tally::default().report(), "stats: 0 hypercalls");
    }

    #[test]
    fn oxl_stats_is_on_when_set_and_not_zero() {
        use std::ffi::OsStr;
        assert!(env_flag(Some(OsStr::new("1"))));
        assert!(env_flag(Some(OsStr::new("yes"))));
        assert!(!env_flag(Some(OsStr::new("0"))));
        assert!(!env_flag(Some(OsStr::new(""))));
        assert!(!env_flag(None));
    }

    #[test]
    fn errno_maps_to_abi_errors() {
        assert_eq!(CallError::from_errno(2), CallError::Hv(Error::NoEnt));
        assert_eq!(CallError::from_errno(38), CallError::Hv(Error::NoSys));
        assert_eq!(
            CallError::from_errno(libc::ENOTTY),
            CallError::Os(libc::ENOTTY)
        );
        assert_eq!(
            CallError::Hv(Error::Busy).to_string(),
            Error::Busy.describe()
        );
        assert_eq!(CallError::Os(libc::EIO).to_string(), "Input/output error");
        assert!(CallError::Os(libc::ENOTTY)
            .to_string()
            .contains("different builds"));
    }
}
