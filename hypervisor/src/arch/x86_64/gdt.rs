//! Per-CPU GDT and TSS. The hypervisor uses one code and one data segment; the TSS
//! exists for its IST stacks, so #DF, NMI and #MC always run on a known-good stack.

/// Selectors in every CPU's GDT.
pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const TSS_SEL: u16 = 0x18;

/// IST slots (1-based, as the IDT encodes them).
pub const IST_DOUBLE_FAULT: u8 = 1;
pub const IST_NMI: u8 = 2;
pub const IST_MACHINE_CHECK: u8 = 3;
pub const IST_STACK_SIZE: usize = 16 * 1024;

/// The 64-bit TSS (Intel SDM Vol. 3 §9.7).
#[repr(C, packed(4))]
#[derive(Default)]
pub struct Tss {
    _reserved0: u32,
    pub rsp: [u64; 3],
    _reserved1: u64,
    pub ist: [u64; 7],
    _reserved2: u64,
    _reserved3: u16,
    pub iomap_base: u16,
}
const _: () = assert!(core::mem::size_of::<Tss>() == 104);

/// GDT: null, code, data, TSS (two slots).
#[repr(C, align(16))]
pub struct Gdt(pub [u64; 5]);

impl Gdt {
    /// A GDT whose TSS descriptor points at `tss`.
    pub fn new(tss: &Tss) -> Self {
        let base = tss as *const Tss as u64;
        let limit = (core::mem::size_of::<Tss>() - 1) as u64;
        // Available 64-bit TSS, present (SDM Vol. 3 §9.2.3).
        let low = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        Gdt([0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff, low, base >> 32])
    }

    /// Loads this GDT and the TSS, and reloads the segment registers.
    ///
    /// # Safety
    /// `self` and the TSS must live for as long as this CPU runs.
    pub unsafe fn load(&'static self) {
        let ptr = x86_64::structures::DescriptorTablePointer {
            limit: (core::mem::size_of::<Gdt>() - 1) as u16,
            base: x86_64::VirtAddr::new(self as *const _ as u64),
        };
        // SAFETY: the GDT has valid code/data/TSS descriptors at the selectors used.
        unsafe {
            x86_64::instructions::tables::lgdt(&ptr);
            core::arch::asm!(
                "push {cs}", "lea {tmp}, [rip + 2f]", "push {tmp}", "retfq", "2:",
                "mov ds, {ds:e}", "mov es, {ds:e}", "mov ss, {ds:e}",
                cs = const KERNEL_CS as u64, ds = in(reg) u32::from(KERNEL_DS), tmp = out(reg) _,
            );
            x86_64::instructions::tables::load_tss(x86_64::structures::gdt::SegmentSelector(TSS_SEL));
        }
    }
}
