//! The domains on the target: the global table, each domU's resources (memory
//! from the hypervisor's pool, nested tables, staged images, console), and the
//! hypercall services that act on them. Rules about states live in `table`;
//! argument checking in `crate::hypercall`; this file does the work.

use super::ratelimit::{Echo, LineLimit};
use super::ring::{InputQueue, Ring};
use super::table::{Config, Domain, Effect, Table, DOM0};
use crate::hypercall::domctl::LogDirtyOp;
use crate::hypercall::{Command, GuestRam, Services};
use crate::mem::dirty::DirtyLog;
use crate::mem::paging::MapFlags;
use crate::mem::{self, GuestPhysAddr, HostPhysAddr, PAGE_SIZE};
use crate::sched::run as sched;
use crate::virt::guest_mem::GuestRegion;
use crate::virt::snapshot::{Got, Mailbox};
use crate::virt::{GuestMemory, InitialState, NestedTables, VcpuSnapshot};
use crate::vm::platform::{Platform, Role};
use crate::vm::vcpu::GuestVcpu;
use alloc::sync::Arc;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use log::{info, warn};
use crate::sched::credit::{CpuMask, VcpuId};
use oxen_abi::{image_kind, request, Action, DomainInfo, Error, PhysInfo, Pod, ShutdownReason, VcpuInfo, ABI_VERSION};
use spin::Mutex;

const MIB: u64 = 1 << 20;
/// domU memory comes in 2 MiB chunks, mapped with 2 MiB pages.
const CHUNK: u64 = 2 * MIB;
const CHUNK_FRAMES: usize = (CHUNK / PAGE_SIZE) as usize;
/// Bytes of each domain's console ring.
const CONSOLE_BYTES: usize = 16 * 1024;
/// How long a guest has to honour a shutdown or reboot request.
pub const SHUTDOWN_TIMEOUT_NS: u64 = 30_000_000_000;
/// Each domain's share of the serial line for its console's echo: the UART
/// carries about 11.5 KB/s at 115200 baud for the whole machine. A domain may
/// print `ECHO_BURST` bytes at once, then `ECHO_RATE` a second; beyond that
/// its output is only in its ring (`oxl console`), and the echo resumes with
/// a "... N bytes suppressed" line once `ECHO_RESUME` bytes of share are back
/// (at most one such line every half second).
const ECHO_RATE: u64 = 2048;
const ECHO_BURST: u64 = 8 * 1024;
const ECHO_RESUME: u64 = 1024;
/// Echo lines queued per domain and not printed yet.
const ECHO_QUEUE: usize = 8 * 1024;
/// Echo bytes one look prints at most: ~90 ms of a real 115200-baud UART for
/// the CPU that looks (QEMU's UART does not wait).
const ECHO_LOOK_BYTES: usize = 1024;
/// Log lines a guest can cause (refusals, crashes, restarts): `LOG_BURST`
/// at once, then `LOG_PER_S` a second; the rest are counted and the count is
/// logged with the next line printed.
const LOG_BURST: u64 = 32;
const LOG_PER_S: u64 = 2;

/// A kernel or ramdisk dom0 handed over, kept for reboots.
pub struct Staged {
    base: HostPhysAddr,
    frames: usize,
    pub len: u64,
    /// Bytes received so far (chunks come in order).
    pub loaded: u64,
}

impl Staged {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `frames` frames at `base` were allocated for this image and are
        // identity mapped; `len` is within them.
        unsafe { core::slice::from_raw_parts(self.base.as_u64() as *const u8, self.len as usize) }
    }
}

/// Where a built domain's vCPU 0 starts: its mode, RIP and RSP, and the
/// general-purpose registers the kernel's boot protocol passes (RDI for Oxen's
/// `StartInfo`, RSI for Linux's zero page, EAX/EBX for Multiboot).
#[derive(Clone, Copy, Debug)]
pub struct BootSpec {
    pub entry: InitialState,
    pub gprs: crate::virt::GuestGprs,
    /// What the kernel image was, for the log: "bzImage", "vmlinux", ...
    pub format: &'static str,
}

/// What the hypervisor holds for a domain.
pub struct Resources {
    /// The domain's ID once it has one (`u32::MAX` before): its foreign
    /// mappings into dom0 are emptied before its memory is freed.
    domid: u32,
    /// 2 MiB chunks; chunk `i` backs guest-physical `i * 2 MiB`.
    chunks: Vec<HostPhysAddr>,
    /// The domain's RAM (for dom0: its RAM only, not device memory).
    pub ram: GuestMemory,
    pub tables: Option<NestedTables>,
    /// Staged kernel and ramdisk (`image_kind`).
    pub images: [Option<Staged>; 2],
    pub boot: Option<BootSpec>,
    /// Its vCPUs' states for `VCPU_STATE_GET/SET`, from its start.
    pub vcpu_states: Option<Arc<Mailbox>>,
    /// Its platform, from its start: `PLATFORM_STATE_GET/SET` read and set
    /// its devices, `IRQ_LINE` drives its IOAPIC.
    platform: Option<Arc<Platform>>,
    pub console: Ring,
    /// What dom0 sent to the domain's console and the domain has not read
    /// (`take_console_input`).
    console_in: InputQueue,
    /// The kernel command line `BUILD` was given, kept for restarts.
    pub cmdline: String,
    /// The devices dom0 declared (`DEVICE_ADD`), in its DSDT from `BUILD` on.
    pub devices: super::devices::DeviceList,
    /// The console's serial echo, not yet printed (`drain_echo`).
    echo: Echo,
    /// Guest-triggered log lines (`guest_log`).
    log_limit: LineLimit,
    pub home_cpu: u32,
    /// Its vCPUs' pCPU affinity until they start (then the scheduler keeps
    /// each vCPU's).
    pub affinity: u64,
    refusals: u64,
    /// Console writes, their bytes, and the longest the table's lock was
    /// held by one (logged when the domain goes: `dom0-flood-svm` reads it).
    console_writes: u64,
    console_bytes: u64,
    console_max_hold_ns: u64,
    console_hold_ns: u64,
    /// Its device model's I/O server (`vm::ioreq`), which its platform
    /// shares from its start.
    pub ioreq: Arc<crate::vm::ioreq::Server>,
    /// Its dirty-page log while `LOG_DIRTY` has it on (`log_dirty`).
    dirty: Option<DirtyLog>,
}

impl Resources {
    /// Fallible: a domain's buffers come from the heap, and a create that
    /// does not fit must fail with -ENOMEM, not halt the host.
    fn try_new(ram: GuestMemory) -> Result<Self, Error> {
        let now = crate::arch::x86_64::time::now_ns();
        Ok(Self {
            domid: u32::MAX,
            chunks: Vec::new(),
            ram,
            tables: None,
            images: [None, None],
            boot: None,
            vcpu_states: None,
            platform: None,
            console: Ring::try_new(CONSOLE_BYTES).map_err(|_| Error::NoMem)?,
            console_in: InputQueue::try_new(oxen_abi::CONSOLE_INPUT_QUEUE).map_err(|_| Error::NoMem)?,
            cmdline: String::new(),
            devices: Default::default(),
            echo: Echo::try_new(ECHO_RATE, ECHO_BURST, ECHO_RESUME, ECHO_QUEUE, now).map_err(|_| Error::NoMem)?,
            log_limit: LineLimit::new(LOG_PER_S, LOG_BURST, now),
            home_cpu: 0,
            affinity: u64::MAX,
            refusals: 0,
            console_writes: 0,
            console_bytes: 0,
            console_max_hold_ns: 0,
            console_hold_ns: 0,
            ioreq: Arc::new(crate::vm::ioreq::Server::new()),
            dirty: None,
        })
    }

