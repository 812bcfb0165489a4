//! The VMCB (AMD APM Vol. 2, Appendix B): a 4 KiB page, control area at 0x000,
//! state-save area at 0x400. Layout is checked at compile time.

use core::mem::offset_of;

/// A segment in the VMCB's compressed format: attributes are descriptor bits
/// 47:40 in 7:0 and 55:52 in 11:8 (APM Vol. 2 §15.5.1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Segment {
    pub selector: u16,
    pub attrib: u16,
    pub limit: u32,
    pub base: u64,
}

/// Segment attribute values.
pub mod attrib {
    /// Present, DPL 0, code, execute/read, accessed.
    pub const CODE16: u16 = 0x009b;
    /// As CODE16 with L = 1 (64-bit).
    pub const CODE64: u16 = 0x029b;
    /// Present, read/write data, accessed.
    pub const DATA16: u16 = 0x0093;
    /// As DATA16 with G = 1, D/B = 1.
    pub const DATA32: u16 = 0x0c93;
    /// Present, busy 32/64-bit TSS.
    pub const TSS_BUSY: u16 = 0x008b;
    /// Present LDT.
    pub const LDT: u16 = 0x0082;
}

/// Intercept bits in the first misc. vector (VMCB offset 0x00c).
pub mod intercept1 {
    pub const INTR: u32 = 1 << 0;
    pub const VINTR: u32 = 1 << 4;
    pub const NMI: u32 = 1 << 1;
    pub const SMI: u32 = 1 << 2;
    pub const INIT: u32 = 1 << 3;
    pub const RDPMC: u32 = 1 << 15;
    pub const CPUID: u32 = 1 << 18;
    pub const INVD: u32 = 1 << 22;
    pub const HLT: u32 = 1 << 24;
    pub const INVLPGA: u32 = 1 << 26;
    pub const IOIO_PROT: u32 = 1 << 27;
    pub const MSR_PROT: u32 = 1 << 28;
    pub const TASK_SWITCH: u32 = 1 << 29;
    pub const SHUTDOWN: u32 = 1 << 31;
}

/// Intercept bits in the second misc. vector (VMCB offset 0x010).
pub mod intercept2 {
    /// Must be set: VMRUN without it fails the consistency checks.
    pub const VMRUN: u32 = 1 << 0;
    pub const VMMCALL: u32 = 1 << 1;
    pub const VMLOAD: u32 = 1 << 2;
    pub const VMSAVE: u32 = 1 << 3;
    pub const STGI: u32 = 1 << 4;
    pub const CLGI: u32 = 1 << 5;
    pub const SKINIT: u32 = 1 << 6;
    pub const WBINVD: u32 = 1 << 9;
    pub const MONITOR: u32 = 1 << 10;
    /// MWAIT, armed or not.
    pub const MWAIT: u32 = 1 << 11;
    pub const XSETBV: u32 = 1 << 13;
}

/// `int_ctl` bits (offset 0x060, APM Vol. 2 §15.21.1): a virtual interrupt
/// request, its priority, ignore-TPR, and virtual interrupt masking.
pub const V_IRQ: u64 = 1 << 8;
pub const V_INTR_PRIO_SHIFT: u64 = 16;
pub const V_IGN_TPR: u64 = 1 << 20;
pub const V_INTR_MASKING: u64 = 1 << 24;
/// `int_shadow` bit 0: the guest is in an interrupt shadow.
pub const INT_SHADOW: u64 = 1 << 0;
/// `event_inj` type for an external interrupt.
pub const EVENT_TYPE_INTR: u64 = 0;
/// `np_enable` bit 0: nested paging on.
pub const NP_ENABLE: u64 = 1 << 0;
/// `tlb_control` values (APM Vol. 2 §15.16.1).
pub const TLB_CONTROL_NONE: u8 = 0;
pub const TLB_CONTROL_FLUSH_ALL: u8 = 1;
/// `event_inj`: valid bit and the exception type (APM Vol. 2 §15.20).
pub const EVENT_VALID: u64 = 1 << 31;
pub const EVENT_TYPE_EXCEPTION: u64 = 3 << 8;
/// `event_inj` / EXITINTINFO bits 10:8: the event type.
pub const EVENT_TYPE_MASK: u64 = 7 << 8;
pub const EVENT_ERROR_CODE_VALID: u64 = 1 << 11;

