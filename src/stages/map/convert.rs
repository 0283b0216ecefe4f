//! Conversion of one raw JSON value to its column's Log Analytics type, written straight into the
//! row being built. Numbers and booleans keep their JSON types; objects bound for string columns
//! become compact JSON text; long values are truncated with a visible marker.

use std::borrow::Cow;

use super::datetime;
use super::json::{MAX_DEPTH, decode_string, push_compact, push_json_string};
use super::{Note, NoteKind};
use crate::schema::{BoolText, Column, ColumnType};
use crate::stages::decode::json_kind;
use crate::stages::redact::Redactor;

/// Shared state for converting the values of one row.
pub struct Ctx<'m> {
    pub redactor: &'m Redactor,
    pub max_field_bytes: usize,
    pub notes: &'m mut Vec<Note>,
    pub hits: &'m mut Vec<usize>,
    pub bool_text: BoolText,
}

/// The value did not fit the column type; it is kept in the unmapped column instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unconvertible {
    pub found: &'static str,
}

impl Ctx<'_> {
    fn note_hits(&mut self, column: &str) {
        for rule in self.hits.drain(..) {
            self.notes.push(Note {
                column: column.to_string(),
                kind: NoteKind::Redacted {
                    rule: self.redactor.rule_name(rule).to_string(),
                },
            });
        }
    }

    /// Writes `text` as a JSON string, truncated to the field limit with a visible marker.
    pub fn push_string_limited(&mut self, out: &mut String, column: &str, text: &str) {
        if text.len() <= self.max_field_bytes {
            push_json_string(out, text);
            return;
        }
        let marker = format!("...[truncated by m365-sentinel: {} bytes]", text.len());
        let mut cut = self.max_field_bytes.saturating_sub(marker.len());
        while cut > 0 && !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut truncated = String::with_capacity(cut + marker.len());
        truncated.push_str(&text[..cut]);
        truncated.push_str(&marker);
        push_json_string(out, &truncated);
        self.notes.push(Note {
            column: column.to_string(),
            kind: NoteKind::Truncated {
                original_bytes: text.len(),
            },
        });
    }

    /// Redacts and writes a string value.
    pub fn push_text(&mut self, out: &mut String, column: &str, text: &str) {
        match self.redactor.redact_text(column, text, self.hits) {
            Some(masked) => {
                self.note_hits(column);
                self.push_string_limited(out, column, &masked);
            }
            None => self.push_string_limited(out, column, text),
        }
    }

    /// Redacts a compact JSON text; returns it (masked or not).
    pub fn redact_json<'t>(&mut self, column: &str, json: &'t str) -> Cow<'t, str> {
        match self.redactor.redact_json(column, json, self.hits) {
            Some(masked) => {
                self.note_hits(column);
                Cow::Owned(masked)
            }
            None => Cow::Borrowed(json),
        }
    }

    /// Writes a JSON value for a dynamic column; over the field limit it becomes truncated text.
    pub fn push_dynamic(&mut self, out: &mut String, column: &str, compact: &str) {
        let json = self.redact_json(column, compact);
        if json.len() <= self.max_field_bytes {
            out.push_str(&json);
        } else {
            self.push_string_limited(out, column, &json);
        }
    }
}

fn is_integer_literal(raw: &str) -> bool {
    !raw.bytes().any(|b| matches!(b, b'.' | b'e' | b'E'))
}

/// Parses an integer from a JSON number or numeric text; whole floats (5.0) count.
fn parse_integer(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(v) = text.parse::<i64>() {
        return Some(v);
    }
    let f = text.parse::<f64>().ok()?;
    (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
}

/// The enum name for an integer written canonically (`6`, `"6"`, `-1`); other text ("007",
/// "1e0", names) is left as it is.
fn enum_name<'v>(column: &'v Column, number: &str) -> Option<Cow<'v, str>> {
    let table = column.enum_table.as_ref()?;
    let value = number.parse::<i64>().ok()?;
    if value.to_string() != number {
        return None;
    }
    Some(match table.values.get(&value) {
        Some(name) => Cow::Borrowed(name.as_str()),
        None => Cow::Owned(value.to_string()),
    })
}

