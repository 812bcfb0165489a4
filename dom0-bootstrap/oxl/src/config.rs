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
//! weight  = 512                # credit scheduler: 1 to 65535 (default 256; or cpu_weight)
//! cap     = 50                 # at most 50% of one pCPU (0 = no cap, the default)
//! cpus    = "0-1,3"            # pCPUs every vCPU may run on ("all": no pinning),
//! # or one list per vCPU:  cpus = ["0", "1-3"]  (vCPUs past the list are not pinned)
//! disk    = ['/srv/web.img,raw,xvda,rw']          # xl's disk specs (devspec.rs)
//! vif     = ['mac=00:16:3e:01:02:03,bridge=xenbr0'] # xl's vif specs (devspec.rs)
//! ```
//!
//! `disk` and `vif` are parsed and checked here; `create` refuses them until
//! Oxen has the device model that serves them (issue 11).
//!
//! One `key = value` per line. Strings are in double or single quotes, with no
//! escapes (use the other quote to include one); numbers are plain decimal;
//! lists (`cpus`, `disk`, `vif`) are strings in `[ ]`, on one line.
//! Relative paths are relative to the config file's directory. Everything
//! wrong is an error naming the file and line: nothing is silently ignored.

use std::fmt;
use std::path::{Path, PathBuf};

use oxen_abi::{valid_name, Action, CMDLINE_LEN, MAX_VCPUS, MAX_WEIGHT, MIN_MEMORY_MIB};

use crate::cpulist::{self, CpuList};
use crate::devspec::{self, DiskSpec, VifSpec};

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
    /// `weight` (xl's `cpu_weight`): the credit scheduler's, if set.
    pub weight: Option<u32>,
    /// `cap`, if set: percent of one pCPU. Its upper bound depends on the host.
    pub cap: Option<Setting<u32>>,
    /// `cpus`, if set. Whether its pCPUs exist depends on the host.
    pub cpus: Option<Setting<Cpus>>,
    /// `disk`: checked specs, with the line they are on.
    pub disks: Vec<Setting<DiskSpec>>,
    /// `vif`: checked specs (MACs filled in), with the line they are on.
    pub vifs: Vec<Setting<VifSpec>>,
}

/// A value whose check needs the host, with the line it is on for the error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub line: usize,
}

/// The `cpus` key: the vCPUs' affinity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cpus {
    /// `cpus = "0-1"`: every vCPU on these pCPUs.
    All(CpuList),
    /// `cpus = ["0", "1"]`: vCPU n on the nth; vCPUs past the list not pinned.
    PerVcpu(Vec<CpuList>),
}

/// What `create` sets between CREATE and UNPAUSE: the config's scheduling
/// settings checked against the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sched {
    pub weight: Option<u32>,
    pub cap: Option<u32>,
    /// vCPU n's pCPU mask at n; vCPUs past the end are not pinned.
    pub affinity: Vec<u64>,
}

impl Config {
    /// Whether `sched` needs the host's pCPU count.
    pub fn needs_host(&self) -> bool {
        self.cap.is_some() || self.cpus.is_some()
    }

