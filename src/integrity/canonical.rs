//! The canonical bytes of a row: what its chain hash covers. Computed from the row as the spool
//! takes it (its JSON text) and, in `verify`, from the row as the Query API gives it back, and
//! equal for the same row although the two spellings differ: Log Analytics writes datetimes
//! with seven fraction digits, returns dynamic values as JSON text of its own, returns missing
//! strings as "" and other missing values as null.
//!
//! Form: for each column of the table's schema, in schema order, that has a value:
//! `name:LEN:value` (LEN the value's byte length, so no value can fake a boundary). Values by
//! type: strings as they read (empty: no value); GUIDs lowercase; datetimes in UTC with the
//! fraction's trailing zeros cut; integers in decimal; reals as the shortest text that reads
//! back as the same double (integral ones without a fraction); booleans `true`/`false`;
//! dynamic values as compact JSON with object keys sorted and numbers as above (a string that
//! holds JSON counts as that JSON, as Log Analytics stores it). The chain's own columns are not
//! covered: they are what the hash is checked against.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::schema::{ColumnType, TableSchema};
use crate::stages::map::datetime;

#[derive(Debug, thiserror::Error)]
pub enum CanonicalError {
    #[error("the row is not a JSON object: {0}")]
    NotAnObject(String),
}

/// A table's columns by name, built once per table.
#[derive(Debug, Clone)]
pub struct Columns {
    by_name: HashMap<String, (usize, ColumnType)>,
    names: Vec<(String, ColumnType)>,
}

impl Columns {
    pub fn of(schema: &TableSchema) -> Self {
        let names: Vec<(String, ColumnType)> = schema
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.ty))
            .collect();
        let by_name = names
            .iter()
            .enumerate()
            .map(|(i, (name, ty))| (name.clone(), (i, *ty)))
            .collect();
        Self { by_name, names }
    }

    /// Canonical bytes of a row as sent (`row`: its JSON object text) into `out` (cleared).
    /// Fields that are not schema columns (the chain's own) are not covered.
    pub fn of_sent(&self, row: &str, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
        out.clear();
        let fields: TopLevel<'_> =
            serde_json::from_str(row).map_err(|e| CanonicalError::NotAnObject(e.to_string()))?;
        let mut found: Vec<(usize, ColumnType, &str)> = fields
            .0
            .iter()
            .filter_map(|(name, raw)| {
                let (i, ty) = self.by_name.get(name.as_ref())?;
                Some((*i, *ty, raw.get()))
            })
            .collect();
        // The mapper writes columns in schema order; sorting keeps the form right regardless.
        if !found.is_sorted_by_key(|(i, _, _)| *i) {
            found.sort_by_key(|(i, _, _)| *i);
        }
        let mut value = String::new();
        for (i, ty, raw) in found {
            value.clear();
            if canonical_value(ty, raw, &mut value) {
                push_field(out, &self.names[i].0, &value);
            }
        }
        Ok(())
    }

    /// Canonical bytes of a row as read back: `get` gives a column's value by name.
    pub fn of_read<'v>(&self, get: impl Fn(&str) -> Option<&'v Value>, out: &mut Vec<u8>) {
        out.clear();
        let mut value = String::new();
        for (name, ty) in &self.names {
            let Some(v) = get(name) else { continue };
            value.clear();
            let raw = v.to_string();
            if canonical_value(*ty, &raw, &mut value) {
                push_field(out, name, &value);
            }
        }
    }
}

fn push_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.push(b':');
    out.extend_from_slice(value.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(value.as_bytes());
}

/// The canonical text of one value (`raw`: JSON text) of a column of type `ty` into `out`;
/// false when it counts as no value.
pub fn canonical_value(ty: ColumnType, raw: &str, out: &mut String) -> bool {
    let raw = raw.trim();
    if raw == "null" {
        return false;
    }
    match ty {
        ColumnType::String | ColumnType::Guid | ColumnType::DateTime => {
            let text = json_string(raw);
            if text.is_empty() {
                return false;
            }
            match ty {
                ColumnType::Guid => out.push_str(&text.to_ascii_lowercase()),
                ColumnType::DateTime => push_datetime(out, &text),
                _ => out.push_str(&text),
            }
        }
        ColumnType::Int | ColumnType::Long | ColumnType::Real => {
            let text = json_string(raw);
            match serde_json::from_str::<serde_json::Number>(&text) {
                Ok(n) => push_number(out, &n),
                Err(_) => out.push_str(&text),
            }
        }
        ColumnType::Bool => {
            let text = json_string(raw);
            match text.as_ref() {
                "true" | "True" | "TRUE" | "1" => out.push_str("true"),
                "false" | "False" | "FALSE" | "0" => out.push_str("false"),
                other => out.push_str(other),
            }
        }
        ColumnType::Dynamic => {
            let Ok(mut value) = serde_json::from_str::<Value>(raw) else {
                out.push_str(raw);
                return true;
            };
            if let Value::String(s) = &value {
                if s.is_empty() {
                    return false;
                }
                if let Ok(inner) = serde_json::from_str::<Value>(s) {
                    value = inner;
                }
            }
            push_json(out, &value);
        }
    }
    true
}

