//! The hypervisor's own code must never touch x87/MMX/SSE/AVX/AVX-512
//! registers: they hold the running guest's values between its VM exits and
//! are switched only at the edges of a run slice (`arch::x86_64::xstate`).
//! The target `x86_64-unknown-none` is soft-float (`-mmx,-sse,+soft-float`),
//! so rustc should emit none; this check disassembles the built ELF and proves
//! it, also for inline and global assembly. Only functions of
//! `arch::x86_64::xstate` (XSAVE/XRSTOR/FXSAVE/FXRSTOR) are exempt.

use std::path::Path;

use anyhow::{Context, Result};
use iced_x86::{Decoder, DecoderOptions, Instruction, InstructionInfoFactory, Register};
use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};

/// The module whose functions may use the registers, as it appears in both
/// the legacy and the v0 Rust symbol manglings.
const EXEMPT: &str = "4arch6x86_646xstate";

/// A register of the x87 stack, MMX, XMM, YMM, ZMM or AVX-512 opmask files.
fn is_vector(r: Register) -> bool {
    r != Register::None
        && (r.is_st() || r.is_mm() || r.is_xmm() || r.is_ymm() || r.is_zmm() || r.is_k())
}

/// Instructions in `code` (loaded at `ip`) that use such a register, as text.
pub fn offenders(code: &[u8], ip: u64) -> Vec<String> {
    let mut found = Vec::new();
    let mut info = InstructionInfoFactory::new();
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut ins = Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut ins);
        if ins.is_invalid() {
            continue;
        }
        let explicit = (0..ins.op_count()).map(|i| ins.op_register(i));
        let implicit = info
            .info(&ins)
            .used_registers()
            .iter()
            .map(|u| u.register());
        let m = format!("{:?}", ins.mnemonic()).to_lowercase();
        let saves = [
            "fxsave", "fxrstor", "xsave", "xrstor", "fsave", "frstor", "fnsave",
        ]
        .iter()
        .any(|s| m.starts_with(s));
        if saves || explicit.chain(implicit).any(is_vector) {
            found.push(format!("{:#x}: {ins}", ins.ip()));
        }
    }
    found
}

/// Checks the ELF at `path`; the error lists every offending instruction
/// with its function.
pub fn check(path: &Path) -> Result<()> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let elf = object::File::parse(&*data).with_context(|| format!("parsing {}", path.display()))?;
    let mut bad = Vec::new();
    let mut checked = 0usize;
    for sym in elf.symbols() {
        if sym.kind() != SymbolKind::Text || sym.size() == 0 {
            continue;
        }
        let name = sym.name().unwrap_or("?");
        let Some(section) = sym
            .section_index()
            .and_then(|i| elf.section_by_index(i).ok())
        else {
            continue;
        };
        if section.kind() != SectionKind::Text {
            continue;
        }
        let bytes = section.data()?;
        let start = (sym.address() - section.address()) as usize;
        let Some(code) = bytes.get(start..start + sym.size() as usize) else {
            continue;
        };
        checked += 1;
        if name.contains(EXEMPT) {
            continue;
        }
        bad.extend(
            offenders(code, sym.address())
                .into_iter()
                .map(|o| format!("{name}: {o}")),
        );
    }
    anyhow::ensure!(
        checked > 100,
        "{}: only {checked} functions found; no symbols?",
        path.display()
    );
    anyhow::ensure!(
        bad.is_empty(),
        "{} uses x87/MMX/SSE/AVX registers outside arch::x86_64::xstate (they hold guest state):\n  {}",
        path.display(),
        bad.join("\n  ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_vector_registers() {
        // movaps xmm0, xmm1; vmovdqu64 zmm1, [rax]; fld st(1); kmovw k1, eax; emms
        for code in [
            &[0x0f, 0x28, 0xc1][..],
            &[0x62, 0xf1, 0xfe, 0x48, 0x6f, 0x08],
            &[0xd9, 0xc1],
            &[0xc5, 0xf8, 0x92, 0xc8],
        ] {
            assert_eq!(offenders(code, 0).len(), 1, "{code:x?}");
        }
        // fxsave64 [rdi] and xrstor [rsi] name no register but replace them all.
        assert_eq!(
            offenders(&[0x48, 0x0f, 0xae, 0x07, 0x0f, 0xae, 0x2e], 0).len(),
            2
        );
        let plain = [0x48, 0x89, 0xf8, 0x0f, 0x01, 0xd1, 0xc3]; // mov rax, rdi; xsetbv; ret
        assert!(offenders(&plain, 0x1000).is_empty());
    }
}
