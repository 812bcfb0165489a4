//! `ioreq`: a domU whose device accesses are served by a device model in
//! dom0 (`dom0-bootstrap/kmod/ioreq-test.c`, through the hypervisor's I/O
//! requests, docs/hypercalls.md "I/O requests"). It prints what it got, and
//! checks it against the rule both sides know (`pattern`):
//!
//! - MMIO page `REQ` (answered requests): a read of N bytes at A returns
//!   `pattern(A, N)`; it writes `pattern(A + 0x10000, N)`, which the device
//!   model checks; a read of `REQ + COUNTS` returns (writes as expected << 32)
//!   | writes not; a write to `REQ + EXIT` makes the device model die without
//!   answering it.
//! - MMIO page `POSTED` (posted writes): writes go to the ring; reads of
//!   `POSTED + COUNT` / `POSTED + SUM` return how many it consumed and their
//!   sum (requests are served after the ring is drained: the count is exact).
//! - Ports `PORTS`..+16: IN of N bytes at P returns `pattern(P, N)`; OUT
//!   writes `pattern(P + 0x10000, N)`.
//!
//! Then the device model is gone: every read must return all ones, writes
//! must not hang. It ends with `ioreq: done, N wrong` and powers off.
#![cfg_attr(target_os = "none", no_std, no_main)]

use oxen_abi::{ShutdownReason, StartInfo};
use oxen_guest_rt::{cpu, hypercall, println, time};

oxen_guest_rt::entry!("ioreq", guest_main);

const REQ: u64 = 0x2000_0000;
const POSTED: u64 = 0x2000_1000;
const PORTS: u16 = 0x5000;
const COUNTS: u64 = 0x800;
const EXIT: u64 = 0x808;
const COUNT: u64 = 0xff0;
const SUM: u64 = 0xff8;
/// Posted writes sent: more than the ring holds (128), so some wait.
const POSTED_WRITES: u64 = 1000;
/// Round trips timed.
const TIMED: u64 = 1000;

fn mask(size: u8) -> u64 {
    if size == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * size)) - 1
    }
}

/// The value of a read of `size` bytes at `addr`.
fn pattern(addr: u64, size: u8) -> u64 {
    (addr.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ u64::from(size)) & mask(size)
}

fn read(addr: u64, size: u8) -> u64 {
    let p = addr as usize;
    // SAFETY: `map_mmio` mapped the device pages; each access is a plain MOV
    // (MOVZX for bytes and words) the hypervisor completes.
    unsafe {
        match size {
            1 => u64::from(core::ptr::read_volatile(p as *const u8)),
            2 => u64::from(core::ptr::read_volatile(p as *const u16)),
            4 => u64::from(core::ptr::read_volatile(p as *const u32)),
            _ => core::ptr::read_volatile(p as *const u64),
        }
    }
}

fn write(addr: u64, size: u8, v: u64) {
    let p = addr as usize;
    // SAFETY: as in `read`.
    unsafe {
        match size {
            1 => core::ptr::write_volatile(p as *mut u8, v as u8),
            2 => core::ptr::write_volatile(p as *mut u16, v as u16),
            4 => core::ptr::write_volatile(p as *mut u32, v as u32),
            _ => core::ptr::write_volatile(p as *mut u64, v),
        }
    }
}

fn inp(port: u16, size: u8) -> u64 {
    let v: u32;
    // SAFETY: port I/O at CPL 0 to the forwarded ports; nothing else changes.
    unsafe {
        match size {
            1 => core::arch::asm!("xor eax, eax", "in al, dx", in("dx") port, out("eax") v, options(nomem, nostack)),
            2 => core::arch::asm!("xor eax, eax", "in ax, dx", in("dx") port, out("eax") v, options(nomem, nostack)),
            _ => core::arch::asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack)),
        }
    }
    u64::from(v)
}

fn outp(port: u16, size: u8, v: u64) {
    let v = v as u32;
    // SAFETY: as in `inp`.
    unsafe {
        match size {
            1 => core::arch::asm!("out dx, al", in("dx") port, in("eax") v, options(nomem, nostack)),
            2 => core::arch::asm!("out dx, ax", in("dx") port, in("eax") v, options(nomem, nostack)),
            _ => core::arch::asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack)),
        }
    }
}

/// Maps the two device pages (identity, uncached) with a 2 MiB page of the
/// boot page tables' first directory, which maps only RAM below them.
fn map_mmio() {
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    const PRESENT_RW_PWT_PCD_PS: u64 = 0x9b;
    let pml4 = cpu::read_cr3() & ADDR;
    // SAFETY: the boot page tables are identity mapped in the guest's RAM
    // (docs/hypercalls.md, "domU boot state"); entry 0 of each level maps the
    // first GiB, where the 2 MiB page at REQ is not RAM and not mapped yet.
    unsafe {
        let pdpt = core::ptr::read_volatile(pml4 as *const u64) & ADDR;
        let pd = core::ptr::read_volatile(pdpt as *const u64) & ADDR;
        let entry = (pd + 8 * (REQ >> 21)) as *mut u64;
        core::ptr::write_volatile(entry, REQ | PRESENT_RW_PWT_PCD_PS);
    }
    cpu::flush_tlb();
}

struct Checks {
    wrong: u32,
}

