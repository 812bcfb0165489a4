//! Oxen: a type-1 hypervisor for Intel VT-x and AMD-V.
//!
//! Layers, bottom up (see docs/architecture.md):
//! - `arch::x86_64`: boot, descriptor tables, APIC, SMP and the two virtualization
//!   backends (`vmx`, `svm`), each behind the vendor-neutral `virt::Vcpu` interface.
//! - `mem`: address newtypes, the memory map, the frame allocator, the heap and one
//!   page-table walker shared by the host tables, EPT and NPT.
//! - `virt`: vendor-neutral vCPU interface, exit type and guest memory.
//! - `exit`: the vendor-neutral exit handlers (CPUID, I/O, MSR, hypercalls).
//! - `platform`: the machine as ACPI describes it (CPUs, I/O APICs, PM timer),
//!   the local APIC's programming model and clock arithmetic, for `arch`'s APIC,
//!   timer and SMP code.
//! - `emulate`: guest page walk and instruction decoding to complete MMIO accesses.
//! - `devices`: guest device models (16550A UART, IOAPIC, local APIC, i8042,
//!   CMOS RTC, KVM-compatible clock, ACPI PM registers).
//! - `firmware`: the ACPI tables (and the AML inside them) a domain boots with.
//! - `vm`: a domain's virtual machine — its platform (devices on per-domain buses,
//!   the APIC bus) and the one vCPU path every domain's vCPUs take.
//! - `linux`, `dom0`: the Linux boot protocol and the dom0 builder.
//! - `domain`: domains: the table and its state rules, consoles, domU kernels and boot layout,
//!   and on the target their resources and vCPUs.
//! - `hypercall`: every hypercall's checks and argument copying, and dispatch.
//! - `sched`: each CPU's run loop, and the credit scheduler (pure logic).
//! - `selftest`: the built-in guests run with the `selftest` command-line option.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod arch;
pub mod cmdline;
pub mod console_switch;
pub mod devices;
pub mod dom0;
pub mod domain;
pub mod emulate;
pub mod exit;
pub mod firmware;
pub mod hypercall;
pub mod linux;
pub mod mem;
pub mod platform;
pub mod sched;
pub mod virt;
pub mod vm;

#[cfg(target_os = "none")]
pub mod console;
#[cfg(target_os = "none")]
pub mod selftest;
#[cfg(target_os = "none")]
pub mod start;
