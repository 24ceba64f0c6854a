//! SOPS-compatible secrets: files sops writes, terrace reads, and the
//! other way round, with age recipients.
//!
//! - [`open`] decrypts a file in memory and checks its MAC;
//! - [`encrypt`] encrypts a plaintext file under [`config::Settings`];
//! - [`Opened::seal`] re-encrypts edited plaintext, keeping the ciphertext
//!   of every value that did not change (a Git diff shows only edits);
//! - [`Opened::rotate`] and [`Opened::rekey`] change the data key or the
//!   recipients; [`merge::merge`] merges two edits by key path.
//!
//! Nothing here writes plaintext anywhere: callers get trees and strings.

pub mod cipher;
pub mod config;
mod error;
pub mod format;
pub mod keys;
pub mod merge;
pub mod metadata;
pub mod rules;
mod store;
pub mod walk;

use std::path::{Path, PathBuf};

pub use error::SecretsError;
pub use format::Format;
pub use keys::{KeySources, Keyring, Recipient};
pub use store::SecretStore;
pub use terrace_yaml::tree::{Key, Node};

use cipher::KEY_LEN;
use metadata::Metadata;
use walk::{LeafError, LeafErrorKind, Stash};

/// A decrypted file: its plaintext documents and what is needed to write
/// it back.
#[derive(Debug, Clone)]
pub struct Opened {
    pub file: PathBuf,
    pub format: Format,
    pub plain: Vec<Node>,
    pub meta: Metadata,
    data_key: [u8; KEY_LEN],
    stash: Stash,
    plain_mac: String,
}

/// Whether text is a SOPS file (has `sops` metadata).
pub fn is_encrypted(text: &str, format: Format, file: &Path) -> bool {
    format::load(format, text, file)
        .map(|mut docs| format::split_metadata(format, &mut docs).is_some())
        .unwrap_or(false)
}

fn any_encrypted_value(node: &Node) -> bool {
    match node {
        Node::Str(s) => cipher::is_encrypted(s),
        Node::Seq(items) => items.iter().any(any_encrypted_value),
        Node::Map(items) => items.iter().any(|(_, v)| any_encrypted_value(v)),
        _ => false,
    }
}

/// A SOPS file's (still encrypted) documents and its metadata. A file
/// with encrypted values but no metadata, or that stops parsing, is
/// reported as truncated.
pub fn read_encrypted(
    text: &str,
    file: &Path,
    format: Format,
) -> Result<(Vec<Node>, Metadata), SecretsError> {
    let mut docs = match format::load(format, text, file) {
        Ok(d) => d,
        Err(SecretsError::Parse(d)) if text.contains("ENC[AES256_GCM,") => {
            return Err(SecretsError::Truncated {
                file: file.to_owned(),
                detail: d.message.clone(),
            });
        }
        Err(e) => return Err(e),
    };
    let Some(meta_node) = format::split_metadata(format, &mut docs) else {
        return Err(if docs.iter().any(any_encrypted_value) {
            SecretsError::Truncated {
                file: file.to_owned(),
                detail: "it has encrypted values but no `sops` metadata (the end of the file is missing)".into(),
            }
        } else {
            SecretsError::NotEncrypted {
                file: file.to_owned(),
            }
        });
    };
    let meta = Metadata::from_node(&meta_node, file)?;
    Ok((docs, meta))
}

/// Decrypts a SOPS file in memory and checks its MAC.
pub fn open(
    text: &str,
    file: &Path,
    format: Format,
    keys: &Keyring,
) -> Result<Opened, SecretsError> {
    let (mut docs, meta) = read_encrypted(text, file, format)?;
    let data_key = keys.data_key(&meta, file)?;
    let mut stash = Stash::default();
    let mac = walk::decrypt(
        &mut docs,
        &data_key,
        &meta.rule,
        meta.mac_only_encrypted,
        Some(&mut stash),
    )
    .map_err(|e| leaf_error(e, file))?;
    let stored = match cipher::decrypt(&meta.mac, &data_key, &meta.lastmodified) {
        Ok(Node::Str(s)) => s,
        Ok(_) | Err(cipher::DecryptError::Authentication) => {
            return Err(SecretsError::MacMismatch {
                file: file.to_owned(),
            });
        }
        Err(e) => {
            return Err(SecretsError::BadValue {
                file: file.to_owned(),
                path: "sops.mac".into(),
                detail: e.to_string(),
            });
        }
    };
    if !stored.eq_ignore_ascii_case(&mac) {
        return Err(SecretsError::MacMismatch {
            file: file.to_owned(),
        });
    }
    Ok(Opened {
        file: file.to_owned(),
        format,
        plain: docs,
        meta,
        data_key,
        stash,
        plain_mac: mac,
    })
}

