//! The one wiring every command runs: an intake (files, the live sources, or dead letters) →
//! the front end (`pipeline::drive`: decode → route → map) → a bounded channel → a delivery.
//! `run`, `run --once`, `dry-run` and `dlq replay` differ only in the intake and the
//! [`Delivery`] they plug into [`run`].
//!
//! Reading and mapping run on a blocking thread and hand rows over the channel, so a slow
//! delivery slows reading down instead of filling memory. The deliveries: through the spool
//! (the default, `spooled.rs`), where a writer thread makes rows durable on disk and
//! acknowledges them to their sources and each stream is delivered from the spool by its own
//! task; from memory (`memory.rs`), where rows are batched and acknowledged when delivered; and
//! to files (`dry_run.rs`), where the exact bodies are written and nothing is committed.

mod dry_run;
mod health;
mod memory;
mod spooled;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::ack::Ack;
use crate::config::Config;
use crate::ops::shutdown::Shutdown;
use crate::ops::stats::Stats;
pub use crate::pipeline::Intake;
use crate::pipeline::{Output, Setup, drive, mask_rejected};
use crate::record::{Position, RejectReason, Rejected};
use crate::sinks::batch::RowTooLarge;
use crate::sinks::dry_run::rejected_line;
use crate::sinks::workspace::{SinkError, SinkStats, Target, WorkspaceSink};
use crate::sources::defender::UnknownCategories;
use crate::sources::file::{Exclude, ReadTotals, SourceError};
use crate::stages::map::{Note, NoteKind};
use crate::state::dlq::{DeadLetter, DeadLetterStore};
use crate::state::spool::Spool;

/// Refused input records (not JSON, unknown category, ...) in a run, beside the dead letters.
pub const REJECTED_INPUT_FILE: &str = "rejected-input.ndjson";

/// Rows between the front end and the delivery: enough to keep both busy, few enough that a
/// stalled delivery holds little memory.
const CHANNEL_ROWS: usize = 4096;

