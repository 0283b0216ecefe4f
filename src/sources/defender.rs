//! The `defender` section: where Defender's Streaming API exports email events (event hubs,
//! storage accounts), and the dedupe window both share.

use std::path::PathBuf;

use serde::Deserialize;

use super::eventhubs::EventHubConfig;
use super::storage::StorageConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefenderConfig {
    #[serde(default)]
    pub event_hubs: Vec<EventHubConfig>,
    #[serde(default)]
    pub storage: Vec<StorageConfig>,
    /// Where storage positions are kept (event hub offsets live in the consumer group).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Exact repeats of a row (same table, same content) within this window are sent once.
    #[serde(default = "default_window")]
    pub dedupe_window_secs: u64,
    /// The window holds at most this many rows (about 60 bytes each).
    #[serde(default = "default_max_rows")]
    pub dedupe_max_rows: usize,
    /// Rows of a category no schema maps (a Defender export streams many advanced-hunting
    /// tables): refused and kept with the reason (the default), or skipped and counted.
    #[serde(default)]
    pub unknown_categories: UnknownCategories,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownCategories {
    /// Kept in the refused-input file with the reason; the run exits 3.
    #[default]
    Reject,
    /// Counted per category in the summary and metrics, and acknowledged; nothing is kept.
    Skip,
}

impl Default for DefenderConfig {
    fn default() -> Self {
        Self {
            event_hubs: Vec::new(),
            storage: Vec::new(),
            state_dir: default_state_dir(),
            dedupe_window_secs: default_window(),
            dedupe_max_rows: default_max_rows(),
            unknown_categories: UnknownCategories::default(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("state")
}

fn default_window() -> u64 {
    3_600
}

fn default_max_rows() -> usize {
    1_000_000
}

impl DefenderConfig {
    pub fn is_empty(&self) -> bool {
        self.event_hubs.is_empty() && self.storage.is_empty()
    }

    pub fn validate(&self) -> Result<(), String> {
        for (i, hub) in self.event_hubs.iter().enumerate() {
            hub.validate(&format!("defender.event_hubs[{i}]"))?;
        }
        for (i, account) in self.storage.iter().enumerate() {
            account.validate(&format!("defender.storage[{i}]"))?;
            // Positions are kept per account name: two entries would overwrite each other's.
            if self.storage[..i]
                .iter()
                .any(|a| a.account == account.account)
            {
                return Err(format!(
                    "defender.storage[{i}].account {:?} is listed twice; list its containers in one entry",
                    account.account
                ));
            }
        }
        if self.dedupe_max_rows == 0 {
            return Err("defender.dedupe_max_rows must be at least 1".into());
        }
        Ok(())
    }
}
