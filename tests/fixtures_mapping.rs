//! The repository's own fixtures (tests/fixtures/input), so a clone tests itself without
//! ../shared: ExchangeAdmin parameters, enums, gzip + CRLF, Event Hubs and Storage forms, and the
//! README's first command.

mod common;

use std::process::Command;

use common::{find, fixtures, run};
use serde_json::Value;

fn input(name: &str) -> std::path::PathBuf {
    fixtures().join("input").join(name)
}

#[test]
fn exchange_admin_parameters_are_a_json_string_parse_json_reads_back() {
    let r = run(&[input("exchange-admin.ndjson")]);
    assert!(r.rejected.is_empty());
    let rows = r.table("OfficeActivity_CL");
    let set_mailbox = find(rows, "Operation", "Set-Mailbox");
    assert_eq!(set_mailbox["RecordType"], "ExchangeAdmin");
    assert_eq!(set_mailbox["UserType"], "Admin");
    assert_eq!(set_mailbox["ResultStatus"], "True");
    assert_eq!(set_mailbox["ExternalAccess"], "False");
    assert_eq!(set_mailbox["ClientIP"], "203.0.113.25:51034");
    let params = set_mailbox["Parameters"]
        .as_str()
        .expect("Parameters is a string column");
    // What KQL's parse_json / todynamic does: read the text back as JSON.
    let parsed: Value = serde_json::from_str(params).unwrap();
    assert_eq!(parsed[1]["Name"], "ForwardingSmtpAddress");
    assert_eq!(parsed[1]["Value"], "smtp:exfil@example.net");
    assert!(
        params.contains("ForwardingSmtpAddress"),
        "Parameters has \"ForwardingSmtpAddress\" works"
    );

    let rule = find(rows, "Operation", "New-InboxRule");
    assert_eq!(rule["UserType"], "DcAdmin");
    assert_eq!(rule["ClientIP"], "[2001:db8::17]:443");
    assert_eq!(
        rule["OriginatingServer"],
        "AM0PR01MB1234 (15.20.7316.039)\r\n"
    );
    assert_eq!(rule["OfficeObjectId"], "ceo\\Move to RSS");

    let password = find(rows, "Operation", "Set-MsolUserPassword");
    assert_eq!(password["TimeGenerated"], "2026-03-02T09:20:11.527Z");
    let params: Value = serde_json::from_str(password["Parameters"].as_str().unwrap()).unwrap();
    assert_eq!(params[1]["Value"], "***REDACTED***");
    assert_eq!(
        params[2]["Value"], "True",
        "ForceChangePassword is a switch, not a secret"
    );
    let modified: Value =
        serde_json::from_str(password["ModifiedProperties"].as_str().unwrap()).unwrap();
    assert_eq!(modified[0]["Name"], "PasswordNeverExpires");
    assert_eq!(modified[0]["NewValue"], "False");
    for body in r.bodies.values().flatten() {
        assert!(!String::from_utf8_lossy(body).contains("Winter2026!"));
    }
}

#[test]
fn gzip_crlf_file_with_enums_and_unknown_values() {
    let r = run(&[input("sharepoint-teams-exchange.ndjson.gz")]);
    assert!(r.rejected.is_empty());
    let rows = r.table("OfficeActivity_CL");
    assert_eq!(rows.len(), 4);
    let file = find(rows, "Operation", "FileDownloaded");
    assert_eq!(file["RecordType"], "SharePointFileOperation");
    assert_eq!(
        file["Site_Url"],
        "https://contoso-my.sharepoint.com/personal/j_doe_contoso_com/"
    );
    let login = find(rows, "Operation", "MailboxLogin");
    assert_eq!(login["Logon_Type"], "Delegated");
    assert_eq!(login["ClientIP"], "::ffff:198.51.100.9");
    assert_eq!(login["Client_IPAddress"], "198.51.100.9");
    let unknown = find(rows, "Operation", "UAMOperation");
    assert_eq!(unknown["RecordType"], "117");
    assert_eq!(unknown["UserType"], "Guest");
    assert_eq!(unknown["ClientIP"], "192.0.2.200%12");
    assert_eq!(
        unknown["AdditionalFields"]["NewUndocumentedField"]["Count"],
        3
    );
    let teams = find(rows, "Operation", "MemberAdded");
    assert_eq!(teams["Members"][0]["Role"], 2);
    assert_eq!(teams["AADGroupId"], "c4d5e6f7-a8b9-4c0d-9e1f-2a3b4c5d6e7f");
}

