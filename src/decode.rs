//! Decoding: the text of one input unit (a line, or a whole document) into record objects.
//! A unit may hold one record, a JSON array of them (Management API content blob), or an
//! Event Hubs body `{"records":[...]}`. Records are parsed into borrowed field lists: values stay
//! raw JSON text, so mapping never builds a `serde_json::Value` tree.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::record::{Position, RejectReason};

/// The top-level fields of a JSON object, in input order, values as raw JSON.
#[derive(Debug, Default)]
pub struct Fields<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Fields<'a> {
    pub fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> de::Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(32));
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    fields.push((key.0, value));
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(FieldsVisitor)
    }
}

/// What decoding found in a unit, in input order.
pub enum Decoded<'a> {
    /// A record object: its fields and its whole text (kept for rejections downstream).
    Record(Position, Fields<'a>, &'a str),
    /// A refused piece of the unit with its text.
    Rejected(Position, RejectReason, &'a str),
}

/// The JSON kind of a value from its first byte, for messages.
pub fn json_kind(raw: &str) -> &'static str {
    match raw.trim_start().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        Some(_) => "a number",
        None => "empty",
    }
}

fn count_lines(s: &str) -> u64 {
    s.bytes().filter(|b| *b == b'\n').count() as u64
}

/// Splits `text` (one unit starting at `pos`) into records, calling `emit` for each.
pub fn decode_unit<'a>(text: &'a str, pos: &Position, emit: &mut dyn FnMut(Decoded<'a>)) {
    let trimmed = text.trim_start();
    let line = pos.line + count_lines(&text[..text.len() - trimmed.len()]);
    match trimmed.as_bytes().first() {
        Some(b'[') => walk_array(trimmed, 1, &pos.at(line, 0), true, emit),
        Some(b'{') => decode_object(trimmed, &pos.at(line, pos.index), true, emit),
        Some(_) => {
            let reason = match serde_json::from_str::<serde::de::IgnoredAny>(trimmed) {
                Ok(_) => RejectReason::NotAnObject(json_kind(trimmed)),
                Err(e) => RejectReason::UnparsableJson(e.to_string()),
            };
            emit(Decoded::Rejected(pos.at(line, 0), reason, text))
        }
        None => {}
    }
}

/// One line of a text that turned out to be JSON Lines.
fn decode_line<'a>(line: &'a str, pos: &Position, emit: &mut dyn FnMut(Decoded<'a>)) {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.trim().is_empty() {
        return;
    }
    decode_unit(line, pos, emit);
}

/// Byte offset just past `{"records":[` when `text` opens an Event Hubs body.
fn records_array_start(text: &str) -> Option<usize> {
    let rest = text.strip_prefix('{')?.trim_start();
    let rest = rest.strip_prefix("\"records\"")?.trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('[')?;
    Some(text.len() - rest.len())
}

fn is_wrapper<'a>(fields: &Fields<'a>) -> Option<&'a RawValue> {
    let records = fields.get("records")?;
    let looks_like_record = fields.get("category").is_some() || fields.get("RecordType").is_some();
    (!looks_like_record && records.get().starts_with('[')).then_some(records)
}

fn decode_object<'a>(
    text: &'a str,
    pos: &Position,
    expand: bool,
    emit: &mut dyn FnMut(Decoded<'a>),
) {
    match Fields::parse(text) {
        Ok(fields) => match is_wrapper(&fields).filter(|_| expand) {
            Some(records) => {
                let inner = records.get();
                walk_array(inner, 1, pos, false, emit);
            }
            None => emit(Decoded::Record(pos.clone(), fields, text)),
        },
        Err(e) => match records_array_start(text).filter(|_| expand) {
            // A truncated Event Hubs body: keep the records that are whole.
            Some(start) => walk_array(&text[start - 1..], 1, pos, false, emit),
            // A multi-line text that is not one object after all (JSON Lines whose first line
            // was cut short): each line stands on its own.
            None if expand && text.trim_end().contains('\n') => {
                for (i, line) in text.lines().enumerate() {
                    decode_line(line, &pos.at(pos.line + i as u64, 0), emit);
                }
            }
            None => emit(Decoded::Rejected(
                pos.clone(),
                RejectReason::UnparsableJson(e.to_string()),
                text,
            )),
        },
    }
}

