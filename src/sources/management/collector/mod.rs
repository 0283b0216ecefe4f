//! Collecting many tenants at once. Each (tenant, content type) has a worker that lists content
//! windows from its position to now, fetches the new blobs (a bounded number at once per tenant)
//! and hands them on in creation order as [`Unit`]s. Each tenant has one committer that hears
//! when a blob's last row is safe downstream, remembers its record ids and writes the tenant's
//! positions. A tenant whose setup is wrong (credential, consent, tenant id) is reported and
//! retried later; the other tenants never wait for it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::client::{ApiClient, ApiError, ContentItem, now_millis};
use super::config::{AVAILABILITY_HOURS, ManagementConfig, TenantConfig};
use super::journal::{self, Commit, Entry, JournalError, StateJournal};
use super::lag::LagBoard;
use super::positions::{PositionError, PositionStore, TenantPositions};
use super::rate::RateLimiter;
use super::seen::{self, SeenFiles, SeenSet, id_key};
use super::tracker::Tracker;
use crate::ack::Ack;
use crate::record::{Position, RejectReason, Rejected};
use crate::sinks::retry::RetryPolicy;
use crate::sources::unit::{Dedupe, Origin, Unit};
use crate::stages::decode::Fields;

mod committing;
mod fetching;
mod listing;

use committing::*;
use fetching::*;
use listing::*;

const HOUR_MS: i64 = 3_600_000;
/// The API refuses windows longer than this.
const MAX_WINDOW_MS: i64 = 24 * HOUR_MS;
/// Listing starts this much inside the 7-day limit, so a request in flight doesn't cross it.
const AVAILABILITY_MARGIN_MS: i64 = 15 * 60_000;
/// The API asks for 15 minutes between two starts of the same subscription.
const START_SPACING_MS: i64 = 15 * 60_000;
/// A local clock further than this from the service's is worth a warning.
const CLOCK_SKEW_WARN_MS: i64 = 60_000;

/// Admission of a blob's records by `Id` against the tenant's seen-id set.
pub struct BlobDedupe {
    seen: Arc<Mutex<SeenSet>>,
    admitted: Arc<Mutex<Vec<u128>>>,
    counters: Arc<Counters>,
}

impl BlobDedupe {
    /// False for a record whose `Id` was delivered already or is in flight from another blob.
    /// Records without a string `Id` always pass.
    pub fn admit(&mut self, fields: &Fields) -> bool {
        let Some(id) = fields.get("Id").and_then(string_value) else {
            return true;
        };
        let key = id_key(&id);
        let fresh = self.seen.lock().map_or(true, |mut s| s.admit(key));
        if fresh {
            if let Ok(mut admitted) = self.admitted.lock() {
                admitted.push(key);
            }
        } else {
            self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        fresh
    }
}

fn string_value(raw: &RawValue) -> Option<String> {
    serde_json::from_str::<String>(raw.get()).ok()
}

/// What the collector did, for logs, the run summary and (later) metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub blobs: AtomicU64,
    pub duplicates: AtomicU64,
    pub throttled: AtomicU64,
    pub transient_errors: AtomicU64,
    pub expired_blobs: AtomicU64,
    pub failed_blobs: AtomicU64,
    pub subscriptions_started: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error(transparent)]
    Positions(#[from] PositionError),
    #[error(transparent)]
    Seen(#[from] super::seen::SeenError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{0}")]
    Shard(String),
}

/// How a run uses the collector.
#[derive(Debug, Clone)]
pub struct CollectorOptions {
    /// Write positions and seen ids, and start subscriptions; false for dry-run.
    pub persist: bool,
    /// One pass up to now per content type, then stop.
    pub once: bool,
    pub max_blob_bytes: usize,
    pub retry: RetryPolicy,
    /// Set on SIGTERM: workers stop listing and fetching, and hand nothing more on.
    pub shutdown: crate::ops::shutdown::Shutdown,
}

/// How each tenant ended (only in `once` mode does a tenant end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantReport {
    pub tenant: String,
    /// Problems that stopped a content type, naming it and what to do.
    pub errors: Vec<String>,
}

struct Settings {
    poll_interval: Duration,
    lookback_ms: i64,
    overlap_ms: i64,
    blob_concurrency: usize,
    /// Shared by every tenant: a permit per blob in memory (see `max_blobs_in_flight`).
    blob_budget: Arc<Semaphore>,
    /// Shared by every tenant's client: a permit per request on the wire.
    request_budget: Arc<Semaphore>,
    /// Shared by every tenant's client: a permit per token asked of a credential.
    token_fetches: Arc<Semaphore>,
    /// Shared by every tenant's committer: a permit per compaction writing to disk.
    disk_writers: Arc<Semaphore>,
    options: CollectorOptions,
}

