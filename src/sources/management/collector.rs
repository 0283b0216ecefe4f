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
use super::lag::LagBoard;
use super::positions::{PositionError, PositionStore, TenantPositions};
use super::rate::RateLimiter;
use super::seen::{self, SeenFiles, SeenSet, id_key};
use super::tracker::Tracker;
use crate::ack::Ack;
use crate::decode::Fields;
use crate::record::{Position, RejectReason, Rejected};
use crate::sinks::retry::RetryPolicy;
use crate::sources::unit::{Dedupe, Unit};

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
    pub shutdown: crate::shutdown::Shutdown,
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
    commit_interval: Duration,
    options: CollectorOptions,
}

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
            commit_interval: Duration::from_millis(config.commit_interval_ms),
            options,
        });
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
            let prepared = prepare(tenant, config, &http, &store, &settings, &lag, &counters);
            let out = out.clone();
            let store = store.clone();
            tenants.spawn(async move {
                match prepared {
                    Ok(parts) => run_tenant(parts, store, out).await,
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
            lag,
            counters,
        })
    }

    /// Waits for every tenant to end (in `once` mode, after its last position is written).
    pub async fn finish(mut self) -> Vec<TenantReport> {
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
        reports.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        reports
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

/// Everything a tenant needs that can fail before it runs: its credential, client, positions
/// and seen ids. Failing here stops this tenant only.
fn prepare(
    tenant: &TenantConfig,
    config: &ManagementConfig,
    http: &reqwest::Client,
    store: &PositionStore,
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
        settings.options.max_blob_bytes,
    )
    .map_err(fail)?;
    let positions = store
        .load(&tenant.tenant_id)
        .map_err(|e| fail(e.to_string()))?;
    let seen_dir = config
        .state_dir
        .join("seen")
        .join(tenant.tenant_id.to_ascii_lowercase());
    let (seen, loaded) = SeenSet::load(
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
    store: Arc<PositionStore>,
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
        disk: p
            .seen_files
            .map(|files| (Arc::new(Mutex::new(files)), store)),
        lag: p.lag,
        events: event_rx,
        interval: p.settings.commit_interval,
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
            Ok(()) => {}
            Err(_) if t.settings.options.shutdown.is_set() => return Ok(()),
            Err(ApiError::TenantSetup(message)) => {
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

/// Starts the subscription if the service doesn't list it as enabled. Skipped when this process
/// started it less than 15 minutes ago, and in dry-run (which changes nothing in the tenant).
async fn ensure_subscription(t: &Tenant, index: usize) -> Result<(), ApiError> {
    let ct = &t.content_types[index];
    let recently = tracker(t, index, |tr| tr.subscription_started())
        .is_some_and(|at| now_millis() - at < START_SPACING_MS);
    if recently {
        return Ok(());
    }
    let enabled = retrying(t, "list subscriptions", || t.client.enabled_subscriptions()).await?;
    if enabled.iter().any(|e| e == ct) {
        return Ok(());
    }
    start_subscription(t, index).await
}

async fn start_subscription(t: &Tenant, index: usize) -> Result<(), ApiError> {
    let ct = &t.content_types[index];
    if !t.settings.options.persist {
        return Err(ApiError::Refused {
            status: 400,
            code: "AF20022".into(),
            message: format!(
                "the {ct} subscription is not started, and dry-run changes nothing in the tenant; `run` starts it"
            ),
        });
    }
    if let Some(at) = tracker(t, index, |tr| tr.subscription_started()) {
        let wait = START_SPACING_MS - (now_millis() - at);
        if wait > 0 {
            tracing::info!(tenant = %t.label, content_type = %ct, wait_secs = wait / 1000, "subscription started recently; waiting before starting it again");
            if !t.pause(Duration::from_millis(wait.unsigned_abs())).await {
                return Err(ApiError::Transient("stopping".into()));
            }
        }
    }
    // Recorded (and persisted) before asking: a start that succeeded on the service but whose
    // answer was lost, or a crash right after, still counts for the 15 minutes.
    tracker(t, index, |tr| tr.set_subscription_started(now_millis()));
    let _ = t.events.send(CommitEvent::Moved);
    retrying(t, "start subscription", || t.client.start_subscription(ct)).await?;
    Counters::add(&t.counters.subscriptions_started, 1);
    tracing::info!(tenant = %t.label, content_type = %ct, "subscription started");
    Ok(())
}

/// Attempts per call in a single pass (`--once`, dry-run), which must end: with the default
/// backoff, about a quarter of an hour of trying.
const ONCE_ATTEMPTS: u64 = 12;

/// Calls until the answer is not "throttled" or "transient", backing off exponentially with
/// jitter in [step/2, step]: a floor, so a throttling storm never becomes a hot loop. A
/// continuous run tries without end; a single pass gives up after [`ONCE_ATTEMPTS`].
async fn retrying<T, F, Fut>(t: &Tenant, what: &str, mut call: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let policy = t.settings.options.retry;
    let mut steps = policy.exponential();
    let mut attempt: u64 = 0;
    loop {
        match call().await {
            Err(e)
                if e.is_retryable()
                    && !(t.settings.options.once && attempt + 1 >= ONCE_ATTEMPTS) =>
            {
                attempt += 1;
                let counter = match e {
                    ApiError::Throttled { .. } => &t.counters.throttled,
                    _ => &t.counters.transient_errors,
                };
                Counters::add(counter, 1);
                let step = steps
                    .next()
                    .unwrap_or(policy.max_delay)
                    .min(policy.max_delay);
                let jitter = t.rng.lock().map_or(0.5, |mut r| r.f64());
                let delay = step.mul_f64(0.5 + jitter / 2.0);
                if attempt == 1 || attempt.is_multiple_of(10) {
                    tracing::warn!(tenant = %t.label, call = what, attempt, delay_ms = delay.as_millis() as u64, error = %e, "retrying");
                }
                if !t.pause(delay).await {
                    return Err(ApiError::Transient("stopping".into()));
                }
            }
            other => return other,
        }
    }
}

/// One pass: list every window from the position up to now and hand on what is new.
async fn cycle(t: &Arc<Tenant>, index: usize) -> Result<(), ApiError> {
    let ct = t.content_types[index].clone();
    let now = now_millis();
    let floor = availability_floor(now);
    let (relist_from, committed) = tracker(t, index, |tr| (tr.relist_from(), tr.committed()));
    if let Some(c) = committed
        && c < floor
    {
        expired_alarm(
            t,
            &ct,
            c,
            floor,
            "the position is older than the 7 days the API serves",
        );
    }
    let mut start = relist_from
        .unwrap_or(now - t.settings.lookback_ms)
        .max(floor);
    tracker(t, index, |tr| tr.begin_pass(start));
    while start < now {
        let end = start.saturating_add(MAX_WINDOW_MS).min(now);
        let Some((items, listed_to)) = list_window(t, index, start, end).await? else {
            // Nothing could be listed (the service's clock is behind): try again next poll.
            break;
        };
        let mut items = items;
        items.sort_by(|a, b| (a.created, &a.content_id).cmp(&(b.created, &b.content_id)));
        // Registered once each, whatever a listing repeats.
        let fresh: Vec<ContentItem> = tracker(t, index, |tr| {
            items.into_iter().filter(|i| tr.register(i)).collect()
        });
        if !hand_on(t, index, fresh).await? {
            break;
        }
        tracker(t, index, |tr| tr.listed(listed_to));
        let _ = t.events.send(CommitEvent::Moved);
        start = listed_to;
    }
    Ok(())
}

/// The oldest `contentCreated` the API still serves at `now`, with a margin for the request.
fn availability_floor(now: i64) -> i64 {
    now - i64::try_from(AVAILABILITY_HOURS).unwrap_or(168) * HOUR_MS + AVAILABILITY_MARGIN_MS
}

fn expired_alarm(t: &Tenant, ct: &str, from: i64, to: i64, why: &str) {
    use crate::map::datetime::format_unix_millis;
    Counters::add(&t.counters.expired_blobs, 1);
    t.lag.expired(&t.label, ct, 1);
    tracing::error!(
        tenant = %t.label,
        content_type = ct,
        from = %format_unix_millis(from),
        to = %format_unix_millis(to),
        "content expired before it was read ({why}); it can no longer be collected"
    );
}

/// Every page of the listing of `[start, end)`, and where the listing really ended (a refused
/// window is narrowed to the service's limits). None when nothing could be listed.
async fn list_window(
    t: &Tenant,
    index: usize,
    mut start: i64,
    mut end: i64,
) -> Result<Option<(Vec<ContentItem>, i64)>, ApiError> {
    let ct = &t.content_types[index];
    let mut rewindowed = false;
    let mut started_subscription = false;
    'window: loop {
        let mut url = t.client.listing_url(ct, start, end)?;
        let mut items = Vec::new();
        loop {
            match retrying(t, "list content", || t.client.list_page(url.clone())).await {
                Ok((page, next)) => {
                    items.extend(page);
                    match next {
                        Some(next) => url = next,
                        None => return Ok(Some((items, end))),
                    }
                }
                Err(ApiError::NoSubscription { code, message }) => {
                    if started_subscription {
                        // Started, and still not there: leave it to the next pass.
                        return Err(ApiError::NoSubscription { code, message });
                    }
                    tracing::warn!(tenant = %t.label, content_type = %ct, code, "no enabled subscription; starting it");
                    start_subscription(t, index).await?;
                    started_subscription = true;
                    continue 'window;
                }
                Err(ApiError::BadWindow {
                    code, server_time, ..
                }) if !rewindowed => {
                    rewindowed = true;
                    let local = now_millis();
                    // A Date header more than a week off is not a clock to trust.
                    let server = server_time
                        .filter(|s| (s - local).abs() < 7 * 24 * HOUR_MS)
                        .unwrap_or(local);
                    if (server - local).abs() > CLOCK_SKEW_WARN_MS {
                        tracing::warn!(tenant = %t.label, skew_secs = (local - server) / 1000, "the local clock is off from the Management API's; listing windows are computed from it: fix NTP");
                    }
                    let floor = availability_floor(server);
                    if start < floor {
                        expired_alarm(t, ct, start, floor, "the window started beyond 7 days");
                    }
                    start = start.max(floor);
                    end = end.min(server).min(start.saturating_add(MAX_WINDOW_MS));
                    tracing::warn!(tenant = %t.label, content_type = %ct, code, "listing window refused; listing again inside the service's limits");
                    if start >= end {
                        return Ok(None);
                    }
                    continue 'window;
                }
                Err(ApiError::Expired { .. }) => {
                    expired_alarm(t, ct, start, end, "AF20051 on the listing");
                    return Ok(Some((Vec::new(), end)));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A blob being fetched.
type Fetch = tokio::task::JoinHandle<Result<Vec<u8>, ApiError>>;

/// Passes in which a blob may fail to be read before it is refused (kept in the refused-input
/// file with the reason) so that it stops holding its content type back.
const BLOB_ATTEMPTS: u32 = 3;

/// Fetches blobs a few at a time and hands them on in the given order. True when every blob was
/// handed on; false when the run is stopping. Blobs not handed on are forgotten, so the next
/// pass lists them again; the position can't pass them meanwhile (see `Tracker::begin_pass`).
async fn hand_on(t: &Arc<Tenant>, index: usize, items: Vec<ContentItem>) -> Result<bool, ApiError> {
    let ct = &t.content_types[index];
    let mut queue: VecDeque<ContentItem> = items.into();
    let mut fetching: VecDeque<(ContentItem, Fetch)> = VecDeque::new();
    let result = loop {
        while fetching.len() < t.settings.blob_concurrency {
            let Some(item) = queue.pop_front() else {
                break;
            };
            let fetcher = t.clone();
            let uri = item.content_uri.clone();
            let handle = tokio::spawn(async move {
                let _slot = fetcher.blob_slots.acquire().await;
                retrying(&fetcher, "fetch content", || fetcher.client.fetch(&uri)).await
            });
            fetching.push_back((item, handle));
        }
        let Some((item, handle)) = fetching.pop_front() else {
            break Ok(true);
        };
        let mut shutdown = t.settings.options.shutdown.clone();
        let mut handle = handle;
        let fetched = tokio::select! {
            joined = &mut handle => {
                joined.unwrap_or_else(|e| Err(ApiError::Protocol(format!("fetch task failed: {e}"))))
            }
            () = shutdown.wait() => {
                handle.abort();
                queue.push_front(item);
                break Ok(false);
            }
        };
        let content = match fetched {
            Ok(bytes) => {
                Counters::add(&t.counters.blobs, 1);
                if let Ok(mut failures) = t.blob_failures.lock() {
                    failures.remove(&item.content_id);
                }
                Ok(match String::from_utf8(bytes) {
                    Ok(text) => text,
                    // Bad bytes cost only their record (refused as invalid_utf8), as in files.
                    Err(e) => crate::sources::file::mark_invalid_utf8(e.into_bytes()),
                })
            }
            Err(ApiError::Expired { .. }) => {
                expired_alarm(
                    t,
                    ct,
                    item.created,
                    item.created,
                    "AF20051 on the content blob",
                );
                complete_empty(t, index, &item);
                continue;
            }
            Err(ApiError::TenantSetup(m)) => {
                queue.push_front(item);
                break Err(ApiError::TenantSetup(m));
            }
            Err(e) => {
                let attempts = t
                    .blob_failures
                    .lock()
                    .map(|mut f| {
                        let n = f.entry(item.content_id.clone()).or_insert(0);
                        *n += 1;
                        *n
                    })
                    .unwrap_or(BLOB_ATTEMPTS);
                if attempts < BLOB_ATTEMPTS && !t.settings.options.once {
                    tracing::warn!(tenant = %t.label, content_type = %ct, content_id = %item.content_id, attempts, error = %e, "content blob could not be read; this pass stops and the next one tries again");
                    queue.push_front(item);
                    break Err(e);
                }
                Counters::add(&t.counters.failed_blobs, 1);
                tracing::error!(tenant = %t.label, content_type = %ct, content_id = %item.content_id, attempts, error = %e, "content blob could not be read; refused (kept with the reason in the refused-input file)");
                Err(Rejected {
                    pos: blob_position(t, index, &item),
                    reason: RejectReason::Unreadable(format!(
                        "content blob {} could not be read after {attempts} attempt(s): {e}; fetch it by hand with the same credentials (PublisherIdentifier={}) before it expires",
                        item.content_uri, t.publisher
                    )),
                    raw: item.content_uri.clone().into_bytes(),
                })
            }
        };
        if !send_unit(t, index, &item, content).await {
            queue.push_front(item);
            break Ok(false);
        }
    };
    for (item, handle) in fetching {
        handle.abort();
        queue.push_back(item);
    }
    tracker(t, index, |tr| {
        for item in &queue {
            tr.forget(&item.content_id);
        }
    });
    result
}

fn blob_position(t: &Tenant, index: usize, item: &ContentItem) -> Position {
    let source: Arc<str> =
        format!("{}/{}/{}", t.label, t.content_types[index], item.content_id).into();
    Position::new(source, 1)
}

/// Hands a fetched (or refused) blob to the mapper; false when the run is stopping.
async fn send_unit(
    t: &Tenant,
    index: usize,
    item: &ContentItem,
    content: Result<String, Rejected>,
) -> bool {
    let admitted = Arc::new(Mutex::new(Vec::new()));
    let events = t.events.clone();
    let done = CommitEvent::BlobDone {
        content_type: index,
        content_id: item.content_id.clone(),
        created: item.created,
        admitted: admitted.clone(),
    };
    let ack = Ack::hold(move || {
        let _ = events.send(done);
    });
    let unit = Unit {
        content,
        pos: blob_position(t, index, item),
        ack,
        dedupe: Dedupe::Ids(BlobDedupe {
            seen: t.seen.clone(),
            admitted,
            counters: t.counters.clone(),
        }),
    };
    if t.settings.options.shutdown.is_set() {
        return false;
    }
    t.out.send(unit).await.is_ok()
}

/// A blob that yields nothing (expired) but must not hold the position back.
fn complete_empty(t: &Tenant, index: usize, item: &ContentItem) {
    let _ = t.events.send(CommitEvent::BlobDone {
        content_type: index,
        content_id: item.content_id.clone(),
        created: item.created,
        admitted: Arc::new(Mutex::new(Vec::new())),
    });
}

struct Committer {
    label: String,
    tenant_id: String,
    content_types: Vec<String>,
    trackers: Arc<Mutex<Vec<Tracker>>>,
    seen: Arc<Mutex<SeenSet>>,
    /// The disk side (None in dry-run): seen-id files and positions.
    disk: Option<(Arc<Mutex<SeenFiles>>, Arc<PositionStore>)>,
    lag: Arc<LagBoard>,
    events: mpsc::UnboundedReceiver<CommitEvent>,
    interval: Duration,
}

/// Applies completions in batches (whatever arrived together), then makes them durable: seen
/// ids flushed first, positions replaced after, so a crash between the two only means blobs
/// read again and their records recognised as seen. Locks are held only for the in-memory
/// part; the disk work runs on a blocking thread with none held.
async fn commit_loop(mut c: Committer) {
    let mut batch = Vec::new();
    let mut last_write: Option<tokio::time::Instant> = None;
    loop {
        // At most one disk commit per interval: completions arriving meanwhile are gathered
        // into it (a crash then re-sends at most that much more).
        if let Some(at) = last_write {
            tokio::time::sleep_until(at + c.interval).await;
        }
        if c.events.recv_many(&mut batch, 65_536).await == 0 {
            break;
        }
        while let Ok(more) = c.events.try_recv() {
            batch.push(more);
        }
        let events = std::mem::take(&mut batch);
        let (oldest, writes, positions) = apply(&c, events);
        let now = now_millis();
        for (ct, oldest) in c.content_types.iter().zip(oldest) {
            if let Some(oldest) = oldest {
                c.lag.update(&c.label, ct, oldest, now);
            }
        }
        let Some((files, store)) = c.disk.clone() else {
            continue;
        };
        last_write = Some(tokio::time::Instant::now());
        let label = c.label.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut problems = Vec::new();
            if let Err(e) = files
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write(writes)
            {
                // The ids are missing on disk only: a restart could send their duplicates.
                problems.push(format!("{e} (duplicates possible after a restart)"));
            }
            if let Err(e) = store.save(&positions) {
                problems.push(e.to_string());
            }
            problems
        })
        .await
        .unwrap_or_else(|e| vec![format!("commit task failed: {e}")]);
        for problem in written {
            tracing::error!(tenant = %label, error = %problem, "collection state could not be written; collection goes on, and a restart would read some content again");
        }
    }
}

/// The in-memory part of a commit: every completion applied (none is dropped, whatever the
/// disk does later). Returns each content type's oldest unacknowledged content time (for the
/// lag), the seen ids to write and the positions to save.
fn apply(
    c: &Committer,
    events: Vec<CommitEvent>,
) -> (Vec<Option<i64>>, seen::Writes, TenantPositions) {
    let mut seen = c.seen.lock().unwrap_or_else(|e| e.into_inner());
    let mut trackers = c.trackers.lock().unwrap_or_else(|e| e.into_inner());
    for event in events {
        if let CommitEvent::BlobDone {
            content_type,
            content_id,
            created,
            admitted,
        } = event
        {
            let keys = std::mem::take(&mut *admitted.lock().unwrap_or_else(|e| e.into_inner()));
            seen.commit(created, &keys);
            trackers[content_type].complete(&content_id);
        }
    }
    seen.expire(now_millis());
    let oldest = trackers.iter().map(Tracker::oldest_unacked).collect();
    let positions = TenantPositions {
        tenant_id: c.tenant_id.clone(),
        content_types: c
            .content_types
            .iter()
            .zip(trackers.iter())
            .filter_map(|(ct, tr)| tr.position().map(|p| (ct.clone(), p)))
            .collect(),
    };
    (oldest, seen.take_writes(), positions)
}
