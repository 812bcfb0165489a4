//! The hypervisor's console (target only): keys typed on the machine's serial
//! line after Ctrl-A three times, read by dom0's vCPU 0 with the rest of the
//! serial input (`vm::platform::Devices::poll_serial_input`).

use crate::arch::x86_64::smp;
use crate::domain::control;
use crate::mem;
use crate::sched::run as sched;
use crate::vm::platform::{log_tally, Platform, TALLY_LEN};
use log::info;

/// The console's keys.
pub const HELP: &str = "h help, d domains, c CPUs, e VM exits by reason, m memory, s scheduler, r run queues (every vCPU), n NMI to the other CPUs";

/// Answers one key; `dom0` is dom0's platform (its vCPUs are listed).
pub fn debug_key(key: u8, dom0: &Platform) {
    match key {
        b'h' | b'?' => info!("console: keys: {HELP}"),
        b'd' => {
            control::describe_all();
            for (i, s) in dom0.stats.iter().enumerate() {
                let (id, ppr) = {
                    let mut bus = dom0.apics();
                    let l = bus.lapic(i);
                    (l.id(), l.ppr())
                };
                let exits: u64 = s.counts().iter().sum();
                info!("console: dom0 vcpu{i} on cpu{i}: {}, {exits} exits, vLAPIC id {id} ppr {ppr:#x}", s.state_name());
            }
            let u = dom0.apics().undelivered();
            if u != Default::default() {
                info!("console: dom0 messages not delivered: {u:?}");
            }
        }
        b'c' => {
            for cpu in 0..smp::cpu_count() {
                let (watched, busy) = sched::cpu_summary(cpu);
                let busy = busy || cpu == crate::arch::x86_64::cpu_id();
                info!("console: cpu{cpu}: {}, watching {watched} blocked vCPU(s)", if busy { "running a vCPU" } else { "idle" });
                if let Some(s) = dom0.stats.get(cpu as usize) {
                    info!("console: cpu{cpu}: dom0 vcpu{cpu} {}", s.state_name());
                }
            }
            info!("console: {} physical NMI(s) taken since boot", crate::arch::x86_64::idt::nmi_count());
        }
        b's' => sched::log_stats(),
        b'r' => sched::dump_state(sched::now_ns()),
        b'n' => info!("console: sent an NMI to {} other CPU(s)", smp::nmi_others()),
        b'e' => {
            let mut total = [0u64; TALLY_LEN];
            for s in &dom0.stats {
                total.iter_mut().zip(s.counts()).for_each(|(t, n)| *t += n);
            }
            log_tally("dom0", "console", total);
            if dom0.vcpus() > 1 {
                for (i, s) in dom0.stats.iter().enumerate() {
                    log_tally(&dom0.label(i), "console", s.counts());
                }
            }
        }
        b'm' => info!("console: {} MiB free in the hypervisor's frame allocator", mem::free_frame_count() * 4 / 1024),
        b'\r' | b'\n' => {}
        other => info!("console: no key {:?}; keys: {HELP}", char::from(other)),
    }
}
