//! Which partitions this replica owns and, per partition, which messages are safe downstream.
//! Shared by the consuming thread, the rebalance callbacks and the acknowledgements.
//!
//! Each assignment of a partition gets a new epoch: acknowledgements of messages read under an
//! earlier assignment must not move the offset of a later one (the partition may have been
//! re-read from its committed offset in between). Messages of an earlier epoch still in flight
//! stay as "ghosts" and hold the partition's commits back: if the partition comes back to this
//! replica, the dedupe window drops the re-read copies of their rows, so the offset must not
//! pass them before the first copies are durable.

use std::collections::{BTreeSet, HashMap};

use crate::sources::progress::Progress;

#[derive(Default)]
pub struct Tracks {
    parts: HashMap<i32, Track>,
    /// Messages of earlier epochs still in flight: partition → (epoch, offset).
    ghosts: HashMap<i32, BTreeSet<(u64, i64)>>,
    next_epoch: u64,
    /// Partitions come only from rebalance callbacks (a group member), not from the fetcher.
    subscribed: bool,
}

struct Track {
    epoch: u64,
    /// Messages handed on, by offset (None until the first one).
    progress: Option<Progress>,
    /// The next offset to accept from the fetcher: skips what librdkafka fetches twice.
    next: i64,
    /// The last offset committed (or being committed).
    committed: i64,
}

impl Tracks {
    /// `subscribed`: a group member, whose partitions come from rebalances only; otherwise
    /// (dry-run, `--once`) partitions are assigned by hand and known from their messages.
    pub fn new(subscribed: bool) -> Self {
        Self {
            subscribed,
            ..Self::default()
        }
    }

    /// The partition is ours from now on.
    pub fn assigned(&mut self, partition: i32) {
        self.next_epoch += 1;
        self.parts.insert(
            partition,
            Track {
                epoch: self.next_epoch,
                progress: None,
                next: -1,
                committed: -1,
            },
        );
    }

    /// The partition is no longer ours: the offset that is safe to commit for it, if any
    /// message was handed on.
    pub fn revoked(&mut self, partition: i32) -> Option<i64> {
        let track = self.parts.remove(&partition)?;
        let progress = track.progress?;
        let ghosts = self.ghosts.entry(partition).or_default();
        for start in progress.pending_starts() {
            ghosts.insert((track.epoch, to_offset(start)));
        }
        let safe = self.capped(partition, to_offset(progress.safe()));
        (safe > track.committed).then_some(safe)
    }

    /// `safe`, held back by the oldest ghost of the partition.
    fn capped(&self, partition: i32, safe: i64) -> i64 {
        self.ghosts
            .get(&partition)
            .and_then(|g| g.iter().map(|(_, offset)| *offset).min())
            .map_or(safe, |oldest| safe.min(oldest))
    }

    /// A fetched message: its epoch when it is new on an owned partition, None when it was
    /// fetched before (or the partition is not ours).
    pub fn fetched(&mut self, partition: i32, offset: i64) -> Option<u64> {
        if !self.parts.contains_key(&partition) && !self.subscribed {
            // A manual assignment (dry-run, --once) has no rebalance callback.
            self.assigned(partition);
        }
        let track = self.parts.get_mut(&partition)?;
        if offset < track.next {
            return None;
        }
        track.next = offset + 1;
        Some(track.epoch)
    }

    /// The message is handed on to the mapper.
    pub fn sent(&mut self, partition: i32, epoch: u64, offset: i64) {
        if let Some(track) = self.parts.get_mut(&partition)
            && track.epoch == epoch
        {
            let at = to_position(offset);
            track
                .progress
                .get_or_insert_with(|| Progress::new(at))
                .read(at, at + 1);
        }
    }

    /// Every row of the message is safe downstream.
    pub fn done(&mut self, partition: i32, epoch: u64, offset: i64) {
        if let Some(track) = self.parts.get_mut(&partition)
            && track.epoch == epoch
        {
            if let Some(progress) = track.progress.as_mut() {
                progress.done(to_position(offset));
            }
        } else if let Some(ghosts) = self.ghosts.get_mut(&partition) {
            ghosts.remove(&(epoch, offset));
            if ghosts.is_empty() {
                self.ghosts.remove(&partition);
            }
        }
    }

