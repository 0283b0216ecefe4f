//! `run`: intake (files or the Management Activity API) → map → spool → batch per stream →
//! workspace, with acknowledgements flowing back to the sources.
//!
//! Reading and mapping run on a blocking thread and hand rows over a bounded channel, so a slow
//! workspace slows reading down instead of filling memory. With the spool (the default,
//! `spooled.rs`) a writer thread makes rows durable on disk and acknowledges them to their
//! sources, and each stream is delivered from the spool by its own task. Without it
//! (`memory.rs`) rows are batched in memory and acknowledged when delivered.

mod memory;
mod spooled;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::ack::Ack;
use crate::ops::shutdown::Shutdown;
use crate::ops::stats::Stats;
pub use crate::pipeline::Intake;
use crate::pipeline::{Output, Setup, drive, mask_rejected};
use crate::record::{RejectReason, Rejected};
use crate::sinks::batch::{BodyBuilder, RowTooLarge};
use crate::sinks::dry_run::rejected_line;
use crate::sinks::workspace::{SinkError, SinkStats, Target, WorkspaceSink};
use crate::sources::file::{Exclude, SourceError};
use crate::state::dlq::DeadLetter;
use crate::state::spool::Spool;

/// Refused input records (not JSON, unknown category, ...) in a run, beside the dead letters.
pub const REJECTED_INPUT_FILE: &str = "rejected-input.ndjson";

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
    #[error("the reading thread stopped unexpectedly: {0}")]
    Reader(String),
}

pub struct RunOptions {
    pub flush_delay: Duration,
    pub concurrency: usize,
    pub dlq_dir: PathBuf,
    /// The spool to go through; None: the memory-only path.
    pub spool: Option<Arc<Spool>>,
    /// Set on SIGTERM: intake stops, deliveries in flight get `shutdown_deadline`.
    pub shutdown: Shutdown,
    pub shutdown_deadline: Duration,
    /// Counts kept as the run goes, for the metrics endpoint.
    pub live: Arc<crate::ops::telemetry::LiveCounts>,
}

/// What the run did: input side (rows mapped per table, refusals) and delivery side.
pub struct RunStats {
    pub input: Stats,
    pub sink: SinkStats,
    /// True when the run ended on a shutdown signal, not at the end of its input.
    pub stopped: bool,
}

/// What the reading side hands on. `ack`, when present, is acknowledged once the row or refused
/// record is safe (in the spool, delivered, dead-lettered, written to the refused-input file).
enum Item {
    Row {
        table: usize,
        json: String,
        ack: Option<Ack>,
    },
    Rejected(Rejected, Option<Ack>),
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

/// Where what can't be sent goes, on either path: rows over the request limit to the
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
                    pos: crate::record::Position::new(target.table.as_str().into(), 0),
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

pub async fn run(
    setup: Arc<Setup>,
    intake: Intake,
    sink: Arc<WorkspaceSink>,
    targets: Vec<Target>,
    options: RunOptions,
) -> Result<RunStats, RunError> {
    // The directory of refused input (0700, as the dead letters').
    crate::state::dlq::DeadLetterStore::open(&options.dlq_dir).map_err(SinkError::from)?;
    let refusals = Refusals {
        live: options.live.clone(),
        setup: setup.clone(),
        sink: sink.clone(),
        rejected_path: options.dlq_dir.join(REJECTED_INPUT_FILE),
    };
    let (tx, rx) = mpsc::channel::<Item>(4096);
    let reader_setup = setup.clone();
    let exclude = Exclude::new(&[options.dlq_dir.as_path()]);
    let stop = options.shutdown.clone();
    // The front end every command shares; a closed channel means the run is stopping.
    let reader = tokio::task::spawn_blocking(move || {
        drive(&reader_setup, intake, &exclude, &stop, &mut |out, ack| {
            tx.blocking_send(item(out, ack)).is_ok()
        })
    });
    let (mut input, stopped) = match options.spool.clone() {
        Some(spool) => {
            spooled::deliver(&setup, rx, spool, &sink, &targets, &options, refusals).await?
        }
        None => memory::deliver(&setup, rx, &sink, &targets, &options, &refusals).await?,
    };
    if !stopped {
        let totals = reader
            .await
            .map_err(|e| RunError::Reader(e.to_string()))??;
        input.files = totals.files;
        input.bytes_read = totals.bytes;
    }
    Ok(RunStats {
        input,
        sink: sink.stats(),
        stopped,
    })
}

fn item(out: Output<'_>, ack: Option<Ack>) -> Item {
    match out {
        Output::Row { row, .. } => Item::Row {
            table: row.table,
            json: row.json,
            ack,
        },
        Output::Rejected(r) => Item::Rejected(r, ack),
    }
}

/// What a replay did for one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub table: String,
    pub rows: usize,
}

/// Re-sends the dead letters of `table` (an output table, e.g. `OfficeActivity_CL`), or of every
/// table. Rows the service refuses again go back to the store, with the new reason.
pub async fn replay(
    setup: &Setup,
    store: &crate::state::dlq::DeadLetterStore,
    sink: &WorkspaceSink,
    targets: &[Target],
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
    let mut done = Vec::new();
    for name in tables {
        let Some(index) = setup.schemas.table_by_name(&name) else {
            return Err(RunError::Io {
                path: PathBuf::from(&name),
                error: std::io::Error::other("no table of that name in the schemas"),
            });
        };
        let letters = store.take(&name).map_err(SinkError::from)?;
        let mut builder = BodyBuilder::new(setup.config.batch.max_body_bytes);
        for letter in &letters {
            match builder.push(letter.row.get().as_bytes()) {
                Ok(Some(body)) => sink.deliver(&targets[index], body).await?,
                Ok(None) => {}
                // Still too large: it goes back as it was.
                Err(_) => sink.dead_letter_rows(std::slice::from_ref(letter))?,
            }
        }
        if let Some(body) = builder.take() {
            sink.deliver(&targets[index], body).await?;
        }
        store.finish_replay(&name).map_err(SinkError::from)?;
        done.push(Replayed {
            table: name,
            rows: letters.len(),
        });
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
