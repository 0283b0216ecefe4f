//! The Logs Ingestion API: `POST {endpoint}/dataCollectionRules/{dcr}/streams/{stream}
//! ?api-version=2023-01-01`, gzip'd JSON array, bearer token from azure_identity. Where each
//! table's rows go; delivery itself is `sinks::workspace`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::schema::TableSchema;
use crate::sinks::workspace::{SinkError, Target};

pub const API_VERSION: &str = "2023-01-01";

/// Where one table's rows go, when it differs from the defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamTarget {
    pub endpoint: Option<String>,
    pub dcr_immutable_id: Option<String>,
    pub stream: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsIngestionConfig {
    /// The DCR's logs ingestion endpoint (or a DCE's), `https://...ingest.monitor.azure.com`.
    pub endpoint: String,
    pub dcr_immutable_id: String,
    /// Per-table overrides, keyed by Sentinel table name (`OfficeActivity`): one process may feed
    /// several DCRs.
    #[serde(default)]
    pub tables: BTreeMap<String, StreamTarget>,
    /// Allows `http://127.0.0.1` endpoints (the emulator); HTTPS is required otherwise.
    #[serde(default)]
    pub allow_plain_http_loopback: bool,
}

impl LogsIngestionConfig {
    pub fn target(&self, table: &TableSchema) -> Result<Target, SinkError> {
        let over = self.tables.get(&table.table).cloned().unwrap_or_default();
        let endpoint = over.endpoint.as_deref().unwrap_or(&self.endpoint);
        let dcr = over
            .dcr_immutable_id
            .as_deref()
            .unwrap_or(&self.dcr_immutable_id);
        let stream = over.stream.unwrap_or_else(|| table.stream.clone());
        let base =
            reqwest::Url::parse(endpoint).map_err(|_| SinkError::Endpoint(endpoint.into()))?;
        let loopback = base
            .host_str()
            .is_some_and(|h| h == "127.0.0.1" || h == "localhost" || h == "[::1]");
        let secure = base.scheme() == "https" || (self.allow_plain_http_loopback && loopback);
        if !secure {
            return Err(SinkError::Endpoint(endpoint.into()));
        }
        let mut url = base
            .join(&format!("dataCollectionRules/{dcr}/streams/{stream}"))
            .map_err(|_| SinkError::Endpoint(endpoint.into()))?;
        url.query_pairs_mut()
            .append_pair("api-version", API_VERSION);
        Ok(Target {
            url,
            table: table.output_table.clone(),
            stream,
        })
    }
}
