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
//! Types that hold plaintext, data keys or private keys print
//! `<redacted>` in their `Debug` output, and zeroize what they can on drop.

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

use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::Zeroize;

pub use error::SecretsError;
pub use format::Format;
pub use keys::{KeySources, Keyring, Recipient};
pub use store::SecretStore;
pub use terrace_yaml::tree::{Key, Node};
/// The wrapper that zeroizes on drop, as [`KeySources::key_text`] holds it.
pub use zeroize::Zeroizing;

use cipher::KEY_LEN;
use metadata::Metadata;
use walk::{LeafError, LeafErrorKind, Stash};

/// A decrypted file: its plaintext documents and what is needed to write
/// it back. Its `Debug` shows the file, the number of documents and the
/// recipients, never values or the data key.
#[derive(Clone)]
pub struct Opened {
    pub file: PathBuf,
    pub format: Format,
    pub plain: Vec<Node>,
    pub meta: Metadata,
    data_key: Zeroizing<[u8; KEY_LEN]>,
    stash: Stash,
    plain_mac: String,
}

impl Opened {
    /// The plaintext of every value the file holds encrypted (not the
    /// values its rule leaves plain), for sinks to search for.
    pub fn secret_values(&self) -> Vec<String> {
        self.stash
            .plaintexts()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let recipients: Vec<&str> = self.meta.age.iter().map(|s| s.recipient.as_str()).collect();
        f.debug_struct("Opened")
            .field("file", &self.file)
            .field("format", &self.format)
            .field("documents", &self.plain.len())
            .field("recipients", &recipients)
            .field("plain", &Redacted)
            .field("data_key", &Redacted)
            .finish_non_exhaustive()
    }
}

/// Stands in for a secret in `Debug` output.
pub(crate) struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Overwrites every value and comment of a plaintext tree with zeros
/// (mapping keys stay: sops never encrypts them).
pub(crate) fn zeroize_node(node: &mut Node) {
    match node {
        Node::Null => {}
        Node::Bool(b) => b.zeroize(),
        Node::Int(i) => i.zeroize(),
        Node::Float(x) => x.zeroize(),
        Node::Str(s) | Node::Comment(s) => s.zeroize(),
        Node::Seq(items) => items.iter_mut().for_each(zeroize_node),
        Node::Map(items) => {
            for (key, value) in items.iter_mut() {
                if let Key::Comment(c) = key {
                    c.zeroize();
                }
                zeroize_node(value);
            }
        }
    }
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
    let data_key: Zeroizing<[u8; KEY_LEN]> = Zeroizing::new(cipher::random());
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

use terrace_fs::time::now_rfc3339 as now;

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
    /// Overwrites the plaintext documents with zeros, for a holder about
    /// to drop the last copy (the data key and the stash zeroize
    /// themselves on drop).
    pub(crate) fn zeroize_plaintext(&mut self) {
        self.plain.iter_mut().for_each(zeroize_node);
    }

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
        let data_key: Zeroizing<[u8; KEY_LEN]> = Zeroizing::new(cipher::random());
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

#[cfg(test)]
mod tests {
    use age::secrecy::ExposeSecret;
    use terrace_core::secrets::SecretSource;
    use terrace_core::value_path::Seg;

    use super::*;

    const PLAIN: &str = "hunter2-do-not-print";

    /// Fails if `debug` shows the plaintext, an age private key or the
    /// data key's bytes.
    fn assert_redacted(what: &str, debug: &str, data_key: &str) {
        assert!(!debug.contains(PLAIN), "{what} shows a value: {debug}");
        assert!(
            !debug.contains("AGE-SECRET-KEY-"),
            "{what} shows a private key: {debug}"
        );
        assert!(
            !debug.contains(data_key),
            "{what} shows the data key: {debug}"
        );
    }

    #[test]
    fn debug_output_never_shows_values_or_keys() {
        let id = age::x25519::Identity::generate();
        let key_text = id.to_string().expose_secret().to_owned();
        let public = id.to_public().to_string();
        let sources = KeySources {
            key_text: Some(Zeroizing::new(key_text)),
            ..KeySources::default()
        };
        let ring = Keyring::load(&sources).expect("the key text loads");
        let settings = config::Settings {
            recipients: vec![Recipient::parse(&public).expect("recipient")],
            ..config::Settings::default()
        };
        let file = Path::new("s.yaml");
        let text = encrypt(
            &format!("db:\n    password: {PLAIN}\n    port: 5432\n"),
            file,
            Format::Yaml,
            &settings,
        )
        .expect("encrypts");
        let opened = open(&text, file, Format::Yaml, &ring).expect("opens");
        assert_eq!(
            opened.lookup("db.password").expect("the key is there"),
            &Node::Str(PLAIN.into())
        );
        assert!(!opened.stash.is_empty(), "the stash holds plaintexts");
        let data_key = format!("{:?}", *opened.data_key);

        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(file), &text).expect("write");
        let store = SecretStore::with_sources(dir.path(), sources.clone());
        let value = store
            .value(
                "s.yaml",
                &[Seg::Key("db".into()), Seg::Key("password".into())],
            )
            .expect("the store decrypts");
        assert_eq!(value, serde_json::Value::String(PLAIN.into()));

        for (what, debug) in [
            ("KeySources", format!("{sources:?}")),
            ("Keyring", format!("{ring:?}")),
            ("Settings", format!("{settings:?}")),
            ("Opened", format!("{opened:?}")),
            ("Opened (pretty)", format!("{opened:#?}")),
            ("Stash", format!("{:?}", opened.stash)),
            ("SecretStore", format!("{store:?}")),
        ] {
            assert_redacted(what, &debug, &data_key);
        }
        // What is shown is still useful.
        assert!(format!("{sources:?}").contains("<redacted>"));
        assert!(format!("{ring:?}").contains(&public));
        let shown = format!("{opened:?}");
        assert!(
            shown.contains("s.yaml") && shown.contains(&public),
            "{shown}"
        );
        assert!(format!("{store:?}").contains("s.yaml"));
    }

    #[test]
    fn zeroizing_the_plaintext_clears_every_value() {
        let mut docs = terrace_yaml::tree::parse_stream(
            &format!("# {PLAIN}\na: {PLAIN}\nb: [{PLAIN}, 7]\n"),
            Path::new("t.yaml"),
        )
        .expect("parses");
        assert!(format!("{docs:?}").contains(PLAIN));
        docs.iter_mut().for_each(zeroize_node);
        let left = format!("{docs:?}");
        assert!(!left.contains(PLAIN), "{left}");
        assert!(!left.contains('7'), "{left}");
    }
}
