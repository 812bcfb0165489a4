//! Hypercalls (docs/hypercalls.md): decoding, privilege checks and argument
//! copying, in one place and pure, so every rule is tested on the host.
//!
//! `exit::hypercall` reads the registers of a VMCALL/VMMCALL exit and refuses
//! callers at CPL > 0; `dispatch` then checks who may make the call, copies each
//! argument structure in exactly once from the caller's own RAM (`GuestRam`),
//! validates it (`domctl::decode`) and only then asks `Services` (the domain
//! table and the consoles on the target, a fake in tests) to act. Results and
//! output structures are copied back the same way.
//!
//! - `domctl.rs`: the domain-control commands' argument decoding.

pub mod domctl;

use alloc::vec::Vec;
use core::fmt;
use oxen_abi::{
    nr, sched_op, Error, ShutdownReason, ABI_VERSION, CONSOLE_READ_MAX, CONSOLE_WRITE_MAX, DOMCTL_ARG_MAX, DOMCTL_BUF_MAX,
    DOMCTL_BUFFER_IN_ONLY,
};

pub use domctl::Command;

/// The registers of one call: number, then RDI, RSI, RDX, R10, R8.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Args {
    pub nr: u64,
    pub a: [u64; 5],
}

/// What the calling vCPU does after the call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    Continue,
    /// Give up the rest of the time slice.
    Yield,
    /// Sleep until `timeout_ns` passed (0: no timeout), a request arrives or
    /// new console input does.
    Block { timeout_ns: u64 },
    /// The domain ends itself.
    Shutdown(ShutdownReason),
}

/// The caller's RAM, as the hypervisor may access it: only the domain's own
/// memory (for dom0, its RAM, not device MMIO). Accesses outside it fail.
pub trait GuestRam {
    fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), Error>;
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), Error>;
}

/// What the hypervisor does for a call once it is validated.
pub trait Services {
    /// Appends to the caller's console.
    fn console_write(&mut self, domid: u32, bytes: &[u8]);
    /// Takes up to `out.len()` bytes of the caller's console input; returns
    /// how many (0: none queued).
    fn console_read(&mut self, domid: u32, out: &mut [u8]) -> usize;
    /// The control request pending for `domid` (`oxen_abi::request`).
    fn control_request(&self, domid: u32) -> u64;
    /// Carries out a validated domain-control command for dom0; output goes
    /// into `cmd`'s out fields and `buf`. Returns RAX.
    fn domctl(&mut self, cmd: &mut Command, buf: &mut [u8]) -> Result<u64, Error>;
    /// Logs a refused call (rate limited by the implementation).
    fn refused(&mut self, domid: u32, what: fmt::Arguments);
    /// dom0's events: takes the pending bits (lowering its event line) and
    /// notes which it wants from now on (`nr::EVENTS`).
    fn take_events(&mut self, want: u64) -> u64;
}

/// Who is calling.
pub struct Caller<'a> {
    pub domid: u32,
    /// May use `DOMCTL` (dom0).
    pub privileged: bool,
    pub ram: &'a mut dyn GuestRam,
}

/// Handles one call from CPL 0. Returns RAX's value and what the vCPU does next.
pub fn dispatch(caller: &mut Caller, svc: &mut dyn Services, args: &Args) -> (Result<u64, Error>, After) {
    let [a0, a1, a2, a3, a4] = args.a;
    let mut after = After::Continue;
    let result = match args.nr {
        nr::VERSION => Ok(ABI_VERSION.into()),
        nr::NULL => Ok(0),
        nr::DOMAIN_ID => Ok(caller.domid.into()),
        nr::CONSOLE_WRITE => console_write(caller, svc, a0, a1),
        nr::CONTROL_REQUEST => Ok(svc.control_request(caller.domid)),
        nr::CONSOLE_READ => console_read(caller, svc, a0, a1),
        nr::EVENTS if !caller.privileged => {
            svc.refused(caller.domid, format_args!("events: dom0 only"));
            Err(Error::Perm)
        }
        nr::EVENTS if a0 & !oxen_abi::event::ALL != 0 => {
            svc.refused(caller.domid, format_args!("events: unknown bits {:#x}", a0 & !oxen_abi::event::ALL));
            Err(Error::Inval)
        }
        nr::EVENTS => Ok(svc.take_events(a0)),
        nr::SCHED_OP => match (a0, caller.privileged) {
            (sched_op::YIELD, _) => {
                after = After::Yield;
                Ok(0)
            }
            (sched_op::BLOCK, _) => {
                after = After::Block { timeout_ns: a1 };
                Ok(0)
            }
            (sched_op::SHUTDOWN, true) => {
                svc.refused(caller.domid, format_args!("sched_op shutdown from dom0 (the host cannot power off this way)"));
                Err(Error::Perm)
            }
            (sched_op::SHUTDOWN, false) => match ShutdownReason::from_u64(a1) {
                Some(r) => {
                    after = After::Shutdown(r);
                    Ok(0)
                }
                None => {
                    svc.refused(caller.domid, format_args!("sched_op shutdown: bad reason {a1}"));
                    Err(Error::Inval)
                }
            },
            (op, _) => {
                svc.refused(caller.domid, format_args!("sched_op: no operation {op}"));
                Err(Error::Inval)
            }
        },
        nr::DOMCTL if !caller.privileged => {
            svc.refused(caller.domid, format_args!("domctl {a0}: only dom0 may control domains"));
            Err(Error::Perm)
        }
        nr::DOMCTL => domctl_call(caller, svc, a0, (a1, a2), (a3, a4)),
        other => {
            svc.refused(caller.domid, format_args!("no hypercall {other:#x}"));
            Err(Error::NoSys)
        }
    };
    (result, after)
}

