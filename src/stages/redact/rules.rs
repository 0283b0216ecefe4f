//! Redaction rules: the YAML form (`redaction.yaml`, the config's `redaction.rules`), and
//! compiling each into its matcher with a file-and-rule error when it is wrong.

use super::*;

/// One rule as written in `redaction.yaml` or in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub kind: RuleKind,
    /// `regex` rules: what to find, and what to put in its place.
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub replacement: Option<String>,
    /// `name_value` rules: the names whose values are secrets.
    #[serde(default)]
    pub name_pattern: Option<String>,
    /// `json_key` rules: the object keys whose values are secrets.
    #[serde(default)]
    pub key_pattern: Option<String>,
    /// Columns the rule is limited to; absent means every string value.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
}

/// How a rule finds what to mask.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// A regular expression over text; `replacement` may use its capture groups.
    #[default]
    Regex,
    /// Objects shaped `{"Name": ..., "Value": ...}` (cmdlet Parameters, ModifiedProperties,
    /// ExtendedProperties): when the name matches `name_pattern`, `Value`, `NewValue` and
    /// `OldValue` are masked, whatever the key order, spacing or value type. Switch values
    /// (true/false) stay, so `ForceChangePassword: True` remains readable.
    NameValue,
    /// Any object key matching `key_pattern` (DLP's `DetectedValues`): its value, whatever it is,
    /// becomes `***REDACTED***`.
    JsonKey,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleFile {
    #[serde(default)]
    pub(super) rules: Vec<RuleSpec>,
}

#[derive(Debug, Clone)]
pub(super) enum Matcher {
    Regex {
        regex: Regex,
        replacement: String,
    },
    NameValue {
        names: Regex,
    },
    JsonKey {
        keys: Regex,
        literals: Option<Vec<String>>,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Rule {
    pub(super) name: String,
    pub(super) matcher: Matcher,
    pub(super) columns: Option<Vec<String>>,
}

impl Rule {
    pub(super) fn applies_to(&self, column: &str) -> bool {
        self.columns
            .as_ref()
            .is_none_or(|cols| cols.iter().any(|c| c == column))
    }
}

pub(super) fn compile(origin: &str, spec: RuleSpec) -> Result<Rule, SchemaError> {
    let fail = |message: String| SchemaError {
        file: origin.to_string(),
        line: None,
        message: format!("redaction rule {:?}: {message}", spec.name),
    };
    let only = |kind: &str, fields: &[(&str, bool)]| -> Result<(), SchemaError> {
        match fields.iter().find(|(_, set)| *set) {
            Some((field, _)) => Err(fail(format!("{field} does not belong to kind {kind}"))),
            None => Ok(()),
        }
    };
    let compile_regex = |what: &str, pattern: &str| {
        Regex::new(pattern).map_err(|e| fail(format!("invalid {what}: {e}")))
    };
    let matcher = match spec.kind {
        RuleKind::Regex => {
            let (Some(pattern), Some(replacement)) = (&spec.pattern, &spec.replacement) else {
                return Err(fail("a regex rule needs pattern and replacement".into()));
            };
            only(
                "regex",
                &[
                    ("name_pattern", spec.name_pattern.is_some()),
                    ("key_pattern", spec.key_pattern.is_some()),
                ],
            )?;
            Matcher::Regex {
                regex: compile_regex("pattern", pattern)?,
                replacement: replacement.clone(),
            }
        }
        RuleKind::NameValue => {
            let Some(pattern) = &spec.name_pattern else {
                return Err(fail("a name_value rule needs name_pattern".into()));
            };
            only(
                "name_value",
                &[
                    ("pattern", spec.pattern.is_some()),
                    ("replacement", spec.replacement.is_some()),
                    ("key_pattern", spec.key_pattern.is_some()),
                ],
            )?;
            Matcher::NameValue {
                names: compile_regex("name_pattern", pattern)?,
            }
        }
        RuleKind::JsonKey => {
            let Some(pattern) = &spec.key_pattern else {
                return Err(fail("a json_key rule needs key_pattern".into()));
            };
            only(
                "json_key",
                &[
                    ("pattern", spec.pattern.is_some()),
                    ("replacement", spec.replacement.is_some()),
                    ("name_pattern", spec.name_pattern.is_some()),
                ],
            )?;
            let literals = regex_syntax::parse(pattern)
                .ok()
                .and_then(|hir| prefilter::required(&hir));
            Matcher::JsonKey {
                keys: compile_regex("key_pattern", pattern)?,
                literals,
            }
        }
    };
    Ok(Rule {
        name: spec.name,
        matcher,
        columns: spec.columns,
    })
}
