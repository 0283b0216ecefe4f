//! The memory-only path (`spool.enabled: false`): rows are batched per table in memory, a body
//! is sent when full or `flush_delay` after its first row, and each row is acknowledged to its
//! source when its body was delivered.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::{Item, Refusals, RowItem, RunError, RunOptions, ack_all};
use crate::ack::Ack;
use crate::ops::stats::Stats;
use crate::pipeline::Setup;
use crate::sinks::batch::{Body, BodyBuilder, RowTooLarge};
use crate::sinks::workspace::{SinkError, Target, WorkspaceSink};

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
    ) -> Result<Option<BodyWithAcks>, (RowTooLarge, Option<Ack>)> {
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

/// A request slot of the stream, or None once the run is stopping.
async fn slot(
    permits: &Arc<Semaphore>,
    shutdown: &mut crate::ops::shutdown::Shutdown,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    tokio::select! {
        permit = permits.clone().acquire_owned() => permit.ok(),
        () = shutdown.wait() => None,
    }
}

/// Delivers what arrives on `rx` until it closes (or the shutdown flag is set); returns the input
/// counts and whether it stopped on the flag.
pub(super) async fn deliver(
    setup: &Setup,
    mut rx: mpsc::Receiver<Item>,
    sink: &Arc<WorkspaceSink>,
    targets: &[Target],
    options: &RunOptions,
    refusals: &Refusals,
) -> Result<(Stats, bool), RunError> {
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
    let mut shutdown = options.shutdown.clone();
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
    let mut stopped = false;
    loop {
        let item = tokio::select! {
            received = tokio::time::timeout_at(batches.next_due(), rx.recv()) => match received {
                Ok(Some(item)) => Some(item),
                Ok(None) => break,
                Err(_) => None,
            },
            () = shutdown.wait() => {
                stopped = true;
                break;
            }
        };
        match item {
            Some(Item::Row(RowItem {
                table, json, ack, ..
            })) => {
                refusals.mapped(table, &mut input);
                match batches.push(table, json.as_bytes(), ack) {
                    Ok(Some((body, acks))) => {
                        let Some(permit) = slot(&permits[table], &mut shutdown).await else {
                            stopped = true;
                            break;
                        };
                        send(table, body, acks, &mut in_flight, Some(permit));
                    }
                    Ok(None) => {}
                    Err((too_large, ack)) => {
                        refusals.too_large(&targets[table], json, too_large, ack)?;
                    }
                }
            }
            Some(Item::Rejected(r, ack)) => refusals.rejected(r, ack, &mut input)?,
            None => {}
        }
        // Bodies whose first row waited `flush_delay` go now, however busy other tables are.
        for (table, body, acks) in batches.take_due(tokio::time::Instant::now()) {
            let Some(permit) = slot(&permits[table], &mut shutdown).await else {
                stopped = true;
                break;
            };
            send(table, body, acks, &mut in_flight, Some(permit));
        }
        if stopped {
            break;
        }
        // Reap finished deliveries so their errors surface early.
        while let Some(done) = in_flight.try_join_next() {
            done.map_err(|e| RunError::Reader(e.to_string()))??;
        }
    }
    // What was gathered goes too, as far as request slots allow when stopping (its sources
    // have not committed past it either way).
    for (table, body, acks) in batches.take_all() {
        let permit = if stopped {
            permits[table].clone().try_acquire_owned().ok()
        } else {
            permits[table].clone().acquire_owned().await.ok()
        };
        if permit.is_some() {
            send(table, body, acks, &mut in_flight, permit);
        }
    }
    let deadline = stopped.then(|| tokio::time::Instant::now() + options.shutdown_deadline);
    super::finish_in_flight(&mut in_flight, deadline).await?;
    Ok((input, stopped))
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
