//! Reading Defender's append blobs: every poll lists the hour blobs of the lookback window,
//! reads what each grew by since the last read with Range requests, hands on the complete lines
//! (a partial last line waits for the next read) and records, per blob, the byte offset below
//! which every line is safe downstream.
//!
//! Days whose every blob was closed (its hour over) and read to its end when listed are not
//! listed again, so a poll costs one listing per (container, tenant) for the current day.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;

use super::client::{BlobAuth, BlobClient, BlobItem, SasToken, StorageError};
use super::config::{StorageAuth, StorageConfig};
use super::positions::{BlobPositionFile, BlobPositions};
use crate::ack::Ack;
use crate::ops::shutdown::Shutdown;
use crate::record::{Position, RejectReason, Rejected};
use crate::sources::progress::Progress;
use crate::sources::recent::RecentRows;
use crate::sources::status::SourceStatus;
use crate::sources::unit::{Dedupe, Origin, Unit};
use crate::stages::map::datetime::{civil_from_days, days_from_civil};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// An hour blob may still be appended to a while after its hour (export delay).
const CLOSE_GRACE_MS: i64 = HOUR_MS;
/// A day is listed again until this long after its end: exports can be hours late.
const SETTLE_AFTER_MS: i64 = DAY_MS;
/// Positions are written at most this often while reading.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// At a stop, how long to wait for lines in flight to become durable before the last write.
const STOP_WAIT: Duration = Duration::from_secs(20);

pub struct StorageOptions {
    /// False in dry-run: no positions are written.
    pub persist: bool,
    /// One pass to the blobs' current ends, then stop.
    pub once: bool,
    pub shutdown: Shutdown,
    pub recent: RecentRows,
    pub http: reqwest::Client,
    pub state_dir: std::path::PathBuf,
    /// Set when the run has ended: no more rows will become durable.
    pub run_ended: Shutdown,
    /// The clock (Unix ms); tests move it.
    pub now: fn() -> i64,
}

/// A running Storage source.
pub struct StorageSource {
    pub label: String,
    pub status: Arc<SourceStatus>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl StorageSource {
    /// Reads the secret, builds the client and starts the reading task.
    pub fn start(
        config: &StorageConfig,
        options: StorageOptions,
        out: mpsc::Sender<Unit>,
    ) -> Result<Self, StorageError> {
        let label = config.label();
        let secret = |path: &std::path::Path, what: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .map_err(|e| {
                    StorageError::InvalidArgument(format!(
                        "{label}: auth.{what} {}: {e}",
                        path.display()
                    ))
                })
        };
        let auth = match &config.auth {
            StorageAuth::SharedKey { key_file } => {
                BlobAuth::shared_key(&config.account, &secret(key_file, "key_file")?)?
            }
            StorageAuth::Sas { token_file } => {
                BlobAuth::Sas(SasToken::new(&secret(token_file, "token_file")?))
            }
            StorageAuth::Entra(entra) => BlobAuth::Bearer(
                entra
                    .build(&options.http)
                    .map_err(|e| StorageError::InvalidArgument(format!("{label}: {e}")))?,
            ),
        };
        let client = BlobClient::new(options.http.clone(), &config.endpoint(), auth)?;
        let file = BlobPositionFile::open(&options.state_dir, &config.account, options.persist)
            .map_err(|e| StorageError::InvalidArgument(e.to_string()))?;
        let positions = file
            .load(&config.account)
            .map_err(|e| StorageError::InvalidArgument(e.to_string()))?;
        let status = Arc::new(SourceStatus::default());
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let reader = Reader {
            label: label.clone(),
            config: config.clone(),
            client,
            file,
            positions,
            blobs: HashMap::new(),
            settled: HashSet::new(),
            done_tx,
            done_rx,
            status: status.clone(),
            options,
            out: Some(out),
            last_commit: tokio::time::Instant::now(),
            saved_entries: 0,
        };
        Ok(Self {
            label,
            status,
            task: tokio::spawn(reader.run()),
        })
    }

