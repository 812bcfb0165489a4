//! Domains: the table of domains and their state rules (`table`, pure), the
//! byte rings behind consoles and `dmesg` (`ring`, pure), the rate limits on
//! what guests make the hypervisor print (`ratelimit`, pure), the domU kernel
//! loader and boot layout (`elf`, `boot`, pure), a Linux domU's layout
//! (`linux`, pure), Multiboot (v1) kernels (`multiboot`, pure), the devices
//! dom0 declared for a domU (`devices`, pure); on the target,
//! the domains' resources and the hypercall services (`control`) and the
//! kernel layout into a domain's memory (`build`). A domain's platform and
//! vCPUs: `crate::vm`.
pub mod boot;
pub mod devices;
pub mod elf;
pub mod linux;
pub mod multiboot;
pub mod ratelimit;
pub mod ring;
pub mod table;

#[cfg(target_os = "none")]
pub mod build;
#[cfg(target_os = "none")]
pub mod control;
