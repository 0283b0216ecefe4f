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

/// Appends a refused record; `durable` flushes it to disk first, for a source that commits its
/// position past the record once this returns (files commit nothing, and a flood of refused
/// lines should not cost a disk flush each).
fn append_rejected(path: &Path, r: &Rejected, durable: bool) -> std::io::Result<()> {
    let mut file = crate::private_fs::append(path)?;
    file.write_all(rejected_line(r).as_bytes())?;
    if durable {
        file.sync_data()?;
    }
    Ok(())
}

/// A closed body and the acknowledgements of its rows.
type BodyWithAcks = (Body, Vec<Ack>);

/// Each table's body being built, the acknowledgements of its rows (in row order), and when
/// its first row arrived: a body is sent when full, or `flush_delay` after its first row.
struct Batches {
    builders: Vec<BodyBuilder>,
    acks: Vec<Vec<Ack>>,
    opened: Vec<Option<tokio::time::Instant>>,
    flush_delay: Duration,
}

impl Batches {
    fn new(tables: usize, limit: usize, flush_delay: Duration) -> Self {
        Self {
            builders: (0..tables).map(|_| BodyBuilder::new(limit)).collect(),
            acks: (0..tables).map(|_| Vec::new()).collect(),
            opened: vec![None; tables],
            flush_delay,
        }
    }

    /// Adds a row; returns the body it closed (the one before it), with that body's acks.
    fn push(
        &mut self,
        table: usize,
        row: &[u8],
        ack: Option<Ack>,
    ) -> Result<Option<BodyWithAcks>, (crate::sinks::batch::RowTooLarge, Option<Ack>)> {
        let closed = match self.builders[table].push(row) {
            Ok(closed) => closed,
            Err(too_large) => return Err((too_large, ack)),
        };
        let closed = closed.map(|body| {
            self.opened[table] = None;
            (body, std::mem::take(&mut self.acks[table]))
        });
        self.acks[table].extend(ack);
        self.opened[table].get_or_insert_with(tokio::time::Instant::now);
        Ok(closed)
    }

    /// When the oldest open body is due (far ahead when none is open).
    fn next_due(&self) -> tokio::time::Instant {
        self.opened.iter().flatten().min().map_or_else(
            || tokio::time::Instant::now() + Duration::from_secs(3600),
            |oldest| *oldest + self.flush_delay,
        )
    }

    fn take(&mut self, table: usize) -> Option<(usize, Body, Vec<Ack>)> {
        self.opened[table] = None;
        let body = self.builders[table].take()?;
        Some((table, body, std::mem::take(&mut self.acks[table])))
    }

