// Generated lists of moves (one line per register), kept apart from the logic.

/// Loads the SSE registers from/to `p` (64 bytes a register).
///
/// # Safety
/// `p` must point at `REGS_BYTES` bytes; the CPU must have the registers enabled.
pub unsafe fn load_sse(p: *const u8) {
    // SAFETY: the caller's.
    unsafe {
        core::arch::asm!(
            "movdqu xmm0, [{p} + 0]",
            "movdqu xmm1, [{p} + 64]",
            "movdqu xmm2, [{p} + 128]",
            "movdqu xmm3, [{p} + 192]",
            "movdqu xmm4, [{p} + 256]",
            "movdqu xmm5, [{p} + 320]",
            "movdqu xmm6, [{p} + 384]",
            "movdqu xmm7, [{p} + 448]",
            "movdqu xmm8, [{p} + 512]",
            "movdqu xmm9, [{p} + 576]",
            "movdqu xmm10, [{p} + 640]",
            "movdqu xmm11, [{p} + 704]",
            "movdqu xmm12, [{p} + 768]",
            "movdqu xmm13, [{p} + 832]",
            "movdqu xmm14, [{p} + 896]",
            "movdqu xmm15, [{p} + 960]",
            p = in(reg) p,
            options(nostack, preserves_flags),
        );
    }
}

/// Stores the SSE registers from/to `p` (64 bytes a register).
///
/// # Safety
/// `p` must point at `REGS_BYTES` bytes; the CPU must have the registers enabled.
pub unsafe fn store_sse(p: *mut u8) {
    // SAFETY: the caller's.
    unsafe {
        core::arch::asm!(
            "movdqu [{p} + 0], xmm0",
            "movdqu [{p} + 64], xmm1",
            "movdqu [{p} + 128], xmm2",
            "movdqu [{p} + 192], xmm3",
            "movdqu [{p} + 256], xmm4",
            "movdqu [{p} + 320], xmm5",
            "movdqu [{p} + 384], xmm6",
            "movdqu [{p} + 448], xmm7",
            "movdqu [{p} + 512], xmm8",
            "movdqu [{p} + 576], xmm9",
            "movdqu [{p} + 640], xmm10",
            "movdqu [{p} + 704], xmm11",
            "movdqu [{p} + 768], xmm12",
            "movdqu [{p} + 832], xmm13",
            "movdqu [{p} + 896], xmm14",
            "movdqu [{p} + 960], xmm15",
            p = in(reg) p,
            options(nostack, preserves_flags),
        );
    }
}

/// Loads the AVX registers from/to `p` (64 bytes a register).
///
/// # Safety
/// `p` must point at `REGS_BYTES` bytes; the CPU must have the registers enabled.
pub unsafe fn load_avx(p: *const u8) {
    // SAFETY: the caller's.
    unsafe {
        core::arch::asm!(
            "vmovdqu ymm0, [{p} + 0]",
            "vmovdqu ymm1, [{p} + 64]",
            "vmovdqu ymm2, [{p} + 128]",
            "vmovdqu ymm3, [{p} + 192]",
            "vmovdqu ymm4, [{p} + 256]",
            "vmovdqu ymm5, [{p} + 320]",
            "vmovdqu ymm6, [{p} + 384]",
            "vmovdqu ymm7, [{p} + 448]",
            "vmovdqu ymm8, [{p} + 512]",
            "vmovdqu ymm9, [{p} + 576]",
            "vmovdqu ymm10, [{p} + 640]",
            "vmovdqu ymm11, [{p} + 704]",
            "vmovdqu ymm12, [{p} + 768]",
            "vmovdqu ymm13, [{p} + 832]",
            "vmovdqu ymm14, [{p} + 896]",
            "vmovdqu ymm15, [{p} + 960]",
            p = in(reg) p,
            options(nostack, preserves_flags),
        );
    }
}

