//! `insns`: the VMX and SVM instructions, INVD, WBINVD, MONITOR, MWAIT, RDPMC
//! and MOV to CR8, each run at CPL 0 and at CPL 3 (issue 9, item 10). What a
//! domU must get, whatever the vendor:
//!
//! | instruction | CPL 0 | CPL 3 |
//! |---|---|---|
//! | VMX (VMXON ... VMFUNC), SVM (VMRUN ... INVLPGA), the other vendor's hypercall instruction | #UD | #UD |
//! | INVD, WBINVD | completes (INVD acts as WBINVD) | #GP |
//! | MONITOR, MWAIT (not advertised to domUs) | #UD | #UD |
//! | RDPMC (not virtualized) | #GP | #GP (CR4.PCE clear) |
//! | MOV to CR8 | (the final acts `cr8-spin`, `cr8-hlt`) | #GP |
//!
//! As on a CPU without VMX and SVM: SDM Vol. 3C §31.3 and APM Vol. 3 give #UD
//! outside VMX operation / with EFER.SVME clear at any CPL. INVD, WBINVD,
//! RDPMC (CR4.PCE clear) and MOV CR8 are #GP(0) at CPL > 0 (SDM Vol. 2);
//! MONITOR/MWAIT are #UD where CPUID.1:ECX.MONITOR is clear.
//!
//! Each instruction is a leaf stub that returns 0 in RAX if it completed; an
//! exception it takes comes back as `ring3::FAULTED | vector` (at CPL 0 through
//! the hook's `MODE_KERNEL_PROBE`, at CPL 3 as the trip's trap vector).
//! Operands are harmless should one complete: the guest's own page, register
//! forms, ASID 0, and for VMRUN/VMLOAD/VMSAVE a physical address with no memory
//! behind it (they take host-physical addresses when not intercepted).

use crate::ring3::{self, Outcome, FAULTED};
use crate::Probes;
use core::fmt;
use core::sync::atomic::Ordering;
use oxen_guest_rt::trap;

/// Operand page for the instructions with a memory operand: zeroed, aligned.
#[repr(C, align(4096))]
struct Page([u8; 4096]);
#[unsafe(no_mangle)]
static mut HOSTILE_OPERAND_PAGE: Page = Page([0; 4096]);

/// Where VMRUN, VMLOAD and VMSAVE point: 60 GiB, above the RAM of every
/// machine the tests boot and within a 40-bit physical address width.
const NO_MEMORY: u64 = 0xf_0000_0000;

