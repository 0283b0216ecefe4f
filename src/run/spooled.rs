//! The spooled path: a writer thread puts rows into the spool and acknowledges them to their
//! sources once durable; each stream is delivered from the spool by a task of its own, in FIFO
//! order, `concurrency` requests at a time, so a failing table does not hold up the others'
//! delivery. (The disk budget is shared: a table failing for long fills it, and then intake
//! pauses for all, as it must to lose nothing.)
//!
//! Ending: when the intake is exhausted the run waits until the spool is drained; on the
//! shutdown flag the writer stops taking rows, and deliveries in flight get the deadline; what
//! is left stays in the spool for the next start, where it is delivered before anything new.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Item, Refusals, RowItem, RunError, RunOptions, ack_all, finish_in_flight, health};
use crate::ack::Ack;
use crate::integrity::Chain;
use crate::ops::health::Heads;
use crate::ops::shutdown::Shutdown;
use crate::ops::stats::Stats;
use crate::pipeline::Setup;
use crate::sinks::batch::BodyBuilder;
use crate::sinks::workspace::{SinkError, Target, WorkspaceSink};
use crate::state::spool::{Pos, Spool, SpoolError, SpoolWriter, StreamReader};

/// A batch is committed (one fsync per touched stream) once it holds this much, once no row
/// came for [`LINGER`], or once its first row is [`MAX_BATCH_AGE`] old. Committing as soon as
/// the channel was momentarily empty made batches of ~150 rows at full speed: an fsync, a
/// publish and the wake-ups of the reader and the mapper for each (2,300 fsyncs for 300,000
/// rows); the linger makes them about 2 MB (`cargo bench --bench delivery`, binary mode).
const BATCH_BYTES: u64 = 2 << 20;
const LINGER: Duration = Duration::from_millis(2);
const MAX_BATCH_AGE: Duration = Duration::from_millis(50);

pub(super) async fn deliver(
    setup: &Arc<Setup>,
    rx: mpsc::Receiver<Item>,
    spool: Arc<Spool>,
    sink: &Arc<WorkspaceSink>,
    targets: &[Target],
    options: &RunOptions,
    refusals: Refusals,
) -> Result<(Stats, bool), RunError> {
    for r in &spool.recovery {
        if r.records_cut > 0 {
            tracing::error!(stream = %r.stream, records_cut = r.records_cut, bytes_cut = r.bytes_cut, damage = ?r.damage, "the spool was damaged; the intact rows are kept and the damaged ones cut out");
        }
        if r.rows > 0 {
            tracing::info!(stream = %r.stream, rows = r.rows, bytes = r.bytes, "rows left in the spool by the last run are delivered first");
        }
    }
    // Delivery first: what the last run left goes before anything new.
    let limit = setup.config.batch.max_body_bytes;
    let mut streams = JoinSet::new();
    let health_index = setup
        .schemas
        .health_table()
        .filter(|_| setup.config.health.enabled);
    let mut health_delivery = None;
    for (index, target) in targets.iter().enumerate() {
        let handle = streams.spawn(deliver_stream(
            spool.reader(index),
            sink.clone(),
            target.clone(),
            limit,
            options.flush_delay,
            options.concurrency.max(1),
            options.shutdown.clone(),
            options.shutdown_deadline,
        ));
        if Some(index) == health_index {
            health_delivery = Some(handle);
        }
    }
    let health_table = health_index;
    let data_tables: Vec<usize> = (0..targets.len())
        .filter(|t| Some(*t) != health_table)
        .collect();
    let chain = open_chain(setup, &spool, &data_tables)?;
    let heads: Heads = Arc::default();
    let health = match health_table {
        Some(table) => {
            let chain = open_chain(setup, &spool, &[table])?;
            Some(health::start(
                setup,
                &spool,
                sink,
                options,
                table,
                chain,
                heads.clone(),
            ))
        }
        None => None,
    };
    let writer_spool = spool.clone();
    let writer_targets = targets.to_vec();
    let writer_setup = setup.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let writer = SpoolWriter::for_streams(writer_spool, &data_tables, false);
        write_loop(
            &writer_setup,
            rx,
            writer,
            &writer_targets,
            &refusals,
            chain,
            &heads,
        )
    });
    let result = supervise(&spool, &mut streams, writer, options, health).await;
    spool.stop();
    let (input, stopped) = match result {
        Ok(done) => done,
        Err(e) => {
            // A stream could not go on (its dead letters can't be written): the run ends with
            // that error instead of waiting for a stream nobody reads.
            streams.abort_all();
            return Err(e);
        }
    };
    // Health rows the workspace would not take in time stay in the spool: their delivery,
    // retrying, is not waited for (the data's is).
    if let (Some(handle), Some(index)) = (health_delivery, health_index)
        && !spool.is_stream_drained(index)
    {
        handle.abort();
    }
    while let Some(done) = streams.join_next().await {
        match done {
            Err(e) if e.is_cancelled() => {}
            done => done.map_err(|e| RunError::Reader(e.to_string()))??,
        }
    }
    let input = input.unwrap_or_else(|| Stats::for_tables(&setup.schemas, limit));
    Ok((input, stopped || options.shutdown.is_set()))
}

