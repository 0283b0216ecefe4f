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

pub mod run;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
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

/// Hashes a key for the fresh sets. Keys are GUIDs or SHA-256 prefixes (near uniform), so a
/// multiply-fold with a per-process seed spreads them; SipHash would cost more than the lookup.
#[derive(Clone)]
struct KeyHasherBuilder(u64);

impl Default for KeyHasherBuilder {
    fn default() -> Self {
        use std::hash::BuildHasher as _;
        Self(std::collections::hash_map::RandomState::new().hash_one(0u8) | 1)
    }
}

#[derive(Default)]
struct KeyHasher {
    seed: u64,
    hash: u64,
}

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        let folded = u128::from(self.hash ^ word) * u128::from(self.seed);
        self.hash = (folded as u64) ^ ((folded >> 64) as u64);
    }

    fn write_u128(&mut self, key: u128) {
        self.write_u64(key as u64);
        self.write_u64((key >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

impl std::hash::BuildHasher for KeyHasherBuilder {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher {
            seed: self.0,
            hash: 0,
        }
    }
}

type KeySet = HashSet<u128, KeyHasherBuilder>;

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
#[derive(Debug, Default)]
pub struct Writes {
    appends: BTreeMap<i64, Vec<u8>>,
    deletes: Vec<i64>,
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
            .filter(|(day, d)| {
                d.fresh.len() >= self.fresh_max
                    || (**day < yesterday && (!d.fresh.is_empty() || d.runs.len() > 1))
            })
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

/// The day files of one tenant, owned by its committer.
pub struct SeenFiles {
    dir: PathBuf,
    /// Open day files and the length known to be whole.
    open: HashMap<i64, (File, u64)>,
}

impl SeenFiles {
    /// Opens (creating it 0700) the tenant's directory.
    pub fn open(dir: &Path) -> Result<Self, SeenError> {
        private_fs::private_dir(dir).map_err(|error| SeenError {
            path: dir.to_path_buf(),
            error,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            open: HashMap::new(),
        })
    }

    fn path(&self, day: i64) -> PathBuf {
        self.dir.join(format!("{day}.ids"))
    }

    /// Appends and deletes, then flushes what was appended to disk. A failed append is cut
    /// back to the last whole key, so later appends stay aligned; its ids are only missing from
    /// the disk (a restart may then send their duplicates again; it loses nothing).
    pub fn write(&mut self, writes: Writes) -> Result<(), SeenError> {
        let mut first_error = None;
        for day in writes.deletes {
            self.open.remove(&day);
            let mut paths = vec![self.path(day)];
            paths.extend(self.runs_of(day));
            for path in paths {
                if let Err(error) = remove_if_there(&path) {
                    first_error.get_or_insert(SeenError { path, error });
                }
            }
        }
        let mut touched = Vec::new();
        for (day, bytes) in writes.appends {
            if bytes.is_empty() {
                continue;
            }
            let path = self.path(day);
            if let Err(error) = self.append(day, &path, &bytes) {
                first_error.get_or_insert(SeenError { path, error });
            } else {
                touched.push(day);
            }
        }
        for day in touched {
            if let Some((file, _)) = self.open.get(&day)
                && let Err(error) = file.sync_data()
            {
                // After a failed fsync the kernel may have dropped the pages: start the file
                // handle afresh.
                self.open.remove(&day);
                first_error.get_or_insert(SeenError {
                    path: self.path(day),
                    error,
                });
            }
        }
        if let Err(error) = private_fs::sync_dir(&self.dir) {
            first_error.get_or_insert(SeenError {
                path: self.dir.clone(),
                error,
            });
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The run files of `day` on disk.
    fn runs_of(&self, day: i64) -> Vec<PathBuf> {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| run_index(p).is_some_and(|(d, _)| d == day))
            .collect()
    }

    /// Writes a compaction's run (its fresh keys, merged with the runs it names). Its keys
    /// stay in the day's log until [`SeenFiles::retire`], so a crash here loses none.
    pub fn compact(&mut self, c: Compaction) -> Result<Compacted, SeenError> {
        let path = self.dir.join(format!("{}.{}.run", c.day, c.index));
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |error| SeenError { path, error }
        };
        let mut keys = c.fresh.clone();
        for merged in &c.merge {
            let run = SortedRun::open(merged).map_err(err(merged))?;
            keys.extend(run.read_keys().map_err(err(merged))?);
        }
        keys.sort_unstable();
        keys.dedup();
        let run = SortedRun::write(&path, &keys).map_err(err(&path))?;
        Ok(Compacted {
            day: c.day,
            run,
            fresh: c.fresh,
            replaced: c.merge,
        })
    }

    /// After [`SeenSet::install`]: deletes the runs a merge replaced and empties the day's
    /// log, whose keys are all in runs now.
    pub fn retire(&mut self, day: i64, replaced: &[PathBuf]) -> Result<(), SeenError> {
        for path in replaced {
            remove_if_there(path).map_err(|error| SeenError {
                path: path.clone(),
                error,
            })?;
        }
        let path = self.path(day);
        self.open.remove(&day);
        match private_fs::private_options().write(true).open(&path) {
            Ok(file) => file
                .set_len(0)
                .and_then(|()| file.sync_data())
                .map_err(|error| SeenError { path, error }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(SeenError { path, error }),
        }
    }

    fn append(&mut self, day: i64, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let (file, len) = match self.open.entry(day) {
            std::collections::hash_map::Entry::Occupied(open) => open.into_mut(),
            std::collections::hash_map::Entry::Vacant(vacant) => {
                let file = private_fs::append(path)?;
                let len = file.metadata()?.len();
                // A torn key from an earlier failure: cut back to a whole key first.
                let whole = len - len % KEY_BYTES as u64;
                if whole != len {
                    file.set_len(whole)?;
                }
                vacant.insert((file, whole))
            }
        };
        match file.write_all(bytes) {
            Ok(()) => {
                *len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = file.set_len(*len);
                self.open.remove(&day);
                Err(e)
            }
        }
    }
}

fn remove_if_there(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Turns the due days' fresh keys into runs: written on disk with no lock held, installed in
/// memory under it, and only then the logs emptied. Runs after a successful [`SeenFiles::write`]
/// (so every fresh key is in a log already).
pub fn compact_due(
    seen: &std::sync::Mutex<SeenSet>,
    files: &mut SeenFiles,
    now_ms: i64,
) -> Result<usize, SeenError> {
    let due = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .compactions_due(now_ms);
    let mut done = 0;
    for c in due {
        let compacted = files.compact(c)?;
        let (day, replaced, path) = (
            compacted.day,
            compacted.replaced.clone(),
            compacted.run.path().to_path_buf(),
        );
        if seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .install(compacted)
        {
            files.retire(day, &replaced)?;
            done += 1;
        } else {
            remove_if_there(&path).map_err(|error| SeenError { path, error })?;
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 20_000 * DAY_MS + 3_600_000;

    fn commit_and_write(seen: &mut SeenSet, files: &mut SeenFiles, created: i64, keys: &[u128]) {
        seen.commit(created, keys);
        files.write(seen.take_writes()).unwrap();
    }

    #[test]
    fn guids_are_their_own_key_and_other_ids_are_hashed() {
        let a = id_key("0b3a8f5e-1c2d-4e5f-8a9b-0c1d2e3f4a5b");
        assert_eq!(a, id_key("0B3A8F5E-1C2D-4E5F-8A9B-0C1D2E3F4A5B"));
        assert_eq!(a, 0x0b3a8f5e_1c2d_4e5f_8a9b_0c1d2e3f4a5b);
        assert_ne!(id_key("not-a-guid"), id_key("not-a-guid2"));
        assert_eq!(id_key("not-a-guid"), id_key("not-a-guid"));
    }

    #[test]
    fn pending_ids_are_forgotten_by_a_crash_committed_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (mut seen, _) = SeenSet::load(dir.path(), true, NOW, 8, 1_000).unwrap();
        let mut files = SeenFiles::open(dir.path()).unwrap();
        assert!(seen.admit(1));
        assert!(!seen.admit(1), "in flight");
        assert!(seen.admit(2));
        commit_and_write(&mut seen, &mut files, NOW, &[1]);
        assert!(!seen.admit(1), "delivered");
        drop(seen);
        let (mut again, loaded) = SeenSet::load(dir.path(), true, NOW, 8, 1_000).unwrap();
        assert_eq!(loaded.ids, 1);
        assert!(!again.admit(1));
        assert!(
            again.admit(2),
            "2 was only in flight when the process stopped"
        );
    }

    #[test]
    fn a_torn_tail_is_cut_and_expired_days_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let day = NOW / DAY_MS;
        let mut bytes = 7u128.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[1, 2, 3]);
        std::fs::write(dir.path().join(format!("{day}.ids")), &bytes).unwrap();
        std::fs::write(
            dir.path().join(format!("{}.ids", day - 9)),
            9u128.to_le_bytes(),
        )
        .unwrap();
        let (mut seen, loaded) = SeenSet::load(dir.path(), true, NOW, 8, 1_000).unwrap();
        assert_eq!(
            loaded,
            Loaded {
                ids: 1,
                files: 1,
                torn_bytes: 3,
                expired_files: 1,
                damaged_runs: Vec::new(),
            }
        );
        assert!(!seen.admit(7));
        assert!(seen.admit(9));
        let mut files = SeenFiles::open(dir.path()).unwrap();
        commit_and_write(&mut seen, &mut files, NOW, &[9]);
        let (_, loaded) = SeenSet::load(dir.path(), true, NOW, 8, 1_000).unwrap();
        assert_eq!((loaded.ids, loaded.torn_bytes), (2, 0));
    }

    #[test]
    fn a_torn_file_left_by_a_failed_write_is_realigned_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let day = NOW / DAY_MS;
        let path = dir.path().join(format!("{day}.ids"));
        let mut bytes = 5u128.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[9; 7]);
        std::fs::write(&path, &bytes).unwrap();
        let mut seen = SeenSet::in_memory(8, 100);
        let mut files = SeenFiles::open(dir.path()).unwrap();
        commit_and_write(&mut seen, &mut files, NOW, &[6]);
        assert_eq!(std::fs::read(&path).unwrap().len(), 32);
        let (mut reloaded, loaded) = SeenSet::load(dir.path(), false, NOW, 8, 100).unwrap();
        assert_eq!(loaded.torn_bytes, 0);
        assert!(!reloaded.admit(5) && !reloaded.admit(6));
    }

    #[test]
    fn the_ceiling_and_the_retention_drop_the_oldest_days_files_included() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = SeenSet::in_memory(8, 3);
        let mut files = SeenFiles::open(dir.path()).unwrap();
        commit_and_write(&mut seen, &mut files, NOW - 2 * DAY_MS, &[1, 2]);
        commit_and_write(&mut seen, &mut files, NOW, &[3, 4]);
        assert_eq!(seen.len(), 2);
        assert_eq!(seen.evicted_early, 1);
        assert!(seen.admit(1));
        assert!(!seen.admit(3));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        seen.expire(NOW + 9 * DAY_MS);
        files.write(seen.take_writes()).unwrap();
        assert!(seen.is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn dry_run_reads_but_never_writes() {
        let dir = tempfile::tempdir().unwrap();
        let day = NOW / DAY_MS;
        std::fs::write(dir.path().join(format!("{day}.ids")), [1u8, 2, 3]).unwrap();
        std::fs::write(dir.path().join(format!("{}.ids", day - 20)), [0u8; 16]).unwrap();
        let (mut seen, loaded) = SeenSet::load(dir.path(), false, NOW, 8, 100).unwrap();
        assert_eq!((loaded.torn_bytes, loaded.expired_files), (3, 1));
        seen.admit(5);
        seen.commit(NOW, &[5]);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "nothing deleted"
        );
        assert_eq!(
            std::fs::read(dir.path().join(format!("{day}.ids")))
                .unwrap()
                .len(),
            3
        );
    }

    /// Keys that differ only in their lowest bits (the hardest case for a filter).
    fn near(i: u128) -> u128 {
        (0x0123_4567_89ab_cdef_u128 << 64) | (i * 2)
    }

    fn files_named(dir: &Path, suffix: &str) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(suffix)
            })
            .count()
    }

    #[test]
    fn fresh_ids_become_runs_the_log_empties_and_a_restart_finds_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let lock = std::sync::Mutex::new(SeenSet::in_memory(8, 1_000_000).with_compaction(100, 3));
        let mut files = SeenFiles::open(dir.path()).unwrap();
        for batch in 0..10u128 {
            let keys: Vec<u128> = (batch * 100..batch * 100 + 100).map(near).collect();
            let mut seen = lock.lock().unwrap();
            for k in &keys {
                assert!(seen.admit(*k));
            }
            seen.commit(NOW, &keys);
            let writes = seen.take_writes();
            drop(seen);
            files.write(writes).unwrap();
            assert_eq!(compact_due(&lock, &mut files, NOW).unwrap(), 1);
        }
        let day = NOW / DAY_MS;
        assert_eq!(
            std::fs::metadata(dir.path().join(format!("{day}.ids")))
                .unwrap()
                .len(),
            0,
            "every id is in a run"
        );
        // Ten runs made, merged whenever a fourth would come: never more than three.
        let runs = files_named(dir.path(), ".run");
        assert!((1..=3).contains(&runs), "{runs} run files");
        let mut seen = lock.into_inner().unwrap();
        assert_eq!(seen.len(), 1_000);
        let per_id = seen.memory_bytes() as f64 / 1_000.0;
        assert!(per_id < 3.0, "{per_id} bytes of memory per id");
        let (mut reloaded, loaded) = SeenSet::load(dir.path(), true, NOW, 8, 1_000_000).unwrap();
        assert_eq!(loaded.ids, 1_000);
        for set in [&mut seen, &mut reloaded] {
            for i in 0..1_000 {
                assert!(!set.admit(near(i)), "{i} was delivered");
                assert!(set.admit(near(i) + 1), "{i}+1 never was");
            }
        }
        // The day leaving the retention takes its runs with it.
        reloaded.expire(NOW + 9 * DAY_MS);
        files.write(reloaded.take_writes()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_crash_between_writing_a_run_and_emptying_the_log_counts_each_id_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = SeenSet::in_memory(8, 1_000).with_compaction(10, 4);
        let mut files = SeenFiles::open(dir.path()).unwrap();
        let keys: Vec<u128> = (0..20).map(near).collect();
        commit_and_write(&mut seen, &mut files, NOW, &keys);
        let due = seen.compactions_due(NOW);
        assert_eq!(due.len(), 1);
        for c in due {
            files.compact(c).unwrap(); // written, never installed nor retired: the crash
        }
        std::fs::write(dir.path().join("19.0.run.tmp"), b"half a run").unwrap();
        let (mut again, loaded) = SeenSet::load(dir.path(), true, NOW, 8, 1_000).unwrap();
        assert_eq!(
            loaded.ids, 20,
            "the log's copies of the run's ids are not counted twice"
        );
        assert!(keys.iter().all(|k| !again.admit(*k)));
        assert_eq!(
            files_named(dir.path(), ".tmp"),
            0,
            "a cut-short run is removed"
        );
    }

    /// The property dedupe must never break: an id that was admitted but whose blob never
    /// became safe (a crash), or that was never offered, is admitted after any number of
    /// compactions, merges and restarts.
    #[test]
    fn a_record_never_delivered_is_never_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut delivered = Vec::new();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..6 {
            let (set, _) = SeenSet::load(dir.path(), true, NOW, 8, 1_000_000).unwrap();
            let lock = std::sync::Mutex::new(set.with_compaction(64, 2));
            let mut files = SeenFiles::open(dir.path()).unwrap();
            for blob in 0..20 {
                let keys: Vec<u128> = (0..25)
                    .map(|_| near(u128::from(next() % 1_000_000)))
                    .collect();
                let mut seen = lock.lock().unwrap();
                let admitted: Vec<u128> = keys.iter().copied().filter(|k| seen.admit(*k)).collect();
                // Every other blob of the last round is still in flight when the process dies.
                if round == 5 && blob % 2 == 1 {
                    continue;
                }
                let day = NOW - i64::from(blob % 3) * DAY_MS;
                seen.commit(day, &admitted);
                delivered.extend(admitted);
                let writes = seen.take_writes();
                drop(seen);
                files.write(writes).unwrap();
                compact_due(&lock, &mut files, NOW).unwrap();
            }
        }
        let (mut seen, loaded) = SeenSet::load(dir.path(), true, NOW, 8, 1_000_000).unwrap();
        delivered.sort_unstable();
        delivered.dedup();
        assert_eq!(loaded.ids, delivered.len());
        for i in 0..1_000_000u128 {
            let key = near(i);
            let was_delivered = delivered.binary_search(&key).is_ok();
            assert_eq!(!seen.admit(key), was_delivered, "id {i}");
            assert!(seen.admit(key + 1), "{i}+1 was never offered");
        }
    }
}
