//! Oxen's hypercall ABI (see docs/hypercalls.md).
#![no_std]
