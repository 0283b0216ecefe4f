//! A literal prefilter for the regex rules. Most values hold nothing to mask, and a regex set
//! without literal prefixes (case-insensitive rules, rules that open with a character class)
//! must scan each of them; a multi-literal search is several times faster. For every rule we
//! derive literals at least one of which any match must contain; a text containing none of them
//! cannot match, so the regexes are skipped.
//!
//! It runs once per record, on the record's raw text, so a record with nothing to mask costs one
//! multi-literal scan instead of a regex scan per value. Sound only for ASCII text without
//! escapes: case-insensitive classes also match non-ASCII case variants (the Kelvin sign for `k`,
//! long s for `s`), and escapes change text; such records always go to the regexes.

use aho_corasick::AhoCorasick;
use regex_syntax::hir::{Class, Hir, HirKind};

/// Literal sets grow by cross products; past this size a set is not worth it.
const MAX_SET: usize = 64;

/// The ASCII character a class stands for, folding case: `[Pp]` → `p`, `[=]` → `=`.
fn class_char(class: &Class) -> Option<char> {
    let ascii: Vec<char> = match class {
        Class::Unicode(c) => c
            .ranges()
            .iter()
            .flat_map(|r| r.start()..=r.end())
            .take(300)
            .filter(char::is_ascii)
            .collect(),
        Class::Bytes(c) => c
            .ranges()
            .iter()
            .flat_map(|r| r.start()..=r.end())
            .filter(u8::is_ascii)
            .map(char::from)
            .collect(),
    };
    match ascii.as_slice() {
        [c] => Some(c.to_ascii_lowercase()),
        [a, b] if a.eq_ignore_ascii_case(b) => Some(a.to_ascii_lowercase()),
        _ => None,
    }
}

fn product(left: &[String], right: &[String]) -> Option<Vec<String>> {
    if left.len() * right.len() > MAX_SET {
        return None;
    }
    Some(
        left.iter()
            .flat_map(|l| right.iter().map(move |r| format!("{l}{r}")))
            .collect(),
    )
}

/// The strings `hir` matches, when it matches only a few fixed strings (lowercased).
fn exact(hir: &Hir) -> Option<Vec<String>> {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => Some(vec![String::new()]),
        HirKind::Literal(lit) => {
            let text = std::str::from_utf8(&lit.0).ok()?;
            text.is_ascii().then(|| vec![text.to_ascii_lowercase()])
        }
        HirKind::Class(class) => class_char(class).map(|c| vec![c.to_string()]),
        HirKind::Capture(cap) => exact(&cap.sub),
        HirKind::Repetition(rep) if rep.min == 1 && rep.max == Some(1) => exact(&rep.sub),
        HirKind::Repetition(_) => None,
        HirKind::Concat(items) => items.iter().try_fold(vec![String::new()], |acc, item| {
            product(&acc, &exact(item)?)
        }),
        HirKind::Alternation(alts) => {
            let mut all = Vec::new();
            for alt in alts {
                all.extend(exact(alt)?);
            }
            (all.len() <= MAX_SET).then_some(all)
        }
    }
}

/// How useful a required set is: the shortest literal in it (an empty one requires nothing).
fn score(set: &[String]) -> usize {
    set.iter().map(String::len).min().unwrap_or(0)
}

fn better(a: Option<Vec<String>>, b: Option<Vec<String>>) -> Option<Vec<String>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if score(&b) > score(&a) { b } else { a }),
        (a, b) => a.or(b),
    }
    .filter(|s| score(s) > 0)
}

/// Literals one of which every match of `hir` contains, lowercased; None when there are none.
pub fn required(hir: &Hir) -> Option<Vec<String>> {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) | HirKind::Class(_) | HirKind::Literal(_) => {
            exact(hir).filter(|s| score(s) > 0)
        }
        HirKind::Capture(cap) => required(&cap.sub),
        HirKind::Repetition(rep) if rep.min >= 1 => required(&rep.sub),
        HirKind::Repetition(_) => None,
        HirKind::Alternation(alts) => {
            let mut all = Vec::new();
            for alt in alts {
                all.extend(required(alt)?);
            }
            (all.len() <= MAX_SET).then_some(all)
        }
        HirKind::Concat(items) => {
            // Runs of adjacent fixed pieces form longer literals ("bearer", "sig=").
            let mut best = None;
            let mut run: Option<Vec<String>> = None;
            for item in items {
                match exact(item) {
                    Some(set) => {
                        run = match run.take() {
                            None => Some(set),
                            Some(r) => match product(&r, &set) {
                                Some(p) => Some(p),
                                None => {
                                    best = better(best, Some(r));
                                    Some(set)
                                }
                            },
                        }
                    }
                    None => {
                        best = better(best, run.take());
                        best = better(best, required(item));
                    }
                }
            }
            better(best, run)
        }
    }
}

