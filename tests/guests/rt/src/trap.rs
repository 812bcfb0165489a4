//! The guests' IDT: every vector has a gate, so a bug shows up as a report on
//! the console (vector, RIP, error code, CR2) and a `Crash` shutdown rather than
//! a silent triple fault. Interrupts (vector 32 and up) and NMIs are counted and
//! dismissed: no device is promised to a domU, so none is expected.
//!
//! A guest can claim traps first with `set_hook` (hostile does, to come back
//! from CPL 3).

use crate::cpu::{self, TablePointer};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Registers saved by the entry stubs, lowest address first, then what the
/// stub and the CPU pushed.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    /// The CPU's error code, or 0 for vectors without one.
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

// One 16-byte stub per vector at `oxen_rt_vectors + 16 * vector`: push a 0 for
// vectors whose exception has no error code (so every frame looks the same),
// push the vector, go to the common path. SDM Vol. 3A §6.13: error codes come
// with #DF (8), #TS (10), #NP (11), #SS (12), #GP (13), #PF (14), #AC (17),
// #CP (21), #VC (29) and #SX (30). The common path saves the GPRs, calls
// `oxen_rt_trap` with the frame on a 16-byte aligned stack, and returns with
// IRETQ to whatever the frame says (a hook may have changed it).
core::arch::global_asm!(
    ".pushsection .text.oxen_rt_vectors, \"ax\"",
    ".p2align 4",
    ".global oxen_rt_vectors",
    "oxen_rt_vectors:",
    ".set oxen_rt_vec, 0",
    ".rept 256",
    ".p2align 4",
    ".if !(oxen_rt_vec == 8 || (oxen_rt_vec >= 10 && oxen_rt_vec <= 14) || oxen_rt_vec == 17 || oxen_rt_vec == 21 || oxen_rt_vec == 29 || oxen_rt_vec == 30)",
    "push 0",
    ".endif",
    // push imm32 (0x68): the vector, without imm8's sign extension of 128..255.
    ".byte 0x68",
    ".long oxen_rt_vec",
    "jmp {common}",
    ".set oxen_rt_vec, oxen_rt_vec + 1",
    ".endr",
    ".popsection",
    common = sym trap_common,
);

#[unsafe(naked)]
unsafe extern "C" fn trap_common() {
    core::arch::naked_asm!(
        "push rax", "push rbx", "push rcx", "push rdx", "push rsi", "push rdi", "push rbp",
        "push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
        "cld",
        "mov rdi, rsp",
        // rbx is callee-saved: it keeps the frame's address across the call.
        "mov rbx, rsp",
        "and rsp, -16",
        "call {trap}",
        "mov rsp, rbx",
        "pop r15", "pop r14", "pop r13", "pop r12", "pop r11", "pop r10", "pop r9", "pop r8",
        "pop rbp", "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rbx", "pop rax",
        // The vector and error code.
        "add rsp, 16",
        "iretq",
        trap = sym oxen_rt_trap,
    );
}

unsafe extern "C" {
    static oxen_rt_vectors: [u8; 256 * 16];
}

/// Interrupts and NMIs seen (and dismissed) so far.
static DISMISSED: AtomicU64 = AtomicU64::new(0);
/// A `fn(&mut TrapFrame) -> bool` the guest installed, or 0.
static HOOK: AtomicUsize = AtomicUsize::new(0);

/// The IDT: 256 gates of two u64s.
#[repr(C, align(16))]
struct Idt(UnsafeCell<[u64; 512]>);
// SAFETY: the guests run one vCPU; the table is written only by `install` and
// `set_gate_dpl`, with interrupts off, before or between uses.
unsafe impl Sync for Idt {}
static IDT: Idt = Idt(UnsafeCell::new([0; 512]));

/// Interrupt gate, present, DPL 0 (SDM Vol. 3A §6.14.1); DPL is bits 45-46.
const GATE_INTERRUPT: u64 = 0x8e << 40;
const GATE_DPL_SHIFT: u32 = 45;

