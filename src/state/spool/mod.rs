//! The spool: a bounded, crash-safe queue on local disk between mapping and delivery. Once a row
//! is in it (written, and flushed to disk under the default policy), the source may commit its
//! position; a row leaves it only when the workspace acknowledged it or it went to the
//! dead-letter store. It lets collection go on through a long workspace outage, and restarts
//! lose nothing.
//!
//! Layout: one directory per stream, holding numbered segment files of framed, checksummed
//! records (`segment.rs`) and a `cursor` file: everything before the cursor was delivered.
//! Appends go to the last segment; a segment is deleted once the cursor passed it. Per stream
//! the order is FIFO; streams are delivered independently, so a failing table does not hold up
//! the others' delivery (the disk budget is shared, though).
//!
//! Why a segment log of our own rather than an embedded database (redb, sled): the access pattern
//! is exactly an append-only FIFO per stream with one reader, which a log does with one
//! sequential write per batch and no compaction; deletion is unlinking whole files; recovery
//! is a checksum scan that can report precisely what it cut. Measured: see README (Spool).

pub mod reader;
pub mod segment;
pub mod writer;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use serde::Deserialize;

use crate::state::private_fs;
use crate::state::slot_file::{SlotFile, SlotRead};

pub use reader::{Acker, StreamReader, Taken};
pub use writer::SpoolWriter;

/// When appended rows are flushed to disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncPolicy {
    /// fsync after every batch, before the rows are acknowledged to their source: nothing a
    /// source committed is lost even to a power failure. One fsync per batch (group commit).
    #[default]
    Always,
    /// Acknowledge once written to the operating system: survives the process being killed,
    /// not a power failure or kernel crash. Faster on slow disks.
    Os,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// false: rows go from the mapper straight to delivery, and sources commit on the
    /// workspace's acknowledgement (a restart re-reads what was in memory).
    pub enabled: bool,
    /// 0700; files 0600 (they hold audit data). A persistent volume in Kubernetes.
    pub dir: PathBuf,
    /// The most the spool may hold on disk; when full, sources pause until delivery frees room.
    pub max_bytes: u64,
    pub sync: SyncPolicy,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: PathBuf::from("spool"),
            max_bytes: 8 << 30,
            sync: SyncPolicy::Always,
        }
    }
}

/// The smallest budget: room for a few segments of every stream.
pub const MIN_MAX_BYTES: u64 = 4 << 20;

impl SpoolConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.enabled && self.max_bytes < MIN_MAX_BYTES {
            return Err(format!(
                "spool.max_bytes is {}; it must be at least {MIN_MAX_BYTES} (4 MiB)",
                self.max_bytes
            ));
        }
        Ok(())
    }

    /// Segment size: small enough that deleting delivered segments frees the budget in steps.
    fn segment_bytes(&self) -> u64 {
        (self.max_bytes / 16).clamp(256 << 10, 8 << 20)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("spool {0}: a stream name must be letters, digits, '-' and '_'")]
    StreamName(String),
    #[error("the spool is stopping")]
    Stopping,
}

pub(crate) fn io_err(path: &Path) -> impl Fn(std::io::Error) -> SpoolError + '_ {
    move |error| SpoolError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// A place in a stream: segment number and byte offset. Everything before the cursor was
/// delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub seq: u64,
    pub offset: u64,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    seq: u64,
    /// Bytes written and visible to the reader.
    published: u64,
}

struct StreamState {
    segments: VecDeque<Segment>,
    cursor: Pos,
    /// Ranges handed to deliveries: start → (end, delivered).
    ranges: BTreeMap<Pos, (Pos, bool)>,
    /// When the cursor was last written to disk.
    cursor_written: Option<std::time::Instant>,
    cursor_dirty: bool,
}

pub(crate) struct StreamSpool {
    name: String,
    dir: PathBuf,
    state: Mutex<StreamState>,
    /// Wakes the reader when rows are published.
    published: tokio::sync::Notify,
    /// The cursor last written to disk; held while writing, so concurrent deliveries write
    /// one at a time and never move it back.
    persisted: Mutex<CursorFile>,
}

