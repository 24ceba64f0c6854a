use std::path::PathBuf;

use terrace_core::diag::Diagnostic;

/// Everything that can go wrong with a secrets file. Every variant names
/// the file; those about one value name its key path.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{}: {source}", file.display())]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", .0.message)]
    Parse(Box<Diagnostic>),
    #[error("{} is not a SOPS file: it has no `sops` metadata and no encrypted values", file.display())]
    NotEncrypted { file: PathBuf },
    #[error("{} is already encrypted", file.display())]
    AlreadyEncrypted { file: PathBuf },
    #[error("{} looks truncated or damaged: {detail}", file.display())]
    Truncated { file: PathBuf, detail: String },
    #[error("no age identity found to decrypt {}; looked in: {}", file.display(), searched.join(", "))]
    NoIdentities {
        file: PathBuf,
        searched: Vec<String>,
    },
    #[error("none of the age identities found ({}) can decrypt {}; it is encrypted to: {}", tried.join(", "), file.display(), recipients.join(", "))]
    WrongKey {
        file: PathBuf,
        recipients: Vec<String>,
        tried: Vec<String>,
    },
    #[error("{}: the value at `{path}` failed authentication: it was altered, moved, or encrypted with another data key", file.display())]
    Tampered { file: PathBuf, path: String },
    #[error("{}: the value at `{path}` is not encrypted, though the file's rule says it should be", file.display())]
    PlainValue { file: PathBuf, path: String },
    #[error("{}: the value at `{path}` is not a valid encrypted value: {detail}", file.display())]
    BadValue {
        file: PathBuf,
        path: String,
        detail: String,
    },
    #[error("{}: MAC mismatch: the values, their order or the metadata were changed outside sops or terrace", file.display())]
    MacMismatch { file: PathBuf },
    #[error("{}: {what}", file.display())]
    Unsupported { file: PathBuf, what: String },
    #[error("{}: {message}", file.display())]
    Config { file: PathBuf, message: String },
    #[error("`{value}` is not an age recipient: {message}")]
    Recipient { value: String, message: String },
    #[error("{}: no key `{key}`", file.display())]
    NoSuchKey { file: PathBuf, key: String },
    #[error("{}", .0)]
    Conflicts(String),
}

impl SecretsError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            SecretsError::NoIdentities { .. } => "set SOPS_AGE_KEY_FILE to your age key file (or SOPS_AGE_KEY to a key), or put it at ~/.config/sops/age/keys.txt".into(),
            SecretsError::WrongKey { .. } => "use a key for one of the listed recipients, or ask a holder to add yours with `terrace secrets updatekeys`".into(),
            SecretsError::Tampered { .. } | SecretsError::MacMismatch { .. } => "restore the file from Git history; do not edit encrypted values by hand (use `terrace secrets edit`)".into(),
            SecretsError::Truncated { .. } => "restore the file from Git history; it was probably cut by an interrupted write or a bad merge".into(),
            SecretsError::NotEncrypted { .. } => "encrypt it with `terrace secrets encrypt -i FILE`".into(),
            SecretsError::PlainValue { .. } => "edit encrypted files with `terrace secrets edit FILE`, which encrypts new values".into(),
            SecretsError::Config { .. } => "see .sops.yaml `creation_rules` in the README's secrets section".into(),
            _ => return None,
        })
    }

    pub(crate) fn io(file: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SecretsError::Io {
            file: file.into(),
            source,
        }
    }
}
