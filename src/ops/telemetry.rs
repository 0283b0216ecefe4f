//! What the process tells Kubernetes and Prometheus: `/healthz` (the runtime is alive),
//! `/readyz` (ready to deliver: the sink is not failing authorisation or configuration), and
//! `/metrics` in the Prometheus text format. Metrics are read at scrape time from the stages'
//! own counters (prometheus-client's `Collector`), so the hot path keeps its plain atomics.
//! No label carries a secret or record content: tables, statuses, reasons, tenant labels and
//! content types only.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::sinks::workspace::WorkspaceSink;
use crate::sources::management::Counters;
use crate::sources::management::lag::LagBoard;
use crate::state::spool::Spool;

/// Counts the run keeps as it goes (the end-of-run `Stats` are for the summary).
#[derive(Debug, Default)]
pub struct LiveCounts {
    /// Rows mapped, per output table.
    pub rows: Mutex<BTreeMap<String, u64>>,
    /// Records refused, per reason code.
    pub rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// Defender rows skipped (`defender.unknown_categories: skip`), per category.
    pub skipped: Mutex<BTreeMap<String, u64>>,
}

impl LiveCounts {
    pub fn row(&self, table: &str) {
        bump(&self.rows, table);
    }

    pub fn rejected(&self, reason: &'static str) {
        if let Ok(mut rejected) = self.rejected.lock() {
            *rejected.entry(reason).or_default() += 1;
        }
    }

    pub fn skipped(&self, category: &str) {
        bump(&self.skipped, category);
    }
}

/// A copy of live counts for a scrape (empty if a writer panicked holding the lock).
pub fn snapshot<K: Clone>(counts: &Mutex<BTreeMap<K, u64>>) -> BTreeMap<K, u64> {
    counts.lock().map(|c| c.clone()).unwrap_or_default()
}

/// Adds one to `key`'s count, allocating the key only the first time (this runs per row).
fn bump(counts: &Mutex<BTreeMap<String, u64>>, key: &str) {
    if let Ok(mut counts) = counts.lock() {
        match counts.get_mut(key) {
            Some(n) => *n += 1,
            None => {
                counts.insert(key.to_string(), 1);
            }
        }
    }
}

/// Everything a scrape reads.
pub struct Telemetry {
    pub sink: Arc<WorkspaceSink>,
    pub spool: Option<Arc<Spool>>,
    pub lag: Option<Arc<LagBoard>>,
    pub collector: Option<Arc<Counters>>,
    /// The Defender sources (event hubs, storage accounts) by label.
    pub sources: Vec<(String, Arc<crate::sources::status::SourceStatus>)>,
    /// Exact repeats of Defender rows skipped.
    pub recent: Option<crate::sources::recent::RecentRows>,
    pub live: Arc<LiveCounts>,
    /// The cost policy, whose rules count what they did.
    pub policy: Option<Arc<crate::stages::policy::Policy>>,
    /// The raw archive, when the config has one.
    pub archive: Option<Arc<crate::sinks::archive::ArchiveStats>>,
    pub max_body_bytes: usize,
    heartbeat: AtomicU64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    pub fn new(sink: Arc<WorkspaceSink>, live: Arc<LiveCounts>, max_body_bytes: usize) -> Self {
        Self {
            sink,
            spool: None,
            lag: None,
            collector: None,
            sources: Vec::new(),
            recent: None,
            live,
            policy: None,
            archive: None,
            max_body_bytes,
            heartbeat: AtomicU64::new(now_secs()),
        }
    }

    /// Alive: the runtime ran the heartbeat task within the last 30 seconds.
    pub fn alive(&self) -> bool {
        now_secs().saturating_sub(self.heartbeat.load(Ordering::Relaxed)) < 30
    }

    /// Ready, or why not.
    pub fn ready(&self) -> Result<(), String> {
        if let Some(problem) = self.sink.problem() {
            return Err(problem);
        }
        Ok(())
    }

