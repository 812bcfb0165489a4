//! Oxen's hypercall ABI, shared by the hypervisor, dom0's `/dev/oxen` tools and
//! the project's own guests (docs/hypercalls.md is the prose version of this file).
//!
//! Convention: `VMCALL` on Intel, `VMMCALL` on AMD, from guest CPL 0. The call
//! number is in RAX, arguments in RDI, RSI, RDX, R10, R8; the result comes back in
//! RAX: zero or a positive value on success, a negated errno on failure.
//!
//! Structures are `#[repr(C)]`, little endian, with explicit padding and their
//! sizes asserted below; they are passed by guest-physical address with an
//! explicit length and copied once by the hypervisor.
#![no_std]

/// ABI version: major in bits 31:16, minor in 15:0. A caller checks the major
/// before anything else; minors only add calls.
pub const ABI_VERSION: u32 = 0x0001_000a;

/// The first version with console input (`nr::CONSOLE_READ`,
/// `domctl::CONSOLE_INPUT`): a tool checks it before sending keys.
pub const ABI_CONSOLE_INPUT: u32 = 0x0001_0003;

/// The first version with `domctl::VCPU_STATE_GET` / `VCPU_STATE_SET`.
pub const ABI_VCPU_STATE: u32 = 0x0001_0004;

/// The first version with dom0's event line (`nr::EVENTS`, `EVENT_GSI`).
pub const ABI_EVENTS: u32 = 0x0001_0005;

/// The first version with device models in dom0: foreign mappings, I/O
/// request servers, interrupt lines and devices for domUs.
pub const ABI_DEVICE_MODEL: u32 = 0x0001_0006;

/// The first version with `domctl::PLATFORM_STATE_GET` / `PLATFORM_STATE_SET`.
pub const ABI_PLATFORM_STATE: u32 = 0x0001_0007;

/// The first version with `domctl::LOG_DIRTY` (dirty-page logging).
pub const ABI_LOG_DIRTY: u32 = 0x0001_0008;

/// The first version whose `domctl::IOREQ_RANGE` takes MMIO ranges in 4-byte
/// units (before: whole 4 KiB pages).
pub const ABI_SUBPAGE_MMIO: u32 = 0x0001_0009;

/// The first version whose `domctl::IOREQ_RANGE` takes
/// `ioreq::FLAG_INTERRUPT_STATUS` (a virtio-mmio device's InterruptStatus and
/// InterruptACK answered by the hypervisor from the ioreq page) and up to 48
/// ranges.
pub const ABI_INTERRUPT_STATUS: u32 = 0x0001_000a;

pub mod envelope;
pub mod platform_state;
pub mod save_stream;
pub mod vcpu_snapshot;

pub const fn abi_major(v: u32) -> u16 {
    (v >> 16) as u16
}

/// CPUID leaves the hypervisor answers (signature in EBX, ECX, EDX of 0x40000000).
pub const CPUID_SIGNATURE_LEAF: u32 = 0x4000_0000;
pub const CPUID_VERSION_LEAF: u32 = 0x4000_0001;
pub const CPUID_MAX_LEAF: u32 = CPUID_VERSION_LEAF;
pub const CPUID_SIGNATURE: &[u8; 12] = b"OxenOxenOxen";

/// Hypercall numbers.
pub mod nr {
    /// Returns `ABI_VERSION`. Takes no arguments; allowed for every domain.
    pub const VERSION: u64 = 0;
    /// Does nothing and returns 0: the cost of a round trip.
    pub const NULL: u64 = 1;
    /// Appends bytes to the caller's console ring. RDI = guest-physical address,
    /// RSI = length (at most `CONSOLE_WRITE_MAX`). Returns the bytes taken.
    pub const CONSOLE_WRITE: u64 = 2;
    /// Returns the caller's domain ID.
    pub const DOMAIN_ID: u64 = 3;
    /// Scheduling operations on the calling vCPU: RDI = one of `sched_op`, RSI
    /// its argument.
    pub const SCHED_OP: u64 = 4;
    /// Returns the control request pending for the caller's domain, one of
    /// `request` (0 when none). Reading it does not clear it.
    pub const CONTROL_REQUEST: u64 = 5;
    /// Takes bytes from the caller's console input (what dom0 sent with
    /// `domctl::CONSOLE_INPUT`): RDI = guest-physical address, RSI = length
    /// (at most `CONSOLE_READ_MAX`). Never waits: returns the bytes copied, 0
    /// when none are queued. `SCHED_OP` `BLOCK` ends when new input arrives.
    /// domUs only (dom0 reads its console through its UART: `-EPERM`). (1.3)
    pub const CONSOLE_READ: u64 = 6;
    /// dom0 only (anyone else gets `-EPERM`): takes the events pending for dom0
    /// (bits of `event`), which lowers its event line (`EVENT_GSI`), and says
    /// which it wants from now on: RDI = those bits (0: none; bits outside
    /// `event::ALL` give `-EINVAL`). Returns the bits that were pending. The
    /// line is raised (level, active high) when an event dom0 wants happens
    /// while none it wants is pending. (1.5)
    pub const EVENTS: u64 = 7;
    /// Domain control; dom0 only (anyone else gets `-EPERM`). RDI = command
    /// (`domctl`), RSI/RDX = guest-physical address and length of the command's
    /// argument structure, R10/R8 = address and length of its data buffer (0/0
    /// when it takes none). Output is written back into the same two areas.
    pub const DOMCTL: u64 = 16;
}

