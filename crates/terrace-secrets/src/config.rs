//! `.sops.yaml` creation rules, picked the way sops picks them: the file
//! is found by walking up from the working directory; the first rule whose
//! `path_regex` matches the file's path relative to the config's directory
//! (or that has no `path_regex`) wins.

use std::path::{Path, PathBuf};

use regex::Regex;
use terrace_yaml::tree::Node;

use crate::error::SecretsError;
use crate::keys::Recipient;
use crate::rules::{RULE_KEYS, Rule};

/// Config file names sops looks for.
pub const CONFIG_NAMES: [&str; 2] = [".sops.yaml", ".sops.yml"];

/// How a new file is encrypted: to whom, under which rule.
#[derive(Debug, Default)]
pub struct Settings {
    pub recipients: Vec<Recipient>,
    pub rule: Option<Rule>,
    pub mac_only_encrypted: bool,
}

/// The nearest `.sops.yaml` at or above `start`.
pub fn find(start: &Path) -> Option<PathBuf> {
    let mut dir = Some(start);
    while let Some(d) = dir {
        for name in CONFIG_NAMES {
            let candidate = d.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
        dir = d.parent();
    }
    None
}

/// The creation rule for `file` in the config at `config`.
pub fn settings_for(config: &Path, file: &Path) -> Result<Settings, SecretsError> {
    let text = fs_err::read_to_string(config).map_err(|e| SecretsError::io(config, e))?;
    let docs = terrace_yaml::tree::parse_stream(&text, config)
        .map_err(|d| SecretsError::Parse(Box::new(d)))?;
    let cfg_err = |message: String| SecretsError::Config {
        file: config.to_owned(),
        message,
    };
    let Some(Node::Seq(rules)) = docs.first().and_then(|d| d.get("creation_rules")) else {
        return Err(cfg_err("has no `creation_rules` list".into()));
    };
    let dir = config.parent().map(absolute).unwrap_or_default();
    let abs = absolute(file);
    let relative = abs.strip_prefix(&dir).unwrap_or(&abs);
    let relative = relative.to_string_lossy().replace('\\', "/");
    for (i, rule) in rules
        .iter()
        .filter(|r| !matches!(r, Node::Comment(_)))
        .enumerate()
    {
        let string = |name: &str| match rule.get(name) {
            Some(Node::Str(s)) => Some(s.clone()),
            _ => None,
        };
        if let Some(re) = string("path_regex") {
            let re = Regex::new(&re).map_err(|e| {
                cfg_err(format!(
                    "creation_rules[{i}].path_regex is not a valid regex: {e}"
                ))
            })?;
            if !re.is_match(&relative) {
                continue;
            }
        }
        let mut ages: Vec<String> = Vec::new();
        collect_age(rule.get("age"), &mut ages);
        if let Some(Node::Seq(groups)) = rule.get("key_groups") {
            let groups: Vec<&Node> = groups
                .iter()
                .filter(|g| !matches!(g, Node::Comment(_)))
                .collect();
            if groups.len() > 1 {
                return Err(cfg_err(format!(
                    "creation_rules[{i}] has several key_groups (Shamir), which terrace does not support"
                )));
            }
            for g in groups {
                collect_age(g.get("age"), &mut ages);
            }
        }
        if ages.is_empty() {
            return Err(cfg_err(format!(
                "creation_rules[{i}] (the rule for {relative}) lists no age recipients; terrace encrypts with age only"
            )));
        }
        let mut recipients = Vec::new();
        for a in &ages {
            recipients.extend(Recipient::parse_list(a)?);
        }
        let mut chosen = None;
        for name in RULE_KEYS {
            if let Some(v) = string(name) {
                if chosen.is_some() {
                    return Err(cfg_err(format!(
                        "creation_rules[{i}] sets more than one of {}",
                        RULE_KEYS.join(", ")
                    )));
                }
                chosen = Some(
                    Rule::from_parts(name, &v)
                        .map_err(|m| cfg_err(format!("creation_rules[{i}]: {m}")))?,
                );
            }
        }
        return Ok(Settings {
            recipients,
            rule: chosen,
            mac_only_encrypted: matches!(rule.get("mac_only_encrypted"), Some(Node::Bool(true))),
        });
    }
    Err(cfg_err(format!("no creation rule matches {relative}")))
}

fn collect_age(node: Option<&Node>, out: &mut Vec<String>) {
    match node {
        Some(Node::Str(s)) => out.push(s.clone()),
        Some(Node::Seq(items)) => {
            for i in items {
                if let Node::Str(s) = i {
                    out.push(s.clone());
                }
            }
        }
        _ => {}
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
    const B: &str = "age1lggyhqrw2nlhcxprm67z43rta597azn8gknawjehu9d9dl0jq3yqqvfafg";

    fn setup(cfg: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(".sops.yaml");
        std::fs::write(&path, cfg).expect("write");
        (dir, path)
    }

    #[test]
    fn the_first_matching_rule_wins_relative_to_the_config() {
        let (dir, cfg) = setup(&format!(
            "creation_rules:\n  - path_regex: ^prod/.*\\.yaml$\n    age: {A}, {B}\n    encrypted_regex: ^data$\n  - key_groups:\n      - age: [{B}]\n"
        ));
        let prod = settings_for(&cfg, &dir.path().join("prod/db.yaml")).expect("prod rule");
        assert_eq!(prod.recipients.len(), 2);
        assert_eq!(
            prod.rule.map(|r| r.parts().1.to_owned()).as_deref(),
            Some("^data$")
        );
        let other = settings_for(&cfg, &dir.path().join("dev/db.yaml")).expect("catch-all");
        assert_eq!(
            other
                .recipients
                .iter()
                .map(|r| r.text.as_str())
                .collect::<Vec<_>>(),
            [B]
        );
        assert!(other.rule.is_none());
        assert_eq!(find(&dir.path().join("dev/deeper")), Some(cfg));
    }

    #[test]
    fn no_match_and_bad_rules_name_the_config() {
        let (dir, cfg) = setup(&format!(
            "creation_rules:\n  - path_regex: ^prod/\n    age: {A}\n"
        ));
        let err = settings_for(&cfg, &dir.path().join("dev/x.yaml")).expect_err("no rule");
        assert!(
            err.to_string()
                .contains("no creation rule matches dev/x.yaml"),
            "{err}"
        );
        let (dir, cfg) = setup(&format!(
            "creation_rules:\n  - age: {A}\n    encrypted_regex: a\n    unencrypted_regex: b\n"
        ));
        let err = settings_for(&cfg, &dir.path().join("x.yaml")).expect_err("two rules");
        assert!(err.to_string().contains(".sops.yaml"), "{err}");
        let (dir, cfg) = setup("creation_rules:\n  - pgp: ABCDEF\n");
        let err = settings_for(&cfg, &dir.path().join("x.yaml")).expect_err("no age");
        assert!(err.to_string().contains("no age recipients"), "{err}");
    }
}
