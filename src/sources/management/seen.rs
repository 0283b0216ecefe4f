//! Record ids already delivered, per tenant, so the duplicates the Management API produces by
//! design (the same record in several blobs) and blobs read again after a restart don't reach the
//! workspace twice.
//!
//! Ids are kept as 128-bit keys (a GUID as its own value; anything else hashed with SHA-256),
//! grouped by the UTC day of the content that carried them, and dropped when that day leaves the
//! retention (8 days by default: the API serves content for 7). On disk, one file per day of
//! 16-byte keys, appended when a blob is safe downstream and flushed before the position that
//! covers it is written. A torn tail (a partial key) is ignored on loading.
//!
//! Ids of blobs still in flight are only in memory ("pending"): a crash forgets them, and the
//! blob, whose position was not committed, is read again and its records sent.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::state::private_fs;

const DAY_MS: i64 = 86_400_000;
const KEY_BYTES: usize = 16;

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

/// The ids in memory. Shared (behind a lock) by the mapper, which admits, and the committer,
/// which commits; it does no I/O itself, so the lock is never held across a disk write.
pub struct SeenSet {
    days: BTreeMap<i64, HashSet<u128>>,
    pending: HashSet<u128>,
    retention_days: i64,
    max_ids: usize,
    total: usize,
    /// Keys committed since the last [`SeenSet::take_writes`], per day.
    unwritten: BTreeMap<i64, Vec<u8>>,
    /// Days dropped since the last [`SeenSet::take_writes`].
    dropped: Vec<i64>,
    /// Days dropped before their retention ended because of `max_ids`.
    pub evicted_early: u64,
}

/// What the disk must catch up on.
#[derive(Debug, Default)]
pub struct Writes {
    appends: BTreeMap<i64, Vec<u8>>,
    deletes: Vec<i64>,
}

impl SeenSet {
    /// Loads the tenant's day files from `dir` (none: an empty set). With `persist`, files past
    /// the retention are deleted and torn tails cut; without it (dry-run) nothing is changed.
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
        let mut files: Vec<(i64, PathBuf)> = Vec::new();
        for entry in entries {
            let path = entry.map_err(err(dir))?.path();
            let day = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ids"))
                .and_then(|d| d.parse::<i64>().ok());
            if let Some(day) = day {
                files.push((day, path));
            }
        }
        files.sort();
        for (day, path) in files {
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
                if keys.insert(u128::from_le_bytes(key)) {
                    set.total += 1;
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
        loaded.ids = set.total;
        set.enforce_ceiling();
        Ok((set, loaded))
    }

    /// A set with no files behind it.
    pub fn in_memory(retention_days: u32, max_ids: usize) -> Self {
        Self {
            days: BTreeMap::new(),
            pending: HashSet::new(),
            retention_days: i64::from(retention_days),
            max_ids,
            total: 0,
            unwritten: BTreeMap::new(),
            dropped: Vec::new(),
            evicted_early: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// True the first time an id is offered (it is now in flight); false for an id already
    /// delivered or in flight from another blob.
    pub fn admit(&mut self, key: u128) -> bool {
        // Newest days first: duplicates are mostly recent.
        if self.pending.contains(&key) || self.days.values().rev().any(|d| d.contains(&key)) {
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
            if set.insert(*key) {
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
            let path = self.path(day);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
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
                expired_files: 1
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
}
