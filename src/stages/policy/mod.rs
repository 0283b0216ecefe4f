//! The cost policy (`schemas/policy.yaml`): after mapping, each row meets the rules of its table
//! in file order; a rule may drop it, keep one in N (by a hash of the record's id), trim
//! columns, or route it to another table (instead, or a copy as well). The shipped policy has
//! no rules, and then this stage costs nothing.
//!
//! Every decision is counted per rule, with the bytes it removed, moved or added, so the run
//! summary, `/metrics` and the dry-run's cost report can say what each rule did; the counts are
//! taken here, where the decision is made, once per mapped row.

pub mod condition;
mod load;
mod trim;

use std::sync::atomic::{AtomicU64, Ordering};

use condition::{Condition, Subject};

use crate::schema::{SchemaErrors, SchemaFiles, SchemaSet};
use crate::stages::decode::Fields;
use crate::stages::map::MappedRow;

#[derive(Debug, Clone)]
pub enum Action {
    Drop,
    /// Keep one row in `one_in`, chosen by [`sample_keeps`] over the `by` values.
    Sample {
        one_in: u64,
        by: Vec<String>,
    },
    Trim {
        drop_columns: Vec<String>,
        cut: Vec<(String, usize)>,
    },
    /// To table `to` (a routed table like the rule's); with `keep_original` a copy goes there
    /// and the row stays in its table too.
    Route {
        to: usize,
        keep_original: bool,
    },
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Sample { .. } => "sample",
            Self::Trim { .. } => "trim",
            Self::Route { .. } => "route",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    /// The table whose rows it applies to.
    pub table: usize,
    /// Every row of the table without one.
    pub when: Option<Condition>,
    pub action: Action,
}

/// What one rule did, as the run goes (read by the metrics endpoint while the front end adds).
#[derive(Debug, Default)]
pub struct RuleCounts {
    /// Rows the rule matched (for a sample: the rows it was asked about).
    pub matched: AtomicU64,
    /// Rows that went nowhere because of it (dropped, or not the one in N).
    pub removed_rows: AtomicU64,
    /// Bytes of row JSON it took out of the workspace: removed rows whole, trimmed bytes.
    pub removed_bytes: AtomicU64,
    /// Bytes it moved to another table (route instead).
    pub moved_bytes: AtomicU64,
    /// Rows it added (a route's copies) and their bytes.
    pub added_rows: AtomicU64,
    pub added_bytes: AtomicU64,
}

/// A rule's counts at one moment, with its labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RuleReport {
    pub rule: String,
    pub table: String,
    pub action: &'static str,
    pub matched: u64,
    pub removed_rows: u64,
    pub removed_bytes: u64,
    pub moved_bytes: u64,
    pub added_rows: u64,
    pub added_bytes: u64,
}

impl RuleReport {
    /// What the rule did since `earlier` (a report of the same rule).
    pub fn since(&self, earlier: &RuleReport) -> RuleReport {
        RuleReport {
            rule: self.rule.clone(),
            table: self.table.clone(),
            action: self.action,
            matched: self.matched.saturating_sub(earlier.matched),
            removed_rows: self.removed_rows.saturating_sub(earlier.removed_rows),
            removed_bytes: self.removed_bytes.saturating_sub(earlier.removed_bytes),
            moved_bytes: self.moved_bytes.saturating_sub(earlier.moved_bytes),
            added_rows: self.added_rows.saturating_sub(earlier.added_rows),
            added_bytes: self.added_bytes.saturating_sub(earlier.added_bytes),
        }
    }
}

pub struct Policy {
    rules: Vec<Rule>,
    counts: Vec<RuleCounts>,
    /// Output table names, for the reports.
    tables: Vec<String>,
    /// Per table, the columns its rows carry as JSON text (Auxiliary tables).
    as_text: Vec<Vec<String>>,
}

impl Policy {
    /// The rules of `policy.yaml` in `files`, checked against `schemas`.
    pub fn load(files: &SchemaFiles, schemas: &SchemaSet) -> Result<Self, SchemaErrors> {
        let rules = load::load(files, schemas).map_err(SchemaErrors)?;
        Ok(Self::new(rules, schemas))
    }

    pub fn new(rules: Vec<Rule>, schemas: &SchemaSet) -> Self {
        Self {
            counts: rules.iter().map(|_| RuleCounts::default()).collect(),
            rules,
            tables: schemas
                .tables
                .iter()
                .map(|t| t.output_table.clone())
                .collect(),
            as_text: schemas
                .tables
                .iter()
                .map(|t| t.dynamic_as_text.clone())
                .collect(),
        }
    }

    /// `row` moved to table `to`, its dynamic values written as text when `to` takes no
    /// dynamic columns.
    fn move_to(&self, row: &mut MappedRow, to: usize) {
        row.table = to;
        if let Some(columns) = self.as_text.get(to).filter(|c| !c.is_empty())
            && let Some(json) = trim::dynamic_as_text(&row.json, columns)
        {
            row.json = json;
        }
    }

