//! Finding a domain by ID or name, saying why an operation on it failed, and
//! waiting for it to go away.

use std::time::Duration;

use oxen_abi::{domctl, info_flags, DomainInfo, DomainState, Error};

use crate::hv::{self, CallError, Hypervisor};
use crate::show::{label, name, state};

/// How long `destroy` waits for a domain's memory to come back.
pub const DESTROY_WAIT: Duration = Duration::from_secs(10);
/// How long `shutdown -w`/`reboot -w` wait; the hypervisor itself ends a guest
/// that ignores the request well before this.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(120);
/// How often the waits look.
pub const POLL: Duration = Duration::from_millis(50);

/// The domain `dom` names among `doms`: a domain ID, else a name (so a domain
/// whose name is all digits is still found by that name when no ID matches).
pub fn resolve(doms: &[DomainInfo], dom: &str) -> Result<DomainInfo, String> {
    let numeric = !dom.is_empty() && dom.bytes().all(|b| b.is_ascii_digit());
    if numeric {
        if let Some(d) = doms.iter().find(|d| dom.parse() == Ok(d.domid)) {
            return Ok(*d);
        }
    }
    if let Some(d) = doms.iter().find(|d| name(d) == dom) {
        return Ok(*d);
    }
    Err(if numeric {
        format!("no domain with id {dom} (see 'oxl list')")
    } else {
        format!("no domain '{dom}' (see 'oxl list')")
    })
}

/// Looks `dom` up with one `LIST`.
pub fn find(hv: &mut dyn Hypervisor, dom: &str) -> Result<DomainInfo, String> {
    let doms = hv::list(hv).map_err(|e| call_failed("list the domains", e))?;
    resolve(&doms, dom)
}

/// Refuses `verb` on dom0, which oxl itself runs in.
pub fn not_dom0(d: &DomainInfo, verb: &str) -> Result<(), String> {
    if d.flags & info_flags::PRIVILEGED != 0 {
        return Err(format!(
            "refusing to {verb} domain {}: it is dom0, where oxl runs",
            label(d)
        ));
    }
    Ok(())
}

/// What to tell the user about a call that failed without a domain in question.
pub fn call_failed(what: &str, e: CallError) -> String {
    format!("cannot {what}: {e}{}", hint(e))
}

/// What to tell the user when `verb` (e.g. "pause") failed on domain `d`.
pub fn dom_failed(d: &DomainInfo, verb: &str, e: CallError) -> String {
    match e {
        CallError::Hv(Error::NoEnt) => {
            format!("domain {} no longer exists (see 'oxl list')", label(d))
        }
        CallError::Hv(Error::Busy) => {
            format!(
                "cannot {verb} domain {}: {} (it is {})",
                label(d),
                e,
                state(d)
            )
        }
        _ => format!("cannot {verb} domain {}: {e}{}", label(d), hint(e)),
    }
}

/// Advice for errors that mean something about the set-up rather than the request.
fn hint(e: CallError) -> &'static str {
    match e {
        CallError::Hv(Error::Perm) => " (only dom0 may control domains: is oxl running in dom0?)",
        CallError::Hv(Error::NoSys) => {
            " (the hypervisor does not implement this call: it is older than this oxl, see 'oxl info')"
        }
        _ => "",
    }
}

/// `DESTROY`, then waits (up to `DESTROY_WAIT`) until `GET_INFO` no longer finds
/// the domain, when its memory is back in the pool.
pub fn destroy_and_wait(hv: &mut dyn Hypervisor, d: &DomainInfo) -> Result<(), String> {
    match hv::domain_op(hv, domctl::DESTROY, d.domid) {
        Ok(()) | Err(CallError::Hv(Error::NoEnt)) => {}
        Err(e) => return Err(dom_failed(d, "destroy", e)),
    }
    let start = hv.now();
    loop {
        let now = match hv::info(hv, d.domid) {
            Err(CallError::Hv(Error::NoEnt)) => return Ok(()),
            Err(e) => return Err(dom_failed(d, "wait for the end of", e)),
            Ok(now) => now,
        };
        if hv.now() - start >= DESTROY_WAIT {
            return Err(format!(
                "domain {} is still {} {} s after being destroyed: its memory is not free yet \
                 (see 'oxl list'; the hypervisor log, 'oxl dmesg', may say why)",
                label(d),
                state(&now),
                DESTROY_WAIT.as_secs()
            ));
        }
        hv.sleep(POLL);
    }
}

