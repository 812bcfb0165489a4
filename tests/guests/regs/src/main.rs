//! `regs`: checks that no other domain sees or changes this domain's vector
//! registers (the cross-domain register test of issue 9), and that XSETBV
//! refuses every XCR0 the CPU would.
//!
//! 1. XSETBV with CR4.OSXSAVE clear must give #UD.
//! 2. With OSFXSR/OSXSAVE on, every XCR0 made of the components bits 0-7, 9,
//!    17 and 18 (2048 values), and each other bit alone on top of the widest
//!    value, is tried: a value the CPU would refuse (SDM Vol. 1 §13.3, rules
//!    written out again in `xcr0_valid`) must give #GP and leave XCR0 as it
//!    was; any other must be taken. XSETBV to XCR 1 must give #GP. Prints
//!    `regs: xsetbv: ...`.
//! 3. XCR0 = x87|SSE|AVX (and opmask|ZMM_Hi256|Hi16_ZMM when CPUID 0xD offers
//!    them), then every XMM/YMM/ZMM register (and k0-k7) is filled with a
//!    pattern made from the domain ID and checked again and again, for
//!    `seconds=N` (default 10): `regs: Ns: C checks, M mismatches` every
//!    second, then `regs: done: ...`, then it sleeps until dom0 ends it.
#![cfg_attr(target_os = "none", no_std, no_main)]

mod moves;

use core::sync::atomic::{AtomicU64, Ordering};
use oxen_abi::StartInfo;
use oxen_guest_rt::trap::{self, TrapFrame};
use oxen_guest_rt::{cmdline, cpu, hypercall, println, time};

oxen_guest_rt::entry!("regs", guest_main);

const X87: u64 = 1;
const SSE: u64 = 1 << 1;
const AVX: u64 = 1 << 2;
const AVX512: u64 = 0b111 << 5;
/// One register's slot in the buffers: a ZMM register's 64 bytes.
const SLOT: usize = 64;
const REGS_BYTES: usize = 32 * SLOT;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const CR4_OSXSAVE: u64 = 1 << 18;
const CR0_MP: u64 = 1 << 1;
const CR0_EM: u64 = 1 << 2;
const CR0_TS: u64 = 1 << 3;
/// XSETBV's encoding: the trap hook skips it.
const XSETBV: [u8; 3] = [0x0f, 0x01, 0xd1];

/// The vector of the last fault an XSETBV took (0: none).
static FAULT: AtomicU64 = AtomicU64::new(0);

/// A fault on an XSETBV is recorded and the instruction skipped.
fn hook(frame: &mut TrapFrame) -> bool {
    // SAFETY: RIP points into this guest's own code, which is mapped.
    let at = unsafe { core::ptr::read_unaligned(frame.rip as *const [u8; 3]) };
    if at != XSETBV || !(frame.vector == 6 || frame.vector == 13) {
        return false;
    }
    FAULT.store(frame.vector, Ordering::SeqCst);
    frame.rip += XSETBV.len() as u64;
    true
}

/// XSETBV(`xcr`, `value`): the vector it faulted with, or 0.
fn xsetbv(xcr: u32, value: u64) -> u64 {
    FAULT.store(0, Ordering::SeqCst);
    // SAFETY: a fault is caught by `hook`; a value the CPU accepts only
    // enables state this guest does not rely on yet.
    unsafe {
        core::arch::asm!("xsetbv", in("ecx") xcr, in("eax") value as u32, in("edx") (value >> 32) as u32,
            options(nostack, preserves_flags));
    }
    FAULT.load(Ordering::SeqCst)
}

fn xgetbv() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: CR4.OSXSAVE is set before this is called.
    unsafe { core::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    u64::from(lo) | (u64::from(hi) << 32)
}

