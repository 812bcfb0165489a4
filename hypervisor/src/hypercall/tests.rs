use super::*;
use crate::emulate::testmem::xorshift;
use alloc::string::String;
use oxen_abi::{domctl as dc, name_bytes, request, CreateDomain, DomainInfo, DomainRef, LoadImage, Pod, RingRead};

/// RAM at guest-physical 0..len.
struct FakeRam(Vec<u8>);

impl GuestRam for FakeRam {
    fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), Error> {
        let end = gpa.checked_add(out.len() as u64).ok_or(Error::Fault)?;
        let src = self.0.get(gpa as usize..end as usize).ok_or(Error::Fault)?;
        out.copy_from_slice(src);
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), Error> {
        let end = gpa.checked_add(data.len() as u64).ok_or(Error::Fault)?;
        let dst = self.0.get_mut(gpa as usize..end as usize).ok_or(Error::Fault)?;
        dst.copy_from_slice(data);
        Ok(())
    }
}

#[derive(Default)]
struct FakeServices {
    console: Vec<u8>,
    /// Console input not read yet.
    input: Vec<u8>,
    /// Bytes each `ConsoleInput` command brought.
    sent: Vec<Vec<u8>>,
    commands: Vec<Command>,
    refusals: Vec<String>,
    /// dom0's pending events and what it last said it wants.
    events: u64,
    events_wanted: u64,
}

impl Services for FakeServices {
    fn console_write(&mut self, _domid: u32, bytes: &[u8]) {
        self.console.extend_from_slice(bytes);
    }
    fn console_read(&mut self, _domid: u32, out: &mut [u8]) -> usize {
        let n = out.len().min(self.input.len());
        out[..n].copy_from_slice(&self.input[..n]);
        self.input.drain(..n);
        n
    }
    fn control_request(&self, domid: u32) -> u64 {
        if domid == 7 { request::REBOOT } else { request::NONE }
    }
    fn take_events(&mut self, want: u64) -> u64 {
        self.events_wanted = want;
        core::mem::take(&mut self.events)
    }
    fn domctl(&mut self, cmd: &mut Command, buf: &mut [u8]) -> Result<u64, Error> {
        self.commands.push(cmd.clone());
        match cmd {
            Command::GetInfo(id) if *id == 3 => {
                let info = DomainInfo {
                    domid: 3,
                    state: 1,
                    vcpus: 1,
                    flags: 0,
                    memory_kib: 16384,
                    cpu_time_ns: 5,
                    exits: 6,
                    restarts: 0,
                    shutdown_reason: 0,
                    name: name_bytes("three").unwrap(),
                };
                buf[..80].copy_from_slice(info.as_bytes());
                Ok(0)
            }
            Command::GetInfo(_) => Err(Error::NoEnt),
            Command::VcpuStateGet { .. } => {
                buf[..4].copy_from_slice(b"OXVS");
                Ok(4)
            }
            Command::PlatformStateGet(_) => {
                buf[..4].copy_from_slice(b"OXPS");
                Ok(4)
            }
            Command::VcpuStateSet { .. } | Command::PlatformStateSet(_) => {
                self.sent.push(buf.to_vec());
                Ok(0)
            }
            Command::ConsoleInput(_) => {
                self.sent.push(buf.to_vec());
                // A queue with room for 3 bytes.
                Ok(buf.len().min(3) as u64)
            }
            Command::ForeignMap(m) => {
                m.addr = 0x40_0000_0000 + m.first_gfn * 4096;
                Ok(m.addr)
            }
            Command::DeviceAdd(d) => {
                (d.base, d.size, d.gsi) = (0xfeb0_0000, 0x1000, 16);
                Ok(0)
            }
            Command::LogDirty { op: domctl::LogDirtyOp::Clean, .. } => {
                buf[0] = 0b101;
                Ok(2)
            }
            Command::ConsoleRead(r) => {
                buf[..2].copy_from_slice(b"hi");
                r.next = r.offset + 2;
                r.lost = 1;
                Ok(2)
            }
            _ => Ok(0),
        }
    }
    fn refused(&mut self, domid: u32, what: fmt::Arguments) {
        self.refusals.push(alloc::format!("d{domid}: {what}"));
    }
}

fn call(privileged: bool, ram: &mut FakeRam, svc: &mut FakeServices, nr: u64, a: [u64; 5]) -> (Result<u64, Error>, After) {
    let mut caller = Caller { domid: if privileged { 0 } else { 7 }, privileged, ram };
    dispatch(&mut caller, svc, &Args { nr, a })
}

fn ram() -> FakeRam {
    FakeRam(vec![0; 0x10000])
}

