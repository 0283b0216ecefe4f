//! The archive's two workers: the tee (a blocking thread: each unit's block built, a handle of
//! its acknowledgement taken, the unit passed on to the front end) and the writer (a task:
//! blocks gathered for up to `commit_interval`, staged a few at a time, then one Put Block List
//! per blob part; every handle acknowledged once its block is committed).
//!
//! A failing container holds the units back rather than losing them: the writer retries with
//! backoff, its bounded channel fills, the tee waits and so do the sources. At shutdown, what
//! is not committed stays unacknowledged and is read again next time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::client::{Container, Part};
use super::layout::{Block, MAX_BLOCKS_PER_BLOB, block_of, part_name};
use super::{ArchiveConfig, ArchiveError};
use crate::ack::Ack;
use crate::ops::shutdown::Shutdown;
use crate::sources::unit::Unit;

/// Units between the tee and the front end, and blocks between the tee and the writer.
const CHANNEL: usize = 64;
/// What one round of the writer gathers at most.
const MAX_ROUND_UNITS: usize = 2_000;
const MAX_ROUND_BYTES: usize = 64 << 20;
/// Stage Block calls in flight at once.
const STAGING: usize = 8;
/// Hours whose block lists are kept in memory; an hour touched again after eviction is
/// listed again.
const HOURS_KEPT: usize = 64;
/// Failed attempts after which a `--once` pass gives up (about 30 s of backoff): a CronJob must
/// end, with what it could not archive left to the next pass.
const ONCE_ATTEMPTS: usize = 6;

/// Counts for the run's summary and the metrics.
#[derive(Debug, Default)]
pub struct ArchiveStats {
    pub units: AtomicU64,
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    /// Units whose block an earlier run had committed already.
    pub already_archived: AtomicU64,
    pub commits: AtomicU64,
    pub failures: AtomicU64,
    /// The last failure while it lasts (cleared by the next success), for the health rows.
    pub failing: std::sync::Mutex<Option<String>>,
    /// A `--once` pass stopped archiving because the container kept failing (not set by a
    /// shutdown).
    pub gave_up: std::sync::atomic::AtomicBool,
}

impl ArchiveStats {
    /// Why the archive is not writing, while it is not.
    pub fn failure(&self) -> Option<String> {
        self.failing.lock().ok().and_then(|f| f.clone())
    }

    fn set_failure(&self, failure: Option<String>) {
        if let Ok(mut f) = self.failing.lock() {
            *f = failure;
        }
    }

    pub fn summary(&self) -> String {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "archive: {} unit(s), {} record(s), {} gzip byte(s) committed in {} block list(s); {} unit(s) archived before; {} failed attempt(s)",
            n(&self.units),
            n(&self.records),
            n(&self.bytes),
            n(&self.commits),
            n(&self.already_archived),
            n(&self.failures),
        )
    }
}

