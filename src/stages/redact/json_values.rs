//! Reading JSON texts for the Name/Value rules: the values named by a `Name` key, and the
//! shape of a parameter list (which keys, whether a value is a switch).

use super::*;

pub(super) const NAME_KEYS: [&str; 2] = ["Name", "name"];
pub(super) const VALUE_KEYS: [&str; 6] = [
    "Value", "NewValue", "OldValue", "value", "newValue", "oldValue",
];

/// The string values of "Name"/"name" keys in a JSON text, found by a scan rather than a parse
/// (one SIMD search for `ame"`, then a look around each hit).
pub(super) fn name_values(json: &str) -> impl Iterator<Item = Cow<'_, str>> {
    let bytes = json.as_bytes();
    memchr::memmem::find_iter(bytes, b"ame\"").filter_map(move |at| {
        let key_start = at.checked_sub(2)?;
        if bytes[key_start] != b'"' || !matches!(bytes[key_start + 1], b'N' | b'n') {
            return None;
        }
        let rest = json
            .get(at + 4..)?
            .trim_start()
            .strip_prefix(':')?
            .trim_start();
        if !rest.starts_with('"') {
            return None;
        }
        let token = rest.as_bytes();
        let mut i = 1;
        while i < token.len() && token[i] != b'"' {
            i += if token[i] == b'\\' { 2 } else { 1 };
        }
        crate::stages::map::json::decode_string(rest.get(..(i + 1).min(rest.len()))?)
    })
}

/// The shape of a JSON text: its structure outside strings, and its object keys. None when it
/// is not valid JSON.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Shape {
    structure: Vec<u8>,
    keys: Vec<String>,
}

pub(super) fn json_shape(json: &str) -> Option<Shape> {
    serde_json::from_str::<serde::de::IgnoredAny>(json).ok()?;
    let bytes = json.as_bytes();
    let mut structure = Vec::new();
    let mut keys = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                let end = (i + 1).min(bytes.len());
                let is_key = bytes[end..]
                    .iter()
                    .find(|b| !b.is_ascii_whitespace())
                    .is_some_and(|b| *b == b':');
                structure.push(b'"');
                if is_key {
                    keys.push(json.get(start..end)?.to_string());
                }
                i = end;
            }
            b @ (b'{' | b'}' | b'[' | b']' | b':' | b',') => {
                structure.push(b);
                i += 1;
            }
            _ => i += 1,
        }
    }
    Some(Shape { structure, keys })
}

/// A value a switch parameter holds: nothing secret in it.
pub(super) fn is_switch(v: &Value) -> bool {
    match v {
        Value::Bool(_) | Value::Null => true,
        Value::String(s) => {
            let s = s.trim().trim_start_matches('$');
            s.is_empty() || s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false")
        }
        _ => false,
    }
}