#[test]
fn simple_calls() {
    let (mut r, mut s) = (ram(), FakeServices::default());
    assert_eq!(call(false, &mut r, &mut s, nr::VERSION, [0; 5]).0, Ok(ABI_VERSION.into()));
    assert_eq!(call(false, &mut r, &mut s, nr::NULL, [0; 5]).0, Ok(0));
    assert_eq!(call(false, &mut r, &mut s, nr::DOMAIN_ID, [0; 5]).0, Ok(7));
    assert_eq!(call(false, &mut r, &mut s, nr::CONTROL_REQUEST, [0; 5]).0, Ok(request::REBOOT));
    assert_eq!(call(false, &mut r, &mut s, 0x99, [0; 5]).0, Err(Error::NoSys));
    assert_eq!(s.refusals.len(), 1);
    assert!(s.refusals[0].contains("no hypercall 0x99"));
}

#[test]
fn events_are_dom0s_and_take_only_known_bits() {
    let (mut r, mut s) = (ram(), FakeServices::default());
    s.events = oxen_abi::event::CONSOLE;
    assert_eq!(call(false, &mut r, &mut s, nr::EVENTS, [oxen_abi::event::CONSOLE, 0, 0, 0, 0]).0, Err(Error::Perm));
    assert_eq!(call(true, &mut r, &mut s, nr::EVENTS, [1 << 40, 0, 0, 0, 0]).0, Err(Error::Inval));
    // Neither refusal took or changed anything.
    assert_eq!((s.events, s.events_wanted, s.refusals.len()), (oxen_abi::event::CONSOLE, 0, 2));
    assert_eq!(call(true, &mut r, &mut s, nr::EVENTS, [oxen_abi::event::CONSOLE, 0, 0, 0, 0]).0, Ok(oxen_abi::event::CONSOLE));
    assert_eq!((s.events, s.events_wanted), (0, oxen_abi::event::CONSOLE));
    assert_eq!(call(true, &mut r, &mut s, nr::EVENTS, [0; 5]).0, Ok(0));
    assert_eq!(s.events_wanted, 0);
}

#[test]
fn console_write_checks_pointer_and_length() {
    let (mut r, mut s) = (ram(), FakeServices::default());
    r.0[0x100..0x105].copy_from_slice(b"hello");
    assert_eq!(call(false, &mut r, &mut s, nr::CONSOLE_WRITE, [0x100, 5, 0, 0, 0]).0, Ok(5));
    assert_eq!(s.console, b"hello");
    // Beyond its RAM, straddling its end, wrapping, and too long.
    for (gpa, len, err) in [
        (0x2_0000, 4, Error::Fault),
        (0xfffe, 4, Error::Fault),
        (u64::MAX - 0x7ff, 0x1000, Error::Fault),
        (0, u64::MAX, Error::TooBig),
        (0, CONSOLE_WRITE_MAX + 1, Error::TooBig),
    ] {
        assert_eq!(call(false, &mut r, &mut s, nr::CONSOLE_WRITE, [gpa, len, 0, 0, 0]).0, Err(err), "{gpa:#x}+{len:#x}");
    }
    assert_eq!(s.console, b"hello");
    assert_eq!(s.refusals.len(), 5);
}

#[test]
fn sched_ops() {
    let (mut r, mut s) = (ram(), FakeServices::default());
    assert_eq!(call(false, &mut r, &mut s, nr::SCHED_OP, [sched_op::YIELD, 0, 0, 0, 0]), (Ok(0), After::Yield));
    assert_eq!(
        call(false, &mut r, &mut s, nr::SCHED_OP, [sched_op::BLOCK, 5000, 0, 0, 0]),
        (Ok(0), After::Block { timeout_ns: 5000 })
    );
    assert_eq!(
        call(false, &mut r, &mut s, nr::SCHED_OP, [sched_op::SHUTDOWN, 1, 0, 0, 0]),
        (Ok(0), After::Shutdown(ShutdownReason::Reboot))
    );
    assert_eq!(call(false, &mut r, &mut s, nr::SCHED_OP, [sched_op::SHUTDOWN, 9, 0, 0, 0]), (Err(Error::Inval), After::Continue));
    assert_eq!(call(false, &mut r, &mut s, nr::SCHED_OP, [77, 0, 0, 0, 0]), (Err(Error::Inval), After::Continue));
    // dom0 cannot end itself this way.
    assert_eq!(call(true, &mut r, &mut s, nr::SCHED_OP, [sched_op::SHUTDOWN, 0, 0, 0, 0]), (Err(Error::Perm), After::Continue));
}

fn put<T: Pod>(r: &mut FakeRam, gpa: u64, v: &T) -> u64 {
    r.write(gpa, v.as_bytes()).unwrap();
    core::mem::size_of::<T>() as u64
}

fn create_arg(name: &str) -> CreateDomain {
    CreateDomain {
        name: name_bytes(name).unwrap(),
        memory_mib: 16,
        vcpus: 1,
        on_poweroff: 0,
        on_reboot: 1,
        on_crash: 0,
        _pad: 0,
        flags: 0,
    }
}