/// Waits for the intake to end (or the shutdown flag) and, at the end of the intake, for the
/// spool to drain, while watching the stream tasks: one failing ends the run.
async fn supervise(
    spool: &Spool,
    streams: &mut JoinSet<Result<(), RunError>>,
    mut writer: tokio::task::JoinHandle<Result<Stats, RunError>>,
    options: &RunOptions,
    health: Option<health::HealthTask>,
) -> Result<(Option<Stats>, bool), RunError> {
    let mut shutdown = options.shutdown.clone();
    let input = tokio::select! {
        written = &mut writer => Some(written.map_err(|e| RunError::Reader(e.to_string()))??),
        failed = first_failure(streams) => return Err(failed),
        () = shutdown.wait() => {
            // Intake stops at the sources; what they already handed on is written (a local,
            // quick write) so their blobs complete and their positions move. A full spool
            // does not wait for room now.
            spool.stop_waiting_for_room();
            match tokio::time::timeout(options.shutdown_deadline, &mut writer).await {
                Ok(written) => Some(written.map_err(|e| RunError::Reader(e.to_string()))??),
                Err(_) => None,
            }
        }
    };
    let stopped = input.is_none() || options.shutdown.is_set();
    if !stopped {
        // The intake is exhausted: deliver everything, then the last health rows (with the
        // final checkpoints), then stop the readers.
        spool.finish_intake();
        let health_table = health.as_ref().map(|h| h.table);
        tokio::select! {
            () = spool.streams_drained(|i| Some(i) != health_table) => {}
            failed = first_failure(streams) => return Err(failed),
            () = shutdown.wait() => {
                if let Some(task) = health {
                    task.handle.abort();
                }
                return Ok((input, true));
            }
        }
        if let Some(task) = health {
            let _ = task.finish.send(true);
            let _ = task.handle.await;
            // A health stream the workspace doesn't take (a DCR deployed before it existed)
            // must not hold the end of the run: its rows stay for the next start.
            tokio::select! {
                done = tokio::time::timeout(health::DRAIN, spool.streams_drained(|i| i == task.table)) => {
                    if done.is_err() {
                        tracing::warn!(wait_secs = health::DRAIN.as_secs(), "the health rows were not all delivered in time; they stay in the spool for the next start (is the health table's stream in the DCR? `schema dcr`)");
                    }
                }
                failed = first_failure(streams) => return Err(failed),
                () = shutdown.wait() => {}
            }
        }
    } else if let Some(task) = health {
        task.handle.abort();
    }
    Ok((input, stopped || options.shutdown.is_set()))
}

/// The first error of a stream task; pending for ever while none fails.
async fn first_failure(streams: &mut JoinSet<Result<(), RunError>>) -> RunError {
    loop {
        match streams.join_next().await {
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => return e,
            Some(Err(e)) => return RunError::Reader(e.to_string()),
            None => std::future::pending::<()>().await,
        }
    }
}

