//! `fuzz`: a domU that makes random hypercalls (`gen.rs`) and checks each
//! answer against the ABI: a domU's answers are fully determined (its DOMCTL
//! is always `-EPERM`, a console write is taken or refused by its range and
//! length alone), so anything else is counted and printed as UNEXPECTED.
//!
//! Command line (space separated):
//! - `seed=S`: the PRNG's seed (default 1); the same seed makes the same calls.
//! - `calls=N`: how many calls (default 100000).
//!
//! Prints `fuzz: start: ...`, progress every tenth, then
//! `fuzz: summary: N calls, M unexpected, T ms` and the tallies by result and
//! by call, then `fuzz: done` and ticks like `minimal` until told to stop.
//!
//! What it leaves out, because it would end or stall the fuzzer legitimately:
//! `SCHED_OP` `SHUTDOWN` with a valid reason (replaced by an invalid one) and
//! `BLOCK` without a timeout or a long one (replaced by 1..=100 µs). Every
//! guest address it passes is in scratch RAM (everything but its own image,
//! stack and tables, which it moves out of the boot area first) or outside its
//! RAM, so even a hypervisor that wrongly wrote through one could not corrupt
//! the fuzzer. Accepted console writes are capped at `CONSOLE_BUDGET` bytes in
//! all (they echo to the serial log); later ones are turned into empty or
//! out-of-RAM writes.
#![cfg_attr(target_os = "none", no_std, no_main)]

mod gen;

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};
use gen::{Adjusted, Call, Layout, Rng};
use oxen_abi::{nr, StartInfo};
use oxen_guest_rt::cpu::{self, TablePointer};
use oxen_guest_rt::hypercall::{self, errno_name, result, Rax};
use oxen_guest_rt::{cmdline, println, ticker, time};

oxen_guest_rt::entry!("fuzz", guest_main);

/// Where the kernel image starts (docs/hypercalls.md: 1 MiB).
const IMAGE_START: u64 = 0x10_0000;
/// Bytes of accepted console writes allowed in a run: enough for writes of
/// every length up to `CONSOLE_WRITE_MAX`, little enough that the 16 KiB
/// console ring keeps the fuzzer's own lines and the serial log stays small.
const CONSOLE_BUDGET: u64 = 12 * 1024;
/// How many UNEXPECTED calls are printed in full.
const SHOWN: u64 = 16;
/// The scratch fill: dots, so console junk is harmless in the serial log.
const FILL: u64 = u64::from_le_bytes(*b"........");
const MIB2: u64 = 2 << 20;

static SEED: AtomicU64 = AtomicU64::new(1);
static CALLS: AtomicU64 = AtomicU64::new(100_000);
static RAM: AtomicU64 = AtomicU64::new(0);

/// Memory the CPU uses behind the compiler's back: page tables, GDT, stack.
#[repr(C, align(4096))]
struct Shared<T>(UnsafeCell<T>);
// SAFETY: one vCPU; written only in `relocate`, before the switch to them.
unsafe impl<T> Sync for Shared<T> {}

/// PML4, PDPT, one PD: an identity map of up to 1 GiB in 2 MiB pages.
static TABLES: Shared<[[u64; 512]; 3]> = Shared(UnsafeCell::new([[0; 512]; 3]));
/// The boot GDT's four entries (null, null, code 0x10, data 0x18), as the boot state has them.
static GDT: Shared<[u64; 4]> = Shared(UnsafeCell::new([0, 0, 0x00af_9a00_0000_ffff, 0x00cf_9300_0000_ffff]));
const STACK: usize = 64 * 1024;
static STACK_AREA: Shared<[u8; STACK]> = Shared(UnsafeCell::new([0; STACK]));

unsafe extern "C" {
    static __guest_bss_end: u8;
}

