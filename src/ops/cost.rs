//! The dry-run's cost report: what each table would be sent (bytes of row JSON, per table and
//! per operation), what each policy rule saved, and an estimate at a price per GB per plan.
//!
//! Log Analytics bills "a string representation of the columns that are stored", in GB of
//! 10^9 bytes, with some standard columns excluded (Learn, "Azure Monitor Logs cost calculations
//! and options", Data size calculation). The row JSON as sent is what this connector knows; it
//! is an upper estimate of the billed size (quotes, names and separators are not billed).

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::schema::{Plan, SchemaSet};
use crate::stages::decode::Fields;
use crate::stages::policy::RuleReport;
use crate::stages::policy::condition::text_of;

/// The `cost` config section: prices per GB ingested per plan, and how many operations to list.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CostConfig {
    pub currency: String,
    /// When the default prices were read (and from where): set your own with your date.
    pub prices_read: String,
    pub analytics_per_gb: f64,
    pub basic_per_gb: f64,
    pub auxiliary_per_gb: f64,
    /// Operations listed per table, largest first.
    pub top: usize,
}

impl Default for CostConfig {
    /// Pay-as-you-go list prices of Azure Monitor Logs ingestion (not Sentinel's own charge, no
    /// commitment tier, no free allowance), as a 2026 summary of the Azure pricing page states
    /// them (monitoringcost.com/azure-monitor-cost, read 2026-12-07): Analytics ~$2.30/GB, Basic
    /// ~$0.50/GB, Auxiliary ~$0.05/GB. Regional and changing: set your own.
    fn default() -> Self {
        Self {
            currency: "USD".into(),
            prices_read: "2026-12-07, Azure Monitor pay-as-you-go list prices (monitoringcost.com summary of azure.microsoft.com/pricing/details/monitor); regional, set your own".into(),
            analytics_per_gb: 2.30,
            basic_per_gb: 0.50,
            auxiliary_per_gb: 0.05,
            top: 10,
        }
    }
}

impl CostConfig {
    pub fn price(&self, plan: Plan) -> f64 {
        match plan {
            Plan::Analytics => self.analytics_per_gb,
            Plan::Basic => self.basic_per_gb,
            Plan::Auxiliary => self.auxiliary_per_gb,
        }
    }
}

/// The columns an operation is read from, first present in the table wins.
const OPERATION_COLUMNS: [&str; 3] = ["Operation", "ActionType", "Kind"];

/// Counted as the rows are written.
pub struct CostTally {
    /// Per table: the column the operation is read from, if it has one.
    operation_column: Vec<Option<&'static str>>,
    rows: Vec<u64>,
    bytes: Vec<u64>,
    by_operation: Vec<HashMap<String, (u64, u64)>>,
}

impl CostTally {
    pub fn new(schemas: &SchemaSet) -> Self {
        let n = schemas.tables.len();
        Self {
            operation_column: schemas
                .tables
                .iter()
                .map(|t| {
                    OPERATION_COLUMNS
                        .into_iter()
                        .find(|c| t.columns.iter().any(|col| col.name == *c))
                })
                .collect(),
            rows: vec![0; n],
            bytes: vec![0; n],
            by_operation: vec![HashMap::new(); n],
        }
    }

    /// A row of `table` as it will be sent.
    pub fn row(&mut self, table: usize, json: &str) {
        let bytes = json.len() as u64;
        self.rows[table] += 1;
        self.bytes[table] += bytes;
        let Some(column) = self.operation_column[table] else {
            return;
        };
        let operation = Fields::parse(json)
            .ok()
            .and_then(|f| f.get(column).and_then(text_of).map(|t| t.into_owned()))
            .unwrap_or_default();
        let entry = self.by_operation[table].entry(operation).or_default();
        entry.0 += 1;
        entry.1 += bytes;
    }

