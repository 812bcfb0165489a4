//! Built-in self-test (`selftest` on the command line) and benchmark (`bench`).
//!
//! On every CPU in turn, the runner boots each guest program of `guests` in an
//! address space of its own, runs it through the real exit handlers, and checks
//! what it reported: one line per check with the values seen, then a summary.
//! Each guest is torn down after its run, and the runner checks that every frame
//! it took came back.

mod guests;

use crate::exit::{self, cpuid::CpuidResult, io::PortBus, GuestEnv, Outcome};
use crate::mem::paging::MapFlags;
use crate::mem::{self, GuestPhysAddr, HostPhysAddr};
use crate::virt::{self, guest_mem::GuestRegion, Access, AnyVcpu, EntryMode, GuestMemory, InitialState, NestedTables, Vcpu};
use alloc::{string::String, vec::Vec};
use core::fmt::Write;
use core::sync::atomic::{AtomicU32, Ordering};
use guests::*;
use log::info;

/// Each test guest has 128 KiB of RAM at guest-physical 0.
const GUEST_PAGES: usize = 32;
const GUEST_BYTES: u64 = GUEST_PAGES as u64 * 4096;
/// The long-mode guest's own page tables (PML4, PDPT, PD) and stack.
const GUEST_PML4: u64 = 0x10000;
const GUEST_STACK_TOP: u64 = 0x8000;
/// A guest that exits this often without finishing is stopped.
const MAX_EXITS: u32 = 100_000;

/// Where a test guest's port I/O goes: the debug console and the report port.
#[derive(Default)]
struct TestDevices {
    console: String,
    reports: Vec<u32>,
}

impl PortBus for TestDevices {
    fn read(&mut self, port: u16, _size: u8) -> Option<u32> {
        (port == exit::io::DEBUGCON_PORT).then_some(u32::from(exit::io::DEBUGCON_PORT))
    }
    fn write(&mut self, port: u16, size: u8, value: u32) -> bool {
        match (port, size) {
            (exit::io::DEBUGCON_PORT, 1) => self.console.push(char::from(value as u8)),
            (REPORT_PORT, 4) => self.reports.push(value),
            _ => return false,
        }
        true
    }
}

impl GuestEnv for TestDevices {
    fn ports(&mut self) -> &mut dyn PortBus {
        self
    }
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        crate::arch::x86_64::cpuid(leaf, subleaf)
    }
}

/// What one guest run produced.
struct GuestRun {
    dev: TestDevices,
    /// How the run ended: the last outcome.
    end: Result<Outcome, &'static str>,
    halts: u32,
    exits: u32,
    /// Free frames after teardown minus before setup (0 when nothing leaked).
    leaked: isize,
}

