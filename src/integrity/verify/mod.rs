//! `verify`: reads a table's rows back through the Query API, chain by chain in sequence
//! order and page by page, and recomputes each chain (`check.rs`).

pub mod check;
pub mod query;

use std::collections::BTreeMap;

use serde_json::Value;

pub use check::{ChainReport, Checker, Checkpoint, ReadRow};
pub use query::{QueryClient, QueryError, ResultTable};

use super::canonical::Columns;
use super::{HASH_COLUMN, KEY_COLUMN, Keyring, SEQ_COLUMN, STREAM_COLUMN};
use crate::schema::TableSchema;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(
        "{table}: more than {page} rows hold sequence {seq} of {stream}; raise integrity.page_rows"
    )]
    PageTooSmall {
        table: String,
        stream: String,
        seq: u64,
        page: usize,
    },
    #[error("{table}: the Query API's answer lacks column {column}")]
    Column { table: String, column: String },
}

/// The Query API's row limit.
const MAX_PAGE_ROWS: usize = 500_000;

/// What verify found in one table.
#[derive(Debug, Clone, Default)]
pub struct TableReport {
    pub table: String,
    pub chains: Vec<ChainReport>,
    /// Rows with no chain columns (sent before integrity was on, or not by this connector).
    pub unchained: u64,
    /// Their first few TimeGenerated values.
    pub unchained_examples: Vec<String>,
    /// The workspace has no such table.
    pub absent: bool,
}

impl TableReport {
    pub fn is_whole(&self) -> bool {
        self.unchained == 0 && self.chains.iter().all(ChainReport::is_whole)
    }
}

pub struct VerifyOptions {
    /// Only rows with TimeGenerated at or after this (an ISO 8601 UTC time, validated).
    pub since: Option<String>,
    pub page_rows: usize,
    /// Per chain name, the last row the connector checkpointed as sent.
    pub checkpoints: BTreeMap<String, Checkpoint>,
}

/// The last row checkpointed per chain (its number and hash), from the health table's
/// checkpoint rows written before `before` (later ones may name rows the workspace has not made
/// queryable yet).
pub async fn checkpoints(
    client: &QueryClient,
    health_table: &str,
    before: &str,
) -> Result<BTreeMap<String, Checkpoint>, VerifyError> {
    let result = client
        .query(&format!(
            "{health_table} | where Kind == \"checkpoint\" and TimeGenerated < datetime({before}) and isnotempty({STREAM_COLUMN}) | summarize arg_max(CheckpointSeq, CheckpointHash) by CheckpointChain"
        ))
        .await;
    // No health table in the workspace: no checkpoints.
    let result = match result {
        Ok(result) => result,
        Err(QueryError::Status {
            status: 400,
            message,
        }) if message.contains("resolve") => {
            return Ok(BTreeMap::new());
        }
        Err(e) => return Err(e.into()),
    };
    let index = result.index();
    let column = |name: &str| {
        index.get(name).copied().ok_or_else(|| VerifyError::Column {
            table: health_table.to_string(),
            column: name.to_string(),
        })
    };
    let (chain_at, seq_at, hash_at) = (
        column("CheckpointChain")?,
        column("CheckpointSeq")?,
        column("CheckpointHash")?,
    );
    Ok(result
        .rows
        .iter()
        .filter_map(|r| {
            let chain = r.get(chain_at)?.as_str()?.to_string();
            let hash = r
                .get(hash_at)
                .and_then(Value::as_str)
                .filter(|h| !h.is_empty())
                .map(str::to_string);
            let seq = as_u64(r.get(seq_at)?)?;
            Some((chain, Checkpoint { seq, hash }))
        })
        .filter(|(chain, _)| !chain.is_empty())
        .collect())
}

