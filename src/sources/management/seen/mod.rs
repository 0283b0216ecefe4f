//! Record ids already delivered, per tenant, so the duplicates the Management API produces by
//! design (the same record in several blobs) and blobs read again after a restart don't reach the
//! workspace twice.
//!
//! Ids are kept as 128-bit keys (a GUID as its own value; anything else hashed with SHA-256),
//! grouped by the UTC day of the content that carried them, and dropped when that day leaves the
//! retention (8 days by default: the API serves content for 7).
//!
//! Memory does not hold the keys for long. A day's newest keys ("fresh") are in a hash set and
//! in the day's log file (`DAY.ids`, 16 bytes a key, appended when a blob is safe downstream
//! and flushed before the position that covers it is written). Once a day has gathered
//! `fresh_max` keys, or has stopped receiving them, they become a sorted run file
//! (`DAY.N.run`, see [`run`]) of which memory keeps only a Bloom filter and every 128th key,
//! about 2.2 bytes a key; the log is then emptied. A key the filters let through is confirmed
//! by one read of its run file, so nothing is ever "seen" that was not delivered. A day with
//! more than `max_runs` runs has them merged into one.
//!
//! Ids of blobs still in flight are only in memory ("pending"): a crash forgets them, and the
//! blob, whose position was not committed, is read again and its records sent.

mod files;
mod hasher;
pub mod run;

pub use files::{SeenFiles, compact_due};

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::state::private_fs;
use run::SortedRun;

const DAY_MS: i64 = 86_400_000;
const KEY_BYTES: usize = 16;
/// Fresh keys a day gathers before they become a run (about 40 MB of hash set at most).
const FRESH_MAX: usize = 1 << 20;
/// Runs a day may have before they are merged into one.
const MAX_RUNS: usize = 4;

#[derive(Debug, thiserror::Error)]
#[error("seen-id file {path}: {error}")]
pub struct SeenError {
    pub path: PathBuf,
    pub error: std::io::Error,
}

/// What loading found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub ids: usize,
    pub files: usize,
    /// Bytes of partial keys at file ends (a crash mid-append), ignored.
    pub torn_bytes: usize,
    /// Day files past the retention, deleted.
    pub expired_files: usize,
    /// Run files that could not be read (their ids are forgotten: duplicates possible).
    pub damaged_runs: Vec<String>,
}

/// The key of a record id.
pub fn id_key(id: &str) -> u128 {
    if let Some(guid) = parse_guid(id) {
        return guid;
    }
    let digest = sha2::Sha256::digest(id.as_bytes());
    let mut bytes = [0u8; KEY_BYTES];
    bytes.copy_from_slice(&digest[..KEY_BYTES]);
    u128::from_le_bytes(bytes)
}

fn parse_guid(s: &str) -> Option<u128> {
    if !super::config::is_guid(s) {
        return None;
    }
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    u128::from_str_radix(&hex, 16).ok()
}

type KeySet = HashSet<u128, hasher::KeyHasherBuilder>;

/// One content day's ids: sorted runs on disk, and the fresh keys not in a run yet.
#[derive(Default)]
struct Day {
    runs: Vec<SortedRun>,
    fresh: KeySet,
}

impl Day {
    fn len(&self) -> usize {
        self.fresh.len() + self.runs.iter().map(|r| r.len() as usize).sum::<usize>()
    }

    fn contains(&mut self, key: u128) -> bool {
        if self.fresh.contains(&key) {
            return true;
        }
        // Every filter first (their cache misses overlap), the disk only for those that pass.
        let passed = self.runs.iter().enumerate().fold(0u64, |bits, (i, r)| {
            bits | (u64::from(r.may_contain(key)) << (i % 64))
        });
        passed != 0
            && self
                .runs
                .iter_mut()
                .enumerate()
                .any(|(i, r)| passed & (1 << (i % 64)) != 0 && r.confirmed(key))
    }
}

/// The ids in memory. Shared (behind a lock) by the mapper, which admits, and the committer,
/// which commits and compacts. Its only I/O is the rare confirming read of a run file; writing
/// runs happens outside the lock ([`SeenFiles::compact`]).
pub struct SeenSet {
    days: BTreeMap<i64, Day>,
    pending: KeySet,
    retention_days: i64,
    max_ids: usize,
    total: usize,
    /// Keys committed since the last [`SeenSet::take_writes`], per day.
    unwritten: BTreeMap<i64, Vec<u8>>,
    /// Days dropped since the last [`SeenSet::take_writes`].
    dropped: Vec<i64>,
    /// Days dropped before their retention ended because of `max_ids`.
    pub evicted_early: u64,
    fresh_max: usize,
    max_runs: usize,
}