    /// Whether console input is queued (a UART's "data ready").
    pub fn has_console_input(&self) -> bool {
        !self.console_in.is_empty()
    }

    /// Takes queued console input (oldest first) into `out` (a domU's UART).
    pub fn take_console_input(&mut self, out: &mut [u8]) -> usize {
        self.console_in.take(out)
    }

    /// Whether console input came since the domain last read its queue or
    /// was woken for it, and forgets it: a blocked (or halted) domU's vCPU
    /// wakes once for new input (`vm::vcpu::GuestVcpu::poll`). Ask only for a vCPU that
    /// is blocked: a running one reads the queue anyway (guests read until it
    /// is empty, then block), and asking then would lose the wake-up of a
    /// vCPU that blocks next.
    pub fn take_input_wake(&mut self) -> bool {
        self.console_in.take_wake()
    }

    /// Zeroes the domain's RAM (before reuse, and before it is freed).
    pub fn zero_ram(&self) {
        for c in &self.chunks {
            // SAFETY: the chunk belongs to this domain and is identity mapped;
            // no vCPU of the domain runs while this is called.
            unsafe { core::ptr::write_bytes(c.as_u64() as *mut u8, 0, CHUNK as usize) };
        }
    }

    /// Takes the domain's memory (RAM chunks, nested tables, staged images)
    /// out of it, for its last vCPU to give back (`MemoryToFree::free`) while
    /// the dying domain is still listed: once it leaves `oxl list`, its
    /// memory is back in the pool.
    pub fn take_memory(&mut self) -> MemoryToFree {
        MemoryToFree {
            domid: self.domid,
            chunks: core::mem::take(&mut self.chunks),
            tables: self.tables.take(),
            images: [self.images[0].take(), self.images[1].take()],
        }
    }

    /// Gives everything back to the pool (`free_frames` scrubs it), after
    /// dom0's foreign mappings of it are gone (`mem::foreign::revoke`).
    /// Without the domain table's lock if it may have been mapped.
    fn free(mut self) {
        mem::foreign::revoke(self.domid);
        for c in self.chunks.drain(..) {
            mem::free_frames(c, CHUNK_FRAMES);
        }
        if let Some(t) = self.tables.take() {
            t.destroy();
        }
        for s in self.images.iter_mut().filter_map(Option::take) {
            mem::free_frames(s.base, s.frames);
        }
    }
}

/// A dying domain's memory, taken out of it (`Resources::take_memory`).
pub struct MemoryToFree {
    domid: u32,
    chunks: Vec<HostPhysAddr>,
    tables: Option<NestedTables>,
    images: [Option<Staged>; 2],
}

impl MemoryToFree {
    /// Scrubs and frees it (slow: call it without the table's lock), after
    /// dom0's foreign mappings of it are gone and dom0's TLBs flushed.
    pub fn free(self) {
        mem::foreign::revoke(self.domid);
        for c in self.chunks {
            mem::free_frames(c, CHUNK_FRAMES);
        }
        if let Some(t) = self.tables {
            t.destroy();
        }
        for s in self.images.into_iter().flatten() {
            mem::free_frames(s.base, s.frames);
        }
    }
}

pub static DOMAINS: Mutex<Table<Resources>> = Mutex::new(Table::new());

/// Puts dom0 in the table. `ram` is its RAM (hypercall buffers must be in it).
pub fn register_dom0(ram: GuestMemory, vcpus: u32) {
    let kib = ram.regions().iter().map(|r| r.len / 1024).sum();
    let res = Resources::try_new(ram)
        .unwrap_or_else(|_| crate::console::fatal(format_args!("dom0: no heap for its console")));
    DOMAINS.lock().add_dom0(kib, vcpus, res);
    if let Err(e) = sched::add_domain(DOM0, oxen_abi::DEFAULT_WEIGHT, 0) {
        crate::console::fatal(format_args!("dom0: cannot add it to the scheduler: {e:?}"));
    }
}

/// A guest's RAM as hypercalls may touch it: through its own memory map only.
pub struct RamView<'a>(pub &'a GuestMemory);

impl RamView<'_> {
    /// Calls `f` with host pointers for each piece of `[gpa, gpa + len)`.
    fn each(&self, gpa: u64, len: usize, mut f: impl FnMut(*mut u8, usize, usize)) -> Result<(), Error> {
        gpa.checked_add(len as u64).ok_or(Error::Fault)?;
        let mut done = 0;
        while done < len {
            let (hpa, left) = self.0.translate(GuestPhysAddr::new(gpa + done as u64)).ok_or(Error::Fault)?;
            let n = (len - done).min(left as usize);
            f(hpa.as_u64() as *mut u8, done, n);
            done += n;
        }
        Ok(())
    }

    fn check(&self, gpa: u64, len: usize) -> Result<(), Error> {
        self.each(gpa, len, |_, _, _| {})
    }
}

impl GuestRam for RamView<'_> {
    fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), Error> {
        self.check(gpa, out.len())?;
        self.each(gpa, out.len(), |p, at, n| {
            // SAFETY: `p..p+n` is the guest's own RAM (translated above), identity
            // mapped in the hypervisor; `out` is ours.
            unsafe { core::ptr::copy_nonoverlapping(p, out[at..at + n].as_mut_ptr(), n) }
        })
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), Error> {
        self.check(gpa, data.len())?;
        self.each(gpa, data.len(), |p, at, n| {
            // SAFETY: as in `read`; the guest's RAM is plain memory it owns.
            unsafe { core::ptr::copy_nonoverlapping(data[at..at + n].as_ptr(), p, n) }
        })
    }
}

/// Hypercall services for a caller on the target.
pub struct Hv;

impl Services for Hv {
    fn console_write(&mut self, domid: u32, bytes: &[u8]) {
        // Only copies under the table's lock: into the ring, and what the
        // domain's share allows into its echo queue. The UART is written
        // later, without this lock (`drain_echo`).
        let mut t = DOMAINS.lock();
        let now = crate::arch::x86_64::time::now_ns();
        let Some(d) = t.get_mut(domid) else { return };
        d.res.console.write(bytes);
        d.res.echo.write(now, bytes);
        let again = d.res.echo.again_ns();
        d.res.console_writes += 1;
        d.res.console_bytes += bytes.len() as u64;
        let held = crate::arch::x86_64::time::now_ns().saturating_sub(now);
        d.res.console_max_hold_ns = d.res.console_max_hold_ns.max(held);
        d.res.console_hold_ns += held;
        drop(t);
        echo_wanted(again.min(now));
        if domid != DOM0 {
            crate::vm::platform::post_dom0_events(oxen_abi::event::CONSOLE);
        }
    }

    fn take_events(&mut self, want: u64) -> u64 {
        crate::vm::platform::take_dom0_events(want)
    }

    fn console_read(&mut self, domid: u32, out: &mut [u8]) -> usize {
        take_console_input(domid, out)
    }

    fn control_request(&self, domid: u32) -> u64 {
        DOMAINS.lock().get(domid).map_or(request::NONE, |d| d.request)
    }

    fn domctl(&mut self, cmd: &mut Command, buf: &mut [u8]) -> Result<u64, Error> {
        domctl(cmd, buf)
    }

    fn refused(&mut self, domid: u32, what: fmt::Arguments) {
        let n = {
            let mut t = DOMAINS.lock();
            match t.get_mut(domid) {
                Some(d) => {
                    d.res.refusals += 1;
                    d.res.refusals
                }
                None => 1,
            }
        };
        guest_log(domid, log::Level::Warn, format_args!("d{domid}: hypercall refused: {what} (refusal {n})"));
    }
}

