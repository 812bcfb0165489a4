//! `oxen-fuzz CALLS [SEED]`: random requests to `/dev/oxen` from dom0's user
//! space (root), for `dom0-bootstrap/tests/fuzz.sh`: random ioctl numbers, bad
//! request pointers, random hypercall numbers and junk registers through the
//! driver's one ioctl, and `DOMCTL`s with valid-looking argument structures
//! (`oxen_abi`) mutated, at good, bad and straddling user addresses with
//! lengths around the limits. Each answer is checked where the driver or the
//! ABI fixes it (ENOTTY, EFAULT, EINVAL, E2BIG, dom0 itself untouchable, ...)
//! and must always be success or an errno the ABI or driver documents; anything
//! else is counted and printed as UNEXPECTED.
//!
//! dom0 is privileged, so what it asks is obeyed: the fuzzer never pauses,
//! shuts down, destroys, re-pins or re-weights a domain that existed when it
//! started (the bystander, the domU fuzzer). Such a request has its domain ID
//! replaced by one of the fuzzer's own domains or a free ID (counted as
//! "redirected"). dom0 (ID 0) is left as a target of pause/shutdown/destroy/
//! affinity, which the hypervisor must refuse (-EPERM), but not of a weight or
//! cap change, which it would obey. The domains the fuzzer creates (at most
//! `MAX_OURS` at once; some built from minimal.elf and started) are destroyed
//! before the summary, and it waits until they are gone.
//!
//! Output: `oxen-fuzz: start: ...`, progress every tenth, `oxen-fuzz: summary:
//! N calls, M unexpected, T ms`, the tallies, `oxen-fuzz: cleanup: ...`.
//! Exit status 0 when nothing was unexpected and cleanup finished.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use oxen_abi::{
    domctl, nr, BuildDomain, CreateDomain, DomainInfo, DomainRef, HypercallIoctl, LoadImage, PhysInfo, Pod,
    RingRead, SchedCredit, ShutdownDomain, VcpuAffinity, ABI_VERSION, CMDLINE_LEN, DEVICE_PATH,
    DOMCTL_ARG_MAX, DOMCTL_BUF_MAX, IOCTL_HYPERCALL,
};

/// The fuzzer's own domains alive at once; one more is made room for by
/// destroying the oldest.
const MAX_OURS: usize = 3;
/// What a started domain of ours runs.
const MINIMAL: &str = "/usr/lib/oxen/guests/minimal.elf";
/// How many UNEXPECTED calls are printed in full.
const SHOWN: u64 = 16;
const PAGE: usize = 4096;
/// Each user area: room for the largest buffer, then a PROT_NONE guard page.
const AREA: usize = DOMCTL_BUF_MAX as usize + PAGE;

/// SplitMix64: the same seed makes the same requests (the answers depend on the
/// hypervisor's state too, e.g. free memory).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// What an answer must be.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// This errno (ENOMEM is always allowed too: the driver's kzalloc may fail).
    Errno(i32),
    /// Success with this RAX.
    Value(u64),
    /// One of these errnos, never success.
    Refused(&'static [i32]),
    /// Success or any errno the ABI or the driver documents.
    Any,
}

/// Errnos the ABI (docs/hypercalls.md) and the driver (ENOTTY) can answer.
const KNOWN: [i32; 12] = [
    libc::EPERM, libc::ENOENT, libc::E2BIG, libc::ENOEXEC, libc::ENOMEM, libc::EFAULT, libc::EBUSY,
    libc::EEXIST, libc::EINVAL, libc::ENOSPC, libc::ENOSYS, libc::ENOTTY,
];

fn errno_name(e: i32) -> &'static str {
    match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::E2BIG => "E2BIG",
        libc::ENOEXEC => "ENOEXEC",
        libc::ENOMEM => "ENOMEM",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTTY => "ENOTTY",
        libc::EIO => "EIO",
        _ => "other",
    }
}

impl Want {
    fn accepts(self, got: Result<u64, i32>) -> bool {
        match (self, got) {
            (_, Err(libc::ENOMEM)) => true,
            (Self::Errno(e), Err(g)) => e == g,
            (Self::Value(v), Ok(g)) => v == g,
            (Self::Refused(set), Err(g)) => set.contains(&g),
            (Self::Any, Ok(_)) => true,
            (Self::Any, Err(g)) => KNOWN.contains(&g),
            _ => false,
        }
    }
}

/// A user area: `AREA` read-write bytes followed by a guard page nothing maps.
struct Area {
    base: *mut u8,
}

impl Area {
    fn new() -> Self {
        let len = AREA + PAGE;
        // SAFETY: a fresh anonymous private mapping; the kernel picks the address.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        assert!(p != libc::MAP_FAILED, "mmap of {len} bytes failed");
        // SAFETY: the last page of the mapping just made.
        let r = unsafe { libc::mprotect(p.cast::<u8>().add(AREA).cast(), PAGE, libc::PROT_NONE) };
        assert_eq!(r, 0, "mprotect of the guard page failed");
        Self { base: p.cast() }
    }
    fn addr(&self) -> u64 {
        self.base as u64
    }
    /// The first byte of the guard page.
    fn guard(&self) -> u64 {
        self.addr() + AREA as u64
    }
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the AREA read-write bytes of our own mapping; `&mut self` keeps
        // the borrow unique, and the driver only touches them during an ioctl.
        unsafe { std::slice::from_raw_parts_mut(self.base, AREA) }
    }
}

