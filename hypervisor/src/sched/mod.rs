//! vCPU scheduling: which vCPU each pCPU runs, and for how long.
//!
//! `credit` is the scheduler, pure logic tested on the host: the caller passes
//! the time in and acts on what comes back (run this vCPU until then, kick
//! those pCPUs); `sim` (tests only) drives it through simulated pCPUs and
//! guests. `run` (target only) is every CPU's loop.

pub mod credit;
#[cfg(target_os = "none")]
pub mod run;
#[cfg(test)]
mod sim;