// One stub per instruction: set up operands, the instruction, RAX = 0, RET.
// Only RAX, RCX, RDX (caller-saved) are touched, and nothing is pushed (the
// hook relies on the return address being on top of the stack).
core::arch::global_asm!(
    ".pushsection .text.hostile_insns, \"ax\"",
    // VMX (SDM Vol. 3C chapter 31).
    ".global hostile_i_vmxon",
    "hostile_i_vmxon: lea rax, [rip + HOSTILE_OPERAND_PAGE]; vmxon qword ptr [rax]; xor eax, eax; ret",
    ".global hostile_i_vmxoff",
    "hostile_i_vmxoff: vmxoff; xor eax, eax; ret",
    ".global hostile_i_vmclear",
    "hostile_i_vmclear: lea rax, [rip + HOSTILE_OPERAND_PAGE]; vmclear qword ptr [rax]; xor eax, eax; ret",
    ".global hostile_i_vmptrld",
    "hostile_i_vmptrld: lea rax, [rip + HOSTILE_OPERAND_PAGE]; vmptrld qword ptr [rax]; xor eax, eax; ret",
    ".global hostile_i_vmptrst",
    "hostile_i_vmptrst: lea rax, [rip + HOSTILE_OPERAND_PAGE]; vmptrst qword ptr [rax]; xor eax, eax; ret",
    ".global hostile_i_vmlaunch",
    "hostile_i_vmlaunch: vmlaunch; xor eax, eax; ret",
    ".global hostile_i_vmresume",
    "hostile_i_vmresume: vmresume; xor eax, eax; ret",
    // Field 0x6c00: the host CR0.
    ".global hostile_i_vmread",
    "hostile_i_vmread: mov eax, 0x6c00; vmread rcx, rax; xor eax, eax; ret",
    ".global hostile_i_vmwrite",
    "hostile_i_vmwrite: mov eax, 0x6c00; xor ecx, ecx; vmwrite rax, rcx; xor eax, eax; ret",
    // Type 2: all contexts; the descriptor is the zeroed page.
    ".global hostile_i_invept",
    "hostile_i_invept: lea rax, [rip + HOSTILE_OPERAND_PAGE]; mov ecx, 2; invept rcx, xmmword ptr [rax]; xor eax, eax; ret",
    ".global hostile_i_invvpid",
    "hostile_i_invvpid: lea rax, [rip + HOSTILE_OPERAND_PAGE]; mov ecx, 2; invvpid rcx, xmmword ptr [rax]; xor eax, eax; ret",
    ".global hostile_i_vmfunc",
    "hostile_i_vmfunc: xor eax, eax; xor ecx, ecx; vmfunc; xor eax, eax; ret",
    ".global hostile_i_vmcall",
    "hostile_i_vmcall: xor eax, eax; vmcall; xor eax, eax; ret",
    // SVM (APM Vol. 3).
    ".global hostile_i_vmrun",
    "hostile_i_vmrun: mov rax, {no_memory}; vmrun rax; xor eax, eax; ret",
    ".global hostile_i_vmload",
    "hostile_i_vmload: mov rax, {no_memory}; vmload rax; xor eax, eax; ret",
    ".global hostile_i_vmsave",
    "hostile_i_vmsave: mov rax, {no_memory}; vmsave rax; xor eax, eax; ret",
    // CLGI before STGI: should CLGI ever complete, STGI undoes it.
    ".global hostile_i_clgi",
    "hostile_i_clgi: clgi; xor eax, eax; ret",
    ".global hostile_i_stgi",
    "hostile_i_stgi: stgi; xor eax, eax; ret",
    ".global hostile_i_skinit",
    "hostile_i_skinit: xor eax, eax; skinit eax; xor eax, eax; ret",
    ".global hostile_i_invlpga",
    "hostile_i_invlpga: lea rax, [rip + HOSTILE_OPERAND_PAGE]; xor ecx, ecx; invlpga rax, ecx; xor eax, eax; ret",
    ".global hostile_i_vmmcall",
    "hostile_i_vmmcall: xor eax, eax; vmmcall; xor eax, eax; ret",
    // Caches, monitor, counters, TPR.
    ".global hostile_i_invd",
    "hostile_i_invd: invd; xor eax, eax; ret",
    ".global hostile_i_wbinvd",
    "hostile_i_wbinvd: wbinvd; xor eax, eax; ret",
    ".global hostile_i_monitor",
    "hostile_i_monitor: lea rax, [rip + HOSTILE_OPERAND_PAGE]; xor ecx, ecx; xor edx, edx; monitor; xor eax, eax; ret",
    ".global hostile_i_mwait",
    "hostile_i_mwait: xor eax, eax; xor ecx, ecx; mwait; xor eax, eax; ret",
    ".global hostile_i_rdpmc",
    "hostile_i_rdpmc: xor ecx, ecx; rdpmc; xor eax, eax; ret",
    ".global hostile_i_mov_cr8",
    "hostile_i_mov_cr8: mov eax, 15; mov cr8, rax; xor eax, eax; ret",
    ".popsection",
    no_memory = const NO_MEMORY,
);

unsafe extern "C" {
    fn hostile_i_vmxon() -> u64;
    fn hostile_i_vmxoff() -> u64;
    fn hostile_i_vmclear() -> u64;
    fn hostile_i_vmptrld() -> u64;
    fn hostile_i_vmptrst() -> u64;
    fn hostile_i_vmlaunch() -> u64;
    fn hostile_i_vmresume() -> u64;
    fn hostile_i_vmread() -> u64;
    fn hostile_i_vmwrite() -> u64;
    fn hostile_i_invept() -> u64;
    fn hostile_i_invvpid() -> u64;
    fn hostile_i_vmfunc() -> u64;
    fn hostile_i_vmcall() -> u64;
    fn hostile_i_vmrun() -> u64;
    fn hostile_i_vmload() -> u64;
    fn hostile_i_vmsave() -> u64;
    fn hostile_i_clgi() -> u64;
    fn hostile_i_stgi() -> u64;
    fn hostile_i_skinit() -> u64;
    fn hostile_i_invlpga() -> u64;
    fn hostile_i_vmmcall() -> u64;
    fn hostile_i_invd() -> u64;
    fn hostile_i_wbinvd() -> u64;
    fn hostile_i_monitor() -> u64;
    fn hostile_i_mwait() -> u64;
    fn hostile_i_rdpmc() -> u64;
    fn hostile_i_mov_cr8() -> u64;
}

const UD: u64 = 6;
const GP: u64 = 13;
const DONE: u64 = 0;

/// What a stub gave back: 0 = completed, `FAULTED | v` = exception v.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Result(u64);

