//! Completing a guest's access to an emulated MMIO page: fetch the instruction
//! at RIP through the guest's page tables, decode it, perform the access on the
//! device, write the register back and step RIP past it.

use super::decode::{
    self, sign_extend, size_mask as mask, CodeSize, DecodeError, Extend, Gpr, MmioAccess, MmioInsn, RegOperand, Source,
};
use super::walk::{read_linear_partial, PagingState, WalkError};
use super::GuestPhysRead;
use crate::devices::MmioDevice;
use crate::mem::GuestPhysAddr;
use crate::virt::{GuestGprs, Vcpu};

/// The guest state the emulator needs beyond what `Vcpu` offers; the backend
/// reads it from the VMCB/VMCS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuState {
    pub paging: PagingState,
    /// From CS.L / CS.D and CR0.PE.
    pub code: CodeSize,
    /// CS.base, added to RIP outside 64-bit code (real mode: selector * 16).
    pub cs_base: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmulateError {
    /// The instruction bytes could not be read (the guest changed its page
    /// tables since it fetched them).
    Fetch(WalkError),
    /// Not an instruction this emulator completes.
    Decode(DecodeError),
    /// The instruction's memory operand is not at the faulting address: the
    /// instruction changed under us, or the access spans two pages.
    AddressMismatch,
    /// The access runs past the end of the faulting page.
    PageCrossing,
    /// `gpa` is below the device's base.
    OutsideDevice,
    /// The instruction would load RSP, which `Vcpu` cannot set.
    LoadsRsp,
    /// The device has not answered yet (`MmioDevice::waits`): nothing in the
    /// guest changed; the instruction runs again when it has.
    Wait,
}

/// Fetches and decodes the instruction at `rip`. Reads up to 15 bytes but only
/// needs the instruction's own bytes to be mapped, so an instruction that ends
/// just before an unmapped page decodes.
impl CpuState {
    /// From raw register values as a backend holds them: `[cr0, cr3, cr4, efer]`,
    /// CS's base and L/D bits, and the guest's MAXPHYADDR.
    pub fn from_raw([cr0, cr3, cr4, efer]: [u64; 4], cs_base: u64, (cs_l, cs_d): (bool, bool), phys_bits: u8) -> Self {
        use x86_64::registers::control::{Cr0Flags, Cr4Flags};
        use x86_64::registers::model_specific::EferFlags;
        let cr0 = Cr0Flags::from_bits_retain(cr0);
        let efer = EferFlags::from_bits_retain(efer);
        CpuState {
            paging: PagingState {
                cr0,
                cr3,
                cr4: Cr4Flags::from_bits_retain(cr4),
                efer,
                phys_bits,
            },
            code: CodeSize::from_cs(
                cr0.contains(Cr0Flags::PROTECTED_MODE_ENABLE),
                efer.contains(EferFlags::LONG_MODE_ACTIVE),
                cs_l,
                cs_d,
            ),
            cs_base,
        }
    }
}

/// The host's MAXPHYADDR (CPUID 0x8000_0008 EAX[7:0]), which guests see unchanged.
pub fn host_phys_bits() -> u8 {
    #[cfg(target_arch = "x86_64")]
    {
        let r = core::arch::x86_64::__cpuid(0x8000_0008);
        (r.eax & 0xff) as u8
    }
    #[cfg(not(target_arch = "x86_64"))]
    36
}

/// Reads up to `buf.len()` bytes of the instruction stream at the guest's
/// RIP; returns how many it could read, and the fault that stopped it.
pub fn fetch(mem: &(impl GuestPhysRead + ?Sized), cpu: &CpuState, rip: u64, buf: &mut [u8]) -> (usize, Result<(), WalkError>) {
    let linear = match cpu.code {
        CodeSize::Bits64 => rip,
        _ => cpu.cs_base.wrapping_add(rip) & 0xffff_ffff,
    };
    read_linear_partial(mem, &cpu.paging, linear, buf)
}