/// Boots `blob` at `LOAD_GPA` in a fresh address space, runs it until it faults,
/// dies or has halted `max_halts` times, then tears everything down.
fn run_guest(blob: &[u8], entry: u64, long_mode: bool, max_halts: u32) -> GuestRun {
    let free_before = mem::free_frame_count();
    let mut dev = TestDevices::default();
    let run = |dev: &mut TestDevices| -> Result<(Outcome, u32, u32), &'static str> {
        let ram = mem::alloc_frames(GUEST_PAGES, 1).ok_or("out of memory for guest RAM")?;
        let result = (|| {
            let mut gm = GuestMemory::new();
            gm.add(GuestRegion { gpa: GuestPhysAddr::new(0), hpa: ram, len: GUEST_BYTES, flags: MapFlags::RWX })
                .map_err(|_| "bad guest memory")?;
            write_guest(&gm, LOAD_GPA, blob)?;
            let mode = if long_mode {
                // Identity-map the first 2 MiB with one large page: wider than the
                // guest's RAM, so the mem-outside check can reach past it.
                write_guest(&gm, GUEST_PML4, &((GUEST_PML4 + 0x1000) | 3).to_le_bytes())?;
                write_guest(&gm, GUEST_PML4 + 0x1000, &((GUEST_PML4 + 0x2000) | 3).to_le_bytes())?;
                write_guest(&gm, GUEST_PML4 + 0x2000, &0x83u64.to_le_bytes())?;
                EntryMode::Long64 { cr3: GUEST_PML4 }
            } else {
                EntryMode::Real { cs_selector: (LOAD_GPA >> 4) as u16 }
            };
            let rip = if long_mode { LOAD_GPA + entry } else { entry };
            let tables = NestedTables::build(&gm).map_err(|_| "out of memory for nested tables")?;
            let result = AnyVcpu::new(&tables, &InitialState { mode, rip, rsp: GUEST_STACK_TOP }).map(|mut vcpu| {
                let (mut halts, mut exits) = (0, 0);
                loop {
                    let exit = vcpu.run();
                    exits += 1;
                    let outcome = exit::handle(&mut vcpu, exit, dev);
                    match outcome {
                        Outcome::Continue | Outcome::Preempted if exits < MAX_EXITS => {}
                        Outcome::Halted if halts + 1 < max_halts => halts += 1,
                        Outcome::Halted => break (outcome, halts + 1, exits),
                        _ => break (outcome, halts, exits),
                    }
                }
            });
            tables.destroy();
            result
        })();
        mem::free_frames(ram, GUEST_PAGES);
        result
    };
    let (end, halts, exits) = match run(&mut dev) {
        Ok((o, h, e)) => (Ok(o), h, e),
        Err(e) => (Err(e), 0, 0),
    };
    let leaked = free_before as isize - mem::free_frame_count() as isize;
    GuestRun { dev, end, halts, exits, leaked }
}

/// Copies `data` into guest memory at `gpa` (test guests only, within one region).
fn write_guest(gm: &GuestMemory, gpa: u64, data: &[u8]) -> Result<(), &'static str> {
    let (hpa, room): (HostPhysAddr, u64) = gm.translate(GuestPhysAddr::new(gpa)).ok_or("outside guest memory")?;
    if (data.len() as u64) > room {
        return Err("does not fit guest memory");
    }
    // SAFETY: `hpa..hpa+len` is guest RAM the runner owns, identity mapped.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), hpa.as_ptr::<u8>(), data.len()) };
    Ok(())
}

static PASSED: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);

fn check(name: &str, ok: bool, details: core::fmt::Arguments) {
    let cpu = crate::arch::x86_64::cpu_id();
    let backend = virt::backend().name();
    let verdict = if ok { "PASS" } else { "FAIL" };
    info!("selftest: cpu{cpu} {backend} {name}: {verdict} ({details})");
    let counter = if ok { &PASSED } else { &FAILED };
    counter.fetch_add(1, Ordering::Relaxed);
}

fn report(r: &GuestRun, i: usize) -> u32 {
    r.dev.reports.get(i).copied().unwrap_or(0)
}

fn signature(r: &GuestRun) -> String {
    let mut s = String::new();
    for i in 3..6 {
        for b in report(r, i).to_le_bytes() {
            s.push(if b.is_ascii_graphic() { char::from(b) } else { '?' });
        }
    }
    s
}