#[test]
fn event_hubs_body_merges_additional_fields_and_storage_lines_route() {
    let r = run(&[
        input("defender-eventhubs-body.json"),
        input("defender-storage-PT1H.json"),
    ]);
    assert!(r.rejected.is_empty());
    let ee = &r.table("EmailEvents_CL")[0];
    assert_eq!(ee["TimeGenerated"], "2026-03-04T08:01:02Z");
    assert_eq!(ee["To"].as_array().unwrap().len(), 2);
    assert_eq!(ee["EmailClusterId"], 1234567890123_i64);
    // EmailEvents has an AdditionalFields column of its own (JSON in a string): it is opened up
    // and the envelope and unknown keys join it.
    assert_eq!(ee["AdditionalFields"]["SubmissionId"], "s-1");
    assert_eq!(ee["AdditionalFields"]["Tenant"], "DefaultTenant");
    assert_eq!(
        ee["AdditionalFields"]["__UDI_RequiredFields_RecipientEmailAddress"],
        "ceo@contoso.com"
    );
    assert_eq!(r.table("EmailAttachmentInfo_CL").len(), 1);
    assert_eq!(
        r.table("EmailUrlInfo_CL").len(),
        2,
        "one from the body, one from the blob"
    );
    assert_eq!(r.table("EmailPostDeliveryEvents_CL").len(), 2);
    let zap = &r.table("EmailPostDeliveryEvents_CL")[0];
    assert_eq!(zap["ActionType"], "Phish ZAP");
    assert_eq!(zap["TimeGenerated"], zap["Timestamp"]);
}