/// The integrity chains, when `integrity` is on: heads from the spool's volume, or from the
/// last rows the spool still holds when those are later.
fn open_chain(setup: &Setup, spool: &Spool, tables: &[usize]) -> Result<Option<Chain>, RunError> {
    let integrity = &setup.config.integrity;
    if !integrity.is_enabled() {
        return Ok(None);
    }
    let Some(keys) = integrity.keyring()? else {
        return Ok(None);
    };
    let last_rows: Vec<Option<Vec<u8>>> =
        spool.recovery.iter().map(|r| r.last_row.clone()).collect();
    let Some(chain_id) = integrity.chain_id() else {
        return Err(RunError::Reader(
            "integrity: no chain id (set integrity.chain_id: each instance needs its own)".into(),
        ));
    };
    let chain = Chain::open_tables(
        keys,
        &chain_id,
        &setup.schemas,
        &setup.config.spool.dir,
        &last_rows,
        tables,
    )?;
    Ok(Some(chain))
}

/// Takes rows from the mapper in batches into the spool (sealed into their chains when
/// integrity is on); acknowledges them once committed.
fn write_loop(
    setup: &Setup,
    mut rx: mpsc::Receiver<Item>,
    mut writer: SpoolWriter,
    targets: &[Target],
    refusals: &Refusals,
    mut chain: Option<Chain>,
    heads: &Heads,
) -> Result<Stats, RunError> {
    let limit = setup.config.batch.max_body_bytes;
    let mut input = Stats::for_tables(&setup.schemas, limit);
    let mut acks: Vec<Ack> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let batch_started = std::time::Instant::now();
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Item::Row(RowItem {
                    table,
                    mut json,
                    ack,
                    ..
                }) => {
                    refusals.mapped(table, &mut input);
                    // A row that can never fit a request is dead-lettered now, not spooled
                    // (nor sealed: its place in the chain would be a gap).
                    let seal = chain.as_ref().map_or(0, |c| c.overhead(table));
                    if json.len() + 2 + seal > limit {
                        let too_large = crate::sinks::batch::RowTooLarge {
                            bytes: json.len(),
                            limit,
                        };
                        refusals.too_large(&targets[table], json, too_large, ack)?;
                    } else {
                        if let Some(chain) = chain.as_mut() {
                            chain.seal(table, &mut json)?;
                        }
                        if !writer.push(table, json.as_bytes()) {
                            return Err(RunError::Reader(format!(
                                "a row for table {} reached the data writer, which doesn't write that stream",
                                targets[table].table
                            )));
                        }
                        acks.extend(ack);
                    }
                }
                Item::Rejected(r, ack) => refusals.rejected(r, ack, &mut input)?,
            }
            if writer.pending_bytes() < BATCH_BYTES {
                next = rx.try_recv().ok();
                // A nap, not a wait on the channel: a waiting receiver is woken by every
                // row the mapper sends (50,000 futex calls for 300,000 rows).
                if next.is_none() && batch_started.elapsed() < MAX_BATCH_AGE {
                    std::thread::sleep(LINGER);
                    next = rx.try_recv().ok();
                }
            }
        }
        let persist_heads = || match chain.as_mut() {
            Some(chain) => chain.persist().map_err(|e| e.to_string()),
            None => Ok(()),
        };
        match writer.commit_then(persist_heads) {
            Ok(()) => {
                ack_all(acks.drain(..));
                // Published now: the health rows may checkpoint them once delivered.
                if let Some(chain) = &chain {
                    let published = chain
                        .heads()
                        .into_iter()
                        .filter_map(|h| {
                            let end = writer.end_of(h.table)?;
                            Some((h, end))
                        })
                        .collect();
                    *heads.lock().unwrap_or_else(|e| e.into_inner()) = published;
                }
            }
            // Not written: its rows stay unacknowledged and their sources read them again.
            Err(SpoolError::Stopping) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(input)
}

