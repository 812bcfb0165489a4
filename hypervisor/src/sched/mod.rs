//! vCPU scheduling: which vCPU each pCPU runs, and for how long.
//!
//! Pure logic, tested on the host: the caller passes the time in and acts on
//! what comes back (run this vCPU until then, kick those pCPUs). `credit` is the
//! scheduler; `sim` (tests only) drives it through simulated pCPUs and guests.

pub mod credit;
#[cfg(test)]
mod sim;
