use super::*;
use serde_json::Value;

fn canon(ty: ColumnType, raw: &str) -> Option<String> {
    let mut out = String::new();
    canonical_value(ty, raw, &mut out).then_some(out)
}

#[test]
fn a_value_taken_as_already_canonical_is_what_the_full_canonicalization_makes_of_it() {
    use ColumnType::*;
    let values: &[(ColumnType, &str)] = &[
        (String, r#""plain text""#),
        (String, r#""with \"quote\"""#),
        (DateTime, r#""2026-03-02T09:15:44Z""#),
        (DateTime, r#""2026-03-02T09:15:44.12Z""#),
        (DateTime, r#""2026-03-02T09:15:44.1234567Z""#),
        (DateTime, r#""2026-03-02T09:15:44.12345678Z""#),
        (DateTime, r#""2026-03-02T09:15:44.100000001Z""#),
        (DateTime, r#""2026-03-02T09:15:44.120Z""#),
        (DateTime, r#""2026-03-02T09:15:44.Z""#),
        (DateTime, r#""2026-02-30T00:00:00Z""#),
        (DateTime, r#""2026-12-31T23:59:60Z""#),
        (DateTime, r#""2026-13-01T00:00:00Z""#),
        (DateTime, r#""2026-03-02T09:15:44+02:00""#),
        (DateTime, r#""2026-03-02 09:15:44Z""#),
        (DateTime, r#""0000-01-01T00:00:00Z""#),
        (Guid, r#""ab12cd34-0000-4000-8000-000000000000""#),
        (Guid, r#""AB12CD34-0000-4000-8000-000000000000""#),
        (Guid, r#""{ab12cd34-0000-4000-8000-000000000000}""#),
        (Long, "42"),
        (Long, "-7"),
        (Long, "007"),
        (Int, "0"),
        (Bool, "true"),
        (Bool, "false"),
        (Bool, r#""True""#),
    ];
    let mut fast = 0;
    for (ty, raw) in values {
        let escaped = raw.contains('\\');
        if let Some(text) = already_canonical(*ty, raw, escaped) {
            fast += 1;
            assert_eq!(canon(*ty, raw).as_deref(), Some(text), "{ty}: {raw}");
        }
    }
    assert!(fast >= 12, "the fast path took {fast} values");
    assert_eq!(
        already_canonical(DateTime, r#""2026-03-02T09:15:44.120Z""#, false),
        None
    );
    assert_eq!(already_canonical(String, r#""a\"b""#, true), None);
    assert_eq!(
        already_canonical(DateTime, r#""2026-03-02T09:15:44.12345678Z""#, false),
        None
    );
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
    // Reals by the double they are; braces off GUIDs; a repeated key once, its last value.
    assert_eq!(
        canon(Real, "9007199254740993"),
        canon(Real, "9007199254740992.0")
    );
    assert_eq!(
        canon(Guid, r#""{AB12CD34-0000-4000-8000-000000000000}""#),
        canon(Guid, r#""ab12cd34-0000-4000-8000-000000000000""#)
    );
    assert_eq!(
        canon(Dynamic, r#"{"a":1,"a":2}"#),
        Some(r#"{"a":2}"#.to_string())
    );
    assert_eq!(
        canon(Dynamic, "[18446744073709551615]"),
        canon(Dynamic, "[1.8446744073709552e19]")
    );
    // Not JSON, or nested past the limit: kept as sent, no panic.
    assert_eq!(canon(Dynamic, "{\"a\":"), Some("{\"a\":".to_string()));
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    assert_eq!(canon(Dynamic, &deep), Some(deep.clone()));
    assert_eq!(canon(Dynamic, "[-0, 010]"), Some("[-0, 010]".to_string()));
    assert_eq!(canon(Dynamic, "[-0,1e2]"), Some("[0,100]".to_string()));
    assert_eq!(
        canon(Dynamic, r#"{"z":"\u0041\n","a":{"y":true,"b":null}}"#),
        Some(r#"{"a":{"b":null,"y":true},"z":"A\u000a"}"#.to_string())
    );
    assert_ne!(canon(String, r#""a""#), canon(String, r#""b""#));
    assert_ne!(canon(Long, "1"), canon(Long, "2"));
}

/// The canonical text of a dynamic value by the obvious route: parsed into a tree, keys
/// sorted (the last of a repeated key kept, as the parser keeps it), written back.
fn by_tree(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_escaped(out, key);
                out.push(':');
                by_tree(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                by_tree(item, out);
            }
            out.push(']');
        }
        Value::String(s) => push_escaped(out, s),
        Value::Number(n) if is_plain_integer(&n.to_string()) => out.push_str(&n.to_string()),
        Value::Number(n) => push_number(out, n),
        Value::Bool(_) | Value::Null => out.push_str(&v.to_string()),
    }
}

#[test]
fn dynamic_values_in_order_or_not_canonicalize_as_their_parsed_tree_does() {
    let texts = [
        r#"{"Name":"Identity","Value":"user@contoso.com"}"#,
        r#"[{"Name":"A","Value":"1"},{"Name":"B","Value":"True"}]"#,
        r#"{"Version":1,"OperationCount":1}"#,
        r#"{"a":{"c":[1,2.50,{"z":null,"y":false}],"b":"x"},"b":-0.0}"#,
        r#"{"a":1,"a":2,"b":{"d":1,"c":2}}"#,
        r#"{"b":1,"a":1,"b":3}"#,
        r#"{"a\"b":1,"a":2}"#,
        r#"{"\u0061":1,"b":2}"#,
        r#"{"k":"line\nbreak \u00e9 \"q\""}"#,
        r#" { "a" : [ 1 , 2 ] , "b" : { } , "c" : [ ] } "#,
        r#"{"ab":1,"a":2,"abc":3,"b":4}"#,
        r#"{"é":1,"z":2,"A":3}"#,
        r#"[[[{"x":{"y":{"z":1e3}}}]]]"#,
        r#"{}"#,
    ];
    for text in texts {
        let tree: Value = serde_json::from_str(text).unwrap();
        let mut expect = String::new();
        by_tree(&tree, &mut expect);
        assert_eq!(canon(ColumnType::Dynamic, text), Some(expect), "{text}");
    }
    // Invalid inside: kept as sent; a repeated key's invalid first value is dropped with the
    // key, as a reader drops it.
    assert_eq!(
        canon(ColumnType::Dynamic, r#"{"a":[1,2x],"b":1}"#),
        Some(r#"{"a":[1,2x],"b":1}"#.to_string())
    );
    assert_eq!(
        canon(ColumnType::Dynamic, r#"{"a":[1,2x],"a":1}"#),
        Some(r#"{"a":1}"#.to_string())
    );
}

#[test]
fn deep_nesting_that_fails_at_the_bottom_costs_no_more_than_one_scan_per_level() {
    // Sixty objects, each holding the next, and an invalid number at the bottom: any
    // fall-back that recursed again at each level would take 2^60 steps.
    let depth = 60;
    let text = r#"{"a":"#.repeat(depth) + "1x" + &"}".repeat(depth);
    assert_eq!(canon(ColumnType::Dynamic, &text), Some(text.clone()));
}
