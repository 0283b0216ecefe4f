//! The Log Analytics Query API over the rows the ingestion side accepted:
//! `POST /v1/workspaces/{workspace}/query` with `{"query": KQL}`, a bearer token for the
//! Query API's scope. Rows come back as Log Analytics renders them, not as they were sent:
//! the workspace's `TenantId` and `Type` columns added, datetimes with seven fraction digits,
//! dynamic values as JSON text with sorted keys, missing strings as "" and other missing
//! values as null, reals as doubles.
//!
//! KQL: only the shapes `verify` sends (anything else is a 400 BadArgumentError, as a syntax
//! error is): `TABLE (| where COND (and COND)*)* [| summarize NAME = count()|max(COL) by COL
//! | summarize arg_max(COL, COL) by COL]
//! [| order by COL asc|desc] [| take N]`, COND one of `COL == "text"`, `COL > N` (also `>=`,
//! `<`, `<=`, with a number or `datetime(...)`), `isempty(COL)`, `isnotempty(COL)`; aggregates `count()`, `max(COL)`, `min(COL)`.
//!
//! Limits as the service's (learn.microsoft.com/azure/azure-monitor/service-limits, log
//! queries): 500,000 rows and about 100 MB a result, lower for tests with
//! [`crate::Emulator::set_query_limits`]. Over them the answer is 200 with the cut result and a
//! `PartialError`.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::Shared;

/// The token scopes the Query API takes (public, US Government, China).
const SCOPES: [&str; 3] = [
    "https://api.loganalytics.io/.default",
    "https://api.loganalytics.us/.default",
    "https://api.loganalytics.azure.cn/.default",
];

pub(crate) const DEFAULT_MAX_ROWS: usize = 500_000;
pub(crate) const DEFAULT_MAX_BYTES: usize = 100 << 20;

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

pub(crate) async fn query(
    State(shared): State<Arc<Shared>>,
    Path(workspace): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let bearer = crate::bearer(&headers);
    let Some(token) = bearer else {
        return error(
            StatusCode::UNAUTHORIZED,
            "AuthorizationRequiredError",
            "a bearer token is required",
        );
    };
    let scope_ok = shared.state().issued_tokens.iter().any(|t| {
        t.token == token && t.expires > Instant::now() && SCOPES.contains(&t.scope.as_str())
    });
    if !scope_ok {
        return error(
            StatusCode::FORBIDDEN,
            "InvalidTokenError",
            "the token is unknown, expired or not for the Query API's audience",
        );
    }
    if workspace != shared.config.workspace_id {
        return error(
            StatusCode::NOT_FOUND,
            "WorkspaceNotFoundError",
            "no such workspace",
        );
    }
    let Some(kql) = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["query"].as_str().map(str::to_string))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "BadArgumentError",
            "the body must be {\"query\": \"...\"}",
        );
    };
    let parsed = match parse(&kql) {
        Ok(q) => q,
        Err(why) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadArgumentError",
                &format!("Query could not be parsed: {why}"),
            );
        }
    };
    let (max_rows, max_bytes) = {
        let state = shared.state();
        (state.query_max_rows, state.query_max_bytes)
    };
    let Some(columns) = shared
        .config
        .streams
        .get(&format!("Custom-{}", parsed.table))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "BadArgumentError",
            &format!("'{}' could not be resolved to a table", parsed.table),
        );
    };
    let mut columns: Vec<(String, String)> = columns.clone();
    columns.insert(0, ("TenantId".into(), "string".into()));
    columns.push(("Type".into(), "string".into()));
    let rows: Vec<Vec<Value>> = {
        let state = shared.state();
        let stream = format!("Custom-{}", parsed.table);
        state
            .accepted
            .iter()
            .filter(|(s, _)| *s == stream)
            .map(|(_, row)| {
                columns
                    .iter()
                    .map(|(name, kind)| match name.as_str() {
                        "TenantId" => Value::String(shared.config.workspace_id.clone()),
                        "Type" => Value::String(parsed.table.clone()),
                        _ => render(kind, row.get(name)),
                    })
                    .collect()
            })
            .collect()
    };
    let (columns, mut rows) = match run(&parsed, &columns, rows) {
        Ok(done) => done,
        Err(why) => return error(StatusCode::BAD_REQUEST, "SemanticError", &why),
    };
    let mut partial = None;
    if rows.len() > max_rows {
        rows.truncate(max_rows);
        partial = Some(format!(
            "Query result set has exceeded the internal record count limit {max_rows}"
        ));
    }
    let mut bytes = 0;
    if let Some(cut) = rows.iter().position(|r| {
        bytes += serde_json::to_string(r).map_or(0, |t| t.len());
        bytes > max_bytes
    }) {
        rows.truncate(cut);
        partial = Some(format!(
            "Query result set has exceeded the internal data size limit {max_bytes}"
        ));
    }
    let mut answer = json!({
        "tables": [{
            "name": "PrimaryResult",
            "columns": columns.iter().map(|(n, t)| json!({"name": n, "type": t})).collect::<Vec<_>>(),
            "rows": rows,
        }]
    });
    if let Some(message) = partial {
        answer["error"] = json!({
            "code": "PartialError",
            "message": "There were some errors when processing your query.",
            "details": [{"code": "EngineError", "message": message}],
        });
    }
    (StatusCode::OK, Json(answer)).into_response()
}