/// Stores the AVX registers from/to `p` (64 bytes a register).
///
/// # Safety
/// `p` must point at `REGS_BYTES` bytes; the CPU must have the registers enabled.
pub unsafe fn store_avx(p: *mut u8) {
    // SAFETY: the caller's.
    unsafe {
        core::arch::asm!(
            "vmovdqu [{p} + 0], ymm0",
            "vmovdqu [{p} + 64], ymm1",
            "vmovdqu [{p} + 128], ymm2",
            "vmovdqu [{p} + 192], ymm3",
            "vmovdqu [{p} + 256], ymm4",
            "vmovdqu [{p} + 320], ymm5",
            "vmovdqu [{p} + 384], ymm6",
            "vmovdqu [{p} + 448], ymm7",
            "vmovdqu [{p} + 512], ymm8",
            "vmovdqu [{p} + 576], ymm9",
            "vmovdqu [{p} + 640], ymm10",
            "vmovdqu [{p} + 704], ymm11",
            "vmovdqu [{p} + 768], ymm12",
            "vmovdqu [{p} + 832], ymm13",
            "vmovdqu [{p} + 896], ymm14",
            "vmovdqu [{p} + 960], ymm15",
            p = in(reg) p,
            options(nostack, preserves_flags),
        );
    }
}

/// Loads the AVX512 registers from/to `p` (64 bytes a register).
///
/// # Safety
/// `p` must point at `REGS_BYTES` bytes; the CPU must have the registers enabled.
pub unsafe fn load_avx512(p: *const u8) {
    // SAFETY: the caller's.
    unsafe {
        core::arch::asm!(
            "vmovdqu64 zmm0, [{p} + 0]",
            "vmovdqu64 zmm1, [{p} + 64]",
            "vmovdqu64 zmm2, [{p} + 128]",
            "vmovdqu64 zmm3, [{p} + 192]",
            "vmovdqu64 zmm4, [{p} + 256]",
            "vmovdqu64 zmm5, [{p} + 320]",
            "vmovdqu64 zmm6, [{p} + 384]",
            "vmovdqu64 zmm7, [{p} + 448]",
            "vmovdqu64 zmm8, [{p} + 512]",
            "vmovdqu64 zmm9, [{p} + 576]",
            "vmovdqu64 zmm10, [{p} + 640]",
            "vmovdqu64 zmm11, [{p} + 704]",
            "vmovdqu64 zmm12, [{p} + 768]",
            "vmovdqu64 zmm13, [{p} + 832]",
            "vmovdqu64 zmm14, [{p} + 896]",
            "vmovdqu64 zmm15, [{p} + 960]",
            "vmovdqu64 zmm16, [{p} + 1024]",
            "vmovdqu64 zmm17, [{p} + 1088]",
            "vmovdqu64 zmm18, [{p} + 1152]",
            "vmovdqu64 zmm19, [{p} + 1216]",
            "vmovdqu64 zmm20, [{p} + 1280]",
            "vmovdqu64 zmm21, [{p} + 1344]",
            "vmovdqu64 zmm22, [{p} + 1408]",
            "vmovdqu64 zmm23, [{p} + 1472]",
            "vmovdqu64 zmm24, [{p} + 1536]",
            "vmovdqu64 zmm25, [{p} + 1600]",
            "vmovdqu64 zmm26, [{p} + 1664]",
            "vmovdqu64 zmm27, [{p} + 1728]",
            "vmovdqu64 zmm28, [{p} + 1792]",
            "vmovdqu64 zmm29, [{p} + 1856]",
            "vmovdqu64 zmm30, [{p} + 1920]",
            "vmovdqu64 zmm31, [{p} + 1984]",
            p = in(reg) p,
            options(nostack, preserves_flags),
        );
    }
}