/// Characters that may be spelled differently in a record's raw text and in the texts redaction
/// sees: compaction drops whitespace next to structure, and escapes stand for quotes,
/// backslashes, slashes and control characters.
fn is_structural(c: char) -> bool {
    c.is_ascii_whitespace()
        || c.is_ascii_control()
        || matches!(c, '"' | ':' | ',' | '[' | ']' | '{' | '}' | '/' | '\\')
}

/// The longest piece of `literal` without structural characters.
fn core_of(literal: &str) -> &str {
    literal
        .split(is_structural)
        .max_by_key(|piece| piece.len())
        .unwrap_or("")
}

/// Literals (lowercase, without structural characters) one of which any match of any of the
/// regex rules contains. A record's raw text that holds none of them cannot give any rule a
/// match, provided the text is ASCII and has no escapes (see [`Prefilter::may_match`]).
#[derive(Debug, Clone)]
pub struct Prefilter {
    /// Teddy (SIMD) when the CPU has it, else an Aho-Corasick automaton.
    packed: Option<aho_corasick::packed::Searcher>,
    automaton: AhoCorasick,
}

impl Prefilter {
    /// None when some rule has no usable literal: then every record goes to the regexes.
    pub fn build(patterns: &[&str]) -> Option<Self> {
        let mut literals: Vec<String> = Vec::new();
        for pattern in patterns {
            let hir = regex_syntax::parse(pattern).ok()?;
            for literal in required(&hir)? {
                let core = core_of(&literal);
                if core.is_empty() {
                    return None;
                }
                literals.push(core.to_string());
            }
        }
        // A literal holding another is redundant: finding the shorter one is enough.
        literals.sort_by_key(String::len);
        literals.dedup();
        let mut minimal: Vec<String> = Vec::new();
        for literal in literals {
            if !minimal.iter().any(|m| literal.contains(m.as_str())) {
                minimal.push(literal);
            }
        }
        if minimal.is_empty() {
            return None;
        }
        Some(Self {
            packed: aho_corasick::packed::Searcher::new(minimal.iter()),
            automaton: AhoCorasick::new(&minimal).ok()?,
        })
    }

    /// False when no value derived from `raw` (a record's JSON text) can match any rule. A
    /// literal found in a decoded value is in the raw text too: compaction only drops whitespace
    /// outside strings, the literals hold no whitespace or structure, and escapes other than
    /// `\u` only stand for characters no literal holds.
    pub fn may_match(&self, raw: &str) -> bool {
        if !raw.is_ascii() || raw.contains("\\u") {
            return true;
        }
        let lower = raw.to_ascii_lowercase();
        match &self.packed {
            Some(teddy) => teddy.find(&lower).is_some(),
            None => self.automaton.is_match(&lower),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pattern: &str) -> Option<Vec<String>> {
        required(&regex_syntax::parse(pattern).unwrap()).map(|mut v| {
            v.sort();
            v
        })
    }

    #[test]
    fn literal_cores_leave_out_structure() {
        assert_eq!(core_of("\"detectedvalues\":["), "detectedvalues");
        assert_eq!(core_of("sig="), "sig=");
        assert_eq!(core_of(" :"), "");
    }

    #[test]
    fn literals_of_typical_rules() {
        assert_eq!(
            req(r"(?i)(\bbearer\s+)[A-Za-z0-9]{8,}").unwrap(),
            ["bearer"]
        );
        assert_eq!(req(r"(?i)([?&]sig=)[^&\s]+").unwrap(), ["sig="]);
        assert_eq!(req(r"\beyJ[A-Za-z0-9_-]{6,}\.eyJ").unwrap(), [".eyj"]);
        assert_eq!(req(r"(?i)(pwd|password)=").unwrap(), ["password=", "pwd="]);
        assert_eq!(req(r"[0-9]+"), None);
        assert_eq!(req(r"a?b*"), None);
    }

    #[test]
    fn the_prefilter_never_hides_a_match() {
        let patterns = [
            r"(?i)((?:^|[\s;&?,(])(?:-|--|/)(?:password|pwd)(?:\s+|:))\S+",
            r"(?i)(\bbearer\s+)[A-Za-z0-9\-._~+/]{8,}=*",
            r"(?i)([?&]sig=)[^&\s]+",
            r"\beyJ[A-Za-z0-9_-]{6,}\.eyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]+",
        ];
        let pre = Prefilter::build(&patterns).expect("every rule has literals");
        let set = regex::RegexSet::new(patterns).unwrap();
        let pieces = [
            "-",
            "/",
            "Password",
            "PWD",
            " ",
            ":",
            "x",
            "bearer",
            "BEARER ",
            "abcdefghij",
            "?",
            "&",
            "sig=",
            "SiG=",
            "eyJ",
            "eyJabcdefg.",
            ".",
            "=",
            "é",
            "K",
            "\u{212A}ey",
        ];
        let mut state = 0x2545_F491_4F6C_DD1D_u64;
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..(state % 9) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push_str(pieces[(state % pieces.len() as u64) as usize]);
            }
            state = state.wrapping_add(0x9E37_79B9);
            if set.is_match(&text) {
                assert!(pre.may_match(&text), "prefilter hid a match in {text:?}");
            }
        }
    }
}