#[repr(C)]
pub struct ControlArea {
    pub intercept_cr: u32,
    pub intercept_dr: u32,
    pub intercept_exceptions: u32,
    pub intercept1: u32,
    pub intercept2: u32,
    pub intercept3: u32,
    _reserved0: [u8; 0x24],
    pub pause_filter_threshold: u16,
    pub pause_filter_count: u16,
    pub iopm_base_pa: u64,
    pub msrpm_base_pa: u64,
    pub tsc_offset: u64,
    pub guest_asid: u32,
    pub tlb_control: u8,
    _reserved1: [u8; 3],
    pub int_ctl: u64,
    pub int_shadow: u64,
    pub exit_code: u64,
    pub exit_info1: u64,
    pub exit_info2: u64,
    pub exit_int_info: u64,
    pub np_enable: u64,
    pub avic_apic_bar: u64,
    pub ghcb_pa: u64,
    pub event_inj: u64,
    pub n_cr3: u64,
    pub lbr_virt: u64,
    pub clean_bits: u32,
    _reserved2: u32,
    pub next_rip: u64,
    pub insn_len: u8,
    pub insn_bytes: [u8; 15],
    _reserved3: [u8; 0x400 - 0xe0],
}

#[repr(C)]
pub struct SaveArea {
    pub es: Segment,
    pub cs: Segment,
    pub ss: Segment,
    pub ds: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub gdtr: Segment,
    pub ldtr: Segment,
    pub idtr: Segment,
    pub tr: Segment,
    _reserved0: [u8; 0x2b],
    pub cpl: u8,
    _reserved1: u32,
    pub efer: u64,
    _reserved2: [u8; 0x70],
    pub cr4: u64,
    pub cr3: u64,
    pub cr0: u64,
    pub dr7: u64,
    pub dr6: u64,
    pub rflags: u64,
    pub rip: u64,
    _reserved3: [u8; 0x58],
    pub rsp: u64,
    pub s_cet: u64,
    pub ssp: u64,
    pub isst_addr: u64,
    pub rax: u64,
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    pub sfmask: u64,
    pub kernel_gs_base: u64,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub cr2: u64,
    _reserved4: [u8; 0x20],
    pub g_pat: u64,
}

#[repr(C, align(4096))]
pub struct Vmcb {
    pub control: ControlArea,
    pub save: SaveArea,
}

const _: () = {
    assert!(offset_of!(ControlArea, intercept1) == 0x00c);
    assert!(offset_of!(ControlArea, iopm_base_pa) == 0x040);
    assert!(offset_of!(ControlArea, guest_asid) == 0x058);
    assert!(offset_of!(ControlArea, tlb_control) == 0x05c);
    assert!(offset_of!(ControlArea, int_ctl) == 0x060);
    assert!(offset_of!(ControlArea, exit_code) == 0x070);
    assert!(offset_of!(ControlArea, np_enable) == 0x090);
    assert!(offset_of!(ControlArea, event_inj) == 0x0a8);
    assert!(offset_of!(ControlArea, n_cr3) == 0x0b0);
    assert!(offset_of!(ControlArea, next_rip) == 0x0c8);
    assert!(core::mem::size_of::<ControlArea>() == 0x400);
    assert!(offset_of!(Vmcb, save) == 0x400);
    assert!(offset_of!(SaveArea, tr) == 0x090);
    assert!(offset_of!(SaveArea, cpl) == 0x0cb);
    assert!(offset_of!(SaveArea, efer) == 0x0d0);
    assert!(offset_of!(SaveArea, cr4) == 0x148);
    assert!(offset_of!(SaveArea, rip) == 0x178);
    assert!(offset_of!(SaveArea, rsp) == 0x1d8);
    assert!(offset_of!(SaveArea, rax) == 0x1f8);
    assert!(offset_of!(SaveArea, cr2) == 0x240);
    assert!(offset_of!(SaveArea, g_pat) == 0x268);
    assert!(core::mem::size_of::<Vmcb>() == 4096);
};

/// Exit codes (APM Vol. 2, Appendix C).
pub mod exit_code {
    pub const EXCP_BASE: u64 = 0x40;
    pub const INTR: u64 = 0x60;
    pub const NMI: u64 = 0x61;
    pub const SMI: u64 = 0x62;
    pub const VINTR: u64 = 0x64;
    pub const RDPMC: u64 = 0x6f;
    pub const CPUID: u64 = 0x72;
    pub const INVD: u64 = 0x76;
    pub const HLT: u64 = 0x78;
    pub const INVLPGA: u64 = 0x7a;
    pub const IOIO: u64 = 0x7b;
    pub const MSR: u64 = 0x7c;
    pub const SHUTDOWN: u64 = 0x7f;
    pub const VMRUN: u64 = 0x80;
    pub const VMMCALL: u64 = 0x81;
    pub const VMLOAD: u64 = 0x82;
    pub const VMSAVE: u64 = 0x83;
    pub const STGI: u64 = 0x84;
    pub const CLGI: u64 = 0x85;
    pub const SKINIT: u64 = 0x86;
    pub const WBINVD: u64 = 0x89;
    pub const MONITOR: u64 = 0x8a;
    pub const MWAIT: u64 = 0x8b;
    pub const MWAIT_CONDITIONAL: u64 = 0x8c;
    pub const XSETBV: u64 = 0x8d;
    pub const NPF: u64 = 0x400;
    pub const INVALID: u64 = u64::MAX;
}