    /// Messages of `partitions` handed on and not yet safe.
    pub fn in_flight(&self, partitions: &[i32]) -> usize {
        partitions
            .iter()
            .filter_map(|p| self.parts.get(p)?.progress.as_ref())
            .map(Progress::in_flight)
            .sum()
    }

    pub fn all_in_flight(&self) -> usize {
        self.parts
            .values()
            .filter_map(|t| t.progress.as_ref())
            .map(Progress::in_flight)
            .sum::<usize>()
            + self.ghosts.values().map(BTreeSet::len).sum::<usize>()
    }

    /// Offsets to commit (the next offset to read, per partition) that moved since the last
    /// commit; they count as committed from now on.
    pub fn take_commits(&mut self) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        let safe: Vec<(i32, i64)> = self
            .parts
            .iter()
            .filter_map(|(&p, t)| Some((p, to_offset(t.progress.as_ref()?.safe()))))
            .map(|(p, safe)| (p, self.capped(p, safe)))
            .collect();
        for (partition, safe) in safe {
            if let Some(track) = self.parts.get_mut(&partition)
                && safe > track.committed
            {
                track.committed = safe;
                out.push((partition, safe));
            }
        }
        out.sort_unstable();
        out
    }

    /// A commit failed: the next round commits these partitions again.
    pub fn commit_failed(&mut self, partition: i32) {
        if let Some(track) = self.parts.get_mut(&partition) {
            track.committed = -1;
        }
    }
}

/// Kafka offsets are never negative for a fetched message.
fn to_position(offset: i64) -> u64 {
    u64::try_from(offset).unwrap_or(0)
}

fn to_offset(position: u64) -> i64 {
    i64::try_from(position).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_of_an_earlier_assignment_still_in_flight_hold_the_offset_back() {
        let mut t = Tracks::default();
        t.assigned(3);
        let old = t.fetched(3, 100).unwrap();
        t.sent(3, old, 100);
        assert_eq!(t.revoked(3), Some(100), "100 in flight: nothing past it");
        // Back to this replica: re-read from 100, its rows dropped as repeats at once.
        t.assigned(3);
        let new = t.fetched(3, 100).unwrap();
        t.sent(3, new, 100);
        t.done(3, new, 100);
        assert_eq!(
            t.take_commits(),
            vec![(3, 100)],
            "not past 100: its first copy is not durable yet"
        );
        assert_eq!(t.all_in_flight(), 1);
        t.done(3, old, 100);
        assert_eq!(t.take_commits(), vec![(3, 101)]);
    }

    #[test]
    fn a_group_member_ignores_messages_of_partitions_it_does_not_own() {
        let mut t = Tracks::new(true);
        assert_eq!(t.fetched(1, 5), None);
        t.assigned(1);
        assert!(t.fetched(1, 5).is_some());
    }

    #[test]
    fn commits_only_the_acknowledged_prefix_and_ignores_an_earlier_assignment() {
        let mut t = Tracks::default();
        t.assigned(0);
        let epoch = t.fetched(0, 100).unwrap();
        assert_eq!(t.fetched(0, 100), None, "fetched twice: skipped");
        t.fetched(0, 101).unwrap();
        t.sent(0, epoch, 100);
        t.sent(0, epoch, 101);
        t.done(0, epoch, 101);
        assert_eq!(t.take_commits(), vec![(0, 100)]);
        t.done(0, epoch, 100);
        assert_eq!(t.take_commits(), vec![(0, 102)]);
        assert_eq!(t.take_commits(), vec![], "nothing new");
        // Given up and assigned again: the old epoch's acknowledgement clears its ghost only.
        t.fetched(0, 102).unwrap();
        t.sent(0, epoch, 102);
        assert_eq!(
            t.revoked(0),
            None,
            "102 is in flight; 102 was committed already"
        );
        t.assigned(0);
        let epoch2 = t.fetched(0, 102).unwrap();
        assert_ne!(epoch, epoch2);
        t.sent(0, epoch2, 102);
        t.done(0, epoch, 102);
        assert_eq!(t.in_flight(&[0]), 1);
        t.done(0, epoch2, 102);
        assert_eq!(t.revoked(0), Some(103));
    }
}
