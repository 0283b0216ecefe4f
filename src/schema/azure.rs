//! The Azure side, generated from the schemas so it can't drift from what the mapper sends:
//! an ARM template creating one custom table per schema and one data collection rule (kind
//! Direct: it has its own logs ingestion endpoint) with a stream declaration and a data flow per
//! table; and KQL functions that put the Sentinel table and its `_CL` twin under one name, so
//! existing rules and workbooks run on both.
//!
//! References: learn.microsoft.com/azure/templates/microsoft.operationalinsights/workspaces/tables
//! (column types string, int, long, real, boolean, dateTime, guid, dynamic) and
//! .../microsoft.insights/datacollectionrules (stream declarations have no guid: declared as
//! string; `transformKql: source`; `outputStream: Custom-<table>`).

use serde_json::{Value, json};

use super::{ColumnType, SchemaSet};

// 2023-01-01-preview is the first tables API with the Auxiliary plan.
const TABLES_API: &str = "2023-01-01-preview";
const DCR_API: &str = "2023-03-11";

/// The column type in a workspace table definition.
fn table_type(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::String => "string",
        ColumnType::Int => "int",
        ColumnType::Long => "long",
        ColumnType::Real => "real",
        ColumnType::Bool => "boolean",
        ColumnType::DateTime => "dateTime",
        ColumnType::Guid => "guid",
        ColumnType::Dynamic => "dynamic",
    }
}

/// The column type in a DCR stream declaration (no guid there).
fn stream_type(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Guid => "string",
        ColumnType::DateTime => "datetime",
        other => table_type(other),
    }
}

/// The interactive retention as the tables API takes it: the days, -1 for the workspace's, and
/// nothing on Basic and Auxiliary tables, where it is read-only.
fn retention(days: Option<u32>, plan: super::Plan) -> Value {
    match (days, plan) {
        (_, super::Plan::Basic | super::Plan::Auxiliary) => Value::Null,
        (Some(d), _) => json!(d),
        (None, _) => json!(-1),
    }
}

/// An ARM template (deploy with `az deployment group create`) for the tables and the DCR.
pub fn arm_template(schemas: &SchemaSet) -> Value {
    let mut resources = Vec::new();
    let mut table_ids = Vec::new();
    let mut declarations = serde_json::Map::new();
    let mut flows = Vec::new();
    let mut aux_outputs = serde_json::Map::new();
    for t in &schemas.tables {
        let columns = |kind: fn(ColumnType) -> &'static str| -> Vec<Value> {
            // The integrity chain's columns too: a row may carry them (integrity on) or not.
            t.columns
                .iter()
                .map(|c| (c.name.as_str(), c.ty))
                .chain(crate::integrity::CHAIN_COLUMNS)
                .map(|(name, ty)| json!({ "name": name, "type": kind(ty) }))
                .collect()
        };
        let mut table = json!({
            "type": "Microsoft.OperationalInsights/workspaces/tables",
            "apiVersion": TABLES_API,
            "name": format!("[concat(parameters('workspaceName'), '/{}')]", t.output_table),
            "properties": {
                "plan": t.plan.plan.name(),
                // -1: the workspace's default. Basic tables keep 30 days (read-only there).
                "retentionInDays": retention(t.plan.retention_days, t.plan.plan),
                "totalRetentionInDays": t.plan.total_retention_days.map_or(json!(-1), |d| json!(d)),
                "schema": {
                    "name": t.output_table,
                    "description": format!("{} rows collected by m365-sentinel (the columns of the Sentinel table {})", t.table, t.table),
                    "columns": columns(table_type),
                },
            },
        });
        if let Some(properties) = table["properties"].as_object_mut()
            && properties["retentionInDays"].is_null()
        {
            properties.remove("retentionInDays");
        }
        resources.push(table);
        table_ids.push(format!(
            "[resourceId('Microsoft.OperationalInsights/workspaces/tables', parameters('workspaceName'), '{}')]",
            t.output_table
        ));
        if t.plan.plan == super::Plan::Auxiliary {
            // A DCR of its own, without a transformation: what an Auxiliary table takes.
            let name = format!(
                "[concat(parameters('dataCollectionRuleName'), '-{}')]",
                t.table
            );
            let declaration = json!({ t.stream.clone(): { "columns": columns(stream_type) } });
            let flow = json!({ "streams": [t.stream], "destinations": ["workspace"] });
            resources.push(dcr_resource(
                &name,
                vec![table_ids.pop()],
                declaration,
                flow,
            ));
            let id = format!(
                "resourceId('Microsoft.Insights/dataCollectionRules', concat(parameters('dataCollectionRuleName'), '-{}'))",
                t.table
            );
            aux_outputs.insert(
                format!("dcrImmutableId_{}", t.table),
                json!({ "type": "string", "value": format!("[reference({id}).immutableId]") }),
            );
            aux_outputs.insert(
                format!("logsIngestionEndpoint_{}", t.table),
                json!({ "type": "string", "value": format!("[reference({id}).endpoints.logsIngestion]") }),
            );
            continue;
        }
        declarations.insert(t.stream.clone(), json!({ "columns": columns(stream_type) }));
        flows.push(json!({
            "streams": [t.stream],
            "destinations": ["workspace"],
            "transformKql": "source",
            "outputStream": format!("Custom-{}", t.output_table),
        }));
    }
    resources.push(dcr_resource(
        "[parameters('dataCollectionRuleName')]",
        table_ids.into_iter().map(Some).collect(),
        Value::Object(declarations),
        Value::Array(flows),
    ));
    let dcr = "resourceId('Microsoft.Insights/dataCollectionRules', parameters('dataCollectionRuleName'))";
    let mut template = json!({
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "metadata": {
            "description": "Generated by `m365-sentinel schema dcr` from the schema files; regenerate after editing them.",
        },
        "parameters": {
            "workspaceName": {
                "type": "string",
                "metadata": { "description": "The Log Analytics workspace (in this resource group) that receives the tables." },
            },
            "dataCollectionRuleName": { "type": "string", "defaultValue": "m365-sentinel" },
            "location": { "type": "string", "defaultValue": "[resourceGroup().location]" },
        },
        "resources": resources,
        "outputs": {
            "dcrImmutableId": { "type": "string", "value": format!("[reference({dcr}).immutableId]") },
            "logsIngestionEndpoint": { "type": "string", "value": format!("[reference({dcr}).endpoints.logsIngestion]") },
            "dcrResourceId": { "type": "string", "value": format!("[{dcr}]") },
        },
    });
    if let Some(outputs) = template["outputs"].as_object_mut() {
        outputs.extend(aux_outputs);
    }
    template
}