/// Writes `raw` converted to `column`'s type. On failure nothing is written.
pub fn write_value(
    out: &mut String,
    column: &Column,
    raw: &str,
    ctx: &mut Ctx<'_>,
) -> Result<(), Unconvertible> {
    let first = raw.as_bytes().first().copied().unwrap_or(b'n');
    let found = || Unconvertible {
        found: json_kind(raw),
    };
    let name = column.name.as_str();
    match column.ty {
        ColumnType::String => match first {
            b'"' => {
                let text = decode_string(raw).ok_or_else(found)?;
                if let Some(mapped) = enum_name(column, &text) {
                    push_json_string(out, &mapped);
                    return Ok(());
                }
                let plain = matches!(text, Cow::Borrowed(_));
                if plain
                    && raw.len() <= ctx.max_field_bytes
                    && ctx.redactor.redact_text(name, &text, ctx.hits).is_none()
                {
                    out.push_str(raw);
                } else {
                    ctx.hits.clear();
                    ctx.push_text(out, name, &text);
                }
            }
            b'{' | b'[' => {
                let mut compact = String::with_capacity(raw.len());
                push_compact(&mut compact, raw);
                let json = ctx.redact_json(name, &compact);
                ctx.push_string_limited(out, name, &json);
            }
            b't' => push_json_string(out, ctx.bool_text.spell(true)),
            b'f' => push_json_string(out, ctx.bool_text.spell(false)),
            b'n' => return Err(found()),
            _ => match enum_name(column, raw) {
                Some(mapped) => push_json_string(out, &mapped),
                None => push_json_string(out, raw),
            },
        },
        ColumnType::Int | ColumnType::Long => {
            let value = match first {
                b'"' => parse_integer(&decode_string(raw).ok_or_else(found)?),
                b't' => Some(1),
                b'f' => Some(0),
                b'-' | b'0'..=b'9' if is_integer_literal(raw) => raw.parse::<i64>().ok(),
                b'-' | b'0'..=b'9' => parse_integer(raw),
                _ => None,
            }
            .ok_or_else(found)?;
            if column.ty == ColumnType::Int && i32::try_from(value).is_err() {
                return Err(found());
            }
            out.push_str(itoa(value).as_str());
        }
        ColumnType::Real => match first {
            b'-' | b'0'..=b'9' => out.push_str(raw),
            b'"' => {
                let text = decode_string(raw).ok_or_else(found)?;
                let value = text
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(found)?;
                out.push_str(&value.to_string());
            }
            _ => return Err(found()),
        },
        ColumnType::Bool => {
            let value = match first {
                b't' => true,
                b'f' => false,
                b'"' => {
                    let text = decode_string(raw).ok_or_else(found)?;
                    match text.trim().to_ascii_lowercase().as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(found()),
                    }
                }
                _ => match raw {
                    "1" => true,
                    "0" => false,
                    _ => return Err(found()),
                },
            };
            out.push_str(if value { "true" } else { "false" });
        }
        ColumnType::DateTime => {
            if first != b'"' {
                return Err(found());
            }
            let text = decode_string(raw).ok_or_else(found)?;
            let mark = out.len();
            out.push('"');
            if !datetime::push_utc(out, &text) {
                out.truncate(mark);
                return Err(found());
            }
            out.push('"');
        }
        ColumnType::Guid => {
            let text = if first == b'"' {
                decode_string(raw).ok_or_else(found)?
            } else {
                return Err(found());
            };
            if !is_guid(&text) {
                return Err(found());
            }
            push_json_string(out, &text);
        }
        ColumnType::Dynamic => {
            let mut compact = String::with_capacity(raw.len());
            if push_compact(&mut compact, raw) > MAX_DEPTH {
                return Err(Unconvertible {
                    found: "JSON nested too deeply",
                });
            }
            ctx.push_dynamic(out, name, &compact);
        }
    }
    Ok(())
}

fn itoa(v: i64) -> String {
    v.to_string()
}

