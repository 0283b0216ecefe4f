//! Redaction: masks secrets that leak into audit payloads (passwords in cmdlet parameters, bearer
//! tokens, SAS signatures, connection-string keys, DLP detected values) before a row leaves the
//! mapper, so nothing downstream (spool, dead letters, dry-run files, the workspace) holds them.

mod prefilter;

use std::borrow::Cow;

use regex::{Regex, RegexSet};
use serde::Deserialize;
use serde_json::Value;

use crate::schema::{REDACTION_FILE, SchemaError, SchemaErrors, SchemaFiles, SchemaSet};

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
struct RuleFile {
    #[serde(default)]
    rules: Vec<RuleSpec>,
}

#[derive(Debug, Clone)]
enum Matcher {
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
struct Rule {
    name: String,
    matcher: Matcher,
    columns: Option<Vec<String>>,
}

impl Rule {
    fn applies_to(&self, column: &str) -> bool {
        self.columns
            .as_ref()
            .is_none_or(|cols| cols.iter().any(|c| c == column))
    }
}

/// What masked Name/Value values become.
pub const MASK: &str = "***REDACTED***";

const NAME_KEYS: [&str; 2] = ["Name", "name"];
const VALUE_KEYS: [&str; 6] = [
    "Value", "NewValue", "OldValue", "value", "newValue", "oldValue",
];

/// The string values of "Name"/"name" keys in a JSON text, found by a scan rather than a parse
/// (one SIMD search for `ame"`, then a look around each hit).
fn name_values(json: &str) -> impl Iterator<Item = Cow<'_, str>> {
    let bytes = json.as_bytes();
    memchr::memmem::find_iter(bytes, b"ame\"").filter_map(move |at| {
        let key_start = at.checked_sub(2)?;
        if bytes[key_start] != b'"' || !matches!(bytes[key_start + 1], b'N' | b'n') {
            return None;
        }
        let rest = json
            .get(at + 4..)?
            .trim_start()
            .strip_prefix(':')?
            .trim_start();
        if !rest.starts_with('"') {
            return None;
        }
        let token = rest.as_bytes();
        let mut i = 1;
        while i < token.len() && token[i] != b'"' {
            i += if token[i] == b'\\' { 2 } else { 1 };
        }
        crate::map::json::decode_string(rest.get(..(i + 1).min(rest.len()))?)
    })
}

/// The shape of a JSON text: its structure outside strings, and its object keys. None when it
/// is not valid JSON.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    structure: Vec<u8>,
    keys: Vec<String>,
}

fn json_shape(json: &str) -> Option<Shape> {
    serde_json::from_str::<serde::de::IgnoredAny>(json).ok()?;
    let bytes = json.as_bytes();
    let mut structure = Vec::new();
    let mut keys = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                let end = (i + 1).min(bytes.len());
                let is_key = bytes[end..]
                    .iter()
                    .find(|b| !b.is_ascii_whitespace())
                    .is_some_and(|b| *b == b':');
                structure.push(b'"');
                if is_key {
                    keys.push(json.get(start..end)?.to_string());
                }
                i = end;
            }
            b @ (b'{' | b'}' | b'[' | b']' | b':' | b',') => {
                structure.push(b);
                i += 1;
            }
            _ => i += 1,
        }
    }
    Some(Shape { structure, keys })
}

/// A value a switch parameter holds: nothing secret in it.
fn is_switch(v: &Value) -> bool {
    match v {
        Value::Bool(_) | Value::Null => true,
        Value::String(s) => {
            let s = s.trim().trim_start_matches('$');
            s.is_empty() || s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false")
        }
        _ => false,
    }
}

