//! What the fuzzer calls and what it expects back: a seeded PRNG, the random
//! calls (number, registers, guest addresses and lengths by class), the
//! rewrites that keep a call from ending the fuzzer, and the ABI's answer for
//! each call made by a domU (docs/hypercalls.md). Pure, so the host tests it.

use oxen_abi::{domctl, nr, sched_op, CreateDomain, DomainRef, LoadImage, Pod, RingRead, ShutdownDomain,
    CONSOLE_READ_MAX, CONSOLE_WRITE_MAX, DOMCTL_ARG_MAX, DOMCTL_BUF_MAX, ABI_VERSION};

/// SplitMix64 (Steele, Lea, Flood 2014): one u64 of state, every seed is good,
/// and the same seed gives the same calls on every run.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True `percent`% of the time.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// The guest-physical layout the fuzzer works in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// RAM is `[0, ram)`.
    pub ram: u64,
    /// The fuzzer's own image, stack and tables live in `[image_start, image_end)`;
    /// the rest of RAM is scratch (`scratch_low`, `scratch_high`), which only
    /// hypercalls and the fill pattern ever touch.
    pub image_start: u64,
    pub image_end: u64,
}

impl Layout {
    /// The scratch ranges `[start, end)`: below the image and above it.
    pub fn scratch(&self) -> [(u64, u64); 2] {
        [(0, self.image_start), (self.image_end, self.ram)]
    }

    /// Whether `[gpa, gpa + len)` is all RAM (what the hypervisor accepts).
    pub fn in_ram(&self, gpa: u64, len: u64) -> bool {
        gpa.checked_add(len).is_some_and(|end| end <= self.ram)
    }

    /// Whether a non-empty `[gpa, gpa + len)` touches the fuzzer's own memory.
    pub fn touches_image(&self, gpa: u64, len: u64) -> bool {
        let end = gpa.saturating_add(len);
        len > 0 && gpa < self.image_end && end > self.image_start
    }
}

/// The hypercall numbers the ABI defines (`oxen_abi::nr`).
pub const VALID_NRS: [u64; 9] = [
    nr::VERSION,
    nr::NULL,
    nr::CONSOLE_WRITE,
    nr::DOMAIN_ID,
    nr::SCHED_OP,
    nr::CONTROL_REQUEST,
    nr::DOMCTL,
    nr::CONSOLE_READ,
    nr::EVENTS,
];

/// The longest `BLOCK` the fuzzer sleeps (ns): a block without a timeout, or
/// one of seconds, would stall the fuzzer (legitimately), so timeouts are
/// replaced by one of at most this.
pub const BLOCK_MAX_NS: u64 = 100_000;

/// One call: number, RDI, RSI, RDX, R10, R8, and what was changed so that it
/// cannot end or stall the fuzzer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    pub nr: u64,
    pub a: [u64; 5],
    pub adjusted: Adjusted,
    /// A valid-looking structure to put at the argument address (DOMCTL).
    pub domctl_arg: Option<Arg>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adjusted {
    No,
    /// A valid SHUTDOWN reason replaced by an invalid one (it would end the domain).
    Shutdown,
    /// A BLOCK timeout of 0 (forever) or above `BLOCK_MAX_NS` replaced.
    Block,
    /// An address range that would cover the fuzzer itself moved into scratch.
    OwnMemory,
    /// A console write past the run's budget made empty or moved out of RAM.
    ConsoleBudget,
}

/// A domctl argument structure, as bytes, mutated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arg {
    pub bytes: [u8; ARG_BYTES],
    pub len: usize,
}

/// Room for the largest structure (`BuildDomain`, 264 bytes) and some.
pub const ARG_BYTES: usize = 320;

/// A guest address from one of the classes the hypervisor must tell apart.
pub fn address(rng: &mut Rng, l: &Layout) -> u64 {
    let [(lo0, hi0), (lo1, hi1)] = l.scratch();
    match rng.below(10) {
        0 => 0,
        1 => rng.range(lo0, hi0 - 1),
        2 | 3 => rng.range(lo1, hi1 - 1),
        // Around the end of RAM: a range that straddles it or starts just past it.
        4 => l.ram - rng.range(0, 0x2000),
        5 => l.ram + rng.range(0, 0x20_0000),
        // Far outside: beyond RAM, the local APIC/IOAPIC window (device memory for
        // dom0, nothing for a domU), up to the 52-bit physical limit.
        6 => rng.pick(&[0xfee0_0000, 0xfec0_0000, 0xfed0_0000, 1 << 32, 1 << 40, (1 << 52) - 0x1000])
            + rng.below(0x1000),
        7 => rng.range(l.ram + (1 << 30), 1 << 52),
        // Non-canonical, kernel-half, and wrapping at 2^64.
        8 => rng.pick(&[0x0000_8000_0000_0000, 0xffff_8000_0000_0000, 0xffff_ffff_ffff_f000, u64::MAX - 7])
            + rng.below(8),
        _ => rng.next_u64(),
    }
}

