//! The Oxen hypervisor binary: GRUB enters `_start` (arch/x86_64/boot.rs), which
//! reaches `oxen::start::kmain`. Everything lives in the `oxen` library so that its
//! pure logic can be unit-tested on the host.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
pub use oxen::start::kmain;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("oxen-hv is a bare-metal image: build it with `cargo xtask build`");
    std::process::exit(1);
}
