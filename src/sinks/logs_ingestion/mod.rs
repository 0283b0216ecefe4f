//! The Logs Ingestion API sink: `POST {endpoint}/dataCollectionRules/{dcr}/streams/{stream}
//! ?api-version=2023-01-01`, gzip'd JSON array, bearer token from azure_identity. Delivery of a
//! body never gives up on a row: retryable answers back off (full jitter, Retry-After honoured),
//! 413 splits, 400 bisects down to the refused rows, which go to the dead-letter store with the
//! service's reason; everything else is delivered.

mod deliver;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use azure_core::credentials::TokenCredential;
use serde::Deserialize;

use crate::dlq::DeadLetterStore;
use crate::schema::TableSchema;
use crate::sinks::retry::RetryPolicy;

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

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(
        "logs_ingestion: endpoint {0:?} must be an https URL (http only to loopback with allow_plain_http_loopback)"
    )]
    Endpoint(String),
    #[error(transparent)]
    DeadLetters(#[from] crate::dlq::DlqError),
}

/// Where a table's bodies are posted.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: reqwest::Url,
    pub table: String,
    pub stream: String,
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

/// Counts of what delivery did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkStats {
    pub delivered_rows: u64,
    pub requests: u64,
    pub retries: u64,
    pub splits: u64,
    pub dead_lettered: u64,
    pub bytes_uncompressed: u64,
    pub bytes_sent: u64,
}

pub struct LogsIngestionSink {
    client: reqwest::Client,
    credential: Arc<dyn TokenCredential>,
    scope: String,
    policy: RetryPolicy,
    dlq: Arc<DeadLetterStore>,
    rng: Mutex<fastrand::Rng>,
    stats: Mutex<SinkStats>,
    /// The latest reason the sink can't deliver (401/403, misconfiguration); None when healthy.
    problem: Mutex<Option<String>>,
}

impl LogsIngestionSink {
    pub fn new(
        client: reqwest::Client,
        credential: Arc<dyn TokenCredential>,
        scope: &str,
        policy: RetryPolicy,
        dlq: Arc<DeadLetterStore>,
    ) -> Self {
        Self {
            client,
            credential,
            scope: scope.to_string(),
            policy,
            dlq,
            rng: Mutex::new(fastrand::Rng::new()),
            stats: Mutex::new(SinkStats::default()),
            problem: Mutex::new(None),
        }
    }

    pub fn stats(&self) -> SinkStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Why the sink is not delivering right now, if it isn't.
    pub fn problem(&self) -> Option<String> {
        self.problem.lock().ok().and_then(|p| p.clone())
    }
}