#[test]
fn domctl_is_for_dom0_only() {
    let (mut r, mut s) = (ram(), FakeServices::default());
    let len = put(&mut r, 0x100, &create_arg("x"));
    assert_eq!(call(false, &mut r, &mut s, nr::DOMCTL, [dc::CREATE, 0x100, len, 0, 0]).0, Err(Error::Perm));
    assert!(s.commands.is_empty());
    assert!(s.refusals[0].contains("only dom0"));
    assert!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::CREATE, 0x100, len, 0, 0]).0.is_ok());
    assert!(matches!(&s.commands[0], Command::Create(c) if c.name == "x" && c.on_reboot == oxen_abi::Action::Restart));
}

#[test]
fn domctl_arguments_are_bounded_and_checked() {
    let (mut r, mut s) = (ram(), FakeServices::default());
    let len = put(&mut r, 0x100, &create_arg("x"));
    let mut expect = |a: [u64; 5], err: Error, r: &mut FakeRam| {
        assert_eq!(call(true, r, &mut s, nr::DOMCTL, a).0, Err(err), "{a:x?}");
    };
    expect([dc::CREATE, 0x100, 8192, 0, 0], Error::TooBig, &mut r);
    expect([dc::CREATE, 0x100, len, 0x200, DOMCTL_BUF_MAX + 1], Error::TooBig, &mut r);
    expect([dc::CREATE, 0x100, len - 1, 0, 0], Error::Inval, &mut r);
    expect([dc::CREATE, 0xfff0, len, 0, 0], Error::Fault, &mut r);
    expect([dc::CREATE, u64::MAX - 8, len, 0, 0], Error::Fault, &mut r);
    expect([dc::CREATE, 0x100, len, 0x200, 8], Error::Inval, &mut r);
    expect([99, 0, 0, 0, 0], Error::NoSys, &mut r);
    for bad in [
        CreateDomain { memory_mib: 1, ..create_arg("x") },
        CreateDomain { vcpus: 0, ..create_arg("x") },
        CreateDomain { vcpus: 99, ..create_arg("x") },
        CreateDomain { flags: 1, ..create_arg("x") },
        CreateDomain { on_crash: 7, ..create_arg("x") },
        CreateDomain { name: *b"bad name\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", ..create_arg("x") },
        CreateDomain { name: [b'a'; 32], ..create_arg("x") },
        CreateDomain { name: [0; 32], ..create_arg("x") },
    ] {
        put(&mut r, 0x100, &bad);
        expect([dc::CREATE, 0x100, len, 0, 0], Error::Inval, &mut r);
    }
    assert!(s.commands.is_empty(), "nothing reached the service");
}

#[test]
fn load_image_chunks_stay_inside_the_image() {
    let (mut r, mut s) = (ram(), FakeServices::default());
    let mut l = LoadImage { domid: 1, kind: 0, offset: 0, total: 0x100 };
    let len = put(&mut r, 0x100, &l);
    assert!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::LOAD_IMAGE, 0x100, len, 0x1000, 0x100]).0.is_ok());
    for (offset, total, kind, buf_len, err) in [
        (0x80, 0x100, 0, 0x81, Error::Inval),
        (u64::MAX, 0x100, 0, 2, Error::Inval),
        (0, 0, 0, 1, Error::TooBig),
        (0, oxen_abi::IMAGE_MAX + 1, 0, 1, Error::TooBig),
        (0, 0x100, 5, 1, Error::Inval),
        (0, 0x100, 0, 0, Error::Inval),
    ] {
        l = LoadImage { domid: 1, kind, offset, total };
        put(&mut r, 0x100, &l);
        assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::LOAD_IMAGE, 0x100, len, 0x1000, buf_len]).0, Err(err));
    }
    // The buffer itself must be dom0's memory.
    l = LoadImage { domid: 1, kind: 0, offset: 0, total: 0x100 };
    put(&mut r, 0x100, &l);
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::LOAD_IMAGE, 0x100, len, 0xff80, 0x100]).0, Err(Error::Fault));
    assert_eq!(s.commands.len(), 1);
}

#[test]
fn outputs_are_copied_back() {
    let (mut r, mut s) = (ram(), FakeServices::default());
    let len = put(&mut r, 0x100, &DomainRef { domid: 3, _pad: 0 });
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::GET_INFO, 0x100, len, 0x400, 80]).0, Ok(0));
    let mut out = [0u8; 80];
    r.read(0x400, &mut out).unwrap();
    let info = DomainInfo::read_from(&out).unwrap();
    assert_eq!((info.domid, info.memory_kib), (3, 16384));
    // Too small a buffer is refused before anything happens.
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::GET_INFO, 0x100, len, 0x400, 79]).0, Err(Error::Inval));
    // An output buffer that is not dom0's memory fails before the command runs.
    let before = s.commands.len();
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::GET_INFO, 0x100, len, 0xffc0, 80]).0, Err(Error::Fault));
    assert_eq!(s.commands.len(), before);

    let len = put(&mut r, 0x100, &RingRead { domid: 3, _pad: 0, offset: 10, next: 0, lost: 0 });
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::CONSOLE_READ, 0x100, len, 0x400, 16]).0, Ok(2));
    let mut back = [0u8; 32];
    r.read(0x100, &mut back).unwrap();
    let rr = RingRead::read_from(&back).unwrap();
    assert_eq!((rr.next, rr.lost), (12, 1));
    let mut text = [0u8; 2];
    r.read(0x400, &mut text).unwrap();
    assert_eq!(&text, b"hi");
}

