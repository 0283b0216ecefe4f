//! Every form a table reference takes in KQL, and every place the name must stay.

use super::*;

fn names() -> Vec<TableName> {
    ["OfficeActivity", "EmailEvents", "EmailUrlInfo"]
        .iter()
        .map(|t| TableName {
            builtin: t.to_string(),
            replacement: format!("{t}_All"),
            output: format!("{t}_CL"),
        })
        .collect()
}

fn rewrite(query: &str) -> String {
    let out = rewrite_query(query, &names()).unwrap();
    apply(query, &out.edits)
}

fn same(query: &str) {
    assert_eq!(rewrite(query), query, "must stay as it is");
}

#[test]
fn a_tabular_expression_starting_with_the_table() {
    assert_eq!(
        rewrite("OfficeActivity | where Operation == 'x'"),
        "OfficeActivity_All | where Operation == 'x'"
    );
    assert_eq!(
        rewrite("  \n// leading comment\nEmailEvents\n| take 1"),
        "  \n// leading comment\nEmailEvents_All\n| take 1"
    );
}

#[test]
fn union_lists_with_options_and_parentheses() {
    assert_eq!(
        rewrite("union isfuzzy=true OfficeActivity, EmailEvents, (EmailUrlInfo | take 1)"),
        "union isfuzzy=true OfficeActivity_All, EmailEvents_All, (EmailUrlInfo_All | take 1)"
    );
    assert_eq!(
        rewrite("SigninLogs | union kind=outer OfficeActivity | count"),
        "SigninLogs | union kind=outer OfficeActivity_All | count"
    );
    assert_eq!(
        rewrite("union withsource=Source OfficeActivity, EmailEvents"),
        "union withsource=Source OfficeActivity_All, EmailEvents_All"
    );
}

#[test]
fn join_and_lookup_with_and_without_parentheses() {
    assert_eq!(
        rewrite(
            "EmailEvents | join kind=inner (EmailUrlInfo | project NetworkMessageId) on NetworkMessageId"
        ),
        "EmailEvents_All | join kind=inner (EmailUrlInfo_All | project NetworkMessageId) on NetworkMessageId"
    );
    assert_eq!(
        rewrite("T | join hint.strategy=shuffle OfficeActivity on $left.A == $right.B"),
        "T | join hint.strategy=shuffle OfficeActivity_All on $left.A == $right.B"
    );
    assert_eq!(
        rewrite("T | lookup kind=leftouter EmailEvents on NetworkMessageId"),
        "T | lookup kind=leftouter EmailEvents_All on NetworkMessageId"
    );
    // After `on`, names are columns.
    same("T | join (U) on OfficeActivity");
}

#[test]
fn let_statements_functions_materialize_and_subqueries() {
    assert_eq!(
        rewrite(
            "let X = OfficeActivity | where A == 1;\nlet Y = materialize(EmailEvents | take 1);\nX | join Y on Id"
        ),
        "let X = OfficeActivity_All | where A == 1;\nlet Y = materialize(EmailEvents_All | take 1);\nX | join Y on Id"
    );
    assert_eq!(
        rewrite(
            "let f = (since:timespan = 1d) { OfficeActivity | where TimeGenerated > ago(since) };\nf()"
        ),
        "let f = (since:timespan = 1d) { OfficeActivity_All | where TimeGenerated > ago(since) };\nf()"
    );
    assert_eq!(
        rewrite(
            "T | where UserId in (OfficeActivity | distinct UserId) and X !in (EmailEvents | project X)"
        ),
        "T | where UserId in (OfficeActivity_All | distinct UserId) and X !in (EmailEvents_All | project X)"
    );
    assert_eq!(
        rewrite("T | extend n = toscalar(EmailEvents | count)"),
        "T | extend n = toscalar(EmailEvents_All | count)"
    );
    assert_eq!(
        rewrite("(OfficeActivity) | take 1"),
        "(OfficeActivity_All) | take 1"
    );
    assert_eq!(
        rewrite("let T = view () { EmailUrlInfo };"),
        "let T = view () { EmailUrlInfo_All };"
    );
}

#[test]
fn table_function_and_bracketed_names() {
    assert_eq!(
        rewrite("table(\"OfficeActivity\") | take 1"),
        "table(\"OfficeActivity_All\") | take 1"
    );
    assert_eq!(
        rewrite("table('EmailEvents') | take 1"),
        "table('EmailEvents_All') | take 1"
    );
    assert_eq!(
        rewrite("['OfficeActivity'] | take 1"),
        "['OfficeActivity_All'] | take 1"
    );
    same("T | extend a = dynamic(['OfficeActivity'])");
}

#[test]
fn never_inside_strings_or_comments() {
    same("T | where A == \"OfficeActivity\"");
    same("T | where A has 'OfficeActivity | take 1'");
    same("T | where A == @'C:\\OfficeActivity'");
    same("T | where A == ```\nOfficeActivity\n```");
    same("T | where A == h'OfficeActivity'");
    same("T // OfficeActivity\n| take 1");
    same("T | where A == ~~~OfficeActivity~~~");
}

