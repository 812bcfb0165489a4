//! The hypervisor command line, as GRUB passes it (`multiboot2 /boot/oxen.elf ...`).
//!
//! Options (documented in README.md):
//! - `console=com1[,BAUD]`: the hypervisor console (only COM1 is supported).
//! - `loglvl=error|warn|info|debug|all`: how much the hypervisor logs.
//! - `selftest`: run the built-in self-test guests on every CPU, then halt.
//! - `bench`: run the built-in benchmarks, then halt.
//! - `dom0_mem=SIZE[K|M|G]`: RAM for dom0 (default: half of what is free).
//! - `dom0_max_vcpus=N`: dom0's vCPUs (default 1).
//! - `sched_slice_ms=N`: the credit scheduler's time slice (1..=1000, default 30).
//! - `exit_tally_s=N`: log every vCPU's exits by reason every N seconds
//!   (1..=3600; for `cargo xtask bench --only idle`).
//! - `cpuid_hide=NAME[,NAME...]`: CPU features hidden from every guest's
//!   CPUID (`exit::cpuid::HIDEABLE`: erms, fsrm).
//! - `dom0_console_direct=on|off`: dom0's kernel writes its boot log to COM1
//!   itself until its UART driver opens the port (default on; off: every byte
//!   through the emulated UART, as after that point).
//! - `debug_exit=PORT`: when done, write the status to an ISA debug-exit port
//!   (test harnesses only; never set this on real hardware).

/// Log levels, most to least severe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    All,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub loglvl: LogLevel,
    pub baud: u32,
    pub selftest: bool,
    pub bench: bool,
    pub debug_exit: Option<u16>,
    pub dom0_mem: Option<u64>,
    pub dom0_max_vcpus: u32,
    pub sched_slice_ms: Option<u64>,
    pub exit_tally_s: Option<u64>,
    /// `cpuid_hide=`: bit i hides `exit::cpuid::HIDEABLE[i]`.
    pub cpuid_hide: u32,
    /// `dom0_console_direct=`.
    pub dom0_console_direct: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { loglvl: LogLevel::Info, baud: 115200, selftest: false, bench: false, debug_exit: None, dom0_mem: None, dom0_max_vcpus: 1, sched_slice_ms: None, exit_tally_s: None, cpuid_hide: 0, dom0_console_direct: true }
    }
}

/// A word on the command line that was not understood; reported, then ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadOption<'a> {
    pub word: &'a str,
    pub why: &'static str,
}

/// The `HIDEABLE` features named in `list` (comma-separated) as a bit mask,
/// or `None` if one is unknown or the list is empty.
fn cpuid_names(list: &str) -> Option<u32> {
    let hideable = crate::exit::cpuid::HIDEABLE;
    list.split(',').try_fold(0u32, |mask, name| {
        let i = hideable.iter().position(|h| h.0 == name)?;
        Some(mask | 1 << i)
    })
}

/// `SIZE[K|M|G]` in bytes (no suffix: bytes), or `None` if malformed or zero.
fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: u64 = digits.parse().ok()?;
    n.checked_mul(1 << shift).filter(|&v| v > 0)
}

