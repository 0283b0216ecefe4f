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
    memchr::memchr_iter(b'\n', s.as_bytes()).count() as u64
}

/// Line numbers of offsets in a unit's text, counted incrementally as the walk moves forward.
struct Lines<'a> {
    text: &'a str,
    counted_to: usize,
    line: u64,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str, first_line: u64) -> Self {
        Self {
            text,
            counted_to: 0,
            line: first_line,
        }
    }

    fn at(&mut self, offset: usize) -> u64 {
        if offset > self.counted_to {
            let end = offset.min(self.text.len());
            self.line += count_lines(&self.text[self.counted_to..end]);
            self.counted_to = end;
        }
        self.line
    }
}

/// Why a piece of text didn't parse. The file source writes U+0001 for bytes that are not UTF-8
/// (a control character is never valid unescaped JSON), so such a piece is named for that.
fn reason_for(chunk: &str, error: &serde_json::Error) -> RejectReason {
    match chunk.find('\u{1}') {
        Some(offset) => RejectReason::InvalidUtf8 { offset },
        None => RejectReason::UnparsableJson(error.to_string()),
    }
}

/// Splits `text` (one unit starting at `pos`) into records, calling `emit` for each.
pub fn decode_unit<'a>(text: &'a str, pos: &Position, emit: &mut dyn FnMut(Decoded<'a>)) {
    // The common case, a JSON line holding one object: a single parse.
    let trimmed = text.trim();
    if trimmed.starts_with('{')
        && let Ok(fields) = Fields::parse(trimmed)
    {
        let line = pos.line + count_lines(&text[..text.len() - text.trim_start().len()]);
        handle_object(fields, trimmed, &pos.at(line, pos.index), true, emit);
        return;
    }
    decode_values(text, pos, emit);
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

fn handle_object<'a>(
    fields: Fields<'a>,
    text: &'a str,
    pos: &Position,
    expand: bool,
    emit: &mut dyn FnMut(Decoded<'a>),
) {
    match is_wrapper(&fields).filter(|_| expand) {
        // The array parsed already, so walking it cannot fail.
        Some(records) => {
            let _ = walk_array(records.get(), 1, pos, false, emit);
        }
        None => emit(Decoded::Record(pos.clone(), fields, text)),
    }
}

fn handle_value<'a>(raw: &'a str, pos: &Position, emit: &mut dyn FnMut(Decoded<'a>)) {
    match raw.as_bytes().first() {
        Some(b'[') => {
            let _ = walk_array(raw, 1, pos, true, emit);
        }
        Some(b'{') => match Fields::parse(raw) {
            Ok(fields) => handle_object(fields, raw, pos, true, emit),
            Err(e) => emit(Decoded::Rejected(pos.clone(), reason_for(raw, &e), raw)),
        },
        _ => emit(Decoded::Rejected(
            pos.clone(),
            RejectReason::NotAnObject(json_kind(raw)),
            raw,
        )),
    }
}

/// A unit holding any number of whitespace-separated JSON values (a pretty content blob, `jq .`
/// output, concatenated bodies), recovering after a broken one.
fn decode_values<'a>(text: &'a str, pos: &Position, emit: &mut dyn FnMut(Decoded<'a>)) {
    let mut lines = Lines::new(text, pos.line);
    let mut offset = 0;
    let mut ordinal = 0u32;
    loop {
        let rest = &text[offset..];
        // Values may be separated by commas as well as whitespace (records pasted from an array).
        let trimmed = rest.trim_start();
        let trimmed = match trimmed.strip_prefix(',') {
            Some(after) if ordinal > 0 => after.trim_start(),
            _ => trimmed,
        };
        offset += rest.len() - trimmed.len();
        if trimmed.is_empty() {
            return;
        }
        let line = lines.at(offset);
        ordinal += 1;
        let mut stream = serde_json::Deserializer::from_str(trimmed).into_iter::<&RawValue>();
        match stream.next() {
            Some(Ok(value)) => {
                let end = offset + stream.byte_offset();
                let single = ordinal == 1 && text[end..].trim().is_empty();
                let index = if single { pos.index } else { ordinal };
                handle_value(value.get(), &pos.at(line, index), emit);
                offset = end;
            }
            Some(Err(e)) => match recover(text, offset, ordinal == 1, &mut lines, pos, &e, emit) {
                Some(resume) => offset = resume,
                None => return,
            },
            None => return,
        }
    }
}

/// Most of the (first 200) non-empty lines of `text` are whole JSON values on their own.
fn looks_like_json_lines(text: &str) -> bool {
    let mut total = 0;
    let mut whole = 0;
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(200)
    {
        total += 1;
        if serde_json::from_str::<serde::de::IgnoredAny>(line).is_ok() {
            whole += 1;
        }
    }
    total >= 2 && whole * 2 > total
}

/// After a value failed to parse at `offset`: salvage what can be kept and say where to go on.
fn recover<'a>(
    text: &'a str,
    offset: usize,
    first_value: bool,
    lines: &mut Lines<'_>,
    pos: &Position,
    error: &serde_json::Error,
    emit: &mut dyn FnMut(Decoded<'a>),
) -> Option<usize> {
    let rest = &text[offset..];
    let line = lines.at(offset);
    // JSON Lines after all, whose first line was cut short: each line stands on its own. Asked
    // once per unit (at its first value), so a long broken text is not rescanned per record.
    if first_value && looks_like_json_lines(rest) {
        for (i, l) in rest.lines().enumerate() {
            let l = l.strip_suffix('\r').unwrap_or(l);
            if !l.trim().is_empty() {
                decode_unit(l, &pos.at(line + i as u64, 0), emit);
            }
        }
        return None;
    }
    // An array: keep its whole elements, skip the broken ones.
    if rest.starts_with('[') {
        return walk_array(rest, 1, &pos.at(line, 0), true, emit)
            .ok()
            .map(|end| offset + end);
    }
    // An Event Hubs body cut short or broken: keep its whole records.
    if let Some(start) = records_array_start(rest) {
        let array = start - 1;
        let end = walk_array(&rest[array..], 1, &pos.at(line, 0), false, emit).ok()?;
        // Go on after the array, and after the body's closing brace when it is there.
        let resume = offset + array + end;
        let after = &text[resume..];
        let closing = after.len() - after.trim_start().len();
        return Some(if after.trim_start().starts_with('}') {
            resume + closing + 1
        } else {
            resume
        });
    }
    match resync(text, offset, false) {
        Some(next) => {
            let chunk = text[offset..next].trim_end();
            emit(Decoded::Rejected(
                pos.at(line, 0),
                reason_for(chunk, error),
                chunk,
            ));
            Some(next)
        }
        None => {
            emit(Decoded::Rejected(
                pos.at(line, 0),
                reason_for(rest, error),
                rest,
            ));
            None
        }
    }
}

/// The next place from `from` (itself included when `inclusive`) where a record seems to begin:
/// an object at the start of a line or after `,`, `[`, `}` or `]` (an element or value boundary,
/// not a nested value after `:`), that parses and has a key records have. Bounded in candidates
/// and in bytes parsed, so a long broken tail costs little.
fn resync(text: &str, from: usize, inclusive: bool) -> Option<usize> {
    const ATTEMPTS: usize = 10_000;
    const BYTES: usize = 64 << 20;
    let bytes = text.as_bytes();
    let start = if inclusive { from } else { from + 1 };
    let mut budget = BYTES;
    for p in memchr::memchr_iter(b'{', bytes.get(start..)?)
        .map(|p| p + start)
        .take(ATTEMPTS)
    {
        let line_start = p == 0 || bytes[p - 1] == b'\n';
        let before = bytes[..p].iter().rev().find(|b| !b.is_ascii_whitespace());
        if !line_start && !matches!(before, Some(b',' | b'[' | b'}' | b']')) {
            continue;
        }
        let mut stream = serde_json::Deserializer::from_str(&text[p..]).into_iter::<&RawValue>();
        match stream.next() {
            Some(Ok(value)) => {
                budget = budget.saturating_sub(value.get().len());
                if let Ok(fields) = Fields::parse(value.get())
                    && ["RecordType", "CreationTime", "category", "records"]
                        .iter()
                        .any(|k| fields.get(k).is_some())
                {
                    return Some(p);
                }
            }
            Some(Err(e)) => {
                // What the failed parse read: up to the error's line and column.
                let consumed = match e.line() {
                    0 | 1 => e.column(),
                    line => memchr::memchr_iter(b'\n', &bytes[p..])
                        .nth(line - 2)
                        .map_or(text.len() - p, |nl| nl + 1 + e.column()),
                };
                budget = budget.saturating_sub(consumed.max(1));
            }
            None => return None,
        }
        if budget == 0 {
            return None;
        }
    }
    None
}

/// The array element at the start of `text`, handed on (a record, or refused when it is not an
/// object); Ok with the bytes it spans, Err when it is not JSON (None: nothing there). An
/// object is parsed into its fields in one pass; only when that fails is it read again as a
/// raw value, to tell broken JSON from a value of the wrong shape (two passes over every
/// record cost about 10% of the Management API path).
fn element<'a>(
    text: &'a str,
    element_pos: &Position,
    expand_elements: bool,
    emit: &mut dyn FnMut(Decoded<'a>),
) -> Option<Result<usize, serde_json::Error>> {
    if text.starts_with('{') {
        let mut objects = serde_json::Deserializer::from_str(text).into_iter::<Fields<'a>>();
        if let Some(Ok(fields)) = objects.next() {
            let end = objects.byte_offset();
            handle_object(fields, &text[..end], element_pos, expand_elements, emit);
            return Some(Ok(end));
        }
    }
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<&RawValue>();
    match stream.next()? {
        Ok(value) => {
            let raw = value.get();
            if raw.starts_with('{') {
                match Fields::parse(raw) {
                    Ok(fields) => handle_object(fields, raw, element_pos, expand_elements, emit),
                    Err(e) => emit(Decoded::Rejected(
                        element_pos.clone(),
                        reason_for(raw, &e),
                        raw,
                    )),
                }
            } else {
                emit(Decoded::Rejected(
                    element_pos.clone(),
                    RejectReason::NotAnObject(json_kind(raw)),
                    raw,
                ));
            }
            Some(Ok(stream.byte_offset()))
        }
        Err(e) => Some(Err(e)),
    }
}

/// Walks a JSON array (`text` starts with `[`) element by element: a broken element costs only
/// itself when a later element can be found, and a truncated tail costs only the tail. Returns
/// the offset just past the closing `]`, or Err once the rest was refused.
fn walk_array<'a>(
    text: &'a str,
    first_index: u32,
    pos: &Position,
    expand_elements: bool,
    emit: &mut dyn FnMut(Decoded<'a>),
) -> Result<usize, ()> {
    let mut lines = Lines::new(text, pos.line);
    let mut offset = 1;
    let mut index = first_index;
    let mut kept = 0usize;
    loop {
        let rest = &text[offset..];
        let trimmed = rest.trim_start();
        offset += rest.len() - trimmed.len();
        if trimmed.starts_with(']') {
            return Ok(offset + 1);
        }
        let line = lines.at(offset);
        let mut missing_separator = false;
        let failure = if trimmed.is_empty() {
            "the array ends without ]".to_string()
        } else {
            match element(trimmed, &pos.at(line, index), expand_elements, emit) {
                Some(Ok(end)) => {
                    kept += 1;
                    index += 1;
                    offset += end;
                    let rest = &text[offset..];
                    let after = rest.trim_start();
                    offset += rest.len() - after.len();
                    match after.as_bytes().first() {
                        Some(b',') => {
                            offset += 1;
                            continue;
                        }
                        Some(b']') => continue,
                        Some(_) => {
                            missing_separator = true;
                            "expected , or ] between array elements".to_string()
                        }
                        None => "the array ends without ]".to_string(),
                    }
                }
                Some(Err(e)) => e.to_string(),
                None => "the array ends without ]".to_string(),
            }
        };
        // After a whole element with no comma, the next element may start right here.
        match resync(text, offset, missing_separator) {
            Some(next) if next == offset => {
                offset = next;
                continue;
            }
            Some(next) => {
                let chunk = text[offset..next].trim_end();
                let chunk = chunk.strip_suffix(',').unwrap_or(chunk).trim_end();
                let reason = match chunk.find('\u{1}') {
                    Some(at) => RejectReason::InvalidUtf8 { offset: at },
                    None => RejectReason::UnparsableJson(format!(
                        "array element after {kept} whole records: {failure}"
                    )),
                };
                emit(Decoded::Rejected(pos.at(line, index), reason, chunk));
                index += 1;
                offset = next;
            }
            None => {
                let tail = &text[offset..];
                let reason = match tail.find('\u{1}') {
                    Some(at) => RejectReason::InvalidUtf8 { offset: at },
                    None => RejectReason::TruncatedArray {
                        kept,
                        error: failure,
                    },
                };
                emit(Decoded::Rejected(pos.at(line, 0), reason, tail));
                return Err(());
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
