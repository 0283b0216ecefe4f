//! The queries of a Sentinel YAML file (`query:` of rules and hunting queries, `ParserQuery:` and
//! `FunctionQuery:` of parsers), found by their exact bytes so the rest of the file is never
//! rewritten. Block scalars (`|`, `|-`, `>`), quoted and plain scalars are read by YAML's rules;
//! every decoded query is compared with what a YAML parser reads from the same file, so a form
//! read wrongly is an error for that file, never a silent wrong rewrite.

use super::scalar::{Encoding, Scalar};
use super::{ContentError, Site};

/// The keys whose values are KQL.
pub const QUERY_KEYS: [&str; 3] = ["query", "ParserQuery", "FunctionQuery"];

pub fn sites(raw: &str) -> Result<Vec<Site>, ContentError> {
    let parsed: serde_json::Value = yaml_serde::from_str(raw).map_err(|e| ContentError::Parse {
        line: e.location().map_or(0, |l| l.line()),
        message: e.to_string(),
    })?;
    let lines = line_starts(raw);
    let mut sites = Vec::new();
    // Inside another key's block scalar (a description quoting a query, say): not keys.
    let mut inside_block: Option<usize> = None;
    for (n, &line_start) in lines.iter().enumerate() {
        let line_end = lines.get(n + 1).copied().unwrap_or(raw.len());
        let line = raw[line_start..line_end].trim_end_matches(['\n', '\r']);
        let spaces = line.len() - line.trim_start_matches(' ').len();
        if let Some(block_indent) = inside_block {
            if line.trim_matches([' ', '\t']).is_empty() || spaces > block_indent {
                continue;
            }
            inside_block = None;
        }
        // `- query: ...` in a sequence: the key's indentation is after the dash.
        let (indent, rest) = match line[spaces..].strip_prefix("- ") {
            Some(rest) => (spaces + 2, rest),
            None => (spaces, &line[spaces..]),
        };
        let found = QUERY_KEYS.iter().find_map(|k| {
            let unquoted = [k.to_string(), format!("\"{k}\""), format!("'{k}'")];
            unquoted.into_iter().find_map(|written| {
                let after = rest.strip_prefix(written.as_str())?;
                after
                    .trim_start_matches(' ')
                    .starts_with(':')
                    .then_some((*k, written.len()))
            })
        });
        let Some((key, key_len)) = found else {
            if block_header(rest) {
                inside_block = Some(indent);
            }
            continue;
        };
        let after_key = &rest[key_len..];
        let colon = after_key.find(':').unwrap_or(0);
        let value_at = line_start + indent + key_len + colon + 1;
        let value = raw[value_at..line_start + line.len()].trim_start();
        let value_start = line_start + line.len() - value.len();
        let scalar = if value.starts_with('|') || value.starts_with('>') {
            inside_block = Some(indent);
            block(raw, &lines, n + 1, indent, value)
        } else if value.starts_with('\'') {
            single_quoted(raw, value_start)
        } else if value.starts_with('"') {
            double_quoted(raw, value_start)
        } else if value.is_empty() || value.starts_with('#') {
            // A value on the lines below: a form this tool does not read (counted below).
            continue;
        } else {
            Some((
                plain(raw, value_start, line_start + line.len()),
                Encoding::Literal,
            ))
        };
        let Some((scalar, encoding)) = scalar else {
            return Err(ContentError::Parse {
                line: n + 1,
                message: format!("the value of `{key}` is not a YAML scalar this tool can read"),
            });
        };
        check_against_parser(&parsed, key, &scalar.text, value, n + 1)?;
        sites.push(Site {
            field: key.to_string(),
            first_line: n + 1,
            scalar,
            encoding,
        });
    }
    // Every query the parser sees must have been located: none is skipped in silence.
    let mut in_document = Vec::new();
    for key in QUERY_KEYS {
        collect_strings(&parsed, key, &mut in_document);
    }
    if in_document.len() > sites.len() {
        return Err(ContentError::Parse {
            line: 1,
            message: format!(
                "{} of the file's {} queries are written in a YAML form this tool does not read (a value starting on the line below its key?); the file is left out",
                in_document.len() - sites.len(),
                in_document.len()
            ),
        });
    }
    Ok(sites)
}

/// Whether `rest` (a line after its indentation) is `key: |` or `key: >`, opening a block.
fn block_header(rest: &str) -> bool {
    let Some((key, value)) = rest.split_once(':') else {
        return false;
    };
    !key.contains(['#', '"', '\'']) && {
        let value = value.trim_start();
        value.starts_with('|') || value.starts_with('>')
    }
}

/// Byte offsets of the start of each line.
fn line_starts(raw: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(memchr::memchr_iter(b'\n', raw.as_bytes()).map(|i| i + 1))
        .filter(|&i| i < raw.len())
        .collect()
}