/// Tenants compacting their seen ids at once (after midnight UTC every tenant's yesterday is
/// due): more side by side only add blocking threads waiting on the same disk.
const DISK_WRITERS: usize = 2;

enum CommitEvent {
    BlobDone {
        content_type: usize,
        content_id: String,
        created: i64,
        admitted: Arc<Mutex<Vec<u128>>>,
    },
    /// A tracker moved without a blob completing (a window listed, a subscription started).
    Moved,
}

struct Tenant {
    label: String,
    client: Arc<ApiClient>,
    content_types: Vec<String>,
    trackers: Arc<Mutex<Vec<Tracker>>>,
    seen: Arc<Mutex<SeenSet>>,
    events: mpsc::UnboundedSender<CommitEvent>,
    out: mpsc::Sender<Unit>,
    blob_slots: Arc<Semaphore>,
    settings: Arc<Settings>,
    lag: Arc<LagBoard>,
    counters: Arc<Counters>,
    rng: Mutex<fastrand::Rng>,
    /// Passes in which each blob failed to be read.
    blob_failures: Mutex<HashMap<String, u32>>,
    publisher: String,
}

/// The running collection of every configured tenant.
pub struct Collector {
    tenants: JoinSet<TenantReport>,
    /// None in dry-run.
    journal: Option<Arc<StateJournal>>,
    pub lag: Arc<LagBoard>,
    pub counters: Arc<Counters>,
}

impl Collector {
    /// Starts a task per tenant; blobs go to `out` in order per (tenant, content type).
    pub fn start(
        config: &ManagementConfig,
        http: reqwest::Client,
        options: CollectorOptions,
        out: mpsc::Sender<Unit>,
    ) -> Result<Self, CollectorError> {
        let positions_dir = config.state_dir.join("positions");
        let store = Arc::new(if options.persist {
            PositionStore::open(&positions_dir)?
        } else {
            PositionStore::read_only(&positions_dir)
        });
        let settings = Arc::new(Settings {
            poll_interval: Duration::from_millis(config.poll_interval_ms.max(1)),
            lookback_ms: i64::try_from(config.initial_lookback_hours.min(AVAILABILITY_HOURS))
                .unwrap_or(0)
                * HOUR_MS,
            overlap_ms: i64::try_from(config.relist_overlap_minutes).unwrap_or(0) * 60_000,
            blob_concurrency: config.blob_concurrency.max(1),
            blob_budget: Arc::new(Semaphore::new(config.max_blobs_in_flight.max(1))),
            request_budget: Arc::new(Semaphore::new(config.max_concurrent_requests.max(1))),
            token_fetches: Arc::new(Semaphore::new(super::client::TOKEN_FETCHES)),
            disk_writers: Arc::new(Semaphore::new(DISK_WRITERS)),
            options,
        });
        // A run replays what an earlier one left in the journal into the tenants' files (what
        // it could not is applied in memory); a dry-run only reads it, and applies it in memory.
        let (journal, mut recovered) = if settings.options.persist {
            let state_dir = config.state_dir.clone();
            let (journal, carried) = StateJournal::open(
                &config.state_dir,
                &store,
                move |tenant| seen_dir(&state_dir, tenant),
                Duration::from_millis(config.commit_interval_ms),
            )?;
            (Some(Arc::new(journal)), carried)
        } else {
            (None, journal::recovered(&config.state_dir)?)
        };
        let lag = Arc::new(LagBoard::default());
        let counters = Arc::new(Counters::default());
        let pod_name = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .ok();
        let (shard, shards) = config
            .shard
            .resolve(pod_name.as_deref())
            .map_err(CollectorError::Shard)?;
        let mut tenants = JoinSet::new();
        for tenant in &config.tenants {
            if !super::config::shard_owns(&tenant.tenant_id, shard, shards) {
                tracing::debug!(tenant = %tenant.label(), shard, shards, "tenant belongs to another replica");
                continue;
            }
            let journaled = recovered.remove(&tenant.tenant_id.to_ascii_lowercase());
            let prepared = prepare(
                tenant, config, &http, &store, journaled, &settings, &lag, &counters,
            );
            let out = out.clone();
            let disk = journal.clone();
            tenants.spawn(async move {
                match prepared {
                    Ok(parts) => run_tenant(parts, disk, out).await,
                    Err(error) => {
                        tracing::error!(tenant = %error.0, error = %error.1, "tenant not collected");
                        TenantReport {
                            tenant: error.0,
                            errors: vec![error.1],
                        }
                    }
                }
            });
        }
        Ok(Self {
            tenants,
            journal,
            lag,
            counters,
        })
    }

