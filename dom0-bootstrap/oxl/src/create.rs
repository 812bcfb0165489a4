//! `oxl create`: check the images (and, if the config has `cap` or `cpus`,
//! those against PHYS_INFO), then CREATE → LOAD_IMAGE (kernel, ramdisk) →
//! DEVICE_ADD (per disk; per vif only with `--declare-devices`) → BUILD →
//! SCHED_CREDIT (if `weight` or `cap`) → VCPU_AFFINITY (per vCPU, if `cpus`)
//! → the caller's `before_start` (the device model, `dm.rs`) → UNPAUSE. A
//! domain that fails after CREATE is destroyed again, so a failed create leaves
//! nothing behind.

use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use oxen_abi::{
    device_kind, domctl, image_kind, name_bytes, CreateDomain, DeviceAdd, DomainInfo, DomainState,
    Error, IMAGE_MAX, MAX_DEVICES, NAME_LEN,
};

use crate::config::{Config, Sched};
use crate::cpulist;
use crate::domain::{call_failed, destroy_and_wait, dom_failed};
use crate::hv::{self, os_error, CallError, Hypervisor};
use crate::show::{self, label};

/// A kernel or ramdisk file, checked before anything is created.
#[derive(Debug)]
pub struct Image {
    /// "kernel" or "ramdisk".
    pub what: &'static str,
    /// An `image_kind`.
    pub kind: u32,
    pub path: PathBuf,
    pub size: u64,
}

/// Checks the config's kernel (and ramdisk): readable regular files of
/// 1..=IMAGE_MAX bytes, the kernel an ELF64 x86-64 file.
pub fn check_images(cfg: &Config) -> Result<Vec<Image>, String> {
    let mut images = vec![check_image("kernel", image_kind::KERNEL, &cfg.kernel)?];
    if let Some(r) = &cfg.ramdisk {
        images.push(check_image("ramdisk", image_kind::RAMDISK, r)?);
    }
    Ok(images)
}

fn check_image(what: &'static str, kind: u32, path: &Path) -> Result<Image, String> {
    let shown = path.display();
    let mut f = File::open(path).map_err(|e| format!("{what} {shown}: {}", os_error(&e)))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("{what} {shown}: {}", os_error(&e)))?;
    if !meta.is_file() {
        return Err(format!("{what} {shown} is not a regular file"));
    }
    let size = meta.len();
    if size == 0 {
        return Err(format!("{what} {shown} is empty"));
    }
    if size > IMAGE_MAX {
        return Err(format!(
            "{what} {shown} is {} MiB; the hypervisor takes images of at most {} MiB",
            size.div_ceil(1 << 20),
            IMAGE_MAX >> 20
        ));
    }
    if kind == image_kind::KERNEL {
        let mut head = Vec::with_capacity(0x210);
        f.by_ref()
            .take(0x210)
            .read_to_end(&mut head)
            .map_err(|e| format!("{what} {shown}: {}", os_error(&e)))?;
        if let Some(problem) = kernel_problem(&head) {
            return Err(format!("{what} {shown} {problem}"));
        }
    }
    Ok(Image {
        what,
        kind,
        path: path.to_owned(),
        size,
    })
}

/// What is wrong with a kernel whose file starts with `head`, if anything the
/// hypervisor would refuse can be told from the ELF header.
fn kernel_problem(head: &[u8]) -> Option<&'static str> {
    const EM_X86_64: u16 = 62;
    if head.starts_with(b"\x7fELF") {
        if head.get(4) != Some(&2) {
            return Some("is a 32-bit ELF file; Oxen boots ELF64 x86-64 kernels and Linux bzImages");
        }
        if head.get(5) != Some(&1) {
            return Some("is a big-endian ELF file; Oxen boots ELF64 x86-64 kernels");
        }
        let machine = head.get(18..20).map(|b| u16::from_le_bytes([b[0], b[1]]));
        if machine != Some(EM_X86_64) {
            return Some("is an ELF file for another CPU; Oxen boots ELF64 x86-64 kernels");
        }
        return None;
    }
    // A Linux bzImage (vmlinuz): booted through Linux's 64-bit boot protocol.
    if head.get(0x202..0x206) == Some(b"HdrS") {
        return None;
    }
    Some("is neither an ELF file nor a Linux bzImage; Oxen boots ELF64 x86-64 kernels and Linux bzImages (vmlinuz)")
}

