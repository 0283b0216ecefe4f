//! Table schemas: which columns each Sentinel-shaped table has, their Log Analytics types and the
//! raw fields they come from. Loaded from `schemas/` at start-up so users change mappings without a
//! rebuild; a copy of the shipped files is embedded as the default.

pub mod azure;
mod load;
pub mod plans;
mod routed;
mod types;

use std::collections::HashMap;
use std::sync::Arc;

pub use load::{
    ENUMS_FILE, POLICY_FILE, REDACTION_FILE, SchemaError, SchemaErrors, SchemaFiles, envelope_key,
};

/// A `from` source with this prefix reads the Defender row's envelope (the record around its
/// `properties`) instead of the row: `envelope.time`.
pub const ENVELOPE_PREFIX: &str = "envelope.";

/// The envelope fields Defender's Streaming API writes around each row (Event Hubs and Storage).
pub const ENVELOPE_FIELDS: [&str; 4] = ["time", "tenantId", "category", "operationName"];
pub use types::{ColumnType, RESERVED_COLUMN_NAMES, column_name_problem};

/// Where a table's rows come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputKind {
    /// Office 365 Management Activity API audit records (OfficeActivity).
    Audit,
    /// Defender XDR Streaming API rows of one `category`; columns read keys of the `root` object.
    Defender { category: String, root: String },
    /// The connector's own health rows (no collected record is routed here).
    Health,
    /// Rows a policy rule routes here from table `from` (declared in `policy.yaml`; its columns
    /// are `from`'s). No record reaches it by shape or category.
    Routed { from: String },
}

/// A workspace table plan: what ingestion costs and what queries and rules may do with it.
/// Learn: "Select a table plan" (logs/data-platform-logs#table-plans) and the tables REST API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum Plan {
    #[default]
    Analytics,
    Basic,
    Auxiliary,
}

impl Plan {
    pub const ALL: [Plan; 3] = [Plan::Analytics, Plan::Basic, Plan::Auxiliary];

    pub fn name(self) -> &'static str {
        match self {
            Self::Analytics => "Analytics",
            Self::Basic => "Basic",
            Self::Auxiliary => "Auxiliary",
        }
    }
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A table's plan and retention, as the tables API takes them. None: the workspace's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TablePlan {
    pub plan: Plan,
    /// Interactive (analytics) retention in days.
    pub retention_days: Option<u32>,
    /// Total retention (interactive plus long-term) in days.
    pub total_retention_days: Option<u32>,
}

/// Spelling of a JSON boolean in a string column: `True`/`False` as .NET writes them (Exchange's
/// `ResultStatus`, so OfficeActivity), or `true`/`false` as JSON and KQL's `tostring` do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BoolText {
    Dotnet,
    #[default]
    Json,
}

impl BoolText {
    pub fn spell(self, value: bool) -> &'static str {
        match (self, value) {
            (Self::Dotnet, true) => "True",
            (Self::Dotnet, false) => "False",
            (Self::Json, true) => "true",
            (Self::Json, false) => "false",
        }
    }
}

/// Integer → name table for enum columns (RecordType, UserType, Logon_Type).
#[derive(Debug, Clone, Default)]
pub struct EnumTable {
    pub name: String,
    pub values: HashMap<i64, String>,
}

#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    /// Source fields in order of preference; the first one present and valid wins.
    /// `envelope.KEY` names a field of a Defender row's envelope (always after the row's own).
    pub from: Vec<String>,
    /// Some source of `from` is the envelope's: looked at only when the row has none.
    pub reads_envelope: bool,
    pub enum_table: Option<Arc<EnumTable>>,
    /// A row whose required column is missing or unconvertible is rejected rather than sent.
    pub required: bool,
}

