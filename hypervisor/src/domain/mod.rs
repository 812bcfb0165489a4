//! Domains: the table of domains and their states (`table`), console and log
//! rings (`ring`).
pub mod ring;
pub mod table;
