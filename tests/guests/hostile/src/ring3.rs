//! Code run at CPL 3, and the trap hook that brings the guest back from it.
//! The guest builds its own GDT (the boot one has no user segments), a TSS
//! whose RSP0 receives the return to CPL 0, and sets the U bit throughout its
//! page tables; then it IRETQs to a stub at CPL 3 that does its work, stores
//! RAX and raises INT 0x80. The trap hook sends any trap from CPL 3 (INT 0x80,
//! or an exception the stub took) back to the code that entered, with the
//! vector in RAX.
//!
//! The hook also serves `insns` (exceptions taken at CPL 0 inside an
//! instruction stub come back as the stub's return value) and `loops` (the #AC
//! loop returns to the faulting instruction; a #DB that reaches its handler is
//! counted), according to `MODE`.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};
use oxen_guest_rt::cpu::{self, TablePointer};
use oxen_guest_rt::trap::{self, TrapFrame};

/// GDT: null, null, then the boot GDT's kernel code (0x10) and data (0x18), so
/// the running CS/SS stay valid; user data (0x20) and user 64-bit code (0x28),
/// DPL 3; a 64-bit TSS (0x30, two slots). SDM Vol. 3A §3.4.5, §8.2.3.
const KERNEL_CS: u64 = 0x10;
const KERNEL_DS: u64 = 0x18;
const USER_DS: u64 = 0x20 | 3;
const USER_CS: u64 = 0x28 | 3;
const TSS_SELECTOR: u16 = 0x30;
const GDT_ENTRIES: usize = 8;
const KERNEL_CODE: u64 = 0x00af_9a00_0000_ffff;
const KERNEL_DATA: u64 = 0x00cf_9300_0000_ffff;
const USER_DATA: u64 = 0x00cf_f200_0000_ffff;
const USER_CODE: u64 = 0x00af_fa00_0000_ffff;
/// The vector the user stub raises to come back; its gate gets DPL 3.
pub const RETURN_VECTOR: u8 = 0x80;
const TSS_SIZE: usize = 104;
const PAGE_USER: u64 = 1 << 2;

/// Memory the CPU uses behind the guest's back (GDT, TSS, stacks): aligned and
/// only touched with interrupts off on the one vCPU.
#[repr(C, align(4096))]
struct Shared<T>(UnsafeCell<T>);
// SAFETY: one vCPU, interrupts off; see the type's comment.
unsafe impl<T> Sync for Shared<T> {}

static GDT: Shared<[u64; GDT_ENTRIES]> = Shared(UnsafeCell::new([0; GDT_ENTRIES]));
static TSS: Shared<[u8; TSS_SIZE]> = Shared(UnsafeCell::new([0; TSS_SIZE]));
/// CPL 0 stack for traps from CPL 3 (TSS.RSP0), and the CPL 3 stub's stack.
static RSP0_STACK: Shared<[u8; 16384]> = Shared(UnsafeCell::new([0; 16384]));
static USER_STACK: Shared<[u8; 4096]> = Shared(UnsafeCell::new([0; 4096]));
/// TSS.IST1: the stack `loops` gives #DB, so that every #DB is delivered to
/// the same addresses.
static IST1_STACK: Shared<[u8; 4096]> = Shared(UnsafeCell::new([0; 4096]));

/// The top of the IST1 stack (16-byte aligned).
pub fn ist1_top() -> u64 {
    top(&IST1_STACK)
}

/// Where `hostile_ring3_enter` left its stack, for the way back.
static KERNEL_RSP: AtomicU64 = AtomicU64::new(0);
/// RAX after the hypercall at CPL 3 (stored by the user stub).
static USER_RAX: AtomicU64 = AtomicU64::new(0);
/// Stored before each trip: the stub never got to store RAX if it is still there.
const NOT_STORED: u64 = 0x5a5a_5a5a_5a5a_5a5a;