/// Fills and loads the IDT. Called by the runtime before the guest's `main`.
pub fn install() {
    // SAFETY: only the stubs' address is taken.
    let stubs = unsafe { oxen_rt_vectors.as_ptr() } as u64;
    let cs = u64::from(cpu::cs());
    let idt = IDT.0.get();
    for v in 0..256u64 {
        let addr = stubs + v * 16;
        let low = (addr & 0xffff) | (cs << 16) | GATE_INTERRUPT | ((addr >> 16) & 0xffff) << 48;
        // SAFETY: single vCPU and interrupts off (see `Idt`); index < 512.
        unsafe {
            (*idt)[2 * v as usize] = low;
            (*idt)[2 * v as usize + 1] = addr >> 32;
        }
    }
    let p = TablePointer { limit: (256 * 16 - 1) as u16, base: idt as u64 };
    // SAFETY: a complete IDT in a static, pointing at the stubs above.
    unsafe { cpu::lidt(&p) };
}

/// Lets code at privilege `dpl` raise `vector` with INT n.
pub fn set_gate_dpl(vector: u8, dpl: u8) {
    let i = 2 * usize::from(vector);
    // SAFETY: single vCPU (see `Idt`); the gate stays valid throughout.
    unsafe {
        let gate = &mut (*IDT.0.get())[i];
        *gate = (*gate & !(3 << GATE_DPL_SHIFT)) | (u64::from(dpl & 3) << GATE_DPL_SHIFT);
    }
}

/// Has `hook` see every trap first; when it returns true the trap returns to
/// the frame as the hook left it.
pub fn set_hook(hook: fn(&mut TrapFrame) -> bool) {
    HOOK.store(hook as usize, Ordering::SeqCst);
}

/// Interrupts and NMIs dismissed so far.
pub fn dismissed() -> u64 {
    DISMISSED.load(Ordering::Relaxed)
}

/// Loads an empty IDT and raises #UD: the exception cannot be delivered, nor
/// can the #GP and #DF that follow, so the vCPU triple-faults.
pub fn triple_fault() -> ! {
    let p = TablePointer { limit: 0, base: 0 };
    // SAFETY: an empty IDT on purpose; nothing runs after the UD2.
    unsafe {
        cpu::lidt(&p);
        core::arch::asm!("ud2", options(noreturn, nomem, nostack));
    }
}

const NAMES: [&str; 32] = [
    "#DE divide error", "#DB debug", "NMI", "#BP breakpoint", "#OF overflow", "#BR bound range",
    "#UD invalid opcode", "#NM device not available", "#DF double fault", "coprocessor overrun",
    "#TS invalid TSS", "#NP segment not present", "#SS stack fault", "#GP general protection",
    "#PF page fault", "vector 15", "#MF x87 error", "#AC alignment check", "#MC machine check",
    "#XM SIMD error", "#VE virtualization exception", "#CP control protection", "vector 22", "vector 23",
    "vector 24", "vector 25", "vector 26", "vector 27", "#HV hypervisor injection", "#VC VMM communication",
    "#SX security exception", "vector 31",
];

/// Name of an exception vector, for messages.
pub fn vector_name(vector: u64) -> &'static str {
    NAMES.get(vector as usize).copied().unwrap_or("interrupt")
}

#[unsafe(no_mangle)]
extern "C" fn oxen_rt_trap(frame: &mut TrapFrame) {
    let hook = HOOK.load(Ordering::SeqCst);
    if hook != 0 {
        // SAFETY: HOOK only ever holds a `fn(&mut TrapFrame) -> bool` (set_hook).
        let hook: fn(&mut TrapFrame) -> bool = unsafe { core::mem::transmute(hook) };
        if hook(frame) {
            return;
        }
    }
    if frame.vector == 2 || frame.vector >= 32 {
        DISMISSED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    crate::println!(
        "{}: exception {} ({}) at rip {:#x} cs {:#x}, error {:#x}, cr2 {:#x}, rsp {:#x}",
        crate::name(),
        frame.vector,
        vector_name(frame.vector),
        frame.rip,
        frame.cs,
        frame.error_code,
        cpu::read_cr2(),
        frame.rsp
    );
    crate::hypercall::shutdown(oxen_abi::ShutdownReason::Crash);
}
