//! Small JSON text helpers for the mapping hot path: they work on text, never building a tree.

/// Appends `s` as a JSON string literal (quotes included).
pub fn push_json_string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0x00..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match escape {
            Some(e) => out.push_str(e),
            None => {
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Deepest nesting of arrays and objects kept as JSON. Deeper values are kept as JSON text: a
/// hostile payload must not reach readers (ours, Log Analytics, KQL) with recursion limits.
pub const MAX_DEPTH: usize = 64;

/// Appends `raw` (valid JSON) without the whitespace outside strings; returns its deepest
/// nesting of arrays and objects.
pub fn push_compact(out: &mut String, raw: &str) -> usize {
    let bytes = raw.as_bytes();
    let mut in_string = false;
    let mut escaped = false;
    let mut start = 0;
    let mut depth = 0usize;
    let mut max_depth = 0usize;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max_depth = max_depth.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b' ' | b'\n' | b'\r' | b'\t' => {
                out.push_str(&raw[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push_str(&raw[start..]);
    max_depth
}

/// The decoded content of a JSON string literal: borrowed when it holds no escapes.
pub fn decode_string(raw: &str) -> Option<std::borrow::Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(raw)
            .ok()
            .map(std::borrow::Cow::Owned)
    } else {
        Some(std::borrow::Cow::Borrowed(inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip_through_serde() {
        for s in [
            "plain",
            "q\"uote",
            "back\\slash",
            "nl\nx",
            "ctl\u{1}x",
            "é ü 日本",
            "",
        ] {
            let mut out = String::new();
            push_json_string(&mut out, s);
            assert_eq!(serde_json::from_str::<String>(&out).unwrap(), s);
            assert_eq!(decode_string(&out).unwrap(), s);
        }
    }

    #[test]
    fn compact_keeps_string_whitespace() {
        let mut out = String::new();
        let depth = push_compact(&mut out, "{ \"a b\" : [ 1 , \"x \\\" y\" ],\n\t\"c\": {} }");
        assert_eq!(out, r#"{"a b":[1,"x \" y"],"c":{}}"#);
        assert_eq!(depth, 2);
        let mut out = String::new();
        assert_eq!(push_compact(&mut out, r#"["[[[", {"a":[{}]}]"#), 4);
    }
}
