//! A decoder for the instruction forms guests use on device registers (SDM vol. 2,
//! AMD APM vol. 3), and nothing else:
//!
//! | opcode        | instruction                  |
//! |---------------|------------------------------|
//! | 88 / 89 /r    | MOV r/m, reg                 |
//! | 8A / 8B /r    | MOV reg, r/m                 |
//! | C6 / C7 /0    | MOV r/m, imm                 |
//! | 0F B6 / B7 /r | MOVZX reg, r/m8 / r/m16      |
//! | 0F BE / BF /r | MOVSX reg, r/m8 / r/m16      |
//! | A0–A3         | MOV AL/eAX ↔ moffs           |
//! | 86 / 87 /r    | XCHG r/m, reg                |
//!
//! with operand-size (66), address-size (67), segment, LOCK (XCHG only), REP
//! (ignored, as the CPU does for these one-byte opcodes) and REX prefixes, in
//! 16-, 32- and 64-bit code. Linux reaches its APIC, IOAPIC and device
//! registers through `readl`/`writel` and friends, which are exactly these MOVs
//! (and XCHG for the 11AP erratum).
//!
//! Left out: ALU forms (AND/OR/TEST r/m) need RFLAGS, which `Vcpu` does not
//! expose; string instructions (MOVS/STOS) need RCX/RSI/RDI iteration; VEX/EVEX
//! vector moves. Each is reported as `Unsupported`.
//!
//! Hand-written rather than `iced-x86`. Measured in the release image (loaded
//! size 164 KiB before): iced's no_std decoder-only build adds 72 KiB of text
//! and 40 KiB of rodata (276 KiB loaded, over the 256 KiB budget) for ~15
//! opcodes; this decoder adds ~2.5 KiB, and the whole walk + decode + complete
//! path ~7 KiB. iced stays as the host-only test oracle (`iced_diff`).

/// Longest legal x86 instruction; the CPU raises #GP past it.
pub const MAX_LEN: usize = 15;

/// The default operand and address size of the code being decoded: from CS.L and
/// CS.D (and CR0.PE: real mode is `Bits16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeSize {
    Bits16,
    Bits32,
    Bits64,
}

impl CodeSize {
    /// The code size of the current CS: `protected` is CR0.PE (false in
    /// virtual-8086 mode too), `long_active` EFER.LMA, `cs_l`/`cs_d` the CS
    /// descriptor's L and D bits.
    pub fn from_cs(protected: bool, long_active: bool, cs_l: bool, cs_d: bool) -> Self {
        match (protected, long_active && cs_l, cs_d) {
            (false, ..) => CodeSize::Bits16,
            (true, true, _) => CodeSize::Bits64,
            (true, false, true) => CodeSize::Bits32,
            (true, false, false) => CodeSize::Bits16,
        }
    }
}

/// A general-purpose register in encoding order: 0 RAX, 1 RCX, 2 RDX, 3 RBX,
/// 4 RSP, 5 RBP, 6 RSI, 7 RDI, 8..=15 R8..R15. This is `GuestGprs` order with
/// RSP inserted at 4; RSP itself lives in the VMCB/VMCS, not in `GuestGprs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gpr(pub u8);

impl Gpr {
    pub const RAX: Gpr = Gpr(0);
    pub const RCX: Gpr = Gpr(1);
    pub const RDX: Gpr = Gpr(2);
    pub const RBX: Gpr = Gpr(3);
    pub const RSP: Gpr = Gpr(4);
    pub const RBP: Gpr = Gpr(5);
    pub const RSI: Gpr = Gpr(6);
    pub const RDI: Gpr = Gpr(7);
}

/// A register operand. `high_byte` names bits 15:8 of `gpr` (AH, CH, DH, BH:
/// byte registers 4–7 in an instruction without REX); it is only ever set on
/// byte-sized operands and then `gpr` is 0–3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegOperand {
    pub gpr: Gpr,
    pub high_byte: bool,
}

impl RegOperand {
    const fn full(n: u8) -> Self {
        RegOperand { gpr: Gpr(n), high_byte: false }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    Es,
    Cs,
    Ss,
    Ds,
    Fs,
    Gs,
}

/// The memory operand. Its effective address is
/// `disp + base + index * scale (+ next RIP if rip_relative)`, wrapped to
/// `addr_size`. 16-bit forms such as `[bp+si]` are base BP, index SI, scale 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemOperand {
    /// A segment override prefix that applies (in 64-bit code only FS and GS do).
    pub segment_override: Option<Segment>,
    pub base: Option<Gpr>,
    pub index: Option<Gpr>,
    pub scale: u8,
    /// Relative to the address of the next instruction (64-bit code, ModRM
    /// mod=00 rm=101).
    pub rip_relative: bool,
    /// Displacement or moffs, sign-extended (moffs: zero-extended) to 64 bits.
    pub disp: u64,
    /// Address size in bytes: 2, 4 or 8.
    pub addr_size: u8,
}

