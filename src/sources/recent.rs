//! Dedupe of Defender rows: both streaming exports can deliver a row again (an Event Hubs
//! partition re-read after a rebalance, a storage blob re-read after a restart), and the rows
//! carry no id. A row is a repeat when its `category` and its `properties` are byte-for-byte
//! those of a row admitted within the window.
//!
//! The window is kept in memory only: after a restart, rows re-read from the committed
//! positions are sent again (at-least-once), bounded by what was in flight at the crash.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::Digest;

use crate::stages::decode::Fields;

/// The shared window of recently admitted rows; cheap to clone.
#[derive(Clone)]
pub struct RecentRows {
    inner: Arc<Mutex<Window>>,
    duplicates: Arc<AtomicU64>,
    clock: fn() -> i64,
}

struct Window {
    keys: HashSet<u128>,
    /// Admission time (Unix ms) and key, oldest first.
    order: VecDeque<(i64, u128)>,
    window_ms: i64,
    max_rows: usize,
}

impl RecentRows {
    pub fn new(window_secs: u64, max_rows: usize) -> Self {
        Self::with_clock(
            window_secs,
            max_rows,
            crate::sources::management::now_millis,
        )
    }

    fn with_clock(window_secs: u64, max_rows: usize, clock: fn() -> i64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Window {
                keys: HashSet::new(),
                order: VecDeque::new(),
                window_ms: i64::try_from(window_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
                max_rows: max_rows.max(1),
            })),
            duplicates: Arc::new(AtomicU64::new(0)),
            clock,
        }
    }

    /// Repeats skipped so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// False for a repeat of a row admitted within the window. Records that are not Defender
    /// rows (no `category`) always pass: routing refuses them with its own reason.
    pub fn admit(&self, fields: &Fields) -> bool {
        let Some(category) = fields.get("category") else {
            return true;
        };
        let mut digest = sha2::Sha256::new();
        digest.update(category.get().as_bytes());
        digest.update([0u8]);
        digest.update(fields.get("properties").map_or("", |p| p.get()).as_bytes());
        let hash = digest.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&hash[..16]);
        let fresh = self.inner.lock().map_or(true, |mut w| {
            w.admit(u128::from_le_bytes(key), (self.clock)())
        });
        if !fresh {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        fresh
    }
}

impl Window {
    fn admit(&mut self, key: u128, now: i64) -> bool {
        while let Some(&(at, old)) = self.order.front() {
            if now.saturating_sub(at) < self.window_ms && self.order.len() < self.max_rows {
                break;
            }
            self.order.pop_front();
            self.keys.remove(&old);
        }
        if !self.keys.insert(key) {
            return false;
        }
        self.order.push_back((now, key));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicI64;

    static NOW: AtomicI64 = AtomicI64::new(0);
    fn clock() -> i64 {
        NOW.load(Ordering::SeqCst)
    }

    fn row(category: &str, properties: &str) -> String {
        format!(
            r#"{{"time":"t{}","category":"{category}","properties":{properties}}}"#,
            fastrand::u32(..)
        )
    }

    #[test]
    fn an_exact_repeat_within_the_window_is_skipped_and_counted_then_admitted_after_it() {
        NOW.store(1_000_000, Ordering::SeqCst);
        let recent = RecentRows::with_clock(60, 100, clock);
        let a = row("AdvancedHunting-EmailEvents", r#"{"NetworkMessageId":"a"}"#);
        // Same row content, another envelope time: still a repeat.
        let a_again = row("AdvancedHunting-EmailEvents", r#"{"NetworkMessageId":"a"}"#);
        let other_table = row(
            "AdvancedHunting-EmailUrlInfo",
            r#"{"NetworkMessageId":"a"}"#,
        );
        let other_row = row("AdvancedHunting-EmailEvents", r#"{"NetworkMessageId":"b"}"#);
        assert!(recent.admit(&Fields::parse(&a).unwrap()));
        assert!(!recent.admit(&Fields::parse(&a_again).unwrap()));
        assert!(recent.admit(&Fields::parse(&other_table).unwrap()));
        assert!(recent.admit(&Fields::parse(&other_row).unwrap()));
        assert_eq!(recent.duplicates(), 1);
        NOW.store(1_000_000 + 60_000, Ordering::SeqCst);
        assert!(
            recent.admit(&Fields::parse(&a_again).unwrap()),
            "out of the window: admitted again"
        );
    }

    #[test]
    fn the_window_holds_at_most_max_rows() {
        NOW.store(5, Ordering::SeqCst);
        let recent = RecentRows::with_clock(3600, 2, clock);
        let rows: Vec<String> = (0..3)
            .map(|i| row("AdvancedHunting-EmailEvents", &format!("{{\"n\":{i}}}")))
            .collect();
        for r in &rows {
            assert!(recent.admit(&Fields::parse(r).unwrap()));
        }
        // The first was pushed out by the third.
        assert!(recent.admit(&Fields::parse(&rows[0]).unwrap()));
        assert!(!recent.admit(&Fields::parse(&rows[0]).unwrap()));
    }

    #[test]
    fn records_without_a_category_always_pass() {
        let recent = RecentRows::with_clock(3600, 10, clock);
        let audit = r#"{"Id":"x","RecordType":1}"#;
        assert!(recent.admit(&Fields::parse(audit).unwrap()));
        assert!(recent.admit(&Fields::parse(audit).unwrap()));
    }
}