/// The delivery cursor on disk: a slot pair (`cursor.0`, `cursor.1`), replaced in place after
/// every delivery without creating a file (see `state::slot_file`).
struct CursorFile {
    pos: Pos,
    slots: SlotFile,
    /// The single `cursor` file of an earlier version, removed after the first write.
    legacy: bool,
}

impl StreamSpool {
    fn lock(&self) -> std::sync::MutexGuard<'_, StreamState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn segment_path(&self, seq: u64) -> PathBuf {
        segment_path(&self.dir, seq)
    }
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.seg"))
}

/// The disk budget shared by every stream.
struct Usage {
    bytes: Mutex<u64>,
    freed: Condvar,
    max: u64,
    full: AtomicBool,
}

/// What start-up found in a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamRecovery {
    pub stream: String,
    /// Rows waiting for delivery.
    pub rows: u64,
    pub bytes: u64,
    /// Records lost to damage (a torn append, a corrupted byte), and the reasons.
    pub records_cut: usize,
    pub bytes_cut: u64,
    pub damage: Vec<String>,
    /// The last row still waiting (its text), where a state written after the spool's own
    /// (the integrity chain's head) may be behind it.
    pub last_row: Option<Vec<u8>>,
}

pub struct Spool {
    streams: Vec<Arc<StreamSpool>>,
    usage: Usage,
    sync: SyncPolicy,
    segment_bytes: u64,
    stopping: AtomicBool,
    /// Set when stopping: a writer drains what it has but no longer waits for room.
    no_waiting: AtomicBool,
    /// Wakes [`Spool::drained`] when a delivery moved a cursor.
    progress: tokio::sync::Notify,
    /// Set when no more rows will be written in this run: readers send partial bodies at once
    /// instead of waiting out the flush delay.
    intake_done: tokio::sync::watch::Sender<bool>,
    pub recovery: Vec<StreamRecovery>,
}

