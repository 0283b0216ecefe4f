//! Every configured live source at once (Management API tenants, event hubs, storage accounts),
//! all handing units to one channel. A source whose credentials are refused is reported and
//! retried; the others keep collecting.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;

use super::eventhubs::{EventHubSource, HubOptions};
use super::management::{Collector, CollectorError, CollectorOptions, Counters};
use super::recent::RecentRows;
use super::status::SourceStatus;
use super::storage::{StorageOptions, StorageSource};
use super::unit::Unit;
use crate::config::Config;
use crate::ops::shutdown::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Management(#[from] CollectorError),
    #[error(transparent)]
    EventHub(#[from] super::eventhubs::EventHubError),
    #[error(transparent)]
    Storage(#[from] Box<super::storage::client::StorageError>),
    #[error("http client: {0}")]
    Http(String),
}

/// What a source could not do, for the exit status of `--once` and dry-run.
pub struct SourceReport {
    pub source: String,
    pub errors: Vec<String>,
}

pub struct LiveOptions {
    /// False in dry-run: nothing is committed anywhere.
    pub persist: bool,
    pub once: bool,
    pub shutdown: Shutdown,
    /// Set when the run has ended: sources stop waiting for their last rows to become durable.
    pub run_ended: Shutdown,
}

pub struct LiveSources {
    pub management: Option<Collector>,
    hubs: Vec<EventHubSource>,
    storage: Vec<StorageSource>,
    pub recent: RecentRows,
}

impl LiveSources {
    /// Whether the config names any live source.
    pub fn configured(config: &Config) -> bool {
        !config.management_api.tenants.is_empty() || !config.defender.is_empty()
    }

    /// Starts every configured source; call within the runtime. The channel's capacity is the
    /// caller's.
    pub fn start(
        config: &Config,
        options: LiveOptions,
        out: mpsc::Sender<Unit>,
    ) -> Result<Self, LiveError> {
        let http =
            crate::http_client::build(&config.http).map_err(|e| LiveError::Http(e.to_string()))?;
        let defender = &config.defender;
        let recent = RecentRows::new(defender.dedupe_window_secs, defender.dedupe_max_rows);
        let management = if config.management_api.tenants.is_empty() {
            None
        } else {
            let collector_options = CollectorOptions {
                persist: options.persist,
                once: options.once,
                max_blob_bytes: config.input.max_document_bytes,
                retry: config.retry_policy(),
                shutdown: options.shutdown.clone(),
            };
            Some(Collector::start(
                &config.management_api,
                http.clone(),
                collector_options,
                out.clone(),
            )?)
        };
        let mut hubs = Vec::new();
        for hub in &defender.event_hubs {
            let hub_options = HubOptions {
                persist: options.persist,
                once: options.once,
                shutdown: options.shutdown.clone(),
                recent: recent.clone(),
                run_ended: options.run_ended.clone(),
                runtime: tokio::runtime::Handle::current(),
                http: http.clone(),
            };
            hubs.push(EventHubSource::start(hub, hub_options, out.clone())?);
        }
        let mut storage = Vec::new();
        for account in &defender.storage {
            let storage_options = StorageOptions {
                persist: options.persist,
                once: options.once,
                shutdown: options.shutdown.clone(),
                recent: recent.clone(),
                http: http.clone(),
                state_dir: defender.state_dir.clone(),
                run_ended: options.run_ended.clone(),
                now: super::management::now_millis,
            };
            storage.push(
                StorageSource::start(account, storage_options, out.clone()).map_err(Box::new)?,
            );
        }
        Ok(Self {
            management,
            hubs,
            storage,
            recent,
        })
    }

    pub fn counters(&self) -> Option<Arc<Counters>> {
        self.management.as_ref().map(|c| c.counters.clone())
    }

    /// Each Defender source's label and status, for the summary and metrics.
    pub fn statuses(&self) -> Vec<(String, Arc<SourceStatus>)> {
        self.hubs
            .iter()
            .map(|h| (h.label.clone(), h.status.clone()))
            .chain(
                self.storage
                    .iter()
                    .map(|s| (s.label.clone(), s.status.clone())),
            )
            .collect()
    }

    /// Waits for every source to end (a stop, or the end of a `--once` pass).
    pub async fn finish(self) -> Vec<SourceReport> {
        let mut reports = Vec::new();
        if let Some(collector) = self.management {
            let (tenants, state_error) = collector.finish().await;
            for tenant in tenants {
                reports.push(SourceReport {
                    source: format!("tenant {}", tenant.tenant),
                    errors: tenant.errors,
                });
            }
            if let Some(error) = state_error {
                reports.push(SourceReport {
                    source: "the Management API collection state".into(),
                    errors: vec![error],
                });
            }
        }
        for hub in self.hubs {
            let source = hub.label.clone();
            let errors = hub.finish().await;
            reports.push(SourceReport { source, errors });
        }
        for account in self.storage {
            let source = account.label.clone();
            let errors = account.finish().await;
            reports.push(SourceReport { source, errors });
        }
        reports
    }

    /// One line per Defender source, for the end of a run.
    pub fn summary(statuses: &[(String, Arc<SourceStatus>)], recent: &RecentRows) -> Vec<String> {
        let mut lines: Vec<String> = statuses
            .iter()
            .map(|(label, s)| {
                format!(
                    "{label}: {} unit(s) read, {} position commit(s), {} rebalance(s)",
                    s.units.load(Ordering::Relaxed),
                    s.commits.load(Ordering::Relaxed),
                    s.rebalances.load(Ordering::Relaxed)
                )
            })
            .collect();
        if !statuses.is_empty() {
            lines.push(format!(
                "defender: {} exact repeat row(s) skipped",
                recent.duplicates()
            ));
        }
        lines
    }
}