    /// Waits for the task (it ends at a stop, or after one pass with `once`); the errors that
    /// stopped it or kept it from reading.
    pub async fn finish(self) -> Vec<String> {
        let mut errors = self
            .task
            .await
            .unwrap_or_else(|e| vec![format!("{}: the reading task failed: {e}", self.label)]);
        if let Some(failure) = self.status.failure()
            && !errors.contains(&failure)
        {
            errors.push(failure);
        }
        errors
    }
}

struct Reader {
    label: String,
    config: StorageConfig,
    client: BlobClient,
    file: BlobPositionFile,
    positions: BlobPositions,
    /// Blobs read since start: `<container>/<name>` → progress in bytes.
    blobs: HashMap<String, Progress>,
    /// (container, tenant prefix, day) listings that can't change any more.
    settled: HashSet<(String, String, i64)>,
    done_tx: mpsc::UnboundedSender<(String, u64)>,
    done_rx: mpsc::UnboundedReceiver<(String, u64)>,
    status: Arc<SourceStatus>,
    options: StorageOptions,
    /// Taken at the end, so the mapper sees the end of this source's input.
    out: Option<mpsc::Sender<Unit>>,
    last_commit: tokio::time::Instant,
    /// Entries in the positions file as last written.
    saved_entries: usize,
}

/// Why a pass ended early.
enum Stop {
    /// The run is stopping.
    Stopped,
    Failed(StorageError),
}

impl From<StorageError> for Stop {
    fn from(e: StorageError) -> Self {
        Self::Failed(e)
    }
}

impl Reader {
    async fn run(mut self) -> Vec<String> {
        let mut errors = Vec::new();
        loop {
            match self.pass().await {
                Ok(()) => self.status.auth_works(),
                Err(Stop::Stopped) => break,
                Err(Stop::Failed(e)) => {
                    let message = format!("{}: {e}", self.label);
                    if matches!(
                        e,
                        StorageError::AuthRefused { .. } | StorageError::Token { .. }
                    ) {
                        self.status.auth_refused(&message);
                    } else {
                        self.status.retrying(&message);
                    }
                    if self.options.once {
                        errors.push(message);
                    }
                }
            }
            if self.options.once || self.options.shutdown.is_set() {
                break;
            }
            // Waits for the next poll, writing positions as rows become safe.
            let next =
                tokio::time::Instant::now() + Duration::from_secs(self.config.poll_interval_secs);
            let mut stop = self.options.shutdown.clone();
            while tokio::time::Instant::now() < next {
                tokio::select! {
                    _ = stop.wait() => break,
                    _ = tokio::time::sleep(COMMIT_EVERY) => {}
                }
                if let Err(e) = self.commit() {
                    // Written again at the next commit; reading goes on meanwhile.
                    self.status.retrying(&format!("{}: {e}", self.label));
                }
            }
        }
        if let Err(e) = self.finish().await {
            errors.push(e);
        }
        errors
    }

