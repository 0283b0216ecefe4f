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

use crate::private_fs;

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

pub struct SeenSet {
    /// None: memory only (dry-run reads the files but never writes).
    dir: Option<PathBuf>,
    days: BTreeMap<i64, HashSet<u128>>,
    pending: HashSet<u128>,
    open: HashMap<i64, File>,
    dirty: HashSet<i64>,
    retention_days: i64,
    max_ids: usize,
    total: usize,
    /// Days dropped before their retention ended because of `max_ids`.
    pub evicted_early: u64,
}

impl SeenSet {
    /// Loads the tenant's day files from `dir` (and writes there when `persist`).
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
        if persist {
            private_fs::private_dir(dir).map_err(err(dir))?;
        }
        let mut set = Self::in_memory(retention_days, max_ids);
        set.dir = persist.then(|| dir.to_path_buf());
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
            loaded.torn_bytes += bytes.len() % KEY_BYTES;
            let keys = set.days.entry(day).or_default();
            for chunk in bytes.chunks_exact(KEY_BYTES) {
                let mut key = [0u8; KEY_BYTES];
                key.copy_from_slice(chunk);
                if keys.insert(u128::from_le_bytes(key)) {
                    set.total += 1;
                }
            }
            if persist && bytes.len() % KEY_BYTES != 0 {
                // Cut the torn key off, so appends start at a key boundary again.
                let keep = (bytes.len() - bytes.len() % KEY_BYTES) as u64;
                private_fs::private_options()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(keep))
                    .map_err(err(&path))?;
            }
            loaded.files += 1;
        }
        loaded.ids = set.total;
        set.enforce_ceiling();
        Ok((set, loaded))
    }

    /// A set with no files at all.
    pub fn in_memory(retention_days: u32, max_ids: usize) -> Self {
        Self {
            dir: None,
            days: BTreeMap::new(),
            pending: HashSet::new(),
            open: HashMap::new(),
            dirty: HashSet::new(),
            retention_days: i64::from(retention_days),
            max_ids,
            total: 0,
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
        if self.pending.contains(&key) || self.days.values().any(|d| d.contains(&key)) {
            return false;
        }
        self.pending.insert(key);
        true
    }

    /// The blob that admitted `keys` is safe downstream: remember them for good under the
    /// content's day. Written to the day file, flushed by [`SeenSet::sync`].
    pub fn commit(&mut self, created_ms: i64, keys: &[u128]) -> Result<(), SeenError> {
        let day = created_ms.div_euclid(DAY_MS);
        let set = self.days.entry(day).or_default();
        let mut bytes = Vec::with_capacity(keys.len() * KEY_BYTES);
        for key in keys {
            self.pending.remove(key);
            if set.insert(*key) {
                self.total += 1;
                bytes.extend_from_slice(&key.to_le_bytes());
            }
        }
        if let Some(dir) = &self.dir
            && !bytes.is_empty()
        {
            let path = dir.join(format!("{day}.ids"));
            let file = match self.open.entry(day) {
                std::collections::hash_map::Entry::Occupied(f) => f.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(private_fs::append(&path).map_err(|error| SeenError {
                        path: path.clone(),
                        error,
                    })?)
                }
            };
            file.write_all(&bytes)
                .map_err(|error| SeenError { path, error })?;
            self.dirty.insert(day);
        }
        self.enforce_ceiling();
        Ok(())
    }

    /// Flushes the ids written since the last call to disk.
    pub fn sync(&mut self) -> Result<(), SeenError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        for day in self.dirty.drain() {
            if let Some(file) = self.open.get(&day) {
                file.sync_data().map_err(|error| SeenError {
                    path: dir.join(format!("{day}.ids")),
                    error,
                })?;
            }
        }
        private_fs::sync_dir(dir).map_err(|error| SeenError {
            path: dir.clone(),
            error,
        })
    }

    /// Drops the days that left the retention.
    pub fn expire(&mut self, now_ms: i64) -> Result<(), SeenError> {
        let oldest_kept = now_ms.div_euclid(DAY_MS) - self.retention_days;
        let old: Vec<i64> = self.days.range(..oldest_kept).map(|(d, _)| *d).collect();
        for day in old {
            self.drop_day(day)?;
        }
        Ok(())
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
            if let Err(e) = self.drop_day(oldest) {
                tracing::warn!(error = %e, "could not delete a seen-id file");
            }
        }
    }

    fn drop_day(&mut self, day: i64) -> Result<(), SeenError> {
        if let Some(set) = self.days.remove(&day) {
            self.total -= set.len();
        }
        self.open.remove(&day);
        self.dirty.remove(&day);
        if let Some(dir) = &self.dir {
            let path = dir.join(format!("{day}.ids"));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(SeenError { path, error }),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 20_000 * DAY_MS + 3_600_000;

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
        assert!(seen.admit(1));
        assert!(!seen.admit(1), "in flight");
        assert!(seen.admit(2));
        seen.commit(NOW, &[1]).unwrap();
        seen.sync().unwrap();
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
        seen.commit(NOW, &[9]).unwrap();
        seen.sync().unwrap();
        let (_, loaded) = SeenSet::load(dir.path(), true, NOW, 8, 1_000).unwrap();
        assert_eq!((loaded.ids, loaded.torn_bytes), (2, 0));
    }

    #[test]
    fn the_ceiling_drops_the_oldest_day_first() {
        let mut seen = SeenSet::in_memory(8, 3);
        seen.commit(NOW - 2 * DAY_MS, &[1, 2]).unwrap();
        seen.commit(NOW, &[3, 4]).unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen.evicted_early, 1);
        assert!(seen.admit(1));
        assert!(!seen.admit(3));
    }

    #[test]
    fn dry_run_reads_but_never_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut seen, _) = SeenSet::load(dir.path(), false, NOW, 8, 100).unwrap();
        seen.admit(5);
        seen.commit(NOW, &[5]).unwrap();
        seen.sync().unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