fn domctl(cmd: &mut Command, buf: &mut [u8]) -> Result<u64, Error> {
    match cmd {
        Command::Create(cfg) => create(cfg),
        Command::LoadImage { domid, kind, offset, total } => load_image(*domid, *kind, *offset, *total, buf),
        Command::Build { domid, cmdline } => build(*domid, cmdline),
        Command::Unpause(id) => {
            let id = *id;
            let mut t = DOMAINS.lock();
            // A state posted with VCPU_STATE_SET is loaded while paused.
            if t.get(id).and_then(|d| d.res.vcpu_states.as_ref()).is_some_and(|m| m.loading()) {
                return Err(Error::Again);
            }
            if let Some(m) = t.get(id).and_then(|d| d.res.vcpu_states.as_ref()) {
                m.clear();
            }
            match t.unpause(id)? {
                Effect::Start => start(t, id),
                _ => {
                    drop(t);
                    nudge(id);
                    Ok(0)
                }
            }
        }
        Command::StartPaused(id) => {
            let mut t = DOMAINS.lock();
            t.start_paused(*id)?;
            start(t, *id)
        }
        Command::Pause(id) => {
            let mut t = DOMAINS.lock();
            t.pause(*id)?;
            // Each vCPU takes its state afresh as it stops.
            if let Some(m) = t.get(*id).and_then(|d| d.res.vcpu_states.as_ref()) {
                m.clear();
            }
            drop(t);
            nudge(*id);
            Ok(0)
        }
        Command::VcpuStateGet { domid, vcpu } => {
            let mailbox = paused_domu(*domid, *vcpu)?;
            match mailbox.get(*vcpu as usize, buf) {
                Got::Bytes(n) => Ok(n as u64),
                Got::NotYet => Err(Error::Again),
                Got::Short(n) => {
                    warn!("d{domid}: vCPU {vcpu}'s state is {n} bytes, more than the buffer");
                    Err(Error::Inval)
                }
                Got::Failed(why) => {
                    warn!("d{domid}: vCPU {vcpu} could not give its state: {why}");
                    Err(Error::Inval)
                }
            }
        }
        Command::CpuidGet(domid) => {
            let (kind, vcpus) = {
                let t = DOMAINS.lock();
                let d = t.get(*domid).ok_or(Error::NoEnt)?;
                (d.privileged, d.vcpus)
            };
            let kind = if kind { crate::exit::cpuid::Kind::Dom0 } else { crate::exit::cpuid::Kind::DomU { vcpu: 0, vcpus } };
            let host = |l: u32, sub: u32| crate::arch::x86_64::cpuid(l, sub);
            let size = oxen_abi::save_stream::CPUID_ENTRY_LEN;
            for (chunk, &(leaf, subleaf)) in buf.chunks_exact_mut(size).zip(oxen_abi::CPUID_GET_LEAVES.iter()) {
                let r = crate::exit::cpuid::guest_view(kind, &Default::default(), leaf, subleaf, &host);
                let e = oxen_abi::save_stream::CpuidEntry { leaf, subleaf, regs: [r.eax, r.ebx, r.ecx, r.edx] };
                chunk.copy_from_slice(&e.encode());
            }
            Ok(oxen_abi::CPUID_GET_LEAVES.len() as u64)
        }
        Command::PlatformStateGet(domid) => {
            let platform = paused_platform(*domid)?;
            platform.save_state(buf).map(|n| n as u64).ok_or(Error::Inval)
        }
        Command::PlatformStateSet(domid) => {
            let platform = paused_platform(*domid)?;
            platform.restore_state(buf).map(|()| 0).map_err(|why| {
                warn!("d{domid}: platform state refused: {why}");
                Error::Inval
            })
        }
        Command::VcpuStateSet { domid, vcpu } => {
            let mailbox = paused_domu(*domid, *vcpu)?;
            let refuse = |why: &str| {
                warn!("d{domid}: vCPU {vcpu}: state refused: {why}");
                Error::Inval
            };
            let record = oxen_abi::vcpu_snapshot::VcpuStateRecord::decode(buf).map_err(|e| refuse(e.describe()))?;
            let snap = VcpuSnapshot::from_record(&record, crate::arch::x86_64::cpu::linear_address_bits()).map_err(refuse)?;
            // Its TSC offset loads as it is (oxl sets the one that makes a
            // migrated guest's TSC go on). Another rate loads too, as QEMU
            // lets an incoming migration run without TSC scaling: the KVM
            // clock is rewritten with this host's rate, so the guest's clock
            // stays right; only a guest timing with the bare TSC at the rate
            // it was told is off.
            let host_hz = crate::arch::x86_64::time::tsc_hz();
            if !crate::virt::snapshot::tsc_rate_close(snap.tsc_hz, host_hz) {
                warn!(
                    "d{domid}: vCPU {vcpu}: its TSC ran at {} Hz, this host's is calibrated at {host_hz} Hz: its KVM clock follows this host's rate, a guest timing with the bare TSC is off by the difference",
                    snap.tsc_hz
                );
            }
            mailbox.post(*vcpu as usize, snap);
            sched::nudge(VcpuId { dom: *domid, vcpu: *vcpu });
            info!("d{domid}: vCPU {vcpu}: a new state posted, loaded before it runs again");
            Ok(0)
        }
        Command::Shutdown { domid, reason } => {
            let mut t = DOMAINS.lock();
            t.request_shutdown(*domid, *reason, crate::arch::x86_64::time::now_ns() + SHUTDOWN_TIMEOUT_NS)?;
            let name = t.get(*domid).ok_or(Error::NoEnt)?.name.clone();
            drop(t);
            info!("d{domid} ({name}): asked to {}", if *reason == ShutdownReason::Reboot { "reboot" } else { "power off" });
            nudge(*domid);
            Ok(0)
        }
        Command::Destroy(id) => {
            let mut t = DOMAINS.lock();
            let freed = t.destroy(*id)?;
            match freed {
                Some(d) => {
                    drop(t);
                    release(d);
                }
                None => {
                    drop(t);
                    info!("d{id}: destroying");
                    nudge(*id);
                }
            }
            Ok(0)
        }
        Command::IoreqSetup { domid, page } => crate::vm::ioreq::service::setup(*domid, *page),
        Command::IoreqRange(r) => crate::vm::ioreq::service::range(r),
        Command::IoreqDone { domid, vcpu } => crate::vm::ioreq::service::done(*domid, *vcpu),
        Command::GetInfo(id) => {
            let t = DOMAINS.lock();
            let d = t.get(*id).ok_or(Error::NoEnt)?;
            buf[..core::mem::size_of::<DomainInfo>()].copy_from_slice(d.info().as_bytes());
            Ok(0)
        }
        Command::List => {
            let t = DOMAINS.lock();
            let size = core::mem::size_of::<DomainInfo>();
            for (d, out) in t.iter().zip(buf.chunks_exact_mut(size)) {
                out.copy_from_slice(d.info().as_bytes());
            }
            Ok(t.len() as u64)
        }
        Command::ConsoleRead(r) => {
            let t = DOMAINS.lock();
            let d = t.get(r.domid).ok_or(Error::NoEnt)?;
            let got = d.res.console.read(r.offset, buf);
            (r.next, r.lost) = (got.next, got.lost);
            Ok(got.copied as u64)
        }
        Command::Dmesg(r) => {
            let got = crate::console::read_log(r.offset, buf);
            (r.next, r.lost) = (got.next, got.lost);
            Ok(got.copied as u64)
        }
        Command::SchedCredit(c) => {
            let t = DOMAINS.lock();
            let d = t.get(c.domid).ok_or(Error::NoEnt)?;
            if matches!(d.state, oxen_abi::DomainState::Dying) {
                return Err(Error::Busy);
            }
            drop(t);
            let (mut weight, mut cap) = sched::params(c.domid).ok_or(Error::NoEnt)?;
            if c.flags & oxen_abi::sched_flags::SET_WEIGHT != 0 {
                weight = c.weight;
            }
            if c.flags & oxen_abi::sched_flags::SET_CAP != 0 {
                if c.cap > 100 * crate::arch::x86_64::smp::cpu_count() {
                    return Err(Error::Inval);
                }
                cap = c.cap;
            }
            if c.flags != 0 {
                sched::set_params(c.domid, weight, cap)?;
                info!("d{}: weight {weight}, cap {cap}%", c.domid);
            }
            (c.weight, c.cap) = (weight, cap);
            Ok(0)
        }
        Command::VcpuAffinity { domid, vcpu, cpus } => {
            let mut t = DOMAINS.lock();
            let d = t.get_mut(*domid).ok_or(Error::NoEnt)?;
            if *vcpu >= d.vcpus {
                return Err(Error::Inval);
            }
            if CpuMask(*cpus).and(sched::all_cpus()).is_empty() {
                return Err(Error::Inval);
            }
            if d.privileged {
                return Err(Error::Perm);
            }
            let started = d.live_vcpus > 0;
            if !started {
                // Before the start: every vCPU's (the config's `cpus`).
                d.res.affinity = *cpus;
            }
            drop(t);
            if started {
                sched::set_affinity(VcpuId { dom: *domid, vcpu: *vcpu }, CpuMask(*cpus))?;
            }
            info!("d{domid}: vCPU {vcpu} may run on pCPUs {cpus:#x}");
            Ok(0)
        }
        Command::VcpuList(which) => {
            let size = core::mem::size_of::<VcpuInfo>();
            let doms: Vec<(u32, u32, u64)> = DOMAINS
                .lock()
                .iter()
                .filter(|d| *which == oxen_abi::ALL_DOMAINS || d.id == *which)
                .map(|d| (d.id, d.vcpus, d.res.affinity))
                .collect();
            if doms.is_empty() {
                return Err(Error::NoEnt);
            }
            let mut n = 0usize;
            for (dom, vcpus, affinity) in doms {
                for vcpu in 0..vcpus {
                    let info = match sched::vcpu_info(VcpuId { dom, vcpu }) {
                        Some((cpu, state, affinity, time)) => {
                            VcpuInfo { domid: dom, vcpu, cpu, state, affinity, cpu_time_ns: time }
                        }
                        None => VcpuInfo {
                            domid: dom,
                            vcpu,
                            cpu: 0,
                            state: oxen_abi::vcpu_state::OFFLINE,
                            affinity: affinity & sched::all_cpus().0,
                            cpu_time_ns: 0,
                        },
                    };
                    if let Some(out) = buf.chunks_exact_mut(size).nth(n) {
                        out.copy_from_slice(info.as_bytes());
                    }
                    n += 1;
                }
            }
            Ok(n as u64)
        }
        Command::ConsoleInput(id) => {
            let mut t = DOMAINS.lock();
            let d = t.get_mut(*id).ok_or(Error::NoEnt)?;
            // dom0's console input is the serial line's, through its UART.
            if d.privileged {
                return Err(Error::Perm);
            }
            if matches!(d.state, oxen_abi::DomainState::Dying | oxen_abi::DomainState::Shutdown) {
                return Err(Error::Busy);
            }
            let n = d.res.console_in.push(buf);
            drop(t);
            // A vCPU blocked until input comes looks again.
            if n > 0 {
                nudge(*id);
            }
            Ok(n as u64)
        }
        Command::ForeignMap(m) => foreign_map(m),
        Command::LogDirty { domid, op, first, pages } => log_dirty(*domid, *op, *first, *pages, buf),
        Command::ForeignUnmap { addr, count } => {
            mem::foreign::unmap(*addr, *count).inspect_err(|_| {
                guest_log(DOM0, log::Level::Warn, format_args!("d0: foreign unmap {addr:#x}+{count} pages: not a mapping"))
            })?;
            Ok(0)
        }
        Command::DeviceAdd(a) => {
            let mut t = DOMAINS.lock();
            let d = t.get_mut(a.domid).ok_or(Error::NoEnt)?;
            if d.privileged {
                return Err(Error::Perm);
            }
            // Declared between CREATE and BUILD: BUILD writes the DSDT.
            if d.state != oxen_abi::DomainState::Created || d.built {
                return Err(Error::Busy);
            }
            let ram_bytes = d.res.ram.regions().iter().map(|r| r.len).sum();
            let placed = d.res.devices.add(a.kind, ram_bytes);
            let index = d.res.devices.len().saturating_sub(1);
            let name = d.name.clone();
            drop(t);
            let placed = placed.inspect_err(|e| {
                warn!("d{} ({name}): device not added: {}", a.domid, e.describe());
            })?;
            (a.base, a.size, a.gsi) = (placed.base, placed.size, placed.gsi);
            info!("d{} ({name}): virtio-mmio device {index} at {:#x}+{:#x}, GSI {}", a.domid, placed.base, placed.size, placed.gsi);
            Ok(index as u64)
        }
        Command::IrqLine { domid, gsi, level } => {
            let t = DOMAINS.lock();
            let d = t.get(*domid).ok_or(Error::NoEnt)?;
            if d.privileged {
                return Err(Error::Perm);
            }
            if matches!(d.state, oxen_abi::DomainState::Dying | oxen_abi::DomainState::Shutdown) {
                return Err(Error::Busy);
            }
            // Only a line given to one of its devices: never the UART's or the
            // keyboard's, which the platform's own models drive.
            if !d.res.devices.owns_gsi(*gsi) {
                drop(t);
                warn!("d{domid}: irq line {gsi}: not a line of a device it was given");
                return Err(Error::Inval);
            }
            let platform = d.res.platform.clone().ok_or(Error::Busy)?;
            let server = d.res.ioreq.clone();
            // The devices' lock is never taken with the table's.
            drop(t);
            let pin = u8::try_from(*gsi).map_err(|_| Error::Inval)?;
            platform.devices.lock().ioapic.set_irq(pin, *level);
            if *level {
                server.line_raised(crate::arch::x86_64::time::now_ns());
            }
            // A vCPU's next service sends what the IOAPIC queued to the APICs
            // (and wakes the vCPU it is for); vCPU 0 may be halted: nudged.
            sched::nudge(VcpuId { dom: *domid, vcpu: 0 });
            Ok(0)
        }
        Command::PhysInfo => {
            let info = PhysInfo {
                abi_version: ABI_VERSION,
                cpus: crate::arch::x86_64::smp::cpu_count(),
                total_kib: mem::total_frame_count() as u64 * 4,
                free_kib: mem::free_frame_count() as u64 * 4,
                tsc_khz: crate::arch::x86_64::time::tsc_hz() / 1000,
                domains: DOMAINS.lock().len() as u32,
                vendor: match crate::virt::backend() {
                    crate::virt::Backend::Vmx => 0,
                    crate::virt::Backend::Svm => 1,
                },
            };
            buf[..core::mem::size_of::<PhysInfo>()].copy_from_slice(info.as_bytes());
            Ok(0)
        }
    }
}

