//! `hostile`: a domU that tries what a domU must not be able to do, reports
//! each attempt on its console as
//! `hostile: <probe>: <result> (expected <x>) ok|UNEXPECTED`, prints
//! `hostile: summary: N probes, M unexpected`, then ends with a final act.
//!
//! Command line (space separated):
//! - `final=oob-read` (default): read guest-physical memory far beyond its RAM
//!   (RAM rounded up to a GiB, plus 4 GiB), mapped in its own page tables so the
//!   access reaches nested paging. The hypervisor must end this domain (only).
//! - `final=wild-write`: write the first byte past the end of its RAM, likewise.
//! - `final=triple-fault`: load an empty IDT and fault.
//! - `final=none`: print `hostile: done` and tick like `minimal`.
//! - `final=ac-loop`, `final=db-loop`, `final=cr8-spin`, `final=cr8-hlt`:
//!   never end on their own; dom0 must still be able to destroy the domain at
//!   once (`loops.rs`).
//! - `insns`: also run the instruction probes (`insns.rs`: VMX and SVM
//!   instructions, INVD, WBINVD, MONITOR, MWAIT, RDPMC, MOV CR8 at CPL 0 and 3)
//!   before the summary.
//! - `flood=N`: NULL hypercalls in the flood probe (default 100000).
//! - `interval_ms=N`: tick interval once done (default 1000).
//!
//! If the domain survives an act that should have ended it, it says so
//! (`UNEXPECTED`) and ticks on, so a test can tell "killed" from "hung".
#![cfg_attr(target_os = "none", no_std, no_main)]

mod insns;
mod loops;
mod pages;
mod ring3;

use core::fmt;
use oxen_abi::{domctl, nr, sched_op, CreateDomain, DomainInfo, DomainRef, StartInfo, CONSOLE_WRITE_MAX};
use oxen_guest_rt::hypercall::{self, result, Rax};
use oxen_guest_rt::{cmdline, cpu, println, ticker, trap};

oxen_guest_rt::entry!("hostile", guest_main);

const GIB: u64 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Final {
    OobRead,
    WildWrite,
    TripleFault,
    None,
    AcLoop,
    DbLoop,
    Cr8Spin,
    Cr8Hlt,
}

/// What a probe should get back.
#[derive(Clone, Copy)]
enum Expect {
    /// Exactly -errno.
    Errno(i64),
    /// Any -errno (the ABI allows several; the result line says which came).
    AnyError,
    /// A success value greater than zero.
    Positive,
}

impl Expect {
    fn accepts(self, rax: u64) -> bool {
        match self {
            Self::Errno(e) => result(rax) == Err(e),
            Self::AnyError => result(rax).is_err(),
            Self::Positive => matches!(result(rax), Ok(v) if v > 0),
        }
    }
}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Errno(e) => write!(f, "-{e} {}", hypercall::errno_name(e)),
            Self::AnyError => write!(f, "an error"),
            Self::Positive => write!(f, "> 0"),
        }
    }
}

#[derive(Default)]
pub(crate) struct Probes {
    count: u32,
    unexpected: u32,
}

impl Probes {
    pub(crate) fn report(&mut self, probe: &str, got: fmt::Arguments<'_>, expected: fmt::Arguments<'_>, ok: bool) {
        self.count += 1;
        if !ok {
            self.unexpected += 1;
        }
        println!("hostile: {probe}: {got} (expected {expected}) {}", if ok { "ok" } else { "UNEXPECTED" });
    }

    fn check(&mut self, probe: &str, rax: u64, expect: Expect) {
        self.report(probe, format_args!("{}", Rax(rax)), format_args!("{expect}"), expect.accepts(rax));
    }
}

/// A raw hypercall whose pointer arguments, if any, are only ever read or
/// written by a hypervisor that wrongly accepts the call.
fn raw(number: u64, args: [u64; 5]) -> u64 {
    // SAFETY: every call made through here must be refused. Were one accepted,
    // its pointers name either this guest's own buffers (prepared for exactly
    // that call) or addresses outside its RAM, which no correct hypervisor
    // touches; either way no Rust object is invalidated behind the compiler's back.
    unsafe { hypercall::call(number, args) }
}

