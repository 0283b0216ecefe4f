//! How far a sequence of units read in order (the messages of a partition, the byte ranges of
//! an append blob) is safe downstream: units are acknowledged out of order (each table is
//! delivered by its own task), and a position may only move past a prefix that is all done.

use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct Progress {
    /// Units read and not yet acknowledged: start → end.
    pending: BTreeMap<u64, u64>,
    /// End of the last unit read.
    read_to: u64,
}

impl Progress {
    /// Nothing read yet; everything before `start` is safe.
    pub fn new(start: u64) -> Self {
        Self {
            pending: BTreeMap::new(),
            read_to: start,
        }
    }

    /// A unit covering `start..end` was handed on.
    pub fn read(&mut self, start: u64, end: u64) {
        self.pending.insert(start, end);
        self.read_to = self.read_to.max(end);
    }

    /// The unit that starts at `start` is safe downstream.
    pub fn done(&mut self, start: u64) {
        self.pending.remove(&start);
    }

    /// Everything before this is safe: the start of the oldest unit still pending, or the end
    /// of the last unit read.
    pub fn safe(&self) -> u64 {
        self.pending.keys().next().copied().unwrap_or(self.read_to)
    }

    /// Where reading goes on from.
    pub fn read_to(&self) -> u64 {
        self.read_to
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Starts of the units still pending.
    pub fn pending_starts(&self) -> impl Iterator<Item = u64> + '_ {
        self.pending.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_safe_point_moves_only_past_a_done_prefix() {
        let mut p = Progress::new(10);
        assert_eq!(p.safe(), 10);
        p.read(10, 20);
        p.read(20, 25);
        p.read(25, 40);
        assert_eq!(p.safe(), 10);
        p.done(20);
        assert_eq!(p.safe(), 10, "the first unit is still out");
        p.done(10);
        assert_eq!(p.safe(), 25);
        p.done(25);
        assert_eq!(p.safe(), 40);
        assert_eq!(p.read_to(), 40);
        assert_eq!(p.in_flight(), 0);
    }
}