impl Spool {
    /// Opens the spool for `streams` (in table order), recovering what a previous run left:
    /// damaged records are cut out (and reported), delivered segments deleted.
    pub fn open(config: &SpoolConfig, streams: &[String]) -> Result<Arc<Self>, SpoolError> {
        private_fs::private_dir(&config.dir).map_err(io_err(&config.dir))?;
        let mut spools = Vec::new();
        let mut recovery = Vec::new();
        let mut total = 0;
        for name in streams {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(SpoolError::StreamName(name.clone()));
            }
            let dir = config.dir.join(name);
            private_fs::private_dir(&dir).map_err(io_err(&dir))?;
            private_fs::sync_dir(&config.dir).map_err(io_err(&config.dir))?;
            let (state, found, cursor_file) = recover_stream(&dir, name)?;
            total += found.bytes_on_disk;
            recovery.push(found.report);
            spools.push(Arc::new(StreamSpool {
                name: name.clone(),
                dir,
                persisted: Mutex::new(cursor_file),
                state: Mutex::new(state),
                published: tokio::sync::Notify::new(),
            }));
        }
        Ok(Arc::new(Self {
            streams: spools,
            usage: Usage {
                bytes: Mutex::new(total),
                freed: Condvar::new(),
                max: config.max_bytes,
                full: AtomicBool::new(false),
            },
            sync: config.sync,
            segment_bytes: config.segment_bytes(),
            stopping: AtomicBool::new(false),
            no_waiting: AtomicBool::new(false),
            progress: tokio::sync::Notify::new(),
            intake_done: tokio::sync::watch::channel(false).0,
            recovery,
        }))
    }

    /// A reader for stream `index` (one per stream).
    pub fn reader(self: &Arc<Self>, index: usize) -> StreamReader {
        StreamReader::new(self.clone(), index)
    }

    /// Bytes on disk now.
    pub fn bytes(&self) -> u64 {
        *self.usage.bytes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True while sources are paused because the spool is at its budget (or the disk is full).
    pub fn is_full(&self) -> bool {
        self.usage.full.load(Ordering::Relaxed)
    }

    /// Wakes everything waiting on the spool so the run can stop.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.usage.freed.notify_all();
        for s in &self.streams {
            s.published.notify_waiters();
        }
    }

    /// From now on a writer that finds the spool full gives up instead of waiting.
    pub fn stop_waiting_for_room(&self) {
        self.no_waiting.store(true, Ordering::SeqCst);
        self.usage.freed.notify_all();
    }

    /// Sleeps up to `delay`, less if the spool is stopped meanwhile.
    fn nap(&self, delay: std::time::Duration) {
        let used = self.usage.bytes.lock().unwrap_or_else(|e| e.into_inner());
        if !self.is_stopping() {
            let _ = self.usage.freed.wait_timeout(used, delay);
        }
    }

    /// No more rows will be written in this run.
    pub fn finish_intake(&self) {
        self.intake_done.send_replace(true);
    }

    /// Watches [`Spool::finish_intake`].
    pub fn intake_done(&self) -> tokio::sync::watch::Receiver<bool> {
        self.intake_done.subscribe()
    }

    /// True when every row written so far was delivered.
    pub fn is_drained(&self) -> bool {
        (0..self.streams.len()).all(|i| self.is_stream_drained(i))
    }

    /// True when every row of stream `index` published so far was delivered.
    pub fn is_stream_drained(&self, index: usize) -> bool {
        let Some(s) = self.streams.get(index) else {
            return true;
        };
        let state = s.lock();
        let cursor = state.cursor;
        state.ranges.is_empty()
            && state.segments.iter().all(|seg| {
                seg.seq < cursor.seq
                    || (seg.seq == cursor.seq && seg.published <= cursor.offset)
                    || (seg.seq > cursor.seq && seg.published == 0)
            })
    }

    /// Returns once every row written so far was delivered.
    pub async fn drained(&self) {
        self.streams_drained(|_| true).await;
    }

    /// Returns once every row written so far to the streams `which` picks was delivered.
    pub async fn streams_drained(&self, which: impl Fn(usize) -> bool) {
        loop {
            let progress = self.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            if (0..self.streams.len())
                .filter(|i| which(*i))
                .all(|i| self.is_stream_drained(i))
            {
                return;
            }
            progress.await;
        }
    }

    /// Everything before this place of stream `index` was delivered.
    pub fn cursor(&self, index: usize) -> Option<Pos> {
        Some(self.streams.get(index)?.lock().cursor)
    }

    /// Bytes of stream `index` on disk not yet delivered.
    pub fn stream_backlog(&self, index: usize) -> u64 {
        let Some(s) = self.streams.get(index) else {
            return 0;
        };
        let state = s.lock();
        let cursor = state.cursor;
        state
            .segments
            .iter()
            .map(|seg| match seg.seq.cmp(&cursor.seq) {
                std::cmp::Ordering::Less => 0,
                std::cmp::Ordering::Equal => seg.published.saturating_sub(cursor.offset),
                std::cmp::Ordering::Greater => seg.published,
            })
            .sum()
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn freed(&self, bytes: u64) {
        let mut used = self.usage.bytes.lock().unwrap_or_else(|e| e.into_inner());
        *used = used.saturating_sub(bytes);
        self.usage.freed.notify_all();
    }
}

struct Found {
    report: StreamRecovery,
    bytes_on_disk: u64,
}

