//! The disk side of a tenant's seen ids, owned by its committer: appending the day logs,
//! writing compactions' runs, and retiring what they replaced.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::run::SortedRun;
use super::{Compacted, Compaction, KEY_BYTES, SeenError, SeenSet, Writes, run_index};
use crate::state::private_fs;

/// The day files of one tenant, owned by its committer.
pub struct SeenFiles {
    dir: PathBuf,
    /// Open day files and the length known to be whole.
    open: HashMap<i64, (File, u64)>,
    /// A file was created or deleted since the directory was last flushed. Flushing it only
    /// then keeps a commit to one fsync per touched day file.
    entries_changed: bool,
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
            entries_changed: true,
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
        self.entries_changed |= !writes.deletes.is_empty();
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
        if self.entries_changed {
            match private_fs::sync_dir(&self.dir) {
                Ok(()) => self.entries_changed = false,
                Err(error) => {
                    first_error.get_or_insert(SeenError {
                        path: self.dir.clone(),
                        error,
                    });
                }
            }
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
                // Possibly created just now: its name must reach the disk too.
                self.entries_changed |= whole == 0;
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