/// A stored value as Log Analytics returns a column of DCR type `kind`.
fn render(kind: &str, value: Option<&Value>) -> Value {
    let value = value.filter(|v| !v.is_null());
    match kind {
        "string" => match value {
            Some(Value::String(s)) => Value::String(s.clone()),
            Some(other) => Value::String(other.to_string()),
            None => Value::String(String::new()),
        },
        "datetime" => match value {
            Some(Value::String(s)) => Value::String(seven_digits(s)),
            _ => Value::Null,
        },
        "dynamic" => match value {
            Some(Value::String(s)) => Value::String(s.clone()),
            Some(v) => Value::String(sorted(v).to_string()),
            None => Value::Null,
        },
        "real" => value
            .and_then(Value::as_f64)
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        _ => value.cloned().unwrap_or(Value::Null),
    }
}

/// `2024-05-01T10:00:00.12Z` → `2024-05-01T10:00:00.1200000Z` (the ingestion side took only
/// UTC `Z` times).
fn seven_digits(s: &str) -> String {
    let Some(body) = s.strip_suffix('Z') else {
        return s.to_string();
    };
    let (whole, fraction) = body.split_once('.').unwrap_or((body, ""));
    let mut fraction: String = fraction.chars().take(7).collect();
    while fraction.len() < 7 {
        fraction.push('0');
    }
    format!("{whole}.{fraction}Z")
}

