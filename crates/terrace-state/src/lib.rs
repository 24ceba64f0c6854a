//! Where terrace keeps what it applied. Every backend implements
//! [`StateBackend`]: per environment and unit a [`UnitState`] record, a lock
//! held while the unit is applied, and a history of runs.
//!
//! [`LocalBackend`] keeps them as JSON files under `.terrace/state/`. Every
//! write goes through `terrace_fs::atomic::write` (temporary file, fsync, rename,
//! fsync of the directory), so a crash leaves the previous record or the
//! new one, never half of either.

mod local;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

pub use local::{LocalBackend, is_stale, parse_state};
use terrace_core::driver::BoxFuture;
use terrace_core::state::{LockInfo, RunRecord, UnitState};

/// Why a state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("state file {path} is not valid: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("state file {path} has format {found}; this terrace reads formats 1 to {expected}")]
    Format {
        path: PathBuf,
        found: u64,
        expected: u32,
    },
    /// The remote store failed or refused a request.
    #[error("{0}")]
    Remote(String),
    /// The record changed since this process read it: another writer got
    /// there first (compare-and-swap refused the write).
    #[error(
        "the state record of unit `{unit}` in environment `{environment}` changed since this run read it: another process wrote it"
    )]
    Conflict { environment: String, unit: String },
    #[error("unit `{unit}` in environment `{environment}` is locked by {holder}{}", if *.stale { " — that process is gone" } else { "" })]
    Locked {
        environment: String,
        unit: String,
        holder: Box<LockInfo>,
        /// The holder ran on this host and is no longer running.
        stale: bool,
    },
}

impl StateError {
    pub fn hint(&self) -> Option<String> {
        match self {
            StateError::Locked {
                environment,
                unit,
                stale: true,
                ..
            } => Some(format!(
                "if nothing else is applying it, break the lock: terrace state unlock {unit} --env {environment}"
            )),
            StateError::Locked { .. } => Some(
                "wait for the other run to finish, or pass --lock-timeout to wait for it"
                    .to_owned(),
            ),
            StateError::Conflict { unit, .. } => Some(format!(
                "nothing was overwritten; plan again (`terrace plan --unit {unit}`) to see what the other run applied"
            )),
            StateError::Corrupt { .. } => Some(
                "restore the file from a backup or remove it; terrace then plans the unit as new"
                    .to_owned(),
            ),
            _ => None,
        }
    }
}

/// Encryption at rest of what a backend stores (records and runs): the
/// CLI gives remote backends one made from `state.encryption`.
pub trait RecordCipher: Send + Sync + fmt::Debug {
    /// `plain` sealed for storage.
    fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, StateError>;
    /// The plaintext of `stored` (read from `at`, for errors). A stored
    /// object that is not sealed is refused unless the cipher allows
    /// plaintext (while state written before encryption is rewritten).
    fn open(&self, stored: &[u8], at: &str) -> Result<Vec<u8>, StateError>;
}

/// What a remote backend stores for `plain`: sealed by `cipher`, or as
/// it is without one.
pub fn seal_with(cipher: Option<&dyn RecordCipher>, plain: Vec<u8>) -> Result<Vec<u8>, StateError> {
    match cipher {
        Some(c) => c.seal(&plain),
        None => Ok(plain),
    }
}

/// The plaintext of what a remote backend read at `at`. Without a cipher
/// an age file is refused with what to add, never parsed as a record.
pub fn open_with(
    cipher: Option<&dyn RecordCipher>,
    stored: &[u8],
    at: &str,
) -> Result<Vec<u8>, StateError> {
    match cipher {
        Some(c) => c.open(stored, at),
        None if stored.starts_with(b"age-encryption.org/") => Err(StateError::Remote(format!(
            "{at} is encrypted, and terrace.yaml's state has no `encryption`; add the recipients it was encrypted to"
        ))),
        None => Ok(stored.to_vec()),
    }
}

/// A state backend.
pub trait StateBackend: Send + Sync + fmt::Debug {
    /// Where the state lives, for messages.
    fn describe(&self) -> String;

