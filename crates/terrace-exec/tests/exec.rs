//! The builder against real programs: `/bin/sh -c` scripts.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use terrace_core::secrets::Plaintexts;
use terrace_exec::{ExecError, Exit, Program, STREAMED_LINE_MAX, Stream};

fn sh() -> Program {
    Program::find("/bin/sh").expect("/bin/sh exists")
}

/// This process's `PATH`, for children that run other programs.
fn path() -> OsString {
    std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"))
}

type Seen = Arc<Mutex<Vec<(Stream, String)>>>;

/// A line collector for `on_line`, and what it saw.
fn recorder() -> (Seen, impl Fn(Stream, &str) + Send + Sync + 'static) {
    let seen: Seen = Arc::default();
    let sink = Arc::clone(&seen);
    (seen, move |stream: Stream, line: &str| {
        sink.lock()
            .expect("not poisoned")
            .push((stream, line.to_owned()));
    })
}

fn lines_of(seen: &Seen, stream: Stream) -> Vec<String> {
    seen.lock()
        .expect("not poisoned")
        .iter()
        .filter(|(s, _)| *s == stream)
        .map(|(_, l)| l.clone())
        .collect()
}

#[test]
fn the_environment_is_cleared_but_for_the_allow_list() {
    let exec = sh()
        .command()
        .parent_env([
            ("PATH", "/usr/bin:/bin"),
            ("HOME", "/home/me"),
            ("TF_LOG", "debug"),
            ("TF_VAR_x", "from the shell"),
            ("SOPS_AGE_KEY", "AGE-SECRET-KEY-1XYZ"),
            ("sops_age_key_file", "/keys.txt"),
            ("TERRACE_FOO", "bar"),
            ("RANDOM_THING", "1"),
        ])
        .pass_env_prefix("TF_")
        .pass_env("SOPS_AGE_KEY")
        .pass_env_prefix("sops_")
        .deny_env("TF_VAR_*")
        .env("TF_IN_AUTOMATION", "1");
    let env = exec.environment();
    let names: Vec<String> = env
        .keys()
        .map(|k| k.to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["HOME", "PATH", "TF_IN_AUTOMATION", "TF_LOG"],
        "allowed, passed by prefix and set by terrace; nothing else"
    );
    assert_eq!(
        env.get(&OsString::from("TF_IN_AUTOMATION")),
        Some(&OsString::from("1"))
    );
}

#[test]
fn terrace_own_values_win_and_are_never_denied() {
    let env = sh()
        .command()
        .parent_env([("PATH", "/bin"), ("TF_VAR_region", "inherited")])
        .pass_env_prefix("TF_")
        .deny_env("TF_VAR_*")
        .deny_env("PATH")
        .env("TF_VAR_region", "from terrace")
        .environment();
    assert_eq!(
        env.get(&OsString::from("TF_VAR_region")),
        Some(&OsString::from("from terrace"))
    );
    assert!(
        !env.contains_key(&OsString::from("PATH")),
        "an exact deny removes even an allow-listed name"
    );
}

#[tokio::test]
async fn a_spawned_program_gets_no_secrets_key() {
    let done = sh()
        .command()
        .args(["-c", "env"])
        .parent_env([
            (OsString::from("PATH"), path()),
            (
                OsString::from("SOPS_AGE_KEY"),
                OsString::from("AGE-SECRET-KEY-1XYZ"),
            ),
        ])
        .env("TF_IN_AUTOMATION", "1")
        .run()
        .await
        .expect("ran")
        .success("env")
        .expect("succeeded");
    let printed = String::from_utf8(done.stdout).expect("utf-8");
    assert!(printed.contains("TF_IN_AUTOMATION=1"), "{printed}");
    assert!(printed.contains("PATH="), "{printed}");
    assert!(!printed.contains("SOPS_AGE_KEY"), "{printed}");
    assert!(!printed.contains("AGE-SECRET-KEY"), "{printed}");
}

#[tokio::test]
async fn stdin_is_closed() {
    let done = sh()
        .command()
        .args(["-c", "cat; echo done"])
        .run()
        .await
        .expect("ran")
        .success("cat")
        .expect("succeeded");
    assert_eq!(done.stdout, b"done\n");
}

#[tokio::test]
async fn lines_stream_in_order_and_secrets_are_redacted() {
    let secret = Plaintexts::new([("hunter22".to_owned(), PathBuf::from("secrets/db.yaml"))]);
    let (seen, on_line) = recorder();
    let done = sh()
        .command()
        .args([
            "-c",
            "echo one; echo two-hunter22-x >&2; echo three hunter22; echo four >&2; printf 'no end'",
        ])
        .redact(secret)
        .on_line(on_line)
        .run()
        .await
        .expect("ran")
        .success("script")
        .expect("succeeded");
    assert_eq!(
        lines_of(&seen, Stream::Stdout),
        ["one", "three (sensitive)", "no end"]
    );
    assert_eq!(
        lines_of(&seen, Stream::Stderr),
        ["two-(sensitive)-x", "four"]
    );
    assert_eq!(done.stderr, "two-(sensitive)-x\nfour\n");
    assert_eq!(done.stdout_text(), "one\nthree (sensitive)\nno end");
    assert!(
        String::from_utf8_lossy(&done.stdout).contains("hunter22"),
        "captured stdout is data, kept as printed"
    );
    assert!(!format!("{done:?}").contains("hunter22"));
}