#[test]
fn shutdown_build_and_list_arguments() {
    let (mut r, mut s) = (ram(), FakeServices::default());
    let len = put(&mut r, 0x100, &oxen_abi::ShutdownDomain { domid: 2, reason: 2 });
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::SHUTDOWN, 0x100, len, 0, 0]).0, Err(Error::Inval));
    let mut b = oxen_abi::BuildDomain { domid: 2, _pad: 0, cmdline: [b'x'; oxen_abi::CMDLINE_LEN] };
    let len = put(&mut r, 0x100, &b);
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::BUILD, 0x100, len, 0, 0]).0, Err(Error::Inval));
    b.cmdline[3] = 0;
    put(&mut r, 0x100, &b);
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::BUILD, 0x100, len, 0, 0]).0, Ok(0));
    assert_eq!(s.commands.last(), Some(&Command::Build { domid: 2, cmdline: "xxx".into() }));
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::LIST, 0x100, 8, 0x400, 160]).0, Err(Error::Inval));
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::LIST, 0, 0, 0x400, 160]).0, Ok(0));
}

/// Random registers and argument bytes from a domU and from dom0: the
/// dispatcher never panics, and a domU never reaches the service's domctl.
#[test]
fn random_calls_never_panic() {
    let mut rng = xorshift(0x0bad_cafe);
    let mut r = ram();
    for i in 0..20_000 {
        for b in r.0[0x100..0x300].iter_mut() {
            *b = rng() as u8;
        }
        let mut pick = || match rng() % 4 {
            0 => rng(),
            1 => rng() % 0x1_0000,
            2 => 0x100,
            _ => rng() % 0x300,
        };
        let nr = pick() % 20;
        let a = [pick() % 14, pick(), pick(), pick(), pick()];
        let mut s = FakeServices::default();
        let privileged = i % 2 == 0;
        let _ = call(privileged, &mut r, &mut s, nr, a);
        if !privileged {
            assert!(s.commands.is_empty());
        }
    }
}

#[test]
fn scheduler_commands_are_checked() {
    use oxen_abi::{sched_flags, SchedCredit, VcpuAffinity};
    let (mut r, mut s) = (ram(), FakeServices::default());
    let mut c = SchedCredit { domid: 1, flags: sched_flags::SET_WEIGHT, weight: 0, cap: 0 };
    let len = put(&mut r, 0x100, &c);
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::SCHED_CREDIT, 0x100, len, 0, 0]).0, Err(Error::Inval));
    c.weight = 70_000;
    put(&mut r, 0x100, &c);
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::SCHED_CREDIT, 0x100, len, 0, 0]).0, Err(Error::Inval));
    c = SchedCredit { domid: 1, flags: 4, weight: 256, cap: 0 };
    put(&mut r, 0x100, &c);
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::SCHED_CREDIT, 0x100, len, 0, 0]).0, Err(Error::Inval));
    // Reading needs no valid values.
    c = SchedCredit { domid: 1, flags: 0, weight: 0, cap: 0 };
    put(&mut r, 0x100, &c);
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::SCHED_CREDIT, 0x100, len, 0, 0]).0, Ok(0));
    let a = VcpuAffinity { domid: 1, vcpu: 0, cpus: 0 };
    let len = put(&mut r, 0x100, &a);
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::VCPU_AFFINITY, 0x100, len, 0, 0]).0, Err(Error::Inval));
    put(&mut r, 0x100, &VcpuAffinity { domid: 1, vcpu: 99, cpus: 1 });
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::VCPU_AFFINITY, 0x100, len, 0, 0]).0, Err(Error::Inval));
    put(&mut r, 0x100, &VcpuAffinity { domid: 1, vcpu: 0, cpus: 2 });
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::VCPU_AFFINITY, 0x100, len, 0, 0]).0, Ok(0));
    assert_eq!(s.commands.last(), Some(&Command::VcpuAffinity { domid: 1, vcpu: 0, cpus: 2 }));
}

