//! Architecture support. Oxen runs on x86-64 only. Target code but for the
//! pure decoders the host tests compile (see `x86_64`).
pub mod x86_64;
