//! dom0: the management domain, a stock Linux booted through the Linux boot
//! protocol and handed the machine's devices.
//!
//! dom0's RAM is identity mapped (guest-physical = host-physical) so the devices
//! it drives can DMA; its nested tables map everything else the machine has
//! (firmware tables, device MMIO) except the hypervisor's own RAM and the
//! interrupt controllers the hypervisor owns. Its vCPU `i` runs on CPU `i`.
//! It runs on the same platform and vCPU path as every domain (`crate::vm`),
//! as `Role::Dom0`.
pub mod layout;

#[cfg(target_os = "none")]
mod build;
#[cfg(target_os = "none")]
pub mod keys;
#[cfg(target_os = "none")]
pub use build::boot;

/// dom0's vCPU count: what `dom0_max_vcpus=` asks, but at most one per online
/// CPU (vCPU i runs on CPU i), and at least one.
pub fn vcpu_count(asked: u32, cpus: u32) -> u32 {
    asked.clamp(1, cpus.max(1))
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_vcpu_per_cpu_at_most() {
        assert_eq!(super::vcpu_count(1, 4), 1);
        assert_eq!(super::vcpu_count(2, 2), 2);
        assert_eq!(super::vcpu_count(4, 2), 2);
        assert_eq!(super::vcpu_count(0, 2), 1);
        assert_eq!(super::vcpu_count(3, 0), 1);
    }
}
