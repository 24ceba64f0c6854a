//! What replicas of the daemon share through a remote state backend (S3
//! or etcd): the revision applied, the plan waiting for approval, what is
//! held or paused, and the history of runs with their logs and the
//! actions taken. Each replica keeps its own work directory (its Git
//! mirror, its work tree, the revision it checked out); these documents
//! are copied into it when the replica first reconciles (so a replica
//! that takes the lead over goes on where the last leader stopped) and
//! copied out after every pass of the loop. Only the leader writes them:
//! leader election keeps two replicas from applying at once.
//!
//! Documents from the store are written only to fixed names in the work
//! directory (logs by run number), each at most [`MAX_DOCUMENT`] bytes.
//! Nothing is copied out before what is shared was copied in, and a
//! replica that was told to stop (a lost lease) copies nothing out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use terrace_state::{StateBackend, StateError};

use crate::Status;

/// The status document: `serve.json` without what only this replica
/// knows (the revision its work tree holds).
const STATUS: &str = "status.json";
/// Files of the work directory shared as they are: (document, file).
const FILES: [(&str, &str); 4] = [
    ("approval.plan", "approval.plan"),
    ("paused.json", "paused.json"),
    ("history/runs.json", "history/runs.json"),
    ("history/actions.jsonl", "history/actions.jsonl"),
];
/// The largest document copied in or out: under etcd's default request
/// limit (1.5 MiB), so a document every backend takes.
const MAX_DOCUMENT: usize = 1 << 20;

/// The part of [`Status`] every replica shares.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SharedStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    applied: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pending: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    held: Vec<String>,
}

fn too_big(name: &str, len: usize) -> StateError {
    StateError::Remote(format!(
        "the daemon's shared document {name} is {len} bytes, over the {MAX_DOCUMENT} a replica reads"
    ))
}

async fn read(state: &dyn StateBackend, name: &str) -> Result<Option<Vec<u8>>, StateError> {
    match state.read_document(name).await? {
        Some(b) if b.len() > MAX_DOCUMENT => Err(too_big(name, b.len())),
        other => Ok(other),
    }
}

fn write_file(workdir: &Path, rel: &str, bytes: &[u8]) -> std::io::Result<()> {
    let path = workdir.join(rel);
    if let Some(dir) = path.parent() {
        terrace_fs::private_dir(dir)?;
    }
    terrace_fs::atomic::write(&path, bytes, terrace_fs::Mode::Private)
}

/// The run numbers `runs.json` holds.
fn run_ids(runs_json: &[u8]) -> Vec<u64> {
    serde_json::from_slice::<Vec<serde_json::Value>>(runs_json)
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r["id"].as_u64())
        .collect()
}

/// One replica's side of the sharing: the store (set once what it shares
/// was copied in, so nothing is ever copied out over it before), and
/// what was last copied out.
#[derive(Debug, Default)]
pub struct Replica {
    store: Mutex<Option<Arc<dyn StateBackend>>>,
    pushed: tokio::sync::Mutex<Pushed>,
}

/// What this replica last wrote to the store: each document's digest
/// (an unchanged one is not written again: etcd keeps every revision),
/// and the run logs there.
#[derive(Debug, Default)]
struct Pushed {
    digests: BTreeMap<String, String>,
    logs: BTreeSet<u64>,
}

impl Replica {
    /// Whether what the replicas share was already taken over.
    pub fn took_over(&self) -> bool {
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }

    /// On the first call with a backend that shares documents: copies what
    /// the replicas share into `workdir` (`true`: the status, approval and
    /// history changed). Until that succeeds nothing is copied out, so a
    /// replica that could not read the store never overwrites it.
    pub async fn take_over(
        &self,
        workdir: &Path,
        state: &Arc<dyn StateBackend>,
    ) -> Result<bool, StateError> {
        if !state.shares_documents() || self.took_over() {
            return Ok(false);
        }
        let mut pushed = self.pushed.lock().await;
        let pulled = pull(workdir, state.as_ref(), &mut pushed).await?;
        *self
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::clone(state));
        Ok(pulled)
    }

    /// Copies what changed out to the store, once taken over. A document
    /// that cannot be written is reported; the others are written still.
    pub async fn push(&self, workdir: &Path) -> Result<(), StateError> {
        let store = self
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some(store) = store else {
            return Ok(());
        };
        let mut pushed = self.pushed.lock().await;
        push(workdir, store.as_ref(), &mut pushed).await
    }
}