/// A KQL string literal.
fn literal(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Verifies every chain of one table.
pub async fn verify_table(
    client: &QueryClient,
    keys: &Keyring,
    schema: &TableSchema,
    options: &VerifyOptions,
) -> Result<TableReport, VerifyError> {
    let table = &schema.output_table;
    let since = options
        .since
        .as_ref()
        .map(|t| format!(" | where TimeGenerated >= datetime({t})"))
        .unwrap_or_default();
    let mut report = TableReport {
        table: table.clone(),
        ..TableReport::default()
    };
    let streams = match client
        .query(&format!(
            "{table}{since} | summarize Rows = count() by {STREAM_COLUMN}"
        ))
        .await
    {
        Ok(streams) => streams,
        // A table the workspace doesn't have (never deployed): nothing to read, but any
        // chain checkpointed into it is missing whole.
        Err(QueryError::Status {
            status: 400,
            message,
        }) if message.contains("resolve") => {
            report.absent = true;
            ResultTable {
                columns: vec![STREAM_COLUMN.to_string(), "Rows".to_string()],
                rows: Vec::new(),
            }
        }
        Err(e) => return Err(e.into()),
    };
    let index = streams.index();
    let column = |name: &str| {
        index.get(name).copied().ok_or_else(|| VerifyError::Column {
            table: table.clone(),
            column: name.to_string(),
        })
    };
    let (name_at, rows_at) = (column(STREAM_COLUMN)?, column("Rows")?);
    let mut names = Vec::new();
    for row in &streams.rows {
        let name = row.get(name_at).and_then(Value::as_str).unwrap_or("");
        let rows = row.get(rows_at).and_then(as_u64).unwrap_or(0);
        if name.is_empty() {
            report.unchained += rows;
        } else {
            names.push(name.to_string());
        }
    }
    // Chains the connector checkpointed but of which no row is left are missing whole (not
    // with --since: a chain may simply have no rows that recent).
    let prefix_known = |n: &String| n.ends_with(&format!("/{table}"));
    if options.since.is_none() {
        for name in options.checkpoints.keys().filter(|n| prefix_known(n)) {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    names.sort();
    // With --since, each chain is read from the lowest sequence number of a row that recent,
    // then every row after it whatever its time: rows come into a chain in arrival order,
    // not event order, so a time filter would cut holes in it.
    let mut starts: BTreeMap<String, u64> = BTreeMap::new();
    if !since.is_empty() && !names.is_empty() {
        let found = client
            .query(&format!(
                "{table}{since} | where isnotempty({STREAM_COLUMN}) | summarize Start = min({SEQ_COLUMN}) by {STREAM_COLUMN}"
            ))
            .await?;
        let index = found.index();
        if let (Some(&name_at), Some(&start_at)) = (index.get(STREAM_COLUMN), index.get("Start")) {
            for row in &found.rows {
                if let (Some(name), Some(start)) = (
                    row.get(name_at).and_then(Value::as_str),
                    row.get(start_at).and_then(as_u64),
                ) {
                    starts.insert(name.to_string(), start);
                }
            }
        }
    }
    if report.unchained > 0 {
        let examples = client
            .query(&format!(
                "{table}{since} | where isempty({STREAM_COLUMN}) | take 5"
            ))
            .await?;
        if let Some(at) = examples.index().get("TimeGenerated") {
            report.unchained_examples = examples
                .rows
                .iter()
                .filter_map(|r| r.get(*at).and_then(Value::as_str).map(str::to_string))
                .collect();
        }
    }
    let columns = Columns::of(schema);
    for name in names {
        let chain = if report.absent {
            Checker::new(keys, &name, false)
                .with_checkpoint(options.checkpoints.get(&name).cloned())
                .finish()
        } else {
            let from = starts.get(&name).copied().unwrap_or(1);
            verify_chain(client, keys, &columns, table, from, &name, options).await?
        };
        report.chains.push(chain);
    }
    Ok(report)
}

async fn verify_chain(
    client: &QueryClient,
    keys: &Keyring,
    columns: &Columns,
    table: &str,
    from: u64,
    name: &str,
    options: &VerifyOptions,
) -> Result<ChainReport, VerifyError> {
    let mut checker = Checker::new(keys, name, options.since.is_some())
        .with_checkpoint(options.checkpoints.get(name).cloned());
    let mut after = from.saturating_sub(1);
    let mut page = options.page_rows.max(1);
    loop {
        let kql = format!(
            "{table} | where {STREAM_COLUMN} == {} and {SEQ_COLUMN} > {after} | order by {SEQ_COLUMN} asc | take {page}",
            literal(name)
        );
        let result = match client.query(&kql).await {
            Ok(result) => result,
            Err(QueryError::Partial(why)) if page > 1 => {
                tracing::info!(page, reason = %why, "the page was over the Query API's limits; reading smaller pages");
                page /= 2;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let full = result.rows.len() >= page;
        let mut rows = read_rows(&result, columns, table)?;
        if full {
            // The last sequence number may go on in the next page: read it whole there.
            let last = rows.last().map_or(0, |r| r.seq);
            rows.retain(|r| r.seq < last);
            if rows.is_empty() {
                // More copies of one sequence number than a page holds: read bigger pages.
                if page >= MAX_PAGE_ROWS {
                    return Err(VerifyError::PageTooSmall {
                        table: table.to_string(),
                        stream: name.to_string(),
                        seq: last,
                        page,
                    });
                }
                page = (page * 2).min(MAX_PAGE_ROWS);
                continue;
            }
        }
        checker.feed(&rows);
        match rows.last() {
            Some(r) if full => after = r.seq,
            _ => break,
        }
    }
    Ok(checker.finish())
}

fn as_u64(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

fn read_rows(
    result: &ResultTable,
    columns: &Columns,
    table: &str,
) -> Result<Vec<ReadRow>, VerifyError> {
    let index = result.index();
    let at = |name: &str| {
        index.get(name).copied().ok_or_else(|| VerifyError::Column {
            table: table.to_string(),
            column: name.to_string(),
        })
    };
    let (seq_at, hash_at, key_at) = (at(SEQ_COLUMN)?, at(HASH_COLUMN)?, at(KEY_COLUMN)?);
    let text = |row: &[Value], i: usize| {
        row.get(i)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut rows = Vec::with_capacity(result.rows.len());
    for row in &result.rows {
        let mut canonical = Vec::new();
        columns.of_read(
            |name| index.get(name).and_then(|i| row.get(*i)),
            &mut canonical,
        );
        rows.push(ReadRow {
            seq: row.get(seq_at).and_then(as_u64).unwrap_or(0),
            hash: text(row, hash_at),
            key_id: text(row, key_at),
            canonical,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #[test]
    fn literals_are_escaped() {
        assert_eq!(super::literal(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