/// Stores the AVX512 registers from/to `p` (64 bytes a register).
///
/// # Safety
/// `p` must point at `REGS_BYTES` bytes; the CPU must have the registers enabled.
pub unsafe fn store_avx512(p: *mut u8) {
    // SAFETY: the caller's.
    unsafe {
        core::arch::asm!(
            "vmovdqu64 [{p} + 0], zmm0",
            "vmovdqu64 [{p} + 64], zmm1",
            "vmovdqu64 [{p} + 128], zmm2",
            "vmovdqu64 [{p} + 192], zmm3",
            "vmovdqu64 [{p} + 256], zmm4",
            "vmovdqu64 [{p} + 320], zmm5",
            "vmovdqu64 [{p} + 384], zmm6",
            "vmovdqu64 [{p} + 448], zmm7",
            "vmovdqu64 [{p} + 512], zmm8",
            "vmovdqu64 [{p} + 576], zmm9",
            "vmovdqu64 [{p} + 640], zmm10",
            "vmovdqu64 [{p} + 704], zmm11",
            "vmovdqu64 [{p} + 768], zmm12",
            "vmovdqu64 [{p} + 832], zmm13",
            "vmovdqu64 [{p} + 896], zmm14",
            "vmovdqu64 [{p} + 960], zmm15",
            "vmovdqu64 [{p} + 1024], zmm16",
            "vmovdqu64 [{p} + 1088], zmm17",
            "vmovdqu64 [{p} + 1152], zmm18",
            "vmovdqu64 [{p} + 1216], zmm19",
            "vmovdqu64 [{p} + 1280], zmm20",
            "vmovdqu64 [{p} + 1344], zmm21",
            "vmovdqu64 [{p} + 1408], zmm22",
            "vmovdqu64 [{p} + 1472], zmm23",
            "vmovdqu64 [{p} + 1536], zmm24",
            "vmovdqu64 [{p} + 1600], zmm25",
            "vmovdqu64 [{p} + 1664], zmm26",
            "vmovdqu64 [{p} + 1728], zmm27",
            "vmovdqu64 [{p} + 1792], zmm28",
            "vmovdqu64 [{p} + 1856], zmm29",
            "vmovdqu64 [{p} + 1920], zmm30",
            "vmovdqu64 [{p} + 1984], zmm31",
            p = in(reg) p,
            options(nostack, preserves_flags),
        );
    }
}

/// Loads the opmask registers k0-k7 (16 bits each, 4 bytes apart).
///
/// # Safety
/// `p` must point at 32 bytes; AVX-512 state must be enabled.
pub unsafe fn load_k(p: *const u8) {
    // SAFETY: the caller's.
    unsafe {
        core::arch::asm!(
            "mov eax, [{p} + 0]", "kmovw k0, eax",
            "mov eax, [{p} + 4]", "kmovw k1, eax",
            "mov eax, [{p} + 8]", "kmovw k2, eax",
            "mov eax, [{p} + 12]", "kmovw k3, eax",
            "mov eax, [{p} + 16]", "kmovw k4, eax",
            "mov eax, [{p} + 20]", "kmovw k5, eax",
            "mov eax, [{p} + 24]", "kmovw k6, eax",
            "mov eax, [{p} + 28]", "kmovw k7, eax",
            p = in(reg) p,
            out("eax") _,
            options(nostack, preserves_flags),
        );
    }
}

/// Stores the opmask registers k0-k7 (16 bits each, 4 bytes apart).
///
/// # Safety
/// `p` must point at 32 bytes; AVX-512 state must be enabled.
pub unsafe fn store_k(p: *mut u8) {
    // SAFETY: the caller's.
    unsafe {
        core::arch::asm!(
            "kmovw eax, k0", "mov [{p} + 0], eax",
            "kmovw eax, k1", "mov [{p} + 4], eax",
            "kmovw eax, k2", "mov [{p} + 8], eax",
            "kmovw eax, k3", "mov [{p} + 12], eax",
            "kmovw eax, k4", "mov [{p} + 16], eax",
            "kmovw eax, k5", "mov [{p} + 20], eax",
            "kmovw eax, k6", "mov [{p} + 24], eax",
            "kmovw eax, k7", "mov [{p} + 28], eax",
            p = in(reg) p,
            out("eax") _,
            options(nostack, preserves_flags),
        );
    }
}
