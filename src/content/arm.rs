//! The queries of an ARM template as a workspace exports it: `properties.query` of every
//! resource whose type is an alert rule, a saved search or a hunting query, located by a walk
//! over the raw JSON so the rewrite changes the query's bytes and nothing else.

use serde_json::Value;

use super::scalar::{Encoding, Scalar};
use super::{ContentError, Site};
use crate::content::lexer::line_of;

/// Resource types (by suffix) whose `properties.query` is KQL.
pub const QUERY_RESOURCE_TYPES: [&str; 3] = ["/alertRules", "/savedSearches", "/huntingQueries"];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

pub fn sites(raw: &str) -> Result<Vec<Site>, ContentError> {
    let parsed: Value = serde_json::from_str(raw).map_err(|e| ContentError::Parse {
        line: e.line(),
        message: e.to_string(),
    })?;
    let mut strings = Vec::new();
    let mut walker = Walker {
        raw: raw.as_bytes(),
        at: 0,
        path: Vec::new(),
        out: &mut strings,
    };
    walker.value().map_err(|at| ContentError::Parse {
        line: line_of(raw, at),
        message: "malformed JSON".into(),
    })?;
    let mut sites = Vec::new();
    for (path, start, end) in strings {
        let [parent @ .., Step::Key(props), Step::Key(query)] = path.as_slice() else {
            continue;
        };
        if props != "properties" || query != "query" {
            continue;
        }
        let Some(resource) = lookup(&parsed, parent) else {
            continue;
        };
        let kind = resource.get("type").and_then(Value::as_str).unwrap_or("");
        // ARM resource types are case-insensitive (`savedsearches` is seen in exports).
        let kind = kind.to_ascii_lowercase();
        if !QUERY_RESOURCE_TYPES
            .iter()
            .any(|t| kind.ends_with(&t.to_ascii_lowercase()))
        {
            continue;
        }
        let scalar = Scalar::escaped(raw, start, end).ok_or_else(|| ContentError::Parse {
            line: line_of(raw, start),
            message: "a query string with an invalid escape".into(),
        })?;
        sites.push(Site {
            field: "properties.query".into(),
            first_line: line_of(raw, start),
            scalar,
            encoding: Encoding::Escaped,
        });
    }
    Ok(sites)
}

fn lookup<'a>(value: &'a Value, path: &[Step]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, step| match step {
        Step::Key(k) => v.get(k),
        Step::Index(i) => v.get(i),
    })
}

/// Every string value of the document with its path and the raw range of its body.
struct Walker<'a, 'o> {
    raw: &'a [u8],
    at: usize,
    path: Vec<Step>,
    out: &'o mut Vec<(Vec<Step>, usize, usize)>,
}

impl Walker<'_, '_> {
    fn skip_ws(&mut self) {
        while self.at < self.raw.len() && self.raw[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
    }

    fn value(&mut self) -> Result<(), usize> {
        self.skip_ws();
        match self.raw.get(self.at) {
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b'"') => {
                let (start, end) = self.string()?;
                self.out.push((self.path.clone(), start, end));
                Ok(())
            }
            Some(_) => {
                while self.at < self.raw.len() && !matches!(self.raw[self.at], b',' | b'}' | b']') {
                    self.at += 1;
                }
                Ok(())
            }
            None => Err(self.at),
        }
    }

    /// A string at `at`; returns the body's range (without the quotes).
    fn string(&mut self) -> Result<(usize, usize), usize> {
        let start = self.at + 1;
        let mut i = start;
        while i < self.raw.len() {
            match self.raw[i] {
                b'\\' => i += 2,
                b'"' => {
                    self.at = i + 1;
                    return Ok((start, i));
                }
                _ => i += 1,
            }
        }
        Err(self.at)
    }

    fn object(&mut self) -> Result<(), usize> {
        self.at += 1;
        loop {
            self.skip_ws();
            match self.raw.get(self.at) {
                Some(b'}') => {
                    self.at += 1;
                    return Ok(());
                }
                Some(b',') => self.at += 1,
                Some(b'"') => {
                    let (start, end) = self.string()?;
                    let key = String::from_utf8_lossy(&self.raw[start..end]).into_owned();
                    self.skip_ws();
                    if self.raw.get(self.at) != Some(&b':') {
                        return Err(self.at);
                    }
                    self.at += 1;
                    self.path.push(Step::Key(key));
                    self.value()?;
                    self.path.pop();
                }
                _ => return Err(self.at),
            }
        }
    }

    fn array(&mut self) -> Result<(), usize> {
        self.at += 1;
        let mut index = 0;
        loop {
            self.skip_ws();
            match self.raw.get(self.at) {
                Some(b']') => {
                    self.at += 1;
                    return Ok(());
                }
                Some(b',') => {
                    self.at += 1;
                    index += 1;
                }
                Some(_) => {
                    self.path.push(Step::Index(index));
                    self.value()?;
                    self.path.pop();
                }
                None => return Err(self.at),
            }
        }
    }
}