/// Where `domid`'s nested tables and its RAM map put guest-physical `gpa`:
/// (nested tables, RAM map), host-physical. For a dead guest's log (they
/// must agree; a triple fault whose page walk reads fine in the RAM map is
/// checked against what the CPU walks). Never call it with the table locked.
pub fn nested_and_ram_translation(domid: u32, gpa: u64) -> Option<(Option<u64>, Option<u64>)> {
    let t = DOMAINS.lock();
    let d = t.get(domid)?;
    let ram = d.res.ram.translate(GuestPhysAddr::new(gpa)).map(|(h, _)| h.as_u64());
    let nested = match d.res.tables.as_ref()? {
        NestedTables::Ept(tb) => tb.translate(&mut mem::FrameTables, gpa),
        NestedTables::Npt(tb) => tb.translate(&mut mem::FrameTables, gpa),
    }
    .map(|(h, _)| h);
    Some((nested, ram))
}

/// `FOREIGN_MAP`: a live domU's RAM pages into dom0's window. The domain
/// table stays locked until the entries are made, so a domain that dies
/// after the check finds its mapping and empties it (`mem::foreign::revoke`).
fn foreign_map(m: &mut oxen_abi::ForeignMap) -> Result<u64, Error> {
    let t = DOMAINS.lock();
    let refuse = |t: spin::MutexGuard<'_, Table<Resources>>, e: Error, why: fmt::Arguments| {
        drop(t);
        guest_log(DOM0, log::Level::Warn, format_args!("d0: foreign map of d{} frames {:#x}+{}: {why}", m.domid, m.first_gfn, m.count));
        Err(e)
    };
    let Some(d) = t.get(m.domid) else { return refuse(t, Error::NoEnt, format_args!("no such domain")) };
    if d.privileged {
        return refuse(t, Error::Perm, format_args!("dom0's own memory is not mapped this way"));
    }
    if d.state == oxen_abi::DomainState::Dying {
        return refuse(t, Error::Busy, format_args!("the domain is dying"));
    }
    // A domU's RAM is one run from guest-physical 0 (`create`).
    let pages = d.res.chunks.len() as u64 * CHUNK_FRAMES as u64;
    // `first_gfn + count` cannot overflow (`domctl::decode` bounds both).
    if m.first_gfn + m.count > pages {
        return refuse(t, Error::Inval, format_args!("past its {pages} pages of RAM"));
    }
    let ram = &d.res.ram;
    let first = m.first_gfn;
    match mem::foreign::map(m.domid, m.count, |i| ram.translate(GuestPhysAddr::new((first + i) * PAGE_SIZE)).map(|(h, _)| h.as_u64())) {
        Ok(addr) => {
            m.addr = addr;
            Ok(addr)
        }
        Err(e) => refuse(t, e, format_args!("the window has no room ({e:?})")),
    }
}