/// What the disk must catch up on.
#[derive(Debug, Default, Clone)]
pub struct Writes {
    appends: BTreeMap<i64, Vec<u8>>,
    deletes: Vec<i64>,
}

impl Writes {
    /// Keys to append per day (as the journal holds them), nothing to delete.
    pub fn from_appends(appends: Vec<(i64, Vec<u8>)>) -> Self {
        let mut writes = Self::default();
        writes.add_appends(appends);
        writes
    }

    /// Each day's keys to append (a day may have none).
    pub fn appends(&self) -> impl ExactSizeIterator<Item = (i64, &[u8])> + '_ {
        self.appends
            .iter()
            .map(|(day, keys)| (*day, keys.as_slice()))
    }

    /// The deletes, taken out (for the committer to apply at once: a delete applied later, at
    /// a checkpoint, could remove a run a compaction wrote for the same day since).
    pub fn take_deletes(&mut self) -> Writes {
        Writes {
            appends: BTreeMap::new(),
            deletes: std::mem::take(&mut self.deletes),
        }
    }

    pub fn has_deletes(&self) -> bool {
        !self.deletes.is_empty()
    }

    /// `later`'s appends added to these. Deletes are not merged: the committer takes them out
    /// and applies them at once ([`Writes::take_deletes`]).
    pub fn merge(&mut self, later: Writes) {
        debug_assert!(
            later.deletes.is_empty(),
            "deletes are applied by the committer"
        );
        self.add_appends(later.appends);
    }

    fn add_appends(&mut self, appends: impl IntoIterator<Item = (i64, Vec<u8>)>) {
        for (day, keys) in appends {
            self.appends
                .entry(day)
                .or_default()
                .extend_from_slice(&keys);
        }
    }
}

/// A day's fresh keys to turn into a run, merged with the day's runs when it has too many.
pub struct Compaction {
    day: i64,
    /// No repeats, in no order.
    fresh: Vec<u128>,
    merge: Vec<PathBuf>,
    index: u64,
}

/// A compaction done on disk, to install in memory.
pub struct Compacted {
    day: i64,
    run: SortedRun,
    fresh: Vec<u128>,
    replaced: Vec<PathBuf>,
}

fn run_index(path: &Path) -> Option<(i64, u64)> {
    let name = path.file_name()?.to_str()?.strip_suffix(".run")?;
    let (day, index) = name.split_once('.')?;
    Some((day.parse().ok()?, index.parse().ok()?))
}

