//! The health rows' own way into the spool: a task that asks the reporter for rows every few
//! seconds and writes them with a writer of their own, which does not wait for room (so a
//! full spool is reported rather than waited behind) and seals them into the health table's
//! own chain. They are then delivered like any stream, by a task of their own, so a failing
//! data table does not hold them up.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::integrity::Chain;
use crate::ops::health::{CHECK_EVERY, Heads, HealthInputs, HealthReporter};
use crate::pipeline::Setup;
use crate::sinks::workspace::WorkspaceSink;
use crate::state::spool::{Spool, SpoolError, SpoolWriter};

/// The running health task: `finish` asks for a last round of rows (all of them, with the
/// final checkpoints) and ends it.
pub(super) struct HealthTask {
    pub finish: watch::Sender<bool>,
    pub handle: tokio::task::JoinHandle<()>,
}

struct Writer {
    spool_writer: SpoolWriter,
    chain: Option<Chain>,
    table: usize,
}

impl Writer {
    fn write(&mut self, rows: Vec<String>) {
        for mut row in rows {
            if let Some(chain) = self.chain.as_mut()
                && let Err(e) = chain.seal(self.table, &mut row)
            {
                tracing::error!(error = %e, "a health row could not be sealed; it was not written");
                continue;
            }
            self.spool_writer.push(self.table, row.as_bytes());
        }
        let chain = &mut self.chain;
        let heads = || match chain.as_mut() {
            Some(chain) => chain.persist().map_err(|e| e.to_string()),
            None => Ok(()),
        };
        match self.spool_writer.commit_then(heads) {
            Ok(()) | Err(SpoolError::Stopping) => {}
            Err(e) => tracing::error!(error = %e, "health rows could not be written to the spool"),
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
    let instance = setup.config.integrity.chain_id();
    let mut reporter = HealthReporter::new(setup.config.health.clone(), &setup.schemas, &instance);
    let inputs = HealthInputs {
        sink: sink.clone(),
        spool: Some(spool.clone()),
        boards: options.boards.clone(),
        live: options.live.clone(),
    };
    let writer = Arc::new(Mutex::new(Writer {
        spool_writer: SpoolWriter::for_streams(spool.clone(), &[table], true),
        chain,
        table,
    }));
    let (finish, mut finishing) = watch::channel(false);
    let spool = spool.clone();
    let handle = tokio::spawn(async move {
        loop {
            let last = *finishing.borrow();
            // Checkpoints only of chains whose stream is delivered to its end: every row
            // up to the head is then in the workspace.
            let delivered: Vec<_> = heads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|h| spool.is_stream_drained(h.table))
                .cloned()
                .collect();
            let now = crate::sources::management::client::now_millis();
            let rows = reporter.rows(&inputs, &delivered, now, last);
            if !rows.is_empty() {
                let writer = writer.clone();
                let written = tokio::task::spawn_blocking(move || {
                    writer.lock().unwrap_or_else(|e| e.into_inner()).write(rows);
                })
                .await;
                if let Err(e) = written {
                    tracing::error!(error = %e, "the health writer stopped");
                    return;
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
    HealthTask { finish, handle }
}
