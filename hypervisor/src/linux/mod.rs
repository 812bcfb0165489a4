//! The Linux x86 boot protocol (Documentation/arch/x86/boot.rst), as a boot
//! loader sees it: parse a bzImage, build the zero page (`boot_params`) with an
//! e820 map, enter the kernel's 64-bit entry point. Used to start dom0.
//!
//! All of it is pure code over byte buffers, tested on the host.
pub mod boot_params;
pub mod bzimage;
pub mod e820;
