//! What a live source (an event hub, a storage account) has done and what is wrong with it, for
//! logs, the run summary and `--once`'s exit status.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The same error is logged at most this often: sign-ins are retried every few seconds.
const REPEAT_LOG: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct SourceStatus {
    /// Units handed to the mapper (messages, blob reads).
    pub units: AtomicU64,
    /// Position commits (partitions committed, position files written).
    pub commits: AtomicU64,
    pub rebalances: AtomicU64,
    /// Set while the source's credentials are refused; cleared when they work again.
    pub auth_failed: AtomicBool,
    last_error: Mutex<Option<(String, Instant)>>,
}

impl SourceStatus {
    pub fn committed(&self, count: usize) {
        self.commits.fetch_add(count as u64, Ordering::Relaxed);
    }

    /// The credentials were refused: an error naming what to check, logged at most once a
    /// minute while it lasts.
    pub fn auth_refused(&self, message: &str) {
        self.auth_failed.store(true, Ordering::Relaxed);
        if self.remember(message) {
            tracing::error!("{message}");
        }
    }

    pub fn auth_works(&self) {
        if self.auth_failed.swap(false, Ordering::Relaxed) {
            tracing::info!("credentials accepted again");
        }
    }

    /// A passing problem that is retried (a broker or the service unreachable for a moment).
    pub fn retrying(&self, message: &str) {
        if self.remember(message) {
            tracing::warn!("{message} (retried)");
        }
    }

    /// Records the last error; true when it should be logged (new, or not logged for a while).
    fn remember(&self, message: &str) -> bool {
        let Ok(mut last) = self.last_error.lock() else {
            return false;
        };
        let fresh = match &*last {
            Some((previous, at)) => previous != message || at.elapsed() >= REPEAT_LOG,
            None => true,
        };
        if fresh {
            *last = Some((message.to_string(), Instant::now()));
        }
        fresh
    }

    /// The last error seen, whatever its kind.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .ok()
            .and_then(|l| l.as_ref().map(|(m, _)| m.clone()))
    }

    /// The error that keeps this source from reading, while it lasts.
    pub fn failure(&self) -> Option<String> {
        if !self.auth_failed.load(Ordering::Relaxed) {
            return None;
        }
        self.last_error
            .lock()
            .ok()
            .and_then(|l| l.as_ref().map(|(m, _)| m.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_the_failure_until_the_credentials_work_again() {
        let s = SourceStatus::default();
        assert_eq!(s.failure(), None);
        s.retrying("broker down");
        assert_eq!(s.failure(), None, "a passing problem is no failure");
        s.auth_refused("event hub x: refused");
        assert_eq!(s.failure().as_deref(), Some("event hub x: refused"));
        s.auth_works();
        assert_eq!(s.failure(), None);
    }
}