    /// A policy without rules (every row as mapped).
    pub fn none(schemas: &SchemaSet) -> Self {
        Self::new(Vec::new(), schemas)
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Each rule's counts so far, in file order.
    pub fn report(&self) -> Vec<RuleReport> {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.rules
            .iter()
            .zip(&self.counts)
            .map(|(rule, c)| RuleReport {
                rule: rule.name.clone(),
                table: self.tables.get(rule.table).cloned().unwrap_or_default(),
                action: rule.action.kind(),
                matched: get(&c.matched),
                removed_rows: get(&c.removed_rows),
                removed_bytes: get(&c.removed_bytes),
                moved_bytes: get(&c.moved_bytes),
                added_rows: get(&c.added_rows),
                added_bytes: get(&c.added_bytes),
            })
            .collect()
    }

    /// Passes `row` (mapped from a record with `fields`) through the rules and hands each row
    /// that comes out to `emit`: none, the row (changed or not), or the row and a routed copy.
    pub fn apply(&self, fields: &Fields<'_>, row: MappedRow, emit: &mut dyn FnMut(MappedRow)) {
        if self.rules.is_empty() {
            emit(row);
            return;
        }
        // A copy made by a route goes on from the rule after the route, in its new table.
        let mut work = vec![(row, 0)];
        while let Some((mut row, from)) = work.pop() {
            let mut kept = true;
            // One parse of the row for every rule that reads a column, until a rule changes it.
            let mut subject = Subject::new(fields, &row.json);
            for (i, rule) in self.rules.iter().enumerate().skip(from) {
                if rule.table != row.table {
                    continue;
                }
                if rule.when.as_ref().is_some_and(|w| !w.holds(&subject)) {
                    continue;
                }
                let counts = &self.counts[i];
                counts.matched.fetch_add(1, Ordering::Relaxed);
                let bytes = row.json.len() as u64;
                match &rule.action {
                    Action::Drop => kept = false,
                    Action::Sample { one_in, by } => {
                        // A row with none of the `by` values can't be told apart from the
                        // others without them: it is kept, not decided as one with all of them.
                        kept = sample_key(&subject, by)
                            .is_none_or(|key| sample_keeps(&rule.name, &key, *one_in));
                    }
                    Action::Trim { drop_columns, cut } => {
                        if let Some(json) = trim::trim(&row.json, drop_columns, cut, &rule.name) {
                            let cut_bytes = bytes.saturating_sub(json.len() as u64);
                            counts.removed_bytes.fetch_add(cut_bytes, Ordering::Relaxed);
                            row.json = json;
                            subject = Subject::new(fields, &row.json);
                        }
                    }
                    Action::Route { to, keep_original } => {
                        if *keep_original {
                            counts.added_rows.fetch_add(1, Ordering::Relaxed);
                            counts.added_bytes.fetch_add(bytes, Ordering::Relaxed);
                            let mut copy = MappedRow {
                                table: row.table,
                                json: row.json.clone(),
                                notes: row.notes.clone(),
                            };
                            self.move_to(&mut copy, *to);
                            work.push((copy, i + 1));
                        } else {
                            counts.moved_bytes.fetch_add(bytes, Ordering::Relaxed);
                            self.move_to(&mut row, *to);
                            subject = Subject::new(fields, &row.json);
                        }
                    }
                }
                if !kept {
                    counts.removed_rows.fetch_add(1, Ordering::Relaxed);
                    counts.removed_bytes.fetch_add(bytes, Ordering::Relaxed);
                    break;
                }
            }
            if kept {
                emit(row);
            }
        }
    }
}

/// The text a sample is decided on: each `by` name's value (the record's field, else the mapped
/// column), joined by U+001F; None when the row has none of them.
fn sample_key(subject: &Subject<'_>, by: &[String]) -> Option<String> {
    let mut key = String::new();
    let mut any = false;
    for (i, name) in by.iter().enumerate() {
        if i > 0 {
            key.push('\u{1f}');
        }
        let value = subject
            .field(name)
            .or_else(|| subject.column(name))
            .and_then(condition::text_of);
        if let Some(v) = value {
            any = true;
            key.push_str(&v);
        }
    }
    any.then_some(key)
}

/// Whether a sample rule keeps the row with `key`: one in `one_in`, by a fixed hash of the rule's
/// name and the key (FNV-1a, then SplitMix64's finalizer to spread FNV's low bits). Fixed so
/// every replica, restart and later version keeps the same rows; the rule's name is in it so two
/// rules sample independently.
pub fn sample_keeps(rule: &str, key: &str, one_in: u64) -> bool {
    if one_in <= 1 {
        return true;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rule.bytes().chain([0]).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    h.is_multiple_of(one_in)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_keeps_rows_without_any_key() {
        let schemas = SchemaSet::embedded().unwrap();
        let table = schemas.audit_table().unwrap();
        let rule = Rule {
            name: "tiny".into(),
            table,
            when: None,
            action: Action::Sample {
                one_in: 1_000_000,
                by: vec!["Id".into()],
            },
        };
        let policy = Policy::new(vec![rule], &schemas);
        let mut kept = 0;
        for record in [r#"{"Operation":"A"}"#, r#"{"Id":"x1","Operation":"A"}"#] {
            let fields = Fields::parse(record).unwrap();
            let row = MappedRow {
                table,
                json: r#"{"Operation":"A"}"#.into(),
                notes: Vec::new(),
            };
            policy.apply(&fields, row, &mut |_| kept += 1);
        }
        // The row without an Id is kept; the one with an Id is (almost surely) the 999,999.
        assert_eq!(kept, usize::from(sample_keeps("tiny", "x1", 1_000_000)) + 1);
        assert_eq!(policy.report()[0].matched, 2);
    }
}
