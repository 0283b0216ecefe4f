//! The read side of one stream: rows in FIFO order from the cursor on, and the bookkeeping of
//! what deliveries finished. Deliveries finish in any order; the cursor only moves past a range
//! once it and everything before it was delivered, then delivered segments are deleted and
//! their room given back to the writer.

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Pos, Spool, StreamSpool, segment};

/// Rows read from the spool: their bytes, and each row's range in `bytes` with its start and
/// end position in the stream.
#[derive(Debug, Default)]
pub struct Taken {
    pub bytes: Vec<u8>,
    pub rows: Vec<(Range<usize>, Pos, Pos)>,
}

pub struct StreamReader {
    spool: Arc<Spool>,
    index: usize,
    next: Pos,
    file: Option<(u64, std::fs::File)>,
    /// A buffer given back by [`StreamReader::recycle`]: reads reuse it instead of allocating
    /// (and freeing) a megabyte each time.
    spare: Vec<u8>,
}

/// Marks ranges delivered; cheap to clone into delivery tasks.
#[derive(Clone)]
pub struct Acker {
    spool: Arc<Spool>,
    stream: Arc<StreamSpool>,
}

impl StreamReader {
    pub(super) fn new(spool: Arc<Spool>, index: usize) -> Self {
        let next = spool.streams[index].lock().cursor;
        Self {
            spool,
            index,
            next,
            file: None,
            spare: Vec::new(),
        }
    }

    fn stream(&self) -> &Arc<StreamSpool> {
        &self.spool.streams[self.index]
    }

    pub fn name(&self) -> &str {
        &self.stream().name
    }

    /// Watches the end of this run's intake.
    pub fn intake_done(&self) -> tokio::sync::watch::Receiver<bool> {
        self.spool.intake_done()
    }

    /// Gives the buffer of a [`Taken`] back for the next read.
    pub fn recycle(&mut self, bytes: Vec<u8>) {
        self.spare = bytes;
    }

    pub fn acker(&self) -> Acker {
        Acker {
            spool: self.spool.clone(),
            stream: self.stream().clone(),
        }
    }

