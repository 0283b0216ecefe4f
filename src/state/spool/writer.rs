//! The append side, on one blocking thread: a batch of rows (whatever the mapper produced
//! meanwhile) is framed per stream, written with one write per stream, flushed to disk with one
//! fsync per touched file (group commit), then published to the readers. Only then may the
//! rows be acknowledged to their sources.
//!
//! When the spool is at its budget the writer waits for delivery to free room, and so the
//! mapper and the sources behind it wait too. A full disk (or any write error) is reported,
//! the partial write cut back, and the write tried again with backoff: nothing is dropped.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Segment, Spool, SpoolError, SyncPolicy, io_err, segment};
use crate::state::private_fs;

struct Active {
    seq: u64,
    file: File,
    len: u64,
}

pub struct SpoolWriter {
    spool: Arc<Spool>,
    active: Vec<Option<Active>>,
    /// Framed rows of the batch being built, per stream.
    pending: Vec<Vec<u8>>,
    pending_bytes: u64,
    /// The lowest number the next new segment of each stream may take.
    next_seq: Vec<u64>,
    /// The streams this writer appends to (each stream has one writer).
    owned: Vec<bool>,
    /// Writes without waiting for room (the health rows: small, and they must get through
    /// exactly when the spool is full).
    exempt: bool,
}

impl SpoolWriter {
    pub fn new(spool: Arc<Spool>) -> Self {
        let streams = spool.streams.len();
        Self::for_streams(spool, &(0..streams).collect::<Vec<_>>(), false)
    }

    /// A writer of `streams` only, beside another writer of the others; `exempt` writes
    /// without waiting for room.
    pub fn for_streams(spool: Arc<Spool>, streams: &[usize], exempt: bool) -> Self {
        let count = spool.streams.len();
        Self {
            spool,
            active: (0..count).map(|_| None).collect(),
            pending: vec![Vec::new(); count],
            pending_bytes: 0,
            next_seq: vec![0; count],
            owned: (0..count).map(|i| streams.contains(&i)).collect(),
            exempt,
        }
    }

    /// Adds a row to the batch; false (nothing added) for a stream this writer doesn't own,
    /// which the caller must not acknowledge.
    #[must_use]
    pub fn push(&mut self, stream: usize, row: &[u8]) -> bool {
        if !self.owned.get(stream).copied().unwrap_or(false) {
            return false;
        }
        let before = self.pending[stream].len();
        segment::encode(&mut self.pending[stream], row);
        self.pending_bytes += (self.pending[stream].len() - before) as u64;
        true
    }

    /// Where the rows written so far to `stream` end (None before any): once a stream's
    /// cursor reaches it, they are all delivered.
    pub fn end_of(&self, stream: usize) -> Option<super::Pos> {
        let active = self.active.get(stream)?.as_ref()?;
        Some(super::Pos {
            seq: active.seq,
            offset: active.len,
        })
    }

    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// Makes the batch durable (per the sync policy) and visible to the readers. Waits for
    /// room first. Errors only when the spool is stopping: the batch was then not written, and
    /// its rows must not be acknowledged.
    pub fn commit(&mut self) -> Result<(), SpoolError> {
        self.commit_then(|| Ok(()))
    }

