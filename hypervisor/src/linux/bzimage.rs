//! bzImage parsing: the setup header at offset 0x1f1 and the protected-mode
//! kernel after the setup sectors (boot.rst, "The Real-Mode Kernel Header").

/// Offsets into the image (= into `boot_params`, which embeds the header at 0x1f1).
pub mod off {
    pub const SETUP_SECTS: usize = 0x1f1;
    pub const BOOT_FLAG: usize = 0x1fe;
    pub const JUMP: usize = 0x200;
    pub const HEADER: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const CODE32_START: usize = 0x214;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const RELOCATABLE_KERNEL: usize = 0x234;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
}

const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HEADER_MAGIC: u32 = 0x5372_6448; // "HdrS"
/// 2.12 added xloadflags, which says whether the 64-bit entry exists.
const MIN_VERSION: u16 = 0x020c;
/// xloadflags: the kernel has the 64-bit entry point at start + 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// loadflags: the protected-mode code is loaded at 0x100000 (bzImage).
pub const LOADED_HIGH: u8 = 1 << 0;
/// Offset of the 64-bit entry point from the start of the protected-mode kernel.
pub const ENTRY_64_OFFSET: u64 = 0x200;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BzImageError {
    TooShort,
    NotABzImage,
    /// Boot protocol older than 2.12.
    TooOld(u16),
    /// No 64-bit entry point.
    No64BitEntry,
    NotRelocatable,
}

impl core::fmt::Display for BzImageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BzImageError::TooShort => write!(f, "image too short for a bzImage"),
            BzImageError::NotABzImage => write!(f, "no Linux setup header (boot flag / HdrS magic missing)"),
            BzImageError::TooOld(v) => write!(f, "boot protocol {}.{} is older than 2.12", v >> 8, v & 0xff),
            BzImageError::No64BitEntry => write!(f, "kernel has no 64-bit entry point (XLF_KERNEL_64)"),
            BzImageError::NotRelocatable => write!(f, "kernel is not relocatable"),
        }
    }
}

pub(crate) fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
pub(crate) fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
pub(crate) fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from(u32_at(b, o)) | (u64::from(u32_at(b, o + 4)) << 32)
}

/// A validated bzImage.
#[derive(Debug)]
pub struct BzImage<'a> {
    image: &'a [u8],
    setup_len: usize,
}

impl<'a> BzImage<'a> {
    pub fn parse(image: &'a [u8]) -> Result<Self, BzImageError> {
        if image.len() < 0x1000 {
            return Err(BzImageError::TooShort);
        }
        if u16_at(image, off::BOOT_FLAG) != BOOT_FLAG_MAGIC || u32_at(image, off::HEADER) != HEADER_MAGIC {
            return Err(BzImageError::NotABzImage);
        }
        let version = u16_at(image, off::VERSION);
        if version < MIN_VERSION {
            return Err(BzImageError::TooOld(version));
        }
        if u16_at(image, off::XLOADFLAGS) & XLF_KERNEL_64 == 0 {
            return Err(BzImageError::No64BitEntry);
        }
        if image[off::RELOCATABLE_KERNEL] == 0 {
            return Err(BzImageError::NotRelocatable);
        }
        // setup_sects == 0 means 4 (boot.rst); plus the boot sector itself.
        let sects = match image[off::SETUP_SECTS] {
            0 => 4,
            n => usize::from(n),
        };
        let setup_len = (sects + 1) * 512;
        if setup_len >= image.len() {
            return Err(BzImageError::TooShort);
        }
        Ok(Self { image, setup_len })
    }

    pub fn version(&self) -> u16 {
        u16_at(self.image, off::VERSION)
    }

