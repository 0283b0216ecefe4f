//! Finds where a KQL query names one of our tables as a table, and where it compares a table's
//! name as data, over the tokens of `lexer`. A small context stack follows the query's shape:
//! statement starts, `let X =`, pipe operators (`union`, `join`, `lookup` take tables; the
//! others take columns), and brackets (a `(` after `join`, `in`, `materialize`, ... opens a
//! tabular expression; after a function name, scalar arguments). A name is a table reference
//! only where a table can stand; column names, named arguments (`x = ...`, `x: type`), members
//! (`a.OfficeActivity`), calls (`OfficeActivity(...)`) and longer names are never touched.

use std::collections::BTreeSet;

use super::lexer::{Kind, LexError, Token, line_of, string_value, tokenize};

/// One of our tables: the Sentinel name content uses, and what it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    /// The Sentinel table, e.g. `OfficeActivity`.
    pub builtin: String,
    /// The name written in its place: `OfficeActivity_All` or `OfficeActivity_CL`.
    pub replacement: String,
    /// The `Type` our rows carry, e.g. `OfficeActivity_CL`.
    pub output: String,
}

/// A change to the query text, in the query's byte offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub start: usize,
    pub end: usize,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A table reference rewritten.
    Reference { from: String, to: String },
    /// `Type == "OfficeActivity"` and friends, rewritten to match our rows' `Type` as well.
    Comparison { table: String, was: String },
    /// The table's name as text where the rewrite cannot tell what it means: check by hand.
    NameAsData { table: String, context: String },
    /// A table or function the query reads that is not one of ours (the workspace must have it).
    OtherSource { name: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// 1-based line in the query.
    pub line: usize,
    pub finding: Finding,
}

#[derive(Debug, Default)]
pub struct QueryRewrite {
    pub edits: Vec<Edit>,
    pub findings: Vec<Located>,
}

/// What the current pipe operator does with the names that follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    /// Before the first `|` of a tabular expression: its source.
    Source,
    /// Just after `|`: the next name is the operator.
    Pending,
    /// `union` (and `search in`, `find in`): a list of tables.
    Union,
    /// `join`, `lookup`: one table, then `on` and columns.
    Join { on: bool },
    /// Any other operator: columns and functions.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    /// A tabular expression (a statement, `( ... )` after `join`/`in`/..., `{ ... }`).
    Tabular {
        operator: Operator,
        /// At a statement's start, after `let X =` or `;`: a table may stand next.
        expect_source: bool,
    },
    /// Scalar arguments, a grouping, an array.
    Scalar,
}

/// Names that open a tabular expression when a `(` follows them.
const TABULAR_OPENERS: [&str; 13] = [
    "join",
    "lookup",
    "union",
    "materialize",
    "toscalar",
    "view",
    "in",
    "has_any",
    "has_all",
    "fork",
    "facet",
    "search",
    "find",
];

/// Words that stand where a table can but are not one (tabular operators that make rows,
/// statement keywords, `union`/`join` options).
const SOURCE_KEYWORDS: [&str; 23] = [
    "print",
    "range",
    "datatable",
    "externaldata",
    "evaluate",
    "search",
    "find",
    "union",
    "let",
    "set",
    "declare",
    "pattern",
    "alias",
    "restrict",
    "materialize",
    "view",
    "kind",
    "isfuzzy",
    "withsource",
    "hint",
    "in",
    "true",
    "false",
];

/// Columns that hold a table's name as data.
const TABLE_NAME_COLUMNS: [&str; 2] = ["Type", "$table"];

/// Rewrites every reference to `names` in `query`; never changes anything else.
pub fn rewrite_query(query: &str, names: &[TableName]) -> Result<QueryRewrite, LexError> {
    let tokens = tokenize(query)?;
    let mut scan = Scan {
        query,
        tokens: &tokens,
        names,
        out: QueryRewrite::default(),
        let_names: BTreeSet::new(),
        defining: None,
        source_columns: TABLE_NAME_COLUMNS.iter().map(|s| s.to_string()).collect(),
        other: BTreeSet::new(),
    };
    scan.run();
    let mut out = scan.out;
    out.edits.sort_by_key(|e| e.start);
    Ok(out)
}

