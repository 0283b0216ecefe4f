//! The cost policy (schemas/policy.yaml) on real sample records: drop, sample, trim and route,
//! each decision counted per rule, the bytes adding up to a run without rules, file and line
//! for a bad rule, and the generated tables with their plans.

mod common;

use std::path::{Path, PathBuf};

use common::{run, run_with, shared_samples};
use m365_sentinel::pipeline::Setup;
use serde_json::Value;

fn samples() -> Vec<PathBuf> {
    let dir = shared_samples().join("management-api");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .collect();
    files.sort();
    files
}

/// The shipped schema files with `policy` as policy.yaml.
fn schemas_with(policy: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir("schemas").unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    std::fs::write(dir.path().join("policy.yaml"), policy).unwrap();
    dir
}

fn setup_with(dir: &Path) -> Result<Setup, String> {
    Setup::load(None, Some(dir), std::iter::empty()).map_err(|e| e.to_string())
}

/// Bytes of row JSON in a stream's bodies: each body is `[row,row,...]`.
fn row_bytes(bodies: &[Vec<u8>]) -> u64 {
    bodies
        .iter()
        .map(|b| {
            let rows: Vec<Value> = serde_json::from_slice(b).unwrap();
            (b.len() - 2 - rows.len().saturating_sub(1)) as u64
        })
        .sum()
}

const POLICY: &str = "\
tables:
  - name: OfficeActivityVerbose
    like: OfficeActivity
    plan: Basic
    total_retention_days: 365
rules:
  - name: drop-sharepoint-reads
    table: OfficeActivity
    when: { all: [ { column: Operation, equals: FileAccessed }, { field: Workload, in: [OneDrive, SharePoint] } ] }
    action: drop
  - name: exchange-folder-permissions-to-verbose
    table: OfficeActivity
    when: { column: Operation, equals: ModifyFolderPermissions }
    action: route
    to: OfficeActivityVerbose
  - name: teams-created-also-verbose
    table: OfficeActivity
    when: { column: Operation, equals: TeamCreated }
    action: route
    to: OfficeActivityVerbose
    keep_original: true
  - name: trim-verbose
    table: OfficeActivityVerbose
    action: trim
    drop_columns: [AdditionalFields]
    cut: { OfficeObjectId: 60 }
  - name: half-of-the-rest
    table: OfficeActivity
    when: { column: Operation, matches: '^(File(Deleted|Modified|Uploaded)|SecureLinkUsed|TIMailData)$' }
    action: sample
    one_in: 2
";

