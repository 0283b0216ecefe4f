//! `content rewrite`: Sentinel content (rule, hunting-query and parser YAML, `.kql` files, ARM
//! templates exported from a workspace) rewritten to read our tables. Each file's queries are
//! found by their exact bytes (`yaml`, `arm`, `scalar`), tokenized (`lexer`), their table
//! references rewritten (`references`), and the edits written back into the file, so every other
//! byte stays as it was. `deploy` turns the rewritten rules into one ARM template.

pub mod arm;
pub mod deploy;
pub mod lexer;
pub mod references;
pub mod scalar;
pub mod yaml;

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::schema::SchemaSet;
use references::{Edit, Finding, TableName, apply, rewrite_query};
use scalar::{Encoding, Scalar};

/// A query inside a file.
#[derive(Debug, Clone)]
pub struct Site {
    /// The key that holds it (`query`, `ParserQuery`, `properties.query`).
    pub field: String,
    /// 1-based line of the file where its value starts.
    pub first_line: usize,
    pub scalar: Scalar,
    pub encoding: Encoding,
}

#[derive(Debug, Error)]
pub enum ContentError {
    #[error("line {line}: {message}")]
    Parse { line: usize, message: String },
    #[error("cannot read it: {0}")]
    Read(#[source] std::io::Error),
    #[error("not a file this command reads (.yaml, .yml, .kql, .csl, .json)")]
    UnknownKind,
}

/// What the table references become.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// The `<Table>_All` functions of `schema kql` (the Sentinel table and ours together).
    #[default]
    Functions,
    /// Our `_CL` tables.
    Custom,
}