struct Scan<'a> {
    query: &'a str,
    tokens: &'a [Token],
    names: &'a [TableName],
    out: QueryRewrite,
    /// Names the query defines (`let X = ...`, function parameters): never "other sources",
    /// and a `let` named like one of our tables hides the table after its own statement.
    let_names: BTreeSet<String>,
    /// The `let` whose statement is being read (its right side still means the table).
    defining: Option<String>,
    /// `Type`, `$table` and the columns `union withsource=X` names.
    source_columns: BTreeSet<String>,
    other: BTreeSet<(usize, String)>,
}

impl Scan<'_> {
    fn text(&self, i: usize) -> &str {
        self.tokens.get(i).map_or("", |t| t.text(self.query))
    }

    fn kind(&self, i: usize) -> Option<Kind> {
        self.tokens.get(i).map(|t| t.kind)
    }

    fn line(&self, i: usize) -> usize {
        line_of(self.query, self.tokens[i].start)
    }

    fn table(&self, name: &str) -> Option<&TableName> {
        self.names.iter().find(|t| t.builtin == name)
    }

    fn run(&mut self) {
        let mut stack = vec![Frame::Tabular {
            operator: Operator::Source,
            expect_source: true,
        }];
        // After `let`: the name, then `=`, then a source may stand.
        let mut let_header = false;
        let mut i = 0;
        while i < self.tokens.len() {
            let token = self.tokens[i];
            let text = token.text(self.query);
            let top = *stack.last().unwrap_or(&Frame::Scalar);
            match token.kind {
                Kind::Punct => match text {
                    "(" | "{" | "[" => {
                        if text == "[" && self.bracketed_name(i, top) {
                            i += 3;
                            self.after_source(&mut stack);
                            continue;
                        }
                        stack.push(self.frame_for(i, top));
                    }
                    ")" | "}" | "]" => {
                        if stack.len() > 1 {
                            stack.pop();
                        }
                        self.after_source(&mut stack);
                    }
                    ";" => {
                        if let Some(name) = self.defining.take() {
                            self.let_names.insert(name);
                        }
                        if let Some(Frame::Tabular {
                            operator,
                            expect_source,
                            ..
                        }) = stack.last_mut()
                        {
                            *operator = Operator::Source;
                            *expect_source = true;
                        }
                    }
                    "|" => {
                        if let Some(Frame::Tabular {
                            operator,
                            expect_source,
                            ..
                        }) = stack.last_mut()
                        {
                            *operator = Operator::Pending;
                            *expect_source = false;
                        }
                    }
                    "=" if let_header => {
                        let_header = false;
                        if let Some(Frame::Tabular { expect_source, .. }) = stack.last_mut() {
                            *expect_source = true;
                        }
                    }
                    _ => {}
                },
                Kind::Ident => {
                    if let Frame::Tabular {
                        operator,
                        expect_source,
                        ..
                    } = top
                    {
                        if expect_source && text == "let" {
                            let_header = true;
                            if self.kind(i + 1) == Some(Kind::Ident) {
                                self.defining = Some(self.text(i + 1).to_string());
                            }
                            i += 1;
                            continue;
                        }
                        let starts_a_list = expect_source
                            && matches!(text, "union" | "search" | "find")
                            && operator == Operator::Source;
                        if operator == Operator::Pending || starts_a_list {
                            self.set_operator(&mut stack, text);
                        } else if operator == (Operator::Join { on: false }) && text == "on" {
                            if let Some(Frame::Tabular { operator, .. }) = stack.last_mut() {
                                *operator = Operator::Join { on: true };
                            }
                        } else if !let_header && self.stands_for_a_table(i, operator, expect_source)
                        {
                            self.reference(i);
                            self.after_source(&mut stack);
                        } else if expect_source && !let_header {
                            self.after_source(&mut stack);
                        }
                    }
                    if text == "withsource" && self.text(i + 1) == "=" {
                        if self.kind(i + 2) == Some(Kind::Ident) {
                            self.source_columns.insert(self.text(i + 2).to_string());
                        }
                        i += 3;
                        continue;
                    }
                }
                Kind::String => self.string(i),
                Kind::Number => {}
            }
            i += 1;
        }
        if let Some(name) = self.defining.take() {
            self.let_names.insert(name);
        }
        for (line, name) in std::mem::take(&mut self.other) {
            if !self.let_names.contains(&name) {
                self.out.findings.push(Located {
                    line,
                    finding: Finding::OtherSource { name },
                });
            }
        }
        self.out.findings.sort_by_key(|f| f.line);
    }

    fn set_operator(&self, stack: &mut [Frame], name: &str) {
        if let Some(Frame::Tabular {
            operator,
            expect_source,
            ..
        }) = stack.last_mut()
        {
            *expect_source = false;
            *operator = match name {
                "union" | "search" | "find" => Operator::Union,
                "join" | "lookup" => Operator::Join { on: false },
                _ => Operator::Other,
            };
        }
    }

    /// A source was read: what follows is operators, not another source.
    fn after_source(&self, stack: &mut [Frame]) {
        if let Some(Frame::Tabular { expect_source, .. }) = stack.last_mut() {
            *expect_source = false;
        }
    }

    /// Whether the name at `i` stands where a table can: a source, a `union` member, the table
    /// of a `join`/`lookup`; and is not a named argument, a call, a member or a parameter.
    fn stands_for_a_table(&mut self, i: usize, operator: Operator, expect_source: bool) -> bool {
        let next = self.text(i + 1);
        let prev = if i == 0 { "" } else { self.text(i - 1) };
        if matches!(next, "=" | ":" | "(" | ".") || prev == "." || prev == "=" && !expect_source {
            return false;
        }
        let place = expect_source
            || operator == Operator::Union
            || operator == Operator::Join { on: false };
        if !place {
            return false;
        }
        let name = self.text(i);
        // `OfficeActivity*` is a wildcard that already matches our tables: left as it is.
        if next == "*"
            && self
                .tokens
                .get(i + 1)
                .is_some_and(|t| t.start == self.tokens[i].end)
        {
            return false;
        }
        if self.let_names.contains(name) {
            // A `let` of the same name hides the table from here on.
            return false;
        }
        if self.defining.as_deref() == Some(name) && prev != "=" {
            return false;
        }
        if self.table(name).is_none() {
            let keyword = SOURCE_KEYWORDS.contains(&name);
            if !keyword && !name.starts_with('$') {
                self.other.insert((self.line(i), name.to_string()));
            }
            return false;
        }
        true
    }

    fn reference(&mut self, i: usize) {
        let token = self.tokens[i];
        let name = token.text(self.query);
        let Some(table) = self.table(name).cloned() else {
            return;
        };
        let line = self.line(i);
        self.out.edits.push(Edit {
            start: token.start,
            end: token.end,
            text: table.replacement.clone(),
        });
        self.out.findings.push(Located {
            line,
            finding: Finding::Reference {
                from: table.builtin,
                to: table.replacement,
            },
        });
    }

    /// `['OfficeActivity']` where a table may stand: rewritten inside the brackets.
    fn bracketed_name(&mut self, i: usize, top: Frame) -> bool {
        let Frame::Tabular {
            operator,
            expect_source,
            ..
        } = top
        else {
            return false;
        };
        let place = expect_source
            || operator == Operator::Union
            || operator == Operator::Join { on: false };
        if !place || self.kind(i + 1) != Some(Kind::String) || self.text(i + 2) != "]" {
            return false;
        }
        let literal = self.tokens[i + 1];
        let Some(value) = string_value(literal.text(self.query)) else {
            return false;
        };
        let Some(table) = self.table(&value).cloned() else {
            return false;
        };
        self.replace_literal(i + 1, &table.replacement);
        self.out.findings.push(Located {
            line: self.line(i),
            finding: Finding::Reference {
                from: table.builtin,
                to: table.replacement,
            },
        });
        true
    }

    /// The frame a bracket at `i` opens.
    fn frame_for(&self, i: usize, top: Frame) -> Frame {
        let text = self.text(i);
        let prev = if i == 0 { "" } else { self.text(i - 1) };
        let after_call = i > 0 && self.kind(i - 1) == Some(Kind::Ident);
        // `in (`, `!in (` (prev is `in`), `in~ (` and `!in~ (` (prev is `~` after `in`).
        let opener =
            TABULAR_OPENERS.contains(&prev) || (prev == "~" && i >= 2 && self.text(i - 2) == "in");
        // `search in (A, B)`, `find in (A, B)`: a list of tables, as after `union`.
        if text == "("
            && prev == "in"
            && matches!(
                top,
                Frame::Tabular {
                    operator: Operator::Union,
                    ..
                }
            )
        {
            return Frame::Tabular {
                operator: Operator::Union,
                expect_source: false,
            };
        }
        let opens_tabular = match (text, top) {
            ("{", _) => prev != "dynamic",
            (
                "(",
                Frame::Tabular {
                    operator,
                    expect_source,
                    ..
                },
            ) => match operator {
                Operator::Union | Operator::Join { on: false } => true,
                Operator::Source if expect_source => !after_call || opener,
                _ => opener,
            },
            ("(", Frame::Scalar) => opener,
            _ => false,
        };
        if opens_tabular {
            Frame::Tabular {
                operator: Operator::Source,
                expect_source: true,
            }
        } else {
            Frame::Scalar
        }
    }

    /// A string literal naming one of our tables: `table("X")` is a reference; a comparison of
    /// `Type`/`$table`/the withsource column with it is widened to our rows' `Type`; anything
    /// else is reported.
    fn string(&mut self, i: usize) {
        let literal = self.tokens[i];
        let Some(value) = string_value(literal.text(self.query)) else {
            return;
        };
        // `=~`, `!~` and `in~` compare without case; everything else compares exactly.
        let caseless = i >= 1 && matches!(self.text(i - 1), "=~" | "!~");
        let Some(table) = self
            .names
            .iter()
            .find(|t| {
                if caseless {
                    t.builtin.eq_ignore_ascii_case(&value)
                } else {
                    t.builtin == value
                }
            })
            .cloned()
        else {
            return;
        };
        let line = self.line(i);
        let prev = |n: usize| {
            if i >= n {
                self.text(i - n).to_string()
            } else {
                String::new()
            }
        };
        // table("OfficeActivity")
        if prev(1) == "(" && prev(2) == "table" && self.text(i + 1) == ")" {
            self.replace_literal(i, &table.replacement);
            self.out.findings.push(Located {
                line,
                finding: Finding::Reference {
                    from: table.builtin,
                    to: table.replacement,
                },
            });
            return;
        }
        // Type == "OfficeActivity" → Type in ("OfficeActivity", "OfficeActivity_CL")
        let operator = prev(1);
        if self.source_columns.contains(&prev(2))
            && matches!(operator.as_str(), "==" | "=~" | "!=" | "!~")
        {
            let listed = match operator.as_str() {
                "==" => "in",
                "=~" => "in~",
                "!=" => "!in",
                _ => "!in~",
            };
            let original = literal.text(self.query);
            let operator_token = self.tokens[i - 1];
            // `Type=="X"` needs a space before `in`; a comment between the operator and the
            // literal would be lost, so such a comparison is reported instead.
            if self.query[operator_token.end..literal.start].contains("//") {
                self.out.findings.push(Located {
                    line,
                    finding: Finding::NameAsData {
                        table: table.builtin,
                        context: format!("{} {operator} {original}", prev(2)),
                    },
                });
                return;
            }
            let spaced = self.query[..operator_token.start]
                .ends_with(|c: char| c.is_whitespace() || c == '(');
            let text = format!(
                "{}{listed} ({original}, {})",
                if spaced { "" } else { " " },
                self.quoted_like(original, &table.output)
            );
            let was = format!("{} {operator} {original}", prev(2));
            self.out.edits.push(Edit {
                start: self.tokens[i - 1].start,
                end: literal.end,
                text,
            });
            self.out.findings.push(Located {
                line,
                finding: Finding::Comparison {
                    table: table.builtin,
                    was,
                },
            });
            return;
        }
        // Type in ("OfficeActivity", ...) → the _CL name added to the list.
        if let Some(subject) = self.list_opener(i).and_then(|o| self.in_subject(o))
            && self.source_columns.contains(self.text(subject))
        {
            let original = literal.text(self.query);
            let already = self.tokens.iter().any(|t| {
                t.kind == Kind::String
                    && string_value(t.text(self.query)).as_deref() == Some(table.output.as_str())
            });
            if !already {
                self.out.edits.push(Edit {
                    start: literal.end,
                    end: literal.end,
                    text: format!(", {}", self.quoted_like(original, &table.output)),
                });
                self.out.findings.push(Located {
                    line,
                    finding: Finding::Comparison {
                        table: table.builtin,
                        was: format!("{} in (... {original} ...)", self.text(subject)),
                    },
                });
            }
            return;
        }
        let context = self.query[self.tokens[i.saturating_sub(2)].start..literal.end].to_string();
        self.out.findings.push(Located {
            line,
            finding: Finding::NameAsData {
                table: table.builtin,
                context,
            },
        });
    }

    /// The index of the `(` of a literal list `(...)` holding the literal at `i`.
    fn list_opener(&self, i: usize) -> Option<usize> {
        for j in (0..i).rev() {
            match (self.kind(j), self.text(j)) {
                (_, "(") => return Some(j),
                (Some(Kind::String), _) | (_, ",") => {}
                _ => return None,
            }
        }
        None
    }

    /// The token index of `X` in `X in (`, `X !in (`, `X in~ (`, `X !in~ (`, given the `(`.
    fn in_subject(&self, opener: usize) -> Option<usize> {
        let mut j = opener.checked_sub(1)?;
        if self.text(j) == "~" {
            j = j.checked_sub(1)?;
        }
        if self.text(j) != "in" {
            return None;
        }
        j = j.checked_sub(1)?;
        if self.text(j) == "!" {
            j = j.checked_sub(1)?;
        }
        Some(j)
    }

    /// `name` as a literal in the quote style of `original`.
    fn quoted_like(&self, original: &str, name: &str) -> String {
        let quote = original
            .chars()
            .find(|c| *c == '\'' || *c == '"')
            .unwrap_or('"');
        format!("{quote}{name}{quote}")
    }

    fn replace_literal(&mut self, i: usize, name: &str) {
        let literal = self.tokens[i];
        let text = self.quoted_like(literal.text(self.query), name);
        self.out.edits.push(Edit {
            start: literal.start,
            end: literal.end,
            text,
        });
    }
}

/// The query with the edits applied (edits sorted, not overlapping).
pub fn apply(query: &str, edits: &[Edit]) -> String {
    let mut out = String::with_capacity(query.len() + edits.len() * 8);
    let mut at = 0;
    for edit in edits {
        out.push_str(&query[at..edit.start]);
        out.push_str(&edit.text);
        at = edit.end;
    }
    out.push_str(&query[at..]);
    out
}

#[cfg(test)]
#[path = "references_tests.rs"]
mod tests;
