//! Committing: one task per tenant hears when a blob's last row is safe downstream, records
//! its ids as seen and moves the positions no further than every earlier blob allows.

use super::*;

pub(super) struct Committer {
    pub(super) label: String,
    pub(super) tenant_id: String,
    pub(super) content_types: Vec<String>,
    pub(super) trackers: Arc<Mutex<Vec<Tracker>>>,
    pub(super) seen: Arc<Mutex<SeenSet>>,
    /// The disk side (None in dry-run): seen-id files and positions.
    pub(super) disk: Option<(Arc<Mutex<SeenFiles>>, Arc<PositionStore>)>,
    pub(super) lag: Arc<LagBoard>,
    pub(super) events: mpsc::UnboundedReceiver<CommitEvent>,
    pub(super) interval: Duration,
    pub(super) disk_writers: Arc<Semaphore>,
}

/// Applies completions in batches (whatever arrived together), then makes them durable: seen
/// ids flushed first, positions replaced after, so a crash between the two only means blobs
/// read again and their records recognised as seen. Locks are held only for the in-memory
/// part; the disk work runs on a blocking thread with none held.
pub(super) async fn commit_loop(mut c: Committer) {
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
        // Waiting for a disk permit (dry-run writes nothing) gathers what completes meanwhile
        // into this commit. The semaphore is never closed.
        let permit = match c.disk {
            Some(_) => c.disk_writers.clone().acquire_owned().await.ok(),
            None => None,
        };
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
        let seen = c.seen.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut problems = Vec::new();
            let mut files = files.lock().unwrap_or_else(|e| e.into_inner());
            let ids_written = files.write(writes);
            if let Err(e) = &ids_written {
                // The ids are missing on disk only: a restart could send their duplicates.
                problems.push(format!("{e} (duplicates possible after a restart)"));
            }
            if let Err(e) = store.save(&positions) {
                problems.push(e.to_string());
            }
            // The permit covers the commit only: a compaction (every tenant's at once after
            // midnight UTC, merging a day's runs) must not hold other tenants' commits back.
            drop(permit);
            // Every fresh id is on disk now: the due ones can become runs.
            if ids_written.is_ok()
                && let Err(e) = seen::compact_due(&seen, &mut files, now_millis())
            {
                // The ids stay in memory and in their log; compaction is tried again.
                problems.push(format!("{e} (seen ids not compacted yet)"));
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
pub(super) fn apply(
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