    /// The next rows, about `max_bytes` of them (at least one); waits until there are some.
    /// None when the spool is stopping. Cancel-safe: nothing moves until rows are returned.
    pub async fn take(&mut self, max_bytes: usize) -> Option<Taken> {
        loop {
            let stream = self.stream().clone();
            // Registered before looking, so a publish (or a stop) in between is not missed.
            let published = stream.published.notified();
            tokio::pin!(published);
            published.as_mut().enable();
            if self.spool.is_stopping() {
                return None;
            }
            if let Some(readable) = self.readable() {
                match self.read(readable, max_bytes) {
                    Ok(taken) if !taken.rows.is_empty() => return Some(taken),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(stream = %stream.name, error = %e, "spool read failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
            published.await;
        }
    }

    /// (segment, readable end) at `next`, moving `next` to a later segment when its own is
    /// read to the end.
    fn readable(&mut self) -> Option<(u64, u64)> {
        let stream = self.stream().clone();
        let state = stream.lock();
        loop {
            let seg = state.segments.iter().find(|s| s.seq >= self.next.seq)?;
            if seg.seq > self.next.seq {
                self.next = Pos {
                    seq: seg.seq,
                    offset: 0,
                };
            }
            if seg.published > self.next.offset {
                return Some((seg.seq, seg.published));
            }
            // Read to its end: go on to the next segment, if there is one yet.
            if state.segments.iter().any(|s| s.seq > seg.seq) {
                self.next = Pos {
                    seq: seg.seq + 1,
                    offset: 0,
                };
                continue;
            }
            return None;
        }
    }

    fn read(&mut self, (seq, end): (u64, u64), max_bytes: usize) -> std::io::Result<Taken> {
        if self.file.as_ref().is_none_or(|(s, _)| *s != seq) {
            let path = self.stream().segment_path(seq);
            self.file = Some((seq, std::fs::File::open(path)?));
        }
        let Some((_, file)) = self.file.as_mut() else {
            return Ok(Taken::default());
        };
        let available = (end - self.next.offset) as usize;
        let mut want = available.min(max_bytes.max(segment::HEADER_BYTES));
        let mut bytes = std::mem::take(&mut self.spare);
        read_at(file, self.next.offset, want, &mut bytes)?;
        // A record longer than what was read: read the whole of it.
        if segment::record_at(&bytes, 0).is_none() && want < available && bytes.len() >= 8 {
            let len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
            want = (segment::HEADER_BYTES + len).min(available);
            read_at(file, self.next.offset, want, &mut bytes)?;
        }
        let mut taken = Taken::default();
        let mut at = 0;
        while let Some((payload, record_end)) = segment::record_at(&bytes, at) {
            let start = Pos {
                seq,
                offset: self.next.offset + at as u64,
            };
            let end = Pos {
                seq,
                offset: self.next.offset + record_end as u64,
            };
            taken.rows.push((payload, start, end));
            at = record_end;
        }
        if taken.rows.is_empty() && !bytes.is_empty() {
            // Published bytes that don't frame: only damage after start-up could do this.
            return Err(std::io::Error::other(format!(
                "segment {seq} is damaged at offset {}",
                self.next.offset
            )));
        }
        self.next.offset += at as u64;
        taken.bytes = bytes;
        Ok(taken)
    }
}

/// Reads `len` bytes at `offset` into `bytes` (replacing its content), without zeroing first.
fn read_at(
    file: &mut std::fs::File,
    offset: u64,
    len: usize,
    bytes: &mut Vec<u8>,
) -> std::io::Result<()> {
    bytes.clear();
    bytes.reserve(len);
    file.seek(SeekFrom::Start(offset))?;
    let read = (&mut *file).take(len as u64).read_to_end(bytes)?;
    if read < len {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
    }
    Ok(())
}

impl Acker {
    /// A range of rows handed to a delivery.
    pub fn begin(&self, start: Pos, end: Pos) {
        self.stream.lock().ranges.insert(start, (end, false));
    }

    /// The range starting at `start` is safe (delivered or dead-lettered): the cursor moves
    /// past every leading delivered range, and segments wholly before it are deleted.
    pub fn delivered(&self, start: Pos) {
        let mut deleted = Vec::new();
        let mut write = None;
        {
            let mut state = self.stream.lock();
            if let Some(range) = state.ranges.get_mut(&start) {
                range.1 = true;
            }
            while let Some((_, (end, true))) = state.ranges.first_key_value().map(|(k, v)| (*k, *v))
            {
                state.ranges.pop_first();
                state.cursor = end;
                state.cursor_dirty = true;
            }
            let cursor = state.cursor;
            while state.segments.len() > 1
                && state.segments.front().is_some_and(|s| s.seq < cursor.seq)
            {
                if let Some(seg) = state.segments.pop_front() {
                    deleted.push(seg);
                }
            }
            // Written after every delivery that moved it (one small atomic write per request
            // body): after a crash, only requests in flight are sent again.
            if state.cursor_dirty {
                state.cursor_dirty = false;
                state.cursor_written = Some(Instant::now());
                write = Some(cursor);
            }
        }
        if let Some(cursor) = write {
            self.stream.persist_cursor(cursor);
        }
        let mut freed = 0;
        for seg in deleted {
            let path = self.stream.segment_path(seg.seq);
            match std::fs::remove_file(&path) {
                Ok(()) => freed += seg.published,
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "delivered spool segment could not be deleted");
                    freed += seg.published;
                }
            }
        }
        if freed > 0 {
            self.spool.freed(freed);
        } else if self.spool.is_full() {
            // A writer waiting for room can now let go of a last segment delivered to its end.
            self.spool.usage.freed.notify_all();
        }
        self.spool.progress.notify_waiters();
    }

    /// Writes the cursor now (when stopping).
    pub fn flush(&self) {
        let cursor = {
            let mut state = self.stream.lock();
            if !state.cursor_dirty {
                return;
            }
            state.cursor_dirty = false;
            state.cursor_written = Some(Instant::now());
            state.cursor
        };
        self.stream.persist_cursor(cursor);
    }
}