/// Most bytes one `CONSOLE_WRITE` takes.
pub const CONSOLE_WRITE_MAX: u64 = 4096;
/// Most bytes one `nr::CONSOLE_READ` copies.
pub const CONSOLE_READ_MAX: u64 = 4096;
/// Most bytes one `domctl::CONSOLE_INPUT` sends (its buffer's length).
pub const CONSOLE_INPUT_MAX: u64 = 4096;
/// Bytes of each domU's console input queue: what dom0 sent and the domain
/// has not read yet. A `CONSOLE_INPUT` into a full queue takes fewer bytes.
pub const CONSOLE_INPUT_QUEUE: usize = 4096;
/// Largest argument structure and largest data buffer of one `DOMCTL`.
pub const DOMCTL_ARG_MAX: u64 = 4096;
pub const DOMCTL_BUF_MAX: u64 = 64 * 1024;
/// The `DOMCTL`s whose data buffer is input only: the hypervisor copies it in
/// and writes nothing back, so /dev/oxen does not copy it back to the caller
/// either (for LOAD_IMAGE, the 40 MB of a Linux domU's kernel and initramfs).
/// Every other `DOMCTL` with a buffer fills it.
pub const DOMCTL_BUFFER_IN_ONLY: [u64; 4] =
    [domctl::LOAD_IMAGE, domctl::CONSOLE_INPUT, domctl::VCPU_STATE_SET, domctl::PLATFORM_STATE_SET];
/// Largest kernel or ramdisk `domctl::LOAD_IMAGE` stages.
pub const IMAGE_MAX: u64 = 64 * 1024 * 1024;
/// Bytes of a domain name, NUL padded; names are 1..=31 of `[A-Za-z0-9_.-]`.
pub const NAME_LEN: usize = 32;
/// Bytes of a domU's kernel command line, NUL terminated.
pub const CMDLINE_LEN: usize = 256;
/// Limits on `CreateDomain`.
pub const MAX_VCPUS: u32 = 8;
pub const MIN_MEMORY_MIB: u32 = 4;

/// dom0's event line: a pin of its IOAPIC beyond the machine's 24, level
/// triggered, active high (its MADT names the IOAPIC; its version register
/// says it has 32 pins). (1.5)
pub const EVENT_GSI: u32 = 24;

/// What raises dom0's event line (`nr::EVENTS`). (1.5)
pub mod event {
    /// A domU wrote to its console.
    pub const CONSOLE: u64 = 1 << 0;
    /// A domU's access waits in an I/O request slot, or a posted write is in
    /// the ring, of an I/O server's page (`ioreq`). (1.6)
    pub const IOREQ: u64 = 1 << 1;
    pub const ALL: u64 = CONSOLE | IOREQ;
}

/// `nr::SCHED_OP` operations.
pub mod sched_op {
    /// Gives up the rest of the time slice.
    pub const YIELD: u64 = 0;
    /// Sleeps until RSI nanoseconds have passed (0: until woken), a control
    /// request arrives or (1.3) console input arrives that came after the
    /// domain's last `nr::CONSOLE_READ`. Returns 0.
    pub const BLOCK: u64 = 1;
    /// Ends the domain: RSI = a `ShutdownReason`. Does not return.
    pub const SHUTDOWN: u64 = 2;
}

/// `nr::CONTROL_REQUEST` answers: what dom0 asked the domain to do.
pub mod request {
    pub const NONE: u64 = 0;
    pub const POWEROFF: u64 = 1;
    pub const REBOOT: u64 = 2;
}

/// Why a domain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ShutdownReason {
    Poweroff = 0,
    Reboot = 1,
    /// It faulted: triple fault, memory outside its own, an exit nobody handles.
    Crash = 2,
}

impl ShutdownReason {
    pub const fn from_u64(v: u64) -> Option<Self> {
        match v {
            0 => Some(Self::Poweroff),
            1 => Some(Self::Reboot),
            2 => Some(Self::Crash),
            _ => None,
        }
    }
}

/// What happens when a domain ends for a reason (`on_poweroff`, `on_reboot`,
/// `on_crash` in a domain's config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Action {
    /// Free everything.
    Destroy = 0,
    /// Boot it again: same ID, fresh memory, the same kernel.
    Restart = 1,
    /// Keep it, stopped, in state `Shutdown` until destroyed.
    Preserve = 2,
}

impl Action {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Destroy),
            1 => Some(Self::Restart),
            2 => Some(Self::Preserve),
            _ => None,
        }
    }
}

/// A domain's state as `DomainInfo::state` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum DomainState {
    /// Created, not yet started (its kernel may be loading).
    Created = 0,
    Running = 1,
    Paused = 2,
    /// Asked to shut down or reboot; waiting for the guest (or the timeout).
    ShuttingDown = 3,
    /// Being torn down; its memory returns to the pool when its vCPUs stop.
    Dying = 4,
    /// Ended and kept (`Action::Preserve`) until destroyed.
    Shutdown = 5,
}

impl DomainState {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Created),
            1 => Some(Self::Running),
            2 => Some(Self::Paused),
            3 => Some(Self::ShuttingDown),
            4 => Some(Self::Dying),
            5 => Some(Self::Shutdown),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::ShuttingDown => "shutting-down",
            Self::Dying => "dying",
            Self::Shutdown => "shutdown",
        }
    }
}

