//! Delivering bodies to a Log Analytics workspace, through the Logs Ingestion API (default) or
//! the legacy Data Collector API. Delivery of a body never gives up on a row: retryable answers
//! back off (full jitter, Retry-After honoured), 413 splits, 400 bisects down to the refused rows,
//! which go to the dead-letter store with the service's reason; everything else is delivered.

mod deliver;

use std::sync::{Arc, Mutex};

use azure_core::credentials::TokenCredential;

use crate::sinks::retry::RetryPolicy;
use crate::state::dlq::DeadLetterStore;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(
        "logs_ingestion: endpoint {0:?} must be an https URL (http only to loopback with allow_plain_http_loopback)"
    )]
    Endpoint(String),
    #[error(transparent)]
    DataCollector(#[from] crate::sinks::data_collector::DataCollectorError),
    #[error(transparent)]
    DeadLetters(#[from] crate::state::dlq::DlqError),
}

/// Where a table's bodies are posted. `stream` is the DCR stream (Logs Ingestion) or the
/// Log-Type (Data Collector).
#[derive(Debug, Clone)]
pub struct Target {
    pub url: reqwest::Url,
    pub table: String,
    pub stream: String,
}

/// Which API, and what it authenticates with.
pub enum Api {
    /// Entra ID bearer tokens for `scope`.
    LogsIngestion {
        credential: Arc<dyn TokenCredential>,
        scope: String,
    },
    /// SharedKey signatures with the workspace key.
    DataCollector {
        workspace_id: String,
        shared_key: String,
        azure_resource_id: Option<String>,
    },
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
    /// Rows delivered per output table.
    pub delivered_by_table: std::collections::BTreeMap<String, u64>,
    /// Rows dead-lettered per output table.
    pub dead_lettered_by_table: std::collections::BTreeMap<String, u64>,
    /// Answers per HTTP status.
    pub responses_by_status: std::collections::BTreeMap<u16, u64>,
    /// Token requests that failed (wrong secret, missing role, Entra unreachable).
    pub token_failures: u64,
    /// When each output table's last request was accepted (ms since the epoch).
    pub last_delivery_ms_by_table: std::collections::BTreeMap<String, i64>,
    /// Why each table's requests are not being accepted, while that lasts (the health rows).
    pub failing_by_table: std::collections::BTreeMap<String, TableFailure>,
}

/// A table's latest unaccepted answer, until a request of it is accepted again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFailure {
    /// The service throttles (429), rather than refuses or fails.
    pub throttled: bool,
    pub message: String,
}

pub struct WorkspaceSink {
    client: reqwest::Client,
    api: Api,
    policy: RetryPolicy,
    dlq: Arc<DeadLetterStore>,
    rng: Mutex<fastrand::Rng>,
    stats: Mutex<SinkStats>,
    /// The latest reason the sink can't deliver (401/403, misconfiguration); None when healthy.
    problem: Mutex<Option<String>>,
}

impl WorkspaceSink {
    pub fn new(
        client: reqwest::Client,
        api: Api,
        policy: RetryPolicy,
        dlq: Arc<DeadLetterStore>,
    ) -> Self {
        Self {
            client,
            api,
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