/// A block scalar whose header is `header` on the key's line; content lines start at `first`.
fn block(
    raw: &str,
    lines: &[usize],
    first: usize,
    key_indent: usize,
    header: &str,
) -> Option<(Scalar, Encoding)> {
    let explicit = header[1..]
        .split('#')
        .next()
        .unwrap_or("")
        .chars()
        .find(|c| c.is_ascii_digit())
        .and_then(|c| c.to_digit(10))
        .map(|d| key_indent + d as usize);
    let text_of = |n: usize| {
        let start = lines[n];
        let end = lines.get(n + 1).copied().unwrap_or(raw.len());
        (start, raw[start..end].trim_end_matches(['\n', '\r']))
    };
    let mut block_indent = explicit;
    let mut scalar = Scalar::default();
    let mut n = first;
    let mut last_content_end = lines.get(first).copied().unwrap_or(raw.len());
    while n < lines.len() {
        let (start, line) = text_of(n);
        let spaces = line.len() - line.trim_start_matches(' ').len();
        // Only spaces and tabs make a blank line: YAML reads U+2028 and friends as content.
        let blank = line.trim_matches([' ', '\t']).is_empty();
        if !blank {
            let indent = *block_indent.get_or_insert(spaces);
            if spaces < indent || indent <= key_indent {
                break;
            }
        }
        let indent = block_indent.unwrap_or(usize::MAX);
        if !scalar.text.is_empty() || n > first {
            scalar.push('\n', start.saturating_sub(1), start);
        }
        if let Some(content) = line.get(indent..) {
            scalar.push_str(content, start + indent);
        }
        last_content_end = start + line.len();
        n += 1;
    }
    scalar.set_raw_end(last_content_end);
    Some((scalar, Encoding::Literal))
}

/// `'...'` from `at` (the opening quote), folding line breaks the way YAML does.
fn single_quoted(raw: &str, at: usize) -> Option<(Scalar, Encoding)> {
    let mut scalar = Scalar::default();
    let bytes = raw.as_bytes();
    let mut i = at + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' if bytes.get(i + 1) == Some(&b'\'') => {
                scalar.push('\'', i, i + 2);
                i += 2;
            }
            b'\'' => {
                scalar.set_raw_end(i);
                return Some((scalar, Encoding::SingleQuoted));
            }
            b'\n' | b'\r' => i = fold(raw, i, &mut scalar),
            _ => {
                let ch = raw[i..].chars().next()?;
                scalar.push(ch, i, i + ch.len_utf8());
                i += ch.len_utf8();
            }
        }
    }
    None
}

/// `"..."` from `at` (the opening quote): backslash escapes, folded line breaks.
fn double_quoted(raw: &str, at: usize) -> Option<(Scalar, Encoding)> {
    let bytes = raw.as_bytes();
    let mut end = at + 1;
    while end < bytes.len() && bytes[end] != b'"' {
        end += if bytes[end] == b'\\' { 2 } else { 1 };
    }
    if end >= bytes.len() || raw[at + 1..end].contains('\n') {
        // Multi-line double-quoted queries are rare; the parser check would catch a misread,
        // so say plainly that this form is not handled.
        return None;
    }
    Scalar::escaped(raw, at + 1, end).map(|s| (s, Encoding::Escaped))
}

/// A plain scalar on one line, up to a ` #` comment.
fn plain(raw: &str, start: usize, end: usize) -> Scalar {
    let text = &raw[start..end];
    let cut = text.find(" #").unwrap_or(text.len());
    Scalar::literal(raw, start, start + text[..cut].trim_end().len())
}

/// A line break inside a quoted scalar: one space, or as many newlines as there were empty lines.
fn fold(raw: &str, mut i: usize, scalar: &mut Scalar) -> usize {
    let bytes = raw.as_bytes();
    let start = i;
    let mut newlines = 0;
    while i < bytes.len() && matches!(bytes[i], b'\n' | b'\r' | b' ' | b'\t') {
        if bytes[i] == b'\n' {
            newlines += 1;
        }
        i += 1;
    }
    if newlines <= 1 {
        scalar.push(' ', start, i);
    } else {
        for _ in 1..newlines {
            scalar.push('\n', start, i);
        }
    }
    i
}

/// The decoded query must be what a YAML parser reads at that key (trailing newlines aside).
fn check_against_parser(
    parsed: &serde_json::Value,
    key: &str,
    decoded: &str,
    header: &str,
    line: usize,
) -> Result<(), ContentError> {
    let mut found = Vec::new();
    collect_strings(parsed, key, &mut found);
    let folded = header.starts_with('>');
    let norm = |s: &str| -> String {
        if folded {
            s.split_whitespace().collect::<Vec<_>>().join(" ")
        } else {
            s.trim_end().to_string()
        }
    };
    let want = norm(decoded);
    if found.iter().any(|s| norm(s) == want) {
        return Ok(());
    }
    Err(ContentError::Parse {
        line,
        message: format!(
            "the `{key}` value could not be located byte for byte (a YAML form this tool does not read); the file is left out"
        ),
    })
}

fn collect_strings<'a>(value: &'a serde_json::Value, key: &str, out: &mut Vec<&'a str>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                if k == key
                    && let Some(s) = v.as_str()
                {
                    out.push(s);
                }
                collect_strings(v, key, out);
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                collect_strings(v, key, out);
            }
        }
        _ => {}
    }
}
