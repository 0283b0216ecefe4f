//! Listing: subscriptions started when missing, content windows of at most 24 h listed from
//! the position to now (paged), retried with backoff; content past the 7-day window is reported.

use super::*;

/// Starts the subscription if the service doesn't list it as enabled. Skipped when this process
/// started it less than 15 minutes ago, and in dry-run (which changes nothing in the tenant).
pub(super) async fn ensure_subscription(t: &Tenant, index: usize) -> Result<(), ApiError> {
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

pub(super) async fn start_subscription(t: &Tenant, index: usize) -> Result<(), ApiError> {
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
    // Recorded (and persisted) once the service said yes. Recording before asking would make
    // a process killed while its start was in flight wait 15 minutes on the next run for a
    // start the service may never have received, and events of those minutes are never
    // offered by a subscription that is off. A start whose answer was lost is asked again;
    // the service answers an enabled one with AF20024, taken as success.
    retrying(t, "start subscription", || t.client.start_subscription(ct)).await?;
    // The time of the answer: after a long retry the spacing counts from the start that took.
    tracker(t, index, |tr| tr.set_subscription_started(now_millis()));
    let _ = t.events.send(CommitEvent::Moved);
    Counters::add(&t.counters.subscriptions_started, 1);
    tracing::info!(tenant = %t.label, content_type = %ct, "subscription started");
    Ok(())
}

/// Attempts per call in a single pass (`--once`, dry-run), which must end: with the default
/// backoff, about a quarter of an hour of trying.
pub(super) const ONCE_ATTEMPTS: u64 = 12;

/// Calls until the answer is not "throttled" or "transient", backing off exponentially with
/// jitter in [step/2, step]: a floor, so a throttling storm never becomes a hot loop. A
/// continuous run tries without end; a single pass gives up after [`ONCE_ATTEMPTS`].
pub(super) async fn retrying<T, F, Fut>(t: &Tenant, what: &str, mut call: F) -> Result<T, ApiError>
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
                    ApiError::Throttled { .. } => {
                        t.lag.throttled(&t.label);
                        &t.counters.throttled
                    }
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
pub(super) async fn cycle(t: &Arc<Tenant>, index: usize) -> Result<(), ApiError> {
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
pub(super) fn availability_floor(now: i64) -> i64 {
    now - i64::try_from(AVAILABILITY_HOURS).unwrap_or(168) * HOUR_MS + AVAILABILITY_MARGIN_MS
}

pub(super) fn expired_alarm(t: &Tenant, ct: &str, from: i64, to: i64, why: &str) {
    use crate::stages::map::datetime::format_unix_millis;
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
pub(super) async fn list_window(
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
