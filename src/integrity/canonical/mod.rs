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

use serde_json::Value;

use crate::schema::{ColumnType, TableSchema};
use crate::stages::map::datetime;
use crate::stages::map::json::decode_string;

/// The column the hash does not cover.
pub const UNCOVERED: &str = "TimeGenerated";

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
        // TimeGenerated is left out: the workspace replaces a value more than two days old or
        // a day ahead with the time it received the row, so a backfill or a long outage would
        // read as altered rows. (The Defender tables carry the same time in Timestamp.)
        let names: Vec<(String, ColumnType)> = schema
            .columns
            .iter()
            .filter(|c| c.name != UNCOVERED)
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
    /// Fields that are not schema columns (the chain's own) are not covered. Runs for every
    /// row the spool takes, so it scans the text itself: the mapper writes compact JSON with
    /// the columns in schema order, which is matched in step (a name lookup only when not).
    pub fn of_sent(&self, row: &str, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
        self.of_sent_with(row, out, &mut Vec::new())
    }

    /// As [`Columns::of_sent`], with the list of the row's columns kept between calls instead
    /// of a new one (2 KB for 60 columns) allocated and freed for every row.
    pub fn of_sent_with(
        &self,
        row: &str,
        out: &mut Vec<u8>,
        found: &mut Vec<Found>,
    ) -> Result<(), CanonicalError> {
        out.clear();
        found.clear();
        let not_object = || CanonicalError::NotAnObject(row.chars().take(60).collect());
        let bytes = row.as_bytes();
        let mut at = skip_ws(bytes, 0);
        if bytes.get(at) != Some(&b'{') {
            return Err(not_object());
        }
        at = skip_ws(bytes, at + 1);
        let mut next = 0;
        if bytes.get(at) != Some(&b'}') {
            loop {
                if bytes.get(at) != Some(&b'"') {
                    return Err(not_object());
                }
                let key_end = string_end(bytes, at).ok_or_else(not_object)?;
                let key = &row[at + 1..key_end - 1];
                at = skip_ws(bytes, key_end);
                if bytes.get(at) != Some(&b':') {
                    return Err(not_object());
                }
                at = skip_ws(bytes, at + 1);
                // A string's scan tells whether it holds an escape: most values don't, and are
                // then their own canonical text.
                let (value_end, escaped) = if bytes.get(at) == Some(&b'"') {
                    scan_string(bytes, at).ok_or_else(not_object)?
                } else {
                    (value_end(bytes, at).ok_or_else(not_object)?, false)
                };
                // Columns a row lacks leave gaps: look a few names ahead before hashing.
                let column = if key == UNCOVERED {
                    None
                } else {
                    let mut ahead = self
                        .names
                        .get(next..)
                        .unwrap_or_default()
                        .iter()
                        .take(LOOK_AHEAD);
                    match ahead.position(|(name, _)| name == key) {
                        Some(n) => Some(next + n),
                        None => self.by_name.get(key).map(|(i, _)| *i),
                    }
                };
                if let Some(i) = column {
                    found.push(Found {
                        column: i,
                        span: at..value_end,
                        escaped,
                    });
                    next = i + 1;
                }
                at = skip_ws(bytes, value_end);
                match next_item(bytes, at, b'}').ok_or_else(not_object)? {
                    Some(next) => at = next,
                    None => break,
                }
            }
        }
        if !found.is_sorted_by_key(|f| f.column) {
            found.sort_by_key(|f| f.column);
        }
        let mut value = String::new();
        for f in found.iter() {
            let (name, ty) = &self.names[f.column];
            let (raw, escaped) = (&row[f.span.clone()], f.escaped);
            let plain = already_canonical(*ty, raw, escaped);
            if let Some(text) = plain {
                push_field(out, name, text);
                continue;
            }
            value.clear();
            if canonical_value(*ty, raw, &mut value) {
                push_field(out, name, &value);
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

/// A schema column found in a row: where its value's JSON text is, and whether that is a
/// string holding an escape.
#[derive(Debug, Clone)]
pub struct Found {
    column: usize,
    span: std::ops::Range<usize>,
    escaped: bool,
}

/// Names compared in step before a lookup by name.
const LOOK_AHEAD: usize = 24;

/// The value's text when it is already what [`canonical_value`] would make of it (most are:
/// the mapper writes plain strings, integers, booleans and UTC times); `escaped`: a string
/// holding a backslash.
fn already_canonical(ty: ColumnType, raw: &str, escaped: bool) -> Option<&str> {
    let inner = || {
        raw.strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .filter(|inner| !inner.is_empty() && !escaped)
    };
    match ty {
        ColumnType::String => inner(),
        ColumnType::DateTime => inner().filter(|t| is_canonical_utc(t)),
        ColumnType::Guid => {
            inner().filter(|t| !t.starts_with('{') && !t.bytes().any(|b| b.is_ascii_uppercase()))
        }
        ColumnType::Int | ColumnType::Long => Some(raw).filter(|r| is_plain_integer(r)),
        ColumnType::Bool => Some(raw).filter(|r| matches!(*r, "true" | "false")),
        ColumnType::Real | ColumnType::Dynamic => None,
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`, or with a fraction of 1 to 7 digits not ending in 0: the form
/// datetimes take canonically, whether or not the date is a real one (an unreadable one is
/// kept as sent; a readable one's fraction is cut to 7 digits).
fn is_canonical_utc(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() < 20 || b[b.len() - 1] != b'Z' {
        return false;
    }
    let frame = digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    match b.len() {
        20 => frame,
        len => {
            frame
                && b[19] == b'.'
                && (22..=28).contains(&len)
                && digits(20..len - 1)
                && b[len - 2] != b'0'
        }
    }
}

fn push_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.push(b':');
    let mut digits = [0u8; 20];
    let mut n = value.len();
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.push(b':');
    out.extend_from_slice(value.as_bytes());
}

/// After a member or element ending at `at`: `Some(Some(next))` past a comma (the next one
/// starts at `next`), `Some(None)` at `close`, None when neither follows (not JSON).
fn next_item(bytes: &[u8], at: usize, close: u8) -> Option<Option<usize>> {
    match bytes.get(at) {
        Some(b',') => Some(Some(skip_ws(bytes, at + 1))),
        Some(&b) if b == close => Some(None),
        _ => None,
    }
}

fn skip_ws(bytes: &[u8], mut at: usize) -> usize {
    while bytes.get(at).is_some_and(u8::is_ascii_whitespace) {
        at += 1;
    }
    at
}

/// The index after the closing quote of the JSON string opening at `at`.
fn string_end(bytes: &[u8], at: usize) -> Option<usize> {
    scan_string(bytes, at).map(|(end, _)| end)
}

/// As [`string_end`], and whether the string holds an escape.
fn scan_string(bytes: &[u8], at: usize) -> Option<(usize, bool)> {
    let mut i = at + 1;
    let mut escaped = false;
    loop {
        let found = memchr::memchr2(b'"', b'\\', bytes.get(i..)?)?;
        i += found;
        if bytes[i] == b'\\' {
            escaped = true;
            i += 2;
        } else {
            return Some((i + 1, escaped));
        }
    }
}

/// The index after the JSON value starting at `at`.
fn value_end(bytes: &[u8], at: usize) -> Option<usize> {
    match bytes.get(at)? {
        b'"' => string_end(bytes, at),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            while let Some(&b) = bytes.get(i) {
                match b {
                    b'"' => {
                        i = string_end(bytes, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            let mut i = at;
            while bytes
                .get(i)
                .is_some_and(|b| !matches!(b, b',' | b'}' | b']') && !b.is_ascii_whitespace())
            {
                i += 1;
            }
            (i > at).then_some(i)
        }
    }
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
                ColumnType::Guid => {
                    let bare = text.strip_prefix('{').and_then(|t| t.strip_suffix('}'));
                    out.push_str(&bare.unwrap_or(&text).to_ascii_lowercase());
                }
                ColumnType::DateTime => push_datetime(out, &text),
                _ => out.push_str(&text),
            }
        }
        ColumnType::Int | ColumnType::Long | ColumnType::Real => {
            let text = json_string(raw);
            match serde_json::from_str::<serde_json::Number>(&text) {
                // A real column holds a double, whatever digits were sent.
                Ok(n) if ty == ColumnType::Real => match n.as_f64() {
                    Some(f) => push_double(out, f),
                    None => out.push_str(&text),
                },
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
            let start = out.len();
            if raw.starts_with('"') {
                let text = json_string(raw);
                if text.is_empty() {
                    return false;
                }
                // A string holding JSON counts as that JSON, as Log Analytics stores it.
                if !canonical_json(&text, out) {
                    out.truncate(start);
                    push_escaped(out, &text);
                }
            } else if !canonical_json(raw, out) {
                out.truncate(start);
                out.push_str(raw);
            }
        }
    }
    true
}

/// The text of a JSON string (escapes resolved), or the raw text of any other value.
fn json_string(raw: &str) -> Cow<'_, str> {
    decode_string(raw).unwrap_or(Cow::Borrowed(raw))
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

/// An integer that fits a long as itself, any other number as the double it reads as (Log
/// Analytics keeps numbers as long or real).
fn push_number(out: &mut String, n: &serde_json::Number) {
    use std::fmt::Write;
    if let Some(i) = n.as_i64() {
        let _ = write!(out, "{i}");
    } else if let Some(f) = n.as_f64() {
        push_double(out, f);
    } else {
        out.push_str(&n.to_string());
    }
}

/// A double: integral ones below 2^53 without a fraction, others in Rust's shortest form.
fn push_double(out: &mut String, f: f64) {
    use std::fmt::Write;
    if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
        let _ = write!(out, "{}", f as i64);
    } else {
        let _ = write!(out, "{f}");
    }
}

/// Nesting deeper than this is not canonicalized (kept as sent): no input can exhaust the stack.
const MAX_DEPTH: usize = 64;

/// Writes `text` (one JSON value, whitespace around allowed) compact, object keys sorted,
/// strings with escapes resolved and written one way, numbers as [`push_number`]; false (with
/// `out` partly written) when it is not valid JSON. A byte scan, no tree: it runs for every
/// dynamic value of every sealed row.
fn canonical_json(text: &str, out: &mut String) -> bool {
    let bytes = text.as_bytes();
    let start = skip_ws(bytes, 0);
    match value_end(bytes, start) {
        Some(end) if skip_ws(bytes, end) == bytes.len() => {
            canonical_span(text, start, end, out, 0).is_some()
        }
        _ => false,
    }
}

/// The value spanning `text[start..end]` (found by [`value_end`]).
fn canonical_span(
    text: &str,
    start: usize,
    end: usize,
    out: &mut String,
    depth: usize,
) -> Option<()> {
    let bytes = text.as_bytes();
    if depth > MAX_DEPTH {
        return None;
    }
    match bytes.get(start)? {
        b'{' => {
            let mut entries: Vec<(Cow<'_, str>, usize, usize)> = Vec::new();
            let mut at = skip_ws(bytes, start + 1);
            if bytes.get(at) != Some(&b'}') {
                loop {
                    if bytes.get(at) != Some(&b'"') {
                        return None;
                    }
                    let key_end = string_end(bytes, at)?;
                    let key = json_string(&text[at..key_end]);
                    at = skip_ws(bytes, key_end);
                    if bytes.get(at) != Some(&b':') {
                        return None;
                    }
                    at = skip_ws(bytes, at + 1);
                    let value_to = value_end(bytes, at)?;
                    entries.push((key, at, value_to));
                    at = skip_ws(bytes, value_to);
                    match next_item(bytes, at, b'}')? {
                        Some(next) => at = next,
                        None => break,
                    }
                }
            }
            (at + 1 == end).then_some(())?;
            // A key given twice counts once, its last value, as a JSON reader keeps it.
            entries.reverse();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            entries.dedup_by(|later, kept| later.0 == kept.0);
            out.push('{');
            for (i, (key, from, to)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_escaped(out, key);
                out.push(':');
                canonical_span(text, *from, *to, out, depth + 1)?;
            }
            out.push('}');
        }
        b'[' => {
            out.push('[');
            let mut at = skip_ws(bytes, start + 1);
            let mut first = true;
            if bytes.get(at) != Some(&b']') {
                loop {
                    let value_to = value_end(bytes, at)?;
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    canonical_span(text, at, value_to, out, depth + 1)?;
                    at = skip_ws(bytes, value_to);
                    match next_item(bytes, at, b']')? {
                        Some(next) => at = next,
                        None => break,
                    }
                }
            }
            (at + 1 == end).then_some(())?;
            out.push(']');
        }
        b'"' => {
            // Only a well-formed string: an escape the decoder refuses makes the value invalid.
            push_escaped(out, &decode_string(&text[start..end])?);
        }
        _ => {
            let raw = &text[start..end];
            match raw {
                "true" | "false" | "null" => out.push_str(raw),
                _ if is_plain_integer(raw) => out.push_str(raw),
                _ => push_number(out, &serde_json::from_str::<serde_json::Number>(raw).ok()?),
            }
        }
    }
    Some(())
}

/// An integer literal already in its canonical spelling (no sign on zero, no leading zero),
/// short enough to be an i64.
fn is_plain_integer(raw: &str) -> bool {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    !digits.is_empty()
        && digits.len() <= 18
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" && raw.len() == 1 || !digits.starts_with('0'))
}

/// A JSON string, escaped one way: quote, backslash and control characters only.
fn push_escaped(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests;