/// The running archive: wait for it with [`Archive::finish`] once the sources have stopped.
pub struct Archive {
    pub stats: Arc<ArchiveStats>,
    tee: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Archive {
    /// Returns once every block the tee built was committed (or, at shutdown, given up).
    pub async fn finish(self) {
        let _ = self.tee.await;
        let _ = self.writer.await;
    }
}

struct Pending {
    block: Block,
    ack: Ack,
}

/// Puts the archive between `units` and the front end: returns the channel the front end reads.
/// Call inside the runtime.
/// `once`: a `--once` pass, which gives up after [`ONCE_ATTEMPTS`] failed attempts instead of
/// waiting for the container forever.
pub fn start(
    config: &ArchiveConfig,
    http: &reqwest::Client,
    mut units: mpsc::Receiver<Unit>,
    stats: Arc<ArchiveStats>,
    shutdown: Shutdown,
    once: bool,
) -> Result<(mpsc::Receiver<Unit>, Archive), ArchiveError> {
    let container = Container::new(config, http)?;
    let (to_front, front) = mpsc::channel(CHANNEL);
    let (to_writer, blocks) = mpsc::channel(CHANNEL);
    let prefix = config.prefix.clone();
    let tee = tokio::task::spawn_blocking(move || {
        while let Some(unit) = units.blocking_recv() {
            let block = block_of(&unit, &prefix, now_millis());
            let ack = unit.ack.attach();
            if to_writer.blocking_send(Pending { block, ack }).is_err()
                || to_front.blocking_send(unit).is_err()
            {
                return;
            }
        }
    });
    let attempts = if once { ONCE_ATTEMPTS } else { usize::MAX };
    let writer = tokio::spawn(write(
        container,
        blocks,
        config.commit_interval(),
        stats.clone(),
        shutdown,
        attempts,
    ));
    Ok((front, Archive { stats, tee, writer }))
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// An hour's blob parts, in order; the last has room (or does not exist yet).
struct Hour {
    parts: Vec<Part>,
    used: Instant,
}

async fn write(
    container: Container,
    mut blocks: mpsc::Receiver<Pending>,
    interval: Duration,
    stats: Arc<ArchiveStats>,
    shutdown: Shutdown,
    attempts: usize,
) {
    let mut hours: HashMap<Arc<str>, Hour> = HashMap::new();
    while let Some(first) = blocks.recv().await {
        let deadline = tokio::time::Instant::now() + interval;
        let mut bytes = first.block.gzip.len();
        let mut round = vec![first];
        while round.len() < MAX_ROUND_UNITS && bytes < MAX_ROUND_BYTES {
            match tokio::time::timeout_at(deadline, blocks.recv()).await {
                Ok(Some(pending)) => {
                    bytes += pending.block.gzip.len();
                    round.push(pending);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let mut by_hour: HashMap<Arc<str>, Vec<Pending>> = HashMap::new();
        for pending in round {
            by_hour
                .entry(pending.block.hour.clone())
                .or_default()
                .push(pending);
        }
        for (hour, pending) in by_hour {
            if !commit_hour(
                &container, &mut hours, &hour, &pending, &stats, &shutdown, attempts,
            )
            .await
            {
                // Shutting down, or a pass giving up: the units stay unacknowledged. Only
                // giving up is a failure of the pass.
                if !shutdown.is_set() {
                    stats.gave_up.store(true, Ordering::Relaxed);
                }
                return;
            }
            for p in pending {
                p.ack.ack();
            }
        }
        while hours.len() > HOURS_KEPT
            && let Some(oldest) = hours
                .iter()
                .min_by_key(|(_, h)| h.used)
                .map(|(k, _)| k.clone())
        {
            hours.remove(&oldest);
        }
    }
}

/// Commits `pending` to the hour's blobs, retrying until it holds; false when the run stops
/// first or `attempts` failed. An attempt under way is abandoned at shutdown.
async fn commit_hour(
    container: &Container,
    hours: &mut HashMap<Arc<str>, Hour>,
    hour: &Arc<str>,
    pending: &[Pending],
    stats: &ArchiveStats,
    shutdown: &Shutdown,
    attempts: usize,
) -> bool {
    let mut failed = 0usize;
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(60))
        .with_factor(2.0)
        .without_max_times()
        .build();
    loop {
        let attempt = async {
            match hours.get_mut(hour) {
                Some(h) => {
                    h.used = Instant::now();
                    append(container, hour, h, pending, stats).await
                }
                None => match load_hour(container, hour).await {
                    Ok(h) => {
                        let h = hours.entry(hour.clone()).or_insert(h);
                        append(container, hour, h, pending, stats).await
                    }
                    Err(e) => Err(e),
                },
            }
        };
        let mut stop = shutdown.clone();
        let result = tokio::select! {
            result = attempt => result,
            () = stop.wait() => {
                tracing::warn!("archive: stopping with an attempt under way; these units are read again next time");
                return false;
            }
        };
        match result {
            Ok(()) => {
                stats.set_failure(None);
                return true;
            }
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                stats.set_failure(Some(e.to_string()));
                hours.remove(hour);
                // A rotated SAS is picked up at the next attempt.
                container.reload_sas();
                failed += 1;
                if shutdown.is_set() || failed >= attempts {
                    tracing::error!(error = %e, attempts = failed, "archive: giving up; these units are read again next time");
                    return false;
                }
                let delay = delays.next().unwrap_or(Duration::from_secs(60));
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "archive write failed; the sources wait");
                let mut stop = shutdown.clone();
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.wait() => {}
                }
            }
        }
    }
}

async fn load_hour(container: &Container, hour: &str) -> Result<Hour, ArchiveError> {
    let mut parts: Vec<Part> = Vec::new();
    loop {
        let part = container.load(&part_name(hour, parts.len())).await?;
        let full = part.blocks() >= MAX_BLOCKS_PER_BLOB;
        parts.push(part);
        if !full {
            return Ok(Hour {
                parts,
                used: Instant::now(),
            });
        }
    }
}

/// Stages and commits the blocks none of the hour's parts holds yet, filling the last part and
/// opening the next when it is full.
async fn append(
    container: &Container,
    name: &str,
    hour: &mut Hour,
    pending: &[Pending],
    stats: &ArchiveStats,
) -> Result<(), ArchiveError> {
    let mut fresh: Vec<&Block> = Vec::new();
    for p in pending {
        let block = &p.block;
        let known = hour.parts.iter().any(|part| part.holds(&block.id))
            || fresh.iter().any(|b| b.id == block.id);
        if known {
            stats.already_archived.fetch_add(1, Ordering::Relaxed);
        } else {
            fresh.push(block);
        }
    }
    let mut rest = fresh.as_slice();
    while !rest.is_empty() {
        let last = hour.parts.len() - 1;
        let room = MAX_BLOCKS_PER_BLOB.saturating_sub(hour.parts[last].blocks());
        if room == 0 {
            hour.parts
                .push(container.load(&part_name(name, hour.parts.len())).await?);
            continue;
        }
        let (now, later) = rest.split_at(room.min(rest.len()));
        let part = &mut hour.parts[last];
        stage_all(part, now).await?;
        let ids: Vec<[u8; 32]> = now.iter().map(|b| b.id).collect();
        part.commit(&ids).await?;
        stats.commits.fetch_add(1, Ordering::Relaxed);
        for b in now {
            stats.units.fetch_add(1, Ordering::Relaxed);
            stats.records.fetch_add(b.records, Ordering::Relaxed);
            stats
                .bytes
                .fetch_add(b.gzip.len() as u64, Ordering::Relaxed);
        }
        rest = later;
    }
    Ok(())
}

/// Stages `blocks`, [`STAGING`] at a time.
async fn stage_all(part: &Part, blocks: &[&Block]) -> Result<(), ArchiveError> {
    let mut staging = futures::stream::FuturesUnordered::new();
    for block in blocks {
        if staging.len() >= STAGING
            && let Some(done) = staging.next().await
        {
            done?;
        }
        staging.push(part.stage(&block.id, block.gzip.clone()));
    }
    while let Some(done) = staging.next().await {
        done?;
    }
    Ok(())
}
