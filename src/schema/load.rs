//! Reading and validating schema files. Every problem is reported with file and line, all at once,
//! so a user fixing a mapping sees the whole list rather than one error per restart.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use super::{
    Column, ColumnType, EnumTable, InputKind, Plan, SchemaSet, TablePlan, TableSchema,
    column_name_problem,
};

/// One problem found in a schema file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

/// Every problem found while loading schemas; the program refuses to start on any.
#[derive(Debug, Clone, thiserror::Error)]
pub struct SchemaErrors(pub Vec<SchemaError>);

impl fmt::Display for SchemaErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// The schema files shipped in the repository, compiled in as the default.
const EMBEDDED: &[(&str, &str)] = &[
    (
        "OfficeActivity.yaml",
        include_str!("../../schemas/OfficeActivity.yaml"),
    ),
    (
        "M365SentinelHealth.yaml",
        include_str!("../../schemas/M365SentinelHealth.yaml"),
    ),
    (
        "EmailEvents.yaml",
        include_str!("../../schemas/EmailEvents.yaml"),
    ),
    (
        "EmailAttachmentInfo.yaml",
        include_str!("../../schemas/EmailAttachmentInfo.yaml"),
    ),
    (
        "EmailUrlInfo.yaml",
        include_str!("../../schemas/EmailUrlInfo.yaml"),
    ),
    (
        "EmailPostDeliveryEvents.yaml",
        include_str!("../../schemas/EmailPostDeliveryEvents.yaml"),
    ),
    (
        "UrlClickEvents.yaml",
        include_str!("../../schemas/UrlClickEvents.yaml"),
    ),
    ("enums.yaml", include_str!("../../schemas/enums.yaml")),
    (
        "redaction.yaml",
        include_str!("../../schemas/redaction.yaml"),
    ),
    ("policy.yaml", include_str!("../../schemas/policy.yaml")),
];

pub const ENUMS_FILE: &str = "enums.yaml";
pub const REDACTION_FILE: &str = "redaction.yaml";
pub const POLICY_FILE: &str = "policy.yaml";

/// The text of the files of a schema directory (or of the embedded copy).
#[derive(Debug, Clone)]
pub struct SchemaFiles {
    /// Where they came from, for messages: a directory path or "embedded".
    pub origin: String,
    files: Vec<(String, String)>,
}

impl SchemaFiles {
    pub fn embedded() -> Self {
        Self {
            origin: "embedded schemas".into(),
            files: EMBEDDED
                .iter()
                .map(|(n, t)| ((*n).to_string(), (*t).to_string()))
                .collect(),
        }
    }

