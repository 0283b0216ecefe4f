//! Fetching: blobs read a few at a time and handed on in creation order as units, each with
//! the acknowledgement its committer waits for.

use tokio::sync::OwnedSemaphorePermit;

use super::*;

/// A blob being fetched.
pub(super) type Fetch = tokio::task::JoinHandle<Result<Vec<u8>, ApiError>>;

/// Passes in which a blob may fail to be read before it is refused (kept in the refused-input
/// file with the reason) so that it stops holding its content type back.
pub(super) const BLOB_ATTEMPTS: u32 = 3;

/// Fetches blobs a few at a time and hands them on in the given order. True when every blob was
/// handed on; false when the run is stopping. Blobs not handed on are forgotten, so the next
/// pass lists them again; the position can't pass them meanwhile (see `Tracker::begin_pass`).
pub(super) async fn hand_on(
    t: &Arc<Tenant>,
    index: usize,
    items: Vec<ContentItem>,
) -> Result<bool, ApiError> {
    let ct = &t.content_types[index];
    let mut queue: VecDeque<ContentItem> = items.into();
    // Each blob holds two permits from before its fetch until it is handed on: one of its
    // tenant's `blob_concurrency` and one of the process-wide budget. The tenant's comes first,
    // so a tenant whose fetches are being retried (throttled, failing) holds at most
    // `blob_concurrency` of the budget and the other tenants go on. Permits are taken in the
    // content type's order, and only the oldest blob waits for them, so the blob every worker
    // waits on always has both: no deadlock, whatever the other workers hold.
    let mut fetching: VecDeque<(ContentItem, Fetch, Permits)> = VecDeque::new();
    let result = loop {
        while fetching.len() < t.settings.blob_concurrency && !queue.is_empty() {
            let permits = if fetching.is_empty() {
                let mut shutdown = t.settings.options.shutdown.clone();
                tokio::select! {
                    permits = take_permits(t) => permits,
                    () = shutdown.wait() => None,
                }
            } else {
                try_take_permits(t)
            };
            let Some(permits) = permits else {
                break;
            };
            let Some(item) = queue.pop_front() else {
                break;
            };
            let fetcher = t.clone();
            let uri = item.content_uri.clone();
            let handle = tokio::spawn(async move {
                retrying(&fetcher, "fetch content", || fetcher.client.fetch(&uri)).await
            });
            fetching.push_back((item, handle, permits));
        }
        let Some((item, handle, _permit)) = fetching.pop_front() else {
            if queue.is_empty() {
                break Ok(true);
            }
            // No permit came: the run is stopping.
            break Ok(false);
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
    for (item, handle, _permit) in fetching {
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

/// A blob's place in its tenant's and in the process's budgets.
pub(super) type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

async fn take_permits(t: &Tenant) -> Option<Permits> {
    let tenant = t.blob_slots.clone().acquire_owned().await.ok()?;
    let process = t.settings.blob_budget.clone().acquire_owned().await.ok()?;
    Some((tenant, process))
}

fn try_take_permits(t: &Tenant) -> Option<Permits> {
    let tenant = t.blob_slots.clone().try_acquire_owned().ok()?;
    let process = t.settings.blob_budget.clone().try_acquire_owned().ok()?;
    Some((tenant, process))
}

pub(super) fn blob_position(t: &Tenant, index: usize, item: &ContentItem) -> Position {
    let source: Arc<str> =
        format!("{}/{}/{}", t.label, t.content_types[index], item.content_id).into();
    Position::new(source, 1)
}

/// Hands a fetched (or refused) blob to the mapper; false when the run is stopping.
pub(super) async fn send_unit(
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
        origin: Origin {
            tenant: t.label.clone().into(),
            source: t.content_types[index].to_string().into(),
            created_ms: Some(item.created),
        },
    };
    if t.settings.options.shutdown.is_set() {
        return false;
    }
    t.out.send(unit).await.is_ok()
}

/// A blob that yields nothing (expired) but must not hold the position back.
pub(super) fn complete_empty(t: &Tenant, index: usize, item: &ContentItem) {
    let _ = t.events.send(CommitEvent::BlobDone {
        content_type: index,
        content_id: item.content_id.clone(),
        created: item.created,
        admitted: Arc::new(Mutex::new(Vec::new())),
    });
}
