//! A query as it sits inside a file: the decoded text the KQL tokenizer reads, and for every
//! decoded byte the raw bytes it came from, so an edit of the decoded query becomes an edit of
//! the file that touches nothing else. One per encoding: literal text (a `.kql` file, a YAML
//! block scalar), YAML single-quoted, and backslash-escaped (JSON strings, YAML double-quoted).

/// How the raw bytes encode the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Bytes as they are (indentation of a block scalar aside).
    Literal,
    /// `'...'` in YAML: a quote is written twice.
    SingleQuoted,
    /// `"..."` in JSON or YAML: backslash escapes.
    Escaped,
}

impl Encoding {
    /// `text` as it must be written in the raw file.
    pub fn encode(self, text: &str) -> String {
        match self {
            Self::Literal => text.to_string(),
            Self::SingleQuoted => text.replace('\'', "''"),
            Self::Escaped => text.replace('\\', "\\\\").replace('"', "\\\""),
        }
    }
}

/// Decoded text with its raw spans.
#[derive(Debug, Clone, Default)]
pub struct Scalar {
    pub text: String,
    /// Raw start and end offsets of the character each decoded byte belongs to.
    starts: Vec<usize>,
    ends: Vec<usize>,
    /// Raw offset just past the scalar's content (for an edit at the very end).
    raw_end: usize,
}

impl Scalar {
    pub fn push(&mut self, ch: char, raw_start: usize, raw_end: usize) {
        self.text.push(ch);
        for _ in 0..ch.len_utf8() {
            self.starts.push(raw_start);
            self.ends.push(raw_end);
        }
        self.raw_end = raw_end;
    }

    pub fn push_str(&mut self, s: &str, raw_start: usize) {
        for (i, ch) in s.char_indices() {
            let at = raw_start + i;
            self.push(ch, at, at + ch.len_utf8());
        }
    }

    pub fn set_raw_end(&mut self, raw_end: usize) {
        self.raw_end = raw_end;
    }

    /// The raw byte range of the decoded range `start..end` (`start == end`: an insertion).
    pub fn raw_range(&self, start: usize, end: usize) -> (usize, usize) {
        if start == end {
            let at = if start == 0 {
                self.starts.first().copied().unwrap_or(self.raw_end)
            } else {
                self.ends.get(start - 1).copied().unwrap_or(self.raw_end)
            };
            return (at, at);
        }
        let raw_start = self.starts.get(start).copied().unwrap_or(self.raw_end);
        let raw_end = self.ends.get(end - 1).copied().unwrap_or(self.raw_end);
        (raw_start, raw_end)
    }

    /// Raw text, literal: `raw[start..end]` taken as it is.
    pub fn literal(raw: &str, start: usize, end: usize) -> Scalar {
        let mut s = Scalar::default();
        s.push_str(&raw[start..end], start);
        s.set_raw_end(end);
        s
    }

    /// A backslash-escaped string body `raw[start..end]` (between the quotes), JSON rules.
    pub fn escaped(raw: &str, start: usize, end: usize) -> Option<Scalar> {
        let mut s = Scalar::default();
        let body = &raw[start..end];
        let mut chars = body.char_indices().peekable();
        while let Some((i, ch)) = chars.next() {
            let at = start + i;
            if ch != '\\' {
                s.push(ch, at, at + ch.len_utf8());
                continue;
            }
            let (_, esc) = chars.next()?;
            let decoded = match esc {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                'b' => '\u{8}',
                'f' => '\u{c}',
                '/' => '/',
                '"' => '"',
                '\\' => '\\',
                '\'' => '\'',
                'u' => {
                    let hex: String = (0..4)
                        .filter_map(|_| chars.next().map(|(_, c)| c))
                        .collect();
                    let code = u32::from_str_radix(&hex, 16).ok()?;
                    // A surrogate pair arrives as two escapes.
                    if (0xD800..0xDC00).contains(&code) {
                        let rest: String = (0..6)
                            .filter_map(|_| chars.next().map(|(_, c)| c))
                            .collect();
                        let low = u32::from_str_radix(rest.strip_prefix("\\u")?, 16).ok()?;
                        if !(0xDC00..0xE000).contains(&low) {
                            return None;
                        }
                        char::from_u32(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00))?
                    } else {
                        char::from_u32(code)?
                    }
                }
                _ => return None,
            };
            let raw_end = chars.peek().map_or(end, |(j, _)| start + j);
            s.push(decoded, at, raw_end);
        }
        s.set_raw_end(end);
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_ranges_cover_the_escapes() {
        let raw = r#"{"q": "A \"B\"\nC\u0041"}"#;
        let start = raw.find("A ").unwrap();
        let end = raw.rfind('"').unwrap();
        let s = Scalar::escaped(raw, start, end).unwrap();
        assert_eq!(s.text, "A \"B\"\nCA");
        // `"B"` in the text is `\"B\"` in the file.
        let (a, b) = s.raw_range(2, 5);
        assert_eq!(&raw[a..b], r#"\"B\""#);
        let (a, b) = s.raw_range(7, 8);
        assert_eq!(&raw[a..b], r"\u0041");
        assert_eq!(s.raw_range(8, 8), (end, end));
        assert_eq!(Encoding::Escaped.encode("in (\"x\")"), r#"in (\"x\")"#);
        assert_eq!(Encoding::SingleQuoted.encode("'x'"), "''x''");
    }
}