core::arch::global_asm!(
    ".pushsection .text.hostile_ring3, \"ax\"",
    // hostile_ring3_enter(user_rip: rdi, user_rsp: rsi, rax: rdx) -> vector
    ".global hostile_ring3_enter",
    "hostile_ring3_enter:",
    "push rbp", "push rbx", "push r12", "push r13", "push r14", "push r15",
    "mov [rip + {kernel_rsp}], rsp",
    "push {user_ds}",
    "push rsi",
    "push 2",
    "push {user_cs}",
    "push rdi",
    "mov rax, rdx",
    "iretq",
    // Reached from the trap hook by IRETQ at CPL 0, on the saved stack, with
    // the vector that ended the trip in RAX.
    ".global hostile_ring3_resume",
    "hostile_ring3_resume:",
    "mov ecx, {kernel_ds}",
    "mov ds, ecx",
    "mov es, ecx",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop rbx", "pop rbp",
    "ret",
    // The CPL 3 stubs: RAX = the call number on entry.
    ".global hostile_user_vmcall",
    "hostile_user_vmcall:",
    "vmcall",
    "mov [rip + {user_rax}], rax",
    "int {ret_vector}",
    "ud2",
    ".global hostile_user_vmmcall",
    "hostile_user_vmmcall:",
    "vmmcall",
    "mov [rip + {user_rax}], rax",
    "int {ret_vector}",
    "ud2",
    // Calls the stub whose address is in RAX (an `insns` stub: it returns
    // its result in RAX), then back as above.
    ".global hostile_user_call",
    "hostile_user_call:",
    "call rax",
    "mov [rip + {user_rax}], rax",
    "int {ret_vector}",
    "ud2",
    ".popsection",
    user_ds = const USER_DS,
    user_cs = const USER_CS,
    kernel_ds = const KERNEL_DS,
    ret_vector = const RETURN_VECTOR,
    kernel_rsp = sym KERNEL_RSP,
    user_rax = sym USER_RAX,
);

unsafe extern "C" {
    fn hostile_ring3_enter(user_rip: u64, user_rsp: u64, rax: u64) -> u64;
    fn hostile_ring3_resume();
    fn hostile_user_vmcall();
    fn hostile_user_vmmcall();
    fn hostile_user_call();
}

/// What the hook does besides the trip back from CPL 3.
pub const MODE_NONE: u64 = 0;
/// An exception at CPL 0 returns from the `insns` stub that took it, with
/// `FAULTED | vector` in RAX.
pub const MODE_KERNEL_PROBE: u64 = 1;
/// An #AC from CPL 3 goes back to the instruction that raised it (the loop).
pub const MODE_AC_LOOP: u64 = 2;
/// A #DB handler that is reached at all is counted and returns.
pub const MODE_DB_LOOP: u64 = 3;
pub static MODE: AtomicU64 = AtomicU64::new(MODE_NONE);
/// The stub's result when it took an exception: this bit, plus the vector.
pub const FAULTED: u64 = 1 << 63;
/// #AC delivered by the loop, and #DB handlers reached, so far.
pub static AC_COUNT: AtomicU64 = AtomicU64::new(0);
pub static DB_COUNT: AtomicU64 = AtomicU64::new(0);
const VECTOR_DB: u64 = 1;
const VECTOR_AC: u64 = 17;

/// Sends every trap from CPL 3 back to `hostile_ring3_enter`'s caller, after
/// what `MODE` asks for.
fn hook(frame: &mut TrapFrame) -> bool {
    let mode = MODE.load(Ordering::SeqCst);
    if mode == MODE_AC_LOOP && frame.vector == VECTOR_AC && frame.cs & 3 == 3 {
        let n = AC_COUNT.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() && n >= 1024 {
            oxen_guest_rt::println!("hostile: ac-loop: {n} #AC so far");
        }
        // Unchanged frame: IRETQ to the misaligned access, AC still set.
        return true;
    }
    if mode == MODE_DB_LOOP && frame.vector == VECTOR_DB {
        let n = DB_COUNT.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            oxen_guest_rt::println!("hostile: db-loop: #DB handler reached {n} times (delivery did not re-trigger #DB)");
        }
        return true;
    }
    if frame.cs & 3 != 3 {
        if mode == MODE_KERNEL_PROBE && frame.vector < 32 {
            // An `insns` stub pushes nothing: the return address is on top.
            // SAFETY: RSP is the stub's stack, whose top holds its caller's
            // return address (the stubs are leaf code that never push).
            frame.rip = unsafe { (frame.rsp as *const u64).read() };
            frame.rsp += 8;
            frame.rax = FAULTED | frame.vector;
            return true;
        }
        return false;
    }
    frame.rax = frame.vector;
    frame.rip = hostile_ring3_resume as *const () as u64;
    frame.cs = KERNEL_CS;
    frame.ss = KERNEL_DS;
    frame.rsp = KERNEL_RSP.load(Ordering::SeqCst);
    frame.rflags = 2;
    true
}

fn top<const N: usize>(stack: &Shared<[u8; N]>) -> u64 {
    stack.0.get() as u64 + N as u64
}