/// Copies what the replicas share into `workdir`; `false` when the store
/// holds nothing yet (this is the first daemon). The shared status
/// replaces this replica's (the revision checked out stays its own);
/// a shared file the store does not hold is removed here (an approval
/// another replica applied), and the shared logs replace this one's.
async fn pull(
    workdir: &Path,
    state: &dyn StateBackend,
    pushed: &mut Pushed,
) -> Result<bool, StateError> {
    let Some(bytes) = read(state, STATUS).await? else {
        return Ok(false);
    };
    let shared: SharedStatus =
        serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
            path: STATUS.into(),
            source,
        })?;
    let mut status = Status::load(workdir);
    status.applied = shared.applied;
    status.pending = shared.pending;
    status.pending_revision = shared.pending_revision;
    status.held = shared.held;
    status.save(workdir)?;
    for (doc, file) in FILES {
        match read(state, doc).await? {
            Some(b) => write_file(workdir, file, &b)?,
            None => match std::fs::remove_file(workdir.join(file)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            },
        }
    }
    // The logs of the runs the shared history names: the store's win over
    // any this replica kept under the same number.
    let runs = std::fs::read(workdir.join("history/runs.json")).unwrap_or_default();
    for id in run_ids(&runs) {
        let rel = format!("history/logs/{id}.log");
        if let Some(b) = read(state, &rel).await? {
            write_file(workdir, &rel, &b)?;
            pushed.logs.insert(id);
        }
    }
    Ok(true)
}

