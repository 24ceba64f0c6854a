//! Walking a document tree to encrypt or decrypt its leaves and compute
//! the MAC, in the order and with the paths sops uses.
//!
//! The authenticated data of a leaf is its mapping keys joined with `:`
//! and ended with `:` (sequence indices are not part of it). The MAC is
//! SHA-512 over the plaintext of every non-comment leaf in walk order (or
//! only of encrypted leaves, after a fixed prefix, with
//! `mac_only_encrypted`), written as upper-case hex.

use std::collections::HashMap;
use std::fmt;

use sha2::{Digest, Sha256, Sha512};
use terrace_yaml::tree::{Key, Node};
use zeroize::{Zeroize, Zeroizing};

use crate::cipher::{self, KEY_LEN};
use crate::rules::Rule;

/// Ciphertexts of a file's previous version, keyed by authenticated data,
/// type and plaintext: a value that did not change keeps its ciphertext.
/// The plaintexts are zeroized on drop and never shown by `Debug`.
#[derive(Default, Clone)]
pub struct Stash(HashMap<(String, &'static str, Vec<u8>), String>);

impl fmt::Debug for Stash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stash")
            .field("values", &self.0.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Stash {
    fn drop(&mut self) {
        for ((_, _, mut plain), _) in self.0.drain() {
            plain.zeroize();
        }
    }
}

impl Stash {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The plaintext of every value that was encrypted in the file.
    pub fn plaintexts(&self) -> impl Iterator<Item = &[u8]> {
        self.0.keys().map(|(_, _, plain)| plain.as_slice())
    }

    /// Adds another stash's ciphertexts (same data key), keeping ours.
    pub fn absorb(&mut self, other: &Stash) {
        for (k, v) in &other.0 {
            self.0.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

/// A leaf that failed, with its place in the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafError {
    /// Dotted path with sequence indices, e.g. `data.password` or `a.b[2]`.
    pub path: String,
    pub error: LeafErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeafErrorKind {
    /// The file's rule says this value is encrypted, but it is plain.
    NotEncrypted,
    Decrypt(cipher::DecryptError),
}

/// What a walk does at each leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Encrypt,
    Decrypt,
}

struct Walk<'a> {
    mode: Mode,
    key: &'a [u8; KEY_LEN],
    rule: &'a Rule,
    mac_only_encrypted: bool,
    hash: Sha512,
    reuse: Option<&'a Stash>,
    record: Option<&'a mut Stash>,
    /// Mapping keys from the root (the authenticated data).
    path: Vec<String>,
    /// The same with sequence indices, for messages.
    shown: Vec<String>,
    comments: Vec<Vec<String>>,
}

/// Encrypts every leaf the rule selects, in place; returns the MAC of the
/// plaintext. Values found in `reuse` with the same plaintext keep their
/// old ciphertext.
pub fn encrypt(
    docs: &mut [Node],
    key: &[u8; KEY_LEN],
    rule: &Rule,
    mac_only_encrypted: bool,
    reuse: Option<&Stash>,
) -> String {
    let mut w = Walk::new(Mode::Encrypt, key, rule, mac_only_encrypted);
    w.reuse = reuse;
    for doc in docs.iter_mut() {
        w.value(doc)
            .expect("encryption of in-memory values does not fail");
    }
    w.finish()
}

/// Decrypts every leaf the rule selects, in place; returns the MAC of the
/// plaintext. When `record` is given, it collects the ciphertexts for a
/// later [`encrypt`] to reuse.
pub fn decrypt(
    docs: &mut [Node],
    key: &[u8; KEY_LEN],
    rule: &Rule,
    mac_only_encrypted: bool,
    record: Option<&mut Stash>,
) -> Result<String, LeafError> {
    let mut w = Walk::new(Mode::Decrypt, key, rule, mac_only_encrypted);
    w.record = record;
    for doc in docs.iter_mut() {
        w.value(doc)?;
    }
    Ok(w.finish())
}

/// The MAC of plaintext documents, without changing them.
pub fn mac_of_plaintext(docs: &[Node], rule: &Rule, mac_only_encrypted: bool) -> String {
    let mut copy = docs.to_vec();
    encrypt(&mut copy, &[0; KEY_LEN], rule, mac_only_encrypted, None)
}

impl<'a> Walk<'a> {
    fn new(mode: Mode, key: &'a [u8; KEY_LEN], rule: &'a Rule, mac_only_encrypted: bool) -> Self {
        let mut hash = Sha512::new();
        if mac_only_encrypted {
            // A fixed prefix, so the two MAC kinds never coincide.
            hash.update(Sha256::digest(b"sops"));
        }
        Walk {
            mode,
            key,
            rule,
            mac_only_encrypted,
            hash,
            reuse: None,
            record: None,
            path: Vec::new(),
            shown: Vec::new(),
            comments: Vec::new(),
        }
    }

    fn finish(self) -> String {
        self.hash
            .finalize()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect()
    }

    fn value(&mut self, node: &mut Node) -> Result<(), LeafError> {
        match node {
            Node::Map(items) => {
                self.comments.push(Vec::new());
                for (key, value) in items.iter_mut() {
                    match key {
                        Key::Comment(text) => {
                            self.note_comment(text);
                            let mut leaf = Node::Comment(std::mem::take(text));
                            self.leaf(&mut leaf, true)?;
                            if let Node::Comment(t) = leaf {
                                *text = t;
                            }
                        }
                        Key::Name(name) => {
                            self.path.push(name.clone());
                            self.shown.push(name.clone());
                            self.value(value)?;
                            self.path.pop();
                            self.shown.pop();
                            self.clear_comments();
                        }
                    }
                }
                self.comments.pop();
            }
            Node::Seq(items) => {
                self.comments.push(Vec::new());
                for (i, item) in items.iter_mut().enumerate() {
                    self.shown.push(format!("[{i}]"));
                    if let Node::Comment(text) = item {
                        let text = text.clone();
                        self.note_comment(&text);
                        self.leaf(item, true)?;
                    } else {
                        self.value(item)?;
                        self.clear_comments();
                    }
                    self.shown.pop();
                }
                self.comments.pop();
            }
            Node::Null => {}
            leaf => self.leaf(leaf, false)?,
        }
        Ok(())
    }

    fn note_comment(&mut self, text: &str) {
        if let Some(level) = self.comments.last_mut() {
            level.push(text.to_owned());
        }
    }

    fn clear_comments(&mut self) {
        if let Some(level) = self.comments.last_mut() {
            level.clear();
        }
    }

    fn aad(&self) -> String {
        let mut s = self.path.join(":");
        s.push(':');
        s
    }

    fn shown_path(&self) -> String {
        let mut out = String::new();
        for part in &self.shown {
            if !part.starts_with('[') && !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
        out
    }

    fn leaf(&mut self, node: &mut Node, is_comment: bool) -> Result<(), LeafError> {
        let encrypted = self.rule.encrypts(&self.path, &self.comments, is_comment);
        match self.mode {
            Mode::Encrypt => {
                self.add_to_mac(node, encrypted);
                if encrypted {
                    let aad = self.aad();
                    let reused = self.reuse.and_then(|stash| {
                        let (bytes, kind) = cipher::plain_bytes(node)?;
                        let mut probe = (aad.clone(), kind, bytes);
                        let found = stash.0.get(&probe).cloned();
                        probe.2.zeroize();
                        found
                    });
                    let text = match reused {
                        Some(t) => Some(t),
                        None => cipher::encrypt(node, self.key, &aad),
                    };
                    if let Some(text) = text {
                        *node = if is_comment {
                            Node::Comment(text)
                        } else {
                            Node::Str(text)
                        };
                    }
                }
            }
            Mode::Decrypt => {
                if encrypted {
                    self.decrypt_leaf(node, is_comment)?;
                }
                self.add_to_mac(node, encrypted);
            }
        }
        Ok(())
    }

    fn decrypt_leaf(&mut self, node: &mut Node, is_comment: bool) -> Result<(), LeafError> {
        let aad = self.aad();
        let text = match node {
            Node::Comment(t) | Node::Str(t) => t.clone(),
            _ => {
                return Err(LeafError {
                    path: self.shown_path(),
                    error: LeafErrorKind::NotEncrypted,
                });
            }
        };
        if text.is_empty() {
            return Ok(());
        }
        match cipher::decrypt(&text, self.key, &aad) {
            Ok(plain) => {
                let plain = match (is_comment, plain) {
                    (true, Node::Comment(c)) | (true, Node::Str(c)) => Node::Comment(c),
                    (_, other) => other,
                };
                if let Some(stash) = self.record.as_deref_mut()
                    && let Some((bytes, kind)) = cipher::plain_bytes(&plain)
                {
                    stash.0.insert((aad, kind, bytes), text);
                }
                *node = plain;
                Ok(())
            }
            // A comment that does not decrypt was never encrypted (older
            // sops, or written by hand): it is kept as it is.
            Err(_) if is_comment => Ok(()),
            Err(cipher::DecryptError::Parse(cipher::EncParseError::NotEncrypted)) => {
                Err(LeafError {
                    path: self.shown_path(),
                    error: LeafErrorKind::NotEncrypted,
                })
            }
            Err(e) => Err(LeafError {
                path: self.shown_path(),
                error: LeafErrorKind::Decrypt(e),
            }),
        }
    }

    fn add_to_mac(&mut self, node: &Node, encrypted: bool) {
        if matches!(node, Node::Comment(_)) || (self.mac_only_encrypted && !encrypted) {
            return;
        }
        if let Some((bytes, _)) = cipher::plain_bytes(node) {
            let bytes = Zeroizing::new(bytes);
            self.hash.update(bytes.as_slice());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn docs(src: &str) -> Vec<Node> {
        terrace_yaml::tree::parse_stream(src, Path::new("t.yaml")).expect("parses")
    }

    #[test]
    fn encrypt_then_decrypt_restores_and_macs_agree() {
        let key = cipher::random();
        let plain = docs(
            "# c\na: 1\nb:\n  c: hello\n  d: [1, 2.5, true]\ne_unencrypted: x\nf: null\ng: \"\"\n",
        );
        let mut work = plain.clone();
        let rule = Rule::default();
        let mac = encrypt(&mut work, &key, &rule, false, None);
        assert_ne!(work, plain);
        assert_eq!(work[0].get("e_unencrypted"), Some(&Node::Str("x".into())));
        assert_eq!(work[0].get("g"), Some(&Node::Str(String::new())));
        let mut stash = Stash::default();
        let mac2 = decrypt(&mut work, &key, &rule, false, Some(&mut stash)).expect("decrypts");
        assert_eq!(work, plain);
        assert_eq!(mac, mac2);
        assert_eq!(mac.len(), 128);
        assert_eq!(stash.len(), 6, "five values and the comment");
    }

    #[test]
    fn unchanged_values_keep_their_ciphertext() {
        let key = cipher::random();
        let rule = Rule::default();
        let mut first = docs("a: one\nb: two\n");
        encrypt(&mut first, &key, &rule, false, None);
        let mut old = first.clone();
        let mut stash = Stash::default();
        decrypt(&mut old, &key, &rule, false, Some(&mut stash)).expect("decrypts");
        let mut second = docs("a: one\nb: changed\n");
        encrypt(&mut second, &key, &rule, false, Some(&stash));
        assert_eq!(second[0].get("a"), first[0].get("a"));
        assert_ne!(second[0].get("b"), first[0].get("b"));
    }

    #[test]
    fn a_moved_value_does_not_decrypt() {
        let key = cipher::random();
        let rule = Rule::default();
        let mut d = docs("a: secret\nb: other\n");
        encrypt(&mut d, &key, &rule, false, None);
        let Node::Map(items) = &mut d[0] else {
            panic!("map")
        };
        let a = items[0].1.clone();
        items[1].1 = a;
        let err = decrypt(&mut d, &key, &rule, false, None).expect_err("tampered");
        assert_eq!(err.path, "b");
        assert!(matches!(
            err.error,
            LeafErrorKind::Decrypt(cipher::DecryptError::Authentication)
        ));
    }

    #[test]
    fn mac_only_encrypted_ignores_plain_values() {
        let rule = Rule::from_parts("encrypted_regex", "^data$").expect("valid");
        let a = mac_of_plaintext(&docs("data: x\nname: one\n"), &rule, true);
        let b = mac_of_plaintext(&docs("data: x\nname: two\n"), &rule, true);
        let c = mac_of_plaintext(&docs("data: x\nname: two\n"), &rule, false);
        assert_eq!(a, b);
        assert_ne!(b, c);
    }
}
