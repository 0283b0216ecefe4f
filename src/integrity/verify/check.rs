//! Recomputing one chain from the rows read back, in sequence order: what is missing, altered,
//! forked or there twice.

use std::collections::BTreeMap;

use crate::integrity::chain::link;
use crate::integrity::{GENESIS, Hash, Keyring, decode_hash};

/// A row as read back, reduced to what the check needs.
#[derive(Debug, Clone)]
pub struct ReadRow {
    pub seq: u64,
    pub hash: String,
    pub key_id: String,
    pub canonical: Vec<u8>,
}

/// What the check found in one chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainReport {
    pub stream: String,
    pub rows: u64,
    /// The first and last sequence number read.
    pub first: u64,
    pub last: u64,
    /// Sequence numbers with no row, as inclusive ranges.
    pub missing: Vec<(u64, u64)>,
    /// Rows whose hash does not match their content and place (changed since sealing, or
    /// moved to another sequence number).
    pub altered: Vec<u64>,
    /// Sequence numbers held by two different rows that each claim to be the right one.
    pub forks: Vec<u64>,
    /// Sequence numbers present more than once with the same content and hash (sent again
    /// after a crash or a lost answer): (sequence, extra copies).
    pub duplicates: Vec<(u64, u64)>,
    /// Rows sealed with a key the keyring doesn't hold: (sequence, key id).
    pub unknown_keys: Vec<(u64, String)>,
    /// Rows before `first` were not read (`--since`): the first row's link is not checked.
    pub starts_late: bool,
    /// The checkpointed sequence number, when the rows there do not carry the hash the
    /// connector checkpointed: the chain from there on was written again (a tail replaced
    /// by someone holding the key), however well it links.
    pub checkpoint_mismatch: Option<u64>,
}

impl ChainReport {
    pub fn is_whole(&self) -> bool {
        self.missing.is_empty()
            && self.altered.is_empty()
            && self.forks.is_empty()
            && self.unknown_keys.is_empty()
            && self.checkpoint_mismatch.is_none()
    }

    pub fn missing_count(&self) -> u64 {
        self.missing
            .iter()
            .map(|(a, b)| b.saturating_sub(*a).saturating_add(1))
            .fold(0, u64::saturating_add)
    }
}

/// Branches followed at once (the valid rows' first); past this many hashes at one number the
/// rest are not followed, and rows chained from them read as altered (no input can make the
/// check quadratic).
const MAX_BRANCHES: usize = 16;

/// Checks a chain incrementally, page by page; rows must come in sequence order, all rows of
/// a sequence number in the same call.
pub struct Checker<'k> {
    keys: &'k Keyring,
    report: ChainReport,
    /// The hashes the next sequence number may chain from: one, or one per branch after a
    /// fork (a restored volume or two replicas under one chain id go on from the same row,
    /// and both branches' rows are then forks, not altered rows); empty when unknown (after a
    /// gap).
    prev: Vec<Hash>,
    /// The sequence number expected next; 0 before the first row.
    expected: u64,
    late_start_allowed: bool,
    checkpoint: Option<Checkpoint>,
}

/// The last row the connector checkpointed as sent (in the health table), for one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    /// Its chain hash; None from connectors that checkpointed the number only.
    pub hash: Option<String>,
}

impl<'k> Checker<'k> {
    /// `late_start_allowed`: rows before the first one read were filtered out on purpose
    /// (`--since`), so a chain starting after 1 is not a gap.
    pub fn new(keys: &'k Keyring, stream: &str, late_start_allowed: bool) -> Self {
        Self {
            keys,
            report: ChainReport {
                stream: stream.to_string(),
                ..ChainReport::default()
            },
            prev: Vec::new(),
            expected: 0,
            late_start_allowed,
            checkpoint: None,
        }
    }

    /// The connector's checkpoint: rows missing up to it are reported at the end, and the
    /// row at its number must carry its hash.
    pub fn with_checkpoint(mut self, checkpoint: Option<Checkpoint>) -> Self {
        self.checkpoint = checkpoint;
        self
    }