impl Result {
    fn exception(v: u64) -> Self {
        Self(FAULTED | v)
    }
}

impl fmt::Display for Result {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 & FAULTED != 0 {
            let v = self.0 & !FAULTED;
            write!(f, "exception {v} ({})", trap::vector_name(v))
        } else if self.0 == 0 {
            write!(f, "completed")
        } else {
            write!(f, "returned {:#x}", self.0)
        }
    }
}

type Stub = unsafe extern "C" fn() -> u64;

fn at_cpl0(stub: Stub) -> Result {
    ring3::prepared();
    ring3::MODE.store(ring3::MODE_KERNEL_PROBE, Ordering::SeqCst);
    // SAFETY: the stub is leaf code that only touches RAX/RCX/RDX and the
    // operand page; an exception it takes returns from it through the hook
    // (MODE_KERNEL_PROBE), so control always comes back here.
    let r = unsafe { stub() };
    ring3::MODE.store(ring3::MODE_NONE, Ordering::SeqCst);
    Result(r)
}

fn at_cpl3(stub: Stub) -> Result {
    match ring3::call(stub as *const () as u64) {
        Outcome::Returned(rax) => Result(rax),
        Outcome::Trapped(v) => Result::exception(v),
    }
}

/// Runs every probe of the table above, at both CPLs.
pub fn run(p: &mut Probes) {
    let amd = oxen_guest_rt::hypercall::uses_vmmcall();
    // The other vendor's hypercall instruction is #UD; ours is the hypercall.
    let (other, other_name): (Stub, &str) =
        if amd { (hostile_i_vmcall, "vmcall") } else { (hostile_i_vmmcall, "vmmcall") };
    let ud = Result::exception(UD);
    let gp = Result::exception(GP);
    let done = Result(DONE);
    let both: [(&str, Stub, Result, Result); 25] = [
        ("vmxon", hostile_i_vmxon, ud, ud),
        ("vmxoff", hostile_i_vmxoff, ud, ud),
        ("vmclear", hostile_i_vmclear, ud, ud),
        ("vmptrld", hostile_i_vmptrld, ud, ud),
        ("vmptrst", hostile_i_vmptrst, ud, ud),
        ("vmlaunch", hostile_i_vmlaunch, ud, ud),
        ("vmresume", hostile_i_vmresume, ud, ud),
        ("vmread", hostile_i_vmread, ud, ud),
        ("vmwrite", hostile_i_vmwrite, ud, ud),
        ("invept", hostile_i_invept, ud, ud),
        ("invvpid", hostile_i_invvpid, ud, ud),
        ("vmfunc", hostile_i_vmfunc, ud, ud),
        ("vmrun", hostile_i_vmrun, ud, ud),
        ("vmload", hostile_i_vmload, ud, ud),
        ("vmsave", hostile_i_vmsave, ud, ud),
        ("clgi", hostile_i_clgi, ud, ud),
        ("stgi", hostile_i_stgi, ud, ud),
        ("skinit", hostile_i_skinit, ud, ud),
        ("invlpga", hostile_i_invlpga, ud, ud),
        (other_name, other, ud, ud),
        ("invd", hostile_i_invd, done, gp),
        ("wbinvd", hostile_i_wbinvd, done, gp),
        ("monitor", hostile_i_monitor, ud, ud),
        ("mwait", hostile_i_mwait, ud, ud),
        ("rdpmc", hostile_i_rdpmc, gp, gp),
    ];
    // RDPMC at CPL 3 is #GP only with CR4.PCE clear (SDM Vol. 2B RDPMC).
    clear_cr4_pce();
    for (name, stub, cpl0, _) in both {
        let got = at_cpl0(stub);
        p.report(name, format_args!("at CPL 0: {got}"), format_args!("{cpl0}"), got == cpl0);
    }
    for (name, stub, _, cpl3) in both {
        let got = at_cpl3(stub);
        p.report(name, format_args!("at CPL 3: {got}"), format_args!("{cpl3}"), got == cpl3);
    }
    let got = at_cpl3(hostile_i_mov_cr8);
    p.report("mov to cr8", format_args!("at CPL 3: {got}"), format_args!("{gp}"), got == gp);
}

fn clear_cr4_pce() {
    const PCE: u64 = 1 << 8;
    // SAFETY: the guest runs at CPL 0; clearing CR4.PCE only makes RDPMC
    // privileged, which nothing here relies on.
    unsafe {
        core::arch::asm!("mov {0}, cr4", "and {0}, {1}", "mov cr4, {0}", out(reg) _, in(reg) !PCE,
            options(nostack, preserves_flags))
    };
}
