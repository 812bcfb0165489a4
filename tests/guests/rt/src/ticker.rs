//! The loops the test guests end in: ticking (sleeping in `BLOCK`) or spinning,
//! both honouring dom0's control requests unless told to ignore them.

use crate::cpu::{self, rdtsc};
use crate::hypercall::{self, request_name};
use crate::time;
use crate::println;
use oxen_abi::{request, ShutdownReason};

/// How a guest behaves once it is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Time between two lines.
    pub interval_ms: u64,
    /// Never act on POWEROFF or REBOOT (to test the hypervisor's timeout).
    pub ignore_requests: bool,
    /// Put the TSC at each tick on its line (`tick N tsc T`): a migration's
    /// test sees the guest's TSC go on across hosts.
    pub show_tsc: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self { interval_ms: 1000, ignore_requests: false, show_tsc: false }
    }
}

/// Tracks control requests: acts on them, or says once that it ignores one.
struct Requests {
    ignore: bool,
    /// The last request reported as ignored or unknown (so it is said once).
    reported: u64,
}

impl Requests {
    /// Checks for a request; powers off or reboots when one is to be honoured.
    /// Returns true when a request is pending that is being ignored.
    fn poll(&mut self) -> bool {
        let r = hypercall::control_request();
        if r == request::NONE {
            self.reported = request::NONE;
            return false;
        }
        let prefix = crate::name();
        let known = r == request::POWEROFF || r == request::REBOOT;
        if known && !self.ignore {
            if r == request::POWEROFF {
                println!("{prefix}: powering off");
                hypercall::shutdown(ShutdownReason::Poweroff);
            }
            println!("{prefix}: rebooting");
            hypercall::shutdown(ShutdownReason::Reboot);
        }
        if self.reported != r {
            self.reported = r;
            match known {
                true => println!("{prefix}: ignoring the {} request", request_name(r)),
                false => println!("{prefix}: unknown control request {r}, ignored"),
            }
        }
        true
    }
}

/// Prints `<name>: tick N` every `interval_ms`, sleeping in `BLOCK` between
/// ticks and checking for control requests whenever it wakes.
pub fn tick(config: Config) -> ! {
    let period = time::ms_to_ticks(config.interval_ms.max(1));
    let mut requests = Requests { ignore: config.ignore_requests, reported: request::NONE };
    let mut deadline = rdtsc().wrapping_add(period);
    let mut n: u64 = 0;
    loop {
        loop {
            let ignoring = requests.poll();
            let now = rdtsc();
            if now >= deadline {
                break;
            }
            // At least 1 ns: BLOCK(0) means "until woken", which a few TSC
            // ticks short of the deadline would round down to.
            hypercall::block(time::ticks_to_ns(deadline - now).max(1));
            if ignoring && rdtsc() < deadline {
                // BLOCK may return at once while a request is pending: give the
                // CPU away rather than spin on it.
                hypercall::yield_now();
            }
        }
        n += 1;
        if config.show_tsc {
            println!("{}: tick {n} tsc {}", crate::name(), rdtsc());
        } else {
            println!("{}: tick {n}", crate::name());
        }
        deadline = deadline.wrapping_add(period);
        // After a long pause (the domain was paused), tick on from now rather
        // than in a burst.
        let now = rdtsc();
        if now > deadline {
            deadline = now.wrapping_add(period);
        }
    }
}

/// Counts in a busy loop and prints `<name>: spin N (L loops in M ms)` every
/// `interval_ms` of TSC time, checking control requests at each line; never
/// blocks. With `interrupts_off` it runs with RFLAGS.IF clear (the hypervisor
/// must still be able to take the CPU back), otherwise with it set.
pub fn spin(config: Config, interrupts_off: bool) -> ! {
    let period = time::ms_to_ticks(config.interval_ms.max(1));
    let mut requests = Requests { ignore: config.ignore_requests, reported: request::NONE };
    if interrupts_off {
        cpu::disable_interrupts();
    } else {
        cpu::enable_interrupts();
    }
    let mut start = rdtsc();
    let mut n: u64 = 0;
    let mut loops: u64 = 0;
    loop {
        loops = core::hint::black_box(loops + 1);
        if !loops.is_multiple_of(4096) {
            continue;
        }
        let now = rdtsc();
        if now.wrapping_sub(start) < period {
            continue;
        }
        n += 1;
        println!("{}: spin {n} ({loops} loops in {} ms)", crate::name(), time::ticks_to_ms(now - start));
        requests.poll();
        start = rdtsc();
        loops = 0;
    }
}
