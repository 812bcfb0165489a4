//! vCPU scheduling: which vCPU each pCPU runs, and for how long.
//!
//! Pure logic, tested on the host: the caller passes the time in and acts on
//! what comes back (run this vCPU until then, kick those pCPUs). `credit` is the
//! scheduler.

pub mod credit;
