//! Vendor-neutral virtualization: the `Vcpu` interface both backends implement,
//! the one exit type they translate their exits into, a vCPU's state as a
//! value, and guest memory.
pub mod exit;
#[cfg(test)]
pub mod fake;
pub mod guest_mem;
pub mod snapshot;
pub mod state;
pub mod tlb_tag;
pub mod vcpu;

pub use exit::{Access, Insn, VmExit};
pub use guest_mem::GuestMemory;
pub use snapshot::VcpuSnapshot;
pub use state::VcpuState;
pub use vcpu::{EntryMode, GuestGprs, InitialState, Vcpu};

#[cfg(target_os = "none")]
mod backend;
#[cfg(target_os = "none")]
pub use backend::*;
