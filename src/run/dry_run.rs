//! The dry-run delivery: the rows the front end hands on become the exact request bodies the
//! workspace sink would send, written to files by the dry-run sink with the refused records and
//! the notices. Nothing is sent; every acknowledgement is given at once (a dry-run commits no
//! position, so there is nothing to make durable first).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Item, RowItem, RunError, Skipped};
use crate::ops::stats::Stats;
use crate::pipeline::{Setup, mask_rejected};
use crate::record::{RejectReason, Rejected};
use crate::sinks::batch::{Body, BodyBuilder};
use crate::sinks::dry_run::DryRunSink;
use crate::sources::file::ReadTotals;
use crate::stages::map::NoteKind;

/// The cost report's JSON, beside summary.txt.
pub const COST_FILE: &str = "cost.json";

pub(super) struct DryRun {
    setup: Arc<Setup>,
    out_dir: PathBuf,
    sink: DryRunSink,
    builders: Vec<BodyBuilder>,
    stats: Stats,
    cost: crate::ops::cost::CostTally,
    /// The first write that failed; the run goes on reading (so the counts are whole) and
    /// reports it at the end.
    error: Option<io::Error>,
}

impl DryRun {
    /// Prepares the output directory (before anything is read, so a bad one fails at once).
    pub(super) fn create(setup: &Arc<Setup>, out_dir: &Path) -> Result<Self, RunError> {
        let schemas = &setup.schemas;
        let sink =
            DryRunSink::create(out_dir, &schemas.streams()).map_err(output_error(out_dir))?;
        let limit = setup.config.batch.max_body_bytes;
        Ok(DryRun {
            setup: setup.clone(),
            out_dir: out_dir.to_path_buf(),
            sink,
            builders: schemas
                .tables
                .iter()
                .map(|_| BodyBuilder::new(limit))
                .collect(),
            stats: Stats::for_tables(schemas, limit),
            cost: crate::ops::cost::CostTally::new(schemas),
            error: None,
        })
    }

    /// Takes everything the front end hands on, until it has finished (blocking).
    pub(super) fn consume(&mut self, mut rx: mpsc::Receiver<Item>) {
        while let Some(item) = rx.blocking_recv() {
            match item {
                Item::Row(mut row) => {
                    let ack = row.ack.take();
                    self.row(row);
                    ack_now(ack);
                }
                Item::Rejected(r, ack) => {
                    self.reject(r);
                    ack_now(ack);
                }
            }
        }
    }

    /// Writes the partly filled bodies and the summary (which names what was read).
    pub(super) fn finish(
        mut self,
        totals: ReadTotals,
        skipped: Skipped,
        policy: Vec<crate::stages::policy::RuleReport>,
    ) -> Result<Stats, RunError> {
        self.stats.files = totals.files;
        self.stats.policy = policy;
        self.stats.bytes_read = totals.bytes;
        self.stats.skipped = skipped;
        for table in 0..self.builders.len() {
            if let Some(body) = self.builders[table].take() {
                self.body(table, body);
            }
        }
        if let Some(e) = self.error.take() {
            return Err(output_error(&self.out_dir)(e));
        }
        let cost = self.cost.report(
            &self.setup.schemas,
            &self.stats.policy,
            &self.setup.config.cost,
        );
        let cost_path = self.out_dir.join(COST_FILE);
        let json = serde_json::to_vec_pretty(&cost).map_err(io::Error::other);
        json.and_then(|j| std::fs::write(&cost_path, j))
            .map_err(output_error(&self.out_dir))?;
        self.stats.cost = Some(cost);
        let summary = self.stats.render();
        self.sink
            .finish(&summary)
            .map_err(output_error(&self.out_dir))?;
        Ok(self.stats)
    }

    fn fail(&mut self, e: io::Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    fn reject(&mut self, mut r: Rejected) {
        *self.stats.rejected.entry(r.reason.code()).or_default() += 1;
        tracing::debug!(position = %r.pos, reason = r.reason.code(), "record rejected");
        mask_rejected(&self.setup, &mut r);
        if let Err(e) = self.sink.write_rejected(&r) {
            self.fail(e);
        }
    }

    fn row(&mut self, row: RowItem) {
        self.cost.row(row.table, &row.json);
        let table = &self.setup.schemas.tables[row.table];
        if !row.notes.is_empty() {
            for n in &row.notes {
                *self
                    .stats
                    .notes
                    .entry((table.table.clone(), n.column.clone(), n.kind.code()))
                    .or_default() += 1;
            }
            let truncated = row
                .notes
                .iter()
                .any(|n| matches!(n.kind, NoteKind::Truncated { .. }));
            let raw = truncated.then(|| {
                let text = row.text.as_deref().unwrap_or_default();
                self.setup
                    .redactor
                    .redact_raw(text)
                    .unwrap_or_else(|| text.to_string())
            });
            if let Err(e) =
                self.sink
                    .write_notes(&row.pos, &table.table, &row.notes, raw.as_deref())
            {
                self.fail(e);
            }
        }
        match self.builders[row.table].push(row.json.as_bytes()) {
            Ok(Some(body)) => self.body(row.table, body),
            Ok(None) => {}
            Err(too_large) => self.reject(Rejected {
                pos: row.pos,
                reason: RejectReason::RowTooLarge {
                    bytes: too_large.bytes,
                    limit: too_large.limit,
                },
                raw: row.text.unwrap_or_default().into_bytes(),
            }),
        }
    }

    /// Writes a body, split further if its gzip form would cross the limit (only incompressible
    /// data can do that, but the limit holds for both forms).
    fn body(&mut self, table: usize, body: Body) {
        let gz = match body.gzip() {
            Ok(gz) => gz,
            Err(e) => return self.fail(e),
        };
        let limit = self.builders[table].limit();
        if gz.len() > limit
            && let Some((a, b)) = body.split()
        {
            self.body(table, a);
            self.body(table, b);
            return;
        }
        let stream = &self.setup.schemas.tables[table].stream;
        if let Err(e) = self.sink.write_body(table, stream, &body) {
            return self.fail(e);
        }
        self.stats.tables[table].add_body(body.rows(), body.bytes.len(), gz.len());
    }
}

fn ack_now(ack: Option<crate::ack::Ack>) {
    if let Some(ack) = ack {
        ack.ack();
    }
}

fn output_error(out_dir: &Path) -> impl Fn(io::Error) -> RunError + '_ {
    move |error| RunError::Output {
        path: out_dir.to_path_buf(),
        error,
    }
}