#[test]
fn readme_first_command_runs_dry_run_on_the_shipped_samples() {
    let out = tempfile::tempdir().unwrap();
    let result = Command::new(env!("CARGO_BIN_EXE_m365-sentinel"))
        .args(["dry-run", "--input"])
        .arg(fixtures().join("input"))
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert_eq!(
        result.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(
        stdout.contains("18 record(s) in, 18 row(s) mapped, 0 rejected"),
        "{stdout}"
    );
    for table in common::SENTINEL_TABLES {
        assert!(stdout.contains(table), "{table} in summary");
    }
    assert!(out.path().join("summary.txt").exists());
    assert!(
        out.path()
            .join("Custom-OfficeActivity_CL/body-000001.json")
            .exists()
    );
}

#[test]
fn stdin_is_an_input_too() {
    use std::io::Write;
    let out = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_m365-sentinel"))
        .args(["dry-run", "--input", "-", "--out"])
        .arg(out.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let records = std::fs::read(input("exchange-admin.ndjson")).unwrap();
    child.stdin.take().unwrap().write_all(&records).unwrap();
    let result = child.wait_with_output().unwrap();
    assert_eq!(result.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&result.stdout).contains("3 row(s) mapped"));
}

#[test]
fn small_body_limit_fills_bodies_without_crossing_it() {
    let dir = tempfile::tempdir().unwrap();
    // 2,000 copies of the sample records, cut into 20 KB bodies.
    let one = std::fs::read_to_string(input("exchange-admin.ndjson")).unwrap();
    let path = dir.path().join("many.ndjson");
    std::fs::write(&path, one.repeat(700)).unwrap();
    let setup = m365_sentinel::pipeline::Setup::load(
        None,
        None,
        [(
            "M365_SENTINEL__BATCH__MAX_BODY_BYTES".to_string(),
            "20000".to_string(),
        )],
    )
    .unwrap();
    let r = common::run_with(&setup, &[path]);
    let bodies = &r.bodies["OfficeActivity_CL"];
    assert!(bodies.len() > 50);
    let mut rows = 0;
    for (i, b) in bodies.iter().enumerate() {
        assert!(b.len() <= 20_000, "body {i} is {} bytes", b.len());
        if i + 1 < bodies.len() {
            assert!(b.len() > 19_000, "body {i} is only {} bytes", b.len());
        }
        rows += serde_json::from_slice::<Vec<Value>>(b).unwrap().len();
    }
    assert_eq!(rows, 2_100, "no row lost or split");
    assert!(r.stats.fill_ratio().unwrap() > 0.95);
}

#[test]
fn url_click_events_from_an_event_hubs_body_and_a_storage_blob_fill_every_column() {
    let setup = common::setup();
    let schema = &setup.schemas.tables[setup.schemas.table_by_name("UrlClickEvents").unwrap()];
    for (file, report_id) in [
        (
            "defender-eventhubs-body.json",
            "c3f7a9e1-0b2d-4c6e-8f10-2a3b4c5d6e7f",
        ),
        (
            "defender-storage-PT1H.json",
            "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f70819",
        ),
    ] {
        let r = run(&[input(file)]);
        assert!(r.rejected.is_empty(), "{file}: {:?}", r.rejected);
        let rows = r.table("UrlClickEvents_CL");
        assert_eq!(rows.len(), 1, "{file}");
        let row = &rows[0];
        assert_eq!(row["ReportId"], report_id);
        for column in &schema.columns {
            assert!(
                row.get(&column.name).is_some(),
                "{file}: column {} is empty in {row}",
                column.name
            );
        }
        // The source's own types: a JSON bool stays a bool.
        assert!(row["IsClickedThrough"].is_boolean(), "{row}");
        assert_eq!(row["TimeGenerated"], row["Timestamp"]);
        assert_eq!(
            row["AdditionalFields"]["category"],
            "AdvancedHunting-UrlClickEvents"
        );
        assert!(r.notices.is_empty(), "{:?}", r.notices);
    }
}

const POST_DELIVERY_WITHOUT_TIMESTAMP: &str = r#"{"time":"2026-03-04T09:10:11.1234567Z","tenantId":"7d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d","operationName":"Publish","category":"AdvancedHunting-EmailPostDeliveryEvents","properties":{"NetworkMessageId":"6f1e2d3c-4b5a-4968-8776-08de0a1b2c3d","Action":"Moved to junk folder","ActionType":"Phish ZAP","ReportId":"r-1"}}"#;

#[test]
fn a_defender_row_without_timestamp_takes_the_envelope_time_with_a_notice() {
    let neither = POST_DELIVERY_WITHOUT_TIMESTAMP
        .replace(r#""time":"2026-03-04T09:10:11.1234567Z","#, "")
        .replace("r-1", "r-2");
    let (_dir, path) = common::temp_input(
        "rows.ndjson",
        format!("{POST_DELIVERY_WITHOUT_TIMESTAMP}\n{neither}\n").as_bytes(),
    );
    let r = run(&[path]);
    let rows = r.table("EmailPostDeliveryEvents_CL");
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row["TimeGenerated"], "2026-03-04T09:10:11.1234567Z");
    assert_eq!(row["Timestamp"], "2026-03-04T09:10:11.1234567Z");
    assert_eq!(row["ReportId"], "r-1");
    // The envelope's time is in the columns now, not repeated among the extras.
    assert!(row["AdditionalFields"].get("time").is_none(), "{row}");
    assert_eq!(row["AdditionalFields"]["operationName"], "Publish");
    assert_eq!(r.notices.len(), 1, "{:?}", r.notices);
    let fallbacks: Vec<&Value> = r.notices[0]["notes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "fallback")
        .collect();
    let columns: Vec<&Value> = fallbacks.iter().map(|n| &n["column"]).collect();
    assert_eq!(columns, ["TimeGenerated", "Timestamp"], "{:?}", r.notices);
    let text = fallbacks[0]["detail"].as_str().unwrap();
    assert!(
        text.contains("filled from envelope.time") && text.contains("Timestamp"),
        "{text}"
    );
    // A row with neither is refused, naming both sources.
    assert_eq!(r.rejected.len(), 1, "{:?}", r.rejected);
    let refusal = r.rejected[0].to_string();
    assert!(
        refusal.contains("required_column")
            && refusal.contains("TimeGenerated")
            && refusal.contains("Timestamp or envelope.time"),
        "{refusal}"
    );
}

#[test]
fn unknown_categories_are_refused_by_default_and_skipped_and_counted_when_asked() {
    let device = r#"{"time":"2026-03-04T09:10:11Z","category":"AdvancedHunting-DeviceEvents","properties":{"Timestamp":"2026-03-04T09:10:11Z","DeviceName":"pc-1"}}"#;
    let (dir, path) = common::temp_input(
        "rows.ndjson",
        format!("{device}\n{device}\n{POST_DELIVERY_WITHOUT_TIMESTAMP}\n").as_bytes(),
    );
    let dry_run = |config: Option<&std::path::Path>| {
        let out = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_m365-sentinel"));
        command.args(["dry-run", "--input"]).arg(&path);
        command.arg("--out").arg(out.path());
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let result = command.output().unwrap();
        let summary = std::fs::read_to_string(out.path().join("summary.txt")).unwrap_or_default();
        (result, summary)
    };
    let (refused, _) = dry_run(None);
    assert_eq!(refused.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&refused.stdout);
    assert!(stdout.contains("unknown_category"), "{stdout}");

    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "defender:\n  unknown_categories: skip\n").unwrap();
    let (skipped, summary) = dry_run(Some(&config));
    let stdout = String::from_utf8_lossy(&skipped.stdout);
    assert_eq!(
        skipped.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&skipped.stderr)
    );
    assert!(
        stdout.contains("3 record(s) in, 1 row(s) mapped, 0 rejected"),
        "{stdout}"
    );
    let line = summary
        .lines()
        .find(|l| l.contains("AdvancedHunting-DeviceEvents"))
        .unwrap_or_else(|| panic!("no skipped count in {summary}"));
    assert!(line.trim_end().ends_with(" 2"), "{line}");
}

#[test]
fn an_invalid_timestamp_falls_back_to_the_envelope_and_is_kept_once() {
    let row = POST_DELIVERY_WITHOUT_TIMESTAMP.replace(
        r#""properties":{"#,
        r#""properties":{"Timestamp":"yesterday at noon","#,
    );
    let (_dir, path) = common::temp_input("rows.ndjson", format!("{row}\n").as_bytes());
    let r = run(&[path]);
    assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    let rows = r.table("EmailPostDeliveryEvents_CL");
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row["TimeGenerated"], "2026-03-04T09:10:11.1234567Z");
    assert_eq!(row["Timestamp"], "2026-03-04T09:10:11.1234567Z");
    // The value that did not convert is kept, once, under its own name.
    let extra = row["AdditionalFields"].as_object().unwrap();
    assert_eq!(extra["Timestamp"], "yesterday at noon");
    assert!(!extra.contains_key("Timestamp_2"), "{extra:?}");
    let kinds: Vec<&str> = r.notices[0]["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"unconverted") && kinds.contains(&"fallback"),
        "{kinds:?}"
    );
}