pub fn fetch_and_decode(mem: &(impl GuestPhysRead + ?Sized), cpu: &CpuState, rip: u64) -> Result<MmioInsn, EmulateError> {
    let mut buf = [0; decode::MAX_LEN];
    let (n, fetched) = fetch(mem, cpu, rip, &mut buf);
    match (decode::decode(&buf[..n], cpu.code), fetched) {
        (Ok(insn), _) => Ok(insn),
        (Err(DecodeError::Truncated), Err(fault)) => Err(EmulateError::Fetch(fault)),
        (Err(e), _) => Err(EmulateError::Decode(e)),
    }
}

/// Completes the access of the instruction at the guest's RIP, which faulted on
/// guest-physical `gpa` inside `device` mapped at `base`. On success the
/// register and RIP are updated and the decoded instruction is returned (for a
/// trace). On error nothing in the guest or the device has changed: the caller
/// decides between #UD, #GP or killing the guest.
pub fn emulate_mmio(
    vcpu: &mut impl Vcpu,
    mem: &(impl GuestPhysRead + ?Sized),
    cpu: &CpuState,
    gpa: GuestPhysAddr,
    base: GuestPhysAddr,
    device: &mut dyn MmioDevice,
) -> Result<MmioInsn, EmulateError> {
    let rip = vcpu.rip();
    let insn = fetch_and_decode(mem, cpu, rip)?;
    let offset = gpa.as_u64().checked_sub(base.as_u64()).ok_or(EmulateError::OutsideDevice)?;
    if gpa.page_offset() + u64::from(insn.size) > 4096 {
        return Err(EmulateError::PageCrossing);
    }
    let next_rip = match cpu.code {
        CodeSize::Bits64 => rip.wrapping_add(insn.len.into()),
        CodeSize::Bits32 => rip.wrapping_add(insn.len.into()) & 0xffff_ffff,
        CodeSize::Bits16 => rip.wrapping_add(insn.len.into()) & 0xffff,
    };

    let regs = *vcpu.gprs();
    let rsp = vcpu.rsp();
    let get = |g: Gpr| gpr_value(&regs, rsp, g);
    // In 64-bit code linear = effective address except through FS/GS, and paging
    // keeps the page offset: a mismatch means this is not the faulting access.
    // (Elsewhere segment bases are not known here.)
    if cpu.code == CodeSize::Bits64
        && insn.mem.segment_override.is_none()
        && insn.mem.effective_address(get, next_rip) & 0xfff != gpa.page_offset()
    {
        return Err(EmulateError::AddressMismatch);
    }

    let size = insn.size;
    let reg_value = |r: RegOperand| {
        let v = get(r.gpr);
        if r.high_byte {
            v >> 8
        } else {
            v
        }
    };
    match insn.access {
        MmioAccess::Read { dest, dest_size, extend } => {
            let slot = reg_slot(vcpu.gprs(), dest.gpr).ok_or(EmulateError::LoadsRsp)?;
            let raw = device.mmio_read(offset, size);
            if device.waits() {
                return Err(EmulateError::Wait);
            }
            let v = match extend {
                Extend::Sign => sign_extend(raw, size),
                Extend::None | Extend::Zero => raw & mask(size),
            };
            *slot = merge(*slot, v, dest_size, dest.high_byte);
        }
        MmioAccess::Write { src } => {
            let v = match src {
                Source::Reg(r) => reg_value(r),
                Source::Imm(i) => i,
            };
            device.mmio_write(offset, size, v & mask(size));
            if device.waits() {
                return Err(EmulateError::Wait);
            }
        }
        MmioAccess::Exchange { .. } if device.forwards() => {
            return Err(EmulateError::Decode(DecodeError::Unsupported));
        }
        MmioAccess::Exchange { reg } => {
            let new = reg_value(reg) & mask(size);
            let slot = reg_slot(vcpu.gprs(), reg.gpr).ok_or(EmulateError::LoadsRsp)?;
            let old = device.mmio_read(offset, size) & mask(size);
            device.mmio_write(offset, size, new);
            *slot = merge(*slot, old, size, reg.high_byte);
        }
    }
    vcpu.set_rip(next_rip);
    Ok(insn)
}

