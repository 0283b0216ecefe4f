//! The Azure-side definitions generated from the schemas: the ARM template (tables and DCR) and
//! the KQL functions, through the binary, as a user runs them.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn generate(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_m365-sentinel"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn template(schemas: Option<&Path>) -> Value {
    let mut args = vec!["schema", "dcr"];
    let dir;
    if let Some(d) = schemas {
        dir = d.display().to_string();
        args.extend(["--schemas", &dir]);
    }
    serde_json::from_str(&generate(&args)).expect("the template is JSON")
}

fn resources<'a>(t: &'a Value, kind: &str) -> Vec<&'a Value> {
    t["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == kind)
        .collect()
}

#[test]
fn the_template_has_a_table_and_a_stream_per_schema_with_every_column_typed() {
    let setup = common::setup();
    let t = template(None);
    assert_eq!(
        t["$schema"],
        "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#"
    );
    let tables = resources(&t, "Microsoft.OperationalInsights/workspaces/tables");
    let dcrs = resources(&t, "Microsoft.Insights/dataCollectionRules");
    assert_eq!(tables.len(), setup.schemas.tables.len());
    // Six Sentinel-shaped tables and the connector's health table.
    assert_eq!(tables.len(), 7);
    assert!(
        tables
            .iter()
            .any(|t| t["properties"]["schema"]["name"] == "M365SentinelHealth_CL")
    );
    assert_eq!(dcrs.len(), 1);
    let dcr = &dcrs[0];
    assert_eq!(dcr["kind"], "Direct");
    let streams = dcr["properties"]["streamDeclarations"].as_object().unwrap();
    assert_eq!(streams.len(), 7);
    let flows = dcr["properties"]["dataFlows"].as_array().unwrap();
    assert_eq!(flows.len(), 7);
    for schema in &setup.schemas.tables {
        let table = tables
            .iter()
            .find(|r| r["properties"]["schema"]["name"] == schema.output_table.as_str())
            .unwrap_or_else(|| panic!("no table {}", schema.output_table));
        let table_columns = table["properties"]["schema"]["columns"].as_array().unwrap();
        let stream_columns = streams[&schema.stream]["columns"].as_array().unwrap();
        // The schema's columns, then the integrity chain's four.
        let chain = m365_sentinel::integrity::CHAIN_COLUMNS;
        assert_eq!(table_columns.len(), schema.columns.len() + chain.len());
        assert_eq!(stream_columns.len(), schema.columns.len() + chain.len());
        let expected = schema
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.ty))
            .chain(chain);
        for ((name, ty), (tc, sc)) in expected.zip(table_columns.iter().zip(stream_columns)) {
            assert_eq!(tc["name"], name);
            assert_eq!(sc["name"], name);
            let (want_table, want_stream) = match ty.table_type() {
                "bool" => ("boolean", "boolean"),
                "datetime" => ("dateTime", "datetime"),
                "guid" => ("guid", "string"),
                other => (other, other),
            };
            assert_eq!(tc["type"], want_table, "{} {name}", schema.table);
            assert_eq!(sc["type"], want_stream, "{} {name}", schema.table);
        }
        let flow = flows
            .iter()
            .find(|f| f["streams"][0] == schema.stream.as_str())
            .unwrap();
        assert_eq!(
            flow["outputStream"],
            format!("Custom-{}", schema.output_table)
        );
        assert_eq!(flow["transformKql"], "source");
    }
    for output in ["dcrImmutableId", "logsIngestionEndpoint", "dcrResourceId"] {
        assert!(t["outputs"][output]["value"].is_string(), "{output}");
    }
}

#[test]
fn a_schema_edit_shows_up_in_the_template_and_the_functions() {
    let dir = tempfile::tempdir().unwrap();
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    for entry in std::fs::read_dir(&schemas).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let file = dir.path().join("OfficeActivity.yaml");
    let mut yaml = std::fs::read_to_string(&file).unwrap();
    yaml.push_str("  - { name: TicketNumber, type: long, from: TicketNumber }\n");
    yaml = yaml.replace(
        "output_table: OfficeActivity_CL",
        "output_table: M365Audit_CL",
    );
    std::fs::write(&file, yaml).unwrap();

    let t = template(Some(dir.path()));
    let tables = resources(&t, "Microsoft.OperationalInsights/workspaces/tables");
    let audit = tables
        .iter()
        .find(|r| r["properties"]["schema"]["name"] == "M365Audit_CL")
        .expect("the renamed table");
    let columns = audit["properties"]["schema"]["columns"].as_array().unwrap();
    assert!(
        columns
            .iter()
            .any(|c| c["name"] == "TicketNumber" && c["type"] == "long")
    );
    let dcr = &resources(&t, "Microsoft.Insights/dataCollectionRules")[0];
    let stream = &dcr["properties"]["streamDeclarations"]["Custom-OfficeActivity_CL"]["columns"];
    assert!(
        stream
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "TicketNumber")
    );
    let flows = dcr["properties"]["dataFlows"].as_array().unwrap();
    assert!(
        flows
            .iter()
            .any(|f| f["outputStream"] == "Custom-M365Audit_CL")
    );

    let kql = generate(&[
        "schema",
        "kql",
        "--schemas",
        &dir.path().display().to_string(),
    ]);
    assert!(kql.contains("OfficeActivity_All = union isfuzzy=true OfficeActivity, M365Audit_CL"));
}

#[test]
fn the_functions_name_every_table() {
    let kql = generate(&["schema", "kql"]);
    for table in [
        "OfficeActivity",
        "EmailEvents",
        "EmailAttachmentInfo",
        "EmailUrlInfo",
        "EmailPostDeliveryEvents",
        "UrlClickEvents",
    ] {
        let line = format!("{table}_All = union isfuzzy=true {table}, {table}_CL");
        assert!(kql.contains(&line), "{line}\n{kql}");
    }
}

#[test]
fn the_template_can_be_written_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dcr.json");
    let printed = generate(&["schema", "dcr", "--out", &path.display().to_string()]);
    assert!(printed.is_empty());
    let written: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(written, template(None));
}