fn guest_main(info: &'static StartInfo) -> ! {
    let line = oxen_guest_rt::cmdline();
    println!("hostile: domain {} up, {} MiB, cmdline '{line}'", Rax(hypercall::domain_id()), info.memory_bytes >> 20);
    let mut act = Final::OobRead;
    let mut flood: u64 = 100_000;
    let mut insns = false;
    let mut config = ticker::Config::default();
    for opt in cmdline::options(line) {
        match (opt.key, opt.value) {
            ("final", Some("oob-read")) => act = Final::OobRead,
            ("final", Some("wild-write")) => act = Final::WildWrite,
            ("final", Some("triple-fault")) => act = Final::TripleFault,
            ("final", Some("none")) => act = Final::None,
            ("final", Some("ac-loop")) => act = Final::AcLoop,
            ("final", Some("db-loop")) => act = Final::DbLoop,
            ("final", Some("cr8-spin")) => act = Final::Cr8Spin,
            ("final", Some("cr8-hlt")) => act = Final::Cr8Hlt,
            ("insns", None) => insns = true,
            ("flood", Some(v)) => match cmdline::parse_u64(v) {
                Some(n) => flood = n,
                None => println!("hostile: warning: bad flood count '{v}', keeping {flood}"),
            },
            ("interval_ms", Some(v)) => match cmdline::parse_u64(v) {
                Some(ms) if ms > 0 => config.interval_ms = ms,
                _ => println!("hostile: warning: bad interval '{v}', keeping {} ms", config.interval_ms),
            },
            _ => println!("hostile: warning: unknown option '{}'", opt.text),
        }
    }

    let mut p = Probes::default();
    let ram = info.memory_bytes;
    p.check("domain id", hypercall::domain_id(), Expect::Positive);

    // Domain control is dom0's alone, checked before any argument is looked at.
    let create = CreateDomain {
        name: oxen_abi::name_bytes("hostile-child").unwrap_or_default(),
        memory_mib: 4,
        vcpus: 1,
        on_poweroff: 0,
        on_reboot: 0,
        on_crash: 0,
        _pad: 0,
        flags: 0,
    };
    let size = |n: usize| n as u64;
    let arg = |r: &CreateDomain| r as *const CreateDomain as u64;
    p.check(
        "domctl create",
        raw(nr::DOMCTL, [domctl::CREATE, arg(&create), size(core::mem::size_of::<CreateDomain>()), 0, 0]),
        Expect::Errno(1),
    );
    let dom0 = DomainRef { domid: 0, _pad: 0 };
    p.check(
        "domctl destroy dom0",
        raw(nr::DOMCTL, [domctl::DESTROY, &dom0 as *const DomainRef as u64, size(core::mem::size_of::<DomainRef>()), 0, 0]),
        Expect::Errno(1),
    );
    let mut list = [0u8; 4 * core::mem::size_of::<DomainInfo>()];
    p.check(
        "domctl list",
        raw(nr::DOMCTL, [domctl::LIST, 0, 0, list.as_mut_ptr() as u64, size(list.len())]),
        Expect::Errno(1),
    );
    p.check(
        "domctl unknown command, wild pointers",
        raw(nr::DOMCTL, [0xdead, 0xffff_ffff_ffff_0000, 4096, ram + GIB, 0x1_0000]),
        Expect::Errno(1),
    );

    // Console writes the hypervisor must refuse without reading a byte.
    let text = b"hostile: UNEXPECTED: the hypervisor printed this\n";
    let console = |addr: u64, len: u64| raw(nr::CONSOLE_WRITE, [addr, len, 0, 0, 0]);
    p.check("console-write beyond RAM", console(ram, 16), Expect::AnyError);
    p.check("console-write across the end of RAM", console(ram - 8, 16), Expect::AnyError);
    p.check("console-write far beyond RAM", console(ram + 64 * GIB, 16), Expect::AnyError);
    p.check("console-write wrapping pointer", console(0xffff_ffff_ffff_f000, 0x2000), Expect::AnyError);
    p.check("console-write huge length", console(text.as_ptr() as u64, u64::MAX), Expect::AnyError);
    let mut big = [b'#'; CONSOLE_WRITE_MAX as usize + 1];
    big[..text.len()].copy_from_slice(text);
    big[CONSOLE_WRITE_MAX as usize] = b'\n';
    p.check("console-write CONSOLE_WRITE_MAX+1 bytes", console(big.as_ptr() as u64, big.len() as u64), Expect::AnyError);

    p.check("sched-op unknown op", raw(nr::SCHED_OP, [0xbad, 0, 0, 0, 0]), Expect::Errno(22));
    p.check("unknown hypercall 0xdeadbeef", raw(0xdead_beef, [0; 5]), Expect::Errno(38));
    p.check("unknown hypercall u64::MAX", raw(u64::MAX, [0; 5]), Expect::Errno(38));

    match ring3::hypercall(nr::VERSION) {
        ring3::Outcome::Returned(rax) => p.check("hypercall from CPL 3", rax, Expect::Errno(1)),
        ring3::Outcome::Trapped(v) => p.report(
            "hypercall from CPL 3",
            format_args!("exception {v} ({}) at CPL 3", trap::vector_name(v)),
            format_args!("{}", Expect::Errno(1)),
            false,
        ),
    }

    let t0 = cpu::rdtsc();
    let mut zeros: u64 = 0;
    for _ in 0..flood {
        zeros += u64::from(hypercall::null() == 0);
    }
    let cycles = cpu::rdtsc().wrapping_sub(t0) / flood.max(1);
    p.report(
        "null flood",
        format_args!("{flood} calls, {zeros} returned 0, {cycles} TSC cycles each"),
        format_args!("all {flood} return 0"),
        zeros == flood,
    );

    // Last, since a hypervisor that wrongly accepts them ends the domain.
    p.check("shutdown reason 7", raw(nr::SCHED_OP, [sched_op::SHUTDOWN, 7, 0, 0, 0]), Expect::Errno(22));
    // A reason that is Poweroff in its low 32 bits.
    p.check(
        "shutdown reason 0x100000000",
        raw(nr::SCHED_OP, [sched_op::SHUTDOWN, 1 << 32, 0, 0, 0]),
        Expect::Errno(22),
    );

    if insns {
        insns::run(&mut p);
    }

    println!("hostile: summary: {} probes, {} unexpected", p.count, p.unexpected);
    final_act(act, ram);
    ticker::tick(config)
}