/// Reads a stream's directory back: the cursor, the segments after it, each scanned; damaged
/// records are cut out by rewriting the segment with the intact ones.
fn recover_stream(dir: &Path, name: &str) -> Result<(StreamState, Found, CursorFile), SpoolError> {
    let (slots, cursor, legacy) = read_cursor(dir, name)?;
    let mut seqs: Vec<u64> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // Only names this spool writes (20 digits): anything else is not ours to read.
        let ours = name.len() == 24 && name.as_bytes()[..20].iter().all(u8::is_ascii_digit);
        if let Some(seq) = name
            .strip_suffix(".seg")
            .filter(|_| ours)
            .and_then(|s| s.parse::<u64>().ok())
        {
            seqs.push(seq);
        } else if name.ends_with(".tmp") {
            let _ = std::fs::remove_file(&path);
        }
    }
    seqs.sort_unstable();
    let mut report = StreamRecovery {
        stream: name.to_string(),
        ..Default::default()
    };
    let mut segments = VecDeque::new();
    let mut on_disk = 0;
    let mut cursor = cursor.unwrap_or_default();
    for seq in seqs {
        let path = segment_path(dir, seq);
        if seq < cursor.seq {
            // Delivered; its deletion was cut short by the last stop.
            std::fs::remove_file(&path).map_err(io_err(&path))?;
            continue;
        }
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        let from = if seq == cursor.seq {
            (cursor.offset as usize).min(bytes.len())
        } else {
            0
        };
        let scan = segment::scan(&bytes, from);
        let mut len = bytes.len() as u64;
        if !scan.is_clean() {
            report.records_cut += scan.records_lost();
            let cut: usize =
                scan.damaged.iter().map(|(_, n, _)| *n).sum::<usize>() + scan.torn_tail;
            report.bytes_cut += cut as u64;
            for (at, n, _) in &scan.damaged {
                report.damage.push(format!(
                    "segment {seq}: {n} damaged byte(s) at offset {at} (checksum or framing mismatch)"
                ));
            }
            if scan.torn_tail > 0 {
                report.damage.push(format!(
                    "segment {seq}: a torn record of {} byte(s) at the end (a write cut short)",
                    scan.torn_tail
                ));
            }
            // Keep the delivered prefix and the intact records, nothing else.
            let mut kept = bytes[..from].to_vec();
            for (payload, _) in &scan.records {
                segment::encode(&mut kept, &bytes[payload.clone()]);
            }
            private_fs::write_atomic(&path, &kept).map_err(io_err(&path))?;
            len = kept.len() as u64;
        }
        if let Some((payload, _)) = scan.records.last() {
            report.last_row = Some(bytes[payload.clone()].to_vec());
        }
        report.rows += scan.records.len() as u64;
        report.bytes += len - from as u64;
        on_disk += len;
        segments.push_back(Segment {
            seq,
            published: len,
        });
    }
    if let Some(first) = segments.front()
        && cursor.seq < first.seq
    {
        cursor = Pos {
            seq: first.seq,
            offset: 0,
        };
    }
    let state = StreamState {
        segments,
        cursor,
        ranges: BTreeMap::new(),
        cursor_written: None,
        cursor_dirty: false,
    };
    let cursor_file = CursorFile {
        pos: state.cursor,
        slots,
        legacy,
    };
    Ok((
        state,
        Found {
            report,
            bytes_on_disk: on_disk,
        },
        cursor_file,
    ))
}

/// The cursor's slot pair, the cursor it holds (None when never written; a damaged pair is
/// reported and read as none: rows are sent again, never skipped), and whether the single
/// `cursor` file of an earlier version is still there.
fn read_cursor(dir: &Path, name: &str) -> Result<(SlotFile, Option<Pos>, bool), SpoolError> {
    let (slots, found) = SlotFile::open(dir, "cursor").map_err(io_err(dir))?;
    let legacy_path = dir.join("cursor");
    let legacy = legacy_path.exists();
    let text = match found {
        SlotRead::Found(body) => String::from_utf8(body).ok(),
        SlotRead::Missing => std::fs::read_to_string(&legacy_path).ok(),
        SlotRead::Damaged(why) => {
            tracing::warn!(stream = %name, problem = %why, "spool cursor damaged; the stream's rows are sent again from its first segment");
            None
        }
    };
    let pos = text.and_then(|text| {
        let (seq, offset) = text.trim().split_once(' ')?;
        Some(Pos {
            seq: seq.parse().ok()?,
            offset: offset.parse().ok()?,
        })
    });
    Ok((slots, pos, legacy))
}

impl StreamSpool {
    /// Writes `cursor` unless a later one was written already.
    fn persist_cursor(&self, cursor: Pos) {
        let mut persisted = self.persisted.lock().unwrap_or_else(|e| e.into_inner());
        if cursor <= persisted.pos {
            return;
        }
        let text = format!("{} {}\n", cursor.seq, cursor.offset);
        match persisted.slots.replace(text.as_bytes()) {
            Ok(()) => {
                persisted.pos = cursor;
                if persisted.legacy {
                    // The slots are read first; a file left here is only untidy.
                    let _ = std::fs::remove_file(self.dir.join("cursor"));
                    persisted.legacy = false;
                }
            }
            Err(e) => {
                tracing::error!(stream = %self.name, error = %e, "spool cursor could not be written; a restart would send some rows again");
            }
        }
    }
}

#[cfg(test)]
mod tests;