/// A length around the limits the ABI states.
pub fn length(rng: &mut Rng) -> u64 {
    match rng.below(8) {
        0 => 0,
        1 | 2 => rng.range(1, 64),
        3 => CONSOLE_WRITE_MAX - 1 + rng.below(3),
        4 => DOMCTL_BUF_MAX - 1 + rng.below(3),
        5 => rng.pick(&[1 << 32, (1 << 32) + 1, 1 << 63, u64::MAX, u64::MAX - 4095]),
        6 => rng.range(1, 0x2000),
        _ => rng.next_u64(),
    }
}

/// A register that is not an address or length: small, boundary, or random.
pub fn value(rng: &mut Rng) -> u64 {
    match rng.below(4) {
        0 => rng.below(8),
        1 => rng.pick(&[u64::from(u32::MAX), 1 << 32, 1 << 63, u64::MAX]) ^ rng.below(4),
        _ => rng.next_u64(),
    }
}

/// A hypercall number: mostly the ABI's, some near them, some random, some with
/// a valid number in the low 32 bits (the whole register must be compared).
pub fn number(rng: &mut Rng) -> u64 {
    match rng.below(20) {
        0..=15 => rng.pick(&VALID_NRS),
        16 => rng.range(6, 64),
        17 => rng.pick(&VALID_NRS) | (rng.range(1, 0xffff_ffff) << 32),
        _ => rng.next_u64(),
    }
}

/// A valid-looking argument of domctl `cmd`, then mutated: bit flips, a field
/// set to a boundary value, or a length off by some bytes.
pub fn domctl_arg(rng: &mut Rng, cmd: u64) -> Arg {
    let mut bytes = [0u8; ARG_BYTES];
    let random = rng.next_u64() as u32;
    let domid = rng.pick(&[0, 1, 2, 3, u32::MAX, random]);
    let len = {
        let mut put = |s: &[u8]| {
            bytes[..s.len()].copy_from_slice(s);
            s.len()
        };
        match cmd {
            domctl::CREATE => put(CreateDomain {
                name: oxen_abi::name_bytes("fuzz-child").unwrap_or_default(),
                memory_mib: 4,
                vcpus: 1,
                on_poweroff: 0,
                on_reboot: 0,
                on_crash: 0,
                _pad: 0,
                flags: 0,
            }
            .as_bytes()),
            domctl::LOAD_IMAGE => put(LoadImage { domid, kind: 0, offset: 0, total: 4096 }.as_bytes()),
            domctl::SHUTDOWN => put(ShutdownDomain { domid, reason: 0 }.as_bytes()),
            domctl::CONSOLE_READ | domctl::DMESG => {
                put(RingRead { domid, _pad: 0, offset: 0, next: 0, lost: 0 }.as_bytes())
            }
            _ => put(DomainRef { domid, _pad: 0 }.as_bytes()),
        }
    };
    let mut arg = Arg { bytes, len };
    mutate(rng, &mut arg);
    arg
}