/// `nr::DOMCTL` commands. Each names its argument structure and buffer.
pub mod domctl {
    /// Arg `CreateDomain`, no buffer. Returns the new domain's ID; it starts in
    /// state `Created`, its memory zeroed.
    pub const CREATE: u64 = 1;
    /// Arg `LoadImage`, buffer = the next bytes of the domain's kernel (an ELF64
    /// executable) or ramdisk at `offset`. Returns the bytes taken.
    pub const LOAD_IMAGE: u64 = 2;
    /// Arg `BuildDomain`, no buffer: checks the staged kernel and lays it out in
    /// the domain's memory (docs/hypercalls.md, "domU boot state").
    pub const BUILD: u64 = 3;
    /// Arg `DomainRef`. Starts a built domain, or resumes a paused one.
    pub const UNPAUSE: u64 = 4;
    /// Arg `DomainRef`. Stops a running domain's vCPUs until `UNPAUSE`.
    pub const PAUSE: u64 = 5;
    /// Arg `ShutdownDomain`: asks the guest to power off or reboot; after the
    /// timeout the hypervisor does it (destroy or hard restart).
    pub const SHUTDOWN: u64 = 6;
    /// Arg `DomainRef`: ends the domain at once. Returns at once; the domain
    /// is gone, its memory back in the pool, when `GET_INFO` no longer finds it.
    pub const DESTROY: u64 = 7;
    /// Arg `DomainRef`, buffer receives one `DomainInfo`.
    pub const GET_INFO: u64 = 8;
    /// No arg; buffer receives `DomainInfo`s, every domain in ID order. Returns
    /// how many domains exist (more than fit if the buffer was short).
    pub const LIST: u64 = 9;
    /// Arg `RingRead`; buffer receives console bytes. Returns the bytes copied.
    pub const CONSOLE_READ: u64 = 10;
    /// Arg `RingRead` (domid ignored); buffer receives the hypervisor's log.
    pub const DMESG: u64 = 11;
    /// No arg; buffer receives one `PhysInfo`.
    pub const PHYS_INFO: u64 = 12;
    /// Arg `SchedCredit` (in/out): sets the domain's credit-scheduler weight
    /// and/or cap as its `flags` say, then returns both in the argument. (1.2)
    pub const SCHED_CREDIT: u64 = 13;
    /// Arg `VcpuAffinity`: pins a vCPU to the pCPUs of `cpus` (bit n = pCPU n;
    /// the online pCPUs' mask means no pinning). (1.2)
    pub const VCPU_AFFINITY: u64 = 14;
    /// Arg `DomainRef` (domid `ALL_DOMAINS` for every domain); buffer receives
    /// `VcpuInfo`s. Returns how many vCPUs there are (more than fit if short). (1.2)
    pub const VCPU_LIST: u64 = 15;
    /// Arg `DomainRef`, buffer = 1..=`CONSOLE_INPUT_MAX` bytes for the domain's
    /// console input (what an admin typed). Returns how many were taken:
    /// fewer, even 0, when its queue is full (never waits). A domU only:
    /// dom0 gets `-EPERM`; a dying or ended domain `-EBUSY`. (1.3)
    pub const CONSOLE_INPUT: u64 = 16;
    /// Arg `VcpuStateRef`; buffer receives the vCPU's state in the
    /// `vcpu_snapshot` encoding. Returns its length. A paused domU only
    /// (`-EBUSY` otherwise, dom0 `-EPERM`); `-EAGAIN` while the vCPU has not
    /// stopped yet or a state set is still being loaded: ask again. (1.4)
    pub const VCPU_STATE_GET: u64 = 17;
    /// Arg `VcpuStateRef`, buffer = a state in the `vcpu_snapshot` encoding,
    /// checked whole before anything changes (`-EINVAL` if malformed or not
    /// loadable on this host). Loaded into the paused vCPU before it runs
    /// again; `VCPU_STATE_GET` answers `-EAGAIN` until it is. (1.4)
    pub const VCPU_STATE_SET: u64 = 18;
    /// Arg `DomainRef`; buffer (at least `platform_state::ENCODED_LEN`
    /// bytes) receives the domU's platform devices' state (IOAPIC, UART, CMOS
    /// clock, i8042, ACPI sleep registers, PIC masks) in the
    /// `platform_state` encoding; its UART's unwritten output goes to the
    /// console first. Returns the length. A paused domU that has started
    /// (`-EBUSY` otherwise, dom0 `-EPERM`). (1.7)
    pub const PLATFORM_STATE_GET: u64 = 26;
    /// Arg `DomainRef`, buffer = a state in the `platform_state` encoding,
    /// checked whole (structure, then every device's values, on copies)
    /// before any device changes: `-EINVAL` if it is not one the devices
    /// can hold. A paused domU that has started. (1.7)
    pub const PLATFORM_STATE_SET: u64 = 27;
    /// Arg `DomainRef`: starts a built domain as `UNPAUSE` would, but paused:
    /// its vCPUs exist and run nothing, so a saved memory and state can be
    /// loaded (`VCPU_STATE_SET`, `PLATFORM_STATE_SET`) before `UNPAUSE` runs
    /// it. `-EBUSY` unless built and never started. (1.7)
    pub const START_PAUSED: u64 = 28;
    /// Arg `DomainRef`; buffer (at least `CPUID_GET_LEN` bytes) receives the
    /// feature leaves the domain's vCPUs are shown (`save_stream::
    /// FEATURE_REGS`' leaves, then leaves 0 and 0x80000000), as
    /// `save_stream::CpuidEntry`s, before any bit the guest's own state
    /// mirrors (OSXSAVE, OSPKE). Returns their count. What a save stream
    /// carries, and what restore compares it with on the receiving host. (1.7)
    pub const CPUID_GET: u64 = 29;
    /// Arg `IoreqSetup`, no buffer: registers the I/O server page (one 4 KiB
    /// page of dom0's RAM laid out as `ioreq::IoreqPage`) of a domU's device
    /// model; `page` 0 tears it down (the device model died): from then its
    /// ranges read as all ones and drop writes, and vCPUs waiting on a request
    /// complete so. One server per domU: a second page, or one after a
    /// teardown, is refused with `-EBUSY`. (1.6)
    pub const IOREQ_SETUP: u64 = 21;
    /// Arg `IoreqRange`, no buffer: forwards a port or MMIO range of the domU
    /// to its server. `-EBUSY` if it overlaps the domain's RAM, a device the
    /// hypervisor emulates or another range, or no server is set up;
    /// `-ENOSPC` past `ioreq::MAX_RANGES`. (1.6)
    pub const IOREQ_RANGE: u64 = 22;
    /// Arg `IoreqDone`, no buffer: the device model completed vCPU `vcpu`'s
    /// slot (state `DONE`): the vCPU runs again and retires its access. (1.6)
    pub const IOREQ_DONE: u64 = 23;
    /// Arg `ForeignMap` (in/out), no buffer: maps `count` pages of a domU's
    /// RAM from guest frame `first_gfn` on, read-write and write-back, into
    /// dom0's physical address space, in the foreign window above everything
    /// else dom0 sees. Returns (in RAX and `addr`) the dom0-physical address
    /// of the first page. A domU only (dom0 `-EPERM`), not dying (`-EBUSY`);
    /// the range inside its RAM and `count` in 1..=`FOREIGN_MAP_MAX_PAGES`
    /// (`-EINVAL`); `-ENOSPC` when the window has no room left. (1.6)
    pub const FOREIGN_MAP: u64 = 19;
    /// Arg `ForeignUnmap`, no buffer: removes a mapping `FOREIGN_MAP` made,
    /// named exactly by the address and count it returned, and flushes dom0's
    /// TLBs before the window's range is reused. When the domU dies first its
    /// pages leave the window at once (accesses then read all ones, writes are
    /// dropped); the range stays reserved until this call. (1.6)
    pub const FOREIGN_UNMAP: u64 = 20;
    /// Arg `IrqLine`: drives an interrupt line of a domU's IOAPIC, as the
    /// device model of one of its declared devices (`DEVICE_ADD`) does:
    /// `level` 1 raises it, 0 lowers it. Only a line `DEVICE_ADD` gave out
    /// (`-EINVAL` otherwise: not the UART's or the keyboard's); a domain
    /// not started yet, dying or ended `-EBUSY`; dom0 `-EPERM`. (1.6)
    pub const IRQ_LINE: u64 = 24;
    /// Arg `DeviceAdd` (in/out): declares a device of `kind` for a created,
    /// not yet built domU; the hypervisor places it (an MMIO window and an
    /// IOAPIC line of its own) and writes `base`, `size` and `gsi` back.
    /// `BUILD` describes it in the domU's ACPI DSDT. Returns its index
    /// (0..`MAX_DEVICES`). `-ENOSPC` past `MAX_DEVICES` or when the
    /// domain's RAM reaches the window; `-EBUSY` once built. (1.6)
    pub const DEVICE_ADD: u64 = 25;
    /// Arg `LogDirty`: dirty-page logging of a domU's RAM, the base of live
    /// migration's pre-copy (docs/migration.md). `op` is one of
    /// `log_dirty::ENABLE` (write-protect every RAM page in the domain's
    /// nested tables and start a clean log; `-EBUSY` if already on),
    /// `DISABLE` (write access back, the log freed), `CLEAN` (the bits of
    /// pages `[first, first + pages)` into the buffer, bit `i` of byte `j`
    /// for page `first + 8 j + i`, then cleared and those pages
    /// write-protected again) and `PEEK` (the same without clearing).
    /// `first` is a multiple of 64 inside the RAM; `pages` ≥ 1 and clipped
    /// to the RAM's end; the buffer holds at least `pages.div_ceil(64)` u64
    /// words (`-EINVAL` otherwise). ENABLE and DISABLE take no buffer and
    /// `first` = `pages` = 0. Returns the number of dirty pages copied
    /// (CLEAN, PEEK) or 0. A domU only (dom0 `-EPERM`), not dying
    /// (`-EBUSY`); CLEAN/PEEK/DISABLE while off `-EINVAL`. Translations the
    /// CPUs cached are flushed before ENABLE or CLEAN returns. (1.8)
    pub const LOG_DIRTY: u64 = 30;
}

