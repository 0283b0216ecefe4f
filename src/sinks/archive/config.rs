//! The `archive` section: where the raw archive goes and how the connector signs in to it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::EntraAuth;

/// How often staged blocks are committed (Put Block List) when units keep coming: each commit
/// sends a blob's whole block list, so committing per unit would grow quadratically.
const DEFAULT_COMMIT_INTERVAL_MS: u64 = 1_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// The container, `https://ACCOUNT.blob.core.windows.net/CONTAINER` (no query string: a
    /// SAS goes in `sas_file`).
    pub container_url: String,
    /// An Entra identity with "Storage Blob Data Contributor" on the container.
    #[serde(default)]
    pub auth: Option<EntraAuth>,
    /// A file holding a SAS token for the container (read, write, create, add; the part after
    /// `?`), a mounted Secret; instead of `auth`. Never logged.
    #[serde(default)]
    pub sas_file: Option<PathBuf>,
    /// Put before every blob name, e.g. `m365/`.
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub commit_interval_ms: Option<u64>,
}

impl ArchiveConfig {
    pub fn commit_interval(&self) -> Duration {
        Duration::from_millis(
            self.commit_interval_ms
                .unwrap_or(DEFAULT_COMMIT_INTERVAL_MS),
        )
    }

    pub fn validate(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(self.container_url.trim_end_matches('/')).map_err(|e| {
            format!(
                "archive.container_url is not a URL ({e}); write https://ACCOUNT.blob.core.windows.net/CONTAINER"
            )
        })?;
        if url.query().is_some() {
            return Err(
                "archive.container_url has a query string; put a SAS token in the file archive.sas_file instead, so it stays out of the config".into(),
            );
        }
        if url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .is_none_or(str::is_empty)
        {
            return Err(
                "archive.container_url names no container; write https://ACCOUNT.blob.core.windows.net/CONTAINER".into(),
            );
        }
        match (&self.auth, &self.sas_file) {
            (Some(_), Some(_)) => {
                return Err("archive: set auth or sas_file, not both".into());
            }
            (None, None) => {
                return Err(
                    "archive needs auth (an Entra identity with Storage Blob Data Contributor on the container) or sas_file (a SAS token for it)".into(),
                );
            }
            (Some(_), None) if url.scheme() != "https" => {
                return Err(
                    "archive.container_url must be https when archive.auth is set (tokens are never sent in the clear)".into(),
                );
            }
            _ => {}
        }
        if self.prefix.starts_with('/') || self.prefix.contains("//") {
            return Err(format!(
                "archive.prefix {:?} must not start with '/' or hold '//'",
                self.prefix
            ));
        }
        if self
            .commit_interval_ms
            .is_some_and(|ms| !(10..=60_000).contains(&ms))
        {
            return Err("archive.commit_interval_ms must be between 10 and 60000".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> ArchiveConfig {
        yaml_serde::from_str(yaml).unwrap()
    }

    #[test]
    fn a_sas_in_the_url_no_container_or_no_way_to_sign_in_is_refused() {
        let problem = |yaml: &str| config(yaml).validate().unwrap_err();
        let with_sas = problem(
            "container_url: https://a.blob.core.windows.net/c?sv=1&sig=SECRET\nsas_file: /s",
        );
        assert!(
            with_sas.contains("query string") && !with_sas.contains("SECRET"),
            "{with_sas}"
        );
        assert!(
            problem("container_url: https://a.blob.core.windows.net/\nsas_file: /s")
                .contains("no container")
        );
        assert!(problem("container_url: https://a.blob.core.windows.net/c").contains("needs auth"));
        assert!(
            problem("container_url: http://a.blob.core.windows.net/c\nauth: {credential: {kind: managed_identity}}")
                .contains("must be https")
        );
        assert!(
            problem("container_url: https://a.blob.core.windows.net/c\nsas_file: /s\nprefix: /x")
                .contains("prefix")
        );
        config(
            "container_url: http://127.0.0.1:10000/devstoreaccount1/c\nsas_file: /s\nprefix: m365/",
        )
        .validate()
        .unwrap();
    }
}