#[derive(Default)]
struct Tally {
    results: BTreeMap<&'static str, u64>,
    kinds: BTreeMap<&'static str, u64>,
    unexpected: u64,
    redirected: u64,
    created: u64,
    started: u64,
}

struct Fuzzer {
    fd: i32,
    rng: Rng,
    arg: Area,
    buf: Area,
    /// Domains that existed at the start (dom0 included): never harmed.
    protected: Vec<u32>,
    /// Our own domains, oldest first, and how much of minimal.elf each has staged.
    ours: Vec<(u32, u64)>,
    /// Domains of ours destroyed, to be waited for.
    destroyed: Vec<u32>,
    image: Vec<u8>,
    names: u64,
    t: Tally,
}

/// Raw ioctl: Ok(RAX from the request) or Err(errno).
fn ioctl(fd: i32, cmd: u64, argp: u64) -> Result<i64, i32> {
    // SAFETY: the fuzzer's whole point: `argp` is either one of our own
    // `HypercallIoctl`s (whose arg/buf name our own areas or bad addresses) or
    // an address the kernel must refuse to touch (null, unmapped, the guard
    // page, kernel or non-canonical addresses). No Rust object is exposed: only
    // our mmap'ed areas and a request struct owned by the caller.
    let r = unsafe { libc::ioctl(fd, cmd as libc::Ioctl, argp as *mut libc::c_void) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
    } else {
        Ok(i64::from(r))
    }
}

impl Fuzzer {
    /// One hypercall through the driver: Ok(RAX) or Err(errno).
    fn hypercall(&mut self, req: &mut HypercallIoctl) -> Result<u64, i32> {
        ioctl(self.fd, IOCTL_HYPERCALL, req as *mut HypercallIoctl as u64).map(|_| req.result as u64)
    }

    /// A well-formed DOMCTL from our areas: argument then buffer.
    fn domctl(&mut self, cmd: u64, arg: &[u8], buf_len: usize) -> Result<u64, i32> {
        self.arg.bytes()[..arg.len()].copy_from_slice(arg);
        let mut req = HypercallIoctl {
            nr: nr::DOMCTL,
            cmd,
            arg: if arg.is_empty() { 0 } else { self.arg.addr() },
            arg_len: arg.len() as u64,
            buf: if buf_len == 0 { 0 } else { self.buf.addr() },
            buf_len: buf_len as u64,
            result: 0,
        };
        self.hypercall(&mut req)
    }

    fn list(&mut self) -> Vec<DomainInfo> {
        let size = size_of::<DomainInfo>();
        let n = self.domctl(domctl::LIST, &[], 64 * size).unwrap_or(0).min(64) as usize;
        (0..n).filter_map(|i| DomainInfo::read_from(&self.buf.bytes()[i * size..])).collect()
    }

    fn exists(&mut self, domid: u32) -> bool {
        let r = DomainRef { domid, _pad: 0 };
        self.domctl(domctl::GET_INFO, r.as_bytes(), size_of::<DomainInfo>()) != Err(libc::ENOENT)
    }

    fn record(&mut self, kind: &'static str, i: u64, req: &HypercallIoctl, got: Result<u64, i32>, want: Want) {
        *self.t.kinds.entry(kind).or_default() += 1;
        let key = match got {
            Ok(_) => "ok",
            Err(e) => errno_name(e),
        };
        *self.t.results.entry(key).or_default() += 1;
        if !want.accepts(got) {
            self.t.unexpected += 1;
            if self.t.unexpected <= SHOWN {
                let got = match got {
                    Ok(v) => format!("{v:#x}"),
                    Err(e) => format!("-{e} {}", errno_name(e)),
                };
                println!(
                    "oxen-fuzz: UNEXPECTED call {i} ({kind}): nr {:#x} cmd {:#x} arg {:#x}+{:#x} buf {:#x}+{:#x}: got {got}, expected {want:?}",
                    req.nr, req.cmd, req.arg, req.arg_len, req.buf, req.buf_len
                );
            }
        }
    }

    /// An address the kernel must refuse to copy from (EFAULT).
    fn bad_address(&mut self) -> u64 {
        match self.rng.below(6) {
            0 => self.arg.guard() + self.rng.below(PAGE as u64),
            1 => 0xffff_8880_0000_0000 + self.rng.below(1 << 30),
            2 => 0x8000_0000_0000_0000 | self.rng.next_u64(),
            3 => 0x0000_8000_0000_0000 + self.rng.below(1 << 20),
            4 => u64::MAX - self.rng.below(64),
            // Low user addresses below mmap_min_addr: never mapped.
            _ => self.rng.range(1, 0xfff),
        }
    }