    fn beat(&self) {
        self.heartbeat.store(now_secs(), Ordering::Relaxed);
    }
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A counter family with one label.
fn counters(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (String, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (value_label, value) in values {
        let labels = [(label, value_label.as_str())];
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Telemetry {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.sink.stats();
        let live_rows = snapshot(&self.live.rows);
        counters(
            &mut e,
            "m365_sentinel_rows_mapped",
            "Rows mapped, per output table.",
            "table",
            live_rows,
        )?;
        let rejected = snapshot(&self.live.rejected);
        counters(
            &mut e,
            "m365_sentinel_records_rejected",
            "Input records refused, per reason.",
            "reason",
            rejected.into_iter().map(|(k, v)| (k.to_string(), v)),
        )?;
        let skipped = snapshot(&self.live.skipped);
        counters(
            &mut e,
            "m365_sentinel_records_skipped",
            "Defender rows of categories no schema maps, skipped by defender.unknown_categories: skip, per category.",
            "category",
            skipped,
        )?;
        let rules = self.policy.as_ref().map(|p| p.report()).unwrap_or_default();
        let per_rule = |value: fn(&crate::stages::policy::RuleReport) -> u64| {
            rules
                .iter()
                .map(move |r| (r.rule.clone(), value(r)))
                .collect::<Vec<_>>()
        };
        for (name, help, value) in [
            (
                "m365_sentinel_policy_rows_matched",
                "Rows a policy rule (schemas/policy.yaml) matched, per rule.",
                (|r| r.matched) as fn(&crate::stages::policy::RuleReport) -> u64,
            ),
            (
                "m365_sentinel_policy_rows_removed",
                "Rows a policy rule dropped or sampled out, per rule.",
                |r| r.removed_rows,
            ),
            (
                "m365_sentinel_policy_bytes_removed",
                "Bytes of row JSON a policy rule kept out of the workspace (removed rows, trimmed values), per rule.",
                |r| r.removed_bytes,
            ),
        ] {
            counters(&mut e, name, help, "rule", per_rule(value))?;
        }
        if let Some(archive) = &self.archive {
            let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
            for (name, help, value) in [
                (
                    "m365_sentinel_archive_units",
                    "Units (content blobs, messages, blob ranges) committed to the raw archive.",
                    n(&archive.units),
                ),
                (
                    "m365_sentinel_archive_records",
                    "Records committed to the raw archive.",
                    n(&archive.records),
                ),
                (
                    "m365_sentinel_archive_bytes",
                    "Gzip bytes committed to the raw archive.",
                    n(&archive.bytes),
                ),
                (
                    "m365_sentinel_archive_failures",
                    "Failed attempts to write the raw archive (the sources wait while it fails).",
                    n(&archive.failures),
                ),
            ] {
                counter(&mut e, name, help, value)?;
            }
        }
        counters(
            &mut e,
            "m365_sentinel_rows_delivered",
            "Rows the workspace accepted, per output table.",
            "table",
            s.delivered_by_table.clone(),
        )?;
        counters(
            &mut e,
            "m365_sentinel_rows_dead_lettered",
            "Rows refused for good (in the dead-letter store), per output table.",
            "table",
            s.dead_lettered_by_table.clone(),
        )?;
        counters(
            &mut e,
            "m365_sentinel_responses",
            "Workspace answers, per HTTP status.",
            "status",
            s.responses_by_status
                .iter()
                .map(|(k, v)| (k.to_string(), *v)),
        )?;
        counter(
            &mut e,
            "m365_sentinel_requests",
            "Requests sent to the workspace.",
            s.requests,
        )?;
        counter(
            &mut e,
            "m365_sentinel_retries",
            "Requests sent again (throttling, 5xx, timeouts, refused tokens).",
            s.retries,
        )?;
        counter(
            &mut e,
            "m365_sentinel_splits",
            "Bodies split (413) or bisected (400).",
            s.splits,
        )?;
        counter(
            &mut e,
            "m365_sentinel_bytes_sent",
            "Bytes sent on the wire (gzip).",
            s.bytes_sent,
        )?;
        counter(
            &mut e,
            "m365_sentinel_bytes_uncompressed",
            "Bytes of the request bodies before gzip.",
            s.bytes_uncompressed,
        )?;
        counter(
            &mut e,
            "m365_sentinel_token_failures",
            "Token requests that failed.",
            s.token_failures,
        )?;
        let fill = if s.requests == 0 {
            0.0
        } else {
            s.bytes_uncompressed as f64 / (s.requests as f64 * self.max_body_bytes as f64)
        };
        gauge(
            &mut e,
            "m365_sentinel_batch_fill_ratio",
            "Average request body size over the limit.",
            fill,
        )?;
        gauge(
            &mut e,
            "m365_sentinel_ready",
            "1 when the sink is delivering (see /readyz).",
            f64::from(u8::from(self.ready().is_ok())),
        )?;
        if let Some(spool) = &self.spool {
            gauge(
                &mut e,
                "m365_sentinel_spool_bytes",
                "Bytes in the spool on disk.",
                spool.bytes() as f64,
            )?;
            gauge(
                &mut e,
                "m365_sentinel_spool_full",
                "1 while collection pauses for a full spool or disk.",
                f64::from(u8::from(spool.is_full())),
            )?;
        }
        if let Some(c) = &self.collector {
            let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
            counter(
                &mut e,
                "m365_sentinel_management_blobs",
                "Content blobs read from the Management Activity API.",
                n(&c.blobs),
            )?;
            counter(
                &mut e,
                "m365_sentinel_management_duplicates",
                "Records skipped as already seen (by Id).",
                n(&c.duplicates),
            )?;
            counter(
                &mut e,
                "m365_sentinel_management_throttled",
                "Throttled answers (AF429, 429).",
                n(&c.throttled),
            )?;
            counter(
                &mut e,
                "m365_sentinel_management_failed_blobs",
                "Blobs that could not be read and were refused.",
                n(&c.failed_blobs),
            )?;
        }
        if !self.sources.is_empty() {
            let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
            counters(
                &mut e,
                "m365_sentinel_source_units",
                "Units handed to the mapper per Defender source (event hub messages, blob reads).",
                "source",
                self.sources.iter().map(|(l, st)| (l.clone(), n(&st.units))),
            )?;
            counters(
                &mut e,
                "m365_sentinel_source_commits",
                "Position commits per Defender source (partitions committed, position files written).",
                "source",
                self.sources
                    .iter()
                    .map(|(l, st)| (l.clone(), n(&st.commits))),
            )?;
            counters(
                &mut e,
                "m365_sentinel_source_rebalances",
                "Consumer-group rebalances per event hub.",
                "source",
                self.sources
                    .iter()
                    .map(|(l, st)| (l.clone(), n(&st.rebalances))),
            )?;
            let mut family = e.encode_descriptor(
                "m365_sentinel_source_auth_failed",
                "1 while a Defender source's credentials are refused.",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (label, st) in &self.sources {
                let failed = st.auth_failed.load(Ordering::Relaxed);
                ConstGauge::new(f64::from(u8::from(failed)))
                    .encode(family.encode_family(&[("source", label.as_str())])?)?;
            }
        }
        if let Some(recent) = &self.recent {
            counter(
                &mut e,
                "m365_sentinel_defender_duplicates",
                "Defender rows skipped as exact repeats within the dedupe window.",
                recent.duplicates(),
            )?;
        }
        if let Some(lag) = &self.lag {
            let snapshot = lag.snapshot();
            let mut family = e.encode_descriptor(
                "m365_sentinel_management_lag_seconds",
                "Age of the oldest content not yet safe downstream, per tenant and content type.",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for l in &snapshot {
                let labels = [
                    ("tenant", l.tenant.as_str()),
                    ("content_type", l.content_type.as_str()),
                ];
                ConstGauge::new(l.lag_ms as f64 / 1000.0).encode(family.encode_family(&labels)?)?;
            }
            let mut family = e.encode_descriptor(
                "m365_sentinel_management_expired",
                "Content expired before it was read, per tenant and content type.",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for l in &snapshot {
                let labels = [
                    ("tenant", l.tenant.as_str()),
                    ("content_type", l.content_type.as_str()),
                ];
                ConstCounter::new(l.expired).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, telemetry: Arc<Telemetry>) {
    use axum::http::StatusCode;
    use axum::routing::get;

    let mut registry = Registry::default();
    registry.register_collector(Box::new(telemetry.clone()));
    let registry = Arc::new(registry);
    let beat = telemetry.clone();
    tokio::spawn(async move {
        loop {
            beat.beat();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let (live, ready) = (telemetry.clone(), telemetry.clone());
    let app = axum::Router::new()
        .route(
            "/healthz",
            get(move || {
                let alive = live.alive();
                async move {
                    if alive {
                        (StatusCode::OK, "ok\n".to_string())
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "stalled\n".to_string())
                    }
                }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let state = ready.ready();
                async move {
                    match state {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        ),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let mut text = String::new();
                let result = prometheus_client::encoding::text::encode(&mut text, &registry);
                async move {
                    match result {
                        Ok(()) => (
                            StatusCode::OK,
                            [(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            text,
                        ),
                        Err(_) => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            [("content-type", "text/plain")],
                            "metrics could not be encoded\n".to_string(),
                        ),
                    }
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the health and metrics endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::retry::RetryPolicy;
    use crate::sinks::workspace::Api;
    use crate::state::dlq::DeadLetterStore;

    #[test]
    fn skipped_defender_rows_are_counted_per_category() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(WorkspaceSink::new(
            reqwest::Client::new(),
            Api::DataCollector {
                workspace_id: "00000000-0000-4000-8000-000000000003".into(),
                shared_key: "a2V5".into(),
                azure_resource_id: None,
            },
            RetryPolicy::default(),
            Arc::new(DeadLetterStore::open(dir.path()).unwrap()),
        ));
        let live = Arc::new(LiveCounts::default());
        live.skipped("AdvancedHunting-DeviceEvents");
        live.skipped("AdvancedHunting-DeviceEvents");
        live.skipped("AdvancedHunting-IdentityLogonEvents");
        let telemetry = Arc::new(Telemetry::new(sink, live, 1_000_000));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(telemetry));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "m365_sentinel_records_skipped_total{category=\"AdvancedHunting-DeviceEvents\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "m365_sentinel_records_skipped_total{category=\"AdvancedHunting-IdentityLogonEvents\"} 1"
            ),
            "{text}"
        );
    }
}