/// Every table's names for a target, from the schemas (a renamed output table is followed).
pub fn table_names(schemas: &SchemaSet, target: Target) -> Vec<TableName> {
    schemas
        .tables
        .iter()
        .map(|t| TableName {
            builtin: t.table.clone(),
            replacement: match target {
                Target::Functions => format!("{}_All", t.table),
                Target::Custom => t.output_table.clone(),
            },
            output: t.output_table.clone(),
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Kql,
    Arm,
}

impl Format {
    pub fn of(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "yaml" | "yml" => Some(Format::Yaml),
            "kql" | "csl" => Some(Format::Kql),
            "json" => Some(Format::Arm),
            _ => None,
        }
    }
}

/// One query's outcome, lines counted in the file.
#[derive(Debug, Clone)]
pub struct QueryOutcome {
    pub field: String,
    pub line: usize,
    /// The rewritten query text (decoded), for the deployable template and the analyzer.
    pub rewritten: String,
    pub findings: Vec<(usize, Finding)>,
    /// The query could not be tokenized (file line, what): left as it was.
    pub error: Option<(usize, String)>,
}

/// A rewritten file: its new bytes and what happened to each query.
#[derive(Debug, Clone)]
pub struct FileOutcome {
    pub output: String,
    pub queries: Vec<QueryOutcome>,
}

/// Rewrites the queries of one file's text; a query that cannot be tokenized stays as it was
/// and carries its error, the others are rewritten.
pub fn rewrite_text(
    raw: &str,
    format: Format,
    names: &[TableName],
) -> Result<FileOutcome, ContentError> {
    // A byte-order mark (files saved on Windows) stays where it is, outside the document.
    if let Some(body) = raw.strip_prefix('\u{feff}') {
        let mut outcome = rewrite_text(body, format, names)?;
        outcome.output.insert(0, '\u{feff}');
        return Ok(outcome);
    }
    let sites = sites(raw, format)?;
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut queries = Vec::new();
    for site in &sites {
        let query = &site.scalar.text;
        let file_line = |query_offset: usize| {
            let (raw_at, _) = site.scalar.raw_range(query_offset, query_offset);
            lexer::line_of(raw, raw_at)
        };
        match rewrite_query(query, names) {
            Ok(rewrite) => {
                let findings = rewrite
                    .findings
                    .iter()
                    .map(|f| (file_line(line_start(query, f.line)), f.finding.clone()))
                    .collect();
                for Edit { start, end, text } in &rewrite.edits {
                    let (raw_start, raw_end) = site.scalar.raw_range(*start, *end);
                    edits.push((raw_start, raw_end, site.encoding.encode(text)));
                }
                queries.push(QueryOutcome {
                    field: site.field.clone(),
                    line: site.first_line,
                    rewritten: apply(query, &rewrite.edits),
                    findings,
                    error: None,
                });
            }
            Err(e) => {
                let (line, what) = e.parts();
                queries.push(QueryOutcome {
                    field: site.field.clone(),
                    line: site.first_line,
                    rewritten: query.clone(),
                    findings: Vec::new(),
                    error: Some((
                        file_line(line_start(query, line)),
                        format!("{what}; this query is left as it was"),
                    )),
                });
            }
        }
    }
    edits.sort_by_key(|e| e.0);
    let mut output = String::with_capacity(raw.len() + edits.len() * 8);
    let mut at = 0;
    for (start, end, text) in &edits {
        // Two located queries over the same bytes: refuse the file rather than guess.
        if *start < at {
            return Err(ContentError::Parse {
                line: lexer::line_of(raw, *start),
                message: "two queries were located over the same text; the file is left out".into(),
            });
        }
        output.push_str(&raw[at..*start]);
        output.push_str(text);
        at = *end;
    }
    output.push_str(&raw[at..]);
    // The rewritten file must read back as the same document with the rewritten queries.
    let again = self::sites(&output, format)?;
    let expected: Vec<&str> = queries.iter().map(|q| q.rewritten.as_str()).collect();
    let got: Vec<&str> = again.iter().map(|s| s.scalar.text.as_str()).collect();
    if expected != got {
        return Err(ContentError::Parse {
            line: 1,
            message: "the rewritten file does not read back as written (please report this file)"
                .into(),
        });
    }
    Ok(FileOutcome { output, queries })
}

fn sites(raw: &str, format: Format) -> Result<Vec<Site>, ContentError> {
    match format {
        Format::Yaml => yaml::sites(raw),
        Format::Arm => arm::sites(raw),
        Format::Kql => Ok(vec![Site {
            field: "query".into(),
            first_line: 1,
            scalar: Scalar::literal(raw, 0, raw.len()),
            encoding: Encoding::Literal,
        }]),
    }
}

/// The byte offset where 1-based line `line` of `text` starts.
fn line_start(text: &str, line: usize) -> usize {
    if line <= 1 {
        return 0;
    }
    memchr::memchr_iter(b'\n', text.as_bytes())
        .nth(line - 2)
        .map_or(text.len(), |i| i + 1)
}

/// The files under each input path, with the name each gets under the output directory.
pub fn input_files(paths: &[PathBuf]) -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut stack = vec![path.clone()];
            while let Some(dir) = stack.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    // Named as unreadable when rewritten.
                    out.push((
                        dir.clone(),
                        dir.strip_prefix(path).unwrap_or(&dir).to_path_buf(),
                    ));
                    continue;
                };
                let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
                entries.sort();
                for entry in entries {
                    // Symlinked directories are not followed: a link loop would never end.
                    let linked =
                        std::fs::symlink_metadata(&entry).is_ok_and(|m| m.file_type().is_symlink());
                    if entry.is_dir() && !linked {
                        stack.push(entry);
                    } else if entry.is_dir() {
                        continue;
                    } else if Format::of(&entry).is_some() {
                        let relative = entry.strip_prefix(path).unwrap_or(&entry).to_path_buf();
                        out.push((entry, relative));
                    }
                }
            }
        } else {
            let name = path
                .file_name()
                .map(PathBuf::from)
                .unwrap_or_else(|| path.clone());
            out.push((path.clone(), name));
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// Reads and rewrites one file.
pub fn rewrite_file(path: &Path, names: &[TableName]) -> Result<FileOutcome, ContentError> {
    let format = Format::of(path).ok_or(ContentError::UnknownKind)?;
    let raw = std::fs::read_to_string(path).map_err(ContentError::Read)?;
    rewrite_text(&raw, format, names)
}

#[cfg(test)]
mod tests;