    /// One random request, recorded in the tally by kind and answer.
    fn one(&mut self, i: u64) {
        match self.rng.below(100) {
            0..=3 => self.random_ioctl(i),
            4..=7 => self.bad_request(i),
            8..=13 => self.simple_call(i),
            14..=17 => self.bad_number(i),
            18..=27 => self.lifecycle(i),
            _ => self.random_domctl(i),
        }
    }

    /// An ioctl number that is not `IOCTL_HYPERCALL`: the driver answers ENOTTY.
    /// Numbers whose type the VFS handles itself before any driver (FIOCLEX,
    /// FIONBIO, FIFREEZE, FICLONE, ... types 0x00, 'T', 'X', 'f', 0x94, 0x12)
    /// are left out: they act on the file or its filesystem, not on Oxen.
    fn random_ioctl(&mut self, i: u64) {
        let cmd = loop {
            let c = if self.rng.percent(50) {
                IOCTL_HYPERCALL ^ (1 << self.rng.below(32))
            } else {
                self.rng.next_u64() & 0xffff_ffff
            };
            let ty = (c >> 8) & 0xff;
            if c != IOCTL_HYPERCALL && ![0x00, 0x54, 0x58, 0x66, 0x94, 0x12].contains(&ty) {
                break c;
            }
        };
        let argp = if self.rng.percent(50) { self.arg.addr() } else { self.bad_address() };
        let got = ioctl(self.fd, cmd, argp).map(|r| r as u64);
        let req = HypercallIoctl { nr: 0, cmd, arg: argp, ..Default::default() };
        self.record("ioctl-number", i, &req, got, Want::Errno(libc::ENOTTY));
    }

    /// `IOCTL_HYPERCALL` with the request itself at a bad address (or straddling
    /// into the guard page): EFAULT.
    fn bad_request(&mut self, i: u64) {
        let argp = if self.rng.percent(30) {
            self.arg.guard() - self.rng.range(1, size_of::<HypercallIoctl>() as u64 - 1)
        } else {
            self.bad_address()
        };
        if argp < self.arg.guard() && argp >= self.arg.addr() {
            // The part before the guard page holds a valid-looking NULL request.
            let req = HypercallIoctl { nr: nr::NULL, ..Default::default() };
            let at = (argp - self.arg.addr()) as usize;
            let n = AREA - at;
            self.arg.bytes()[at..].copy_from_slice(&req.as_bytes()[..n]);
        }
        let got = ioctl(self.fd, IOCTL_HYPERCALL, argp).map(|r| r as u64);
        let req = HypercallIoctl { nr: u64::MAX, arg: argp, ..Default::default() };
        self.record("bad-request", i, &req, got, Want::Errno(libc::EFAULT));
    }

    /// VERSION or NULL, clean (their value) or with junk in the other fields
    /// (the driver refuses: EINVAL).
    fn simple_call(&mut self, i: u64) {
        let nr = self.rng.pick(&[nr::VERSION, nr::NULL]);
        let mut req = HypercallIoctl { nr, ..Default::default() };
        let want = if self.rng.percent(60) {
            Want::Value(if nr == nr::VERSION { ABI_VERSION.into() } else { 0 })
        } else {
            match self.rng.below(5) {
                0 => req.cmd = self.rng.range(1, u64::MAX),
                1 => req.arg = self.arg.addr(),
                2 => req.arg_len = self.rng.range(1, 8),
                3 => req.buf = self.bad_address(),
                _ => req.buf_len = self.rng.range(1, u64::MAX),
            }
            Want::Errno(libc::EINVAL)
        };
        req.result = self.rng.next_u64() as i64;
        let got = self.hypercall(&mut req);
        self.record("version-null", i, &req, got, want);
    }

    /// A hypercall number the driver does not forward: EINVAL, whatever the rest.
    fn bad_number(&mut self, i: u64) {
        let nr = loop {
            let n = match self.rng.below(4) {
                0 => self.rng.range(2, 15),
                1 => self.rng.range(17, 64),
                2 => self.rng.pick(&[nr::VERSION, nr::NULL, nr::DOMCTL]) | (self.rng.range(1, 0xffff_ffff) << 32),
                _ => self.rng.next_u64(),
            };
            if ![nr::VERSION, nr::NULL, nr::DOMCTL].contains(&n) {
                break n;
            }
        };
        let mut req = HypercallIoctl {
            nr,
            cmd: self.rng.next_u64(),
            arg: self.arg.addr(),
            arg_len: self.rng.below(64),
            buf: 0,
            buf_len: 0,
            result: 0,
        };
        let got = self.hypercall(&mut req);
        self.record("bad-number", i, &req, got, Want::Errno(libc::EINVAL));
    }

