//! Routing: which table a decoded record belongs to. Audit records go to the audit table;
//! Defender Streaming API rows go by `category`. Anything else is refused with a reason.

use crate::decode::{Fields, json_kind};
use crate::map::json::decode_string;
use crate::record::RejectReason;
use crate::schema::{InputKind, SchemaSet};

/// A record with its table and the object its columns read from.
pub struct Routed<'a> {
    pub table: usize,
    /// The fields the columns read (`properties` of a Defender row; the record itself otherwise).
    pub root: Fields<'a>,
    /// The other top-level fields of a Defender row (time, tenantId, category, ...).
    pub envelope: Fields<'a>,
}

pub fn route<'a>(schemas: &SchemaSet, record: Fields<'a>) -> Result<Routed<'a>, RejectReason> {
    if let Some(category) = record.get("category") {
        let name = decode_string(category.get()).ok_or_else(|| {
            RejectReason::BadDefenderRow(format!(
                "a category that is {}",
                json_kind(category.get())
            ))
        })?;
        let table = schemas
            .table_for_category(&name)
            .ok_or_else(|| RejectReason::UnknownCategory(name.into_owned()))?;
        let root_key = match &schemas.tables[table].input {
            InputKind::Defender { root, .. } => root.as_str(),
            InputKind::Audit => "properties",
        };
        let Some(root_raw) = record.get(root_key) else {
            return Err(RejectReason::BadDefenderRow(format!(
                "no {root_key:?} object"
            )));
        };
        if !root_raw.get().starts_with('{') {
            return Err(RejectReason::BadDefenderRow(format!(
                "{root_key:?} that is {}",
                json_kind(root_raw.get())
            )));
        }
        let root = Fields::parse(root_raw.get())
            .map_err(|e| RejectReason::UnparsableJson(e.to_string()))?;
        let mut envelope = record;
        envelope.0.retain(|(k, _)| k != root_key);
        return Ok(Routed {
            table,
            root,
            envelope,
        });
    }
    if record.get("RecordType").is_some() || record.get("CreationTime").is_some() {
        let table = schemas
            .audit_table()
            .ok_or_else(|| RejectReason::NoTable("audit records".into()))?;
        return Ok(Routed {
            table,
            root: record,
            envelope: Fields::default(),
        });
    }
    Err(RejectReason::Unroutable)
}
