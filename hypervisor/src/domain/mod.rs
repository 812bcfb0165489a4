//! Domains: the table of domains and their state rules (`table`, pure), the
//! byte rings behind consoles and `dmesg` (`ring`, pure), the rate limits on
//! what guests make the hypervisor print (`ratelimit`, pure), the domU kernel
//! loader and boot layout (`elf`, `boot`, pure), Multiboot (v1) kernels
//! (`multiboot`, pure); on the target, the domains'
//! resources and the hypercall services (`control`), the kernel layout into a
//! domain's memory (`build`) and a domU's vCPU on a run queue (`domu`).
pub mod boot;
pub mod elf;
pub mod multiboot;
pub mod ratelimit;
pub mod ring;
pub mod table;

#[cfg(target_os = "none")]
pub mod build;
#[cfg(target_os = "none")]
pub mod control;
#[cfg(target_os = "none")]
pub mod domu;