    /// Feeds rows in sequence order.
    pub fn feed(&mut self, rows: &[ReadRow]) {
        let mut at = 0;
        while at < rows.len() {
            let seq = rows[at].seq;
            let end = rows[at..]
                .iter()
                .position(|r| r.seq != seq)
                .map_or(rows.len(), |n| at + n);
            self.group(&rows[at..end]);
            at = end;
        }
    }

    fn group(&mut self, rows: &[ReadRow]) {
        let seq = rows[0].seq;
        let report = &mut self.report;
        report.rows += rows.len() as u64;
        if self.expected == 0 {
            report.first = seq;
            if seq == 1 {
                self.prev = vec![GENESIS];
            } else if self.late_start_allowed {
                report.starts_late = true;
            } else {
                report.missing.push((1, seq.saturating_sub(1)));
            }
        } else if seq > self.expected {
            report.missing.push((self.expected, seq.saturating_sub(1)));
            self.prev.clear();
        }
        report.last = seq;
        self.expected = seq.saturating_add(1);
        let stream = report.stream.clone();
        // Distinct copies: (stored hash, content) → how many.
        let mut copies: BTreeMap<(&str, &[u8]), (u64, &ReadRow)> = BTreeMap::new();
        for row in rows {
            copies
                .entry((row.hash.as_str(), row.canonical.as_slice()))
                .or_insert((0, row))
                .0 += 1;
        }
        if let Some(Checkpoint {
            seq: at,
            hash: Some(hash),
        }) = &self.checkpoint
            && *at == seq
        {
            // A checkpoint hash that doesn't decode proves nothing either way: only the number
            // is used then.
            if let Some(sent) = decode_hash(hash)
                && !rows.iter().any(|r| decode_hash(&r.hash) == Some(sent))
            {
                report.checkpoint_mismatch = Some(seq);
            }
        }
        let extra: u64 = copies.values().map(|(n, _)| n - 1).sum();
        if extra > 0 {
            report.duplicates.push((seq, extra));
        }
        let mut valid: Vec<&ReadRow> = Vec::new();
        let mut altered = false;
        for (_, row) in copies.values() {
            let Some(key) = self.keys.key(&row.key_id) else {
                report.unknown_keys.push((seq, row.key_id.clone()));
                continue;
            };
            if self.prev.is_empty() {
                continue;
            }
            let stored = decode_hash(&row.hash);
            if self
                .prev
                .iter()
                .any(|prev| stored == Some(link(key, &stream, seq, prev, &row.canonical)))
            {
                valid.push(row);
            } else {
                altered = true;
            }
        }
        let distinct_hashes = {
            let mut hashes: Vec<&str> = copies.keys().map(|(h, _)| *h).collect();
            hashes.dedup();
            hashes.len()
        };
        if altered {
            report.altered.push(seq);
        }
        if valid.len() > 1 || (self.prev.is_empty() && distinct_hashes > 1) {
            report.forks.push(seq);
        } else if self.prev.is_empty() && copies.len() > 1 {
            // Same hash, different content, and nothing to tell which is right.
            report.altered.push(seq);
        }
        // The next row chains from the hashes this number's rows carry, every branch's, valid
        // or not (when only a row's content was changed, the one after it still checks out).
        // The valid rows' hashes first, so rows added to crowd them out can't.
        let mut next: Vec<Hash> = Vec::new();
        let carried = valid
            .iter()
            .copied()
            .chain(copies.values().map(|(_, r)| *r))
            .filter_map(|r| decode_hash(&r.hash));
        for hash in carried {
            if next.len() == MAX_BRANCHES {
                break;
            }
            if !next.contains(&hash) {
                next.push(hash);
            }
        }
        self.prev = next;
    }

