//! Schemas: the shipped files cover every Sentinel column with the right type, and broken schema
//! files are refused with file, line and what is wrong, by the library and by `check`.

mod common;

use std::path::Path;
use std::process::Command;

use m365_sentinel::schema::{SchemaFiles, SchemaSet};

#[test]
fn every_sentinel_column_is_in_schemas_with_its_type() {
    let schemas =
        SchemaSet::from_files(&SchemaFiles::from_dir(Path::new("schemas")).unwrap()).unwrap();
    for (table, expected) in common::columns::ALL {
        let t = &schemas.tables[schemas
            .table_by_name(table)
            .unwrap_or_else(|| panic!("{table} missing"))];
        for (name, ty) in *expected {
            let col = t
                .columns
                .iter()
                .find(|c| c.name == *name)
                .unwrap_or_else(|| panic!("{table}.{name} missing from schemas/"));
            assert_eq!(col.ty.table_type(), *ty, "{table}.{name}");
        }
        // Nothing beyond the Sentinel columns, except the unmapped column.
        for col in &t.columns {
            let listed = expected.iter().any(|(n, _)| *n == col.name);
            assert!(
                listed || col.name == "AdditionalFields",
                "{table}.{} is not a Sentinel column",
                col.name
            );
        }
        assert_eq!(t.unmapped_column().name, "AdditionalFields");
        assert_eq!(t.output_table, format!("{table}_CL"));
    }
    assert_eq!(common::columns::OFFICE_ACTIVITY.len(), 137);
}

#[test]
fn embedded_schemas_equal_the_files() {
    let embedded = SchemaSet::embedded().unwrap();
    let files =
        SchemaSet::from_files(&SchemaFiles::from_dir(Path::new("schemas")).unwrap()).unwrap();
    let names = |s: &SchemaSet| {
        s.tables
            .iter()
            .map(|t| {
                (
                    t.table.clone(),
                    t.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
                )
            })
            .collect::<Vec<_>>()
    };
    let mut a = names(&embedded);
    let mut b = names(&files);
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

#[test]
fn renames_and_enums_follow_the_reference() {
    let s = SchemaSet::embedded().unwrap();
    let oa = &s.tables[s.table_by_name("OfficeActivity").unwrap()];
    let from = |name: &str| {
        oa.columns
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .from
            .clone()
    };
    for (col, src) in [
        ("OfficeWorkload", "Workload"),
        ("Site_Url", "SiteUrl"),
        ("OfficeObjectId", "ObjectId"),
        ("Client_IPAddress", "ClientIPAddress"),
        ("AADTarget", "Target"),
        ("OfficeId", "Id"),
        ("SourceRecordId", "Id"),
        ("TimeGenerated", "CreationTime"),
        ("Logon_Type", "LogonType"),
        ("Start_Time", "StartTime"),
        ("Event_Data", "EventData"),
    ] {
        assert_eq!(from(col), [src], "{col}");
    }
    assert_eq!(from("IntraSystemId"), ["IntraSystemId", "IntraSystemsId"]);
    let user_type = s.enums.iter().find(|e| e.name == "user_type").unwrap();
    assert_eq!(user_type.values[&3], "DcAdmin");
    let record_type = s.enums.iter().find(|e| e.name == "record_type").unwrap();
    assert_eq!(record_type.values[&6], "SharePointFileOperation");
    assert_eq!(record_type.values.len(), 257);
}

/// A schema directory: the shipped files with one table file replaced.
fn schema_dir_with(table_file: &str, text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir("schemas").unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    std::fs::write(dir.path().join(table_file), text).unwrap();
    dir
}

const BROKEN: &str = "\
table: EmailUrlInfo
output_table: EmailUrlInfo_CL
stream: Custom-EmailUrlInfo_CL
input:
  kind: defender
  category: AdvancedHunting-EmailUrlInfo
unmapped: AdditionalFields
columns:
  - { name: TimeGenerated, type: datetime, from: Timestamp, required: true }
  - { name: Url, type: text }
  - { name: Url, type: string }
  - { name: TenantId, type: string }
  - { name: Url-Domain, type: string }
  - { name: ThisColumnNameIsFarTooLongForLogAnalyticsRules1, type: string }
  - { name: _Hidden, type: string }
  - { name: UrlLocation, type: string, enum: url_location }
  - { name: AdditionalFields, type: dynamic }
";

fn errors_of(dir: &Path) -> String {
    let files = SchemaFiles::from_dir(dir).unwrap();
    SchemaSet::from_files(&files).unwrap_err().to_string()
}

#[test]
fn broken_schema_is_refused_with_file_line_and_reason() {
    let dir = schema_dir_with("EmailUrlInfo.yaml", BROKEN);
    let text = errors_of(dir.path());
    let lines: Vec<&str> = text.lines().collect();
    let expect = |line: usize, needle: &str| {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("EmailUrlInfo.yaml:{line}:")) && l.contains(needle)),
            "no error at line {line} containing {needle:?} in:\n{text}"
        );
    };
    expect(10, "unknown type \"text\"");
    expect(11, "duplicate column \"Url\"");
    expect(12, "reserved");
    expect(13, "'-'");
    expect(14, "at most 45");
    expect(15, "must start with a letter");
    expect(16, "unknown enum table \"url_location\"");
    assert_eq!(lines.len(), 7, "{text}");
}

