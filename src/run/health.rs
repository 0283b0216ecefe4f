//! The health rows' own way into the spool: a task that asks the reporter for rows every few
//! seconds and writes them with a writer of their own, which does not wait for room (so a
//! full spool is reported rather than waited behind) and seals them into the health table's
//! own chain. They are then delivered like any stream, by a task of their own, so a failing
//! data table does not hold them up.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::integrity::{Chain, Head};
use crate::ops::health::{CHECK_EVERY, Heads, HealthInputs, HealthReporter};
use crate::pipeline::Setup;
use crate::sinks::workspace::WorkspaceSink;
use crate::state::spool::{Pos, Spool, SpoolError, SpoolWriter};

/// The running health task: `finish` asks for a last round of rows (all of them, with the
/// final checkpoints) and ends it.
pub(super) struct HealthTask {
    pub finish: watch::Sender<bool>,
    pub handle: tokio::task::JoinHandle<()>,
    /// The health table's index (its stream's).
    pub table: usize,
}

/// How long the end of a run waits for the last health rows to be delivered.
pub(super) const DRAIN: Duration = Duration::from_secs(30);

/// Checkpoint candidates kept per chain while its delivery catches up.
const CANDIDATES: usize = 1024;

struct Writer {
    spool_writer: SpoolWriter,
    chain: Option<Chain>,
    table: usize,
    spool: Arc<Spool>,
    /// Past this much undelivered health data, rows are dropped, not written: the health
    /// stream must never take the data's room (its writer doesn't wait for room).
    backlog_cap: u64,
    dropped: u64,
}

impl Writer {
    /// False when the spool is stopping: the task ends.
    fn write(&mut self, rows: Vec<String>) -> bool {
        if self.spool.stream_backlog(self.table) > self.backlog_cap {
            if self.dropped == 0 {
                tracing::warn!(
                    cap = self.backlog_cap,
                    "health rows are not being delivered; new ones are dropped until they are (is the health table's stream in the DCR?)"
                );
            }
            self.dropped += rows.len() as u64;
            return true;
        }
        if self.dropped > 0 {
            tracing::info!(dropped = self.dropped, "health rows are delivered again");
            self.dropped = 0;
        }
        for mut row in rows {
            if let Some(chain) = self.chain.as_mut()
                && let Err(e) = chain.seal(self.table, &mut row)
            {
                tracing::error!(error = %e, "a health row could not be sealed; it was not written");
                continue;
            }
            if !self.spool_writer.push(self.table, row.as_bytes()) {
                tracing::error!("the health writer doesn't own the health stream");
                return false;
            }
        }
        let chain = &mut self.chain;
        let heads = || match chain.as_mut() {
            Some(chain) => chain.persist().map_err(|e| e.to_string()),
            None => Ok(()),
        };
        match self.spool_writer.commit_then(heads) {
            Ok(()) => true,
            Err(SpoolError::Stopping) => false,
            Err(e) => {
                tracing::error!(error = %e, "health rows could not be written to the spool");
                true
            }
        }
    }
}

/// Starts the task for the health table `table`.
pub(super) fn start(
    setup: &Arc<Setup>,
    spool: &Arc<Spool>,
    sink: &Arc<WorkspaceSink>,
    options: &super::RunOptions,
    table: usize,
    chain: Option<Chain>,
    heads: Heads,
) -> HealthTask {
    let instance = setup
        .config
        .integrity
        .chain_id()
        .unwrap_or_else(|| "m365-sentinel".into());
    let mut reporter = HealthReporter::new(setup.config.health.clone(), &setup.schemas, &instance);
    let inputs = HealthInputs {
        sink: sink.clone(),
        spool: Some(spool.clone()),
        boards: options.boards.clone(),
        live: options.live.clone(),
        policy: setup.policy.clone(),
        archive: setup
            .config
            .archive
            .is_some()
            .then(|| options.archive.clone()),
    };
    let writer = Arc::new(Mutex::new(Writer {
        spool_writer: SpoolWriter::for_streams(spool.clone(), &[table], true),
        chain,
        table,
        spool: spool.clone(),
        backlog_cap: (setup.config.spool.max_bytes / 8).min(8 << 20),
        dropped: 0,
    }));
    let (finish, mut finishing) = watch::channel(false);
    let spool = spool.clone();
    let handle = tokio::spawn(async move {
        // Per chain, heads not yet delivered (oldest first), and the latest one that is.
        let mut candidates: BTreeMap<usize, VecDeque<(Head, Pos)>> = BTreeMap::new();
        let mut delivered: BTreeMap<usize, Head> = BTreeMap::new();
        loop {
            let last = *finishing.borrow();
            // A checkpoint says every row up to its sequence is in the workspace: only heads
            // whose rows the stream's cursor has passed.
            for (head, end) in heads.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let queue = candidates.entry(head.table).or_default();
                if queue.back().is_none_or(|(h, _)| h.seq != head.seq) {
                    if queue.len() >= CANDIDATES {
                        queue.pop_front();
                    }
                    queue.push_back((head.clone(), *end));
                }
            }
            for (table, queue) in &mut candidates {
                let Some(cursor) = spool.cursor(*table) else {
                    continue;
                };
                while queue.front().is_some_and(|(_, end)| *end <= cursor) {
                    if let Some((head, _)) = queue.pop_front() {
                        delivered.insert(*table, head);
                    }
                }
            }
            let checkpoints: Vec<Head> = delivered.values().cloned().collect();
            let now = crate::sources::management::client::now_millis();
            let rows = reporter.rows(&inputs, &checkpoints, now, last);
            if !rows.is_empty() {
                let writer = writer.clone();
                let written = tokio::task::spawn_blocking(move || {
                    writer.lock().unwrap_or_else(|e| e.into_inner()).write(rows)
                })
                .await;
                match written {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        tracing::error!(error = %e, "the health writer stopped");
                        return;
                    }
                }
            }
            if last {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(CHECK_EVERY) => {}
                changed = finishing.changed() => if changed.is_err() { return },
            }
        }
    });
    HealthTask {
        finish,
        handle,
        table,
    }
}