fn compile(origin: &str, spec: RuleSpec) -> Result<Rule, SchemaError> {
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

/// The compiled rule set. Cloning is cheap enough to do once per worker.
#[derive(Debug, Clone)]
pub struct Redactor {
    rules: Vec<Rule>,
    /// The regex rules at once: the common case (nothing to mask) costs one scan.
    any: RegexSet,
    /// Index into `rules` of each pattern of `any`.
    any_rules: Vec<usize>,
    /// Literals one of which any regex rule's match contains; None when a rule has none.
    prefilter: Option<prefilter::Prefilter>,
    has_structured: bool,
}

/// Rules that changed a value, by index into the rule set.
pub type RuleHits = Vec<usize>;

impl Redactor {
    /// Compiles rules; the first string of each pair names where it came from, for errors.
    pub fn new(specs: Vec<(String, RuleSpec)>) -> Result<Self, SchemaErrors> {
        let mut errors = Vec::new();
        let mut rules = Vec::with_capacity(specs.len());
        for (origin, spec) in specs {
            match compile(&origin, spec) {
                Ok(rule) => rules.push(rule),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(SchemaErrors(errors));
        }
        let mut patterns = Vec::new();
        let mut any_rules = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            if let Matcher::Regex { regex, .. } = &rule.matcher {
                patterns.push(regex.as_str().to_string());
                any_rules.push(i);
            }
        }
        let any = RegexSet::new(&patterns).map_err(|e| {
            SchemaErrors(vec![SchemaError {
                file: "redaction rules".into(),
                line: None,
                message: format!("cannot compile the rule set: {e}"),
            }])
        })?;
        let has_structured = rules
            .iter()
            .any(|r| !matches!(r.matcher, Matcher::Regex { .. }));
        let pattern_refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
        let prefilter = prefilter::Prefilter::build(&pattern_refs);
        Ok(Self {
            rules,
            any,
            any_rules,
            prefilter,
            has_structured,
        })
    }

    /// Rules from `redaction.yaml` of the schema files followed by `extra` (from the config file).
    pub fn from_files(
        files: &SchemaFiles,
        extra: &[RuleSpec],
        extra_origin: &str,
    ) -> Result<Self, SchemaErrors> {
        let mut specs = Vec::new();
        if let Some((path, text)) = files.get(REDACTION_FILE) {
            let file: RuleFile = yaml_serde::from_str(text).map_err(|e| {
                SchemaErrors(vec![SchemaError {
                    file: path.to_string(),
                    line: e.location().map(|l| l.line()),
                    message: e.to_string(),
                }])
            })?;
            specs.extend(file.rules.into_iter().map(|r| (path.to_string(), r)));
        }
        specs.extend(extra.iter().cloned().map(|r| (extra_origin.to_string(), r)));
        Self::new(specs)
    }

    pub fn none() -> Self {
        Self {
            rules: Vec::new(),
            any: RegexSet::empty(),
            any_rules: Vec::new(),
            prefilter: None,
            has_structured: false,
        }
    }

    pub fn rule_names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    pub fn rule_name(&self, index: usize) -> &str {
        self.rules.get(index).map_or("?", |r| r.name.as_str())
    }

    /// Problems with rules that name columns no table has (a typo would silently mask nothing).
    pub fn unknown_columns(&self, schemas: &SchemaSet) -> Vec<String> {
        let mut problems = Vec::new();
        for rule in &self.rules {
            for col in rule.columns.iter().flatten() {
                let known = schemas
                    .tables
                    .iter()
                    .any(|t| t.columns.iter().any(|c| &c.name == col));
                if !known {
                    problems.push(format!(
                        "redaction rule {:?} names column {col:?}, which no table has",
                        rule.name
                    ));
                }
            }
        }
        problems
    }

    /// Whether any rule could mask anything in a record whose raw JSON text is `raw`. When false
    /// the record is mapped without looking at its values one by one.
    pub fn record_may_match(&self, raw: &str) -> bool {
        if self.rules.is_empty() {
            return false;
        }
        let regex_rules = !self.any_rules.is_empty()
            && self.prefilter.as_ref().is_none_or(|pre| pre.may_match(raw));
        regex_rules || (self.has_structured && self.structure_may_match(None, raw))
    }

    /// Whether a structural rule (for `column`, or any column) could fire on `json`. Names and
    /// keys are in the text as they are, unless spelled with \u escapes or inside a
    /// JSON-in-a-string value (escaped quotes), which always count as "could".
    fn structure_may_match(&self, column: Option<&str>, json: &str) -> bool {
        if json.contains("\\u") || json.contains("\\\"") {
            return true;
        }
        let mut lowered: Option<String> = None;
        let mut names: Option<Vec<Cow<'_, str>>> = None;
        for rule in &self.rules {
            if column.is_some_and(|c| !rule.applies_to(c)) {
                continue;
            }
            match &rule.matcher {
                Matcher::Regex { .. } => {}
                Matcher::NameValue { names: re } => {
                    let found = names.get_or_insert_with(|| name_values(json).collect());
                    if found.iter().any(|n| re.is_match(n)) {
                        return true;
                    }
                }
                Matcher::JsonKey { literals, .. } => match literals {
                    Some(literals) => {
                        let lower = lowered.get_or_insert_with(|| json.to_ascii_lowercase());
                        if !json.is_ascii() || literals.iter().any(|l| lower.contains(l.as_str())) {
                            return true;
                        }
                    }
                    None => return true,
                },
            }
        }
        false
    }

    /// Masks `text` (a value of `column`); `None` when nothing matched. A text that is itself
    /// JSON (Parameters sent as a string) gets the `name_value` rules too.
    pub fn redact_text(&self, column: &str, text: &str, hits: &mut RuleHits) -> Option<String> {
        let structured = if self.has_structured
            && matches!(text.trim_start().as_bytes().first(), Some(b'[' | b'{'))
        {
            self.mask_structured(column, text, hits)
        } else {
            None
        };
        let base = structured.as_deref().unwrap_or(text);
        self.apply_regex_rules(column, base, hits).or(structured)
    }

    fn apply_regex_rules(&self, column: &str, text: &str, hits: &mut RuleHits) -> Option<String> {
        if self.any_rules.is_empty() || !self.any.is_match(text) {
            return None;
        }
        let mut current: Cow<'_, str> = Cow::Borrowed(text);
        for set_index in self.any.matches(text).iter() {
            let index = self.any_rules[set_index];
            let rule = &self.rules[index];
            let Matcher::Regex { regex, replacement } = &rule.matcher else {
                continue;
            };
            if !rule.applies_to(column) {
                continue;
            }
            let replaced = regex.replace_all(&current, replacement.as_str());
            if let Cow::Owned(new) = replaced
                && new != current
            {
                hits.push(index);
                current = Cow::Owned(new);
            }
        }
        match current {
            Cow::Owned(s) => Some(s),
            Cow::Borrowed(_) => None,
        }
    }

    /// Applies the structural rules (`name_value`, `json_key`) to a JSON text; a changed result
    /// is compact JSON. A text that can't be parsed but names a secret is masked whole: when in
    /// doubt, mask.
    fn mask_structured(&self, column: &str, json: &str, hits: &mut RuleHits) -> Option<String> {
        if !self.structure_may_match(Some(column), json) {
            return None;
        }
        let rules: Vec<(usize, &Matcher)> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.applies_to(column) && !matches!(r.matcher, Matcher::Regex { .. }))
            .map(|(i, r)| (i, &r.matcher))
            .collect();
        let &(first_rule, _) = rules.first()?;
        // serde_json's recursion limit bounds the depth of what this walks.
        let Ok(mut value) = serde_json::from_str::<Value>(json) else {
            hits.push(first_rule);
            return serde_json::to_string(MASK).ok();
        };
        let before = hits.len();
        let mut stack = vec![&mut value];
        while let Some(node) = stack.pop() {
            match node {
                Value::Object(map) => {
                    for (rule, matcher) in &rules {
                        match matcher {
                            Matcher::NameValue { names } => {
                                let named = NAME_KEYS
                                    .iter()
                                    .find_map(|k| map.get(*k).and_then(Value::as_str))
                                    .is_some_and(|name| names.is_match(name));
                                if !named {
                                    continue;
                                }
                                for key in VALUE_KEYS {
                                    if let Some(v) = map.get_mut(key)
                                        && !is_switch(v)
                                        && v.as_str() != Some(MASK)
                                    {
                                        *v = Value::String(MASK.into());
                                        hits.push(*rule);
                                    }
                                }
                            }
                            Matcher::JsonKey { keys, .. } => {
                                for (key, v) in map.iter_mut() {
                                    if keys.is_match(key)
                                        && !v.is_null()
                                        && v.as_str() != Some(MASK)
                                    {
                                        *v = Value::String(MASK.into());
                                        hits.push(*rule);
                                    }
                                }
                            }
                            Matcher::Regex { .. } => {}
                        }
                    }
                    stack.extend(map.values_mut());
                }
                Value::Array(items) => stack.extend(items.iter_mut()),
                _ => {}
            }
        }
        if hits.len() == before {
            return None;
        }
        serde_json::to_string(&value).ok()
    }

    /// Regex rules over a whole JSON text, one rule at a time: a rule's result is kept only if it
    /// is still JSON of the same shape (structure and keys unchanged), so a pattern that reaches
    /// across a string's quotes can neither break the JSON nor merge or rename fields.
    fn apply_regex_rules_json(
        &self,
        column: &str,
        json: &str,
        hits: &mut RuleHits,
    ) -> Option<String> {
        if self.any_rules.is_empty() || !self.any.is_match(json) {
            return None;
        }
        let shape = json_shape(json)?;
        let mut current: Option<String> = None;
        for set_index in self.any.matches(json).iter() {
            let index = self.any_rules[set_index];
            let rule = &self.rules[index];
            let Matcher::Regex { regex, replacement } = &rule.matcher else {
                continue;
            };
            if !rule.applies_to(column) {
                continue;
            }
            let base = current.as_deref().unwrap_or(json);
            if let Cow::Owned(candidate) = regex.replace_all(base, replacement.as_str())
                && candidate != base
                && json_shape(&candidate).as_ref() == Some(&shape)
            {
                hits.push(index);
                current = Some(candidate);
            }
        }
        current
    }

    /// Masks a JSON text (a dynamic value, or an object bound for a string column). Name/Value
    /// rules see the structure; regex rules then see the whole compact text (so they can match
    /// across keys), then every string inside on its own. The result is always valid JSON.
    pub fn redact_json(&self, column: &str, json: &str, hits: &mut RuleHits) -> Option<String> {
        if self.rules.is_empty() {
            return None;
        }
        let structured = if self.has_structured {
            self.mask_structured(column, json, hits)
        } else {
            None
        };
        let json_in = structured.as_deref().unwrap_or(json);
        let whole = self.apply_regex_rules_json(column, json_in, hits);
        let base = whole.as_deref().unwrap_or(json_in);
        self.redact_json_strings(column, base, hits)
            .or(whole)
            .or(structured)
    }

    /// Masks the text of a refused record before it is written out: the rules that are not
    /// limited to columns apply, to the JSON structure when it parses, to plain text otherwise.
    pub fn redact_raw(&self, raw: &str) -> Option<String> {
        let mut hits = Vec::new();
        if serde_json::from_str::<serde::de::IgnoredAny>(raw).is_ok() {
            self.redact_json("", raw, &mut hits)
        } else {
            self.redact_text("", raw, &mut hits)
        }
    }

    /// Applies the rules to each string value (not object keys) inside a JSON text.
    fn redact_json_strings(&self, column: &str, json: &str, hits: &mut RuleHits) -> Option<String> {
        let bytes = json.as_bytes();
        let mut out: Option<String> = None;
        let mut copied = 0;
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] != b'"' {
                i += 1;
                continue;
            }
            let start = i;
            let mut escaped = false;
            i += 1;
            while i < bytes.len() {
                match bytes[i] {
                    b'\\' => {
                        escaped = true;
                        i += 2;
                        continue;
                    }
                    b'"' => break,
                    _ => i += 1,
                }
            }
            let end = (i + 1).min(bytes.len());
            i = end;
            let is_key = bytes[end..]
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|b| *b == b':');
            if is_key {
                continue;
            }
            let token = &json[start..end];
            let decoded: Cow<'_, str> = if escaped {
                match serde_json::from_str::<String>(token) {
                    Ok(s) => Cow::Owned(s),
                    Err(_) => continue,
                }
            } else if token.len() >= 2 {
                Cow::Borrowed(&token[1..token.len() - 1])
            } else {
                continue;
            };
            if let Some(masked) = self.redact_text(column, &decoded, hits) {
                let buf = out.get_or_insert_with(|| String::with_capacity(json.len()));
                buf.push_str(&json[copied..start]);
                crate::map::json::push_json_string(buf, &masked);
                copied = end;
            }
        }
        let mut buf = out?;
        buf.push_str(&json[copied..]);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Redactor {
        Redactor::from_files(&SchemaFiles::embedded(), &[], "config").unwrap()
    }

    fn masked(column: &str, text: &str) -> Option<(String, Vec<String>)> {
        let r = shipped();
        let mut hits = Vec::new();
        r.redact_text(column, text, &mut hits).map(|s| {
            (
                s,
                hits.iter().map(|h| r.rule_name(*h).to_string()).collect(),
            )
        })
    }

    #[test]
    fn cmdlet_password_parameter_is_masked_and_its_neighbours_are_not() {
        let params = r#"[{"Name":"Identity","Value":"alice@contoso.com"},{"Name":"NewPassword","Value":"Hunter2!\"x"},{"Name":"ForceChangePasswordNextLogin","Value":"True"},{"Name":"ForceChangePassword","Value":"True"},{"Name":"Password","Value":"S3cr3t"}]"#;
        let r = shipped();
        let mut hits = Vec::new();
        let out = r.redact_json("Parameters", params, &mut hits).unwrap();
        assert_eq!(
            out,
            r#"[{"Name":"Identity","Value":"alice@contoso.com"},{"Name":"NewPassword","Value":"***REDACTED***"},{"Name":"ForceChangePasswordNextLogin","Value":"True"},{"Name":"ForceChangePassword","Value":"True"},{"Name":"Password","Value":"***REDACTED***"}]"#
        );
        serde_json::from_str::<serde_json::Value>(&out).unwrap();
        assert!(
            hits.iter()
                .all(|h| r.rule_name(*h) == "secret-named-parameter")
        );
    }

    #[test]
    fn name_value_pairs_are_masked_in_any_order_spacing_and_type() {
        let r = shipped();
        let mut hits = Vec::new();
        let pretty = r#"[ { "Value" : "Hunter2", "Name" : "CertificatePassword" },
            {"Name": "Pin", "Value": 1234}, {"Name":"ApiKey","Value":98765},
            {"Name":"Identity","Value":"bob"}, {"Name":"ResetPassword","Value":"$true"} ]"#;
        let out = r.redact_json("Parameters", pretty, &mut hits).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v[0]["Value"], MASK);
        assert_eq!(
            v[0]["Name"], "CertificatePassword",
            "key order and names are kept"
        );
        assert_eq!(v[1]["Value"], 1234, "a PIN is not named like a secret");
        assert_eq!(v[2]["Value"], MASK, "numbers are masked too");
        assert_eq!(v[3]["Value"], "bob");
        assert_eq!(v[4]["Value"], "$true", "a switch is not a secret");

        // ModifiedProperties carry NewValue/OldValue.
        let modified =
            r#"[{"Name":"ClientSecret","NewValue":"new-s3cret","OldValue":"old-s3cret"}]"#;
        let out = r
            .redact_json("ModifiedProperties", modified, &mut Vec::new())
            .unwrap();
        assert!(!out.contains("s3cret"), "{out}");

        // Parameters sent as a JSON string (with spaces) get the same treatment.
        let text = r#"[{"Name": "Password", "Value": "Sup3r S3cret"}]"#;
        let out = r.redact_text("Parameters", text, &mut Vec::new()).unwrap();
        assert_eq!(out, r#"[{"Name":"Password","Value":"***REDACTED***"}]"#);
    }

    #[test]
    fn command_line_passwords() {
        let (s, _) = masked("X", "Set-Thing -Identity bob -Password Pa55w0rd -Force").unwrap();
        assert_eq!(s, "Set-Thing -Identity bob -Password ***REDACTED*** -Force");
        let (s, _) = masked("X", "tool.exe /password:abc123 /user:bob").unwrap();
        assert_eq!(s, "tool.exe /password:***REDACTED*** /user:bob");
        let (s, _) = masked("X", "https://x/y?user=bob&password=abc&x=1").unwrap();
        assert_eq!(s, "https://x/y?user=bob&password=***REDACTED***&x=1");
        // Not over-masking: prose and operation names that mention passwords.
        assert_eq!(masked("X", "PasswordLogonInitialAuthUsingPassword"), None);
        assert_eq!(masked("X", "Reset password for user bob"), None);
        assert_eq!(masked("X", "Set-Mailbox -PasswordNeverExpires $true"), None);
        assert_eq!(masked("X", "-Password -Force"), None);
    }

    #[test]
    fn bearer_tokens_and_jwts() {
        let (s, rules) = masked("X", "Authorization: Bearer abcdefghijklmnop.qrs-tuv_wx=").unwrap();
        assert_eq!(s, "Authorization: Bearer ***REDACTED***");
        assert_eq!(rules, ["bearer-token"]);
        let jwt = "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U end";
        let (s, _) = masked("X", jwt).unwrap();
        assert_eq!(s, "token ***REDACTED-JWT*** end");
        assert_eq!(masked("X", "the bearer of bad news"), None);
        assert_eq!(masked("X", "eyJhbGciOiJIUzI1NiJ9 alone"), None);
    }

    #[test]
    fn sas_signatures_and_connection_strings() {
        let (s, _) = masked(
            "X",
            "https://acct.blob.core.windows.net/c/b?sv=2022-11-02&se=2026-01-01&sp=r&sig=AbC%2Bdef%3D&x=1",
        )
        .unwrap();
        assert_eq!(
            s,
            "https://acct.blob.core.windows.net/c/b?sv=2022-11-02&se=2026-01-01&sp=r&sig=***REDACTED***&x=1"
        );
        let (s, _) = masked(
            "X",
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=bXlrZXk=;EndpointSuffix=core.windows.net",
        )
        .unwrap();
        assert_eq!(
            s,
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=***REDACTED***;EndpointSuffix=core.windows.net"
        );
        let (s, _) = masked(
            "X",
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=abc/def+g=",
        )
        .unwrap();
        assert!(s.ends_with(
            "SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=***REDACTED***"
        ));
        // Not over-masking: a URL without a signature, a key name without a value.
        assert_eq!(masked("X", "https://x/y?sv=1&signature=false"), None);
        assert_eq!(
            masked("X", "SharedAccessKeyName=RootManageSharedAccessKey"),
            None
        );
    }

    #[test]
    fn column_scoped_rules_apply_only_to_their_columns() {
        let r = Redactor::new(vec![(
            "test".into(),
            RuleSpec {
                name: "upn".into(),
                description: None,
                kind: RuleKind::Regex,
                pattern: Some("[a-z]+@contoso.com".into()),
                replacement: Some("user@masked".into()),
                name_pattern: None,
                key_pattern: None,
                columns: Some(vec!["UserId".into()]),
            },
        )])
        .unwrap();
        let mut hits = Vec::new();
        assert_eq!(
            r.redact_text("UserId", "bob@contoso.com", &mut hits)
                .as_deref(),
            Some("user@masked")
        );
        assert_eq!(
            r.redact_text("Operation", "bob@contoso.com", &mut hits),
            None
        );
    }

    #[test]
    fn nested_strings_in_dynamic_values_are_masked_keys_are_kept() {
        let r = shipped();
        let mut hits = Vec::new();
        let json = r#"{"Url":"https://a/b?sig=secret","sig=x":"keep","n":1,"esc":"say \"Bearer abcdefghijkl\""}"#;
        let out = r.redact_json("AdditionalFields", json, &mut hits).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["Url"], "https://a/b?sig=***REDACTED***");
        assert_eq!(v["sig=x"], "keep");
        assert_eq!(v["esc"], "say \"Bearer ***REDACTED***\"");
        assert_eq!(v["n"], 1);
    }

    #[test]
    fn a_structure_that_cannot_be_parsed_but_names_a_secret_is_masked_whole() {
        let r = shipped();
        // Deeper than serde_json's recursion limit: the walk can't see it, so all of it goes.
        let json = format!(
            r#"[{{"Name":"Password","Value":"hunter2"}},{}1{}]"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let out = r.redact_json("Parameters", &json, &mut Vec::new()).unwrap();
        assert_eq!(out, "\"***REDACTED***\"");
    }

    #[test]
    fn masking_keeps_every_other_number_as_it_was_written() {
        let r = shipped();
        let json = r#"[{"Name":"Password","Value":"hunter2"},{"Name":"X","Value":1e400},{"Name":"Big","Value":12345678901234567890123}]"#;
        let out = r.redact_json("Parameters", json, &mut Vec::new()).unwrap();
        assert_eq!(
            out,
            // serde_json writes the exponent with its sign; the value is the same.
            r#"[{"Name":"Password","Value":"***REDACTED***"},{"Name":"X","Value":1e+400},{"Name":"Big","Value":12345678901234567890123}]"#
        );
    }

    #[test]
    fn one_rule_that_would_break_the_json_does_not_undo_the_others() {
        let r = shipped();
        let json = r#"{"PolicyDetails":[{"Rules":[{"DetectedValues":["4111111111111111"]}]}],"Note":"password=","X":"y"}"#;
        let out = r
            .redact_json("AdditionalFields", json, &mut Vec::new())
            .unwrap();
        assert!(!out.contains("4111111111111111"), "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["X"], "y");
    }

    #[test]
    fn whole_text_rules_cannot_merge_elements_or_rename_keys() {
        let r = shipped();
        let out = r
            .redact_json("X", r#"["/password:","hunter2","z"]"#, &mut Vec::new())
            .map(|s| serde_json::from_str::<serde_json::Value>(&s).unwrap());
        if let Some(v) = out {
            assert_eq!(v.as_array().unwrap().len(), 3, "{v}");
        }
        let out = r.redact_json("X", r#"{"?sig=a":1,"?sig=b":2}"#, &mut Vec::new());
        if let Some(s) = out {
            assert!(s.contains("\"?sig=a\"") && s.contains("\"?sig=b\""), "{s}");
        }
    }

    #[test]
    fn json_key_rules_mask_whatever_the_value_is() {
        let r = shipped();
        let json = r#"{"a":{"DetectedValues":[{"Name":"n","Value":"SECRET-1"}],"Count":2}}"#;
        let out = r
            .redact_json("AdditionalFields", json, &mut Vec::new())
            .unwrap();
        assert_eq!(
            out,
            r#"{"a":{"DetectedValues":"***REDACTED***","Count":2}}"#
        );
    }

    #[test]
    fn shipped_rules_all_have_a_literal_prefilter() {
        assert!(shipped().prefilter.is_some());
    }

    #[test]
    fn records_with_nothing_to_mask_are_cleared_by_the_prefilter() {
        let r = shipped();
        let plain = r#"{"Operation":"FileAccessed","Path":"\\Inbox","Parameters":[{"Name":"Identity","Value":"bob"}]}"#;
        assert!(!r.record_may_match(plain));
        for needs_a_look in [
            r#"{"Parameters":[{"Name":"NewPassword","Value":"x"}]}"#,
            r#"{"Url":"https://a/b?SIG=abc"}"#,
            r#"{"Auth":"BEARER abcdefghijkl"}"#,
            r#"{"Parameters":"[{\"Name\":\"Password\"}]"}"#,
            r#"{"X":"p\u0077d=1"}"#,
            r#"{"X":"pässword"}"#,
        ] {
            assert!(r.record_may_match(needs_a_look), "{needs_a_look}");
        }
    }

    #[test]
    fn bad_pattern_is_reported_with_rule_name() {
        let err = Redactor::new(vec![(
            "config.yaml".into(),
            RuleSpec {
                name: "broken".into(),
                description: None,
                kind: RuleKind::Regex,
                pattern: Some("(unclosed".into()),
                replacement: Some("x".into()),
                name_pattern: None,
                key_pattern: None,
                columns: None,
            },
        )])
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("config.yaml") && text.contains("broken"),
            "{text}"
        );
    }
}