/// The text of a JSON string (escapes resolved), or the raw text of any other value.
fn json_string(raw: &str) -> Cow<'_, str> {
    if let Some(inner) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        if !inner.contains('\\') {
            return Cow::Borrowed(inner);
        }
        if let Ok(s) = serde_json::from_str::<String>(raw) {
            return Cow::Owned(s);
        }
    }
    Cow::Borrowed(raw)
}

fn push_datetime(out: &mut String, text: &str) {
    let start = out.len();
    if !datetime::push_utc(out, text) {
        out.push_str(text);
        return;
    }
    // `...SS.fffZ`: cut the fraction's trailing zeros (and a bare dot).
    if out.ends_with('Z') && out[start..].contains('.') {
        out.pop();
        while out.ends_with('0') {
            out.pop();
        }
        if out.ends_with('.') {
            out.pop();
        }
        out.push('Z');
    }
}

fn push_number(out: &mut String, n: &serde_json::Number) {
    use std::fmt::Write;
    if let Some(i) = n.as_i64() {
        let _ = write!(out, "{i}");
    } else if let Some(u) = n.as_u64() {
        let _ = write!(out, "{u}");
    } else if let Some(f) = n.as_f64() {
        if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
            let _ = write!(out, "{}", f as i64);
        } else {
            let _ = write!(out, "{f}");
        }
    } else {
        out.push_str(&n.to_string());
    }
}

/// Compact JSON, object keys sorted, numbers as [`push_number`].
fn push_json(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => push_number(out, n),
        Value::String(s) => push_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_string(out, key);
                out.push(':');
                if let Some(v) = map.get(key) {
                    push_json(out, v);
                }
            }
            out.push('}');
        }
    }
}

fn push_string(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(text) => out.push_str(&text),
        Err(_) => out.push_str("\"\""),
    }
}

/// A JSON object's top-level fields as written, values left as raw text.
struct TopLevel<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(32));
                while let Some((k, v)) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    fields.push((k, v));
                }
                Ok(TopLevel(fields))
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(ty: ColumnType, raw: &str) -> Option<String> {
        let mut out = String::new();
        canonical_value(ty, raw, &mut out).then_some(out)
    }

    #[test]
    fn the_spellings_log_analytics_gives_back_read_as_what_was_sent() {
        use ColumnType::*;
        let same = [
            (
                DateTime,
                r#""2024-05-01T10:00:00.120Z""#,
                r#""2024-05-01T10:00:00.1200000Z""#,
            ),
            (
                DateTime,
                r#""2024-05-01T10:00:00Z""#,
                r#""2024-05-01T10:00:00.0000000Z""#,
            ),
            (
                DateTime,
                r#""2024-05-01T12:00:00+02:00""#,
                r#""2024-05-01T10:00:00Z""#,
            ),
            (
                Guid,
                r#""AB12CD34-0000-4000-8000-000000000000""#,
                r#""ab12cd34-0000-4000-8000-000000000000""#,
            ),
            (Long, "5", "5.0"),
            (Real, "1.50", "1.5"),
            (Real, "2", "2.0"),
            (Bool, "true", r#""True""#),
            (String, r#""caf\u00e9""#, r#""café""#),
            (
                Dynamic,
                r#"{"b":1,"a":[1.0,"x"]}"#,
                r#""{\"a\":[1,\"x\"],\"b\":1}""#,
            ),
            (Dynamic, r#""plain""#, r#""plain""#),
        ];
        for (ty, sent, read) in same {
            assert_eq!(canon(ty, sent), canon(ty, read), "{ty}: {sent} vs {read}");
            assert!(canon(ty, sent).is_some());
        }
        for ty in [String, Guid, DateTime, Dynamic] {
            assert_eq!(canon(ty, r#""""#), None, "{ty}");
        }
        assert_eq!(canon(Long, "null"), None);
        assert_ne!(canon(String, r#""a""#), canon(String, r#""b""#));
        assert_ne!(canon(Long, "1"), canon(Long, "2"));
    }
}
