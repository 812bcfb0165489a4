//! Domain config files: the subset of xl's syntax Oxen's domains need.
//!
//! ```text
//! # a comment
//! name    = "web"              # required: 1-31 of A-Z a-z 0-9 _ . -
//! memory  = 128                # MiB (default 64, at least MIN_MEMORY_MIB)
//! vcpus   = 2                  # default 1, at most MAX_VCPUS
//! kernel  = "/boot/web.elf"    # required: an ELF64 x86-64 kernel
//! ramdisk = "/boot/web.img"    # optional
//! extra   = "console=hvc0"     # the command line ('cmdline' is the same key)
//! on_poweroff = "destroy"      # destroy | restart | preserve (default destroy)
//! on_reboot   = "restart"      # default restart
//! on_crash    = "destroy"      # default destroy
//! ```
//!
//! One `key = value` per line. Strings are in double or single quotes, with no
//! escapes (use the other quote to include one); numbers are plain decimal.
//! Relative paths are relative to the config file's directory. Everything
//! wrong is an error naming the file and line: nothing is silently ignored.

use std::fmt;
use std::path::{Path, PathBuf};

use oxen_abi::{valid_name, Action, CMDLINE_LEN, MAX_VCPUS, MIN_MEMORY_MIB};

pub const DEFAULT_MEMORY_MIB: u32 = 64;
pub const DEFAULT_VCPUS: u32 = 1;

/// A parsed, checked domain config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub name: String,
    pub memory_mib: u32,
    pub vcpus: u32,
    pub kernel: PathBuf,
    pub ramdisk: Option<PathBuf>,
    pub cmdline: String,
    pub on_poweroff: Action,
    pub on_reboot: Action,
    pub on_crash: Action,
}

impl Config {
    /// Makes relative `kernel` and `ramdisk` paths relative to `dir` (the
    /// config file's directory).
    pub fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        fix(&mut self.kernel);
        if let Some(r) = &mut self.ramdisk {
            fix(r);
        }
    }
}

/// A mistake in a config file: where, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; `None` for what is missing rather than wrong on a line.
    pub line: Option<usize>,
    pub msg: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(n) => write!(f, "{}:{n}: {}", self.file, self.msg),
            None => write!(f, "{}: {}", self.file, self.msg),
        }
    }
}

/// The keys oxl knows, for "did you mean" suggestions.
const KEYS: &[&str] = &[
    "name",
    "memory",
    "vcpus",
    "kernel",
    "ramdisk",
    "extra",
    "cmdline",
    "on_poweroff",
    "on_reboot",
    "on_crash",
];

/// xl keys people will bring along that Oxen's domains have nothing for yet.
const XL_ONLY_KEYS: &[&str] = &[
    "type",
    "builder",
    "maxmem",
    "disk",
    "vif",
    "pci",
    "bootloader",
    "root",
    "vfb",
    "serial",
    "cpus",
    "uuid",
];

#[derive(Debug, PartialEq, Eq)]
enum Value {
    Str(String),
    Int(u64),
}

