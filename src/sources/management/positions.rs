//! Where collection of each (tenant, content type) stands, on local disk: one JSON file per
//! tenant, replaced atomically. A position only moves past content whose every row is safe
//! downstream (see `tracker`), so after a crash collection resumes from it and loses nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::stages::map::datetime::{format_unix_millis, parse_unix_millis};
use crate::state::private_fs;

#[derive(Debug, thiserror::Error)]
pub enum PositionError {
    #[error("positions {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "positions {path} is damaged ({detail}); move it aside to restart this tenant from management_api.initial_lookback_hours (records already sent are skipped by the seen-id set)"
    )]
    Damaged { path: PathBuf, detail: String },
}

/// One content type's position.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentPosition {
    /// Every listed blob created before this time is safe downstream; None before the first
    /// listing completed (only a subscription start is recorded then).
    #[serde(with = "iso_millis")]
    pub committed: Option<i64>,
    /// Blobs created at or after `committed` minus the relist overlap that are already safe:
    /// content id → created. A relisting skips them.
    #[serde(default)]
    pub done: BTreeMap<String, i64>,
    /// When this process last asked to start the subscription (the API wants 15 minutes between
    /// two starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_started: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPositions {
    pub tenant_id: String,
    pub content_types: BTreeMap<String, ContentPosition>,
}

pub struct PositionStore {
    dir: PathBuf,
}

impl PositionStore {
    /// Opens (creating it 0700) the positions directory.
    pub fn open(dir: &Path) -> Result<Self, PositionError> {
        private_fs::private_dir(dir).map_err(|error| PositionError::Io {
            path: dir.to_path_buf(),
            error,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// A store that is only read (dry-run): no directory is created.
    pub fn read_only(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, tenant_id: &str) -> PathBuf {
        self.dir
            .join(format!("{}.json", tenant_id.to_ascii_lowercase()))
    }

    /// The tenant's positions; empty when it was never collected.
    pub fn load(&self, tenant_id: &str) -> Result<TenantPositions, PositionError> {
        let path = self.path(tenant_id);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(TenantPositions {
                    tenant_id: tenant_id.to_string(),
                    content_types: BTreeMap::new(),
                });
            }
            Err(error) => return Err(PositionError::Io { path, error }),
        };
        let positions: TenantPositions =
            serde_json::from_slice(&text).map_err(|e| PositionError::Damaged {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        if !positions.tenant_id.eq_ignore_ascii_case(tenant_id) {
            return Err(PositionError::Damaged {
                path,
                detail: format!("it belongs to tenant {}", positions.tenant_id),
            });
        }
        Ok(positions)
    }

    pub fn save(&self, positions: &TenantPositions) -> Result<(), PositionError> {
        let path = self.path(&positions.tenant_id);
        let text = serde_json::to_vec_pretty(positions).map_err(|e| PositionError::Io {
            path: path.clone(),
            error: std::io::Error::other(e),
        })?;
        private_fs::write_atomic(&path, &text).map_err(|error| PositionError::Io { path, error })
    }
}

/// Times as ISO 8601 text in the file, so an operator can read where collection stands.
mod iso_millis {
    use super::*;

    pub fn serialize<S: serde::Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => s.serialize_str(&format_unix_millis(*ms)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        parse_unix_millis(&text)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not a date-time")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_atomic_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = PositionStore::open(&dir.path().join("p")).unwrap();
        let tenant = "11111111-2222-3333-4444-555555555555";
        assert!(store.load(tenant).unwrap().content_types.is_empty());
        let mut p = TenantPositions {
            tenant_id: tenant.into(),
            ..Default::default()
        };
        p.content_types.insert(
            "Audit.Exchange".into(),
            ContentPosition {
                committed: Some(1_700_000_000_123),
                done: [("blob-1".to_string(), 1_700_000_000_000)].into(),
                subscription_started: Some(1_699_999_000_000),
            },
        );
        store.save(&p).unwrap();
        assert_eq!(store.load(tenant).unwrap(), p);
        let text = std::fs::read_to_string(dir.path().join(format!("p/{tenant}.json"))).unwrap();
        assert!(text.contains("2023-11-14T22:13:20.123Z"), "{text}");
        assert!(!dir.path().join(format!("p/{tenant}.tmp")).exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir.path().join("p")), 0o700);
            assert_eq!(mode(&dir.path().join(format!("p/{tenant}.json"))), 0o600);
        }
    }

    #[test]
    fn a_damaged_file_is_named_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let store = PositionStore::open(dir.path()).unwrap();
        let tenant = "11111111-2222-3333-4444-555555555555";
        std::fs::write(
            dir.path().join(format!("{tenant}.json")),
            b"{\"tenant_id\":",
        )
        .unwrap();
        let e = store.load(tenant).unwrap_err().to_string();
        assert!(e.contains(tenant) && e.contains("move it aside"), "{e}");
    }
}