impl MemOperand {
    /// The segment the access goes through: the override, else SS for
    /// rBP/rSP-based addresses, else DS.
    pub fn segment(&self) -> Segment {
        match (self.segment_override, self.base) {
            (Some(s), _) => s,
            (None, Some(Gpr::RSP | Gpr::RBP)) => Segment::Ss,
            _ => Segment::Ds,
        }
    }

    /// The effective address (offset within the segment), given the register
    /// values and the address of the next instruction.
    pub fn effective_address(&self, gpr: impl Fn(Gpr) -> u64, next_rip: u64) -> u64 {
        let mut ea = self.disp;
        if self.rip_relative {
            ea = ea.wrapping_add(next_rip);
        }
        if let Some(b) = self.base {
            ea = ea.wrapping_add(gpr(b));
        }
        if let Some(i) = self.index {
            ea = ea.wrapping_add(gpr(i).wrapping_mul(u64::from(self.scale)));
        }
        ea & size_mask(self.addr_size)
    }
}

/// How a value read from memory becomes the destination register's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extend {
    /// MOV: memory and register have the same size.
    None,
    /// MOVZX.
    Zero,
    /// MOVSX.
    Sign,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Reg(RegOperand),
    /// Already sign-extended to the access size as the CPU does (C7 with REX.W).
    Imm(u64),
}

/// What the instruction does with its memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioAccess {
    /// Load `size` bytes into `dest`, which is `dest_size` bytes wide.
    Read { dest: RegOperand, dest_size: u8, extend: Extend },
    /// Store `size` bytes.
    Write { src: Source },
    /// XCHG: load `size` bytes, store `reg`'s old value, put the loaded value in `reg`.
    Exchange { reg: RegOperand },
}

/// A decoded MMIO instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioInsn {
    /// Length in bytes, 1..=15.
    pub len: u8,
    /// Bytes of memory accessed: 1, 2, 4 or 8.
    pub size: u8,
    pub access: MmioAccess,
    pub mem: MemOperand,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end before the instruction does.
    Truncated,
    /// Longer than 15 bytes (#GP on hardware).
    TooLong,
    /// Not one of the forms this decoder knows.
    Unsupported,
    /// A LOCK prefix on an instruction that does not allow one (#UD on hardware).
    BadLock,
    /// The ModRM names a register, not memory: this cannot have caused an MMIO
    /// exit (for C6/C7 with mod=11 it is XABORT/XBEGIN or #UD anyway).
    NoMemoryOperand,
}

pub(crate) const fn size_mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

/// Sign-extends the low `size` bytes of `v` to 64 bits.
pub(crate) const fn sign_extend(v: u64, size: u8) -> u64 {
    let shift = 64 - 8 * size as u32;
    (((v << shift) as i64) >> shift) as u64
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.pos >= MAX_LEN {
            return Err(DecodeError::TooLong);
        }
        let b = *self.bytes.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// `n` little-endian bytes, zero-extended.
    fn le(&mut self, n: u8) -> Result<u64, DecodeError> {
        let mut v = 0;
        for i in 0..n {
            v |= u64::from(self.u8()?) << (8 * i);
        }
        Ok(v)
    }

    /// `n` little-endian bytes, sign-extended.
    fn disp(&mut self, n: u8) -> Result<u64, DecodeError> {
        Ok(sign_extend(self.le(n)?, n))
    }
}

/// Register `n` (REX.R/B already applied) as a `size`-byte operand.
fn reg_operand(n: u8, size: u8, rex: u8) -> RegOperand {
    if size == 1 && rex == 0 && (4..8).contains(&n) {
        RegOperand { gpr: Gpr(n - 4), high_byte: true }
    } else {
        RegOperand::full(n)
    }
}

