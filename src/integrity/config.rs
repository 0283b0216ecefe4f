//! The `integrity` section: the chain key secret, this replica's chain id, and where `verify`
//! reads the workspace back.

use std::path::PathBuf;

use serde::Deserialize;

use super::keys::{KeyError, Keyring, is_key_id};
use crate::auth::Cloud;

/// Rows per Query API page: well under the API's 500,000-row and ~100 MB limits for rows of a
/// few KB.
pub const DEFAULT_PAGE_ROWS: usize = 20_000;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntegrityConfig {
    /// Seal rows into chains; unset means on exactly when `keys_dir` is set.
    pub enabled: Option<bool>,
    /// A directory with one file per key (a mounted Secret), the file name the key id.
    pub keys_dir: Option<PathBuf>,
    /// The key new rows are sealed with; may be left out when `keys_dir` holds one key.
    pub key_id: Option<String>,
    /// Names this replica's chains (`<chain_id>/<table>`); default the pod name (POD_NAME,
    /// else HOSTNAME), stable in a StatefulSet.
    pub chain_id: Option<String>,
    /// The workspace `verify` reads (its Workspace ID, a GUID).
    pub workspace_id: Option<String>,
    /// The Log Analytics Query API; default the cloud's (`sink.cloud`).
    pub query_endpoint: Option<String>,
    /// Rows per query page in `verify`.
    pub page_rows: Option<usize>,
}

impl IntegrityConfig {
    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or(self.keys_dir.is_some())
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.enabled == Some(true) && self.keys_dir.is_none() {
            return Err(
                "integrity.enabled is true but integrity.keys_dir is not set: mount the chain key secret and name its directory".into(),
            );
        }
        if let Some(id) = &self.key_id
            && !is_key_id(id)
        {
            return Err(format!(
                "integrity.key_id {id:?}: a key id is a file name of letters, digits, '-', '_' and '.'"
            ));
        }
        if let Some(id) = &self.chain_id
            && !is_key_id(id)
        {
            return Err(format!(
                "integrity.chain_id {id:?}: 1 to 64 letters, digits, '-', '_' and '.' (it names this replica's chains)"
            ));
        }
        if self.page_rows.is_some_and(|n| !(1..=500_000).contains(&n)) {
            return Err(
                "integrity.page_rows must be between 1 and 500000 (the Query API returns at most 500,000 rows)".into(),
            );
        }
        Ok(())
    }

    /// The keys, when a directory is configured.
    pub fn keyring(&self) -> Result<Option<Keyring>, KeyError> {
        match &self.keys_dir {
            Some(dir) => Keyring::load(dir, self.key_id.as_deref()).map(Some),
            None => Ok(None),
        }
    }

    /// This replica's chain id: `chain_id`, else the pod name (POD_NAME, HOSTNAME), else the
    /// machine's host name; None when none is usable, since two instances sharing an id
    /// would fork each other's chains.
    pub fn chain_id(&self) -> Option<String> {
        let host = || {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        };
        [
            self.chain_id.clone(),
            std::env::var("POD_NAME").ok(),
            std::env::var("HOSTNAME").ok(),
            host(),
        ]
        .into_iter()
        .flatten()
        .find(|id| is_key_id(id))
    }

    pub fn page_rows(&self) -> usize {
        self.page_rows.unwrap_or(DEFAULT_PAGE_ROWS)
    }

    /// The Query API's base URL and token scope for `cloud`, unless overridden.
    pub fn query_api(&self, cloud: Cloud) -> (String, String) {
        let (endpoint, scope) = cloud.query_api();
        (
            self.query_endpoint
                .clone()
                .unwrap_or_else(|| endpoint.to_string())
                .trim_end_matches('/')
                .to_string(),
            scope.to_string(),
        )
    }
}
