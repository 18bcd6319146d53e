//! Parsers for the values users type: sizes, durations, CPU counts, `K=V`
//! and `SRC:DST[:ro|rw]`. Each error names what was given and the accepted form.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::Mount;

/// A value that does not have the accepted form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value '{given}': expected {expected}")]
pub struct ParseError {
    /// What the user gave.
    pub given: String,
    /// The accepted form, in words.
    pub expected: String,
}

impl ParseError {
    pub(crate) fn new(given: &str, expected: &str) -> Self {
        ParseError {
            given: given.to_string(),
            expected: expected.to_string(),
        }
    }
}

const SIZE_FORM: &str = "a size such as 512K, 64M or 1G (a number with an optional K, M, G or T suffix, powers of 1024)";

/// Parses `64M`, `1G`, `512K`, `1.5G`, `4096` (bytes). Suffixes are powers of
/// 1024; an optional trailing `B`/`iB` is accepted (`64MiB`). Zero is refused.
pub fn parse_size(s: &str) -> Result<u64, ParseError> {
    let err = || ParseError::new(s, SIZE_FORM);
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let body = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (num, mult): (&str, u64) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 1 << 10),
        Some('m') => (&body[..body.len() - 1], 1 << 20),
        Some('g') => (&body[..body.len() - 1], 1 << 30),
        Some('t') => (&body[..body.len() - 1], 1 << 40),
        Some(c) if c.is_ascii_digit() => (body, 1),
        _ => return Err(err()),
    };
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(err());
    }
    let value: f64 = num.parse().map_err(|_| err())?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > (1u64 << 50) as f64 {
        return Err(err());
    }
    Ok(bytes as u64)
}

const DURATION_FORM: &str =
    "a duration such as 500ms, 10s, 2m or 1h (a number with a ms, s, m or h suffix)";

/// Parses `500ms`, `10s`, `1.5s`, `2m`, `1h`. A bare number means seconds.
/// Zero is refused.
pub fn parse_duration(s: &str) -> Result<Duration, ParseError> {
    let err = || ParseError::new(s, DURATION_FORM);
    let t = s.trim();
    let (num, unit_secs) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(err());
    }
    let value: f64 = num.parse().map_err(|_| err())?;
    let secs = value * unit_secs;
    if !secs.is_finite() || secs <= 0.0 || secs > 365.0 * 86400.0 {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a CPU quota in cores (`1`, `0.5`, `2`) into millicores; at least
/// 0.01 core, at most 1024.
pub fn parse_cpus(s: &str) -> Result<u64, ParseError> {
    let err = || ParseError::new(s, "a number of cores such as 1, 0.5 or 2 (0.01 to 1024)");
    let t = s.trim();
    if t.is_empty() || !t.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(err());
    }
    let cores: f64 = t.parse().map_err(|_| err())?;
    if !(0.01..=1024.0).contains(&cores) {
        return Err(err());
    }
    Ok((cores * 1000.0).round() as u64)
}

/// Parses `KEY=VALUE`. The key must be non-empty and hold no `=` or NUL; the
/// value may be empty but holds no NUL.
pub fn parse_env(s: &str) -> Result<(String, String), ParseError> {
    let err = || ParseError::new(s, "KEY=VALUE with a non-empty KEY");
    let (k, v) = s.split_once('=').ok_or_else(err)?;
    if k.is_empty() || k.contains('\0') || v.contains('\0') {
        return Err(err());
    }
    Ok((k.to_string(), v.to_string()))
}

/// Parses `SRC:DST[:ro|rw]` (default `ro`). Both paths must be absolute and
/// `DST` must not contain `..`; whether `SRC` exists is checked when the
/// sandbox is made.
pub fn parse_mount(s: &str) -> Result<Mount, ParseError> {
    let form = "SRC:DST[:ro|rw] with absolute paths (e.g. /data:/mnt/data:ro)";
    let err = || ParseError::new(s, form);
    let parts: Vec<&str> = s.split(':').collect();
    let (src, dst, writable) = match parts.as_slice() {
        [src, dst] => (*src, *dst, false),
        [src, dst, "ro"] => (*src, *dst, false),
        [src, dst, "rw"] => (*src, *dst, true),
        _ => return Err(err()),
    };
    let source = PathBuf::from(src);
    let target = PathBuf::from(dst);
    if !source.is_absolute()
        || !target.is_absolute()
        || has_dot_dot(&target)
        || target == Path::new("/")
    {
        return Err(err());
    }
    if src.contains('\0') || dst.contains('\0') {
        return Err(err());
    }
    Ok(Mount {
        source,
        target,
        writable,
    })
}

fn has_dot_dot(p: &Path) -> bool {
    p.components().any(|c| matches!(c, Component::ParentDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1.5K"), Ok(1536));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in [
            "",
            "M",
            "0",
            "-1M",
            "12X",
            "1..2M",
            "abc",
            "1e9",
            "99999999T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        for bad in ["", "0s", "-1s", "ms", "10x", "1d"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("1"), Ok(1000));
        assert_eq!(parse_cpus("0.5"), Ok(500));
        assert_eq!(parse_cpus("2"), Ok(2000));
        for bad in ["0", "", "-1", "abc", "0.001", "5000"] {
            assert!(parse_cpus(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn env_pairs() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_env("A="), Ok(("A".into(), "".into())));
        assert!(parse_env("=x").is_err());
        assert!(parse_env("noeq").is_err());
    }

    #[test]
    fn mounts() {
        let m = parse_mount("/data:/mnt/data").expect("valid");
        assert!(!m.writable);
        assert!(parse_mount("/data:/mnt/data:rw").expect("valid").writable);
        for bad in [
            "data:/mnt",
            "/data:mnt",
            "/data",
            "/a:/b:xx",
            "/a:/../etc",
            "/a:/",
            "/a:/b:rw:extra",
        ] {
            assert!(parse_mount(bad).is_err(), "{bad} should be refused");
        }
    }
}