/// Decodes the instruction at the start of `bytes` (which may hold more).
pub fn decode(bytes: &[u8], code: CodeSize) -> Result<MmioInsn, DecodeError> {
    let long = code == CodeSize::Bits64;
    let mut c = Cursor { bytes, pos: 0 };
    let (mut opsize16, mut addr_override, mut lock, mut rep) = (false, false, false, false);
    let mut seg = None;
    // The REX byte, 0 if none. Only a REX right before the opcode counts.
    let mut rex = 0u8;
    let op = loop {
        let b = c.u8()?;
        match b {
            0x66 => opsize16 = true,
            0x67 => addr_override = true,
            0xf0 => lock = true,
            0xf2 | 0xf3 => rep = true,
            0x26 => seg = Some(Segment::Es),
            0x2e => seg = Some(Segment::Cs),
            0x36 => seg = Some(Segment::Ss),
            0x3e => seg = Some(Segment::Ds),
            0x64 => seg = Some(Segment::Fs),
            0x65 => seg = Some(Segment::Gs),
            0x40..=0x4f if long => {
                rex = b;
                continue;
            }
            _ => break b,
        }
        rex = 0;
    };
    if long && !matches!(seg, Some(Segment::Fs | Segment::Gs)) {
        seg = None;
    }
    let rex_w = rex & 8 != 0;
    // 66 toggles between the default size (16 in 16-bit code, else 32) and the other.
    let opsize = if rex_w {
        8
    } else if (code == CodeSize::Bits16) != opsize16 {
        2
    } else {
        4
    };
    let addr_size = match (code, addr_override) {
        (CodeSize::Bits64, false) => 8,
        (CodeSize::Bits64, true) | (CodeSize::Bits32, false) | (CodeSize::Bits16, true) => 4,
        (CodeSize::Bits32, true) | (CodeSize::Bits16, false) => 2,
    };
    let wide = |op: u8| if op & 1 == 0 { 1 } else { opsize };
    if lock && !matches!(op, 0x86 | 0x87) {
        return Err(DecodeError::BadLock);
    }

    let (size, access, mem) = match op {
        0x88..=0x8b | 0x86 | 0x87 | 0xc6 | 0xc7 => {
            let size = wide(op);
            let (reg, mem) = modrm(&mut c, long, addr_size, rex, seg)?;
            let r = reg_operand(reg, size, rex);
            let access = match op {
                0x88 | 0x89 => MmioAccess::Write { src: Source::Reg(r) },
                0x8a | 0x8b => MmioAccess::Read { dest: r, dest_size: size, extend: Extend::None },
                0x86 | 0x87 => MmioAccess::Exchange { reg: r },
                _ => {
                    if reg & 7 != 0 {
                        return Err(DecodeError::Unsupported);
                    }
                    // imm8/16/32; with REX.W an imm32 sign-extended to 64 bits.
                    let imm = c.le(size.min(4))?;
                    let imm = if size == 8 { sign_extend(imm, 4) } else { imm };
                    MmioAccess::Write { src: Source::Imm(imm) }
                }
            };
            (size, access, mem)
        }
        0xa0..=0xa3 => {
            let size = wide(op);
            let mem = MemOperand {
                segment_override: seg,
                base: None,
                index: None,
                scale: 1,
                rip_relative: false,
                disp: c.le(addr_size)?,
                addr_size,
            };
            let r = RegOperand::full(0);
            let access = if op < 0xa2 {
                MmioAccess::Read { dest: r, dest_size: size, extend: Extend::None }
            } else {
                MmioAccess::Write { src: Source::Reg(r) }
            };
            (size, access, mem)
        }
        0x0f => {
            let op2 = c.u8()?;
            let (size, extend) = match op2 {
                0xb6 => (1, Extend::Zero),
                0xb7 => (2, Extend::Zero),
                0xbe => (1, Extend::Sign),
                0xbf => (2, Extend::Sign),
                _ => return Err(DecodeError::Unsupported),
            };
            // F2/F3 select other instructions in the 0F map (F3 0F B8 is POPCNT).
            if rep {
                return Err(DecodeError::Unsupported);
            }
            let (reg, mem) = modrm(&mut c, long, addr_size, rex, seg)?;
            (size, MmioAccess::Read { dest: RegOperand::full(reg), dest_size: opsize, extend }, mem)
        }
        _ => return Err(DecodeError::Unsupported),
    };
    Ok(MmioInsn { len: c.pos as u8, size, access, mem })
}

