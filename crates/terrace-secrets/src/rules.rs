//! Which values get encrypted: the one rule a file carries
//! (`unencrypted_suffix` by default), decided per key path as sops does.

use regex::Regex;

/// The rule a file was encrypted under. Only one may be set per file.
#[derive(Debug, Clone)]
pub enum Rule {
    UnencryptedSuffix(String),
    EncryptedSuffix(String),
    UnencryptedRegex(Regex),
    EncryptedRegex(Regex),
    UnencryptedCommentRegex(Regex),
    EncryptedCommentRegex(Regex),
}

impl Default for Rule {
    fn default() -> Self {
        Rule::UnencryptedSuffix(DEFAULT_UNENCRYPTED_SUFFIX.to_owned())
    }
}

/// sops's default: keys ending in `_unencrypted` stay plain.
pub const DEFAULT_UNENCRYPTED_SUFFIX: &str = "_unencrypted";

/// The metadata names of the rules, in the order sops writes them.
pub const RULE_KEYS: [&str; 6] = [
    "unencrypted_suffix",
    "encrypted_suffix",
    "unencrypted_regex",
    "encrypted_regex",
    "unencrypted_comment_regex",
    "encrypted_comment_regex",
];

impl Rule {
    /// Builds a rule from its metadata name and value.
    pub fn from_parts(name: &str, value: &str) -> Result<Rule, String> {
        let re = || Regex::new(value).map_err(|e| format!("`{name}` is not a valid regex: {e}"));
        Ok(match name {
            "unencrypted_suffix" => Rule::UnencryptedSuffix(value.to_owned()),
            "encrypted_suffix" => Rule::EncryptedSuffix(value.to_owned()),
            "unencrypted_regex" => Rule::UnencryptedRegex(re()?),
            "encrypted_regex" => Rule::EncryptedRegex(re()?),
            "unencrypted_comment_regex" => Rule::UnencryptedCommentRegex(re()?),
            "encrypted_comment_regex" => Rule::EncryptedCommentRegex(re()?),
            other => return Err(format!("unknown rule `{other}`")),
        })
    }

    /// The metadata name and value.
    pub fn parts(&self) -> (&'static str, &str) {
        match self {
            Rule::UnencryptedSuffix(s) => ("unencrypted_suffix", s),
            Rule::EncryptedSuffix(s) => ("encrypted_suffix", s),
            Rule::UnencryptedRegex(r) => ("unencrypted_regex", r.as_str()),
            Rule::EncryptedRegex(r) => ("encrypted_regex", r.as_str()),
            Rule::UnencryptedCommentRegex(r) => ("unencrypted_comment_regex", r.as_str()),
            Rule::EncryptedCommentRegex(r) => ("encrypted_comment_regex", r.as_str()),
        }
    }

    /// Whether the value at `path` is encrypted. `comments` holds, per
    /// enclosing level, the comments seen since that level's last value;
    /// `is_comment` says whether the leaf is itself a comment.
    pub fn encrypts(&self, path: &[String], comments: &[Vec<String>], is_comment: bool) -> bool {
        match self {
            Rule::UnencryptedSuffix(s) => !path.iter().any(|p| p.ends_with(s.as_str())),
            Rule::EncryptedSuffix(s) => path.iter().any(|p| p.ends_with(s.as_str())),
            Rule::UnencryptedRegex(r) => !path.iter().any(|p| r.is_match(p)),
            Rule::EncryptedRegex(r) => path.iter().any(|p| r.is_match(p)),
            Rule::UnencryptedCommentRegex(r) => !comments.iter().flatten().any(|c| r.is_match(c)),
            Rule::EncryptedCommentRegex(r) => {
                // The matching comment itself stays readable; what follows
                // it is encrypted.
                let last_level = comments.len().saturating_sub(1);
                comments.iter().enumerate().any(|(i, level)| {
                    level.iter().enumerate().any(|(j, c)| {
                        let is_self = is_comment && i == last_level && j + 1 == level.len();
                        !is_self && r.is_match(c)
                    })
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_rule_decides_by_any_path_element() {
        let none: Vec<Vec<String>> = vec![vec![]];
        assert!(Rule::default().encrypts(&p(&["a", "b"]), &none, false));
        assert!(!Rule::default().encrypts(&p(&["a_unencrypted", "b"]), &none, false));
        let enc = Rule::from_parts("encrypted_regex", "^(data|stringData)$").expect("valid");
        assert!(enc.encrypts(&p(&["data", "password"]), &none, false));
        assert!(!enc.encrypts(&p(&["metadata", "name"]), &none, false));
        let suffix = Rule::EncryptedSuffix("_secret".into());
        assert!(suffix.encrypts(&p(&["db_secret"]), &none, false));
        assert!(!suffix.encrypts(&p(&["db"]), &none, false));
    }

    #[test]
    fn comment_regex_encrypts_what_follows_the_marker() {
        let rule = Rule::from_parts("encrypted_comment_regex", "sops:enc").expect("valid");
        let marked = vec![vec![" sops:enc".to_string()]];
        assert!(rule.encrypts(&p(&["a"]), &marked, false));
        assert!(!rule.encrypts(&p(&[]), &marked, true));
        assert!(!rule.encrypts(&p(&["a"]), &[vec![]], false));
    }
}
