//! Bad input: every broken piece gets a per-record reason, is written out and counted; the exit
//! code says records were rejected; nothing panics and nothing is dropped in silence.

mod common;

use std::io::Write;
use std::process::Command;

use common::{run, temp_input};
use serde_json::{Value, json};

const GOOD: &str = r#"{"CreationTime":"2026-01-02T03:04:05","Id":"11111111-2222-4333-8444-555555555555","Operation":"FileAccessed","OrganizationId":"7d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d","RecordType":6,"UserType":0,"Workload":"SharePoint","UserId":"a@contoso.com"}"#;

fn audit(extra: Value) -> String {
    let mut v: Value = serde_json::from_str(GOOD).unwrap();
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    v.to_string()
}

#[test]
fn truncated_json_line_and_truncated_array_keep_the_intact_records() {
    let lines = format!("{GOOD}\n{}\n{GOOD}\n", &GOOD[..40]);
    let (_d, path) = temp_input("lines.ndjson", lines.as_bytes());
    let r = run(&[path]);
    assert_eq!(r.stats.rows(), 2);
    assert_eq!(r.rejected_codes(), ["unparsable_json"]);
    assert_eq!(r.rejected[0]["line"], 2);
    assert!(r.rejected[0]["reason"].as_str().unwrap().contains("EOF"));
    assert_eq!(r.rejected[0]["raw"], &GOOD[..40]);

    let array = format!("[\n{GOOD},\n{GOOD},\n{}", &GOOD[..60]);
    let (_d, path) = temp_input("blob.json", array.as_bytes());
    let r = run(&[path]);
    assert_eq!(r.stats.rows(), 2);
    assert_eq!(r.rejected_codes(), ["truncated_json"]);
    assert!(
        r.rejected[0]["reason"]
            .as_str()
            .unwrap()
            .contains("after 2 complete records")
    );
}