#[test]
fn each_rule_kind_on_real_records_counted_and_bytes_add_up() {
    let plain = run(&samples());
    let plain_rows = plain.table("OfficeActivity_CL");
    assert_eq!(plain_rows.len(), 46);
    let count = |op: &str| plain_rows.iter().filter(|r| r["Operation"] == op).count();
    assert_eq!(count("FileAccessed"), 2);
    assert_eq!(count("ModifyFolderPermissions"), 6);
    assert_eq!(count("TeamCreated"), 2);
    assert_eq!(count("TIMailData"), 5);

    let dir = schemas_with(POLICY);
    let setup = setup_with(dir.path()).unwrap();
    let r = run_with(&setup, &samples());
    let main = r.table("OfficeActivity_CL");
    let verbose = r.table("OfficeActivityVerbose_CL");
    let ops = |rows: &[Value], op: &str| rows.iter().filter(|r| r["Operation"] == op).count();
    // drop: gone from every table.
    assert_eq!(ops(main, "FileAccessed") + ops(verbose, "FileAccessed"), 0);
    // route instead: only in the verbose table; with keep_original: in both.
    assert_eq!(ops(main, "ModifyFolderPermissions"), 0);
    assert_eq!(ops(verbose, "ModifyFolderPermissions"), 6);
    assert_eq!(ops(main, "TeamCreated"), 2);
    assert_eq!(ops(verbose, "TeamCreated"), 2);
    // trim: on the rows that reached the verbose table, with every other column as before.
    for row in verbose {
        assert!(row.get("AdditionalFields").is_none(), "{row}");
        let id = row["OfficeId"].as_str().unwrap();
        let before = plain_rows.iter().find(|p| p["OfficeId"] == id).unwrap();
        for (k, v) in before.as_object().unwrap() {
            match k.as_str() {
                "AdditionalFields" => {}
                "OfficeObjectId" => {
                    let cut = row[k].as_str().unwrap();
                    assert!(cut.len() <= 60, "{cut}");
                    if v.as_str().unwrap().len() > 60 {
                        assert!(cut.contains("cut by policy rule trim-verbose"), "{cut}");
                    } else {
                        assert_eq!(&row[k], v);
                    }
                }
                _ => assert_eq!(&row[k], v, "column {k}"),
            }
        }
    }
    // sample: one in two by Id; the five threat-intelligence records share one Id, so they are
    // kept or dropped together.
    let sampled = [
        "FileDeleted",
        "FileModified",
        "FileUploaded",
        "SecureLinkUsed",
        "TIMailData",
    ];
    let kept_sampled: usize = sampled.iter().map(|op| ops(main, op)).sum();
    assert!(
        kept_sampled > 0 && kept_sampled < 15,
        "one_in 2 of 15 kept {kept_sampled}"
    );
    assert!([0, 5].contains(&ops(main, "TIMailData")));

    // The counts per rule are what arrived.
    let rule = |name: &str| {
        r.stats
            .policy
            .iter()
            .find(|p| p.rule == name)
            .unwrap()
            .clone()
    };
    assert_eq!(rule("drop-sharepoint-reads").removed_rows, 2);
    assert_eq!(rule("exchange-folder-permissions-to-verbose").matched, 6);
    assert_eq!(rule("teams-created-also-verbose").added_rows, 2);
    assert_eq!(rule("trim-verbose").matched, verbose.len() as u64);
    let sample = rule("half-of-the-rest");
    assert_eq!(sample.matched, 15);
    assert_eq!(sample.removed_rows, 15 - kept_sampled as u64);
    assert_eq!(r.stats.records_in(), 46, "every record is accounted for");
    assert_eq!(main.len() + verbose.len(), 46 - 2 - (15 - kept_sampled) + 2);

    // Kept + removed - added = the bytes without rules, and what was moved is in the kept.
    let without = row_bytes(&plain.bodies["OfficeActivity_CL"]);
    let kept = row_bytes(&r.bodies["OfficeActivity_CL"])
        + row_bytes(&r.bodies["OfficeActivityVerbose_CL"]);
    let removed: u64 = r.stats.policy.iter().map(|p| p.removed_bytes).sum();
    let added: u64 = r.stats.policy.iter().map(|p| p.added_bytes).sum();
    assert!(removed > 0 && added > 0);
    assert_eq!(kept + removed - added, without);
    let summary = std::fs::read_to_string(r.out.path().join("summary.txt")).unwrap();
    assert!(
        summary.contains("policy rules (schemas/policy.yaml)"),
        "{summary}"
    );
    assert!(summary.contains("drop-sharepoint-reads"), "{summary}");
}

