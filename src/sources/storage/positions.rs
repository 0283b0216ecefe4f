//! How far each append blob is read and safe downstream: one JSON file per storage account,
//! `{ "blobs": { "<container>/<blob>": <byte offset> } }`, replaced atomically. The offset is
//! always at a line start, so a restart reads on from a whole line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::private_fs;

#[derive(Debug, thiserror::Error)]
pub enum BlobPositionError {
    #[error("storage positions {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "storage positions {path} is damaged ({detail}); move it aside to read the last lookback_hours again (exact repeats within the dedupe window are skipped)"
    )]
    Damaged { path: PathBuf, detail: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobPositions {
    pub account: String,
    /// `<container>/<blob name>` → bytes safe downstream.
    pub blobs: BTreeMap<String, u64>,
}

pub struct BlobPositionFile {
    path: PathBuf,
    persist: bool,
}

impl BlobPositionFile {
    /// The account's file under `state_dir/storage`; `persist: false` (dry-run) never writes.
    pub fn open(state_dir: &Path, account: &str, persist: bool) -> Result<Self, BlobPositionError> {
        let dir = state_dir.join("storage");
        if persist {
            private_fs::private_dir(&dir).map_err(|error| BlobPositionError::Io {
                path: dir.clone(),
                error,
            })?;
        }
        Ok(Self {
            path: dir.join(format!("{account}.json")),
            persist,
        })
    }

    pub fn load(&self, account: &str) -> Result<BlobPositions, BlobPositionError> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(BlobPositions {
                    account: account.to_string(),
                    blobs: BTreeMap::new(),
                });
            }
            Err(error) => {
                return Err(BlobPositionError::Io {
                    path: self.path.clone(),
                    error,
                });
            }
        };
        let positions: BlobPositions =
            serde_json::from_slice(&text).map_err(|e| BlobPositionError::Damaged {
                path: self.path.clone(),
                detail: e.to_string(),
            })?;
        if positions.account != account {
            return Err(BlobPositionError::Damaged {
                path: self.path.clone(),
                detail: format!("it belongs to account {}", positions.account),
            });
        }
        Ok(positions)
    }

    pub fn save(&self, positions: &BlobPositions) -> Result<(), BlobPositionError> {
        if !self.persist {
            return Ok(());
        }
        let io = |error| BlobPositionError::Io {
            path: self.path.clone(),
            error,
        };
        let text =
            serde_json::to_vec_pretty(positions).map_err(|e| io(std::io::Error::other(e)))?;
        private_fs::write_atomic(&self.path, &text).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_a_damaged_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let file = BlobPositionFile::open(dir.path(), "acct", true).unwrap();
        let mut p = file.load("acct").unwrap();
        assert!(p.blobs.is_empty());
        p.blobs.insert("c/tenantId=x/PT1H.json".into(), 1234);
        file.save(&p).unwrap();
        assert_eq!(file.load("acct").unwrap(), p);
        std::fs::write(dir.path().join("storage/acct.json"), b"{not json").unwrap();
        let e = file.load("acct").unwrap_err().to_string();
        assert!(e.contains("storage/acct.json is damaged"), "{e}");
    }

    #[test]
    fn dry_run_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = BlobPositionFile::open(dir.path(), "acct", false).unwrap();
        file.save(&BlobPositions::default()).unwrap();
        assert!(!dir.path().join("storage").exists());
    }
}