    pub fn report(
        &self,
        schemas: &SchemaSet,
        rules: &[RuleReport],
        config: &CostConfig,
    ) -> CostReport {
        let mut tables = Vec::new();
        for (i, t) in schemas.tables.iter().enumerate() {
            if self.rows[i] == 0 {
                continue;
            }
            let price = config.price(t.plan.plan);
            let mut operations: Vec<OperationCost> = self.by_operation[i]
                .iter()
                .map(|(op, (rows, bytes))| OperationCost {
                    operation: op.clone(),
                    rows: *rows,
                    bytes: *bytes,
                })
                .collect();
            operations.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.operation.cmp(&b.operation)));
            operations.truncate(config.top);
            tables.push(TableCost {
                table: t.output_table.clone(),
                plan: t.plan.plan,
                rows: self.rows[i],
                bytes: self.bytes[i],
                price_per_gb: price,
                cost: gb(self.bytes[i]) * price,
                operation_column: self.operation_column[i].map(str::to_string),
                top_operations: operations,
            });
        }
        let kept: u64 = self.bytes.iter().sum();
        let removed: u64 = rules.iter().map(|r| r.removed_bytes).sum();
        let added: u64 = rules.iter().map(|r| r.added_bytes).sum();
        let rules = rules
            .iter()
            .map(|r| {
                let price = schemas
                    .table_by_name(&r.table)
                    .map_or(config.analytics_per_gb, |t| {
                        config.price(schemas.tables[t].plan.plan)
                    });
                RuleCost {
                    saved: gb(r.removed_bytes) * price,
                    report: r.clone(),
                }
            })
            .collect();
        CostReport {
            currency: config.currency.clone(),
            prices_read: config.prices_read.clone(),
            bytes_without_rules: (kept + removed).saturating_sub(added),
            bytes_kept: kept,
            bytes_removed: removed,
            bytes_added: added,
            cost: tables.iter().map(|t| t.cost).sum(),
            tables,
            rules,
        }
    }
}

/// Bytes in GB as Log Analytics counts them (10^9).
fn gb(bytes: u64) -> f64 {
    bytes as f64 / 1e9
}

#[derive(Debug, Clone, Serialize)]
pub struct OperationCost {
    pub operation: String,
    pub rows: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableCost {
    pub table: String,
    pub plan: Plan,
    pub rows: u64,
    pub bytes: u64,
    pub price_per_gb: f64,
    pub cost: f64,
    pub operation_column: Option<String>,
    pub top_operations: Vec<OperationCost>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleCost {
    #[serde(flatten)]
    pub report: RuleReport,
    /// What the removed bytes would have cost in the rule's table.
    pub saved: f64,
}

/// `cost.json`, and its text in `summary.txt`.
#[derive(Debug, Clone, Serialize)]
pub struct CostReport {
    pub currency: String,
    pub prices_read: String,
    /// Kept + removed - added: what the same input costs with no rules.
    pub bytes_without_rules: u64,
    pub bytes_kept: u64,
    pub bytes_removed: u64,
    pub bytes_added: u64,
    pub cost: f64,
    pub tables: Vec<TableCost>,
    pub rules: Vec<RuleCost>,
}

impl CostReport {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\ncost estimate (row JSON as sent, an upper bound of the billed size; prices {} per GB of 10^9 bytes, {}):",
            self.currency, self.prices_read
        );
        let _ = writeln!(
            s,
            "  {:<30} {:<10} {:>9} {:>13} {:>9} {:>12}",
            "table", "plan", "rows", "bytes", "per GB", "cost"
        );
        for t in &self.tables {
            let _ = writeln!(
                s,
                "  {:<30} {:<10} {:>9} {:>13} {:>9.2} {:>12.6}",
                t.table, t.plan, t.rows, t.bytes, t.price_per_gb, t.cost
            );
        }
        let _ = writeln!(
            s,
            "  bytes kept {} + removed by rules {} - added by routes {} = {} without rules; estimate {:.6} {}",
            self.bytes_kept,
            self.bytes_removed,
            self.bytes_added,
            self.bytes_without_rules,
            self.cost,
            self.currency
        );
        for t in &self.tables {
            let Some(column) = &t.operation_column else {
                continue;
            };
            let _ = writeln!(s, "  top {column} in {} by bytes:", t.table);
            for op in &t.top_operations {
                let _ = writeln!(
                    s,
                    "    {:<44} {:>9} {:>13}",
                    op.operation, op.rows, op.bytes
                );
            }
        }
        for r in &self.rules {
            let _ = writeln!(
                s,
                "  rule {:<28} removed {:>13} bytes, saved {:.6} {}",
                r.report.rule, r.report.removed_bytes, r.saved, self.currency
            );
        }
        s
    }
}
