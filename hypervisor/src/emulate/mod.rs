//! Instruction emulation for guest MMIO, as pure code.
//!
//! AMD-V without decode assists (QEMU TCG) reports a nested page fault on an
//! emulated MMIO page with nothing but the guest-physical address. To complete
//! the access the hypervisor fetches the faulting instruction itself and decodes
//! it:
//! - `walk`: guest-linear to guest-physical through the guest's own page tables
//!   (paging off, 32-bit, PAE, 4- and 5-level long mode), and page-crossing reads;
//! - `decode`: a small decoder for exactly the MOV-family forms used on device
//!   registers (MOV, MOVZX/MOVSX, MOV moffs, XCHG) in 16-, 32- and 64-bit code;
//! - `mmio`: fetch, decode, perform the access on an `MmioDevice`, write the
//!   register back and advance RIP.
//!
//! Guest memory is reached only through `GuestPhysRead`, so everything here is
//! tested on the host over a byte vector.

pub mod decode;
pub mod mmio;
pub mod walk;

#[cfg(test)]
mod iced_diff;

pub use decode::{
    decode, is_svm_instruction, CodeSize, DecodeError, Extend, Gpr, MemOperand, MmioAccess, MmioInsn, RegOperand, Segment, Source,
};
pub use mmio::{emulate_mmio, fetch, fetch_and_decode, CpuState, EmulateError};
pub use walk::{read_linear, translate, PagingMode, PagingState, WalkError};

use crate::mem::GuestPhysAddr;

/// The guest has no memory at this guest-physical address (or the range runs
/// past the end of what it has).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unbacked(pub GuestPhysAddr);

/// Read access to one guest's physical memory.
pub trait GuestPhysRead {
    /// Fills `buf` from guest-physical `gpa` onwards; all or nothing.
    fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result<(), Unbacked>;
}

/// The hypervisor's own view: guest RAM through `GuestMemory`, and host RAM
/// identity mapped. Only on the target: on the host the addresses mean nothing.
#[cfg(target_os = "none")]
impl GuestPhysRead for crate::virt::GuestMemory {
    fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result<(), Unbacked> {
        let mut done = 0;
        while done < buf.len() {
            let at = gpa.checked_add(done as u64).ok_or(Unbacked(gpa))?;
            let (hpa, left) = self.translate(at).ok_or(Unbacked(at))?;
            let n = core::cmp::min(left, (buf.len() - done) as u64) as usize;
            let src = hpa.as_ptr::<u8>();
            for (i, b) in buf[done..done + n].iter_mut().enumerate() {
                // SAFETY: `translate` vouches that `n` bytes from `hpa` belong to
                // this guest's RAM, which the hypervisor maps identity. Volatile:
                // other vCPUs may write it concurrently.
                *b = unsafe { core::ptr::read_volatile(src.add(i)) };
            }
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod testmem {
    use super::{GuestPhysRead, Unbacked};

    /// A fixed-seed xorshift64 generator for the fuzz-style tests: the same
    /// inputs every run.
    pub fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }
    use crate::mem::GuestPhysAddr;
    use alloc::vec::Vec;

    /// Guest-physical memory `[0, len)` as a byte vector.
    pub struct VecMem(pub Vec<u8>);

    impl VecMem {
        pub fn new(len: usize) -> Self {
            Self(alloc::vec![0; len])
        }
        pub fn put(&mut self, gpa: u64, bytes: &[u8]) {
            self.0[gpa as usize..gpa as usize + bytes.len()].copy_from_slice(bytes);
        }
        pub fn put_u64(&mut self, gpa: u64, v: u64) {
            self.put(gpa, &v.to_le_bytes());
        }
        pub fn put_u32(&mut self, gpa: u64, v: u32) {
            self.put(gpa, &v.to_le_bytes());
        }
    }

    impl GuestPhysRead for VecMem {
        fn read(&self, gpa: GuestPhysAddr, buf: &mut [u8]) -> Result<(), Unbacked> {
            let start = usize::try_from(gpa.as_u64()).map_err(|_| Unbacked(gpa))?;
            let src = start.checked_add(buf.len()).and_then(|end| self.0.get(start..end)).ok_or(Unbacked(gpa))?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }
}
