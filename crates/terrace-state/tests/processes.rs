//! State behaviour across real processes: lock contention between two
//! processes, and state writes interrupted by killing the writer.
//!
//! The helper processes are this test binary itself, re-run with one of the
//! `#[ignore]`d helper tests selected and an environment variable set.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use terrace_core::config::UnitKind;
use terrace_core::state::{STATE_FORMAT, UnitState, UnitStatus};
use terrace_state::{LocalBackend, StateBackend, StateError, this_holder};

const DIR_VAR: &str = "TERRACE_STATE_TEST_DIR";

fn spawn_helper(test: &str, dir: &Path) -> Child {
    Command::new(std::env::current_exe().expect("test binary path"))
        .args([
            "--exact",
            test,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn helper")
}

/// Waits until the helper prints `line`.
fn wait_for(child: &mut Child, line: &str) {
    let out = child.stdout.take().expect("piped stdout");
    let mut reader = BufReader::new(out);
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = reader.read_line(&mut buf).expect("read helper output");
        assert!(n > 0, "helper exited before printing {line:?}");
        if buf.trim_end().ends_with(line) {
            break;
        }
    }
    // Keep the pipe open so the helper never blocks on a closed stdout.
    std::mem::forget(reader);
}

fn state(serial: u64, size: usize) -> UnitState {
    UnitState {
        format: STATE_FORMAT,
        unit: "db".into(),
        kind: UnitKind::new("manifests"),
        layer: "services".into(),
        environment: "prod".into(),
        serial,
        revision: None,
        input_hash: format!("sha256:{serial}"),
        render_hash: "sha256:r".into(),
        // A large output makes each write take long enough to be cut.
        outputs: json!({"blob": "x".repeat(size), "serial": serial})
            .as_object()
            .cloned()
            .expect("map"),
        sensitive_outputs: Vec::new(),
        inventory: Vec::new(),
        status: UnitStatus::Applied,
        updated_at: "2026-01-01T00:00:00Z".into(),
        run_id: format!("run-{serial}"),
    }
}

#[tokio::test]
#[ignore = "helper process for lock_conflict_between_processes"]
async fn helper_hold_lock() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let backend = LocalBackend::new(dir);
    let holder = this_holder("apply", "helper-run");
    backend
        .lock("prod", "db", &holder, Duration::ZERO)
        .await
        .expect("helper takes the lock");
    println!("locked");
    std::thread::sleep(Duration::from_secs(60));
}

#[tokio::test]
async fn lock_conflict_between_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_helper("helper_hold_lock", dir.path());
    wait_for(&mut child, "locked");

    let backend = LocalBackend::new(dir.path());
    let me = this_holder("apply", "main-run");
    let err = backend
        .lock("prod", "db", &me, Duration::from_millis(300))
        .await
        .expect_err("the helper holds the lock");
    match &err {
        StateError::Locked { holder, stale, .. } => {
            assert_eq!(holder.pid, child.id(), "names the helper as holder");
            assert_eq!(holder.run_id, "helper-run");
            assert!(!stale, "a live holder is not stale");
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(err.to_string().contains(&format!("pid {}", child.id())));

    // Killed, the helper leaves a lock whose holder is gone from this
    // host: the next locker takes it over and learns whose it was.
    child.kill().expect("kill helper");
    child.wait().expect("reap helper");
    let taken = backend
        .lock("prod", "db", &me, Duration::ZERO)
        .await
        .expect("a dead holder's lock is taken over");
    assert_eq!(taken.expect("names the dead holder").run_id, "helper-run");
    assert_eq!(
        backend
            .lock_holder("prod", "db")
            .await
            .expect("read")
            .expect("held")
            .run_id,
        "main-run"
    );
    backend
        .unlock("prod", "db", "main-run")
        .await
        .expect("release");
    assert!(
        backend
            .lock_holder("prod", "db")
            .await
            .expect("read")
            .is_none()
    );
}

#[tokio::test]
#[ignore = "helper process for killed_writer_leaves_readable_state"]
async fn helper_write_forever() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let backend = LocalBackend::new(dir);
    let start = backend
        .read("prod", "db")
        .await
        .expect("readable")
        .map_or(0, |s| s.serial);
    println!("writing");
    for serial in start + 1.. {
        backend
            .write(&state(serial, 256 * 1024))
            .await
            .expect("write");
    }
}

#[tokio::test]
async fn killed_writer_leaves_readable_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = LocalBackend::new(dir.path());
    backend.write(&state(1, 10)).await.expect("first write");
    let mut last = 1;
    for round in 0..12u64 {
        let mut child = spawn_helper("helper_write_forever", dir.path());
        wait_for(&mut child, "writing");
        std::thread::sleep(Duration::from_millis(20 + (round * 37) % 120));
        child.kill().expect("kill writer");
        child.wait().expect("reap writer");
        let s = backend
            .read("prod", "db")
            .await
            .expect("state is readable after a kill")
            .expect("state exists");
        assert!(
            s.serial >= last,
            "serial went back from {last} to {}",
            s.serial
        );
        assert_eq!(
            s.outputs["serial"],
            json!(s.serial),
            "content is one whole write"
        );
        last = s.serial;
    }
    assert!(last > 1, "the writer made progress");
}