/// Runs every check on the calling CPU.
pub fn run_on_this_cpu() {
    let frames_before = mem::free_frame_count();

    let real = run_guest(real_mode().bytes, 0, false, 1);
    let cr0 = report(&real, 0);
    check(
        "real-mode",
        real.end == Ok(Outcome::Halted) && cr0 & 1 == 0 && report(&real, 1) == REAL_MODE_MAGIC
            && real.dev.console == "hello from real mode\n",
        format_args!("cr0={cr0:#x} magic={:#x} console={:?} end={:?}", report(&real, 1), real.dev.console, real.end),
    );

    let (main_entry, triple_entry, _) = long_mode_entries();
    let long = run_guest(long_mode().bytes, main_entry, true, 2);
    let cr0 = report(&long, 1);
    check(
        "long-mode",
        report(&long, 0) == LONG_MODE_MAGIC && cr0 & 0x8000_0001 == 0x8000_0001,
        format_args!("64-bit magic={:#x} cr0={cr0:#x}", report(&long, 0)),
    );
    let sig = signature(&long);
    let leaf1 = report(&long, 6);
    check(
        "cpuid",
        report(&long, 2) == oxen_abi::CPUID_MAX_LEAF && sig == "OxenOxenOxen" && leaf1 & (1 << 31) != 0 && leaf1 & (1 << 5) == 0,
        format_args!("0x40000000: max={:#x} sig={sig:?}; leaf 1 ecx={leaf1:#x} (hypervisor bit set, vmx hidden)", report(&long, 2)),
    );
    check(
        "io-port",
        long.dev.console == "hello from long mode\n" && report(&long, 7) == 0xe9,
        format_args!("debug port printed {:?}, read back {:#x}", long.dev.console, report(&long, 7)),
    );
    let (version, nosys) = (report(&long, 8), report(&long, 9));
    check(
        "hypercall",
        version == oxen_abi::ABI_VERSION && nosys as i32 == -38,
        format_args!("version={version:#x}, unknown call {BOGUS_HYPERCALL:#x} -> {}", nosys as i32),
    );
    check(
        "hlt",
        long.halts >= 1 && report(&long, 10) == HLT_RESUMED_MAGIC,
        format_args!("halted {} time(s), resumed with {:#x}", long.halts, report(&long, 10)),
    );
    let expected = Outcome::MemoryFault { gpa: GuestPhysAddr::new(OUTSIDE_GPA), access: Access::READ };
    check(
        "mem-outside",
        long.end == Ok(expected) && long.dev.reports.len() == 11,
        format_args!("guest read gpa {OUTSIDE_GPA:#x} beyond its {GUEST_BYTES:#x} bytes: {:?}, guest killed after {} exits", long.end, long.exits),
    );

    let triple = run_guest(long_mode().bytes, triple_entry, true, 1);
    check(
        "triple-fault",
        triple.end == Ok(Outcome::TripleFault) && triple.dev.reports == [TRIPLE_MAGIC],
        format_args!("{:?} after reporting {:x?}; hypervisor still running", triple.end, triple.dev.reports),
    );

    let leaked = real.leaked + long.leaked + triple.leaked;
    check(
        "teardown",
        leaked == 0 && mem::free_frame_count() == frames_before,
        format_args!("all guest frames returned ({frames_before} free before and after)"),
    );
}

/// Runs the self-test on every CPU in turn, prints the summary.
pub fn run(cpus: &[u32], run_on: impl Fn(u32, fn())) {
    for &cpu in cpus {
        run_on(cpu, run_on_this_cpu);
    }
    let (p, f) = (PASSED.load(Ordering::Relaxed), FAILED.load(Ordering::Relaxed));
    info!("selftest: summary: {p} passed, {f} failed on {} cpus", cpus.len());
}

/// The null-hypercall benchmark: 10,000 round trips timed by the guest's RDTSC.
/// Under QEMU `-icount shift=0` the TSC counts instructions.
pub fn bench() {
    let (_, _, bench_entry) = long_mode_entries();
    let r = run_guest(long_mode().bytes, bench_entry, true, 1);
    let delta = u64::from(report(&r, 1)) | (u64::from(report(&r, 2)) << 32);
    if r.end != Ok(Outcome::Halted) || report(&r, 0) != BENCH_ITERATIONS {
        let mut s = String::new();
        let _ = write!(s, "{:?}", r.end);
        log::error!("bench: hypercall-null guest did not finish: {s}");
        return;
    }
    info!(
        "bench: hypercall-null iterations={} tsc_delta={delta} exits={} ({} per round trip)",
        BENCH_ITERATIONS,
        r.exits,
        delta / u64::from(BENCH_ITERATIONS)
    );
}