/// Delivers one stream from the spool until the spool stops (or the shutdown flag is set).
#[allow(clippy::too_many_arguments)]
async fn deliver_stream(
    mut reader: StreamReader,
    sink: Arc<WorkspaceSink>,
    target: Target,
    limit: usize,
    flush_delay: Duration,
    concurrency: usize,
    mut shutdown: Shutdown,
    deadline: Duration,
) -> Result<(), RunError> {
    let acker = reader.acker();
    let mut intake_done = reader.intake_done();
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut in_flight: JoinSet<Result<(), SinkError>> = JoinSet::new();
    let mut builder = BodyBuilder::new(limit);
    // The stream range of the body being built, and when its first row came.
    let mut range: Option<(Pos, Pos)> = None;
    let mut opened: Option<Instant> = None;
    let far = Duration::from_secs(86_400);
    // Sends a body once a request slot is free; stopping while waiting for one leaves the body
    // unsent (its rows stay in the spool) and ends the loop.
    macro_rules! dispatch {
        ($body:expr, $start:expr, $end:expr) => {{
            let body = $body;
            let (start, end) = ($start, $end);
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => permit.ok(),
                () = shutdown.wait() => break,
            };
            acker.begin(start, end);
            let (sink, target, acker) = (sink.clone(), target.clone(), acker.clone());
            in_flight.spawn(async move {
                let _permit = permit;
                sink.deliver(&target, body).await?;
                acker.delivered(start);
                Ok(())
            });
        }};
    }
    loop {
        let due = opened.map_or_else(|| Instant::now() + far, |o| o + flush_delay);
        tokio::select! {
            biased;
            () = shutdown.wait() => break,
            taken = reader.take(limit) => {
                let Some(mut taken) = taken else { break };
                let rows = std::mem::take(&mut taken.rows);
                for (bytes, start, end) in &rows {
                    let row = &taken.bytes[bytes.clone()];
                    match builder.push(row) {
                        Ok(Some(body)) => {
                            if let Some((first, last)) = range.take() {
                                dispatch!(body, first, last);
                            }
                            opened = Some(Instant::now());
                            range = Some((*start, *end));
                        }
                        Ok(None) => {
                            range = Some((range.map_or(*start, |(first, _)| first), *end));
                            opened.get_or_insert_with(Instant::now);
                        }
                        // Spooled under a larger batch.max_body_bytes than now: it goes to the
                        // dead-letter store, after the rows before it.
                        Err(too_large) => {
                            if let (Some(body), Some((first, last))) = (builder.take(), range.take()) {
                                dispatch!(body, first, last);
                            }
                            opened = None;
                            acker.begin(*start, *end);
                            dead_letter(&sink, &target, row, too_large)?;
                            acker.delivered(*start);
                        }
                    }
                }
                reader.recycle(taken.bytes);
            }
            // Nothing more is coming in this run (and nothing is readable now, or the branch
            // above would have won): the partial body need not wait out the delay.
            true = async { intake_done.wait_for(|done| *done).await.is_ok() }, if opened.is_some() => {
                if let (Some(body), Some((start, end))) = (builder.take(), range.take()) {
                    dispatch!(body, start, end);
                }
                opened = None;
            }
            () = tokio::time::sleep_until(due), if opened.is_some() => {
                if let (Some(body), Some((start, end))) = (builder.take(), range.take()) {
                    dispatch!(body, start, end);
                }
                opened = None;
            }
        }
        while let Some(done) = in_flight.try_join_next() {
            done.map_err(|e| RunError::Reader(e.to_string()))??;
        }
    }
    // The body being built stays in the spool; requests in flight get the deadline.
    let until = shutdown.is_set().then(|| Instant::now() + deadline);
    let result = finish_in_flight(&mut in_flight, until).await;
    acker.flush();
    tracing::debug!(stream = %reader.name(), "stream delivery stopped");
    result
}

fn dead_letter(
    sink: &WorkspaceSink,
    target: &Target,
    row: &[u8],
    too_large: crate::sinks::batch::RowTooLarge,
) -> Result<(), RunError> {
    let reason = crate::record::RejectReason::RowTooLarge {
        bytes: too_large.bytes,
        limit: too_large.limit,
    };
    let text = String::from_utf8_lossy(row).into_owned();
    let raw = serde_json::value::RawValue::from_string(text)
        .or_else(|_| serde_json::value::to_raw_value(&String::from_utf8_lossy(row)))
        .map_err(|e| RunError::Reader(format!("a spooled row could not be kept: {e}")))?;
    sink.dead_letter_rows(&[crate::state::dlq::DeadLetter::now(
        &target.table,
        &target.stream,
        reason.to_string(),
        raw,
    )])?;
    Ok(())
}