/// A data collection rule (kind Direct: it has its own logs ingestion endpoint) into the
/// workspace. `flows` is one data flow or a list of them.
fn dcr_resource(
    name: &str,
    depends_on: Vec<Option<String>>,
    declarations: Value,
    flows: Value,
) -> Value {
    let flows = match flows {
        Value::Array(list) => list,
        one => vec![one],
    };
    json!({
        "type": "Microsoft.Insights/dataCollectionRules",
        "apiVersion": DCR_API,
        "name": name,
        "location": "[parameters('location')]",
        "kind": "Direct",
        "dependsOn": depends_on.into_iter().flatten().collect::<Vec<_>>(),
        "properties": {
            "description": "m365-sentinel: Microsoft 365 audit log and Defender email events into Sentinel-shaped custom tables",
            "streamDeclarations": declarations,
            "destinations": {
                "logAnalytics": [{
                    "name": "workspace",
                    "workspaceResourceId": "[resourceId('Microsoft.OperationalInsights/workspaces', parameters('workspaceName'))]",
                }],
            },
            "dataFlows": flows,
        },
    })
}

/// KQL functions, one per table: `<Table>_All` unions the Sentinel table (filled by the
/// first-party connector, where there is one) with the `_CL` table this connector fills.
/// `isfuzzy=true` lets a workspace miss either one.
pub fn kql_functions(schemas: &SchemaSet) -> String {
    let mut out = String::from(
        "// Generated by `m365-sentinel schema kql` from the schema files; regenerate after editing them.\n\
         // Save each as a workspace function (alias = the name before '='), e.g. with\n\
         // az monitor log-analytics workspace saved-search create --func-alias <name> ...\n",
    );
    // The health table is the connector's own: no Sentinel table to unite it with.
    for t in schemas.sentinel_tables() {
        out.push_str(&format!(
            "\n// {table}: the Sentinel table and {output}\n{table}_All = union isfuzzy=true {table}, {output}\n",
            table = t.table,
            output = t.output_table
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_follow_each_api() {
        assert_eq!(table_type(ColumnType::Guid), "guid");
        assert_eq!(stream_type(ColumnType::Guid), "string");
        assert_eq!(table_type(ColumnType::Bool), "boolean");
        assert_eq!(stream_type(ColumnType::Bool), "boolean");
        assert_eq!(stream_type(ColumnType::DateTime), "datetime");
    }
}