#[test]
fn sampling_is_the_same_across_runs_and_however_the_input_is_split() {
    let policy = "\
rules:
  - name: third
    table: OfficeActivity
    action: sample
    one_in: 3
";
    let dir = schemas_with(policy);
    let setup = setup_with(dir.path()).unwrap();
    let ids = |rows: &[Value]| {
        let mut ids: Vec<String> = rows
            .iter()
            .map(|r| r["OfficeId"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    let whole = ids(run_with(&setup, &samples()).table("OfficeActivity_CL"));
    let again = ids(run_with(&setup, &samples()).table("OfficeActivity_CL"));
    assert_eq!(whole, again);
    assert!(!whole.is_empty() && whole.len() < 46, "{}", whole.len());
    // Two shards (each file its own run, as replicas would split tenants): the same rows.
    let mut sharded = Vec::new();
    for file in samples() {
        sharded.extend(ids(run_with(&setup, &[file]).table("OfficeActivity_CL")));
    }
    sharded.sort();
    assert_eq!(whole, sharded);
    // The decision is a fixed function of rule and key, pinned for later versions.
    let kept: Vec<bool> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|k| m365_sentinel::stages::policy::sample_keeps("third", k, 3))
        .collect();
    assert_eq!(kept, sample_vector());
}

/// `sample_keeps("third", k, 3)` for k = a..f, as this version computes it.
fn sample_vector() -> Vec<bool> {
    ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|k| reference_keeps("third", k, 3))
        .collect()
}

/// FNV-1a 64 over `rule \0 key`, SplitMix64's finalizer, modulo: the documented function.
fn reference_keeps(rule: &str, key: &str, n: u64) -> bool {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in rule.bytes().chain([0]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d049bb133111eb);
    h ^= h >> 31;
    h.is_multiple_of(n)
}

#[test]
fn invalid_rules_are_reported_with_file_and_line() {
    let policy = "\
tables:
  - name: OfficeActivityVerbose
    like: OfficeActivity
rules:
  - name: fine
    table: OfficeActivity
    action: drop
    when: { column: Operation, equals: X }
  - name: bad-column
    table: OfficeActivity
    when: { column: NoSuchColumn, equals: X }
    action: drop
  - name: bad-regex
    table: OfficeActivity
    when: { field: Operation, matches: '(' }
    action: drop
  - name: route-nowhere
    table: OfficeActivity
    action: route
    to: Elsewhere
  - name: cut-dynamic
    table: OfficeActivity
    action: trim
    cut: { AdditionalFields: 10 }
";
    let dir = schemas_with(policy);
    let err = setup_with(dir.path()).err().expect("refused");
    let file = dir.path().join("policy.yaml").display().to_string();
    for (line, what) in [
        (9, "no column \"NoSuchColumn\""),
        (13, "matches \"(\""),
        (17, "route to \"Elsewhere\""),
        (21, "cut applies to string columns"),
    ] {
        let expected = format!("{file}:{line}: ");
        let hit = err
            .lines()
            .find(|l| l.starts_with(&expected) && l.contains(what));
        assert!(hit.is_some(), "no {expected}…{what} in:\n{err}");
    }
    assert!(!err.contains("rule fine"), "{err}");
    // An unknown key is a YAML error with its line.
    let dir = schemas_with(
        "rules:\n  - name: x\n    table: OfficeActivity\n    action: drop\n    colour: red\n",
    );
    let err = setup_with(dir.path()).err().expect("refused");
    assert!(
        err.contains("policy.yaml:") && err.contains("colour"),
        "{err}"
    );
    // A setting of another action is a mistake, not ignored.
    let dir = schemas_with(
        "rules:\n  - name: x\n    table: OfficeActivity\n    action: drop\n    one_in: 3\n    to: OfficeActivity\n",
    );
    let err = setup_with(dir.path()).err().expect("refused");
    for key in ["one_in", "to"] {
        assert!(
            err.contains(&format!("rule x: `{key}` does not apply to action drop")),
            "{err}"
        );
    }
    // A plan the workspace would refuse, and Auxiliary (no dynamic columns, a DCR of its own).
    let dir = schemas_with(
        "tables:\n  - name: V\n    like: OfficeActivity\n    plan: Basic\n    retention_days: 90\n",
    );
    let err = setup_with(dir.path()).err().expect("refused");
    assert!(err.contains("30 days interactive"), "{err}");
    // A collected table can't be Auxiliary (it keeps AdditionalFields dynamic); a routed one can.
    let dir = schemas_with("");
    let file = dir.path().join("OfficeActivity.yaml");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("plan: Auxiliary\n");
    let plan_line = text.lines().count();
    std::fs::write(&file, text).unwrap();
    let err = setup_with(dir.path()).err().expect("refused");
    assert!(
        err.contains(&format!("OfficeActivity.yaml:{plan_line}:"))
            && err.contains("route the rows you want there"),
        "{err}"
    );
    let dir = schemas_with("tables:\n  - name: V\n    like: OfficeActivity\n    plan: Auxiliary\n");
    let err = setup_with(dir.path()).err().expect("refused");
    assert!(err.contains("needs total_retention_days"), "{err}");
    let dir = schemas_with(
        "tables:\n  - name: V\n    like: OfficeActivity\n    plan: Auxiliary\n    total_retention_days: 365\n",
    );
    setup_with(dir.path()).expect("a routed Auxiliary table");
}

/// POLICY and an Auxiliary table (a DCR of its own, no dynamic columns) with one route to it.
fn with_auxiliary() -> String {
    POLICY.replacen(
        "rules:\n",
        "  - name: OfficeActivityAux\n    like: OfficeActivity\n    plan: Auxiliary\n    total_retention_days: 730\nrules:\n  - name: teams-to-aux\n    table: OfficeActivity\n    when: { column: OfficeWorkload, equals: MicrosoftTeams }\n    action: route\n    to: OfficeActivityAux\n",
        1,
    )
}

#[test]
fn schema_dcr_gives_plans_and_the_routed_tables_streams() {
    let dir = schemas_with(&with_auxiliary());
    let out = tempfile::tempdir().unwrap();
    let template = out.path().join("dcr.json");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_m365-sentinel"))
        .args(["schema", "dcr", "--schemas"])
        .arg(dir.path())
        .arg("-o")
        .arg(&template)
        .status()
        .unwrap();
    assert!(status.success());
    let t: Value = serde_json::from_slice(&std::fs::read(&template).unwrap()).unwrap();
    let resources = t["resources"].as_array().unwrap();
    let table = |name: &str| {
        resources
            .iter()
            .find(|r| r["properties"]["schema"]["name"] == name)
            .unwrap_or_else(|| panic!("no table {name}"))
    };
    let verbose = table("OfficeActivityVerbose_CL");
    assert_eq!(verbose["properties"]["plan"], "Basic");
    assert_eq!(verbose["properties"]["totalRetentionInDays"], 365);
    // Read-only on Basic tables: not sent.
    assert!(verbose["properties"].get("retentionInDays").is_none());
    let main = table("OfficeActivity_CL");
    assert_eq!(main["properties"]["plan"], "Analytics");
    assert_eq!(main["properties"]["retentionInDays"], -1);
    // Same columns as the table it is like.
    assert_eq!(
        verbose["properties"]["schema"]["columns"],
        main["properties"]["schema"]["columns"]
    );
    let dcr = resources.last().unwrap();
    assert!(
        dcr["properties"]["streamDeclarations"]
            .get("Custom-OfficeActivityVerbose_CL")
            .is_some()
    );
    let flows = dcr["properties"]["dataFlows"].as_array().unwrap();
    assert!(
        flows
            .iter()
            .any(|f| f["outputStream"] == "Custom-OfficeActivityVerbose_CL")
    );
    // The Auxiliary table: no dynamic (nor guid) column, a DCR of its own sending to it alone
    // without a transformation, and that DCR's id and endpoint as outputs.
    let aux = table("OfficeActivityAux_CL");
    assert_eq!(aux["properties"]["plan"], "Auxiliary");
    assert_eq!(aux["properties"]["totalRetentionInDays"], 730);
    assert!(aux["properties"].get("retentionInDays").is_none());
    let columns = aux["properties"]["schema"]["columns"].as_array().unwrap();
    assert_eq!(
        columns.len(),
        main["properties"]["schema"]["columns"]
            .as_array()
            .unwrap()
            .len()
    );
    for c in columns {
        assert!(
            !["dynamic", "guid"].contains(&c["type"].as_str().unwrap()),
            "{c}"
        );
    }
    assert!(
        dcr["properties"]["streamDeclarations"]
            .get("Custom-OfficeActivityAux_CL")
            .is_none()
    );
    let dcrs: Vec<&Value> = resources
        .iter()
        .filter(|r| r["type"] == "Microsoft.Insights/dataCollectionRules")
        .collect();
    assert_eq!(dcrs.len(), 2);
    let own = dcrs[0];
    assert_eq!(
        own["name"],
        "[concat(parameters('dataCollectionRuleName'), '-OfficeActivityAux')]"
    );
    let declarations = own["properties"]["streamDeclarations"].as_object().unwrap();
    assert_eq!(
        declarations.keys().collect::<Vec<_>>(),
        ["Custom-OfficeActivityAux_CL"]
    );
    let flows = own["properties"]["dataFlows"].as_array().unwrap();
    assert_eq!(flows.len(), 1);
    assert!(flows[0].get("transformKql").is_none(), "{}", flows[0]);
    for output in [
        "dcrImmutableId_OfficeActivityAux",
        "logsIngestionEndpoint_OfficeActivityAux",
    ] {
        assert!(t["outputs"].get(output).is_some(), "no output {output}");
    }
}

/// `run` against the emulator: the routed rows arrive in their own stream with the columns of
/// the table they are like, and the counts the run prints are what the emulator received.
#[tokio::test]
async fn routed_rows_arrive_in_their_stream_and_the_counts_match() {
    use common::azure::emulator_config;
    let schemas = schemas_with(POLICY);
    let mut config = emulator_config();
    let columns = config.streams["Custom-OfficeActivity_CL"].clone();
    config
        .streams
        .insert("Custom-OfficeActivityVerbose_CL".into(), columns);
    let emulator = m365_emulator::Emulator::start_tls(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = sink_config(dir.path(), &emulator, schemas.path(), "");
    let stdout = run_to_success(&cfg).await;
    let accepted = emulator.accepted();
    let stream = |name: &str| in_stream(&accepted, name);
    let verbose = stream("Custom-OfficeActivityVerbose_CL");
    let main = stream("Custom-OfficeActivity_CL");
    let ops = |rows: &[&Value], op: &str| rows.iter().filter(|r| r["Operation"] == op).count();
    assert_eq!(ops(&verbose, "ModifyFolderPermissions"), 6);
    assert_eq!(ops(&verbose, "TeamCreated"), 2);
    assert_eq!(ops(&main, "TeamCreated"), 2);
    assert_eq!(ops(&main, "FileAccessed"), 0);
    assert_eq!(verbose.len(), 8);
    for row in &verbose {
        assert!(row.get("AdditionalFields").is_none());
        assert!(row["RecordType"].as_str().is_some(), "{row}");
    }
    // The printed counts are the emulator's: 2 dropped, the sample's removals, 2 copies.
    let sampled_kept = [
        "FileDeleted",
        "FileModified",
        "FileUploaded",
        "SecureLinkUsed",
        "TIMailData",
    ]
    .iter()
    .map(|op| ops(&main, op))
    .sum::<usize>();
    assert!(
        stdout.contains("policy rule drop-sharepoint-reads (drop on OfficeActivity_CL): matched 2 row(s), removed 2"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "policy rule half-of-the-rest (sample on OfficeActivity_CL): matched 15 row(s), removed {}",
            15 - sampled_kept
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("policy rule teams-created-also-verbose (route on OfficeActivity_CL): matched 2 row(s), removed 0"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("delivered {} row(s)", main.len() + verbose.len())),
        "{stdout}"
    );
    // The health table has each rule's counts too (`Kind: policy`, deltas per round).
    let health = stream("Custom-M365SentinelHealth_CL");
    let sum = |rule: &str, column: &str| -> u64 {
        health
            .iter()
            .filter(|r| r["Kind"] == "policy" && r["Rule"] == rule)
            .map(|r| r[column].as_u64().unwrap())
            .sum()
    };
    assert_eq!(sum("drop-sharepoint-reads", "Matched"), 2);
    assert_eq!(sum("drop-sharepoint-reads", "RowsRemoved"), 2);
    assert_eq!(
        sum("half-of-the-rest", "RowsRemoved"),
        15 - sampled_kept as u64
    );
    assert_eq!(sum("teams-created-also-verbose", "RowsAdded"), 2);
    let row = health
        .iter()
        .find(|r| r["Kind"] == "policy" && r["Rule"] == "drop-sharepoint-reads")
        .unwrap();
    assert_eq!(row["Table"], "OfficeActivity_CL");
    assert_eq!(row["Action"], "drop");
    let bytes = sum("drop-sharepoint-reads", "BytesRemoved");
    assert!(
        stdout.contains(&format!("removed 2, {bytes} bytes removed")),
        "{bytes} bytes in the health rows\n{stdout}"
    );
}

/// A config for `run` against `emulator` with the schemas in `schemas`; `tables` is the
/// sink's per-table section (indented under `logs_ingestion`), if any.
fn sink_config(
    dir: &Path,
    emulator: &m365_emulator::Emulator,
    schemas: &Path,
    tables: &str,
) -> PathBuf {
    std::fs::write(dir.join("ca.pem"), emulator.ca_pem().unwrap()).unwrap();
    std::fs::write(dir.join("secret"), common::azure::SECRET).unwrap();
    let cfg = dir.join("config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "schemas_dir: {schemas}\nsink:\n  logs_ingestion:\n    endpoint: {url}\n    dcr_immutable_id: {dcr}\n{tables}  credential:\n    kind: client_secret\n    tenant_id: {tenant}\n    client_id: {client}\n    secret_file: {dir}/secret\n  authority_host: {url}\n  flush_delay_ms: 100\nhttp:\n  ca_bundle: {dir}/ca.pem\ndlq:\n  dir: {dir}/dlq\nspool:\n  dir: {dir}/spool\n",
            schemas = schemas.display(),
            url = emulator.url(),
            dcr = common::azure::DCR,
            tenant = common::azure::TENANT,
            client = common::azure::CLIENT,
            dir = dir.display()
        ),
    )
    .unwrap();
    cfg
}

/// `m365-sentinel COMMAND --config CFG`, with the samples as input for `run`.
async fn run_samples(cfg: &Path, command: &str) -> std::process::Output {
    let mut args = vec![
        command.to_string(),
        "--config".into(),
        cfg.display().to_string(),
    ];
    if command == "run" {
        args.push("--input".into());
        args.extend(samples().iter().map(|p| p.display().to_string()));
    }
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_m365-sentinel"))
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// `run` on the samples, which must succeed; its stdout.
async fn run_to_success(cfg: &Path) -> String {
    let out = run_samples(cfg, "run").await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The accepted rows of one stream.
fn in_stream<'a>(accepted: &'a [(String, Value)], stream: &str) -> Vec<&'a Value> {
    accepted
        .iter()
        .filter(|(s, _)| s == stream)
        .map(|(_, r)| r)
        .collect()
}

/// Rows routed to an Auxiliary table go to its own DCR (as `check` insists), with their
/// dynamic values as JSON text, which the emulator's string columns take and objects would not.
#[tokio::test]
async fn auxiliary_rows_go_to_their_own_dcr_with_dynamic_values_as_text() {
    use common::azure::{emulator_config, stream_columns};
    const AUX_DCR: &str = "dcr-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let schemas = schemas_with(&with_auxiliary());
    let setup = setup_with(schemas.path()).unwrap();
    let aux = setup.schemas.table_by_name("OfficeActivityAux").unwrap();
    let columns = stream_columns(&setup.schemas.tables[aux]);
    assert!(columns.contains(&("AdditionalFields".to_string(), "string".to_string())));
    let mut config = emulator_config();
    let verbose = config.streams["Custom-OfficeActivity_CL"].clone();
    config
        .streams
        .insert("Custom-OfficeActivityVerbose_CL".into(), verbose);
    config.other_dcrs.insert(
        AUX_DCR.into(),
        [("Custom-OfficeActivityAux_CL".to_string(), columns)].into(),
    );
    let emulator = m365_emulator::Emulator::start_tls(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    // Without a DCR of its own, `check` refuses the config and says where to put it.
    let cfg = sink_config(dir.path(), &emulator, schemas.path(), "");
    let out = run_samples(&cfg, "check").await;
    let said =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("sink.logs_ingestion.tables.OfficeActivityAux.dcr_immutable_id")
            && said.contains("dcrImmutableId_OfficeActivityAux")
            && said.contains("sink.logs_ingestion.tables.OfficeActivityAux.endpoint"),
        "{said}"
    );

    let tables = format!(
        "    tables:\n      OfficeActivityAux: {{ dcr_immutable_id: {AUX_DCR}, endpoint: {} }}\n",
        emulator.url()
    );
    let cfg = sink_config(dir.path(), &emulator, schemas.path(), &tables);
    let stdout = run_to_success(&cfg).await;
    let accepted = emulator.accepted();
    let rows = |name: &str| in_stream(&accepted, name);
    let aux_rows = rows("Custom-OfficeActivityAux_CL");
    assert!(!aux_rows.is_empty(), "{stdout}");
    let mut with_fields = 0;
    for row in &aux_rows {
        assert_eq!(row["OfficeWorkload"], "MicrosoftTeams", "{row}");
        if let Some(text) = row.get("AdditionalFields").filter(|v| !v.is_null()) {
            let text = text.as_str().unwrap_or_else(|| panic!("not text: {row}"));
            let parsed: Value = serde_json::from_str(text).unwrap();
            assert!(parsed.is_object(), "{text}");
            with_fields += 1;
        }
    }
    assert!(with_fields > 0, "no Auxiliary row had AdditionalFields");
    let main = rows("Custom-OfficeActivity_CL");
    assert!(!main.is_empty());
    assert!(main.iter().all(|r| r["OfficeWorkload"] != "MicrosoftTeams"));
}

/// The dry-run's cost report on a mixed corpus (audit and Defender samples): bytes per table and
/// per operation, what each rule removed, and kept + removed - added = the bytes without rules.
#[test]
fn the_cost_report_adds_up_to_the_run_without_rules() {
    let mut inputs = samples();
    let defender = shared_samples().join("defender-streaming");
    let mut more: Vec<PathBuf> = std::fs::read_dir(&defender)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    more.sort();
    inputs.extend(more);
    let cost = |r: &common::Run| -> Value {
        serde_json::from_slice(&std::fs::read(r.out.path().join("cost.json")).unwrap()).unwrap()
    };
    let plain = run(&inputs);
    let plain_cost = cost(&plain);
    let dir = schemas_with(POLICY);
    let with = run_with(&setup_with(dir.path()).unwrap(), &inputs);
    let with_cost = cost(&with);
    assert!(
        plain_cost["tables"].as_array().unwrap().len() >= 2,
        "{plain_cost}"
    );
    assert_eq!(plain_cost["bytes_removed"], 0);
    assert_eq!(plain_cost["bytes_without_rules"], plain_cost["bytes_kept"]);
    // The same input: the bytes without rules are the plain run's bytes.
    assert_eq!(with_cost["bytes_without_rules"], plain_cost["bytes_kept"]);
    let n = |v: &Value| v.as_u64().unwrap();
    assert_eq!(
        n(&with_cost["bytes_kept"]) + n(&with_cost["bytes_removed"]) - n(&with_cost["bytes_added"]),
        n(&plain_cost["bytes_kept"])
    );
    let rules = with_cost["rules"].as_array().unwrap();
    let dropped = rules
        .iter()
        .find(|r| r["rule"] == "drop-sharepoint-reads")
        .unwrap();
    assert!(n(&dropped["removed_bytes"]) > 0 && dropped["saved"].as_f64().unwrap() > 0.0);
    // Kept bytes per table are the bytes in the bodies.
    for t in with_cost["tables"].as_array().unwrap() {
        let table = t["table"].as_str().unwrap();
        assert_eq!(n(&t["bytes"]), row_bytes(&with.bodies[table]), "{table}");
    }
    let verbose = with_cost["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "OfficeActivityVerbose_CL")
        .unwrap();
    assert_eq!(verbose["plan"], "Basic");
    let office = plain_cost["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "OfficeActivity_CL")
        .unwrap();
    let top = office["top_operations"].as_array().unwrap();
    assert_eq!(office["operation_column"], "Operation");
    assert!(top.len() <= 10 && top.len() >= 5, "{top:?}");
    let bytes: Vec<u64> = top.iter().map(|o| n(&o["bytes"])).collect();
    assert!(
        bytes.windows(2).all(|w| w[0] >= w[1]),
        "largest first: {bytes:?}"
    );
    let summary = std::fs::read_to_string(with.out.path().join("summary.txt")).unwrap();
    assert!(summary.contains("cost estimate"), "{summary}");
    assert!(summary.contains("without rules"), "{summary}");
}