#[test]
fn wrong_types_go_to_additional_fields_and_required_ones_reject() {
    let rows = [
        audit(
            json!({"ElevationDuration": "three hours", "CrossMailboxOperations": "maybe", "LoginStatus": 1.5}),
        ),
        audit(json!({"CreationTime": "yesterday"})),
        audit(json!({"CreationTime": 12345})),
    ];
    let (_d, path) = temp_input("types.ndjson", rows.join("\n").as_bytes());
    let r = run(&[path]);
    let mapped = r.table("OfficeActivity_CL");
    assert_eq!(mapped.len(), 1);
    let row = &mapped[0];
    assert!(
        row.get("ElevationDuration").is_none(),
        "not silently nulled: moved"
    );
    assert_eq!(row["AdditionalFields"]["ElevationDuration"], "three hours");
    assert_eq!(row["AdditionalFields"]["CrossMailboxOperations"], "maybe");
    assert_eq!(row["AdditionalFields"]["LoginStatus"], "1.5");
    let kinds: Vec<&str> = r.notices[0]["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["unconverted"; 3]);
    assert_eq!(r.stats.notes.values().sum::<u64>(), 3);
    assert_eq!(r.rejected_codes(), ["required_column", "required_column"]);
    assert!(
        r.rejected[0]["reason"]
            .as_str()
            .unwrap()
            .contains("TimeGenerated")
    );
    assert_eq!(r.rejected[1]["line"], 3);
}

#[test]
fn invalid_utf8_is_refused_per_line() {
    let bad_line = b"{\"CreationTime\":\"2026-01-02T03:04:05\",\"UserId\":\"\xc3\x28\"}";
    let bad_at = bad_line.iter().position(|b| *b == 0xc3).unwrap();
    let mut bytes = format!("{GOOD}\n").into_bytes();
    bytes.extend_from_slice(bad_line);
    bytes.push(b'\n');
    bytes.extend_from_slice(format!("{GOOD}\n").as_bytes());
    let (_d, path) = temp_input("utf8.ndjson", &bytes);
    let r = run(&[path]);
    assert_eq!(r.stats.rows(), 2);
    assert_eq!(r.rejected_codes(), ["invalid_utf8"]);
    let reason = r.rejected[0]["reason"].as_str().unwrap();
    assert!(reason.contains(&format!("byte {bad_at}")), "{reason}");
    let raw = r.rejected[0]["raw"].as_str().unwrap();
    assert_eq!(
        raw.find('\u{1}'),
        Some(bad_at),
        "the bad byte shows as U+0001: {raw:?}"
    );
}

#[test]
fn an_80_kb_field_is_truncated_with_a_marker_and_counted() {
    let big = "x".repeat(80 * 1024);
    let (_d, path) = temp_input("big.ndjson", audit(json!({"UserAgent": big})).as_bytes());
    let r = run(&[path]);
    assert!(r.rejected.is_empty());
    let ua = r.table("OfficeActivity_CL")[0]["UserAgent"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ua.len() <= 64_000, "{}", ua.len());
    assert!(ua.ends_with("...[truncated by m365-sentinel: 81920 bytes]"));
    assert_eq!(r.notices[0]["notes"][0]["kind"], "truncated");
    assert_eq!(r.notices[0]["notes"][0]["column"], "UserAgent");
}

#[test]
fn a_2_mb_record_is_refused_when_it_cannot_fit_a_request() {
    // Twenty columns of 60 KB: each field is under the limit, the row is over the body limit.
    let columns = common::WIDE_COLUMNS;
    let mut extra = serde_json::Map::new();
    for c in columns {
        extra.insert(c.to_string(), Value::String("y".repeat(60_000)));
    }
    extra.insert("Blob".into(), Value::String("z".repeat(800_000)));
    let record = audit(Value::Object(extra));
    assert!(record.len() > 2_000_000);
    let (_d, path) = temp_input("huge.ndjson", format!("{record}\n{GOOD}\n").as_bytes());
    let r = run(&[path]);
    assert_eq!(r.stats.rows(), 1);
    assert_eq!(r.rejected_codes(), ["row_too_large"]);
    assert!(
        r.rejected[0]["reason"]
            .as_str()
            .unwrap()
            .contains("1000000")
    );
    assert_eq!(r.rejected[0]["line"], 1);
    assert_eq!(
        r.rejected[0]["raw"].as_str().unwrap().len(),
        record.len(),
        "kept whole"
    );

    // 2 MB spread over forty unmapped fields: AdditionalFields is one field, so it is cut to
    // the field limit with a marker (as the service would cut it, but visibly) and the row fits.
    let mut extra = serde_json::Map::new();
    for i in 0..40 {
        extra.insert(format!("Blob{i}"), Value::String("y".repeat(50_000)));
    }
    let (_d, path) = temp_input("wide.ndjson", audit(Value::Object(extra)).as_bytes());
    let r = run(&[path]);
    assert!(r.rejected.is_empty());
    let extra = r.table("OfficeActivity_CL")[0]["AdditionalFields"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(extra.len() <= 64_000 && extra.contains("[truncated by m365-sentinel"));
    assert_eq!(r.notices[0]["notes"][0]["kind"], "truncated");
    assert_eq!(r.notices[0]["notes"][0]["column"], "AdditionalFields");
}

#[test]
fn empty_files_unknown_categories_and_non_objects() {
    let (_d1, empty) = temp_input("empty.json", b"");
    let defender = r#"{"time":"2026-01-01T00:00:00Z","category":"AdvancedHunting-DeviceEvents","properties":{"Timestamp":"2026-01-01T00:00:00Z"}}
{"time":"2026-01-01T00:00:00Z","category":"AdvancedHunting-EmailEvents","properties":"oops"}
{"time":"2026-01-01T00:00:00Z","category":"AdvancedHunting-EmailEvents","properties":{"Timestamp":"2026-01-01T00:00:00Z","NetworkMessageId":"n"}}
"hello"
[1, {"what":"ever"}]
"#;
    let (_d2, other) = temp_input("mixed.ndjson", defender.as_bytes());
    let r = run(&[empty, other]);
    assert_eq!(r.table("EmailEvents_CL").len(), 1);
    assert_eq!(
        r.rejected_codes(),
        [
            "empty_input",
            "unknown_category",
            "bad_defender_row",
            "not_an_object",
            "not_an_object",
            "unroutable"
        ]
    );
    assert!(
        r.rejected[1]["reason"]
            .as_str()
            .unwrap()
            .contains("AdvancedHunting-DeviceEvents")
    );
    assert_eq!(r.stats.rejected_total(), 6);
}

#[test]
fn hostile_nesting_is_refused_without_a_crash() {
    let nested = |depth: usize| {
        format!(
            "{{\"CreationTime\":\"2026-01-02T03:04:05\",\"RecordType\":1,\"X\":{}1{}}}",
            "{\"a\":".repeat(depth),
            "}".repeat(depth)
        )
    };
    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let text = format!("{deep_array}\n{}\n{}\n{GOOD}\n", nested(5_000), nested(100));
    let (_d, path) = temp_input("deep.ndjson", text.as_bytes());
    let r = run(&[path]);
    assert_eq!(r.rejected_codes(), ["not_an_object"]);
    // Nesting that readers downstream (KQL, serde_json, our own tests) would choke on: the
    // record is kept and the deep field travels as JSON text in AdditionalFields.
    assert_eq!(r.stats.rows(), 3);
    for (i, row) in r.table("OfficeActivity_CL")[..2].iter().enumerate() {
        let x = row["AdditionalFields"]["X"]
            .as_str()
            .expect("kept as JSON text");
        assert!(x.starts_with("{\"a\":{\"a\":"));
        assert_eq!(r.notices[i]["notes"][0]["kind"], "unconverted");
        assert!(
            r.notices[i]["notes"][0]["detail"]
                .as_str()
                .unwrap()
                .contains("nested too deeply")
        );
    }
}

#[test]
fn json_lines_whose_first_line_is_cut_short_keep_the_other_lines() {
    let text = format!("{}\n{GOOD}\n{GOOD}\n", &GOOD[..30]);
    let (_d, path) = temp_input("cut.ndjson", text.as_bytes());
    let r = run(&[path]);
    assert_eq!(r.stats.rows(), 2);
    assert_eq!(r.rejected_codes(), ["unparsable_json"]);
    assert_eq!(r.rejected[0]["line"], 1);
}

#[test]
fn garbage_never_panics_and_everything_is_accounted_for() {
    // A fixed-seed generator: every run tests the same inputs.
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let pieces: [&[u8]; 12] = [
        b"{",
        b"}",
        b"[",
        b"]",
        b"\"",
        b":",
        b",",
        b"\n",
        b"\r\n",
        b"\"records\"",
        b"\xff",
        GOOD.as_bytes(),
    ];
    let dir = tempfile::tempdir().unwrap();
    for i in 0..40 {
        let mut bytes = Vec::new();
        for _ in 0..(next() % 200) {
            bytes.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]);
        }
        std::fs::write(dir.path().join(format!("g{i:02}.json")), &bytes).unwrap();
    }
    let r = run(&[dir.path().to_path_buf()]);
    assert_eq!(r.stats.files, 40);
    assert_eq!(
        r.stats.records_in(),
        r.stats.rows() + r.rejected.len() as u64
    );
    for row in r.all_rows() {
        assert!(row["TimeGenerated"].is_string());
    }
}

