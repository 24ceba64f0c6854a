//! The external programs terrace runs, so an interrupt reaches them the
//! way it should.
//!
//! Each child runs in its own process group: a terminal's Ctrl-C goes to
//! terrace alone, and terrace forwards exactly one SIGINT to every running
//! child (Terraform stops gracefully on the first and gives up its state
//! lock; a second would make it abandon the state), then waits for it.
//! Once interrupted, no new child is started.
//!
//! [`crate::Exec`] registers every program it runs here; [`output`] is for
//! a prepared `tokio::process::Command` that has not moved to it yet.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

static RUNNING: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// A running child, forgotten when dropped.
#[derive(Debug)]
pub struct Registered(u32);

impl Drop for Registered {
    fn drop(&mut self) {
        running().remove(&self.0);
    }
}

fn running() -> std::sync::MutexGuard<'static, BTreeSet<u32>> {
    RUNNING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Notes a child that was just started. If the run was interrupted while
/// it started, it gets its SIGINT now (the flag is set under the same
/// lock, so no child is missed).
pub fn register(pid: u32) -> Registered {
    let mut running = running();
    running.insert(pid);
    if interrupted()
        && let Some(p) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::INT);
    }
    Registered(pid)
}

/// Whether the run was interrupted: no new child may start.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Sends SIGINT to every running child, once per call; returns how many.
pub fn interrupt_all() -> usize {
    send(rustix::process::Signal::INT, false)
}

/// Sends SIGKILL to every running child's whole process group (its
/// plugins too): a second interrupt, forcing.
pub fn kill_all() -> usize {
    send(rustix::process::Signal::KILL, true)
}

fn send(signal: rustix::process::Signal, group: bool) -> usize {
    let running = running();
    INTERRUPTED.store(true, Ordering::SeqCst);
    running
        .iter()
        .filter_map(|&p| rustix::process::Pid::from_raw(i32::try_from(p).ok()?))
        .filter(|&pid| {
            if group {
                // Each child leads its own group (`process_group(0)`).
                rustix::process::kill_process_group(pid, signal).is_ok()
            } else {
                rustix::process::kill_process(pid, signal).is_ok()
            }
        })
        .count()
}

/// Runs a prepared command in its own process group and collects its
/// output, registered while it runs.
pub async fn output(mut cmd: tokio::process::Command) -> std::io::Result<std::process::Output> {
    if interrupted() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Interrupted,
            "the run was interrupted; not starting it",
        ));
    }
    cmd.process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn()?;
    let _registered = child.id().map(register);
    child.wait_with_output().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_running_child_gets_the_interrupt_and_no_new_one_starts() {
        let mut cmd = tokio::process::Command::new("sh");
        // A shell runs its trap between commands: short sleeps in a loop.
        cmd.args([
            "-c",
            "trap 'echo got-int; exit 7' INT; i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done",
        ]);
        let run = tokio::spawn(output(cmd));
        // Wait until it is registered.
        for _ in 0..200 {
            if !running().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // Give the shell time to set its trap.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let started = std::time::Instant::now();
        assert_eq!(interrupt_all(), 1);
        let out = run.await.expect("joined").expect("ran");
        assert_eq!(out.status.code(), Some(7));
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the child stopped on the interrupt, not at its own end"
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("got-int"));
        assert!(running().is_empty());
        let again = output(tokio::process::Command::new("true")).await;
        assert_eq!(
            again.expect_err("refused").kind(),
            std::io::ErrorKind::Interrupted
        );
        let refused = crate::Program::find("/bin/sh")
            .expect("sh is there")
            .command()
            .args(["-c", "true"])
            .run()
            .await;
        assert!(
            matches!(refused, Err(crate::ExecError::Interrupted { .. })),
            "no program starts after an interrupt: {refused:?}"
        );
        // Other tests in this process run children again.
        INTERRUPTED.store(false, Ordering::SeqCst);
    }
}
