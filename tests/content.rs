//! `content rewrite` on real Microsoft Sentinel content (tests/content/corpus, from the
//! Azure-Sentinel repository, see its SOURCES.md), proven the way Microsoft's content CI does:
//! every query bound by Microsoft's KQL analyzer (Kusto.Language, npm
//! @kusto/language-service-next) against a workspace that has our `_CL` tables with the columns
//! and types `schema dcr` generates, the `_All` functions of `schema kql`, and the other tables
//! the content joins with their real columns.

#[allow(dead_code)]
#[path = "common/columns.rs"]
mod columns;
#[allow(dead_code)]
#[path = "common/tools.rs"]
mod tools;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use m365_sentinel::content::{self, Format, Target};
use m365_sentinel::schema::SchemaSet;
use m365_sentinel::schema::azure::{arm_template, kql_functions};
use serde_json::{Value, json};

const TABLES: [&str; 5] = [
    "OfficeActivity",
    "EmailEvents",
    "EmailAttachmentInfo",
    "EmailUrlInfo",
    "EmailPostDeliveryEvents",
];

/// Columns Log Analytics adds to every table, custom ones included (Azure Monitor "Standard
/// columns in Azure Monitor Logs"; the shared reference tables-and-sources.md lists the
/// platform columns a `_CL` table gets).
const STANDARD_COLUMNS: [(&str, &str); 8] = [
    ("TenantId", "string"),
    ("Type", "string"),
    ("SourceSystem", "string"),
    ("_ResourceId", "string"),
    ("_SubscriptionId", "string"),
    ("_ItemId", "string"),
    ("_IsBillable", "string"),
    ("_BilledSize", "real"),
];

fn corpus() -> PathBuf {
    tools::repo_root().join("tests/content/corpus")
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_m365-sentinel")
}

/// Every content file of the corpus (not the other-tables schemas), relative to it.
fn corpus_files() -> Vec<(PathBuf, PathBuf)> {
    content::input_files(&[corpus()])
        .into_iter()
        .filter(|(_, rel)| {
            !rel.starts_with("other-tables") && Format::of(rel) == Some(Format::Yaml)
        })
        .collect()
}

fn schemas() -> SchemaSet {
    SchemaSet::embedded().unwrap()
}

/// The workspace the analyzer binds against: our tables as `schema dcr` declares them, the
/// functions of `schema kql`, and the other tables of the corpus.
fn database(schemas: &SchemaSet) -> Value {
    let template = arm_template(schemas);
    let mut tables = Vec::new();
    for resource in template["resources"].as_array().unwrap() {
        if resource["type"] != "Microsoft.OperationalInsights/workspaces/tables" {
            continue;
        }
        let schema = &resource["properties"]["schema"];
        let mut columns: Vec<Value> = schema["columns"].as_array().unwrap().clone();
        for (name, ty) in STANDARD_COLUMNS {
            columns.push(json!({ "name": name, "type": ty }));
        }
        tables.push(json!({ "name": schema["name"], "columns": columns }));
    }
    assert_eq!(
        tables.len(),
        7,
        "schema dcr declares the five email/audit tables, UrlClickEvents and the health table"
    );
    for entry in std::fs::read_dir(corpus().join("other-tables")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("reference-") || !name.ends_with(".json") {
            continue;
        }
        let table: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        tables.push(json!({ "name": table["name"], "columns": table["columns"] }));
    }
    let functions: Vec<Value> = kql_functions(schemas)
        .lines()
        .filter_map(|line| line.split_once(" = "))
        .filter(|(name, _)| !name.starts_with("//"))
        .map(|(name, body)| json!({ "name": name, "parameters": "", "body": body }))
        .collect();
    assert_eq!(
        functions.len(),
        6,
        "schema kql defines a function per table"
    );
    json!({ "name": "workspace", "tables": tables, "functions": functions })
}

