//! The front end: loading what a run needs, and [`drive`], which every command runs (intake →
//! decode → route → map, with redaction) inside the one wiring of `run::run`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::ack::Ack;
use crate::config::{Config, ConfigError};
use crate::ops::shutdown::Shutdown;
use crate::record::{Position, Rejected};
use crate::schema::{SchemaError, SchemaErrors, SchemaFiles, SchemaSet};
use crate::sources::file::{Exclude, Framed, ReadTotals, SourceError, read_inputs};
use crate::sources::unit::Unit;
use crate::stages::decode::{Decoded, Fields, decode_unit};
use crate::stages::map::{MappedRow, Mapper};
use crate::stages::policy::Policy;
use crate::stages::redact::Redactor;
use crate::stages::route::route;
use crate::state::dlq::DeadLetter;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("schemas are invalid; fix these and start again:\n{0}")]
    Schema(#[from] SchemaErrors),
}

/// Everything loaded and validated before any record is read.
#[derive(Clone)]
pub struct Setup {
    pub config: Config,
    pub schemas: Arc<SchemaSet>,
    pub redactor: Redactor,
    /// The cost policy (`policy.yaml`); its counts are the run's.
    pub policy: Arc<Policy>,
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
        let policy = Policy::load(&files, &schemas)?;
        Ok(Self {
            config,
            schemas: Arc::new(schemas),
            redactor,
            policy: Arc::new(policy),
            schema_origin: files.origin,
        })
    }

    /// What turns a record into rows: the mapper (with redaction) and the policy.
    pub fn front(&self) -> Front {
        Front {
            mapper: Mapper::new(
                self.schemas.clone(),
                self.redactor.clone(),
                self.config.map_options(),
            ),
            policy: self.policy.clone(),
        }
    }
}

/// The stages a record passes after decoding: routed and mapped, then the policy.
pub struct Front {
    pub mapper: Mapper,
    pub policy: Arc<Policy>,
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

/// Decode, route, map and apply the policy to one unit of input.
pub fn process_unit<'a>(
    front: &Front,
    text: &'a str,
    pos: &Position,
    emit: &mut dyn FnMut(Output<'a>),
) {
    process_unit_admitting(front, text, pos, &mut |_| true, emit);
}

/// As [`process_unit`], skipping records `admit` refuses (duplicates by record Id).
pub fn process_unit_admitting<'a>(
    front: &Front,
    text: &'a str,
    pos: &Position,
    admit: &mut dyn FnMut(&Fields) -> bool,
    emit: &mut dyn FnMut(Output<'a>),
) {
    let mapper = &front.mapper;
    decode_unit(text, pos, &mut |decoded| match decoded {
        Decoded::Record(_, fields, _) if !admit(&fields) => {}
        Decoded::Record(pos, fields, text) => {
            let mapped = route(mapper.schemas(), fields)
                .and_then(|routed| mapper.map(&routed, text).map(|row| (routed, row)));
            match mapped {
                Ok((_, row)) if front.policy.is_empty() => emit(Output::Row { pos, row, text }),
                Ok((routed, row)) => front.policy.apply(&routed.root, row, &mut |row| {
                    emit(Output::Row {
                        pos: pos.clone(),
                        row,
                        text,
                    })
                }),
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
    /// Rows already mapped, taken from the dead-letter store for `dlq replay`: they skip
    /// decoding and mapping.
    DeadLetters(Vec<DeadLetter>),
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
    let front = setup.front();
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
                    Framed::Unit { pos, text } => process_unit(&front, text, &pos, &mut |out| {
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
                            &front,
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
        Intake::DeadLetters(letters) => {
            let mut totals = ReadTotals::default();
            let source: std::sync::Arc<str> = "dead letters".into();
            for (line, letter) in letters.into_iter().enumerate() {
                let json = letter.row.get();
                totals.bytes += json.len() as u64;
                let pos = Position::new(source.clone(), line as u64 + 1);
                let out = match setup.schemas.table_by_name(&letter.table) {
                    Some(table) => Output::Row {
                        pos,
                        row: MappedRow {
                            table,
                            json: json.to_string(),
                            notes: Vec::new(),
                        },
                        text: json,
                    },
                    None => Output::Rejected(Rejected {
                        pos,
                        reason: crate::record::RejectReason::Unreadable(format!(
                            "dead letter of table {}, which the schemas no longer have",
                            letter.table
                        )),
                        raw: json.as_bytes().to_vec(),
                    }),
                };
                if !emit(out, None) {
                    break;
                }
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
