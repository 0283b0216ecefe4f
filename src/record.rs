//! What flows between the stages: where a record came from, and why a record was refused.

use std::fmt;
use std::sync::Arc;

/// Where a record came from: a file (or stdin), the line its text starts on, and its index inside
/// that line or document when one holds many (a content blob array, an Event Hubs body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub source: Arc<str>,
    pub line: u64,
    pub index: u32,
}

impl Position {
    pub fn new(source: Arc<str>, line: u64) -> Self {
        Self {
            source,
            line,
            index: 0,
        }
    }

    pub fn at(&self, line: u64, index: u32) -> Self {
        Self {
            source: self.source.clone(),
            line,
            index,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.source, self.line)?;
        if self.index > 0 {
            write!(f, " (record {})", self.index)?;
        }
        Ok(())
    }
}

/// Why a record (or a piece of input) was refused. Every variant says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("input could not be read: {0}")]
    Unreadable(String),
    #[error("the input holds no records (empty file)")]
    EmptyInput,
    #[error(
        "invalid UTF-8 at byte {offset} of the record (shown as U+0001 in the raw text); JSON must be UTF-8 (check the exporter's encoding)"
    )]
    InvalidUtf8 { offset: usize },
    #[error("not valid JSON: {0}")]
    UnparsableJson(String),
    #[error("JSON array truncated or malformed after {kept} complete records: {error}")]
    TruncatedArray { kept: usize, error: String },
    #[error("record is {0}, not a JSON object; each record must be an object")]
    NotAnObject(&'static str),
    #[error(
        "Defender row of unknown category {0:?}; only categories with a table schema are routed (add a schema with input.category {0:?} to collect them)"
    )]
    UnknownCategory(String),
    #[error(
        "Defender row has {0}; expected the Streaming API shape {{category, properties: {{...}}}}"
    )]
    BadDefenderRow(String),
    #[error(
        "object is neither an audit record (no RecordType or CreationTime) nor a Defender row (no category)"
    )]
    Unroutable,
    #[error("no table schema takes {0}; add one to the schema directory")]
    NoTable(String),
    #[error("required column {column} could not be filled: {detail}")]
    RequiredColumn { column: String, detail: String },
    #[error(
        "mapped row is {bytes} bytes, over the {limit}-byte request limit even after truncating long fields; it cannot be sent"
    )]
    RowTooLarge { bytes: usize, limit: usize },
    #[error("line is longer than {limit} bytes (input.max_record_bytes); it was skipped")]
    LineTooLong { limit: usize },
}

impl RejectReason {
    /// A stable short code for counting and filtering.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unreadable(_) => "unreadable_input",
            Self::EmptyInput => "empty_input",
            Self::InvalidUtf8 { .. } => "invalid_utf8",
            Self::UnparsableJson(_) => "unparsable_json",
            Self::TruncatedArray { .. } => "truncated_json",
            Self::NotAnObject(_) => "not_an_object",
            Self::UnknownCategory(_) => "unknown_category",
            Self::BadDefenderRow(_) => "bad_defender_row",
            Self::Unroutable => "unroutable",
            Self::NoTable(_) => "no_table",
            Self::RequiredColumn { .. } => "required_column",
            Self::RowTooLarge { .. } => "row_too_large",
            Self::LineTooLong { .. } => "line_too_long",
        }
    }
}

/// A refused record, kept with its original bytes so nothing is lost in silence.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub pos: Position,
    pub reason: RejectReason,
    pub raw: Vec<u8>,
}
