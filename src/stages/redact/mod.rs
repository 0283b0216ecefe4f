//! Redaction: masks secrets that leak into audit payloads (passwords in cmdlet parameters, bearer
//! tokens, SAS signatures, connection-string keys, DLP detected values) before a row leaves the
//! mapper, so nothing downstream (spool, dead letters, dry-run files, the workspace) holds them.

mod json_values;
mod prefilter;
mod rules;

use json_values::*;
use rules::*;
pub use rules::{RuleKind, RuleSpec};

use std::borrow::Cow;

use regex::{Regex, RegexSet};
use serde::Deserialize;
use serde_json::Value;

use crate::schema::{REDACTION_FILE, SchemaError, SchemaErrors, SchemaFiles, SchemaSet};

/// What masked Name/Value values become.
pub const MASK: &str = "***REDACTED***";

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

    /// The regex rules for `column` whose pattern matches somewhere in `text`, in rule order,
    /// with their index (for the hit counts).
    fn regex_rules_matching<'r>(
        &'r self,
        column: &'r str,
        text: &str,
    ) -> impl Iterator<Item = (usize, &'r regex::Regex, &'r str)> + 'r {
        self.any
            .matches(text)
            .into_iter()
            .filter_map(move |set_index| {
                let index = self.any_rules[set_index];
                let rule = &self.rules[index];
                match &rule.matcher {
                    Matcher::Regex { regex, replacement } if rule.applies_to(column) => {
                        Some((index, regex, replacement.as_str()))
                    }
                    _ => None,
                }
            })
    }

    fn apply_regex_rules(&self, column: &str, text: &str, hits: &mut RuleHits) -> Option<String> {
        if self.any_rules.is_empty() || !self.any.is_match(text) {
            return None;
        }
        let mut current: Cow<'_, str> = Cow::Borrowed(text);
        for (index, regex, replacement) in self.regex_rules_matching(column, text) {
            let replaced = regex.replace_all(&current, replacement);
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
        for (index, regex, replacement) in self.regex_rules_matching(column, json) {
            let base = current.as_deref().unwrap_or(json);
            if let Cow::Owned(candidate) = regex.replace_all(base, replacement)
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
                crate::stages::map::json::push_json_string(buf, &masked);
                copied = end;
            }
        }
        let mut buf = out?;
        buf.push_str(&json[copied..]);
        Some(buf)
    }
}

#[cfg(test)]
mod tests;
