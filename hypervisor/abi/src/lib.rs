//! Oxen's hypercall ABI, shared by the hypervisor and the dom0 tools
//! (docs/hypercalls.md is the prose version of this file).
//!
//! Convention: `VMCALL` on Intel, `VMMCALL` on AMD, from guest CPL 0. The call
//! number is in RAX, arguments in RDI, RSI, RDX, R10, R8; the result comes back in
//! RAX: zero or a positive value on success, a negated errno on failure.
#![no_std]

/// ABI version: major in bits 31:16, minor in 15:0. A caller checks the major
/// before anything else; minors only add calls.
pub const ABI_VERSION: u32 = 0x0001_0000;

pub const fn abi_major(v: u32) -> u16 {
    (v >> 16) as u16
}

/// CPUID leaves the hypervisor answers (signature in EBX, ECX, EDX of 0x40000000).
pub const CPUID_SIGNATURE_LEAF: u32 = 0x4000_0000;
pub const CPUID_VERSION_LEAF: u32 = 0x4000_0001;
pub const CPUID_MAX_LEAF: u32 = CPUID_VERSION_LEAF;
pub const CPUID_SIGNATURE: &[u8; 12] = b"OxenOxenOxen";

/// Hypercall numbers.
pub mod nr {
    /// Returns `ABI_VERSION`. Takes no arguments; allowed for every domain.
    pub const VERSION: u64 = 0;
    /// Does nothing and returns 0: the cost of a round trip.
    pub const NULL: u64 = 1;
}

/// Errors, as negated values in RAX (Linux errno numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i64)]
pub enum Error {
    /// Not allowed for this caller (e.g. called from CPL > 0).
    Perm = 1,
    /// A guest address was outside the caller's memory.
    Fault = 14,
    /// An argument was malformed.
    Inval = 22,
    /// No such hypercall.
    NoSys = 38,
}

impl Error {
    /// The value placed in RAX.
    pub const fn to_rax(self) -> u64 {
        (-(self as i64)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_negated_errno() {
        assert_eq!(Error::NoSys.to_rax() as i64, -38);
        assert_eq!(Error::Perm.to_rax(), u64::MAX);
        assert_eq!(abi_major(ABI_VERSION), 1);
    }
}