    /// Waits for every tenant to end (in `once` mode, after its last position is written).
    /// Beside the tenants' reports: the collection state that could not be made durable at
    /// the end, if any (this run delivered its records, but the next run reads some again).
    pub async fn finish(mut self) -> (Vec<TenantReport>, Option<String>) {
        let mut reports = Vec::new();
        while let Some(done) = self.tenants.join_next().await {
            match done {
                Ok(report) => reports.push(report),
                Err(e) => reports.push(TenantReport {
                    tenant: "?".into(),
                    errors: vec![format!("tenant task failed: {e}")],
                }),
            }
        }
        let mut state_error = None;
        if let Some(journal) = self.journal.take() {
            let closed = journal.close().await;
            let stats = &journal.stats;
            tracing::info!(
                rounds = stats.rounds.load(Ordering::Relaxed),
                commits = stats.commits.load(Ordering::Relaxed),
                checkpoints = stats.checkpoints.load(Ordering::Relaxed),
                "state journal closed"
            );
            if let Err(e) = closed {
                tracing::error!(error = %e, "collection state lost at the end");
                state_error = Some(e.to_string());
            }
        }
        reports.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        (reports, state_error)
    }
}

struct Prepared {
    label: String,
    tenant_id: String,
    client: ApiClient,
    content_types: Vec<String>,
    publisher: String,
    positions: TenantPositions,
    seen: SeenSet,
    /// Where seen ids are written (None in dry-run).
    seen_files: Option<SeenFiles>,
    settings: Arc<Settings>,
    lag: Arc<LagBoard>,
    counters: Arc<Counters>,
}

/// A tenant's seen-id directory.
fn seen_dir(state_dir: &std::path::Path, tenant_id: &str) -> std::path::PathBuf {
    state_dir.join("seen").join(tenant_id.to_ascii_lowercase())
}

/// Everything a tenant needs that can fail before it runs: its credential, client, positions
/// and seen ids (with what the journal holds that the files don't, `journaled`, on top: all of
/// it in a dry-run, what could not be replayed in a run). Failing here stops this tenant only.
#[allow(clippy::too_many_arguments)]
fn prepare(
    tenant: &TenantConfig,
    config: &ManagementConfig,
    http: &reqwest::Client,
    store: &PositionStore,
    journaled: Option<Entry>,
    settings: &Arc<Settings>,
    lag: &Arc<LagBoard>,
    counters: &Arc<Counters>,
) -> Result<Prepared, (String, String)> {
    let label = tenant.label().to_string();
    let fail = |m: String| (label.clone(), m);
    let endpoint = tenant.endpoint();
    let url =
        reqwest::Url::parse(&endpoint).map_err(|e| fail(format!("endpoint {endpoint:?}: {e}")))?;
    let loopback = url
        .host_str()
        .is_some_and(|h| h == "127.0.0.1" || h == "localhost" || h == "[::1]");
    if url.scheme() != "https" && !(config.allow_plain_http_loopback && loopback) {
        return Err(fail(format!(
            "endpoint {endpoint:?} must be an https URL (http only to loopback with management_api.allow_plain_http_loopback)"
        )));
    }
    let transport = azure_core::http::Transport::new(Arc::new(http.clone()));
    let credential = crate::auth::credential(
        &tenant.credential,
        tenant.cloud.entra_cloud(),
        tenant.authority_host.as_deref(),
        Some(transport),
    )
    .map_err(|e| fail(e.to_string()))?;
    let client = ApiClient::new(
        http.clone(),
        tenant,
        credential,
        RateLimiter::per_minute(config.requests_per_minute),
        settings.request_budget.clone(),
        settings.token_fetches.clone(),
        settings.options.max_blob_bytes,
    )
    .map_err(fail)?;
    let mut positions = store
        .load(&tenant.tenant_id)
        .map_err(|e| fail(e.to_string()))?;
    let seen_dir = seen_dir(&config.state_dir, &tenant.tenant_id);
    let (mut seen, loaded) = SeenSet::load(
        &seen_dir,
        settings.options.persist,
        now_millis(),
        config.dedupe.retention_days,
        config.dedupe.max_ids_per_tenant,
    )
    .map_err(|e| fail(e.to_string()))?;
    let seen_files = if settings.options.persist {
        Some(SeenFiles::open(&seen_dir).map_err(|e| fail(e.to_string()))?)
    } else {
        None
    };
    if let Some(entry) = journaled {
        positions = entry.positions;
        for (day, keys) in &entry.appends {
            seen.restore(*day, keys);
        }
    }
    if loaded.torn_bytes > 0 {
        tracing::warn!(tenant = %label, torn_bytes = loaded.torn_bytes, "seen-id files ended in a partial id (a crash mid-write); cut off");
    }
    tracing::info!(tenant = %label, seen_ids = loaded.ids, files = loaded.files, "tenant ready");
    Ok(Prepared {
        label,
        tenant_id: tenant.tenant_id.clone(),
        client,
        content_types: tenant.content_types(),
        publisher: tenant.publisher_identifier.clone(),
        positions,
        seen,
        seen_files,
        settings: settings.clone(),
        lag: lag.clone(),
        counters: counters.clone(),
    })
}

