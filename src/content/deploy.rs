//! One ARM template that installs the rewritten content: each analytics rule (Scheduled or NRT)
//! as a `Microsoft.SecurityInsights/alertRules` resource on the workspace, each hunting query
//! and each `<Table>_All` function as a `savedSearches` resource, so one
//! `az deployment group create` deploys everything.
//!
//! Resource names are derived from the original rule's `id` (SHA-256 of a fixed prefix and the
//! id, shaped as a GUID): a redeploy updates the same resources instead of adding copies, and
//! the names never collide with the original rule's, which a workspace may run beside ours.
//! Shapes: Microsoft.SecurityInsights alertRules 2023-02-01 (ScheduledAlertRule, NrtAlertRule)
//! and Microsoft.OperationalInsights workspaces/savedSearches 2020-08-01 ARM references.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::schema::SchemaSet;

const ALERT_RULES_API: &str = "2023-02-01";
const SAVED_SEARCHES_API: &str = "2020-08-01";
const NAME_SUFFIX: &str = " (m365-sentinel)";

#[derive(Debug, Default)]
pub struct Deployable {
    resources: Vec<Value>,
    /// Content ids taken so far: the same rule in two folders is deployed once.
    ids: std::collections::BTreeSet<String>,
    pub rules: usize,
    pub hunting_queries: usize,
    pub functions: usize,
}

/// A stable GUID for one piece of content.
pub fn stable_guid(id: &str) -> String {
    let digest = Sha256::digest(format!("m365-sentinel/content/{id}").as_bytes());
    let h: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `1h`, `5m`, `14d` (the YAML's durations) as ISO 8601 (`PT1H`, `PT5M`, `P14D`).
pub fn iso_duration(text: &str) -> Option<String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = number.parse().ok()?;
    Some(match unit {
        "m" => format!("PT{n}M"),
        "h" => format!("PT{n}H"),
        "d" => format!("P{n}D"),
        _ => return None,
    })
}

fn trigger_operator(op: &str) -> Option<&'static str> {
    Some(match op {
        "gt" | "GreaterThan" => "GreaterThan",
        "lt" | "LessThan" => "LessThan",
        "eq" | "Equal" => "Equal",
        "ne" | "NotEqual" => "NotEqual",
        _ => return None,
    })
}

fn workspace_scope() -> Value {
    json!("[format('Microsoft.OperationalInsights/workspaces/{0}', parameters('workspace'))]")
}

fn str_of<'a>(doc: &'a Value, key: &str) -> Option<&'a str> {
    doc.get(key).and_then(Value::as_str)
}