    /// The unit's record, if it was ever applied.
    fn read<'a>(
        &'a self,
        environment: &'a str,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<Option<UnitState>, StateError>>;

    /// Replaces the unit's record, atomically.
    fn write<'a>(&'a self, state: &'a UnitState) -> BoxFuture<'a, Result<(), StateError>>;

    /// Removes the unit's record (after destroy).
    fn remove<'a>(
        &'a self,
        environment: &'a str,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<(), StateError>>;

    /// The names of every unit with a record in the environment, sorted.
    fn list<'a>(&'a self, environment: &'a str) -> BoxFuture<'a, Result<Vec<String>, StateError>>;

    /// Takes the unit's lock, waiting up to `wait` for another holder. A
    /// lock whose holder ran on this host and is gone is taken over; its
    /// holder is returned so the caller can say so.
    fn lock<'a>(
        &'a self,
        environment: &'a str,
        unit: &'a str,
        holder: &'a LockInfo,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Option<LockInfo>, StateError>>;

    /// Releases a lock this run holds; another holder's lock is left alone.
    fn unlock<'a>(
        &'a self,
        environment: &'a str,
        unit: &'a str,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StateError>>;

    /// Breaks the unit's lock whoever holds it; returns the holder.
    fn force_unlock<'a>(
        &'a self,
        environment: &'a str,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<Option<LockInfo>, StateError>>;

    /// Who holds the unit's lock, if anyone.
    fn lock_holder<'a>(
        &'a self,
        environment: &'a str,
        unit: &'a str,
    ) -> BoxFuture<'a, Result<Option<LockInfo>, StateError>>;

    /// Appends a run to the environment's history.
    fn record_run<'a>(&'a self, run: &'a RunRecord) -> BoxFuture<'a, Result<(), StateError>>;

    /// The environment's runs, oldest first.
    fn runs<'a>(
        &'a self,
        environment: &'a str,
    ) -> BoxFuture<'a, Result<Vec<RunRecord>, StateError>>;

    /// Whether documents (below) reach other machines: remote backends
    /// keep them beside the records, so every replica of `terrace serve`
    /// sees one status, approval and history. Local state keeps none: the
    /// daemon's work directory is where they live.
    fn shares_documents(&self) -> bool {
        false
    }

    /// A document the daemon shares with its replicas, by name
    /// (`history/runs.json`, see [`document_key`]), as written.
    fn read_document<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StateError>> {
        Box::pin(async move {
            document_key(name)?;
            Ok(None)
        })
    }

    /// Replaces a shared document.
    fn write_document<'a>(
        &'a self,
        name: &'a str,
        bytes: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        drop(bytes);
        Box::pin(async move { document_key(name).map(drop) })
    }

    /// Removes a shared document (absent is fine).
    fn remove_document<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move { document_key(name).map(drop) })
    }
}

/// Where a shared document lives under a remote backend's prefix:
/// `_daemon/<name>`. Names are at most four `/`-separated parts, each a
/// name terrace writes (letters, digits, `-`, `_`, `.`, not starting
/// with `.`), so none leaves the daemon's part of the store.
pub fn document_key(name: &str) -> Result<String, StateError> {
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() > 4 {
        return Err(StateError::Remote(format!(
            "document name `{name}` has more than four parts"
        )));
    }
    for p in &parts {
        terrace_fs::check_name("document", p).map_err(std::io::Error::from)?;
    }
    Ok(format!("_daemon/{name}"))
}

pub use terrace_fs::time::now_rfc3339;

/// A new run id: time-ordered and unique per process.
pub fn new_run_id() -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    format!(
        "{}-{:03}-{}",
        humantime::format_rfc3339_seconds(SystemTime::now())
            .to_string()
            .replace([':', '-'], ""),
        now.subsec_millis(),
        std::process::id()
    )
}

/// The lock holder record for this process.
pub fn this_holder(command: &str, run_id: &str) -> LockInfo {
    LockInfo {
        pid: std::process::id(),
        host: hostname(),
        command: command.to_owned(),
        acquired_at: now_rfc3339(),
        run_id: run_id.to_owned(),
    }
}

/// This machine's host name.
pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}
