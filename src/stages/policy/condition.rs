//! The `when` of a policy rule: tests on a row's mapped columns or its record's fields,
//! combined with all / any / not.

use std::borrow::Cow;
use std::cell::OnceCell;

use serde_json::value::RawValue;

use crate::stages::decode::Fields;
use crate::stages::map::json::decode_string;

/// Where a tested value comes from.
#[derive(Debug, Clone)]
pub enum Operand {
    /// A column of the mapped row, as it will be sent.
    Column(String),
    /// A top-level field of the record as the source sent it (a Defender row's `properties`).
    Field(String),
}

#[derive(Debug, Clone, Copy)]
pub enum Compare {
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone)]
pub enum Test {
    /// The value's text (a string decoded; anything else its JSON) equals this, or, for a
    /// number, has the same numeric value; a boolean matches either spelling (True, true).
    Equals(Expected),
    In(Vec<Expected>),
    Matches(regex::Regex),
    /// The value as a number (a JSON number or a string holding one); false when it is neither.
    Compare(Compare, f64),
    /// Present, not null and not "".
    Exists(bool),
}

/// One expected value, with the forms it may match.
#[derive(Debug, Clone)]
pub struct Expected {
    pub text: String,
    pub number: Option<f64>,
    pub boolean: Option<bool>,
}

impl Expected {
    fn matches(&self, text: &str) -> bool {
        if text == self.text {
            return true;
        }
        if let Some(b) = self.boolean {
            return text.eq_ignore_ascii_case(if b { "true" } else { "false" });
        }
        self.number
            .is_some_and(|n| text.parse::<f64>().is_ok_and(|v| v == n))
    }
}

#[derive(Debug, Clone)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    Leaf { operand: Operand, test: Test },
}

impl Condition {
    /// Whether any test reads the mapped row (so the row must be parsed).
    pub fn reads_columns(&self) -> bool {
        match self {
            Self::All(c) | Self::Any(c) => c.iter().any(Self::reads_columns),
            Self::Not(c) => c.reads_columns(),
            Self::Leaf { operand, .. } => matches!(operand, Operand::Column(_)),
        }
    }

    pub fn holds(&self, subject: &Subject<'_>) -> bool {
        match self {
            Self::All(c) => c.iter().all(|c| c.holds(subject)),
            Self::Any(c) => c.iter().any(|c| c.holds(subject)),
            Self::Not(c) => !c.holds(subject),
            Self::Leaf { operand, test } => {
                let value = subject.value(operand);
                let text = value.as_deref();
                match test {
                    Test::Exists(want) => text.is_some_and(|t| !t.is_empty()) == *want,
                    Test::Equals(e) => text.is_some_and(|t| e.matches(t)),
                    Test::In(set) => text.is_some_and(|t| set.iter().any(|e| e.matches(t))),
                    Test::Matches(re) => text.is_some_and(|t| re.is_match(t)),
                    Test::Compare(op, bound) => text
                        .and_then(|t| t.trim().parse::<f64>().ok())
                        .is_some_and(|v| match op {
                            Compare::Gt => v > *bound,
                            Compare::Ge => v >= *bound,
                            Compare::Lt => v < *bound,
                            Compare::Le => v <= *bound,
                        }),
                }
            }
        }
    }
}

/// What a rule is tested against: the record's fields and the mapped row, parsed only if a
/// test reads a column.
pub struct Subject<'a> {
    fields: &'a Fields<'a>,
    json: &'a str,
    row: OnceCell<Option<Fields<'a>>>,
}

impl<'a> Subject<'a> {
    pub fn new(fields: &'a Fields<'a>, json: &'a str) -> Self {
        Self {
            fields,
            json,
            row: OnceCell::new(),
        }
    }

    /// The mapped row's value of `column`.
    pub fn column(&self, column: &str) -> Option<&'a RawValue> {
        self.row
            .get_or_init(|| Fields::parse(self.json).ok())
            .as_ref()
            .and_then(|row| row.get(column))
    }

    pub fn field(&self, field: &str) -> Option<&'a RawValue> {
        self.fields.get(field)
    }

    /// A value's text: a string decoded, anything else as its JSON; None when missing or null.
    pub fn value(&self, operand: &Operand) -> Option<Cow<'a, str>> {
        let raw = match operand {
            Operand::Column(c) => self.column(c),
            Operand::Field(f) => self.field(f),
        }?;
        text_of(raw)
    }
}

/// The text of a JSON value: a string decoded, null as None, anything else as its JSON text.
pub fn text_of(raw: &RawValue) -> Option<Cow<'_, str>> {
    let json = raw.get();
    match json.as_bytes().first() {
        Some(b'"') => decode_string(json),
        _ if json == "null" => None,
        _ => Some(Cow::Borrowed(json)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(text: &str) -> Expected {
        Expected {
            text: text.into(),
            number: text.parse().ok(),
            boolean: None,
        }
    }

    fn leaf(operand: Operand, test: Test) -> Condition {
        Condition::Leaf { operand, test }
    }

    #[test]
    fn tests_read_columns_and_fields_and_combine() {
        let record =
            r#"{"Workload":"MicrosoftTeams","Operation":"MessageRead","Count":"12","Flag":null}"#;
        let row = r#"{"Operation":"MessageRead","ResultStatus":"True","Size":12.0,"Empty":""}"#;
        let fields = Fields::parse(record).unwrap();
        let subject = Subject::new(&fields, row);
        let column = |c: &str| Operand::Column(c.into());
        let field = |f: &str| Operand::Field(f.into());
        let reads = leaf(column("Operation"), Test::Equals(expected("MessageRead")));
        assert!(reads.holds(&subject));
        assert!(reads.reads_columns());
        let teams = leaf(field("Workload"), Test::Equals(expected("MicrosoftTeams")));
        assert!(!teams.reads_columns());
        assert!(Condition::All(vec![reads.clone(), teams.clone()]).holds(&subject));
        assert!(!Condition::Not(Box::new(teams.clone())).holds(&subject));
        let other = leaf(field("Workload"), Test::Equals(expected("Exchange")));
        assert!(Condition::Any(vec![other.clone(), teams]).holds(&subject));
        assert!(!Condition::All(vec![other, reads]).holds(&subject));
        // Numbers by value, in a string or not; booleans in either spelling.
        assert!(leaf(column("Size"), Test::Equals(expected("12"))).holds(&subject));
        assert!(leaf(field("Count"), Test::Compare(Compare::Ge, 12.0)).holds(&subject));
        assert!(!leaf(field("Count"), Test::Compare(Compare::Gt, 12.0)).holds(&subject));
        let truthy = Expected {
            text: "true".into(),
            number: None,
            boolean: Some(true),
        };
        assert!(leaf(column("ResultStatus"), Test::Equals(truthy)).holds(&subject));
        let re = regex::Regex::new("^Message").unwrap();
        assert!(leaf(field("Operation"), Test::Matches(re)).holds(&subject));
        let set = vec![expected("FileAccessed"), expected("MessageRead")];
        assert!(leaf(column("Operation"), Test::In(set)).holds(&subject));
        // Missing, null and "" don't exist; a missing value matches no test.
        for absent in ["Flag", "Nothing"] {
            assert!(leaf(field(absent), Test::Exists(false)).holds(&subject));
            assert!(!leaf(field(absent), Test::Equals(expected(""))).holds(&subject));
        }
        assert!(leaf(column("Empty"), Test::Exists(false)).holds(&subject));
        assert!(leaf(column("Operation"), Test::Exists(true)).holds(&subject));
    }
}
