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

use std::collections::BTreeSet;
use std::path::Path;

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
/// The largest document copied in.
const MAX_DOCUMENT: usize = 64 << 20;

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

/// Copies what the replicas share into `workdir`; `false` when the store
/// holds nothing yet (this is the first daemon). The shared status
/// replaces this replica's (the revision checked out stays its own);
/// a shared file the store does not hold is removed here (an approval
/// another replica applied).
pub(crate) async fn pull(workdir: &Path, state: &dyn StateBackend) -> Result<bool, StateError> {
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
    // The logs of the runs the shared history names, where missing here.
    let runs = std::fs::read(workdir.join("history/runs.json")).unwrap_or_default();
    for id in run_ids(&runs) {
        let rel = format!("history/logs/{id}.log");
        if workdir.join(&rel).exists() {
            continue;
        }
        if let Some(b) = read(state, &rel).await? {
            write_file(workdir, &rel, &b)?;
        }
    }
    Ok(true)
}

/// Copies what this replica knows out to the store. `pushed` holds the
/// run logs already copied (a log does not change once its run ended);
/// logs of runs that left the history are removed from the store.
pub(crate) async fn push(
    workdir: &Path,
    state: &dyn StateBackend,
    pushed: &mut BTreeSet<u64>,
) -> Result<(), StateError> {
    let status = Status::load(workdir);
    let shared = SharedStatus {
        applied: status.applied,
        pending: status.pending,
        pending_revision: status.pending_revision,
        held: status.held,
    };
    state
        .write_document(
            STATUS,
            serde_json::to_vec_pretty(&shared).expect("status serializes"),
        )
        .await?;
    for (doc, file) in FILES {
        match std::fs::read(workdir.join(file)) {
            Ok(b) => state.write_document(doc, b).await?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                state.remove_document(doc).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let runs = std::fs::read(workdir.join("history/runs.json")).unwrap_or_default();
    let ids: BTreeSet<u64> = run_ids(&runs).into_iter().collect();
    for id in &ids {
        if pushed.contains(id) {
            continue;
        }
        let rel = format!("history/logs/{id}.log");
        if let Ok(b) = std::fs::read(workdir.join(&rel)) {
            state.write_document(&rel, b).await?;
            pushed.insert(*id);
        }
    }
    let gone: Vec<u64> = pushed.difference(&ids).copied().collect();
    for id in gone {
        state
            .remove_document(&format!("history/logs/{id}.log"))
            .await?;
        pushed.remove(&id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend keeping documents in memory, as the remote ones do.
    #[derive(Debug, Default)]
    struct Docs(std::sync::Mutex<std::collections::BTreeMap<String, Vec<u8>>>);

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
        let docs = Docs::default();
        let (a, b) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        // The first daemon: nothing shared yet.
        assert!(!block(pull(a.path(), &docs)).expect("pull"));
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
        let mut pushed = BTreeSet::new();
        block(push(a.path(), &docs, &mut pushed)).expect("push");
        assert_eq!(pushed, BTreeSet::from([1, 2]));

        // Another replica, which had checked out something else.
        Status {
            checked_out: Some("rev0".into()),
            ..Status::default()
        }
        .save(b.path())
        .expect("save");
        assert!(block(pull(b.path(), &docs)).expect("pull"));
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
            b"two\n"
        );

        // Approved and applied on b: the plan goes, everywhere.
        std::fs::remove_file(b.path().join("approval.plan")).expect("rm");
        write_file(b.path(), "history/runs.json", br#"[{"id":2},{"id":3}]"#).expect("runs");
        write_file(b.path(), "history/logs/3.log", b"three\n").expect("log");
        let mut pushed_b = BTreeSet::from([1, 2]);
        block(push(b.path(), &docs, &mut pushed_b)).expect("push");
        assert!(
            !docs
                .0
                .lock()
                .expect("docs")
                .contains_key("history/logs/1.log"),
            "a log whose run left the history left the store"
        );
        assert!(block(pull(a.path(), &docs)).expect("pull"));
        assert!(!a.path().join("approval.plan").exists());
        assert_eq!(
            std::fs::read(a.path().join("history/logs/3.log")).expect("log"),
            b"three\n"
        );
    }

    #[test]
    fn a_document_too_big_or_badly_named_is_refused() {
        let docs = Docs::default();
        docs.0
            .lock()
            .expect("docs")
            .insert(STATUS.into(), vec![b' '; MAX_DOCUMENT + 1]);
        let dir = tempfile::tempdir().expect("dir");
        let e = block(pull(dir.path(), &docs)).expect_err("too big");
        assert!(e.to_string().contains("over the"), "{e}");
        for bad in ["../x", "a/../../b", ".hidden", "a/b/c/d/e", ""] {
            assert!(terrace_state::document_key(bad).is_err(), "{bad}");
        }
    }
}