/// Does `act`; returns only if the domain survived it (which is reported).
fn final_act(act: Final, ram: u64) {
    let (addr, what) = match act {
        Final::None => {
            println!("hostile: done");
            return;
        }
        Final::AcLoop => loops::ac_loop(),
        Final::DbLoop => loops::db_loop(),
        Final::Cr8Spin => loops::cr8_spin(),
        Final::Cr8Hlt => loops::cr8_hlt(),
        Final::TripleFault => {
            println!("hostile: final: triple-fault (this must end the domain)");
            trap::triple_fault()
        }
        Final::OobRead => (ram.div_ceil(GIB) * GIB + 4 * GIB, "oob-read"),
        Final::WildWrite => (ram, "wild-write"),
    };
    println!("hostile: final: {what} at {addr:#x}, {} MiB past the end of RAM (this must end the domain)", (addr - ram) >> 20);
    if !pages::map_identity(addr) {
        println!("hostile: final: cannot map {addr:#x} in the guest's own tables; not attempted");
        return;
    }
    let p = addr as *mut u64;
    if act == Final::OobRead {
        // SAFETY: deliberately outside this guest's RAM; a correct hypervisor
        // ends the domain here. If not, a u64 read of whatever comes back.
        let v = unsafe { p.read_volatile() };
        println!("hostile: final: oob-read returned {v:#x} and the domain lives on UNEXPECTED");
    } else {
        // SAFETY: as above; the guest has no memory there that it uses.
        unsafe { p.write_volatile(0x0bad_c0de_0bad_c0de) };
        println!("hostile: final: wild-write completed and the domain lives on UNEXPECTED");
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("hostile is an Oxen domU kernel: `cargo xtask` builds it for x86_64-unknown-none");
    std::process::exit(1);
}
