//! The chain keys, read from a mounted secret: a directory with one file per key, the file's
//! name its key id (a Kubernetes Secret mounted as a volume looks exactly like this). Rotation
//! is adding a file and pointing `integrity.key_id` at it; the old files stay for `verify`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Shorter keys are refused: HMAC-SHA256 wants at least its output size of secret.
pub const MIN_KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("integrity.keys_dir {path}: {error} (mount the chain key secret there)")]
    Dir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "integrity key {id} in {dir}: {bytes} byte(s); a key needs at least {MIN_KEY_BYTES} (e.g. `head -c 48 /dev/urandom | base64`)"
    )]
    Short {
        id: String,
        dir: PathBuf,
        bytes: usize,
    },
    #[error("integrity.keys_dir {dir} holds no key file")]
    Empty { dir: PathBuf },
    #[error("integrity.key_id {id} is not a file in {dir} (found: {found})")]
    UnknownActive {
        id: String,
        dir: PathBuf,
        found: String,
    },
    #[error(
        "integrity.keys_dir {dir} holds several keys ({found}): set integrity.key_id to the one new rows are sealed with"
    )]
    NoActive { dir: PathBuf, found: String },
}

/// Key ids and their secrets; the secrets never appear in `Debug` or errors.
#[derive(Clone)]
pub struct Keyring {
    keys: BTreeMap<String, Vec<u8>>,
    active: String,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

/// A key id as a file name may spell it: letters, digits, '-', '_' and '.', not leading '.'.
pub fn is_key_id(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Keyring {
    /// Reads every key file of `dir` (dot files, as a mounted Secret's `..data`, are skipped);
    /// `active` names the key new rows are sealed with (optional when there is only one).
    pub fn load(dir: &Path, active: Option<&str>) -> Result<Self, KeyError> {
        let dir_err = |error| KeyError::Dir {
            path: dir.to_path_buf(),
            error,
        };
        let mut keys = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(dir_err)? {
            let entry = entry.map_err(dir_err)?;
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let path = entry.path();
            if !is_key_id(&id) || !path.is_file() {
                continue;
            }
            let mut secret = std::fs::read(&path).map_err(|error| KeyError::Dir {
                path: path.clone(),
                error,
            })?;
            while secret.last().is_some_and(u8::is_ascii_whitespace) {
                secret.pop();
            }
            if secret.len() < MIN_KEY_BYTES {
                return Err(KeyError::Short {
                    id,
                    dir: dir.to_path_buf(),
                    bytes: secret.len(),
                });
            }
            keys.insert(id, secret);
        }
        let found = || keys.keys().cloned().collect::<Vec<_>>().join(", ");
        let active = match active {
            Some(id) if keys.contains_key(id) => id.to_string(),
            Some(id) => {
                return Err(KeyError::UnknownActive {
                    id: id.to_string(),
                    dir: dir.to_path_buf(),
                    found: found(),
                });
            }
            None => match keys.len() {
                0 => {
                    return Err(KeyError::Empty {
                        dir: dir.to_path_buf(),
                    });
                }
                1 => keys.keys().next().cloned().unwrap_or_default(),
                _ => {
                    return Err(KeyError::NoActive {
                        dir: dir.to_path_buf(),
                        found: found(),
                    });
                }
            },
        };
        Ok(Self { keys, active })
    }

    /// A keyring of given keys (tests, benchmarks).
    pub fn from_keys(keys: BTreeMap<String, Vec<u8>>, active: &str) -> Self {
        Self {
            keys,
            active: active.to_string(),
        }
    }

    pub fn active_id(&self) -> &str {
        &self.active
    }

    pub fn active_key(&self) -> &[u8] {
        self.keys.get(&self.active).map_or(&[], Vec::as_slice)
    }

    pub fn key(&self, id: &str) -> Option<&[u8]> {
        self.keys.get(id).map(Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_load_from_a_mounted_secret_and_never_show() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k1"), format!("{}\n", "a".repeat(40))).unwrap();
        std::fs::write(dir.path().join("..data"), "ignored").unwrap();
        let ring = Keyring::load(dir.path(), None).unwrap();
        assert_eq!(ring.active_id(), "k1");
        assert_eq!(ring.active_key(), "a".repeat(40).as_bytes());
        assert!(!format!("{ring:?}").contains("aaaa"));
        std::fs::write(dir.path().join("k2"), "b".repeat(40)).unwrap();
        let e = Keyring::load(dir.path(), None).unwrap_err().to_string();
        assert!(e.contains("k1, k2") && e.contains("key_id"), "{e}");
        let ring = Keyring::load(dir.path(), Some("k2")).unwrap();
        assert_eq!(ring.key("k1"), Some("a".repeat(40).as_bytes()));
        std::fs::write(dir.path().join("k3"), "short").unwrap();
        let e = Keyring::load(dir.path(), Some("k2"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("k3") && e.contains("5 byte(s)") && !e.contains("short"),
            "{e}"
        );
    }
}
