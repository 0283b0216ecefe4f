//! `check`: the configuration and schemas load; what they say is listed.

use std::process::ExitCode;

use super::shared::{Common, load, refuse_problems};

pub fn check(common: &Common) -> anyhow::Result<ExitCode> {
    let setup = load(common)?;
    refuse_problems(common, &setup)?;
    println!("configuration OK; schemas from {}", setup.schema_origin);
    for t in &setup.schemas.tables {
        println!(
            "  {:<24} -> {:<28} stream {:<34} {} columns",
            t.table,
            t.output_table,
            t.stream,
            t.columns.len()
        );
    }
    for t in &setup.config.management_api.tenants {
        println!(
            "  tenant {:<24} {} via {}: {}",
            t.label(),
            t.tenant_id,
            t.endpoint(),
            t.content_types().join(", ")
        );
    }
    let rules: Vec<&str> = setup.redactor.rule_names().collect();
    println!(
        "  redaction rules: {}",
        if rules.is_empty() {
            "none".into()
        } else {
            rules.join(", ")
        }
    );
    if setup.config.sink.is_none() {
        println!("  no sink: dry-run only (`run` and `dlq replay` need a `sink` section)");
    }
    Ok(ExitCode::SUCCESS)
}