#[test]
fn yaml_syntax_and_unknown_keys_name_file_and_line() {
    let dir = schema_dir_with(
        "EmailUrlInfo.yaml",
        &BROKEN.replace(
            "  - { name: Url, type: text }",
            "  - { name: Url, type: string, colour: red }",
        ),
    );
    let text = errors_of(dir.path());
    assert!(
        text.contains("EmailUrlInfo.yaml:10:") && text.contains("colour"),
        "{text}"
    );

    let dir = schema_dir_with("EmailUrlInfo.yaml", "table: [unclosed\n");
    let text = errors_of(dir.path());
    assert!(text.contains("EmailUrlInfo.yaml:"), "{text}");

    // Stream names become directory names in dry-run output: nothing but Custom-[A-Za-z0-9_]+.
    let dir = schema_dir_with(
        "EmailUrlInfo.yaml",
        &BROKEN.replace(
            "stream: Custom-EmailUrlInfo_CL",
            "stream: Custom-x/../../escaped",
        ),
    );
    let text = errors_of(dir.path());
    assert!(
        text.contains("EmailUrlInfo.yaml:3:") && text.contains("Custom- followed by"),
        "{text}"
    );
}

#[test]
fn missing_time_generated_and_bad_unmapped_are_refused() {
    let text_in = BROKEN
        .lines()
        .filter(|l| {
            !(l.starts_with("  - {")
                && (l.contains("TimeGenerated") || l.contains("AdditionalFields")))
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = schema_dir_with("EmailUrlInfo.yaml", &text_in);
    let text = errors_of(dir.path());
    assert!(text.contains("TimeGenerated"), "{text}");
    assert!(
        text.contains("unmapped names column \"AdditionalFields\""),
        "{text}"
    );
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_m365-sentinel"))
}

#[test]
fn check_command_refuses_a_broken_schema_dir() {
    let dir = schema_dir_with("EmailUrlInfo.yaml", BROKEN);
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, format!("schemas_dir: {}\n", dir.path().display())).unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("EmailUrlInfo.yaml:12:") && stderr.contains("reserved"),
        "{stderr}"
    );
    assert!(stderr.contains("EmailUrlInfo.yaml:16:"), "{stderr}");

    // dry-run refuses to start on the same schemas, before reading any input.
    let out = bin()
        .args(["dry-run", "--config"])
        .arg(&cfg)
        .args(["--input", "tests/fixtures/input", "--out"])
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!dir.path().join("out").exists());
}

#[test]
fn check_command_accepts_the_shipped_setup_and_rejects_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(
        &cfg,
        "schemas_dir: schemas\nbatch:\n  max_body_bytes: 900000\n",
    )
    .unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("OfficeActivity_CL") && stdout.contains("secret-named-parameter"));

    std::fs::write(&cfg, "batch:\n  max_body_bytez: 900000\n").unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_body_bytez"));

    // A redaction rule in the config that names a column no table has is an error too.
    std::fs::write(
        &cfg,
        "redaction:\n  rules:\n    - { name: r, pattern: x, replacement: y, columns: [NoSuchColumn] }\n",
    )
    .unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NoSuchColumn"));
}

#[test]
fn envelope_sources_are_fallbacks_of_defender_tables_only() {
    let defender = std::fs::read_to_string("schemas/EmailUrlInfo.yaml")
        .unwrap()
        .replace(
            "from: [Timestamp, envelope.time], required: true",
            "from: [envelope.time, Timestamp], required: true",
        );
    let dir = schema_dir_with("EmailUrlInfo.yaml", &defender);
    let text = errors_of(dir.path());
    assert!(
        text.contains("EmailUrlInfo.yaml:16:") && text.contains("after the row's own fields"),
        "{text}"
    );
    let audit = std::fs::read_to_string("schemas/OfficeActivity.yaml")
        .unwrap()
        .replacen(
            "from: CreationTime",
            "from: [CreationTime, envelope.time]",
            1,
        );
    assert!(
        audit.contains("envelope.time"),
        "the audit schema changed shape"
    );
    let dir = schema_dir_with("OfficeActivity.yaml", &audit);
    let text = errors_of(dir.path());
    assert!(
        text.contains("OfficeActivity.yaml:") && text.contains("only Defender tables"),
        "{text}"
    );
}
