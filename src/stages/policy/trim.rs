//! Trimming a mapped row: columns left out, string values cut to a length with a marker.

use super::condition::text_of;
use crate::stages::decode::Fields;
use crate::stages::map::json::push_json_string;

/// `json` without `drop_columns` and with the `cut` string columns at most their byte count
/// (a marker naming the rule inside it when it fits); None when nothing changes.
pub fn trim(
    json: &str,
    drop_columns: &[String],
    cut: &[(String, usize)],
    rule: &str,
) -> Option<String> {
    let row = Fields::parse(json).ok()?;
    let mut out = String::with_capacity(json.len());
    let mut changed = false;
    for (key, value) in &row.0 {
        if drop_columns.iter().any(|c| c == key) {
            changed = true;
            continue;
        }
        out.push(if out.is_empty() { '{' } else { ',' });
        push_json_string(&mut out, key);
        out.push(':');
        let limit = cut.iter().find(|(c, _)| c == key).map(|(_, n)| *n);
        let text = limit
            .and_then(|_| text_of(value))
            .filter(|_| value.get().starts_with('"'));
        match (limit, text) {
            (Some(limit), Some(text)) if text.len() > limit => {
                push_json_string(&mut out, &cut_to(&text, limit, rule));
                changed = true;
            }
            _ => out.push_str(value.get()),
        }
    }
    if out.is_empty() {
        out.push('{');
    }
    out.push('}');
    changed.then_some(out)
}

/// `json` with the values of `columns` that are objects or arrays written as JSON text (a
/// string), as a table without dynamic columns (Auxiliary) takes them; None when none is.
pub fn dynamic_as_text(json: &str, columns: &[String]) -> Option<String> {
    let row = Fields::parse(json).ok()?;
    let mut out = String::with_capacity(json.len() + 16);
    let mut changed = false;
    for (key, value) in &row.0 {
        out.push(if out.is_empty() { '{' } else { ',' });
        push_json_string(&mut out, key);
        out.push(':');
        let raw = value.get();
        if columns.iter().any(|c| c == key) && (raw.starts_with('{') || raw.starts_with('[')) {
            push_json_string(&mut out, raw);
            changed = true;
        } else {
            out.push_str(raw);
        }
    }
    if out.is_empty() {
        out.push('{');
    }
    out.push('}');
    changed.then_some(out)
}

/// `text` cut to at most `limit` bytes on a character boundary, ending in a marker when the
/// marker leaves room for some of the text.
fn cut_to(text: &str, limit: usize, rule: &str) -> String {
    let marker = format!("...[cut by policy rule {rule}: {} bytes]", text.len());
    let room = if marker.len() < limit {
        limit - marker.len()
    } else {
        limit
    };
    let mut end = room.min(text.len());
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut cut = text[..end].to_string();
    if room < limit {
        cut.push_str(&marker);
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_values_become_their_json_text() {
        let row = r#"{"TimeGenerated":"2024-01-01T00:00:00Z","AdditionalFields":{"a":[1,"x"]},"Other":{"b":2},"Empty":null}"#;
        let cols = ["AdditionalFields".to_string(), "Empty".to_string()];
        let out = dynamic_as_text(row, &cols).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["AdditionalFields"], r#"{"a":[1,"x"]}"#);
        assert_eq!(v["Other"]["b"], 2, "only the named columns");
        assert!(v["Empty"].is_null());
        assert!(dynamic_as_text(&out, &cols).is_none(), "already text");
    }

    #[test]
    fn columns_go_and_strings_are_cut_within_their_limit() {
        let long = "é".repeat(100);
        let row = format!(
            r#"{{"TimeGenerated":"2024-01-01T00:00:00Z","Big":"{long}","Extra":{{"a":1}},"N":5}}"#
        );
        let cut = vec![("Big".to_string(), 80), ("N".to_string(), 1)];
        let out = trim(&row, &["Extra".to_string()], &cut, "r1").unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let big = v["Big"].as_str().unwrap();
        assert!(big.len() <= 80, "{}", big.len());
        assert!(
            big.ends_with("...[cut by policy rule r1: 200 bytes]"),
            "{big}"
        );
        assert!(big.starts_with("ééé"));
        assert!(v.get("Extra").is_none());
        // Only strings are cut; a number stays as it was.
        assert_eq!(v["N"], 5);
        assert_eq!(v["TimeGenerated"], "2024-01-01T00:00:00Z");
        // A limit smaller than the marker cuts without one.
        let tiny = trim(&row, &[], &[("Big".to_string(), 5)], "r1").unwrap();
        let v: serde_json::Value = serde_json::from_str(&tiny).unwrap();
        assert_eq!(v["Big"], "éé");
        // Nothing to do: None, the row stays as it is.
        assert!(
            trim(
                &row,
                &["Missing".to_string()],
                &[("Big".to_string(), 1000)],
                "r1"
            )
            .is_none()
        );
    }
}