/// `domctl::LOG_DIRTY`'s operations. (1.8)
pub mod log_dirty {
    pub const ENABLE: u32 = 0;
    pub const DISABLE: u32 = 1;
    pub const CLEAN: u32 = 2;
    pub const PEEK: u32 = 3;
}

/// `domctl::LOG_DIRTY`'s argument. (1.8)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct LogDirty {
    pub domid: u32,
    /// `log_dirty::*`.
    pub op: u32,
    /// First page (guest frame number), a multiple of 64.
    pub first: u64,
    /// Pages of the range (CLEAN, PEEK).
    pub pages: u64,
}

/// Most pages one `domctl::FOREIGN_MAP` maps: the whole foreign window
/// (`FOREIGN_WINDOW_BYTES`). (1.6)
pub const FOREIGN_MAP_MAX_PAGES: u64 = FOREIGN_WINDOW_BYTES / 4096;
/// Bytes of dom0-physical address space the hypervisor keeps for foreign
/// mappings: every mapping dom0 holds at once fits in it. (1.6)
pub const FOREIGN_WINDOW_BYTES: u64 = 1 << 30;
/// Mappings dom0 may hold at once (each costs the hypervisor some heap). (1.6)
pub const FOREIGN_MAPPINGS_MAX: usize = 1024;

/// `domctl::FOREIGN_MAP`'s argument. (1.6)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct ForeignMap {
    pub domid: u32,
    pub _pad: u32,
    pub first_gfn: u64,
    pub count: u64,
    /// Out: the dom0-physical address of the first page.
    pub addr: u64,
}

/// `domctl::FOREIGN_UNMAP`'s argument. (1.6)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct ForeignUnmap {
    pub addr: u64,
    pub count: u64,
}

/// The leaves `domctl::CPUID_GET` answers with, and the buffer they need.
pub const CPUID_GET_LEAVES: [(u32, u32); 10] =
    [(0, 0), (1, 0), (7, 0), (7, 1), (0xd, 0), (0xd, 1), (0x8000_0000, 0), (0x8000_0001, 0), (0x8000_0008, 0), (0x8000_0007, 0)];
pub const CPUID_GET_LEN: usize = CPUID_GET_LEAVES.len() * save_stream::CPUID_ENTRY_LEN;

/// `domctl::IOREQ_SETUP`'s argument. (1.6)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct IoreqSetup {
    pub domid: u32,
    pub _pad: u32,
    /// dom0-physical address of the page (4 KiB aligned, dom0's RAM); 0: tear
    /// the server down.
    pub page: u64,
}

/// `domctl::IOREQ_RANGE`'s argument. (1.6)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct IoreqRange {
    pub domid: u32,
    /// `ioreq::KIND_MMIO` or `ioreq::KIND_PIO`.
    pub kind: u32,
    /// `ioreq::FLAG_POSTED_WRITES` or 0.
    pub flags: u32,
    pub _pad: u32,
    /// Guest-physical address (MMIO: 4 KiB aligned) or port.
    pub start: u64,
    /// Bytes (MMIO: a multiple of 4 KiB) or ports.
    pub len: u64,
}

/// `domctl::IOREQ_DONE`'s argument. (1.6)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct IoreqDone {
    pub domid: u32,
    pub vcpu: u32,
}

