//! The zero page (`struct boot_params`, Documentation/arch/x86/zero-page.rst) a
//! boot loader hands the kernel in RSI at the 64-bit entry point.

use super::bzimage::{off, LOADED_HIGH, XLF_KERNEL_64};
use super::e820::{Entry, MAX_ENTRIES};

/// Zero-page offsets outside the setup header.
mod zp {
    pub const ACPI_RSDP_ADDR: usize = 0x070;
    pub const EXT_RAMDISK_IMAGE: usize = 0x0c0;
    pub const EXT_RAMDISK_SIZE: usize = 0x0c4;
    pub const EXT_CMD_LINE_PTR: usize = 0x0c8;
    pub const E820_ENTRIES: usize = 0x1e8;
    pub const E820_TABLE: usize = 0x2d0;
    pub const E820_ENTRY_SIZE: usize = 20;
}

/// type_of_loader 0xff: "undefined" boot loader (boot.rst).
const LOADER_UNDEFINED: u8 = 0xff;

pub const ZERO_PAGE_SIZE: usize = 4096;

/// Where the loader put things, in guest-physical addresses.
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    pub cmdline: u64,
    pub initrd: Option<(u64, u64)>,
    pub rsdp: Option<u64>,
}

fn put32(p: &mut [u8], o: usize, v: u32) {
    p[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

/// The setup header for a kernel that has none of its own: an uncompressed
/// `vmlinux` entered at its 64-bit `startup_64`, as the kernel's decompressor
/// does. What Linux reads of it is what its own PVH entry writes
/// (arch/x86/platform/pvh/enlighten.c): the magic numbers and protocol 2.12;
/// the alignment and flags say what such a kernel is.
/// Where a `vmlinux`'s `startup_64` may run: 2 MiB aligned
/// (arch/x86/kernel/head_64.S), for domUs and dom0 alike.
pub const VMLINUX_ALIGN: u64 = 2 << 20;
/// The longest command line a `vmlinux` takes: x86's COMMAND_LINE_SIZE
/// (2048) less its NUL.
pub const VMLINUX_CMDLINE_MAX: u32 = 2047;

pub fn vmlinux_header(alignment: u32) -> [u8; VMLINUX_HEADER_LEN] {
    let mut h = [0u8; VMLINUX_HEADER_LEN];
    let mut put = |o: usize, v: &[u8]| h[o - off::SETUP_SECTS..o - off::SETUP_SECTS + v.len()].copy_from_slice(v);
    put(off::BOOT_FLAG, &0xaa55u16.to_le_bytes());
    put(off::HEADER, b"HdrS");
    put(off::VERSION, &0x020cu16.to_le_bytes());
    put(off::LOADFLAGS, &[LOADED_HIGH]);
    put(off::KERNEL_ALIGNMENT, &alignment.to_le_bytes());
    put(off::XLOADFLAGS, &XLF_KERNEL_64.to_le_bytes());
    put(off::CMDLINE_SIZE, &VMLINUX_CMDLINE_MAX.to_le_bytes());
    h
}

/// `vmlinux_header`'s length: 0x1f1 up to the end of `cmdline_size`.
pub const VMLINUX_HEADER_LEN: usize = off::CMDLINE_SIZE + 4 - off::SETUP_SECTS;

/// Fills `page` (zeroed first) with the kernel's setup header `hdr` (from
/// 0x1f1: `BzImage::setup_header` or `vmlinux_header`), `e820` and `at`.
pub fn build(page: &mut [u8; ZERO_PAGE_SIZE], hdr: &[u8], e820: &[Entry], at: &Placement) {
    page.fill(0);
    let hdr = &hdr[..hdr.len().min(ZERO_PAGE_SIZE - off::SETUP_SECTS)];
    page[off::SETUP_SECTS..off::SETUP_SECTS + hdr.len()].copy_from_slice(hdr);
    page[off::TYPE_OF_LOADER] = LOADER_UNDEFINED;
    put32(page, off::CMD_LINE_PTR, at.cmdline as u32);
    put32(page, zp::EXT_CMD_LINE_PTR, (at.cmdline >> 32) as u32);
    if let Some((addr, len)) = at.initrd {
        put32(page, off::RAMDISK_IMAGE, addr as u32);
        put32(page, zp::EXT_RAMDISK_IMAGE, (addr >> 32) as u32);
        put32(page, off::RAMDISK_SIZE, len as u32);
        put32(page, zp::EXT_RAMDISK_SIZE, (len >> 32) as u32);
    }
    if let Some(rsdp) = at.rsdp {
        page[zp::ACPI_RSDP_ADDR..zp::ACPI_RSDP_ADDR + 8].copy_from_slice(&rsdp.to_le_bytes());
    }
    let n = e820.len().min(MAX_ENTRIES);
    page[zp::E820_ENTRIES] = n as u8;
    for (i, e) in e820[..n].iter().enumerate() {
        let o = zp::E820_TABLE + i * zp::E820_ENTRY_SIZE;
        page[o..o + 8].copy_from_slice(&e.start.to_le_bytes());
        page[o + 8..o + 16].copy_from_slice(&(e.end - e.start).to_le_bytes());
        put32(page, o + 16, e.kind as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::super::bzimage::{test_image, u16_at, u32_at, u64_at, BzImage};
    use super::super::e820::Kind;
    use super::*;

    #[test]
    fn zero_page_fields() {
        let img = test_image(0x2000);
        let bz = BzImage::parse(&img).unwrap();
        let mut page = [0xaau8; ZERO_PAGE_SIZE];
        let e820 = [
            Entry { start: 0, end: 0x9_f000, kind: Kind::Ram },
            Entry { start: 0x10_0000, end: 0x1_2000_0000, kind: Kind::Ram },
        ];
        let at = Placement { cmdline: 0x2_0000, initrd: Some((0x1_0000_0000, 0x1234)), rsdp: Some(0xf_5a40) };
        build(&mut page, bz.setup_header(), &e820, &at);
        assert_eq!(&page[0x202..0x206], b"HdrS");
        assert_eq!(page[off::TYPE_OF_LOADER], 0xff);
        assert_eq!(u32_at(&page, off::CMD_LINE_PTR), 0x2_0000);
        assert_eq!(u32_at(&page, off::RAMDISK_IMAGE), 0);
        assert_eq!(u32_at(&page, zp::EXT_RAMDISK_IMAGE), 1);
        assert_eq!(u32_at(&page, off::RAMDISK_SIZE), 0x1234);
        assert_eq!(u64_at(&page, zp::ACPI_RSDP_ADDR), 0xf_5a40);
        assert_eq!(page[zp::E820_ENTRIES], 2);
        assert_eq!(u64_at(&page, zp::E820_TABLE + 20), 0x10_0000);
        assert_eq!(u64_at(&page, zp::E820_TABLE + 28), 0x1_1ff0_0000);
        assert_eq!(u32_at(&page, zp::E820_TABLE + 36), 1);
        // Everything not written is zero (the page was filled with 0xaa before).
        assert!(page[0x100..0x1e8].iter().all(|&b| b == 0));
        assert!(page[zp::E820_TABLE + 40..].iter().all(|&b| b == 0));
    }

    #[test]
    fn vmlinux_header_is_a_valid_2_12_header() {
        let mut page = [0xaau8; ZERO_PAGE_SIZE];
        let at = Placement { cmdline: 0x1_1000, initrd: None, rsdp: None };
        build(&mut page, &vmlinux_header(0x20_0000), &[], &at);
        assert_eq!(u16_at(&page, off::BOOT_FLAG), 0xaa55);
        assert_eq!(&page[off::HEADER..off::HEADER + 4], b"HdrS");
        assert_eq!(u16_at(&page, off::VERSION), 0x020c);
        assert_eq!(page[off::TYPE_OF_LOADER], 0xff);
        assert_eq!(u32_at(&page, off::KERNEL_ALIGNMENT), 0x20_0000);
        assert_eq!(u16_at(&page, off::XLOADFLAGS), XLF_KERNEL_64);
        assert_eq!(u32_at(&page, off::CMD_LINE_PTR), 0x1_1000);
        assert_eq!(u32_at(&page, off::RAMDISK_SIZE), 0);
        // No sentinel (0x1ef): the kernel keeps what the loader wrote.
        assert_eq!(page[0x1ef], 0);
    }
}

/// Offset of the ACPI RSDP within `area` (the BIOS read-only area 0xE0000-0xFFFFF
/// or the EBDA's first KiB): the signature on a 16-byte boundary with a valid
/// ACPI 1.0 checksum over its first 20 bytes (ACPI spec §5.2.5.1).
pub fn find_rsdp(area: &[u8]) -> Option<usize> {
    (0..area.len().saturating_sub(20))
        .step_by(16)
        .find(|&o| &area[o..o + 8] == b"RSD PTR " && area[o..o + 20].iter().fold(0u8, |s, &b| s.wrapping_add(b)) == 0)
}

#[cfg(test)]
mod rsdp_tests {
    use super::find_rsdp;

    #[test]
    fn finds_checksummed_signature_on_16_byte_boundary() {
        let mut area = vec![0u8; 0x100];
        // A misaligned decoy and a bad-checksum decoy.
        area[0x11..0x19].copy_from_slice(b"RSD PTR ");
        area[0x20..0x28].copy_from_slice(b"RSD PTR ");
        area[0x28] = 1;
        area[0x60..0x68].copy_from_slice(b"RSD PTR ");
        area[0x68] = 0x42;
        let sum = area[0x60..0x74].iter().fold(0u8, |s, &b| s.wrapping_add(b));
        area[0x69] = 0u8.wrapping_sub(sum);
        assert_eq!(find_rsdp(&area), Some(0x60));
        assert_eq!(find_rsdp(&area[..0x60]), None);
    }
}