#[derive(Debug, Clone)]
pub struct TableSchema {
    /// The Sentinel table this reproduces, e.g. `OfficeActivity`.
    pub table: String,
    /// The custom table that receives the rows, e.g. `OfficeActivity_CL`.
    pub output_table: String,
    /// The DCR stream declaration the sink posts to, e.g. `Custom-OfficeActivity_CL`.
    pub stream: String,
    pub input: InputKind,
    /// Index into `columns` of the dynamic column that keeps unmapped fields.
    pub unmapped: usize,
    pub columns: Vec<Column>,
    /// Source fields deliberately discarded (an explicit, documented choice of the user).
    pub drop: Vec<String>,
    /// How a JSON boolean is written into a string column.
    pub bool_text: BoolText,
    /// The workspace table's plan and retention (`schema dcr`; the dry-run's cost report).
    pub plan: TablePlan,
    /// Columns declared dynamic in the table this one is like, which this table holds as JSON
    /// text: an Auxiliary table takes no dynamic columns (routed tables only).
    pub dynamic_as_text: Vec<String>,
    /// Source field name → (column index, preference rank) for every column it feeds.
    field_index: HashMap<String, Vec<(usize, u8)>>,
}

impl TableSchema {
    /// The columns (with preference rank) a source field feeds; empty when it has no column.
    pub fn columns_for(&self, field: &str) -> &[(usize, u8)] {
        self.field_index.get(field).map_or(&[], Vec::as_slice)
    }

    pub fn is_dropped(&self, field: &str) -> bool {
        self.drop.iter().any(|d| d == field)
    }

    pub fn unmapped_column(&self) -> &Column {
        &self.columns[self.unmapped]
    }

    fn build_index(&mut self) {
        let mut index: HashMap<String, Vec<(usize, u8)>> = HashMap::new();
        for (col, column) in self.columns.iter().enumerate() {
            for (rank, field) in column.from.iter().enumerate() {
                if envelope_key(field).is_some() {
                    continue;
                }
                let rank = u8::try_from(rank).unwrap_or(u8::MAX);
                index.entry(field.clone()).or_default().push((col, rank));
            }
        }
        self.field_index = index;
    }
}

/// All tables plus the routing facts derived from them.
#[derive(Debug, Clone)]
pub struct SchemaSet {
    pub tables: Vec<TableSchema>,
    pub enums: Vec<Arc<EnumTable>>,
    audit_table: Option<usize>,
    health_table: Option<usize>,
    by_category: HashMap<String, usize>,
}

impl SchemaSet {
    fn new(tables: Vec<TableSchema>, enums: Vec<Arc<EnumTable>>) -> Self {
        let mut audit_table = None;
        let mut health_table = None;
        let mut by_category = HashMap::new();
        for (i, t) in tables.iter().enumerate() {
            match &t.input {
                InputKind::Audit => audit_table = Some(i),
                InputKind::Health => health_table = Some(i),
                InputKind::Defender { category, .. } => {
                    by_category.insert(category.clone(), i);
                }
                InputKind::Routed { .. } => {}
            }
        }
        Self {
            tables,
            enums,
            audit_table,
            health_table,
            by_category,
        }
    }

    /// The tables that reproduce a Sentinel table (not the health table, nor the tables only
    /// policy routes reach: those are other plans, which Sentinel's rules don't read).
    pub fn sentinel_tables(&self) -> impl Iterator<Item = &TableSchema> {
        self.tables
            .iter()
            .filter(|t| !matches!(t.input, InputKind::Health | InputKind::Routed { .. }))
    }

    /// The table the connector's health rows go to, if one is configured.
    pub fn health_table(&self) -> Option<usize> {
        self.health_table
    }

    /// The table audit records go to, if one is configured.
    pub fn audit_table(&self) -> Option<usize> {
        self.audit_table
    }

    /// The table rows of a Defender `category` go to, if one is configured.
    pub fn table_for_category(&self, category: &str) -> Option<usize> {
        self.by_category.get(category).copied()
    }

    /// Each table's DCR stream, in table order (the spool's and dry-run's per-stream folders).
    pub fn streams(&self) -> Vec<String> {
        self.tables.iter().map(|t| t.stream.clone()).collect()
    }

    pub fn table_by_name(&self, name: &str) -> Option<usize> {
        self.tables
            .iter()
            .position(|t| t.table == name || t.output_table == name)
    }
}
