//! Domains: the table of domains and their states (`table`), console and log
//! rings (`ring`), domU kernel checking (`elf`) and boot layout (`boot`).
pub mod boot;
pub mod elf;
pub mod ring;
pub mod table;
