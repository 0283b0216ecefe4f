//! Mapping: a routed record to one row of its table, encoded as the JSON object the sink sends.
//! Driven entirely by the table schema; fields without a column, and values that fail conversion,
//! go to the schema's unmapped (dynamic) column so nothing the source sent is lost.

pub mod convert;
pub mod datetime;
pub mod json;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::record::RejectReason;
use crate::schema::{ColumnType, ENVELOPE_PREFIX, SchemaSet, TableSchema, envelope_key};
use crate::stages::redact::Redactor;
use crate::stages::route::Routed;
use convert::{Ctx, write_value};
use json::{MAX_DEPTH, decode_string, push_compact, push_json_string};

/// Something the mapper did to a value that the user should be able to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoteKind {
    /// The value did not fit the column type and was kept in the unmapped column as text.
    Unconverted {
        field: String,
        expected: ColumnType,
        found: &'static str,
    },
    /// The value was longer than the field limit and was cut, with a marker.
    Truncated { original_bytes: usize },
    /// A redaction rule masked part of the value.
    Redacted { rule: String },
    /// The row had none of the preferred sources (or none valid); a later one was used, e.g.
    /// the Defender envelope's `time` for `TimeGenerated`.
    Fallback { wanted: String, used: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub column: String,
    pub kind: NoteKind,
}

impl NoteKind {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unconverted { .. } => "unconverted",
            Self::Truncated { .. } => "truncated",
            Self::Redacted { .. } => "redacted",
            Self::Fallback { .. } => "fallback",
        }
    }
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            NoteKind::Unconverted {
                field,
                expected,
                found,
            } => write!(
                f,
                "column {} ({expected}): source field {field} held {found} that does not convert; kept as text in the unmapped column",
                self.column
            ),
            NoteKind::Truncated { original_bytes } => write!(
                f,
                "column {}: value of {original_bytes} bytes truncated to the field limit",
                self.column
            ),
            NoteKind::Redacted { rule } => {
                write!(f, "column {}: masked by redaction rule {rule}", self.column)
            }
            NoteKind::Fallback { wanted, used } => write!(
                f,
                "column {}: source field {wanted} is missing, null or invalid; filled from {used}",
                self.column
            ),
        }
    }
}

/// Where a column's value comes from: a field of the row, or of a Defender row's envelope.
#[derive(Debug, Clone, Copy)]
enum Source {
    Row(usize),
    Envelope(usize),
}

/// The most preferred source of column `col` ranked after `after` (any, with None) that is
/// present and not null: the row's fields first, then the envelope's. Only taken when the best
/// source is missing or failed, so it may scan.
fn next_source(
    schema: &TableSchema,
    col: usize,
    routed: &Routed<'_>,
    after: Option<u8>,
) -> Option<(u8, Source)> {
    let later = |rank: u8| after.is_none_or(|a| rank > a);
    let mut best: Option<(u8, Source)> = None;
    for (fi, (name, value)) in routed.root.0.iter().enumerate() {
        if value.get() == "null" || (!schema.drop.is_empty() && schema.is_dropped(name)) {
            continue;
        }
        for &(c, rank) in schema.columns_for(name) {
            if c == col && later(rank) && best.is_none_or(|(r, _)| rank < r) {
                best = Some((rank, Source::Row(fi)));
            }
        }
    }
    if best.is_some() {
        return best;
    }
    let column = &schema.columns[col];
    for (rank, source) in column.from.iter().enumerate() {
        let rank = u8::try_from(rank).unwrap_or(u8::MAX);
        let Some(key) = envelope_key(source) else {
            continue;
        };
        if !later(rank) {
            continue;
        }
        let found = routed
            .envelope
            .0
            .iter()
            .position(|(k, v)| k == key && v.get() != "null");
        if let Some(ei) = found {
            return Some((rank, Source::Envelope(ei)));
        }
    }
    None
}

/// One mapped row: its table and the JSON object text the sink sends.
#[derive(Debug, Clone)]
pub struct MappedRow {
    pub table: usize,
    pub json: String,
    pub notes: Vec<Note>,
}

#[derive(Debug, Clone)]
pub struct MapOptions {
    /// Longest value a field may hold; longer ones are truncated with a marker (Logs Ingestion
    /// API: 64 KB per field value, cut silently by the service otherwise).
    pub max_field_bytes: usize,
}

impl Default for MapOptions {
    fn default() -> Self {
        Self {
            max_field_bytes: 64_000,
        }
    }
}

pub struct Mapper {
    schemas: Arc<SchemaSet>,
    redactor: Redactor,
    /// Used for records the redactor's prefilter clears.
    no_redaction: Redactor,
    options: MapOptions,
}

/// Keys already written into the unmapped object, so a collision gets a suffix (`key_2`), not a
/// duplicate key. Hashed, with the next suffix per key remembered: a record with thousands of
/// repeated keys must stay linear.
#[derive(Default)]
struct BagKeys {
    written: HashSet<String>,
    next_suffix: HashMap<String, usize>,
}

