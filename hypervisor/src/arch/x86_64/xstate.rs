//! Extended processor state per vCPU: x87, SSE, AVX, AVX-512, PKRU, … and XCR0.
//!
//! Neither VT-x nor AMD-V switches this state on VM entry or exit, so without
//! this module every guest would see (and could change) the registers of the
//! guest that ran before it on the same CPU. Each vCPU owns an `XState`: its
//! XSAVE area (or FXSAVE area on CPUs without XSAVE) and its XCR0. The
//! scheduler's run slice of a vCPU begins with `load` and ends with `save`.
//!
//! Both use the *full* set of user components CPUID.(EAX=0DH,ECX=0) reports,
//! with XCR0 set to that set for the duration (SDM Vol. 1 §13.7-13.8: XSAVE
//! and XRSTOR only touch components enabled in XCR0 and requested in EDX:EAX),
//! so state the guest has disabled in its XCR0, and PKRU, are switched too and
//! nothing of one guest's survives into the next. The standard (non-compacted)
//! form is used: XSAVEOPT/XSAVES's modified-state tracking is keyed on the
//! linear address and would need more care across vCPUs.
//!
//! This is the only module of the hypervisor whose code touches x87/SSE/AVX
//! registers (through XSAVE/XRSTOR/FXSAVE/FXRSTOR); `cargo xtask test` checks
//! the built image for any other instruction that does (`xtask/src/vecregs.rs`).

use crate::mem::{alloc_frames, free_frames, HostPhysAddr, PAGE_SIZE};
use spin::Once;
use x86_64::registers::control::{Cr0, Cr0Flags, Cr4, Cr4Flags};

/// CPUID.1:ECX.XSAVE.
const CPUID_1_ECX_XSAVE: u32 = 1 << 26;
/// XCR0 after reset: x87 only (SDM Vol. 1 §13.3).
const XCR0_RESET: u64 = 1;
/// The FXSAVE/legacy region: x87 control word after FINIT / reset.
const FCW_RESET: u16 = 0x37f;
/// MXCSR after reset: all exceptions masked.
const MXCSR_RESET: u32 = 0x1f80;
/// Offsets in the legacy region (SDM Vol. 1 Table 10-2).
const FCW_OFFSET: usize = 0;
const MXCSR_OFFSET: usize = 24;
/// The FXSAVE area's size (SDM Vol. 2A, FXSAVE).
const FXSAVE_SIZE: usize = 512;

/// What the CPU offers, read once.
struct Host {
    /// XSAVE is usable (CPUID.1:ECX.XSAVE); otherwise FXSAVE.
    xsave: bool,
    /// Every user component CPUID.(0DH,0) EDX:EAX reports.
    full: u64,
    /// Bytes of the area: CPUID.(0DH,0) ECX, the size for all of `full`.
    size: usize,
}

static HOST: Once<Host> = Once::new();

fn host() -> &'static Host {
    HOST.call_once(|| {
        let xsave = super::cpuid(1, 0).ecx & CPUID_1_ECX_XSAVE != 0;
        if xsave {
            let d = super::cpuid(0xd, 0);
            let full = u64::from(d.eax) | (u64::from(d.edx) << 32);
            Host { xsave, full, size: (d.ecx as usize).max(FXSAVE_SIZE + 64) }
        } else {
            Host { xsave, full: 0, size: FXSAVE_SIZE }
        }
    })
}

/// Prepares the calling CPU: CR4.OSFXSR (FXSAVE/FXRSTOR then include the XMM
/// registers and MXCSR: SDM Vol. 2A FXSAVE, APM Vol. 4), CR4.OSXSAVE where the
/// CPU has XSAVE (XGETBV/XSETBV/XSAVE/XRSTOR need it; guests' XSETBV is
/// completed by the hypervisor's own, `exit::xcr`), and CR0.TS/EM clear (else
/// those instructions raise #NM/#UD). Runs before the backends record the
/// host's CR0/CR4 for VM exits.
pub fn init_cpu() {
    let mut cr4 = Cr4Flags::OSFXSR;
    if host().xsave {
        cr4 |= Cr4Flags::OSXSAVE;
    }
    // SAFETY: the CPU supports these bits (FXSR is architectural on x86-64,
    // OSXSAVE only with XSAVE); they only permit the save/restore
    // instructions, which the hypervisor uses in this module alone.
    unsafe {
        Cr4::update(|f| f.insert(cr4));
        Cr0::update(|f| f.remove(Cr0Flags::TASK_SWITCHED | Cr0Flags::EMULATE_COPROCESSOR));
    }
}

/// One vCPU's extended state while it is not running.
pub struct XState {
    area: HostPhysAddr,
    frames: usize,
    /// The guest's XCR0 (XSAVE CPUs only).
    xcr0: u64,
}