    /// A valid step in the life of one of our domains: create, stage
    /// minimal.elf, build, start, pause, resume, ask to shut down, destroy.
    fn lifecycle(&mut self, i: u64) {
        if self.ours.len() >= MAX_OURS || (!self.ours.is_empty() && self.rng.percent(5)) {
            // Room for the next: the oldest goes.
            let (id, _) = self.ours.remove(0);
            self.destroy_ours(i, id);
            return;
        }
        if self.ours.is_empty() || self.rng.percent(10) {
            self.names += 1;
            let name = format!("fz{}-{}", std::process::id() % 1000, self.names);
            let c = CreateDomain {
                name: oxen_abi::name_bytes(&name).unwrap_or_default(),
                memory_mib: self.rng.pick(&[4, 8, 16]),
                vcpus: 1,
                on_poweroff: 0,
                on_reboot: 0,
                on_crash: 0,
                _pad: 0,
                flags: 0,
            };
            let got = self.domctl(domctl::CREATE, c.as_bytes(), 0);
            let req = HypercallIoctl { nr: nr::DOMCTL, cmd: domctl::CREATE, ..Default::default() };
            if let Ok(id) = got {
                self.ours.push((id as u32, 0));
                self.t.created += 1;
            }
            self.record("lifecycle", i, &req, got, Want::Any);
            return;
        }
        let k = self.rng.below(self.ours.len() as u64) as usize;
        let (id, staged) = self.ours[k];
        let total = self.image.len() as u64;
        let (cmd, got) = if staged < total && !self.image.is_empty() {
            let n = (total - staged).min(DOMCTL_BUF_MAX);
            let l = LoadImage { domid: id, kind: 0, offset: staged, total };
            let chunk = self.image[staged as usize..(staged + n) as usize].to_vec();
            self.buf.bytes()[..chunk.len()].copy_from_slice(&chunk);
            let got = self.domctl(domctl::LOAD_IMAGE, l.as_bytes(), n as usize);
            if got.is_ok() {
                self.ours[k].1 = staged + n;
            }
            (domctl::LOAD_IMAGE, got)
        } else {
            let step = self.rng.pick(&[domctl::BUILD, domctl::UNPAUSE, domctl::PAUSE, domctl::SHUTDOWN, domctl::GET_INFO]);
            let got = match step {
                domctl::BUILD => {
                    let mut cmdline = [0u8; CMDLINE_LEN];
                    cmdline[..16].copy_from_slice(b"interval_ms=5000");
                    let b = BuildDomain { domid: id, _pad: 0, cmdline };
                    self.domctl(step, b.as_bytes(), 0)
                }
                domctl::SHUTDOWN => {
                    let s = ShutdownDomain { domid: id, reason: self.rng.below(2) as u32 };
                    self.domctl(step, s.as_bytes(), 0)
                }
                domctl::GET_INFO => {
                    self.domctl(step, DomainRef { domid: id, _pad: 0 }.as_bytes(), size_of::<DomainInfo>())
                }
                _ => self.domctl(step, DomainRef { domid: id, _pad: 0 }.as_bytes(), 0),
            };
            if step == domctl::UNPAUSE && got.is_ok() {
                self.t.started += 1;
            }
            // Shutdown destroys it once the guest powers off (on_poweroff = destroy).
            if step == domctl::SHUTDOWN && got.is_ok() {
                self.ours.remove(k);
                self.destroyed.push(id);
            }
            (step, got)
        };
        let req = HypercallIoctl { nr: nr::DOMCTL, cmd, ..Default::default() };
        self.record("lifecycle", i, &req, got, Want::Any);
    }

    fn destroy_ours(&mut self, i: u64, id: u32) {
        let got = self.domctl(domctl::DESTROY, DomainRef { domid: id, _pad: 0 }.as_bytes(), 0);
        let req = HypercallIoctl { nr: nr::DOMCTL, cmd: domctl::DESTROY, ..Default::default() };
        // Ours, alive (or already on its way out after a shutdown): never refused
        // but for a domain already dying.
        self.record("lifecycle", i, &req, got, Want::Any);
        self.destroyed.push(id);
    }

    /// A domain ID for a structure: ours, a protected one, dom0, or any.
    fn domid(&mut self) -> u32 {
        match self.rng.below(5) {
            0 if !self.ours.is_empty() => self.ours[self.rng.below(self.ours.len() as u64) as usize].0,
            1 => self.protected[self.rng.below(self.protected.len() as u64) as usize],
            2 => 0,
            3 => self.rng.pick(&[u32::MAX, 0x7fef, 0x7ff0, 0x8000_0000]),
            _ => self.rng.below(64) as u32,
        }
    }

