//! The connector's health as rows of `M365SentinelHealth_CL`, so a SOC can alert in the
//! workspace when collection stalls: one row per (tenant, source, table) every interval and
//! whenever a status changes, and the integrity chains' checkpoints.
//!
//! A status is the worst that applies: failing (a tenant's or source's credential or consent
//! refused, or the table's requests refused or failing), paused (the spool is full: collection
//! waits for delivery), throttled (the service throttled since the row before), lagging (the
//! oldest content not yet safe is older than `health.lag_minutes`), else healthy.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::schema::{InputKind, SchemaSet};
use crate::sinks::workspace::{SinkStats, WorkspaceSink};
use crate::sources::management::lag::LagBoard;
use crate::sources::status::SourceStatus;
use crate::stages::map::datetime::format_unix_millis;
use crate::stages::policy::RuleReport;
use crate::state::spool::Spool;

/// Longest error message a row carries.
const MESSAGE_CHARS: usize = 300;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Write health rows (when the schemas have the health table and the spool is on).
    pub enabled: bool,
    /// Every (tenant, source, table) gets a row this often, and at every status change.
    pub interval_secs: u64,
    /// Lag past this many minutes is `lagging`.
    pub lag_minutes: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_secs: 300,
            lag_minutes: 60,
        }
    }
}

impl HealthConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.interval_secs == 0 || self.interval_secs > 3600 {
            return Err(format!(
                "health.interval_secs is {}; it must be between 1 and 3600 (the shipped alert rule fires after 30 minutes without a row)",
                self.interval_secs
            ));
        }
        Ok(())
    }
}

/// How often statuses are looked at for changes.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Healthy,
    Lagging,
    Throttled,
    Paused,
    Failing,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Lagging => "lagging",
            Self::Throttled => "throttled",
            Self::Paused => "paused",
            Self::Failing => "failing",
        }
    }
}

/// The chains' heads as last published, with where their rows end in the spool: a head is
/// checkpointed once its stream's cursor has passed that place.
pub type Heads = Arc<Mutex<Vec<(crate::integrity::Head, crate::state::spool::Pos)>>>;

/// The live sources' boards, filled in once the sources are started.
#[derive(Clone, Default)]
pub struct SourceBoards(Arc<Mutex<Boards>>);

#[derive(Clone, Default)]
pub struct Boards {
    pub lag: Option<Arc<LagBoard>>,
    /// Defender sources by label.
    pub sources: Vec<(String, Arc<SourceStatus>)>,
}

