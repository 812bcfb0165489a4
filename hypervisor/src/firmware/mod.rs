//! Firmware tables the hypervisor gives a domain to describe its virtual
//! platform: ACPI (`acpi`), written with a small AML encoder (`aml`). Pure code
//! over byte vectors, no hardware or guest memory access, tested on the host;
//! the caller copies the bytes into the guest.

pub mod acpi;
pub mod aml;