/// The guest frame numbers of a domain's writable RAM (a domU's is one run
/// from 0, `create`): what dirty-page logging protects and logs.
fn writable_pages(ram: &GuestMemory) -> impl Iterator<Item = u64> + '_ {
    ram.regions()
        .iter()
        .filter(|r| r.flags.contains(MapFlags::WRITE))
        .flat_map(|r| r.gpa.as_u64() / PAGE_SIZE..(r.gpa.as_u64() + r.len) / PAGE_SIZE)
}

/// Whether guest frame `page` is writable RAM of the domain.
pub fn is_writable_ram(ram: &GuestMemory, page: u64) -> bool {
    let gpa = page.saturating_mul(PAGE_SIZE);
    ram.regions().iter().any(|r| r.flags.contains(MapFlags::WRITE) && (r.gpa.as_u64()..r.gpa.as_u64() + r.len).contains(&gpa))
}

/// `mem::dirty::set_write` on either vendor's tables.
fn set_write(tables: &mut NestedTables, pages: impl IntoIterator<Item = u64>, write: bool) -> Result<u64, mem::paging::MapError> {
    match tables {
        NestedTables::Ept(t) => mem::dirty::set_write(t, &mut mem::FrameTables, pages, write),
        NestedTables::Npt(t) => mem::dirty::set_write(t, &mut mem::FrameTables, pages, write),
    }
}

/// `LOG_DIRTY`: dirty-page logging of a domU's RAM. The domain table stays
/// locked while the tables change and the log is read, so the write-fault
/// handler (`log_dirty_fault`, under the same lock) sees both at once; the
/// TLB flush that makes a write-protection hold on every CPU comes after the
/// lock is dropped (`mem::foreign::shootdown` waits for other CPUs, which
/// may be spinning on this lock) and before the call returns: a write that
/// slips through a stale TLB entry meanwhile happened before the caller
/// copies the page, so the copy has it.
fn log_dirty(domid: u32, op: LogDirtyOp, first: u64, pages: u64, buf: &mut [u8]) -> Result<u64, Error> {
    let mut t = DOMAINS.lock();
    let refuse = |t: spin::MutexGuard<'_, Table<Resources>>, e: Error, why: fmt::Arguments| {
        drop(t);
        guest_log(DOM0, log::Level::Warn, format_args!("d0: log-dirty {op:?} of d{domid}: {why}"));
        Err(e)
    };
    let Some(d) = t.get_mut(domid) else { return refuse(t, Error::NoEnt, format_args!("no such domain")) };
    if d.privileged {
        return refuse(t, Error::Perm, format_args!("dom0's own memory is not logged"));
    }
    if d.state == oxen_abi::DomainState::Dying {
        return refuse(t, Error::Busy, format_args!("the domain is dying"));
    }
    let res = &mut d.res;
    let Some(tables) = res.tables.as_mut() else { return refuse(t, Error::Busy, format_args!("it has no memory")) };
    let ram_pages = res.chunks.len() as u64 * CHUNK_FRAMES as u64;
    match op {
        LogDirtyOp::Enable => {
            if res.dirty.is_some() {
                return refuse(t, Error::Busy, format_args!("already on"));
            }
            let log = match DirtyLog::new(ram_pages) {
                Ok(l) => l,
                Err(_) => return refuse(t, Error::NoMem, format_args!("no heap for a log of {ram_pages} pages")),
            };
            // Out of frames for a split: what was protected stays so, the
            // log stays on (a later fault finds the page and fixes it) and
            // the caller is told; DISABLE undoes it.
            let start = crate::arch::x86_64::time::now_ns();
            let r = set_write(tables, writable_pages(&res.ram), false);
            res.dirty = Some(log);
            match r {
                Ok(n) => {
                    drop(t);
                    let took = crate::arch::x86_64::time::now_ns() - start;
                    mem::foreign::shootdown();
                    let all = crate::arch::x86_64::time::now_ns() - start;
                    info!("d{domid}: log-dirty on, {n} of {ram_pages} pages write-protected in {} us (with the TLB flush {} us)", took / 1000, all / 1000);
                    Ok(0)
                }
                Err(e) => {
                    drop(t);
                    mem::foreign::shootdown();
                    warn!("d{domid}: log-dirty on, but write-protecting its RAM failed ({e:?})");
                    Err(Error::NoMem)
                }
            }
        }
        LogDirtyOp::Disable => {
            let Some(log) = res.dirty.take() else { return refuse(t, Error::Inval, format_args!("logging is off")) };
            // Giving access back allocates nothing (the pages are split).
            let r = set_write(tables, writable_pages(&res.ram), true);
            drop(t);
            info!(
                "d{domid}: log-dirty off, {} write faults taken while on; {} cleans protected {} pages again in {} us in all (with their TLB flushes)",
                log.faults,
                log.cleans,
                log.reprotected,
                log.clean_ns / 1000
            );
            // Not needed for safety (a stale read-only entry faults and
            // the handler finds the page writable), but saves those faults.
            mem::foreign::shootdown();
            r.map(|_| 0).map_err(|_| Error::Inval)
        }
        LogDirtyOp::Clean | LogDirtyOp::Peek => {
            let start = crate::arch::x86_64::time::now_ns();
            let Some(log) = res.dirty.as_mut() else { return refuse(t, Error::Inval, format_args!("logging is off")) };
            if first >= ram_pages {
                return refuse(t, Error::Inval, format_args!("first page {first:#x} past its {ram_pages} pages"));
            }
            // Whole words, clipped to the RAM's end (the decoder checked the
            // buffer holds `pages`).
            let words = pages.min(ram_pages - first).div_ceil(mem::dirty::WORD_BITS) as usize;
            let mut out = Vec::new();
            if out.try_reserve_exact(words).is_err() {
                return refuse(t, Error::NoMem, format_args!("no heap for {words} words"));
            }
            out.resize(words, 0u64);
            let got = if op == LogDirtyOp::Clean { log.take(first, &mut out) } else { log.peek(first, &mut out) };
            let Ok(n) = got else { return refuse(t, Error::Inval, format_args!("range {first:#x}+{pages} refused")) };
            for (chunk, w) in buf.chunks_exact_mut(8).zip(&out) {
                chunk.copy_from_slice(&w.to_le_bytes());
            }
            if op == LogDirtyOp::Peek {
                return Ok(n);
            }
            log.cleans += 1;
            if n == 0 {
                log.clean_ns += crate::arch::x86_64::time::now_ns() - start;
                return Ok(0);
            }
            // The pages just reported start the next round protected.
            let r = set_write(tables, mem::dirty::pages_in(first, &out), false);
            if let Ok(k) = r {
                log.reprotected += k;
            }
            drop(t);
            mem::foreign::shootdown();
            // Counted after the flush, under the lock again (the log may be
            // gone meanwhile: then nothing is counted).
            let took = crate::arch::x86_64::time::now_ns() - start;
            if let Some(log) = DOMAINS.lock().get_mut(domid).and_then(|d| d.res.dirty.as_mut()) {
                log.clean_ns += took;
            }
            r.map(|_| n).map_err(|_| Error::NoMem)
        }
    }
}

