//! The self-test guest programs, assembled into the hypervisor image and copied
//! into each test guest's memory at `LOAD_GPA`. They report to the hypervisor
//! through two ports: bytes to the debug console (0xE9) and 32-bit values to the
//! report port (`REPORT_PORT`), which the runner checks.
//!
//! Every blob is position independent (RIP-relative data in 64-bit code,
//! offsets from CS base in real mode), so it runs wherever it is loaded.

use core::arch::global_asm;

/// Guest-physical load address of every blob.
pub const LOAD_GPA: u64 = 0x1000;
/// 32-bit OUTs to this port append a value to the guest's report.
pub const REPORT_PORT: u16 = 0xf0;
/// Guest-physical address the long-mode guest reads to leave its memory.
pub const OUTSIDE_GPA: u64 = 0x10_0000;
/// Iterations of the null-hypercall benchmark loop.
pub const BENCH_ITERATIONS: u32 = 10_000;

/// Values the guests report, checked by the runner.
pub const REAL_MODE_MAGIC: u32 = 0x5245_414c; // "REAL"
pub const LONG_MODE_MAGIC: u32 = 0x1122_3344; // upper half of a 64-bit immediate
pub const HLT_RESUMED_MAGIC: u32 = 0x484c_5421; // "HLT!"
pub const TRIPLE_MAGIC: u32 = 0x5452_4950; // "TRIP"
/// Unknown hypercall number the long-mode guest tries.
pub const BOGUS_HYPERCALL: u32 = 0xdead;

global_asm!(
    r#"
    .pushsection .rodata.selftest_guests, "a"

    /* Real mode, entered at CS:0 with CS base = LOAD_GPA. */
    .code16
    .global guest_real_start, guest_real_end
guest_real_start:
    mov %cs, %ax
    mov %ax, %ds
    mov %cr0, %eax
    out %eax, ${report}               /* 1: CR0, PE must be clear */
    mov $(guest_real_msg - guest_real_start), %si
1:  lodsb
    test %al, %al
    jz 2f
    out %al, $0xe9
    jmp 1b
2:  mov ${real_magic}, %eax
    out %eax, ${report}               /* 2: REAL */
    hlt
guest_real_msg:
    .asciz "hello from real mode\n"
guest_real_end:

    /* 64-bit long mode with paging; RSP set by the runner. */
    .code64
    .global guest_long_start, guest_long_end, guest_long_triple, guest_long_bench
guest_long_start:
    movabs $0x1122334455667788, %rax
    shr $32, %rax
    out %eax, ${report}               /* 0: long-mode magic */
    mov %cr0, %rax
    out %eax, ${report}               /* 1: CR0 */
    mov $0x40000000, %eax
    xor %ecx, %ecx
    cpuid
    out %eax, ${report}               /* 2: max hypervisor leaf */
    mov %ebx, %eax
    out %eax, ${report}               /* 3-5: signature */
    mov %ecx, %eax
    out %eax, ${report}
    mov %edx, %eax
    out %eax, ${report}
    mov $1, %eax
    cpuid
    mov %ecx, %eax
    out %eax, ${report}               /* 6: CPUID.1:ECX */
    lea guest_long_msg(%rip), %rsi
1:  lodsb
    test %al, %al
    jz 2f
    out %al, $0xe9
    jmp 1b
2:  xor %eax, %eax
    in $0xe9, %al
    out %eax, ${report}               /* 7: debug-port readback (0xe9) */
    call vendor_is_amd
    mov %eax, %r12d
    mov ${hc_version}, %eax
    call hypercall
    out %eax, ${report}               /* 8: ABI version */
    mov ${bogus}, %eax
    call hypercall
    out %eax, ${report}               /* 9: -ENOSYS */
    hlt
    mov ${hlt_magic}, %eax
    out %eax, ${report}               /* 10: resumed after HLT */
    mov ${outside}, %rbx
    mov (%rbx), %rax                  /* leaves guest memory: the guest dies here */
    mov $0xbad, %eax
    out %eax, ${report}
    hlt

    /* Triple fault: no IDT (limit 0), so #UD escalates to shutdown. */
guest_long_triple:
    mov ${triple_magic}, %eax
    out %eax, ${report}
    ud2

    /* Null-hypercall round trips, timed with RDTSC. */
guest_long_bench:
    call vendor_is_amd
    mov %eax, %r12d
    mov ${iterations}, %r13d
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    mov %rdx, %r14
3:  mov ${hc_null}, %eax
    call hypercall
    dec %r13d
    jnz 3b
    rdtsc
    shl $32, %rdx
    or %rax, %rdx
    sub %r14, %rdx
    mov ${iterations}, %eax
    out %eax, ${report}               /* 0: iterations */
    mov %edx, %eax
    out %eax, ${report}               /* 1: TSC delta, low */
    shr $32, %rdx
    mov %edx, %eax
    out %eax, ${report}               /* 2: TSC delta, high */
    hlt

    /* EAX = 1 on AMD (VMMCALL), 0 on Intel (VMCALL). */
vendor_is_amd:
    push %rbx
    xor %eax, %eax
    cpuid
    xor %eax, %eax
    cmp $0x68747541, %ebx             /* "Auth" */
    sete %al
    cmp $0x6f677948, %ebx             /* "Hygo" */
    sete %cl
    or %cl, %al
    pop %rbx
    ret

    /* Hypercall with the number in EAX; R12D selects the instruction. */
hypercall:
    test %r12d, %r12d
    jnz 4f
    vmcall
    ret
4:  vmmcall
    ret

guest_long_msg:
    .asciz "hello from long mode\n"
guest_long_end:
    .popsection
    "#,
    report = const REPORT_PORT,
    real_magic = const REAL_MODE_MAGIC,
    hlt_magic = const HLT_RESUMED_MAGIC,
    triple_magic = const TRIPLE_MAGIC,
    bogus = const BOGUS_HYPERCALL,
    outside = const OUTSIDE_GPA,
    iterations = const BENCH_ITERATIONS,
    hc_version = const oxen_abi::nr::VERSION,
    hc_null = const oxen_abi::nr::NULL,
    options(att_syntax)
);

extern "C" {
    static guest_real_start: u8;
    static guest_real_end: u8;
    static guest_long_start: u8;
    static guest_long_end: u8;
    static guest_long_triple: u8;
    static guest_long_bench: u8;
}

/// A guest program: its bytes and the entry offsets into them.
pub struct Blob {
    pub bytes: &'static [u8],
}

fn blob(start: &'static u8, end: &'static u8) -> Blob {
    let (s, e) = (start as *const u8, end as *const u8);
    // SAFETY: both symbols delimit one blob in .rodata, start before end.
    Blob { bytes: unsafe { core::slice::from_raw_parts(s, e as usize - s as usize) } }
}

pub fn real_mode() -> Blob {
    // SAFETY: symbols defined in the global_asm above.
    unsafe { blob(&guest_real_start, &guest_real_end) }
}

pub fn long_mode() -> Blob {
    // SAFETY: as above.
    unsafe { blob(&guest_long_start, &guest_long_end) }
}

/// Entry offsets within `long_mode()`.
pub fn long_mode_entries() -> (u64, u64, u64) {
    let base = long_mode().bytes.as_ptr() as u64;
    // SAFETY: only the symbols' addresses are taken.
    unsafe {
        (
            0,
            &guest_long_triple as *const u8 as u64 - base,
            &guest_long_bench as *const u8 as u64 - base,
        )
    }
}