/// What runs with the domain built and paused, before it starts (given the
/// places of its devices); an error destroys the domain again.
pub type BeforeStart<'a> = dyn FnMut(&DomainInfo, &[DeviceAdd]) -> Result<(), String> + 'a;

/// Creates, loads, builds, applies `sched` and (unless `paused`) starts the
/// domain; returns its ID. On failure after CREATE the domain is destroyed again.
pub fn create(
    hv: &mut dyn Hypervisor,
    cfg: &Config,
    images: &[Image],
    sched: &Sched,
    paused: bool,
    devices: &[String],
    before_start: &mut BeforeStart,
) -> Result<(u32, Vec<DeviceAdd>), String> {
    let arg = CreateDomain {
        name: name_bytes(&cfg.name).ok_or_else(|| format!("'{}' is not a valid name", cfg.name))?,
        memory_mib: cfg.memory_mib,
        vcpus: cfg.vcpus,
        on_poweroff: cfg.on_poweroff as u8,
        on_reboot: cfg.on_reboot as u8,
        on_crash: cfg.on_crash as u8,
        _pad: 0,
        flags: 0,
    };
    let domid = hv::create(hv, arg).map_err(|e| create_failed(hv, cfg, e))?;
    let d = hv::info(hv, domid).unwrap_or_else(|_| placeholder(domid, arg.name));
    let why = match populate(hv, &d, cfg, images, sched, paused, (devices, before_start)) {
        Ok(placed) => return Ok((domid, placed)),
        Err(why) => why,
    };
    Err(match destroy_and_wait(hv, &d) {
        Ok(()) => format!("{why}; the domain was destroyed again, nothing is left behind"),
        Err(e) => format!(
            "{why}; destroying the half-built domain failed too ({e}): run 'oxl destroy {domid}'"
        ),
    })
}

/// What describes a domain in messages when GET_INFO cannot.
fn placeholder(domid: u32, name: [u8; NAME_LEN]) -> DomainInfo {
    DomainInfo {
        domid,
        state: DomainState::Created as u32,
        vcpus: 0,
        flags: 0,
        memory_kib: 0,
        cpu_time_ns: 0,
        exits: 0,
        restarts: 0,
        shutdown_reason: 0,
        name,
    }
}

fn create_failed(hv: &mut dyn Hypervisor, cfg: &Config, e: CallError) -> String {
    let name = &cfg.name;
    match e {
        CallError::Hv(Error::Exist) => format!(
            "a domain named '{name}' already exists (see 'oxl list'): change 'name', or 'oxl destroy {name}' first"
        ),
        CallError::Hv(Error::NoMem) => {
            let info = hv::phys_info(hv).ok();
            match info {
                // The RAM is there, but not as the hypervisor needs it: its heap,
                // which holds every domain's metadata (console ring, vCPUs), or
                // its free memory in whole 2 MiB chunks ran out.
                Some(p) if p.free_kib >= u64::from(cfg.memory_mib) * 1024 => format!(
                    "cannot create domain '{name}': the hypervisor has {} MiB free but no room for \
                     another domain with {} there (its heap for domain metadata, or free memory in \
                     whole 2 MiB chunks, ran out: 'oxl dmesg' says which): destroy a domain, or give \
                     the host more RAM (the heap grows with it)",
                    p.free_kib >> 10,
                    p.domains
                ),
                _ => {
                    let free = info.map_or_else(|| "less".to_owned(), |p| format!("{} MiB", p.free_kib >> 10));
                    format!(
                        "domain '{name}' needs {} MiB but the hypervisor has {free} free (see 'oxl info'): \
                         lower 'memory' or destroy a domain",
                        cfg.memory_mib
                    )
                }
            }
        }
        CallError::Hv(Error::NoSpc) => format!(
            "cannot create domain '{name}': {e} (vcpus = {}; see 'oxl list' for the domains there are)",
            cfg.vcpus
        ),
        e => call_failed(&format!("create domain '{name}'"), e),
    }
}