/// Defender rows skipped by `defender.unknown_categories: skip`, by category.
type Skipped = BTreeMap<String, u64>;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Spool(#[from] crate::state::spool::SpoolError),
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("dry-run output {path}: {error}")]
    Output {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Chain(#[from] crate::integrity::ChainError),
    #[error(transparent)]
    Keys(#[from] crate::integrity::KeyError),
    #[error("the reading thread stopped unexpectedly: {0}")]
    Reader(String),
}

/// Where the rows go: the one difference, with the intake, between the commands.
pub enum Delivery {
    /// The workspace (`run`, `run --once`, `dlq replay`): through `spool` when given, else from
    /// memory.
    Workspace {
        sink: Arc<WorkspaceSink>,
        targets: Vec<Target>,
        spool: Option<Arc<Spool>>,
    },
    /// `dry-run`: the exact bodies, refused records and notices as files in `out_dir`; nothing
    /// sent, nothing committed.
    Files { out_dir: PathBuf },
}

pub struct RunOptions {
    pub flush_delay: Duration,
    pub concurrency: usize,
    pub dlq_dir: PathBuf,
    /// Set on SIGTERM: intake stops, deliveries in flight get `shutdown_deadline`.
    pub shutdown: Shutdown,
    pub shutdown_deadline: Duration,
    /// Counts kept as the run goes, for the metrics endpoint.
    pub live: Arc<crate::ops::telemetry::LiveCounts>,
    /// The raw archive's counts (when the config has one), for the summary and /metrics.
    pub archive: Arc<crate::sinks::archive::ArchiveStats>,
    /// The live sources' boards, for the health rows (filled once they start).
    pub boards: crate::ops::health::SourceBoards,
}

impl RunOptions {
    /// The options `config` sets (its sink section's timings; defaults without one, as in
    /// dry-run).
    pub fn from_config(config: &Config, shutdown: Shutdown) -> Self {
        let (flush_delay_ms, concurrency, deadline_secs) = match &config.sink {
            Some(sink) => (
                sink.flush_delay_ms,
                sink.concurrency,
                sink.shutdown_deadline_secs,
            ),
            None => (1, 1, 0),
        };
        Self {
            flush_delay: Duration::from_millis(flush_delay_ms.max(1)),
            concurrency,
            dlq_dir: config.dlq.dir.clone(),
            shutdown,
            shutdown_deadline: Duration::from_secs(deadline_secs),
            live: Arc::default(),
            archive: Arc::default(),
            boards: crate::ops::health::SourceBoards::default(),
        }
    }
}

/// What the run did: input side (rows mapped per table, refusals; for a dry-run also the
/// bodies) and delivery side (zero for a dry-run).
pub struct RunStats {
    pub input: Stats,
    pub sink: SinkStats,
    /// True when the run ended on a shutdown signal, not at the end of its input.
    pub stopped: bool,
}

/// What the front end hands on. `ack`, when present, is acknowledged once the row or refused
/// record is safe (in the spool, delivered, dead-lettered, written to a refusal file).
enum Item {
    Row(RowItem),
    Rejected(Rejected, Option<Ack>),
}

/// A mapped row and what a delivery may need to say about it.
struct RowItem {
    table: usize,
    json: String,
    ack: Option<Ack>,
    pos: Position,
    /// What mapping adjusted (for the dry-run's notices).
    notes: Vec<Note>,
    /// The record's original text, kept only where a delivery quotes it: a truncation notice,
    /// or a refusal of a row too large for any request.
    text: Option<String>,
}

fn ack_all(acks: impl IntoIterator<Item = Ack>) {
    for ack in acks {
        ack.ack();
    }
}

/// Appends a refused record; `durable` flushes it to disk first, for a source that commits its
/// position past the record once this returns (files commit nothing, and a flood of refused
/// lines should not cost a disk flush each).
fn append_rejected(path: &Path, r: &Rejected, durable: bool) -> std::io::Result<()> {
    let mut file = crate::state::private_fs::append(path)?;
    file.write_all(rejected_line(r).as_bytes())?;
    if durable {
        file.sync_data()?;
    }
    Ok(())
}

/// Where what can't be sent goes, on either workspace path: rows over the request limit to the
/// dead-letter store, refused input records to the refused-input file. Acknowledged after.
struct Refusals {
    live: Arc<crate::ops::telemetry::LiveCounts>,
    setup: Arc<Setup>,
    sink: Arc<WorkspaceSink>,
    rejected_path: PathBuf,
}

impl Refusals {
    fn too_large(
        &self,
        target: &Target,
        json: String,
        too_large: RowTooLarge,
        ack: Option<Ack>,
    ) -> Result<(), RunError> {
        let reason = RejectReason::RowTooLarge {
            bytes: too_large.bytes,
            limit: too_large.limit,
        };
        match RawValue::from_string(json) {
            Ok(row) => self.sink.dead_letter_rows(&[DeadLetter::now(
                &target.table,
                &target.stream,
                reason.to_string(),
                row,
            )])?,
            // Mapped rows are JSON by construction; should one not be, it is still kept, as
            // refused input.
            Err(e) => {
                let r = Rejected {
                    pos: Position::new(target.table.as_str().into(), 0),
                    reason: RejectReason::Unreadable(format!("{reason}, and not JSON: {e}")),
                    raw: e.to_string().into_bytes(),
                };
                self.write(&r, ack.is_some())?;
            }
        }
        ack_all(ack);
        Ok(())
    }

    fn rejected(
        &self,
        mut r: Rejected,
        ack: Option<Ack>,
        input: &mut Stats,
    ) -> Result<(), RunError> {
        *input.rejected.entry(r.reason.code()).or_default() += 1;
        self.live.rejected(r.reason.code());
        mask_rejected(&self.setup, &mut r);
        self.write(&r, ack.is_some())?;
        ack_all(ack);
        Ok(())
    }

    /// Counts a mapped row.
    fn mapped(&self, table: usize, input: &mut Stats) {
        input.tables[table].rows += 1;
        self.live
            .row(&self.setup.schemas.tables[table].output_table);
    }

    fn write(&self, r: &Rejected, durable: bool) -> Result<(), RunError> {
        append_rejected(&self.rejected_path, r, durable).map_err(|error| RunError::Io {
            path: self.rejected_path.clone(),
            error,
        })
    }
}

/// The pipeline: reads `intake` through the front end on a blocking thread and hands every
/// row and refusal to `delivery`; returns when the intake is exhausted and everything is
/// delivered (or, on the shutdown flag, once what was in flight had its deadline).
pub async fn run(
    setup: Arc<Setup>,
    intake: Intake,
    delivery: Delivery,
    options: RunOptions,
) -> Result<RunStats, RunError> {
    // What a run writes is not read back as input.
    let own_dir = match &delivery {
        Delivery::Files { out_dir } => out_dir.clone(),
        Delivery::Workspace { .. } => options.dlq_dir.clone(),
    };
    // A dry-run's output directory is prepared before anything is read.
    let mut files = match &delivery {
        Delivery::Files { out_dir } => Some(dry_run::DryRun::create(&setup, out_dir)?),
        Delivery::Workspace { .. } => None,
    };
    let (tx, rx) = mpsc::channel::<Item>(CHANNEL_ROWS);
    // The policy's counts live as long as the setup: this run's are the difference.
    let policy_before = setup.policy.report();
    let policy_since = |setup: &Setup| -> Vec<crate::stages::policy::RuleReport> {
        setup
            .policy
            .report()
            .iter()
            .zip(&policy_before)
            .map(|(now, before)| now.since(before))
            .collect()
    };
    let reader_setup = setup.clone();
    let stop = options.shutdown.clone();
    let limit = setup.config.batch.max_body_bytes;
    // The front end every command shares; a closed channel means the run is stopping.
    let skip_unknown = setup.config.defender.unknown_categories == UnknownCategories::Skip;
    let live = options.live.clone();
    let reader = tokio::task::spawn_blocking(move || {
        let exclude = Exclude::new(&[own_dir.as_path()]);
        let mut skipped = BTreeMap::new();
        let totals = drive(&reader_setup, intake, &exclude, &stop, &mut |out, ack| {
            if skip_unknown
                && let Output::Rejected(r) = &out
                && let RejectReason::UnknownCategory(category) = &r.reason
            {
                // Skipped by the user's choice: counted, and safe (nothing is owed for it).
                *skipped.entry(category.clone()).or_insert(0) += 1;
                live.skipped(category);
                ack_all(ack);
                return true;
            }
            tx.blocking_send(item(out, ack, limit)).is_ok()
        });
        totals.map(|t| (t, skipped))
    });
    let Delivery::Workspace {
        sink,
        targets,
        spool,
    } = delivery
    else {
        let Some(mut files) = files.take() else {
            return Err(RunError::Reader(
                "the dry-run output was not prepared".into(),
            ));
        };
        // The files are written on a blocking thread too: a dry-run is disk work.
        let files = tokio::task::spawn_blocking(move || {
            files.consume(rx);
            files
        })
        .await
        .map_err(|e| RunError::Reader(e.to_string()))?;
        let (totals, skipped) = read_totals(reader).await?;
        let input = files.finish(totals, skipped, policy_since(&setup))?;
        return Ok(RunStats {
            input,
            sink: SinkStats::default(),
            stopped: false,
        });
    };
    // The directory of refused input (0700, as the dead letters').
    DeadLetterStore::open(&options.dlq_dir).map_err(SinkError::from)?;
    let refusals = Refusals {
        live: options.live.clone(),
        setup: setup.clone(),
        sink: sink.clone(),
        rejected_path: options.dlq_dir.join(REJECTED_INPUT_FILE),
    };
    let (mut input, stopped) = match spool {
        Some(spool) => {
            spooled::deliver(&setup, rx, spool, &sink, &targets, &options, refusals).await?
        }
        None => memory::deliver(&setup, rx, &sink, &targets, &options, &refusals).await?,
    };
    if stopped {
        // The reader may still be cut short; what it skipped so far is in the live counts.
        input.skipped = crate::ops::telemetry::snapshot(&options.live.skipped);
    } else {
        let (totals, skipped) = read_totals(reader).await?;
        input.files = totals.files;
        input.bytes_read = totals.bytes;
        input.skipped = skipped;
    }
    input.policy = policy_since(&setup);
    Ok(RunStats {
        input,
        sink: sink.stats(),
        stopped,
    })
}

/// What the front end read, once it has finished.
async fn read_totals(
    reader: tokio::task::JoinHandle<Result<(ReadTotals, Skipped), SourceError>>,
) -> Result<(ReadTotals, Skipped), RunError> {
    Ok(reader
        .await
        .map_err(|e| RunError::Reader(e.to_string()))??)
}

/// Dry-run for a caller outside an async runtime (tests, benchmarks, files): [`run`] with the
/// files delivery on a runtime of its own. Returns the counts.
pub fn dry_run(setup: Arc<Setup>, intake: Intake, out_dir: &Path) -> Result<Stats, RunError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| RunError::Io {
            path: out_dir.to_path_buf(),
            error,
        })?;
    let delivery = Delivery::Files {
        out_dir: out_dir.to_path_buf(),
    };
    let options = RunOptions::from_config(&setup.config, Shutdown::never());
    Ok(runtime
        .block_on(run(setup, intake, delivery, options))?
        .input)
}

