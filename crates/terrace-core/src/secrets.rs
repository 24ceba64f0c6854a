//! The hook through which the engine gives secrets to expressions and
//! drivers. The implementation (SOPS files with age) lives in
//! `terrace-secrets`; the model only names what it can do.

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::expr::SecretError;
use crate::value_path::Seg;

/// Decrypts secrets in memory and seals rendered documents that hold them.
pub trait SecretSource: Send + Sync + Debug {
    /// `${secret.FILE#KEY}`: the value at `key` in `file` (relative to the
    /// project root).
    fn value(&self, file: &str, key: &[Seg]) -> Result<Value, SecretError>;

    /// The decrypted documents of `text` when it is a SOPS-encrypted YAML
    /// file (`file` relative to the project root); `None` when it is plain.
    fn open_documents(&self, file: &Path, text: &str) -> Result<Option<Vec<Value>>, SecretError>;

    /// Encrypts documents for writing to disk, to the recipients of the
    /// `sources` (secrets files, relative to the project root). With
    /// `rule_from`, that file's encryption rule is used, else every value
    /// is encrypted. When `prior` (the file on disk) already holds the same
    /// plaintext it is returned unchanged, and unchanged values keep their
    /// ciphertext otherwise.
    /// Every secret value decrypted so far in this run, for sinks to
    /// search for (see [`Plaintexts`]).
    fn plaintexts(&self) -> Plaintexts {
        Plaintexts::default()
    }

    /// The secret values of these files alone (those already opened): what
    /// one unit can hold, the same whatever other units run beside it.
    fn plaintexts_of(&self, files: &[PathBuf]) -> Plaintexts {
        let _ = files;
        self.plaintexts()
    }

    fn seal(
        &self,
        docs: &[Value],
        sources: &[PathBuf],
        rule_from: Option<&Path>,
        prior: Option<&str>,
    ) -> Result<String, SecretError>;
}

/// Whether text looks like a SOPS file, cheaply (no parsing): a top-level
/// `sops:` mapping with a MAC.
pub fn looks_encrypted(text: &str) -> bool {
    (text.starts_with("sops:") || text.contains("\nsops:")) && text.contains("mac: ENC[AES256_GCM,")
}

/// Secret values shorter than this are not searched for in output (they
/// would match everywhere: `on`, `1`); everything else derived from a
/// secret is found by its plaintext.
pub const MIN_SEARCHED_LEN: usize = 4;

/// The plaintext of every secret value decrypted in this run (and of every
/// sensitive output read), with where each came from. Sensitivity travels
/// with the data through expressions; this is the net behind it: whatever
/// kustomize, a patch, a replacement or Terraform did to a value, a sink
/// (a rendered file, a plan, state, a log line) that finds one of these
/// strings in what it is about to write seals it, hides it or refuses it.
///
/// `Debug` shows only how many values it holds.
#[derive(Clone, Default)]
pub struct Plaintexts {
    inner: Option<std::sync::Arc<Searcher>>,
}

struct Searcher {
    /// Longest first, so a value containing another is replaced whole.
    values: Vec<(String, PathBuf)>,
    automaton: aho_corasick::AhoCorasick,
}

/// A secret value this long found inside a name makes the name refused.
pub const NAME_MATCH_LEN: usize = 8;

/// What replaces a secret value in text shown to people.
pub const REDACTED: &str = "(sensitive)";

