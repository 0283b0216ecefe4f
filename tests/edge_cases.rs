//! Edge cases found in review: each one once lost data, leaked a secret or could hang a run.

mod common;

use common::{run, temp_input};
use serde_json::Value;

const BASE: &str = r#""CreationTime":"2026-01-02T03:04:05","Id":"11111111-2222-4333-8444-555555555555","Operation":"Set-User","OrganizationId":"7d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d","RecordType":1,"UserType":2,"Workload":"Exchange","UserId":"a@contoso.com""#;

#[test]
fn an_output_directory_inside_the_input_directory_is_not_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(input.join("junk.txt"), "not json\n".repeat(50)).unwrap();
    std::fs::write(input.join("ok.ndjson"), format!("{{{BASE}}}\n")).unwrap();
    let out = input.join("out");
    let setup = common::setup();
    let stats = m365_sentinel::run::dry_run(
        std::sync::Arc::new(setup),
        m365_sentinel::pipeline::Intake::Files(vec![input.clone()]),
        &out,
    )
    .unwrap();
    assert_eq!(stats.files, 2, "the output's own files are not inputs");
    assert_eq!(stats.rows(), 1);
    assert_eq!(stats.rejected_total(), 50);
}

#[test]
fn thousands_of_repeated_keys_are_all_kept() {
    let mut record = format!("{{{BASE}");
    for i in 0..20_000 {
        record.push_str(&format!(",\"a\":{i}"));
    }
    record.push('}');
    let (_d, path) = temp_input("dup.ndjson", record.as_bytes());
    let r = run(&[path]);
    let extra = &r.table("OfficeActivity_CL")[0]["AdditionalFields"];
    let extra = match extra {
        Value::String(text) => text.clone(), // cut at the field limit, visibly
        other => other.to_string(),
    };
    assert!(
        extra.contains("\"a\":0") && extra.contains("\"a_2\":1") && extra.contains("\"a_3\":2")
    );
}