/// Everything after CREATE.
fn populate(
    hv: &mut dyn Hypervisor,
    d: &DomainInfo,
    cfg: &Config,
    images: &[Image],
    sched: &Sched,
    paused: bool,
    (devices, before_start): (&[String], &mut BeforeStart),
) -> Result<Vec<DeviceAdd>, String> {
    for img in images {
        load(hv, d, img)?;
    }
    // Declared before BUILD, which describes them in the DSDT.
    let mut placed = Vec::with_capacity(devices.len());
    for name in devices {
        interrupted()?;
        let a = hv::device_add(hv, d.domid, device_kind::VIRTIO_MMIO).map_err(|e| match e {
            CallError::Hv(Error::NoSpc) => format!(
                "{name}: domain {} can have at most {MAX_DEVICES} devices, and none with memory \
                 reaching {:#x}",
                label(d),
                oxen_abi::DEVICE_WINDOW
            ),
            CallError::Hv(Error::NoSys) => format!("{name}: this hypervisor cannot declare devices (ABI 1.6 needed)"),
            e => dom_failed(d, &format!("declare {name} for"), e),
        })?;
        placed.push(a);
    }
    interrupted()?;
    hv::build(hv, d.domid, &cfg.cmdline).map_err(|e| match e {
        CallError::Hv(Error::NoExec) => format!("kernel {}: {e}", cfg.kernel.display()),
        e => dom_failed(d, "build", e),
    })?;
    // Scheduling settings on the built domain, before any vCPU runs.
    if sched.weight.is_some() || sched.cap.is_some() {
        interrupted()?;
        hv::sched_credit(hv, d.domid, sched.weight, sched.cap).map_err(|e| {
            dom_failed(
                d,
                &format!("set {} for", show::sched_change(sched.weight, sched.cap)),
                e,
            )
        })?;
    }
    for (n, &mask) in sched.affinity.iter().enumerate() {
        interrupted()?;
        hv::vcpu_affinity(hv, d.domid, n as u32, mask).map_err(|e| {
            dom_failed(
                d,
                &format!("pin vCPU {n} to pCPUs {} in", cpulist::ranges(mask)),
                e,
            )
        })?;
    }
    interrupted()?;
    before_start(d, &placed)?;
    if !paused {
        interrupted()?;
        hv::domain_op(hv, domctl::UNPAUSE, d.domid).map_err(|e| dom_failed(d, "start", e))?;
    }
    Ok(placed)
}

fn interrupted() -> Result<(), String> {
    if crate::term::stop_requested() {
        return Err("interrupted".into());
    }
    Ok(())
}

/// Stages one image in `DOMCTL_BUF_MAX` chunks.
fn load(hv: &mut dyn Hypervisor, d: &DomainInfo, img: &Image) -> Result<(), String> {
    let shown = img.path.display();
    let what = img.what;
    let mut f = File::open(&img.path).map_err(|e| format!("{what} {shown}: {}", os_error(&e)))?;
    let mut chunk = vec![0u8; oxen_abi::DOMCTL_BUF_MAX as usize];
    let mut offset = 0;
    while offset < img.size {
        interrupted()?;
        let len = (img.size - offset).min(chunk.len() as u64) as usize;
        f.read_exact(&mut chunk[..len]).map_err(|e| {
            format!(
                "reading {what} {shown}: {} (did it change while oxl loaded it?)",
                os_error(&e)
            )
        })?;
        let mut sent = 0;
        while sent < len {
            let taken = hv::load_image(
                hv,
                d.domid,
                img.kind,
                offset,
                img.size,
                &mut chunk[sent..len],
            )
            .map_err(|e| format!("loading {what} {shown} into domain {}: {e}", label(d)))?;
            if taken == 0 || taken > (len - sent) as u64 {
                return Err(format!(
                    "loading {what} {shown} into domain {}: the hypervisor took {taken} of {} bytes",
                    label(d),
                    len - sent
                ));
            }
            sent += taken as usize;
            offset += taken;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_headers() {
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[18] = 62;
        assert_eq!(kernel_problem(&elf), None);
        elf[18] = 3;
        assert!(kernel_problem(&elf).unwrap().contains("another CPU"));
        elf[4] = 1;
        assert!(kernel_problem(&elf).unwrap().contains("32-bit"));
        let mut bz = vec![0u8; 0x210];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(kernel_problem(&bz), None, "a Linux bzImage is booted");
        assert!(kernel_problem(b"#!/bin/sh")
            .unwrap()
            .contains("neither an ELF file nor a Linux bzImage"));
        assert!(kernel_problem(b"")
            .unwrap()
            .contains("neither an ELF file nor a Linux bzImage"));
    }
}