/// Parses the config text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    let err = |line: usize, msg: String| ConfigError {
        file: file.to_owned(),
        line: Some(line),
        msg,
    };
    let mut name = None;
    let mut memory_mib = DEFAULT_MEMORY_MIB;
    let mut vcpus = DEFAULT_VCPUS;
    let mut kernel = None;
    let mut ramdisk = None;
    let mut cmdline = String::new();
    let mut on_poweroff = Action::Destroy;
    let mut on_reboot = Action::Restart;
    let mut on_crash = Action::Destroy;
    // (key, line) of every setting seen, for duplicates.
    let mut seen: Vec<(&str, usize)> = Vec::new();

    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, rest)) = line.split_once('=') else {
            return Err(err(n, format!("expected 'key = value', found '{line}'")));
        };
        let key = key.trim();
        if key.is_empty()
            || !key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(err(
                n,
                format!("'{key}' is not a key: expected 'key = value'"),
            ));
        }
        let value = parse_value(rest).map_err(|m| err(n, format!("{key}: {m}")))?;

        let canonical = if key == "extra" { "cmdline" } else { key };
        if let Some(&(first_key, first)) = seen.iter().find(|(k, _)| {
            let k = if *k == "extra" { "cmdline" } else { k };
            k == canonical
        }) {
            return Err(err(
                n,
                if first_key == key {
                    format!("'{key}' is set twice (first on line {first})")
                } else {
                    format!(
                        "'{key}' and '{first_key}' (line {first}) are the same setting, the kernel command line: keep one"
                    )
                },
            ));
        }

        match key {
            "name" => {
                let v = string(key, value).map_err(|m| err(n, m))?;
                if !valid_name(&v) {
                    return Err(err(
                        n,
                        format!(
                            "name '{v}' is not valid: use 1 to {} characters of A-Z a-z 0-9 _ . -",
                            oxen_abi::NAME_LEN - 1
                        ),
                    ));
                }
                name = Some(v);
            }
            "memory" => {
                let v = number(key, value, "MiB").map_err(|m| err(n, m))?;
                memory_mib = match u32::try_from(v) {
                    Ok(m) if m >= MIN_MEMORY_MIB => m,
                    Ok(_) => {
                        return Err(err(
                            n,
                            format!("memory = {v} is too small: a domain needs at least {MIN_MEMORY_MIB} MiB"),
                        ))
                    }
                    Err(_) => return Err(err(n, format!("memory = {v} MiB is too large"))),
                };
            }
            "vcpus" => {
                let v = number(key, value, "vCPUs").map_err(|m| err(n, m))?;
                vcpus = u32::try_from(v)
                    .ok()
                    .filter(|c| (1..=MAX_VCPUS).contains(c))
                    .ok_or_else(|| {
                        err(n, format!("vcpus = {v} is out of range: 1 to {MAX_VCPUS}"))
                    })?;
            }
            "kernel" | "ramdisk" => {
                let v = string(key, value).map_err(|m| err(n, m))?;
                if v.is_empty() {
                    return Err(err(n, format!("{key} is empty: give the file's path")));
                }
                if key == "kernel" {
                    kernel = Some(PathBuf::from(v));
                } else {
                    ramdisk = Some(PathBuf::from(v));
                }
            }
            "extra" | "cmdline" => {
                let v = string(key, value).map_err(|m| err(n, m))?;
                if v.len() >= CMDLINE_LEN {
                    return Err(err(
                        n,
                        format!(
                            "{key} is {} bytes long; the hypervisor takes at most {}",
                            v.len(),
                            CMDLINE_LEN - 1
                        ),
                    ));
                }
                cmdline = v;
            }
            "on_poweroff" | "on_reboot" | "on_crash" => {
                let v = string(key, value).map_err(|m| err(n, m))?;
                let action = match v.as_str() {
                    "destroy" => Action::Destroy,
                    "restart" => Action::Restart,
                    "preserve" => Action::Preserve,
                    _ => {
                        return Err(err(
                            n,
                            format!("{key} = '{v}': expected destroy, restart or preserve"),
                        ))
                    }
                };
                match key {
                    "on_poweroff" => on_poweroff = action,
                    "on_reboot" => on_reboot = action,
                    _ => on_crash = action,
                }
            }
            _ => return Err(err(n, unknown_key(key))),
        }
        seen.push((key, n));
    }

    let missing = |what: &str| ConfigError {
        file: file.to_owned(),
        line: None,
        msg: what.to_owned(),
    };
    Ok(Config {
        name: name.ok_or_else(|| missing("'name' is missing (e.g. name = \"web\")"))?,
        kernel: kernel.ok_or_else(|| {
            missing(
                "'kernel' is missing: the guest's ELF64 kernel (e.g. kernel = \"/boot/guest.elf\")",
            )
        })?,
        memory_mib,
        vcpus,
        ramdisk,
        cmdline,
        on_poweroff,
        on_reboot,
        on_crash,
    })
}