    /// Lists and reads every container once.
    async fn pass(&mut self) -> Result<(), Stop> {
        let now = (self.options.now)();
        let cutoff = now - i64::try_from(self.config.lookback_hours).unwrap_or(0) * HOUR_MS;
        for container in self.config.containers.clone() {
            let tenants = match self
                .client
                .list_prefixes(&container, "tenantId=", "/")
                .await
            {
                Ok(t) => t,
                // The export writes a table's container with its first row.
                Err(StorageError::ContainerNotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            for tenant in tenants {
                let mut day = cutoff.div_euclid(DAY_MS);
                while day <= now.div_euclid(DAY_MS) {
                    let key = (container.clone(), tenant.clone(), day);
                    if !self.settled.contains(&key) {
                        let (y, m, d) = civil_from_days(day);
                        let prefix = format!("{tenant}y={y:04}/m={m:02}/d={d:02}/");
                        let items = self.client.list_blobs(&container, &prefix).await?;
                        let all_closed = self.read_listing(&container, items, cutoff, now).await?;
                        if all_closed && (day + 1) * DAY_MS + SETTLE_AFTER_MS < now {
                            self.settled.insert(key);
                        }
                    }
                    day += 1;
                }
            }
        }
        self.forget_before(cutoff);
        self.commit()
            .map_err(|e| Stop::Failed(StorageError::InvalidArgument(e)))?;
        Ok(())
    }

    /// Blobs of hours before the pass's cutoff are never listed again: their positions go,
    /// unless lines of theirs are still in flight.
    fn forget_before(&mut self, cutoff: i64) {
        let blobs = &mut self.blobs;
        self.positions.blobs.retain(|key, _| {
            let old = blob_hour(key).is_some_and(|h| h + HOUR_MS <= cutoff - CLOSE_GRACE_MS);
            let idle = blobs.get(key).is_none_or(|p| p.in_flight() == 0);
            if old && idle {
                blobs.remove(key);
            }
            !(old && idle)
        });
    }

    /// Reads the listed blobs in name (so hour) order; true when every one is closed and read
    /// to its end.
    async fn read_listing(
        &mut self,
        container: &str,
        mut items: Vec<BlobItem>,
        cutoff: i64,
        now: i64,
    ) -> Result<bool, Stop> {
        items.sort_by(|a, b| a.name.cmp(&b.name));
        let mut all_done = true;
        for item in items {
            if !item.name.ends_with(".json") {
                continue;
            }
            let hour = blob_hour(&item.name);
            if hour.is_some_and(|h| h + HOUR_MS <= cutoff) {
                continue;
            }
            let closed = hour.is_some_and(|h| h + HOUR_MS + CLOSE_GRACE_MS < now);
            let read_to = self.read_blob(container, &item, closed).await?;
            all_done &= closed && read_to >= item.size;
        }
        Ok(all_done)
    }

    /// Reads what `item` grew by; where reading stopped.
    async fn read_blob(
        &mut self,
        container: &str,
        item: &BlobItem,
        closed: bool,
    ) -> Result<u64, Stop> {
        let key = format!("{container}/{}", item.name);
        let max = self.config.max_read_bytes;
        loop {
            let committed = self.positions.blobs.get(&key).copied().unwrap_or(0);
            let progress = self
                .blobs
                .entry(key.clone())
                .or_insert_with(|| Progress::new(committed));
            let start = progress.read_to();
            if start >= item.size {
                return Ok(start);
            }
            if self.options.shutdown.is_set() {
                return Err(Stop::Stopped);
            }
            let end = item.size.min(start + max);
            let data = match self
                .client
                .read_range(container, &item.name, start, end - 1)
                .await
            {
                Ok(data) => data,
                // Shorter than listed: replaced or deleted meanwhile; the next listing tells.
                Err(
                    StorageError::RangeNotSatisfiable { .. } | StorageError::BlobNotFound { .. },
                ) => {
                    return Ok(start);
                }
                Err(e) => return Err(e.into()),
            };
            let take = match memchr::memrchr(b'\n', &data) {
                Some(last) => last + 1,
                // A line longer than max_read_bytes: refused in pieces rather than held forever.
                None if data.len() as u64 >= max => data.len(),
                // The hour is over and no newline will come: the last line is whole.
                None if closed && start + data.len() as u64 >= item.size => data.len(),
                // A partial last line: the rest comes with a later append.
                None => return Ok(start),
            };
            let got = data.len();
            // No line end in a whole read: a line longer than max_read_bytes.
            let overlong = got as u64 >= max && memchr::memrchr(b'\n', &data).is_none();
            let mut data = data;
            data.truncate(take);
            let end = start + take as u64;
            self.hand_on(&key, start, end, data, overlong).await?;
            if take < got && start + got as u64 >= item.size {
                // The blob ends in a partial line: the rest comes with a later append.
                return Ok(end);
            }
        }
    }

    async fn hand_on(
        &mut self,
        key: &str,
        start: u64,
        end: u64,
        data: Vec<u8>,
        overlong: bool,
    ) -> Result<(), Stop> {
        let pos = Position::new(
            format!("{} {key} bytes {start}-{end}", self.label).into(),
            1,
        );
        let done = self.done_tx.clone();
        let done_key = key.to_string();
        let ack = Ack::hold(move || {
            let _ = done.send((done_key, start));
        });
        let content = if overlong {
            Err(Rejected {
                pos: pos.clone(),
                reason: RejectReason::Unreadable(format!(
                    "a line longer than max_read_bytes ({} bytes); raise it to read such lines",
                    self.config.max_read_bytes
                )),
                raw: data,
            })
        } else {
            String::from_utf8(data).map_err(|e| Rejected {
                pos: pos.clone(),
                reason: RejectReason::InvalidUtf8 {
                    offset: e.utf8_error().valid_up_to(),
                },
                raw: e.into_bytes(),
            })
        };
        if let Some(progress) = self.blobs.get_mut(key) {
            progress.read(start, end);
        }
        self.status.units.fetch_add(1, Ordering::Relaxed);
        let unit = Unit {
            content,
            pos,
            ack,
            dedupe: Dedupe::Recent(self.options.recent.clone()),
            origin: Origin {
                tenant: self.label.clone().into(),
                source: "storage".into(),
                created_ms: None,
            },
        };
        let Some(out) = &self.out else {
            return Err(Stop::Stopped);
        };
        if out.send(unit).await.is_err() {
            return Err(Stop::Stopped);
        }
        if self.last_commit.elapsed() >= COMMIT_EVERY {
            self.commit()
                .map_err(|e| Stop::Failed(StorageError::InvalidArgument(e)))?;
        }
        Ok(())
    }

    /// Applies acknowledgements and writes the positions when they moved.
    fn commit(&mut self) -> Result<(), String> {
        self.last_commit = tokio::time::Instant::now();
        while let Ok((key, start)) = self.done_rx.try_recv() {
            if let Some(progress) = self.blobs.get_mut(&key) {
                progress.done(start);
            }
        }
        let mut moved = false;
        for (key, progress) in &self.blobs {
            let safe = progress.safe();
            let slot = self.positions.blobs.entry(key.clone()).or_insert(0);
            if *slot != safe {
                *slot = safe;
                moved = true;
            }
        }
        moved |= self.positions.blobs.len() != self.saved_entries;
        if moved {
            self.saved_entries = self.positions.blobs.len();
            self.file.save(&self.positions).map_err(|e| e.to_string())?;
            self.status.committed(1);
        }
        Ok(())
    }

    /// Stopping: waits a while for lines in flight, then writes the positions a last time.
    async fn finish(&mut self) -> Result<(), String> {
        self.out = None;
        if self.options.persist {
            let deadline = tokio::time::Instant::now() + STOP_WAIT;
            while self.blobs.values().any(|p| p.in_flight() > 0) {
                if tokio::time::Instant::now() >= deadline || self.options.run_ended.is_set() {
                    tracing::warn!(source = %self.label, "stopping with lines not yet durable: they are read again at the next start");
                    break;
                }
                let wait = deadline.min(tokio::time::Instant::now() + Duration::from_millis(50));
                match tokio::time::timeout_at(wait, self.done_rx.recv()).await {
                    Ok(Some((key, start))) => {
                        if let Some(p) = self.blobs.get_mut(&key) {
                            p.done(start);
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {}
                }
            }
        }
        self.commit()
    }
}

/// The hour (Unix ms) of an export blob's name, `...y=YYYY/m=MM/d=DD/h=HH/...`.
pub fn blob_hour(name: &str) -> Option<i64> {
    let field = |key: &str| -> Option<u32> {
        let at = name.find(key)? + key.len();
        let digits: String = name[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    let (y, m, d, h) = (field("y=")?, field("/m=")?, field("/d=")?, field("/h=")?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) || h > 23 {
        return None;
    }
    Some(days_from_civil(i64::from(y), m, d) * DAY_MS + i64::from(h) * HOUR_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hour_comes_from_the_blob_name() {
        let h = blob_hour("insights/tenantId=abc/y=2026/m=11/d=22/h=13/m=00/PT1H.json").unwrap();
        assert_eq!(
            crate::stages::map::datetime::format_unix_millis(h),
            "2026-11-22T13:00:00.000Z"
        );
        assert_eq!(blob_hour("tenantId=abc/PT1H.json"), None);
        assert_eq!(
            blob_hour("tenantId=abc/y=4294967295/m=1/d=1/h=1/m=00/PT1H.json"),
            None,
            "no overflow"
        );
        assert_eq!(
            blob_hour("tenantId=abc/y=2026/m=13/d=22/h=13/m=00/PT1H.json"),
            None
        );
    }
}
