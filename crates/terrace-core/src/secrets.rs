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
