//! Wiring: loading what a run needs; the one front end every command drives, [`drive`]
//! (intake → decode → route → map, with redaction), which `run` feeds to the spool and the
//! workspace sink and dry-run to the dry-run sink; and the dry-run consumer itself.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::ack::Ack;
use crate::config::{Config, ConfigError};
use crate::ops::shutdown::Shutdown;
use crate::ops::stats::Stats;
use crate::record::{Position, RejectReason, Rejected};
use crate::schema::{SchemaError, SchemaErrors, SchemaFiles, SchemaSet};
use crate::sinks::batch::{Body, BodyBuilder};
use crate::sinks::dry_run::DryRunSink;
use crate::sources::file::{Exclude, Framed, ReadTotals, SourceError, read_inputs};
use crate::sources::unit::Unit;
use crate::stages::decode::{Decoded, Fields, decode_unit};
use crate::stages::map::{MappedRow, Mapper};
use crate::stages::redact::Redactor;
use crate::stages::route::route;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("schemas are invalid; fix these and start again:\n{0}")]
    Schema(#[from] SchemaErrors),
}

/// Everything loaded and validated before any record is read.
pub struct Setup {
    pub config: Config,
    pub schemas: Arc<SchemaSet>,
    pub redactor: Redactor,
    /// Where the schemas came from, for messages.
    pub schema_origin: String,
}

impl Setup {
    /// Loads config (file + environment), schemas (directory or embedded) and redaction rules.
    /// `schemas_dir` overrides the config's `schemas_dir`.
    pub fn load(
        config_path: Option<&Path>,
        schemas_dir: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, SetupError> {
        let config = Config::load(config_path, env)?;
        let dir = schemas_dir.or(config.schemas_dir.as_deref());
        let files = match dir {
            Some(d) => SchemaFiles::from_dir(d)?,
            None => SchemaFiles::embedded(),
        };
        let schemas = SchemaSet::from_files(&files)?;
        let rules_origin = config_path.map_or_else(
            || "config redaction.rules".to_string(),
            |p| format!("{} (redaction.rules)", p.display()),
        );
        let redactor = Redactor::from_files(&files, &config.redaction.rules, &rules_origin)?;
        let problems = redactor.unknown_columns(&schemas);
        if !problems.is_empty() {
            return Err(SchemaErrors(
                problems
                    .into_iter()
                    .map(|message| SchemaError {
                        file: rules_origin.clone(),
                        line: None,
                        message,
                    })
                    .collect(),
            )
            .into());
        }
        Ok(Self {
            config,
            schemas: Arc::new(schemas),
            redactor,
            schema_origin: files.origin,
        })
    }

    pub fn mapper(&self) -> Mapper {
        Mapper::new(
            self.schemas.clone(),
            self.redactor.clone(),
            self.config.map_options(),
        )
    }
}

/// What processing a unit of input yields.
pub enum Output<'a> {
    Row {
        pos: Position,
        row: MappedRow,
        /// The record's original text, kept for a rejection further down.
        text: &'a str,
    },
    Rejected(Rejected),
}

/// Decode, route and map one unit of input.
pub fn process_unit<'a>(
    mapper: &Mapper,
    text: &'a str,
    pos: &Position,
    emit: &mut dyn FnMut(Output<'a>),
) {
    process_unit_admitting(mapper, text, pos, &mut |_| true, emit);
}

/// As [`process_unit`], skipping records `admit` refuses (duplicates by record Id).
pub fn process_unit_admitting<'a>(
    mapper: &Mapper,
    text: &'a str,
    pos: &Position,
    admit: &mut dyn FnMut(&Fields) -> bool,
    emit: &mut dyn FnMut(Output<'a>),
) {
    decode_unit(text, pos, &mut |decoded| match decoded {
        Decoded::Record(_, fields, _) if !admit(&fields) => {}
        Decoded::Record(pos, fields, text) => {
            let mapped =
                route(mapper.schemas(), fields).and_then(|routed| mapper.map(&routed, text));
            match mapped {
                Ok(row) => emit(Output::Row { pos, row, text }),
                Err(reason) => emit(Output::Rejected(Rejected {
                    pos,
                    reason,
                    raw: text.as_bytes().to_vec(),
                })),
            }
        }
        Decoded::Rejected(pos, reason, text) => emit(Output::Rejected(Rejected {
            pos,
            reason,
            raw: text.as_bytes().to_vec(),
        })),
    });
}

/// Where a pipeline reads from.
pub enum Intake {
    /// Files, directories or stdin, read to the end.
    Files(Vec<PathBuf>),
    /// Units from the live sources (Management Activity API, Event Hubs, Storage), until every
    /// source has stopped.
    Units(tokio::sync::mpsc::Receiver<Unit>),
}