    /// The report; the checkpoint, the last row the connector says it sent, makes rows
    /// missing at the end visible.
    pub fn finish(mut self) -> ChainReport {
        if let Some(c) = self.checkpoint.as_ref().map(|c| c.seq)
            && c >= self.expected.max(1)
        {
            self.report.missing.push((self.expected.max(1), c));
        }
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::encode_hash;

    const STREAM: &str = "pod-0/T_CL";

    fn keys() -> Keyring {
        Keyring::from_keys(BTreeMap::from([("k1".to_string(), vec![1u8; 32])]), "k1")
    }

    /// A whole chain of `n` rows.
    fn chain(n: u64) -> Vec<ReadRow> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let canonical = format!("Op:1:{seq}").into_bytes();
                let hash = link(&[1u8; 32], STREAM, seq, &prev, &canonical);
                prev = hash;
                ReadRow {
                    seq,
                    hash: encode_hash(&hash),
                    key_id: "k1".into(),
                    canonical,
                }
            })
            .collect()
    }

    fn check(rows: &[ReadRow], checkpoint: Option<u64>) -> ChainReport {
        check_with(rows, checkpoint.map(|seq| Checkpoint { seq, hash: None }))
    }

    fn check_with(rows: &[ReadRow], checkpoint: Option<Checkpoint>) -> ChainReport {
        let keys = keys();
        let mut checker = Checker::new(&keys, STREAM, false).with_checkpoint(checkpoint);
        // In pages of 3, as verify reads them.
        let mut at = 0;
        while at < rows.len() {
            let mut end = (at + 3).min(rows.len());
            while end < rows.len() && rows[end].seq == rows[end - 1].seq {
                end += 1;
            }
            checker.feed(&rows[at..end]);
            at = end;
        }
        checker.finish()
    }

    #[test]
    fn a_tail_chained_again_with_the_key_is_caught_by_the_checkpoint_hash() {
        let rows = chain(10);
        let sent = Checkpoint {
            seq: 10,
            hash: Some(rows[9].hash.clone()),
        };
        let r = check_with(&rows, Some(sent.clone()));
        assert!(r.is_whole(), "{r:?}");
        // A checkpoint hash that doesn't decode proves nothing: the number alone counts.
        let unreadable = Checkpoint {
            seq: 10,
            hash: Some("not a hash".into()),
        };
        assert!(check_with(&rows, Some(unreadable)).is_whole());
        // Rows 6..=10 replaced by others that link just as well (made with the key).
        let mut forged = rows[..5].to_vec();
        let mut prev = decode_hash(&rows[4].hash).unwrap();
        for seq in 6..=10 {
            let canonical = format!("Op:forged:{seq}").into_bytes();
            let hash = link(&[1u8; 32], STREAM, seq, &prev, &canonical);
            prev = hash;
            forged.push(ReadRow {
                seq,
                hash: crate::integrity::encode_hash(&hash),
                key_id: "k1".into(),
                canonical,
            });
        }
        let r = check_with(&forged, Some(sent.clone()));
        assert!(!r.is_whole(), "{r:?}");
        assert_eq!(r.checkpoint_mismatch, Some(10));
        assert!(r.altered.is_empty() && r.missing.is_empty(), "{r:?}");
        // Without the checkpoint's hash the forgery links and reads whole: the hash is what
        // catches it.
        assert!(check(&forged, Some(10)).is_whole());
        // The checkpointed row deleted: missing, not a mismatch.
        let r = check_with(&rows[..9], Some(sent));
        assert_eq!(r.missing, vec![(10, 10)]);
        assert_eq!(r.checkpoint_mismatch, None);
    }

    #[test]
    fn a_whole_chain_with_duplicates_is_whole() {
        let mut rows = chain(10);
        rows.insert(4, rows[4].clone());
        rows.insert(4, rows[4].clone());
        let r = check(&rows, Some(10));
        assert!(r.is_whole(), "{r:?}");
        assert_eq!(r.duplicates, vec![(5, 2)]);
        assert_eq!((r.first, r.last, r.rows), (1, 10, 12));
    }

    #[test]
    fn deletions_changes_and_forks_are_reported_exactly() {
        let mut rows = chain(20);
        rows[6].canonical = b"Op:1:X".to_vec(); // seq 7 changed
        rows.drain(11..14); // seqs 12..=14 gone
        rows.remove(2); // seq 3 gone
        let mut fork = rows[0].clone(); // a second, different row claiming seq 2
        fork.canonical = b"other".to_vec();
        fork.seq = 2;
        fork.hash = encode_hash(&link(
            &[1u8; 32],
            STREAM,
            2,
            &decode_hash(&rows[0].hash).unwrap(),
            b"other",
        ));
        rows.insert(2, fork);
        let r = check(&rows, Some(22));
        assert_eq!(r.missing, vec![(3, 3), (12, 14), (21, 22)]);
        assert_eq!(r.altered, vec![7]);
        assert_eq!(r.forks, vec![2]);
        assert!(!r.is_whole());
        assert_eq!(r.missing_count(), 6);
    }

    #[test]
    fn both_branches_of_a_fork_read_as_forks_to_their_end_not_as_altered_rows() {
        // A volume restored to the head at 5 goes on from there a second time: 6..=9 twice,
        // each branch whole in itself.
        let mut rows = chain(9);
        let mut prev = decode_hash(&rows[4].hash).unwrap();
        let mut branch = Vec::new();
        for seq in 6..=9u64 {
            let canonical = format!("Op:2:B{seq}").into_bytes();
            let hash = link(&[1u8; 32], STREAM, seq, &prev, &canonical);
            prev = hash;
            branch.push(ReadRow {
                seq,
                hash: encode_hash(&hash),
                key_id: "k1".into(),
                canonical,
            });
        }
        for row in branch.into_iter().rev() {
            let at = rows.iter().position(|r| r.seq == row.seq).unwrap();
            rows.insert(at + 1, row);
        }
        let r = check(&rows, Some(9));
        assert_eq!(r.forks, vec![6, 7, 8, 9], "{r:?}");
        assert!(r.altered.is_empty(), "{r:?}");
        assert!(r.missing.is_empty(), "{r:?}");
        // A changed row on one branch still reads as altered.
        let mut changed = rows.clone();
        let at = changed.iter().rposition(|r| r.seq == 8).unwrap();
        changed[at].canonical = b"tampered".to_vec();
        let r = check(&changed, Some(9));
        assert_eq!(r.altered, vec![8], "{r:?}");
        assert_eq!(r.forks, vec![6, 7, 9], "{r:?}");
    }

    #[test]
    fn rows_added_to_crowd_out_the_branches_do_not_hide_the_valid_one() {
        let mut rows = chain(6);
        // Sixteen rows at 3 carrying hashes that sort before the real one.
        for i in 0..16u8 {
            let mut forged = rows[2].clone();
            forged.canonical = format!("forged {i}").into_bytes();
            let mut hash = GENESIS;
            hash[15] = i;
            forged.hash = encode_hash(&hash);
            rows.insert(3, forged);
        }
        let r = check(&rows, Some(6));
        assert_eq!(r.altered, vec![3], "{r:?}");
        assert!(r.forks.is_empty() && r.missing.is_empty(), "{r:?}");
    }

    #[test]
    fn a_late_start_is_a_gap_unless_rows_were_filtered_out() {
        let rows = chain(6);
        let r = check(&rows[2..], None);
        assert_eq!(r.missing, vec![(1, 2)]);
        let keys = keys();
        let mut checker = Checker::new(&keys, STREAM, true);
        checker.feed(&rows[2..]);
        let r = checker.finish();
        assert!(r.is_whole() && r.starts_late, "{r:?}");
    }

    #[test]
    fn an_unknown_key_is_reported() {
        let mut rows = chain(3);
        rows[1].key_id = "k9".into();
        let r = check(&rows, None);
        assert_eq!(r.unknown_keys, vec![(2, "k9".to_string())]);
        assert!(!r.is_whole());
    }
}
