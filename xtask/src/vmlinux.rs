//! The uncompressed kernel inside a bzImage, as a compact ELF the hypervisor boots
//! directly (`kernel = ".../vmlinux"`: hypervisor/src/domain/build.rs,
//! `lay_out_vmlinux`).
//!
//! A bzImage's protected-mode part is a decompressor and its payload
//! (Documentation/arch/x86/boot.rst: `payload_offset` and `payload_length` in the
//! setup header): Debian packs `vmlinux` with XZ and the x86 BCJ filter. Unpacking
//! it takes the guest a few billion instructions on every boot, which an emulator
//! turns into minutes (about 230 s of a Linux domU's boot under Bochs); done once
//! here, the tests that boot Linux domUs under Bochs skip it.
//!
//! The payload is `vmlinux` stripped, followed by its relocation table (used only
//! for KASLR). `compact` keeps only the ELF header and its `PT_LOAD` segments,
//! each without its trailing zero bytes (its `.bss` and the like: the loader
//! zeroes `p_memsz - p_filesz`), so dom0 carries 35 MB instead of 66 MB.

use std::io::Read as _;

use anyhow::{bail, ensure, Context as _, Result};

/// Setup-header offsets (boot.rst, "The Real-Mode Kernel Header").
const SETUP_SECTS: usize = 0x1f1;
const HEADER: usize = 0x202;
const VERSION: usize = 0x206;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;

const XZ_MAGIC: &[u8] = b"\xfd7zXZ\0";
const GZIP_MAGIC: &[u8] = b"\x1f\x8b";

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const PT_LOAD: u32 = 1;
/// Segments of the compact file start at page boundaries: `p_offset` and
/// `p_vaddr` then agree modulo `p_align`, as the ELF spec asks.
const PAGE: u64 = 4096;

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// The decompressed payload of `bzimage`: `vmlinux`, then its relocations.
pub fn unpack(bzimage: &[u8]) -> Result<Vec<u8>> {
    ensure!(
        bzimage.len() > PAYLOAD_LENGTH + 4 && &bzimage[HEADER..HEADER + 4] == b"HdrS",
        "not a bzImage (no HdrS setup header)"
    );
    let version = u16_at(bzimage, VERSION);
    ensure!(
        version >= 0x0208,
        "boot protocol {}.{} has no payload fields (2.08 added them)",
        version >> 8,
        version & 0xff
    );
    let setup = (match bzimage[SETUP_SECTS] {
        0 => 4,
        n => usize::from(n),
    } + 1)
        * 512;
    let offset = setup + u32_at(bzimage, PAYLOAD_OFFSET) as usize;
    let len = u32_at(bzimage, PAYLOAD_LENGTH) as usize;
    let payload = bzimage
        .get(offset..offset.saturating_add(len))
        .context("the payload runs past the end of the bzImage")?;
    let mut out = Vec::new();
    if payload.starts_with(XZ_MAGIC) {
        lzma_rust2::XzReader::new(payload, false)
            .read_to_end(&mut out)
            .context("unpacking the XZ payload")?;
    } else if payload.starts_with(GZIP_MAGIC) {
        flate2::read::GzDecoder::new(payload)
            .read_to_end(&mut out)
            .context("unpacking the gzip payload")?;
    } else {
        bail!(
            "the payload starts {:02x?}: neither XZ nor gzip, the two this unpacks",
            &payload[..payload.len().min(6)]
        );
    }
    Ok(out)
}

