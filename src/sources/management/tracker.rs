//! The bookkeeping of one (tenant, content type): which listed blobs are still in flight, which
//! are safe downstream, and so how far the committed position may move. Blobs complete in any
//! order; the position only passes a blob once it and every blob created before it are safe.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::client::ContentItem;
use super::positions::ContentPosition;

#[derive(Debug, Clone)]
pub struct Tracker {
    committed: i64,
    /// End of the last window listed completely (its blobs all registered).
    listed_to: i64,
    /// In flight: (created, content id).
    pending: BTreeSet<(i64, String)>,
    pending_by_id: HashMap<String, i64>,
    /// Safe downstream, created at or after `committed - overlap`: content id → created.
    done: BTreeMap<String, i64>,
    overlap_ms: i64,
    subscription_started: Option<i64>,
    /// True once a position was ever committed (false: a first start).
    started: bool,
}

impl Tracker {
    pub fn new(position: Option<&ContentPosition>, overlap_ms: i64) -> Self {
        let p = position.cloned().unwrap_or_default();
        Self {
            committed: p.committed,
            listed_to: p.committed,
            pending: BTreeSet::new(),
            pending_by_id: HashMap::new(),
            done: p.done,
            overlap_ms,
            subscription_started: p.subscription_started,
            started: position.is_some(),
        }
    }

    /// The committed position, or None before the first commit.
    pub fn committed(&self) -> Option<i64> {
        self.started.then_some(self.committed)
    }

    /// Where the next listing starts: the overlap before the committed position.
    pub fn relist_from(&self) -> Option<i64> {
        self.committed().map(|c| c - self.overlap_ms)
    }

    /// True for a blob already in flight or safe: a relisting must not send it again.
    pub fn is_known(&self, content_id: &str) -> bool {
        self.pending_by_id.contains_key(content_id) || self.done.contains_key(content_id)
    }

    pub fn register(&mut self, item: &ContentItem) {
        if self.is_known(&item.content_id) {
            return;
        }
        self.pending.insert((item.created, item.content_id.clone()));
        self.pending_by_id
            .insert(item.content_id.clone(), item.created);
    }

    /// A registered blob that will not be handed on after all (its window was abandoned): the
    /// next listing finds it again.
    pub fn forget(&mut self, content_id: &str) {
        if let Some(created) = self.pending_by_id.remove(content_id) {
            self.pending.remove(&(created, content_id.to_string()));
        }
    }

    /// Every blob created before `to` is registered (or known).
    pub fn listed(&mut self, to: i64) {
        self.listed_to = self.listed_to.max(to);
        if !self.started {
            self.started = true;
            self.committed = i64::MIN;
        }
        self.advance();
    }

    /// The blob is safe downstream (delivered, dead-lettered, refused to the rejected file, or
    /// expired and alarmed about).
    pub fn complete(&mut self, content_id: &str) {
        if let Some(created) = self.pending_by_id.remove(content_id) {
            self.pending.remove(&(created, content_id.to_string()));
            self.done.insert(content_id.to_string(), created);
            self.advance();
        }
    }

    fn advance(&mut self) {
        let bound = self.pending.first().map_or(self.listed_to, |(created, _)| {
            (*created).min(self.listed_to)
        });
        if bound > self.committed {
            self.committed = bound;
        }
        let keep_from = self.committed - self.overlap_ms;
        self.done.retain(|_, created| *created >= keep_from);
    }

    /// The oldest content not yet safe downstream (ms), for the lag: the first blob in flight,
    /// else the committed position (newer content is not listed yet).
    pub fn oldest_unacked(&self) -> Option<i64> {
        self.pending
            .first()
            .map(|(created, _)| *created)
            .or(self.committed())
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    pub fn subscription_started(&self) -> Option<i64> {
        self.subscription_started
    }

    pub fn set_subscription_started(&mut self, at: i64) {
        self.subscription_started = Some(at);
    }

    /// What to persist; None before anything was committed.
    pub fn position(&self) -> Option<ContentPosition> {
        (self.started && self.committed != i64::MIN).then(|| ContentPosition {
            committed: self.committed,
            done: self.done.clone(),
            subscription_started: self.subscription_started,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, created: i64) -> ContentItem {
        ContentItem {
            content_id: id.into(),
            content_uri: format!("https://x/{id}"),
            created,
        }
    }

    #[test]
    fn commits_only_past_blobs_that_are_safe_in_creation_order() {
        let mut t = Tracker::new(None, 50);
        assert_eq!(t.committed(), None);
        for (id, c) in [("a", 100), ("b", 200), ("c", 300), ("d", 980)] {
            t.register(&item(id, c));
        }
        t.listed(1_000);
        assert_eq!(t.committed(), Some(100), "a is in flight");
        t.complete("d");
        t.complete("c");
        t.complete("b");
        assert_eq!(t.committed(), Some(100), "a still holds it back");
        t.complete("a");
        assert_eq!(t.committed(), Some(1_000));
        // A relisting of the overlap skips what is done there; older blobs are forgotten.
        assert_eq!(t.relist_from(), Some(950));
        assert!(t.is_known("d"));
        assert!(!t.is_known("c"));
        let p = t.position().unwrap();
        assert_eq!(p.committed, 1_000);
        assert_eq!(p.done.keys().collect::<Vec<_>>(), ["d"]);
    }

    #[test]
    fn a_late_blob_in_the_overlap_is_sent_once_and_the_position_never_regresses() {
        let mut t = Tracker::new(None, 500);
        t.register(&item("a", 900));
        t.listed(1_000);
        t.complete("a");
        assert_eq!(t.committed(), Some(1_000));
        // The relisting [500, 2000) finds a late blob created at 800, and `a` again.
        t.register(&item("a", 900));
        t.register(&item("late", 800));
        assert_eq!(t.in_flight(), 1);
        t.listed(2_000);
        assert_eq!(t.committed(), Some(1_000), "never moves back");
        t.complete("late");
        assert_eq!(t.committed(), Some(2_000));
    }

    #[test]
    fn forgotten_blobs_are_found_again_and_an_empty_window_commits() {
        let mut t = Tracker::new(None, 0);
        t.register(&item("a", 10));
        t.forget("a");
        assert!(!t.is_known("a"));
        t.listed(100);
        assert_eq!(t.committed(), Some(100));
        let restored = Tracker::new(t.position().as_ref(), 0);
        assert_eq!(restored.committed(), Some(100));
    }
}
