//! A KQL tokenizer: just enough of the language's lexical grammar to know, for every byte of a
//! query, whether it is code, a string literal or a comment. Table references are then found
//! among real tokens, so a name inside `"..."`, `@'...'`, ```` ```...``` ````, `h'...'` or a `//`
//! comment is never touched.
//!
//! Grammar followed: Kusto's "String data type" (plain, verbatim `@`, multi-line ```` ``` ```` and
//! `~~~`, obfuscated `h`/`H` prefixes) and "Entity names" (`['name']`, `["name"]`) pages of the
//! KQL reference on Microsoft Learn.

use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A name: letters, digits, `_`, and `$` at the start (`$table`, `$left`).
    Ident,
    /// A string literal of any form, quotes and prefixes included.
    String,
    /// A number, with any unit suffix (`1d`, `10m`, `0x1F`, `1.5e3`).
    Number,
    /// One or more characters of punctuation or an operator (`|`, `==`, `!=`, `=~`, `(`).
    Punct,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub kind: Kind,
    /// Byte range in the query text.
    pub start: usize,
    pub end: usize,
}

impl Token {
    pub fn text<'a>(&self, query: &'a str) -> &'a str {
        &query[self.start..self.end]
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LexError {
    #[error("line {line}: string literal never closed")]
    UnclosedString { line: usize },
    #[error("line {line}: unexpected character {ch:?}")]
    UnexpectedChar { line: usize, ch: char },
}

impl LexError {
    /// The 1-based line in the query, and what is wrong there.
    pub fn parts(&self) -> (usize, String) {
        match self {
            Self::UnclosedString { line } => (*line, "string literal never closed".into()),
            Self::UnexpectedChar { line, ch } => (*line, format!("unexpected character {ch:?}")),
        }
    }
}

/// The 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Punctuation that forms one token when the characters are adjacent.
const MULTI_PUNCT: [&str; 10] = ["==", "!=", "=~", "!~", "<=", ">=", "<>", "=>", "..", "<|"];

/// Every code token of `query`; whitespace and comments are skipped.
pub fn tokenize(query: &str) -> Result<Vec<Token>, LexError> {
    let bytes = query.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let start = i;
        if b.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if b == b'/' && bytes.get(i + 1) == Some(&b'/') {
            i = memchr::memchr(b'\n', &bytes[i..]).map_or(bytes.len(), |n| i + n);
            continue;
        }
        let string_end = string_literal(query, i)?;
        if let Some(end) = string_end {
            tokens.push(Token {
                kind: Kind::String,
                start,
                end,
            });
            i = end;
            continue;
        }
        if b.is_ascii_alphabetic() || b == b'_' || b == b'$' {
            i += 1;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            tokens.push(Token {
                kind: Kind::Ident,
                start,
                end: i,
            });
            continue;
        }
        if b.is_ascii_digit() {
            i = number_end(bytes, i);
            tokens.push(Token {
                kind: Kind::Number,
                start,
                end: i,
            });
            continue;
        }
        if b.is_ascii_punctuation() {
            let len = if MULTI_PUNCT
                .iter()
                .any(|p| bytes[i..].starts_with(p.as_bytes()))
            {
                2
            } else {
                1
            };
            i += len;
            tokens.push(Token {
                kind: Kind::Punct,
                start,
                end: i,
            });
            continue;
        }
        // Non-ASCII outside strings and comments: KQL names are ASCII; say where it is.
        let ch = query[i..].chars().next().unwrap_or('\u{FFFD}');
        if ch.is_whitespace() {
            i += ch.len_utf8();
            continue;
        }
        return Err(LexError::UnexpectedChar {
            line: line_of(query, i),
            ch,
        });
    }
    Ok(tokens)
}

/// The end of a string literal starting at `i`, or `None` when no literal starts there.
fn string_literal(query: &str, i: usize) -> Result<Option<usize>, LexError> {
    let bytes = query.as_bytes();
    let unclosed = || LexError::UnclosedString {
        line: line_of(query, i),
    };
    // Multi-line literals: ```...``` and ~~~...~~~, no escapes.
    for fence in ["```", "~~~"] {
        if bytes[i..].starts_with(fence.as_bytes()) {
            let body = i + 3;
            let close =
                memchr::memmem::find(&bytes[body..], fence.as_bytes()).ok_or_else(unclosed)?;
            return Ok(Some(body + close + 3));
        }
    }
    // Prefixes: h/H (obfuscated), then @ (verbatim); a name that merely starts with h is not one.
    let mut j = i;
    if matches!(bytes[j], b'h' | b'H') && matches!(bytes.get(j + 1), Some(b'\'' | b'"' | b'@')) {
        if bytes.get(j + 1) == Some(&b'@') && !matches!(bytes.get(j + 2), Some(b'\'' | b'"')) {
            return Ok(None);
        }
        j += 1;
    }
    let verbatim = bytes[j] == b'@';
    if verbatim {
        if !matches!(bytes.get(j + 1), Some(b'\'' | b'"')) {
            return Ok(None);
        }
        j += 1;
    }
    let quote = bytes[j];
    if quote != b'\'' && quote != b'"' {
        return Ok(None);
    }
    let mut k = j + 1;
    while k < bytes.len() {
        match bytes[k] {
            b'\\' if !verbatim => k += 2,
            c if c == quote => {
                // Verbatim literals write a quote as two quotes.
                if verbatim && bytes.get(k + 1) == Some(&quote) {
                    k += 2;
                } else {
                    return Ok(Some(k + 1));
                }
            }
            b'\n' if !verbatim => return Err(unclosed()),
            _ => k += 1,
        }
    }
    Err(unclosed())
}