impl Deployable {
    /// Adds a rewritten rule or hunting query; returns what it was taken as, or why not.
    pub fn add_yaml(&mut self, rewritten: &str) -> Result<&'static str, String> {
        let doc: Value = yaml_serde::from_str(rewritten).map_err(|e| e.to_string())?;
        let id = str_of(&doc, "id").ok_or("no `id`")?;
        let name = str_of(&doc, "name").ok_or("no `name`")?;
        let query = str_of(&doc, "query").ok_or("no `query` (parsers are not deployed)")?;
        let description = str_of(&doc, "description").unwrap_or("").trim();
        if !self.ids.insert(id.to_string()) {
            return Err(format!("its id {id} was already taken from another file"));
        }
        let guid = stable_guid(id);
        let kind = str_of(&doc, "kind");
        let is_rule = kind.is_some() || doc.get("queryFrequency").is_some();
        if !is_rule {
            let mut tags = vec![json!({ "name": "description", "value": description })];
            for key in ["tactics", "relevantTechniques"] {
                if let Some(list) = doc.get(key).and_then(Value::as_array) {
                    let joined: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
                    let tag = if key == "tactics" {
                        "tactics"
                    } else {
                        "techniques"
                    };
                    tags.push(json!({ "name": tag, "value": joined.join(",") }));
                }
            }
            self.resources.push(json!({
                "type": "Microsoft.OperationalInsights/workspaces/savedSearches",
                "apiVersion": SAVED_SEARCHES_API,
                "name": format!("[concat(parameters('workspace'), '/{guid}')]"),
                "properties": {
                    "category": "Hunting Queries",
                    "displayName": format!("{name}{NAME_SUFFIX}"),
                    "query": query,
                    "version": 2,
                    "tags": tags,
                },
            }));
            self.hunting_queries += 1;
            return Ok("hunting query");
        }
        let nrt = kind == Some("NRT");
        let mut properties = Map::new();
        properties.insert("displayName".into(), json!(format!("{name}{NAME_SUFFIX}")));
        properties.insert("description".into(), json!(description));
        properties.insert(
            "severity".into(),
            json!(str_of(&doc, "severity").unwrap_or("Medium")),
        );
        properties.insert("enabled".into(), json!(true));
        properties.insert("query".into(), json!(query));
        properties.insert("suppressionDuration".into(), json!("PT5H"));
        properties.insert("suppressionEnabled".into(), json!(false));
        if !nrt {
            for (key, target) in [
                ("queryFrequency", "queryFrequency"),
                ("queryPeriod", "queryPeriod"),
            ] {
                let text = str_of(&doc, key).ok_or(format!("no `{key}`"))?;
                let iso = iso_duration(text).ok_or(format!("`{key}: {text}` is not a duration"))?;
                properties.insert(target.into(), json!(iso));
            }
            let op = str_of(&doc, "triggerOperator").unwrap_or("gt");
            properties.insert(
                "triggerOperator".into(),
                json!(trigger_operator(op).ok_or(format!("`triggerOperator: {op}` is unknown"))?),
            );
            let threshold = doc
                .get("triggerThreshold")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            properties.insert("triggerThreshold".into(), json!(threshold));
        }
        if let Some(tactics) = doc.get("tactics") {
            properties.insert("tactics".into(), tactics.clone());
        }
        if let Some(techniques) = doc.get("relevantTechniques").and_then(Value::as_array) {
            // The API takes techniques (T1234), sub-techniques go in their own property.
            let main: Vec<Value> = techniques
                .iter()
                .filter_map(Value::as_str)
                .map(|t| json!(t.split('.').next().unwrap_or(t)))
                .collect();
            properties.insert("techniques".into(), Value::Array(main));
        }
        for key in [
            "entityMappings",
            "customDetails",
            "alertDetailsOverride",
            "eventGroupingSettings",
        ] {
            if let Some(value) = doc.get(key) {
                properties.insert(key.into(), value.clone());
            }
        }
        self.resources.push(json!({
            "type": "Microsoft.SecurityInsights/alertRules",
            "apiVersion": ALERT_RULES_API,
            "scope": workspace_scope(),
            "name": guid,
            "kind": if nrt { "NRT" } else { "Scheduled" },
            "properties": properties,
        }));
        self.rules += 1;
        Ok("analytics rule")
    }

    /// Adds the `<Table>_All` functions of `schema kql` as saved searches with their alias.
    pub fn add_functions(&mut self, schemas: &SchemaSet) {
        for t in schemas.sentinel_tables() {
            let alias = format!("{}_All", t.table);
            self.resources.push(json!({
                "type": "Microsoft.OperationalInsights/workspaces/savedSearches",
                "apiVersion": SAVED_SEARCHES_API,
                "name": format!("[concat(parameters('workspace'), '/{}')]", stable_guid(&alias)),
                "properties": {
                    "category": "m365-sentinel",
                    "displayName": alias,
                    "functionAlias": alias,
                    "query": format!("union isfuzzy=true {}, {}", t.table, t.output_table),
                    "version": 2,
                },
            }));
            self.functions += 1;
        }
    }

    pub fn template(&self) -> Value {
        json!({
            "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
            "contentVersion": "1.0.0.0",
            "metadata": {
                "description": "Generated by `m365-sentinel content rewrite --arm`: Sentinel content rewritten for the m365-sentinel tables, and the functions it reads through.",
            },
            "parameters": {
                "workspace": {
                    "type": "string",
                    "metadata": { "description": "The Log Analytics workspace (in this resource group) with Microsoft Sentinel on it." },
                },
            },
            "resources": self.resources,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_operators_and_guids() {
        assert_eq!(iso_duration("1h").unwrap(), "PT1H");
        assert_eq!(iso_duration("14d").unwrap(), "P14D");
        assert_eq!(iso_duration("5m").unwrap(), "PT5M");
        assert_eq!(iso_duration("1w"), None);
        assert_eq!(trigger_operator("gt"), Some("GreaterThan"));
        let a = stable_guid("abc");
        assert_eq!(a, stable_guid("abc"));
        assert_ne!(a, stable_guid("abd"));
        assert_eq!(a.len(), 36);
    }
}