fn cpuid(leaf: u32, sub: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// TSC ticks a millisecond: from CPUID 0x15, which Oxen fills with the rate
/// it calibrated, else measured. Measuring (a BLOCK) here would be wrong by
/// the time the other domains on this pCPU run before it wakes.
fn tsc_khz() -> u64 {
    if cpuid(0, 0).0 >= 0x15 {
        let (den, num, hz, _) = cpuid(0x15, 0);
        if den != 0 && num != 0 && hz != 0 {
            return (u64::from(hz) * u64::from(num) / u64::from(den) / 1000).max(1);
        }
    }
    time::tsc_khz()
}

/// The test's own statement of the rules, component by component.
fn xcr0_valid(v: u64, offered: u64) -> bool {
    let has = |m: u64| v & m == m;
    let any = |m: u64| v & m != 0;
    if v & !offered != 0 || !has(X87) {
        return false;
    }
    if has(AVX) && !has(SSE) {
        return false;
    }
    // MPX: BNDREGS and BNDCSR together.
    if any(0b11 << 3) && !has(0b11 << 3) {
        return false;
    }
    // AVX-512: all three or none, and only with AVX.
    if any(AVX512) && !(has(AVX512) && has(AVX)) {
        return false;
    }
    // AMX: TILECFG and TILEDATA together.
    !any(0b11 << 17) || has(0b11 << 17)
}

fn set_cr(cr4_set: u64) {
    // SAFETY: the guest runs at CPL 0; these bits only enable the FPU/SSE
    // (CR0.MP, not EM or TS) and SSE/XSAVE (CR4), which the CPU has.
    unsafe {
        core::arch::asm!(
            "mov {t}, cr0", "and {t}, {clear}", "or {t}, {mp}", "mov cr0, {t}",
            "mov {t}, cr4", "or {t}, {set}", "mov cr4, {t}",
            t = out(reg) _, clear = in(reg) !(CR0_EM | CR0_TS), mp = in(reg) CR0_MP, set = in(reg) cr4_set,
            options(nostack, preserves_flags),
        );
    }
}

/// The XSETBV checks; returns whether all passed. With `native` the CPU
/// itself checks XSETBV against its own components, not the hypervisor against
/// the guest's CPUID (QEMU 7.2 TCG implements no XSETBV intercept): values with
/// components the guest is not offered are then not tried.
fn check_xsetbv(offered: u64, wide: u64, native: bool) -> bool {
    let mut candidates = [0u64; 2048 + 64];
    let mut n = 0;
    let low: [u32; 11] = [0, 1, 2, 3, 4, 5, 6, 7, 9, 17, 18];
    for combo in 0..(1u64 << low.len()) {
        candidates[n] = low.iter().enumerate().filter(|(i, _)| combo >> i & 1 == 1).map(|(_, b)| 1u64 << b).sum();
        n += 1;
    }
    for bit in (0..64).filter(|b| !low.contains(b)) {
        candidates[n] = wide | 1 << bit;
        n += 1;
    }
    let (mut invalid, mut gp, mut changed, mut wrong_fault) = (0u32, 0u32, 0u32, 0u32);
    let (mut valid, mut taken) = (0u32, 0u32);
    let mut skipped = 0u32;
    for &v in &candidates[..n] {
        if native && v & !offered != 0 {
            skipped += 1;
            continue;
        }
        let fault = xsetbv(0, v);
        let now = xgetbv();
        if xcr0_valid(v, offered) {
            valid += 1;
            if fault == 0 && now == v {
                taken += 1;
            } else {
                println!("regs: xsetbv: valid XCR0 {v:#x} refused (vector {fault}, XCR0 now {now:#x})");
            }
            if xsetbv(0, wide) != 0 {
                println!("regs: xsetbv: FAILED to restore XCR0 {wide:#x}");
                return false;
            }
        } else {
            invalid += 1;
            match fault {
                13 => gp += 1,
                0 => println!("regs: xsetbv: invalid XCR0 {v:#x} was taken"),
                f => {
                    wrong_fault += 1;
                    println!("regs: xsetbv: invalid XCR0 {v:#x} gave vector {f}, not #GP");
                }
            }
            if now != wide {
                changed += 1;
                println!("regs: xsetbv: invalid XCR0 {v:#x} changed XCR0 to {now:#x}");
                xsetbv(0, wide);
            }
        }
    }
    let xcr1 = xsetbv(1, 1);
    if native {
        println!("regs: xsetbv: {skipped} values with components not offered left out (native_xsetbv: the CPU checks XSETBV, no exit)");
    }
    println!(
        "regs: xsetbv: {invalid} invalid XCR0 values, {gp} gave #GP, {changed} changed XCR0, {wrong_fault} other faults; \
         {valid} valid values, {taken} taken; XCR 1: vector {xcr1}"
    );
    gp == invalid && changed == 0 && taken == valid && xcr1 == 13
}

/// splitmix64: the pattern word `i` of domain `d`.
fn pattern(d: u64, i: u64) -> u64 {
    let mut z = d.wrapping_mul(0x1_0000_0001).wrapping_add(i).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sse,
    Avx,
    Avx512,
}

#[repr(C, align(64))]
struct Regs([u8; REGS_BYTES]);
#[repr(C, align(64))]
struct Masks([u8; 32]);

fn load(kind: Kind, r: &Regs, k: &Masks) {
    // SAFETY: the buffers are REGS_BYTES and 32 bytes; `kind` was chosen from
    // what XCR0 (and CR4) enable.
    unsafe {
        match kind {
            Kind::Sse => moves::load_sse(r.0.as_ptr()),
            Kind::Avx => moves::load_avx(r.0.as_ptr()),
            Kind::Avx512 => {
                moves::load_avx512(r.0.as_ptr());
                moves::load_k(k.0.as_ptr());
            }
        }
    }
}

fn store(kind: Kind, r: &mut Regs, k: &mut Masks) {
    // SAFETY: as in `load`.
    unsafe {
        match kind {
            Kind::Sse => moves::store_sse(r.0.as_mut_ptr()),
            Kind::Avx => moves::store_avx(r.0.as_mut_ptr()),
            Kind::Avx512 => {
                moves::store_avx512(r.0.as_mut_ptr());
                moves::store_k(k.0.as_mut_ptr());
            }
        }
    }
}

fn guest_main(_info: &'static StartInfo) -> ! {
    let d = hypercall::domain_id();
    let mut seconds = 10u64;
    let mut native = false;
    for opt in cmdline::options(oxen_guest_rt::cmdline()) {
        match (opt.key, opt.value.and_then(cmdline::parse_u64)) {
            ("seconds", Some(s)) if s > 0 => seconds = s,
            ("native_xsetbv", Some(n)) => native = n != 0,
            _ => println!("regs: warning: unknown option '{}'", opt.text),
        }
    }
    trap::set_hook(hook);
    let has_xsave = cpuid(1, 0).2 & (1 << 26) != 0;
    let mut ok = true;
    let mut xcr0 = 0;
    if has_xsave {
        // SDM Vol. 2C XSETBV: #UD if CR4.OSXSAVE = 0.
        let f = xsetbv(0, X87 | SSE);
        println!("regs: xsetbv with CR4.OSXSAVE clear: vector {f}");
        ok &= f == 6;
        set_cr(CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_OSXSAVE);
        let (a, _, _, dx) = cpuid(0xd, 0);
        let offered = u64::from(a) | (u64::from(dx) << 32);
        xcr0 = X87 | SSE | (offered & AVX);
        if xcr0 & AVX != 0 && offered & AVX512 == AVX512 {
            xcr0 |= AVX512;
        }
        ok &= xsetbv(0, xcr0) == 0;
        ok &= check_xsetbv(offered, xcr0, native);
    } else {
        set_cr(CR4_OSFXSR | CR4_OSXMMEXCPT);
        println!("regs: no XSAVE: SSE only, no XSETBV checks");
    }
    let kind = if xcr0 & AVX512 != 0 {
        Kind::Avx512
    } else if xcr0 & AVX != 0 {
        Kind::Avx
    } else {
        Kind::Sse
    };
    let (width, count, name) = match kind {
        Kind::Sse => (16, 16, "XMM0-15"),
        Kind::Avx => (32, 16, "YMM0-15"),
        Kind::Avx512 => (64, 32, "ZMM0-31 and k0-k7"),
    };
    let verdict = match (has_xsave, ok) {
        (false, _) => "skipped (no XSAVE)",
        (true, true) => "passed",
        (true, false) => "FAILED",
    };
    let khz = tsc_khz();
    println!("regs: xsetbv checks {verdict}; XCR0 {xcr0:#x}; checking {name} for {seconds} s (TSC {khz} kHz)");

    let mut want = Regs([0; REGS_BYTES]);
    let mut masks = Masks([0; 32]);
    for (i, w) in want.0.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&pattern(d, i as u64).to_le_bytes());
    }
    for (i, w) in masks.0.chunks_exact_mut(4).enumerate() {
        w.copy_from_slice(&(pattern(d, 1000 + i as u64) as u16 as u32).to_le_bytes());
    }
    let mut got = Regs([0; REGS_BYTES]);
    let mut got_k = Masks([0; 32]);
    load(kind, &want, &masks);

    let start = cpu::rdtsc();
    let (mut checks, mut mismatches, mut next_report) = (0u64, 0u64, 1u64);
    loop {
        // A short spin so preemptions land between checks as well as in them.
        for _ in 0..1000 {
            core::hint::spin_loop();
        }
        store(kind, &mut got, &mut got_k);
        checks += 1;
        let bad_regs = (0..count).filter(|&r| got.0[r * SLOT..r * SLOT + width] != want.0[r * SLOT..r * SLOT + width]).count();
        let bad_k = if kind == Kind::Avx512 { usize::from(got_k.0 != masks.0) } else { 0 };
        if bad_regs + bad_k > 0 {
            mismatches += 1;
            if mismatches <= 3 {
                println!("regs: mismatch at check {checks}: {bad_regs} registers, masks {bad_k}");
            }
            load(kind, &want, &masks);
        }
        let elapsed = (cpu::rdtsc() - start) / khz;
        if elapsed >= next_report * 1000 {
            println!("regs: {next_report}s: {checks} checks, {mismatches} mismatches");
            if next_report >= seconds {
                break;
            }
            next_report += 1;
        }
    }
    println!(
        "regs: done: domain {}, XCR0 {xcr0:#x}, {name}, {checks} checks, {mismatches} mismatches, xsetbv checks {verdict}",
        hypercall::Rax(d)
    );
    loop {
        hypercall::block(0);
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("regs is an Oxen domU kernel: `cargo xtask` builds it for x86_64-unknown-none");
    std::process::exit(1);
}
