//! pCPU lists in xl's notation, for `vcpu-pin`, the `cpus` config key and
//! printing affinities: `all`, `3`, `0-2,5`, `all,^1`, `0-3,^2`.
//!
//! Items are applied left to right to an empty set: `N` and `N-M` add pCPUs,
//! `all` adds every pCPU of the host, a leading `^` takes them out again. The
//! syntax is checked on its own (`CpuList::parse`); whether the pCPUs exist
//! only once the host's count is known (`CpuList::mask`).

use std::fmt::Write as _;

/// pCPUs an affinity can name: the bits of the ABI's `u64` mask.
pub const MAX_CPUS: u32 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Item {
    All,
    /// First and last pCPU, both included.
    Range(u32, u32),
}

/// A parsed CPU list, not yet applied to a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList {
    text: String,
    /// (excluded, item), in order.
    items: Vec<(bool, Item)>,
}

impl CpuList {
    /// Checks the syntax of `text`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the CPU list is empty: give pCPUs like 0-1,3, or all".into());
        }
        let mut items = Vec::new();
        for raw in text.split(',') {
            let item = raw.trim();
            let (excluded, body) = match item.strip_prefix('^') {
                Some(rest) => (true, rest.trim_start()),
                None => (false, item),
            };
            if body.is_empty() {
                return Err(format!(
                    "'{text}' has an empty item: separate pCPUs and ranges with single commas"
                ));
            }
            if body.starts_with("node") {
                return Err(format!(
                    "'{item}': NUMA nodes are not supported (Oxen knows no NUMA topology): list pCPUs"
                ));
            }
            let parsed = if body == "all" {
                Item::All
            } else {
                let (lo, hi) = match body.split_once('-') {
                    Some((lo, hi)) => (cpu(lo.trim(), item)?, cpu(hi.trim(), item)?),
                    None => {
                        let c = cpu(body, item)?;
                        (c, c)
                    }
                };
                if lo > hi {
                    return Err(format!(
                        "'{item}' is not a range: the first pCPU comes first ({hi}-{lo})"
                    ));
                }
                Item::Range(lo, hi)
            };
            items.push((excluded, parsed));
        }
        Ok(Self {
            text: text.to_owned(),
            items,
        })
    }

    /// The pCPU mask on a host with `cpus` pCPUs: every pCPU the list adds
    /// must exist, and at least one must be left.
    pub fn mask(&self, cpus: u32) -> Result<u64, String> {
        let online = online_mask(cpus);
        let mut mask = 0u64;
        for &(excluded, item) in &self.items {
            let bits = match item {
                Item::All => online,
                Item::Range(lo, hi) => {
                    if !excluded && hi >= cpus {
                        return Err(format!(
                            "pCPU {} does not exist: this host has {}",
                            lo.max(cpus),
                            host_cpus(cpus)
                        ));
                    }
                    range_mask(lo, hi)
                }
            };
            if excluded {
                mask &= !bits;
            } else {
                mask |= bits;
            }
        }
        if mask == 0 {
            return Err(format!(
                "'{}' leaves no pCPU to run on (^N takes pCPUs out of what the items before it add, e.g. all,^1)",
                self.text
            ));
        }
        Ok(mask)
    }
}

/// One pCPU number of `item`.
fn cpu(s: &str, item: &str) -> Result<u32, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "'{item}' is not a pCPU, a range of them (N-M) or all"
        ));
    }
    match s.parse::<u32>() {
        Ok(n) if n < MAX_CPUS => Ok(n),
        _ => Err(format!(
            "pCPU {s} is out of range: Oxen numbers pCPUs 0 to {}",
            MAX_CPUS - 1
        )),
    }
}

fn range_mask(lo: u32, hi: u32) -> u64 {
    let upper = if hi >= 63 {
        u64::MAX
    } else {
        (1u64 << (hi + 1)) - 1
    };
    upper & !((1u64 << lo) - 1)
}

/// The mask of a host's `cpus` pCPUs (0 to cpus - 1).
pub fn online_mask(cpus: u32) -> u64 {
    match cpus {
        0 => 0,
        c if c >= MAX_CPUS => u64::MAX,
        c => (1u64 << c) - 1,
    }
}

/// "2 pCPUs (0-1)": a host's pCPUs, for messages.
pub fn host_cpus(cpus: u32) -> String {
    match cpus {
        0 => "no pCPUs".into(),
        1 => "1 pCPU (0)".into(),
        c => format!("{c} pCPUs ({})", ranges(online_mask(c))),
    }
}

/// The pCPUs of `mask` as ranges, `0-1,3` ("" for none).
pub fn ranges(mask: u64) -> String {
    let mut s = String::new();
    let mut n = 0;
    while n < MAX_CPUS {
        if mask & (1 << n) == 0 {
            n += 1;
            continue;
        }
        let start = n;
        while n + 1 < MAX_CPUS && mask & (1 << (n + 1)) != 0 {
            n += 1;
        }
        if !s.is_empty() {
            s.push(',');
        }
        if start == n {
            let _ = write!(s, "{n}");
        } else {
            let _ = write!(s, "{start}-{n}");
        }
        n += 1;
    }
    s
}

/// An affinity as `vcpu-list` prints it on a host with `cpus` pCPUs: `all`
/// when it allows every pCPU, else its pCPUs as ranges (`none` if it allows
/// none of the host's).
pub fn affinity(mask: u64, cpus: u32) -> String {
    let online = online_mask(cpus);
    if online != 0 && mask & online == online {
        return "all".into();
    }
    match ranges(mask & online) {
        s if s.is_empty() => "none".into(),
        s => s,
    }
}