/// Binds each query with Microsoft's analyzer; the errors of each, by id.
fn analyze(database: &Value, queries: &[(String, String)]) -> BTreeMap<String, Vec<String>> {
    let bridge = tools::require(&tools::KQL_ANALYZER);
    // .../node_modules/@kusto/language-service-next/Kusto.Language.Bridge.js → the install dir.
    let install = bridge.ancestors().nth(4).unwrap().to_path_buf();
    let input = json!({
        "database": database,
        "queries": queries.iter().map(|(id, text)| json!({ "id": id, "text": text })).collect::<Vec<_>>(),
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("input.json");
    std::fs::write(&file, serde_json::to_vec(&input).unwrap()).unwrap();
    let out = Command::new("node")
        .arg(tools::repo_root().join("tests/content/analyzer/check.js"))
        .arg(&file)
        .env("KUSTO_LANGUAGE_DIR", &install)
        .output()
        .unwrap_or_else(|e| {
            panic!("node (Node.js, for the KQL analyzer) does not run: {e}; run `scripts/test`")
        });
    assert!(
        out.status.success(),
        "the analyzer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    results
        .into_iter()
        .map(|r| {
            let errors = r["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| format!("{} line {}: {}", e["code"], e["line"], e["message"]))
                .collect();
            (r["id"].as_str().unwrap().to_string(), errors)
        })
        .collect()
}

/// Every query of the corpus, original and rewritten for `target`.
fn corpus_queries(target: Target) -> Vec<(String, String, String)> {
    let names = content::table_names(&schemas(), target);
    let mut out = Vec::new();
    for (path, relative) in corpus_files() {
        let outcome = content::rewrite_file(&path, &names)
            .unwrap_or_else(|e| panic!("{}: {e}", relative.display()));
        let raw = std::fs::read_to_string(&path).unwrap();
        let original = content::rewrite_text(&raw, Format::Yaml, &[]).unwrap();
        let parameters = parser_parameters(&raw);
        for (i, (query, before)) in outcome.queries.iter().zip(&original.queries).enumerate() {
            assert!(
                query.error.is_none(),
                "{}: {:?}",
                relative.display(),
                query.error
            );
            out.push((
                format!("{}#{i}", relative.display()),
                format!("{parameters}{}", before.rewritten),
                format!("{parameters}{}", query.rewritten),
            ));
        }
    }
    out
}

/// A parser's `ParserParams` as the `declare query_parameters` statement its query is bound
/// under (Sentinel deploys a parser as a function with those parameters).
fn parser_parameters(raw: &str) -> String {
    let doc: Value = yaml_serde::from_str(raw).unwrap();
    let Some(params) = doc.get("ParserParams").and_then(Value::as_array) else {
        return String::new();
    };
    let declared: Vec<String> = params
        .iter()
        .map(|p| {
            let ty = p["Type"].as_str().unwrap();
            let default = match &p["Default"] {
                Value::String(s) if ty == "string" => format!("'{}'", s.replace('\'', "\\'")),
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            let default = if default.is_empty() {
                String::new()
            } else {
                format!(" = {default}")
            };
            format!(
                "{}:{}{default}",
                p["Name"].as_str().unwrap(),
                p["Type"].as_str().unwrap()
            )
        })
        .collect();
    format!("declare query_parameters({});\n", declared.join(", "))
}

#[test]
fn the_corpus_is_real_content_over_all_five_tables() {
    let files = corpus_files();
    let sources = std::fs::read_to_string(corpus().join("SOURCES.md")).unwrap();
    let mut per_table: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut rules, mut hunting) = (0, 0);
    let mut queries = 0;
    for (path, relative) in &files {
        let shown = relative.display().to_string();
        assert!(
            sources.contains(&shown),
            "{shown} is not listed in SOURCES.md"
        );
        let raw = std::fs::read_to_string(path).unwrap();
        let doc: Value = yaml_serde::from_str(&raw).unwrap();
        if doc.get("queryFrequency").is_some() || doc.get("kind").is_some() {
            rules += 1;
        } else if doc.get("query").is_some() {
            hunting += 1;
        }
        let outcome =
            content::rewrite_file(path, &content::table_names(&schemas(), Target::Custom)).unwrap();
        queries += outcome.queries.len();
        for table in TABLES {
            if outcome
                .queries
                .iter()
                .any(|q| q.rewritten.contains(&format!("{table}_CL")))
            {
                *per_table.entry(table).or_default() += 1;
            }
        }
    }
    assert!(queries >= 60, "{queries} queries");
    assert!(
        rules >= 20 && hunting >= 20,
        "{rules} rules, {hunting} hunting queries"
    );
    for table in TABLES {
        assert!(
            per_table.get(table).copied().unwrap_or(0) >= 3,
            "{table}: {per_table:?}"
        );
    }
}

#[test]
fn every_corpus_query_binds_after_the_rewrite_and_none_before() {
    let db = database(&schemas());
    for target in [Target::Functions, Target::Custom] {
        let queries = corpus_queries(target);
        let mut input = Vec::new();
        for (id, before, after) in &queries {
            input.push((format!("before {id}"), before.clone()));
            input.push((format!("after {id}"), after.clone()));
        }
        let results = analyze(&db, &input);
        let mut failures = Vec::new();
        for (id, _, _) in &queries {
            let before = &results[&format!("before {id}")];
            let after = &results[&format!("after {id}")];
            if !after.is_empty() {
                failures.push(format!("{target:?} {id}: {after:?}"));
            }
            // Before the rewrite the five tables do not exist in this workspace.
            if !before.iter().any(|e| e.contains("KS204")) {
                failures.push(format!(
                    "{target:?} {id}: bound before the rewrite: {before:?}"
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} problem(s):\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}

/// Undoes what the rewrite may change: the replaced names and widened `Type` comparisons.
fn undo(text: &str, target: Target) -> String {
    let mut text = text.to_string();
    for table in TABLES {
        let cl = format!("{table}_CL");
        for quote in ['"', '\''] {
            for (wide, narrow) in [("in~", "=~"), ("!in~", "!~"), ("!in", "!="), ("in", "==")] {
                let from = format!("{wide} ({quote}{table}{quote}, {quote}{cl}{quote})");
                text = text.replace(&from, &format!("{narrow} {quote}{table}{quote}"));
            }
            text = text.replace(
                &format!("{quote}{table}{quote}, {quote}{cl}{quote}"),
                &format!("{quote}{table}{quote}"),
            );
        }
        let replacement = match target {
            Target::Functions => format!("{table}_All"),
            Target::Custom => cl,
        };
        text = text.replace(&replacement, table);
    }
    text
}

#[test]
fn a_round_trip_leaves_every_byte_but_the_rewritten_names() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(binary())
        .args(["content", "rewrite"])
        .arg(corpus())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stdout)
    );
    let mut changed = 0;
    for (path, relative) in corpus_files() {
        let before = std::fs::read_to_string(&path).unwrap();
        let after = std::fs::read_to_string(out.path().join(&relative)).unwrap();
        assert_ne!(before, after, "{}: nothing rewritten", relative.display());
        assert_eq!(
            undo(&after, Target::Functions),
            before,
            "{}",
            relative.display()
        );
        changed += 1;
    }
    assert!(changed >= 60);
}

fn rewrite_cli(dir: &Path, extra: &[&str]) -> (Output, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(binary())
        .args(["content", "rewrite"])
        .arg(dir)
        .arg("--out")
        .arg(out.path())
        .args(extra)
        .output()
        .unwrap();
    (run, out)
}

#[test]
fn the_arm_output_deploys_rules_hunting_queries_and_functions_under_stable_names() {
    let scratch = tempfile::tempdir().unwrap();
    let arm = scratch.path().join("content.json");
    let arm_arg = arm.to_str().unwrap();
    let (first, _out) = rewrite_cli(&corpus(), &["--arm", arm_arg]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stdout)
    );
    let template: Value = serde_json::from_str(&std::fs::read_to_string(&arm).unwrap()).unwrap();
    let resources = template["resources"].as_array().unwrap();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut names = BTreeSet::new();
    for r in resources {
        let ty = r["type"].as_str().unwrap();
        *kinds.entry(ty.to_string()).or_default() += 1;
        assert!(
            names.insert(r["name"].as_str().unwrap().to_string()),
            "duplicate name {}",
            r["name"]
        );
        let query = r["properties"]["query"].as_str().unwrap();
        match ty {
            "Microsoft.SecurityInsights/alertRules" => {
                assert!(matches!(r["kind"].as_str(), Some("Scheduled" | "NRT")));
                assert_eq!(r["apiVersion"], "2023-02-01");
                assert!(
                    r["scope"]
                        .as_str()
                        .unwrap()
                        .contains("Microsoft.OperationalInsights/workspaces")
                );
                let p = &r["properties"];
                for key in [
                    "displayName",
                    "severity",
                    "enabled",
                    "suppressionDuration",
                    "suppressionEnabled",
                ] {
                    assert!(!p[key].is_null(), "{key} in {}", r["name"]);
                }
                if r["kind"] == "Scheduled" {
                    assert!(p["queryFrequency"].as_str().unwrap().starts_with('P'));
                    assert!(p["queryPeriod"].as_str().unwrap().starts_with('P'));
                    assert!(
                        ["GreaterThan", "LessThan", "Equal", "NotEqual"]
                            .contains(&p["triggerOperator"].as_str().unwrap())
                    );
                }
                assert!(
                    TABLES.iter().any(|t| query.contains(&format!("{t}_All"))),
                    "{query}"
                );
            }
            "Microsoft.OperationalInsights/workspaces/savedSearches" => {
                let p = &r["properties"];
                if p["category"] == "m365-sentinel" {
                    assert_eq!(p["functionAlias"], p["displayName"]);
                    assert!(query.starts_with("union isfuzzy=true "));
                } else {
                    assert_eq!(p["category"], "Hunting Queries");
                }
            }
            other => panic!("unexpected resource type {other}"),
        }
    }
    assert!(
        kinds["Microsoft.SecurityInsights/alertRules"] >= 20,
        "{kinds:?}"
    );
    assert!(
        kinds["Microsoft.OperationalInsights/workspaces/savedSearches"] >= 25,
        "{kinds:?}"
    );
    // A second run names every resource the same: a redeploy updates, never duplicates.
    let again = scratch.path().join("again.json");
    let (second, _out2) = rewrite_cli(&corpus(), &["--arm", again.to_str().unwrap()]);
    assert!(second.status.success());
    assert_eq!(std::fs::read(&arm).unwrap(), std::fs::read(&again).unwrap());
}

#[test]
fn unreadable_files_and_queries_are_named_with_their_line_and_the_rest_is_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.kql"), "OfficeActivity | take 1\n").unwrap();
    std::fs::write(dir.path().join("broken.yaml"), "id: 1\nquery: [unclosed\n").unwrap();
    std::fs::write(
        dir.path().join("open.yaml"),
        "id: 1\nname: n\nquery: |\n  OfficeActivity\n  | where A == 'open\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("binary.kql"), [0xff, 0xfe, 0x00]).unwrap();
    let (run, out) = rewrite_cli(dir.path(), &["--target", "custom"]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("broken.yaml: error: line"), "{stdout}");
    assert!(
        stdout.contains("open.yaml:5: error: string literal never closed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("binary.kql: error: cannot read it"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("good.kql")).unwrap(),
        "OfficeActivity_CL | take 1\n"
    );
    // The query it could not tokenize is written back unchanged.
    assert!(
        std::fs::read_to_string(out.path().join("open.yaml"))
            .unwrap()
            .contains("  OfficeActivity\n")
    );
}

/// The columns of the five tables the corpus uses: names of a table's Sentinel columns (the
/// shared reference's lists, apart from schemas/) among the code tokens of a query that reads
/// that table. Written to tests/content/columns-used.txt so a change in coverage shows in review.
#[test]
fn every_column_the_content_uses_is_in_schemas_with_the_sentinel_type() {
    use m365_sentinel::content::lexer::{Kind, tokenize};
    use m365_sentinel::content::references::Finding;
    let schemas = schemas();
    let names = content::table_names(&schemas, Target::Custom);
    let mut used: BTreeMap<&str, BTreeSet<(&str, &str)>> = BTreeMap::new();
    for (path, _) in corpus_files() {
        for query in content::rewrite_file(&path, &names).unwrap().queries {
            let tokens: BTreeSet<&str> = tokenize(&query.rewritten)
                .unwrap()
                .into_iter()
                .filter(|t| t.kind == Kind::Ident)
                .map(|t| t.text(&query.rewritten))
                .collect();
            for (table, sentinel_columns) in columns::ALL {
                let reads = query
                    .findings
                    .iter()
                    .any(|(_, f)| matches!(f, Finding::Reference { from, .. } if from == table));
                if !reads {
                    continue;
                }
                for (column, ty) in *sentinel_columns {
                    if tokens.contains(column) {
                        used.entry(table).or_default().insert((column, ty));
                    }
                }
            }
        }
    }
    let mut listing = String::from(
        "# Columns of the five tables the content corpus uses, with their Sentinel types.\n\
         # Checked by tests/content.rs against schemas/; regenerate by running that test.\n",
    );
    for (table, cols) in &used {
        let index = schemas.table_by_name(table).unwrap();
        let schema = &schemas.tables[index];
        for (column, ty) in cols {
            let ours = schema
                .columns
                .iter()
                .find(|c| c.name == *column)
                .unwrap_or_else(|| {
                    panic!("{table}.{column} is used by the content but missing from schemas/")
                });
            assert_eq!(ours.ty.table_type(), *ty, "{table}.{column}");
            listing.push_str(&format!("{table}\t{column}\t{ty}\n"));
        }
    }
    assert_eq!(used.len(), 5, "columns of every table are used: {used:?}");
    let file = tools::repo_root().join("tests/content/columns-used.txt");
    let checked_in = std::fs::read_to_string(&file).unwrap_or_default();
    if checked_in != listing {
        std::fs::write(&file, &listing).unwrap();
        panic!(
            "tests/content/columns-used.txt was out of date and has been rewritten: review and commit it"
        );
    }
}

#[test]
fn the_health_alert_rules_bind_against_the_health_table() {
    let schemas = schemas();
    let template = m365_sentinel::ops::health_rules::template().unwrap();
    let queries: Vec<(String, String)> = template["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "Microsoft.SecurityInsights/alertRules")
        .map(|r| {
            (
                r["properties"]["displayName"].as_str().unwrap().to_string(),
                r["properties"]["query"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        queries.len(),
        4,
        "stopped reporting, lag, failing, dead letters"
    );
    let errors = analyze(&database(&schemas), &queries);
    assert_eq!(errors.len(), 4);
    for (id, errs) in &errors {
        assert!(errs.is_empty(), "{id}: {errs:?}");
    }
    // The analyzer does catch a column the table lacks.
    let wrong = vec![(
        "wrong".to_string(),
        "M365SentinelHealth_CL | where NoSuchColumn > 0".to_string(),
    )];
    let errors = analyze(&database(&schemas), &wrong);
    assert!(!errors["wrong"].is_empty());
}