    /// The argument structure of `cmd`, valid-looking, as bytes.
    fn structure(&mut self, cmd: u64) -> Vec<u8> {
        let domid = self.domid();
        let r = self.rng.next_u64();
        match cmd {
            domctl::CREATE => {
                self.names += 1;
                let name = format!("fz{}-x{}", std::process::id() % 1000, self.names);
                CreateDomain {
                    name: oxen_abi::name_bytes(&name).unwrap_or_default(),
                    memory_mib: self.rng.pick(&[4, 8, 3, 0, u32::MAX, 1 << 20, (1 << 20) + 1]),
                    vcpus: self.rng.pick(&[1, 2, 0, 8, 9]),
                    on_poweroff: self.rng.below(4) as u8,
                    on_reboot: self.rng.below(4) as u8,
                    on_crash: self.rng.below(4) as u8,
                    _pad: 0,
                    flags: 0,
                }
                .as_bytes()
                .to_vec()
            }
            domctl::LOAD_IMAGE => LoadImage {
                domid,
                kind: self.rng.below(3) as u32,
                offset: self.rng.pick(&[0, 4096, r % (1 << 27), u64::MAX - 4095]),
                total: self.rng.pick(&[4096, 65536, 64 << 20, (64 << 20) + 1, 0, u64::MAX]),
            }
            .as_bytes()
            .to_vec(),
            domctl::BUILD => {
                let mut cmdline = [0u8; CMDLINE_LEN];
                let fill = self.rng.below(CMDLINE_LEN as u64 + 1) as usize;
                for b in &mut cmdline[..fill] {
                    *b = self.rng.range(0x20, 0xff) as u8;
                }
                BuildDomain { domid, _pad: 0, cmdline }.as_bytes().to_vec()
            }
            domctl::SHUTDOWN => ShutdownDomain { domid, reason: self.rng.below(4) as u32 }.as_bytes().to_vec(),
            domctl::CONSOLE_READ | domctl::DMESG => {
                RingRead { domid, _pad: 0, offset: self.rng.pick(&[0, r % 70_000, u64::MAX, r]), next: r, lost: r }
                    .as_bytes()
                    .to_vec()
            }
            domctl::SCHED_CREDIT => SchedCredit {
                domid,
                flags: self.rng.below(5) as u32,
                weight: self.rng.pick(&[0, 1, 256, 65535, 65536]),
                cap: self.rng.pick(&[0, 1, 100, 200, 201, u32::MAX]),
            }
            .as_bytes()
            .to_vec(),
            domctl::VCPU_AFFINITY => VcpuAffinity {
                domid,
                vcpu: self.rng.pick(&[0, 1, 7, 8]),
                cpus: self.rng.pick(&[0, 1, 2, 3, 1 << 63, u64::MAX]),
            }
            .as_bytes()
            .to_vec(),
            // Lines and devices touch only domains that declared devices: the
            // fuzzer's own, created and not built (a bystander has none).
            domctl::IRQ_LINE => oxen_abi::IrqLine {
                domid,
                gsi: self.rng.pick(&[16, 17, 23, 4, 1, 24, 0, u32::MAX]),
                level: self.rng.below(3) as u32,
                _pad: 0,
            }
            .as_bytes()
            .to_vec(),
            domctl::DEVICE_ADD => oxen_abi::DeviceAdd {
                domid,
                kind: self.rng.pick(&[oxen_abi::device_kind::VIRTIO_MMIO, 0, 2]),
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
            // Logging slows a domain down only; still kept off the protected ones.
            domctl::LOG_DIRTY => oxen_abi::LogDirty {
                domid,
                op: self.rng.pick(&[0, 1, 2, 3, 4, u32::MAX]),
                first: self.rng.pick(&[0, 64, 3, 4096, r, u64::MAX - 63]),
                pages: self.rng.pick(&[0, 1, 64, 65, 4096, 1 << 19, (1 << 19) + 1, r]),
            }
            .as_bytes()
            .to_vec(),
            domctl::LIST | domctl::PHYS_INFO => Vec::new(),
            _ => DomainRef { domid, _pad: 0 }.as_bytes().to_vec(),
        }
    }

    /// Bit flips, a 4-byte field set to a boundary value, a length off by some bytes.
    fn mutate(&mut self, s: &mut Vec<u8>) {
        for _ in 0..self.rng.below(4) {
            match self.rng.below(4) {
                0 if !s.is_empty() => {
                    let bit = self.rng.below(s.len() as u64 * 8) as usize;
                    s[bit / 8] ^= 1 << (bit % 8);
                }
                1 if s.len() >= 4 => {
                    let at = self.rng.below(s.len() as u64 / 4) as usize * 4;
                    let random = self.rng.next_u64() as u32;
                    let v = self.rng.pick(&[0u32, 1, 2, 0x7fef, 0x7fff_ffff, u32::MAX, random]);
                    s[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
                2 => {
                    let n = self.rng.pick(&[0, s.len().saturating_sub(1), s.len() + 1, s.len() + 8, s.len() * 2]);
                    s.resize(n, self.rng.next_u64() as u8);
                }
                _ if !s.is_empty() => {
                    let at = self.rng.below(s.len() as u64) as usize;
                    s[at] = self.rng.next_u64() as u8;
                }
                _ => {}
            }
        }
    }

    /// Keeps a request away from the domains that must not be harmed: for the
    /// commands that would harm them (when their structure is exactly the
    /// right size, the only case the hypervisor acts on), a protected domain ID
    /// is replaced. dom0 stays the target of what the hypervisor must refuse.
    fn protect(&mut self, cmd: u64, s: &mut [u8]) {
        let size = Self::target_size(cmd);
        if size == 0 || s.len() != size {
            return;
        }
        let domid = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        let sets = cmd == domctl::SCHED_CREDIT && u32::from_le_bytes([s[4], s[5], s[6], s[7]]) & 3 != 0;
        let harmful = match domid {
            // The hypervisor refuses these for dom0 (-EPERM), but obeys a weight or cap.
            0 => sets,
            d => self.protected.contains(&d) && (cmd != domctl::SCHED_CREDIT || sets),
        };
        if harmful {
            let free = loop {
                let d = self.rng.range(1, 0x7fff) as u32;
                if !self.protected.contains(&d) {
                    break d;
                }
            };
            let new = match self.ours.first() {
                Some(&(id, _)) if self.rng.percent(50) => id,
                _ => free,
            };
            s[..4].copy_from_slice(&new.to_le_bytes());
            self.t.redirected += 1;
        }
    }

    /// The structure size of a command that could harm the domain it names (0: not one).
    fn target_size(cmd: u64) -> usize {
        match cmd {
            // Input to a protected domain would reach the domU fuzzer, which
            // expects none.
            domctl::PAUSE | domctl::DESTROY | domctl::CONSOLE_INPUT => size_of::<DomainRef>(),
            domctl::SHUTDOWN => size_of::<ShutdownDomain>(),
            domctl::SCHED_CREDIT => size_of::<SchedCredit>(),
            domctl::VCPU_AFFINITY => size_of::<VcpuAffinity>(),
            domctl::LOG_DIRTY => size_of::<oxen_abi::LogDirty>(),
            _ => 0,
        }
    }

    /// What the buffer of `cmd` should be: its length.
    fn buffer_len(&mut self, cmd: u64) -> usize {
        match cmd {
            domctl::GET_INFO => self.rng.pick(&[80, 79, 81, 160]),
            domctl::LIST => self.rng.pick(&[0, 80, 79, 800, 65536]),
            domctl::PHYS_INFO => self.rng.pick(&[40, 39, 41]),
            domctl::VCPU_LIST => self.rng.pick(&[0, 32, 31, 320]),
            domctl::CONSOLE_READ | domctl::DMESG => self.rng.range(1, 65536) as usize,
            domctl::LOAD_IMAGE => self.rng.pick(&[1, 4096, 65536]),
            domctl::CONSOLE_INPUT => self.rng.pick(&[0, 1, 64, 4096, 4097]),
            domctl::LOG_DIRTY => self.rng.pick(&[0, 8, 16, 4096, 65536]),
            _ => self.rng.pick(&[0, 0, 0, 1, 80]),
        }
    }

    /// A DOMCTL with a mutated structure at a good, bad or straddling address.
    fn random_domctl(&mut self, i: u64) {
        let cmd = match self.rng.below(20) {
            0..=16 => self.rng.range(1, 16),
            17 => self.rng.pick(&[0, 17, 18, domctl::PLATFORM_STATE_GET, domctl::PLATFORM_STATE_SET, domctl::START_PAUSED, domctl::CPUID_GET, domctl::IRQ_LINE, domctl::DEVICE_ADD, domctl::LOG_DIRTY, 255]),
            18 => self.rng.range(1, 16) | (self.rng.range(1, 0xffff_ffff) << 32),
            _ => self.rng.next_u64(),
        };
        let mut s = self.structure(cmd);
        if self.rng.percent(60) {
            self.mutate(&mut s);
        }
        self.protect(cmd, &mut s);
        let mut req = HypercallIoctl { nr: nr::DOMCTL, cmd, ..Default::default() };
        // The driver checks the argument area first, then the buffer's; then copies
        // in the argument, then the buffer; then the hypervisor decides.
        let mut want: Option<Want> = None;
        match self.rng.below(20) {
            0 => {
                req.arg_len = self.rng.pick(&[DOMCTL_ARG_MAX + 1, 1 << 32, u64::MAX]);
                req.arg = self.arg.addr();
                want = Some(Want::Errno(libc::E2BIG));
            }
            1 => {
                // Address without length, or length without address.
                if self.rng.percent(50) {
                    req.arg = self.arg.addr();
                } else {
                    req.arg_len = self.rng.range(1, DOMCTL_ARG_MAX);
                }
                want = Some(Want::Errno(libc::EINVAL));
            }
            2 | 3 => {
                req.arg = self.bad_address();
                req.arg_len = self.rng.range(1, DOMCTL_ARG_MAX);
                want = Some(Want::Errno(libc::EFAULT));
            }
            4 => {
                // The structure ends in the guard page.
                req.arg_len = s.len().max(1) as u64;
                req.arg = self.arg.guard() - self.rng.range(0, req.arg_len - 1);
                want = Some(Want::Errno(libc::EFAULT));
            }
            5 => {
                // Exactly the largest argument, the structure at its start.
                req.arg = self.arg.addr();
                req.arg_len = DOMCTL_ARG_MAX;
                s.resize(DOMCTL_ARG_MAX as usize, 0);
                self.arg.bytes()[..s.len()].copy_from_slice(&s);
            }
            _ => {
                if !s.is_empty() {
                    self.arg.bytes()[..s.len()].copy_from_slice(&s);
                    req.arg = self.arg.addr();
                    req.arg_len = s.len() as u64;
                }
            }
        }
        let buf_class = self.rng.below(20);
        if want.is_none() || matches!(want, Some(Want::Errno(libc::EFAULT))) {
            let check_fails = match buf_class {
                0 => {
                    req.buf = self.buf.addr();
                    req.buf_len = self.rng.pick(&[DOMCTL_BUF_MAX + 1, 1 << 32, u64::MAX]);
                    Some(libc::E2BIG)
                }
                1 => {
                    if self.rng.percent(50) {
                        req.buf = self.buf.addr();
                    } else {
                        req.buf_len = self.rng.range(1, DOMCTL_BUF_MAX);
                    }
                    Some(libc::EINVAL)
                }
                _ => None,
            };
            // The buffer's checks come before either copy.
            if let Some(e) = check_fails {
                want = Some(Want::Errno(e));
            }
        }
        if req.buf == 0 && req.buf_len == 0 && buf_class >= 2 {
            match buf_class {
                2 | 3 => {
                    req.buf = self.bad_address();
                    req.buf_len = self.rng.range(1, DOMCTL_BUF_MAX);
                    want.get_or_insert(Want::Errno(libc::EFAULT));
                }
                4 => {
                    req.buf_len = self.rng.range(1, 256);
                    req.buf = self.buf.guard() - self.rng.range(0, req.buf_len - 1);
                    want.get_or_insert(Want::Errno(libc::EFAULT));
                }
                _ => {
                    let n = self.buffer_len(cmd);
                    if n > 0 {
                        req.buf = self.buf.addr();
                        req.buf_len = n as u64;
                        if cmd == domctl::LOAD_IMAGE {
                            let r = self.rng.next_u64().to_le_bytes();
                            for (k, b) in self.buf.bytes()[..n].iter_mut().enumerate() {
                                *b = r[k % 8];
                            }
                        }
                    }
                }
            }
        }
        // Only the hypervisor is left to answer.
        let want = want.unwrap_or_else(|| {
            // 17-18, VCPU_STATE_GET/SET (ABI 1.4); 19-25, the device-model
            // calls (1.6: the raw foreign and ioreq-setup ones the driver
            // refuses); 26-27 PLATFORM_STATE_GET/SET, 28 START_PAUSED and 29
            // CPUID_GET (1.7), 30 LOG_DIRTY (1.8): checked by the hypervisor
            // (a paused domU only, an encoding checked whole, a line or
            // device it was given, a range inside its RAM), any answer.
            if !(1..=domctl::LOG_DIRTY).contains(&cmd) {
                Want::Errno(libc::ENOSYS)
            } else if Self::target_size(cmd) > 0 && s.len() == Self::target_size(cmd) && cmd != domctl::SCHED_CREDIT
                && u32::from_le_bytes([s[0], s[1], s[2], s[3]]) == 0
            {
                // dom0 cannot be paused, shut down, destroyed or re-pinned, nor
                // sent console input (whose buffer may also be empty or too long).
                if cmd == domctl::CONSOLE_INPUT {
                    Want::Refused(&[libc::EPERM, libc::EINVAL, libc::E2BIG])
                } else {
                    Want::Refused(&[libc::EPERM, libc::EINVAL])
                }
            } else {
                Want::Any
            }
        });
        let got = self.hypercall(&mut req);
        if cmd == domctl::CREATE {
            if let Ok(id) = got {
                self.ours.push((id as u32, u64::MAX));
                self.t.created += 1;
            }
        }
        if cmd == domctl::DESTROY && got.is_ok() && s.len() == 8 {
            let id = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            if let Some(k) = self.ours.iter().position(|o| o.0 == id) {
                self.ours.remove(k);
                self.destroyed.push(id);
            }
        }
        // A domain made here is destroyed by a later lifecycle step (MAX_OURS) or the cleanup.
        self.record("domctl", i, &req, got, want);
    }

    /// Destroys every domain of ours and waits until each is gone. Returns the
    /// ones still there after the wait.
    fn cleanup(&mut self) -> Vec<u32> {
        // Every successful CREATE's ID was recorded, so this is all of them; a
        // domain asked to shut down is in `destroyed` and destroyed below if its
        // guest has not powered off by then.
        let ours: Vec<u32> = self.ours.drain(..).map(|o| o.0).collect();
        for id in ours {
            let _ = self.domctl(domctl::DESTROY, DomainRef { domid: id, _pad: 0 }.as_bytes(), 0);
            self.destroyed.push(id);
        }
        let start = Instant::now();
        loop {
            let ids = std::mem::take(&mut self.destroyed);
            let left: Vec<u32> = ids.into_iter().filter(|&id| self.exists(id)).collect();
            // A shut-down domain that has not powered off yet is destroyed outright.
            for &id in &left {
                let _ = self.domctl(domctl::DESTROY, DomainRef { domid: id, _pad: 0 }.as_bytes(), 0);
            }
            self.destroyed = left;
            if self.destroyed.is_empty() || start.elapsed() > Duration::from_secs(60) {
                return self.destroyed.clone();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn parse(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(calls), seed) = (args.get(1).and_then(|s| parse(s)), args.get(2).and_then(|s| parse(s))) else {
        eprintln!("usage: oxen-fuzz CALLS [SEED]");
        std::process::exit(2);
    };
    let seed = seed.unwrap_or(1);
    let path = std::ffi::CString::new(DEVICE_PATH).expect("no NUL in the path");
    // SAFETY: a NUL-terminated path; the descriptor is ours until exit.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR) };
    if fd < 0 {
        eprintln!("oxen-fuzz: cannot open {DEVICE_PATH}: {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    let mut f = Fuzzer {
        fd,
        rng: Rng(seed),
        arg: Area::new(),
        buf: Area::new(),
        protected: Vec::new(),
        ours: Vec::new(),
        destroyed: Vec::new(),
        image: std::fs::read(MINIMAL).unwrap_or_default(),
        names: 0,
        t: Tally::default(),
    };
    let before = f.list();
    f.protected = before.iter().map(|d| d.domid).collect();
    if !f.protected.contains(&0) {
        f.protected.push(0);
    }
    let free0 = phys_free(&mut f);
    println!(
        "oxen-fuzz: start: seed {seed:#x}, {calls} calls, protected domains {:?}, {} bytes of {MINIMAL}, {free0} KiB free",
        f.protected,
        f.image.len()
    );
    let t0 = Instant::now();
    for i in 0..calls {
        f.one(i);
        if calls >= 10 && (i + 1) % (calls / 10) == 0 {
            println!("oxen-fuzz: progress {}/{calls}, {} unexpected", i + 1, f.t.unexpected);
        }
    }
    let ms = t0.elapsed().as_millis();
    let left = f.cleanup();
    let t = &f.t;
    println!("oxen-fuzz: summary: {calls} calls, {} unexpected, {ms} ms, seed {seed:#x}", t.unexpected);
    let join = |m: &BTreeMap<&str, u64>| m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
    println!("oxen-fuzz: results: {}", join(&t.results));
    println!("oxen-fuzz: calls: {}", join(&t.kinds));
    println!(
        "oxen-fuzz: own domains: {} created, {} started, {} requests redirected away from protected domains",
        t.created, t.started, t.redirected
    );
    let after: Vec<u32> = f.list().iter().map(|d| d.domid).collect();
    let free1 = phys_free(&mut f);
    println!(
        "oxen-fuzz: cleanup: {} of ours left, domains now {after:?} (were {:?}), {free1} KiB free (was {free0})",
        left.len(),
        f.protected
    );
    let ok = f.t.unexpected == 0 && left.is_empty();
    std::process::exit(if ok { 0 } else { 1 });
}

fn phys_free(f: &mut Fuzzer) -> u64 {
    match f.domctl(domctl::PHYS_INFO, &[], size_of::<PhysInfo>()) {
        Ok(_) => PhysInfo::read_from(f.buf.bytes()).map_or(0, |p| p.free_kib),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fuzzer(seed: u64) -> Fuzzer {
        Fuzzer {
            fd: -1,
            rng: Rng(seed),
            arg: Area::new(),
            buf: Area::new(),
            protected: vec![0, 1, 2],
            ours: vec![(7, 0)],
            destroyed: Vec::new(),
            image: Vec::new(),
            names: 0,
            t: Tally::default(),
        }
    }

    #[test]
    fn protected_domains_are_never_harmed() {
        let mut f = fuzzer(5);
        let mut to_dom0 = 0;
        for _ in 0..100_000 {
            let cmd = f.rng.pick(&[domctl::PAUSE, domctl::DESTROY, domctl::SHUTDOWN, domctl::SCHED_CREDIT,
                domctl::VCPU_AFFINITY, domctl::LOG_DIRTY]);
            let mut s = f.structure(cmd);
            if f.rng.percent(60) {
                f.mutate(&mut s);
            }
            f.protect(cmd, &mut s);
            if s.len() != Fuzzer::target_size(cmd) {
                continue;
            }
            let domid = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            let sets = cmd == domctl::SCHED_CREDIT && s[4] & 3 != 0;
            match domid {
                0 => {
                    assert!(!sets, "a weight or cap change for dom0: {s:?}");
                    to_dom0 += 1;
                }
                1 | 2 => assert!(cmd == domctl::SCHED_CREDIT && !sets, "cmd {cmd} for domain {domid}: {s:?}"),
                _ => {}
            }
        }
        // dom0 stays a target of what the hypervisor must refuse.
        assert!(to_dom0 > 1000 && f.t.redirected > 1000, "{to_dom0} {}", f.t.redirected);
    }

    #[test]
    fn wants() {
        assert!(Want::Errno(libc::EFAULT).accepts(Err(libc::EFAULT)));
        assert!(Want::Errno(libc::EFAULT).accepts(Err(libc::ENOMEM)));
        assert!(!Want::Errno(libc::EFAULT).accepts(Ok(0)));
        assert!(!Want::Refused(&[libc::EPERM]).accepts(Ok(0)));
        assert!(Want::Any.accepts(Ok(u64::MAX)));
        assert!(!Want::Any.accepts(Err(libc::EIO)));
        assert!(!Want::Value(0).accepts(Ok(1)));
    }
}