/// The I/O request page shared by the hypervisor and a domU's device model
/// in dom0 (docs/hypercalls.md, "I/O requests"). (1.6)
pub mod ioreq {
    /// A slot's `state`: nothing asked (the hypervisor's to fill).
    pub const STATE_FREE: u32 = 0;
    /// Filled by the hypervisor: the device model answers it.
    pub const STATE_READY: u32 = 1;
    /// Answered by the device model (`data` holds a read's value): the
    /// hypervisor's again.
    pub const STATE_DONE: u32 = 2;
    /// `kind`: a guest-physical address; an I/O port.
    pub const KIND_MMIO: u8 = 0;
    pub const KIND_PIO: u8 = 1;
    /// `dir`.
    pub const DIR_READ: u8 = 0;
    pub const DIR_WRITE: u8 = 1;
    /// `IoreqRange::flags`: writes to the range go to the posted ring and the
    /// vCPU goes on at once (while the ring has room).
    pub const FLAG_POSTED_WRITES: u32 = 1;
    /// `IoreqRange::flags` (1.10), alone: the range is the InterruptStatus and
    /// InterruptACK registers (`INTERRUPT_STATUS_REG`, 8 bytes) of the
    /// domain's declared virtio-mmio device *i*. The hypervisor answers them
    /// from `IoreqPage::interrupt_status[i]`, which the device model sets bits
    /// of: a 4-byte read of InterruptStatus reads the word; a 4-byte write to
    /// InterruptACK clears the bits it holds and, if none is left, lowers the
    /// device's line. Other accesses there read 0 and are dropped.
    pub const FLAG_INTERRUPT_STATUS: u32 = 2;
    /// Where InterruptStatus is in a virtio-mmio register window (InterruptACK
    /// follows at +4; virtio 1.2 §4.2.2).
    pub const INTERRUPT_STATUS_REG: u64 = 0x60;
    /// Ranges one domU may forward (16 before 1.10): five per device when a
    /// window is split around its posted notify and its interrupt status.
    pub const MAX_RANGES: usize = 48;
    /// Entries of the posted-write ring.
    pub const POSTED_ENTRIES: u32 = 128;
    /// Byte offsets in the page.
    pub const OFFSET_POSTED_HEAD: usize = 256;
    pub const OFFSET_POSTED_TAIL: usize = 320;
    pub const OFFSET_POSTED: usize = 384;
    pub const OFFSET_INTERRUPT_STATUS: usize = 3456;
}

/// One vCPU's request slot. (1.6)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct IoreqSlot {
    /// `ioreq::STATE_*`.
    pub state: u32,
    /// Counts the vCPU's requests (for the device model's traces).
    pub seq: u32,
    /// `ioreq::KIND_*`, `ioreq::DIR_*`, bytes (1, 2, 4 or 8).
    pub kind: u8,
    pub dir: u8,
    pub size: u8,
    pub _pad: [u8; 5],
    /// Guest-physical address or port.
    pub addr: u64,
    /// A write's value; a read's answer (low `size` bytes count).
    pub data: u64,
}

/// A write that needed no answer. (1.6)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PostedWrite {
    pub kind: u8,
    pub size: u8,
    /// The vCPU that wrote it.
    pub vcpu: u8,
    pub _pad: [u8; 5],
    pub addr: u64,
    pub data: u64,
}

/// The whole page. Slot i is vCPU i's. The ring: the hypervisor writes entry
/// `posted_head % POSTED_ENTRIES` and then advances `posted_head`; the device
/// model consumes up to the head and advances `posted_tail`. Both counters
/// run freely (wrapping u32). (1.6)
#[derive(Clone, Copy)]
#[repr(C)]
pub struct IoreqPage {
    pub slots: [IoreqSlot; MAX_VCPUS as usize],
    pub posted_head: u32,
    pub _pad_head: [u8; 60],
    pub posted_tail: u32,
    pub _pad_tail: [u8; 60],
    pub posted: [PostedWrite; ioreq::POSTED_ENTRIES as usize],
    /// Declared device *i*'s virtio-mmio InterruptStatus, for a range with
    /// `ioreq::FLAG_INTERRUPT_STATUS` (1.10). Both sides change it only with
    /// atomic read-modify-writes: the device model ORs bits in (then raises
    /// the line with `IRQ_LINE`), the hypervisor clears what the guest
    /// acknowledges.
    pub interrupt_status: [u32; MAX_DEVICES as usize],
    pub _reserved: [u8; 608],
}

const _: () = {
    assert!(core::mem::offset_of!(IoreqPage, posted_head) == ioreq::OFFSET_POSTED_HEAD);
    assert!(core::mem::offset_of!(IoreqPage, posted_tail) == ioreq::OFFSET_POSTED_TAIL);
    assert!(core::mem::offset_of!(IoreqPage, posted) == ioreq::OFFSET_POSTED);
    assert!(core::mem::offset_of!(IoreqPage, interrupt_status) == ioreq::OFFSET_INTERRUPT_STATUS);
    assert!(core::mem::size_of::<IoreqPage>() == 4096);
};

/// `domctl::IRQ_LINE`'s argument. (1.6)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct IrqLine {
    pub domid: u32,
    /// The IOAPIC input (GSI) `DEVICE_ADD` gave the device.
    pub gsi: u32,
    /// 1: asserted, 0: not (any other value is `-EINVAL`).
    pub level: u32,
    pub _pad: u32,
}

/// `domctl::DEVICE_ADD`'s argument (1.6): `domid` and `kind` in (the rest
/// zero), `base`, `size` and `gsi` out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct DeviceAdd {
    pub domid: u32,
    /// A `device_kind`.
    pub kind: u32,
    /// Out: the guest-physical address of its registers.
    pub base: u64,
    /// Out: their length in bytes.
    pub size: u64,
    /// Out: its IOAPIC input, level triggered and active high (ACPI
    /// `Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive)`).
    pub gsi: u32,
    pub _pad: u32,
}

/// `DeviceAdd::kind`. (1.6)
pub mod device_kind {
    /// A virtio-mmio (version 2) transport, ACPI `_HID` `LNRO0005`.
    pub const VIRTIO_MMIO: u32 = 1;
}