/// The pCPUs of `mask` among the host's, in order.
pub fn cpus_of(mask: u64, cpus: u32) -> Vec<u32> {
    let m = mask & online_mask(cpus);
    (0..MAX_CPUS).filter(|&n| m & (1 << n) != 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(text: &str, cpus: u32) -> Result<u64, String> {
        CpuList::parse(text)?.mask(cpus)
    }

    #[test]
    fn lists_become_masks() {
        assert_eq!(mask("all", 4), Ok(0b1111));
        assert_eq!(mask("0", 4), Ok(0b1));
        assert_eq!(mask("0-1,3", 4), Ok(0b1011));
        assert_eq!(mask(" 1 , 3 ", 4), Ok(0b1010));
        assert_eq!(mask("0-3,^1", 4), Ok(0b1101));
        assert_eq!(mask("all,^0-1", 4), Ok(0b1100));
        // Left to right: a later item adds back what an earlier one took out.
        assert_eq!(mask("all,^1,1", 2), Ok(0b11));
        // Taking out a pCPU the host lacks is harmless.
        assert_eq!(mask("all,^5", 2), Ok(0b11));
        assert_eq!(mask("0-63", 64), Ok(u64::MAX));
        assert_eq!(mask("63", 64), Ok(1 << 63));
        assert_eq!(mask("all", 64), Ok(u64::MAX));
        assert_eq!(CpuList::parse(" 0-1 ").unwrap().text, "0-1");
    }

    #[test]
    fn bad_lists_say_why() {
        assert_eq!(
            mask("", 2).unwrap_err(),
            "the CPU list is empty: give pCPUs like 0-1,3, or all"
        );
        assert_eq!(
            mask("0,,1", 2).unwrap_err(),
            "'0,,1' has an empty item: separate pCPUs and ranges with single commas"
        );
        assert_eq!(
            mask("0,", 2).unwrap_err(),
            "'0,' has an empty item: separate pCPUs and ranges with single commas"
        );
        assert_eq!(
            mask("x", 2).unwrap_err(),
            "'x' is not a pCPU, a range of them (N-M) or all"
        );
        assert_eq!(
            mask("1-", 2).unwrap_err(),
            "'1-' is not a pCPU, a range of them (N-M) or all"
        );
        assert_eq!(
            mask("-1", 2).unwrap_err(),
            "'-1' is not a pCPU, a range of them (N-M) or all"
        );
        assert_eq!(
            mask("+1", 2).unwrap_err(),
            "'+1' is not a pCPU, a range of them (N-M) or all"
        );
        assert_eq!(
            mask("3-1", 4).unwrap_err(),
            "'3-1' is not a range: the first pCPU comes first (1-3)"
        );
        assert_eq!(
            mask("64", 2).unwrap_err(),
            "pCPU 64 is out of range: Oxen numbers pCPUs 0 to 63"
        );
        assert_eq!(
            mask("99999999999", 2).unwrap_err(),
            "pCPU 99999999999 is out of range: Oxen numbers pCPUs 0 to 63"
        );
        assert_eq!(
            mask("nodes:0", 2).unwrap_err(),
            "'nodes:0': NUMA nodes are not supported (Oxen knows no NUMA topology): list pCPUs"
        );
        assert_eq!(
            mask("2", 2).unwrap_err(),
            "pCPU 2 does not exist: this host has 2 pCPUs (0-1)"
        );
        assert_eq!(
            mask("0-5", 2).unwrap_err(),
            "pCPU 2 does not exist: this host has 2 pCPUs (0-1)"
        );
        assert_eq!(
            mask("1", 1).unwrap_err(),
            "pCPU 1 does not exist: this host has 1 pCPU (0)"
        );
        assert_eq!(
            mask("^1", 2).unwrap_err(),
            "'^1' leaves no pCPU to run on (^N takes pCPUs out of what the items before it add, e.g. all,^1)"
        );
        assert_eq!(
            mask("all,^0-1", 2).unwrap_err(),
            "'all,^0-1' leaves no pCPU to run on (^N takes pCPUs out of what the items before it add, e.g. all,^1)"
        );
    }

    #[test]
    fn masks_print_as_ranges() {
        assert_eq!(ranges(0), "");
        assert_eq!(ranges(0b1), "0");
        assert_eq!(ranges(0b1011), "0-1,3");
        assert_eq!(ranges(0b1010_1110), "1-3,5,7");
        assert_eq!(ranges(u64::MAX), "0-63");
        assert_eq!(ranges(1 << 63 | 1 << 62 | 1), "0,62-63");
        assert_eq!(affinity(0b11, 2), "all");
        assert_eq!(affinity(u64::MAX, 2), "all");
        assert_eq!(affinity(0b10, 2), "1");
        assert_eq!(affinity(0b1011, 4), "0-1,3");
        assert_eq!(affinity(0b100, 2), "none");
        assert_eq!(affinity(u64::MAX, 64), "all");
        assert_eq!(cpus_of(0b1011, 4), [0, 1, 3]);
        assert_eq!(cpus_of(u64::MAX, 2), [0, 1]);
        assert_eq!(host_cpus(4), "4 pCPUs (0-3)");
        assert_eq!(host_cpus(0), "no pCPUs");
        // What prints parses back to the same mask.
        for m in [0b1u64, 0b1011, 0b1010_1110, 0xf0f0] {
            assert_eq!(mask(&ranges(m), 16), Ok(m));
        }
    }
}
