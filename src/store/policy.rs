//! Which entries go first when the cache is over its size limit.

use std::fmt;
use std::str::FromStr;

use crate::error::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Least recently used.
    Lru,
    /// Least frequently used (ties: least recently used).
    Lfu,
    /// Oldest first.
    Fifo,
    /// Largest first.
    Size,
    /// Cheapest to recompute per byte first: compute time × (hits + 1) ÷ bytes.
    Hybrid,
}

pub const ALLOWED: &str = "'lru', 'lfu', 'fifo', 'size', 'hybrid'";

/// What a policy looks at for one entry.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub created: f64,
    pub last_access: f64,
    pub hits: u64,
    pub bytes: u64,
    pub compute_time: f64,
}

impl Policy {
    /// Entries with lower scores are evicted first.
    pub fn score(self, u: &Usage) -> f64 {
        let last_used = u.last_access.max(u.created);
        match self {
            Policy::Lru => last_used,
            // Hits dominate; the recency fraction only breaks ties.
            Policy::Lfu => u.hits as f64 + last_used / 1e12,
            Policy::Fifo => u.created,
            Policy::Size => -(u.bytes as f64),
            // An unknown compute time counts as 1 ms, so hybrid still prefers keeping small,
            // popular entries when no times were recorded.
            Policy::Hybrid => u.compute_time.max(1e-3) * (u.hits as f64 + 1.0) / (u.bytes.max(1) as f64),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Policy::Lru => "lru",
            Policy::Lfu => "lfu",
            Policy::Fifo => "fifo",
            Policy::Size => "size",
            Policy::Hybrid => "hybrid",
        }
    }
}

impl FromStr for Policy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "lru" => Policy::Lru,
            "lfu" => Policy::Lfu,
            "fifo" => Policy::Fifo,
            "size" => Policy::Size,
            "hybrid" => Policy::Hybrid,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "eviction_policy={other:?} is not a policy; use one of {ALLOWED}"
                )))
            }
        })
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(created: f64, last_access: f64, hits: u64, bytes: u64, compute_time: f64) -> Usage {
        Usage { created, last_access, hits, bytes, compute_time }
    }

    #[test]
    fn each_policy_picks_its_victim_first() {
        let old_unused = usage(1.0, 0.0, 0, 10, 1.0);
        let recent_popular_big = usage(2.0, 9.0, 50, 1000, 1.0);
        let lowest = |p: Policy, a: &Usage, b: &Usage| p.score(a) < p.score(b);
        assert!(lowest(Policy::Lru, &old_unused, &recent_popular_big));
        assert!(lowest(Policy::Lfu, &old_unused, &recent_popular_big));
        assert!(lowest(Policy::Fifo, &old_unused, &recent_popular_big));
        assert!(lowest(Policy::Size, &recent_popular_big, &old_unused));
        // Cheap and large goes before expensive and small under hybrid.
        let cheap_large = usage(0.0, 0.0, 0, 1_000_000, 0.01);
        let costly_small = usage(0.0, 0.0, 0, 1_000, 60.0);
        assert!(lowest(Policy::Hybrid, &cheap_large, &costly_small));
    }

    #[test]
    fn unknown_names_list_the_allowed_ones() {
        let err = "random".parse::<Policy>().unwrap_err().to_string();
        assert!(err.contains("'lru', 'lfu', 'fifo', 'size', 'hybrid'"), "{err}");
        assert_eq!("hybrid".parse::<Policy>().unwrap(), Policy::Hybrid);
    }
}
