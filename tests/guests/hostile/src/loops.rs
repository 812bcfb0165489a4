//! Final acts that never end on their own (issue 9, item 10): each must leave
//! the host able to preempt this domain and dom0 able to destroy it at once.
//!
//! - `ac-loop`: CR0.AM set, RFLAGS.AC set at CPL 3, a misaligned read; the #AC
//!   handler returns to the read, which faults again, forever.
//! - `db-loop`: #DB delivered on its own IST stack (TSS.IST1) with a DR0 data
//!   breakpoint on the slot where delivery pushes SS: each delivery of #DB
//!   raises the next #DB before the handler's first instruction (the XSA-156 /
//!   CVE-2015-8104 pattern). A CPU that does not exit on #DB never reaches an
//!   instruction boundary again, so no host interrupt gets in.
//! - `cr8-spin`: MOV CR8 ← 15 (the highest task priority: every interrupt
//!   class masked, SDM Vol. 3A §11.8.3.1 / APM Vol. 2 §16.6), then a spin with
//!   interrupts on. If that reached the physical TPR, the host's timer and
//!   IPIs would stop on this CPU.
//! - `cr8-hlt`: MOV CR8 ← 15, then HLT with interrupts off: a vCPU that only a
//!   host interrupt can ever take back.

use crate::ring3::{self, Outcome};
use core::sync::atomic::Ordering;
use oxen_guest_rt::{cpu, println};

core::arch::global_asm!(
    ".pushsection .text.hostile_loops, \"ax\"",
    // At CPL 3: RFLAGS.AC on (POPF may set AC at any CPL), then a read one
    // byte into the operand page, over and over.
    ".global hostile_user_ac",
    "hostile_user_ac:",
    "pushfq",
    "or qword ptr [rsp], {ac}",
    "popfq",
    "lea rax, [rip + HOSTILE_OPERAND_PAGE + 1]",
    "2:",
    "mov rcx, qword ptr [rax]",
    "jmp 2b",
    ".popsection",
    ac = const RFLAGS_AC,
);

unsafe extern "C" {
    fn hostile_user_ac();
}

const RFLAGS_AC: u64 = 1 << 18;
const CR0_AM: u64 = 1 << 18;

/// Spins forever, for the acts whose trap did not come as planned: the
/// domain must still be destroyable.
fn spin() -> ! {
    loop {
        core::hint::spin_loop();
    }
}

pub fn ac_loop() -> ! {
    ring3::prepared();
    // SAFETY: CR0.AM only enables alignment checks at CPL 3 with RFLAGS.AC
    // set, which nothing but the stub below sets.
    unsafe {
        core::arch::asm!("mov {0}, cr0", "or {0}, {1}", "mov cr0, {0}", out(reg) _, in(reg) CR0_AM,
            options(nostack, preserves_flags))
    };
    ring3::MODE.store(ring3::MODE_AC_LOOP, Ordering::SeqCst);
    println!("hostile: final: ac-loop: CR0.AM and RFLAGS.AC set, a misaligned read at CPL 3 whose #AC returns to it (dom0 must destroy this domain)");
    match ring3::enter(hostile_user_ac as *const () as u64, 0) {
        Outcome::Trapped(v) => println!("hostile: ac-loop: left by exception {v} after {} #AC UNEXPECTED",
            ring3::AC_COUNT.load(Ordering::Relaxed)),
        Outcome::Returned(rax) => println!("hostile: ac-loop: returned {rax:#x} UNEXPECTED"),
    }
    spin()
}

/// DR7: L0 (bit 0), GE (bit 9, recommended with data breakpoints), bit 10
/// (reserved, reads as 1), R/W0 = 01 (data writes, bits 16-17), LEN0 = 10
/// (8 bytes, bits 18-19). SDM Vol. 3B §18.2.4.
const DR7_DR0_WRITE_8: u64 = 1 | 1 << 9 | 1 << 10 | 0b01 << 16 | 0b10 << 18;
/// IST field of an IDT gate's low quadword (bits 32-34), SDM Vol. 3A §6.14.1.
const GATE_IST_SHIFT: u32 = 32;
const VECTOR_DB: u64 = 1;

pub fn db_loop() -> ! {
    ring3::prepared();
    let mut idtr = [0u8; 10];
    // SAFETY: SIDT stores 10 bytes into the buffer.
    unsafe { core::arch::asm!("sidt [{}]", in(reg) idtr.as_mut_ptr(), options(nostack, preserves_flags)) };
    let idt = u64::from_le_bytes(idtr[2..10].try_into().unwrap_or_default());
    let gate = (idt + 16 * VECTOR_DB) as *mut u64;
    // SAFETY: the runtime's IDT (a static, identity mapped) has 256 gates;
    // only the #DB gate's IST field changes, to a stack the TSS provides.
    unsafe { gate.write_volatile((gate.read_volatile() & !(7 << GATE_IST_SHIFT)) | (1 << GATE_IST_SHIFT)) };
    // Delivery aligns RSP to 16 and pushes SS first (SDM Vol. 3A §6.14.2).
    let slot = ring3::ist1_top() - 8;
    ring3::MODE.store(ring3::MODE_DB_LOOP, Ordering::SeqCst);
    println!("hostile: final: db-loop: #DB on IST1, DR0 = {slot:#x} (where its delivery pushes SS), write breakpoint armed (dom0 must destroy this domain)");
    // SAFETY: DR0/DR7 only arm a breakpoint on this guest's own IST stack;
    // the write below hits it on purpose.
    unsafe {
        core::arch::asm!("mov dr0, {}", "mov dr7, {}", in(reg) slot, in(reg) DR7_DR0_WRITE_8,
            options(nostack, preserves_flags));
        (slot as *mut u64).write_volatile(0);
    }
    println!("hostile: db-loop: the write came back after {} #DB handler runs", ring3::DB_COUNT.load(Ordering::Relaxed));
    spin()
}

fn set_cr8(v: u64) -> u64 {
    let back: u64;
    // SAFETY: CR8 is this vCPU's task priority; the point is to raise it.
    unsafe { core::arch::asm!("mov cr8, {}", "mov {}, cr8", in(reg) v, out(reg) back, options(nostack, nomem)) };
    back
}

pub fn cr8_spin() -> ! {
    let back = set_cr8(15);
    println!("hostile: final: cr8-spin: CR8 = 15 (reads back {back}), spinning with interrupts on (dom0 must destroy this domain)");
    cpu::enable_interrupts();
    spin()
}

pub fn cr8_hlt() -> ! {
    let back = set_cr8(15);
    println!("hostile: final: cr8-hlt: CR8 = 15 (reads back {back}), HLT with interrupts off (dom0 must destroy this domain)");
    cpu::disable_interrupts();
    loop {
        cpu::halt();
    }
}
