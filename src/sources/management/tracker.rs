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
        let committed = p.committed.unwrap_or(i64::MIN);
        Self {
            committed,
            listed_to: committed,
            pending: BTreeSet::new(),
            pending_by_id: HashMap::new(),
            done: p.done,
            overlap_ms,
            subscription_started: p.subscription_started,
            started: p.committed.is_some(),
        }
    }

    /// The committed position, or None before the first commit.
    pub fn committed(&self) -> Option<i64> {
        self.started.then_some(self.committed)
    }

    /// Where the next listing starts: the overlap before the committed position.
    pub fn relist_from(&self) -> Option<i64> {
        self.committed().map(|c| c.saturating_sub(self.overlap_ms))
    }

    /// True for a blob already in flight or safe: a relisting must not send it again.
    pub fn is_known(&self, content_id: &str) -> bool {
        self.pending_by_id.contains_key(content_id) || self.done.contains_key(content_id)
    }

    /// A pass starts listing at `start`: until its windows are listed again, the position must
    /// not move past `start`, or a late blob found below the old listing end, still in flight,
    /// could be passed over (and lost by a crash).
    pub fn begin_pass(&mut self, start: i64) {
        self.listed_to = self.listed_to.min(start);
    }

    /// Registers a listed blob as in flight; false (and nothing changes) if it is known already.
    pub fn register(&mut self, item: &ContentItem) -> bool {
        if self.is_known(&item.content_id) {
            return false;
        }
        self.pending.insert((item.created, item.content_id.clone()));
        self.pending_by_id
            .insert(item.content_id.clone(), item.created);
        true
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
        self.started = true;
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
        if !self.started {
            return;
        }
        let bound = self.pending.first().map_or(self.listed_to, |(created, _)| {
            (*created).min(self.listed_to)
        });
        if bound > self.committed {
            self.committed = bound;
        }
        let keep_from = self.committed.saturating_sub(self.overlap_ms);
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

    /// What to persist; None before anything happened.
    pub fn position(&self) -> Option<ContentPosition> {
        (self.started || self.subscription_started.is_some()).then(|| ContentPosition {
            committed: self.committed(),
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
        assert_eq!(p.committed, Some(1_000));
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

    #[test]
    fn a_late_blob_found_by_a_pass_holds_the_position_until_it_is_safe() {
        let mut t = Tracker::new(None, 100);
        t.register(&item("slow", 500));
        t.listed(10_000);
        assert_eq!(t.committed(), Some(500));
        // The next pass relists from 400 and finds a late blob at 700; meanwhile the slow blob
        // completes. The position must stay below the late blob until it is safe.
        t.begin_pass(t.relist_from().unwrap());
        assert!(t.register(&item("late", 700)));
        t.complete("slow");
        assert_eq!(t.committed(), Some(500));
        t.listed(10_500);
        assert_eq!(t.committed(), Some(700));
        // Forgotten (the pass failed): the position still can't pass it.
        t.begin_pass(t.relist_from().unwrap());
        t.forget("late");
        assert_eq!(t.committed(), Some(700));
        assert!(
            t.register(&item("late", 700)),
            "found again by the next pass"
        );
        assert!(
            !t.register(&item("late", 701)),
            "registered once, whatever its time"
        );
        t.listed(11_000);
        t.complete("late");
        assert_eq!(t.committed(), Some(11_000));
    }

    #[test]
    fn a_subscription_start_is_kept_before_any_listing() {
        let mut t = Tracker::new(None, 0);
        assert!(t.position().is_none());
        t.set_subscription_started(42);
        let p = t.position().unwrap();
        assert_eq!((p.committed, p.subscription_started), (None, Some(42)));
        let restored = Tracker::new(Some(&p), 0);
        assert_eq!(restored.committed(), None, "still a first start");
        assert_eq!(restored.subscription_started(), Some(42));
    }
}