impl XState {
    /// The state after RESET (SDM Vol. 3A Table 9-1): XCR0 = 1, FCW 0x37F,
    /// MXCSR 0x1F80, every register zero. None if no memory is left.
    pub fn new() -> Option<Self> {
        let h = host();
        let frames = h.size.div_ceil(PAGE_SIZE as usize);
        // Zeroed frames: the XSAVE header (XSTATE_BV = XCOMP_BV = 0, reserved
        // bytes 0) is valid, and XRSTOR puts every component in its initial
        // configuration except MXCSR, which it loads from the legacy region.
        let area = alloc_frames(frames, 1)?;
        let mut s = Self { area, frames, xcr0: XCR0_RESET };
        s.reset();
        MEASURED.call_once(|| s.measure());
        s.reset();
        Some(s)
    }

    fn reset(&mut self) {
        // SAFETY: the area is ours, identity mapped, at least 512 bytes and
        // page aligned, so both fields are in bounds and aligned.
        unsafe {
            core::ptr::write_bytes(self.area.as_ptr::<u8>(), 0, self.frames * PAGE_SIZE as usize);
            self.area.as_ptr::<u8>().add(FCW_OFFSET).cast::<u16>().write(FCW_RESET);
            self.area.as_ptr::<u8>().add(MXCSR_OFFSET).cast::<u32>().write(MXCSR_RESET);
        }
        self.xcr0 = XCR0_RESET;
    }

    /// Puts this vCPU's extended state and XCR0 into the CPU, replacing all of
    /// the previous owner's. Call right before the first VM entry of a slice.
    #[inline(never)]
    pub fn load(&self) {
        let h = host();
        let p = self.area.as_ptr::<u8>();
        if h.xsave {
            // SAFETY: `full` is what CPUID reports, so a valid XCR0; the area
            // is ours, 64-byte aligned, `size` bytes for all of `full`, and
            // holds either the reset image or what `save` wrote (a valid
            // header). `xcr0` passed `exit::xcr::valid` or was read by XGETBV.
            // XSETBV costs more than XGETBV: skipped when XCR0 already holds
            // the value (a guest that enabled everything needs none).
            unsafe {
                if xgetbv() != h.full {
                    xsetbv(h.full);
                }
                core::arch::asm!("xrstor64 [{}]", in(reg) p, in("eax") h.full as u32, in("edx") (h.full >> 32) as u32,
                    options(nostack, readonly, preserves_flags));
                if self.xcr0 != h.full {
                    xsetbv(self.xcr0);
                }
            }
        } else {
            // SAFETY: the area is ours, 16-byte aligned, 512 bytes, and holds
            // the reset image or FXSAVE's (MXCSR valid, so no #GP).
            unsafe { core::arch::asm!("fxrstor64 [{}]", in(reg) p, options(nostack, readonly, preserves_flags)) };
        }
    }

    /// Takes this vCPU's extended state and XCR0 out of the CPU. Call right
    /// after the last VM exit of a slice, before any other vCPU's `load`.
    #[inline(never)]
    pub fn save(&mut self) {
        let h = host();
        let p = self.area.as_ptr::<u8>();
        if h.xsave {
            // SAFETY: as in `load`; XGETBV(0) needs only CR4.OSXSAVE, which
            // `init_cpu` set.
            unsafe {
                self.xcr0 = xgetbv();
                if self.xcr0 != h.full {
                    xsetbv(h.full);
                }
                core::arch::asm!("xsave64 [{}]", in(reg) p, in("eax") h.full as u32, in("edx") (h.full >> 32) as u32,
                    options(nostack, preserves_flags));
            }
        } else {
            // SAFETY: the area is ours, 16-byte aligned and 512 bytes.
            unsafe { core::arch::asm!("fxsave64 [{}]", in(reg) p, options(nostack, preserves_flags)) };
        }
    }

    /// Logs what a `save` + `load` pair costs on this CPU, once per boot:
    /// with the guest's XCR0 = every component (no XSETBV needed) and = x87
    /// only (three XSETBVs). Under Bochs the TSC counts instructions.
    fn measure(&mut self) {
        const ROUNDS: u64 = 64;
        let h = host();
        let mut pair = |xcr0: u64| {
            self.xcr0 = xcr0;
            self.load();
            let t0 = super::time::rdtsc();
            for _ in 0..ROUNDS {
                self.save();
                self.load();
            }
            (super::time::rdtsc() - t0) / ROUNDS
        };
        let narrow = pair(XCR0_RESET);
        let full = if h.xsave { pair(h.full) } else { narrow };
        // After a save with every component (SSE's included, or FXSAVE):
        // the legacy region holds MXCSR_MASK.
        if !h.xsave {
            pair(XCR0_RESET);
        }
        // SAFETY: the area is ours and at least 512 bytes; `save` just wrote
        // its legacy region (MXCSR_MASK included).
        let mask = unsafe { self.area.as_ptr::<u8>().add(MXCSR_MASK_OFFSET).cast::<u32>().read() };
        MXCSR_MASK.store(mask, core::sync::atomic::Ordering::Relaxed);
        log::info!(
            "xstate: {} of {} bytes per vCPU (components {:#x}); one save+restore ≈ {full} TSC ticks \
             (guest XCR0 = all of them), {narrow} (XCR0 = 1)",
            if h.xsave { "XSAVE" } else { "FXSAVE" },
            h.size,
            h.full
        );
    }
}