    /// The protected-mode kernel, to be loaded at an address aligned to `alignment()`.
    pub fn kernel(&self) -> &'a [u8] {
        &self.image[self.setup_len..]
    }

    /// The setup header as it goes into `boot_params` (0x1f1 up to its end, whose
    /// offset the byte at 0x201 gives).
    pub fn setup_header(&self) -> &'a [u8] {
        let end = (0x202 + usize::from(self.image[off::JUMP + 1])).min(0x1000).min(self.setup_len);
        &self.image[off::SETUP_SECTS..end]
    }

    pub fn alignment(&self) -> u64 {
        u64::from(u32_at(self.image, off::KERNEL_ALIGNMENT)).max(0x20_0000)
    }

    pub fn pref_address(&self) -> u64 {
        u64_at(self.image, off::PREF_ADDRESS)
    }

    /// Memory the kernel needs from its load address on, for decompression and
    /// early boot (at least the size of the kernel itself).
    pub fn init_size(&self) -> u64 {
        u64::from(u32_at(self.image, off::INIT_SIZE)).max(self.kernel().len() as u64)
    }

    pub fn cmdline_size(&self) -> u32 {
        u32_at(self.image, off::CMDLINE_SIZE)
    }

    pub fn initrd_addr_max(&self) -> u32 {
        u32_at(self.image, off::INITRD_ADDR_MAX)
    }
}

/// A synthetic bzImage for tests: valid header, `kernel_len` bytes of kernel.
#[cfg(test)]
pub(crate) fn test_image(kernel_len: usize) -> alloc::vec::Vec<u8> {
    let setup_sects = 3u8;
    let setup_len = (usize::from(setup_sects) + 1) * 512;
    let mut v = alloc::vec![0u8; setup_len + kernel_len];
    v[off::SETUP_SECTS] = setup_sects;
    v[off::BOOT_FLAG..off::BOOT_FLAG + 2].copy_from_slice(&BOOT_FLAG_MAGIC.to_le_bytes());
    v[off::JUMP] = 0xeb;
    v[off::JUMP + 1] = 0x6a; // header ends at 0x26c (protocol 2.15)
    v[off::HEADER..off::HEADER + 4].copy_from_slice(&HEADER_MAGIC.to_le_bytes());
    v[off::VERSION..off::VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
    v[off::LOADFLAGS] = LOADED_HIGH;
    v[off::KERNEL_ALIGNMENT..off::KERNEL_ALIGNMENT + 4].copy_from_slice(&0x20_0000u32.to_le_bytes());
    v[off::RELOCATABLE_KERNEL] = 1;
    v[off::XLOADFLAGS..off::XLOADFLAGS + 2].copy_from_slice(&0x7fu16.to_le_bytes());
    v[off::CMDLINE_SIZE..off::CMDLINE_SIZE + 4].copy_from_slice(&2047u32.to_le_bytes());
    v[off::INITRD_ADDR_MAX..off::INITRD_ADDR_MAX + 4].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    v[off::PREF_ADDRESS..off::PREF_ADDRESS + 8].copy_from_slice(&0x100_0000u64.to_le_bytes());
    v[off::INIT_SIZE..off::INIT_SIZE + 4].copy_from_slice(&0x200_0000u32.to_le_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_valid_image() {
        let img = test_image(0x3000);
        let bz = BzImage::parse(&img).unwrap();
        assert_eq!(bz.version(), 0x020f);
        assert_eq!(bz.kernel().len(), 0x3000);
        assert_eq!(bz.setup_header().len(), 0x26c - 0x1f1);
        assert_eq!(bz.alignment(), 0x20_0000);
        assert_eq!(bz.pref_address(), 0x100_0000);
        assert_eq!(bz.init_size(), 0x200_0000);
        assert_eq!(bz.cmdline_size(), 2047);
    }

    #[test]
    fn rejects_what_it_cannot_boot() {
        assert_eq!(BzImage::parse(&[0u8; 100]).unwrap_err(), BzImageError::TooShort);
        let mut img = test_image(0x1000);
        img[off::HEADER] = b'X';
        assert_eq!(BzImage::parse(&img).unwrap_err(), BzImageError::NotABzImage);
        let mut img = test_image(0x1000);
        img[off::VERSION] = 0x0b;
        assert_eq!(BzImage::parse(&img).unwrap_err(), BzImageError::TooOld(0x020b));
        let mut img = test_image(0x1000);
        img[off::XLOADFLAGS] = 0;
        assert_eq!(BzImage::parse(&img).unwrap_err(), BzImageError::No64BitEntry);
        let mut img = test_image(0x1000);
        img[off::RELOCATABLE_KERNEL] = 0;
        assert_eq!(BzImage::parse(&img).unwrap_err(), BzImageError::NotRelocatable);
        let mut img = test_image(0x1000);
        img[off::SETUP_SECTS] = 200; // setup longer than the file
        assert_eq!(BzImage::parse(&img).unwrap_err(), BzImageError::TooShort);
    }
}