/// Devices one domU may declare (`domctl::DEVICE_ADD`): one per free IOAPIC
/// line beyond the ISA range (GSIs 16-23 of its 24). (1.6)
pub const MAX_DEVICES: u32 = 8;
/// Where declared devices go: `DEVICE_WINDOW + i * DEVICE_STRIDE` for the
/// i-th, `DEVICE_SIZE` bytes each, and GSI `DEVICE_GSI_FIRST + i`: below the
/// IOAPIC (0xFEC00000), where QEMU's `microvm` puts its virtio-mmio
/// devices. A domU with RAM reaching `DEVICE_WINDOW` can have none. (1.6)
pub const DEVICE_WINDOW: u64 = 0xfeb0_0000;
pub const DEVICE_STRIDE: u64 = 0x1000;
pub const DEVICE_SIZE: u64 = 0x1000;
pub const DEVICE_GSI_FIRST: u32 = 16;

/// `domctl::VCPU_STATE_GET` / `VCPU_STATE_SET`'s argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct VcpuStateRef {
    pub domid: u32,
    pub vcpu: u32,
}

/// `DomainRef::domid` meaning every domain (`domctl::VCPU_LIST`).
pub const ALL_DOMAINS: u32 = u32::MAX;

/// Credit-scheduler limits and defaults (Xen's).
pub const DEFAULT_WEIGHT: u32 = 256;
pub const MAX_WEIGHT: u32 = 65535;

/// `domctl::SCHED_CREDIT`'s argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct SchedCredit {
    pub domid: u32,
    /// `sched_flags`: which of the two to set (0: only read them).
    pub flags: u32,
    /// 1..=`MAX_WEIGHT`; a domain gets CPU time in proportion to its weight.
    pub weight: u32,
    /// Percent of one pCPU the domain may use at most; 0 = no cap. At most
    /// 100 x the number of pCPUs.
    pub cap: u32,
}

pub mod sched_flags {
    pub const SET_WEIGHT: u32 = 1 << 0;
    pub const SET_CAP: u32 = 1 << 1;
}

/// `domctl::VCPU_AFFINITY`'s argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct VcpuAffinity {
    pub domid: u32,
    pub vcpu: u32,
    /// Bit n: the vCPU may run on pCPU n. Must name at least one online pCPU.
    pub cpus: u64,
}

/// One vCPU, as `domctl::VCPU_LIST` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct VcpuInfo {
    pub domid: u32,
    pub vcpu: u32,
    /// The pCPU it runs on, or ran on last.
    pub cpu: u32,
    /// A `vcpu_state`.
    pub state: u32,
    pub affinity: u64,
    pub cpu_time_ns: u64,
}

pub mod vcpu_state {
    pub const RUNNING: u32 = 0;
    /// Ready, waiting for a pCPU.
    pub const RUNNABLE: u32 = 1;
    /// Halted or sleeping until an event.
    pub const BLOCKED: u32 = 2;
    /// Its domain is paused (or it used up its cap for now).
    pub const PAUSED: u32 = 3;
    /// Not started (vCPUs other than 0 of a domU, for now).
    pub const OFFLINE: u32 = 4;
}

/// `domctl::CREATE`'s argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct CreateDomain {
    pub name: [u8; NAME_LEN],
    pub memory_mib: u32,
    pub vcpus: u32,
    /// `Action`s, as u8.
    pub on_poweroff: u8,
    pub on_reboot: u8,
    pub on_crash: u8,
    pub _pad: u8,
    /// Must be zero.
    pub flags: u32,
}

/// `domctl::LOAD_IMAGE`'s argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct LoadImage {
    pub domid: u32,
    /// `image_kind`: the kernel or the ramdisk.
    pub kind: u32,
    /// Where the buffer's bytes go in the image; 0 starts a new image of `total`
    /// bytes, later chunks must give the same `total` and follow on.
    pub offset: u64,
    pub total: u64,
}

/// `LoadImage::kind`.
pub mod image_kind {
    /// The kernel: an ELF64 x86-64 executable, a Linux bzImage or a Multiboot (v1) image.
    pub const KERNEL: u32 = 0;
    /// An opaque blob placed in guest memory (`StartInfo::ramdisk_addr`).
    pub const RAMDISK: u32 = 1;
}

/// `domctl::BUILD`'s argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct BuildDomain {
    pub domid: u32,
    pub _pad: u32,
    /// The guest's command line, NUL terminated.
    pub cmdline: [u8; CMDLINE_LEN],
}

/// Argument of the commands that only name a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct DomainRef {
    pub domid: u32,
    pub _pad: u32,
}

/// `domctl::SHUTDOWN`'s argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct ShutdownDomain {
    pub domid: u32,
    /// `ShutdownReason::Poweroff` or `Reboot`.
    pub reason: u32,
}

/// `domctl::CONSOLE_READ` / `DMESG` argument. A ring keeps the last bytes
/// written; `offset` counts every byte ever written, so a reader passes the
/// `next` it got last time and sees what it missed in `lost`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct RingRead {
    pub domid: u32,
    pub _pad: u32,
    /// In: where to start reading.
    pub offset: u64,
    /// Out: the offset after the last byte copied.
    pub next: u64,
    /// Out: bytes between `offset` and the oldest byte still kept.
    pub lost: u64,
}

/// One domain, as `GET_INFO` and `LIST` report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct DomainInfo {
    pub domid: u32,
    /// A `DomainState`.
    pub state: u32,
    pub vcpus: u32,
    /// `info_flags`.
    pub flags: u32,
    pub memory_kib: u64,
    /// Time its vCPUs spent in the guest, summed.
    pub cpu_time_ns: u64,
    pub exits: u64,
    /// Times it was restarted (reboot) under the same ID.
    pub restarts: u32,
    /// A `ShutdownReason` when state is `ShuttingDown` or `Shutdown`.
    pub shutdown_reason: u32,
    pub name: [u8; NAME_LEN],
}

pub mod info_flags {
    /// dom0: may use `DOMCTL`.
    pub const PRIVILEGED: u32 = 1 << 0;
    /// Its kernel is laid out; it can be started.
    pub const BUILT: u32 = 1 << 1;
}