#[test]
fn console_read_copies_what_is_queued_and_never_waits() {
    let (mut r, mut s) = (ram(), FakeServices::default());
    s.input = b"hello".to_vec();
    r.0[0x200..0x208].copy_from_slice(b"XXXXXXXX");
    assert_eq!(call(false, &mut r, &mut s, nr::CONSOLE_READ, [0x200, 3, 0, 0, 0]), (Ok(3), After::Continue));
    assert_eq!(&r.0[0x200..0x203], b"hel");
    assert_eq!(call(false, &mut r, &mut s, nr::CONSOLE_READ, [0x200, 100, 0, 0, 0]).0, Ok(2));
    assert_eq!(&r.0[0x200..0x202], b"lo");
    // Nothing queued: 0 at once.
    assert_eq!(call(false, &mut r, &mut s, nr::CONSOLE_READ, [0x200, 100, 0, 0, 0]), (Ok(0), After::Continue));
    assert!(s.refusals.is_empty());
}

#[test]
fn console_read_checks_pointer_length_and_caller() {
    let (mut r, mut s) = (ram(), FakeServices::default());
    s.input = b"keep".to_vec();
    for (gpa, len, err) in [
        (0x2_0000, 4, Error::Fault),
        (0xfffe, 4, Error::Fault),
        (u64::MAX - 1, 4, Error::Fault),
        (0, u64::MAX, Error::TooBig),
        (0, CONSOLE_READ_MAX + 1, Error::TooBig),
    ] {
        assert_eq!(call(false, &mut r, &mut s, nr::CONSOLE_READ, [gpa, len, 0, 0, 0]).0, Err(err), "{gpa:#x}+{len:#x}");
    }
    // dom0 reads its console through its UART.
    assert_eq!(call(true, &mut r, &mut s, nr::CONSOLE_READ, [0x200, 4, 0, 0, 0]).0, Err(Error::Perm));
    // No refused call took a byte.
    assert_eq!(s.input, b"keep");
    assert_eq!(s.refusals.len(), 6);
    assert!(s.refusals[5].contains("console_read from dom0"));
}

#[test]
fn console_input_is_dom0s_bounded_and_copied_once() {
    let (mut r, mut s) = (ram(), FakeServices::default());
    let len = put(&mut r, 0x100, &DomainRef { domid: 4, _pad: 0 });
    r.0[0x400..0x405].copy_from_slice(b"ls -l");
    // The service took 3 of 5: the caller learns it.
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::CONSOLE_INPUT, 0x100, len, 0x400, 5]).0, Ok(3));
    assert_eq!(s.commands.last(), Some(&Command::ConsoleInput(4)));
    assert_eq!(s.sent, [b"ls -l".to_vec()]);
    // The buffer is only read: dom0's memory is left as it was.
    assert_eq!(&r.0[0x400..0x405], b"ls -l");
    for (a, err) in [
        ([dc::CONSOLE_INPUT, 0x100, len, 0x400, 0], Error::Inval),
        ([dc::CONSOLE_INPUT, 0x100, len, 0x400, oxen_abi::CONSOLE_INPUT_MAX + 1], Error::TooBig),
        ([dc::CONSOLE_INPUT, 0x100, len - 1, 0x400, 5], Error::Inval),
        ([dc::CONSOLE_INPUT, 0x100, len, 0xfffe, 5], Error::Fault),
    ] {
        assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, a).0, Err(err), "{a:x?}");
    }
    // A domU may not send input anywhere.
    assert_eq!(call(false, &mut r, &mut s, nr::DOMCTL, [dc::CONSOLE_INPUT, 0x100, len, 0x400, 5]).0, Err(Error::Perm));
    assert_eq!(s.sent.len(), 1, "no refused call reached the service");
}

#[test]
fn vcpu_state_is_dom0s_and_its_arguments_checked() {
    use oxen_abi::VcpuStateRef;
    let (mut r, mut s) = (ram(), FakeServices::default());
    let len = put(&mut r, 0x100, &VcpuStateRef { domid: 4, vcpu: 1 });
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::VCPU_STATE_GET, 0x100, len, 0x400, 64]).0, Ok(4));
    assert_eq!(s.commands.last(), Some(&Command::VcpuStateGet { domid: 4, vcpu: 1 }));
    assert_eq!(&r.0[0x400..0x404], b"OXVS", "the state is copied out");
    r.0[0x800..0x810].copy_from_slice(&[7; 16]);
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::VCPU_STATE_SET, 0x100, len, 0x800, 16]).0, Ok(0));
    assert_eq!(s.sent, [vec![7u8; 16]], "the state is copied in once, as it was");
    let n = s.commands.len();
    let big = put(&mut r, 0x200, &VcpuStateRef { domid: 4, vcpu: oxen_abi::MAX_VCPUS });
    for (a, err) in [
        ([dc::VCPU_STATE_GET, 0x100, len, 0x400, 15], Error::Inval),
        ([dc::VCPU_STATE_SET, 0x100, len, 0x800, 15], Error::Inval),
        ([dc::VCPU_STATE_GET, 0x100, len - 1, 0x400, 64], Error::Inval),
        ([dc::VCPU_STATE_GET, 0x200, big, 0x400, 64], Error::Inval),
        ([dc::VCPU_STATE_SET, 0x100, len, 0xfff8, 16], Error::Fault),
        ([dc::VCPU_STATE_GET, 0x100, len, 0x400, oxen_abi::DOMCTL_BUF_MAX + 1], Error::TooBig),
    ] {
        assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, a).0, Err(err), "{a:x?}");
    }
    assert_eq!(call(false, &mut r, &mut s, nr::DOMCTL, [dc::VCPU_STATE_GET, 0x100, len, 0x400, 64]).0, Err(Error::Perm));
    assert_eq!(s.commands.len(), n, "no refused call reached the service");
}

