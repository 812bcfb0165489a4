//! Hypercalls (docs/hypercalls.md): VMCALL on Intel, VMMCALL on AMD, chosen
//! once from the CPUID vendor string. Number in RAX, arguments in RDI, RSI,
//! RDX, R10, R8, result in RAX (negative: -errno).

use core::arch::asm;
use core::sync::atomic::{AtomicU8, Ordering};
use oxen_abi::{nr, request, sched_op, ShutdownReason, CONSOLE_READ_MAX, CONSOLE_WRITE_MAX};

const UNKNOWN: u8 = 0;
const INTEL: u8 = 1;
const AMD: u8 = 2;
static VENDOR: AtomicU8 = AtomicU8::new(UNKNOWN);

/// Whether hypercalls use VMMCALL (AMD and Hygon) rather than VMCALL.
pub fn uses_vmmcall() -> bool {
    let v = match VENDOR.load(Ordering::Relaxed) {
        UNKNOWN => {
            let v = match &crate::cpu::vendor() {
                b"AuthenticAMD" | b"HygonGenuine" => AMD,
                _ => INTEL,
            };
            VENDOR.store(v, Ordering::Relaxed);
            v
        }
        v => v,
    };
    v == AMD
}

/// Makes hypercall `number` with `args` (RDI, RSI, RDX, R10, R8) and returns RAX.
///
/// # Safety
/// The hypervisor reads and writes the guest memory the arguments point at as
/// the call defines: whatever of the caller's memory they name must be valid for
/// that. (Addresses outside the guest's RAM are the hypervisor's to refuse.)
pub unsafe fn call(number: u64, args: [u64; 5]) -> u64 {
    let rax: u64;
    // The ABI preserves every register but RAX; the argument registers are still
    // marked clobbered, so a hypervisor that broke that rule would not break us.
    if uses_vmmcall() {
        // SAFETY: VMMCALL exits to the hypervisor, which returns to the next
        // instruction; memory effects are the caller's contract above.
        unsafe {
            asm!("vmmcall", inlateout("rax") number => rax, inlateout("rdi") args[0] => _,
                inlateout("rsi") args[1] => _, inlateout("rdx") args[2] => _, inlateout("r10") args[3] => _,
                inlateout("r8") args[4] => _, options(nostack))
        };
    } else {
        // SAFETY: as above, with VMCALL.
        unsafe {
            asm!("vmcall", inlateout("rax") number => rax, inlateout("rdi") args[0] => _,
                inlateout("rsi") args[1] => _, inlateout("rdx") args[2] => _, inlateout("r10") args[3] => _,
                inlateout("r8") args[4] => _, options(nostack))
        };
    }
    rax
}

/// A call that takes no pointer arguments.
fn simple(number: u64, a0: u64, a1: u64) -> u64 {
    // SAFETY: VERSION, NULL, DOMAIN_ID, CONTROL_REQUEST and SCHED_OP take no
    // guest addresses.
    unsafe { call(number, [a0, a1, 0, 0, 0]) }
}

/// RAX as a signed result: `Err(errno)` for -4095..=-1.
pub fn result(rax: u64) -> Result<u64, i64> {
    match rax as i64 {
        e @ -4095..=-1 => Err(-e),
        _ => Ok(rax),
    }
}

pub fn version() -> u64 {
    simple(nr::VERSION, 0, 0)
}

pub fn null() -> u64 {
    simple(nr::NULL, 0, 0)
}

/// The caller's domain ID (RAX as returned: an errno if the call failed).
pub fn domain_id() -> u64 {
    simple(nr::DOMAIN_ID, 0, 0)
}

/// The pending control request (`request::*`; `NONE` when none).
pub fn control_request() -> u64 {
    simple(nr::CONTROL_REQUEST, 0, 0)
}

/// Sleeps until `ns` nanoseconds passed (0: until woken), a control request
/// arrives or console input is queued.
pub fn block(ns: u64) -> u64 {
    simple(nr::SCHED_OP, sched_op::BLOCK, ns)
}

pub fn yield_now() -> u64 {
    simple(nr::SCHED_OP, sched_op::YIELD, 0)
}

/// Ends the domain. If the hypervisor returns instead, that is a bug worth
/// seeing: it is reported and the guest triple-faults, which ends it too.
pub fn shutdown(reason: ShutdownReason) -> ! {
    let rax = simple(nr::SCHED_OP, sched_op::SHUTDOWN, reason as u64);
    crate::println!("{}: SHUTDOWN({reason:?}) returned {}", crate::name(), Rax(rax));
    crate::trap::triple_fault()
}

/// Writes `bytes` to the domain's console, in calls of at most
/// `CONSOLE_WRITE_MAX`. Stops early if the hypervisor refuses.
pub fn console_write(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let n = bytes.len().min(CONSOLE_WRITE_MAX as usize);
        // SAFETY: `bytes[..n]` is ours and readable; the hypervisor only reads it.
        let r = unsafe { call(nr::CONSOLE_WRITE, [bytes.as_ptr() as u64, n as u64, 0, 0, 0]) };
        match result(r) {
            Ok(taken) if taken > 0 && taken <= n as u64 => bytes = &bytes[taken as usize..],
            _ => return,
        }
    }
}

/// Takes up to `buf.len()` bytes (at most `CONSOLE_READ_MAX`) of the domain's
/// console input into `buf`; never waits (`Ok(0)`: nothing queued; `block`
/// wakes when input comes). ABI 1.3.
pub fn console_read(buf: &mut [u8]) -> Result<usize, i64> {
    let n = buf.len().min(CONSOLE_READ_MAX as usize);
    // SAFETY: `buf[..n]` is ours and writable; the hypervisor writes at most
    // `n` bytes into it.
    let r = unsafe { call(nr::CONSOLE_READ, [buf.as_mut_ptr() as u64, n as u64, 0, 0, 0]) };
    result(r).map(|got| (got as usize).min(n))
}

/// The short name of a (positive) Linux errno the ABI uses.
pub fn errno_name(errno: i64) -> &'static str {
    match errno {
        1 => "EPERM",
        2 => "ENOENT",
        7 => "E2BIG",
        8 => "ENOEXEC",
        12 => "ENOMEM",
        14 => "EFAULT",
        16 => "EBUSY",
        17 => "EEXIST",
        22 => "EINVAL",
        28 => "ENOSPC",
        38 => "ENOSYS",
        _ => "errno",
    }
}

/// Displays a hypercall's RAX: `-14 EFAULT` for errors, the number otherwise.
#[derive(Clone, Copy)]
pub struct Rax(pub u64);

impl core::fmt::Display for Rax {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match result(self.0) {
            Err(e) => write!(f, "-{e} {}", errno_name(e)),
            Ok(v) if v < 0x1_0000 => write!(f, "{v}"),
            Ok(v) => write!(f, "{v:#x}"),
        }
    }
}

/// The name of a control request, for messages.
pub fn request_name(r: u64) -> &'static str {
    match r {
        request::NONE => "none",
        request::POWEROFF => "power-off",
        request::REBOOT => "reboot",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_and_their_display() {
        assert_eq!(result(0), Ok(0));
        assert_eq!(result(-14i64 as u64), Err(14));
        assert_eq!(result(-4096i64 as u64), Ok(-4096i64 as u64));
        assert_eq!(format!("{}", Rax(-22i64 as u64)), "-22 EINVAL");
        assert_eq!(format!("{}", Rax(0x1_0001)), "0x10001");
        assert_eq!(format!("{}", Rax(3)), "3");
        assert_eq!(format!("{}", Rax(u64::MAX)), "-1 EPERM");
    }
}
