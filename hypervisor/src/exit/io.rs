//! Port I/O exits: the guest's devices sit on a `PortBus`; ports nobody claims
//! read as all ones and ignore writes, as on a PC with nothing decoding them.

use super::Outcome;
use crate::virt::Vcpu;

/// A guest's port-I/O devices.
pub trait PortBus {
    /// IN of `size` bytes from `port`; `None` if no device claims the port.
    fn read(&mut self, port: u16, size: u8) -> Option<u32>;
    /// OUT of `size` bytes; returns false if no device claims the port.
    fn write(&mut self, port: u16, size: u8, value: u32) -> bool;
    /// An access to a port forwarded to dom0's device model (`vm::ioreq`):
    /// `None` if no range of its holds the port; else the answer (an IN's
    /// value, or nothing for an OUT) or `Wait`.
    fn forwarded(&mut self, _port: u16, _size: u8, _write: Option<u32>) -> Option<crate::vm::ioreq::Answer> {
        None
    }
}

fn mask(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    }
}

/// Handles IN/OUT of 1, 2 or 4 bytes. String and REP forms are not emulated yet:
/// the guest is stopped with `Unhandled` rather than given wrong data.
pub fn handle(vcpu: &mut impl Vcpu, port: u16, size: u8, write: bool, string: bool, bus: &mut dyn PortBus) -> Outcome {
    if string || !matches!(size, 1 | 2 | 4) {
        return Outcome::Unhandled(crate::virt::VmExit::Io { port, size, write, string, rep: string });
    }
    let m = mask(size);
    let out = write.then(|| vcpu.gprs().rax as u32 & m);
    let forwarded = match bus.forwarded(port, size, out) {
        // The instruction runs again once dom0 answered.
        Some(crate::vm::ioreq::Answer::Wait) => return Outcome::IoWait,
        Some(crate::vm::ioreq::Answer::Done(v)) => Some(v as u32),
        None => None,
    };
    if let (Some(value), None) = (out, forwarded) {
        bus.write(port, size, value);
    } else if !write {
        let value = forwarded.or_else(|| bus.read(port, size)).unwrap_or(u32::MAX) & m;
        let rax = &mut vcpu.gprs().rax;
        // IN to AL/AX leaves the rest of RAX alone; IN to EAX zero-extends (SDM Vol. 1 §3.4.1.1).
        *rax = if size == 4 { u64::from(value) } else { (*rax & !u64::from(m)) | u64::from(value) };
    }
    vcpu.skip_instruction();
    Outcome::Continue
}

/// Bochs/QEMU's debug console: bytes written to port 0xE9 are printed; reading it
/// returns 0xE9, which is how guests detect it.
pub const DEBUGCON_PORT: u16 = 0xe9;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub use crate::virt::fake::FakeVcpu;

    /// A guest environment with one device MSR and no ports.
    #[derive(Default)]
    pub struct FakeEnv {
        pub msr: Option<(u32, u64)>,
        pub bus: Bus,
    }

    impl crate::exit::GuestEnv for FakeEnv {
        fn ports(&mut self) -> &mut dyn PortBus {
            &mut self.bus
        }
        fn host_cpuid(&self, _leaf: u32, _subleaf: u32) -> crate::exit::cpuid::CpuidResult {
            Default::default()
        }
        fn msr_read(&mut self, msr: u32) -> Option<u64> {
            self.msr.filter(|m| m.0 == msr).map(|m| m.1)
        }
    }


    #[derive(Default)]
    pub struct Bus {
        pub written: Vec<(u16, u8, u32)>,
    }

    impl PortBus for Bus {
        fn read(&mut self, port: u16, _size: u8) -> Option<u32> {
            (port == 0x10).then_some(0x1234_5678)
        }
        fn write(&mut self, port: u16, size: u8, value: u32) -> bool {
            self.written.push((port, size, value));
            true
        }
    }

    #[test]
    fn out_masks_to_size_and_in_merges_into_rax() {
        let mut v = FakeVcpu::default();
        let mut bus = Bus::default();
        v.gprs.rax = 0xffff_ffff_aabb_ccdd;
        assert_eq!(handle(&mut v, 0x10, 1, true, false, &mut bus), Outcome::Continue);
        assert_eq!(bus.written, vec![(0x10, 1, 0xdd)]);
        handle(&mut v, 0x10, 2, false, false, &mut bus);
        assert_eq!(v.gprs.rax, 0xffff_ffff_aabb_5678);
        handle(&mut v, 0x10, 4, false, false, &mut bus);
        assert_eq!(v.gprs.rax, 0x1234_5678);
        // Unclaimed port reads as all ones.
        handle(&mut v, 0x99, 1, false, false, &mut bus);
        assert_eq!(v.gprs.rax, 0x1234_56ff);
        assert_eq!(v.skipped, 4);
    }

    /// Ports 0x20..0x24 forwarded: the first access to each waits, the
    /// second is answered.
    #[derive(Default)]
    struct Forwarding {
        asked: Vec<(u16, u8, Option<u32>)>,
        plain: Bus,
    }

    impl PortBus for Forwarding {
        fn read(&mut self, port: u16, size: u8) -> Option<u32> {
            self.plain.read(port, size)
        }
        fn write(&mut self, port: u16, size: u8, value: u32) -> bool {
            self.plain.write(port, size, value)
        }
        fn forwarded(&mut self, port: u16, size: u8, write: Option<u32>) -> Option<crate::vm::ioreq::Answer> {
            use crate::vm::ioreq::Answer;
            if !(0x20..0x24).contains(&port) {
                return None;
            }
            let again = self.asked.contains(&(port, size, write));
            self.asked.push((port, size, write));
            Some(if again { Answer::Done(0xa5a5_a5a5) } else { Answer::Wait })
        }
    }

    #[test]
    fn forwarded_ports_wait_without_retiring_then_complete() {
        let mut v = FakeVcpu::default();
        let mut bus = Forwarding::default();
        v.gprs.rax = 0x1122_3344_5566_7788;
        assert_eq!(handle(&mut v, 0x21, 1, false, false, &mut bus), Outcome::IoWait);
        assert_eq!((v.skipped, v.gprs.rax), (0, 0x1122_3344_5566_7788));
        assert_eq!(handle(&mut v, 0x21, 1, false, false, &mut bus), Outcome::Continue);
        assert_eq!((v.skipped, v.gprs.rax), (1, 0x1122_3344_5566_77a5));
        assert_eq!(handle(&mut v, 0x22, 2, true, false, &mut bus), Outcome::IoWait);
        assert_eq!(handle(&mut v, 0x22, 2, true, false, &mut bus), Outcome::Continue);
        assert_eq!(bus.asked[2], (0x22, 2, Some(0x77a5)));
        // Forwarded writes never reach the emulated devices; others do.
        assert!(bus.plain.written.is_empty());
        handle(&mut v, 0x10, 1, true, false, &mut bus);
        assert_eq!(bus.plain.written, vec![(0x10, 1, 0xa5)]);
        assert_eq!(v.skipped, 3);
    }

    #[test]
    fn string_io_is_refused_not_faked() {
        let mut v = FakeVcpu::default();
        let out = handle(&mut v, 0x10, 1, true, true, &mut Bus::default());
        assert!(matches!(out, Outcome::Unhandled(_)));
        assert_eq!(v.skipped, 0);
    }
}
