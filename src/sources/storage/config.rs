//! What the Storage source is told: the account Defender's Streaming API exports to, how to
//! sign in, which containers, how often to look for new lines.
//!
//! Layout (Defender XDR streaming API to Storage): one container per table,
//! `insights-logs-advancedhunting-<table>`, and per tenant and hour an append blob
//! `tenantId=<id>/y=YYYY/m=MM/d=DD/h=HH/m=00/PT1H.json` of JSON lines that grows during its hour.

use std::path::PathBuf;

use serde::Deserialize;

use crate::auth::EntraAuth;

/// The containers of the four email tables.
pub const EMAIL_CONTAINERS: [&str; 4] = [
    "insights-logs-advancedhunting-emailevents",
    "insights-logs-advancedhunting-emailattachmentinfo",
    "insights-logs-advancedhunting-emailurlinfo",
    "insights-logs-advancedhunting-emailpostdeliveryevents",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The storage account's name.
    pub account: String,
    /// The blob endpoint; `https://<account>.blob.core.windows.net` when unset.
    #[serde(default)]
    pub endpoint: Option<String>,
    pub auth: StorageAuth,
    #[serde(default = "default_containers")]
    pub containers: Vec<String>,
    /// How often the containers are listed for new blobs and grown ones.
    #[serde(default = "default_poll")]
    pub poll_interval_secs: u64,
    /// Hour blobs older than this are not read (the first start reads this far back).
    #[serde(default = "default_lookback")]
    pub lookback_hours: u64,
    /// The most read from a blob in one request; also the longest line accepted.
    #[serde(default = "default_max_read")]
    pub max_read_bytes: u64,
    /// http:// endpoints only to 127.0.0.1 (Azurite, tests).
    #[serde(default)]
    pub allow_plain_http_loopback: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StorageAuth {
    /// An account key (base64, as the portal shows it), read from a file.
    SharedKey { key_file: PathBuf },
    /// A SAS token with read and list rights (`sp=rl`), read from a file.
    Sas { token_file: PathBuf },
    /// An Entra identity with the role Storage Blob Data Reader.
    Entra(EntraAuth),
}

fn default_containers() -> Vec<String> {
    EMAIL_CONTAINERS.iter().map(|c| c.to_string()).collect()
}

fn default_poll() -> u64 {
    30
}

fn default_lookback() -> u64 {
    48
}

fn default_max_read() -> u64 {
    8 << 20
}

impl StorageConfig {
    pub fn label(&self) -> String {
        format!("storage account {}", self.account)
    }

    pub fn endpoint(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| format!("https://{}.blob.core.windows.net", self.account))
    }

    pub fn validate(&self, at: &str) -> Result<(), String> {
        if self.account.is_empty()
            || !self
                .account
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(format!(
                "{at}.account {:?}: a storage account name is lowercase letters and digits",
                self.account
            ));
        }
        if self.containers.is_empty() {
            return Err(format!("{at}.containers: list at least one container"));
        }
        if self.poll_interval_secs == 0 || self.lookback_hours == 0 {
            return Err(format!(
                "{at}: poll_interval_secs and lookback_hours must be at least 1"
            ));
        }
        if self.max_read_bytes < 64 << 10 {
            return Err(format!("{at}.max_read_bytes: at least 65536"));
        }
        // The endpoint's scheme and host are checked by `preflight`, with every other
        // start-up problem at once.
        Ok(())
    }
}