#[test]
fn platform_state_is_dom0s_and_its_buffer_sized() {
    use oxen_abi::platform_state::ENCODED_LEN;
    let (mut r, mut s) = (ram(), FakeServices::default());
    let len = put(&mut r, 0x100, &DomainRef { domid: 4, _pad: 0 });
    let n = ENCODED_LEN as u64;
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::PLATFORM_STATE_GET, 0x100, len, 0x1000, n]).0, Ok(4));
    assert_eq!(s.commands.last(), Some(&Command::PlatformStateGet(4)));
    assert_eq!(&r.0[0x1000..0x1004], b"OXPS", "the state is copied out");
    r.0[0x2000..0x2000 + ENCODED_LEN].fill(9);
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::PLATFORM_STATE_SET, 0x100, len, 0x2000, n]).0, Ok(0));
    assert_eq!(s.sent, [vec![9u8; ENCODED_LEN]], "the state is copied in once, as it was");
    let before = s.commands.len();
    for (a, err) in [
        ([dc::PLATFORM_STATE_GET, 0x100, len, 0x1000, n - 1], Error::Inval),
        ([dc::PLATFORM_STATE_SET, 0x100, len, 0x2000, n - 1], Error::Inval),
        ([dc::PLATFORM_STATE_SET, 0x100, len, 0x2000, n + 1], Error::Inval),
        ([dc::PLATFORM_STATE_GET, 0x100, len - 1, 0x1000, n], Error::Inval),
    ] {
        assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, a).0, Err(err), "{a:x?}");
    }
    assert_eq!(call(false, &mut r, &mut s, nr::DOMCTL, [dc::PLATFORM_STATE_GET, 0x100, len, 0x1000, n]).0, Err(Error::Perm));
    assert_eq!(s.commands.len(), before, "no refused call reached the service");
}

#[test]
fn cpuid_get_needs_room_for_every_leaf() {
    let (mut r, mut s) = (ram(), FakeServices::default());
    let len = put(&mut r, 0x100, &DomainRef { domid: 4, _pad: 0 });
    let n = oxen_abi::CPUID_GET_LEN as u64;
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::CPUID_GET, 0x100, len, 0x1000, n]).0, Ok(0));
    assert_eq!(s.commands.last(), Some(&Command::CpuidGet(4)));
    let before = s.commands.len();
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::CPUID_GET, 0x100, len, 0x1000, n - 1]).0, Err(Error::Inval));
    assert_eq!(call(false, &mut r, &mut s, nr::DOMCTL, [dc::CPUID_GET, 0x100, len, 0x1000, n]).0, Err(Error::Perm));
    assert_eq!(s.commands.len(), before);
}