fn parse_u16(s: &str) -> Option<u16> {
    match s.strip_prefix("0x") {
        Some(hex) => u16::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Parses `cmdline`; `bad` is called for each word that is ignored, with the reason.
pub fn parse<'a>(cmdline: &'a str, mut bad: impl FnMut(BadOption<'a>)) -> Options {
    let mut o = Options::default();
    for word in cmdline.split_ascii_whitespace() {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        match (key, value) {
            ("selftest", None) => o.selftest = true,
            ("bench", None) => o.bench = true,
            ("loglvl", Some(v)) => match v {
                "error" => o.loglvl = LogLevel::Error,
                "warn" | "warning" => o.loglvl = LogLevel::Warn,
                "info" => o.loglvl = LogLevel::Info,
                "debug" => o.loglvl = LogLevel::Debug,
                "all" => o.loglvl = LogLevel::All,
                _ => bad(BadOption { word, why: "loglvl takes error, warn, info, debug or all" }),
            },
            ("console", Some(v)) => {
                let mut parts = v.split(',');
                if parts.next() != Some("com1") {
                    bad(BadOption { word, why: "only console=com1[,BAUD] is supported" });
                } else if let Some(b) = parts.next() {
                    match b.parse::<u32>() {
                        Ok(baud) if baud > 0 && 115200 % baud == 0 => o.baud = baud,
                        _ => bad(BadOption { word, why: "baud must divide 115200" }),
                    }
                }
            }
            ("dom0_mem", Some(v)) => match parse_size(v) {
                Some(bytes) => o.dom0_mem = Some(bytes),
                None => bad(BadOption { word, why: "dom0_mem takes a size such as 512M or 2G" }),
            },
            ("sched_slice_ms", Some(v)) => match v.parse::<u64>() {
                Ok(n @ 1..=1000) => o.sched_slice_ms = Some(n),
                _ => bad(BadOption { word, why: "sched_slice_ms takes a number of milliseconds from 1 to 1000" }),
            },
            ("exit_tally_s", Some(v)) => match v.parse::<u64>() {
                Ok(n @ 1..=3600) => o.exit_tally_s = Some(n),
                _ => bad(BadOption { word, why: "exit_tally_s takes a number of seconds from 1 to 3600" }),
            },
            ("dom0_max_vcpus", Some(v)) => match v.parse::<u32>() {
                Ok(n @ 1..=64) => o.dom0_max_vcpus = n,
                _ => bad(BadOption { word, why: "dom0_max_vcpus takes a number from 1 to 64" }),
            },
            ("cpuid_hide", Some(v)) => match cpuid_names(v) {
                Some(mask) => o.cpuid_hide |= mask,
                None => bad(BadOption { word, why: "cpuid_hide takes names of features from: erms, fsrm" }),
            },
            ("dom0_console_direct", Some(v)) => match v {
                "on" => o.dom0_console_direct = true,
                "off" => o.dom0_console_direct = false,
                _ => bad(BadOption { word, why: "dom0_console_direct takes on or off" }),
            },
            ("debug_exit", Some(v)) => match parse_u16(v) {
                Some(p) => o.debug_exit = Some(p),
                None => bad(BadOption { word, why: "debug_exit takes a port number" }),
            },
            _ => bad(BadOption { word, why: "unknown option" }),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_options() {
        let mut bad = vec![];
        let o = parse("console=com1,57600 loglvl=debug selftest debug_exit=0xf4", |b| bad.push(b));
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(
            o,
            Options { loglvl: LogLevel::Debug, baud: 57600, selftest: true, debug_exit: Some(0xf4), ..Options::default() }
        );
    }

    #[test]
    fn dom0_console_direct_is_on_unless_turned_off() {
        let mut bad = Vec::new();
        assert!(parse("", |b| bad.push(b.word)).dom0_console_direct);
        let o = parse("dom0_console_direct=off dom0_console_direct=no", |b| bad.push(b.word));
        assert!(!o.dom0_console_direct);
        assert_eq!(bad, vec!["dom0_console_direct=no"]);
    }

    #[test]
    fn cpuid_hide_takes_known_feature_names() {
        let mut bad = vec![];
        let o = parse("cpuid_hide=erms cpuid_hide=fsrm,erms cpuid_hide=avx cpuid_hide=erms, cpuid_hide=", |b| bad.push(b.word));
        assert_eq!(o.cpuid_hide, 0b11);
        assert_eq!(bad, vec!["cpuid_hide=avx", "cpuid_hide=erms,", "cpuid_hide="]);
    }

    #[test]
    fn reports_bad_words_and_keeps_defaults() {
        let mut bad = vec![];
        let o = parse("  loglvl=loud console=com2 frobnicate bench baud console=com1,7 ", |b| bad.push(b.word));
        assert_eq!(bad, vec!["loglvl=loud", "console=com2", "frobnicate", "baud", "console=com1,7"]);
        assert_eq!(o, Options { bench: true, ..Options::default() });
    }

    #[test]
    fn exit_tally_period() {
        let mut bad = vec![];
        let o = parse("exit_tally_s=0 exit_tally_s=3601 exit_tally_s=5", |b| bad.push(b.word));
        assert_eq!(o.exit_tally_s, Some(5));
        assert_eq!(bad, vec!["exit_tally_s=0", "exit_tally_s=3601"]);
    }

    #[test]
    fn dom0_options() {
        let mut bad = vec![];
        let o = parse("dom0_mem=512M dom0_max_vcpus=2 dom0_mem=x dom0_max_vcpus=0 dom0_mem=0", |b| bad.push(b.word));
        assert_eq!(o.dom0_mem, Some(512 << 20));
        assert_eq!(o.dom0_max_vcpus, 2);
        assert_eq!(bad, vec!["dom0_mem=x", "dom0_max_vcpus=0", "dom0_mem=0"]);
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("99999999999999G"), None);
    }

    #[test]
    fn empty_command_line() {
        assert_eq!(parse("", |_| panic!("no words")), Options::default());
    }
}
