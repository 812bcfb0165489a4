//! The IDT (shared by all CPUs) and the exception entry stubs. Any exception in
//! the hypervisor is a bug: the handler prints a crash report naming the CPU,
//! vector, error code, RIP, CR2 and all registers, then halts that CPU. NMIs
//! are not exceptions of the hypervisor's: they are counted and dismissed.

use super::gdt::{IST_DOUBLE_FAULT, IST_MACHINE_CHECK, IST_NMI, KERNEL_CS};
use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, Ordering};
use spin::Once;

/// The NMI's vector (SDM Vol. 3A §6.3.1).
const NMI_VECTOR: u64 = 2;

/// Registers saved by the entry stubs, in push order reversed.
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
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Vectors for which the CPU pushes an error code (SDM Vol. 3 §7.15).
const HAS_ERROR_CODE: u32 = (1 << 8) | (1 << 10) | (1 << 11) | (1 << 12) | (1 << 13) | (1 << 14) | (1 << 17) | (1 << 21) | (1 << 29) | (1 << 30);

global_asm!(
    ".irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    "exc_stub_\\v:",
    ".if ((0x60227d00 >> \\v) & 1) == 0",
    "push 0",
    ".endif",
    "push \\v",
    "jmp exc_common",
    ".endr",
    ".pushsection .rodata.exc_stub_table, \"a\"",
    ".balign 8",
    ".global exc_stub_table",
    "exc_stub_table:",
    ".irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    ".quad exc_stub_\\v",
    ".endr",
    ".popsection",
);

extern "C" {
    static exc_stub_table: [u64; 32];
}

global_asm!(
    "exc_common:",
    "push rax", "push rbx", "push rcx", "push rdx", "push rsi", "push rdi", "push rbp",
    "push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
    "mov rdi, rsp",
    "cld",
    "call {handler}",
    "pop r15", "pop r14", "pop r13", "pop r12", "pop r11", "pop r10", "pop r9", "pop r8",
    "pop rbp", "pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rbx", "pop rax",
    "add rsp, 16",
    "iretq",
    handler = sym exception_handler,
);

const _: () = assert!(HAS_ERROR_CODE == 0x6022_7d00);

const NAMES: [&str; 32] = [
    "#DE divide error", "#DB debug", "NMI", "#BP breakpoint", "#OF overflow", "#BR bound range",
    "#UD invalid opcode", "#NM device not available", "#DF double fault", "coprocessor overrun",
    "#TS invalid TSS", "#NP segment not present", "#SS stack fault", "#GP general protection",
    "#PF page fault", "reserved 15", "#MF x87 error", "#AC alignment check", "#MC machine check",
    "#XM SIMD error", "#VE virtualization exception", "#CP control protection", "reserved 22",
    "reserved 23", "reserved 24", "reserved 25", "reserved 26", "reserved 27", "#HV hypervisor injection",
    "#VC VMM communication", "#SX security", "reserved 31",
];

/// NMIs taken so far (all CPUs), and how many of them were reported.
static NMIS: AtomicU64 = AtomicU64::new(0);
static NMIS_REPORTED: AtomicU64 = AtomicU64::new(0);

/// Says, from a context that may take the console's lock, that NMIs came: the
/// first time, and then not again (the count is in the `c` console key's
/// output). The NMI handler itself only counts: it may have interrupted the
/// console's lock holder.
pub fn report_nmis() {
    let n = NMIS.load(Ordering::Relaxed);
    if n != 0 && NMIS_REPORTED.swap(n, Ordering::Relaxed) == 0 {
        log::warn!("cpu: {n} physical NMI(s) taken and dismissed (watchdog, IPI or platform error); further ones are counted only");
    }
}

/// Physical NMIs taken since boot.
pub fn nmi_count() -> u64 {
    NMIS.load(Ordering::Relaxed)
}

extern "C" fn exception_handler(f: &mut TrapFrame) {
    if f.vector == NMI_VECTOR {
        // A physical NMI (or `int 2` after an NMI exit, vmx::vcpu): the
        // hypervisor has no NMI source of its own to service, so it is
        // counted and dismissed, never fatal.
        NMIS.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    let cr3 = x86_64::registers::control::Cr3::read_raw().0.start_address().as_u64();
    let name = NAMES.get(f.vector as usize).copied().unwrap_or("?");
    let p = crate::console::emergency_print;
    p(format_args!("(oxen) EXCEPTION on cpu{}: vector {} ({name}), error code {:#x}\n", super::cpu_id(), f.vector, f.error_code));
    p(format_args!("(oxen)   rip {:#018x} cs {:#x} rflags {:#x} rsp {:#018x} ss {:#x}\n", f.rip, f.cs, f.rflags, f.rsp, f.ss));
    p(format_args!("(oxen)   cr2 {cr2:#018x} cr3 {cr3:#018x}\n"));
    p(format_args!("(oxen)   rax {:#018x} rbx {:#018x} rcx {:#018x} rdx {:#018x}\n", f.rax, f.rbx, f.rcx, f.rdx));
    p(format_args!("(oxen)   rsi {:#018x} rdi {:#018x} rbp {:#018x} r8  {:#018x}\n", f.rsi, f.rdi, f.rbp, f.r8));
    p(format_args!("(oxen)   r9  {:#018x} r10 {:#018x} r11 {:#018x} r12 {:#018x}\n", f.r9, f.r10, f.r11, f.r12));
    p(format_args!("(oxen)   r13 {:#018x} r14 {:#018x} r15 {:#018x}\n", f.r13, f.r14, f.r15));
    p(format_args!("(oxen) halt: hypervisor exception\n"));
    super::halt_forever();
}

/// One IDT gate (SDM Vol. 3 §7.14.1).
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    _reserved: u32,
}
const _: () = assert!(core::mem::size_of::<Gate>() == 16);

impl Gate {
    fn interrupt(handler: u64, ist: u8) -> Self {
        Gate {
            offset_low: handler as u16,
            selector: KERNEL_CS,
            ist,
            type_attr: 0x8e, // present, DPL 0, 64-bit interrupt gate
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            _reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static IDT: Once<Idt> = Once::new();

/// Loads the IDT on this CPU (building it on first use).
pub fn init() {
    let idt = IDT.call_once(|| {
        let mut idt = Idt([Gate::default(); 256]);
        // SAFETY: the table is built by the assembler and never written.
        let stubs = unsafe { &exc_stub_table };
        for (v, &stub) in stubs.iter().enumerate() {
            let ist = match v {
                2 => IST_NMI,
                8 => IST_DOUBLE_FAULT,
                18 => IST_MACHINE_CHECK,
                _ => 0,
            };
            idt.0[v] = Gate::interrupt(stub, ist);
        }
        // The local APIC's wake-up and spurious vectors (smp.rs, apic.rs).
        for (vector, handler) in super::apic::idt_entries() {
            idt.0[usize::from(vector)] = Gate::interrupt(handler, 0);
        }
        // Device interrupts forwarded to dom0 (irq.rs).
        for (vector, handler) in super::irq::idt_entries() {
            idt.0[usize::from(vector)] = Gate::interrupt(handler, 0);
        }
        idt
    });
    let ptr = x86_64::structures::DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: x86_64::VirtAddr::new(idt as *const Idt as u64),
    };
    // SAFETY: the IDT is static and its gates point at valid entry stubs.
    unsafe { x86_64::instructions::tables::lidt(&ptr) };
}
