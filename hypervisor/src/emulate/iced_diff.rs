//! Differential test of the MMIO decoder against iced-x86 (a host-only
//! dev-dependency): on pseudo-random byte strings, every instruction the
//! decoder accepts must be the same instruction to iced (length, direction,
//! sizes, registers, immediate, effective address), and every MOV-family
//! instruction with a memory operand that iced decodes must be accepted.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

use super::decode::{decode, CodeSize, Extend, Gpr, MmioAccess, MmioInsn, RegOperand, Source};

/// A distinct pseudo-random value for each GPR.
fn gpr_value(n: u8) -> u64 {
    0x0123_4567_89ab_cdefu64.rotate_left(u32::from(n) * 7) ^ (u64::from(n) << 56)
}

fn iced_reg(r: Register) -> RegOperand {
    let high_byte = matches!(r, Register::AH | Register::CH | Register::DH | Register::BH);
    let full = r.full_register();
    assert!(full.is_gpr64(), "{r:?}");
    RegOperand { gpr: Gpr((full as u32 - Register::RAX as u32) as u8), high_byte }
}

fn iced_ea(i: &Instruction, op: u32) -> u64 {
    i.virtual_address(op, 0, |r, _, _| {
        if r.is_segment_register() {
            return Some(0);
        }
        let full = r.full_register();
        let v = gpr_value((full as u32 - Register::RAX as u32) as u8);
        Some(match r.size() {
            2 => v & 0xffff,
            4 => v & 0xffff_ffff,
            _ => v,
        })
    })
    .unwrap()
}

/// Checks that iced agrees with `ours` about `bytes`.
fn agree(bytes: &[u8], code: CodeSize, ours: &MmioInsn) {
    let bits = match code {
        CodeSize::Bits16 => 16,
        CodeSize::Bits32 => 32,
        CodeSize::Bits64 => 64,
    };
    let i = Decoder::with_ip(bits, bytes, 0, DecoderOptions::NONE).decode();
    let ctx = || format!("{bytes:02x?} in {code:?}: ours {ours:?}, iced {i:?} ({:?})", i.code());
    assert!(!i.is_invalid(), "{}", ctx());
    assert_eq!(usize::from(ours.len), i.len(), "{}", ctx());
    let mem_op = (0..i.op_count()).find(|&n| i.op_kind(n) == OpKind::Memory).expect("memory operand");
    assert_eq!(usize::from(ours.size), i.memory_size().size(), "{}", ctx());
    let reg_op = (0..i.op_count()).find(|&n| i.op_kind(n) == OpKind::Register);
    match ours.access {
        MmioAccess::Read { dest, dest_size, extend } => {
            let m = match extend {
                Extend::None => Mnemonic::Mov,
                Extend::Zero => Mnemonic::Movzx,
                Extend::Sign => Mnemonic::Movsx,
            };
            assert_eq!((i.mnemonic(), mem_op), (m, 1), "{}", ctx());
            assert_eq!(iced_reg(i.op0_register()), dest, "{}", ctx());
            assert_eq!(usize::from(dest_size), i.op0_register().size(), "{}", ctx());
        }
        MmioAccess::Write { src } => {
            assert_eq!((i.mnemonic(), mem_op), (Mnemonic::Mov, 0), "{}", ctx());
            match src {
                Source::Reg(r) => assert_eq!(iced_reg(i.op1_register()), r, "{}", ctx()),
                Source::Imm(v) => assert_eq!(i.immediate(1), v, "{}", ctx()),
            }
        }
        MmioAccess::Exchange { reg } => {
            assert_eq!(i.mnemonic(), Mnemonic::Xchg, "{}", ctx());
            assert_eq!(iced_reg(i.op_register(reg_op.unwrap())), reg, "{}", ctx());
        }
    }
    let ea = ours.mem.effective_address(|g| gpr_value(g.0), u64::from(ours.len));
    assert_eq!(ea, iced_ea(&i, mem_op), "{}", ctx());
}

/// Whether iced's instruction is one this decoder is meant to accept.
fn in_scope(i: &Instruction, bytes: &[u8]) -> bool {
    let has_mem = (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Memory);
    let mov_family = matches!(i.mnemonic(), Mnemonic::Mov | Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Xchg);
    // Moves to and from segment and control registers are not MMIO forms.
    let gpr_only = (0..i.op_count()).filter(|&n| i.op_kind(n) == OpKind::Register).all(|n| i.op_register(n).is_gpr());
    // F2/F3 before 0F forms are refused on purpose (they select other instructions).
    let rep_0f = i.has_rep_prefix() || i.has_repne_prefix();
    let rep_0f = rep_0f && bytes[..i.len()].contains(&0x0f);
    has_mem && mov_family && gpr_only && !rep_0f
}

#[test]
fn matches_iced_on_random_bytes() {
    let mut next = crate::emulate::testmem::xorshift(0x2545_f491_4f6c_dd1du64);
    const HOT: &[u8] = &[
        0x66, 0x67, 0xf0, 0xf2, 0xf3, 0x2e, 0x36, 0x64, 0x65, 0x40, 0x41, 0x44, 0x48, 0x4c, 0x4f, 0x88, 0x89, 0x8a,
        0x8b, 0xc6, 0xc7, 0x86, 0x87, 0xa0, 0xa1, 0xa2, 0xa3, 0x0f, 0xb6, 0xb7, 0xbe, 0xbf,
    ];
    let (mut accepted, mut in_scope_seen) = (0, 0);
    for _ in 0..200_000 {
        let mut buf = [0u8; 15];
        // Up to 5 prefix/opcode bytes from HOT, the rest random (ModRM, SIB, ...).
        let hot = (next() % 6) as usize;
        for (k, b) in buf.iter_mut().enumerate() {
            let r = next();
            *b = if k < hot { HOT[(r >> 8) as usize % HOT.len()] } else { (r >> 16) as u8 };
        }
        let code = [CodeSize::Bits16, CodeSize::Bits32, CodeSize::Bits64][(next() % 3) as usize];
        let ours = decode(&buf, code);
        if let Ok(insn) = &ours {
            accepted += 1;
            agree(&buf, code, insn);
        }
        let bits = [16, 32, 64][code as usize];
        let i = Decoder::with_ip(bits, &buf, 0, DecoderOptions::NONE).decode();
        if !i.is_invalid() && in_scope(&i, &buf) {
            in_scope_seen += 1;
            assert!(ours.is_ok(), "{:02x?} in {code:?}: iced {:?}, ours {ours:?}", &buf[..i.len()], i.code());
        }
    }
    assert!(accepted > 10_000 && in_scope_seen > 10_000, "{accepted} accepted, {in_scope_seen} in scope");
}