fn leaf_error(e: LeafError, file: &Path) -> SecretsError {
    let file = file.to_owned();
    match e.error {
        LeafErrorKind::NotEncrypted => SecretsError::PlainValue { file, path: e.path },
        LeafErrorKind::Decrypt(cipher::DecryptError::Authentication) => {
            SecretsError::Tampered { file, path: e.path }
        }
        LeafErrorKind::Decrypt(other) => SecretsError::BadValue {
            file,
            path: e.path,
            detail: other.to_string(),
        },
    }
}

/// Encrypts a plaintext file under `settings`, with a fresh data key.
pub fn encrypt(
    text: &str,
    file: &Path,
    format: Format,
    settings: &config::Settings,
) -> Result<String, SecretsError> {
    let mut docs = format::load(format, text, file)?;
    if format::split_metadata(format, &mut docs.clone()).is_some() {
        return Err(SecretsError::AlreadyEncrypted {
            file: file.to_owned(),
        });
    }
    if settings.recipients.is_empty() {
        return Err(SecretsError::Config {
            file: file.to_owned(),
            message: "no age recipients: pass --age or add a .sops.yaml creation rule".into(),
        });
    }
    let data_key: [u8; KEY_LEN] = cipher::random();
    let rule = settings.rule.clone().unwrap_or_default();
    let mac = walk::encrypt(
        &mut docs,
        &data_key,
        &rule,
        settings.mac_only_encrypted,
        None,
    );
    let lastmodified = now();
    let meta = Metadata {
        age: settings
            .recipients
            .iter()
            .map(|r| r.seal(&data_key))
            .collect(),
        mac: encrypt_mac(&mac, &data_key, &lastmodified),
        lastmodified,
        rule,
        mac_only_encrypted: settings.mac_only_encrypted,
        version: metadata::SOPS_VERSION.to_owned(),
        other_keys: Vec::new(),
    };
    write(format, docs, &meta, file)
}