impl BagKeys {
    fn unique(&mut self, key: &str) -> String {
        if self.written.insert(key.to_string()) {
            return key.to_string();
        }
        let n = self.next_suffix.entry(key.to_string()).or_insert(2);
        loop {
            let candidate = format!("{key}_{n}");
            *n += 1;
            if self.written.insert(candidate.clone()) {
                return candidate;
            }
        }
    }
}

/// Adds `key: raw` to the unmapped object; a value nested deeper than [`MAX_DEPTH`] is kept as
/// its JSON text. Returns false in that case so the caller can note it.
fn push_bag_entry(bag: &mut String, keys: &mut BagKeys, key: &str, raw: &str) -> bool {
    bag.push(if bag.len() > 1 { ',' } else { '{' });
    push_json_string(bag, &keys.unique(key));
    bag.push(':');
    let mark = bag.len();
    if push_compact(bag, raw) <= MAX_DEPTH {
        return true;
    }
    let text = bag.split_off(mark);
    push_json_string(bag, &text);
    false
}

/// What the column pass leaves for the unmapped column to collect.
struct Unmapped<'a> {
    /// Each column's most preferred row field present: (rank, field index).
    slots: &'a [Option<(u8, usize)>],
    /// Row fields a column took (or dropped): not repeated in the unmapped column.
    used: &'a [bool],
    /// Envelope fields a column took as its fallback.
    envelope_used: &'a [bool],
    /// Row fields whose value failed to convert: (field index, column).
    failed: &'a [(usize, usize)],
}

impl Mapper {
    pub fn new(schemas: Arc<SchemaSet>, redactor: Redactor, options: MapOptions) -> Self {
        Self {
            schemas,
            redactor,
            no_redaction: Redactor::none(),
            options,
        }
    }

    pub fn schemas(&self) -> &Arc<SchemaSet> {
        &self.schemas
    }