/// Walks a JSON array element by element so that a truncated or malformed tail costs only the
/// tail: the complete elements before it are kept.
fn walk_array<'a>(
    text: &'a str,
    first_index: u32,
    pos: &Position,
    expand_elements: bool,
    emit: &mut dyn FnMut(Decoded<'a>),
) {
    // text starts with '['.
    let mut offset = 1;
    let mut line = pos.line;
    let mut counted_to = 0;
    let mut index = first_index;
    let mut kept = 0usize;
    let fail = |offset: usize,
                kept: usize,
                error: String,
                line: u64,
                emit: &mut dyn FnMut(Decoded<'a>)| {
        emit(Decoded::Rejected(
            pos.at(line, 0),
            RejectReason::TruncatedArray { kept, error },
            &text[offset..],
        ))
    };
    loop {
        let rest = &text[offset..];
        let trimmed = rest.trim_start();
        offset += rest.len() - trimmed.len();
        if let Some(after) = trimmed.strip_prefix(']') {
            let tail = after.trim();
            if !tail.is_empty() {
                line += count_lines(&text[counted_to..offset]);
                fail(
                    offset + 1,
                    kept,
                    "trailing characters after the closing ]".into(),
                    line,
                    emit,
                );
            }
            return;
        }
        if trimmed.is_empty() {
            line += count_lines(&text[counted_to..offset]);
            fail(offset, kept, "the array ends without ]".into(), line, emit);
            return;
        }
        let mut stream = serde_json::Deserializer::from_str(trimmed).into_iter::<&RawValue>();
        let value = match stream.next() {
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                line += count_lines(&text[counted_to..offset]);
                fail(offset, kept, e.to_string(), line, emit);
                return;
            }
            None => {
                fail(offset, kept, "the array ends without ]".into(), line, emit);
                return;
            }
        };
        line += count_lines(&text[counted_to..offset]);
        counted_to = offset;
        let element_pos = pos.at(line, index);
        let raw = value.get();
        if raw.starts_with('{') {
            decode_object(raw, &element_pos, expand_elements, emit);
        } else {
            emit(Decoded::Rejected(
                element_pos,
                RejectReason::NotAnObject(json_kind(raw)),
                raw,
            ));
        }
        kept += 1;
        index += 1;
        offset += stream.byte_offset();
        let rest = &text[offset..];
        let trimmed = rest.trim_start();
        offset += rest.len() - trimmed.len();
        match trimmed.as_bytes().first() {
            Some(b',') => offset += 1,
            Some(b']') => {}
            Some(_) => {
                line += count_lines(&text[counted_to..offset]);
                fail(
                    offset,
                    kept,
                    "expected , or ] between array elements".into(),
                    line,
                    emit,
                );
                return;
            }
            None => {
                line += count_lines(&text[counted_to..offset]);
                fail(offset, kept, "the array ends without ]".into(), line, emit);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    type Got = Result<(u64, u32, String), (u64, String)>;

    fn decode(text: &str) -> Vec<Got> {
        let pos = Position::new(Arc::from("t"), 1);
        let mut out = Vec::new();
        decode_unit(text, &pos, &mut |d| match d {
            Decoded::Record(p, f, _) => out.push(Ok((p.line, p.index, f.0[0].0.to_string()))),
            Decoded::Rejected(p, r, _) => out.push(Err((p.line, r.code().to_string()))),
        });
        out
    }

    #[test]
    fn single_object() {
        assert_eq!(decode(r#"{"Id":"x","n":1}"#), vec![Ok((1, 0, "Id".into()))]);
    }

    #[test]
    fn escaped_keys_are_decoded() {
        let pos = Position::new(Arc::from("t"), 1);
        let mut keys = Vec::new();
        decode_unit(r#"{"A\u0042":1}"#, &pos, &mut |d| {
            if let Decoded::Record(_, f, _) = d {
                keys.push(f.0[0].0.to_string());
            }
        });
        assert_eq!(keys, ["AB"]);
    }

    #[test]
    fn pretty_array_positions() {
        let text = "[\n  {\"a\":1},\n  {\"b\":2},\n  3\n]";
        assert_eq!(
            decode(text),
            vec![
                Ok((2, 1, "a".into())),
                Ok((3, 2, "b".into())),
                Err((4, "not_an_object".into()))
            ]
        );
    }

    #[test]
    fn truncated_array_keeps_prefix() {
        let text = "[{\"a\":1},{\"b\":2},{\"c\":";
        let got = decode(text);
        assert_eq!(got.len(), 3);
        assert!(got[0].is_ok() && got[1].is_ok());
        assert_eq!(got[2], Err((1, "truncated_json".into())));
    }

    #[test]
    fn event_hubs_body_expands_and_truncated_body_keeps_prefix() {
        let body =
            r#"{"records":[{"category":"x","properties":{}},{"category":"y","properties":{}}]}"#;
        let got = decode(body);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], Ok((1, 2, "category".into())));
        let cut = &body[..body.len() - 20];
        let got = decode(cut);
        assert_eq!(got[0], Ok((1, 1, "category".into())));
        assert_eq!(got[1], Err((1, "truncated_json".into())));
    }

    #[test]
    fn garbage_and_scalars() {
        assert_eq!(decode("{nope"), vec![Err((1, "unparsable_json".into()))]);
        assert_eq!(decode("42"), vec![Err((1, "not_an_object".into()))]);
        assert_eq!(
            decode("# markdown"),
            vec![Err((1, "unparsable_json".into()))]
        );
        assert!(decode("   ").is_empty());
    }
}