/// The value after `=`, and nothing but a comment after it.
fn parse_value(rest: &str) -> Result<Value, String> {
    let rest = rest.trim_start();
    let (value, after) = match rest.chars().next() {
        None | Some('#') => return Err("no value after '='".into()),
        Some(q @ ('"' | '\'')) => {
            let body = &rest[1..];
            let end = body
                .find(q)
                .ok_or_else(|| format!("the string has no closing {q}"))?;
            (Value::Str(body[..end].to_owned()), &body[end + 1..])
        }
        Some(c) if c.is_ascii_digit() => {
            let end = rest
                .find(|c: char| !c.is_ascii_alphanumeric() && c != '_' && c != '.')
                .unwrap_or(rest.len());
            let word = &rest[..end];
            if !word.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "'{word}' is not a number (plain decimal digits, no unit)"
                ));
            }
            let v = word
                .parse()
                .map_err(|_| format!("{word} is out of range"))?;
            (Value::Int(v), &rest[end..])
        }
        Some('-') => return Err("negative numbers are out of range here".into()),
        Some('[') => return Err("lists are not supported".into()),
        Some(_) => {
            let word = rest
                .split(|c: char| c.is_whitespace() || c == '#')
                .next()
                .unwrap_or(rest);
            return Err(format!(
                "'{word}' is not a value: strings go in quotes (\"...\"), numbers are plain digits"
            ));
        }
    };
    let after = after.trim_start();
    if !after.is_empty() && !after.starts_with('#') {
        return Err(format!("unexpected '{after}' after the value"));
    }
    Ok(value)
}

fn string(key: &str, v: Value) -> Result<String, String> {
    match v {
        Value::Str(s) if s.contains('\0') => Err(format!("{key} contains a NUL byte")),
        Value::Str(s) => Ok(s),
        Value::Int(i) => Err(format!(
            "{key} takes a string in quotes, not the number {i}"
        )),
    }
}

fn number(key: &str, v: Value, unit: &str) -> Result<u64, String> {
    match v {
        Value::Int(i) => Ok(i),
        Value::Str(s) => Err(format!(
            "{key} takes a number ({unit}) without quotes, not the string \"{s}\""
        )),
    }
}

fn unknown_key(key: &str) -> String {
    if XL_ONLY_KEYS.contains(&key) {
        return format!("'{key}' is an xl setting that Oxen's domains do not have");
    }
    let best = KEYS
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .min()
        .filter(|(d, k)| *d <= 2.min(k.len() / 2).max(1));
    match best {
        Some((_, k)) => format!("unknown key '{key}' (did you mean '{k}'?)"),
        None => format!("unknown key '{key}' (known: {})", KEYS.join(", ")),
    }
}