/// Copies what this replica knows out to the store: documents whose
/// content changed since they were last written, the logs of runs not
/// yet there; logs of runs that left the history are removed. Every
/// document is tried; the first failure is returned.
async fn push(
    workdir: &Path,
    state: &dyn StateBackend,
    pushed: &mut Pushed,
) -> Result<(), StateError> {
    let status = Status::load(workdir);
    let shared = SharedStatus {
        applied: status.applied,
        pending: status.pending,
        pending_revision: status.pending_revision,
        held: status.held,
    };
    let mut docs: Vec<(String, Option<Vec<u8>>)> = vec![(
        STATUS.to_owned(),
        Some(serde_json::to_vec_pretty(&shared).expect("status serializes")),
    )];
    for (doc, file) in FILES {
        match std::fs::read(workdir.join(file)) {
            Ok(b) => docs.push((doc.to_owned(), Some(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => docs.push((doc.to_owned(), None)),
            Err(e) => return Err(e.into()),
        }
    }
    let mut first_error = None;
    for (doc, bytes) in docs {
        let digest = bytes
            .as_deref()
            .map_or_else(|| "(none)".to_owned(), terrace_fs::digest::digest);
        if pushed.digests.get(&doc) == Some(&digest) {
            continue;
        }
        let done = match bytes {
            Some(b) if b.len() > MAX_DOCUMENT => Err(too_big(&doc, b.len())),
            Some(b) => state.write_document(&doc, b).await,
            None => state.remove_document(&doc).await,
        };
        match done {
            Ok(()) => {
                pushed.digests.insert(doc, digest);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let runs = std::fs::read(workdir.join("history/runs.json")).unwrap_or_default();
    let ids: BTreeSet<u64> = run_ids(&runs).into_iter().collect();
    for id in &ids {
        if pushed.logs.contains(id) {
            continue;
        }
        let rel = format!("history/logs/{id}.log");
        if let Ok(b) = std::fs::read(workdir.join(&rel)) {
            let done = if b.len() > MAX_DOCUMENT {
                Err(too_big(&rel, b.len()))
            } else {
                state.write_document(&rel, b).await
            };
            match done {
                Ok(()) => {
                    pushed.logs.insert(*id);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    let gone: Vec<u64> = pushed.logs.difference(&ids).copied().collect();
    for id in gone {
        match state
            .remove_document(&format!("history/logs/{id}.log"))
            .await
        {
            Ok(()) => {
                pushed.logs.remove(&id);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend keeping documents in memory, as the remote ones do;
    /// `failing`: every read of a document fails.
    #[derive(Debug, Default)]
    struct Docs(
        std::sync::Mutex<std::collections::BTreeMap<String, Vec<u8>>>,
        std::sync::atomic::AtomicBool,
    );

    impl StateBackend for Docs {
        fn describe(&self) -> String {
            "memory".into()
        }
        fn read<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
        ) -> terrace_core::driver::BoxFuture<
            'a,
            Result<Option<terrace_core::state::UnitState>, StateError>,
        > {
            Box::pin(async { Ok(None) })
        }
        fn write<'a>(
            &'a self,
            _: &'a terrace_core::state::UnitState,
        ) -> terrace_core::driver::BoxFuture<'a, Result<(), StateError>> {
            Box::pin(async { Ok(()) })
        }
        fn remove<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
        ) -> terrace_core::driver::BoxFuture<'a, Result<(), StateError>> {
            Box::pin(async { Ok(()) })
        }
        fn list<'a>(
            &'a self,
            _: &'a str,
        ) -> terrace_core::driver::BoxFuture<'a, Result<Vec<String>, StateError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn lock<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: &'a terrace_core::state::LockInfo,
            _: std::time::Duration,
        ) -> terrace_core::driver::BoxFuture<
            'a,
            Result<Option<terrace_core::state::LockInfo>, StateError>,
        > {
            Box::pin(async { Ok(None) })
        }
        fn unlock<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: &'a str,
        ) -> terrace_core::driver::BoxFuture<'a, Result<(), StateError>> {
            Box::pin(async { Ok(()) })
        }
        fn force_unlock<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
        ) -> terrace_core::driver::BoxFuture<
            'a,
            Result<Option<terrace_core::state::LockInfo>, StateError>,
        > {
            Box::pin(async { Ok(None) })
        }
        fn lock_holder<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
        ) -> terrace_core::driver::BoxFuture<
            'a,
            Result<Option<terrace_core::state::LockInfo>, StateError>,
        > {
            Box::pin(async { Ok(None) })
        }
        fn record_run<'a>(
            &'a self,
            _: &'a terrace_core::state::RunRecord,
        ) -> terrace_core::driver::BoxFuture<'a, Result<(), StateError>> {
            Box::pin(async { Ok(()) })
        }
        fn runs<'a>(
            &'a self,
            _: &'a str,
        ) -> terrace_core::driver::BoxFuture<
            'a,
            Result<Vec<terrace_core::state::RunRecord>, StateError>,
        > {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn shares_documents(&self) -> bool {
            true
        }
        fn read_document<'a>(
            &'a self,
            name: &'a str,
        ) -> terrace_core::driver::BoxFuture<'a, Result<Option<Vec<u8>>, StateError>> {
            Box::pin(async move {
                terrace_state::document_key(name)?;
                if self.1.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(StateError::Remote("the store does not answer".into()));
                }
                Ok(self.0.lock().expect("docs").get(name).cloned())
            })
        }
        fn write_document<'a>(
            &'a self,
            name: &'a str,
            bytes: Vec<u8>,
        ) -> terrace_core::driver::BoxFuture<'a, Result<(), StateError>> {
            Box::pin(async move {
                terrace_state::document_key(name)?;
                self.0.lock().expect("docs").insert(name.to_owned(), bytes);
                Ok(())
            })
        }
        fn remove_document<'a>(
            &'a self,
            name: &'a str,
        ) -> terrace_core::driver::BoxFuture<'a, Result<(), StateError>> {
            Box::pin(async move {
                self.0.lock().expect("docs").remove(name);
                Ok(())
            })
        }
    }

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn a_replica_takes_over_status_approval_and_history_but_not_its_checkout() {
        let docs = Arc::new(Docs::default());
        let store: Arc<dyn StateBackend> = docs.clone();
        let (a, b) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        let first = Replica::default();
        // The first daemon: nothing shared yet.
        assert!(!block(first.take_over(a.path(), &store)).expect("pull"));
        Status {
            checked_out: Some("rev2".into()),
            applied: Some("rev1".into()),
            pending: vec!["web".into()],
            pending_revision: Some("rev2".into()),
            held: vec![],
        }
        .save(a.path())
        .expect("save");
        write_file(a.path(), "approval.plan", b"the plan").expect("plan");
        write_file(a.path(), "history/runs.json", br#"[{"id":1},{"id":2}]"#).expect("runs");
        write_file(a.path(), "history/logs/1.log", b"one\n").expect("log");
        write_file(a.path(), "history/logs/2.log", b"two\n").expect("log");
        block(first.push(a.path())).expect("push");
        let writes = |d: &Docs| d.0.lock().expect("docs").len();
        assert_eq!(writes(&docs), 5, "status, plan, runs and two logs");

        // Another replica, which had checked out something else and kept
        // a log of its own under a number the store has.
        Status {
            checked_out: Some("rev0".into()),
            ..Status::default()
        }
        .save(b.path())
        .expect("save");
        write_file(b.path(), "history/logs/2.log", b"stale\n").expect("log");
        let second = Replica::default();
        assert!(block(second.take_over(b.path(), &store)).expect("pull"));
        let s = Status::load(b.path());
        assert_eq!(s.checked_out.as_deref(), Some("rev0"), "its own checkout");
        assert_eq!(s.applied.as_deref(), Some("rev1"));
        assert_eq!(s.pending, vec!["web".to_owned()]);
        assert_eq!(
            std::fs::read(b.path().join("approval.plan")).expect("plan"),
            b"the plan"
        );
        assert_eq!(
            std::fs::read(b.path().join("history/logs/2.log")).expect("log"),
            b"two\n",
            "the store's log wins"
        );

        // Approved and applied on b: the plan goes, everywhere.
        std::fs::remove_file(b.path().join("approval.plan")).expect("rm");
        write_file(b.path(), "history/runs.json", br#"[{"id":2},{"id":3}]"#).expect("runs");
        write_file(b.path(), "history/logs/3.log", b"three\n").expect("log");
        block(second.push(b.path())).expect("push");
        let held = |k: &str| docs.0.lock().expect("docs").contains_key(k);
        assert!(!held("approval.plan"));
        assert!(held("history/logs/3.log"));
        assert!(
            !held("history/logs/1.log"),
            "a log whose run left the history left the store"
        );
        let again = Replica::default();
        assert!(block(again.take_over(a.path(), &store)).expect("pull"));
        assert!(!a.path().join("approval.plan").exists());
        assert_eq!(
            std::fs::read(a.path().join("history/logs/3.log")).expect("log"),
            b"three\n"
        );
    }

    #[test]
    fn a_replica_that_could_not_read_the_store_never_writes_it() {
        let docs = Arc::new(Docs::default());
        let store: Arc<dyn StateBackend> = docs.clone();
        let dir = tempfile::tempdir().expect("dir");
        let leader = Replica::default();
        block(leader.take_over(dir.path(), &store)).expect("first");
        Status {
            applied: Some("rev9".into()),
            ..Status::default()
        }
        .save(dir.path())
        .expect("save");
        block(leader.push(dir.path())).expect("push");
        let before = docs.0.lock().expect("docs").clone();
        // A fresh replica while the store fails reads: no take-over, and
        // its empty status is not written over the shared one.
        docs.1.store(true, std::sync::atomic::Ordering::SeqCst);
        let fresh = tempfile::tempdir().expect("fresh");
        let other = Replica::default();
        assert!(block(other.take_over(fresh.path(), &store)).is_err());
        assert!(!other.took_over());
        block(other.push(fresh.path())).expect("nothing to do");
        assert_eq!(*docs.0.lock().expect("docs"), before);
    }

    #[test]
    fn a_document_too_big_or_badly_named_is_refused() {
        let docs = Arc::new(Docs::default());
        let store: Arc<dyn StateBackend> = docs.clone();
        docs.0
            .lock()
            .expect("docs")
            .insert(STATUS.into(), vec![b' '; MAX_DOCUMENT + 1]);
        let dir = tempfile::tempdir().expect("dir");
        let e = block(Replica::default().take_over(dir.path(), &store)).expect_err("too big");
        assert!(e.to_string().contains("over the"), "{e}");
        for bad in ["../x", "a/../../b", ".hidden", "a/b/c/d/e", ""] {
            assert!(terrace_state::document_key(bad).is_err(), "{bad}");
        }
    }
}
