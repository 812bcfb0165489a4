//! Guest command lines: options separated by spaces, each `key` or `key=value`.

/// One option of a command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opt<'a> {
    pub key: &'a str,
    pub value: Option<&'a str>,
    /// The option as written, for messages.
    pub text: &'a str,
}

/// The options of `line`, in order.
pub fn options(line: &str) -> impl Iterator<Item = Opt<'_>> {
    line.split_ascii_whitespace().map(|text| match text.split_once('=') {
        Some((key, value)) => Opt { key, value: Some(value), text },
        None => Opt { key: text, value: None, text },
    })
}

/// A number: decimal, or hexadecimal after `0x`; `_` separators allowed.
pub fn parse_u64(s: &str) -> Option<u64> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (s, 10),
    };
    let mut v: u64 = 0;
    let mut any = false;
    for c in digits.chars() {
        if c == '_' {
            continue;
        }
        v = v.checked_mul(radix)?.checked_add(c.to_digit(radix as u32)?.into())?;
        any = true;
    }
    any.then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_keys_and_values() {
        let v: Vec<Opt<'_>> = options("  interval_ms=500 ignore_shutdown mode=spin-cli x= =y ").collect();
        assert_eq!(v.len(), 5);
        assert_eq!((v[0].key, v[0].value, v[0].text), ("interval_ms", Some("500"), "interval_ms=500"));
        assert_eq!((v[1].key, v[1].value), ("ignore_shutdown", None));
        assert_eq!((v[2].key, v[2].value), ("mode", Some("spin-cli")));
        assert_eq!((v[3].key, v[3].value), ("x", Some("")));
        assert_eq!((v[4].key, v[4].value), ("", Some("y")));
        assert_eq!(options("").count(), 0);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64("1000"), Some(1000));
        assert_eq!(parse_u64("0x10_0000"), Some(0x10_0000));
        assert_eq!(parse_u64("100_000"), Some(100_000));
        assert_eq!(parse_u64(""), None);
        assert_eq!(parse_u64("0x"), None);
        assert_eq!(parse_u64("12a"), None);
        assert_eq!(parse_u64("-1"), None);
        assert_eq!(parse_u64("18446744073709551616"), None);
        assert_eq!(parse_u64("18446744073709551615"), Some(u64::MAX));
    }
}