fn is_guid(text: &str) -> bool {
    let t = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(text);
    t.len() == 36
        && t.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::EnumTable;
    use std::sync::Arc;

    fn column(ty: ColumnType) -> Column {
        Column {
            reads_envelope: false,
            name: "C".into(),
            ty,
            from: vec!["C".into()],
            enum_table: None,
            required: false,
        }
    }

    fn convert(
        col: &Column,
        raw: &str,
        limit: usize,
    ) -> (Result<String, Unconvertible>, Vec<Note>) {
        let redactor = Redactor::none();
        let mut notes = Vec::new();
        let mut hits = Vec::new();
        let mut ctx = Ctx {
            redactor: &redactor,
            max_field_bytes: limit,
            notes: &mut notes,
            hits: &mut hits,
            bool_text: BoolText::Dotnet,
        };
        let mut out = String::new();
        let r = write_value(&mut out, col, raw, &mut ctx).map(|()| out);
        (r, notes)
    }

    fn ok(ty: ColumnType, raw: &str) -> String {
        convert(&column(ty), raw, 64_000).0.unwrap()
    }

    fn err(ty: ColumnType, raw: &str) -> &'static str {
        convert(&column(ty), raw, 64_000).0.unwrap_err().found
    }

    #[test]
    fn strings() {
        assert_eq!(ok(ColumnType::String, r#""a\"b""#), r#""a\"b""#);
        assert_eq!(ok(ColumnType::String, "12"), r#""12""#);
        assert_eq!(ok(ColumnType::String, "true"), r#""True""#);
        assert_eq!(
            ok(
                ColumnType::String,
                "[ {\"Name\": \"Identity\", \"Value\": \"a b\"} ]"
            ),
            r#""[{\"Name\":\"Identity\",\"Value\":\"a b\"}]""#
        );
        assert_eq!(err(ColumnType::String, "null"), "null");
    }

    #[test]
    fn enums_map_ints_and_numeric_strings_keep_unknowns() {
        let table = EnumTable {
            name: "e".into(),
            values: [(3, "DcAdmin".to_string())].into_iter().collect(),
        };
        let mut col = column(ColumnType::String);
        col.enum_table = Some(Arc::new(table));
        assert_eq!(convert(&col, "3", 100).0.unwrap(), r#""DcAdmin""#);
        assert_eq!(convert(&col, r#""3""#, 100).0.unwrap(), r#""DcAdmin""#);
        assert_eq!(convert(&col, "117", 100).0.unwrap(), r#""117""#);
        assert_eq!(convert(&col, r#""Admin""#, 100).0.unwrap(), r#""Admin""#);
        assert_eq!(convert(&col, r#""003""#, 100).0.unwrap(), r#""003""#);
        assert_eq!(convert(&col, r#""3e0""#, 100).0.unwrap(), r#""3e0""#);
    }

    #[test]
    fn numbers_and_bools_keep_json_types() {
        assert_eq!(ok(ColumnType::Long, "2898195034"), "2898195034");
        assert_eq!(ok(ColumnType::Int, r#""-5""#), "-5");
        assert_eq!(ok(ColumnType::Int, "7.0"), "7");
        assert_eq!(err(ColumnType::Int, "2898195034"), "a number");
        assert_eq!(err(ColumnType::Int, r#""abc""#), "a string");
        assert_eq!(err(ColumnType::Int, "1.5"), "a number");
        assert_eq!(ok(ColumnType::Real, "1.5e3"), "1.5e3");
        assert_eq!(ok(ColumnType::Real, r#""2.25""#), "2.25");
        assert_eq!(ok(ColumnType::Bool, "true"), "true");
        assert_eq!(ok(ColumnType::Bool, r#""False""#), "false");
        assert_eq!(err(ColumnType::Bool, r#""maybe""#), "a string");
    }

    #[test]
    fn datetimes_guids_dynamics() {
        assert_eq!(
            ok(ColumnType::DateTime, r#""2020-02-07T16:44:07""#),
            r#""2020-02-07T16:44:07Z""#
        );
        assert_eq!(err(ColumnType::DateTime, r#""soon""#), "a string");
        assert_eq!(err(ColumnType::DateTime, "17"), "a number");
        let g = r#""80c76bd2-9d81-4c57-a97a-accfc3443dca""#;
        assert_eq!(ok(ColumnType::Guid, g), g);
        assert_eq!(err(ColumnType::Guid, r#""nope""#), "a string");
        assert_eq!(ok(ColumnType::Dynamic, "[ \"a\", 1 ]"), r#"["a",1]"#);
    }

    #[test]
    fn long_values_are_truncated_with_a_marker() {
        let long = format!("\"{}\"", "é".repeat(50));
        let (out, notes) = convert(&column(ColumnType::String), &long, 60);
        let s: String = serde_json::from_str(&out.unwrap()).unwrap();
        assert!(s.len() <= 60, "{}", s.len());
        assert!(
            s.ends_with("...[truncated by m365-sentinel: 100 bytes]"),
            "{s}"
        );
        assert!(matches!(
            notes[0].kind,
            NoteKind::Truncated {
                original_bytes: 100
            }
        ));
    }
}
