//! dom0: the management domain, a stock Linux booted through the Linux boot protocol.
pub mod layout;