impl Checks {
    fn check(&mut self, what: core::fmt::Arguments<'_>, got: u64, want: u64) {
        if got == want {
            println!("ioreq: {what} = {got:#x} ok");
        } else {
            self.wrong += 1;
            println!("ioreq: {what} = {got:#x} WRONG (expected {want:#x})");
        }
    }
}

fn ns_each(ticks: u64, n: u64) -> u64 {
    time::ticks_to_ns(ticks) / n
}

fn guest_main(_info: &'static StartInfo) -> ! {
    println!(
        "ioreq: domain {} up, requests at MMIO {REQ:#x}, posted writes at {POSTED:#x}, ports {PORTS:#x}-{:#x}",
        hypercall::Rax(hypercall::domain_id()),
        PORTS + 15
    );
    map_mmio();
    let mut c = Checks { wrong: 0 };
    let sizes = [1u8, 2, 4, 8];
    for (i, &n) in sizes.iter().enumerate() {
        let a = REQ + 0x10 * i as u64 + 1;
        c.check(format_args!("mmio read{} {a:#x}", 8 * n), read(a, n), pattern(a, n));
    }
    let mut written = 0;
    for (i, &n) in sizes.iter().enumerate() {
        let a = REQ + 0x100 + 0x10 * i as u64;
        let v = pattern(a + 0x1_0000, n);
        write(a, n, v);
        written += 1;
        println!("ioreq: mmio write{} {a:#x} {v:#x}", 8 * n);
    }
    for (i, &n) in sizes[..3].iter().enumerate() {
        let p = PORTS + 4 * i as u16;
        c.check(format_args!("in{} {p:#x}", 8 * n), inp(p, n), pattern(p.into(), n));
    }
    for (i, &n) in sizes[..3].iter().enumerate() {
        let p = PORTS + 1 + 4 * i as u16;
        let v = pattern(u64::from(p) + 0x1_0000, n);
        outp(p, n, v);
        written += 1;
        println!("ioreq: out{} {p:#x} {v:#x}", 8 * n);
    }
    c.check(format_args!("device model's count of writes as expected (high) and not (low)"), read(REQ + COUNTS, 8), written << 32);

    // Posted writes: the vCPU does not wait for each.
    let t0 = cpu::rdtsc();
    let mut sum = 0u64;
    for i in 0..POSTED_WRITES {
        write(POSTED + 4 * (i % 64), 4, i + 1);
        sum += i + 1;
    }
    let posted_ticks = cpu::rdtsc() - t0;
    c.check(format_args!("posted writes the device model consumed"), read(POSTED + COUNT, 8), POSTED_WRITES);
    c.check(format_args!("their sum"), read(POSTED + SUM, 8), sum);

    // Round trips through dom0, timed.
    let t0 = cpu::rdtsc();
    let mut bad = 0;
    for i in 0..TIMED {
        let a = REQ + 8 * (i % 128);
        bad += u64::from(read(a, 4) != pattern(a, 4));
    }
    let mmio_ticks = cpu::rdtsc() - t0;
    let t0 = cpu::rdtsc();
    for i in 0..TIMED {
        let p = PORTS + (i % 4) as u16 * 4;
        bad += u64::from(inp(p, 4) != pattern(p.into(), 4));
    }
    let pio_ticks = cpu::rdtsc() - t0;
    c.check(format_args!("timed reads answered wrong"), bad, 0);
    // The same exit answered by the hypervisor alone (the PIC mask port), for
    // the ratio: what the trip through dom0 adds.
    let t0 = cpu::rdtsc();
    for _ in 0..TIMED {
        inp(0x21, 1);
    }
    let local_ticks = cpu::rdtsc() - t0;
    println!(
        "ioreq: timing: {TIMED} MMIO reads {} ns each, {TIMED} port reads {} ns each, {POSTED_WRITES} posted writes {} ns each, {TIMED} reads of a port the hypervisor emulates {} ns each",
        ns_each(mmio_ticks, TIMED),
        ns_each(pio_ticks, TIMED),
        ns_each(posted_ticks, POSTED_WRITES),
        ns_each(local_ticks, TIMED)
    );

    // The device model dies on this write without answering it: the write
    // completes when the hypervisor learns it is gone.
    println!("ioreq: asking the device model to exit (it dies holding this write)");
    write(REQ + EXIT, 4, 1);
    println!("ioreq: the write it died holding completed");
    for (i, &n) in sizes.iter().enumerate() {
        let a = REQ + 0x10 * i as u64;
        c.check(format_args!("after the device model: mmio read{} {a:#x}", 8 * n), read(a, n), mask(n));
        write(a, n, 0);
    }
    for (i, &n) in sizes[..3].iter().enumerate() {
        let p = PORTS + 4 * i as u16;
        c.check(format_args!("after the device model: in{} {p:#x}", 8 * n), inp(p, n), mask(n));
        outp(p, n, 0);
    }
    for i in 0..POSTED_WRITES {
        write(POSTED + 4 * (i % 64), 4, i);
    }
    c.check(format_args!("after the device model: posted count"), read(POSTED + COUNT, 8), u64::MAX);
    println!("ioreq: done, {} wrong", c.wrong);
    hypercall::shutdown(ShutdownReason::Poweroff)
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("ioreq is an Oxen domU kernel: `cargo xtask` builds it for x86_64-unknown-none");
    std::process::exit(1);
}
