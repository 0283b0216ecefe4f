//! Counters of one run and the summary table printed at its end.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Per-table counts.
#[derive(Debug, Clone, Default)]
pub struct TableStats {
    pub table: String,
    pub stream: String,
    pub rows: u64,
    pub bodies: u64,
    pub bytes: u64,
    pub gzip_bytes: u64,
    /// Largest body seen, uncompressed.
    pub max_body: u64,
    /// Size of the most recent body: the only one of a stream that may be partial.
    pub last_body: u64,
}

impl TableStats {
    pub fn add_body(&mut self, rows: usize, bytes: usize, gzip_bytes: usize) {
        self.bodies += 1;
        self.rows += rows as u64;
        self.bytes += bytes as u64;
        self.gzip_bytes += gzip_bytes as u64;
        self.max_body = self.max_body.max(bytes as u64);
        self.last_body = bytes as u64;
    }
}

#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub files: u64,
    pub bytes_read: u64,
    pub tables: Vec<TableStats>,
    /// Refused records and pieces of input, by reason code.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Defender rows of categories no schema maps, skipped by `defender.unknown_categories:
    /// skip`, by category.
    pub skipped: BTreeMap<String, u64>,
    /// Adjustments made to rows (unconverted, truncated, redacted), by (table, column, kind).
    pub notes: BTreeMap<(String, String, &'static str), u64>,
    pub body_limit: u64,
    /// What each policy rule did in this run, in file order.
    pub policy: Vec<crate::stages::policy::RuleReport>,
    /// The dry-run's cost estimate.
    pub cost: Option<crate::ops::cost::CostReport>,
}

impl Stats {
    /// Empty counts for every table of `schemas`, with bodies of at most `body_limit` bytes.
    pub fn for_tables(schemas: &crate::schema::SchemaSet, body_limit: usize) -> Self {
        Self {
            tables: schemas
                .tables
                .iter()
                .map(|t| TableStats {
                    table: t.output_table.clone(),
                    stream: t.stream.clone(),
                    ..TableStats::default()
                })
                .collect(),
            body_limit: body_limit as u64,
            ..Self::default()
        }
    }

    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// Records and refused pieces of input seen: rows sent, less the copies routes made, plus
    /// the rows policy removed, refusals and skipped rows.
    pub fn records_in(&self) -> u64 {
        let removed: u64 = self.policy.iter().map(|r| r.removed_rows).sum();
        let copies: u64 = self.policy.iter().map(|r| r.added_rows).sum();
        (self.rows() + removed).saturating_sub(copies)
            + self.rejected_total()
            + self.skipped_total()
    }

    /// Rows the policy removed (dropped or sampled out), all rules.
    pub fn policy_removed(&self) -> u64 {
        self.policy.iter().map(|r| r.removed_rows).sum()
    }

    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }

    pub fn bodies(&self) -> u64 {
        self.tables.iter().map(|t| t.bodies).sum()
    }

    /// Uncompressed bytes of all bodies over the capacity of the bodies that were full (all but
    /// the last of each stream): how close batching gets to the limit.
    pub fn fill_ratio(&self) -> Option<f64> {
        let mut bytes = 0u64;
        let mut bodies = 0u64;
        for t in &self.tables {
            if t.bodies > 1 {
                // Only the last body of a stream may be partial; count the others.
                bytes += t.bytes - t.last_body;
                bodies += t.bodies - 1;
            }
        }
        (bodies > 0 && self.body_limit > 0)
            .then(|| bytes as f64 / (bodies * self.body_limit) as f64)
    }

    /// The summary table printed by dry-run.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "read {} file(s), {} bytes; {} record(s) in, {} row(s) mapped, {} rejected",
            self.files,
            self.bytes_read,
            self.records_in(),
            self.rows(),
            self.rejected_total()
        );
        if !self.policy.is_empty() {
            let _ = writeln!(
                s,
                "policy: {} row(s) removed by its rules (counted below; rows mapped is what is sent)",
                self.policy_removed()
            );
        }
        let _ = writeln!(
            s,
            "\n{:<26} {:<34} {:>9} {:>7} {:>13} {:>11} {:>6}",
            "table", "stream", "rows", "bodies", "bytes", "gzip", "fill"
        );
        for t in &self.tables {
            let fill = if t.bodies > 0 && self.body_limit > 0 {
                format!(
                    "{:.1}%",
                    100.0 * t.bytes as f64 / (t.bodies * self.body_limit) as f64
                )
            } else {
                "-".into()
            };
            let _ = writeln!(
                s,
                "{:<26} {:<34} {:>9} {:>7} {:>13} {:>11} {:>6}",
                t.table, t.stream, t.rows, t.bodies, t.bytes, t.gzip_bytes, fill
            );
        }
        let total_bytes: u64 = self.tables.iter().map(|t| t.bytes).sum();
        let total_gzip: u64 = self.tables.iter().map(|t| t.gzip_bytes).sum();
        let _ = writeln!(
            s,
            "{:<26} {:<34} {:>9} {:>7} {:>13} {:>11}",
            "total",
            "",
            self.rows(),
            self.bodies(),
            total_bytes,
            total_gzip
        );
        match self.fill_ratio() {
            Some(f) => {
                let _ = writeln!(
                    s,
                    "fill of full bodies: {:.1}% of {} bytes; largest body {} bytes",
                    100.0 * f,
                    self.body_limit,
                    self.tables.iter().map(|t| t.max_body).max().unwrap_or(0)
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "every stream fit in one body (limit {} bytes); largest body {} bytes",
                    self.body_limit,
                    self.tables.iter().map(|t| t.max_body).max().unwrap_or(0)
                );
            }
        }
        if self.rejected.is_empty() {
            let _ = writeln!(s, "\nrejected: none");
        } else {
            let _ = writeln!(s, "\nrejected by reason:");
            for (reason, n) in &self.rejected {
                let _ = writeln!(s, "  {reason:<24} {n:>9}");
            }
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(
                s,
                "\nskipped (defender.unknown_categories: skip), by category:"
            );
            for (category, n) in &self.skipped {
                let _ = writeln!(s, "  {category:<40} {n:>9}");
            }
        }
        if !self.policy.is_empty() {
            s.push_str(&policy_table(&self.policy));
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\nrow adjustments (table, column, what):");
            for ((table, column, kind), n) in &self.notes {
                let _ = writeln!(s, "  {table:<24} {column:<32} {kind:<12} {n:>9}");
            }
        }
        if let Some(cost) = &self.cost {
            s.push_str(&cost.render());
        }
        s
    }
}

/// The policy's rules and what each did (the run's summary and the dry-run's).
pub fn policy_table(rules: &[crate::stages::policy::RuleReport]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\npolicy rules (schemas/policy.yaml):\n  {:<28} {:<26} {:<7} {:>9} {:>9} {:>13} {:>13} {:>13}",
        "rule",
        "table",
        "action",
        "matched",
        "removed",
        "bytes removed",
        "bytes moved",
        "bytes added"
    );
    for r in rules {
        let _ = writeln!(
            s,
            "  {:<28} {:<26} {:<7} {:>9} {:>9} {:>13} {:>13} {:>13}",
            r.rule,
            r.table,
            r.action,
            r.matched,
            r.removed_rows,
            r.removed_bytes,
            r.moved_bytes,
            r.added_bytes
        );
    }
    s
}
