//! Domain-control commands: each argument structure, copied in once, becomes a
//! validated `Command` or an error that says what was wrong. Nothing here acts.

use crate::domain::table::Config;
use alloc::string::{String, ToString};
use core::mem::size_of;
use oxen_abi::{
    c_str, device_kind, domctl, image_kind, DeviceAdd, IrqLine, ForeignMap, ForeignUnmap, FOREIGN_MAP_MAX_PAGES, sched_flags, valid_name, Action, BuildDomain, CreateDomain, DomainInfo, DomainRef, Error,
    LoadImage, PhysInfo, Pod, RingRead, SchedCredit, ShutdownDomain, ShutdownReason, VcpuAffinity, VcpuStateRef, IMAGE_MAX,
    CONSOLE_INPUT_MAX, MAX_VCPUS, MAX_WEIGHT, MIN_MEMORY_MIB,
};
use oxen_abi::{ioreq, log_dirty, IoreqDone, IoreqRange, IoreqSetup, LogDirty};

/// Largest domU, in MiB (the pool's size is the practical limit).
pub const MAX_MEMORY_MIB: u32 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Create(Config),
    LoadImage { domid: u32, kind: u32, offset: u64, total: u64 },
    Build { domid: u32, cmdline: String },
    Unpause(u32),
    /// Start a built domain with its vCPUs paused (restore).
    StartPaused(u32),
    /// The buffer receives the domain's CPUID feature leaves.
    CpuidGet(u32),
    Pause(u32),
    Shutdown { domid: u32, reason: ShutdownReason },
    Destroy(u32),
    GetInfo(u32),
    List,
    /// Its `next` and `lost` are filled in by the service and copied back.
    ConsoleRead(RingRead),
    Dmesg(RingRead),
    PhysInfo,
    /// Its weight and cap are filled in by the service and copied back.
    SchedCredit(SchedCredit),
    VcpuAffinity { domid: u32, vcpu: u32, cpus: u64 },
    /// `ALL_DOMAINS` or one domain.
    VcpuList(u32),
    /// The buffer holds the bytes for the domain's console input.
    ConsoleInput(u32),
    /// The buffer receives the vCPU's state (`oxen_abi::vcpu_snapshot`).
    VcpuStateGet { domid: u32, vcpu: u32 },
    /// The buffer holds a state for the vCPU, checked by the service.
    VcpuStateSet { domid: u32, vcpu: u32 },
    /// The buffer receives the domain's platform state (`oxen_abi::platform_state`).
    PlatformStateGet(u32),
    /// The buffer holds a platform state, checked by the service.
    PlatformStateSet(u32),
    /// `page` 0: tear the domain's I/O server down. (1.6)
    IoreqSetup { domid: u32, page: u64 },
    /// Kind, flags and bounds checked here; overlaps by the service.
    IoreqRange(IoreqRange),
    IoreqDone { domid: u32, vcpu: u32 },
    /// Its `addr` is filled in by the service and copied back. `count` is in
    /// 1..=`FOREIGN_MAP_MAX_PAGES` and `first_gfn + count` does not overflow
    /// a page number; the service checks the range against the domain's RAM.
    ForeignMap(ForeignMap),
    ForeignUnmap { addr: u64, count: u64 },
    /// Drives a declared device's IOAPIC line of a domU (1.6).
    IrqLine { domid: u32, gsi: u32, level: bool },
    /// Declares a device; the service fills in where it put it (1.6).
    DeviceAdd(DeviceAdd),
    /// Dirty-page logging (1.8). For CLEAN and PEEK `first` is a multiple of
    /// 64, `pages` ≥ 1 and the buffer holds `pages` bits in whole u64 words;
    /// the service checks `first` against the domain's RAM and clips
    /// `pages` to it. ENABLE and DISABLE have `first` = `pages` = 0.
    LogDirty { domid: u32, op: LogDirtyOp, first: u64, pages: u64 },
}

/// What `LOG_DIRTY` does (`oxen_abi::log_dirty`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogDirtyOp {
    Enable,
    Disable,
    Clean,
    Peek,
}

impl Command {
    pub fn writes_buffer(&self) -> bool {
        matches!(
            self,
            Command::GetInfo(_)
                | Command::List
                | Command::ConsoleRead(_)
                | Command::Dmesg(_)
                | Command::PhysInfo
                | Command::VcpuList(_)
                | Command::VcpuStateGet { .. }
                | Command::PlatformStateGet(_)
                | Command::CpuidGet(_)
                | Command::LogDirty { op: LogDirtyOp::Clean | LogDirtyOp::Peek, .. }
        )
    }

