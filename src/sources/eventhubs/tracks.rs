//! Which partitions this replica owns and, per partition, which messages are safe downstream.
//! Shared by the consuming thread, the rebalance callbacks and the acknowledgements.
//!
//! Each assignment of a partition gets a new epoch: acknowledgements of messages read under an
//! earlier assignment must not move the offset of a later one (the partition may have been
//! re-read from its committed offset in between).

use std::collections::HashMap;

use crate::sources::progress::Progress;

#[derive(Default)]
pub struct Tracks {
    parts: HashMap<i32, Track>,
    next_epoch: u64,
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
        let safe = to_offset(track.progress?.safe());
        (safe > track.committed).then_some(safe)
    }

    /// A fetched message: its epoch when it is new on an owned partition, None when it was
    /// fetched before (or the partition is not ours).
    pub fn fetched(&mut self, partition: i32, offset: i64) -> Option<u64> {
        if !self.parts.contains_key(&partition) {
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
            && let Some(progress) = track.progress.as_mut()
        {
            progress.done(to_position(offset));
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
            .sum()
    }

    /// Offsets to commit (the next offset to read, per partition) that moved since the last
    /// commit; they count as committed from now on.
    pub fn take_commits(&mut self) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for (&partition, track) in &mut self.parts {
            if let Some(progress) = &track.progress {
                let safe = to_offset(progress.safe());
                if safe > track.committed {
                    track.committed = safe;
                    out.push((partition, safe));
                }
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
        // Given up and assigned again: the old epoch's acknowledgements count for nothing.
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