/// The value with object keys sorted (Log Analytics keeps its own order, not the sender's).
fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = serde_json::Map::new();
            for k in keys {
                out.insert(k.clone(), sorted(&map[k]));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

#[derive(Debug)]
enum Cond {
    Compare(String, &'static str, Literal),
    /// `isempty(COL)` (true) or `isnotempty(COL)` (false).
    IsEmpty(String, bool),
}

#[derive(Debug)]
enum Literal {
    Text(String),
    Number(f64),
}

#[derive(Debug)]
enum Aggregate {
    Count,
    Max(String),
    Min(String),
    /// `arg_max(COL, RETURNED)`: the row of the group with the highest COL; the output
    /// columns are then the `by` column, COL and RETURNED (no NAME).
    ArgMax(String, String),
}

#[derive(Debug)]
struct Parsed {
    table: String,
    wheres: Vec<Cond>,
    summarize: Option<(String, Aggregate, String)>,
    order: Option<(String, bool)>,
    take: Option<usize>,
}

/// Splits at `|` outside string literals.
fn stages(kql: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    let mut escaped = false;
    for c in kql.chars() {
        if quoted {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
        } else if c == '"' {
            quoted = true;
        } else if c == '|' {
            out.push(String::new());
            continue;
        }
        if let Some(last) = out.last_mut() {
            last.push(c);
        }
    }
    out.into_iter().map(|s| s.trim().to_string()).collect()
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse(kql: &str) -> Result<Parsed, String> {
    let stages = stages(kql);
    let table = stages[0].clone();
    if !is_name(&table) {
        return Err(format!("expected a table name, found '{table}'"));
    }
    let mut parsed = Parsed {
        table,
        wheres: Vec::new(),
        summarize: None,
        order: None,
        take: None,
    };
    for stage in &stages[1..] {
        if let Some(rest) = stage.strip_prefix("where ") {
            for cond in split_and(rest) {
                parsed.wheres.push(parse_cond(cond.trim())?);
            }
        } else if let Some(rest) = stage
            .strip_prefix("summarize arg_max(")
            .and_then(|r| r.split_once(") by "))
        {
            let (args, by) = rest;
            let (col, returned) = args
                .split_once(',')
                .ok_or("arg_max needs (COL, RETURNED)")?;
            let (col, returned, by) = (col.trim(), returned.trim(), by.trim());
            if !is_name(col) || !is_name(returned) || !is_name(by) {
                return Err(format!("bad summarize '{stage}'"));
            }
            parsed.summarize = Some((
                String::new(),
                Aggregate::ArgMax(col.into(), returned.into()),
                by.into(),
            ));
        } else if let Some(rest) = stage.strip_prefix("summarize ") {
            let (name, rest) = rest
                .split_once('=')
                .ok_or("summarize needs NAME = count()")?;
            let (aggregate, by) = rest
                .trim()
                .split_once(" by ")
                .ok_or("only NAME = count() or max(COL) by COL is supported")?;
            let aggregate = match aggregate.trim() {
                "count()" => Aggregate::Count,
                other => {
                    let of = |f: &str| {
                        other
                            .strip_prefix(f)
                            .and_then(|r| r.strip_suffix(')'))
                            .filter(|c| is_name(c))
                            .map(str::to_string)
                    };
                    match (of("max("), of("min(")) {
                        (Some(col), _) => Aggregate::Max(col),
                        (_, Some(col)) => Aggregate::Min(col),
                        _ => return Err(format!("unsupported aggregate '{other}'")),
                    }
                }
            };
            if !is_name(name.trim()) || !is_name(by.trim()) {
                return Err(format!("bad summarize '{stage}'"));
            }
            parsed.summarize = Some((name.trim().into(), aggregate, by.trim().into()));
        } else if let Some(rest) = stage.strip_prefix("order by ") {
            let mut words = rest.split_whitespace();
            let col = words.next().ok_or("order by needs a column")?;
            let asc = match words.next() {
                Some("asc") => true,
                Some("desc") | None => false,
                Some(other) => return Err(format!("unexpected '{other}'")),
            };
            parsed.order = Some((col.to_string(), asc));
        } else if let Some(rest) = stage.strip_prefix("take ") {
            parsed.take = Some(
                rest.trim()
                    .parse()
                    .map_err(|_| format!("bad take '{rest}'"))?,
            );
        } else {
            return Err(format!("unsupported operator in '{stage}'"));
        }
    }
    Ok(parsed)
}

/// Splits at ` and ` outside string literals.
fn split_and(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b' ' if !quoted && s[i..].starts_with(" and ") => {
                out.push(&s[start..i]);
                start = i + 5;
                i += 4;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&s[start..]);
    out
}

fn parse_cond(s: &str) -> Result<Cond, String> {
    if let Some(col) = s.strip_prefix("isempty(").and_then(|r| r.strip_suffix(')')) {
        return Ok(Cond::IsEmpty(col.trim().to_string(), true));
    }
    if let Some(col) = s
        .strip_prefix("isnotempty(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return Ok(Cond::IsEmpty(col.trim().to_string(), false));
    }
    for op in ["==", ">=", "<=", ">", "<"] {
        if let Some((col, lit)) = s.split_once(op) {
            let col = col.trim();
            if !is_name(col) {
                return Err(format!("bad column '{col}'"));
            }
            let lit = lit.trim();
            let literal = if lit.starts_with('"') {
                Literal::Text(serde_json::from_str(lit).map_err(|_| format!("bad string {lit}"))?)
            } else if let Some(t) = lit
                .strip_prefix("datetime(")
                .and_then(|r| r.strip_suffix(')'))
            {
                Literal::Text(seven_digits(&normalize_zone(t.trim())))
            } else {
                Literal::Number(lit.parse().map_err(|_| format!("bad literal '{lit}'"))?)
            };
            let op = match op {
                "==" => "==",
                ">=" => ">=",
                "<=" => "<=",
                ">" => ">",
                _ => "<",
            };
            return Ok(Cond::Compare(col.to_string(), op, literal));
        }
    }
    Err(format!("unsupported condition '{s}'"))
}

/// A datetime literal without a zone is UTC.
fn normalize_zone(t: &str) -> String {
    if t.ends_with('Z') {
        t.to_string()
    } else {
        format!("{t}Z")
    }
}

fn compare(value: &Value, literal: &Literal) -> Option<Ordering> {
    match literal {
        Literal::Number(n) => value.as_f64()?.partial_cmp(n),
        Literal::Text(t) => Some(value.as_str()?.cmp(t.as_str())),
    }
}

type Rows = (Vec<(String, String)>, Vec<Vec<Value>>);

fn run(
    q: &Parsed,
    columns: &[(String, String)],
    mut rows: Vec<Vec<Value>>,
) -> Result<Rows, String> {
    let at = |name: &str| {
        columns
            .iter()
            .position(|(c, _)| c == name)
            .ok_or_else(|| format!("'{name}' is not a column of {}", q.table))
    };
    for cond in &q.wheres {
        match cond {
            Cond::IsEmpty(col, empty) => {
                let i = at(col)?;
                rows.retain(|r| (matches!(&r[i], Value::Null) || r[i] == "") == *empty);
            }
            Cond::Compare(col, op, lit) => {
                let i = at(col)?;
                rows.retain(|r| {
                    compare(&r[i], lit).is_some_and(|o| match *op {
                        "==" => o == Ordering::Equal,
                        ">=" => o != Ordering::Less,
                        "<=" => o != Ordering::Greater,
                        ">" => o == Ordering::Greater,
                        _ => o == Ordering::Less,
                    })
                });
            }
        }
    }
    let mut columns = columns.to_vec();
    if let Some((_, Aggregate::ArgMax(col, returned), by)) = &q.summarize {
        let (i, c, r) = (at(by)?, at(col)?, at(returned)?);
        let mut groups: Vec<Vec<Value>> = Vec::new();
        for row in &rows {
            match groups.iter_mut().find(|g| g[0] == row[i]) {
                Some(g) if row[c].as_f64() > g[1].as_f64() => {
                    *g = vec![row[i].clone(), row[c].clone(), row[r].clone()];
                }
                Some(_) => {}
                None => groups.push(vec![row[i].clone(), row[c].clone(), row[r].clone()]),
            }
        }
        columns = vec![columns[i].clone(), columns[c].clone(), columns[r].clone()];
        rows = groups;
    } else if let Some((name, aggregate, by)) = &q.summarize {
        let i = at(by)?;
        let (of, max) = match aggregate {
            Aggregate::Count => (None, true),
            Aggregate::Max(col) => (Some(at(col)?), true),
            Aggregate::Min(col) => (Some(at(col)?), false),
            Aggregate::ArgMax(..) => return Err("arg_max is summarized apart".into()),
        };
        let mut groups: Vec<(Value, Value)> = Vec::new();
        for r in &rows {
            let value = match of {
                None => json!(1),
                Some(c) => r[c].clone(),
            };
            match groups.iter_mut().find(|(k, _)| *k == r[i]) {
                Some((_, acc)) => match of {
                    None => *acc = json!(acc.as_u64().unwrap_or(0) + 1),
                    Some(_) => {
                        let better = if max {
                            value.as_f64() > acc.as_f64()
                        } else {
                            value.as_f64() < acc.as_f64()
                        };
                        if better {
                            *acc = value;
                        }
                    }
                },
                None => groups.push((r[i].clone(), value)),
            }
        }
        let kind = columns[i].1.clone();
        let value_kind = of.map_or("long".to_string(), |c| columns[c].1.clone());
        columns = vec![(by.clone(), kind), (name.clone(), value_kind)];
        rows = groups.into_iter().map(|(k, v)| vec![k, v]).collect();
    }
    if let Some((col, asc)) = &q.order {
        let i = columns
            .iter()
            .position(|(c, _)| c == col)
            .ok_or_else(|| format!("'{col}' is not a column"))?;
        rows.sort_by(|a, b| {
            let o = match (a[i].as_f64(), b[i].as_f64()) {
                (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
                _ => a[i].to_string().cmp(&b[i].to_string()),
            };
            if *asc { o } else { o.reverse() }
        });
    }
    if let Some(n) = q.take {
        rows.truncate(n);
    }
    Ok((columns, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shapes_verify_sends_parse() {
        let q = parse(r#"T_CL | where TimeGenerated >= datetime(2024-01-01T00:00:00Z) | where ChainStream == "a|b and c" and ChainSeq > 5 | order by ChainSeq asc | take 10"#).unwrap();
        assert_eq!(q.table, "T_CL");
        assert_eq!(q.wheres.len(), 3);
        assert_eq!(q.take, Some(10));
        assert!(parse("T_CL | project X").is_err());
        assert!(parse("T_CL | summarize Rows = count() by ChainStream").is_ok());
        assert!(parse("T_CL | summarize S = max(CheckpointSeq) by CheckpointChain").is_ok());
        assert!(
            parse("T_CL | summarize arg_max(CheckpointSeq, CheckpointHash) by CheckpointChain")
                .is_ok()
        );
        assert!(parse("T_CL | summarize arg_max(X) by Y").is_err());
        assert!(parse("T_CL | summarize S = sum(X) by Y").is_err());
    }
}
