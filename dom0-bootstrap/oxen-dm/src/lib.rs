//! Oxen's dom0 device model: virtio devices for domUs, run in dom0 user space (issue 11).
//!
//! The hypervisor forwards a domU's accesses to a device's MMIO window to dom0 as I/O requests;
//! dom0 hands each one to [`mmio::MmioTransport::read`] / [`mmio::MmioTransport::write`] and does
//! what the returned [`mmio::Effect`] says (process a queue, raise or lower the domU's interrupt
//! line). Virtqueues are rust-vmm's `virtio-queue` over `vm-memory`, not our own ring parsing:
//! every ring and descriptor here is written by an untrusted guest, and those crates are the ones
//! Firecracker and Cloud Hypervisor harden and fuzz.
//!
//! Nothing in this crate may panic on a guest-provided value: a bad access reads as 0 or is
//! ignored, a bad request completes with an error status.

pub mod block;
pub mod mmio;

pub use block::Block;
pub use mmio::{Effect, MmioTransport, VirtioDevice};

/// The guest memory a device model works on: the domU's RAM, mapped into dom0 (later through
/// `mmap` on `/dev/oxen`; in tests, anonymous memory).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