fn item(out: Output<'_>, ack: Option<Ack>, body_limit: usize) -> Item {
    match out {
        Output::Row { pos, row, text } => {
            let quoted = row.json.len().saturating_add(2) > body_limit
                || row
                    .notes
                    .iter()
                    .any(|n| matches!(n.kind, NoteKind::Truncated { .. }));
            Item::Row(RowItem {
                table: row.table,
                json: row.json,
                ack,
                pos,
                notes: row.notes,
                text: quoted.then(|| text.to_string()),
            })
        }
        Output::Rejected(r) => Item::Rejected(r, ack),
    }
}

/// What a replay did for one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub table: String,
    pub rows: usize,
}

/// `dlq replay`: the dead letters of `table` (an output table, e.g. `OfficeActivity_CL`), or of
/// every table, through [`run`] to the workspace from memory. Rows the service refuses again go
/// back to the store, with the new reason; a replay cut short is picked up by the next one.
pub async fn replay(
    setup: Arc<Setup>,
    store: &DeadLetterStore,
    sink: Arc<WorkspaceSink>,
    targets: Vec<Target>,
    table: Option<&str>,
) -> Result<Vec<Replayed>, RunError> {
    let tables: Vec<String> = match table {
        Some(t) => vec![t.to_string()],
        None => store
            .list()
            .map_err(SinkError::from)?
            .into_iter()
            .map(|t| t.table)
            .collect(),
    };
    if let Some(unknown) = tables
        .iter()
        .find(|t| setup.schemas.table_by_name(t).is_none())
    {
        return Err(RunError::Io {
            path: PathBuf::from(unknown),
            error: std::io::Error::other("no table of that name in the schemas"),
        });
    }
    let mut letters = Vec::new();
    let mut done = Vec::new();
    for name in &tables {
        let taken = store.take(name).map_err(SinkError::from)?;
        done.push(Replayed {
            table: name.clone(),
            rows: taken.len(),
        });
        letters.extend(taken);
    }
    let delivery = Delivery::Workspace {
        sink,
        targets,
        spool: None,
    };
    let options = RunOptions::from_config(&setup.config, Shutdown::never());
    run(setup, Intake::DeadLetters(letters), delivery, options).await?;
    for name in &tables {
        store.finish_replay(name).map_err(SinkError::from)?;
    }
    Ok(done)
}

/// Waits for the deliveries in flight. With a deadline (stopping), what is not done by then is
/// abandoned: its rows were not acknowledged, so they stay in the spool or at their source.
async fn finish_in_flight(
    in_flight: &mut tokio::task::JoinSet<Result<(), SinkError>>,
    deadline: Option<tokio::time::Instant>,
) -> Result<(), RunError> {
    loop {
        let next = match deadline {
            Some(deadline) => {
                match tokio::time::timeout_at(deadline, in_flight.join_next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        tracing::warn!(
                            requests = in_flight.len(),
                            "shutdown deadline reached: requests still in flight abandoned; their rows are sent again at the next start"
                        );
                        in_flight.abort_all();
                        return Ok(());
                    }
                }
            }
            None => in_flight.join_next().await,
        };
        match next {
            None => return Ok(()),
            Some(done) => done.map_err(|e| RunError::Reader(e.to_string()))??,
        }
    }
}