    /// The scheduling settings for a host of `cpus` pCPUs (any value when
    /// `needs_host` is false); `file` names the config in errors.
    pub fn sched(&self, file: &str, cpus: u32) -> Result<Sched, ConfigError> {
        let err = |line: usize, msg: String| ConfigError {
            file: file.to_owned(),
            line: Some(line),
            msg,
        };
        let cap = match &self.cap {
            Some(Setting { value, line }) => {
                let most = 100 * u64::from(cpus);
                if u64::from(*value) > most {
                    return Err(err(
                        *line,
                        format!(
                            "cap = {value} is too high: this host has {}, so at most {most} \
                             (the cap is in percent of one pCPU; 0 = no cap)",
                            cpulist::host_cpus(cpus)
                        ),
                    ));
                }
                Some(*value)
            }
            None => None,
        };
        let affinity = match &self.cpus {
            None => Vec::new(),
            Some(Setting {
                value: Cpus::All(list),
                line,
            }) => {
                let mask = list
                    .mask(cpus)
                    .map_err(|m| err(*line, format!("cpus: {m}")))?;
                vec![mask; self.vcpus as usize]
            }
            Some(Setting {
                value: Cpus::PerVcpu(lists),
                line,
            }) => lists
                .iter()
                .enumerate()
                .map(|(n, l)| {
                    l.mask(cpus)
                        .map_err(|m| err(*line, format!("cpus (vCPU {n}): {m}")))
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Sched {
            weight: self.weight,
            cap,
            affinity,
        })
    }

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
        for d in &mut self.disks {
            fix(&mut d.value.target);
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
    "weight",
    "cpu_weight",
    "cap",
    "cpus",
    "disk",
    "vif",
];

/// Keys that are two names for one setting: (alias, canonical, what it is).
const ALIASES: &[(&str, &str, &str)] = &[
    ("extra", "cmdline", "the kernel command line"),
    ("cpu_weight", "weight", "the credit scheduler's weight"),
];

fn canonical(key: &str) -> &str {
    ALIASES
        .iter()
        .find(|(alias, _, _)| *alias == key)
        .map_or(key, |(_, c, _)| c)
}

/// xl keys people will bring along that Oxen's domains have nothing for yet.
const XL_ONLY_KEYS: &[&str] = &[
    "type",
    "builder",
    "maxmem",
    "pci",
    "bootloader",
    "root",
    "vfb",
    "serial",
    "cpus_soft",
    "pool",
    "uuid",
];

#[derive(Debug, PartialEq, Eq)]
enum Value {
    Str(String),
    Int(u64),
    /// Strings in `[ ]`.
    List(Vec<String>),
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
    let mut weight = None;
    let mut cap = None;
    let mut cpus = None;
    let mut disks = Vec::new();
    let mut vif_specs: Vec<(String, usize)> = Vec::new();
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

        if let Some(&(first_key, first)) = seen.iter().find(|(k, _)| canonical(k) == canonical(key))
        {
            return Err(err(
                n,
                if first_key == key {
                    format!("'{key}' is set twice (first on line {first})")
                } else {
                    let what = ALIASES
                        .iter()
                        .find(|(_, c, _)| *c == canonical(key))
                        .map_or("", |(_, _, what)| what);
                    format!(
                        "'{key}' and '{first_key}' (line {first}) are the same setting, {what}: keep one"
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
            "weight" | "cpu_weight" => {
                let v = number(key, value, "1 to 65535").map_err(|m| err(n, m))?;
                weight = Some(
                    u32::try_from(v)
                        .ok()
                        .filter(|w| (1..=MAX_WEIGHT).contains(w))
                        .ok_or_else(|| {
                            err(
                                n,
                                format!(
                                    "{key} = {v} is out of range: 1 to {MAX_WEIGHT} (default 256)"
                                ),
                            )
                        })?,
                );
            }
            "cap" => {
                let v = number(key, value, "percent of one pCPU").map_err(|m| err(n, m))?;
                let value =
                    u32::try_from(v).map_err(|_| err(n, format!("cap = {v} is out of range")))?;
                cap = Some(Setting { value, line: n });
            }
            "cpus" => {
                let value = match value {
                    Value::Str(s) => {
                        Cpus::All(CpuList::parse(&s).map_err(|m| err(n, format!("cpus: {m}")))?)
                    }
                    Value::List(items) if items.is_empty() => {
                        return Err(err(
                            n,
                            "cpus = []: give at least vCPU 0's pCPUs, or no cpus at all".into(),
                        ))
                    }
                    Value::List(items) => Cpus::PerVcpu(
                        items
                            .iter()
                            .enumerate()
                            .map(|(i, s)| {
                                CpuList::parse(s)
                                    .map_err(|m| err(n, format!("cpus (vCPU {i}): {m}")))
                            })
                            .collect::<Result<_, _>>()?,
                    ),
                    Value::Int(i) => {
                        return Err(err(
                            n,
                            format!(
                                "cpus takes a pCPU list in quotes (\"{i}\"), not the number {i}"
                            ),
                        ))
                    }
                };
                cpus = Some(Setting { value, line: n });
            }
            "disk" => {
                let items = spec_list(key, value).map_err(|m| err(n, m))?;
                for (i, item) in items.iter().enumerate() {
                    let d = devspec::parse_disk(item)
                        .map_err(|e| err(n, format!("disk {} ('{item}'): {e}", i + 1)))?;
                    disks.push(Setting { value: d, line: n });
                }
                let specs: Vec<DiskSpec> = disks.iter().map(|d| d.value.clone()).collect();
                devspec::check_disks(&specs).map_err(|e| err(n, format!("disk: {e}")))?;
            }
            "vif" => {
                let items = spec_list(key, value).map_err(|m| err(n, m))?;
                vif_specs.extend(items.into_iter().map(|s| (s, n)));
            }
            _ => return Err(err(n, unknown_key(key))),
        }
        seen.push((key, n));
    }

    if let Some(Setting {
        value: Cpus::PerVcpu(lists),
        line,
    }) = &cpus
    {
        if lists.len() > vcpus as usize {
            return Err(err(
                *line,
                format!(
                    "cpus lists pCPUs for {} vCPUs but the domain has {vcpus} (vcpus = {vcpus})",
                    lists.len()
                ),
            ));
        }
    }

    // A vif's default MAC comes from the domain's name, known only now.
    let dom_name = name.clone().unwrap_or_default();
    let mut vifs = Vec::new();
    for (i, (spec, line)) in vif_specs.iter().enumerate() {
        let v = devspec::parse_vif(spec, &dom_name, i as u32)
            .map_err(|e| err(*line, format!("vif {} ('{spec}'): {e}", i + 1)))?;
        vifs.push(Setting { value: v, line: *line });
    }
    let specs: Vec<VifSpec> = vifs.iter().map(|v| v.value.clone()).collect();
    if let (Err(e), Some(v)) = (devspec::check_vifs(&specs), vifs.last()) {
        return Err(err(v.line, format!("vif: {e}")));
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
        weight,
        cap,
        cpus,
        disks,
        vifs,
    })
}

/// `disk` and `vif` take a list of spec strings, as in xl (one string alone is
/// taken as a list of one).
fn spec_list(key: &str, value: Value) -> Result<Vec<String>, String> {
    match value {
        Value::List(items) => Ok(items),
        Value::Str(s) => Ok(vec![s]),
        Value::Int(i) => Err(format!("{key} takes a list of specs in quotes (['...']), not the number {i}")),
    }
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
                .find(|c: char| !c.is_ascii_alphanumeric() && !"_.%".contains(c))
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
        Some('[') => {
            let (items, after) = parse_list(&rest[1..])?;
            (Value::List(items), after)
        }
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

/// The strings of a list after its `[`, and what follows its `]`.
fn parse_list(mut rest: &str) -> Result<(Vec<String>, &str), String> {
    let mut items = Vec::new();
    loop {
        rest = rest.trim_start();
        match rest.chars().next() {
            None | Some('#') => {
                return Err("the list has no closing ] (a list must fit on its line)".into())
            }
            Some(']') => return Ok((items, &rest[1..])),
            Some(q @ ('"' | '\'')) => {
                let body = &rest[1..];
                let end = body
                    .find(q)
                    .ok_or_else(|| format!("a string in the list has no closing {q}"))?;
                items.push(body[..end].to_owned());
                rest = body[end + 1..].trim_start();
                match rest.chars().next() {
                    Some(',') => rest = &rest[1..],
                    Some(']') => {}
                    None | Some('#') => {
                        return Err("the list has no closing ] (a list must fit on its line)".into())
                    }
                    Some(_) => {
                        return Err(format!(
                            "expected ',' or ']' in the list, found '{}'",
                            rest.split_whitespace().next().unwrap_or(rest)
                        ))
                    }
                }
            }
            Some(_) => {
                let word = rest
                    .split(|c: char| c.is_whitespace() || c == ',' || c == ']')
                    .next()
                    .unwrap_or(rest);
                return Err(format!(
                    "'{word}' in the list: list items are strings in quotes (\"...\")"
                ));
            }
        }
    }
}

fn string(key: &str, v: Value) -> Result<String, String> {
    match v {
        Value::Str(s) if s.contains('\0') => Err(format!("{key} contains a NUL byte")),
        Value::Str(s) => Ok(s),
        Value::Int(i) => Err(format!(
            "{key} takes a string in quotes, not the number {i}"
        )),
        Value::List(_) => Err(format!("{key} takes a string in quotes, not a list")),
    }
}

fn number(key: &str, v: Value, unit: &str) -> Result<u64, String> {
    match v {
        Value::Int(i) => Ok(i),
        Value::Str(s) => Err(format!(
            "{key} takes a number ({unit}) without quotes, not the string \"{s}\""
        )),
        Value::List(_) => Err(format!(
            "{key} takes a number ({unit}) without quotes, not a list"
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
                weight: None,
                cap: None,
                cpus: None,
                disks: Vec::new(),
                vifs: Vec::new(),
            }
        );
    }

    #[test]
    fn disks_and_vifs() {
        let c = ok("name = \"web\"\nkernel = \"k\"\n\
                    disk = ['img/web.img,raw,xvda,rw', 'phy:/dev/vg0/data,xvdb,r']\n\
                    vif = ['bridge=xenbr0', 'mac=00:16:3e:0a:0b:0c,bridge=br1']\n");
        assert_eq!(c.disks.len(), 2);
        assert_eq!((c.disks[0].line, c.disks[1].value.index), (3, 1));
        assert_eq!(c.vifs.len(), 2);
        assert_eq!(c.vifs[0].value.mac, crate::devspec::default_mac("web", 0));
        assert_eq!(c.vifs[1].value.mac, [0, 0x16, 0x3e, 0x0a, 0x0b, 0x0c]);
        let mut c = c;
        c.resolve_paths(Path::new("/etc/oxen"));
        assert_eq!(c.disks[0].value.target, PathBuf::from("/etc/oxen/img/web.img"));
        assert_eq!(c.disks[1].value.target, PathBuf::from("/dev/vg0/data"));

        assert_eq!(
            fail("name = \"a\"\nkernel = \"k\"\ndisk = ['/a.img,raw,xvda,rw', '/b.img,qcow2,xvdb,rw']"),
            "vm.cfg:3: disk 2 ('/b.img,qcow2,xvdb,rw'): format=qcow2: Oxen serves raw images only \
             (convert with qemu-img convert -O raw)"
        );
        assert_eq!(
            fail("name = \"a\"\nkernel = \"k\"\ndisk = ['/a.img,raw,xvda,rw', '/b.img,raw,xvda,ro']"),
            "vm.cfg:3: disk: vdev xvda is used twice (/a.img and /b.img): give each disk its own"
        );
        assert_eq!(
            fail("name = \"a\"\nkernel = \"k\"\nvif = ['mac=ff:ff:ff:ff:ff:ff']"),
            "vm.cfg:3: vif 1 ('mac=ff:ff:ff:ff:ff:ff'): mac 'ff:ff:ff:ff:ff:ff' is a multicast address \
             (the first octet is odd): a NIC needs a unicast one"
        );
        assert_eq!(
            fail("name = \"a\"\nkernel = \"k\"\ndisk = 3"),
            "vm.cfg:3: disk takes a list of specs in quotes (['...']), not the number 3"
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
             on_poweroff, on_reboot, on_crash, weight, cpu_weight, cap, cpus, disk, vif)"
        );
        assert_eq!(
            fail("\npci = ['01:00.0']"),
            "vm.cfg:2: 'pci' is an xl setting that Oxen's domains do not have"
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
            fail("pci = [ \"x\" ]"),
            "vm.cfg:1: 'pci' is an xl setting that Oxen's domains do not have"
        );
        assert_eq!(
            fail("cpus = [ \"0\""),
            "vm.cfg:1: cpus: the list has no closing ] (a list must fit on its line)"
        );
        assert_eq!(
            fail("cpus = [ \"0\", # 1"),
            "vm.cfg:1: cpus: the list has no closing ] (a list must fit on its line)"
        );
        assert_eq!(
            fail("cpus = [ \"0\" \"1\" ]"),
            "vm.cfg:1: cpus: expected ',' or ']' in the list, found '\"1\"'"
        );
        assert_eq!(
            fail("cpus = [ 0, 1 ]"),
            "vm.cfg:1: cpus: '0' in the list: list items are strings in quotes (\"...\")"
        );
        assert_eq!(
            fail("cpus = [ \"0 ]"),
            "vm.cfg:1: cpus: a string in the list has no closing \""
        );
        assert_eq!(
            fail("cpus = [ \"0\" ] x"),
            "vm.cfg:1: cpus: unexpected 'x' after the value"
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

    const SCHED: &str = "name = \"web\"\nkernel = \"web.elf\"\nvcpus = 3\n";

    /// The scheduling settings of `SCHED` plus `extra`, on a host of `cpus` pCPUs.
    fn sched(extra: &str, cpus: u32) -> Result<Sched, String> {
        ok(&format!("{SCHED}{extra}"))
            .sched("vm.cfg", cpus)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn scheduling_settings() {
        let c = ok(SCHED);
        assert_eq!((c.weight, &c.cap, &c.cpus), (None, &None, &None));
        assert!(!c.needs_host());
        assert_eq!(c.sched("vm.cfg", 0), Ok(Sched::default()));

        let c = ok(&format!(
            "{SCHED}weight = 512\ncap = 150\ncpus = \"0-1,3\" # pinned\n"
        ));
        assert_eq!(c.weight, Some(512));
        assert_eq!(
            c.cap,
            Some(Setting {
                value: 150,
                line: 5
            })
        );
        assert_eq!(
            c.cpus,
            Some(Setting {
                value: Cpus::All(CpuList::parse("0-1,3").unwrap()),
                line: 6
            })
        );
        assert!(c.needs_host());
        assert_eq!(
            c.sched("vm.cfg", 4),
            Ok(Sched {
                weight: Some(512),
                cap: Some(150),
                affinity: vec![0b1011; 3],
            })
        );
        // xl's name for the weight, the bounds, a cap of 0.
        assert_eq!(
            sched("cpu_weight = 1\ncap = 0\n", 1).unwrap().weight,
            Some(1)
        );
        assert_eq!(sched("cpu_weight = 1\ncap = 0\n", 1).unwrap().cap, Some(0));
        assert_eq!(sched("weight = 65535\n", 1).unwrap().weight, Some(65535));
        assert_eq!(sched("cap = 400\n", 4).unwrap().cap, Some(400));
        assert_eq!(sched("cpus = 'all'\n", 2).unwrap().affinity, [0b11; 3]);
        // One list per vCPU; vCPUs past its end are not pinned.
        assert_eq!(
            sched("cpus = [ \"0\", 'all,^0' ]\n", 4).unwrap().affinity,
            [0b1, 0b1110]
        );
        assert_eq!(
            sched("cpus = [\"0\",\"1\",\"1\",]\n", 2).unwrap().affinity,
            [0b1, 0b10, 0b10]
        );
    }

    #[test]
    fn bad_scheduling_settings() {
        assert_eq!(
            fail("weight = 0"),
            "vm.cfg:1: weight = 0 is out of range: 1 to 65535 (default 256)"
        );
        assert_eq!(
            fail("cpu_weight = 65536"),
            "vm.cfg:1: cpu_weight = 65536 is out of range: 1 to 65535 (default 256)"
        );
        assert_eq!(
            fail("weight = \"512\""),
            "vm.cfg:1: weight takes a number (1 to 65535) without quotes, not the string \"512\""
        );
        assert_eq!(
            fail("weight = 512\ncpu_weight = 256"),
            "vm.cfg:2: 'cpu_weight' and 'weight' (line 1) are the same setting, \
             the credit scheduler's weight: keep one"
        );
        assert_eq!(
            fail("cap = -1"),
            "vm.cfg:1: cap: negative numbers are out of range here"
        );
        assert_eq!(
            fail("cap = 4294967296"),
            "vm.cfg:1: cap = 4294967296 is out of range"
        );
        assert_eq!(
            fail("cap = 50%"),
            "vm.cfg:1: cap: '50%' is not a number (plain decimal digits, no unit)"
        );
        assert_eq!(
            fail("cap = [\"1\"]"),
            "vm.cfg:1: cap takes a number (percent of one pCPU) without quotes, not a list"
        );
        assert_eq!(
            fail("cap = 1\ncap = 2"),
            "vm.cfg:2: 'cap' is set twice (first on line 1)"
        );
        assert_eq!(
            fail("cpus = 3"),
            "vm.cfg:1: cpus takes a pCPU list in quotes (\"3\"), not the number 3"
        );
        assert_eq!(
            fail("cpus = \"\""),
            "vm.cfg:1: cpus: the CPU list is empty: give pCPUs like 0-1,3, or all"
        );
        assert_eq!(
            fail("cpus = \"3-1\""),
            "vm.cfg:1: cpus: '3-1' is not a range: the first pCPU comes first (1-3)"
        );
        assert_eq!(
            fail("cpus = \"nodes:0\""),
            "vm.cfg:1: cpus: 'nodes:0': NUMA nodes are not supported (Oxen knows no NUMA topology): list pCPUs"
        );
        assert_eq!(
            fail("cpus = [\"0\", \"x\"]"),
            "vm.cfg:1: cpus (vCPU 1): 'x' is not a pCPU, a range of them (N-M) or all"
        );
        assert_eq!(
            fail("cpus = []"),
            "vm.cfg:1: cpus = []: give at least vCPU 0's pCPUs, or no cpus at all"
        );
        assert_eq!(
            fail(&format!(
                "{MINIMAL}cpus = [\"0\", \"1\"]\n# vcpus below\nvcpus = 1\n"
            )),
            "vm.cfg:3: cpus lists pCPUs for 2 vCPUs but the domain has 1 (vcpus = 1)"
        );
        assert_eq!(
            fail("cpus_soft = \"0\""),
            "vm.cfg:1: 'cpus_soft' is an xl setting that Oxen's domains do not have"
        );
        assert_eq!(
            fail("weigth = 5"),
            "vm.cfg:1: unknown key 'weigth' (did you mean 'weight'?)"
        );
        assert_eq!(
            fail("memory = [\"64\"]"),
            "vm.cfg:1: memory takes a number (MiB) without quotes, not a list"
        );
        assert_eq!(
            fail("name = ['web']"),
            "vm.cfg:1: name takes a string in quotes, not a list"
        );
    }

    #[test]
    fn scheduling_settings_against_the_host() {
        assert_eq!(
            sched("cap = 201\n", 2).unwrap_err(),
            "vm.cfg:4: cap = 201 is too high: this host has 2 pCPUs (0-1), so at most 200 \
             (the cap is in percent of one pCPU; 0 = no cap)"
        );
        assert_eq!(
            sched("\ncpus = \"0-2\"\n", 2).unwrap_err(),
            "vm.cfg:5: cpus: pCPU 2 does not exist: this host has 2 pCPUs (0-1)"
        );
        assert_eq!(
            sched("cpus = [\"0\", \"4\"]\n", 2).unwrap_err(),
            "vm.cfg:4: cpus (vCPU 1): pCPU 4 does not exist: this host has 2 pCPUs (0-1)"
        );
        assert_eq!(
            sched("cpus = \"all,^0\"\n", 1).unwrap_err(),
            "vm.cfg:4: cpus: 'all,^0' leaves no pCPU to run on \
             (^N takes pCPUs out of what the items before it add, e.g. all,^1)"
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