/// ModRM, SIB and displacement: the reg field (with REX.R) and the memory operand.
fn modrm(
    c: &mut Cursor,
    long: bool,
    addr_size: u8,
    rex: u8,
    seg: Option<Segment>,
) -> Result<(u8, MemOperand), DecodeError> {
    let m = c.u8()?;
    let (md, rm) = (m >> 6, m & 7);
    let reg = ((m >> 3) & 7) | ((rex & 4) << 1);
    if md == 3 {
        return Err(DecodeError::NoMemoryOperand);
    }
    let mut mem = MemOperand {
        segment_override: seg,
        base: None,
        index: None,
        scale: 1,
        rip_relative: false,
        disp: 0,
        addr_size,
    };
    if addr_size == 2 {
        // SDM vol. 2 table 2-1.
        const BX: Gpr = Gpr::RBX;
        const BP: Gpr = Gpr::RBP;
        const SI: Gpr = Gpr::RSI;
        const DI: Gpr = Gpr::RDI;
        let (base, index) = match rm {
            0 => (BX, Some(SI)),
            1 => (BX, Some(DI)),
            2 => (BP, Some(SI)),
            3 => (BP, Some(DI)),
            4 => (SI, None),
            5 => (DI, None),
            6 => (BP, None),
            _ => (BX, None),
        };
        mem.index = index;
        match (md, rm) {
            (0, 6) => mem.disp = c.le(2)?,
            (0, _) => mem.base = Some(base),
            _ => {
                mem.base = Some(base);
                mem.disp = c.disp(md)?; // mod 1: disp8, mod 2: disp16
            }
        }
        return Ok((reg, mem));
    }
    // SDM vol. 2 tables 2-2 and 2-3; REX.B extends base, REX.X the index.
    let mut no_base = false;
    if rm == 4 {
        let sib = c.u8()?;
        mem.scale = 1 << (sib >> 6);
        let index = ((sib >> 3) & 7) | ((rex & 2) << 2);
        // Index 100 without REX.X means none; with it, it is R12.
        mem.index = (index != 4).then_some(Gpr(index));
        no_base = md == 0 && sib & 7 == 5;
        mem.base = Some(Gpr((sib & 7) | ((rex & 1) << 3)));
    } else if md == 0 && rm == 5 {
        // disp32 alone; in 64-bit code RIP-relative (EIP-relative with 67).
        no_base = true;
        mem.rip_relative = long;
    } else {
        mem.base = Some(Gpr(rm | ((rex & 1) << 3)));
    }
    if no_base {
        mem.base = None;
        mem.disp = c.disp(4)?;
    } else if md == 1 {
        mem.disp = c.disp(1)?;
    } else if md == 2 {
        mem.disp = c.disp(4)?;
    }
    Ok((reg, mem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use CodeSize::*;

    const fn reg(n: u8) -> RegOperand {
        RegOperand::full(n)
    }
    const fn high(n: u8) -> RegOperand {
        RegOperand { gpr: Gpr(n), high_byte: true }
    }
    fn read(dest: RegOperand, dest_size: u8, extend: Extend) -> MmioAccess {
        MmioAccess::Read { dest, dest_size, extend }
    }
    fn write(src: RegOperand) -> MmioAccess {
        MmioAccess::Write { src: Source::Reg(src) }
    }
    fn imm(v: u64) -> MmioAccess {
        MmioAccess::Write { src: Source::Imm(v) }
    }
    fn mem(addr_size: u8, base: Option<u8>, index: Option<(u8, u8)>, disp: u64) -> MemOperand {
        MemOperand {
            segment_override: None,
            base: base.map(Gpr),
            index: index.map(|(i, _)| Gpr(i)),
            scale: index.map_or(1, |(_, s)| s),
            rip_relative: false,
            disp,
            addr_size,
        }
    }
    /// Decodes, checking the whole input is one instruction.
    #[track_caller]
    fn d(code: CodeSize, bytes: &[u8]) -> MmioInsn {
        let i = decode(bytes, code).unwrap();
        assert_eq!(usize::from(i.len), bytes.len());
        i
    }
    #[track_caller]
    fn check(code: CodeSize, bytes: &[u8], size: u8, access: MmioAccess, m: MemOperand) {
        assert_eq!(d(code, bytes), MmioInsn { len: bytes.len() as u8, size, access, mem: m });
    }

    #[test]
    fn code_size_from_cs() {
        assert_eq!(CodeSize::from_cs(false, false, false, false), Bits16);
        assert_eq!(CodeSize::from_cs(true, false, false, true), Bits32);
        assert_eq!(CodeSize::from_cs(true, false, true, false), Bits16); // L without LMA means nothing
        assert_eq!(CodeSize::from_cs(true, true, true, false), Bits64);
        assert_eq!(CodeSize::from_cs(true, true, false, true), Bits32); // compatibility mode
    }

    #[test]
    fn mov_64() {
        // mov dword ptr [rax+0x300], ecx
        check(Bits64, &[0x89, 0x88, 0x00, 0x03, 0x00, 0x00], 4, write(reg(1)), mem(8, Some(0), None, 0x300));
        // mov qword ptr [rdi], rax
        check(Bits64, &[0x48, 0x89, 0x07], 8, write(reg(0)), mem(8, Some(7), None, 0));
        // mov r9d, dword ptr [r12+r13*4+0x10]
        check(
            Bits64,
            &[0x47, 0x8b, 0x4c, 0xac, 0x10],
            4,
            read(reg(9), 4, Extend::None),
            mem(8, Some(12), Some((13, 4)), 0x10),
        );
        // mov byte ptr [rdi+0x1], r15b
        check(Bits64, &[0x44, 0x88, 0x7f, 0x01], 1, write(reg(15)), mem(8, Some(7), None, 1));
        // mov eax, dword ptr [r13+0x0]: r13 as base needs a displacement
        check(Bits64, &[0x41, 0x8b, 0x45, 0x00], 4, read(reg(0), 4, Extend::None), mem(8, Some(13), None, 0));
        // mov eax, dword ptr [r12]: r12 as base needs a SIB
        check(Bits64, &[0x41, 0x8b, 0x04, 0x24], 4, read(reg(0), 4, Extend::None), mem(8, Some(12), None, 0));
        // mov eax, dword ptr [rbx*2+0x100]: SIB with no base
        check(
            Bits64,
            &[0x8b, 0x04, 0x5d, 0x00, 0x01, 0x00, 0x00],
            4,
            read(reg(0), 4, Extend::None),
            mem(8, None, Some((3, 2)), 0x100),
        );
        // mov eax, dword ptr [rax+r12*1]: index 100 with REX.X is R12
        check(Bits64, &[0x42, 0x8b, 0x04, 0x20], 4, read(reg(0), 4, Extend::None), mem(8, Some(0), Some((12, 1)), 0));
        // mov rcx, qword ptr [rbp-0x8]
        check(
            Bits64,
            &[0x48, 0x8b, 0x4d, 0xf8],
            8,
            read(reg(1), 8, Extend::None),
            mem(8, Some(5), None, (-8i64) as u64),
        );
    }

    #[test]
    fn rsp_base_uses_ss_and_decodes() {
        // mov eax, dword ptr [rsp]
        let i = d(Bits64, &[0x8b, 0x04, 0x24]);
        assert_eq!(i.mem, mem(8, Some(4), None, 0));
        assert_eq!(i.mem.segment(), Segment::Ss);
    }

    #[test]
    fn rip_relative() {
        // mov eax, dword ptr [rip+0x1234]
        let i = d(Bits64, &[0x8b, 0x05, 0x34, 0x12, 0x00, 0x00]);
        assert!(i.mem.rip_relative && i.mem.base.is_none());
        assert_eq!(i.mem.effective_address(|_| 0xdead, 0x1000), 0x2234);
        // mov eax, dword ptr [eip+0x10]: 67 makes it EIP-relative, wrapped to 32 bits
        let i = d(Bits64, &[0x67, 0x8b, 0x05, 0x10, 0x00, 0x00, 0x00]);
        assert!(i.mem.rip_relative);
        assert_eq!(i.mem.effective_address(|_| 0, 0x1_ffff_fff8), 0x8);
        // In 32-bit code the same ModRM is an absolute disp32:
        // mov eax, dword ptr ds:0xfee00300
        let i = d(Bits32, &[0x8b, 0x05, 0x00, 0x03, 0xe0, 0xfe]);
        assert!(!i.mem.rip_relative);
        assert_eq!(i.mem.effective_address(|_| 0, 0x1000), 0xfee0_0300);
    }

    #[test]
    fn immediates() {
        // mov word ptr [rbx], 0x1234
        check(Bits64, &[0x66, 0xc7, 0x03, 0x34, 0x12], 2, imm(0x1234), mem(8, Some(3), None, 0));
        // mov qword ptr [rbx], -1: imm32 sign-extended
        check(Bits64, &[0x48, 0xc7, 0x03, 0xff, 0xff, 0xff, 0xff], 8, imm(u64::MAX), mem(8, Some(3), None, 0));
        // mov byte ptr [rsi], 0x80
        check(Bits64, &[0xc6, 0x06, 0x80], 1, imm(0x80), mem(8, Some(6), None, 0));
        // mov dword ptr ds:0xfee00380, 0x10000 (32-bit code)
        check(
            Bits32,
            &[0xc7, 0x05, 0x80, 0x03, 0xe0, 0xfe, 0x00, 0x00, 0x01, 0x00],
            4,
            imm(0x10000),
            mem(4, None, None, 0xffff_ffff_fee0_0380),
        );
        // c7 /1 is not a MOV
        assert_eq!(decode(&[0xc7, 0x08, 0, 0, 0, 0], Bits64), Err(DecodeError::Unsupported));
    }

    #[test]
    fn byte_registers() {
        // mov ah, byte ptr [rdx]
        check(Bits64, &[0x8a, 0x22], 1, read(high(0), 1, Extend::None), mem(8, Some(2), None, 0));
        // mov spl, byte ptr [rdx]: any REX turns 4-7 into SPL/BPL/SIL/DIL
        check(Bits64, &[0x40, 0x8a, 0x22], 1, read(reg(4), 1, Extend::None), mem(8, Some(2), None, 0));
        // mov bh, byte ptr [bp+si] (16-bit)
        check(Bits16, &[0x8a, 0x3a], 1, read(high(3), 1, Extend::None), mem(2, Some(5), Some((6, 1)), 0));
        // mov byte ptr ds:0x1234, ah (16-bit)
        check(Bits16, &[0x88, 0x26, 0x34, 0x12], 1, write(high(0)), mem(2, None, None, 0x1234));
    }

    #[test]
    fn movzx_movsx() {
        // movzx eax, byte ptr [rdi+0x20]
        check(Bits64, &[0x0f, 0xb6, 0x47, 0x20], 1, read(reg(0), 4, Extend::Zero), mem(8, Some(7), None, 0x20));
        // movsx rax, word ptr [rdi]
        check(Bits64, &[0x48, 0x0f, 0xbf, 0x07], 2, read(reg(0), 8, Extend::Sign), mem(8, Some(7), None, 0));
        // movzx r9d, word ptr [r12]
        check(Bits64, &[0x45, 0x0f, 0xb7, 0x0c, 0x24], 2, read(reg(9), 4, Extend::Zero), mem(8, Some(12), None, 0));
        // movsx ecx, byte ptr [esp+0x4] (32-bit): never a high-byte destination
        check(Bits32, &[0x0f, 0xbe, 0x4c, 0x24, 0x04], 1, read(reg(1), 4, Extend::Sign), mem(4, Some(4), None, 4));
        // F3 0F B8 is POPCNT; F3 with these is refused rather than guessed
        assert_eq!(decode(&[0xf3, 0x0f, 0xb6, 0x07], Bits64), Err(DecodeError::Unsupported));
    }

    #[test]
    fn moffs() {
        // movabs eax, ds:0xfee00020 (64-bit moffs)
        check(
            Bits64,
            &[0xa1, 0x20, 0x00, 0xe0, 0xfe, 0x00, 0x00, 0x00, 0x00],
            4,
            read(reg(0), 4, Extend::None),
            mem(8, None, None, 0xfee0_0020),
        );
        // mov ds:0xfee000b0, eax (32-bit)
        check(Bits32, &[0xa3, 0xb0, 0x00, 0xe0, 0xfe], 4, write(reg(0)), mem(4, None, None, 0xfee0_00b0));
        // mov ax, ds:0xfee00300 (32-bit, 66)
        check(
            Bits32,
            &[0x66, 0xa1, 0x00, 0x03, 0xe0, 0xfe],
            2,
            read(reg(0), 2, Extend::None),
            mem(4, None, None, 0xfee0_0300),
        );
        // mov ax, ds:0x20 (16-bit)
        check(Bits16, &[0xa1, 0x20, 0x00], 2, read(reg(0), 2, Extend::None), mem(2, None, None, 0x20));
        // mov al, ds:0xfee00020 with 67 in 64-bit code: a 4-byte moffs
        check(
            Bits64,
            &[0x67, 0xa0, 0x20, 0x00, 0xe0, 0xfe],
            1,
            read(reg(0), 1, Extend::None),
            mem(4, None, None, 0xfee0_0020),
        );
    }

    #[test]
    fn xchg_and_lock() {
        // xchg dword ptr [rdi+0xb0], eax
        check(
            Bits64,
            &[0x87, 0x87, 0xb0, 0, 0, 0],
            4,
            MmioAccess::Exchange { reg: reg(0) },
            mem(8, Some(7), None, 0xb0),
        );
        // lock xchg dword ptr [rdi], eax
        check(Bits64, &[0xf0, 0x87, 0x07], 4, MmioAccess::Exchange { reg: reg(0) }, mem(8, Some(7), None, 0));
        // lock mov is #UD
        assert_eq!(decode(&[0xf0, 0x89, 0x07], Bits64), Err(DecodeError::BadLock));
        // xrelease mov dword ptr [rdi], eax: the hint is ignored
        check(Bits64, &[0xf3, 0x89, 0x07], 4, write(reg(0)), mem(8, Some(7), None, 0));
    }

    #[test]
    fn sixteen_bit() {
        // mov ax, word ptr [bx+si+0x10]
        check(Bits16, &[0x8b, 0x40, 0x10], 2, read(reg(0), 2, Extend::None), mem(2, Some(3), Some((6, 1)), 0x10));
        // mov ax, word ptr [bx+si+0x1234]: mod 10 is a disp16
        check(
            Bits16,
            &[0x8b, 0x80, 0x34, 0x12],
            2,
            read(reg(0), 2, Extend::None),
            mem(2, Some(3), Some((6, 1)), 0x1234),
        );
        // mov word ptr ds:0x300, ax
        check(Bits16, &[0x89, 0x06, 0x00, 0x03], 2, write(reg(0)), mem(2, None, None, 0x300));
        // mov eax, dword ptr [bp-0x2]: 66 widens, BP means SS
        let i = d(Bits16, &[0x66, 0x8b, 0x46, 0xfe]);
        assert_eq!((i.size, i.mem.base, i.mem.segment()), (4, Some(Gpr::RBP), Segment::Ss));
        assert_eq!(i.mem.effective_address(|_| 1, 0), 0xffff);
        // mov eax, dword ptr [ebx+0x300]: 67 gives 32-bit addressing
        check(
            Bits16,
            &[0x66, 0x67, 0x8b, 0x83, 0x00, 0x03, 0x00, 0x00],
            4,
            read(reg(0), 4, Extend::None),
            mem(4, Some(3), None, 0x300),
        );
        // mov word ptr [bx+0x2], 0x1234
        check(Bits16, &[0xc7, 0x47, 0x02, 0x34, 0x12], 2, imm(0x1234), mem(2, Some(3), None, 2));
        // mov eax, dword ptr [bx] in 32-bit code with 67
        check(Bits32, &[0x67, 0x8b, 0x07], 4, read(reg(0), 4, Extend::None), mem(2, Some(3), None, 0));
    }

    #[test]
    fn prefixes() {
        // rex.W then 66: a REX not right before the opcode is ignored:
        // mov word ptr [rdi], ax
        check(Bits64, &[0x48, 0x66, 0x89, 0x07], 2, write(reg(0)), mem(8, Some(7), None, 0));
        // data16 mov qword ptr [rdi], rax: REX.W beats 66
        check(Bits64, &[0x66, 0x48, 0x89, 0x07], 8, write(reg(0)), mem(8, Some(7), None, 0));
        // mov eax, dword ptr fs:0x10
        let i = d(Bits64, &[0x64, 0x8b, 0x04, 0x25, 0x10, 0x00, 0x00, 0x00]);
        assert_eq!(i.mem.segment_override, Some(Segment::Fs));
        assert_eq!((i.mem.base, i.mem.index, i.mem.disp), (None, None, 0x10));
        // ES is ignored in 64-bit code but kept in 32-bit code:
        // mov dword ptr es:[ebx], edi
        assert_eq!(d(Bits64, &[0x26, 0x89, 0x3b]).mem.segment_override, None);
        assert_eq!(d(Bits32, &[0x26, 0x89, 0x3b]).mem.segment_override, Some(Segment::Es));
        // mov eax, dword ptr [ecx]: 67 in 64-bit code
        check(Bits64, &[0x67, 0x8b, 0x01], 4, read(reg(0), 4, Extend::None), mem(4, Some(1), None, 0));
        // In 32-bit code 0x40 is INC EAX, not REX.
        assert_eq!(decode(&[0x40, 0x8b, 0x01], Bits32), Err(DecodeError::Unsupported));
    }

    #[test]
    fn errors() {
        // mov eax, ecx: no memory operand
        assert_eq!(decode(&[0x89, 0xc8], Bits64), Err(DecodeError::NoMemoryOperand));
        // nop; syscall
        assert_eq!(decode(&[0x90], Bits64), Err(DecodeError::Unsupported));
        assert_eq!(decode(&[0x0f, 0x05], Bits64), Err(DecodeError::Unsupported));
        // mov dword ptr [rax+0x300], ecx cut short
        assert_eq!(decode(&[0x89, 0x88, 0x00, 0x03], Bits64), Err(DecodeError::Truncated));
        assert_eq!(decode(&[], Bits64), Err(DecodeError::Truncated));
        // 14 prefixes make mov [rdi], ax 16 bytes long.
        let mut long = [0x66; 16];
        long[14..].copy_from_slice(&[0x89, 0x07]);
        assert_eq!(decode(&long, Bits64), Err(DecodeError::TooLong));
        // ... 13 still fit in 15.
        assert_eq!(decode(&long[1..], Bits64).map(|i| i.len), Ok(15));
    }

    /// Never panics, and any instruction it accepts fits the input and 15 bytes.
    #[test]
    fn fuzz_random_bytes() {
        let mut next = crate::emulate::testmem::xorshift(0x9e37_79b9_7f4a_7c15u64);
        // Bias the first bytes toward prefixes and the opcodes we decode so the
        // interesting paths are reached, not just Unsupported.
        const HOT: &[u8] = &[
            0x66, 0x67, 0xf0, 0xf3, 0x26, 0x64, 0x40, 0x48, 0x4f, 0x88, 0x89, 0x8a, 0x8b, 0xc6, 0xc7, 0x86, 0x87, 0xa0,
            0xa1, 0xa2, 0xa3, 0x0f, 0xb6, 0xb7, 0xbe, 0xbf,
        ];
        let mut ok = 0;
        for _ in 0..100_000 {
            let mut buf = [0u8; 20];
            for b in buf.iter_mut() {
                let r = next();
                *b = if r & 1 == 0 { HOT[(r >> 8) as usize % HOT.len()] } else { (r >> 16) as u8 };
            }
            let n = (next() % 21) as usize;
            let code = [Bits16, Bits32, Bits64][(next() % 3) as usize];
            if let Ok(i) = decode(&buf[..n], code) {
                ok += 1;
                assert!(usize::from(i.len) <= MAX_LEN && usize::from(i.len) <= n);
                assert!(matches!(i.size, 1 | 2 | 4 | 8));
                assert!(matches!(i.mem.addr_size, 2 | 4 | 8));
            }
        }
        assert!(ok > 1000, "only {ok} decoded: the fuzz input misses the decoder");
    }
}

/// Whether `bytes` (the instruction stream at a guest's RIP) start with an
/// AMD-V instruction — VMRUN, VMMCALL, VMLOAD, VMSAVE, STGI, CLGI, SKINIT,
/// INVLPGA: `0F 01 D8..DF` (AMD APM Vol. 3) — after any legacy prefixes and,
/// in 64-bit code, a REX prefix.
pub fn is_svm_instruction(bytes: &[u8], code: CodeSize) -> bool {
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0xf0 | 0xf2 | 0xf3 => i += 1,
            0x40..=0x4f if code == CodeSize::Bits64 => {
                i += 1;
                break;
            }
            _ => break,
        }
        if i >= MAX_LEN {
            return false;
        }
    }
    matches!(bytes.get(i..i + 3), Some([0x0f, 0x01, 0xd8..=0xdf]))
}