fn encrypt_mac(mac: &str, key: &[u8; KEY_LEN], lastmodified: &str) -> String {
    cipher::encrypt(&Node::Str(mac.to_owned()), key, lastmodified).expect("a string leaf")
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn write(
    format: Format,
    mut docs: Vec<Node>,
    meta: &Metadata,
    file: &Path,
) -> Result<String, SecretsError> {
    format::join_metadata(format, &mut docs, &meta.to_node());
    format::emit(format, &docs).map_err(|what| SecretsError::Unsupported {
        file: file.to_owned(),
        what,
    })
}

impl Opened {
    /// `plain` encrypted with this file's data key and rule, reusing the
    /// ciphertext of unchanged values; and its MAC.
    fn reencrypt(&self, plain: &[Node]) -> (Vec<Node>, String) {
        let mut docs = plain.to_vec();
        let mac = walk::encrypt(
            &mut docs,
            &self.data_key,
            &self.meta.rule,
            self.meta.mac_only_encrypted,
            Some(&self.stash),
        );
        (docs, mac)
    }

    /// Re-encrypts `plain` with the same data key, recipients and rule.
    /// Unchanged values keep their ciphertext; when nothing changed at
    /// all, `lastmodified` and the MAC stay too.
    pub fn seal(&self, plain: &[Node]) -> Result<String, SecretsError> {
        let (docs, mac) = self.reencrypt(plain);
        let mut meta = self.meta.clone();
        if mac != self.plain_mac {
            meta.lastmodified = now();
            meta.mac = encrypt_mac(&mac, &self.data_key, &meta.lastmodified);
        }
        write(self.format, docs, &meta, &self.file)
    }

    /// Whether `plain` differs from what was decrypted.
    pub fn changed(&self, plain: &[Node]) -> bool {
        self.plain != plain
    }

    /// A new data key, every value re-encrypted, sealed to `recipients`
    /// (the current ones when `None`).
    pub fn rotate(&self, recipients: Option<&[Recipient]>) -> Result<String, SecretsError> {
        if !self.meta.other_keys.is_empty() {
            return Err(SecretsError::Unsupported {
                file: self.file.clone(),
                what: "the file also has non-age keys (pgp, kms, …) that terrace cannot re-encrypt a new data key to; use sops rotate".into(),
            });
        }
        let current;
        let recipients = match recipients {
            Some(r) => r,
            None => {
                current = self.current_recipients()?;
                &current
            }
        };
        let data_key: [u8; KEY_LEN] = cipher::random();
        let mut docs = self.plain.clone();
        let mac = walk::encrypt(
            &mut docs,
            &data_key,
            &self.meta.rule,
            self.meta.mac_only_encrypted,
            None,
        );
        let mut meta = self.meta.clone();
        meta.lastmodified = now();
        meta.mac = encrypt_mac(&mac, &data_key, &meta.lastmodified);
        meta.age = recipients.iter().map(|r| r.seal(&data_key)).collect();
        write(self.format, docs, &meta, &self.file)
    }

    /// The same data key sealed to a new set of recipients; stanzas of
    /// recipients that stay are kept as they are. Values are untouched.
    pub fn rekey(&self, recipients: &[Recipient]) -> Result<String, SecretsError> {
        let (docs, _) = self.reencrypt(&self.plain);
        let mut meta = self.meta.clone();
        meta.age = recipients
            .iter()
            .map(|r| {
                self.meta
                    .age
                    .iter()
                    .find(|s| s.recipient == r.text)
                    .cloned()
                    .unwrap_or_else(|| r.seal(&self.data_key))
            })
            .collect();
        write(self.format, docs, &meta, &self.file)
    }

    pub fn current_recipients(&self) -> Result<Vec<Recipient>, SecretsError> {
        self.meta
            .age
            .iter()
            .map(|s| Recipient::parse(&s.recipient))
            .collect()
    }

    /// The plaintext file, as it would be written.
    pub fn plaintext(&self) -> Result<String, SecretsError> {
        format::emit(self.format, &self.plain).map_err(|what| SecretsError::Unsupported {
            file: self.file.clone(),
            what,
        })
    }

    /// Whether two files share a data key (so their ciphertexts can be
    /// reused across them).
    pub fn same_key(&self, other: &Opened) -> bool {
        self.data_key == other.data_key
    }

    /// Seals `plain` reusing ciphertexts from `self` and `other` (which
    /// must share the data key).
    pub fn seal_with(&self, other: &Opened, plain: &[Node]) -> Result<String, SecretsError> {
        let mut merged = self.clone();
        if self.same_key(other) {
            merged.stash.absorb(&other.stash);
        }
        merged.seal(plain)
    }

    /// The value at a dotted key path (`a.b.0.c`) in the first document
    /// that has it.
    pub fn lookup(&self, key: &str) -> Result<&Node, SecretsError> {
        self.plain
            .iter()
            .find_map(|doc| lookup(doc, key))
            .ok_or_else(|| SecretsError::NoSuchKey {
                file: self.file.clone(),
                key: key.to_owned(),
            })
    }
}

/// Follows a dotted path; numeric parts index sequences (comments are not
/// counted).
pub fn lookup<'a>(node: &'a Node, key: &str) -> Option<&'a Node> {
    let mut current = node;
    if key.is_empty() {
        return Some(current);
    }
    for part in key.split('.') {
        current = match current {
            Node::Map(_) => current.get(part)?,
            Node::Seq(items) => {
                let i: usize = part.parse().ok()?;
                items
                    .iter()
                    .filter(|n| !matches!(n, Node::Comment(_)))
                    .nth(i)?
            }
            _ => return None,
        };
    }
    Some(current)
}
