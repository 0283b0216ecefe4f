//! Where collection of each (tenant, content type) stands, on local disk: one JSON document per
//! tenant, replaced durably in place (two slots written in turn, see `state::slot_file`). A position only moves past content whose every row is safe
//! downstream (see `tracker`), so after a crash collection resumes from it and loses nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::stages::map::datetime::{format_unix_millis, parse_unix_millis};
use crate::state::private_fs;
use crate::state::slot_file::{SlotFile, SlotRead};

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

/// Where every tenant's positions are kept: a slot pair per tenant (`TENANT.0`, `TENANT.1`,
/// see [`SlotFile`]), each slot a header line and the positions as JSON.
pub struct PositionStore {
    dir: PathBuf,
    /// The tenants loaded so far, each with its own lock, so tenants commit in parallel.
    slots: Mutex<HashMap<String, Arc<Mutex<TenantSlots>>>>,
}

struct TenantSlots {
    file: SlotFile,
    /// A `TENANT.json` of an earlier version, removed once the slots hold a newer position.
    legacy: Option<PathBuf>,
}

impl PositionStore {
    /// Opens (creating it 0700) the positions directory.
    pub fn open(dir: &Path) -> Result<Self, PositionError> {
        private_fs::private_dir(dir).map_err(|error| PositionError::Io {
            path: dir.to_path_buf(),
            error,
        })?;
        Ok(Self::read_only(dir))
    }

    /// A store that is only read (dry-run): no directory is created.
    pub fn read_only(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn name(tenant_id: &str) -> String {
        tenant_id.to_ascii_lowercase()
    }

    fn legacy_path(&self, tenant_id: &str) -> PathBuf {
        self.dir.join(format!("{}.json", Self::name(tenant_id)))
    }

    /// The tenant's positions; empty when it was never collected.
    pub fn load(&self, tenant_id: &str) -> Result<TenantPositions, PositionError> {
        let name = Self::name(tenant_id);
        let (file, found) =
            SlotFile::open(&self.dir, &name).map_err(|error| PositionError::Io {
                path: self.dir.join(format!("{name}.0")),
                error,
            })?;
        let legacy = self.legacy_path(tenant_id);
        let (path, text) = match found {
            SlotRead::Found(body) => (file.paths()[0].clone(), Some(body)),
            SlotRead::Damaged(detail) => {
                return Err(PositionError::Damaged {
                    path: self.dir.join(format!("{name}.0 and {name}.1")),
                    detail,
                });
            }
            SlotRead::Missing => match std::fs::read(&legacy) {
                Ok(text) => (legacy.clone(), Some(text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (legacy.clone(), None),
                Err(error) => {
                    return Err(PositionError::Io {
                        path: legacy,
                        error,
                    });
                }
            },
        };
        let legacy = legacy.exists().then_some(legacy);
        let positions = match text {
            None => TenantPositions {
                tenant_id: tenant_id.to_string(),
                content_types: BTreeMap::new(),
            },
            Some(text) => {
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
                positions
            }
        };
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, Arc::new(Mutex::new(TenantSlots { file, legacy })));
        Ok(positions)
    }

    /// Replaces the tenant's positions durably (one in-place write and fsync). The tenant must
    /// have been loaded first.
    pub fn save(&self, positions: &TenantPositions) -> Result<(), PositionError> {
        let name = Self::name(&positions.tenant_id);
        let tenant = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
            .cloned();
        let Some(tenant) = tenant else {
            return Err(PositionError::Io {
                path: self.dir.join(format!("{name}.0")),
                error: std::io::Error::other("tenant saved before it was loaded"),
            });
        };
        let mut tenant = tenant.lock().unwrap_or_else(|e| e.into_inner());
        let path = tenant.file.paths()[0].clone();
        let text = serde_json::to_vec_pretty(positions).map_err(|e| PositionError::Io {
            path: path.clone(),
            error: std::io::Error::other(e),
        })?;
        tenant
            .file
            .replace(&text)
            .map_err(|error| PositionError::Io { path, error })?;
        if let Some(legacy) = tenant.legacy.take()
            && let Err(error) = std::fs::remove_file(&legacy)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            // Harmless: the slots are read first. Tried again at the next save.
            tenant.legacy = Some(legacy.clone());
            return Err(PositionError::Io {
                path: legacy,
                error,
            });
        }
        Ok(())
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
        p.content_types.get_mut("Audit.Exchange").unwrap().committed = Some(1_700_000_001_000);
        store.save(&p).unwrap();
        assert_eq!(
            PositionStore::read_only(&dir.path().join("p"))
                .load(tenant)
                .unwrap(),
            p
        );
        // An operator can read where collection stands.
        let text = std::fs::read_to_string(dir.path().join(format!("p/{tenant}.0"))).unwrap();
        assert!(text.contains("2023-11-14T22:13:20.123Z"), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir.path().join("p")), 0o700);
            assert_eq!(mode(&dir.path().join(format!("p/{tenant}.0"))), 0o600);
            assert_eq!(mode(&dir.path().join(format!("p/{tenant}.1"))), 0o600);
        }
    }

    #[test]
    fn an_earlier_versions_file_is_read_and_replaced_by_the_slots() {
        let dir = tempfile::tempdir().unwrap();
        let tenant = "11111111-2222-3333-4444-555555555555";
        let legacy = dir.path().join(format!("{tenant}.json"));
        std::fs::write(
            &legacy,
            format!(r#"{{"tenant_id":"{tenant}","content_types":{{"Audit.General":{{"committed":"2023-11-14T22:13:20.123Z"}}}}}}"#),
        )
        .unwrap();
        let store = PositionStore::open(dir.path()).unwrap();
        let mut p = store.load(tenant).unwrap();
        assert_eq!(
            p.content_types["Audit.General"].committed,
            Some(1_700_000_000_123)
        );
        p.content_types.get_mut("Audit.General").unwrap().committed = Some(1_700_000_060_000);
        store.save(&p).unwrap();
        assert!(!legacy.exists());
        assert_eq!(
            PositionStore::read_only(dir.path()).load(tenant).unwrap(),
            p
        );
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