/// The machine as `PHYS_INFO` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct PhysInfo {
    pub abi_version: u32,
    pub cpus: u32,
    pub total_kib: u64,
    /// Free in the pool domUs are built from.
    pub free_kib: u64,
    pub tsc_khz: u64,
    pub domains: u32,
    /// 0 = VT-x, 1 = AMD-V.
    pub vendor: u32,
}

/// What a domU's kernel finds at the address in RDI when it starts
/// (docs/hypercalls.md, "domU boot state").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct StartInfo {
    /// `START_INFO_MAGIC`.
    pub magic: u64,
    pub abi_version: u32,
    pub vcpus: u32,
    /// Bytes of RAM, guest-physical 0 up.
    pub memory_bytes: u64,
    /// The first guest-physical byte the hypervisor's boot structures use: the
    /// kernel owns everything below it.
    pub boot_area: u64,
    /// Where the ramdisk was placed and its length (0/0: none).
    pub ramdisk_addr: u64,
    pub ramdisk_len: u64,
    pub cmdline: [u8; CMDLINE_LEN],
}

pub const START_INFO_MAGIC: u64 = u64::from_le_bytes(*b"OxenBoot");

/// `/dev/oxen`'s one ioctl: a hypercall with its argument and buffer copied in
/// from the caller, then back out. For `nr::DOMCTL` the driver passes `cmd`,
/// the argument's and the buffer's kernel copies and lengths in RDI..R8; other
/// calls it forwards (`VERSION`, `NULL`) take no arguments. `result` receives RAX.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct HypercallIoctl {
    pub nr: u64,
    pub cmd: u64,
    /// User-space address and length of the argument structure (0/0: none).
    pub arg: u64,
    pub arg_len: u64,
    /// User-space address and length of the data buffer (0/0: none).
    pub buf: u64,
    pub buf_len: u64,
    pub result: i64,
}

/// `_IOWR('O', 1, struct oxen_hypercall)`, as Linux's <asm-generic/ioctl.h> builds it.
pub const IOCTL_HYPERCALL: u64 =
    (3 << 30) | ((core::mem::size_of::<HypercallIoctl>() as u64) << 16) | ((b'O' as u64) << 8) | 1;

/// `/dev/oxen`'s event wait (1.5): sleeps until the driver has counted a
/// different number of the events in `mask` (bits of `event`) than `count`
/// (what the caller saw last; 0 at first), or `timeout_ms` passed. `count`
/// comes back as the driver's count now (unchanged: the wait timed out). The
/// driver counts what dom0's event line tells it (`nr::EVENTS`), and asks for
/// an event only while someone waits for it. Fails with `ENODEV` where the
/// driver has no event line (a hypervisor older than 1.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct EventWaitIoctl {
    pub mask: u64,
    pub count: u64,
    pub timeout_ms: u64,
}

/// `_IOWR('O', 2, struct oxen_event_wait)`.
pub const IOCTL_EVENT_WAIT: u64 =
    (3 << 30) | ((core::mem::size_of::<EventWaitIoctl>() as u64) << 16) | ((b'O' as u64) << 8) | 2;

const fn iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | ((b'O' as u64) << 8) | nr
}

/// `/dev/oxen`: a new file descriptor serving domain `domid`'s I/O requests
/// (1.6). It owns a zeroed page registered with `domctl::IOREQ_SETUP`,
/// `mmap`s it (one page, shared), is readable (`poll`) while a slot is
/// `READY` or the posted ring is not empty, takes `IOCTL_IOREQ_RANGE` and
/// `IOCTL_IOREQ_DONE`, and tears the server down when closed. Returns the fd.
pub const IOCTL_IOREQ_OPEN: u64 = iowr(0x10, core::mem::size_of::<DomainRef>());
/// On an ioreq fd: `domctl::IOREQ_RANGE` for its domain (`domid` ignored).
pub const IOCTL_IOREQ_RANGE: u64 = iowr(0x11, core::mem::size_of::<IoreqRange>());
/// On an ioreq fd: `domctl::IOREQ_DONE` for its domain (`domid` ignored).
pub const IOCTL_IOREQ_DONE: u64 = iowr(0x12, core::mem::size_of::<IoreqDone>());

/// `/dev/oxen`'s foreign-mapping open (1.6): returns a new file descriptor
/// for domain `domid`'s memory. `mmap(len, offset = guest-physical address)`
/// on it maps those pages of the domain (`domctl::FOREIGN_MAP`), shared and
/// read-write; `munmap` or the process's end unmaps them (`FOREIGN_UNMAP`).
/// A mapping cannot be split, moved or inherited by `fork`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ForeignOpenIoctl {
    pub domid: u32,
    pub _pad: u32,
}

/// `_IOWR('O', 0x13, struct oxen_foreign_open)` (0x13 = `domctl::FOREIGN_MAP`).
pub const IOCTL_FOREIGN_OPEN: u64 =
    (3 << 30) | ((core::mem::size_of::<ForeignOpenIoctl>() as u64) << 16) | ((b'O' as u64) << 8) | 0x13;

/// The device node.
pub const DEVICE_PATH: &str = "/dev/oxen";

/// Errors, as negated values in RAX (Linux errno numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i64)]
pub enum Error {
    /// Not allowed for this caller (CPL > 0, or a domctl from a domU).
    Perm = 1,
    /// No such domain.
    NoEnt = 2,
    /// Out of memory in the domU pool.
    NoMem = 12,
    /// A guest address was outside the caller's memory.
    Fault = 14,
    /// The domain is not in a state that allows this (e.g. unpause a dying one).
    Busy = 16,
    /// A name already in use.
    Exist = 17,
    /// An argument was malformed.
    Inval = 22,
    /// Too many domains or vCPUs.
    NoSpc = 28,
    /// No such hypercall or command.
    NoSys = 38,
    /// The staged image is not a kernel Oxen can boot.
    NoExec = 8,
    /// A data buffer too big for one call.
    TooBig = 7,
    /// Not yet: ask again shortly (a paused vCPU still stopping). (1.4)
    Again = 11,
}

