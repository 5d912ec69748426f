//! The memory budget: every allocation whose size comes from a file (a decoded section, a
//! regenerated tensor, the predictor's activations, a training run) is compared with one limit
//! before it is made, so that a small file that truthfully declares gigabytes is refused with
//! a typed error instead of aborting the process when the allocator gives up.
//!
//! The limit is process-wide: the CLI sets it from `--max-memory`; without it, it is half of
//! the machine's physical memory (`MemTotal` in `/proc/meminfo`), or 4 GiB where that cannot be
//! read. Half, because the estimates are estimates and the machine runs other programs.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};

/// Limit used where the machine's memory cannot be read.
pub const FALLBACK_LIMIT: u64 = 4 << 30;

/// The configured limit in bytes; 0 means "the machine's default".
static LIMIT: AtomicU64 = AtomicU64::new(0);

/// Sets the process-wide limit (`--max-memory`); 0 restores the machine's default.
pub fn set_limit(bytes: u64) {
    LIMIT.store(bytes, Ordering::Relaxed);
}

/// The budget in force.
pub fn current() -> Budget {
    match LIMIT.load(Ordering::Relaxed) {
        0 => Budget { limit: machine_default() },
        limit => Budget { limit },
    }
}

/// Half of the physical memory, or [`FALLBACK_LIMIT`].
pub fn machine_default() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok()
    });
    total_kib.map_or(FALLBACK_LIMIT, |k| k.saturating_mul(1024) / 2)
}

/// A limit on the memory one operation may allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    limit: u64,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Budget { limit }
    }

    /// The limit in bytes.
    pub fn limit(self) -> u64 {
        self.limit
    }

    /// Fails with [`Error::Budget`] when `need` bytes exceed the limit; `what` names the
    /// file, tensor or option responsible.
    pub fn check(self, what: impl FnOnce() -> String, need: u64) -> Result<()> {
        if need > self.limit {
            return Err(Error::Budget { what: what(), need, limit: self.limit });
        }
        Ok(())
    }
}

/// Parses a size such as `8G`, `512M`, `64k` or `1000000` (binary multiples; a trailing `B`
/// or `iB` is accepted).
pub fn parse_size(s: &str) -> Result<u64> {
    let err =
        || Error::usage("--max-memory", format!("{s:?} is not a size such as 8G, 512M or 1000000 (bytes)"));
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (digits, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        Some('T') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let v: f64 = digits.trim().parse().map_err(|_| err())?;
    let bytes = v * (1u64 << shift) as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(err());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("8G").unwrap(), 8 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        for bad in ["", "G", "-1G", "0", "lots", "1e400"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn check_names_what_and_sizes() {
        let e = Budget::new(100).check(|| "tensor w".into(), 101).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("tensor w") && msg.contains("101 bytes") && msg.contains("--max-memory"),
            "{msg}"
        );
        assert!(Budget::new(100).check(|| unreachable!(), 100).is_ok());
    }
}