fn guest_main(info: &'static StartInfo) -> ! {
    let line = oxen_guest_rt::cmdline();
    println!("fuzz: domain {} up, {} MiB, cmdline '{line}'", Rax(hypercall::domain_id()), info.memory_bytes >> 20);
    for opt in cmdline::options(line) {
        match (opt.key, opt.value.and_then(cmdline::parse_u64)) {
            ("seed", Some(v)) => SEED.store(v, Ordering::Relaxed),
            ("calls", Some(v)) => CALLS.store(v, Ordering::Relaxed),
            _ => println!("fuzz: warning: unknown option or bad value '{}'", opt.text),
        }
    }
    let ram = info.memory_bytes;
    if !ram.is_multiple_of(MIB2) || !(8 << 20..=1 << 30).contains(&ram) {
        oxen_guest_rt::crash(format_args!("needs 8 MiB to 1 GiB of RAM in whole 2 MiB pages, has {ram:#x}"));
    }
    RAM.store(ram, Ordering::Relaxed);
    // Calibrate the TSC now: it blocks, and the loop's timing should not include it.
    time::tsc_khz();
    // The StartInfo, the boot stack and tables are at the top of RAM, which is
    // to be scratch: from here on nothing of the boot area is used.
    relocate(ram)
}

/// Moves the page tables, GDT and stack out of the boot area into the image's
/// .bss, then runs `fuzz` on the new stack.
fn relocate(ram: u64) -> ! {
    let t = TABLES.0.get();
    // SAFETY: one vCPU; the tables are not in use yet (CR3 still holds the boot map).
    unsafe {
        let base = t as u64;
        (*t)[0][0] = (base + 4096) | 0x3;
        (*t)[1][0] = (base + 8192) | 0x3;
        // Present, writable, 2 MiB pages of exactly [0, ram), as the boot map has.
        for i in 0..(ram / MIB2) as usize {
            (*t)[2][i] = (i as u64 * MIB2) | 0x83;
        }
    }
    let gdt = TablePointer { limit: 31, base: GDT.0.get() as u64 };
    let top = STACK_AREA.0.get() as u64 + STACK as u64;
    // SAFETY: the new tables map the same [0, ram) identically, so every address
    // in use stays valid; the new GDT has the same descriptors at the selectors
    // in use (CS 0x10, data 0x18), so the loaded segments stay valid; the new
    // stack is ours, 16-byte aligned at its top, and `fuzz` never returns, so
    // nothing on the old stack is needed again.
    unsafe {
        cpu::lgdt(&gdt);
        core::arch::asm!("mov cr3, {}", in(reg) t as u64, options(nostack, preserves_flags));
        core::arch::asm!("mov rsp, {top}", "xor ebp, ebp", "call {f}", "ud2", top = in(reg) top, f = sym fuzz,
            options(noreturn));
    }
}

/// Fills `[start, end)` with `FILL`, 8 bytes at a time.
fn fill(start: u64, end: u64) {
    // SAFETY: only scratch RAM is passed (outside the image, inside RAM), which
    // no Rust object uses; asm rather than pointer writes because it starts at
    // address 0.
    unsafe {
        core::arch::asm!("rep stosq", inout("rdi") start => _, inout("rcx") (end - start) / 8 => _, in("rax") FILL,
            options(nostack, preserves_flags));
    }
}

/// Results counted by kind: index 0 = success, then each errno the ABI has, then other.
const KINDS: [i64; 11] = [1, 2, 7, 8, 12, 14, 16, 17, 22, 28, 38];

#[derive(Default)]
struct Tally {
    ok: u64,
    errno: [u64; KINDS.len()],
    other: u64,
    by_nr: [u64; gen::VALID_NRS.len() + 1],
    unexpected: u64,
    adjusted: [u64; 5],
    console_bytes: u64,
}

impl Tally {
    fn record(&mut self, c: &Call, rax: u64) {
        match result(rax) {
            Ok(_) => self.ok += 1,
            Err(e) => match KINDS.iter().position(|&k| k == e) {
                Some(i) => self.errno[i] += 1,
                None => self.other += 1,
            },
        }
        let i = gen::VALID_NRS.iter().position(|&n| n == c.nr).unwrap_or(gen::VALID_NRS.len());
        self.by_nr[i] += 1;
        self.adjusted[c.adjusted as usize] += 1;
    }
}