impl Error {
    /// The value placed in RAX.
    pub const fn to_rax(self) -> u64 {
        (-(self as i64)) as u64
    }

    /// The error a negative RAX value stands for.
    pub const fn from_rax(rax: u64) -> Option<Self> {
        Some(match -(rax as i64) {
            1 => Self::Perm,
            2 => Self::NoEnt,
            7 => Self::TooBig,
            8 => Self::NoExec,
            11 => Self::Again,
            12 => Self::NoMem,
            14 => Self::Fault,
            16 => Self::Busy,
            17 => Self::Exist,
            22 => Self::Inval,
            28 => Self::NoSpc,
            38 => Self::NoSys,
            _ => return None,
        })
    }

    /// What it means, for messages.
    pub const fn describe(self) -> &'static str {
        match self {
            Self::Perm => "not permitted",
            Self::NoEnt => "no such domain",
            Self::NoMem => "not enough free memory in the hypervisor",
            Self::Fault => "bad address",
            Self::Busy => "not possible in the domain's current state",
            Self::Exist => "name already in use",
            Self::Inval => "invalid argument",
            Self::NoSpc => "too many domains or vCPUs",
            Self::NoSys => "no such hypercall",
            Self::NoExec => "not a kernel Oxen can boot (an ELF64 x86-64 executable, a Linux bzImage or a Multiboot image)",
            Self::TooBig => "too large",
            Self::Again => "not ready yet, try again",
        }
    }
}

/// Reads a NUL-padded name or command line as text, if it is UTF-8.
pub fn c_str(bytes: &[u8]) -> Option<&str> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    core::str::from_utf8(&bytes[..end]).ok()
}

/// Whether `name` is a valid domain name.
pub fn valid_name(name: &str) -> bool {
    (1..NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Fills a `NAME_LEN` array from a valid name.
pub fn name_bytes(name: &str) -> Option<[u8; NAME_LEN]> {
    if !valid_name(name) {
        return None;
    }
    let mut out = [0u8; NAME_LEN];
    out[..name.len()].copy_from_slice(name.as_bytes());
    Some(out)
}

/// Structures as raw bytes, for copying across the ABI. Every structure here
/// is `repr(C)` plain old data with explicit padding, so any bit pattern is a
/// valid value and its bytes have no holes.
///
/// # Safety
/// Implement only for `repr(C)` types of integers and byte arrays with no
/// implicit padding (the `pod!` macro asserts each size).
pub unsafe trait Pod: Copy + Sized + 'static {
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: `Self` is a repr(C) struct with no implicit padding (sizes
        // asserted below), so all its bytes are initialized.
        unsafe { core::slice::from_raw_parts((self as *const Self).cast(), core::mem::size_of::<Self>()) }
    }
    /// Reads one from the front of `bytes`, if there are enough.
    fn read_from(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < core::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: enough bytes, read unaligned, and every bit pattern is a valid
        // `Self` (integers and byte arrays only).
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) })
    }
}

macro_rules! pod {
    ($($t:ty = $size:expr),* $(,)?) => {$(
        // SAFETY: integers and byte arrays, padding explicit; size asserted.
        unsafe impl Pod for $t {}
        const _: () = assert!(core::mem::size_of::<$t>() == $size);
    )*};
}

pod! {
    CreateDomain = 48,
    LoadImage = 24,
    BuildDomain = 264,
    DomainRef = 8,
    ShutdownDomain = 8,
    RingRead = 32,
    DomainInfo = 80,
    PhysInfo = 40,
    StartInfo = 304,
    HypercallIoctl = 56,
    EventWaitIoctl = 24,
    SchedCredit = 16,
    VcpuAffinity = 16,
    VcpuInfo = 32,
    VcpuStateRef = 8,
    IoreqSetup = 16,
    IoreqRange = 32,
    IoreqDone = 8,
    IoreqSlot = 32,
    PostedWrite = 24,
    ForeignMap = 32,
    ForeignUnmap = 16,
    ForeignOpenIoctl = 8,
    IrqLine = 16,
    DeviceAdd = 32,
    LogDirty = 24,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_negated_errno() {
        assert_eq!(Error::NoSys.to_rax() as i64, -38);
        assert_eq!(Error::Perm.to_rax(), u64::MAX);
        assert_eq!(abi_major(ABI_VERSION), 1);
        for e in [Error::Perm, Error::NoEnt, Error::NoMem, Error::Fault, Error::Busy, Error::Exist, Error::Inval,
            Error::NoSpc, Error::NoSys, Error::NoExec, Error::TooBig]
        {
            assert_eq!(Error::from_rax(e.to_rax()), Some(e));
        }
        assert_eq!(Error::from_rax(0), None);
    }

    #[test]
    fn ioctl_number_matches_linux_iowr() {
        // _IOWR('O', 1, 56-byte struct) = 0xc038_4f01.
        assert_eq!(IOCTL_HYPERCALL, 0xc038_4f01);
        assert_eq!(IOCTL_EVENT_WAIT, 0xc018_4f02);
        assert_eq!((IOCTL_IOREQ_OPEN, IOCTL_IOREQ_RANGE, IOCTL_IOREQ_DONE), (0xc008_4f10, 0xc020_4f11, 0xc008_4f12));
    }

    #[test]
    fn names() {
        assert!(valid_name("web-1.example_a"));
        assert!(!valid_name(""));
        assert!(!valid_name("has space"));
        assert!(!valid_name(&"x".repeat(32)));
        let b = name_bytes("guest").unwrap();
        assert_eq!(c_str(&b), Some("guest"));
    }

    #[test]
    fn pod_round_trip() {
        let r = RingRead { domid: 3, _pad: 0, offset: 9, next: 10, lost: 1 };
        assert_eq!(RingRead::read_from(r.as_bytes()), Some(r));
        assert_eq!(RingRead::read_from(&r.as_bytes()[..31]), None);
        assert_eq!(DomainState::from_u32(4), Some(DomainState::Dying));
        assert_eq!(ShutdownReason::from_u64(3), None);
    }
}
