//! The `sops:` block: age stanzas, lastmodified, the encrypted MAC, the
//! encryption rule, version. Key types terrace cannot use (pgp, kms, …)
//! are kept verbatim so a rewrite does not drop them.

use std::path::Path;

use terrace_yaml::tree::{Key, Node};

use crate::error::SecretsError;
use crate::rules::{RULE_KEYS, Rule};

/// The version terrace writes: the sops file format it matches.
pub const SOPS_VERSION: &str = "3.11.0";

/// One age recipient and the data key encrypted to it (armored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgeStanza {
    pub recipient: String,
    pub enc: String,
}

/// A file's `sops` metadata.
#[derive(Debug, Clone)]
pub struct Metadata {
    pub age: Vec<AgeStanza>,
    pub lastmodified: String,
    /// The encrypted MAC (`ENC[...]`, authenticated by `lastmodified`).
    pub mac: String,
    pub rule: Rule,
    pub mac_only_encrypted: bool,
    pub version: String,
    /// Non-empty key lists of other kinds (`pgp`, `kms`, …), kept as read.
    pub other_keys: Vec<(String, Node)>,
}

const OTHER_KEY_KINDS: [&str; 5] = ["kms", "gcp_kms", "azure_kv", "hc_vault", "pgp"];

impl Metadata {
    /// Reads the metadata mapping. Missing parts are reported as damage.
    pub fn from_node(node: &Node, file: &Path) -> Result<Metadata, SecretsError> {
        let truncated = |detail: &str| SecretsError::Truncated {
            file: file.to_owned(),
            detail: detail.to_owned(),
        };
        let Node::Map(_) = node else {
            return Err(truncated("the `sops` metadata is not a mapping"));
        };
        let string = |name: &str| match node.get(name) {
            Some(Node::Str(s)) => Some(s.clone()),
            _ => None,
        };
        let mut age = Vec::new();
        let mut other_keys = Vec::new();
        let mut groups = 0;
        if let Some(Node::Seq(gs)) = node.get("key_groups") {
            for g in gs.iter().filter(|g| !matches!(g, Node::Comment(_))) {
                groups += 1;
                read_age(g.get("age"), &mut age, file)?;
            }
        }
        if groups > 1 {
            return Err(SecretsError::Unsupported {
                file: file.to_owned(),
                what: "several key groups (Shamir secret sharing) are not supported; use sops for this file".into(),
            });
        }
        read_age(node.get("age"), &mut age, file)?;
        for kind in OTHER_KEY_KINDS {
            if let Some(v) = node.get(kind)
                && !v.is_empty_collection()
                && *v != Node::Null
            {
                other_keys.push((kind.to_owned(), v.clone()));
            }
        }
        if age.is_empty() && other_keys.is_empty() {
            return Err(truncated("the `sops` metadata lists no keys"));
        }
        let lastmodified =
            string("lastmodified").ok_or_else(|| truncated("`sops.lastmodified` is missing"))?;
        let mac = string("mac").ok_or_else(|| truncated("`sops.mac` is missing"))?;
        let mut rule = None;
        for name in RULE_KEYS {
            if let Some(value) = string(name).filter(|v| !v.is_empty()) {
                if rule.is_some() {
                    return Err(SecretsError::Config {
                        file: file.to_owned(),
                        message: "the metadata sets more than one encryption rule".into(),
                    });
                }
                rule = Some(Rule::from_parts(name, &value).map_err(|message| {
                    SecretsError::Config {
                        file: file.to_owned(),
                        message,
                    }
                })?);
            }
        }
        let mac_only_encrypted = match node.get("mac_only_encrypted") {
            Some(Node::Bool(b)) => *b,
            Some(Node::Str(s)) => s == "true",
            _ => false,
        };
        Ok(Metadata {
            age,
            lastmodified,
            mac,
            rule: rule.unwrap_or_default(),
            mac_only_encrypted,
            version: string("version").unwrap_or_else(|| SOPS_VERSION.to_owned()),
            other_keys,
        })
    }

    /// The metadata mapping, in the order sops 3.11 writes it.
    pub fn to_node(&self) -> Node {
        let mut items: Vec<(Key, Node)> = Vec::new();
        let mut push = |k: &str, v: Node| items.push((Key::Name(k.to_owned()), v));
        for (kind, v) in &self.other_keys {
            if kind != "pgp" {
                push(kind, v.clone());
            }
        }
        if !self.age.is_empty() {
            push(
                "age",
                Node::Seq(
                    self.age
                        .iter()
                        .map(|s| {
                            Node::Map(vec![
                                (
                                    Key::Name("recipient".into()),
                                    Node::Str(s.recipient.clone()),
                                ),
                                (Key::Name("enc".into()), Node::Str(s.enc.clone())),
                            ])
                        })
                        .collect(),
                ),
            );
        }
        push("lastmodified", Node::Str(self.lastmodified.clone()));
        push("mac", Node::Str(self.mac.clone()));
        for (kind, v) in &self.other_keys {
            if kind == "pgp" {
                push(kind, v.clone());
            }
        }
        let (name, value) = self.rule.parts();
        push(name, Node::Str(value.to_owned()));
        if self.mac_only_encrypted {
            push("mac_only_encrypted", Node::Bool(true));
        }
        push("version", Node::Str(self.version.clone()));
        Node::Map(items)
    }
}

fn read_age(
    node: Option<&Node>,
    out: &mut Vec<AgeStanza>,
    file: &Path,
) -> Result<(), SecretsError> {
    let Some(Node::Seq(items)) = node else {
        return Ok(());
    };
    for item in items.iter().filter(|i| !matches!(i, Node::Comment(_))) {
        let field = |name: &str| match item.get(name) {
            Some(Node::Str(s)) => Some(s.clone()),
            _ => None,
        };
        let (Some(recipient), Some(enc)) = (field("recipient"), field("enc")) else {
            return Err(SecretsError::Truncated {
                file: file.to_owned(),
                detail: "an age entry lacks `recipient` or `enc`".into(),
            });
        };
        if !enc.trim_end().ends_with("-----END AGE ENCRYPTED FILE-----") {
            return Err(SecretsError::Truncated {
                file: file.to_owned(),
                detail: format!("the data key encrypted to {recipient} is cut short"),
            });
        }
        out.push(AgeStanza { recipient, enc });
    }
    Ok(())
}