#[test]
fn never_a_column_a_member_a_call_or_a_longer_name() {
    same("T | project OfficeActivity = 1");
    same("T | extend OfficeActivity = 1, EmailEvents = 2");
    same("T | summarize count() by OfficeActivity");
    same("T | where x.OfficeActivity == 1");
    same("OfficeActivity(1) | take 1");
    same("OfficeActivityX | take 1");
    same("OfficeActivity_CL | take 1");
    same("MyOfficeActivity | take 1");
    same("T | where OfficeActivity > 0");
    same("let f = (OfficeActivity: string) { print OfficeActivity };");
}

#[test]
fn table_names_compared_as_data_match_both_names() {
    assert_eq!(
        rewrite("union OfficeActivity, SigninLogs | where Type == \"OfficeActivity\""),
        "union OfficeActivity_All, SigninLogs | where Type in (\"OfficeActivity\", \"OfficeActivity_CL\")"
    );
    assert_eq!(
        rewrite("T | where Type != 'EmailEvents' and $table =~ 'EmailUrlInfo'"),
        "T | where Type !in ('EmailEvents', 'EmailEvents_CL') and $table in~ ('EmailUrlInfo', 'EmailUrlInfo_CL')"
    );
    assert_eq!(
        rewrite("union withsource=Src OfficeActivity, SigninLogs | where Src == 'OfficeActivity'"),
        "union withsource=Src OfficeActivity_All, SigninLogs | where Src in ('OfficeActivity', 'OfficeActivity_CL')"
    );
    assert_eq!(
        rewrite("T | where Type in (\"OfficeActivity\", \"SigninLogs\")"),
        "T | where Type in (\"OfficeActivity\", \"OfficeActivity_CL\", \"SigninLogs\")"
    );
    // Anything else naming a table as text is reported, not changed.
    let q = "T | extend Table = \"OfficeActivity\"";
    let out = rewrite_query(q, &names()).unwrap();
    assert!(out.edits.is_empty());
    let as_data: Vec<&Located> = out
        .findings
        .iter()
        .filter(|f| matches!(f.finding, Finding::NameAsData { .. }))
        .collect();
    assert!(matches!(
        &as_data[..],
        [Located { line: 1, finding: Finding::NameAsData { table, .. } }] if table == "OfficeActivity"
    ));
}

#[test]
fn findings_name_the_line_and_the_other_sources() {
    let q = "let x = 1d;\nSigninLogs\n| join (OfficeActivity) on UserId\n| join IdentityInfo on A";
    let out = rewrite_query(q, &names()).unwrap();
    let lines: Vec<(usize, Finding)> = out
        .findings
        .into_iter()
        .map(|l| (l.line, l.finding))
        .collect();
    assert_eq!(
        lines,
        vec![
            (
                2,
                Finding::OtherSource {
                    name: "SigninLogs".into()
                }
            ),
            (
                3,
                Finding::Reference {
                    from: "OfficeActivity".into(),
                    to: "OfficeActivity_All".into()
                }
            ),
            (
                4,
                Finding::OtherSource {
                    name: "IdentityInfo".into()
                }
            ),
        ]
    );
}

#[test]
fn a_query_it_cannot_tokenize_names_the_line() {
    let err = rewrite_query("OfficeActivity\n| where A == 'open", &names()).unwrap_err();
    assert_eq!(err, LexError::UnclosedString { line: 2 });
}

#[test]
fn review_findings_stay_fixed() {
    // No space around the operator.
    assert_eq!(
        rewrite("T | where Type==\"OfficeActivity\""),
        "T | where Type in (\"OfficeActivity\", \"OfficeActivity_CL\")"
    );
    // `==` is exact: another spelling is not our table's name.
    same("T | where Type == \"officeactivity\"");
    assert_eq!(
        rewrite("T | where Type =~ \"officeactivity\""),
        "T | where Type in~ (\"officeactivity\", \"OfficeActivity_CL\")"
    );
    // search/find take a list of tables.
    assert_eq!(
        rewrite("search in (OfficeActivity,EmailEvents,EmailUrlInfo) \"x\""),
        "search in (OfficeActivity_All,EmailEvents_All,EmailUrlInfo_All) \"x\""
    );
    // A wildcard already matches our tables.
    same("T | union OfficeActivity*");
    // A let of the same name: its right side is the table, later uses are the let.
    assert_eq!(
        rewrite("let OfficeActivity = OfficeActivity | where U == 1;\nOfficeActivity | take 1"),
        "let OfficeActivity = OfficeActivity_All | where U == 1;\nOfficeActivity | take 1"
    );
    // A comment inside the comparison: reported, not rewritten.
    same("T | where Type == // c\n \"OfficeActivity\"");
}