async fn run_tenant(
    p: Prepared,
    journal: Option<Arc<StateJournal>>,
    out: mpsc::Sender<Unit>,
) -> TenantReport {
    let trackers: Vec<Tracker> = p
        .content_types
        .iter()
        .map(|ct| Tracker::new(p.positions.content_types.get(ct), p.settings.overlap_ms))
        .collect();
    let trackers = Arc::new(Mutex::new(trackers));
    let seen = Arc::new(Mutex::new(p.seen));
    let (events, event_rx) = mpsc::unbounded_channel();
    let tenant = Arc::new(Tenant {
        label: p.label.clone(),
        client: Arc::new(p.client),
        content_types: p.content_types,
        trackers: trackers.clone(),
        seen: seen.clone(),
        events,
        out,
        blob_slots: Arc::new(Semaphore::new(p.settings.blob_concurrency)),
        settings: p.settings.clone(),
        lag: p.lag.clone(),
        counters: p.counters,
        rng: Mutex::new(fastrand::Rng::new()),
        blob_failures: Mutex::new(HashMap::new()),
        publisher: p.publisher,
    });
    let committer = tokio::spawn(commit_loop(Committer {
        label: p.label.clone(),
        tenant_id: p.tenant_id,
        content_types: tenant.content_types.clone(),
        trackers,
        seen,
        disk: p.seen_files.zip(journal).map(|(files, journal)| Disk {
            files: Arc::new(Mutex::new(files)),
            journal,
        }),
        lag: p.lag,
        events: event_rx,
        disk_writers: p.settings.disk_writers.clone(),
    }));
    let mut workers = JoinSet::new();
    for index in 0..tenant.content_types.len() {
        workers.spawn(content_worker(tenant.clone(), index));
    }
    let mut errors = Vec::new();
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("worker failed: {e}")),
        }
    }
    // The committer ends once every blob handed on is acknowledged (or dropped by a run that
    // stopped), since each holds a sender.
    drop(tenant);
    let _ = committer.await;
    TenantReport {
        tenant: p.label,
        errors,
    }
}

/// One content type of one tenant, until `once` ends it. Setup problems (token, consent, tenant
/// id) are reported and retried after the longest backoff: someone has to fix them.
async fn content_worker(t: Arc<Tenant>, index: usize) -> Result<(), String> {
    let ct = t.content_types[index].clone();
    loop {
        let result = match ensure_subscription(&t, index).await {
            Ok(()) => cycle(&t, index).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => t.lag.failure(&t.label, &ct, None),
            Err(_) if t.settings.options.shutdown.is_set() => return Ok(()),
            Err(ApiError::TenantSetup(message)) => {
                t.lag.failure(&t.label, &ct, Some(message.clone()));
                let message = format!("tenant {} ({ct}): {message}", t.label);
                tracing::error!(tenant = %t.label, content_type = %ct, error = %message, "tenant cannot be collected");
                if t.settings.options.once {
                    return Err(message);
                }
                if !t.pause(t.settings.options.retry.max_delay).await {
                    return Ok(());
                }
                continue;
            }
            Err(e) if t.settings.options.once => {
                let message = format!("tenant {} ({ct}): {e}", t.label);
                tracing::error!(tenant = %t.label, content_type = %ct, error = %e, "collection pass failed");
                return Err(message);
            }
            Err(e) => {
                tracing::warn!(tenant = %t.label, content_type = %ct, error = %e, "collection pass failed; trying again at the next poll");
            }
        }
        if t.settings.options.once || t.out.is_closed() || !t.pause(t.settings.poll_interval).await
        {
            return Ok(());
        }
    }
}

impl Tenant {
    /// Waits `delay`; false (at once) when the run is stopping.
    async fn pause(&self, delay: Duration) -> bool {
        let mut shutdown = self.settings.options.shutdown.clone();
        tokio::select! {
            () = tokio::time::sleep(delay) => !shutdown.is_set(),
            () = shutdown.wait() => false,
        }
    }
}

fn tracker<R>(t: &Tenant, index: usize, f: impl FnOnce(&mut Tracker) -> R) -> R {
    let mut trackers = t.trackers.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut trackers[index])
}