/// How a shutdown or reboot that oxl waited for ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Destroyed: the domain is gone.
    Gone,
    /// Restarted under the same ID (a reboot, or `on_poweroff = "restart"`).
    Restarted,
    /// Kept in state `shutdown` (`on_* = "preserve"`).
    Preserved,
}

/// Waits (up to `SHUTDOWN_WAIT`) until a domain asked to shut down or reboot
/// has done so; `before` is how it was before the request.
pub fn wait_ended(hv: &mut dyn Hypervisor, before: &DomainInfo) -> Result<Ended, String> {
    let start = hv.now();
    loop {
        hv.sleep(POLL);
        let now = match hv::info(hv, before.domid) {
            Err(CallError::Hv(Error::NoEnt)) => return Ok(Ended::Gone),
            Err(e) => return Err(dom_failed(before, "wait for", e)),
            Ok(now) => now,
        };
        if now.restarts != before.restarts {
            return Ok(Ended::Restarted);
        }
        if now.state == DomainState::Shutdown as u32 {
            return Ok(Ended::Preserved);
        }
        if hv.now() - start >= SHUTDOWN_WAIT {
            return Err(format!(
                "domain {} is still {} after {} s ('oxl destroy {}' ends it at once)",
                label(before),
                state(&now),
                SHUTDOWN_WAIT.as_secs(),
                name(before)
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::show::tests::dom;

    #[test]
    fn resolves_ids_and_names() {
        let doms = [
            dom(0, "Domain-0", DomainState::Running, 256, 1, 0),
            dom(3, "web", DomainState::Running, 64, 1, 0),
            dom(4, "7", DomainState::Running, 64, 1, 0),
        ];
        assert_eq!(resolve(&doms, "web").unwrap().domid, 3);
        assert_eq!(resolve(&doms, "3").unwrap().domid, 3);
        assert_eq!(resolve(&doms, "0").unwrap().domid, 0);
        assert_eq!(resolve(&doms, "4").unwrap().domid, 4);
        // No domain has ID 7, one is called "7".
        assert_eq!(resolve(&doms, "7").unwrap().domid, 4);
        assert_eq!(
            resolve(&doms, "db").unwrap_err(),
            "no domain 'db' (see 'oxl list')"
        );
        assert_eq!(
            resolve(&doms, "9").unwrap_err(),
            "no domain with id 9 (see 'oxl list')"
        );
        assert_eq!(
            resolve(&doms, "+3").unwrap_err(),
            "no domain '+3' (see 'oxl list')"
        );
        assert_eq!(
            resolve(&doms, "").unwrap_err(),
            "no domain '' (see 'oxl list')"
        );
    }

    #[test]
    fn failures_explain_themselves() {
        let d = dom(3, "web", DomainState::Shutdown, 64, 1, 0);
        assert_eq!(
            dom_failed(&d, "pause", CallError::Hv(Error::Busy)),
            "cannot pause domain 'web' (id 3): not possible in the domain's current state (it is shutdown)"
        );
        assert_eq!(
            dom_failed(&d, "pause", CallError::Hv(Error::NoEnt)),
            "domain 'web' (id 3) no longer exists (see 'oxl list')"
        );
        assert!(
            dom_failed(&d, "pause", CallError::Hv(Error::NoSys)).contains("older than this oxl")
        );
        assert_eq!(
            call_failed("list the domains", CallError::Hv(Error::Perm)),
            "cannot list the domains: not permitted (only dom0 may control domains: is oxl running in dom0?)"
        );
        let d0 = dom(0, "Domain-0", DomainState::Running, 256, 1, 0);
        assert_eq!(
            not_dom0(&d0, "destroy").unwrap_err(),
            "refusing to destroy domain 'Domain-0' (id 0): it is dom0, where oxl runs"
        );
        assert!(not_dom0(&d, "destroy").is_ok());
    }
}