impl SourceBoards {
    pub fn set(&self, boards: Boards) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = boards;
    }

    pub fn get(&self) -> Boards {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What the rows are made from.
pub struct HealthInputs {
    pub sink: Arc<WorkspaceSink>,
    pub spool: Option<Arc<Spool>>,
    pub boards: SourceBoards,
    pub live: Arc<crate::ops::telemetry::LiveCounts>,
    /// The cost policy, whose rules' counts go in `Kind: policy` rows.
    pub policy: Arc<crate::stages::policy::Policy>,
    /// The raw archive, when the config has one: while it fails, the sources wait.
    pub archive: Option<Arc<crate::sinks::archive::ArchiveStats>>,
}

/// One health row's identity.
type Key = (String, String, String);

struct Observed {
    status: Status,
    lag_ms: Option<i64>,
    throttled: u64,
    error: Option<(&'static str, String)>,
}

/// Builds the rows, remembering what the last ones said.
pub struct HealthReporter {
    config: HealthConfig,
    instance: String,
    version: &'static str,
    /// Data tables: output table names by kind.
    audit_table: Option<String>,
    defender_tables: Vec<String>,
    tables: Vec<String>,
    last_status: BTreeMap<Key, Status>,
    last_throttled: BTreeMap<Key, u64>,
    last_delivered: BTreeMap<String, u64>,
    last_dead: BTreeMap<String, u64>,
    last_rejected: u64,
    /// Throttle counts as of the last full round: throttled lasts until the next one.
    full_throttled: BTreeMap<Key, u64>,
    last_full: Option<std::time::Instant>,
    last_checkpoint: BTreeMap<String, u64>,
    /// The policy's counts as of the last full round.
    last_policy: Vec<RuleReport>,
}

impl HealthReporter {
    pub fn new(config: HealthConfig, schemas: &SchemaSet, instance: &str) -> Self {
        let data = |t: &&crate::schema::TableSchema| !matches!(t.input, InputKind::Health);
        Self {
            config,
            instance: instance.to_string(),
            version: env!("CARGO_PKG_VERSION"),
            audit_table: schemas
                .audit_table()
                .map(|i| schemas.tables[i].output_table.clone()),
            defender_tables: schemas
                .tables
                .iter()
                .filter(|t| matches!(t.input, InputKind::Defender { .. }))
                .map(|t| t.output_table.clone())
                .collect(),
            tables: schemas
                .tables
                .iter()
                .filter(data)
                .map(|t| t.output_table.clone())
                .collect(),
            last_status: BTreeMap::new(),
            last_throttled: BTreeMap::new(),
            last_delivered: BTreeMap::new(),
            last_dead: BTreeMap::new(),
            last_rejected: 0,
            full_throttled: BTreeMap::new(),
            last_full: None,
            last_checkpoint: BTreeMap::new(),
            last_policy: Vec::new(),
        }
    }

    /// The rows due at `now_ms`: all of them when the interval passed (or `force`), else only
    /// those whose status changed. Checkpoints for chains that moved, with the full rows.
    pub fn rows(
        &mut self,
        inputs: &HealthInputs,
        heads: &[crate::integrity::Head],
        now_ms: i64,
        force: bool,
    ) -> Vec<String> {
        let interval = Duration::from_secs(self.config.interval_secs);
        // A monotonic clock: a wall clock stepped back must not stop the rows.
        let full = force || self.last_full.is_none_or(|t| t.elapsed() >= interval);
        let stats = inputs.sink.stats();
        let spool_full = inputs.spool.as_ref().is_some_and(|s| s.is_full());
        let boards = inputs.boards.get();
        let archive_failure = inputs.archive.as_ref().and_then(|a| a.failure());
        let observed = self.observe(&boards, &stats, spool_full, archive_failure.as_deref());
        let rejected_total: u64 = crate::ops::telemetry::snapshot(&inputs.live.rejected)
            .values()
            .sum();
        let mut rows = Vec::new();
        let mut counted_tables = Vec::new();
        for (key, seen) in &observed {
            let changed = self.last_status.get(key) != Some(&seen.status);
            if !full && !changed {
                continue;
            }
            let table = &key.2;
            // A table's delivery counts go on its first row of this round only.
            let first_of_table = full && !counted_tables.contains(table);
            let (delivered, dead, rejected) = if first_of_table {
                counted_tables.push(table.clone());
                let delivered = stats.delivered_by_table.get(table).copied().unwrap_or(0);
                let dead = stats
                    .dead_lettered_by_table
                    .get(table)
                    .copied()
                    .unwrap_or(0);
                let d = delivered.saturating_sub(
                    self.last_delivered
                        .insert(table.clone(), delivered)
                        .unwrap_or(0),
                );
                let x =
                    dead.saturating_sub(self.last_dead.insert(table.clone(), dead).unwrap_or(0));
                let r = if counted_tables.len() == 1 {
                    rejected_total
                        .saturating_sub(std::mem::replace(&mut self.last_rejected, rejected_total))
                } else {
                    0
                };
                (d, x, r)
            } else {
                (0, 0, 0)
            };
            let throttled = seen.throttled.saturating_sub(
                self.last_throttled
                    .insert(key.clone(), seen.throttled)
                    .unwrap_or(0),
            );
            let mut row = json!({
                "TimeGenerated": format_unix_millis(now_ms),
                "Kind": "status",
                "Status": seen.status.name(),
                "Tenant": key.0,
                "Source": key.1,
                "Table": table,
                "Throttled": throttled,
                "Delivered": delivered,
                "DeadLettered": dead,
                "Rejected": rejected,
                "Version": self.version,
                "Instance": self.instance,
            });
            if let Some(at) = stats.last_delivery_ms_by_table.get(table) {
                row["LastDeliveryTime"] = Value::String(format_unix_millis(*at));
            }
            if let Some(lag) = seen.lag_ms {
                row["LagSeconds"] = json!(lag / 1000);
            }
            if let Some((class, message)) = &seen.error {
                row["ErrorClass"] = Value::String((*class).to_string());
                row["ErrorMessage"] = Value::String(short(message));
            }
            self.last_status.insert(key.clone(), seen.status);
            rows.push(row.to_string());
        }
        if full {
            self.last_full = Some(std::time::Instant::now());
            for (key, seen) in &observed {
                self.full_throttled.insert(key.clone(), seen.throttled);
            }
            let reports = inputs.policy.report();
            for (i, report) in reports.iter().enumerate() {
                rows.push(self.policy_row(report, self.last_policy.get(i), now_ms));
            }
            self.last_policy = reports;
            for head in heads {
                let (chain, seq, hash) = (&head.chain, &head.seq, &head.hash);
                if *seq == 0 || self.last_checkpoint.get(chain) == Some(seq) {
                    continue;
                }
                self.last_checkpoint.insert(chain.clone(), *seq);
                rows.push(
                    json!({
                        "TimeGenerated": format_unix_millis(now_ms),
                        "Kind": "checkpoint",
                        "Version": self.version,
                        "Instance": self.instance,
                        "CheckpointChain": chain,
                        "CheckpointSeq": seq,
                        "CheckpointHash": hash,
                    })
                    .to_string(),
                );
            }
        }
        rows
    }

    /// A `Kind: policy` row: what one rule did since the round before (`earlier`).
    fn policy_row(&self, report: &RuleReport, earlier: Option<&RuleReport>, now_ms: i64) -> String {
        let delta = match earlier {
            Some(e) if e.rule == report.rule => report.since(e),
            _ => report.clone(),
        };
        json!({
            "TimeGenerated": format_unix_millis(now_ms),
            "Kind": "policy",
            "Table": delta.table,
            "Rule": delta.rule,
            "Action": delta.action,
            "Matched": delta.matched,
            "RowsRemoved": delta.removed_rows,
            "BytesRemoved": delta.removed_bytes,
            "RowsAdded": delta.added_rows,
            "Version": self.version,
            "Instance": self.instance,
        })
        .to_string()
    }

    /// Every (tenant, source, table) and what applies to it now.
    fn observe(
        &self,
        inputs: &Boards,
        stats: &SinkStats,
        spool_full: bool,
        archive_failure: Option<&str>,
    ) -> BTreeMap<Key, Observed> {
        let lag_limit = i64::try_from(self.config.lag_minutes * 60_000).unwrap_or(i64::MAX);
        // What the table's delivery says, applied to every row of the table.
        let table_state =
            |table: &str, status: &mut Status, error: &mut Option<(&'static str, String)>| {
                if let Some(f) = stats.failing_by_table.get(table) {
                    let (s, class) = if f.throttled {
                        (Status::Throttled, "throttling")
                    } else {
                        (Status::Failing, "workspace")
                    };
                    if s > *status {
                        *status = s;
                        *error = Some((class, f.message.clone()));
                    }
                }
                if spool_full && Status::Paused > *status {
                    *status = Status::Paused;
                    *error = Some((
                        "spool_full",
                        "the spool is full (spool.max_bytes): collection waits for delivery".into(),
                    ));
                }
            };
        // A live source's units wait for the archive: paused while it can't write.
        let archive_state = |status: &mut Status, error: &mut Option<(&'static str, String)>| {
            if let Some(failure) = archive_failure
                && Status::Paused > *status
            {
                *status = Status::Paused;
                *error = Some(("archive", failure.to_string()));
            }
        };
        let mut out = BTreeMap::new();
        if let (Some(board), Some(table)) = (&inputs.lag, &self.audit_table) {
            for lag in board.snapshot() {
                let key = (lag.tenant.clone(), lag.content_type.clone(), table.clone());
                let mut status = Status::Healthy;
                let mut error = None;
                if lag.lag_ms > lag_limit {
                    status = Status::Lagging;
                }
                if lag.throttled > self.full_throttled.get(&key).copied().unwrap_or(0) {
                    status = Status::Throttled;
                    error = Some((
                        "throttling",
                        "the Management API throttled calls of this tenant (AF429)".into(),
                    ));
                }
                table_state(table, &mut status, &mut error);
                archive_state(&mut status, &mut error);
                if let Some(failure) = &lag.failure {
                    status = Status::Failing;
                    error = Some(("credential", failure.clone()));
                }
                out.insert(
                    key,
                    Observed {
                        status,
                        lag_ms: Some(lag.lag_ms),
                        throttled: lag.throttled,
                        error,
                    },
                );
            }
        }
        for (label, source) in &inputs.sources {
            for table in &self.defender_tables {
                let mut status = Status::Healthy;
                let mut error = None;
                table_state(table, &mut status, &mut error);
                archive_state(&mut status, &mut error);
                if let Some(failure) = source.failure() {
                    status = Status::Failing;
                    error = Some(("credential", failure));
                }
                out.insert(
                    (String::new(), label.clone(), table.clone()),
                    Observed {
                        status,
                        lag_ms: None,
                        throttled: 0,
                        error,
                    },
                );
            }
        }
        // Tables no live source reports on (files): a row once they have delivered anything.
        for table in &self.tables {
            let covered = out.keys().any(|(_, _, t)| t == table);
            let active = stats.delivered_by_table.contains_key(table)
                || stats.dead_lettered_by_table.contains_key(table)
                || stats.failing_by_table.contains_key(table);
            if covered || !active {
                continue;
            }
            let mut status = Status::Healthy;
            let mut error = None;
            table_state(table, &mut status, &mut error);
            out.insert(
                (String::new(), "files".into(), table.clone()),
                Observed {
                    status,
                    lag_ms: None,
                    throttled: 0,
                    error,
                },
            );
        }
        out
    }
}

/// An error message cut to a row's length; Bearer tokens or keys never reach these (sources
/// and sinks name settings and statuses only).
fn short(message: &str) -> String {
    let mut out: String = message.chars().take(MESSAGE_CHARS).collect();
    if message.chars().count() > MESSAGE_CHARS {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::workspace::TableFailure;

    fn reporter() -> HealthReporter {
        let schemas = SchemaSet::embedded().unwrap();
        HealthReporter::new(HealthConfig::default(), &schemas, "pod-0")
    }

    fn status(observed: &BTreeMap<Key, Observed>, tenant: &str, ct: &str) -> Status {
        observed[&(
            tenant.to_string(),
            ct.to_string(),
            "OfficeActivity_CL".to_string(),
        )]
            .status
    }

    #[test]
    fn the_worst_that_applies_is_the_status() {
        let r = reporter();
        let lag = Arc::new(LagBoard::default());
        let now = 100 * 3_600_000;
        lag.update("a", "Audit.Exchange", now - 60_000, now);
        lag.update("b", "Audit.Exchange", now - 2 * 3_600_000, now);
        lag.failure(
            "c",
            "Audit.General",
            Some("AADSTS7000215: invalid secret".into()),
        );
        lag.update("d", "Audit.Exchange", now, now);
        lag.throttled("d");
        let boards = Boards {
            lag: Some(lag.clone()),
            sources: Vec::new(),
        };
        let mut stats = SinkStats::default();
        let seen = r.observe(&boards, &stats, false, None);
        assert_eq!(status(&seen, "a", "Audit.Exchange"), Status::Healthy);
        assert_eq!(status(&seen, "b", "Audit.Exchange"), Status::Lagging);
        assert_eq!(status(&seen, "c", "Audit.General"), Status::Failing);
        assert_eq!(status(&seen, "d", "Audit.Exchange"), Status::Throttled);
        let c = &seen[&(
            "c".into(),
            "Audit.General".into(),
            "OfficeActivity_CL".into(),
        )];
        assert_eq!(c.error.as_ref().map(|e| e.0), Some("credential"));
        // A full spool pauses everything not failing; a refused table fails its rows.
        let seen = r.observe(&boards, &stats, true, None);
        assert_eq!(status(&seen, "a", "Audit.Exchange"), Status::Paused);
        assert_eq!(status(&seen, "c", "Audit.General"), Status::Failing);
        stats.failing_by_table.insert(
            "OfficeActivity_CL".into(),
            TableFailure {
                throttled: false,
                message: "HTTP 403".into(),
            },
        );
        let seen = r.observe(&boards, &stats, true, None);
        assert_eq!(status(&seen, "a", "Audit.Exchange"), Status::Failing);
        // An archive that can't write pauses what is not failing, and says why.
        stats.failing_by_table.clear();
        let seen = r.observe(&boards, &stats, false, Some("archive blob x: HTTP 404"));
        assert_eq!(status(&seen, "a", "Audit.Exchange"), Status::Paused);
        assert_eq!(status(&seen, "c", "Audit.General"), Status::Failing);
        let a = &seen[&(
            "a".into(),
            "Audit.Exchange".into(),
            "OfficeActivity_CL".into(),
        )];
        assert_eq!(a.error.as_ref().map(|e| e.0), Some("archive"));
        // A table no live source reports on gets a row of its own once it delivered.
        stats.delivered_by_table.insert("EmailEvents_CL".into(), 3);
        let seen = r.observe(&boards, &stats, false, None);
        assert!(seen.contains_key(&(String::new(), "files".into(), "EmailEvents_CL".into())));
    }
}