#[test]
fn a_directory_of_mixed_files_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(input.join("nested")).unwrap();
    std::fs::write(input.join("a.ndjson"), format!("{GOOD}\n{{broken\n")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(format!("{GOOD}\r\n{GOOD}\r\n").as_bytes())
        .unwrap();
    std::fs::write(input.join("nested/b.json.gz"), gz.finish().unwrap()).unwrap();
    std::fs::write(input.join("c.txt"), "not json at all\n").unwrap();
    std::fs::write(input.join("d.json"), "").unwrap();
    let out = dir.path().join("out");
    let result = Command::new(env!("CARGO_BIN_EXE_m365-sentinel"))
        .args(["dry-run", "--input"])
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert_eq!(
        result.status.code(),
        Some(3),
        "exit code 3 means records were rejected\n{stdout}"
    );
    assert!(stdout.contains("read 4 file(s)"), "{stdout}");
    assert!(stdout.contains("3 row(s) mapped, 3 rejected"), "{stdout}");
    assert!(
        stdout.contains("unparsable_json") && stdout.contains("empty_input"),
        "{stdout}"
    );
    let rejected = std::fs::read_to_string(out.join("rejected.ndjson")).unwrap();
    assert_eq!(rejected.lines().count(), 3);
    assert!(rejected.contains("a.ndjson\",\"line\":2"), "{rejected}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&out), 0o700);
        assert_eq!(mode(&out.join("rejected.ndjson")), 0o600);
        assert_eq!(
            mode(&out.join("Custom-OfficeActivity_CL/body-000001.json")),
            0o600
        );
    }
}

#[test]
fn secrets_in_rejected_records_are_masked_too() {
    let line = r#"{"Operation":"Set-Thing","Parameters":[{"Name":"Password","Value":"Sup3rS3cret"}],"Note":"Bearer abcdefghijklmnopqrstu"}"#;
    let (_d, path) = temp_input("secret.ndjson", line.as_bytes());
    let r = run(&[path]);
    assert_eq!(r.rejected_codes(), ["unroutable"]);
    let raw = r.rejected[0]["raw"].as_str().unwrap();
    assert!(
        !raw.contains("Sup3rS3cret") && !raw.contains("abcdefghijklmnopqrstu"),
        "{raw}"
    );
}
