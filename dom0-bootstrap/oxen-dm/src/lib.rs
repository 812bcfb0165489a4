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
//!
//! The `oxen-dm` binary (`src/main.rs`) is one domU's device model: `oxl create` starts it with
//! the domU's disks and vifs ([`spec`]; vifs are [`net`] devices on a [`tap`]); it serves them
//! ([`serve`]) through `/dev/oxen` ([`oxen`]) until the domain is gone.
//!
//! # How the ioreq side drives a device
//!
//! ```
//! use std::sync::Arc;
//! use oxen_dm::{Block, Effect, GuestMemoryMmap, MmioTransport};
//! use vm_memory::GuestAddress;
//!
//! # let path = std::env::temp_dir().join(format!("oxen-dm-doc-{}", std::process::id()));
//! # std::fs::write(&path, vec![0u8; 4096]).unwrap();
//! // The domU's RAM as mapped into dom0 (here: anonymous memory).
//! let ram = Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap());
//! let file = std::fs::File::options().read(true).write(true).open(&path).unwrap();
//! let disk = Block::new(file, false, "xvda").unwrap();
//! let mut dev = MmioTransport::new(Box::new(disk), ram).unwrap();
//! let set_irq = |level: bool| { /* hypercall: set the domU's IOAPIC line to `level` */ };
//!
//! // An ioreq for offset 0 (MagicValue) of this device's window, a 4-byte read:
//! assert_eq!(dev.read(0, 4), 0x7472_6976);
//! // A write: answer the vCPU first, then do what the effect says.
//! match dev.write(0x70, 4, 1) {
//!     Effect::None => {}
//!     Effect::Interrupt(level) => set_irq(level),
//!     Effect::QueueNotify(q) => {
//!         if let Effect::Interrupt(level) = dev.process_queue(q) {
//!             set_irq(level);
//!         }
//!     }
//! }
//! # std::fs::remove_file(&path).unwrap();
//! ```

pub mod block;
pub mod failed;
pub mod foreign;
pub mod ioreq;
pub mod mmio;
pub mod net;
pub mod oxen;
pub mod serve;
pub mod spec;
pub mod state;
pub mod tap;
pub mod warden;

pub use block::{Block, BlockStats};
pub use foreign::{ForeignDomain, ForeignError};
pub use mmio::ActivateError;
pub use mmio::{Effect, MmioTransport, VirtioDevice};
pub use net::{Backend, FdBackend, Net, NetStats};
/// Re-exported so that users build guest memory with the exact version the queues use.
pub use vm_memory;

/// The guest memory a device model works on: the domU's RAM, mapped into dom0 through `mmap` on
/// `/dev/oxen`'s foreign file ([`ForeignDomain::map`]; in tests, anonymous memory or a file).
/// Each region carries a bitmap of the pages written through it ([`foreign::take_dirty`]).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;
/// What a descriptor chain's buffers are read and written through: their writes mark the bitmap.
pub(crate) type ChainReader<'a> = virtio_queue::Reader<'a, vm_memory::bitmap::RefSlice<'a, vm_memory::bitmap::AtomicBitmap>>;
pub(crate) type ChainWriter<'a> = virtio_queue::Writer<'a, vm_memory::bitmap::RefSlice<'a, vm_memory::bitmap::AtomicBitmap>>;

/// The ioreq loop may run devices on threads of its own.
const _: () = {
    const fn send<T: Send>() {}
    send::<MmioTransport>();
};