/// The front end every command runs, on a blocking thread: reads `intake`, decodes, routes and
/// maps each record, and hands each row or refusal to `emit` with, for a live source's unit, a
/// handle of the unit's acknowledgement (acknowledged by whoever makes it safe). `emit`
/// returning false stops the reading: a unit being read then stays unacknowledged and is read
/// again next time. Files stop being mapped once `stop` is set (they commit no position).
/// Records of units already seen (`Unit::dedupe`) are skipped.
pub fn drive(
    setup: &Setup,
    intake: Intake,
    exclude: &Exclude,
    stop: &Shutdown,
    emit: &mut dyn FnMut(Output<'_>, Option<Ack>) -> bool,
) -> Result<ReadTotals, SourceError> {
    let mapper = setup.mapper();
    match intake {
        Intake::Files(inputs) => {
            let file_options = setup.config.file_options();
            let mut open = true;
            read_inputs(
                &inputs,
                &file_options,
                exclude,
                &mut |framed| match framed {
                    Framed::Unit { .. } if stop.is_set() || !open => {}
                    Framed::Unit { pos, text } => process_unit(&mapper, text, &pos, &mut |out| {
                        open = open && emit(out, None);
                    }),
                    Framed::Rejected(r) => open = open && emit(Output::Rejected(r), None),
                },
            )
        }
        Intake::Units(mut units) => {
            let mut totals = ReadTotals::default();
            while let Some(mut unit) = units.blocking_recv() {
                totals.files += 1;
                let hold = &unit.ack;
                let mut open = true;
                match &unit.content {
                    Ok(text) => {
                        totals.bytes += text.len() as u64;
                        process_unit_admitting(
                            &mapper,
                            text,
                            &unit.pos,
                            &mut |fields| unit.dedupe.admit(fields),
                            &mut |out| open = open && emit(out, Some(hold.attach())),
                        );
                    }
                    Err(refused) => {
                        open = emit(Output::Rejected(refused.clone()), Some(hold.attach()));
                    }
                }
                if !open {
                    return Ok(totals);
                }
                unit.ack.ack();
            }
            Ok(totals)
        }
    }
}

/// Masks secrets in a refused record's text before it is written anywhere. Bytes that are not
/// UTF-8 are masked on a lossy copy: if a rule masks anything, the masked copy (invalid bytes
/// shown as U+FFFD) replaces them; otherwise they stay as they were.
pub fn mask_rejected(setup: &Setup, r: &mut Rejected) {
    let text = String::from_utf8_lossy(&r.raw);
    if let Some(masked) = setup.redactor.redact_raw(&text) {
        r.raw = masked.into_bytes();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("dry-run output {path}: {error}")]
    Output { path: PathBuf, error: io::Error },
}

struct DryRun<'s> {
    setup: &'s Setup,
    sink: DryRunSink,
    builders: Vec<BodyBuilder>,
    stats: Stats,
    error: Option<io::Error>,
}

impl DryRun<'_> {
    fn fail(&mut self, e: io::Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    fn reject(&mut self, mut r: Rejected) {
        *self.stats.rejected.entry(r.reason.code()).or_default() += 1;
        tracing::debug!(position = %r.pos, reason = r.reason.code(), "record rejected");
        mask_rejected(self.setup, &mut r);
        if let Err(e) = self.sink.write_rejected(&r) {
            self.fail(e);
        }
    }

    fn row(&mut self, pos: Position, row: MappedRow, text: &str) {
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
                .any(|n| matches!(n.kind, crate::stages::map::NoteKind::Truncated { .. }));
            let raw = truncated.then(|| {
                self.setup
                    .redactor
                    .redact_raw(text)
                    .unwrap_or_else(|| text.to_string())
            });
            if let Err(e) = self
                .sink
                .write_notes(&pos, &table.table, &row.notes, raw.as_deref())
            {
                self.fail(e);
            }
        }
        match self.builders[row.table].push(row.json.as_bytes()) {
            Ok(Some(body)) => self.body(row.table, body),
            Ok(None) => {}
            Err(too_large) => self.reject(Rejected {
                pos,
                reason: RejectReason::RowTooLarge {
                    bytes: too_large.bytes,
                    limit: too_large.limit,
                },
                raw: text.as_bytes().to_vec(),
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

impl<'s> DryRun<'s> {
    fn create(setup: &'s Setup, out_dir: &Path) -> Result<Self, PipelineError> {
        let schemas = &setup.schemas;
        let streams: Vec<String> = schemas.tables.iter().map(|t| t.stream.clone()).collect();
        let sink = DryRunSink::create(out_dir, &streams).map_err(output_error(out_dir))?;
        let limit = setup.config.batch.max_body_bytes;
        Ok(DryRun {
            setup,
            sink,
            builders: schemas
                .tables
                .iter()
                .map(|_| BodyBuilder::new(limit))
                .collect(),
            stats: Stats::for_tables(schemas, limit),
            error: None,
        })
    }

    fn output(&mut self, out: Output<'_>) {
        match out {
            Output::Row { pos, row, text } => self.row(pos, row, text),
            Output::Rejected(r) => self.reject(r),
        }
    }

    /// Writes the partly filled bodies and the summary.
    fn finish(mut self, out_dir: &Path) -> Result<Stats, PipelineError> {
        for table in 0..self.builders.len() {
            if let Some(body) = self.builders[table].take() {
                self.body(table, body);
            }
        }
        if let Some(e) = self.error.take() {
            return Err(output_error(out_dir)(e));
        }
        let summary = self.stats.render();
        self.sink.finish(&summary).map_err(output_error(out_dir))?;
        Ok(self.stats)
    }
}

fn output_error(out_dir: &Path) -> impl Fn(io::Error) -> PipelineError + '_ {
    move |error| PipelineError::Output {
        path: out_dir.to_path_buf(),
        error,
    }
}

/// Dry-run: the pipeline of [`drive`] with the dry-run sink: maps the intake and writes what
/// would be sent into `out_dir`, committing nothing. Blocking: run it off the async runtime for
/// live sources. Returns the run's counts.
pub fn dry_run(setup: &Setup, intake: Intake, out_dir: &Path) -> Result<Stats, PipelineError> {
    let mut run = DryRun::create(setup, out_dir)?;
    let exclude = Exclude::new(&[out_dir]);
    let totals = drive(
        setup,
        intake,
        &exclude,
        &Shutdown::never(),
        &mut |out, ack| {
            run.output(out);
            // Nothing to make durable: a live source may count its unit done (dry-run commits no
            // position anyway).
            if let Some(ack) = ack {
                ack.ack();
            }
            true
        },
    )?;
    run.stats.files = totals.files;
    run.stats.bytes_read = totals.bytes;
    run.finish(out_dir)
}