/// Levenshtein distance, with a transposition counting as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Config {
        parse("vm.cfg", text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn fail(text: &str) -> String {
        parse("vm.cfg", text).expect_err("should fail").to_string()
    }

    const MINIMAL: &str = "name = \"web\"\nkernel = \"web.elf\"\n";

    #[test]
    fn full_config() {
        let c = ok(r#"
# a web server
name = "web-1"        # its name
memory = 128
vcpus = 2
kernel = '/boot/web.elf'
ramdisk = "/boot/web.img"
extra = "console=hvc0 quiet 'x'"
on_poweroff = "preserve"
on_reboot = 'destroy'
on_crash = "restart"
"#);
        assert_eq!(
            c,
            Config {
                name: "web-1".into(),
                memory_mib: 128,
                vcpus: 2,
                kernel: "/boot/web.elf".into(),
                ramdisk: Some("/boot/web.img".into()),
                cmdline: "console=hvc0 quiet 'x'".into(),
                on_poweroff: Action::Preserve,
                on_reboot: Action::Destroy,
                on_crash: Action::Restart,
            }
        );
    }

    #[test]
    fn defaults() {
        let c = ok(MINIMAL);
        assert_eq!(c.memory_mib, DEFAULT_MEMORY_MIB);
        assert_eq!(c.vcpus, DEFAULT_VCPUS);
        assert_eq!(c.ramdisk, None);
        assert_eq!(c.cmdline, "");
        assert_eq!(
            (c.on_poweroff, c.on_reboot, c.on_crash),
            (Action::Destroy, Action::Restart, Action::Destroy)
        );
    }

    #[test]
    fn layout_tolerated() {
        let c = ok("\r\n  name=\"a\"\r\n\tkernel   =   \"k\"#c\r\n cmdline = \"x=1 y\"  \n#end");
        assert_eq!(c.name, "a");
        assert_eq!(c.cmdline, "x=1 y");
        assert_eq!(
            ok(&format!("{MINIMAL}memory = 4\nvcpus = {MAX_VCPUS}\n")).memory_mib,
            4
        );
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let mut c = ok("name = \"a\"\nkernel = \"k.elf\"\nramdisk = \"/abs/r\"\n");
        c.resolve_paths(Path::new("/etc/oxen"));
        assert_eq!(c.kernel, PathBuf::from("/etc/oxen/k.elf"));
        assert_eq!(c.ramdisk, Some(PathBuf::from("/abs/r")));
    }

    #[test]
    fn unknown_keys() {
        assert_eq!(
            fail("name = \"a\"\nkernel = \"k\"\nmemroy = 64\n"),
            "vm.cfg:3: unknown key 'memroy' (did you mean 'memory'?)"
        );
        assert_eq!(
            fail("vcpu = 1"),
            "vm.cfg:1: unknown key 'vcpu' (did you mean 'vcpus'?)"
        );
        assert_eq!(
            fail("on_crsh = 1"),
            "vm.cfg:1: unknown key 'on_crsh' (did you mean 'on_crash'?)"
        );
        assert_eq!(
            fail("colour = \"red\""),
            "vm.cfg:1: unknown key 'colour' (known: name, memory, vcpus, kernel, ramdisk, extra, cmdline, \
             on_poweroff, on_reboot, on_crash)"
        );
        assert_eq!(
            fail("\ndisk = \"x\""),
            "vm.cfg:2: 'disk' is an xl setting that Oxen's domains do not have"
        );
    }

    #[test]
    fn duplicates() {
        assert_eq!(
            fail("name = \"a\"\n\nname = \"b\"\n"),
            "vm.cfg:3: 'name' is set twice (first on line 1)"
        );
        assert_eq!(
            fail("extra = \"a\"\ncmdline = \"b\"\n"),
            "vm.cfg:2: 'cmdline' and 'extra' (line 1) are the same setting, the kernel command line: keep one"
        );
    }

    #[test]
    fn bad_syntax() {
        assert_eq!(
            fail("name \"a\""),
            "vm.cfg:1: expected 'key = value', found 'name \"a\"'"
        );
        assert_eq!(
            fail("= 3"),
            "vm.cfg:1: '' is not a key: expected 'key = value'"
        );
        assert_eq!(
            fail("na me = 3"),
            "vm.cfg:1: 'na me' is not a key: expected 'key = value'"
        );
        assert_eq!(fail("name ="), "vm.cfg:1: name: no value after '='");
        assert_eq!(fail("name = # x"), "vm.cfg:1: name: no value after '='");
        assert_eq!(
            fail("name = \"web"),
            "vm.cfg:1: name: the string has no closing \""
        );
        assert_eq!(
            fail("name = 'web\""),
            "vm.cfg:1: name: the string has no closing '"
        );
        assert_eq!(
            fail("name = web"),
            "vm.cfg:1: name: 'web' is not a value: strings go in quotes (\"...\"), numbers are plain digits"
        );
        assert_eq!(
            fail("name = \"a\" \"b\""),
            "vm.cfg:1: name: unexpected '\"b\"' after the value"
        );
        assert_eq!(
            fail("name = \"a\";"),
            "vm.cfg:1: name: unexpected ';' after the value"
        );
        assert_eq!(
            fail("disk = [ \"x\" ]"),
            "vm.cfg:1: disk: lists are not supported"
        );
        assert_eq!(
            fail("memory = 64M"),
            "vm.cfg:1: memory: '64M' is not a number (plain decimal digits, no unit)"
        );
        assert_eq!(
            fail("memory = 0x40"),
            "vm.cfg:1: memory: '0x40' is not a number (plain decimal digits, no unit)"
        );
        assert_eq!(
            fail("memory = 1.5"),
            "vm.cfg:1: memory: '1.5' is not a number (plain decimal digits, no unit)"
        );
        assert_eq!(
            fail("memory = -1"),
            "vm.cfg:1: memory: negative numbers are out of range here"
        );
        assert_eq!(
            fail("memory = 99999999999999999999999"),
            "vm.cfg:1: memory: 99999999999999999999999 is out of range"
        );
    }

    #[test]
    fn bad_types() {
        assert_eq!(
            fail("name = 3"),
            "vm.cfg:1: name takes a string in quotes, not the number 3"
        );
        assert_eq!(
            fail("memory = \"64\""),
            "vm.cfg:1: memory takes a number (MiB) without quotes, not the string \"64\""
        );
        assert_eq!(
            fail("vcpus = '2'"),
            "vm.cfg:1: vcpus takes a number (vCPUs) without quotes, not the string \"2\""
        );
    }

    #[test]
    fn bad_values() {
        assert_eq!(
            fail("name = \"has space\""),
            "vm.cfg:1: name 'has space' is not valid: use 1 to 31 characters of A-Z a-z 0-9 _ . -"
        );
        assert_eq!(
            fail(&format!("name = \"{}\"", "x".repeat(32))),
            format!(
                "vm.cfg:1: name '{}' is not valid: use 1 to 31 characters of A-Z a-z 0-9 _ . -",
                "x".repeat(32)
            )
        );
        assert_eq!(
            fail("kernel = \"\""),
            "vm.cfg:1: kernel is empty: give the file's path"
        );
        assert_eq!(
            fail("on_crash = \"reboot\""),
            "vm.cfg:1: on_crash = 'reboot': expected destroy, restart or preserve"
        );
        let long = "x".repeat(CMDLINE_LEN);
        assert_eq!(
            fail(&format!("extra = \"{long}\"")),
            "vm.cfg:1: extra is 256 bytes long; the hypervisor takes at most 255"
        );
        assert!(parse("vm.cfg", &format!("{MINIMAL}extra = \"{}\"", &long[1..])).is_ok());
    }

    #[test]
    fn out_of_range_numbers() {
        assert_eq!(
            fail("memory = 3"),
            "vm.cfg:1: memory = 3 is too small: a domain needs at least 4 MiB"
        );
        assert_eq!(
            fail("memory = 4294967296"),
            "vm.cfg:1: memory = 4294967296 MiB is too large"
        );
        assert_eq!(
            fail("vcpus = 0"),
            "vm.cfg:1: vcpus = 0 is out of range: 1 to 8"
        );
        assert_eq!(
            fail("vcpus = 9"),
            "vm.cfg:1: vcpus = 9 is out of range: 1 to 8"
        );
    }

    #[test]
    fn missing_keys() {
        assert_eq!(
            fail("kernel = \"k\""),
            "vm.cfg: 'name' is missing (e.g. name = \"web\")"
        );
        assert_eq!(
            fail("# only a comment\nname = \"a\""),
            "vm.cfg: 'kernel' is missing: the guest's ELF64 kernel (e.g. kernel = \"/boot/guest.elf\")"
        );
        assert_eq!(fail(""), "vm.cfg: 'name' is missing (e.g. name = \"web\")");
    }

    #[test]
    fn distance() {
        assert_eq!(edit_distance("memroy", "memory"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kernal", "kernel"), 1);
        assert_eq!(edit_distance("name", "name"), 0);
    }
}