#[test]
fn ioreq_commands_are_checked_before_the_service() {
    use oxen_abi::{ioreq, IoreqDone, IoreqRange, IoreqSetup};
    let range = |kind, flags, start, len| IoreqRange { domid: 3, kind, flags, _pad: 0, start, len };
    let decode_range = |r: IoreqRange| domctl::decode(dc::IOREQ_RANGE, r.as_bytes(), 0).map_err(|e| e.error);
    let mmio = u32::from(ioreq::KIND_MMIO);
    let pio = u32::from(ioreq::KIND_PIO);
    assert!(decode_range(range(mmio, ioreq::FLAG_POSTED_WRITES, 0x2000_0000, 0x1000)).is_ok());
    assert!(decode_range(range(pio, 0, 0xfff0, 0x10)).is_ok());
    // 4-byte units (1.9): a device's notify register on its own.
    assert!(decode_range(range(mmio, ioreq::FLAG_POSTED_WRITES, 0x2000_0050, 4)).is_ok());
    assert!(decode_range(range(mmio, 0, 0x2000_0800, 0x1000)).is_ok());
    // An interrupt-status pair (1.10): 8 bytes of MMIO, that flag alone.
    let status = ioreq::FLAG_INTERRUPT_STATUS;
    assert!(decode_range(range(mmio, status, 0xfeb0_0060, 8)).is_ok());
    for bad in [
        range(mmio, status, 0xfeb0_0060, 4),
        range(mmio, status, 0xfeb0_0060, 0x1000),
        range(mmio, status | ioreq::FLAG_POSTED_WRITES, 0xfeb0_0060, 8),
        range(pio, status, 0x60, 8),
        range(mmio, 4, 0x2000_0000, 0x1000),
    ] {
        assert_eq!(decode_range(bad), Err(Error::Inval), "{bad:?}");
    }
    for bad in [
        range(mmio, 0, 0x2000_0002, 0x1000),
        range(mmio, 0, 0x2000_0000, 0x802),
        range(mmio, 0, 0x2000_0000, 0),
        range(mmio, 0, 1 << 52, 4),
        range(mmio, 0, !0xfff, 0x2000),
        range(mmio, 2, 0x2000_0000, 0x1000),
        range(pio, 0, 0xfff0, 0x11),
        range(2, 0, 0x5000, 1),
        range(0x100, 0, 0x5000, 1),
    ] {
        assert_eq!(decode_range(bad), Err(Error::Inval), "{bad:?}");
    }
    let setup = |page| IoreqSetup { domid: 3, _pad: 0, page };
    assert_eq!(domctl::decode(dc::IOREQ_SETUP, setup(0x1000).as_bytes(), 0), Ok(Command::IoreqSetup { domid: 3, page: 0x1000 }));
    assert_eq!(domctl::decode(dc::IOREQ_SETUP, setup(0).as_bytes(), 0), Ok(Command::IoreqSetup { domid: 3, page: 0 }));
    assert!(domctl::decode(dc::IOREQ_SETUP, setup(0x1008).as_bytes(), 0).is_err());
    assert!(domctl::decode(dc::IOREQ_SETUP, setup(0x1000).as_bytes(), 8).is_err(), "no buffer");
    let done = |vcpu| IoreqDone { domid: 3, vcpu };
    assert_eq!(domctl::decode(dc::IOREQ_DONE, done(7).as_bytes(), 0), Ok(Command::IoreqDone { domid: 3, vcpu: 7 }));
    assert!(domctl::decode(dc::IOREQ_DONE, done(8).as_bytes(), 0).is_err());
}

#[test]
fn foreign_mappings_are_dom0s_bounded_and_answered_in_the_argument() {
    use oxen_abi::{ForeignMap, ForeignUnmap, FOREIGN_MAP_MAX_PAGES};
    let (mut r, mut s) = (ram(), FakeServices::default());
    let m = |domid, first_gfn, count| ForeignMap { domid, _pad: 0, first_gfn, count, addr: 0 };
    let len = put(&mut r, 0x100, &ForeignMap { addr: 0x1234, ..m(4, 2, 3) });
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::FOREIGN_MAP, 0x100, len, 0, 0]).0, Ok(0x40_0000_2000));
    // The input's `addr` is not trusted, the answer is copied back.
    assert_eq!(s.commands.last(), Some(&Command::ForeignMap(m(4, 2, 3))));
    let mut back = [0u8; 32];
    r.read(0x100, &mut back).unwrap();
    assert_eq!(ForeignMap::read_from(&back).unwrap().addr, 0x40_0000_2000);
    let ulen = put(&mut r, 0x200, &ForeignUnmap { addr: 0x40_0000_2000, count: 3 });
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::FOREIGN_UNMAP, 0x200, ulen, 0, 0]).0, Ok(0));
    assert_eq!(s.commands.last(), Some(&Command::ForeignUnmap { addr: 0x40_0000_2000, count: 3 }));
    let n = s.commands.len();
    for (arg, err) in [
        (m(4, 0, 0), Error::Inval),
        (m(4, 0, FOREIGN_MAP_MAX_PAGES + 1), Error::Inval),
        (m(4, u64::MAX, 1), Error::Inval),
        (m(4, (1 << 40) - 1, 2), Error::Inval),
    ] {
        let len = put(&mut r, 0x300, &arg);
        assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::FOREIGN_MAP, 0x300, len, 0, 0]).0, Err(err), "{arg:?}");
    }
    // A buffer, a short argument, a misaligned or empty unmap.
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::FOREIGN_MAP, 0x100, len, 0x400, 8]).0, Err(Error::Inval));
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::FOREIGN_MAP, 0x100, len - 8, 0, 0]).0, Err(Error::Inval));
    for u in [ForeignUnmap { addr: 0x40_0000_2001, count: 1 }, ForeignUnmap { addr: 0x40_0000_2000, count: 0 }] {
        let ulen = put(&mut r, 0x200, &u);
        assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::FOREIGN_UNMAP, 0x200, ulen, 0, 0]).0, Err(Error::Inval));
    }
    // Only dom0 maps anything.
    assert_eq!(call(false, &mut r, &mut s, nr::DOMCTL, [dc::FOREIGN_MAP, 0x100, len, 0, 0]).0, Err(Error::Perm));
    assert_eq!(s.commands.len(), n, "no refused call reached the service");
}