#[cfg(test)]
mod svm_tests {
    use super::*;

    #[test]
    fn svm_instructions_are_recognised_behind_prefixes() {
        // vmrun rax; stgi; invlpga.
        assert!(is_svm_instruction(&[0x0f, 0x01, 0xd8], CodeSize::Bits64));
        assert!(is_svm_instruction(&[0x0f, 0x01, 0xdc, 0x90], CodeSize::Bits32));
        assert!(is_svm_instruction(&[0x0f, 0x01, 0xdf], CodeSize::Bits16));
        // addr32 / REX.W prefixed.
        assert!(is_svm_instruction(&[0x67, 0x0f, 0x01, 0xda], CodeSize::Bits64));
        assert!(is_svm_instruction(&[0x48, 0x0f, 0x01, 0xdb], CodeSize::Bits64));
        // Not: vmcall (0f 01 c1), lgdt, a REX byte outside 64-bit code (inc eax).
        assert!(!is_svm_instruction(&[0x0f, 0x01, 0xc1], CodeSize::Bits64));
        assert!(!is_svm_instruction(&[0x0f, 0x01, 0x10], CodeSize::Bits64));
        assert!(!is_svm_instruction(&[0x48, 0x0f, 0x01, 0xd8], CodeSize::Bits32));
        // Truncated, or only prefixes.
        assert!(!is_svm_instruction(&[0x0f, 0x01], CodeSize::Bits64));
        assert!(!is_svm_instruction(&[0x66; 20], CodeSize::Bits64));
    }
}
