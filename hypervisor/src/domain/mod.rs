//! Guest domains (domUs): checking their kernels and laying out their boot state.
pub mod elf;
pub mod boot;