fn console_write(caller: &mut Caller, svc: &mut dyn Services, gpa: u64, len: u64) -> Result<u64, Error> {
    if len > CONSOLE_WRITE_MAX {
        svc.refused(caller.domid, format_args!("console_write: length {len:#x} over {CONSOLE_WRITE_MAX}"));
        return Err(Error::TooBig);
    }
    // On the stack: a guest's console output never needs the heap.
    let mut copy = [0u8; CONSOLE_WRITE_MAX as usize];
    let bytes = &mut copy[..len as usize];
    if let Err(e) = caller.ram.read(gpa, bytes) {
        svc.refused(caller.domid, format_args!("console_write: {gpa:#x}+{len:#x} is not the caller's memory"));
        return Err(e);
    }
    svc.console_write(caller.domid, bytes);
    Ok(len)
}

fn console_read(caller: &mut Caller, svc: &mut dyn Services, gpa: u64, len: u64) -> Result<u64, Error> {
    if caller.privileged {
        svc.refused(caller.domid, format_args!("console_read from dom0 (its console input is its UART)"));
        return Err(Error::Perm);
    }
    if len > CONSOLE_READ_MAX {
        svc.refused(caller.domid, format_args!("console_read: length {len:#x} over {CONSOLE_READ_MAX}"));
        return Err(Error::TooBig);
    }
    let mut copy = [0u8; CONSOLE_READ_MAX as usize];
    let bytes = &mut copy[..len as usize];
    // Probed before a byte is taken: input taken for a buffer that cannot
    // receive it would be lost. The buffer is output, so zeroing it is fine.
    if let Err(e) = caller.ram.write(gpa, bytes) {
        svc.refused(caller.domid, format_args!("console_read: {gpa:#x}+{len:#x} is not the caller's memory"));
        return Err(e);
    }
    let n = svc.console_read(caller.domid, bytes);
    caller.ram.write(gpa, &bytes[..n])?;
    Ok(n as u64)
}

/// `len` zero bytes on the heap, or -ENOMEM: a full heap fails the call,
/// never the host.
fn zeroed(len: u64) -> Result<Vec<u8>, Error> {
    let mut v = Vec::new();
    v.try_reserve_exact(len as usize).map_err(|_| Error::NoMem)?;
    v.resize(len as usize, 0);
    Ok(v)
}

/// Copies `len` bytes at `gpa` in, with the length already bounded.
fn copy_in(caller: &Caller, gpa: u64, len: u64) -> Result<Vec<u8>, Error> {
    let mut v = zeroed(len)?;
    if len > 0 {
        caller.ram.read(gpa, &mut v)?;
    }
    Ok(v)
}

fn domctl_call(
    caller: &mut Caller,
    svc: &mut dyn Services,
    cmd: u64,
    (arg_gpa, arg_len): (u64, u64),
    (buf_gpa, buf_len): (u64, u64),
) -> Result<u64, Error> {
    let id = caller.domid;
    if arg_len > DOMCTL_ARG_MAX || buf_len > DOMCTL_BUF_MAX {
        svc.refused(id, format_args!("domctl {cmd}: argument {arg_len:#x} or buffer {buf_len:#x} bytes too long"));
        return Err(Error::TooBig);
    }
    let arg = copy_in(caller, arg_gpa, arg_len).inspect_err(|_| {
        svc.refused(id, format_args!("domctl {cmd}: argument at {arg_gpa:#x}+{arg_len:#x} is not dom0's memory"))
    })?;
    let mut command = domctl::decode(cmd, &arg, buf_len).inspect_err(|e| {
        svc.refused(id, format_args!("domctl {cmd}: {}", e.why));
    }).map_err(|e| e.error)?;
    // A few commands read the buffer (`DOMCTL_BUFFER_IN_ONLY`, the list
    // /dev/oxen follows too); the others fill it.
    let reads_buffer = DOMCTL_BUFFER_IN_ONLY.contains(&cmd);
    let mut buf = if reads_buffer {
        copy_in(caller, buf_gpa, buf_len)
    } else {
        zeroed(buf_len)
    }
    .inspect_err(|_| svc.refused(id, format_args!("domctl {cmd}: buffer at {buf_gpa:#x}+{buf_len:#x} is not dom0's memory")))?;
    // A buffer to be written must be writable before anything is done.
    if !reads_buffer && buf_len > 0 {
        caller.ram.write(buf_gpa, &buf)?;
    }
    let result = svc.domctl(&mut command, &mut buf)?;
    if let Some(out) = command.output_arg() {
        caller.ram.write(arg_gpa, out)?;
    }
    if command.writes_buffer() && buf_len > 0 {
        caller.ram.write(buf_gpa, &buf)?;
    }
    Ok(result)
}

#[cfg(test)]
mod tests;