/// A write fault of a domU's vCPU at `gpa` that dirty-page logging caused:
/// the page is marked dirty and made writable again, and the vCPU retries
/// the write (true). Also true for writable RAM a stale TLB entry still
/// shows read-only (after `DISABLE`, or another vCPU's fault): the fault
/// dropped that entry. False for anything else (the MMIO path handles it).
pub fn log_dirty_fault(domid: u32, gpa: u64) -> bool {
    let page = gpa / PAGE_SIZE;
    let mut t = DOMAINS.lock();
    let Some(d) = t.get_mut(domid) else { return false };
    let res = &mut d.res;
    if d.privileged || !is_writable_ram(&res.ram, page) {
        return false;
    }
    let Some(tables) = res.tables.as_mut() else { return false };
    if let Some(log) = res.dirty.as_mut() {
        log.mark(page);
        log.faults += 1;
    }
    // Only protected pages change (a split cannot be needed: ENABLE split
    // them); a failure leaves the guest to the memory-fault path.
    set_write(tables, [page], true).is_ok()
}

/// A paused domU's vCPU states, for `VCPU_STATE_GET/SET`: dom0's own are
/// refused (its vCPUs are never paused), as is any domain not paused.
fn paused_domu(domid: u32, vcpu: u32) -> Result<Arc<Mailbox>, Error> {
    let t = DOMAINS.lock();
    let d = t.get(domid).ok_or(Error::NoEnt)?;
    if d.privileged {
        return Err(Error::Perm);
    }
    if vcpu >= d.vcpus {
        return Err(Error::Inval);
    }
    if d.state != oxen_abi::DomainState::Paused {
        return Err(Error::Busy);
    }
    d.res.vcpu_states.clone().ok_or(Error::Busy)
}

/// Makes a domain's platform and vCPUs and queues them (the table says
/// `Running`, or `Paused` for `START_PAUSED`: then each vCPU stops before its
/// first instruction, when it first looks at its domain).
fn start(mut t: spin::MutexGuard<'_, Table<Resources>>, id: u32) -> Result<u64, Error> {
    let d = t.get_mut(id).ok_or(Error::NoEnt)?;
    let boot = d.res.boot.ok_or(Error::Busy)?;
    let root = d.res.tables.as_ref().ok_or(Error::Busy)?.root();
    // A domU's APIC IDs are its vCPU numbers (CPUID says so too).
    let apic_ids: Vec<u32> = (0..d.vcpus).collect();
    let platform = Arc::new(
        Platform::new(id, Role::DomU, &d.name, &apic_ids, d.res.ram.clone(), d.res.ram.clone(), root)
            .with_ioreq(d.res.ioreq.clone()),
    );
    let affinity = CpuMask(d.res.affinity).and(sched::all_cpus());
    let (name, vcpus) = (d.name.clone(), d.vcpus);
    d.res.vcpu_states = Some(Arc::new(Mailbox::new(vcpus as usize)));
    d.res.platform = Some(platform.clone());
    // Logged without the table's lock: the UART may be slow.
    drop(t);
    for v in 0..vcpus {
        let cpu = sched::pick_cpu();
        if v == 0 {
            info!("d{id} ({name}): started (vCPU 0 first on cpu{cpu})");
            if let Some(d) = DOMAINS.lock().get_mut(id) {
                d.res.home_cpu = cpu;
            }
        }
        let vcpu = GuestVcpu::new(v as usize, platform.clone(), (v == 0).then_some(boot));
        sched::add_vcpu(VcpuId { dom: id, vcpu: v }, affinity, cpu, true, alloc::boxed::Box::new(vcpu))?;
    }
    Ok(0)
}

/// A paused domU's platform, for `PLATFORM_STATE_GET/SET`: refused as
/// `paused_domu` refuses, and before the domain's start (it has none yet).
fn paused_platform(domid: u32) -> Result<Arc<Platform>, Error> {
    paused_domu(domid, 0)?;
    DOMAINS.lock().get(domid).and_then(|d| d.res.platform.clone()).ok_or(Error::Busy)
}

/// Moves up to `out.len()` bytes of domain `domid`'s console input (oldest
/// first) into `out`; returns how many (0: none queued, or no such domain).
/// For `nr::CONSOLE_READ` and for a domU's UART model (its receive buffer).
/// Takes the domain table's lock: never call it with the table locked.
pub fn take_console_input(domid: u32, out: &mut [u8]) -> usize {
    DOMAINS.lock().get_mut(domid).map_or(0, |d| d.res.console_in.take(out))
}

/// Whether domain `domid` has console input queued (a UART model's "data
/// ready"). Takes the domain table's lock, as `take_console_input`.
pub fn has_console_input(domid: u32) -> bool {
    DOMAINS.lock().get(domid).is_some_and(|d| d.res.has_console_input())
}

/// Makes the CPUs holding the domain's vCPUs look at them again (its state
/// changed: paused, ending, dying), every vCPU: a halted or parked one would
/// otherwise sleep on, and a dying domain is freed only when each vCPU let
/// go of it.
fn nudge(id: u32) {
    let vcpus = DOMAINS.lock().get(id).map_or(0, |d| d.vcpus);
    for vcpu in 0..vcpus {
        sched::nudge(VcpuId { dom: id, vcpu });
    }
}

