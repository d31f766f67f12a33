//! A limit on log lines whose rate the guest sets (a boot-timer write, a refused suspend), so
//! that a guest cannot flood the host's log. Shared by every thread; lock-free.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Allows at most `per_second` lines in each wall-clock second; the rest are counted and
/// reported with the next line allowed.
#[derive(Debug)]
pub struct LogLimit {
    per_second: u64,
    /// The second the count is for.
    second: AtomicU64,
    /// Lines asked for in that second.
    count: AtomicU64,
    /// Lines refused since the last one allowed.
    suppressed: AtomicU64,
}

impl LogLimit {
    /// A limit of `per_second` lines a second.
    pub const fn new(per_second: u64) -> Self {
        Self {
            per_second,
            second: AtomicU64::new(0),
            count: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may be logged now. The first line allowed after some were refused
    /// also logs how many were.
    pub fn allow(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        self.allow_at(now)
    }

    fn allow_at(&self, second: u64) -> bool {
        if self.second.swap(second, Ordering::Relaxed) != second {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) >= self.per_second {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        if suppressed > 0 {
            log::warn!("{suppressed} similar guest-triggered log lines were suppressed");
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_rate_then_counts_until_the_next_second() {
        let limit = LogLimit::new(3);
        let allowed: Vec<bool> = (0..10).map(|_| limit.allow_at(100)).collect();
        assert_eq!(allowed.iter().filter(|&&ok| ok).count(), 3);
        assert_eq!(limit.suppressed.load(Ordering::Relaxed), 7);
        assert!(limit.allow_at(101));
        assert_eq!(limit.suppressed.load(Ordering::Relaxed), 0);
    }
}
