//! `run`: file/stdin input → map → batch per stream → Logs Ingestion sink, until the input ends.
//! Reading and mapping run on a blocking thread and hand rows over a bounded channel, so a slow
//! workspace slows reading down instead of filling memory. Bodies are sent when full, or when no
//! row arrived for `flush_delay`; at most `concurrency` requests are in flight.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::ack::Ack;
use crate::dlq::DeadLetter;
use crate::pipeline::{Output, Setup, mask_rejected, process_unit, process_unit_admitting};
use crate::record::{RejectReason, Rejected};
use crate::sinks::batch::{Body, BodyBuilder};
use crate::sinks::dry_run::rejected_line;
use crate::sinks::workspace::{SinkError, SinkStats, Target, WorkspaceSink};
use crate::sources::file::{Exclude, Framed, ReadTotals, SourceError, read_inputs};
use crate::sources::management::Unit;
use crate::stats::Stats;

/// Refused input records (not JSON, unknown category, ...) in a run, beside the dead letters.
pub const REJECTED_INPUT_FILE: &str = "rejected-input.ndjson";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
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
}

/// What the run did: input side (rows mapped per table, refusals) and delivery side.
pub struct RunStats {
    pub input: Stats,
    pub sink: SinkStats,
}

/// What the reading side hands the delivery loop. `ack`, when present, is acknowledged once the
/// row or refused record is safe (delivered, dead-lettered, written to the refused-input file).
enum Item {
    Row {
        table: usize,
        json: String,
        ack: Option<Ack>,
    },
    Rejected(Rejected, Option<Ack>),
}

/// Where a run reads from.
pub enum Intake {
    /// Files, directories or stdin, read to the end.
    Files(Vec<PathBuf>),
    /// Content blobs from the Management Activity API collector.
    Management(mpsc::Receiver<Unit>),
}

fn ack_all(acks: Vec<Ack>) {
    for ack in acks {
        ack.ack();
    }
}

fn append_rejected(path: &Path, r: &Rejected) -> std::io::Result<()> {
    crate::private_fs::append(path)?.write_all(rejected_line(r).as_bytes())
}

