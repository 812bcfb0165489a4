//! Lays a domU's staged kernel (and ramdisk) out in its memory, with the boot
//! structures of docs/hypercalls.md "domU boot state" (`boot::plan`), ready
//! for its first vCPU entry; a kernel with a Multiboot header goes to
//! `multiboot::lay_out` instead. Used by `domctl BUILD` and on every restart.

use super::boot;
use super::control::{BootSpec, RamView, Resources};
use super::elf;
use super::multiboot;
use crate::hypercall::GuestRam;
use crate::virt::{EntryMode, InitialState};
use alloc::string::{String, ToString};
use oxen_abi::{Error, Pod};

pub struct BuildError {
    pub error: Error,
    pub why: String,
}

fn err(error: Error, why: impl ToString) -> BuildError {
    BuildError { error, why: why.to_string() }
}

/// Copies the kernel's segments, the ramdisk, page tables, GDT and
/// `StartInfo` into the domain's RAM and returns where its vCPU starts.
pub fn lay_out(res: &mut Resources, vcpus: u32) -> Result<BootSpec, BuildError> {
    let image = res.images[0]
        .as_ref()
        .filter(|s| s.loaded == s.len)
        .ok_or_else(|| err(Error::Inval, "no kernel loaded, or not all of it"))?;
    let ramdisk = match &res.images[1] {
        Some(r) if r.loaded != r.len => return Err(err(Error::Inval, "ramdisk not all loaded")),
        r => r.as_ref(),
    };
    let memory: u64 = res.ram.regions().iter().map(|r| r.len).sum();
    if multiboot::detect(image.bytes()) {
        let mut ram = RamView(&res.ram);
        let cmdline = res.cmdline.as_bytes();
        let (entry, gprs) = multiboot::lay_out(image.bytes(), ramdisk.map(|r| r.bytes()), memory, cmdline, &mut ram)
            .map_err(|e| err(e.errno(), e))?;
        return Ok(BootSpec { entry, gprs });
    }
    let layout = boot::plan(memory, ramdisk.map_or(0, |r| r.len)).map_err(|e| err(Error::NoMem, e))?;
    let kernel = elf::parse(image.bytes(), layout.kernel_window()).map_err(|e| err(Error::NoExec, e))?;
    layout.check_kernel(&kernel).map_err(|e| err(Error::NoExec, e))?;
    let info = layout.start_info(vcpus, res.cmdline.as_bytes()).map_err(|e| err(Error::Inval, e))?;

    let bytes = image.bytes();
    let mut ram = RamView(&res.ram);
    let fault = |_| err(Error::Fault, "laid out outside the domain's memory");
    for s in &kernel.segments {
        ram.write(s.paddr.as_u64(), &bytes[s.file_range()]).map_err(fault)?;
        // The rest of the segment (.bss) is zero, even if the RAM was used.
        let zeros = [0u8; 4096];
        let mut at = s.paddr.as_u64() + s.filesz;
        let end = s.paddr.as_u64() + s.memsz;
        while at < end {
            let n = (end - at).min(zeros.len() as u64);
            ram.write(at, &zeros[..n as usize]).map_err(fault)?;
            at += n;
        }
    }
    if let Some(r) = ramdisk {
        ram.write(layout.ramdisk.as_u64(), r.bytes()).map_err(fault)?;
    }
    ram.write(layout.page_tables.as_u64(), &layout.page_table_image()).map_err(fault)?;
    ram.write(layout.gdt.as_u64(), &boot::gdt_image()).map_err(fault)?;
    ram.write(layout.start_info.as_u64(), info.as_bytes()).map_err(fault)?;
    let entry = InitialState {
        mode: EntryMode::Linux64 {
            cr3: layout.page_tables.as_u64(),
            gdt_base: layout.gdt.as_u64(),
            gdt_limit: boot::GDT_LIMIT,
        },
        rip: kernel.entry,
        rsp: layout.stack_top.as_u64(),
    };
    let gprs = crate::virt::GuestGprs { rdi: layout.start_info.as_u64(), ..Default::default() };
    Ok(BootSpec { entry, gprs })
}
