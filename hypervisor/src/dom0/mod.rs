//! dom0: the management domain, a stock Linux booted through the Linux boot
//! protocol and handed the machine's devices.
//!
//! dom0's RAM is identity mapped (guest-physical = host-physical) so the devices
//! it drives can DMA; its nested tables map everything else the machine has
//! (firmware tables, device MMIO) except the hypervisor's own RAM and the
//! interrupt controllers the hypervisor owns.
pub mod apic_bus;
pub mod layout;

#[cfg(target_os = "none")]
mod build;
#[cfg(target_os = "none")]
pub use build::boot;