/// The XSAVE header's offset in the area (SDM Vol. 1 §13.4.2), and the end
/// of its bytes that must be zero.
const XSAVE_HEADER: usize = FXSAVE_SIZE;
const XSAVE_HEADER_END: usize = XSAVE_HEADER + 64;
const MXCSR_MASK_OFFSET: usize = 28;

/// The XCR0 components this host saves for guests (0 without XSAVE).
pub fn host_components() -> u64 {
    host().full
}

/// MXCSR bits this CPU accepts: the MXCSR_MASK field of the first image
/// `measure` saved (0xFFBF if it reads 0 or none was saved: SDM Vol. 1 §11.6.6).
static MXCSR_MASK: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(0);

fn mxcsr_mask() -> u32 {
    match MXCSR_MASK.load(core::sync::atomic::Ordering::Relaxed) {
        0 => 0xffbf,
        m => m,
    }
}

impl XState {
    /// The guest's XCR0 and its saved area (`save`'s image; the host's size).
    pub fn image(&self) -> (u64, &[u8]) {
        // SAFETY: the area is ours, identity mapped, `host().size` bytes long
        // at least; nothing writes it while this borrow lives (`&self`).
        (self.xcr0, unsafe { core::slice::from_raw_parts(self.area.as_ptr::<u8>(), host().size) })
    }

    /// Takes an image `image` returned (a saved vCPU state's). Refused unless
    /// the next `load` cannot fault: the host's size, XCR0 made of the host's
    /// components (the caller checks XSETBV's rules, `exit::xcr::valid`), an
    /// XSAVE header XRSTOR accepts in standard form (XSTATE_BV within the
    /// host's components, XCOMP_BV and the reserved bytes zero) and MXCSR
    /// without reserved bits (SDM Vol. 1 §13.8, Vol. 2D XRSTOR/FXRSTOR).
    pub fn load_image(&mut self, xcr0: u64, bytes: &[u8]) -> Result<(), &'static str> {
        let h = host();
        if bytes.len() != h.size {
            return Err("the XSAVE area's size is not this CPU's");
        }
        if h.xsave {
            if xcr0 & !h.full != 0 || xcr0 & XCR0_RESET == 0 {
                return Err("XCR0 with components this CPU does not save for guests");
            }
            let header = &bytes[XSAVE_HEADER..XSAVE_HEADER_END];
            let xstate_bv = u64::from_le_bytes(header[..8].try_into().map_err(|_| "short header")?);
            if xstate_bv & !h.full != 0 || header[8..].iter().any(|&b| b != 0) {
                return Err("an XSAVE header XRSTOR would refuse");
            }
        } else if xcr0 != XCR0_RESET {
            return Err("XCR0 on a CPU without XSAVE");
        }
        let mxcsr = u32::from_le_bytes(bytes[MXCSR_OFFSET..MXCSR_OFFSET + 4].try_into().map_err(|_| "short area")?);
        if mxcsr & !mxcsr_mask() != 0 {
            return Err("MXCSR with reserved bits");
        }
        // SAFETY: the area is ours and `h.size` bytes long (checked above).
        unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.area.as_ptr::<u8>(), h.size) };
        self.xcr0 = xcr0;
        Ok(())
    }
}

static MEASURED: Once<()> = Once::new();

impl Drop for XState {
    fn drop(&mut self) {
        free_frames(self.area, self.frames);
    }
}

/// # Safety
/// CR4.OSXSAVE must be set and `value` a valid XCR0 for this CPU.
unsafe fn xsetbv(value: u64) {
    // SAFETY: the caller's.
    unsafe {
        core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") value as u32, in("edx") (value >> 32) as u32,
            options(nomem, nostack, preserves_flags));
    }
}

/// # Safety
/// CR4.OSXSAVE must be set.
unsafe fn xgetbv() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller's; XCR0 always exists.
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
    }
    u64::from(lo) | (u64::from(hi) << 32)
}