/// A register after writing `v` to its low `size` bytes (or to bits 15:8): byte
/// and word writes keep the other bits, dword writes zero bits 63:32 (SDM vol. 1
/// §3.4.1.1).
fn merge(old: u64, v: u64, size: u8, high_byte: bool) -> u64 {
    match size {
        1 if high_byte => (old & !0xff00) | ((v & 0xff) << 8),
        1 | 2 => (old & !mask(size)) | (v & mask(size)),
        4 => v & 0xffff_ffff,
        _ => v,
    }
}

fn gpr_value(regs: &GuestGprs, rsp: u64, g: Gpr) -> u64 {
    let mut copy = *regs;
    reg_slot(&mut copy, g).map_or(rsp, |v| *v)
}

/// `g`'s slot in `GuestGprs`; `None` for RSP, which is not there.
fn reg_slot(regs: &mut GuestGprs, g: Gpr) -> Option<&mut u64> {
    Some(match g.0 & 15 {
        0 => &mut regs.rax,
        1 => &mut regs.rcx,
        2 => &mut regs.rdx,
        3 => &mut regs.rbx,
        4 => return None,
        5 => &mut regs.rbp,
        6 => &mut regs.rsi,
        7 => &mut regs.rdi,
        8 => &mut regs.r8,
        9 => &mut regs.r9,
        10 => &mut regs.r10,
        11 => &mut regs.r11,
        12 => &mut regs.r12,
        13 => &mut regs.r13,
        14 => &mut regs.r14,
        _ => &mut regs.r15,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulate::testmem::VecMem;
    use crate::emulate::walk::WalkError;
    use alloc::vec::Vec;
    use x86_64::registers::control::{Cr0Flags, Cr4Flags};
    use x86_64::registers::model_specific::EferFlags;

    use crate::virt::fake::FakeVcpu as TestVcpu;

    #[derive(Debug, PartialEq, Eq)]
    enum Op {
        Read(u64, u8),
        Write(u64, u8, u64),
    }

    /// Records accesses; reads return `value` (with junk above the access size,
    /// which the emulator must drop).
    struct TestDevice {
        value: u64,
        log: Vec<Op>,
    }

    impl MmioDevice for TestDevice {
        fn mmio_read(&mut self, offset: u64, size: u8) -> u64 {
            self.log.push(Op::Read(offset, size));
            self.value
        }
        fn mmio_write(&mut self, offset: u64, size: u8, value: u64) {
            self.log.push(Op::Write(offset, size, value));
        }
    }

    const LAPIC: u64 = 0xfee0_0000;
    const CODE_VA: u64 = 0xffff_ffff_8100_0000;

    /// Long mode; code at `CODE_VA` (4 KiB page -> frame 0x9000) and
    /// `CODE_VA + 0x1000` (-> frame 0x6000: not contiguous); the page after is
    /// not mapped.
    fn long_mode() -> (VecMem, CpuState) {
        let mut m = VecMem::new(0x10000);
        let idx = |level: u32| (CODE_VA >> (12 + 9 * level)) & 0x1ff;
        m.put_u64(0x1000 + idx(3) * 8, 0x2003);
        m.put_u64(0x2000 + idx(2) * 8, 0x3003);
        m.put_u64(0x3000 + idx(1) * 8, 0x4003);
        m.put_u64(0x4000 + idx(0) * 8, 0x9001);
        m.put_u64(0x4000 + (idx(0) + 1) * 8, 0x6001);
        let cpu = CpuState {
            paging: PagingState {
                cr0: Cr0Flags::PAGING | Cr0Flags::PROTECTED_MODE_ENABLE,
                cr3: 0x1000,
                cr4: Cr4Flags::PHYSICAL_ADDRESS_EXTENSION,
                efer: EferFlags::LONG_MODE_ACTIVE | EferFlags::NO_EXECUTE_ENABLE,
                phys_bits: 40,
            },
            code: CodeSize::Bits64,
            cs_base: 0,
        };
        (m, cpu)
    }

    fn vcpu(rip: u64, set: impl FnOnce(&mut GuestGprs)) -> TestVcpu {
        let mut v = TestVcpu { gprs: GuestGprs::default(), rip, rsp: 0xffff_c900_0000_7f00, ..Default::default() };
        set(&mut v.gprs);
        v
    }

    fn dev(value: u64) -> TestDevice {
        TestDevice { value, log: Vec::new() }
    }

    /// Runs `code` placed at `CODE_VA + at` against the local APIC page at `gpa`.
    fn run(code: &[u8], at: u64, v: &mut TestVcpu, d: &mut TestDevice, gpa: u64) -> Result<MmioInsn, EmulateError> {
        let (mut m, cpu) = long_mode();
        for (k, b) in code.iter().enumerate() {
            let off = at + k as u64;
            let frame = if off < 0x1000 { 0x9000 } else { 0x6000 - 0x1000 };
            m.put(frame + off, &[*b]);
        }
        v.rip = CODE_VA + at;
        emulate_mmio(v, &m, &cpu, GuestPhysAddr::new(gpa), GuestPhysAddr::new(LAPIC), d)
    }

    #[test]
    fn write_from_register_fetched_across_pages() {
        // mov dword ptr [rax+0x300], ecx: 4 bytes on one page, 2 on the next
        let mut v = vcpu(0, |g| (g.rax, g.rcx) = (LAPIC, 0x1234_5678_9abc_def0));
        let mut d = dev(0);
        let i = run(&[0x89, 0x88, 0x00, 0x03, 0x00, 0x00], 0xffc, &mut v, &mut d, LAPIC + 0x300).unwrap();
        assert_eq!(i.len, 6);
        assert_eq!(d.log, [Op::Write(0x300, 4, 0x9abc_def0)]);
        assert_eq!(v.rip, CODE_VA + 0x1002);
    }

    #[test]
    fn instruction_ending_at_an_unmapped_page_still_runs() {
        // mov eax, dword ptr [rdi+0x20], ending at the last byte before an unmapped page
        let mut v = vcpu(0, |g| g.rdi = LAPIC);
        let mut d = dev(7);
        run(&[0x8b, 0x47, 0x20], 0x1ffd, &mut v, &mut d, LAPIC + 0x20).unwrap();
        assert_eq!(v.gprs.rax, 7);
        // ... but one running into it is a fetch fault, with nothing changed.
        let mut v = vcpu(0, |g| g.rax = LAPIC);
        let r = run(&[0x89, 0x88, 0x00, 0x03], 0x1ffc, &mut v, &mut d, LAPIC + 0x300);
        assert_eq!(r, Err(EmulateError::Fetch(WalkError::NotPresent { level: 1 })));
        assert_eq!(v.rip, CODE_VA + 0x1ffc);
    }

    #[test]
    fn loads_zero_extend_or_merge() {
        let ones = u64::MAX;
        // mov ecx, dword ptr [rax+0x20]: a 32-bit load clears bits 63:32
        let mut v = vcpu(0, |g| (g.rax, g.rcx) = (LAPIC, ones));
        let mut d = dev(0xdead_0000_0000_0014);
        run(&[0x8b, 0x48, 0x20], 0, &mut v, &mut d, LAPIC + 0x20).unwrap();
        assert_eq!((v.gprs.rcx, v.rip), (0x14, CODE_VA + 3));
        assert_eq!(d.log, [Op::Read(0x20, 4)]);
        // mov cx, word ptr [rax]: a 16-bit load keeps the rest
        let mut v = vcpu(0, |g| (g.rax, g.rcx) = (LAPIC, ones));
        run(&[0x66, 0x8b, 0x08], 0, &mut v, &mut dev(0xabcd_1234), LAPIC).unwrap();
        assert_eq!(v.gprs.rcx, 0xffff_ffff_ffff_1234);
        // mov ah, byte ptr [rdx]: bits 15:8 only
        let mut v = vcpu(0, |g| (g.rax, g.rdx) = (0x1111_1111_1111_1111, LAPIC + 0x30));
        run(&[0x8a, 0x22], 0, &mut v, &mut dev(0x1ab), LAPIC + 0x30).unwrap();
        assert_eq!(v.gprs.rax, 0x1111_1111_1111_ab11);
        // mov r10b, byte ptr [rdx]
        let mut v = vcpu(0, |g| (g.r10, g.rdx) = (ones, LAPIC + 0x30));
        run(&[0x44, 0x8a, 0x12], 0, &mut v, &mut dev(0x5a), LAPIC + 0x30).unwrap();
        assert_eq!(v.gprs.r10, 0xffff_ffff_ffff_ff5a);
        // mov rax, qword ptr [rdi]
        let mut v = vcpu(0, |g| g.rdi = LAPIC + 0x8);
        run(&[0x48, 0x8b, 0x07], 0, &mut v, &mut dev(0x0123_4567_89ab_cdef), LAPIC + 0x8).unwrap();
        assert_eq!(v.gprs.rax, 0x0123_4567_89ab_cdef);
    }

    #[test]
    fn movzx_and_movsx() {
        // movsx rax, word ptr [rdi]
        let mut v = vcpu(0, |g| g.rdi = LAPIC);
        run(&[0x48, 0x0f, 0xbf, 0x07], 0, &mut v, &mut dev(0x8000), LAPIC).unwrap();
        assert_eq!(v.gprs.rax, 0xffff_ffff_ffff_8000);
        // movsx ax, byte ptr [rdi]: into 16 bits, merged
        let mut v = vcpu(0, |g| (g.rdi, g.rax) = (LAPIC, 0x5555_5555_5555_5555));
        run(&[0x66, 0x0f, 0xbe, 0x07], 0, &mut v, &mut dev(0x80), LAPIC).unwrap();
        assert_eq!(v.gprs.rax, 0x5555_5555_5555_ff80);
        // movzx ecx, byte ptr [rdi+0x20]
        let mut v = vcpu(0, |g| (g.rdi, g.rcx) = (LAPIC, u64::MAX));
        let mut d = dev(0xfff);
        run(&[0x0f, 0xb6, 0x4f, 0x20], 0, &mut v, &mut d, LAPIC + 0x20).unwrap();
        assert_eq!(v.gprs.rcx, 0xff);
        assert_eq!(d.log, [Op::Read(0x20, 1)]);
    }

    #[test]
    fn stores() {
        // mov qword ptr [rbx], -1
        let mut v = vcpu(0, |g| g.rbx = LAPIC + 0x10);
        let mut d = dev(0);
        run(&[0x48, 0xc7, 0x03, 0xff, 0xff, 0xff, 0xff], 0, &mut v, &mut d, LAPIC + 0x10).unwrap();
        assert_eq!(d.log, [Op::Write(0x10, 8, u64::MAX)]);
        // mov byte ptr [rdi+0x1], ch
        let mut v = vcpu(0, |g| (g.rdi, g.rcx) = (LAPIC, 0x4321));
        let mut d = dev(0);
        run(&[0x88, 0x6f, 0x01], 0, &mut v, &mut d, LAPIC + 1).unwrap();
        assert_eq!(d.log, [Op::Write(1, 1, 0x43)]);
        // mov qword ptr [rax], rsp: RSP comes from the vCPU, not GuestGprs
        let mut v = vcpu(0, |g| g.rax = LAPIC);
        let mut d = dev(0);
        run(&[0x48, 0x89, 0x20], 0, &mut v, &mut d, LAPIC).unwrap();
        assert_eq!(d.log, [Op::Write(0, 8, 0xffff_c900_0000_7f00)]);
        // mov dword ptr [rip+0x1000], eax: RIP-relative to the next instruction
        let mut v = vcpu(0, |g| g.rax = 0xaabb_ccdd);
        let mut d = dev(0);
        let gpa = LAPIC + ((CODE_VA + 6 + 0x1000) & 0xfff);
        run(&[0x89, 0x05, 0x00, 0x10, 0x00, 0x00], 0, &mut v, &mut d, gpa).unwrap();
        assert_eq!(d.log, [Op::Write(6, 4, 0xaabb_ccdd)]);
    }

    #[test]
    fn xchg_swaps() {
        // xchg dword ptr [rdi+0xb0], eax (the 11AP erratum path of apic_write)
        let mut v = vcpu(0, |g| (g.rdi, g.rax) = (LAPIC, 0xffff_ffff_0000_0001));
        let mut d = dev(0x77);
        run(&[0x87, 0x87, 0xb0, 0x00, 0x00, 0x00], 0, &mut v, &mut d, LAPIC + 0xb0).unwrap();
        assert_eq!(d.log, [Op::Read(0xb0, 4), Op::Write(0xb0, 4, 1)]);
        assert_eq!(v.gprs.rax, 0x77);
    }

    #[test]
    fn refusals_leave_everything_untouched() {
        let mut d = dev(0);
        // mov rsp, qword ptr [rax]
        let mut v = vcpu(0, |g| g.rax = LAPIC);
        assert_eq!(run(&[0x48, 0x8b, 0x20], 0, &mut v, &mut d, LAPIC), Err(EmulateError::LoadsRsp));
        // mov dword ptr [rax+0x300], ecx, but RAX does not point there
        let mut v = vcpu(0, |g| g.rax = LAPIC + 4);
        let r = run(&[0x89, 0x88, 0x00, 0x03, 0x00, 0x00], 0, &mut v, &mut d, LAPIC + 0x300);
        assert_eq!(r, Err(EmulateError::AddressMismatch));
        // rep stosd
        let mut v = vcpu(0, |_| {});
        assert_eq!(run(&[0xf3, 0xab], 0, &mut v, &mut d, LAPIC), Err(EmulateError::Decode(DecodeError::Unsupported)));
        // mov qword ptr [rax+0xffc], rcx spills into the next page
        let mut v = vcpu(0, |g| g.rax = LAPIC);
        let r = run(&[0x48, 0x89, 0x88, 0xfc, 0x0f, 0x00, 0x00], 0, &mut v, &mut d, LAPIC + 0xffc);
        assert_eq!(r, Err(EmulateError::PageCrossing));
        // A GPA below the device
        let mut v = vcpu(0, |g| g.rax = LAPIC);
        assert_eq!(run(&[0x89, 0x08], 0, &mut v, &mut d, LAPIC - 0x1000), Err(EmulateError::OutsideDevice));
        assert!(d.log.is_empty());
        assert_eq!(v.rip, CODE_VA);
    }

    /// Random instruction bytes and registers: never a panic; on success RIP
    /// moved by exactly the length and the device saw one access (two for XCHG).
    #[test]
    fn fuzz_never_panics() {
        let mut next = crate::emulate::testmem::xorshift(0x0dd_ba11_cafe_f00du64);
        // 64-bit code only: the decoder's own fuzz test covers the other modes.
        let (mut m, cpu) = long_mode();
        let mut ok = 0;
        for _ in 0..20_000 {
            let at = 0x1ff0 - next() % 0x20;
            let mut code = [0u8; 16];
            for b in code.iter_mut() {
                let r = next();
                *b = if r.is_multiple_of(3) {
                    [0x66, 0x48, 0x89, 0x8b, 0x88, 0x0f, 0xb6, 0x87][(r >> 8) as usize % 8]
                } else {
                    (r >> 16) as u8
                };
            }
            for (k, b) in code.iter().enumerate() {
                let off = at + k as u64;
                if off < 0x2000 {
                    m.put(if off < 0x1000 { 0x9000 + off } else { 0x5000 + off }, &[*b]);
                }
            }
            let mut v = vcpu(CODE_VA + at, |g| {
                // Registers pointing into the device page, so some accesses match.
                for slot in [&mut g.rax, &mut g.rcx, &mut g.rdx, &mut g.rbx, &mut g.rsi, &mut g.rdi, &mut g.r12] {
                    *slot = LAPIC + (next() & 0xff0);
                }
            });
            v.rip = CODE_VA + at;
            let mut d = dev(next());
            // Mostly the address the instruction really touches, else a random one.
            let regs = v.gprs;
            let mut gpa = LAPIC + (next() & 0xfff);
            if let (Ok(i), true) = (fetch_and_decode(&m, &cpu, v.rip), !next().is_multiple_of(8)) {
                let ea = i.mem.effective_address(|g| gpr_value(&regs, v.rsp, g), v.rip + u64::from(i.len));
                gpa = LAPIC + (ea & 0xfff);
            }
            if let Ok(i) = emulate_mmio(&mut v, &m, &cpu, GuestPhysAddr::new(gpa), GuestPhysAddr::new(LAPIC), &mut d) {
                ok += 1;
                assert_eq!(v.rip.wrapping_sub(CODE_VA + at) & 0xffff, u64::from(i.len));
                let accesses = if matches!(i.access, MmioAccess::Exchange { .. }) { 2 } else { 1 };
                assert_eq!(d.log.len(), accesses);
            } else {
                assert!(d.log.is_empty());
            }
        }
        assert!(ok > 100, "only {ok} completed");
    }

    #[test]
    fn real_and_protected_mode() {
        // Real mode, CS = 0x1000: mov word ptr ds:0x300, ax at 1000:0010
        let mut m = VecMem::new(0x20000);
        m.put(0x10010, &[0x89, 0x06, 0x00, 0x03]);
        let off = PagingState {
            cr0: Cr0Flags::empty(),
            cr3: 0,
            cr4: Cr4Flags::empty(),
            efer: EferFlags::empty(),
            phys_bits: 36,
        };
        let cpu = CpuState { paging: off, code: CodeSize::Bits16, cs_base: 0x10000 };
        let mut v = vcpu(0x10, |g| g.rax = 0x1234_abcd);
        let mut d = dev(0);
        let base = GuestPhysAddr::new(0xfec0_0000);
        emulate_mmio(&mut v, &m, &cpu, GuestPhysAddr::new(0xfec0_0300), base, &mut d).unwrap();
        assert_eq!((d.log.as_slice(), v.rip), ([Op::Write(0x300, 2, 0xabcd)].as_slice(), 0x14));

        // 32-bit flat, paging off: mov ds:0xfec00010, eax (IOAPIC window)
        m.put(0x8000, &[0xa3, 0x10, 0x00, 0xc0, 0xfe]);
        let cpu = CpuState { paging: off, code: CodeSize::Bits32, cs_base: 0 };
        let mut v = vcpu(0x8000, |g| g.rax = 0x1_0000_0042);
        let mut d = dev(0);
        emulate_mmio(&mut v, &m, &cpu, GuestPhysAddr::new(0xfec0_0010), base, &mut d).unwrap();
        assert_eq!((d.log.as_slice(), v.rip), ([Op::Write(0x10, 4, 0x42)].as_slice(), 0x8005));
    }
}
