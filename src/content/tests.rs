//! Files round-trip: only the table references change, in every encoding a query comes in.

use super::*;

fn names() -> Vec<TableName> {
    ["OfficeActivity", "EmailEvents"]
        .iter()
        .map(|t| TableName {
            builtin: t.to_string(),
            replacement: format!("{t}_CL"),
            output: format!("{t}_CL"),
        })
        .collect()
}

fn rewrite(raw: &str, format: Format) -> String {
    rewrite_text(raw, format, &names()).unwrap().output
}

#[test]
fn yaml_block_scalars_keep_every_other_byte() {
    let raw = "id: 1\r\nname: x # comment\r\nquery: |\r\n  // OfficeActivity in a comment\r\n  OfficeActivity\r\n  | where Type == \"OfficeActivity\"\r\n\r\n  | join EmailEvents on X\r\nversion: 1.0.0\r\n";
    let want = raw
        .replace("  OfficeActivity\r", "  OfficeActivity_CL\r")
        .replace(
            "Type == \"OfficeActivity\"",
            "Type in (\"OfficeActivity\", \"OfficeActivity_CL\")",
        )
        .replace("join EmailEvents", "join EmailEvents_CL");
    assert_eq!(rewrite(raw, Format::Yaml), want);
    let strip = "query: |-\n    OfficeActivity | take 1\nother: OfficeActivity\n";
    assert_eq!(
        rewrite(strip, Format::Yaml),
        "query: |-\n    OfficeActivity_CL | take 1\nother: OfficeActivity\n"
    );
}

#[test]
fn yaml_quoted_and_plain_scalars() {
    assert_eq!(
        rewrite("query: 'OfficeActivity | where A == ''x'''\n", Format::Yaml),
        "query: 'OfficeActivity_CL | where A == ''x'''\n"
    );
    assert_eq!(
        rewrite(
            "query: \"OfficeActivity | where Type == \\\"OfficeActivity\\\"\"\n",
            Format::Yaml
        ),
        "query: \"OfficeActivity_CL | where Type in (\\\"OfficeActivity\\\", \\\"OfficeActivity_CL\\\")\"\n"
    );
    assert_eq!(
        rewrite(
            "ParserQuery: OfficeActivity | take 1 # note\n",
            Format::Yaml
        ),
        "ParserQuery: OfficeActivity_CL | take 1 # note\n"
    );
}

#[test]
fn arm_queries_of_rules_and_saved_searches_only() {
    let raw = r#"{
  "resources": [
    { "type": "Microsoft.OperationalInsights/workspaces/providers/alertRules",
      "properties": { "query": "OfficeActivity\n| where Type == \"OfficeActivity\"", "displayName": "OfficeActivity" } },
    { "type": "Microsoft.OperationalInsights/workspaces/savedSearches",
      "properties": { "query": "EmailEvents | take 1" } },
    { "type": "Microsoft.Other/things", "properties": { "query": "EmailEvents" } }
  ]
}"#;
    let want = raw
        .replacen("\"OfficeActivity\\n", "\"OfficeActivity_CL\\n", 1)
        .replace(
            "Type == \\\"OfficeActivity\\\"",
            "Type in (\\\"OfficeActivity\\\", \\\"OfficeActivity_CL\\\")",
        )
        .replace("\"EmailEvents | take 1\"", "\"EmailEvents_CL | take 1\"");
    assert_eq!(rewrite(raw, Format::Arm), want);
}

#[test]
fn kql_files_and_errors_with_lines() {
    assert_eq!(
        rewrite("// c\nOfficeActivity\n| take 1\n", Format::Kql),
        "// c\nOfficeActivity_CL\n| take 1\n"
    );
    let yaml = "id: 1\nquery: |\n  OfficeActivity\n  | where A == 'open\n";
    let outcome = rewrite_text(yaml, Format::Yaml, &names()).unwrap();
    assert_eq!(
        outcome.output, yaml,
        "a query it cannot tokenize stays as it was"
    );
    let (line, error) = outcome.queries[0].error.clone().unwrap();
    assert_eq!(line, 4, "{error}");
    assert!(error.starts_with("string literal never closed"), "{error}");
    let bad = rewrite_text("query: [unclosed\n", Format::Yaml, &names()).unwrap_err();
    assert!(matches!(bad, ContentError::Parse { .. }), "{bad}");
}

#[test]
fn review_findings_in_files_stay_fixed() {
    // A query quoted inside another key's block is not a query.
    let quoted = "description: |\n  query: |\n    EmailEvents\nquery: |\n  EmailEvents\n";
    assert_eq!(
        rewrite(quoted, Format::Yaml),
        "description: |\n  query: |\n    EmailEvents\nquery: |\n  EmailEvents_CL\n"
    );
    // Hostile input ends in an error or a rewrite, never a panic.
    for raw in [
        "x:\n  query: OfficeActivity\nquery: |\n  print 1\n  | union\n  query: OfficeActivity\n",
        "query: |\n  OfficeActivity\n\u{2028}\n  | take 1\n",
        "query: |\n OfficeActivity\n\u{85}\n | take 1\n",
        "description: |\n  query: \"\\uD800\\u0041\"\nquery: x\n",
    ] {
        let _ = rewrite_text(raw, Format::Yaml, &names());
    }
    // Sequence items, quoted keys, a comment after the block header.
    assert_eq!(
        rewrite("- query: |\n    OfficeActivity\n", Format::Yaml),
        "- query: |\n    OfficeActivity_CL\n"
    );
    assert_eq!(
        rewrite("\"query\": OfficeActivity\n", Format::Yaml),
        "\"query\": OfficeActivity_CL\n"
    );
    assert_eq!(
        rewrite("query: | # see rule 2\n  OfficeActivity\n", Format::Yaml),
        "query: | # see rule 2\n  OfficeActivity_CL\n"
    );
    // A query the tool cannot locate is an error, not a silent skip.
    let below = rewrite_text(
        "query:\n  OfficeActivity\n  | take 1\n",
        Format::Yaml,
        &names(),
    );
    assert!(
        matches!(below, Err(ContentError::Parse { .. })),
        "{below:?}"
    );
    // ARM types in any case; a byte-order mark stays.
    let arm = "\u{feff}{\"resources\":[{\"type\":\"x/workspaces/savedsearches\",\"properties\":{\"query\":\"EmailEvents\"}}]}";
    assert_eq!(
        rewrite(arm, Format::Arm),
        arm.replace("\"EmailEvents\"", "\"EmailEvents_CL\"")
    );
    assert_eq!(
        rewrite("\u{feff}OfficeActivity", Format::Kql),
        "\u{feff}OfficeActivity_CL"
    );
}

#[cfg(unix)]
#[test]
fn a_symlink_loop_in_a_content_tree_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/a.kql"), "OfficeActivity").unwrap();
    std::os::unix::fs::symlink(dir.path(), dir.path().join("rules/loop")).unwrap();
    let files = input_files(&[dir.path().to_path_buf()]);
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].1, PathBuf::from("rules/a.kql"));
}