extern "C" fn fuzz() -> ! {
    let ram = RAM.load(Ordering::Relaxed);
    let (seed, calls) = (SEED.load(Ordering::Relaxed), CALLS.load(Ordering::Relaxed));
    // A linker symbol: only its address is taken.
    let bss_end = core::ptr::addr_of!(__guest_bss_end) as u64;
    let layout = Layout { ram, image_start: IMAGE_START, image_end: bss_end.next_multiple_of(4096) };
    let [(lo0, hi0), (lo1, hi1)] = layout.scratch();
    fill(lo0, hi0);
    fill(lo1, hi1);
    let domid = hypercall::domain_id();
    println!("\nfuzz: start: seed {seed:#x}, {calls} calls, RAM {} MiB, scratch {lo0:#x}-{hi0:#x} and {lo1:#x}-{hi1:#x}",
        ram >> 20);
    let mut rng = Rng::new(seed);
    let mut t = Tally::default();
    let t0 = cpu::rdtsc();
    for i in 0..calls {
        let mut c = gen::call(&mut rng, &layout);
        let mut want = gen::expected(&c, &layout, domid);
        if c.nr == nr::CONSOLE_WRITE && result(want).is_ok() && want > 0 {
            if t.console_bytes + want > CONSOLE_BUDGET {
                c.a = [ram + rng.below(4096), c.a[1], c.a[2], c.a[3], c.a[4]];
                if rng.percent(50) {
                    c.a[1] = 0;
                }
                c.adjusted = Adjusted::ConsoleBudget;
                want = gen::expected(&c, &layout, domid);
            } else {
                t.console_bytes += want;
            }
        }
        if let Some(arg) = c.domctl_arg {
            // SAFETY: `gen::call` keeps the structure only where it fits in
            // scratch RAM, which no Rust object uses.
            unsafe { core::ptr::copy_nonoverlapping(arg.bytes.as_ptr(), c.a[1] as *mut u8, arg.len) };
        }
        // SAFETY: every address in the call is scratch or outside RAM (above).
        let rax = unsafe { hypercall::call(c.nr, c.a) };
        if let Some(arg) = c.domctl_arg {
            // The fill again over the structure, so a later console write of
            // this scratch shows dots, not binary, in the serial log.
            let start = c.a[1] & !7;
            fill(start, (c.a[1] + arg.len as u64).next_multiple_of(8).min(ram));
        }
        t.record(&c, rax);
        if rax != want {
            t.unexpected += 1;
            if t.unexpected <= SHOWN {
                println!("\nfuzz: UNEXPECTED call {i}: nr {:#x} args {:#x} {:#x} {:#x} {:#x} {:#x}: got {} expected {}",
                    c.nr, c.a[0], c.a[1], c.a[2], c.a[3], c.a[4], Rax(rax), Rax(want));
            }
        }
        if calls >= 10 && (i + 1) % (calls / 10) == 0 {
            println!("\nfuzz: progress {}/{calls}, {} unexpected", i + 1, t.unexpected);
        }
    }
    let ms = time::ticks_to_ms(cpu::rdtsc().wrapping_sub(t0));
    println!("\nfuzz: summary: {calls} calls, {} unexpected, {ms} ms, seed {seed:#x}", t.unexpected);
    oxen_guest_rt::print!("fuzz: results: ok {}", t.ok);
    for (k, n) in KINDS.iter().zip(t.errno) {
        if n > 0 {
            oxen_guest_rt::print!(", {} {n}", errno_name(*k));
        }
    }
    println!(", other {}", t.other);
    println!(
        "fuzz: calls: version {} null {} console_write {} domain_id {} sched_op {} control_request {} domctl {} console_read {} events {} other {}",
        t.by_nr[0], t.by_nr[1], t.by_nr[2], t.by_nr[3], t.by_nr[4], t.by_nr[5], t.by_nr[6], t.by_nr[7], t.by_nr[8], t.by_nr[9]
    );
    println!(
        "fuzz: adjusted: shutdown {} block {} own-memory {} console-budget {} ({} console bytes taken)",
        t.adjusted[1], t.adjusted[2], t.adjusted[3], t.adjusted[4], t.console_bytes
    );
    println!("fuzz: done");
    ticker::tick(ticker::Config::default())
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("fuzz is an Oxen domU kernel: `cargo xtask` builds it for x86_64-unknown-none");
    std::process::exit(1);
}