/// `elf` (an ELF64 executable, with anything after it) with only its header and
/// its `PT_LOAD` segments, each trimmed of trailing zero bytes and put at a page
/// boundary; no section headers.
pub fn compact(elf: &[u8]) -> Result<Vec<u8>> {
    ensure!(
        elf.len() >= EHDR_SIZE && elf.starts_with(b"\x7fELF") && elf[4] == 2 && elf[5] == 1,
        "not a little-endian ELF64 file"
    );
    let phoff = u64_at(elf, 32) as usize;
    let phnum = usize::from(u16_at(elf, 56));
    ensure!(
        usize::from(u16_at(elf, 54)) == PHDR_SIZE,
        "unexpected program-header size"
    );
    let table = elf
        .get(phoff..phoff + phnum * PHDR_SIZE)
        .context("program headers run past the end")?;
    let loads: Vec<&[u8]> = table
        .chunks(PHDR_SIZE)
        .filter(|p| u32_at(p, 0) == PT_LOAD)
        .collect();
    ensure!(!loads.is_empty(), "no PT_LOAD segment");

    let mut out = elf[..EHDR_SIZE].to_vec();
    out[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes()); // e_phoff
    out[40..48].fill(0); // e_shoff
    out[56..58].copy_from_slice(&(loads.len() as u16).to_le_bytes()); // e_phnum
    out[58..64].fill(0); // e_shentsize, e_shnum, e_shstrndx
    let mut at = (EHDR_SIZE + loads.len() * PHDR_SIZE) as u64;
    let mut data = Vec::new();
    for p in &loads {
        let (offset, filesz) = (u64_at(p, 8) as usize, u64_at(p, 32) as usize);
        let bytes = elf
            .get(offset..offset + filesz)
            .context("a segment runs past the end")?;
        let kept = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        at = at.div_ceil(PAGE) * PAGE;
        let mut ph = p.to_vec();
        ph[8..16].copy_from_slice(&at.to_le_bytes()); // p_offset
        ph[32..40].copy_from_slice(&(kept as u64).to_le_bytes()); // p_filesz
        ph[48..56].copy_from_slice(&PAGE.to_le_bytes()); // p_align
        out.extend_from_slice(&ph);
        data.push((at, &bytes[..kept]));
        at += kept as u64;
    }
    for (offset, bytes) in data {
        out.resize(offset as usize, 0);
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// An ELF64 header with `phdrs` (type, offset, vaddr, filesz, memsz) right
    /// after it, then `body`.
    fn elf(phdrs: &[(u32, u64, u64, u64, u64)], body: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; EHDR_SIZE];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[24..32].copy_from_slice(&0x100_0000u64.to_le_bytes());
        b[32..40].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
        b[40..48].copy_from_slice(&0x9999u64.to_le_bytes());
        b[54..56].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        b[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        b[60..62].copy_from_slice(&7u16.to_le_bytes());
        for &(ty, offset, vaddr, filesz, memsz) in phdrs {
            let mut p = [0u8; PHDR_SIZE];
            p[0..4].copy_from_slice(&ty.to_le_bytes());
            p[8..16].copy_from_slice(&offset.to_le_bytes());
            p[16..24].copy_from_slice(&vaddr.to_le_bytes());
            p[24..32].copy_from_slice(&(vaddr & 0xfff_ffff).to_le_bytes());
            p[32..40].copy_from_slice(&filesz.to_le_bytes());
            p[40..48].copy_from_slice(&memsz.to_le_bytes());
            p[48..56].copy_from_slice(&0x20_0000u64.to_le_bytes());
            b.extend_from_slice(&p);
        }
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn compact_keeps_loads_without_their_zero_tails() {
        let at = (EHDR_SIZE + 3 * PHDR_SIZE) as u64;
        let mut body = b"TEXT".to_vec();
        body.extend_from_slice(&[0; 12]);
        body.extend_from_slice(b"DATA\0\0");
        let image = elf(
            &[
                (PT_LOAD, at, 0xffff_ffff_8100_0000, 16, 16),
                (4, at, 0, 4, 4), // PT_NOTE: dropped
                (PT_LOAD, at + 16, 0xffff_ffff_8120_0000, 6, 0x1000),
            ],
            &body,
        );
        let mut with_tail = image.clone();
        with_tail.extend_from_slice(b"relocations");
        let c = compact(&with_tail).unwrap();
        assert_eq!(u16_at(&c, 56), 2);
        assert_eq!(u64_at(&c, 40), 0);
        assert_eq!(u16_at(&c, 60), 0);
        let ph = |i: usize, f: usize| u64_at(&c, EHDR_SIZE + i * PHDR_SIZE + f);
        // Text: 4 bytes kept at the first page boundary, memsz unchanged.
        assert_eq!((ph(0, 8), ph(0, 32), ph(0, 40)), (PAGE, 4, 16));
        assert_eq!(&c[PAGE as usize..PAGE as usize + 4], b"TEXT");
        assert_eq!(ph(0, 16), 0xffff_ffff_8100_0000);
        // Data on the next page boundary.
        assert_eq!((ph(1, 8), ph(1, 32), ph(1, 40)), (2 * PAGE, 4, 0x1000));
        assert_eq!(&c[2 * PAGE as usize..], b"DATA");
        assert_eq!(ph(1, 48), PAGE);
    }

    #[test]
    fn compact_refuses_what_is_not_elf64() {
        assert!(compact(b"\x7fELF").is_err());
        assert!(compact(&[0u8; 64]).is_err());
        let no_loads = elf(&[(4, 0, 0, 0, 0)], &[]);
        assert!(compact(&no_loads).is_err());
        let past_end = elf(&[(PT_LOAD, 0x1_0000, 0, 16, 16)], &[]);
        assert!(compact(&past_end).is_err());
    }

    /// A bzImage-shaped file around `payload`.
    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 0x1000];
        b[SETUP_SECTS] = 3;
        b[HEADER..HEADER + 4].copy_from_slice(b"HdrS");
        b[VERSION..VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        b[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&0x100u32.to_le_bytes());
        b[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4]
            .copy_from_slice(&(payload.len() as u32).to_le_bytes());
        b.resize(4 * 512 + 0x100, 0);
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn unpacks_gzip_and_refuses_the_rest() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"the kernel").unwrap();
        let image = bzimage(&gz.finish().unwrap());
        assert_eq!(unpack(&image).unwrap(), b"the kernel");
        let e = unpack(&bzimage(b"(\xb5/\xfd zstd")).unwrap_err().to_string();
        assert!(e.contains("neither XZ nor gzip"), "{e}");
        assert!(unpack(&[0u8; 0x2000]).is_err());
        assert!(unpack(b"HdrS").is_err());
        let mut short = bzimage(b"xx");
        short.truncate(short.len() - 1);
        assert!(unpack(&short).is_err());
    }
}
