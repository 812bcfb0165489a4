//! A domain's virtual machine: its platform (devices on per-domain port and
//! MMIO buses, one local APIC per vCPU on its APIC bus) and its vCPUs. One
//! implementation for every domain: dom0 is an instance with more rights
//! (`platform::Role`), not a second one.
//!
//! - `bus`: range → device maps (pure).
//! - `apic_bus`: the domain's local APICs, IPIs, INIT / START-UP (pure).
//! - `ioreq`: accesses forwarded to a device model in dom0 (pure; its
//!   domctls target only).
//! - `platform`: the devices a domain's vCPUs share (target only).
//! - `vcpu`: the vCPU on the scheduler's run queues (target only).
pub mod apic_bus;
pub mod bus;
pub mod ioreq;

/// Where every domain's local APIC and IOAPIC sit (the platform emulates
/// them; the ACPI tables describe them).
pub const LAPIC_PAGE: u64 = 0xfee0_0000;
pub const IOAPIC_PAGE: u64 = 0xfec0_0000;

#[cfg(target_os = "none")]
pub mod platform;
#[cfg(target_os = "none")]
pub mod vcpu;