/// Mutates a structure in place (0 to 3 changes).
pub fn mutate(rng: &mut Rng, arg: &mut Arg) {
    for _ in 0..rng.below(4) {
        match rng.below(4) {
            0 => {
                let bit = rng.below(arg.len.max(1) as u64 * 8) as usize;
                arg.bytes[bit / 8] ^= 1 << (bit % 8);
            }
            1 => {
                // A 4-byte field (every field is 4-byte aligned) to a boundary value.
                let at = (rng.below((arg.len / 4).max(1) as u64) * 4) as usize;
                let random = rng.next_u64() as u32;
                let v = rng.pick(&[0u32, 1, 2, 0x7fef, 0x7fff_ffff, u32::MAX, random]);
                arg.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            2 => {
                let n = arg.len;
                arg.len = rng.pick(&[0, n.saturating_sub(1), n + 1, n + 8]).min(ARG_BYTES);
            }
            _ => {
                let at = rng.below(arg.len.max(1) as u64) as usize;
                arg.bytes[at] = rng.next_u64() as u8;
            }
        }
    }
}

/// A random call, adjusted so that it can neither end the fuzzer nor stall it
/// nor touch its own memory.
pub fn call(rng: &mut Rng, l: &Layout) -> Call {
    let nr = number(rng);
    let mut a = [value(rng), value(rng), value(rng), value(rng), value(rng)];
    let mut adjusted = Adjusted::No;
    let mut domctl_arg = None;
    match nr {
        nr::CONSOLE_WRITE | nr::CONSOLE_READ => {
            a[0] = address(rng, l);
            a[1] = length(rng);
        }
        nr::SCHED_OP => {
            a[0] = match rng.below(8) {
                0..=1 => sched_op::YIELD,
                2..=3 => sched_op::BLOCK,
                4..=5 => sched_op::SHUTDOWN,
                _ => value(rng),
            };
            if rng.percent(50) {
                a[1] = rng.below(4);
            }
        }
        nr::DOMCTL => {
            a[0] = if rng.percent(80) { rng.range(0, 17) } else { value(rng) };
            a[1] = address(rng, l);
            a[2] = if rng.percent(50) { rng.range(0, DOMCTL_ARG_MAX + 1) } else { length(rng) };
            a[3] = address(rng, l);
            a[4] = length(rng);
            if rng.percent(70) {
                let arg = self::domctl_arg(rng, a[0]);
                a[2] = arg.len as u64;
                domctl_arg = Some(arg);
            }
        }
        _ => {}
    }
    // The two operations that would end or stall the fuzzer.
    if nr == nr::SCHED_OP && a[0] == sched_op::SHUTDOWN && a[1] <= 2 {
        a[1] = rng.pick(&[3, 7, 1 << 32, (1 << 32) | 1, u64::MAX]);
        adjusted = Adjusted::Shutdown;
    }
    if nr == nr::SCHED_OP && a[0] == sched_op::BLOCK && !(1..=BLOCK_MAX_NS).contains(&a[1]) {
        a[1] = rng.range(1, BLOCK_MAX_NS);
        adjusted = Adjusted::Block;
    }
    // The hypervisor must not write a domU's memory for any of its calls but
    // CONSOLE_READ's buffer, and were it to, it must only ever hit scratch: a
    // range over the fuzzer's own memory is moved to just above it (same length).
    let ranges: &[(usize, usize)] = match nr {
        nr::CONSOLE_WRITE | nr::CONSOLE_READ => &[(0, 1)],
        nr::DOMCTL => &[(1, 2), (3, 4)],
        _ => &[],
    };
    for &(p, n) in ranges {
        if l.touches_image(a[p], a[n]) {
            a[p] = l.image_end;
            if l.touches_image(a[p], a[n]) || a[n] > l.ram - l.image_end {
                a[n] = rng.below(64);
            }
            adjusted = Adjusted::OwnMemory;
        }
    }
    // Where the structure is placed: it must fit in scratch, else it is not written.
    if let Some(arg) = domctl_arg {
        if !l.in_ram(a[1], arg.len as u64) || l.touches_image(a[1], arg.len as u64) {
            domctl_arg = None;
        }
    }
    Call { nr, a, adjusted, domctl_arg }
}

/// What the ABI says a domU's call returns: RAX exactly.
pub fn expected(c: &Call, l: &Layout, domid: u64) -> u64 {
    use oxen_abi::Error;
    let err = |e: Error| e.to_rax();
    match c.nr {
        nr::VERSION => ABI_VERSION.into(),
        nr::NULL => 0,
        nr::DOMAIN_ID => domid,
        // dom0 never asks the fuzzer to stop while it runs.
        nr::CONTROL_REQUEST => oxen_abi::request::NONE,
        nr::CONSOLE_WRITE => {
            let (gpa, len) = (c.a[0], c.a[1]);
            if len > CONSOLE_WRITE_MAX {
                err(Error::TooBig)
            } else if len == 0 || l.in_ram(gpa, len) {
                len
            } else {
                err(Error::Fault)
            }
        }
        // Nobody sends the fuzzer console input: nothing is ever queued.
        nr::CONSOLE_READ => {
            let (gpa, len) = (c.a[0], c.a[1]);
            if len > CONSOLE_READ_MAX {
                err(Error::TooBig)
            } else if len == 0 || l.in_ram(gpa, len) {
                0
            } else {
                err(Error::Fault)
            }
        }
        nr::SCHED_OP => match c.a[0] {
            sched_op::YIELD | sched_op::BLOCK => 0,
            // Valid reasons were replaced: every SHUTDOWN that returns is refused.
            _ => err(Error::Inval),
        },
        // dom0's only: refused before any argument is looked at.
        nr::DOMCTL | nr::EVENTS => err(Error::Perm),
        _ => err(Error::NoSys),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxen_abi::Error;

    const L: Layout = Layout { ram: 32 << 20, image_start: 0x10_0000, image_end: 0x40_0000 };

    #[test]
    fn same_seed_same_calls() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..1000 {
            assert_eq!(call(&mut a, &L), call(&mut b, &L));
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    #[test]
    fn calls_never_end_stall_or_touch_the_fuzzer() {
        let mut rng = Rng::new(1);
        let (mut shutdowns, mut blocks, mut own) = (0, 0, 0);
        for _ in 0..200_000 {
            let c = call(&mut rng, &L);
            if c.nr == nr::SCHED_OP && c.a[0] == sched_op::SHUTDOWN {
                assert!(ShutdownReasonCheck::invalid(c.a[1]), "{c:?}");
            }
            if c.nr == nr::SCHED_OP && c.a[0] == sched_op::BLOCK {
                assert!((1..=BLOCK_MAX_NS).contains(&c.a[1]), "{c:?}");
            }
            if c.nr == nr::CONSOLE_WRITE || c.nr == nr::CONSOLE_READ {
                assert!(!L.touches_image(c.a[0], c.a[1]), "{c:?}");
            }
            if c.nr == nr::DOMCTL {
                assert!(!L.touches_image(c.a[1], c.a[2]) && !L.touches_image(c.a[3], c.a[4]), "{c:?}");
            }
            match c.adjusted {
                Adjusted::Shutdown => shutdowns += 1,
                Adjusted::Block => blocks += 1,
                Adjusted::OwnMemory => own += 1,
                Adjusted::No | Adjusted::ConsoleBudget => {}
            }
        }
        assert!(shutdowns > 100 && blocks > 100 && own > 10, "{shutdowns} {blocks} {own}");
    }

    struct ShutdownReasonCheck;
    impl ShutdownReasonCheck {
        fn invalid(r: u64) -> bool {
            oxen_abi::ShutdownReason::from_u64(r).is_none()
        }
    }

    #[test]
    fn every_number_is_generated() {
        let mut rng = Rng::new(3);
        let mut seen = [false; VALID_NRS.len()];
        let mut other = 0;
        for _ in 0..10_000 {
            match VALID_NRS.iter().position(|&n| n == number(&mut rng)) {
                Some(i) => seen[i] = true,
                None => other += 1,
            }
        }
        assert!(seen.iter().all(|&s| s) && other > 1000);
    }

    #[test]
    fn the_abi_answers() {
        let c = |nr, a: [u64; 5]| Call { nr, a, adjusted: Adjusted::No, domctl_arg: None };
        assert_eq!(expected(&c(nr::DOMCTL, [domctl::LIST, 0, 0, 0, 0]), &L, 5), Error::Perm.to_rax());
        assert_eq!(expected(&c(nr::DOMAIN_ID, [0; 5]), &L, 5), 5);
        assert_eq!(expected(&c(nr::NULL | 1 << 32, [0; 5]), &L, 5), Error::NoSys.to_rax());
        let cw = |gpa, len| expected(&c(nr::CONSOLE_WRITE, [gpa, len, 0, 0, 0]), &L, 5);
        assert_eq!(cw(L.ram - 16, 16), 16);
        assert_eq!(cw(L.ram - 16, 17), Error::Fault.to_rax());
        assert_eq!(cw(u64::MAX - 7, 16), Error::Fault.to_rax());
        assert_eq!(cw(u64::MAX, 0), 0);
        assert_eq!(cw(0, CONSOLE_WRITE_MAX + 1), Error::TooBig.to_rax());
        assert_eq!(expected(&c(nr::SCHED_OP, [9, 0, 0, 0, 0]), &L, 5), Error::Inval.to_rax());
        let cr = |gpa, len| expected(&c(nr::CONSOLE_READ, [gpa, len, 0, 0, 0]), &L, 5);
        assert_eq!(cr(L.ram - 16, 16), 0);
        assert_eq!(cr(L.ram - 16, 17), Error::Fault.to_rax());
        assert_eq!(cr(0, CONSOLE_READ_MAX + 1), Error::TooBig.to_rax());
    }

    #[test]
    fn mutated_structures_stay_in_bounds() {
        let mut rng = Rng::new(9);
        for cmd in 0..20 {
            for _ in 0..1000 {
                assert!(domctl_arg(&mut rng, cmd).len <= ARG_BYTES);
            }
        }
    }
}
