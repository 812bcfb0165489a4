//! `cpuinfo`: checks that CPUID and the MSRs agree. Walks CPUID (basic leaves,
//! Oxen's at 0x40000000, the extended ones) and prints what it is shown; then,
//! for every feature shown, reads the MSRs that feature implies and writes a
//! valid value back (the value read, or a command the feature defines), with
//! #GP caught: a real CPU with the feature never faults there. It also checks
//! that the topology leaves give this vCPU a virtual APIC ID (vCPU 0: 0).
//!
//! Lines: `cpuinfo: cpuid L.S: eax ebx ecx edx`, `cpuinfo: <feature> msr <n>:
//! ok|UNEXPECTED #GP (...)`, `cpuinfo: apic id <leaf>: <id>: ok|WRONG`, then
//! `cpuinfo: summary: F features shown, P msr probes, U unexpected, apic ids
//! virtual: yes|NO`; then it powers off.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod guest {
    use core::arch::x86_64::__cpuid_count;
    use core::sync::atomic::{AtomicBool, Ordering};
    use oxen_abi::{ShutdownReason, StartInfo};
    use oxen_guest_rt::trap::{self, TrapFrame};
    use oxen_guest_rt::{hypercall, println};

    oxen_guest_rt::entry!("cpuinfo", guest_main);

    /// Set while an RDMSR/WRMSR is probed: its #GP is expected to be possible.
    static PROBING: AtomicBool = AtomicBool::new(false);
    static FAULTED: AtomicBool = AtomicBool::new(false);

    /// A #GP during a probe skips the 2-byte RDMSR/WRMSR (0F 32 / 0F 30).
    fn hook(frame: &mut TrapFrame) -> bool {
        if frame.vector == 13 && PROBING.load(Ordering::SeqCst) {
            FAULTED.store(true, Ordering::SeqCst);
            frame.rip += 2;
            return true;
        }
        false
    }

    fn rdmsr(msr: u32) -> Option<u64> {
        let (lo, hi): (u32, u32);
        FAULTED.store(false, Ordering::SeqCst);
        PROBING.store(true, Ordering::SeqCst);
        // SAFETY: CPL 0; a #GP is caught by `hook`, which resumes after the
        // instruction; reading an MSR changes no memory.
        unsafe {
            core::arch::asm!("xor eax, eax", "xor edx, edx", "rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi,
                options(nostack))
        };
        PROBING.store(false, Ordering::SeqCst);
        (!FAULTED.load(Ordering::SeqCst)).then_some(u64::from(lo) | (u64::from(hi) << 32))
    }

    fn wrmsr(msr: u32, value: u64) -> bool {
        FAULTED.store(false, Ordering::SeqCst);
        PROBING.store(true, Ordering::SeqCst);
        // SAFETY: CPL 0; only MSRs whose value was just read (written back
        // unchanged) or commands/controls that affect speculation or nothing
        // this guest relies on; a #GP is caught by `hook`.
        unsafe {
            core::arch::asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32,
                options(nostack))
        };
        PROBING.store(false, Ordering::SeqCst);
        !FAULTED.load(Ordering::SeqCst)
    }

    fn cpuid(leaf: u32, sub: u32) -> [u32; 4] {
        let r = __cpuid_count(leaf, sub);
        [r.eax, r.ebx, r.ecx, r.edx]
    }

    /// What a probe does with the MSR.
    #[derive(Clone, Copy)]
    enum Op {
        /// Read only (read-only or status MSRs).
        Read,
        /// Read, then write the value back.
        ReadWrite,
        /// Write this command (write-only MSRs).
        Write(u64),
        /// Read, write the value with these bits set, write the old value back.
        SetBits(u64),
    }

    /// What the probes are chosen by.
    struct Cpu {
        max: u32,
        max_ext: u32,
        amd: bool,
    }

    impl Cpu {
        /// Register `r` (0 EAX .. 3 EDX) bit `b` of CPUID(leaf, sub), if the leaf exists.
        fn has(&self, leaf: u32, sub: u32, r: usize, b: u32) -> bool {
            let exists = if leaf >= 0x8000_0000 { leaf <= self.max_ext } else { leaf <= self.max };
            exists && cpuid(leaf, sub)[r] & (1 << b) != 0
        }
    }

    const A: usize = 0;
    const B: usize = 1;
    const C: usize = 2;
    const D: usize = 3;

    /// (feature, shown?, MSRs and what to do with each).
    type Probe = (&'static str, bool, &'static [(u32, Op)]);

    fn probes(cpu: &Cpu) -> [Probe; 50] {
        let intel = !cpu.amd;
        let spec_ctrl = cpu.has(7, 0, D, 26) || cpu.has(0x8000_0008, 0, B, 14);
        let family = {
            let a = cpuid(1, 0)[0];
            let f = (a >> 8) & 0xf;
            if f == 0xf { f + ((a >> 20) & 0xff) } else { f }
        };
        let perfmon = cpu.max >= 0xa && cpuid(0xa, 0)[0] & 0xff != 0;
        [
            ("tsc", cpu.has(1, 0, D, 4), &[(0x10, Op::Read)]),
            ("apic", cpu.has(1, 0, D, 9), &[(0x1b, Op::ReadWrite)]),
            ("sep", cpu.has(1, 0, D, 11), &[(0x174, Op::ReadWrite), (0x175, Op::ReadWrite), (0x176, Op::ReadWrite)]),
            ("pat", cpu.has(1, 0, D, 16), &[(0x277, Op::ReadWrite)]),
            ("mtrr", cpu.has(1, 0, D, 12), &[(0xfe, Op::Read), (0x2ff, Op::ReadWrite)]),
            ("mce", cpu.has(1, 0, D, 7), &[(0x17a, Op::Read)]),
            ("mca", cpu.has(1, 0, D, 14), &[(0x179, Op::Read)]),
            ("ds", cpu.has(1, 0, D, 21), &[(0x600, Op::ReadWrite)]),
            ("acpi-thermal", cpu.has(1, 0, D, 22), &[(0x19a, Op::Read)]),
            ("tm", cpu.has(1, 0, D, 29), &[(0x19b, Op::Read)]),
            ("eist", cpu.has(1, 0, C, 7), &[(0x198, Op::Read), (0x199, Op::ReadWrite)]),
            ("pdcm", cpu.has(1, 0, C, 15), &[(0x345, Op::Read)]),
            ("vmx", cpu.has(1, 0, C, 5), &[(0x3a, Op::Read), (0x480, Op::Read)]),
            ("smx", cpu.has(1, 0, C, 6), &[(0x3a, Op::Read)]),
            ("tsc-deadline", cpu.has(1, 0, C, 24), &[(0x6e0, Op::Read), (0x6e0, Op::Write(0))]),
            ("microcode-rev", true, &[(0x8b, Op::Read)]),
            ("platform-id", intel, &[(0x17, Op::Read)]),
            ("misc-enable", intel, &[(0x1a0, Op::ReadWrite)]),
            ("perfmon", perfmon, &[(0xc1, Op::ReadWrite), (0x186, Op::ReadWrite)]),
            ("dts", cpu.has(6, 0, A, 0), &[(0x19c, Op::Read)]),
            ("hwp", cpu.has(6, 0, A, 7), &[(0x770, Op::Read)]),
            ("aperfmperf", cpu.has(6, 0, C, 0), &[(0xe7, Op::Read), (0xe8, Op::Read)]),
            ("epb", cpu.has(6, 0, C, 3), &[(0x1b0, Op::ReadWrite)]),
            ("tsc-adjust", cpu.has(7, 0, B, 1), &[(0x3b, Op::ReadWrite)]),
            ("sgx", cpu.has(7, 0, B, 2), &[(0x3a, Op::Read)]),
            ("mpx", cpu.has(7, 0, B, 14), &[(0xd90, Op::ReadWrite)]),
            ("pt", cpu.has(7, 0, B, 25), &[(0x570, Op::ReadWrite)]),
            ("waitpkg", cpu.has(7, 0, C, 5), &[(0xe1, Op::ReadWrite)]),
            ("cet", cpu.has(7, 0, C, 7) || cpu.has(7, 0, D, 20), &[(0x6a0, Op::ReadWrite), (0x6a2, Op::ReadWrite)]),
            ("tme", cpu.has(7, 0, C, 13), &[(0x982, Op::Read)]),
            ("srbds-ctrl", cpu.has(7, 0, D, 9), &[(0x123, Op::ReadWrite)]),
            ("tsx-force-abort", cpu.has(7, 0, D, 13), &[(0x10f, Op::ReadWrite)]),
            ("arch-lbr", cpu.has(7, 0, D, 19), &[(0x14ce, Op::ReadWrite)]),
            ("spec-ctrl", spec_ctrl, &[(0x48, Op::ReadWrite), (0x48, Op::SetBits(1))]),
            ("stibp", cpu.has(7, 0, D, 27) || cpu.has(0x8000_0008, 0, B, 15), &[(0x48, Op::SetBits(2))]),
            ("ssbd", cpu.has(7, 0, D, 31) || cpu.has(0x8000_0008, 0, B, 24), &[(0x48, Op::SetBits(4))]),
            ("psfd", cpu.has(7, 2, D, 0) || cpu.has(0x8000_0008, 0, B, 28), &[(0x48, Op::SetBits(0x80))]),
            ("ibpb", cpu.has(7, 0, D, 26) || cpu.has(0x8000_0008, 0, B, 12), &[(0x49, Op::Write(1))]),
            ("sbpb", cpu.has(0x8000_0021, 0, A, 27), &[(0x49, Op::Write(0x80))]),
            ("l1d-flush", cpu.has(7, 0, D, 28), &[(0x10b, Op::Write(1))]),
            ("arch-capabilities", cpu.has(7, 0, D, 29), &[(0x10a, Op::Read)]),
            ("core-capabilities", cpu.has(7, 0, D, 30), &[(0xcf, Op::Read)]),
            ("xsaves", cpu.max >= 0xd && cpu.has(0xd, 1, A, 3), &[(0xda0, Op::ReadWrite)]),
            ("xfd", cpu.max >= 0xd && cpu.has(0xd, 1, A, 4), &[(0x1c4, Op::ReadWrite), (0x1c5, Op::ReadWrite)]),
            (
                "lm",
                cpu.has(0x8000_0001, 0, D, 29),
                &[(0xc000_0080, Op::ReadWrite), (0xc000_0100, Op::ReadWrite), (0xc000_0101, Op::ReadWrite), (0xc000_0102, Op::ReadWrite)],
            ),
            (
                "syscall",
                cpu.has(0x8000_0001, 0, D, 11),
                &[(0xc000_0081, Op::ReadWrite), (0xc000_0082, Op::ReadWrite), (0xc000_0083, Op::ReadWrite), (0xc000_0084, Op::ReadWrite)],
            ),
            ("rdtscp/rdpid", cpu.has(0x8000_0001, 0, D, 27) || cpu.has(7, 0, C, 22), &[(0xc000_0103, Op::ReadWrite)]),
            // Linux reads HWCR on AMD family > 0x10 with an invariant TSC.
            ("amd-hwcr", cpu.amd && family > 0x10 && cpu.has(0x8000_0007, 0, D, 8), &[(0xc001_0015, Op::Read)]),
            // Linux reads it on CPUs with AMD erratum 400 (families 0xF, 0x10).
            ("amd-e400", cpu.amd && (family == 0xf || family == 0x10), &[(0xc001_0055, Op::Read)]),
            // Linux's amd_bus.c sets NB_CFG bit 46 on families 0x10-0x17.
            ("amd-nb-cfg", cpu.amd && (0x10..=0x17).contains(&family), &[(0xc001_001f, Op::ReadWrite)]),
        ]
    }

    /// AMD-only features and their MSRs (APM Vol. 2 App. A).
    fn amd_probes(cpu: &Cpu) -> [Probe; 6] {
        [
            ("virt-ssbd", cpu.has(0x8000_0008, 0, B, 25), &[(0xc001_011f, Op::ReadWrite), (0xc001_011f, Op::SetBits(4))]),
            ("osvw", cpu.has(0x8000_0001, 0, C, 9), &[(0xc001_0140, Op::Read)]),
            ("ibs", cpu.has(0x8000_0001, 0, C, 10), &[(0xc001_1030, Op::Read)]),
            ("perfctr-core", cpu.has(0x8000_0001, 0, C, 23), &[(0xc001_0200, Op::ReadWrite)]),
            ("hw-pstate", cpu.has(0x8000_0007, 0, D, 7), &[(0xc001_0061, Op::Read)]),
            ("irperf", cpu.has(0x8000_0008, 0, B, 1), &[(0xc000_00e9, Op::Read)]),
        ]
    }

    #[derive(Default)]
    struct Tally {
        features: u32,
        probes: u32,
        unexpected: u32,
    }

    fn probe(t: &mut Tally, feature: &str, msr: u32, op: Op) {
        t.probes += 1;
        let result = match op {
            Op::Read => rdmsr(msr).map(|_| ()).ok_or("read"),
            Op::ReadWrite => match rdmsr(msr) {
                Some(v) => if wrmsr(msr, v) { Ok(()) } else { Err("write back") },
                None => Err("read"),
            },
            Op::Write(v) => if wrmsr(msr, v) { Ok(()) } else { Err("write") },
            Op::SetBits(bits) => match rdmsr(msr) {
                Some(v) if !wrmsr(msr, v | bits) => Err("write"),
                Some(v) if rdmsr(msr) != Some(v | bits) => Err("read after write"),
                Some(v) => if wrmsr(msr, v) { Ok(()) } else { Err("write back") },
                None => Err("read"),
            },
        };
        match result {
            Ok(()) => println!("cpuinfo: {feature} msr {msr:#x}: ok"),
            Err(what) => {
                t.unexpected += 1;
                println!("cpuinfo: {feature} msr {msr:#x}: UNEXPECTED #GP ({what})");
            }
        }
    }

    fn dump(leaf: u32, sub: u32) {
        let [a, b, c, d] = cpuid(leaf, sub);
        println!("cpuinfo: cpuid {leaf:#x}.{sub}: {a:08x} {b:08x} {c:08x} {d:08x}");
    }

    fn guest_main(_info: &'static StartInfo) -> ! {
        trap::set_hook(hook);
        let [max, vb, vc, vd] = cpuid(0, 0);
        let max_ext = cpuid(0x8000_0000, 0)[0];
        let mut vendor = [0u8; 12];
        vendor[..4].copy_from_slice(&vb.to_le_bytes());
        vendor[4..8].copy_from_slice(&vd.to_le_bytes());
        vendor[8..].copy_from_slice(&vc.to_le_bytes());
        let amd = &vendor == b"AuthenticAMD" || &vendor == b"HygonGenuine";
        println!(
            "cpuinfo: vendor {}, max leaf {max:#x}, max extended leaf {max_ext:#x}",
            core::str::from_utf8(&vendor).unwrap_or("?")
        );
        for leaf in 0..=max.min(0x3f) {
            let subs = match leaf {
                4 | 0xb | 0x1f => 4,
                7 => cpuid(7, 0)[0].min(3) + 1,
                0xd => 10,
                _ => 1,
            };
            for sub in 0..subs {
                dump(leaf, sub);
            }
        }
        for leaf in 0x4000_0000..=0x4000_0001 {
            dump(leaf, 0);
        }
        for leaf in 0x8000_0000..=max_ext.min(0x8000_0040) {
            dump(leaf, 0);
        }

        let cpu = Cpu { max, max_ext, amd };
        let mut t = Tally::default();
        let all = probes(&cpu);
        let amd_list = amd_probes(&cpu);
        let list = all.iter().chain(if amd { amd_list.iter() } else { [].iter() });
        for &(feature, shown, msrs) in list {
            if !shown {
                continue;
            }
            t.features += 1;
            for &(msr, op) in msrs {
                probe(&mut t, feature, msr, op);
            }
        }
        // TSX_CTRL is enumerated by IA32_ARCH_CAPABILITIES bit 7.
        if cpu.has(7, 0, D, 29) && rdmsr(0x10a).is_some_and(|v| v & (1 << 7) != 0) {
            t.features += 1;
            probe(&mut t, "tsx-ctrl", 0x122, Op::ReadWrite);
        }

        // Topology: this is vCPU 0, so every APIC ID CPUID gives is 0.
        let mut ids_ok = true;
        let mut id = |what: &str, v: u32| {
            let good = v == 0;
            ids_ok &= good;
            println!("cpuinfo: apic id {what}: {v}: {}", if good { "ok" } else { "WRONG (vCPU 0 must be 0)" });
        };
        id("leaf 1", cpuid(1, 0)[1] >> 24);
        if max >= 0xb {
            id("leaf 0xb", cpuid(0xb, 0)[3]);
        }
        if max >= 0x1f {
            id("leaf 0x1f", cpuid(0x1f, 0)[3]);
        }
        if amd && max_ext >= 0x8000_001e {
            id("leaf 0x8000001e", cpuid(0x8000_001e, 0)[0]);
        }
        let oxen = u32::from_le_bytes(*b"Oxen");
        let hv = cpuid(1, 0)[2] & (1 << 31) != 0 && cpuid(0x4000_0000, 0)[1..] == [oxen; 3];
        let nested = cpu.has(1, 0, C, 5) || cpu.has(0x8000_0001, 0, C, 2);
        println!("cpuinfo: hypervisor leaves say Oxen: {}, VMX/SVM shown: {}", if hv { "yes" } else { "NO" }, if nested { "YES" } else { "no" });
        println!(
            "cpuinfo: summary: {} features shown, {} msr probes, {} unexpected, apic ids virtual: {}",
            t.features,
            t.probes,
            t.unexpected + u32::from(!hv) + u32::from(nested),
            if ids_ok { "yes" } else { "NO" }
        );
        hypercall::shutdown(ShutdownReason::Poweroff);
    }
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("cpuinfo is an Oxen domU kernel: `cargo xtask` builds it for x86_64-unknown-none");
    std::process::exit(1);
}