fn create(cfg: &Config) -> Result<u64, Error> {
    // Held throughout, so the name checked here is still free at the end.
    let mut t = DOMAINS.lock();
    t.can_create(&cfg.name)?;
    // Every heap allocation the new domain makes, now and when it starts, is
    // covered by this check (the ones that can fail cleanly also use
    // `try_reserve`): the create that does not fit gets -ENOMEM, the host
    // never an allocation failure. With the heap sized from the RAM
    // (`mem::heap_size_for`), the frame pool below runs out first.
    let heap_free = mem::heap::free_bytes();
    if let Err(e) = super::table::heap_fits(cfg.memory_mib, heap_free) {
        drop(t);
        warn!(
            "create {}: the hypervisor heap has {} KiB free, {} KiB needed with its reserve",
            cfg.name,
            heap_free / 1024,
            (super::table::metadata_bytes(cfg.memory_mib) + super::table::HEAP_RESERVE) / 1024
        );
        return Err(e);
    }
    let want = u64::from(cfg.memory_mib).div_ceil(2) * CHUNK;
    let mut res = Resources::try_new(GuestMemory::new())?;
    // On any failure below, `res.free()` gives back what was taken.
    let fail = |res: Resources, e: Error| {
        res.free();
        Err(e)
    };
    if res.chunks.try_reserve_exact((want / CHUNK) as usize).is_err() {
        return fail(res, Error::NoMem);
    }
    while (res.chunks.len() as u64) * CHUNK < want {
        match mem::alloc_frames(CHUNK_FRAMES, CHUNK_FRAMES) {
            Some(c) => res.chunks.push(c),
            None => {
                let have = res.chunks.len() as u64 * CHUNK / MIB;
                res.free();
                drop(t);
                warn!("create {}: {} MiB wanted, the pool had only {have} MiB free in 2 MiB chunks", cfg.name, cfg.memory_mib);
                return Err(Error::NoMem);
            }
        }
    }
    // Chunks that follow each other in host memory make one region: the map
    // (and its copies) stays short however large the domain.
    let mut i = 0;
    while i < res.chunks.len() {
        let run = res.chunks[i..]
            .iter()
            .enumerate()
            .take_while(|&(k, c)| c.as_u64() == res.chunks[i].as_u64() + k as u64 * CHUNK)
            .count();
        let r = GuestRegion {
            gpa: GuestPhysAddr::new(i as u64 * CHUNK),
            hpa: res.chunks[i],
            len: run as u64 * CHUNK,
            flags: MapFlags::RWX,
        };
        if res.ram.add(r).is_err() {
            return fail(res, Error::Inval);
        }
        i += run;
    }
    match NestedTables::build(&res.ram) {
        Ok(t) => res.tables = Some(t),
        Err(_) => return fail(res, Error::NoMem),
    }
    // Fails only if the heap cannot hold its name or table entry (the
    // checks of `can_create` held under the same lock); `res` is then freed.
    let id = match t.create_or_return(cfg, res) {
        Ok(id) => id,
        Err((e, res)) => return fail(res, e),
    };
    if let Some(d) = t.get_mut(id) {
        d.res.domid = id;
    }
    drop(t);
    if let Err(e) = sched::add_domain(id, oxen_abi::DEFAULT_WEIGHT, 0) {
        if let Ok(Some(d)) = DOMAINS.lock().destroy(id) {
            d.res.free();
        }
        return Err(e);
    }
    // The heap left says what a domain's metadata really costs (the
    // difference from one create to the next, the one before having started).
    info!("d{id} ({}): created, {} MiB, {} vCPU(s), heap {} KiB free", cfg.name, want / MIB, cfg.vcpus, mem::heap::free_bytes() / 1024);
    Ok(id.into())
}

fn load_image(domid: u32, kind: u32, offset: u64, total: u64, data: &[u8]) -> Result<u64, Error> {
    let mut t = DOMAINS.lock();
    let d = t.get_mut(domid).ok_or(Error::NoEnt)?;
    if d.privileged {
        return Err(Error::Perm);
    }
    if d.state != oxen_abi::DomainState::Created {
        return Err(Error::Busy);
    }
    let slot = &mut d.res.images[if kind == image_kind::KERNEL { 0 } else { 1 }];
    if offset == 0 {
        if let Some(old) = slot.take() {
            mem::free_frames(old.base, old.frames);
        }
        let frames = total.div_ceil(PAGE_SIZE) as usize;
        let base = mem::alloc_frames_unzeroed(frames, 1).ok_or(Error::NoMem)?;
        *slot = Some(Staged { base, frames, len: total, loaded: 0 });
        d.built = false;
    }
    let s = slot.as_mut().ok_or(Error::Inval)?;
    if s.len != total || s.loaded != offset {
        return Err(Error::Inval);
    }
    // SAFETY: `offset + data.len() <= total` (checked by the decoder and the
    // `len` comparison), inside the frames allocated for this image.
    unsafe {
        core::ptr::copy_nonoverlapping(data.as_ptr(), (s.base.as_u64() + offset) as *mut u8, data.len());
    }
    s.loaded += data.len() as u64;
    Ok(data.len() as u64)
}

fn build(domid: u32, cmdline: &str) -> Result<u64, Error> {
    let mut t = DOMAINS.lock();
    let d = t.get_mut(domid).ok_or(Error::NoEnt)?;
    if d.privileged {
        return Err(Error::Perm);
    }
    if d.state != oxen_abi::DomainState::Created {
        return Err(Error::Busy);
    }
    let mut line = String::new();
    line.try_reserve_exact(cmdline.len()).map_err(|_| Error::NoMem)?;
    line.push_str(cmdline);
    d.res.cmdline = line;
    // Fresh RAM came zeroed from the pool; only a second BUILD finds it used.
    if d.res.boot.is_some() {
        d.res.zero_ram();
    }
    let name = d.name.clone();
    // Logged without the table's lock: the UART may be slow.
    match super::build::lay_out(&mut d.res, d.vcpus) {
        Ok(spec) => {
            d.res.boot = Some(spec);
            d.built = true;
            drop(t);
            info!("d{domid} ({name}): kernel laid out ({}), entry {:#x}", spec.format, spec.entry.rip);
            Ok(0)
        }
        Err(e) => {
            drop(t);
            warn!("d{domid} ({name}): build failed: {}", e.why);
            Err(e.error)
        }
    }
}

/// Frees a domain that left the table.
pub fn release(mut d: Domain<Resources>) {
    sched::remove_domain(d.id);
    // Its last words (a panic message, say) are echoed even if no CPU looked
    // since they were written; what was over its share is only counted.
    d.res.echo.close_line();
    let mut buf = [0u8; ECHO_LOOK_BYTES];
    loop {
        let n = d.res.echo.take(&mut buf);
        if n == 0 {
            break;
        }
        print_echo(d.id, &buf[..n]);
    }
    if d.res.echo.suppressed() > 0 {
        crate::console::domain_line(format_args!("(d{}) ... {} bytes suppressed", d.id, d.res.echo.suppressed()));
    }
    if d.res.log_limit.suppressed() > 0 {
        warn!("d{}: {} log lines it caused were suppressed (rate limit)", d.id, d.res.log_limit.suppressed());
    }
    if d.res.console_writes > 0 {
        info!(
            "d{} ({}): console: {} bytes in {} writes, the domain table held {} us by one on average, at most {} us",
            d.id,
            d.name,
            d.res.console_bytes,
            d.res.console_writes,
            (d.res.console_hold_ns / d.res.console_writes).div_ceil(1000),
            d.res.console_max_hold_ns.div_ceil(1000)
        );
    }
    let io = d.res.ioreq.stats();
    if io.requests + io.posted + io.dead + io.status > 0 {
        info!(
            "d{} ({}): I/O requests: {} answered by its device model, {} posted writes ({} found the ring full), {} interrupt-status accesses answered here, {} after it was gone",
            d.id, d.name, io.requests, io.posted, io.ring_full, io.status, io.dead
        );
        let avg = |ns: u64, n: u64| ns.checked_div(n).unwrap_or(0) / 1000;
        // Only for a domain whose notifications were timed (a device model's
        // own test guests may notify nothing).
        if io.to_line + io.to_status > 0 {
            info!(
                "d{} ({}): round trips from a notification: {} us on average to dom0's next IRQ_LINE raise ({}), {} us to its next InterruptStatus read ({})",
                d.id,
                d.name,
                avg(io.to_line_ns, io.to_line),
                io.to_line,
                avg(io.to_status_ns, io.to_status),
                io.to_status
            );
        }
    }
    info!("d{} ({}): destroyed, {} MiB back in the pool", d.id, d.name, d.memory_kib / 1024);
    d.res.free();
}

