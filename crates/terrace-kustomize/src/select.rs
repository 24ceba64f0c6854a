//! Selecting objects: patch targets (fields are anchored regular
//! expressions, as in kustomize) and replacement sources and targets
//! (fields are exact values). Label and annotation selectors take the
//! Kubernetes forms.

use regex::Regex;
use serde_json::Value;

use crate::build::Res;
use crate::transform;

/// How a selector's fields compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Match {
    /// Anchored regular expressions (RE2 syntax, like Go's `regexp`).
    Regex,
    /// The exact value.
    Exact,
}

enum Pattern {
    Exact(String),
    Regex(Regex),
}

impl Pattern {
    fn matches(&self, text: &str) -> bool {
        match self {
            Pattern::Exact(want) => want == text,
            Pattern::Regex(re) => re.is_match(text),
        }
    }
}

/// A selector read once, used against every object.
pub(crate) struct Selector {
    group: Option<Pattern>,
    version: Option<Pattern>,
    kind: Option<Pattern>,
    name: Option<Pattern>,
    namespace: Option<Pattern>,
    labels: Option<String>,
    annotations: Option<String>,
}

impl Selector {
    /// Reads a selector (`group`, `version`, `kind`, `name`, `namespace`,
    /// `labelSelector`, `annotationSelector`); an invalid regular
    /// expression is an error naming the field.
    pub(crate) fn new(v: &Value, how: Match) -> Result<Selector, String> {
        let field = |f: &str| -> Result<Option<Pattern>, String> {
            let Some(want) = v.get(f).and_then(Value::as_str) else {
                return Ok(None);
            };
            Ok(Some(match how {
                Match::Exact => Pattern::Exact(want.to_owned()),
                Match::Regex => {
                    Pattern::Regex(Regex::new(&format!("^(?:{want})$")).map_err(|e| {
                        format!("`{f}: {want}` is not a valid regular expression: {e}")
                    })?)
                }
            }))
        };
        let text = |f: &str| v.get(f).and_then(Value::as_str).map(str::to_owned);
        Ok(Selector {
            group: field("group")?,
            version: field("version")?,
            kind: field("kind")?,
            name: field("name")?,
            namespace: field("namespace")?,
            labels: text("labelSelector"),
            annotations: text("annotationSelector"),
        })
    }

    /// Whether the selector picks `r`; its name matches if any name the
    /// object has had matches.
    pub(crate) fn selects(&self, r: &Res) -> bool {
        let v = &r.value;
        let (group, version) = transform::group_version(v);
        let ok = |p: &Option<Pattern>, actual: &str| p.as_ref().is_none_or(|p| p.matches(actual));
        ok(&self.group, group)
            && ok(&self.version, version)
            && ok(&self.kind, transform::kind(v))
            && ok(&self.namespace, transform::namespace(v))
            && self
                .name
                .as_ref()
                .is_none_or(|p| r.names.iter().any(|n| p.matches(n)))
            && self
                .labels
                .as_deref()
                .is_none_or(|sel| selector_matches(sel, &v["metadata"]["labels"]))
            && self
                .annotations
                .as_deref()
                .is_none_or(|sel| selector_matches(sel, &v["metadata"]["annotations"]))
    }
}

/// Kubernetes label selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`,
/// `k in (a,b)` and `k notin (a,b)`, joined by commas.
fn selector_matches(selector: &str, labels: &Value) -> bool {
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| term_matches(term, labels))
}

fn term_matches(term: &str, labels: &Value) -> bool {
    let value = |k: &str| labels[k.trim()].as_str().map(str::to_owned);
    let set = |rest: &str| -> Vec<String> {
        rest.trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .split(',')
            .map(|v| v.trim().to_owned())
            .collect()
    };
    let words: Vec<&str> = term.splitn(3, char::is_whitespace).collect();
    if let [k, op @ ("in" | "notin"), rest] = words.as_slice() {
        let has = value(k).is_some_and(|v| set(rest).contains(&v));
        return if *op == "in" { has } else { !has };
    }
    if let Some((k, v)) = term.split_once("!=") {
        value(k).as_deref() != Some(v.trim())
    } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        value(k).as_deref() == Some(v.trim())
    } else if let Some(k) = term.strip_prefix('!') {
        labels[k.trim()].is_null()
    } else {
        !labels[term].is_null()
    }
}