#[test]
fn device_commands_are_dom0s_and_checked() {
    use oxen_abi::{device_kind, DeviceAdd, IrqLine};
    let (mut r, mut s) = (ram(), FakeServices::default());
    let line = IrqLine { domid: 3, gsi: 16, level: 1, _pad: 0 };
    let len = put(&mut r, 0x100, &line);
    assert_eq!(call(false, &mut r, &mut s, nr::DOMCTL, [dc::IRQ_LINE, 0x100, len, 0, 0]).0, Err(Error::Perm));
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::IRQ_LINE, 0x100, len, 0, 0]).0, Ok(0));
    assert_eq!(s.commands.last(), Some(&Command::IrqLine { domid: 3, gsi: 16, level: true }));
    for bad in [IrqLine { level: 2, ..line }, IrqLine { _pad: 1, ..line }] {
        put(&mut r, 0x100, &bad);
        assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::IRQ_LINE, 0x100, len, 0, 0]).0, Err(Error::Inval));
    }
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::IRQ_LINE, 0x100, len - 1, 0, 0]).0, Err(Error::Inval));
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::IRQ_LINE, 0x100, len, 0x200, 8]).0, Err(Error::Inval));

    let add = DeviceAdd { domid: 3, kind: device_kind::VIRTIO_MMIO, ..Default::default() };
    let len = put(&mut r, 0x100, &add);
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::DEVICE_ADD, 0x100, len, 0, 0]).0, Ok(0));
    // Where the service put it comes back in the argument.
    let back = DeviceAdd::read_from(&r.0[0x100..]).unwrap();
    assert_eq!((back.base, back.size, back.gsi), (0xfeb0_0000, 0x1000, 16));
    // A caller cannot ask for a place, nor for a kind there is not.
    for bad in [DeviceAdd { base: 0x1000, ..add }, DeviceAdd { gsi: 4, ..add }, DeviceAdd { kind: 9, ..add }] {
        put(&mut r, 0x100, &bad);
        let n = s.commands.len();
        assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::DEVICE_ADD, 0x100, len, 0, 0]).0, Err(Error::Inval));
        assert_eq!(s.commands.len(), n, "refused before the service acts");
    }
}

#[test]
fn log_dirty_arguments_are_checked_before_the_service() {
    use oxen_abi::{log_dirty as op, LogDirty};
    use domctl::LogDirtyOp;
    let (mut r, mut s) = (ram(), FakeServices::default());
    let l = |op, first, pages| LogDirty { domid: 4, op, first, pages };
    // ENABLE and DISABLE: no buffer, no range.
    let len = put(&mut r, 0x100, &l(op::ENABLE, 0, 0));
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::LOG_DIRTY, 0x100, len, 0, 0]).0, Ok(0));
    assert_eq!(s.commands.last(), Some(&Command::LogDirty { domid: 4, op: LogDirtyOp::Enable, first: 0, pages: 0 }));
    // CLEAN: the service's bits come back in the buffer.
    r.write(0x400, &[0xff; 16]).unwrap();
    let len = put(&mut r, 0x100, &l(op::CLEAN, 64, 100));
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::LOG_DIRTY, 0x100, len, 0x400, 16]).0, Ok(2));
    assert_eq!(s.commands.last(), Some(&Command::LogDirty { domid: 4, op: LogDirtyOp::Clean, first: 64, pages: 100 }));
    let mut back = [0u8; 16];
    r.read(0x400, &mut back).unwrap();
    assert_eq!(back[..2], [0b101, 0], "written back, the rest zeroed");
    let n = s.commands.len();
    for (arg, buf_len, why) in [
        (l(op::ENABLE, 0, 0), 8, "a buffer for enable"),
        (l(op::DISABLE, 64, 0), 0, "a range for disable"),
        (l(op::CLEAN, 3, 64), 8, "misaligned first"),
        (l(op::PEEK, 0, 0), 8, "no pages"),
        (l(op::PEEK, 0, 65), 8, "65 pages need two words"),
        (l(op::CLEAN, 0, oxen_abi::DOMCTL_BUF_MAX * 8 + 1), 0x8000, "more pages than a buffer holds"),
        (l(op::CLEAN, u64::MAX - 63, 64), 8, "first past any guest"),
        (l(4, 0, 0), 0, "no op 4"),
    ] {
        let len = put(&mut r, 0x300, &arg);
        assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::LOG_DIRTY, 0x300, len, 0x400, buf_len]).0, Err(Error::Inval), "{why}");
    }
    // A short argument; a domU calling it.
    assert_eq!(call(true, &mut r, &mut s, nr::DOMCTL, [dc::LOG_DIRTY, 0x100, len - 8, 0, 0]).0, Err(Error::Inval));
    assert_eq!(call(false, &mut r, &mut s, nr::DOMCTL, [dc::LOG_DIRTY, 0x100, len, 0x400, 16]).0, Err(Error::Perm));
    assert_eq!(s.commands.len(), n, "no refused call reached the service");
}
