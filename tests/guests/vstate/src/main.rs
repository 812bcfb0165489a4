//! `vstate`: the guest of the vCPU-state tests (dom0-bootstrap/tests/vcpu-state.sh).
//! It spends nearly all its time in one small assembly loop (`vstate_spin`)
//! that keeps a marker in R15, counts its passes in R14 and checks on each
//! pass that R13 is still !R12 (a pair only it sets); once a second it
//! reports the marker and the verdict. It prints where the loop is, so dom0 knows when
//! a paused vCPU's RIP is inside it and R15 is the marker.
//!
//! Lines: `vstate: domain N up, loop 0xA-0xB`, then every second
//! `vstate: round N marker 0xM spins S, registers ok` (or `... FAILED (why)`).
#![cfg_attr(target_os = "none", no_std, no_main)]

use oxen_abi::StartInfo;
use oxen_guest_rt::{cpu, hypercall, println, time};

oxen_guest_rt::entry!("vstate", guest_main);

#[cfg(target_os = "none")]
core::arch::global_asm!(
    // vstate_spin(deadline: rdi, marker: rsi) -> marker in rax, spins in rdx.
    ".global vstate_spin",
    ".global vstate_loop",
    ".global vstate_loop_end",
    // R12 and R13 = !R12 are checked on every pass: a state written back
    // unchanged must keep them; a broken pair ends the loop with R14 = 0.
    "vstate_spin:",
    "push rbx",
    "push r15",
    "push r14",
    "push r13",
    "push r12",
    "mov r15, rsi",
    "xor r14, r14",
    "mov r12, 0x0123456789abcdef",
    "mov r13, r12",
    "not r13",
    "vstate_loop:",
    "inc r14",
    // A CPUID (which always exits) every 65536 passes: a pause lands in
    // this loop even where a kicked CPU leaves the guest only at its next
    // exit (Bochs' VT-x).
    "test r14d, 0xffff",
    "jnz 4f",
    "mov eax, 0",
    "cpuid",
    "4:",
    "mov rax, r12",
    "not rax",
    "cmp rax, r13",
    "jne 3f",
    "rdtsc",
    "shl rdx, 32",
    "or rax, rdx",
    "cmp rax, rdi",
    "jb vstate_loop",
    "jmp vstate_loop_end",
    "3:",
    "xor r14, r14",
    "vstate_loop_end:",
    "mov rax, r15",
    "mov rdx, r14",
    "pop r12",
    "pop r13",
    "pop r14",
    "pop r15",
    "pop rbx",
    "ret",
);

#[cfg(target_os = "none")]
extern "C" {
    fn vstate_loop();
    fn vstate_loop_end();
}

#[cfg(target_os = "none")]
fn spin(deadline: u64, marker: u64) -> (u64, u64) {
    let (m, spins): (u64, u64);
    // SAFETY: `vstate_spin` follows the SysV ABI (saves R14/R15, clobbers
    // RAX/RDX/RDI/RSI/flags) and touches no memory but its stack.
    unsafe {
        core::arch::asm!(
            "call vstate_spin",
            inout("rdi") deadline => _,
            inout("rsi") marker => _,
            out("rax") m,
            out("rdx") spins,
            clobber_abi("C"),
        );
    }
    (m, spins)
}

#[cfg(not(target_os = "none"))]
fn spin(_deadline: u64, marker: u64) -> (u64, u64) {
    (marker, 1)
}

fn guest_main(_info: &'static StartInfo) -> ! {
    #[cfg(target_os = "none")]
    let (start, end) = (vstate_loop as *const () as usize, vstate_loop_end as *const () as usize);
    #[cfg(not(target_os = "none"))]
    let (start, end) = (0usize, 0usize);
    println!("vstate: domain {} up, loop {start:#x}-{end:#x}", hypercall::Rax(hypercall::domain_id()));
    let mut marker: u64 = 0x1111_0000;
    let second = time::ms_to_ticks(1000);
    let mut round = 0u64;
    loop {
        round += 1;
        let (m, spins) = spin(cpu::rdtsc().wrapping_add(second), marker);
        // R14 counted at least one pass; R15 came back as it went in,
        // unless dom0 set it (then it is reported, and kept).
        let verdict = if spins == 0 { "FAILED (R12/R13 changed under the loop)" } else { "registers ok" };
        marker = m;
        println!("vstate: round {round} marker {marker:#x} spins {spins}, {verdict}");
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("vstate is an Oxen domU kernel: `cargo xtask` builds it for x86_64-unknown-none");
    std::process::exit(1);
}