    /// Reads every `.yaml`/`.yml` file of `dir`, sorted by name.
    pub fn from_dir(dir: &Path) -> Result<Self, SchemaErrors> {
        let fail = |message: String| {
            SchemaErrors(vec![SchemaError {
                file: dir.display().to_string(),
                line: None,
                message,
            }])
        };
        let entries = std::fs::read_dir(dir).map_err(|e| {
            fail(format!(
                "cannot read the schema directory: {e}; set schemas_dir (or --schemas) to a directory holding the table files"
            ))
        })?;
        let mut paths: Vec<PathBuf> = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| fail(format!("cannot list the schema directory: {e}")))?;
            let path = entry.path();
            let is_yaml = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e == "yaml" || e == "yml");
            if is_yaml && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        let mut files = Vec::with_capacity(paths.len());
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                SchemaErrors(vec![SchemaError {
                    file: path.display().to_string(),
                    line: None,
                    message: format!("cannot read the file: {e}"),
                }])
            })?;
            files.push((path.display().to_string(), text));
        }
        Ok(Self {
            origin: dir.display().to_string(),
            files,
        })
    }

    /// The file whose name (last path component) is `name`.
    pub fn get(&self, name: &str) -> Option<(&str, &str)> {
        self.files
            .iter()
            .find(|(path, _)| file_name(path) == name)
            .map(|(p, t)| (p.as_str(), t.as_str()))
    }

    fn table_files(&self) -> impl Iterator<Item = (&str, &str)> {
        self.files
            .iter()
            .filter(|(p, _)| {
                let n = file_name(p);
                n != ENUMS_FILE && n != REDACTION_FILE && n != POLICY_FILE
            })
            .map(|(p, t)| (p.as_str(), t.as_str()))
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or(path)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaFile {
    table: String,
    output_table: String,
    stream: String,
    input: InputFile,
    unmapped: String,
    columns: Vec<ColumnFile>,
    #[serde(default)]
    drop: Vec<String>,
    #[serde(default)]
    bool_text: super::BoolText,
    #[serde(flatten)]
    plan: PlanFile,
}

/// A table's `plan`, `retention_days` and `total_retention_days` (table files and the routed
/// tables of `policy.yaml`).
#[derive(Deserialize, Default)]
pub(super) struct PlanFile {
    #[serde(default)]
    plan: Plan,
    retention_days: Option<u32>,
    total_retention_days: Option<u32>,
}

impl PlanFile {
    pub(super) fn table_plan(&self) -> TablePlan {
        TablePlan {
            plan: self.plan,
            retention_days: self.retention_days,
            total_retention_days: self.total_retention_days,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputFile {
    kind: String,
    category: Option<String>,
    root: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnFile {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    from: Option<OneOrMany>,
    #[serde(rename = "enum")]
    enum_table: Option<String>,
    #[serde(default)]
    required: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

pub(super) fn yaml_error(file: &str, e: &yaml_serde::Error) -> SchemaError {
    SchemaError {
        file: file.to_string(),
        line: e.location().map(|l| l.line()),
        message: e.to_string(),
    }
}

/// Line (1-based) of the `n`-th (0-based) `name: <column>` entry in a schema file.
pub(super) fn column_line(text: &str, column: &str, n: usize) -> Option<usize> {
    let needle = regex::Regex::new(&format!(
        r"\bname:\s*['\x22]?{}['\x22]?\s*[,}}\n]",
        regex::escape(column)
    ))
    .ok()?;
    let mut seen = 0;
    for (i, line) in text.lines().enumerate() {
        let with_nl = format!("{line}\n");
        if needle.is_match(&with_nl) {
            if seen == n {
                return Some(i + 1);
            }
            seen += 1;
        }
    }
    None
}

/// Line of the first line that starts (after indentation) with `key:`.
fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| l.trim_start().starts_with(&format!("{key}:")))
        .map(|i| i + 1)
}

fn load_enums(files: &SchemaFiles, errors: &mut Vec<SchemaError>) -> Vec<Arc<EnumTable>> {
    let Some((path, text)) = files.get(ENUMS_FILE) else {
        return Vec::new();
    };
    match yaml_serde::from_str::<BTreeMap<String, BTreeMap<i64, String>>>(text) {
        Ok(map) => map
            .into_iter()
            .map(|(name, values)| {
                Arc::new(EnumTable {
                    name,
                    values: values.into_iter().collect(),
                })
            })
            .collect(),
        Err(e) => {
            let mut err = yaml_error(path, &e);
            err.message = format!(
                "{}; {ENUMS_FILE} maps enum names to tables of integer: name",
                err.message
            );
            errors.push(err);
            Vec::new()
        }
    }
}

fn build_table(
    path: &str,
    text: &str,
    file: SchemaFile,
    enums: &[Arc<EnumTable>],
    errors: &mut Vec<SchemaError>,
) -> Option<TableSchema> {
    let before = errors.len();
    let mut err = |line: Option<usize>, message: String| {
        errors.push(SchemaError {
            file: path.to_string(),
            line,
            message,
        })
    };
    let input = match file.input.kind.as_str() {
        "audit" => {
            if file.input.category.is_some() || file.input.root.is_some() {
                err(
                    key_line(text, "input"),
                    "input kind audit takes neither category nor root".into(),
                );
            }
            InputKind::Audit
        }
        "defender" => match file.input.category {
            Some(category) if !category.is_empty() => InputKind::Defender {
                category,
                root: file.input.root.unwrap_or_else(|| "properties".into()),
            },
            _ => {
                err(
                    key_line(text, "input"),
                    "input kind defender needs a category, e.g. AdvancedHunting-EmailEvents".into(),
                );
                InputKind::Audit
            }
        },
        "health" => {
            if file.input.category.is_some() || file.input.root.is_some() {
                err(
                    key_line(text, "input"),
                    "input kind health takes neither category nor root".into(),
                );
            }
            InputKind::Health
        }
        other => {
            err(
                key_line(text, "kind"),
                format!("unknown input kind {other:?}; use audit, defender or health"),
            );
            InputKind::Audit
        }
    };
    if !file.output_table.ends_with("_CL")
        || !file
            .output_table
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        err(
            key_line(text, "output_table"),
            format!(
                "output_table {:?} must be a custom table name: letters, digits and '_', ending in _CL",
                file.output_table
            ),
        );
    }
    let stream_name = file.stream.strip_prefix("Custom-").unwrap_or("");
    if stream_name.is_empty()
        || !stream_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        err(
            key_line(text, "stream"),
            format!(
                "stream {:?} must be Custom- followed by letters, digits and '_' (as DCR stream declarations are)",
                file.stream
            ),
        );
    }

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut columns = Vec::with_capacity(file.columns.len());
    for c in file.columns {
        let lower = c.name.to_ascii_lowercase();
        let occurrence = *seen.get(&lower).unwrap_or(&0);
        let line = column_line(text, &c.name, occurrence);
        if occurrence > 0 {
            err(
                line,
                format!(
                    "duplicate column {:?}; each column may appear once (names compare case-insensitively)",
                    c.name
                ),
            );
        }
        *seen.entry(lower).or_default() += 1;
        if let Some(problem) = column_name_problem(&c.name) {
            err(line, problem);
        }
        let ty = match ColumnType::parse(&c.ty) {
            Some(t) => t,
            None => {
                err(
                    line,
                    format!(
                        "column {:?} has unknown type {:?}; use one of {}",
                        c.name,
                        c.ty,
                        ColumnType::ACCEPTED
                    ),
                );
                ColumnType::String
            }
        };
        let enum_table = match c.enum_table {
            None => None,
            Some(name) => match enums.iter().find(|e| e.name == name) {
                Some(table) if ty == ColumnType::String => Some(table.clone()),
                Some(_) => {
                    err(
                        line,
                        format!(
                            "column {:?}: enum {name:?} needs type string (names are text)",
                            c.name
                        ),
                    );
                    None
                }
                None => {
                    let known: Vec<&str> = enums.iter().map(|e| e.name.as_str()).collect();
                    err(
                        line,
                        format!(
                            "column {:?} names unknown enum table {name:?}; {ENUMS_FILE} defines: {}",
                            c.name,
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                    None
                }
            },
        };
        let from = match c.from {
            None => vec![c.name.clone()],
            Some(OneOrMany::One(f)) => vec![f],
            Some(OneOrMany::Many(v)) => v,
        };
        if from.is_empty() || from.iter().any(String::is_empty) {
            err(
                line,
                format!(
                    "column {:?}: `from` must name at least one source field",
                    c.name
                ),
            );
        }
        if let Some(problem) = envelope_source_problem(&c.name, &from, &input) {
            err(line, problem);
        }
        columns.push(Column {
            name: c.name,
            ty,
            reads_envelope: from.iter().any(|f| envelope_key(f).is_some()),
            from,
            enum_table,
            required: c.required,
        });
    }

    match columns.iter().find(|c| c.name == "TimeGenerated") {
        Some(c) if c.ty == ColumnType::DateTime => {}
        Some(_) => err(
            column_line(text, "TimeGenerated", 0),
            "TimeGenerated must have type datetime".into(),
        ),
        None => err(
            key_line(text, "columns"),
            "a TimeGenerated column (datetime) is required by Log Analytics custom tables".into(),
        ),
    }

    let unmapped = match columns.iter().position(|c| c.name == file.unmapped) {
        Some(i) if columns[i].ty == ColumnType::Dynamic => i,
        Some(i) => {
            err(
                column_line(text, &file.unmapped, 0),
                format!(
                    "the unmapped column {:?} must have type dynamic (it holds an object)",
                    columns[i].name
                ),
            );
            i
        }
        None => {
            err(
                key_line(text, "unmapped"),
                format!(
                    "unmapped names column {:?}, which is not among the columns; declare it with type dynamic",
                    file.unmapped
                ),
            );
            0
        }
    };

    let plan = file.plan.table_plan();
    for problem in super::plans::problems(&file.output_table, &plan, &columns) {
        err(key_line(text, "plan").or(key_line(text, "table")), problem);
    }
    if plan.plan == super::Plan::Auxiliary {
        err(
            key_line(text, "plan"),
            format!(
                "{}: a collected table can't be on the Auxiliary plan (it keeps the dynamic column {:?}, which Auxiliary tables don't take); route the rows you want there to a table declared under tables: in policy.yaml with plan: Auxiliary",
                file.output_table, file.unmapped
            ),
        );
    }
    if errors.len() > before {
        return None;
    }
    let mut schema = TableSchema {
        table: file.table,
        output_table: file.output_table,
        stream: file.stream,
        input,
        unmapped,
        columns,
        drop: file.drop,
        bool_text: file.bool_text,
        plan,
        dynamic_as_text: Vec::new(),
        field_index: HashMap::new(),
    };
    schema.build_index();
    Some(schema)
}

/// Envelope sources (`envelope.time`) are fallbacks of Defender tables: they come after the
/// row's own fields, so the row's value always wins when it is there and valid.
fn envelope_source_problem(column: &str, from: &[String], input: &InputKind) -> Option<String> {
    let first_envelope = from.iter().position(|f| envelope_key(f).is_some())?;
    let key = from.get(first_envelope).and_then(|f| envelope_key(f))?;
    if *input == InputKind::Audit {
        return Some(format!(
            "column {column:?}: `from: envelope.{key}` reads the Event Hubs/Storage envelope, which only Defender tables (input kind defender) have"
        ));
    }
    if key.is_empty() || key.contains('.') {
        return Some(format!(
            "column {column:?}: {:?} must name one top-level envelope field, e.g. envelope.time ({})",
            from[first_envelope],
            crate::schema::ENVELOPE_FIELDS.join(", ")
        ));
    }
    if from[first_envelope..]
        .iter()
        .any(|f| envelope_key(f).is_none())
    {
        return Some(format!(
            "column {column:?}: list envelope sources after the row's own fields (they are fallbacks), e.g. from: [Timestamp, envelope.time]"
        ));
    }
    None
}

/// `time` of `envelope.time`; None for a field of the row itself.
pub fn envelope_key(source: &str) -> Option<&str> {
    source.strip_prefix(crate::schema::ENVELOPE_PREFIX)
}

impl SchemaSet {
    /// The schemas compiled into the binary (the repository's `schemas/`).
    pub fn embedded() -> Result<Self, SchemaErrors> {
        Self::from_files(&SchemaFiles::embedded())
    }

    pub fn from_files(files: &SchemaFiles) -> Result<Self, SchemaErrors> {
        let mut errors = Vec::new();
        let enums = load_enums(files, &mut errors);
        let mut tables: Vec<TableSchema> = Vec::new();
        let mut origins: Vec<&str> = Vec::new();
        for (path, text) in files.table_files() {
            let file: SchemaFile = match yaml_serde::from_str(text) {
                Ok(f) => f,
                Err(e) => {
                    errors.push(yaml_error(path, &e));
                    continue;
                }
            };
            let Some(table) = build_table(path, text, file, &enums, &mut errors) else {
                continue;
            };
            for (other, other_path) in tables.iter().zip(&origins) {
                let clash = if other.table == table.table {
                    Some(format!(
                        "table {:?} is also defined in {other_path}",
                        table.table
                    ))
                } else if other.stream == table.stream {
                    Some(format!(
                        "stream {:?} is also used by {other_path}",
                        table.stream
                    ))
                } else if other.input == table.input {
                    Some(format!(
                        "{other_path} already takes this input ({:?})",
                        table.input
                    ))
                } else {
                    None
                };
                if let Some(message) = clash {
                    errors.push(SchemaError {
                        file: path.to_string(),
                        line: key_line(text, "table"),
                        message,
                    });
                }
            }
            tables.push(table);
            origins.push(path);
        }
        super::routed::add_routed_tables(files, &mut tables, &mut errors);
        if tables.is_empty() && errors.is_empty() {
            errors.push(SchemaError {
                file: files.origin.clone(),
                line: None,
                message: "no table schema files (*.yaml) found".into(),
            });
        }
        if !errors.is_empty() {
            return Err(SchemaErrors(errors));
        }
        Ok(SchemaSet::new(tables, enums))
    }
}