    /// Maps one record; `raw` is its JSON text, which decides whether redaction has anything to
    /// look at (most records: no).
    pub fn map(&self, routed: &Routed<'_>, raw: &str) -> Result<MappedRow, RejectReason> {
        let schema: &TableSchema = &self.schemas.tables[routed.table];
        let root = &routed.root.0;

        // Which field feeds each column: the most preferred source present wins.
        let mut slots: Vec<Option<(u8, usize)>> = vec![None; schema.columns.len()];
        let mut used = vec![false; root.len()];
        for (fi, (name, value)) in root.iter().enumerate() {
            if !schema.drop.is_empty() && schema.is_dropped(name) {
                used[fi] = true;
                continue;
            }
            // A null never takes a column from a present value of a less preferred source.
            if value.get() == "null" {
                used[fi] = true;
                continue;
            }
            for &(col, rank) in schema.columns_for(name) {
                if slots[col].is_none_or(|(r, _)| rank < r) {
                    slots[col] = Some((rank, fi));
                }
            }
        }
        for (_, fi) in slots.iter().flatten() {
            used[*fi] = true;
        }

        let mut notes = Vec::new();
        let mut hits = Vec::new();
        let redactor = if self.redactor.record_may_match(raw) {
            &self.redactor
        } else {
            &self.no_redaction
        };
        let mut ctx = Ctx {
            redactor,
            max_field_bytes: self.options.max_field_bytes,
            notes: &mut notes,
            hits: &mut hits,
            bool_text: schema.bool_text,
        };
        let mut out =
            String::with_capacity(root.iter().map(|(_, v)| v.get().len() + 24).sum::<usize>() + 64);
        out.push('{');
        let mut failed: Vec<(usize, usize)> = Vec::new();
        let mut envelope_used = vec![false; routed.envelope.0.len()];
        for (col, column) in schema.columns.iter().enumerate() {
            if col == schema.unmapped {
                continue;
            }
            // The most preferred present source first; when it fails to convert (or none of
            // the row's fields is there), the next ones in `from` order, envelope last.
            let has_fallbacks = column.from.len() > 1;
            let mut candidate = slots[col].map(|(rank, fi)| (rank, Source::Row(fi)));
            // No row field at all (the slots saw every one): only the envelope may have it.
            if candidate.is_none() && column.reads_envelope {
                candidate = next_source(schema, col, routed, None);
            }
            let mut written = false;
            let mut failure: Option<(String, &'static str)> = None;
            while let Some((rank, source)) = candidate {
                let raw = match source {
                    Source::Row(fi) => root[fi].1.get(),
                    Source::Envelope(ei) => routed.envelope.0[ei].1.get(),
                };
                // Named only when a note needs it: most columns take their first source.
                let field = || match source {
                    Source::Row(fi) => root[fi].0.to_string(),
                    Source::Envelope(ei) => {
                        format!("{ENVELOPE_PREFIX}{}", routed.envelope.0[ei].0)
                    }
                };
                let mark = out.len();
                out.push('"');
                out.push_str(&column.name);
                out.push_str("\":");
                match write_value(&mut out, column, raw, &mut ctx) {
                    Ok(()) => {
                        out.push(',');
                        written = true;
                        match source {
                            Source::Row(fi) => used[fi] = true,
                            Source::Envelope(ei) => {
                                envelope_used[ei] = true;
                                ctx.notes.push(Note {
                                    column: column.name.clone(),
                                    kind: NoteKind::Fallback {
                                        wanted: column.from[..usize::from(rank)].join(" or "),
                                        used: field(),
                                    },
                                });
                            }
                        }
                        break;
                    }
                    Err(e) => {
                        out.truncate(mark);
                        let field = field();
                        ctx.notes.push(Note {
                            column: column.name.clone(),
                            kind: NoteKind::Unconverted {
                                field: field.clone(),
                                expected: column.ty,
                                found: e.found,
                            },
                        });
                        if let Source::Row(fi) = source {
                            // Kept once, as the failed value, not also as an unused field.
                            used[fi] = true;
                            failed.push((fi, col));
                        }
                        failure.get_or_insert((field, e.found));
                    }
                }
                candidate = if has_fallbacks {
                    next_source(schema, col, routed, Some(rank))
                } else {
                    None
                };
            }
            if !written && column.required {
                return Err(RejectReason::RequiredColumn {
                    column: column.name.clone(),
                    detail: match failure {
                        Some((field, found)) => format!(
                            "source field {field} holds {found} that is not a valid {}",
                            column.ty
                        ),
                        None => format!(
                            "source field {} is missing or null",
                            column.from.join(" or ")
                        ),
                    },
                });
            }
        }

        let unmapped = Unmapped {
            slots: &slots,
            used: &used,
            envelope_used: &envelope_used,
            failed: &failed,
        };
        self.write_unmapped(&mut out, schema, routed, &unmapped, &mut ctx);
        if out.ends_with(',') {
            out.pop();
        }
        out.push('}');
        Ok(MappedRow {
            table: routed.table,
            json: out,
            notes,
        })
    }

    /// Builds the unmapped column: the column's own source value when it is an object (EmailEvents
    /// has a real AdditionalFields), the Defender envelope, unused fields, then failed values.
    fn write_unmapped(
        &self,
        out: &mut String,
        schema: &TableSchema,
        routed: &Routed<'_>,
        u: &Unmapped<'_>,
        ctx: &mut Ctx<'_>,
    ) {
        let Unmapped {
            slots,
            used,
            envelope_used,
            failed,
        } = *u;
        let root = &routed.root.0;
        let column = schema.unmapped_column();
        let mut bag = String::new();
        let mut keys = BagKeys::default();
        let mut add = |key: &str, raw: &str| {
            if !push_bag_entry(&mut bag, &mut keys, key, raw) {
                ctx.notes.push(Note {
                    column: column.name.clone(),
                    kind: NoteKind::Unconverted {
                        field: key.to_string(),
                        expected: ColumnType::Dynamic,
                        found: "JSON nested too deeply",
                    },
                });
            }
        };
        if let Some((_, fi)) = slots[schema.unmapped] {
            let raw = root[fi].1.get();
            // A JSON-in-a-string object (EmailEvents AdditionalFields) is opened up; anything
            // else that is not an object is kept under its own name.
            let parsed_string = (raw.starts_with('"'))
                .then(|| decode_string(raw))
                .flatten()
                .filter(|s| s.trim_start().starts_with('{'));
            let object = match &parsed_string {
                Some(s) => crate::stages::decode::Fields::parse(s).ok(),
                None if raw.starts_with('{') => crate::stages::decode::Fields::parse(raw).ok(),
                None => None,
            };
            match object {
                Some(fields) => {
                    for (k, v) in &fields.0 {
                        add(k, v.get());
                    }
                }
                None if raw != "null" => add(&root[fi].0, raw),
                None => {}
            }
        }
        for (ei, (k, v)) in routed.envelope.0.iter().enumerate() {
            if v.get() != "null" && !envelope_used[ei] {
                add(k, v.get());
            }
        }
        for (fi, (k, v)) in root.iter().enumerate() {
            if !used[fi] && v.get() != "null" {
                add(k, v.get());
            }
        }
        let mut done: Vec<usize> = Vec::new();
        for &(fi, _col) in failed {
            if done.contains(&fi) {
                continue;
            }
            done.push(fi);
            let raw = root[fi].1.get();
            let mut text = String::new();
            match decode_string(raw) {
                Some(s) => push_json_string(&mut text, &s),
                None => {
                    let mut compact = String::new();
                    push_compact(&mut compact, raw);
                    push_json_string(&mut text, &compact);
                }
            }
            add(&root[fi].0, &text);
        }
        if bag.is_empty() {
            return;
        }
        bag.push('}');
        out.push('"');
        out.push_str(&column.name);
        out.push_str("\":");
        ctx.push_dynamic(out, &column.name, &bag);
        out.push(',');
    }
}