impl Plaintexts {
    /// From (plaintext, source) pairs; short and repeated values are left
    /// out.
    pub fn new(values: impl IntoIterator<Item = (String, PathBuf)>) -> Plaintexts {
        let mut values: Vec<(String, PathBuf)> = values
            .into_iter()
            .filter(|(v, _)| v.chars().count() >= MIN_SEARCHED_LEN)
            .collect();
        values.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.cmp(b)));
        values.dedup_by(|a, b| a.0 == b.0);
        if values.is_empty() {
            return Plaintexts::default();
        }
        let automaton = aho_corasick::AhoCorasick::builder()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(values.iter().map(|(v, _)| v.as_str()))
            .expect("literal patterns always build");
        Plaintexts {
            inner: Some(std::sync::Arc::new(Searcher { values, automaton })),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_none()
    }

    pub fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |s| s.values.len())
    }

    /// Both sets of values.
    pub fn merged(&self, other: &Plaintexts) -> Plaintexts {
        let all = [self, other]
            .into_iter()
            .filter_map(|p| p.inner.as_ref())
            .flat_map(|s| s.values.iter().cloned());
        Plaintexts::new(all)
    }

    /// Whether `text` holds any secret value.
    pub fn found_in(&self, text: &str) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|s| s.automaton.is_match(text))
    }

    /// Whether a name (an object's name, an address, a path) holds a secret:
    /// it is one whole, or holds one of at least [`NAME_MATCH_LEN`]
    /// characters. Shorter values inside longer names (`admin` in
    /// `cluster-admin`) are too common in names to refuse them; they are
    /// still redacted wherever the name is shown.
    pub fn found_in_name(&self, name: &str) -> bool {
        self.inner.as_ref().is_some_and(|s| {
            s.automaton
                .find_iter(name)
                .any(|m| m.len() >= NAME_MATCH_LEN || (m.start() == 0 && m.end() == name.len()))
        })
    }

    /// The sources of every secret value in `text`.
    pub fn sources_in_str(&self, text: &str, out: &mut std::collections::BTreeSet<PathBuf>) {
        if let Some(s) = &self.inner {
            for m in s.automaton.find_iter(text) {
                out.insert(s.values[m.pattern().as_usize()].1.clone());
            }
        }
    }

    /// The sources of every secret value in the strings (and keys) of `v`.
    pub fn sources_in(&self, v: &Value) -> std::collections::BTreeSet<PathBuf> {
        let mut out = std::collections::BTreeSet::new();
        if self.inner.is_some() {
            self.walk(v, &mut out);
        }
        out
    }

    fn walk(&self, v: &Value, out: &mut std::collections::BTreeSet<PathBuf>) {
        match v {
            Value::String(s) => self.sources_in_str(s, out),
            Value::Number(n) => self.sources_in_str(&n.to_string(), out),
            Value::Array(items) => items.iter().for_each(|i| self.walk(i, out)),
            Value::Object(m) => {
                for (k, v) in m {
                    self.sources_in_str(k, out);
                    self.walk(v, out);
                }
            }
            _ => {}
        }
    }

    /// `text` with every secret value replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        match &self.inner {
            Some(s) if s.automaton.is_match(text) => {
                let with: Vec<&str> = vec![REDACTED; s.values.len()];
                s.automaton.replace_all(text, &with)
            }
            _ => text.to_owned(),
        }
    }

    /// Redacts `text` in place, saying whether anything was replaced.
    pub fn redact_in_place(&self, text: &mut String) -> bool {
        if self.found_in(text) {
            *text = self.redact(text);
            true
        } else {
            false
        }
    }

    /// Every string in `v` redacted.
    pub fn redact_value(&self, v: &mut Value) {
        if self.inner.is_none() {
            return;
        }
        match v {
            Value::String(s) => {
                self.redact_in_place(s);
            }
            Value::Array(items) => items.iter_mut().for_each(|i| self.redact_value(i)),
            Value::Object(m) => m.values_mut().for_each(|v| self.redact_value(v)),
            _ => {}
        }
    }
}

impl std::fmt::Debug for Plaintexts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plaintexts(<{} values redacted>)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p() -> Plaintexts {
        Plaintexts::new([
            ("hunter22".to_owned(), PathBuf::from("secrets/db.yaml")),
            (
                "hunter22-long".to_owned(),
                PathBuf::from("secrets/other.yaml"),
            ),
            ("on".to_owned(), PathBuf::from("secrets/db.yaml")),
        ])
    }

    #[test]
    fn finds_values_anywhere_and_names_their_files() {
        let p = p();
        assert_eq!(p.len(), 2, "short values are not searched");
        let v = json!({"data": {"config.yaml": "user: a\npassword: hunter22\n"}, "on": "on"});
        let found: Vec<PathBuf> = p.sources_in(&v).into_iter().collect();
        assert_eq!(found, vec![PathBuf::from("secrets/db.yaml")]);
        assert!(p.sources_in(&json!({"a": "hunter2"})).is_empty());
    }

    #[test]
    fn redacts_the_longest_value_whole() {
        let p = p();
        assert_eq!(
            p.redact("x=hunter22-long y=hunter22"),
            "x=(sensitive) y=(sensitive)"
        );
        assert_eq!(p.redact("nothing here"), "nothing here");
        assert!(!format!("{p:?}").contains("hunter"));
    }

    #[test]
    fn names_are_refused_for_whole_or_long_values() {
        let p = Plaintexts::new([
            ("admin".to_owned(), PathBuf::from("s.yaml")),
            ("hunter22".to_owned(), PathBuf::from("s.yaml")),
        ]);
        assert!(!p.found_in_name("cluster-admin"));
        assert!(p.found_in_name("admin"));
        assert!(p.found_in_name("x-hunter22-y"));
    }
}