    /// The argument structure to copy back, for commands that return one.
    pub fn output_arg(&self) -> Option<&[u8]> {
        match self {
            Command::ConsoleRead(r) | Command::Dmesg(r) => Some(r.as_bytes()),
            Command::SchedCredit(c) => Some(c.as_bytes()),
            Command::ForeignMap(m) => Some(m.as_bytes()),
            Command::DeviceAdd(d) => Some(d.as_bytes()),
            _ => None,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct DecodeError {
    pub error: Error,
    pub why: String,
}

fn bad(error: Error, why: impl ToString) -> DecodeError {
    DecodeError { error, why: why.to_string() }
}

/// The argument as `T`, which must be exactly its size.
fn arg<T: Pod>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() != size_of::<T>() {
        return Err(bad(
            Error::Inval,
            alloc::format!("argument is {} bytes, expected {}", bytes.len(), size_of::<T>()),
        ));
    }
    T::read_from(bytes).ok_or_else(|| bad(Error::Inval, "short argument"))
}

fn no_arg(bytes: &[u8]) -> Result<(), DecodeError> {
    if bytes.is_empty() {
        Ok(())
    } else {
        Err(bad(Error::Inval, "this command takes no argument structure"))
    }
}

fn buffer_at_least(buf_len: u64, n: usize) -> Result<(), DecodeError> {
    if buf_len < n as u64 {
        return Err(bad(Error::Inval, alloc::format!("buffer of {buf_len} bytes, needs {n}")));
    }
    Ok(())
}

fn no_buffer(buf_len: u64) -> Result<(), DecodeError> {
    if buf_len != 0 {
        return Err(bad(Error::Inval, "this command takes no buffer"));
    }
    Ok(())
}

fn action(v: u8, key: &str) -> Result<Action, DecodeError> {
    Action::from_u8(v).ok_or_else(|| bad(Error::Inval, alloc::format!("{key}: no action {v}")))
}

/// Validates command `cmd`'s argument bytes (already copied in) and buffer length.
pub fn decode(cmd: u64, a: &[u8], buf_len: u64) -> Result<Command, DecodeError> {
    Ok(match cmd {
        domctl::CREATE => {
            let c: CreateDomain = arg(a)?;
            no_buffer(buf_len)?;
            let name = c_str(&c.name).filter(|n| valid_name(n)).ok_or_else(|| {
                bad(Error::Inval, "name must be 1-31 characters of A-Z a-z 0-9 _ . -, NUL padded")
            })?;
            if c.flags != 0 {
                return Err(bad(Error::Inval, alloc::format!("unknown flags {:#x}", c.flags)));
            }
            if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&c.memory_mib) {
                return Err(bad(
                    Error::Inval,
                    alloc::format!("memory {} MiB outside {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}", c.memory_mib),
                ));
            }
            if !(1..=MAX_VCPUS).contains(&c.vcpus) {
                return Err(bad(Error::Inval, alloc::format!("{} vCPUs outside 1..={MAX_VCPUS}", c.vcpus)));
            }
            Command::Create(Config {
                name: name.into(),
                memory_mib: c.memory_mib,
                vcpus: c.vcpus,
                on_poweroff: action(c.on_poweroff, "on_poweroff")?,
                on_reboot: action(c.on_reboot, "on_reboot")?,
                on_crash: action(c.on_crash, "on_crash")?,
            })
        }
        domctl::LOAD_IMAGE => {
            let l: LoadImage = arg(a)?;
            if l.kind != image_kind::KERNEL && l.kind != image_kind::RAMDISK {
                return Err(bad(Error::Inval, alloc::format!("no image kind {}", l.kind)));
            }
            if l.total == 0 || l.total > IMAGE_MAX {
                return Err(bad(Error::TooBig, alloc::format!("image of {} bytes (at most {IMAGE_MAX})", l.total)));
            }
            if buf_len == 0 || l.offset.checked_add(buf_len).is_none_or(|end| end > l.total) {
                return Err(bad(
                    Error::Inval,
                    alloc::format!("chunk {:#x}+{buf_len:#x} outside the {:#x}-byte image", l.offset, l.total),
                ));
            }
            Command::LoadImage { domid: l.domid, kind: l.kind, offset: l.offset, total: l.total }
        }
        domctl::BUILD => {
            let b: BuildDomain = arg(a)?;
            no_buffer(buf_len)?;
            if !b.cmdline.contains(&0) {
                return Err(bad(Error::Inval, "command line not NUL terminated"));
            }
            let cmdline = c_str(&b.cmdline).ok_or_else(|| bad(Error::Inval, "command line is not UTF-8"))?;
            Command::Build { domid: b.domid, cmdline: cmdline.into() }
        }
        domctl::UNPAUSE | domctl::PAUSE | domctl::DESTROY | domctl::GET_INFO | domctl::START_PAUSED => {
            let r: DomainRef = arg(a)?;
            match cmd {
                domctl::GET_INFO => {
                    buffer_at_least(buf_len, size_of::<DomainInfo>())?;
                    Command::GetInfo(r.domid)
                }
                _ => {
                    no_buffer(buf_len)?;
                    match cmd {
                        domctl::UNPAUSE => Command::Unpause(r.domid),
                        domctl::START_PAUSED => Command::StartPaused(r.domid),
                        domctl::PAUSE => Command::Pause(r.domid),
                        _ => Command::Destroy(r.domid),
                    }
                }
            }
        }
        domctl::SHUTDOWN => {
            let s: ShutdownDomain = arg(a)?;
            no_buffer(buf_len)?;
            let reason = match ShutdownReason::from_u64(s.reason.into()) {
                Some(r @ (ShutdownReason::Poweroff | ShutdownReason::Reboot)) => r,
                _ => return Err(bad(Error::Inval, alloc::format!("shutdown reason {} (poweroff 0, reboot 1)", s.reason))),
            };
            Command::Shutdown { domid: s.domid, reason }
        }
        domctl::LIST => {
            no_arg(a)?;
            Command::List
        }
        domctl::CONSOLE_READ => Command::ConsoleRead(arg(a)?),
        domctl::DMESG => Command::Dmesg(arg(a)?),
        domctl::PHYS_INFO => {
            no_arg(a)?;
            buffer_at_least(buf_len, size_of::<PhysInfo>())?;
            Command::PhysInfo
        }
        domctl::SCHED_CREDIT => {
            let c: SchedCredit = arg(a)?;
            no_buffer(buf_len)?;
            if c.flags & !(sched_flags::SET_WEIGHT | sched_flags::SET_CAP) != 0 {
                return Err(bad(Error::Inval, alloc::format!("unknown flags {:#x}", c.flags)));
            }
            if c.flags & sched_flags::SET_WEIGHT != 0 && !(1..=MAX_WEIGHT).contains(&c.weight) {
                return Err(bad(Error::Inval, alloc::format!("weight {} outside 1..={MAX_WEIGHT}", c.weight)));
            }
            // The cap's upper bound depends on the pCPUs: the service checks it.
            Command::SchedCredit(c)
        }
        domctl::VCPU_AFFINITY => {
            let v: VcpuAffinity = arg(a)?;
            no_buffer(buf_len)?;
            if v.vcpu >= MAX_VCPUS {
                return Err(bad(Error::Inval, alloc::format!("vCPU {} (at most {})", v.vcpu, MAX_VCPUS - 1)));
            }
            if v.cpus == 0 {
                return Err(bad(Error::Inval, "an empty pCPU set"));
            }
            Command::VcpuAffinity { domid: v.domid, vcpu: v.vcpu, cpus: v.cpus }
        }
        domctl::VCPU_LIST => {
            let r: DomainRef = arg(a)?;
            Command::VcpuList(r.domid)
        }
        domctl::CONSOLE_INPUT => {
            let r: DomainRef = arg(a)?;
            if buf_len > CONSOLE_INPUT_MAX {
                return Err(bad(Error::TooBig, alloc::format!("{buf_len} bytes of console input (at most {CONSOLE_INPUT_MAX})")));
            }
            if buf_len == 0 {
                return Err(bad(Error::Inval, "no console input bytes in the buffer"));
            }
            Command::ConsoleInput(r.domid)
        }
        domctl::VCPU_STATE_GET | domctl::VCPU_STATE_SET => {
            let r: VcpuStateRef = arg(a)?;
            if r.vcpu >= MAX_VCPUS {
                return Err(bad(Error::Inval, alloc::format!("vCPU {} (at most {})", r.vcpu, MAX_VCPUS - 1)));
            }
            let header = oxen_abi::vcpu_snapshot::HEADER_LEN;
            if cmd == domctl::VCPU_STATE_GET {
                buffer_at_least(buf_len, header)?;
                Command::VcpuStateGet { domid: r.domid, vcpu: r.vcpu }
            } else {
                if buf_len < header as u64 {
                    return Err(bad(Error::Inval, alloc::format!("a vCPU state of {buf_len} bytes (its header alone is {header})")));
                }
                Command::VcpuStateSet { domid: r.domid, vcpu: r.vcpu }
            }
        }
        domctl::CPUID_GET => {
            let r: DomainRef = arg(a)?;
            buffer_at_least(buf_len, oxen_abi::CPUID_GET_LEN)?;
            Command::CpuidGet(r.domid)
        }
        domctl::PLATFORM_STATE_GET => {
            let r: DomainRef = arg(a)?;
            buffer_at_least(buf_len, oxen_abi::platform_state::ENCODED_LEN)?;
            Command::PlatformStateGet(r.domid)
        }
        domctl::PLATFORM_STATE_SET => {
            let r: DomainRef = arg(a)?;
            let len = oxen_abi::platform_state::ENCODED_LEN as u64;
            if buf_len != len {
                return Err(bad(Error::Inval, alloc::format!("a platform state of {buf_len} bytes (it is {len})")));
            }
            Command::PlatformStateSet(r.domid)
        }
        domctl::IOREQ_SETUP => {
            let r: IoreqSetup = arg(a)?;
            no_buffer(buf_len)?;
            if !r.page.is_multiple_of(4096) {
                return Err(bad(Error::Inval, alloc::format!("I/O request page {:#x} is not 4 KiB aligned", r.page)));
            }
            Command::IoreqSetup { domid: r.domid, page: r.page }
        }
        domctl::IOREQ_RANGE => {
            let r: IoreqRange = arg(a)?;
            no_buffer(buf_len)?;
            ioreq_range(&r)?;
            Command::IoreqRange(r)
        }
        domctl::IOREQ_DONE => {
            let r: IoreqDone = arg(a)?;
            no_buffer(buf_len)?;
            if r.vcpu >= MAX_VCPUS {
                return Err(bad(Error::Inval, alloc::format!("vCPU {} (at most {})", r.vcpu, MAX_VCPUS - 1)));
            }
            Command::IoreqDone { domid: r.domid, vcpu: r.vcpu }
        }
        domctl::FOREIGN_MAP => {
            let mut m: ForeignMap = arg(a)?;
            no_buffer(buf_len)?;
            if !(1..=FOREIGN_MAP_MAX_PAGES).contains(&m.count) {
                return Err(bad(Error::Inval, alloc::format!("{} pages to map (1..={FOREIGN_MAP_MAX_PAGES})", m.count)));
            }
            // A page number past 2^52 is no guest's: caught here so the sum
            // below (and the service's byte addresses) cannot overflow.
            if m.first_gfn.checked_add(m.count).is_none_or(|end| end > 1 << 40) {
                return Err(bad(Error::Inval, alloc::format!("frames {:#x}+{:#x} past any guest's memory", m.first_gfn, m.count)));
            }
            m.addr = 0;
            Command::ForeignMap(m)
        }
        domctl::FOREIGN_UNMAP => {
            let u: ForeignUnmap = arg(a)?;
            no_buffer(buf_len)?;
            if !u.addr.is_multiple_of(4096) || u.count == 0 || u.count > FOREIGN_MAP_MAX_PAGES {
                return Err(bad(Error::Inval, alloc::format!("unmap {:#x}+{} pages: not a mapping", u.addr, u.count)));
            }
            Command::ForeignUnmap { addr: u.addr, count: u.count }
        }
        domctl::IRQ_LINE => {
            let l: IrqLine = arg(a)?;
            no_buffer(buf_len)?;
            if l._pad != 0 {
                return Err(bad(Error::Inval, "padding not zero"));
            }
            let level = match l.level {
                0 => false,
                1 => true,
                v => return Err(bad(Error::Inval, alloc::format!("line level {v} (0 low, 1 high)"))),
            };
            // Whether the line is one of the domain's devices' is the service's to say.
            Command::IrqLine { domid: l.domid, gsi: l.gsi, level }
        }
        domctl::DEVICE_ADD => {
            let d: DeviceAdd = arg(a)?;
            no_buffer(buf_len)?;
            if d.kind != device_kind::VIRTIO_MMIO {
                return Err(bad(Error::Inval, alloc::format!("no device kind {} (virtio-mmio {})", d.kind, device_kind::VIRTIO_MMIO)));
            }
            // The hypervisor places the device: a caller cannot ask for a place.
            if d.base != 0 || d.size != 0 || d.gsi != 0 || d._pad != 0 {
                return Err(bad(Error::Inval, "base, size, gsi and padding are outputs: pass 0"));
            }
            Command::DeviceAdd(d)
        }
        domctl::LOG_DIRTY => {
            let l: LogDirty = arg(a)?;
            log_dirty_args(&l, buf_len)?
        }
        other => return Err(bad(Error::NoSys, alloc::format!("no command {other}"))),
    })
}

/// Pages one `LOG_DIRTY` CLEAN or PEEK covers at most: the bits of a
/// whole `DOMCTL_BUF_MAX` buffer (2 GiB of guest memory a call).
pub const LOG_DIRTY_MAX_PAGES: u64 = oxen_abi::DOMCTL_BUF_MAX * 8;

/// `LOG_DIRTY`'s argument on its own (the domain's size is the service's).
fn log_dirty_args(l: &LogDirty, buf_len: u64) -> Result<Command, DecodeError> {
    let op = match l.op {
        log_dirty::ENABLE => LogDirtyOp::Enable,
        log_dirty::DISABLE => LogDirtyOp::Disable,
        log_dirty::CLEAN => LogDirtyOp::Clean,
        log_dirty::PEEK => LogDirtyOp::Peek,
        v => {
            return Err(bad(Error::Inval, alloc::format!("no log-dirty op {v} (enable 0, disable 1, clean 2, peek 3)")))
        }
    };
    if matches!(op, LogDirtyOp::Enable | LogDirtyOp::Disable) {
        no_buffer(buf_len)?;
        if l.first != 0 || l.pages != 0 {
            return Err(bad(Error::Inval, "enable and disable take first = pages = 0"));
        }
        return Ok(Command::LogDirty { domid: l.domid, op, first: 0, pages: 0 });
    }
    if !l.first.is_multiple_of(64) {
        return Err(bad(Error::Inval, alloc::format!("first page {:#x} is not a multiple of 64", l.first)));
    }
    if !(1..=LOG_DIRTY_MAX_PAGES).contains(&l.pages) {
        return Err(bad(Error::Inval, alloc::format!("{} pages (1..={LOG_DIRTY_MAX_PAGES})", l.pages)));
    }
    // Below 2^40 pages (any guest's), so that `first + pages` cannot overflow.
    if l.first >= 1 << 40 {
        return Err(bad(Error::Inval, alloc::format!("first page {:#x} past any guest's memory", l.first)));
    }
    let need = l.pages.div_ceil(64) * 8;
    if buf_len < need {
        return Err(bad(Error::Inval, alloc::format!("buffer of {buf_len} bytes, {} pages need {need}", l.pages)));
    }
    Ok(Command::LogDirty { domid: l.domid, op, first: l.first, pages: l.pages })
}

/// An `IoreqRange` on its own: a known kind and flags, not empty, not
/// wrapping, ports within 16 bits, MMIO in 4-byte units below 2^52 (1.9;
/// whole pages before). The pages a range touches are never mapped (they are
/// no RAM: `add_range` refuses overlaps), so every access to them exits and
/// finds its range by address; a device model may split one device's page,
/// e.g. to post only its notify register.
fn ioreq_range(r: &IoreqRange) -> Result<(), DecodeError> {
    if r.flags & !(ioreq::FLAG_POSTED_WRITES | ioreq::FLAG_INTERRUPT_STATUS) != 0 {
        return Err(bad(Error::Inval, alloc::format!("unknown flags {:#x}", r.flags)));
    }
    // Which device's registers these are is the service's to check (it has
    // the domain's device list); their shape is checked here.
    if r.flags & ioreq::FLAG_INTERRUPT_STATUS != 0
        && (r.flags != ioreq::FLAG_INTERRUPT_STATUS || r.kind != u32::from(ioreq::KIND_MMIO) || r.len != 8)
    {
        return Err(bad(Error::Inval, "an interrupt-status range is 8 bytes of MMIO, with no other flag"));
    }
    let end = r.start.checked_add(r.len).filter(|_| r.len > 0);
    let Some(end) = end else {
        return Err(bad(Error::Inval, alloc::format!("range {:#x}+{:#x} is empty or wraps", r.start, r.len)));
    };
    match u8::try_from(r.kind) {
        Ok(ioreq::KIND_PIO) if end <= 0x1_0000 => Ok(()),
        Ok(ioreq::KIND_PIO) => Err(bad(Error::Inval, alloc::format!("ports {:#x}..{end:#x} past 0xffff", r.start))),
        Ok(ioreq::KIND_MMIO) if r.start.is_multiple_of(4) && r.len.is_multiple_of(4) && end <= 1 << 52 => Ok(()),
        Ok(ioreq::KIND_MMIO) => {
            Err(bad(Error::Inval, alloc::format!("MMIO {:#x}+{:#x}: not in 4-byte units below 2^52", r.start, r.len)))
        }
        _ => Err(bad(Error::Inval, alloc::format!("no range kind {}", r.kind))),
    }
}