#[tokio::test]
async fn stdout_can_be_captured_without_streaming() {
    let (seen, on_line) = recorder();
    let done = sh()
        .command()
        .args(["-c", "echo '{\"a\": 1}'; echo note >&2"])
        .stream_stdout(false)
        .on_line(on_line)
        .run()
        .await
        .expect("ran");
    assert!(lines_of(&seen, Stream::Stdout).is_empty());
    assert_eq!(lines_of(&seen, Stream::Stderr), ["note"]);
    assert_eq!(done.stdout, b"{\"a\": 1}\n");
}

#[tokio::test]
async fn a_long_line_is_cut_when_streamed_and_kept_whole_when_captured() {
    let (seen, on_line) = recorder();
    let done = sh()
        .command()
        .args(["-c", "head -c 100000 /dev/zero | tr '\\0' a; echo"])
        .parent_env([(OsString::from("PATH"), path())])
        .on_line(on_line)
        .run()
        .await
        .expect("ran")
        .success("long line")
        .expect("succeeded");
    assert_eq!(done.stdout.len(), 100_001);
    let streamed = lines_of(&seen, Stream::Stdout);
    assert_eq!(streamed.len(), 1);
    assert!(streamed[0].len() <= STREAMED_LINE_MAX);
    assert!(streamed[0].starts_with("aaaa"));
    assert!(streamed[0].ends_with("(cut)"));
}

#[tokio::test]
async fn a_timeout_stops_the_program() {
    let result = sh()
        .command()
        .args(["-c", "sleep 30"])
        .parent_env([(OsString::from("PATH"), path())])
        .timeout(Duration::from_millis(200))
        .grace(Duration::from_millis(100))
        .run()
        .await;
    match result {
        Err(ExecError::TimedOut { after, command, .. }) => {
            assert_eq!(after, Duration::from_millis(200));
            assert_eq!(command, "sh -c 'sleep 30'");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn a_timed_out_program_gets_sigint_first() {
    let (seen, on_line) = recorder();
    let result = sh()
        .command()
        .args([
            "-c",
            // A shell runs its trap between commands: short sleeps.
            "trap 'echo stopped; echo cleaning up >&2; exit 0' INT; while :; do sleep 0.1; done",
        ])
        .parent_env([(OsString::from("PATH"), path())])
        .timeout(Duration::from_secs(1))
        // Long enough that only the trap, not SIGKILL, can end it.
        .grace(Duration::from_secs(20))
        .on_line(on_line)
        .run()
        .await;
    match result {
        Err(ExecError::TimedOut { stderr_tail, .. }) => {
            assert_eq!(stderr_tail, "cleaning up");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(lines_of(&seen, Stream::Stdout), ["stopped"]);
}

#[tokio::test]
async fn a_failure_names_the_program_its_code_and_stderr() {
    let err = sh()
        .command()
        .args(["-c", "echo first >&2; echo 'Error: it broke' >&2; exit 3"])
        .run()
        .await
        .expect("ran")
        .success("plan")
        .expect_err("exit 3 fails");
    let ExecError::Failed {
        exit, stderr_tail, ..
    } = &err
    else {
        panic!("expected Failed, got {err:?}");
    };
    assert_eq!(*exit, Exit::Code(3));
    assert_eq!(stderr_tail, "first\nError: it broke");
    assert_eq!(
        err.to_string(),
        "`sh plan` exited with code 3: first\nError: it broke"
    );
}

#[tokio::test]
async fn a_program_killed_by_a_signal_says_which() {
    let err = sh()
        .command()
        .args(["-c", "kill -9 $$"])
        .run()
        .await
        .expect("ran")
        .success("")
        .expect_err("killed");
    assert_eq!(
        err.to_string(),
        "`sh` was killed by signal 9 (SIGKILL) and printed nothing on stderr"
    );
}

#[test]
fn a_missing_program_is_named_with_what_to_do() {
    let err = Program::find("definitely-not-a-program-xyz").expect_err("not installed");
    assert!(
        matches!(&err, ExecError::NotFound { name, .. } if name == "definitely-not-a-program-xyz")
    );
    let message = err.to_string();
    assert!(
        message.contains("`definitely-not-a-program-xyz`"),
        "{message}"
    );
    assert!(message.contains("install it or give its path"), "{message}");
}

#[test]
fn programs_are_found_by_path_and_once_by_name() {
    let by_path = sh();
    assert_eq!(by_path.path(), std::path::Path::new("/bin/sh"));
    assert_eq!(by_path.name(), "sh");
    let first = Program::find("sh").expect("sh is on PATH");
    let second = Program::find("sh").expect("sh is on PATH");
    assert!(first.path().is_absolute());
    assert!(first.path().ends_with("sh"));
    assert_eq!(first, second);
}

#[test]
fn a_file_that_cannot_run_is_refused() {
    let file =
        std::env::temp_dir().join(format!("terrace-exec-not-a-program-{}", std::process::id()));
    std::fs::write(&file, "#!/bin/sh\necho hi\n").expect("written");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let result = Program::find(file.to_str().expect("utf-8 temp dir"));
    let _ = std::fs::remove_file(&file);
    match result {
        Err(ExecError::NotExecutable { path }) => assert_eq!(path, file),
        other => panic!("expected NotExecutable, got {other:?}"),
    }
    assert!(matches!(
        Program::find("/"),
        Err(ExecError::NotExecutable { .. })
    ));
    assert!(matches!(
        Program::find("/definitely/not/here"),
        Err(ExecError::NotFound { .. })
    ));
}
