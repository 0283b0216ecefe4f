//! Routing: which table a decoded record belongs to. Audit records go to the audit table;
//! Defender Streaming API rows go by `category`. Anything else is refused with a reason.

use crate::record::RejectReason;
use crate::schema::{InputKind, SchemaSet};
use crate::stages::decode::{Fields, json_kind};
use crate::stages::map::json::decode_string;

/// A record with its table and the object its columns read from.
pub struct Routed<'a> {
    pub table: usize,
    /// The fields the columns read (`properties` of a Defender row; the record itself otherwise).
    pub root: Fields<'a>,
    /// The other top-level fields of a Defender row (time, tenantId, category, ...).
    pub envelope: Fields<'a>,
}

pub fn route<'a>(schemas: &SchemaSet, record: Fields<'a>) -> Result<Routed<'a>, RejectReason> {
    // Audit records first: they carry RecordType and CreationTime, and a custom field that happens
    // to be called "category" must not turn one into a Defender row.
    let is_audit = record.get("RecordType").is_some() && record.get("CreationTime").is_some();
    if !is_audit && let Some(category) = record.get("category") {
        return route_defender(schemas, record, category);
    }
    if is_audit || record.get("RecordType").is_some() || record.get("CreationTime").is_some() {
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

fn route_defender<'a>(
    schemas: &SchemaSet,
    mut record: Fields<'a>,
    category: &'a serde_json::value::RawValue,
) -> Result<Routed<'a>, RejectReason> {
    let name = decode_string(category.get()).ok_or_else(|| {
        RejectReason::BadDefenderRow(format!("a category that is {}", json_kind(category.get())))
    })?;
    let table = schemas
        .table_for_category(&name)
        .ok_or_else(|| RejectReason::UnknownCategory(name.into_owned()))?;
    let root_key = match &schemas.tables[table].input {
        InputKind::Defender { root, .. } => root.as_str(),
        InputKind::Audit | InputKind::Health | InputKind::Routed { .. } => "properties",
    };
    // The first root object is the row; a repeated key stays in the envelope (and so in
    // AdditionalFields) rather than vanishing.
    let Some(at) = record.0.iter().position(|(k, _)| k == root_key) else {
        return Err(RejectReason::BadDefenderRow(format!(
            "no {root_key:?} object"
        )));
    };
    let root_raw = record.0[at].1;
    if !root_raw.get().starts_with('{') {
        return Err(RejectReason::BadDefenderRow(format!(
            "{root_key:?} that is {}",
            json_kind(root_raw.get())
        )));
    }
    let root =
        Fields::parse(root_raw.get()).map_err(|e| RejectReason::UnparsableJson(e.to_string()))?;
    record.0.remove(at);
    Ok(Routed {
        table,
        root,
        envelope: record,
    })
}