/// Loads the GDT with user segments and the TSS, sets the U bit in every
/// present page-table entry, opens the return vector to CPL 3 and installs the
/// hook. Once; `prepared` calls it.
fn prepare() {
    let tss = TSS.0.get();
    // SAFETY: one vCPU, interrupts off; the TSS is not loaded yet. RSP0 is at
    // offset 4, the I/O map base at 102 (past the limit: no I/O bitmap).
    let bytes = unsafe { &mut *tss };
    bytes[4..12].copy_from_slice(&top(&RSP0_STACK).to_le_bytes());
    // IST1 at offset 36 (SDM Vol. 3A §8.7, Figure 8-11).
    bytes[36..44].copy_from_slice(&top(&IST1_STACK).to_le_bytes());
    bytes[102..104].copy_from_slice(&(TSS_SIZE as u16).to_le_bytes());
    let base = tss as u64;
    let limit = (TSS_SIZE - 1) as u64;
    let tss_low = (limit & 0xffff)
        | (base & 0xff_ffff) << 16
        | 0x89 << 40 // present, 64-bit available TSS
        | ((limit >> 16) & 0xf) << 48
        | ((base >> 24) & 0xff) << 56;
    let gdt = GDT.0.get();
    // SAFETY: not loaded yet; one vCPU.
    unsafe { *gdt = [0, 0, KERNEL_CODE, KERNEL_DATA, USER_DATA, USER_CODE, tss_low, base >> 32] };
    let p = TablePointer { limit: (GDT_ENTRIES * 8 - 1) as u16, base: gdt as u64 };
    // SAFETY: the new GDT keeps the boot GDT's 0x10 and 0x18 descriptors, which
    // CS and the data segments hold; it lives in a static. LTR marks the TSS
    // descriptor busy, which is what the CPU expects of a loaded TSS.
    unsafe {
        cpu::lgdt(&p);
        core::arch::asm!("ltr {0:x}", in(reg) TSS_SELECTOR, options(nostack, preserves_flags));
    }
    // SAFETY: CR3's tables are the guest's own identity map; only U bits change.
    unsafe { set_user_bits(cpu::read_cr3() & 0x000f_ffff_ffff_f000, 4) };
    cpu::flush_tlb();
    trap::set_gate_dpl(RETURN_VECTOR, 3);
    trap::set_hook(hook);
}

/// Sets U in every present entry of the table at `table` (level 4 = PML4) and
/// below it.
///
/// # Safety
/// `table` must be a page table of the current identity-mapped hierarchy.
unsafe fn set_user_bits(table: u64, level: u32) {
    let entries = table as *mut u64;
    for i in 0..512 {
        // SAFETY: a table page has 512 entries; identity mapped (caller).
        let e = unsafe { entries.add(i).read_volatile() };
        if e & 1 == 0 {
            continue;
        }
        // SAFETY: as above.
        unsafe { entries.add(i).write_volatile(e | PAGE_USER) };
        let large = e & 0x80 != 0;
        if level > 1 && !(level < 4 && large) {
            // SAFETY: a present non-leaf entry points at the next table.
            unsafe { set_user_bits(e & 0x000f_ffff_ffff_f000, level - 1) };
        }
    }
}

/// How a trip to CPL 3 ended.
pub enum Outcome {
    /// The CPL 3 code stored this RAX and came back with INT 0x80.
    Returned(u64),
    /// CPL 3 took this exception (the instruction under test faulted, or
    /// the stub never reached INT 0x80).
    Trapped(u64),
}

/// Makes sure `prepare` ran (user segments, TSS, U bits, the hook).
pub fn prepared() {
    static PREPARED: AtomicU64 = AtomicU64::new(0);
    if PREPARED.swap(1, Ordering::SeqCst) == 0 {
        prepare();
    }
}

/// Makes hypercall `number` (no arguments) at CPL 3.
pub fn hypercall(number: u64) -> Outcome {
    let stub = if oxen_guest_rt::hypercall::uses_vmmcall() { hostile_user_vmmcall } else { hostile_user_vmcall };
    enter(stub as *const () as u64, number)
}

/// Calls `stub` (an `insns` stub: leaf code, result in RAX) at CPL 3.
pub fn call(stub: u64) -> Outcome {
    enter(hostile_user_call as *const () as u64, stub)
}

/// Runs the CPL 3 code at `user_rip` with `rax`, on the user stack; it ends
/// with INT 0x80 after storing RAX, or with the exception it took.
pub fn enter(user_rip: u64, rax: u64) -> Outcome {
    prepared();
    USER_RAX.store(NOT_STORED, Ordering::SeqCst);
    // SAFETY: `prepare` made the code, its stack and the way back reachable
    // from CPL 3; the stubs touch nothing but USER_RAX (and the `insns`
    // operand page), and every trap they can take comes back here through the
    // hook with the callee-saved registers restored.
    let vector = unsafe { hostile_ring3_enter(user_rip, top(&USER_STACK), rax) };
    let rax = USER_RAX.load(Ordering::SeqCst);
    if vector == u64::from(RETURN_VECTOR) && rax != NOT_STORED {
        Outcome::Returned(rax)
    } else {
        Outcome::Trapped(vector)
    }
}
