//! Reading `policy.yaml`'s rules and checking them against the schemas: every problem with
//! file and line, all at once, as the schemas' own.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;

use super::condition::{Compare, Condition, Expected, Operand, Test};
use super::{Action, Rule};
use crate::schema::{
    ColumnType, InputKind, POLICY_FILE, SchemaError, SchemaFiles, SchemaSet, TableSchema,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    /// Read by the schemas (routed tables are tables).
    #[serde(default)]
    #[allow(dead_code)]
    tables: serde::de::IgnoredAny,
    #[serde(default)]
    rules: Vec<RuleFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    table: String,
    when: Option<ConditionFile>,
    action: String,
    one_in: Option<u64>,
    by: Option<Vec<String>>,
    drop_columns: Option<Vec<String>>,
    cut: Option<BTreeMap<String, usize>>,
    to: Option<String>,
    keep_original: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConditionFile {
    all: Option<Vec<ConditionFile>>,
    any: Option<Vec<ConditionFile>>,
    not: Option<Box<ConditionFile>>,
    column: Option<String>,
    field: Option<String>,
    equals: Option<Scalar>,
    #[serde(rename = "in")]
    one_of: Option<Vec<Scalar>>,
    matches: Option<String>,
    gt: Option<f64>,
    ge: Option<f64>,
    lt: Option<f64>,
    le: Option<f64>,
    exists: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl Scalar {
    fn expected(self) -> Expected {
        match self {
            Self::Bool(b) => Expected {
                text: b.to_string(),
                number: None,
                boolean: Some(b),
            },
            Self::Int(i) => Expected {
                text: i.to_string(),
                number: Some(i as f64),
                boolean: None,
            },
            Self::Float(f) => Expected {
                text: f.to_string(),
                number: Some(f),
                boolean: None,
            },
            Self::Text(text) => Expected {
                text,
                number: None,
                boolean: None,
            },
        }
    }
}

/// The rules of `policy.yaml` (none without the file), checked against `schemas`.
pub fn load(files: &SchemaFiles, schemas: &SchemaSet) -> Result<Vec<Rule>, Vec<SchemaError>> {
    let Some((path, text)) = files.get(POLICY_FILE) else {
        return Ok(Vec::new());
    };
    let file: PolicyFile = yaml_serde::from_str(text).map_err(|e| {
        vec![SchemaError {
            file: path.to_string(),
            line: e.location().map(|l| l.line()),
            message: format!(
                "{e}; {POLICY_FILE} holds `tables:` (routed tables) and `rules:` (see the comments in the shipped file)"
            ),
        }]
    })?;
    let mut errors = Vec::new();
    let mut rules = Vec::new();
    let mut names = HashSet::new();
    for (n, rule) in file.rules.into_iter().enumerate() {
        let line = rule_line(text, &rule.name, n);
        let mut problems = Vec::new();
        if rule.name.is_empty() || !names.insert(rule.name.clone()) {
            problems.push(format!(
                "rule name {:?} is empty or used twice; each rule needs a name of its own (it labels the counts)",
                rule.name
            ));
        }
        if let Some(rule) = compile(rule, schemas, &mut problems)
            && problems.is_empty()
        {
            rules.push(rule);
        }
        errors.extend(problems.into_iter().map(|message| SchemaError {
            file: path.to_string(),
            line,
            message,
        }));
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(errors)
    }
}

/// Line of the `n`-th rule, found by its `name:`.
fn rule_line(text: &str, name: &str, n: usize) -> Option<usize> {
    let rules_at = text
        .lines()
        .position(|l| l.starts_with("rules:"))
        .unwrap_or(0);
    let needle = format!("name: {name}");
    let quoted = [format!("name: \"{name}\""), format!("name: '{name}'")];
    let mut items = 0;
    for (i, line) in text.lines().enumerate().skip(rules_at) {
        let l = line.trim_start();
        if l.starts_with("- ") {
            items += 1;
        }
        let l = l.trim_start_matches("- ").trim_start_matches('{').trim();
        let named = l == needle
            || l.starts_with(&format!("{needle},"))
            || quoted.iter().any(|q| l.starts_with(q.as_str()));
        if named && items > n {
            return Some(i + 1);
        }
    }
    None
}

fn compile(rule: RuleFile, schemas: &SchemaSet, problems: &mut Vec<String>) -> Option<Rule> {
    let name = rule.name;
    let Some(table) = schemas.table_by_name(&rule.table) else {
        let known: Vec<&str> = schemas.tables.iter().map(|t| t.table.as_str()).collect();
        problems.push(format!(
            "rule {name}: table {:?} is not among the schemas ({})",
            rule.table,
            known.join(", ")
        ));
        return None;
    };
    let schema = &schemas.tables[table];
    if matches!(schema.input, InputKind::Health) {
        problems.push(format!(
            "rule {name}: the health table's rows are the connector's own; no policy applies to them"
        ));
    }
    let when = rule
        .when
        .map(|c| condition(c, &name, schema, problems))
        .transpose()
        .ok()
        .flatten();
    // Each setting belongs to one action; on another it is a mistake, reported.
    let settings = [
        ("one_in", rule.one_in.is_some(), "sample"),
        ("by", rule.by.is_some(), "sample"),
        ("drop_columns", rule.drop_columns.is_some(), "trim"),
        ("cut", rule.cut.is_some(), "trim"),
        ("to", rule.to.is_some(), "route"),
        ("keep_original", rule.keep_original.is_some(), "route"),
    ];
    let known = ["drop", "sample", "trim", "route"].contains(&rule.action.as_str());
    for (key, present, owner) in settings {
        if known && present && owner != rule.action {
            problems.push(format!(
                "rule {name}: `{key}` does not apply to action {}",
                rule.action
            ));
        }
    }
    let action = match rule.action.as_str() {
        "drop" => Some(Action::Drop),
        "sample" => sample(&name, rule.one_in, rule.by, schema, problems),
        "trim" => trim(&name, rule.drop_columns, rule.cut, schema, problems),
        "route" => route(
            &name,
            rule.to,
            rule.keep_original,
            schema,
            schemas,
            problems,
        ),
        other => {
            problems.push(format!(
                "rule {name}: unknown action {other:?}; use drop, sample, trim or route"
            ));
            None
        }
    }?;
    Some(Rule {
        name,
        table,
        when,
        action,
    })
}

fn sample(
    name: &str,
    one_in: Option<u64>,
    by: Option<Vec<String>>,
    schema: &TableSchema,
    problems: &mut Vec<String>,
) -> Option<Action> {
    let one_in = match one_in {
        Some(n) if n >= 1 => n,
        _ => {
            problems.push(format!(
                "rule {name}: sample needs `one_in: N` (N ≥ 1): one row in N is kept"
            ));
            return None;
        }
    };
    let by = match by {
        Some(by) if !by.is_empty() => by,
        None if schema.input == InputKind::Audit => vec!["Id".to_string()],
        _ => {
            problems.push(format!(
                "rule {name}: sample on {} needs `by:` the fields that identify a record (e.g. [NetworkMessageId, RecipientEmailAddress]), so every replica keeps the same rows",
                schema.table
            ));
            return None;
        }
    };
    Some(Action::Sample { one_in, by })
}

fn trim(
    name: &str,
    drop_columns: Option<Vec<String>>,
    cut: Option<BTreeMap<String, usize>>,
    schema: &TableSchema,
    problems: &mut Vec<String>,
) -> Option<Action> {
    let drop_columns = drop_columns.unwrap_or_default();
    let cut: Vec<(String, usize)> = cut.unwrap_or_default().into_iter().collect();
    if drop_columns.is_empty() && cut.is_empty() {
        problems.push(format!(
            "rule {name}: trim needs `drop_columns: [...]` or `cut: {{ Column: bytes }}`"
        ));
        return None;
    }
    for column in &drop_columns {
        match schema.columns.iter().find(|c| &c.name == column) {
            None => problems.push(unknown_column(name, column, schema)),
            Some(c) if c.name == "TimeGenerated" || c.required => problems.push(format!(
                "rule {name}: column {column} is required (the row is refused without it); it can't be dropped"
            )),
            Some(_) => {}
        }
    }
    for (column, bytes) in &cut {
        match schema.columns.iter().find(|c| &c.name == column) {
            None => problems.push(unknown_column(name, column, schema)),
            Some(c) if c.ty != ColumnType::String => problems.push(format!(
                "rule {name}: cut applies to string columns; {column} is {} (drop it instead)",
                c.ty
            )),
            Some(_) if *bytes == 0 => problems.push(format!(
                "rule {name}: cut {column} to 0 bytes is dropping it; use drop_columns"
            )),
            Some(_) => {}
        }
    }
    Some(Action::Trim { drop_columns, cut })
}

fn route(
    name: &str,
    to: Option<String>,
    keep_original: Option<bool>,
    schema: &TableSchema,
    schemas: &SchemaSet,
    problems: &mut Vec<String>,
) -> Option<Action> {
    let Some(to) = to else {
        problems.push(format!(
            "rule {name}: route needs `to:` a table declared under `tables:` in {POLICY_FILE}"
        ));
        return None;
    };
    let target = schemas.table_by_name(&to).filter(|&t| {
        matches!(&schemas.tables[t].input, InputKind::Routed { from } if *from == schema.table)
    });
    let Some(target) = target else {
        problems.push(format!(
            "rule {name}: route to {to:?}: declare it under `tables:` in {POLICY_FILE} with `like: {}` (a routed table has the columns of the table its rows come from)",
            schema.table
        ));
        return None;
    };
    Some(Action::Route {
        to: target,
        keep_original: keep_original.unwrap_or(false),
    })
}

fn unknown_column(rule: &str, column: &str, schema: &TableSchema) -> String {
    format!(
        "rule {rule}: {} has no column {column:?} (columns are named as in schemas/{}.yaml)",
        schema.table, schema.table
    )
}

/// One `when` (or a part of one) compiled; problems are pushed and an error returned.
fn condition(
    c: ConditionFile,
    rule: &str,
    schema: &TableSchema,
    problems: &mut Vec<String>,
) -> Result<Condition, ()> {
    let combinators = [c.all.is_some(), c.any.is_some(), c.not.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    let operands = [c.column.is_some(), c.field.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    let tests = [
        c.equals.is_some(),
        c.one_of.is_some(),
        c.matches.is_some(),
        c.gt.is_some(),
        c.ge.is_some(),
        c.lt.is_some(),
        c.le.is_some(),
        c.exists.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    let shape = "each condition is one of all: [...], any: [...], not: {...}, or one `column:` or `field:` with one test (equals, in, matches, gt, ge, lt, le, exists)";
    if combinators + operands == 0 || combinators > 1 || (combinators == 1 && operands + tests > 0)
    {
        problems.push(format!("rule {rule}: {shape}"));
        return Err(());
    }
    let all = |list: Vec<ConditionFile>, problems: &mut Vec<String>| {
        if list.is_empty() {
            problems.push(format!("rule {rule}: all/any needs at least one condition"));
        }
        list.into_iter()
            .map(|c| condition(c, rule, schema, problems))
            .collect::<Result<Vec<_>, ()>>()
    };
    if let Some(list) = c.all {
        return Ok(Condition::All(all(list, problems)?));
    }
    if let Some(list) = c.any {
        return Ok(Condition::Any(all(list, problems)?));
    }
    if let Some(inner) = c.not {
        return Ok(Condition::Not(Box::new(condition(
            *inner, rule, schema, problems,
        )?)));
    }
    if operands != 1 || tests != 1 {
        problems.push(format!("rule {rule}: {shape}"));
        return Err(());
    }
    let operand = match (c.column, c.field) {
        (Some(column), _) => {
            if !schema.columns.iter().any(|col| col.name == column) {
                problems.push(unknown_column(rule, &column, schema));
                return Err(());
            }
            Operand::Column(column)
        }
        (None, Some(field)) => Operand::Field(field),
        (None, None) => return Err(()),
    };
    let test = if let Some(e) = c.equals {
        Test::Equals(e.expected())
    } else if let Some(set) = c.one_of {
        Test::In(set.into_iter().map(Scalar::expected).collect())
    } else if let Some(pattern) = c.matches {
        match regex::Regex::new(&pattern) {
            Ok(re) => Test::Matches(re),
            Err(e) => {
                problems.push(format!("rule {rule}: matches {pattern:?}: {e}"));
                return Err(());
            }
        }
    } else if let Some(exists) = c.exists {
        Test::Exists(exists)
    } else {
        let (op, bound) = match (c.gt, c.ge, c.lt, c.le) {
            (Some(b), ..) => (Compare::Gt, b),
            (_, Some(b), ..) => (Compare::Ge, b),
            (_, _, Some(b), _) => (Compare::Lt, b),
            (.., Some(b)) => (Compare::Le, b),
            _ => return Err(()),
        };
        Test::Compare(op, bound)
    };
    Ok(Condition::Leaf { operand, test })
}
