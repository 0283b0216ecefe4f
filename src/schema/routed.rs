//! The routed tables of `policy.yaml`: tables only policy routes reach, each with the columns of
//! the table it is `like` and a plan of its own.

use serde::Deserialize;

use super::load::{PlanFile, column_line, yaml_error};
use super::{InputKind, POLICY_FILE, SchemaError, SchemaFiles, TableSchema};

/// The `tables:` section of `policy.yaml` (its rules are the policy stage's).
#[derive(Deserialize)]
struct PolicyTables {
    #[serde(default)]
    tables: Vec<RoutedTableFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutedTableFile {
    /// The table's name; its output table is `<name>_CL`, its stream `Custom-<name>_CL`.
    name: String,
    /// The table whose columns it has (the table its rows are routed from).
    like: String,
    #[serde(flatten)]
    plan: PlanFile,
}

/// Tables that only policy routes reach: each a copy of the columns of the table it is `like`,
/// with its own name, stream and plan.
pub(super) fn add_routed_tables(
    files: &SchemaFiles,
    tables: &mut Vec<TableSchema>,
    errors: &mut Vec<SchemaError>,
) {
    let Some((path, text)) = files.get(POLICY_FILE) else {
        return;
    };
    let section: PolicyTables = match yaml_serde::from_str(text) {
        Ok(s) => s,
        Err(e) => {
            errors.push(yaml_error(path, &e));
            return;
        }
    };
    for routed in section.tables {
        let line = name_line(text, &routed.name);
        let mut err = |message: String| {
            errors.push(SchemaError {
                file: path.to_string(),
                line,
                message,
            })
        };
        let output_table = format!("{}_CL", routed.name);
        let Some(like) = tables.iter().find(|t| t.table == routed.like) else {
            let known: Vec<&str> = tables.iter().map(|t| t.table.as_str()).collect();
            err(format!(
                "routed table {:?} is like {:?}, which no schema defines; use one of: {}",
                routed.name,
                routed.like,
                known.join(", ")
            ));
            continue;
        };
        if !matches!(like.input, InputKind::Audit | InputKind::Defender { .. }) {
            err(format!(
                "routed table {:?}: rows can be routed from a collected table only, not {:?}",
                routed.name, routed.like
            ));
            continue;
        }
        let well_formed = routed.name.starts_with(|c: char| c.is_ascii_alphabetic())
            && routed
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !routed.name.ends_with("_CL");
        if !well_formed {
            err(format!(
                "routed table name {:?}: letters, digits and '_', starting with a letter, without _CL (it is added)",
                routed.name
            ));
            continue;
        }
        if tables
            .iter()
            .any(|t| t.table == routed.name || t.output_table == output_table)
        {
            err(format!(
                "routed table {:?} is already defined (a schema file or an earlier entry)",
                routed.name
            ));
            continue;
        }
        let plan = routed.plan.table_plan();
        let problems = super::plans::problems(&output_table, &plan, &like.columns);
        if !problems.is_empty() {
            problems.into_iter().for_each(&mut err);
            continue;
        }
        let mut table = like.clone();
        table.input = InputKind::Routed {
            from: like.table.clone(),
        };
        table.stream = format!("Custom-{output_table}");
        table.table = routed.name;
        table.output_table = output_table;
        if plan.plan == super::Plan::Auxiliary {
            table.dynamic_as_text = super::plans::as_auxiliary(&mut table.columns);
        }
        table.plan = plan;
        tables.push(table);
    }
}

/// Line of the first `name: <name>` entry (a list item or a key of one).
fn name_line(text: &str, name: &str) -> Option<usize> {
    column_line(text, name, 0)
}