    /// The bodies whose first row is `flush_delay` old at `now`.
    fn take_due(&mut self, now: tokio::time::Instant) -> Vec<(usize, Body, Vec<Ack>)> {
        (0..self.builders.len())
            .filter(|t| self.opened[*t].is_some_and(|o| o + self.flush_delay <= now))
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|t| self.take(t))
            .collect()
    }

    fn take_all(&mut self) -> Vec<(usize, Body, Vec<Ack>)> {
        (0..self.builders.len())
            .filter_map(|t| self.take(t))
            .collect()
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
    let mut batches = Batches::new(setup.schemas.tables.len(), limit, options.flush_delay);
    let mut input = Stats::for_tables(&setup.schemas, limit);
    // Each stream has its own requests in flight: a slow or failing table can't hold the others.
    let permits: Vec<Arc<Semaphore>> = setup
        .schemas
        .tables
        .iter()
        .map(|_| Arc::new(Semaphore::new(options.concurrency.max(1))))
        .collect();
    let mut in_flight: JoinSet<Result<(), SinkError>> = JoinSet::new();
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
        let item = match tokio::time::timeout_at(batches.next_due(), rx.recv()).await {
            Ok(Some(item)) => Some(item),
            Ok(None) => break,
            Err(_) => None,
        };
        if let Some(item) = item {
            match item {
                Item::Row { table, json, ack } => {
                    input.tables[table].rows += 1;
                    match batches.push(table, json.as_bytes(), ack) {
                        Ok(Some((body, acks))) => {
                            let permit = permits[table].clone().acquire_owned().await.ok();
                            send(table, body, acks, &mut in_flight, permit);
                        }
                        Ok(None) => {}
                        Err((too_large, ack)) => {
                            let target = &targets[table];
                            let reason = RejectReason::RowTooLarge {
                                bytes: too_large.bytes,
                                limit: too_large.limit,
                            };
                            match RawValue::from_string(json) {
                                Ok(row) => sink.dead_letter_rows(&[DeadLetter::now(
                                    &target.table,
                                    &target.stream,
                                    reason.to_string(),
                                    row,
                                )])?,
                                // Mapped rows are JSON by construction; should one not be, it is
                                // still kept, as refused input.
                                Err(e) => {
                                    let r = Rejected {
                                        pos: crate::record::Position::new(
                                            target.table.as_str().into(),
                                            0,
                                        ),
                                        reason: RejectReason::Unreadable(format!(
                                            "{reason}, and not JSON: {e}"
                                        )),
                                        raw: e.to_string().into_bytes(),
                                    };
                                    append_rejected(&rejected_path, &r, ack.is_some()).map_err(
                                        |error| RunError::Io {
                                            path: rejected_path.clone(),
                                            error,
                                        },
                                    )?;
                                }
                            }
                            ack_all(ack.into_iter().collect());
                        }
                    }
                }
                Item::Rejected(mut r, ack) => {
                    *input.rejected.entry(r.reason.code()).or_default() += 1;
                    mask_rejected(&setup, &mut r);
                    append_rejected(&rejected_path, &r, ack.is_some()).map_err(|error| {
                        RunError::Io {
                            path: rejected_path.clone(),
                            error,
                        }
                    })?;
                    ack_all(ack.into_iter().collect());
                }
            }
        }
        // Bodies whose first row waited `flush_delay` go now, however busy other tables are.
        for (table, body, acks) in batches.take_due(tokio::time::Instant::now()) {
            let permit = permits[table].clone().acquire_owned().await.ok();
            send(table, body, acks, &mut in_flight, permit);
        }
        // Reap finished deliveries so their errors surface early.
        while let Some(done) = in_flight.try_join_next() {
            done.map_err(|e| RunError::Reader(e.to_string()))??;
        }
    }
    for (table, body, acks) in batches.take_all() {
        let permit = permits[table].clone().acquire_owned().await.ok();
        send(table, body, acks, &mut in_flight, permit);
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
        match &unit.content {
            Ok(text) => process_unit_admitting(
                &mapper,
                text,
                &unit.pos,
                &mut |fields| unit.dedupe.admit(fields),
                &mut |out| {
                    if !stopped && tx.blocking_send(item(out, Some(hold.attach()))).is_err() {
                        stopped = true;
                    }
                },
            ),
            Err(refused) => {
                stopped = tx
                    .blocking_send(Item::Rejected(refused.clone(), Some(hold.attach())))
                    .is_err();
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_quiet_table_is_flushed_by_its_own_age_while_others_stay_busy() {
        let delay = Duration::from_secs(5);
        let mut batches = Batches::new(2, 1_000, delay);
        assert!(batches.push(0, b"{\"quiet\":1}", None).unwrap().is_none());
        let start = tokio::time::Instant::now();
        assert_eq!(batches.next_due(), start + delay);
        // Table 1 gets a row every second: global quiet never happens.
        for second in 1..=5 {
            tokio::time::advance(Duration::from_secs(1)).await;
            batches.push(1, b"{\"busy\":1}", None).unwrap();
            let due = batches.take_due(tokio::time::Instant::now());
            if second < 5 {
                assert!(due.is_empty(), "nothing due at {second} s");
            } else {
                let tables: Vec<usize> = due.iter().map(|(t, ..)| *t).collect();
                assert_eq!(tables, [0], "the quiet table's body is 5 s old");
            }
        }
        // Table 1's body opened at 1 s: due at 6 s.
        assert_eq!(batches.next_due(), start + Duration::from_secs(6));
        let rest = batches.take_all();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].1.rows(), 5);
    }

    #[test]
    fn acks_travel_with_the_body_that_holds_their_rows() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let done = Arc::new(AtomicUsize::new(0));
        let counter = done.clone();
        let hold = Ack::hold(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let mut batches = Batches::new(1, 30, Duration::from_secs(5));
        let row = b"{\"a\":\"0123456789\"}"; // 18 bytes: one per body of 30
        assert!(batches.push(0, row, Some(hold.attach())).unwrap().is_none());
        let (body, acks) = batches
            .push(0, row, Some(hold.attach()))
            .unwrap()
            .expect("the first body closed");
        assert_eq!((body.rows(), acks.len()), (1, 1));
        hold.ack();
        ack_all(acks);
        assert_eq!(
            done.load(Ordering::SeqCst),
            0,
            "the second row is still out"
        );
        let (_, _, acks) = batches.take_all().pop().unwrap();
        ack_all(acks);
        assert_eq!(done.load(Ordering::SeqCst), 1);
        let (too_large, ack) = batches.push(0, &[b'x'; 40], None).unwrap_err();
        assert_eq!(too_large.bytes, 40);
        assert!(ack.is_none());
    }
}