impl SeenSet {
    /// Loads the tenant's day files from `dir` (none: an empty set). With `persist`, files past
    /// the retention are deleted, torn tails cut and damaged runs removed; without it
    /// (dry-run) nothing is changed.
    pub fn load(
        dir: &Path,
        persist: bool,
        now_ms: i64,
        retention_days: u32,
        max_ids: usize,
    ) -> Result<(Self, Loaded), SeenError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |error| SeenError { path, error }
        };
        let mut set = Self::in_memory(retention_days, max_ids);
        let mut loaded = Loaded::default();
        let oldest_kept = now_ms.div_euclid(DAY_MS) - set.retention_days;
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((set, loaded)),
            Err(e) => return Err(err(dir)(e)),
        };
        let mut logs: Vec<(i64, PathBuf)> = Vec::new();
        let mut runs: Vec<(i64, u64, PathBuf)> = Vec::new();
        for entry in entries {
            let path = entry.map_err(err(dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(day) = name.strip_suffix(".ids").and_then(|d| d.parse().ok()) {
                logs.push((day, path));
            } else if let Some((day, index)) = run_index(&path) {
                runs.push((day, index, path));
            } else if name.ends_with(".run.tmp") && persist {
                // A compaction cut short: its keys are still in the log.
                std::fs::remove_file(&path).map_err(err(&path))?;
            }
        }
        runs.sort();
        for (day, _, path) in runs {
            if day < oldest_kept {
                if persist {
                    std::fs::remove_file(&path).map_err(err(&path))?;
                }
                loaded.expired_files += 1;
                continue;
            }
            match SortedRun::open(&path) {
                Ok(run) => {
                    set.days.entry(day).or_default().runs.push(run);
                    loaded.files += 1;
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "seen-id run file damaged; its ids are forgotten (duplicates are possible, nothing is lost)");
                    loaded.damaged_runs.push(path.display().to_string());
                    if persist {
                        std::fs::remove_file(&path).map_err(err(&path))?;
                    }
                }
            }
        }
        logs.sort();
        for (day, path) in logs {
            if day < oldest_kept {
                if persist {
                    std::fs::remove_file(&path).map_err(err(&path))?;
                }
                loaded.expired_files += 1;
                continue;
            }
            let mut bytes = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(err(&path))?;
            let torn = bytes.len() % KEY_BYTES;
            loaded.torn_bytes += torn;
            let keys = set.days.entry(day).or_default();
            for chunk in bytes.chunks_exact(KEY_BYTES) {
                let mut key = [0u8; KEY_BYTES];
                key.copy_from_slice(chunk);
                let key = u128::from_le_bytes(key);
                // A crash after a compaction wrote its run but before it emptied the log
                // leaves keys in both.
                if !keys.contains(key) {
                    keys.fresh.insert(key);
                }
            }
            if persist && torn != 0 {
                // Cut the torn key off, so appends start at a key boundary again.
                private_fs::private_options()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len((bytes.len() - torn) as u64))
                    .map_err(err(&path))?;
            }
            loaded.files += 1;
        }
        set.total = set.days.values().map(Day::len).sum();
        loaded.ids = set.total;
        set.enforce_ceiling();
        Ok((set, loaded))
    }

    /// A set with no files behind it.
    pub fn in_memory(retention_days: u32, max_ids: usize) -> Self {
        Self {
            days: BTreeMap::new(),
            pending: KeySet::default(),
            retention_days: i64::from(retention_days),
            max_ids,
            total: 0,
            unwritten: BTreeMap::new(),
            dropped: Vec::new(),
            evicted_early: 0,
            fresh_max: FRESH_MAX,
            max_runs: MAX_RUNS,
        }
    }

    /// Smaller compaction thresholds (tests and benchmarks exercise runs without millions of
    /// keys).
    pub fn with_compaction(mut self, fresh_max: usize, max_runs: usize) -> Self {
        self.fresh_max = fresh_max.max(1);
        self.max_runs = max_runs.max(1);
        self
    }

    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Bytes the set keeps in memory for its remembered ids (filters, sparse keys, fresh keys
    /// with the hash set's overhead); in-flight ids not included.
    pub fn memory_bytes(&self) -> usize {
        let per_fresh = KEY_BYTES + 1; // a u128 slot and its control byte
        self.days
            .values()
            .map(|d| {
                d.fresh.capacity() * per_fresh
                    + d.runs.iter().map(SortedRun::memory_bytes).sum::<usize>()
            })
            .sum()
    }

    /// True the first time an id is offered (it is now in flight); false for an id already
    /// delivered or in flight from another blob.
    pub fn admit(&mut self, key: u128) -> bool {
        // Newest days first: duplicates are mostly recent.
        if self.pending.contains(&key) || self.days.values_mut().rev().any(|d| d.contains(key)) {
            return false;
        }
        self.pending.insert(key);
        true
    }

    /// The blob that admitted `keys` is safe downstream: remember them for good under the
    /// content's day (on disk once [`SeenFiles::write`] ran).
    pub fn commit(&mut self, created_ms: i64, keys: &[u128]) {
        let day = created_ms.div_euclid(DAY_MS);
        let set = self.days.entry(day).or_default();
        let bytes = self.unwritten.entry(day).or_default();
        for key in keys {
            self.pending.remove(key);
            if set.fresh.insert(*key) {
                self.total += 1;
                bytes.extend_from_slice(&key.to_le_bytes());
            }
        }
        self.enforce_ceiling();
    }

    /// Keys a journal holds that the day logs don't (all of them in a dry-run after a run was
    /// cut short; in a run, those its replay could not write): remembered as seen, with
    /// nothing to write.
    pub fn restore(&mut self, day: i64, keys: &[u8]) {
        let set = self.days.entry(day).or_default();
        for chunk in keys.chunks_exact(KEY_BYTES) {
            let mut key = [0u8; KEY_BYTES];
            key.copy_from_slice(chunk);
            let key = u128::from_le_bytes(key);
            if !set.contains(key) && set.fresh.insert(key) {
                self.total += 1;
            }
        }
        self.enforce_ceiling();
    }

    /// Drops the days that left the retention.
    pub fn expire(&mut self, now_ms: i64) {
        let oldest_kept = now_ms.div_euclid(DAY_MS) - self.retention_days;
        let old: Vec<i64> = self.days.range(..oldest_kept).map(|(d, _)| *d).collect();
        for day in old {
            self.drop_day(day);
        }
    }

    /// What was committed or dropped since the last call, for the disk.
    pub fn take_writes(&mut self) -> Writes {
        Writes {
            appends: std::mem::take(&mut self.unwritten),
            deletes: std::mem::take(&mut self.dropped),
        }
    }

    /// The days whose fresh keys should become a run now (their log written): those with
    /// `fresh_max` of them, and days before yesterday with any fresh key or more than one run
    /// (late content for an old day is rare: its keys should not wait in memory for more, and
    /// its runs are merged into one).
    pub fn compactions_due(&self, now_ms: i64) -> Vec<Compaction> {
        let yesterday = now_ms.div_euclid(DAY_MS) - 1;
        self.days
            .iter()
            .filter(|(day, d)| self.due(**day, d, yesterday))
            .map(|(day, d)| {
                // Sorted by the compaction, outside the lock.
                let fresh: Vec<u128> = d.fresh.iter().copied().collect();
                // A finished day is merged into one run: fewer filters to probe per id.
                let merge =
                    if d.runs.len() >= self.max_runs || (*day < yesterday && d.runs.len() > 1) {
                        d.runs.iter().map(|r| r.path().to_path_buf()).collect()
                    } else {
                        Vec::new()
                    };
                let index = d
                    .runs
                    .iter()
                    .filter_map(|r| run_index(r.path()))
                    .map(|(_, i)| i + 1)
                    .max()
                    .unwrap_or(0);
                Compaction {
                    day: *day,
                    fresh,
                    merge,
                    index,
                }
            })
            .collect()
    }

    /// Whether [`SeenSet::compactions_due`] has any (cheap: nothing copied).
    pub fn compaction_due(&self, now_ms: i64) -> bool {
        let yesterday = now_ms.div_euclid(DAY_MS) - 1;
        self.days
            .iter()
            .any(|(day, d)| self.due(*day, d, yesterday))
    }

    fn due(&self, day: i64, d: &Day, yesterday: i64) -> bool {
        d.fresh.len() >= self.fresh_max
            || (day < yesterday && (!d.fresh.is_empty() || d.runs.len() > 1))
    }

    /// Puts a run written by [`SeenFiles::compact`] in place of the fresh keys (and runs) it
    /// holds. Returns false when the day expired meanwhile (the run is then deleted with it).
    pub fn install(&mut self, done: Compacted) -> bool {
        let Some(day) = self.days.get_mut(&done.day) else {
            return false;
        };
        day.runs
            .retain(|r| !done.replaced.iter().any(|p| p == r.path()));
        if day.fresh.len() == done.fresh.len() {
            // Nothing was committed to the day meanwhile (the committer compacts between its
            // commits): the whole set went into the run.
            day.fresh = KeySet::default();
        } else {
            for key in &done.fresh {
                day.fresh.remove(key);
            }
            day.fresh.shrink_to_fit();
        }
        day.runs.push(done.run);
        self.total = self.days.values().map(Day::len).sum();
        true
    }

    fn enforce_ceiling(&mut self) {
        while self.total > self.max_ids && self.days.len() > 1 {
            let Some(oldest) = self.days.keys().next().copied() else {
                break;
            };
            tracing::warn!(
                day = oldest,
                ids = self.total,
                max = self.max_ids,
                "seen-id set over management_api.dedupe.max_ids_per_tenant: forgetting the oldest day early; duplicates from it are possible"
            );
            self.evicted_early += 1;
            self.drop_day(oldest);
        }
    }

    fn drop_day(&mut self, day: i64) {
        if let Some(set) = self.days.remove(&day) {
            self.total -= set.len();
        }
        self.unwritten.remove(&day);
        self.dropped.push(day);
    }
}

#[cfg(test)]
mod tests;