    /// As [`SpoolWriter::commit`], running `before_publish` once the batch is durable and
    /// before any reader can see it (the integrity chain writes its heads there). It is retried
    /// with backoff while it fails, as a write is, until the spool stops.
    pub fn commit_then(
        &mut self,
        mut before_publish: impl FnMut() -> Result<(), String>,
    ) -> Result<(), SpoolError> {
        if self.pending_bytes == 0 {
            return Ok(());
        }
        if !self.exempt {
            self.wait_for_room()?;
        }
        let mut touched = Vec::new();
        for stream in 0..self.pending.len() {
            if self.pending[stream].is_empty() {
                continue;
            }
            let mut data = std::mem::take(&mut self.pending[stream]);
            self.write_durably(stream, &data)?;
            touched.push((stream, data.len() as u64));
            // The buffer is kept for the next batch instead of growing a new one by doubling
            // (reallocations and copies) to 2 MB at every commit.
            data.clear();
            self.pending[stream] = data;
        }
        let mut delay = Duration::from_millis(100);
        while let Err(problem) = before_publish() {
            tracing::error!(problem = %problem, "state written with the spool failed; trying again");
            if self.spool.is_stopping() {
                return Err(SpoolError::Stopping);
            }
            self.spool.nap(delay);
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        let mut written = 0;
        for (stream, bytes) in touched {
            written += bytes;
            let s = &self.spool.streams[stream];
            let Some(active) = &self.active[stream] else {
                continue;
            };
            {
                let mut state = s.lock();
                match state.segments.back_mut() {
                    Some(seg) if seg.seq == active.seq => seg.published = active.len,
                    _ => state.segments.push_back(Segment {
                        seq: active.seq,
                        published: active.len,
                    }),
                }
            }
            s.published.notify_one();
        }
        {
            let mut used = self
                .spool
                .usage
                .bytes
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *used += written;
        }
        self.pending_bytes = 0;
        Ok(())
    }

    fn wait_for_room(&mut self) -> Result<(), SpoolError> {
        let spool = self.spool.clone();
        let usage = &spool.usage;
        let mut used = usage.bytes.lock().unwrap_or_else(|e| e.into_inner());
        // An empty spool always takes a batch, whatever its size.
        while *used > 0 && *used + self.pending_bytes > usage.max {
            // Short of room: first let go of last segments delivered to their end (only then:
            // otherwise each batch would start a new segment).
            drop(used);
            self.release_delivered_tails();
            used = usage.bytes.lock().unwrap_or_else(|e| e.into_inner());
            if *used == 0 || *used + self.pending_bytes <= usage.max {
                break;
            }
            if !usage.full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    used = *used,
                    max = usage.max,
                    "spool full (spool.max_bytes): collection pauses until delivery frees room"
                );
            }
            if self.spool.is_stopping() || self.spool.no_waiting.load(Ordering::SeqCst) {
                return Err(SpoolError::Stopping);
            }
            used = usage
                .freed
                .wait_timeout(used, Duration::from_millis(500))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        if usage.full.swap(false, Ordering::Relaxed) {
            tracing::info!("spool has room again: collection resumes");
        }
        Ok(())
    }

