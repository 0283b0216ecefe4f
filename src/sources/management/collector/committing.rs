//! Committing: one task per tenant hears when a blob's last row is safe downstream, records
//! its ids as seen and moves the positions no further than every earlier blob allows.

use super::*;

pub(super) struct Committer {
    pub(super) label: String,
    pub(super) tenant_id: String,
    pub(super) content_types: Vec<String>,
    pub(super) trackers: Arc<Mutex<Vec<Tracker>>>,
    pub(super) seen: Arc<Mutex<SeenSet>>,
    /// The disk side (None in dry-run): the tenant's seen-id files and the journal that
    /// commits reach the disk through.
    pub(super) disk: Option<Disk>,
    pub(super) lag: Arc<LagBoard>,
    pub(super) events: mpsc::UnboundedReceiver<CommitEvent>,
    /// Bounds the tenants compacting their seen ids at once.
    pub(super) disk_writers: Arc<Semaphore>,
}

#[derive(Clone)]
pub(super) struct Disk {
    pub(super) files: Arc<Mutex<SeenFiles>>,
    pub(super) journal: Arc<StateJournal>,
}

/// Applies completions in batches (whatever arrived while the last commit was on its way),
/// then makes them durable in the state journal: the seen ids and the positions in one entry,
/// flushed with the other tenants' of the same round (at most one round per commit interval).
/// Locks are held only for the in-memory part.
pub(super) async fn commit_loop(mut c: Committer) {
    let mut batch = Vec::new();
    loop {
        if c.events.recv_many(&mut batch, 65_536).await == 0 {
            break;
        }
        let events = std::mem::take(&mut batch);
        let (oldest, writes, positions) = apply(&c, events);
        let now = now_millis();
        for (ct, oldest) in c.content_types.iter().zip(oldest) {
            if let Some(oldest) = oldest {
                c.lag.update(&c.label, ct, oldest, now);
            }
        }
        let Some(disk) = c.disk.clone() else {
            continue;
        };
        let mut writes = writes;
        if writes.has_deletes() {
            delete_days(&c, &disk, writes.take_deletes()).await;
        }
        let committed = disk
            .journal
            .commit(Commit {
                files: disk.files.clone(),
                writes,
                positions,
            })
            .await;
        if let Err(e) = committed {
            // The writer keeps the state and tries to write it into the tenant's files at
            // once; until that works, a crash could send some records again.
            tracing::error!(tenant = %c.label, error = %e, "collection state could not be made durable in the journal; collection goes on, and a crash before the state reaches disk would read some content again");
            continue;
        }
        // Every fresh id is durable now: the due ones can become runs.
        if c.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .compaction_due(now_millis())
        {
            compact(&c, disk).await;
        }
    }
}

/// Deletes the files of days the seen-id set dropped (expired, or over `max_ids_per_tenant`),
/// at once; losing a delete in a crash only brings the day back until the next load drops it.
async fn delete_days(c: &Committer, disk: &Disk, deletes: seen::Writes) {
    let files = disk.files.clone();
    let deleted = tokio::task::spawn_blocking(move || {
        let mut files = files.lock().unwrap_or_else(|e| e.into_inner());
        files.write(deletes).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(format!("delete task failed: {e}")));
    if let Err(e) = deleted {
        tracing::warn!(tenant = %c.label, error = %e, "a dropped day's seen-id files could not be deleted; the next start drops them");
    }
}

/// Turns the tenant's due seen ids into runs on a blocking thread, holding one of the
/// process's disk-writer permits.
async fn compact(c: &Committer, disk: Disk) {
    // The semaphore is never closed.
    let permit = c.disk_writers.clone().acquire_owned().await.ok();
    let seen = c.seen.clone();
    let compacted = tokio::task::spawn_blocking(move || {
        let mut files = disk.files.lock().unwrap_or_else(|e| e.into_inner());
        let done = seen::compact_due(&seen, &mut files, now_millis());
        drop(permit);
        done.map(|_| ()).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(format!("compaction task failed: {e}")));
    if let Err(e) = compacted {
        // The ids stay in memory and in their log; compaction is tried again.
        tracing::error!(tenant = %c.label, error = %e, "seen ids not compacted yet; tried again at the next commit");
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
