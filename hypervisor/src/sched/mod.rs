//! vCPU scheduling: each CPU's run loop (`run`, target only).
#[cfg(target_os = "none")]
pub mod run;