    /// Deletes each stream's last segment when everything in it was delivered: readers delete
    /// only segments before the one being written, so without this a delivered last segment
    /// would hold its room until more rows came for that stream.
    fn release_delivered_tails(&mut self) {
        let mut freed = 0;
        for (stream, s) in self.spool.streams.iter().enumerate() {
            if !self.owned[stream] {
                continue;
            }
            let released = {
                let mut state = s.lock();
                let cursor = state.cursor;
                match state.segments.back() {
                    Some(last)
                        if last.published > 0
                            && state.ranges.is_empty()
                            && cursor.seq == last.seq
                            && cursor.offset >= last.published =>
                    {
                        state.segments.pop_back()
                    }
                    _ => None,
                }
            };
            if let Some(seg) = released {
                if self.active[stream]
                    .as_ref()
                    .is_some_and(|a| a.seq == seg.seq)
                {
                    self.active[stream] = None;
                }
                let path = s.segment_path(seg.seq);
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::error!(path = %path.display(), error = %e, "delivered spool segment could not be deleted");
                }
                freed += seg.published;
                // The next segment of this stream gets a later number than any before.
                self.next_seq[stream] = self.next_seq[stream].max(seg.seq + 1);
            }
        }
        if freed > 0 {
            self.spool.freed(freed);
        }
    }

    /// Writes `data` and, under `sync: always`, flushes it to disk. A flush that fails may have
    /// lost the written pages without a later flush saying so, so the data is written again,
    /// into a new segment, rather than the flush retried.
    fn write_durably(&mut self, stream: usize, data: &[u8]) -> Result<(), SpoolError> {
        let mut delay = Duration::from_millis(100);
        loop {
            let created = self.write_with_retry(stream, data)?;
            if self.spool.sync == SyncPolicy::Os {
                return Ok(());
            }
            let s = self.spool.streams[stream].clone();
            let Some(active) = self.active[stream].as_mut() else {
                return Ok(());
            };
            let flushed = active.file.sync_data().and_then(|()| {
                if created {
                    private_fs::sync_dir(&s.dir)
                } else {
                    Ok(())
                }
            });
            match flushed {
                Ok(()) => return Ok(()),
                Err(error) => {
                    let path = s.segment_path(active.seq);
                    // What this batch added is given up with its segment; the rows before it
                    // were flushed already.
                    active.len -= data.len() as u64;
                    let _ = active.file.set_len(active.len);
                    self.active[stream] = None;
                    self.spool.usage.full.store(true, Ordering::Relaxed);
                    tracing::error!(path = %path.display(), error = %error, "spool flush failed; writing the batch again into a new segment");
                    if self.spool.is_stopping() {
                        return Err(SpoolError::Stopping);
                    }
                    self.spool.nap(delay);
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Appends `data` to the stream's active segment (rolling to a new one when it is full);
    /// true when a new segment file was created.
    fn write_with_retry(&mut self, stream: usize, data: &[u8]) -> Result<bool, SpoolError> {
        let s = self.spool.streams[stream].clone();
        let mut created = false;
        let roll = self.active[stream]
            .as_ref()
            .is_none_or(|a| a.len > 0 && a.len + data.len() as u64 > self.spool.segment_bytes);
        if roll {
            // Never a number a reader's cursor could already point into.
            let seq = match &self.active[stream] {
                Some(a) => a.seq + 1,
                None => {
                    let state = s.lock();
                    state
                        .segments
                        .back()
                        .map_or(state.cursor.seq + 1, |seg| seg.seq + 1)
                }
            }
            .max(self.next_seq[stream]);
            self.next_seq[stream] = seq + 1;
            // A segment left by an earlier run is never appended to: its end may be torn.
            let path = s.segment_path(seq);
            let file = self.retry_io(
                || {
                    private_fs::private_options()
                        .create_new(true)
                        .append(true)
                        .open(&path)
                },
                &path,
            )?;
            self.active[stream] = Some(Active { seq, file, len: 0 });
            created = true;
        }
        let Some(active) = self.active[stream].as_mut() else {
            return Ok(created);
        };
        let path = s.segment_path(active.seq);
        let mut delay = Duration::from_millis(100);
        loop {
            match active.file.write_all(data) {
                Ok(()) => {
                    active.len += data.len() as u64;
                    // Only a writer that waits for room says whether there is room.
                    if !self.exempt && self.spool.usage.full.swap(false, Ordering::Relaxed) {
                        tracing::info!("spool writes again: collection resumes");
                    }
                    return Ok(created);
                }
                Err(error) => {
                    // Cut back a partial write, so the file holds only whole records; if even
                    // that fails, the next attempt goes to a new segment.
                    if active.file.set_len(active.len).is_err() {
                        let seq = active.seq;
                        self.active[stream] = None;
                        self.next_seq[stream] = self.next_seq[stream].max(seq + 1);
                        tracing::error!(path = %path.display(), error = %error, "spool write failed and could not be cut back; going on in a new segment");
                        if self.spool.is_stopping() {
                            return Err(SpoolError::Stopping);
                        }
                        self.spool.nap(delay);
                        return self.write_with_retry(stream, data);
                    }
                    self.spool.usage.full.store(true, Ordering::Relaxed);
                    tracing::error!(path = %path.display(), error = %error, retry_ms = delay.as_millis() as u64, "spool write failed (disk full?); collection pauses, nothing is dropped, retrying");
                    if self.spool.is_stopping() {
                        return Err(SpoolError::Stopping);
                    }
                    self.spool.nap(delay);
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    fn retry_io<T>(
        &self,
        mut op: impl FnMut() -> std::io::Result<T>,
        path: &std::path::Path,
    ) -> Result<T, SpoolError> {
        let mut delay = Duration::from_millis(100);
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return Err(io_err(path)(e));
                }
                Err(e) => {
                    self.spool.usage.full.store(true, Ordering::Relaxed);
                    tracing::error!(path = %path.display(), error = %e, "spool I/O failed; retrying");
                    if self.spool.is_stopping() {
                        return Err(SpoolError::Stopping);
                    }
                    self.spool.nap(delay);
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}