/// The end of a number (with a unit or type suffix, an exponent, a fraction).
fn number_end(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() {
        let b = bytes[i];
        let exponent_sign = matches!(b, b'+' | b'-') && matches!(bytes[i - 1], b'e' | b'E');
        let fraction = b == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
        if b.is_ascii_alphanumeric() || b == b'_' || fraction || exponent_sign {
            i += 1;
        } else {
            break;
        }
    }
    i
}

/// The value of a plain or verbatim string literal token (for `table("X")` and comparisons);
/// `None` for obfuscated and multi-line forms, which the rewrite leaves alone.
pub fn string_value(literal: &str) -> Option<String> {
    let bytes = literal.as_bytes();
    let (verbatim, body) = match bytes.first()? {
        b'@' => (true, &literal[1..]),
        b'\'' | b'"' => (false, literal),
        _ => return None,
    };
    let quote = body.chars().next()?;
    let inner = body.strip_prefix(quote)?.strip_suffix(quote)?;
    if verbatim {
        let doubled: String = [quote, quote].iter().collect();
        return Some(inner.replace(&doubled, &quote.to_string()));
    }
    if inner.contains('\\') {
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next()? {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    other => out.push(other),
                }
            } else {
                out.push(c);
            }
        }
        return Some(out);
    }
    Some(inner.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(q: &str) -> Vec<(Kind, &str)> {
        tokenize(q)
            .unwrap()
            .into_iter()
            .map(|t| (t.kind, t.text(q)))
            .collect()
    }

    #[test]
    fn every_string_form_is_one_token() {
        for literal in [
            r#""a \" OfficeActivity""#,
            r"'it\'s OfficeActivity'",
            "@'C:\\OfficeActivity'",
            "@'it''s'",
            "@\"say \"\"hi\"\"\"",
            "```multi\nline OfficeActivity```",
            "~~~multi\nline~~~",
            "h'secret'",
            "H\"secret\"",
            "h@'secret'",
        ] {
            let q = format!("print x = {literal} | take 1");
            let tokens = kinds(&q);
            assert_eq!(tokens[3], (Kind::String, literal), "{q}");
            assert_eq!(tokens.len(), 7, "{q}: {tokens:?}");
        }
    }

    #[test]
    fn comments_and_whitespace_are_skipped() {
        let q = "OfficeActivity // OfficeActivity here\n| take 1";
        assert_eq!(
            kinds(q),
            vec![
                (Kind::Ident, "OfficeActivity"),
                (Kind::Punct, "|"),
                (Kind::Ident, "take"),
                (Kind::Number, "1"),
            ]
        );
    }

    #[test]
    fn names_operators_and_numbers() {
        let q = "T | where a == 1d and b !~ 'x' and c >= 1.5e-3 | extend $table";
        let tokens = kinds(q);
        assert!(tokens.contains(&(Kind::Punct, "==")));
        assert!(tokens.contains(&(Kind::Punct, "!~")));
        assert!(tokens.contains(&(Kind::Number, "1d")));
        assert!(tokens.contains(&(Kind::Number, "1.5e-3")));
        assert!(tokens.contains(&(Kind::Ident, "$table")));
        // A name starting with h is a name, not an obfuscated string.
        assert_eq!(kinds("has_any(x)")[0], (Kind::Ident, "has_any"));
        assert_eq!(kinds("h")[0], (Kind::Ident, "h"));
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(
            tokenize("T\n| where x == 'open").unwrap_err(),
            LexError::UnclosedString { line: 2 }
        );
        assert_eq!(
            tokenize("T\n\n| where x == ```open").unwrap_err(),
            LexError::UnclosedString { line: 3 }
        );
        assert!(matches!(
            tokenize("T | where x == é").unwrap_err(),
            LexError::UnexpectedChar { line: 1, .. }
        ));
    }

    #[test]
    fn string_values() {
        assert_eq!(
            string_value("\"OfficeActivity\"").unwrap(),
            "OfficeActivity"
        );
        assert_eq!(string_value("'a\\'b'").unwrap(), "a'b");
        assert_eq!(string_value("@'a''b'").unwrap(), "a'b");
        assert_eq!(string_value("h'x'"), None);
    }
}