/// The domain ended (it asked, crashed, or did not honour a request in time).
pub fn end(domid: u32, reason: ShutdownReason, why: &str) {
    let mut t = DOMAINS.lock();
    let Some(name) = t.get(domid).map(|d| d.name.clone()) else { return };
    match t.end(domid, reason) {
        Ok(action) => {
            let what = match action {
                Action::Destroy => "destroying it",
                Action::Restart => "restarting it",
                Action::Preserve => "keeping it (preserve)",
            };
            drop(t);
            nudge(domid);
            guest_log(domid, log::Level::Info, format_args!("d{domid} ({name}): {why}: {what}"));
        }
        Err(e) => {
            drop(t);
            guest_log(domid, log::Level::Warn, format_args!("d{domid} ({name}): {why}, but it cannot end now: {e:?}"));
        }
    }
}

/// Set when a domain's echo (or log limit) has something for `drain_echo`.
static ECHO_DIRTY: AtomicBool = AtomicBool::new(false);
/// When a muted echo or a count of suppressed log lines is due to be printed
/// even if no guest writes anything (`u64::MAX`: nothing due).
static ECHO_AGAIN_NS: AtomicU64 = AtomicU64::new(u64::MAX);
/// One CPU prints echoes at a time; the others do not wait for it.
static ECHO_PRINTER: Mutex<()> = Mutex::new(());

/// Asks for a look by `drain_echo` at `at` (now if it is in the past).
fn echo_wanted(at: u64) {
    if at != u64::MAX {
        ECHO_AGAIN_NS.fetch_min(at, Ordering::Relaxed);
        ECHO_DIRTY.store(true, Ordering::Release);
    }
}

/// A guest-triggered log line (a refusal, a crash, a restart), at most
/// `LOG_BURST` at once and `LOG_PER_S` a second per domain; a line printed
/// after some were dropped is preceded by their count. Never call it with the
/// domain table locked.
pub fn guest_log(domid: u32, level: log::Level, args: fmt::Arguments) {
    let now = crate::arch::x86_64::time::now_ns();
    let verdict = DOMAINS.lock().get_mut(domid).map(|d| (d.res.log_limit.allow(now), d.res.log_limit.again_ns()));
    match verdict {
        // Not (or no longer) in the table: nothing to limit per domain.
        None => log::log!(level, "{args}"),
        Some((Some(dropped), _)) => {
            if dropped > 0 {
                warn!("d{domid}: {dropped} log lines it caused were suppressed (rate limit)");
            }
            log::log!(level, "{args}");
        }
        Some((None, again)) => echo_wanted(again),
    }
}

/// Bytes shown as text, invalid UTF-8 as U+FFFD, without allocating.
struct Lossy<'a>(&'a [u8]);

impl fmt::Display for Lossy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_str("\u{fffd}")?;
            }
        }
        Ok(())
    }
}

/// Prints queued echo lines (each ending in `\n`), tagged with the domain.
fn print_echo(domid: u32, lines: &[u8]) {
    for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        crate::console::domain_line(format_args!("(d{domid}) {}", Lossy(line)));
    }
}

/// What one look at the table found to print.
enum EchoWork {
    Lines(u32, usize),
    /// A domain's count of suppressed log lines, due now.
    Dropped(u32, u64),
}

/// Prints the domains' console echoes (and counts of suppressed log lines)
/// that are due, at most `ECHO_LOOK_BYTES` per call. Called between turns by
/// dom0's CPU (`housekeeping`) and by each domU's CPU (`DomUVcpu::poll`),
/// never with the domain table locked: the table's lock is held only to copy
/// lines out, the UART is written without it. Returns when it wants to be
/// called again (`u64::MAX`: only after the next console write).
pub fn drain_echo(now: u64) -> u64 {
    let again = ECHO_AGAIN_NS.load(Ordering::Relaxed);
    if !ECHO_DIRTY.load(Ordering::Acquire) && now < again {
        return again;
    }
    // Another CPU is printing: it takes what is queued.
    let Some(_printer) = ECHO_PRINTER.try_lock() else { return again };
    ECHO_DIRTY.store(false, Ordering::Relaxed);
    ECHO_AGAIN_NS.store(u64::MAX, Ordering::Relaxed);
    let mut buf = [0u8; ECHO_LOOK_BYTES];
    let mut used = 0;
    let mut next = u64::MAX;
    let mut from_id = 0;
    loop {
        let work = {
            let mut t = DOMAINS.lock();
            let mut work = None;
            for d in t.iter_mut().filter(|d| d.id >= from_id) {
                d.res.echo.tick(now);
                if let Some(n) = d.res.log_limit.flush(now) {
                    work = Some(EchoWork::Dropped(d.id, n));
                } else if d.res.echo.has_lines() {
                    let n = d.res.echo.take(&mut buf[used..]);
                    if n == 0 {
                        // No room left this time.
                        next = now;
                        break;
                    }
                    work = Some(EchoWork::Lines(d.id, n));
                }
                next = next.min(d.res.echo.again_ns()).min(d.res.log_limit.again_ns());
                if d.res.echo.has_lines() {
                    next = now;
                }
                if work.is_some() {
                    break;
                }
            }
            work
        };
        match work {
            None => break,
            Some(EchoWork::Dropped(id, n)) => {
                warn!("d{id}: {n} log lines it caused were suppressed (rate limit)");
                from_id = id;
            }
            Some(EchoWork::Lines(id, n)) => {
                print_echo(id, &buf[used..used + n]);
                used += n;
                from_id = id + 1;
            }
        }
    }
    // Only the time: a console write meanwhile set the flag itself.
    ECHO_AGAIN_NS.fetch_min(next, Ordering::Relaxed);
    ECHO_AGAIN_NS.load(Ordering::Relaxed)
}

/// dom0's CPU, between turns: carries out requests not honoured in time.
pub fn housekeeping(now: u64) {
    drain_echo(now);
    let overdue = DOMAINS.lock().overdue(now);
    for (id, reason) in overdue {
        let why = alloc::format!("did not {} within {} s", if reason == ShutdownReason::Reboot { "reboot" } else { "power off" }, SHUTDOWN_TIMEOUT_NS / 1_000_000_000);
        end(id, reason, &why);
    }
}

/// One line per domain for the hypervisor console's `d` key.
pub fn describe_all() {
    let t = DOMAINS.lock();
    for d in t.iter() {
        info!(
            "console: d{} {}: {}, {} MiB, {} vCPU(s) on cpu{}, {} exits, {} ms in guest",
            d.id,
            d.name,
            oxen_abi::DomainState::from_u32(d.state as u32).map_or("?", |s| s.name()),
            d.memory_kib / 1024,
            d.vcpus,
            d.res.home_cpu,
            d.exits,
            d.cpu_time_ns / 1_000_000
        );
    }
}

/// dom0's id, for callers outside.
pub const DOM0_ID: u32 = DOM0;
