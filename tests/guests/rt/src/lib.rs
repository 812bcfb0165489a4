//! Runtime of Oxen's own test guests (`tests/guests/`): the entry point the
//! domU boot state jumps to, hypercall wrappers, a line-buffered console with
//! `print!`/`println!`, an IDT that reports exceptions, TSC time at the rate
//! the KVM clock publishes (else measured against `BLOCK`), command-line
//! options, and the tick/spin loops guests end in.
//!
//! A guest is a `no_std` binary that names itself and its main function:
//!
//! ```ignore
//! oxen_guest_rt::entry!("minimal", guest_main);
//! fn guest_main(info: &'static oxen_abi::StartInfo) -> ! { ... }
//! ```
//!
//! Before `guest_main` runs, `.bss` is clear, the IDT is loaded and the
//! `StartInfo` checked (magic, ABI major); a panic prints `<name>: panic: ...`
//! and shuts the domain down with `ShutdownReason::Crash`.
//!
//! Everything here also compiles for the host, so the workspace's clippy checks
//! it and the pure parts are unit-tested; only `_start` and the panic handler
//! are for `target_os = "none"` alone.
#![cfg_attr(not(test), no_std)]

pub mod cmdline;
pub mod console;
pub mod cpu;
pub mod hypercall;
pub mod ticker;
pub mod time;
pub mod trap;

pub use oxen_abi::StartInfo;

use core::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use oxen_abi::{abi_major, ShutdownReason, ABI_VERSION, START_INFO_MAGIC};

// The domU boot state (docs/hypercalls.md): 64-bit mode, RDI = StartInfo, RSP =
// a 16-byte aligned stack with nothing pushed. Clear .bss (the builder zeroes
// it already; this keeps a reused image honest), then call the guest's
// `oxen_guest_entry` (made by `entry!`) with the StartInfo address.
#[cfg(target_os = "none")]
core::arch::global_asm!(
    ".pushsection .text._start, \"ax\"",
    ".global _start",
    "_start:",
    "cld",
    "mov r12, rdi",
    "lea rdi, [rip + __guest_bss_start]",
    "lea rcx, [rip + __guest_bss_end]",
    "sub rcx, rdi",
    "xor eax, eax",
    "rep stosb",
    "mov rdi, r12",
    "and rsp, -16",
    "xor ebp, ebp",
    "call oxen_guest_entry",
    "ud2",
    ".popsection",
);

/// Names the guest and its main function, and makes the entry `_start` calls.
#[macro_export]
macro_rules! entry {
    ($name:literal, $main:path) => {
        #[unsafe(no_mangle)]
        extern "C" fn oxen_guest_entry(start_info: u64) -> ! {
            $crate::run($name, start_info, $main)
        }
    };
}

static NAME_PTR: AtomicPtr<u8> = AtomicPtr::new(core::ptr::null_mut());
static NAME_LEN: AtomicUsize = AtomicUsize::new(0);
static START_INFO: AtomicPtr<StartInfo> = AtomicPtr::new(core::ptr::null_mut());

/// The guest's name, as given to `entry!` ("guest" before that).
pub fn name() -> &'static str {
    let p = NAME_PTR.load(Ordering::Relaxed);
    if p.is_null() {
        return "guest";
    }
    // SAFETY: `run` stored the pointer and length of a `&'static str`.
    unsafe { core::str::from_utf8_unchecked(core::slice::from_raw_parts(p, NAME_LEN.load(Ordering::Relaxed))) }
}

/// The `StartInfo` the hypervisor passed (checked by `run`).
///
/// # Panics
/// Before `run` has checked it.
pub fn start_info() -> &'static StartInfo {
    let p = START_INFO.load(Ordering::Relaxed);
    assert!(!p.is_null(), "start_info() before the runtime checked it");
    // SAFETY: `run` stored it after checking it is aligned and has the magic;
    // it is in the boot area, the guest's own RAM, which the guests never reuse.
    unsafe { &*p }
}

/// The command line (up to its first NUL, and to the first invalid UTF-8 byte).
pub fn cmdline() -> &'static str {
    let raw = &start_info().cmdline;
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    match core::str::from_utf8(&raw[..end]) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&raw[..e.valid_up_to()]).unwrap_or(""),
    }
}

/// Ends the domain as crashed (after printing why).
pub fn crash(why: core::fmt::Arguments<'_>) -> ! {
    println!("{}: {why}", name());
    hypercall::shutdown(ShutdownReason::Crash)
}

/// What `entry!`'s function does: set up, check the StartInfo, run `main`.
pub fn run(name: &'static str, info_addr: u64, main: fn(&'static StartInfo) -> !) -> ! {
    NAME_PTR.store(name.as_ptr().cast_mut(), Ordering::Relaxed);
    NAME_LEN.store(name.len(), Ordering::Relaxed);
    trap::install();
    let p = info_addr as *mut StartInfo;
    if p.is_null() || !p.is_aligned() {
        crash(format_args!("bad StartInfo address {info_addr:#x} in RDI"));
    }
    // SAFETY: the boot state puts a StartInfo at RDI, in RAM the identity map
    // covers; null and misalignment were refused above, and the magic is checked
    // before anything else is believed.
    let magic = unsafe { core::ptr::addr_of!((*p).magic).read() };
    if magic != START_INFO_MAGIC {
        crash(format_args!("no StartInfo at {info_addr:#x} (magic {magic:#x})"));
    }
    START_INFO.store(p, Ordering::Relaxed);
    let version = hypercall::version();
    if version >> 16 != u64::from(abi_major(ABI_VERSION)) {
        crash(format_args!("hypervisor ABI {} is not major {}", hypercall::Rax(version), abi_major(ABI_VERSION)));
    }
    main(start_info())
}

#[cfg(all(target_os = "none", not(test)))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    crash(format_args!("panic: {info}"))
}
