//! How far behind collection is, per (tenant, content type): the age of the oldest content not
//! yet safe downstream. Content expires 7 days after it becomes available, so the board logs a
//! warning past 24 hours and an error past 5 days, once per crossing.

use std::collections::BTreeMap;
use std::sync::Mutex;

const WARN_MS: i64 = 24 * 3_600_000;
const ALARM_MS: i64 = 5 * 24 * 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Fine,
    Behind,
    NearExpiry,
}

fn level(lag_ms: i64) -> Level {
    if lag_ms >= ALARM_MS {
        Level::NearExpiry
    } else if lag_ms >= WARN_MS {
        Level::Behind
    } else {
        Level::Fine
    }
}

/// One (tenant, content type) as the metrics endpoint will show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lag {
    pub tenant: String,
    pub content_type: String,
    /// Age of the oldest content not yet acknowledged downstream, in ms.
    pub lag_ms: i64,
    /// Blobs whose content expired before it could be read (AF20051 or a position too old).
    pub expired: u64,
    /// Calls of this tenant the service throttled (AF429, 429), counted from the start.
    pub throttled: u64,
    /// Why this content type can't be collected (credential, consent), while that lasts.
    pub failure: Option<String>,
}

fn fresh(tenant: &str, content_type: &str) -> (Lag, Level) {
    let lag = Lag {
        tenant: tenant.to_string(),
        content_type: content_type.to_string(),
        lag_ms: 0,
        expired: 0,
        throttled: 0,
        failure: None,
    };
    (lag, Level::Fine)
}

#[derive(Default)]
pub struct LagBoard {
    entries: Mutex<BTreeMap<(String, String), (Lag, Level)>>,
    /// Throttled calls per tenant (the service's limits are per tenant), from the start.
    throttles: Mutex<BTreeMap<String, u64>>,
}

impl LagBoard {
    /// Records the oldest unacknowledged content time (ms) of (tenant, content type) at `now`.
    pub fn update(&self, tenant: &str, content_type: &str, oldest: i64, now: i64) {
        let lag_ms = (now - oldest).max(0);
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let (entry, last) = entries
            .entry((tenant.to_string(), content_type.to_string()))
            .or_insert_with(|| fresh(tenant, content_type));
        entry.lag_ms = lag_ms;
        let now_level = level(lag_ms);
        if now_level > *last {
            let hours = lag_ms / 3_600_000;
            match now_level {
                Level::NearExpiry => tracing::error!(
                    tenant,
                    content_type,
                    lag_hours = hours,
                    "collection is more than 5 days behind; content expires after 7 days: check throttling, the workspace and the connector's health"
                ),
                _ => tracing::warn!(
                    tenant,
                    content_type,
                    lag_hours = hours,
                    "collection is more than 24 hours behind"
                ),
            }
        }
        *last = now_level;
    }

    /// Counts blobs lost to expiry.
    pub fn expired(&self, tenant: &str, content_type: &str, blobs: u64) {
        if let Ok(mut entries) = self.entries.lock() {
            let (entry, _) = entries
                .entry((tenant.to_string(), content_type.to_string()))
                .or_insert_with(|| fresh(tenant, content_type));
            entry.expired += blobs;
        }
    }

    /// Records a throttled call of `tenant`; each of its content types shows the tenant's count.
    pub fn throttled(&self, tenant: &str) {
        if let Ok(mut throttles) = self.throttles.lock() {
            *throttles.entry(tenant.to_string()).or_default() += 1;
        }
    }

    /// Sets (or, with None, clears) why (tenant, content type) can't be collected.
    pub fn failure(&self, tenant: &str, content_type: &str, failure: Option<String>) {
        if let Ok(mut entries) = self.entries.lock() {
            let (entry, _) = entries
                .entry((tenant.to_string(), content_type.to_string()))
                .or_insert_with(|| fresh(tenant, content_type));
            entry.failure = failure;
        }
    }

    pub fn snapshot(&self) -> Vec<Lag> {
        let throttles = self.throttles.lock().map(|t| t.clone()).unwrap_or_default();
        self.entries
            .lock()
            .map(|e| {
                e.values()
                    .map(|(l, _)| Lag {
                        throttled: throttles.get(&l.tenant).copied().unwrap_or(0),
                        ..l.clone()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_age_and_levels() {
        let board = LagBoard::default();
        board.update("t", "Audit.Exchange", 0, 25 * 3_600_000);
        board.update("t", "Audit.Exchange", 0, 6 * 24 * 3_600_000);
        board.expired("t", "Audit.Exchange", 2);
        let snap = board.snapshot();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].lag_ms, 6 * 24 * 3_600_000);
        assert_eq!(snap[0].expired, 2);
        assert_eq!(level(snap[0].lag_ms), Level::NearExpiry);
        assert_eq!(level(WARN_MS), Level::Behind);
        assert_eq!(level(WARN_MS - 1), Level::Fine);
    }
}