pub async fn run(
    setup: Arc<Setup>,
    intake: Intake,
    sink: Arc<WorkspaceSink>,
    targets: Vec<Target>,
    options: RunOptions,
) -> Result<RunStats, RunError> {
    // The directory of refused input (0700, as the dead letters').
    crate::dlq::DeadLetterStore::open(&options.dlq_dir).map_err(SinkError::from)?;
    let (tx, mut rx) = mpsc::channel::<Item>(4096);
    let reader_setup = setup.clone();
    let exclude = Exclude::new(&[options.dlq_dir.as_path()]);
    let reader = tokio::task::spawn_blocking(move || match intake {
        Intake::Files(inputs) => read_files(&reader_setup, &inputs, &exclude, &tx),
        Intake::Management(units) => {
            map_units(&reader_setup, units, &tx);
            Ok(ReadTotals::default())
        }
    });

    let limit = setup.config.batch.max_body_bytes;
    let mut builders: Vec<BodyBuilder> = setup
        .schemas
        .tables
        .iter()
        .map(|_| BodyBuilder::new(limit))
        .collect();
    let mut input = Stats::for_tables(&setup.schemas, limit);
    // Each stream has its own requests in flight: a slow or failing table can't hold the others.
    let permits: Vec<Arc<Semaphore>> = setup
        .schemas
        .tables
        .iter()
        .map(|_| Arc::new(Semaphore::new(options.concurrency.max(1))))
        .collect();
    let mut in_flight: JoinSet<Result<(), SinkError>> = JoinSet::new();
    // The acknowledgements of the rows in each table's body being built, in row order.
    let mut pending_acks: Vec<Vec<Ack>> = setup.schemas.tables.iter().map(|_| Vec::new()).collect();
    let rejected_path = options.dlq_dir.join(REJECTED_INPUT_FILE);

    let send = |table: usize,
                body: Body,
                acks: Vec<Ack>,
                in_flight: &mut JoinSet<Result<(), SinkError>>,
                permit| {
        let sink = sink.clone();
        let target = targets[table].clone();
        in_flight.spawn(async move {
            let _permit = permit;
            sink.deliver(&target, body).await?;
            ack_all(acks);
            Ok(())
        });
    };

    loop {
        let item = match tokio::time::timeout(options.flush_delay, rx.recv()).await {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(_) => {
                // Quiet input: send what has gathered.
                for (table, builder) in builders.iter_mut().enumerate() {
                    if let Some(body) = builder.take() {
                        let permit = permits[table].clone().acquire_owned().await.ok();
                        let acks = std::mem::take(&mut pending_acks[table]);
                        send(table, body, acks, &mut in_flight, permit);
                    }
                }
                continue;
            }
        };
        match item {
            Item::Row { table, json, ack } => {
                input.tables[table].rows += 1;
                match builders[table].push(json.as_bytes()) {
                    Ok(Some(body)) => {
                        let permit = permits[table].clone().acquire_owned().await.ok();
                        let acks = std::mem::take(&mut pending_acks[table]);
                        pending_acks[table].extend(ack);
                        send(table, body, acks, &mut in_flight, permit);
                    }
                    Ok(None) => pending_acks[table].extend(ack),
                    Err(too_large) => {
                        let target = &targets[table];
                        let reason = RejectReason::RowTooLarge {
                            bytes: too_large.bytes,
                            limit: too_large.limit,
                        }
                        .to_string();
                        if let Ok(row) = RawValue::from_string(json) {
                            sink.dead_letter_rows(&[DeadLetter::now(
                                &target.table,
                                &target.stream,
                                reason,
                                row,
                            )])?;
                        }
                        ack_all(ack.into_iter().collect());
                    }
                }
            }
            Item::Rejected(mut r, ack) => {
                *input.rejected.entry(r.reason.code()).or_default() += 1;
                mask_rejected(&setup, &mut r);
                append_rejected(&rejected_path, &r).map_err(|error| RunError::Io {
                    path: rejected_path.clone(),
                    error,
                })?;
                ack_all(ack.into_iter().collect());
            }
        }
        // Reap finished deliveries so their errors surface early.
        while let Some(done) = in_flight.try_join_next() {
            done.map_err(|e| RunError::Reader(e.to_string()))??;
        }
    }
    for (table, builder) in builders.iter_mut().enumerate() {
        if let Some(body) = builder.take() {
            let permit = permits[table].clone().acquire_owned().await.ok();
            let acks = std::mem::take(&mut pending_acks[table]);
            send(table, body, acks, &mut in_flight, permit);
        }
    }
    while let Some(done) = in_flight.join_next().await {
        done.map_err(|e| RunError::Reader(e.to_string()))??;
    }
    let totals = reader
        .await
        .map_err(|e| RunError::Reader(e.to_string()))??;
    input.files = totals.files;
    input.bytes_read = totals.bytes;
    Ok(RunStats {
        input,
        sink: sink.stats(),
    })
}

/// Reads files on this (blocking) thread and hands their rows to the delivery loop.
fn read_files(
    setup: &Setup,
    inputs: &[PathBuf],
    exclude: &Exclude,
    tx: &mpsc::Sender<Item>,
) -> Result<ReadTotals, SourceError> {
    let mapper = setup.mapper();
    let file_options = setup.config.file_options();
    read_inputs(inputs, &file_options, exclude, &mut |framed| match framed {
        Framed::Unit { pos, text } => process_unit(&mapper, text, &pos, &mut |out| {
            // A closed channel means the run is stopping; what is left stays unread.
            let _ = tx.blocking_send(item(out, None));
        }),
        Framed::Rejected(r) => {
            let _ = tx.blocking_send(Item::Rejected(r, None));
        }
    })
}

/// Maps content blobs on this (blocking) thread, skipping records already seen, and hands their
/// rows on with a handle of the blob's acknowledgement each.
fn map_units(setup: &Setup, mut units: mpsc::Receiver<Unit>, tx: &mpsc::Sender<Item>) {
    let mapper = setup.mapper();
    while let Some(mut unit) = units.blocking_recv() {
        let hold = &unit.ack;
        let mut stopped = false;
        process_unit_admitting(
            &mapper,
            &unit.text,
            &unit.pos,
            &mut |fields| unit.dedupe.admit(fields),
            &mut |out| {
                if !stopped && tx.blocking_send(item(out, Some(hold.attach()))).is_err() {
                    stopped = true;
                }
            },
        );
        if stopped {
            // The run is stopping: the blob stays unacknowledged and is read again next time.
            return;
        }
        unit.ack.ack();
    }
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
    store: &crate::dlq::DeadLetterStore,
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