#[test]
fn secrets_in_records_that_are_not_utf8_are_masked_before_they_are_written() {
    let mut line = format!(
        "{{{BASE},\"Parameters\":[{{\"Name\":\"Password\",\"Value\":\"Hunter2secret\"}}],\"Bad\":\""
    )
    .into_bytes();
    line.extend_from_slice(b"\xff\xfe\"}\n");
    let (_d, path) = temp_input("bad.ndjson", &line);
    let r = run(&[path]);
    assert_eq!(r.rejected_codes(), ["invalid_utf8"]);
    let written = r.rejected[0].to_string();
    assert!(!written.contains("Hunter2secret"), "{written}");
    assert!(!written.contains(&base64_of(b"Hunter2secret")[..12]));
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn parameters_sent_as_a_json_string_with_spaces_are_masked() {
    let record = format!(
        "{{{BASE},\"Parameters\":\"[{{\\\"Name\\\": \\\"Password\\\", \\\"Value\\\": \\\"Pa55 word\\\"}}, {{\\\"Name\\\": \\\"Identity\\\", \\\"Value\\\": \\\"bob\\\"}}]\"}}"
    );
    let (_d, path) = temp_input("str-params.ndjson", record.as_bytes());
    let r = run(&[path]);
    assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    let params = r.table("OfficeActivity_CL")[0]["Parameters"]
        .as_str()
        .unwrap()
        .to_string();
    let parsed: Value = serde_json::from_str(&params).unwrap();
    assert_eq!(parsed[0]["Value"], "***REDACTED***");
    assert_eq!(parsed[1]["Value"], "bob");
}

#[test]
fn a_null_preferred_source_falls_back_to_the_next() {
    let record = format!(
        "{{{BASE},\"IntraSystemId\":null,\"IntraSystemsId\":\"d1497f7e-15b4-49aa-83ad-11a17ca4a2f4\"}}"
    );
    let (_d, path) = temp_input("intra.ndjson", record.as_bytes());
    let r = run(&[path]);
    let row = &r.table("OfficeActivity_CL")[0];
    assert_eq!(row["IntraSystemId"], "d1497f7e-15b4-49aa-83ad-11a17ca4a2f4");
    assert!(
        row.get("AdditionalFields")
            .is_none_or(|a| a.get("IntraSystemsId").is_none())
    );
}

#[test]
fn an_audit_record_with_a_category_field_stays_an_audit_record() {
    let record = format!("{{{BASE},\"category\":\"Mailbox\"}}");
    let (_d, path) = temp_input("cat.ndjson", record.as_bytes());
    let r = run(&[path]);
    assert!(r.rejected.is_empty());
    assert_eq!(
        r.table("OfficeActivity_CL")[0]["AdditionalFields"]["category"],
        "Mailbox"
    );
}

#[test]
fn a_repeated_properties_key_is_kept_not_dropped() {
    let row = r#"{"time":"2026-01-01T00:00:00Z","category":"AdvancedHunting-EmailUrlInfo","properties":{"Timestamp":"2026-01-01T00:00:00Z","Url":"https://a.example"},"properties":{"Url":"https://b.example"}}"#;
    let (_d, path) = temp_input("dup-props.ndjson", row.as_bytes());
    let r = run(&[path]);
    let mapped = &r.table("EmailUrlInfo_CL")[0];
    assert_eq!(mapped["Url"], "https://a.example");
    assert_eq!(
        mapped["AdditionalFields"]["properties"]["Url"],
        "https://b.example"
    );
}

fn record(n: usize) -> String {
    format!(
        "{{\"CreationTime\":\"2026-01-02T03:04:05\",\"Id\":\"r{n}\",\"RecordType\":6,\"Operation\":\"FileAccessed\"}}"
    )
}

#[test]
fn a_broken_record_inside_a_content_blob_costs_only_itself() {
    let mut items: Vec<String> = (0..10).map(record).collect();
    items[3] = r#"{"CreationTime":"2026-01-02T03:04:05","Id":"r3" "RecordType":6}"#.into();
    let blob = format!("[\n  {}\n]\n", items.join(",\n  "));
    let (_d, path) = temp_input("blob.json", blob.as_bytes());
    let r = run(&[path]);
    assert_eq!(r.stats.rows(), 9);
    assert_eq!(r.rejected_codes(), ["unparsable_json"]);
    assert_eq!(r.rejected[0]["line"], 5);
    assert!(r.rejected[0]["raw"].as_str().unwrap().contains("\"r3\""));
    let ids: Vec<&str> = r
        .table("OfficeActivity_CL")
        .iter()
        .map(|row| row["OfficeId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["r0", "r1", "r2", "r4", "r5", "r6", "r7", "r8", "r9"]);
}

#[test]
fn json_lines_whose_first_line_is_a_cut_short_array_keep_the_rest() {
    let text = format!(
        "[{},{}\n{}\n{}\n",
        record(0),
        &record(1)[..20],
        record(2),
        record(3)
    );
    let (_d, path) = temp_input("lines.ndjson", text.as_bytes());
    let r = run(&[path]);
    // The first line is one broken array: its whole first record is kept, its cut tail refused.
    assert_eq!(r.stats.rows(), 3);
    assert_eq!(r.rejected_codes(), ["truncated_json"]);
}

#[test]
fn pretty_objects_back_to_back_as_jq_writes_them() {
    let pretty = |n| {
        serde_json::to_string_pretty(&serde_json::from_str::<Value>(&record(n)).unwrap()).unwrap()
    };
    let text = format!(
        "{}\n{}\n{{\n  \"CreationTime\": oops\n}}\n{}\n",
        pretty(0),
        pretty(1),
        pretty(2)
    );
    let (_d, path) = temp_input("jq.json", text.as_bytes());
    let r = run(&[path]);
    assert_eq!(r.stats.rows(), 3);
    assert_eq!(r.rejected_codes(), ["unparsable_json"]);
    assert_eq!(r.rejected[0]["line"], 13);
}

#[test]
fn a_byte_that_is_not_utf8_in_a_document_costs_only_its_record() {
    let mut blob = format!("[\n{},\n", record(0)).into_bytes();
    blob.extend_from_slice(
        b"{\"CreationTime\":\"2026-01-02T03:04:05\",\"Id\":\"bad\xff\",\"RecordType\":6},\n",
    );
    blob.extend_from_slice(format!("{}\n]\n", record(2)).as_bytes());
    let (_d, path) = temp_input("blob.json", &blob);
    let r = run(&[path]);
    assert_eq!(r.stats.rows(), 2);
    assert_eq!(r.rejected_codes(), ["invalid_utf8"]);
    assert_eq!(r.rejected[0]["line"], 3);
}

#[test]
fn booleans_in_string_columns_follow_the_table_spelling() {
    let audit = format!("{{{BASE},\"ExternalAccess\":true}}");
    let defender = r#"{"category":"AdvancedHunting-EmailUrlInfo","properties":{"Timestamp":"2026-01-01T00:00:00Z","UrlLocation":false}}"#;
    let (_d, path) = temp_input("bools.ndjson", format!("{audit}\n{defender}\n").as_bytes());
    let r = run(&[path]);
    assert_eq!(
        r.table("OfficeActivity_CL")[0]["ExternalAccess"],
        "True",
        ".NET casing for OfficeActivity"
    );
    assert_eq!(
        r.table("EmailUrlInfo_CL")[0]["UrlLocation"],
        "false",
        "JSON casing elsewhere"
    );
}

#[test]
fn what_the_field_limit_cut_is_kept_in_the_notices() {
    let record = format!("{{{BASE},\"UserAgent\":\"{}\"}}", "u".repeat(70_000));
    let (_d, path) = temp_input("long.ndjson", record.as_bytes());
    let r = run(&[path]);
    assert_eq!(r.notices[0]["notes"][0]["kind"], "truncated");
    assert_eq!(r.notices[0]["raw"].as_str().unwrap(), record);
}

#[test]
fn records_joined_by_commas_on_one_line_are_each_kept() {
    let line: Vec<String> = (0..20_000).map(record).collect();
    let (_d, path) = temp_input("commas.json", line.join(",").as_bytes());
    let r = run(&[path]);
    assert_eq!(r.stats.rows(), 20_000);
    assert!(r.rejected.is_empty(), "{} rejected", r.rejected.len());
}

#[test]
fn an_event_hubs_body_missing_its_closing_brace_does_not_hide_the_next_one() {
    let body = |a: usize, b: usize| {
        format!(
            "{{\"records\":[{{\"category\":\"AdvancedHunting-EmailUrlInfo\",\"properties\":{{\"Timestamp\":\"2026-01-01T00:00:0{a}Z\"}}}},{{\"category\":\"AdvancedHunting-EmailUrlInfo\",\"properties\":{{\"Timestamp\":\"2026-01-01T00:00:0{b}Z\"}}}}]"
        )
    };
    let text = format!("{}\n{}}}\n", body(1, 2), body(3, 4));
    let (_d, path) = temp_input("bodies.json", text.as_bytes());
    let r = run(&[path]);
    assert_eq!(r.table("EmailUrlInfo_CL").len(), 4, "{:?}", r.rejected);
}

#[test]
fn a_missing_comma_between_elements_costs_nothing() {
    let text = format!("[{} {},{}]", record(0), record(1), record(2));
    let (_d, path) = temp_input("comma.json", text.as_bytes());
    let r = run(&[path]);
    assert_eq!(r.stats.rows(), 3, "{:?}", r.rejected);
}

#[test]
fn a_record_cut_short_in_jq_output_does_not_swallow_the_next() {
    let pretty = |n| {
        serde_json::to_string_pretty(&serde_json::from_str::<Value>(&record(n)).unwrap()).unwrap()
    };
    let text = format!(
        "{}\n{{\n  \"CreationTime\": \"2026-\n{}\n",
        pretty(0),
        pretty(2)
    );
    let (_d, path) = temp_input("jq-cut.json", text.as_bytes());
    let r = run(&[path]);
    assert_eq!(r.stats.rows(), 2, "{:?}", r.rejected);
    assert_eq!(r.rejected.len(), 1);
}

#[test]
fn a_byte_that_is_not_utf8_in_a_one_line_blob_costs_only_its_record() {
    let mut line = format!("[{},{},", record(0), record(1)).into_bytes();
    line.extend_from_slice(
        b"{\"CreationTime\":\"2026-01-02T03:04:05\",\"Id\":\"\xff\",\"RecordType\":6},",
    );
    line.extend_from_slice(format!("{},{}]\n", record(3), record(4)).as_bytes());
    let (_d, path) = temp_input("blob.ndjson", &line);
    let r = run(&[path]);
    assert_eq!(r.stats.rows(), 4);
    assert_eq!(r.rejected_codes(), ["invalid_utf8"]);
}
