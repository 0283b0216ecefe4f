//! The analytics rules shipped for the health table (`rules/`, in the Azure-Sentinel YAML
//! format): no health row for 30 minutes, lag over 24 hours, a failing status, dead letters
//! growing. `schema rules` writes them as one ARM template, through the same builder as
//! `content rewrite --arm`.

use serde_json::Value;

use crate::content::deploy::Deployable;

/// (file name, YAML) of each rule.
pub const RULES: [(&str, &str); 4] = [
    (
        "health-no-rows.yaml",
        include_str!("../../rules/health-no-rows.yaml"),
    ),
    (
        "health-lag.yaml",
        include_str!("../../rules/health-lag.yaml"),
    ),
    (
        "health-failing.yaml",
        include_str!("../../rules/health-failing.yaml"),
    ),
    (
        "health-dead-letters.yaml",
        include_str!("../../rules/health-dead-letters.yaml"),
    ),
];

/// The ARM template of the rules (parameter `workspace`).
pub fn template() -> Result<Value, String> {
    let mut deployable = Deployable::default();
    for (name, text) in RULES {
        deployable
            .add_yaml(text)
            .map_err(|e| format!("rules/{name}: {e}"))?;
    }
    Ok(deployable.template())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_rule_becomes_a_scheduled_rule() {
        let t = super::template().unwrap();
        let rules: Vec<&serde_json::Value> = t["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["type"] == "Microsoft.SecurityInsights/alertRules")
            .collect();
        assert_eq!(rules.len(), 4);
        assert!(rules.iter().all(|r| {
            r["kind"] == "Scheduled"
                && r["properties"]["query"]
                    .as_str()
                    .is_some_and(|q| q.contains("M365SentinelHealth_CL"))
        }));
    }
}
